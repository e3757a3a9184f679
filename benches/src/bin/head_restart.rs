//! Head restart benchmark: a real `ember head` process with 1,000 actors on 100 nodes in its
//! journal is SIGKILLed and started again on the same state directory and address. Measured
//! from the kill: when the new head answers a client's `status`, and when every node has
//! re-joined and every actor is adopted (alive, same incarnation) as `status` shows it.
//!
//! The 100 nodes are simulated workers in this process, each on its own QUIC endpoint, that
//! speak the worker protocol through `ember-core` as `worker/src/agent.rs` does: the hello
//! with a `WorkerHello`, the welcome and the `WorkerTerms`, heartbeats every 500 ms on an
//! events stream of their own, and answers to the head's commands (an actor created is
//! "ready" at once, at endpoints of one QUIC endpoint that takes callers' hellos; probes,
//! kills and seals as a worker answers them; no task leases or jobs). A worker that loses the
//! head joins again as the node it was, listing what it runs in a `Rejoin`, trying at once and
//! then with the agent's `Backoff` (100 ms doubling to 1 s), with the same QUIC settings.
//! Actors are created by a real client (`ember::Cluster::spawn`), and some record a
//! checkpoint as an actor's process does (`SaveCheckpoint`).
//!
//! `--mode journal` measures instead what the journal costs the head: the latency of actor
//! creations and of checkpoint records through the head, with its journal on disk, and the
//! head's own time per group commit (its `journal commit` debug lines, one fsync each).
//!
//! Run: `cargo build --release -p ember-client --bin ember -p ember-benches --bin head_restart
//! && target/release/head_restart` (it runs the `ember` binary beside it, or `--ember PATH`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use ember::{Cluster, ClusterStatus};
use ember_core::backoff::Backoff;
use ember_core::ids::{ActorId, NodeId};
use ember_core::proto::{
    read_frame, write_frame, ActorEndpoints, CheckpointSave, ClientReply, ClientRequest,
    EpochCommand, ErrorKind, Hello, HelloRole, Rejoin, RemoteError, RunningActor, Welcome,
    WorkerCommand, WorkerEvent, WorkerHello, WorkerReply, WorkerTerms, HELLO_LIMIT, MAX_FRAME,
};
use ember_core::resources::NodeResources;
use ember_core::security::{
    accept_hello, client_config, connect_client, say_hello, server_config, ClusterFile,
    HelloListener, Identity, SERVER_NAME,
};
use futures::StreamExt;
use tokio::io::AsyncBufReadExt;

/// The actor type the simulated workers host; nothing runs it.
pub struct Sim;

impl Default for Sim {
    fn default() -> Self {
        Sim::new()
    }
}

#[ember::actor]
impl Sim {
    /// A new one.
    pub fn new() -> Self {
        Sim
    }

    /// Answers.
    pub fn ping(&self) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// SIGKILL the head and start it again, `--restarts` times.
    Restart,
    /// What the journal adds to actor creations and checkpoint records.
    Journal,
}

#[derive(Parser, Debug)]
#[command(about = "Ember's head restart benchmark: SIGKILL to serving, and to every worker back")]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Restart)]
    mode: Mode,
    /// Simulated worker nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Actors created before the first restart.
    #[arg(long, default_value_t = 1000)]
    actors: usize,
    /// Actors that record a checkpoint (1 KiB) before the first restart.
    #[arg(long, default_value_t = 100)]
    checkpoints: usize,
    /// Head restarts measured.
    #[arg(long, default_value_t = 5)]
    restarts: usize,
    /// Creations in flight at once when filling the cluster.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The `ember` binary (default: the one beside this executable).
    #[arg(long)]
    ember: Option<PathBuf>,
}

/// A running `ember head` process.
struct Head {
    child: tokio::process::Child,
    log: PathBuf,
    listening: tokio::sync::oneshot::Receiver<()>,
}

/// Starts `ember head`; `listening` fires when it prints that it listens.
fn start_head(exe: &Path, state: &Path, listen: SocketAddr, log: PathBuf) -> anyhow::Result<Head> {
    let mut child = tokio::process::Command::new(exe)
        .args(["head", "--listen", &listen.to_string(), "--state-dir"])
        .arg(state)
        .env(
            "RUST_LOG",
            "warn,ember_head=info,ember_head_state=warn,ember_head::shell=debug",
        )
        .env_remove("EMBER_ROLE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().context("the head's stdout")?;
    let (tx, listening) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening on") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    Ok(Head {
        child,
        log,
        listening,
    })
}

impl Head {
    /// Waits until it listens, or fails with its log if it exits or takes 30 s.
    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.listening => r.context("the head's output ended")?,
            status = self.child.wait() => bail!(
                "`ember head` exited with {:?}:\n{}",
                status,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
            _ = tokio::time::sleep(Duration::from_secs(30)) => bail!("the head did not listen in 30 s"),
        }
        Ok(())
    }

    /// SIGKILL, then reap.
    async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// One simulated worker: what it runs, and how it stands with the head.
struct SimWorker {
    name: String,
    file: ClusterFile,
    endpoint: quinn::Endpoint,
    actor_types: Vec<String>,
    /// Where its actors take calls.
    actor_endpoints: ActorEndpoints,
    running: Mutex<BTreeMap<ActorId, RunningActor>>,
    /// The node it joined as, and the head life it joined.
    joined: Mutex<Option<(NodeId, u64)>>,
    /// When it last lost the head, and when it last joined.
    times: Mutex<(Option<Instant>, Option<Instant>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const HEARTBEAT: Duration = Duration::from_millis(500);

impl SimWorker {
    /// Joins, serves until the head is lost, and joins again, for ever.
    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            match self.join().await {
                Ok(conn) => {
                    backoff.reset();
                    lock(&self.times).1 = Some(Instant::now());
                    self.serve(conn).await;
                    lock(&self.times).0 = Some(Instant::now());
                }
                Err(_) => tokio::time::sleep(backoff.next_wait()).await,
            }
        }
    }

    /// One join: hello (with a `Rejoin` if it was a node before), welcome, terms.
    async fn join(&self) -> anyhow::Result<quinn::Connection> {
        let conn = self
            .endpoint
            .connect(self.file.address, SERVER_NAME)?
            .await?;
        let previous = *lock(&self.joined);
        let rejoin = previous.map(|(node, epoch)| Rejoin {
            node,
            epoch,
            actors: lock(&self.running).values().cloned().collect(),
            leases: Vec::new(),
        });
        let hello = Hello::new(
            self.file.token.clone(),
            HelloRole::Worker(Box::new(WorkerHello {
                name: self.name.clone(),
                resources: NodeResources {
                    cpu_millis: 64_000,
                    gpus: Vec::new(),
                    custom: Vec::new(),
                    labels: Vec::new(),
                },
                task_types: Vec::new(),
                actor_types: self.actor_types.clone(),
                address: self.endpoint.local_addr()?.to_string(),
                rejoin,
                launch: None,
            })),
        );
        let (mut send, mut recv) = conn.open_bi().await?;
        let node = say_hello(&hello, &mut recv, &mut send)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .context("no node id")?;
        let terms = read_frame::<_, WorkerTerms>(&mut recv, HELLO_LIMIT)
            .await?
            .context("no terms")?;
        let _ = send.finish();
        if previous.is_some_and(|(was, _)| was != node) {
            // Not taken back as the node it was: a worker stops what it ran.
            lock(&self.running).clear();
        }
        *lock(&self.joined) = Some((node, terms.epoch));
        Ok(conn)
    }

    /// Heartbeats and answers commands until the connection ends.
    async fn serve(self: &Arc<Self>, conn: quinn::Connection) {
        let Ok(mut events) = conn.open_uni().await else {
            return;
        };
        let heartbeats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                let beat = WorkerEvent::Heartbeat { gpus: Vec::new() };
                if write_frame(&mut events, &beat).await.is_err() {
                    return;
                }
            }
        });
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(self.clone().command(send, recv));
        }
        heartbeats.abort();
    }

    async fn command(self: Arc<Self>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let Ok(Some(fenced)) = read_frame::<_, EpochCommand>(&mut recv, MAX_FRAME).await else {
            return;
        };
        let joined = lock(&self.joined).map_or(0, |(_, epoch)| epoch);
        let reply = if fenced.epoch < joined {
            WorkerReply::Error(RemoteError::new(
                ErrorKind::Unauthorized,
                "a command of an older head life",
            ))
        } else {
            self.answer(fenced.command)
        };
        let _ = write_frame(&mut send, &reply).await;
        let _ = send.finish();
    }

    fn answer(&self, command: WorkerCommand) -> WorkerReply {
        let mut running = lock(&self.running);
        match command {
            WorkerCommand::CreateActor {
                actor,
                allocation,
                incarnation,
                ..
            } => {
                running.insert(
                    actor,
                    RunningActor {
                        actor,
                        incarnation,
                        allocation,
                        endpoints: self.actor_endpoints.clone(),
                        sealed: false,
                    },
                );
                WorkerReply::ActorReady(self.actor_endpoints.clone())
            }
            WorkerCommand::KillActor { actor, incarnation } => {
                if running
                    .get(&actor)
                    .is_some_and(|r| r.incarnation == incarnation)
                {
                    running.remove(&actor);
                }
                WorkerReply::ActorKilled
            }
            WorkerCommand::Probe { actor, incarnation } => WorkerReply::Probed {
                alive: running
                    .get(&actor)
                    .is_some_and(|r| r.incarnation == incarnation),
            },
            WorkerCommand::SealActor { actor } => match running.get_mut(&actor) {
                Some(r) => {
                    r.sealed = true;
                    WorkerReply::Sealed { seq: None }
                }
                None => WorkerReply::Error(RemoteError::new(ErrorKind::Unknown, "no such actor")),
            },
            WorkerCommand::CloseLease { .. } => WorkerReply::LeaseClosed,
            WorkerCommand::OpenLease { .. } | WorkerCommand::RunJob { .. } => {
                WorkerReply::Error(RemoteError::new(
                    ErrorKind::Unknown,
                    "a simulated worker runs no tasks or jobs",
                ))
            }
        }
    }
}

/// One QUIC endpoint where every simulated actor "takes calls": it welcomes a caller's hello
/// and keeps the connection (the benchmark makes no calls).
async fn actor_endpoint(token: String) -> anyhow::Result<(ActorEndpoints, quinn::Endpoint)> {
    let identity = Identity::ephemeral()?;
    let endpoint = quinn::Endpoint::server(
        server_config(&identity)?,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )?;
    let endpoints = ActorEndpoints {
        peer_addr: endpoint.local_addr()?.to_string(),
        peer_fingerprint: identity.fingerprint,
        host: "simulated".into(),
        local_socket: String::new(),
        mesh_socket: String::new(),
    };
    let serving = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = serving.accept().await {
            let token = token.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                    return;
                };
                if accept_hello(&mut recv, &mut send, &token, HelloListener::ActorEndpoint)
                    .await
                    .is_ok()
                {
                    let _ = write_frame(&mut send, &Welcome::Accepted { node: None }).await;
                    let _ = send.finish();
                    conn.closed().await;
                }
            });
        }
    });
    Ok((endpoints, endpoint))
}

/// Each actor's (state, incarnation), and the node ids, from a status.
fn lives(status: &ClusterStatus) -> (Vec<String>, BTreeMap<String, (String, u32)>) {
    let mut nodes: Vec<String> = status.nodes.iter().map(|n| n.id.clone()).collect();
    nodes.sort();
    let actors = status
        .actors
        .iter()
        .filter_map(|a| {
            let life = a.actor.as_ref()?;
            Some((a.id.clone(), (life.state.clone(), life.incarnation)))
        })
        .collect();
    (nodes, actors)
}

/// Milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (0..=1) of `xs`, nearest rank.
fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// `text` without its terminal colour codes (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The numbers `key=N` on the head's log lines that contain `what`.
fn logged(log: &Path, what: &str, key: &str) -> Vec<f64> {
    let text = plain(&std::fs::read_to_string(log).unwrap_or_default());
    let key = format!("{key}=");
    text.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let rest = &l[l.find(&key)? + key.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

/// Records one checkpoint of `actor`'s first incarnation as its process would; the latency.
async fn save_checkpoint(
    head: &quinn::Connection,
    actor: ActorId,
    seq: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (mut send, mut recv) = head.open_bi().await?;
    let save = CheckpointSave {
        actor,
        incarnation: 1,
        seq,
        image: vec![seq as u8; 1024],
    };
    write_frame(&mut send, &ClientRequest::SaveCheckpoint(save)).await?;
    let _ = send.finish();
    match read_frame::<_, ClientReply>(&mut recv, MAX_FRAME).await? {
        Some(ClientReply::CheckpointSaved { .. }) => Ok(started.elapsed()),
        other => bail!("checkpoint of {actor}: {other:?}"),
    }
}

/// Creates `count` actors through the client, `concurrency` at a time: their ids, and each
/// creation's latency and the whole fill's time.
async fn create(
    cluster: &Cluster,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<ActorId>, Creations)> {
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut ids = Vec::new();
    let mut spawns = futures::stream::iter(0..count)
        .map(|_| {
            let cluster = cluster.clone();
            async move {
                let t = Instant::now();
                let actor = cluster.spawn(Sim::remote()).await?;
                Ok::<_, ember::Error>((t.elapsed(), actor.actor().id()))
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(spawned) = spawns.next().await {
        let (took, id) = spawned?;
        latencies.push(ms(took));
        ids.push(id);
    }
    Ok((
        ids,
        Creations {
            latencies,
            elapsed: started.elapsed(),
        },
    ))
}

/// What [`create`] measured.
struct Creations {
    latencies: Vec<f64>,
    elapsed: Duration,
}

fn report_creations(c: &Creations, concurrency: usize) {
    println!(
        "created {} actors in {:.2} s, {} in flight: {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms",
        c.latencies.len(),
        c.elapsed.as_secs_f64(),
        concurrency,
        c.latencies.len() as f64 / c.elapsed.as_secs_f64(),
        quantile(&c.latencies, 0.5),
        quantile(&c.latencies, 0.99)
    );
}

/// Records a checkpoint of each actor, one at a time, as their processes would: the latencies.
async fn checkpoints(file: &ClusterFile, actors: &[ActorId]) -> anyhow::Result<Vec<f64>> {
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let link = connect_client(&endpoint, file.address, file.fingerprint, &file.token).await?;
    let mut saves = Vec::new();
    for (i, &actor) in actors.iter().enumerate() {
        saves.push(ms(save_checkpoint(&link, actor, i as u64 + 1).await?));
    }
    link.close(0u32.into(), b"done");
    Ok(saves)
}

fn report_saves(saves: &[f64]) {
    if !saves.is_empty() {
        println!(
            "recorded {} checkpoints of 1 KiB, one at a time: latency p50 {:.2} ms, p99 {:.2} ms",
            saves.len(),
            quantile(saves, 0.5),
            quantile(saves, 0.99)
        );
    }
}

/// The head's group commits logged since line `from` of its log: their times in ms, and the
/// log's line count now.
fn commits_since(log: &Path, from: usize) -> (Vec<f64>, usize) {
    let all = logged(log, "journal commit", "micros");
    let now = all.len();
    (
        all[from.min(now)..].iter().map(|us| us / 1e3).collect(),
        now,
    )
}

fn report_commits(what: &str, commits: &[f64]) {
    println!(
        "  the head's group commits during {what}: {}, each p50 {:.2} ms, p99 {:.2} ms",
        commits.len(),
        quantile(commits, 0.5),
        quantile(commits, 0.99)
    );
}

/// `--mode journal`: creations one at a time (latency), then `--concurrency` at a time
/// (throughput), then checkpoint records, each with the head's commit times meanwhile.
async fn journal_cost(
    args: &Args,
    cluster: &Cluster,
    file: &ClusterFile,
    head: Head,
) -> anyhow::Result<()> {
    let (_, mut seen) = commits_since(&head.log, 0);
    let (mut ids, one) = create(cluster, args.actors, 1).await?;
    report_creations(&one, 1);
    let (commits, now) = commits_since(&head.log, seen);
    seen = now;
    report_commits("them", &commits);
    let (more, many) = create(cluster, args.actors, args.concurrency).await?;
    report_creations(&many, args.concurrency);
    let (commits, now) = commits_since(&head.log, seen);
    seen = now;
    report_commits("them", &commits);
    ids.extend(more);
    let saves = checkpoints(file, &ids[..args.checkpoints.min(ids.len())]).await?;
    report_saves(&saves);
    let (commits, _) = commits_since(&head.log, seen);
    report_commits("them", &commits);
    head.kill().await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = match &args.ember {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the executable's directory")?
            .join("ember"),
    };
    if !exe.exists() {
        bail!(
            "{} is missing: cargo build --release -p ember-client --bin ember",
            exe.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("ember-head-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&args, &exe, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(args: &Args, exe: &Path, dir: &Path) -> anyhow::Result<()> {
    let state = dir.join("state");
    let mut head = start_head(
        exe,
        &state,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.join("head-1.log"),
    )?;
    head.wait_listening().await?;
    let file = ClusterFile::load(&state)?;
    let (actor_endpoints, _actor_endpoint) = actor_endpoint(file.token.clone()).await?;
    let actor_types = ember_worker::registry::actor_names();
    let mut workers = Vec::new();
    for i in 0..args.nodes {
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        endpoint.set_default_client_config(client_config(file.fingerprint)?);
        let worker = Arc::new(SimWorker {
            name: format!("sim-{i}"),
            file: file.clone(),
            endpoint,
            actor_types: actor_types.clone(),
            actor_endpoints: actor_endpoints.clone(),
            running: Mutex::new(BTreeMap::new()),
            joined: Mutex::new(None),
            times: Mutex::new((None, None)),
        });
        tokio::spawn(worker.clone().run());
        workers.push(worker);
    }
    let cluster = Cluster::connect(file.clone()).await?;
    cluster
        .wait_for_nodes(args.nodes as u32, Duration::from_secs(60))
        .await?;
    println!("{} simulated nodes joined", args.nodes);

    if args.mode == Mode::Journal {
        return journal_cost(args, &cluster, &file, head).await;
    }

    // Actors, through the real client, and some checkpoints.
    let (ids, took) = create(&cluster, args.actors, args.concurrency).await?;
    report_creations(&took, args.concurrency);
    let saves = checkpoints(&file, &ids[..args.checkpoints.min(ids.len())]).await?;
    report_saves(&saves);

    let (nodes_before, actors_before) = lives(&cluster.status().await?);
    if actors_before.len() != args.actors
        || actors_before
            .values()
            .any(|(s, i)| s.as_str() != "alive" || *i != 1)
    {
        bail!("not every actor is alive before the restart: {actors_before:?}");
    }
    drop(cluster);

    let mut serving = Vec::new();
    let mut rejoined = Vec::new();
    let mut listening = Vec::new();
    let mut read = Vec::new();
    for n in 0..args.restarts {
        let killed = Instant::now();
        head.kill().await?;
        head = start_head(
            exe,
            &state,
            file.address,
            dir.join(format!("head-{}.log", n + 2)),
        )?;
        head.wait_listening().await?;
        let listened = killed.elapsed();
        let fresh = Cluster::connect(file.clone()).await?;
        fresh.status().await?;
        let answered = killed.elapsed();
        let deadline = killed + Duration::from_secs(120);
        loop {
            let (nodes, actors) = lives(&fresh.status().await?);
            if nodes == nodes_before && actors == actors_before {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "not every node re-joined within 120 s: {} of {} nodes back",
                    nodes.len(),
                    nodes_before.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let back = killed.elapsed();
        let journal = logged(&head.log, "journal read", "restored_ms");
        // When the workers saw the head go (the new head's reset, or a timeout), and when the
        // last of them was welcomed again.
        let (mut noticed, mut welcomed) = (Duration::ZERO, Duration::ZERO);
        for w in &workers {
            let (lost, joined) = *lock(&w.times);
            noticed =
                noticed.max(lost.map_or(Duration::ZERO, |t| t.saturating_duration_since(killed)));
            welcomed = welcomed
                .max(joined.map_or(Duration::ZERO, |t| t.saturating_duration_since(killed)));
        }
        println!(
            "restart {}: listening {:.0} ms, status answered {:.0} ms, every node and actor back {:.0} ms (the last worker lost the head at {:.0} ms, was welcomed at {:.0} ms); journal read and restored in {:.1} ms",
            n + 1,
            ms(listened),
            ms(answered),
            ms(back),
            ms(noticed),
            ms(welcomed),
            journal.first().copied().unwrap_or(f64::NAN)
        );
        listening.push(ms(listened));
        serving.push(ms(answered));
        rejoined.push(ms(back));
        read.extend(journal.first().copied());
        drop(fresh);
    }
    head.kill().await?;
    println!(
        "over {} restarts ({} nodes, {} actors, {} with a checkpoint), p50 / max:",
        args.restarts, args.nodes, args.actors, args.checkpoints
    );
    let row = |what: &str, xs: &[f64]| {
        println!(
            "  {what}: {:.0} ms / {:.0} ms",
            quantile(xs, 0.5),
            quantile(xs, 1.0)
        )
    };
    row("SIGKILL → listening", &listening);
    row("SIGKILL → status answered", &serving);
    row(
        "SIGKILL → every node re-joined, every actor adopted",
        &rejoined,
    );
    println!(
        "  journal read and restored at start: {:.1} ms / {:.1} ms",
        quantile(&read, 0.5),
        quantile(&read, 1.0)
    );
    Ok(())
}
