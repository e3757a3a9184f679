//! The executor process: holds task leases or hosts one actor, isolated from the worker agent
//! and seeing only its GPUs through `CUDA_VISIBLE_DEVICES`.

use ember_core::proto::{encode, read_frame, write_frame, ErrorKind, RemoteError, MAX_FRAME};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::actor_host;
use super::head_link::HeadAddress;
use super::lease_host::{LeaseSpec, Leases};
use super::protocol::{ExecCommand, ExecReply, ExecRequest};
use crate::context::{self, GpuKind, TaskContext};
use crate::epoch::EpochFence;
use crate::role::WORKER_PID_VAR;

/// Makes the kernel kill this executor when the worker thread that started it exits
/// (`PR_SET_PDEATHSIG`), then checks that the worker (named by [`WORKER_PID_VAR`]) is still its
/// parent: a worker that died before the signal was armed sends none, and its executor must not
/// run on. Called first thing, before the executor does anything else.
pub(crate) fn die_with_worker() -> Result<(), String> {
    let worker: i32 = std::env::var(WORKER_PID_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{WORKER_PID_VAR} is not set to a process id"))?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("cannot arm the parent-death signal: {e}"))?;
    if nix::unistd::getppid().as_raw() != worker {
        return Err(format!("its worker (process {worker}) is gone"));
    }
    Ok(())
}

/// Serves the worker on the Unix socket at `socket` until the worker closes it.
pub(crate) async fn serve(socket: &str) -> std::io::Result<()> {
    let gpu_kind = GpuKind::from_env();
    let stream = UnixStream::connect(socket).await?;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<ExecReply>();
    let writer = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            if write_frame(&mut wr, &reply).await.is_err() {
                break;
            }
        }
    });
    let mut hosted: Option<std::sync::Arc<actor_host::ActorHandle>> = None;
    let leases = std::sync::Arc::new(Leases::new(gpu_kind));
    let fence = EpochFence::default();
    loop {
        let command: ExecCommand = match read_frame(&mut rd, MAX_FRAME).await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                tracing::error!("executor: bad request from worker: {e}");
                break;
            }
        };
        let req = command.request;
        if let Err(stale) = fence.admit(command.epoch) {
            tracing::warn!("executor: refused a request: {}", stale.message);
            let _ = tx.send(ExecReply {
                id: req.id(),
                result: Err(stale),
            });
            continue;
        }
        match req {
            ExecRequest::OpenLease {
                id,
                lease,
                node,
                allocation,
                token,
                listen,
                socket,
            } => {
                let spec = LeaseSpec {
                    lease,
                    node,
                    allocation,
                    token,
                    listen,
                    socket,
                };
                let result = leases.open(spec).await.and_then(|e| archived(&e));
                let _ = tx.send(ExecReply { id, result });
            }
            ExecRequest::CloseLease { id, lease } => {
                let tx = tx.clone();
                let leases = leases.clone();
                tokio::spawn(async move {
                    leases.close(lease).await;
                    let _ = tx.send(ExecReply {
                        id,
                        result: Ok(Vec::new()),
                    });
                });
            }
            ExecRequest::CreateActor {
                id,
                actor,
                type_name,
                args,
                node,
                allocation,
                token,
                listen,
                socket,
                incarnation,
                checkpoint,
                restore,
                head,
                head_fingerprint,
            } => {
                let result = if hosted.is_some() {
                    Err(RemoteError::new(
                        ErrorKind::Internal,
                        "this executor already hosts an actor",
                    ))
                } else {
                    context::set_actor(TaskContext {
                        node,
                        allocation,
                        gpu_kind,
                    });
                    let spec = actor_host::ActorSpec {
                        actor,
                        incarnation,
                        type_name,
                        args,
                        restore,
                        checkpoint,
                        head: HeadAddress {
                            addr: head,
                            fingerprint: head_fingerprint,
                            token,
                        },
                        listen,
                        socket,
                    };
                    actor_host::start(spec)
                        .await
                        .and_then(|(endpoint, handle)| {
                            hosted = Some(std::sync::Arc::new(handle));
                            archived(&endpoint)
                        })
                };
                let _ = tx.send(ExecReply { id, result });
            }
            ExecRequest::Seal { id } => {
                let tx = tx.clone();
                let handle = hosted.clone();
                tokio::spawn(async move {
                    let result = match handle {
                        Some(h) => h.seal().await.and_then(|seq| archived(&seq)),
                        None => Err(RemoteError::new(
                            ErrorKind::Unknown,
                            "this executor hosts no actor",
                        )),
                    };
                    let _ = tx.send(ExecReply { id, result });
                });
            }
        }
    }
    // The worker is gone: no reply can reach it any more, so do not wait for running user
    // code (the caller exits the process without waiting for it either).
    drop(tx);
    writer.abort();
    Ok(())
}

/// A reply's archived bytes.
fn archived<T: ember_core::proto::Wire>(value: &T) -> Result<Vec<u8>, RemoteError> {
    encode(value)
        .map(|a| a.to_vec())
        .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))
}
