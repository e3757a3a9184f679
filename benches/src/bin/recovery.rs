//! Recovery benchmark: how long an actor that checkpoints after every call takes to answer
//! again, state restored, after a SIGKILL, and how long the head takes to declare a killed
//! worker dead. A head runs in this process and workers run as processes of this executable on
//! 127.0.0.1; a killed worker is replaced before the next round.
//!
//! Scenarios (Ray's anchors in `../shared/anchors` measure the first two the same way):
//! - `actor_process_kill`: SIGKILL of the actor's executor process → the actor answering its
//!   next call (max_restarts = -1, max_task_retries = -1).
//! - `worker_kill`: SIGKILL of the whole worker hosting the actor → the actor answering its
//!   next call from another worker; and → the head marking that worker dead (a caller that
//!   lost the actor makes the head probe the worker at once).
//! - `worker_kill_unnoticed`: SIGKILL of a worker nobody calls → the head marking it dead
//!   (missed heartbeats alone).
//!
//! Run: `cargo run --release -p ember-benches --bin recovery -- --kills 20`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ember::{Checkpoint, Cluster};
use ember_core::security::ClusterFile;
use ember_head::HeadConfig;
use ember_worker::agent::WorkerConfig;
use ember_worker::role::{ROLE_VAR, ROLE_WORKER, WORKER_CONFIG_VAR};
use tokio::process::{Child, Command};

/// A running total saved after every call.
pub struct Ledger {
    total: u64,
}

impl Checkpoint for Ledger {
    type State = u64;
    fn save(&self) -> u64 {
        self.total
    }
    fn restore(total: u64) -> Self {
        Ledger { total }
    }
}

#[ember::actor(checkpoint_every = 1, max_restarts = -1, max_task_retries = -1)]
impl Ledger {
    /// Opens at `total`.
    pub fn new(total: u64) -> Self {
        Ledger { total }
    }

    /// Adds `n`; returns the total.
    pub fn add(&mut self, n: u64) -> u64 {
        self.total += n;
        self.total
    }

    /// The executor's process id.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

#[derive(Parser, Debug)]
#[command(about = "Ember's recovery benchmark: SIGKILL to the actor answering again")]
struct Args {
    /// Kills per scenario.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Kills for the unnoticed-worker scenario (each waits for the heartbeat window).
    #[arg(long, default_value_t = 5)]
    unnoticed_kills: usize,
    /// Workers in the cluster.
    #[arg(long, default_value_t = 3)]
    workers: usize,
}

/// The head and the worker processes.
struct Bench {
    file: ClusterFile,
    exe: PathBuf,
    workers: Vec<(String, Child)>,
    next: usize,
}

impl Bench {
    fn add_worker(&mut self) -> anyhow::Result<()> {
        let name = format!("bench-{}", self.next);
        self.next += 1;
        let mut wc = WorkerConfig::new(
            self.file.address,
            self.file.token.clone(),
            self.file.fingerprint,
        );
        wc.name = Some(name.clone());
        wc.cpus = Some(2.0);
        let child = Command::new(&self.exe)
            .env(ROLE_VAR, ROLE_WORKER)
            .env(WORKER_CONFIG_VAR, serde_json::to_string(&wc)?)
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start a worker")?;
        self.workers.push((name, child));
        Ok(())
    }

    /// SIGKILLs the worker that joined as `node` and reaps it.
    async fn kill_node(&mut self, cluster: &Cluster, node: &str) -> anyhow::Result<()> {
        let status = cluster.status().await?;
        let name = status
            .nodes
            .iter()
            .find(|n| n.id == node)
            .map(|n| n.name.clone())
            .with_context(|| format!("no {node}"))?;
        let i = self
            .workers
            .iter()
            .position(|(n, _)| *n == name)
            .with_context(|| format!("no worker {name}"))?;
        let (_, mut child) = self.workers.remove(i);
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }
}

/// Milliseconds: median and 99th percentile (nearest rank).
fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    format!(
        "median {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms over {}",
        rank(0.5),
        rank(0.99),
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    )
}

/// Polls the head until `node` is gone from its nodes; the time since `t0`.
async fn node_gone(cluster: &Cluster, node: &str, t0: Instant) -> anyhow::Result<f64> {
    loop {
        let status = cluster.status().await?;
        if status.nodes.iter().all(|n| n.id != node) {
            return Ok(t0.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[ember::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        ember::init_logging();
    }
    if args.workers < 2 {
        bail!("--workers must be at least 2: the actor moves to a survivor");
    }
    let state = std::env::temp_dir().join(format!("ember-recovery-bench-{}", std::process::id()));
    let mut config = HeadConfig::new(state.clone());
    config.listen = "127.0.0.1:0".parse()?;
    let head = ember_head::start(config).await?;
    let mut bench = Bench {
        file: head.cluster.clone(),
        exe: std::env::current_exe()?,
        workers: Vec::new(),
        next: 0,
    };
    for _ in 0..args.workers {
        bench.add_worker()?;
    }
    let cluster = Cluster::connect(bench.file.clone()).await?;
    cluster
        .wait_for_nodes(args.workers as u32, Duration::from_secs(60))
        .await?;
    let ledger = cluster.spawn(Ledger::remote(0)).await?;
    let mut expected = ledger.add(1).await?;

    // The actor's process alone.
    let mut process = Vec::new();
    for _ in 0..args.kills {
        let pid = ledger.pid().await?;
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let total = ledger.add(1).await?;
        process.push(t0.elapsed().as_secs_f64() * 1e3);
        expected += 1;
        if total != expected {
            bail!("state lost: total {total}, expected {expected}");
        }
    }

    // The whole worker hosting it.
    let mut answer = Vec::new();
    let mut dead = Vec::new();
    for _ in 0..args.kills {
        let node = ledger.actor().node().to_string();
        bench.kill_node(&cluster, &node).await?;
        let t0 = Instant::now();
        let (total, gone) = tokio::join!(ledger.add(1), node_gone(&cluster, &node, t0));
        answer.push(t0.elapsed().as_secs_f64() * 1e3);
        dead.push(gone?);
        expected += 1;
        let total = total?;
        if total != expected {
            bail!("state lost: total {total}, expected {expected}");
        }
        bench.add_worker()?;
        cluster
            .wait_for_nodes(args.workers as u32, Duration::from_secs(60))
            .await?;
        // The answer above may beat the node's removal; the count above waits for the
        // replacement only once the dead node is gone.
    }

    // A worker nobody calls.
    let mut unnoticed = Vec::new();
    for _ in 0..args.unnoticed_kills {
        let busy = ledger.actor().node().to_string();
        let status = cluster.status().await?;
        let idle = status
            .nodes
            .iter()
            .find(|n| n.id != busy)
            .map(|n| n.id.clone())
            .context("an idle worker")?;
        bench.kill_node(&cluster, &idle).await?;
        let t0 = Instant::now();
        unnoticed.push(node_gone(&cluster, &idle, t0).await?);
        bench.add_worker()?;
        cluster
            .wait_for_nodes(args.workers as u32, Duration::from_secs(60))
            .await?;
    }

    println!(
        "ember actor process SIGKILL -> answering again, state restored: {}",
        summary(process)
    );
    println!(
        "ember worker SIGKILL -> actor answering elsewhere, state restored: {}",
        summary(answer)
    );
    println!(
        "ember worker SIGKILL -> head marks it dead (a caller noticed): {}",
        summary(dead)
    );
    if !unnoticed.is_empty() {
        println!(
            "ember worker SIGKILL -> head marks it dead (heartbeats only, 2 s window): {}",
            summary(unnoticed)
        );
    }
    cluster.shutdown().await;
    for (_, mut w) in bench.workers.drain(..) {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
    head.stop().await;
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}
