//! The one actor of an executor process. Its instance lives on a thread of its own that runs
//! a single-threaded runtime: calls from this machine arrive on a Unix socket served by that
//! thread and run inline, with no hand-off; calls from elsewhere arrive on a QUIC endpoint
//! (served by the process's main thread, so its connections stay alive during long calls) and
//! are passed to the actor's thread. Both paths check the cluster token first.
//!
//! An actor that checkpoints saves its state through the head after every N calls, every T
//! milliseconds, on demand ([`CHECKPOINT_METHOD`]) and when sealed for a move. A call that
//! triggers a checkpoint is answered only once the head has recorded it, so with a checkpoint
//! after every call no acknowledged call is ever lost. Calls run one at a time, each with its
//! checkpoint.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use ember_core::host::host_id;
use ember_core::ids::ActorId;
use ember_core::proto::{
    decode, encode, write_frame, ActorCall, ActorEndpoints, CallReply, CheckpointPolicy,
    CheckpointSave, ErrorKind, HelloRole, LocalCall, LocalReply, PeerHello, RemoteError, Welcome,
    CHECKPOINT_METHOD,
};
use ember_core::security::{accept_hello, server_config, HelloListener, Identity};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{serve_saves, CheckpointImage, ReplyLog, SaveJob};
use super::guarded::{call_error, guarded, panic_message};
use super::head_link::{HeadAddress, HeadLink};
use super::local_socket;
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
    /// Seals the actor: it finishes the call it runs, saves a final checkpoint (when its type
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

/// The actor and everything about it that its thread keeps.
struct ActorCore {
    actor: ActorId,
    incarnation: u32,
    instance: RefCell<Box<dyn ActorInstance>>,
    policy: CheckpointPolicy,
    /// Calls since the last checkpoint.
    calls_since: Cell<u32>,
    /// The sequence number of the last checkpoint (restored or saved).
    seq: Cell<u64>,
    replies: RefCell<ReplyLog>,
    /// Set by a seal, or when the head refused a checkpoint because a newer incarnation
    /// exists: every call is then answered with [`ErrorKind::Moved`].
    sealed: Cell<bool>,
    /// One call (with its checkpoint) at a time.
    turn: tokio::sync::Mutex<()>,
    saves: Option<mpsc::UnboundedSender<SaveJob>>,
}

impl ActorCore {
    /// Runs one call, with the checkpoint it triggers, and answers it.
    async fn handle(&self, call: ActorCall) -> CallReply {
        let _turn = self.turn.lock().await;
        if call.actor != self.actor {
            return Err(RemoteError::new(
                ErrorKind::Unknown,
                format!("this endpoint hosts {}, not {}", self.actor, call.actor),
            ));
        }
        if self.sealed.get() {
            return Err(self.moved());
        }
        if call.method == CHECKPOINT_METHOD {
            return self
                .checkpoint()
                .await
                .and_then(|seq| encode(&seq).map(|b| b.to_vec()).map_err(internal));
        }
        let recorded = self.replies.borrow().get(call.caller, call.seq).cloned();
        if let Some(reply) = recorded {
            // Sent again: after a restart (its effect is in the restored state), or after its
            // answer was lost. Its effect may not be in a recorded checkpoint yet: answer only
            // once it is.
            if self.policy.every_calls > 0 && self.calls_since.get() > 0 {
                self.checkpoint().await?;
            }
            return reply;
        }
        let reply = {
            let mut instance = self.instance.borrow_mut();
            guarded(|| instance.call(&call.method, &call.args))
        };
        if !self.policy.enabled {
            return reply;
        }
        self.replies
            .borrow_mut()
            .record(call.caller, call.seq, reply.clone());
        self.calls_since.set(self.calls_since.get() + 1);
        let every = self.policy.every_calls;
        if every > 0 && self.calls_since.get() >= every {
            if let Err(e) = self.checkpoint().await {
                return Err(RemoteError::new(
                    e.kind,
                    format!("the call ran but its checkpoint was not recorded: {e}"),
                ));
            }
        }
        reply
    }

    /// Saves a checkpoint through the head and waits until it is recorded. The caller holds
    /// the turn.
    async fn checkpoint(&self) -> Result<u64, RemoteError> {
        let Some(saves) = &self.saves else {
            return Err(RemoteError::new(
                ErrorKind::BadRequest,
                format!(
                    "{} cannot checkpoint: its type does not implement ember::Checkpoint \
                     (declare it with #[ember::actor(checkpoint, ..)])",
                    self.actor
                ),
            ));
        };
        let state = match self.instance.borrow().save() {
            Some(Ok(state)) => state,
            Some(Err(e)) => return Err(call_error(e)),
            None => return Err(internal("the actor type has no checkpoint support")),
        };
        let seq = self.seq.get() + 1;
        let image = CheckpointImage {
            seq,
            state,
            replies: self.replies.borrow().to_image(),
        };
        let image = encode(&image).map_err(internal)?.to_vec();
        let (tx, rx) = oneshot::channel();
        let save = CheckpointSave {
            actor: self.actor,
            incarnation: self.incarnation,
            seq,
            image,
        };
        saves
            .send(SaveJob { save, done: tx })
            .map_err(|_| process_ending())?;
        match rx.await {
            Ok(Ok(seq)) => {
                self.seq.set(seq);
                self.calls_since.set(0);
                Ok(seq)
            }
            Ok(Err(e)) => {
                if e.kind == ErrorKind::Moved {
                    // A newer incarnation runs elsewhere: this one must not answer again.
                    tracing::warn!(actor = %self.actor, "replaced by a newer incarnation: {e}");
                    self.sealed.set(true);
                }
                Err(e)
            }
            Err(_) => Err(process_ending()),
        }
    }

    /// Stops taking calls, after a final checkpoint when the type can make one.
    async fn seal(&self) -> Result<Option<u64>, RemoteError> {
        let _turn = self.turn.lock().await;
        let seq = if self.saves.is_some() {
            Some(self.checkpoint().await?)
        } else {
            None
        };
        self.sealed.set(true);
        Ok(seq)
    }

    /// A checkpoint when calls ran since the last one (the timed policy).
    async fn checkpoint_if_changed(&self) {
        let _turn = self.turn.lock().await;
        if self.calls_since.get() > 0 && !self.sealed.get() {
            if let Err(e) = self.checkpoint().await {
                tracing::warn!(actor = %self.actor, "timed checkpoint failed: {e}");
            }
        }
    }

    fn moved(&self) -> RemoteError {
        RemoteError::new(
            ErrorKind::Moved,
            format!(
                "{} incarnation {} no longer takes calls: it moved",
                self.actor, self.incarnation
            ),
        )
    }
}

/// The executor's main thread stopped (its worker is gone) while a checkpoint was on its way:
/// the process is ending, and whether the head recorded the checkpoint is unknown.
fn process_ending() -> RemoteError {
    RemoteError::new(
        ErrorKind::WorkerDied,
        "the actor's process is ending (its worker is gone)",
    )
}

fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e.to_string())
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
    let core = Rc::new(ActorCore {
        actor: spec.actor,
        incarnation: spec.incarnation,
        instance: RefCell::new(instance),
        policy: spec.checkpoint,
        calls_since: Cell::new(0),
        seq: Cell::new(seq),
        replies: RefCell::new(replies),
        sealed: Cell::new(false),
        turn: tokio::sync::Mutex::new(()),
        saves,
    });
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
        if core.policy.enabled && core.policy.every_ms > 0 {
            let timed = core.clone();
            tokio::task::spawn_local(async move {
                let period = Duration::from_millis(timed.policy.every_ms);
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
                        let core = core.clone();
                        tokio::task::spawn_local(async move {
                            let _ = reply.send(core.handle(call).await);
                        });
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
                        let (token, core) = (token.clone(), core.clone());
                        tokio::task::spawn_local(async move {
                            local_socket::serve(&token, stream, std::future::pending(), async |c: LocalCall| LocalReply {
                                id: c.id,
                                reply: core.handle(c.call).await,
                            })
                            .await;
                        });
                    }
                }
            }
        }
    });
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
                    Ok(()) => rx.await.unwrap_or_else(|_| Err(gone(actor))),
                    Err(_) => Err(gone(actor)),
                }
            },
        ));
    }
}

fn gone(actor: ActorId) -> RemoteError {
    RemoteError::new(ErrorKind::WorkerDied, format!("{actor}'s thread is gone"))
}
