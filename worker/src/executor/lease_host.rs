//! The task leases of an executor process. Each open lease runs its tasks one at a time on a
//! thread of its own, so a lease never uses more than it was given. Tasks from this machine
//! arrive on the lease's own Unix socket, served by that thread, and run inline with no
//! hand-off; tasks from elsewhere arrive on the executor's QUIC endpoint (opened with the first
//! lease, served by the main thread) and are passed to the lease's thread. Both paths check the
//! cluster token first. A caller may send several tasks before the first ends (pipelining):
//! they queue and run in order. A lease closed with tasks queued sends the replies of those
//! it ran and runs no more; a task left without a reply did not run.

use std::net::SocketAddr;
use std::sync::Arc;

use dashmap::DashMap;
use ember_core::host::host_id;
use ember_core::ids::{LeaseId, NodeId};
use ember_core::proto::{
    CallReply, ErrorKind, LeaseEndpoints, LeasedTask, LocalReply, LocalTask, RemoteError,
};
use ember_core::resources::Allocation;
use ember_core::security::{server_config, Fingerprint, Identity};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch, OnceCell};

use super::actor_host::greet;
use super::guarded::guarded;
use super::local_socket::{self, Answer};
use super::quic_call;
use crate::context::{self, GpuKind, TaskContext};
use crate::registry;

/// How long a closing lease waits for its local callers to take their last replies.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A task that arrived over QUIC, on its way to its lease's thread.
struct Remote {
    task: LeasedTask,
    reply: oneshot::Sender<CallReply>,
}

/// An open lease, as the main thread holds it.
struct OpenLease {
    remote: mpsc::UnboundedSender<Remote>,
    stop: oneshot::Sender<()>,
    ended: oneshot::Receiver<()>,
}

/// What a lease is and where it listens.
pub(crate) struct LeaseSpec {
    pub(crate) lease: LeaseId,
    pub(crate) node: NodeId,
    pub(crate) allocation: Allocation,
    pub(crate) token: String,
    pub(crate) listen: String,
    pub(crate) socket: String,
}

/// The executor's open leases and its QUIC endpoint for them.
pub(crate) struct Leases {
    gpu_kind: GpuKind,
    open: Arc<DashMap<LeaseId, OpenLease>>,
    /// The QUIC endpoint's address and certificate, once opened.
    endpoint: OnceCell<(SocketAddr, Fingerprint)>,
}

impl Leases {
    /// No leases yet, for an executor whose GPUs are of kind `gpu_kind`.
    pub(crate) fn new(gpu_kind: GpuKind) -> Self {
        Leases {
            gpu_kind,
            open: Arc::new(DashMap::new()),
            endpoint: OnceCell::new(),
        }
    }

    /// Opens a lease: starts its thread, which listens on the lease's socket.
    pub(crate) async fn open(&self, spec: LeaseSpec) -> Result<LeaseEndpoints, RemoteError> {
        let (addr, fingerprint) = *self
            .endpoint
            .get_or_try_init(|| serve_quic(&spec.listen, &spec.token, self.open.clone()))
            .await?;
        let (remote_tx, remote_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ended_tx, ended_rx) = oneshot::channel();
        let (bound_tx, bound_rx) = oneshot::channel();
        let lease = spec.lease;
        let socket = spec.socket.clone();
        let thread = LeaseThread {
            lease,
            context: TaskContext {
                node: spec.node,
                allocation: spec.allocation,
                gpu_kind: self.gpu_kind,
            },
            socket: spec.socket,
            token: spec.token,
        };
        std::thread::Builder::new()
            .name(format!("{lease}"))
            .spawn(move || {
                thread.run(remote_rx, stop_rx, bound_tx);
                let _ = ended_tx.send(());
            })
            .map_err(|e| internal(format!("cannot start the lease's thread: {e}")))?;
        bound_rx
            .await
            .map_err(|_| internal("the lease's thread ended at start".into()))??;
        self.open.insert(
            lease,
            OpenLease {
                remote: remote_tx,
                stop: stop_tx,
                ended: ended_rx,
            },
        );
        Ok(LeaseEndpoints {
            peer_addr: addr.to_string(),
            peer_fingerprint: fingerprint,
            host: host_id().to_string(),
            local_socket: socket,
        })
    }

    /// Closes a lease and waits until its thread, and the task it was running, ended.
    pub(crate) async fn close(&self, lease: LeaseId) {
        if let Some((_, open)) = self.open.remove(&lease) {
            let _ = open.stop.send(());
            let _ = open.ended.await;
        }
    }
}

fn internal(e: String) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e)
}

/// Told to a task sent on a lease that is not open here: it did not run.
fn not_open(lease: LeaseId) -> RemoteError {
    RemoteError::new(
        ErrorKind::Moved,
        format!(
            "{lease} is not open on this executor (given back or taken back): the task did not run"
        ),
    )
}

/// Opens the executor's QUIC endpoint and serves it on the main thread.
async fn serve_quic(
    listen: &str,
    token: &str,
    open: Arc<DashMap<LeaseId, OpenLease>>,
) -> Result<(SocketAddr, Fingerprint), RemoteError> {
    let ip: std::net::IpAddr = listen
        .parse()
        .map_err(|e| internal(format!("bad listen address {listen}: {e}")))?;
    let identity = Identity::ephemeral().map_err(|e| internal(e.to_string()))?;
    let config = server_config(&identity).map_err(|e| internal(e.to_string()))?;
    let endpoint = quinn::Endpoint::server(config, SocketAddr::new(ip, 0))
        .map_err(|e| internal(format!("cannot listen on {ip}: {e}")))?;
    let addr = endpoint.local_addr().map_err(|e| internal(e.to_string()))?;
    let token = token.to_string();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(serve_quic_caller(token.clone(), open.clone(), incoming));
        }
    });
    Ok((addr, identity.fingerprint))
}

/// Serves one caller over QUIC: its hello, then one task per stream, each passed to its
/// lease's thread.
async fn serve_quic_caller(
    token: String,
    open: Arc<DashMap<LeaseId, OpenLease>>,
    incoming: quinn::Incoming,
) {
    let Ok(conn) = incoming.await else { return };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let accepted = greet(&token, &mut recv, &mut send).await;
    if !quic_call::end_hello(send, &conn, accepted).await {
        return;
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        let open = open.clone();
        tokio::spawn(quic_call::answer_stream(
            send,
            recv,
            "task",
            async move |task: LeasedTask| {
                let lease = task.lease;
                let (tx, rx) = oneshot::channel();
                let sent = open
                    .get(&lease)
                    .is_some_and(|o| o.remote.send(Remote { task, reply: tx }).is_ok());
                if sent {
                    rx.await.unwrap_or_else(|_| Err(not_open(lease)))
                } else {
                    Err(not_open(lease))
                }
            },
        ));
    }
}

/// What a lease's thread needs.
struct LeaseThread {
    lease: LeaseId,
    context: TaskContext,
    socket: String,
    token: String,
}

impl LeaseThread {
    /// Listens on the lease's socket, says so on `bound`, then runs tasks until told to stop.
    fn run(
        self,
        mut remote: mpsc::UnboundedReceiver<Remote>,
        mut stop: oneshot::Receiver<()>,
        bound: oneshot::Sender<Result<(), RemoteError>>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = bound.send(Err(internal(e.to_string())));
                return;
            }
        };
        let this = std::rc::Rc::new(self);
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let listener = match UnixListener::bind(&this.socket) {
                Ok(l) => l,
                Err(e) => {
                    let msg = format!("cannot listen on {}: {e}", this.socket);
                    let _ = bound.send(Err(internal(msg)));
                    return;
                }
            };
            let _ = bound.send(Ok(()));
            let (closing, closed) = watch::channel(false);
            let mut callers = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    job = remote.recv() => match job {
                        Some(Remote { task, reply }) => {
                            let _ = reply.send(this.run_task(task));
                        }
                        None => break,
                    },
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            let lease = this.clone();
                            let mut closed = closed.clone();
                            let closing = async move {
                                let _ = closed.wait_for(|c| *c).await;
                            };
                            callers.spawn_local(async move {
                                let answer = async |t: LocalTask| Answer::Now(LocalReply {
                                    id: t.id,
                                    reply: lease.run_task(t.task),
                                });
                                local_socket::serve(&lease.token, stream, closing, answer).await;
                            });
                        }
                    }
                }
            }
            // Tasks already run have their replies sent; those still queued do not run.
            // Bounded, for a caller that stopped reading its replies.
            let _ = closing.send(true);
            let drained = async { while callers.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(CLOSE_WAIT, drained).await;
        });
        // Dropping the runtime ends the local callers' connections.
        let _ = std::fs::remove_file(&this.socket);
    }

    /// Runs one task of this lease, inline, with the lease's context.
    fn run_task(&self, task: LeasedTask) -> CallReply {
        if task.lease != self.lease {
            return Err(RemoteError::new(
                ErrorKind::BadRequest,
                format!("this socket serves {}, not {}", self.lease, task.lease),
            ));
        }
        let name = task.name;
        let Some(entry) = registry::task(&name) else {
            return Err(RemoteError::new(
                ErrorKind::Unknown,
                format!("no task `{name}` in this executable"),
            ));
        };
        context::with_task(self.context.clone(), || {
            guarded(|| (entry.invoke)(&task.args))
        })
    }
}
