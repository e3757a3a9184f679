//! The worker's side of its executor processes: starting them with the right
//! `CUDA_VISIBLE_DEVICES`, sending them work and noticing when they die.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ember_core::ids::{ActorId, LeaseId};
use ember_core::proto::{read_frame, write_frame, ErrorKind, RemoteError, MAX_FRAME};
use tokio::net::UnixListener;
use tokio::process::Command;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

use super::gro_switch::GroSwitch;
use super::protocol::{ExecCommand, ExecReply, ExecRequest};
use super::warm::{WarmExecutors, WARM_LIMIT};
use crate::context::GpuKind;
use crate::role::{ROLE_EXECUTOR, ROLE_VAR, SOCKET_VAR, WORKER_PID_VAR};

type Pending = Arc<DashMap<u64, oneshot::Sender<Result<Vec<u8>, RemoteError>>>>;

/// One executor process and the connection to it.
pub(crate) struct Executor {
    requests: mpsc::UnboundedSender<ExecCommand>,
    pending: Pending,
    next_id: AtomicU64,
    exited: watch::Receiver<Option<String>>,
    kill: Mutex<Option<oneshot::Sender<()>>>,
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

impl Executor {
    /// Starts an executor process of this executable seeing only `cuda_visible` GPUs, which
    /// are of kind `gpu_kind`.
    pub(crate) async fn spawn(
        dir: &Path,
        cuda_visible: &str,
        gpu_kind: GpuKind,
    ) -> std::io::Result<Arc<Executor>> {
        let path = dir.join(format!(
            "exec-{}.sock",
            SOCKETS.fetch_add(1, Ordering::Relaxed)
        ));
        let listener = UnixListener::bind(&path)?;
        let mut cmd = crate::role::program()?.command();
        cmd.env(ROLE_VAR, ROLE_EXECUTOR)
            .env(SOCKET_VAR, &path)
            .env("CUDA_VISIBLE_DEVICES", cuda_visible)
            .env(GpuKind::VAR, gpu_kind.as_env())
            .env(
                "EMBER_CLUSTER",
                dir.join(ember_core::security::ClusterFile::FILE_NAME),
            )
            .env(WORKER_PID_VAR, std::process::id().to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        // The executor arms `PR_SET_PDEATHSIG` itself, first thing (`die_with_worker`), and
        // checks that its parent is still this process: with no code to run between fork and
        // exec, the standard library starts it with `posix_spawn` (a vfork), which copies
        // nothing of the worker, where a fork copied its page tables. The kernel then kills the
        // executor the moment the thread that started it exits, and that thread is the spawner
        // thread (`spawn_child`), which lives as long as the worker process: so the executor
        // dies with its worker, however the worker dies, and no actor outlives its worker to
        // answer calls the head no longer routes to it.
        let mut child = spawn_child(cmd).await?;
        let accepted = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(20), listener.accept()) => r,
            status = child.wait() => {
                let _ = std::fs::remove_file(&path);
                return Err(std::io::Error::other(format!("executor process exited at start: {status:?}")));
            }
        };
        let _ = std::fs::remove_file(&path);
        let (stream, _) = accepted
            .map_err(|_| std::io::Error::other("executor process did not connect within 20 s"))??;
        let (mut rd, mut wr) = stream.into_split();

        let (req_tx, mut req_rx) = mpsc::unbounded_channel::<ExecCommand>();
        tokio::spawn(async move {
            while let Some(req) = req_rx.recv().await {
                if write_frame(&mut wr, &req).await.is_err() {
                    break;
                }
            }
        });

        let pending: Pending = Arc::new(DashMap::new());
        let (exit_tx, exit_rx) = watch::channel(None);
        let (kill_tx, mut kill_rx) = oneshot::channel::<()>();
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            // Read replies until the process goes or is to be killed: a kill must not wait
            // for a live process to close its socket by itself.
            let killed = loop {
                tokio::select! {
                    r = read_frame::<_, ExecReply>(&mut rd, MAX_FRAME) => match r {
                        Ok(Some(reply)) => {
                            if let Some((_, tx)) = reader_pending.remove(&reply.id) {
                                let _ = tx.send(reply.result);
                            }
                        }
                        _ => break false,
                    },
                    _ = &mut kill_rx => break true,
                }
            };
            // The process is gone (or going): learn how, then fail what was in flight.
            let status = if killed {
                let _ = child.kill().await;
                child.wait().await
            } else {
                tokio::select! {
                    s = child.wait() => s,
                    _ = kill_rx => { let _ = child.kill().await; child.wait().await }
                }
            };
            let reason = match status {
                Ok(s) => describe_exit(s),
                Err(e) => format!("executor process lost: {e}"),
            };
            let ids: Vec<u64> = reader_pending.iter().map(|e| *e.key()).collect();
            for id in ids {
                if let Some((_, tx)) = reader_pending.remove(&id) {
                    let _ = tx.send(Err(RemoteError::new(ErrorKind::WorkerDied, reason.clone())));
                }
            }
            let _ = exit_tx.send(Some(reason));
        });

        Ok(Arc::new(Executor {
            requests: req_tx,
            pending,
            next_id: AtomicU64::new(1),
            exited: exit_rx,
            kill: Mutex::new(Some(kill_tx)),
        }))
    }

    /// Sends one request built around a fresh id, on behalf of a command of head life
    /// `epoch`, and waits for its reply.
    pub(crate) async fn request(
        &self,
        epoch: u64,
        make: impl FnOnce(u64) -> ExecRequest,
    ) -> Result<Vec<u8>, RemoteError> {
        if let Some(reason) = self.exited.borrow().clone() {
            return Err(RemoteError::new(ErrorKind::WorkerDied, reason));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, tx);
        let req = make(id);
        debug_assert_eq!(req.id(), id);
        if self
            .requests
            .send(ExecCommand {
                epoch,
                request: req,
            })
            .is_err()
        {
            self.pending.remove(&id);
            return Err(RemoteError::new(
                ErrorKind::WorkerDied,
                "executor process is gone",
            ));
        }
        rx.await.unwrap_or_else(|_| {
            Err(RemoteError::new(
                ErrorKind::WorkerDied,
                "executor process is gone",
            ))
        })
    }

    /// True while the process runs.
    pub(crate) fn is_alive(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// Waits for the process to end and says how it ended.
    pub(crate) async fn exited(&self) -> String {
        let mut rx = self.exited.clone();
        loop {
            if let Some(reason) = rx.borrow().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return "executor process lost".to_string();
            }
        }
    }

    /// Kills the process (SIGKILL) and waits until it is gone.
    pub(crate) async fn kill(&self) {
        if let Some(k) = self.kill.lock().await.take() {
            let _ = k.send(());
        }
        self.exited().await;
    }
}

/// A command to start, the runtime whose process driver will reap the child, and where to
/// send the child.
type SpawnJob = (
    Command,
    Handle,
    oneshot::Sender<std::io::Result<tokio::process::Child>>,
);

/// The spawner thread's queue; the thread is started on first use.
static SPAWNER: std::sync::Mutex<Option<std::sync::mpsc::Sender<SpawnJob>>> =
    std::sync::Mutex::new(None);

/// Starts `cmd` (an executor, or a job) from the spawner thread: one thread of the worker process that does nothing
/// else and never exits (its queue's sender lives in a static, so its loop never ends, and a
/// panicking spawn is caught). `PR_SET_PDEATHSIG` fires when the *thread* that started the
/// child exits, not its process: started from a runtime's or the blocking pool's threads, an
/// executor would be killed when that thread ends (an idle blocking-pool thread does, after
/// a few seconds; a multi-thread runtime hands its workers between threads) while its worker
/// lives on. Started here, it dies exactly when the worker process does, whatever runtime or
/// thread asked for it.
pub(crate) async fn spawn_child(cmd: Command) -> std::io::Result<tokio::process::Child> {
    let gone = || std::io::Error::other("the executor spawner thread is gone");
    let queue = {
        let mut slot = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(queue) => queue.clone(),
            None => {
                let (queue, jobs) = std::sync::mpsc::channel::<SpawnJob>();
                std::thread::Builder::new()
                    .name("ember-spawner".into())
                    .spawn(move || {
                        for (mut cmd, runtime, reply) in jobs {
                            let _runtime = runtime.enter();
                            let child = catch_unwind(AssertUnwindSafe(|| cmd.spawn()))
                                .unwrap_or_else(|_| {
                                    Err(std::io::Error::other("spawning the executor panicked"))
                                });
                            let _ = reply.send(child);
                        }
                    })?;
                *slot = Some(queue.clone());
                queue
            }
        }
    };
    let (reply, child) = oneshot::channel();
    queue
        .send((cmd, Handle::current(), reply))
        .map_err(|_| gone())?;
    child.await.map_err(|_| gone())?
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "executor process exited".to_string(),
        (Some(c), _) => format!("executor process exited with code {c}"),
        (None, Some(sig)) => format!("executor process was killed by signal {sig}"),
        _ => "executor process ended".to_string(),
    }
}

/// The executors of one worker: a shared one per GPU set for tasks, one per actor, and a few
/// started ahead for the next actors.
pub(crate) struct ExecutorPool {
    dir: PathBuf,
    /// The kind of the worker's GPUs, passed on to every executor.
    gpu_kind: GpuKind,
    tasks: Mutex<HashMap<String, Arc<Executor>>>,
    /// Each actor's executor, with the incarnation it hosts.
    actors: DashMap<ActorId, (u32, Arc<Executor>)>,
    /// The executor holding each open task lease.
    leases: DashMap<LeaseId, Arc<Executor>>,
    /// Executors started ahead of the next actors.
    warm: WarmExecutors,
    /// Held so that starting an executor's QUIC endpoint does not rewrite kernel code
    /// (see [`GroSwitch`]).
    _gro_switch: Option<GroSwitch>,
}

impl ExecutorPool {
    /// A pool whose sockets live in `dir` (made by [`socket_dir::create`](super::socket_dir::create)),
    /// for a worker whose GPUs are of kind `gpu_kind`.
    pub(crate) fn new(dir: PathBuf, gpu_kind: GpuKind) -> Self {
        ExecutorPool {
            warm: WarmExecutors::new(dir.clone(), gpu_kind, WARM_LIMIT),
            dir,
            gpu_kind,
            tasks: Mutex::new(HashMap::new()),
            actors: DashMap::new(),
            leases: DashMap::new(),
            _gro_switch: GroSwitch::hold(),
        }
    }

    /// The executor that runs tasks seeing exactly `cuda_visible`, started on first use.
    pub(crate) async fn for_tasks(&self, cuda_visible: &str) -> std::io::Result<Arc<Executor>> {
        let mut tasks = self.tasks.lock().await;
        if let Some(e) = tasks.get(cuda_visible) {
            if e.is_alive() {
                return Ok(e.clone());
            }
        }
        let e = Executor::spawn(&self.dir, cuda_visible, self.gpu_kind).await?;
        tasks.insert(cuda_visible.to_string(), e.clone());
        Ok(e)
    }

    /// The dedicated executor of incarnation `incarnation` of an actor that sees exactly
    /// `cuda_visible`: the one started ahead for that GPU set when there is one, a new one
    /// otherwise. Either way, another is started for the next actor with those GPUs.
    pub(crate) async fn for_actor(
        &self,
        actor: ActorId,
        incarnation: u32,
        cuda_visible: &str,
    ) -> std::io::Result<Arc<Executor>> {
        let warm = match self.warm.take_and_refill(cuda_visible) {
            Some(taken) => taken.ready().await,
            None => None,
        };
        let e = match warm {
            Some(e) => e,
            None => Executor::spawn(&self.dir, cuda_visible, self.gpu_kind).await?,
        };
        if let Some((_, old)) = self.actors.insert(actor, (incarnation, e.clone())) {
            // An older incarnation the head gave up on: it must not take calls any more.
            old.kill().await;
        }
        Ok(e)
    }

    /// The executor of an actor, with the incarnation it hosts.
    pub(crate) fn actor(&self, actor: ActorId) -> Option<(u32, Arc<Executor>)> {
        self.actors.get(&actor).map(|e| e.value().clone())
    }

    /// Records the executor holding an open task lease.
    pub(crate) fn add_lease(&self, lease: LeaseId, exec: Arc<Executor>) {
        self.leases.insert(lease, exec);
    }

    /// Forgets a task lease, returning the executor holding it.
    pub(crate) fn remove_lease(&self, lease: LeaseId) -> Option<Arc<Executor>> {
        self.leases.remove(&lease).map(|(_, e)| e)
    }

    /// A path for a Unix socket named `name` in this pool's private directory.
    pub(crate) fn socket_path(&self, name: &str) -> String {
        self.dir.join(format!("{name}.sock")).display().to_string()
    }

    /// Forgets an actor's executor if it runs `incarnation` (not a newer one), returning it.
    pub(crate) fn remove_actor_incarnation(
        &self,
        actor: ActorId,
        incarnation: u32,
    ) -> Option<Arc<Executor>> {
        self.actors
            .remove_if(&actor, |_, (i, _)| *i == incarnation)
            .map(|(_, (_, e))| e)
    }

    /// Forgets an actor's executor if it is still `exec` (not a newer incarnation's).
    pub(crate) fn remove_actor_if(&self, actor: ActorId, exec: &Arc<Executor>) -> bool {
        self.actors
            .remove_if(&actor, |_, (_, e)| Arc::ptr_eq(e, exec))
            .is_some()
    }

    /// Kills every executor.
    pub(crate) async fn shutdown(&self) {
        self.warm.shutdown().await;
        let actors: Vec<Arc<Executor>> = self.actors.iter().map(|e| e.value().1.clone()).collect();
        self.actors.clear();
        self.leases.clear();
        for e in actors {
            e.kill().await;
        }
        let tasks: Vec<Arc<Executor>> = self.tasks.lock().await.drain().map(|(_, e)| e).collect();
        for e in tasks {
            e.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
