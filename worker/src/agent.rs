//! The worker agent: joins the head over QUIC, reports its resources and heartbeats, runs what
//! the head sends it, and serves direct actor calls from clients.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ember_core::backoff::Backoff;
use ember_core::ids::{ActorId, LeaseId, NodeId};
use ember_core::proto::{
    decode, read_frame, write_frame, ActorEndpoints, CheckpointPolicy, EpochCommand, ErrorKind,
    FrameError, Hello, HelloRole, LeaseEndpoints, Rejoin, RemoteError, RunningActor, RunningLease,
    WorkerCommand, WorkerEvent, WorkerHello, WorkerReply, WorkerTerms, HELLO_LIMIT, MAX_FRAME,
};
use ember_core::resources::{to_millis, Allocation, NodeResources, ResourceError};
use ember_core::security::{
    client_config, say_hello, ClusterFile, Fingerprint, HelloError, SecurityError, SERVER_NAME,
};
use tokio::sync::mpsc;

use crate::epoch::check_epoch;
use crate::executor::{socket_dir, ExecRequest, Executor, ExecutorPool};
use crate::gpu::{self, GpuError, GpuMonitor};
use crate::{job, registry};

/// How a worker is started: where the head is, how to prove membership, what it offers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerConfig {
    /// The head's address.
    pub head: SocketAddr,
    /// The cluster's join token.
    pub token: String,
    /// The fingerprint of the head's certificate.
    pub fingerprint: Fingerprint,
    /// A name for humans; defaults to host name and process id.
    pub name: Option<String>,
    /// CPUs to offer; defaults to the machine's.
    pub cpus: Option<f64>,
    /// Logical GPUs to declare (for machines without them); NVML is used when not given.
    pub gpus: Option<u32>,
    /// Memory of each logical GPU, e.g. `80GiB`.
    pub gpu_memory: Option<String>,
    /// Accelerator type of the logical GPUs, e.g. `H100`.
    pub accelerator: Option<String>,
    /// Custom resources to offer, e.g. `("tpu", 4.0)`.
    pub resources: Vec<(String, f64)>,
    /// The address to bind: the worker's own endpoint uses it, and its actors listen on its IP
    /// for direct calls. With an unspecified IP (the default `0.0.0.0:0`), actors listen on the
    /// local IP through which the worker reaches the head.
    pub listen: SocketAddr,
    /// How often to send heartbeats.
    pub heartbeat_ms: u64,
    /// On SIGTERM or Ctrl-C, how long running tasks may take to finish while the head moves
    /// this worker's actors away, in milliseconds.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
    /// After losing the head, how long to keep its executors running and try to join again as
    /// the same node (the head may be restarting), in milliseconds. After that the worker
    /// stops its executors and tries as long again to join as a new node before giving up.
    #[serde(default = "default_rejoin_ms")]
    pub rejoin_ms: u64,
    /// The autoscaler launch this worker answers, when a node provider started it.
    #[serde(default)]
    pub launch: Option<ember_core::proto::LaunchTicket>,
}

fn default_grace_ms() -> u64 {
    30_000
}

fn default_rejoin_ms() -> u64 {
    60_000
}

impl WorkerConfig {
    /// A configuration joining `head` with defaults for everything else.
    pub fn new(head: SocketAddr, token: String, fingerprint: Fingerprint) -> Self {
        WorkerConfig {
            head,
            token,
            fingerprint,
            name: None,
            cpus: None,
            gpus: None,
            gpu_memory: None,
            accelerator: None,
            resources: Vec::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            heartbeat_ms: 500,
            grace_ms: default_grace_ms(),
            rejoin_ms: default_rejoin_ms(),
            launch: None,
        }
    }
}

/// Why a worker could not join or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The declared GPUs were invalid.
    #[error(transparent)]
    Gpus(#[from] GpuError),
    /// A declared CPU or custom amount was invalid.
    #[error(transparent)]
    Resources(#[from] ResourceError),
    /// The TLS set-up failed.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The head could not be reached, or its certificate is not the pinned one.
    #[error("cannot reach the head at {addr}: {reason}")]
    Connect {
        /// The head's address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The head refused this worker (a wrong token, for instance).
    #[error("the head refused this worker: {0}")]
    Refused(String),
    /// The connection to the head was lost.
    #[error("lost the connection to the head: {0}")]
    HeadLost(String),
    /// A protocol exchange failed.
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    /// A local I/O operation failed (binding the endpoint, the executor socket directory).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

struct WorkerState {
    node: NodeId,
    /// The head life (epoch) this node last joined under: commands of an older one are refused.
    epoch: std::sync::atomic::AtomicU64,
    /// The actor incarnations running here, as reported when joining again after a lost head.
    running: std::sync::Mutex<std::collections::BTreeMap<ActorId, RunningActor>>,
    /// The task leases open here.
    leases: std::sync::Mutex<std::collections::BTreeMap<LeaseId, Allocation>>,
    token: String,
    /// Where the head is, for the checkpoints of this worker's actors.
    head: SocketAddr,
    fingerprint: Fingerprint,
    /// The address actors listen on for direct calls (the port is chosen per actor).
    listen: std::net::IpAddr,
    pool: ExecutorPool,
    events: mpsc::UnboundedSender<WorkerEvent>,
}

impl WorkerState {
    /// Passes on to an executor what a command of head life `epoch` asks of it, unless this
    /// worker has re-joined a newer head life since the command arrived.
    async fn forward(
        &self,
        exec: &Executor,
        epoch: u64,
        make: impl FnOnce(u64) -> ExecRequest,
    ) -> Result<Vec<u8>, RemoteError> {
        check_epoch(self.epoch.load(std::sync::atomic::Ordering::SeqCst), epoch)?;
        exec.request(epoch, make).await
    }
}

/// What a worker keeps while it has no head: its node, its executors and the events they
/// raise, so that it can join again as the same node and keep running its work.
struct Session {
    state: Arc<WorkerState>,
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<WorkerEvent>>>,
}

impl Session {
    /// What it still runs, to say when joining again.
    fn rejoin(&self) -> Rejoin {
        let state = &self.state;
        Rejoin {
            node: state.node,
            epoch: state.epoch.load(std::sync::atomic::Ordering::SeqCst),
            actors: lock(&state.running).values().cloned().collect(),
            leases: lock(&state.leases)
                .iter()
                .map(|(&lease, allocation)| RunningLease {
                    lease,
                    allocation: allocation.clone(),
                })
                .collect(),
        }
    }

    /// Stops every executor: the node it was is given up.
    async fn stop(self) {
        tracing::warn!(node = %self.state.node, "stopping every executor of the node");
        self.state.pool.shutdown().await;
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The codes with which a live head closes a worker's connection when it gives the node up
/// (declared dead: 4; malformed events: 3). Any other end (a reset, a timeout, the head's
/// endpoint going away) may be a head restarting.
const LET_GO_CODES: [u32; 2] = [3, 4];

/// Whether the head closed the connection because it gave this node up, rather than being
/// lost (which may be a restart, worth waiting for with the executors kept).
fn head_let_go(reason: &quinn::ConnectionError) -> bool {
    matches!(reason, quinn::ConnectionError::ApplicationClosed(close)
        if LET_GO_CODES.iter().any(|&code| close.error_code == quinn::VarInt::from_u32(code)))
}

/// Runs a worker until `shutdown` resolves: then the head drains it (moves its actors away and
/// gives its tasks `grace_ms` to finish) and it leaves. A worker that loses the head keeps its
/// executors running (their callers reach them directly) and tries, with backoff, to join again
/// as the same node, reporting what it still runs, for up to `rejoin_ms`. After that it stops
/// its executors and tries as long again to join as a new node before giving up.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    tokio::pin!(shutdown);
    let window = Duration::from_millis(config.rejoin_ms);
    let mut session: Option<Session> = None;
    let mut lost_at: Option<tokio::time::Instant> = None;
    let mut backoff = Backoff::new();
    loop {
        let reached = std::cell::Cell::new(Reached::Nothing);
        let give_up_at = lost_at.filter(|_| session.is_some()).map(|t| t + window);
        let outcome = serve_once(
            &config,
            shutdown.as_mut(),
            &reached,
            &mut session,
            give_up_at,
        )
        .await;
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if lost_the_head(reached.get(), &e) => {
                if session.is_some() {
                    tracing::warn!("{e}: joining again as the same node, its executors kept");
                } else {
                    tracing::warn!("{e}: joining again as a new node");
                }
                lost_at = Some(tokio::time::Instant::now());
                backoff.reset();
            }
            Err(e) => {
                let elapsed = lost_at.map(|t| t.elapsed());
                if session.is_some() && elapsed.is_some_and(|e| e >= window) {
                    tracing::warn!(
                        "could not join again as the same node within {window:?} ({e}): \
                         giving it up and joining as a new node"
                    );
                    if let Some(session) = session.take() {
                        session.stop().await;
                    }
                    lost_at = Some(tokio::time::Instant::now());
                    continue;
                }
                if elapsed.is_none_or(|e| e >= window) {
                    if let Some(session) = session.take() {
                        session.stop().await;
                    }
                    return Err(e);
                }
                let wait = backoff.next_wait();
                tracing::debug!("cannot join yet ({e}); trying again in {wait:?}");
                let retry = tokio::time::sleep(wait);
                tokio::select! {
                    _ = retry => {}
                    _ = shutdown.as_mut() => {
                        if let Some(session) = session.take() {
                            session.stop().await;
                        }
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// How far one attempt to join got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    /// Not to the head.
    Nothing,
    /// A connection to the head, which may have taken this worker in before it was lost.
    Head,
    /// The head accepted this worker.
    Joined,
}

/// Whether an attempt that ended with `e` lost a head it had reached, to be joined again,
/// rather than found none or been refused by it: a head that took this worker in may have
/// died before its welcome arrived.
fn lost_the_head(reached: Reached, e: &WorkerError) -> bool {
    match reached {
        Reached::Joined => true,
        Reached::Head => !matches!(e, WorkerError::Refused(_)),
        Reached::Nothing => false,
    }
}

/// Joins once (as the node of `session`, if there is one) and serves until shutdown (`Ok`) or
/// until the head is lost. `reached` says how far it got: the head, then joined once the head
/// accepted this worker. `session` is
/// what lives on after a lost head: set on joining, taken (its executors stopped) on shutdown.
async fn serve_once(
    config: &WorkerConfig,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    reached: &std::cell::Cell<Reached>,
    session: &mut Option<Session>,
    give_up_at: Option<tokio::time::Instant>,
) -> Result<(), WorkerError> {
    let logical = gpu::parse_logical(
        config.gpus,
        config.gpu_memory.as_deref(),
        config.accelerator.as_deref(),
    )?;
    let inventory = gpu::discover(logical.as_ref());
    let monitor = GpuMonitor::new(&inventory);
    let cpus = match config.cpus {
        Some(c) => c,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
    };
    let mut custom = Vec::new();
    for (name, amount) in &config.resources {
        custom.push((name.clone(), to_millis(*amount)?));
    }
    custom.sort();
    let resources = NodeResources {
        cpu_millis: to_millis(cpus)?,
        gpus: inventory.devices.clone(),
        custom,
        // The head labels the node with the types listed in the hello.
        labels: Vec::new(),
    };

    let mut endpoint = quinn::Endpoint::client(config.listen)?;
    endpoint.set_default_client_config(client_config(config.fingerprint)?);
    let address = endpoint.local_addr()?;

    let connect_err = |reason: String| WorkerError::Connect {
        addr: config.head,
        reason,
    };
    let connecting = endpoint
        .connect(config.head, SERVER_NAME)
        .map_err(|e| connect_err(e.to_string()))?;
    // Kept executors may run only until the re-join window ends: an attempt does not outlast it.
    let conn = match give_up_at {
        Some(at) => match tokio::time::timeout_at(at, connecting).await {
            Ok(connected) => connected,
            Err(_) => {
                return Err(connect_err(
                    "the re-join window ended while connecting".into(),
                ))
            }
        },
        None => connecting.await,
    }
    .map_err(|e| connect_err(e.to_string()))?;
    reached.set(Reached::Head);

    let name = config.name.clone().unwrap_or_else(default_name);
    let hello = Hello::new(
        config.token.clone(),
        HelloRole::Worker(Box::new(WorkerHello {
            name: name.clone(),
            resources,
            task_types: registry::task_names(),
            actor_types: registry::actor_names(),
            address: address.to_string(),
            rejoin: session.as_ref().map(Session::rejoin),
            launch: config.launch.clone(),
        })),
    );
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let node = match say_hello(&hello, &mut recv, &mut send).await {
        Ok(Some(node)) => node,
        Ok(None) => return Err(WorkerError::Refused("the head gave no node id".into())),
        Err(HelloError::Refused(reason)) => return Err(WorkerError::Refused(reason)),
        Err(e) => {
            return Err(match conn.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(close)) => {
                    WorkerError::Refused(close.to_string())
                }
                _ => connect_err(format!("no welcome: {e}")),
            })
        }
    };
    let terms = match read_frame::<_, WorkerTerms>(&mut recv, HELLO_LIMIT).await {
        Ok(Some(terms)) => terms,
        Ok(None) => {
            return Err(connect_err(
                "the head sent no terms after its welcome".into(),
            ))
        }
        Err(e) => return Err(connect_err(format!("bad terms after the welcome: {e}"))),
    };
    let last_epoch = session.as_ref().map_or(0, |s| {
        s.state.epoch.load(std::sync::atomic::Ordering::SeqCst)
    });
    // A head of an older life than one this node joined (a stale head still running) is
    // refused like its commands.
    if let Err(stale) = check_epoch(last_epoch, terms.epoch) {
        conn.close(5u32.into(), b"a head of an older life");
        return Err(WorkerError::Refused(stale.message));
    }
    let _ = send.finish();
    reached.set(Reached::Joined);
    let same_node = session.as_ref().is_some_and(|s| s.state.node == node);
    if !same_node {
        if let Some(old) = session.take() {
            tracing::warn!(
                old = %old.state.node, %node,
                "the head did not take this worker back as the node it was: it joins as a new one"
            );
            old.stop().await;
        }
    }
    tracing::info!(
        %node, head = %config.head, %address, gpus = inventory.devices.len(),
        epoch = terms.epoch, rejoined = same_node,
        "worker {name} joined the cluster"
    );
    if session.is_none() {
        socket_dir::sweep_stale();
        let dir = socket_dir::create(node)?;
        // The cluster file in the worker's private directory: user code in its executors
        // joins the cluster as a client through it (`EMBER_CLUSTER`), e.g. to call an actor
        // whose handle it was passed.
        let cluster = ClusterFile {
            address: config.head,
            token: config.token.clone(),
            fingerprint: config.fingerprint,
        };
        if let Err(e) = cluster.write(&dir) {
            tracing::warn!("cannot write the cluster file for executors: {e}");
        }
        let (events, events_rx) = mpsc::unbounded_channel::<WorkerEvent>();
        let state = Arc::new(WorkerState {
            node,
            epoch: std::sync::atomic::AtomicU64::new(terms.epoch),
            running: Default::default(),
            leases: Default::default(),
            token: config.token.clone(),
            head: config.head,
            fingerprint: config.fingerprint,
            listen: actor_ip(config.listen.ip(), config.head),
            pool: ExecutorPool::new(dir, inventory.gpu_kind()),
            events,
        });
        *session = Some(Session {
            state,
            events: Arc::new(tokio::sync::Mutex::new(events_rx)),
        });
    }
    let Some(current) = session.as_ref() else {
        return Err(WorkerError::HeadLost("no session".into()));
    };
    let state = current.state.clone();
    state
        .epoch
        .store(terms.epoch, std::sync::atomic::Ordering::SeqCst);

    // Events (heartbeats first of all) travel on one stream of their own, apart from work.
    // The queue outlives the connection: what an executor raises while the head is away is
    // sent once it is back.
    let events_tx = state.events.clone();
    let events_rx = current.events.clone();
    let mut events_stream = conn
        .open_uni()
        .await
        .map_err(|e| WorkerError::HeadLost(e.to_string()))?;
    let events_task = tokio::spawn(async move {
        let mut events_rx = events_rx.lock().await;
        while let Some(ev) = events_rx.recv().await {
            let leaving = matches!(ev, WorkerEvent::Leaving { .. });
            if write_frame(&mut events_stream, &ev).await.is_err() {
                break;
            }
            if leaving {
                let _ = events_stream.finish();
                let _ = events_stream.stopped().await;
                break;
            }
        }
    });
    let heartbeat = {
        let events = events_tx.clone();
        let period = Duration::from_millis(config.heartbeat_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let gpus = monitor.sample();
                if events.send(WorkerEvent::Heartbeat { gpus }).is_err() {
                    break;
                }
            }
        })
    };

    let commands = {
        let state = state.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(handle_command(state.clone(), send, recv));
            }
        })
    };

    let outcome = tokio::select! {
        _ = shutdown => {
            tracing::info!(%node, "worker leaving the cluster: the head drains it");
            let grace_ms = config.grace_ms;
            let _ = state.events.send(WorkerEvent::Leaving { grace_ms });
            // The head closes the connection once the actors moved and the tasks ended (or the
            // grace period did); moving actors may take a little longer than the grace.
            let drained = Duration::from_millis(grace_ms) + Duration::from_secs(10);
            let _ = tokio::time::timeout(drained, conn.closed()).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), events_task).await;
            conn.close(0u32.into(), b"worker leaving");
            if let Some(session) = session.take() {
                session.state.pool.shutdown().await;
            }
            Ok(())
        }
        reason = conn.closed() => {
            events_task.abort();
            if head_let_go(&reason) {
                // The head lives and gave this node up (it restarts its actors elsewhere):
                // nothing of it may keep running.
                tracing::warn!(%node, "the head let this worker go: {reason}");
                if let Some(session) = session.take() {
                    session.stop().await;
                }
                if config.launch.is_some() {
                    // A node the autoscaler launched and the head let go (released, or given
                    // up) is not coming back: its provider stops its machine.
                    tracing::info!(%node, "launched by the autoscaler and let go: leaving");
                    return Ok(());
                }
            } else {
                tracing::warn!(%node, "lost the head: {reason}");
            }
            Err(WorkerError::HeadLost(reason.to_string()))
        }
    };
    heartbeat.abort();
    commands.abort();
    endpoint.close(0u32.into(), b"worker stopped");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    outcome
}

/// The IP actors listen on: the configured one, or, when that is unspecified, the local IP
/// through which this machine routes to the head (so clients that reach the head reach them).
/// Asks the kernel by connecting an unbound UDP socket, which sends nothing.
fn actor_ip(configured: std::net::IpAddr, head: SocketAddr) -> std::net::IpAddr {
    if !configured.is_unspecified() {
        return configured;
    }
    let routed = std::net::UdpSocket::bind(SocketAddr::new(configured, 0))
        .and_then(|s| s.connect(head).and_then(|()| s.local_addr()));
    match routed {
        Ok(local) => local.ip(),
        Err(e) => {
            tracing::warn!(
                "cannot tell which local address reaches the head ({e}): actors listen on loopback"
            );
            std::net::IpAddr::from([127, 0, 0, 1])
        }
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "worker".to_string());
    format!("{host}-{}", std::process::id())
}

async fn handle_command(
    state: Arc<WorkerState>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (epoch, cmd) = match read_frame::<_, EpochCommand>(&mut recv, MAX_FRAME).await {
        Ok(Some(fenced)) => {
            let joined = state.epoch.load(std::sync::atomic::Ordering::SeqCst);
            if let Err(e) = check_epoch(joined, fenced.epoch) {
                tracing::warn!("refused a command: {}", e.message);
                let _ = write_frame(&mut send, &WorkerReply::Error(e)).await;
                let _ = send.finish();
                return;
            }
            (fenced.epoch, fenced.command)
        }
        Ok(None) => return,
        Err(e) => {
            let err = RemoteError::new(ErrorKind::BadRequest, format!("bad command: {e}"));
            let _ = write_frame(&mut send, &WorkerReply::Error(err)).await;
            return;
        }
    };
    let reply = match cmd {
        WorkerCommand::OpenLease { lease, allocation } => {
            tracing::debug!(%lease, "opening a task lease");
            match open_lease(&state, epoch, lease, allocation).await {
                Ok(endpoints) => WorkerReply::LeaseOpened(endpoints),
                Err(e) => WorkerReply::Error(e),
            }
        }
        WorkerCommand::CloseLease { lease } => {
            lock(&state.leases).remove(&lease);
            if let Some(exec) = state.pool.remove_lease(lease) {
                let _ = state
                    .forward(&exec, epoch, |id| ExecRequest::CloseLease { id, lease })
                    .await;
            }
            WorkerReply::LeaseClosed
        }
        WorkerCommand::CreateActor {
            actor,
            type_name,
            args,
            allocation,
            incarnation,
            checkpoint,
            restore,
        } => {
            let start = ActorStart {
                actor,
                incarnation,
                type_name,
                args,
                allocation,
                checkpoint,
                restore,
            };
            match create_actor(&state, epoch, start).await {
                Ok(endpoints) => WorkerReply::ActorReady(endpoints),
                Err(e) => WorkerReply::Error(e),
            }
        }
        WorkerCommand::Probe { actor, incarnation } => WorkerReply::Probed {
            alive: state
                .pool
                .actor(actor)
                .is_some_and(|(i, exec)| i == incarnation && exec.is_alive()),
        },
        WorkerCommand::SealActor { actor } => match seal_actor(&state, epoch, actor).await {
            Ok(seq) => {
                if let Some(running) = lock(&state.running).get_mut(&actor) {
                    running.sealed = true;
                }
                WorkerReply::Sealed { seq }
            }
            Err(e) => WorkerReply::Error(e),
        },
        WorkerCommand::KillActor { actor, incarnation } => {
            forget_running(&state, actor, incarnation);
            if let Some(exec) = state.pool.remove_actor_incarnation(actor, incarnation) {
                exec.kill().await;
            }
            WorkerReply::ActorKilled
        }
        WorkerCommand::RunJob {
            job,
            command,
            env,
            allocation,
        } => {
            job::run(
                state.node, job, command, env, allocation, &mut send, &mut recv,
            )
            .await;
            let _ = send.finish();
            return;
        }
    };
    let _ = write_frame(&mut send, &reply).await;
    let _ = send.finish();
}

/// Opens a task lease on the executor for the allocation's GPUs (started on first use).
async fn open_lease(
    state: &WorkerState,
    epoch: u64,
    lease: LeaseId,
    allocation: Allocation,
) -> Result<LeaseEndpoints, RemoteError> {
    let granted = allocation.clone();
    let exec = state
        .pool
        .for_tasks(&allocation.cuda_visible_devices())
        .await
        .map_err(|e| {
            RemoteError::new(ErrorKind::Internal, format!("cannot start executor: {e}"))
        })?;
    let node = state.node;
    let endpoints = state
        .forward(&exec, epoch, |id| ExecRequest::OpenLease {
            id,
            lease,
            node,
            allocation,
            token: state.token.clone(),
            listen: state.listen.to_string(),
            socket: state.pool.socket_path(&lease.to_string()),
        })
        .await
        .and_then(|bytes| {
            decode::<LeaseEndpoints>(&bytes)
                .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))
        })?;
    state.pool.add_lease(lease, exec);
    lock(&state.leases).insert(lease, granted);
    Ok(endpoints)
}

/// Everything about an actor to start, as the head sent it.
struct ActorStart {
    actor: ActorId,
    incarnation: u32,
    type_name: String,
    args: Vec<u8>,
    allocation: Allocation,
    checkpoint: CheckpointPolicy,
    restore: Option<Vec<u8>>,
}

async fn create_actor(
    state: &Arc<WorkerState>,
    epoch: u64,
    start: ActorStart,
) -> Result<ActorEndpoints, RemoteError> {
    let ActorStart {
        actor,
        incarnation,
        type_name,
        args,
        allocation,
        checkpoint,
        restore,
    } = start;
    let granted = allocation.clone();
    let exec = state
        .pool
        .for_actor(actor, incarnation, &allocation.cuda_visible_devices())
        .await
        .map_err(|e| {
            RemoteError::new(ErrorKind::Internal, format!("cannot start executor: {e}"))
        })?;
    let node = state.node;
    let created = state
        .forward(&exec, epoch, |id| ExecRequest::CreateActor {
            id,
            actor,
            type_name,
            args,
            node,
            allocation,
            token: state.token.clone(),
            listen: state.listen.to_string(),
            socket: state.pool.socket_path(&format!("{actor}-{incarnation}")),
            incarnation,
            checkpoint,
            restore,
            head: state.head.to_string(),
            head_fingerprint: state.fingerprint,
        })
        .await
        .and_then(|bytes| {
            decode::<ActorEndpoints>(&bytes)
                .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))
        });
    let endpoint = match created {
        Ok(endpoint) => endpoint,
        Err(e) => {
            if state.pool.remove_actor_if(actor, &exec) {
                exec.kill().await;
            }
            return Err(e);
        }
    };
    lock(&state.running).insert(
        actor,
        RunningActor {
            actor,
            incarnation,
            allocation: granted,
            endpoints: endpoint.clone(),
            sealed: false,
        },
    );
    // Report an actor whose process ends without being asked to.
    let watcher = state.clone();
    tokio::spawn(async move {
        let reason = exec.exited().await;
        forget_running(&watcher, actor, incarnation);
        if watcher.pool.remove_actor_if(actor, &exec) {
            tracing::warn!(%actor, incarnation, "actor's process ended: {reason}");
            let _ = watcher.events.send(WorkerEvent::ActorExited {
                actor,
                incarnation,
                reason,
            });
        }
    });
    Ok(endpoint)
}

/// Forgets that incarnation `incarnation` of `actor` runs here (not a newer one).
fn forget_running(state: &WorkerState, actor: ActorId, incarnation: u32) {
    let mut running = lock(&state.running);
    if running
        .get(&actor)
        .is_some_and(|r| r.incarnation == incarnation)
    {
        running.remove(&actor);
    }
}

/// Seals an actor for a move: its final checkpoint's sequence number, if its type can make one.
async fn seal_actor(
    state: &WorkerState,
    epoch: u64,
    actor: ActorId,
) -> Result<Option<u64>, RemoteError> {
    let Some((_, exec)) = state.pool.actor(actor) else {
        return Err(RemoteError::new(
            ErrorKind::Unknown,
            format!("no actor {actor} on this worker"),
        ));
    };
    let bytes = state
        .forward(&exec, epoch, |id| ExecRequest::Seal { id })
        .await?;
    decode::<Option<u64>>(&bytes).map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_head_that_gave_the_node_up_makes_it_stop_at_once() {
        let closed = |code: u32| {
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: bytes::Bytes::from_static(b"why"),
            })
        };
        assert!(head_let_go(&closed(4)), "declared dead");
        assert!(head_let_go(&closed(3)), "malformed events");
        assert!(!head_let_go(&closed(0)), "the head stopping (a restart)");
        assert!(!head_let_go(&quinn::ConnectionError::TimedOut));
        assert!(!head_let_go(&quinn::ConnectionError::Reset));
    }

    #[test]
    fn a_head_lost_before_its_welcome_is_joined_again_but_a_refusal_ends_it() {
        let head = "127.0.0.1:7700".parse().unwrap();
        let reset = WorkerError::Connect {
            addr: head,
            reason: "no welcome: reset by peer".into(),
        };
        let refused = WorkerError::Refused("wrong token".into());
        assert!(lost_the_head(Reached::Joined, &reset));
        assert!(lost_the_head(Reached::Head, &reset), "taken in, maybe");
        assert!(!lost_the_head(Reached::Head, &refused));
        assert!(!lost_the_head(Reached::Nothing, &reset), "no head there");
    }

    #[test]
    fn actors_listen_where_the_head_is_reached() {
        let head: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        let any = std::net::IpAddr::from([0, 0, 0, 0]);
        // Unspecified: the local address that routes to the head.
        assert_eq!(actor_ip(any, head), std::net::IpAddr::from([127, 0, 0, 1]));
        // Configured: kept as given.
        let given = std::net::IpAddr::from([127, 0, 0, 2]);
        assert_eq!(actor_ip(given, head), given);
    }
}
