//! The autoscaler end to end, on a local cluster whose launches are worker processes of this
//! same executable (the local provider), measured from a client as a user would see it:
//!
//! - `launch_decided`: a one-GPU task submitted to a cluster with no node that fits (node
//!   type `l4`: one logical GPU, min 0) → the launch decided. The client polls
//!   `Cluster::status` every `--poll-ms` until the autoscaler's decisions show the launch.
//!   Printed raw (submit → the reply that shows it), less the decision's age in that reply
//!   (what the head says it waited; milliseconds, the reply's travel back not removed), and
//!   the round trip of a status request on the same cluster, measured before the round.
//! - `first_task_cold`: submit → the task's result (it returns at once), on the node launched
//!   for it; with `node_joined` (submit → the status first listing the node) as a breakdown.
//! - `idle_released`: the task's result → the status first listing the node's instance as
//!   stopped, less the type's idle timeout. The client keeps an idle task lease for about
//!   100 ms before it gives it back, and the node's idle clock starts only then, so the same
//!   is printed from the head's idle clock start (the status's `idle_ms`) as well.
//! - `first_task_warm` (unless `--no-warm`): a type with `warm: 1`; once its warm node has
//!   joined (status lists it, state `warm`), submit a task that fits it → the task's result.
//!
//! Every round starts a fresh cluster (a head in this process starts in milliseconds), so no
//! round sees another's nodes, and submits its task 0.2 to 1.1 s after the cluster started
//! (for the warm row, after its warm node joined): the rounds sweep the phase of the head's
//! periodic pass, since a pass asked for by work is held back while one ran in the last
//! 20 ms. Every wait has a deadline (`--deadline-s`), after which the run fails naming what it
//! waited for. Status polling runs while the node starts, so it shares the head (and this
//! machine's cores) with the launch it measures. The warm row's task is checked to have run
//! on the warm node, and the cold row's on the node launched for it.
//!
//! Build and run: `cargo run --release -p ember-benches --bin autoscale_e2e -- [--rounds N]`.

use std::future::Future;
use std::time::{Duration, Instant};

use clap::Parser;
use ember::{Cluster, ClusterStatus, LocalOptions, NodeId};
use ember_core::resources::{GpuDevice, NodeResources};
use ember_head::autoscale::{NodeType, Policy};

/// Returns at once, saying where it ran.
#[ember::task(gpus = 1)]
pub fn on_gpu() -> String {
    ember::context().map_or_else(String::new, |ctx| ctx.node.to_string())
}

/// The autoscaler's end-to-end latencies on a local cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Rounds per measure, each on a fresh cluster.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// The node type's idle timeout, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    idle_timeout_ms: u64,
    /// How often the client polls the head's status while it waits for a milestone.
    #[arg(long, default_value_t = 1)]
    poll_ms: u64,
    /// Status round trips timed before each round (their median is the round's).
    #[arg(long, default_value_t = 20)]
    rtt_samples: usize,
    /// The longest any one wait may take, in seconds, before the run fails.
    #[arg(long, default_value_t = 60)]
    deadline_s: u64,
    /// Leave out the warm pool's row (a task landing on a node of a type with `warm: 1`).
    #[arg(long)]
    no_warm: bool,
}

/// The node type: one logical L4, two CPUs.
fn l4(warm: u32, idle_timeout: Duration) -> NodeType {
    NodeType {
        name: "l4".into(),
        resources: NodeResources {
            cpu_millis: 2_000,
            gpus: vec![GpuDevice {
                index: 0,
                uuid: "logical-0".into(),
                name: "L4".into(),
                memory: 24 << 30,
                accelerator: "L4".into(),
                logical: true,
            }],
            custom: Vec::new(),
            labels: Vec::new(),
        },
        min: 0,
        max: 2,
        warm,
        price_micros_per_hour: 800_000,
        spot: false,
        idle_timeout,
    }
}

/// A fresh autoscaled local cluster with the one type, workers of this executable.
async fn cluster(args: &Args, warm: u32) -> anyhow::Result<Cluster> {
    let mut options = LocalOptions::new(0);
    options.autoscale = Some(Policy {
        types: vec![l4(warm, Duration::from_millis(args.idle_timeout_ms))],
        max_nodes: 4,
        upscaling_speed: 1.0,
        launch_timeout: Duration::from_secs(args.deadline_s),
        utilisation: None,
    });
    Ok(bounded(args, "the local cluster to start", Cluster::local(options)).await??)
}

/// `fut`, or an error naming `what` once the deadline passes.
async fn bounded<F: Future>(args: &Args, what: &str, fut: F) -> anyhow::Result<F::Output> {
    let deadline = Duration::from_secs(args.deadline_s);
    tokio::time::timeout(deadline, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: not within {} s", args.deadline_s))
}

/// Polls the head's status every `--poll-ms` until `seen` returns something, given each
/// status and when its reply arrived; fails naming `what` after the deadline.
async fn poll_until<T>(
    cluster: &Cluster,
    args: &Args,
    what: &str,
    mut seen: impl FnMut(&ClusterStatus, Instant) -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let deadline = Duration::from_secs(args.deadline_s);
    loop {
        let status = cluster.status().await?;
        let at = Instant::now();
        if let Some(v) = seen(&status, at) {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            anyhow::bail!("{what}: not seen within {} s", args.deadline_s);
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
    }
}

/// The median round trip of a status request, in milliseconds.
async fn status_rtt(cluster: &Cluster, samples: usize) -> anyhow::Result<f64> {
    let mut rtts = Vec::with_capacity(samples.max(1));
    for _ in 0..samples.max(1) {
        let t = Instant::now();
        cluster.status().await?;
        rtts.push(ms(t, Instant::now()));
    }
    rtts.sort_by(f64::total_cmp);
    Ok(rtts[rtts.len() / 2])
}

/// How long round `round` waits after its cluster started before it submits: 200 ms, then
/// 100 ms more each round, to 1.1 s, so that the rounds' submissions sweep the phase of the
/// head's periodic pass (every second, from its start). A pass asked for by waiting work
/// comes at once, or 20 ms after the previous pass when one ran more recently.
fn settle(round: usize) -> Duration {
    Duration::from_millis(200 + 100 * (round % 10) as u64)
}

/// Milliseconds from `from` to `to`, negative when `to` comes first.
fn ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64() * 1e3
    } else {
        -(from.duration_since(to).as_secs_f64() * 1e3)
    }
}

/// `at` less `age_ms` milliseconds (a moment the head reported as an age).
fn before(at: Instant, age_ms: u64) -> Instant {
    at.checked_sub(Duration::from_millis(age_ms)).unwrap_or(at)
}

/// One cold round's figures, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Cold {
    rtt: f64,
    decided_raw: f64,
    decided_by_age: f64,
    joined: f64,
    result: f64,
    released_from_result: f64,
    released_from_idle: f64,
    lease_back: f64,
    release_decided_late: f64,
    node_gone: f64,
}

/// Submit a one-GPU task to a cluster with no node → launch decided, node joined, result; then
/// result → the node's instance stopped.
async fn cold_round(args: &Args, round: usize) -> anyhow::Result<Cold> {
    let cluster = cluster(args, 0).await?;
    tokio::time::sleep(settle(round)).await;
    let idle_timeout = args.idle_timeout_ms as f64;
    let rtt = status_rtt(&cluster, args.rtt_samples).await?;
    let before_submit = cluster.status().await?;
    if !before_submit.nodes.is_empty() {
        anyhow::bail!(
            "a fresh cluster already has nodes: {:?}",
            before_submit.nodes
        );
    }

    let t0 = Instant::now();
    let task = cluster.submit(on_gpu::remote());
    let (seen, age) = poll_until(&cluster, args, "the launch decided", |s, at| {
        let d = s
            .autoscaler
            .as_ref()?
            .decisions
            .iter()
            .find(|d| d.decision.starts_with("launch l4"))?;
        Some((at, d.age_ms))
    })
    .await?;
    let decided_raw = ms(t0, seen);
    let decided_by_age = ms(t0, before(seen, age)).max(0.0);

    let (joined_at, node) = poll_until(&cluster, args, "the launched node joined", |s, at| {
        let n = s.autoscaler.as_ref()?.nodes.first()?;
        Some((at, n.node))
    })
    .await?;
    let ran_on = bounded(args, "the task's result", task).await??;
    let t_result = Instant::now();
    if ran_on != node.to_string() {
        anyhow::bail!("the task ran on {ran_on}, not on the node launched for it ({node})");
    }

    let released = release(&cluster, args, node).await?;
    bounded(args, "the cluster to stop", cluster.shutdown()).await?;
    let deadline = released.idle_start + Duration::from_millis(args.idle_timeout_ms);
    Ok(Cold {
        rtt,
        decided_raw,
        decided_by_age,
        joined: ms(t0, joined_at),
        result: ms(t0, t_result),
        released_from_result: ms(t_result, released.stopped) - idle_timeout,
        released_from_idle: ms(released.idle_start, released.stopped) - idle_timeout,
        lease_back: ms(t_result, released.idle_start),
        release_decided_late: ms(deadline, released.decided),
        node_gone: ms(released.decided, released.gone),
    })
}

/// When a released node's milestones were seen.
struct Released {
    /// Its idle clock's start, as the head reported it (`idle_ms`).
    idle_start: Instant,
    /// The release decided, as the head reported it (the decision's age).
    decided: Instant,
    /// The first status without it among the nodes.
    gone: Instant,
    /// The first status listing its instance as stopped.
    stopped: Instant,
}

/// Polls until `node`'s instance is stopped, noting its idle clock's start, the release
/// decision and its leaving on the way.
async fn release(cluster: &Cluster, args: &Args, node: NodeId) -> anyhow::Result<Released> {
    let release = format!("release {node}");
    let node_id = node.to_string();
    let mut idle_start = None;
    let mut decided = None;
    let mut gone = None;
    let stopped = poll_until(
        cluster,
        args,
        "the idle node's instance stopped",
        |s, at| {
            let a = s.autoscaler.as_ref()?;
            if idle_start.is_none() {
                idle_start = a
                    .nodes
                    .iter()
                    .find(|n| n.node == node && n.state == "idle")
                    .and_then(|n| n.idle_ms)
                    .map(|idle| before(at, idle));
            }
            if decided.is_none() {
                decided = a
                    .decisions
                    .iter()
                    .find(|d| d.decision.starts_with(&release))
                    .map(|d| before(at, d.age_ms));
            }
            if gone.is_none() && s.nodes.iter().all(|n| n.id != node_id) {
                gone = Some(at);
            }
            a.stopped.iter().any(|s| s.node == Some(node)).then_some(at)
        },
    )
    .await?;
    let (Some(idle_start), Some(decided), Some(gone)) = (idle_start, decided, gone) else {
        anyhow::bail!(
            "{node}'s instance stopped, but the polls missed a milestone (idle clock start \
             seen: {}, release decision seen: {}, node gone seen: {})",
            idle_start.is_some(),
            decided.is_some(),
            gone.is_some()
        );
    };
    Ok(Released {
        idle_start,
        decided,
        gone,
        stopped,
    })
}

/// A type keeping one node warm: once it joined, submit → result, in milliseconds.
async fn warm_round(args: &Args, round: usize) -> anyhow::Result<f64> {
    let cluster = cluster(args, 1).await?;
    let node = poll_until(&cluster, args, "the warm node joined", |s, _| {
        let a = s.autoscaler.as_ref()?;
        a.nodes.iter().find(|n| n.state == "warm").map(|n| n.node)
    })
    .await?;
    tokio::time::sleep(settle(round)).await;
    let t0 = Instant::now();
    let ran_on = bounded(args, "the task's result", cluster.run(on_gpu::remote())).await??;
    let result = ms(t0, Instant::now());
    if ran_on != node.to_string() {
        anyhow::bail!("the task ran on {ran_on}, not on the warm node {node}");
    }
    bounded(args, "the cluster to stop", cluster.shutdown()).await?;
    Ok(result)
}

/// Prints `name p50 … p99 … max …` over `values` (milliseconds). With few rounds, p99 is the
/// largest (nearest rank).
fn row(name: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let rank = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    println!(
        "{name} p50 {:.2} ms p99 {:.2} ms max {:.2} ms (min {:.2} ms, {n} rounds)",
        rank(0.5),
        rank(0.99),
        values[n - 1],
        values[0],
    );
}

#[ember::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rounds == 0 {
        anyhow::bail!("--rounds must be at least 1");
    }
    println!(
        "autoscale_e2e: node type l4 (1 logical GPU, min 0, max 2, idle timeout {} ms), \
         local provider (its workers run this executable)",
        args.idle_timeout_ms
    );
    println!(
        "method: a fresh cluster per round, its task submitted 0.2 to 1.1 s after the cluster \
         started; the client polls status every {} ms; p99 is nearest-rank (with under 100 \
         rounds, the max)",
        args.poll_ms
    );
    let mut cold = Vec::with_capacity(args.rounds);
    for i in 0..args.rounds {
        let c = cold_round(&args, i)
            .await
            .map_err(|e| e.context(format!("cold round {}", i + 1)))?;
        eprintln!("cold round {}: {c:?}", i + 1);
        cold.push(c);
    }
    let col = |f: fn(&Cold) -> f64| cold.iter().map(f).collect::<Vec<f64>>();
    row(
        "launch_decided (submit -> a status reply showing the launch; raw)",
        col(|c| c.decided_raw),
    );
    row(
        "launch_decided (the same, less the decision's age in that reply)",
        col(|c| c.decided_by_age),
    );
    row(
        "status_rtt (one status request's round trip, median of the round's samples)",
        col(|c| c.rtt),
    );
    row(
        "first_task_cold (submit -> result, on a node launched for it)",
        col(|c| c.result),
    );
    row(
        "  of which submit -> node joined (first status listing it)",
        col(|c| c.joined),
    );
    row(
        "idle_released (result -> instance stopped, less the idle timeout)",
        col(|c| c.released_from_result),
    );
    row(
        "idle_released (head's idle clock start -> instance stopped, less the idle timeout)",
        col(|c| c.released_from_idle),
    );
    row(
        "  of which result -> idle clock start (the client gives its idle lease back)",
        col(|c| c.lease_back),
    );
    row(
        "  of which idle timeout's end -> release decided (decision's age)",
        col(|c| c.release_decided_late),
    );
    row(
        "  of which release decided -> node gone from status",
        col(|c| c.node_gone),
    );
    if !args.no_warm {
        let mut warm = Vec::with_capacity(args.rounds);
        for i in 0..args.rounds {
            let w = warm_round(&args, i)
                .await
                .map_err(|e| e.context(format!("warm round {}", i + 1)))?;
            eprintln!("warm round {}: {w:.1} ms", i + 1);
            warm.push(w);
        }
        row(
            "first_task_warm (submit -> result, on the warm pool's node)",
            warm,
        );
    }
    Ok(())
}
