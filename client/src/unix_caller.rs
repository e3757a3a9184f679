//! Calls to an actor on this machine through its Unix socket: one stream carries every call,
//! paired with its reply by id, with writes batched while calls queue up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ember_runtime::proto::{
    read_frame, write_frame, ActorCall, CallReply, ErrorKind, Hello, LocalCall, LocalReply,
    RemoteError, MAX_FRAME,
};
use ember_runtime::security::say_hello;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::Error;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<CallReply>>>>;

/// A connection to one actor's Unix socket.
#[derive(Debug)]
pub(crate) struct UnixCaller {
    calls: mpsc::UnboundedSender<(ActorCall, oneshot::Sender<CallReply>)>,
    closed: Arc<AtomicBool>,
}

impl UnixCaller {
    /// Connects and says hello with the token.
    pub(crate) async fn connect(path: &str, token: &str) -> Result<Self, Error> {
        let fail = |reason: String| Error::Connect {
            addr: path.to_string(),
            reason,
        };
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (rd, wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(256 << 10, rd);
        let mut wr = BufWriter::with_capacity(256 << 10, wr);
        let hello = Hello::Client {
            token: token.to_string(),
        };
        say_hello(&hello, &mut rd, &mut wr)
            .await
            .map_err(|e| fail(e.to_string()))?;

        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (calls, mut rx) = mpsc::unbounded_channel::<(ActorCall, oneshot::Sender<CallReply>)>();

        let (w_pending, w_closed) = (pending.clone(), closed.clone());
        let r_closed = closed.clone();
        tokio::spawn(async move {
            let mut next_id = 0u64;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                for (call, reply) in batch {
                    if w_closed.load(Ordering::Acquire) {
                        // Known gone before this call was written: it never ran.
                        let _ = reply.send(Err(not_delivered(call.actor)));
                        continue;
                    }
                    next_id += 1;
                    lock(&w_pending).insert(next_id, reply);
                    let msg = LocalCall { id: next_id, call };
                    if write_frame(&mut wr, &msg).await.is_err() {
                        return;
                    }
                }
                if wr.flush().await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Ok(Some(LocalReply { id, reply })) =
                read_frame::<_, LocalReply>(&mut rd, MAX_FRAME).await
            {
                if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            r_closed.store(true, Ordering::Release);
            fail_all(&pending);
        });
        Ok(UnixCaller { calls, closed })
    }

    /// True once the actor's process closed the socket (it ended).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Makes one call and waits for its reply.
    pub(crate) async fn call(&self, call: ActorCall) -> CallReply {
        let actor = call.actor;
        let (tx, rx) = oneshot::channel();
        if self.calls.send((call, tx)).is_err() {
            return Err(not_delivered(actor));
        }
        rx.await.unwrap_or_else(|_| Err(gone(actor)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail_all(pending: &Pending) {
    for (_, tx) in lock(pending).drain() {
        let _ = tx.send(Err(RemoteError::new(
            ErrorKind::WorkerDied,
            "the actor's process went away during the call",
        )));
    }
}

/// A call that never reached the actor's process (it had ended): safe to send elsewhere.
fn not_delivered(actor: ember_runtime::ids::ActorId) -> RemoteError {
    RemoteError::new(
        ErrorKind::Moved,
        format!("actor {actor}'s process is gone; the call was not delivered"),
    )
}

fn gone(actor: ember_runtime::ids::ActorId) -> RemoteError {
    RemoteError::new(
        ErrorKind::WorkerDied,
        format!("actor {actor}'s process went away during the call"),
    )
}
