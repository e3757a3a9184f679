//! The one actor of an executor process. Its instance lives on a thread of its own that runs
//! a single-threaded runtime: calls from this machine arrive on a Unix socket served by that
//! thread and run inline, with no hand-off; calls from elsewhere arrive on a QUIC endpoint
//! (served by the process's main thread, so its connections stay alive during long calls) and
//! are passed to the actor's thread. Both paths check the cluster token first.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use ember_runtime::host::host_id;
use ember_runtime::ids::ActorId;
use ember_runtime::proto::{
    read_frame, write_frame, ActorCall, ActorEndpoints, CallReply, ErrorKind, Hello, LocalCall,
    LocalReply, RemoteError, Welcome, MAX_FRAME,
};
use ember_runtime::security::{server_config, token_matches, Identity};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::guarded::{call_error, guarded, panic_message};
use crate::registry::{self, ActorInstance, CallError};

/// A call from the QUIC endpoint waiting for the actor's thread.
struct Job {
    call: ActorCall,
    reply: oneshot::Sender<CallReply>,
}

type Instance = Rc<RefCell<Box<dyn ActorInstance>>>;

/// What the actor is and where to serve it.
pub(crate) struct ActorSpec {
    pub(crate) actor: ActorId,
    pub(crate) type_name: String,
    pub(crate) args: Vec<u8>,
    pub(crate) token: String,
    pub(crate) listen: String,
    pub(crate) socket: String,
}

/// Builds the actor on its own thread and, once it is constructed, opens its endpoints.
pub(crate) async fn start(spec: ActorSpec) -> Result<ActorEndpoints, RemoteError> {
    let internal = |e: String| RemoteError::new(ErrorKind::Internal, e);
    let ip: std::net::IpAddr = spec
        .listen
        .parse()
        .map_err(|e| internal(format!("bad listen address {}: {e}", spec.listen)))?;
    let (built_tx, built_rx) = oneshot::channel();
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
    let ActorSpec {
        actor,
        type_name,
        args,
        token,
        socket,
        ..
    } = spec;
    let thread_token = token.clone();
    let thread_socket = socket.clone();
    std::thread::Builder::new()
        .name(format!("actor-{actor}"))
        .spawn(move || {
            run_actor(
                actor,
                &type_name,
                &args,
                thread_token,
                &thread_socket,
                built_tx,
                jobs_rx,
            )
        })
        .map_err(|e| internal(format!("cannot start the actor's thread: {e}")))?;
    built_rx
        .await
        .map_err(|_| internal("the actor's thread ended during construction".into()))??;

    let identity = Identity::ephemeral().map_err(|e| internal(e.to_string()))?;
    let config = server_config(&identity).map_err(|e| internal(e.to_string()))?;
    let endpoint = quinn::Endpoint::server(config, SocketAddr::new(ip, 0))
        .map_err(|e| internal(format!("cannot listen on {ip}: {e}")))?;
    let addr = endpoint.local_addr().map_err(|e| internal(e.to_string()))?;
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(serve_quic_caller(
                actor,
                token.clone(),
                jobs_tx.clone(),
                incoming,
            ));
        }
    });
    Ok(ActorEndpoints {
        peer_addr: addr.to_string(),
        peer_fingerprint: identity.fingerprint,
        host: host_id().to_string(),
        local_socket: socket,
    })
}

/// The actor's thread: constructs the instance, reports how that went, then serves it.
fn run_actor(
    actor: ActorId,
    type_name: &str,
    args: &[u8],
    token: String,
    socket: &str,
    built: oneshot::Sender<Result<(), RemoteError>>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = built.send(Err(RemoteError::new(ErrorKind::Internal, e.to_string())));
            return;
        }
    };
    let instance: Instance = match construct(type_name, args) {
        Ok(a) => Rc::new(RefCell::new(a)),
        Err(e) => {
            let _ = built.send(Err(e));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match UnixListener::bind(socket) {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("cannot listen on {socket}: {e}");
                let _ = built.send(Err(RemoteError::new(ErrorKind::Internal, msg)));
                return;
            }
        };
        let _ = built.send(Ok(()));
        loop {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => {
                        let reply = call(&instance, actor, job.call);
                        let _ = job.reply.send(reply);
                    }
                    None => return,
                },
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let (rd, wr) = stream.into_split();
                        tokio::task::spawn_local(serve_local_caller(
                            actor, token.clone(), instance.clone(), rd, wr,
                        ));
                    }
                }
            }
        }
    });
}

fn construct(type_name: &str, args: &[u8]) -> Result<Box<dyn ActorInstance>, RemoteError> {
    match registry::actor(type_name) {
        None => Err(RemoteError::new(
            ErrorKind::Unknown,
            format!("no actor type `{type_name}` in this executable"),
        )),
        Some(entry) => match catch_unwind(AssertUnwindSafe(|| (entry.construct)(args))) {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(call_error(e)),
            Err(p) => Err(call_error(CallError::Panicked(panic_message(&p)))),
        },
    }
}

/// Runs one call on the instance, on this (the actor's) thread.
fn call(instance: &Instance, actor: ActorId, call: ActorCall) -> CallReply {
    if call.actor != actor {
        return Err(RemoteError::new(
            ErrorKind::Unknown,
            format!("this endpoint hosts {actor}, not {}", call.actor),
        ));
    }
    let mut instance = instance.borrow_mut();
    guarded(|| instance.call(&call.method, &call.args))
}

/// Reads a caller's hello and answers it; true when the token is right.
async fn greet<R, W>(token: &str, rd: &mut R, wr: &mut W) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let welcome = match read_frame::<_, Hello>(rd, 64 << 10).await {
        Ok(Some(Hello::Client { token: t })) if token_matches(token, &t) => {
            Welcome::Accepted { node: None }
        }
        Ok(Some(Hello::Client { .. })) => Welcome::Refused {
            reason: "wrong cluster token".into(),
        },
        Ok(_) => Welcome::Refused {
            reason: "expected a client hello".into(),
        },
        Err(e) => Welcome::Refused {
            reason: format!("malformed hello: {e}"),
        },
    };
    let accepted = matches!(welcome, Welcome::Accepted { .. });
    if !accepted {
        tracing::warn!("refused a caller: {welcome:?}");
    }
    let _ = write_frame(wr, &welcome).await;
    let _ = wr.flush().await;
    accepted
}

/// Serves a caller on this machine: calls share the socket, each answered in order, inline.
/// Replies are flushed when no further call is already buffered, so a pipelined batch is
/// answered with few writes.
async fn serve_local_caller(
    actor: ActorId,
    token: String,
    instance: Instance,
    rd: tokio::net::unix::OwnedReadHalf,
    wr: tokio::net::unix::OwnedWriteHalf,
) {
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    if !greet(&token, &mut rd, &mut wr).await {
        return;
    }
    loop {
        let reply = match read_frame::<_, LocalCall>(&mut rd, MAX_FRAME).await {
            Ok(Some(LocalCall { id, call: c })) => LocalReply {
                id,
                reply: call(&instance, actor, c),
            },
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("malformed call from a local caller: {e}");
                return;
            }
        };
        if write_frame(&mut wr, &reply).await.is_err() {
            return;
        }
        if rd.buffer().is_empty() && wr.flush().await.is_err() {
            return;
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
    let accepted = greet(&token, &mut recv, &mut send).await;
    let _ = send.finish();
    if !accepted {
        let _ = send.stopped().await;
        conn.close(1u32.into(), b"refused");
        return;
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_quic_call(actor, jobs.clone(), send, recv));
    }
}

async fn serve_quic_call(
    actor: ActorId,
    jobs: mpsc::UnboundedSender<Job>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let reply: CallReply = match read_frame::<_, ActorCall>(&mut recv, MAX_FRAME).await {
        Ok(Some(call)) => {
            let (tx, rx) = oneshot::channel();
            match jobs.send(Job { call, reply: tx }) {
                Ok(()) => rx.await.unwrap_or_else(|_| Err(gone(actor))),
                Err(_) => Err(gone(actor)),
            }
        }
        Ok(None) => return,
        Err(e) => Err(RemoteError::new(
            ErrorKind::BadRequest,
            format!("bad call: {e}"),
        )),
    };
    let _ = write_frame(&mut send, &reply).await;
    let _ = send.finish();
}

fn gone(actor: ActorId) -> RemoteError {
    RemoteError::new(ErrorKind::WorkerDied, format!("{actor}'s thread is gone"))
}
