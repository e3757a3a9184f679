//! The executor process: runs user tasks and hosts one actor, isolated from the worker agent
//! and seeing only its GPUs through `CUDA_VISIBLE_DEVICES`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc as std_mpsc;

use ember_runtime::proto::{read_frame, write_frame, ErrorKind, RemoteError, MAX_FRAME};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::protocol::{ExecReply, ExecRequest};
use crate::context::{self, TaskContext};
use crate::registry::{self, ActorInstance, CallError};

/// Serves the worker on the Unix socket at `socket` until the worker closes it.
pub(crate) async fn serve(socket: &str) -> std::io::Result<()> {
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
    // The one actor of this process, if any, lives on a thread of its own.
    let mut actor: Option<std_mpsc::Sender<(u64, String, Vec<u8>)>> = None;
    loop {
        let req: ExecRequest = match read_frame(&mut rd, MAX_FRAME).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::error!("executor: bad request from worker: {e}");
                break;
            }
        };
        match req {
            ExecRequest::RunTask {
                id,
                name,
                args,
                node,
                allocation,
            } => {
                let tx = tx.clone();
                tokio::task::spawn_blocking(move || {
                    let ctx = TaskContext { node, allocation };
                    let result = context::with_task(ctx, || run_task(&name, &args));
                    let _ = tx.send(ExecReply { id, result });
                });
            }
            ExecRequest::CreateActor {
                id,
                type_name,
                args,
                node,
                allocation,
            } => {
                if actor.is_some() {
                    let err = remote(ErrorKind::Internal, "this executor already hosts an actor");
                    let _ = tx.send(ExecReply {
                        id,
                        result: Err(err),
                    });
                    continue;
                }
                context::set_actor(TaskContext { node, allocation });
                let (calls_tx, calls_rx) = std_mpsc::channel();
                actor = Some(calls_tx);
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name(format!("actor-{type_name}"))
                    .spawn(move || host_actor(id, &type_name, &args, calls_rx, tx))?;
            }
            ExecRequest::CallActor { id, method, args } => match &actor {
                Some(calls) => {
                    let _ = calls.send((id, method, args));
                }
                None => {
                    let err = remote(ErrorKind::Internal, "this executor hosts no actor");
                    let _ = tx.send(ExecReply {
                        id,
                        result: Err(err),
                    });
                }
            },
        }
    }
    // The worker is gone: no reply can reach it any more, so do not wait for running user
    // code (the caller exits the process without waiting for it either).
    drop(tx);
    drop(actor);
    writer.abort();
    Ok(())
}

fn run_task(name: &str, args: &[u8]) -> Result<Vec<u8>, RemoteError> {
    let entry = registry::task(name).ok_or_else(|| {
        remote(
            ErrorKind::Unknown,
            format!("no task `{name}` in this executable"),
        )
    })?;
    guarded(|| (entry.invoke)(args))
}

fn host_actor(
    create_id: u64,
    type_name: &str,
    args: &[u8],
    calls: std_mpsc::Receiver<(u64, String, Vec<u8>)>,
    tx: mpsc::UnboundedSender<ExecReply>,
) {
    let built: Result<Box<dyn ActorInstance>, RemoteError> = match registry::actor(type_name) {
        None => Err(remote(
            ErrorKind::Unknown,
            format!("no actor type `{type_name}` in this executable"),
        )),
        Some(entry) => match catch_unwind(AssertUnwindSafe(|| (entry.construct)(args))) {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(call_error(e)),
            Err(p) => Err(call_error(CallError::Panicked(panic_message(&p)))),
        },
    };
    let mut instance = match built {
        Ok(a) => {
            let _ = tx.send(ExecReply {
                id: create_id,
                result: Ok(Vec::new()),
            });
            a
        }
        Err(e) => {
            let _ = tx.send(ExecReply {
                id: create_id,
                result: Err(e),
            });
            return;
        }
    };
    while let Ok((id, method, args)) = calls.recv() {
        let result = guarded(|| instance.call(&method, &args));
        let _ = tx.send(ExecReply { id, result });
    }
}

/// Runs user code, turning its errors and panics into errors for the caller.
fn guarded(f: impl FnOnce() -> Result<Vec<u8>, CallError>) -> Result<Vec<u8>, RemoteError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(call_error(e)),
        Err(p) => Err(call_error(CallError::Panicked(panic_message(&p)))),
    }
}

fn call_error(e: CallError) -> RemoteError {
    let kind = match e {
        CallError::User(_) | CallError::Panicked(_) => ErrorKind::User,
        CallError::BadArgs(_) | CallError::UnknownMethod(_) => ErrorKind::BadRequest,
    };
    remote(kind, e.to_string())
}

fn remote(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
    RemoteError::new(kind, message)
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}
