//! The one actor of an executor process. Its instance lives on a thread of its own that runs
//! a single-threaded runtime: calls from this machine arrive on a Unix socket served by that
//! thread and run inline, with no hand-off; calls from elsewhere arrive on a QUIC endpoint
//! (served by the process's main thread, so its connections stay alive during long calls) and
//! are passed to the actor's thread. Both paths check the cluster token first.
//!
//! Calls start one at a time on the actor's thread; one that ends later (a Python `async def`
//! method) lets the next start meanwhile, unless the actor checkpoints ([`ActorCore`]). Both
//! paths keep taking calls while earlier ones run, and answer each when it ends.
//!
//! An actor that checkpoints saves its state through the head after every N calls, every T
//! milliseconds, on demand ([`ember_core::proto::CHECKPOINT_METHOD`]) and when sealed for a
//! move. A call that triggers a checkpoint is answered only once the head has recorded it, so
//! with a checkpoint after every call no acknowledged call is ever lost. Its calls run one at
//! a time, each with its checkpoint.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use ember_core::host::host_id;
use ember_core::ids::ActorId;
use ember_core::proto::{
    decode, write_frame, ActorCall, ActorEndpoints, CallReply, CheckpointPolicy, ErrorKind,
    HelloRole, LocalCall, LocalReply, PeerHello, RemoteError, Welcome,
};
use ember_core::security::{accept_hello, server_config, HelloListener, Identity};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::actor_core::{internal, thread_gone, ActorCore, Reply};
use super::checkpoint::{serve_saves, CheckpointImage, ReplyLog, SaveJob};
use super::guarded::{call_error, panic_message};
use super::head_link::{HeadAddress, HeadLink};
use super::local_socket::{self, Answer};
use super::quic_call;
use crate::collective::link::Via;
use crate::collective::mesh;
use crate::registry::{self, ActorInstance, CallError};

/// Work passed to the actor's thread from the process's main thread.
enum Job {
    /// A call that arrived over QUIC.
    Call {
        call: ActorCall,
        reply: oneshot::Sender<CallReply>,
    },
    /// Stop taking calls and save a final checkpoint.
    Seal {
        reply: oneshot::Sender<Result<Option<u64>, RemoteError>>,
    },
}

/// What the actor is and where to serve it.
pub(crate) struct ActorSpec {
    pub(crate) actor: ActorId,
    pub(crate) incarnation: u32,
    pub(crate) type_name: String,
    pub(crate) args: Vec<u8>,
    pub(crate) restore: Option<Vec<u8>>,
    pub(crate) checkpoint: CheckpointPolicy,
    pub(crate) head: HeadAddress,
    pub(crate) listen: String,
    pub(crate) socket: String,
}

/// The running actor, as the executor's main thread holds it.
pub(crate) struct ActorHandle {
    jobs: mpsc::UnboundedSender<Job>,
}

impl ActorHandle {
    /// Seals the actor: it finishes the calls it runs, saves a final checkpoint (when its type
    /// can) and answers every later call with [`ErrorKind::Moved`].
    pub(crate) async fn seal(&self) -> Result<Option<u64>, RemoteError> {
        let (tx, rx) = oneshot::channel();
        let gone = || RemoteError::new(ErrorKind::WorkerDied, "the actor's thread is gone");
        self.jobs
            .send(Job::Seal { reply: tx })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// Builds the actor on its own thread and, once it is constructed, opens its endpoints.
pub(crate) async fn start(spec: ActorSpec) -> Result<(ActorEndpoints, ActorHandle), RemoteError> {
    let internal = |e: String| RemoteError::new(ErrorKind::Internal, e);
    let ip: std::net::IpAddr = spec
        .listen
        .parse()
        .map_err(|e| internal(format!("bad listen address {}: {e}", spec.listen)))?;
    let (built_tx, built_rx) = oneshot::channel();
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
    let head = HeadLink::new(spec.head.clone());
    let saves = spec.checkpoint.enabled.then(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve_saves(head.clone(), rx));
        tx
    });
    let token = spec.head.token.clone();
    let socket = spec.socket.clone();
    let actor = spec.actor;
    std::thread::Builder::new()
        .name(format!("actor-{actor}"))
        .spawn(move || run_actor(spec, saves, built_tx, jobs_rx))
        .map_err(|e| internal(format!("cannot start the actor's thread: {e}")))?;
    built_rx
        .await
        .map_err(|_| internal("the actor's thread ended during construction".into()))??;

    let identity = Identity::ephemeral().map_err(|e| internal(e.to_string()))?;
    let config = server_config(&identity).map_err(|e| internal(e.to_string()))?;
    let endpoint = quinn::Endpoint::server(config, SocketAddr::new(ip, 0))
        .map_err(|e| internal(format!("cannot listen on {ip}: {e}")))?;
    let addr = endpoint.local_addr().map_err(|e| internal(e.to_string()))?;
    let mesh_socket = mesh::socket_path(&socket);
    mesh::install(actor, token.clone(), endpoint.clone(), head, &mesh_socket).map_err(|e| {
        internal(format!(
            "cannot listen for group peers on {mesh_socket}: {e}"
        ))
    })?;
    let quic_jobs = jobs_tx.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(serve_quic_caller(
                actor,
                token.clone(),
                quic_jobs.clone(),
                incoming,
            ));
        }
    });
    let endpoints = ActorEndpoints {
        peer_addr: addr.to_string(),
        peer_fingerprint: identity.fingerprint,
        host: host_id().to_string(),
        local_socket: socket,
        mesh_socket,
    };
    Ok((endpoints, ActorHandle { jobs: jobs_tx }))
}

/// The actor's thread: constructs (or restores) the instance, reports how that went, then
/// serves it.
fn run_actor(
    spec: ActorSpec,
    saves: Option<mpsc::UnboundedSender<SaveJob>>,
    built: oneshot::Sender<Result<(), RemoteError>>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = built.send(Err(internal(e)));
            return;
        }
    };
    let (instance, seq, replies) = match construct(&spec) {
        Ok(c) => c,
        Err(e) => {
            let _ = built.send(Err(e));
            return;
        }
    };
    let core = ActorCore::new(
        spec.actor,
        spec.incarnation,
        instance,
        spec.checkpoint,
        (seq, replies),
        saves,
    );
    let token = spec.head.token.clone();
    let socket = spec.socket.clone();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match UnixListener::bind(&socket) {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("cannot listen on {socket}: {e}");
                let _ = built.send(Err(internal(msg)));
                return;
            }
        };
        let _ = built.send(Ok(()));
        let policy = core.policy();
        if policy.enabled && policy.every_ms > 0 {
            let timed = core.clone();
            tokio::task::spawn_local(async move {
                let period = Duration::from_millis(policy.every_ms);
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                loop {
                    tick.tick().await;
                    timed.checkpoint_if_changed().await;
                }
            });
        }
        loop {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(Job::Call { call, reply }) => {
                        tokio::task::spawn_local(answer_job(core.clone(), call, reply));
                    }
                    Some(Job::Seal { reply }) => {
                        let core = core.clone();
                        tokio::task::spawn_local(async move {
                            let _ = reply.send(core.seal().await);
                        });
                    }
                    None => return,
                },
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::task::spawn_local(serve_local_caller(
                            core.clone(),
                            token.clone(),
                            stream,
                        ));
                    }
                }
            }
        }
    });
}

/// Answers one call passed from the QUIC endpoint, when it ends.
pub(super) async fn answer_job(
    core: Rc<ActorCore>,
    call: ActorCall,
    reply: oneshot::Sender<CallReply>,
) {
    let actor = call.actor;
    let answer = core.handle(call).await.wait(actor).await;
    let _ = reply.send(answer);
}

/// Serves one caller on the actor's Unix socket: each call starts in order, and is answered
/// when it ends. Once the actor is sealed the stream closes, saying that nothing unanswered ran.
pub(super) async fn serve_local_caller(core: Rc<ActorCore>, token: String, stream: UnixStream) {
    let answer = async |c: LocalCall| {
        let (id, actor) = (c.id, c.call.actor);
        match core.handle(c.call).await {
            Reply::Now(reply) => Answer::Now(LocalReply { id, reply }),
            Reply::Later(later) => Answer::Later(Box::pin(async move {
                LocalReply {
                    id,
                    reply: Reply::Later(later).wait(actor).await,
                }
            })),
        }
    };
    local_socket::serve(&token, stream, core.sealed(), answer).await;
}

/// Builds the instance anew, or from a checkpoint image; with the image's sequence number and
/// recorded replies.
fn construct(spec: &ActorSpec) -> Result<(Box<dyn ActorInstance>, u64, ReplyLog), RemoteError> {
    let type_name = &spec.type_name;
    let Some(entry) = registry::actor(type_name) else {
        return Err(RemoteError::new(
            ErrorKind::Unknown,
            format!("no actor type `{type_name}` in this executable"),
        ));
    };
    if spec.checkpoint.enabled && entry.restore.is_none() {
        return Err(RemoteError::new(
            ErrorKind::BadRequest,
            format!(
                "actor type `{type_name}` cannot checkpoint: implement ember::Checkpoint for it \
                 and declare it with #[ember::actor(checkpoint, ..)]"
            ),
        ));
    }
    let run = |f: &dyn Fn() -> Result<Box<dyn ActorInstance>, CallError>| match catch_unwind(
        AssertUnwindSafe(f),
    ) {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(call_error(e)),
        Err(p) => Err(call_error(CallError::Panicked(panic_message(&p)))),
    };
    match (&spec.restore, entry.restore) {
        (Some(bytes), Some(restore)) => {
            let image: CheckpointImage = decode(bytes).map_err(|e| {
                RemoteError::new(ErrorKind::Internal, format!("unreadable checkpoint: {e}"))
            })?;
            let instance = run(&|| restore(&image.state))?;
            Ok((instance, image.seq, ReplyLog::from_image(image.replies)))
        }
        _ => {
            let instance = run(&|| (entry.construct)(&spec.args))?;
            Ok((instance, 0, ReplyLog::default()))
        }
    }
}

/// Who connected, once greeted.
enum Greeted {
    /// A caller with the right token.
    Caller,
    /// A member of one of the actor's groups, with the right token (not yet welcomed: the
    /// mesh does it, once it has a place for the link).
    Peer(PeerHello),
    /// Refused.
    Refused,
}

/// Reads a caller's hello and answers it; true when the token is right.
pub(super) async fn greet<R, W>(token: &str, rd: &mut R, wr: &mut W) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    matches!(greet_any(token, rd, wr, false).await, Greeted::Caller)
}

/// Reads a hello on an endpoint for calls (or, with `peers`, on the actor's QUIC endpoint,
/// which group peers use too) and answers a caller's; a peer's hello is returned unanswered.
async fn greet_any<R, W>(token: &str, rd: &mut R, wr: &mut W, peers: bool) -> Greeted
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let listener = if peers {
        HelloListener::ActorEndpoint
    } else {
        HelloListener::Calls
    };
    match accept_hello(rd, wr, token, listener).await {
        Ok(HelloRole::Peer(hello)) => Greeted::Peer(hello),
        Ok(_) => {
            let _ = write_frame(wr, &Welcome::Accepted { node: None }).await;
            let _ = wr.flush().await;
            Greeted::Caller
        }
        Err(refused) => {
            tracing::warn!("refused a caller: {refused}");
            Greeted::Refused
        }
    }
}

/// Serves one caller over QUIC: its hello, then one call per stream, each passed to the
/// actor's thread.
async fn serve_quic_caller(
    actor: ActorId,
    token: String,
    jobs: mpsc::UnboundedSender<Job>,
    incoming: quinn::Incoming,
) {
    let Ok(conn) = incoming.await else { return };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let accepted = match greet_any(&token, &mut recv, &mut send, true).await {
        Greeted::Caller => true,
        Greeted::Refused => false,
        Greeted::Peer(hello) => {
            if let Some(mesh) = mesh::current() {
                mesh.accept(hello, Box::pin(recv), Box::pin(send), Via::Quic(conn))
                    .await;
            }
            return;
        }
    };
    if !quic_call::end_hello(send, &conn, accepted).await {
        return;
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        let jobs = jobs.clone();
        tokio::spawn(quic_call::answer_stream(
            send,
            recv,
            "call",
            async move |call: ActorCall| {
                let (tx, rx) = oneshot::channel();
                match jobs.send(Job::Call { call, reply: tx }) {
                    Ok(()) => rx.await.unwrap_or_else(|_| Err(thread_gone(actor))),
                    Err(_) => Err(thread_gone(actor)),
                }
            },
        ));
    }
}
