//! Calls on a same-machine Unix socket: to an actor's process, or to the thread of a task
//! lease. One stream carries every call, paired with its reply by id, with writes batched while
//! calls queue up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ember_core::proto::{
    read_frame, write_frame, ActorCall, CallReply, ErrorKind, Hello, LeasedTask, LocalCall,
    LocalReply, LocalTask, RemoteError, Wire, MAX_FRAME,
};
use ember_core::security::say_hello;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// A message sent straight to a process on this machine, answered with a [`CallReply`].
pub(crate) trait Direct: Send + 'static {
    /// How it travels on the socket, with the id that pairs it with its reply.
    type Framed: Wire + Send + Sync;
    /// Wraps it with its id.
    fn framed(self, id: u64) -> Self::Framed;
}

impl Direct for ActorCall {
    type Framed = LocalCall;
    fn framed(self, id: u64) -> LocalCall {
        LocalCall { id, call: self }
    }
}

impl Direct for LeasedTask {
    type Framed = LocalTask;
    fn framed(self, id: u64) -> LocalTask {
        LocalTask { id, task: self }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<CallReply>>>>;

/// A connection to one Unix socket of an actor or a task lease.
#[derive(Debug)]
pub(crate) struct UnixCaller<M> {
    calls: mpsc::UnboundedSender<(M, oneshot::Sender<CallReply>)>,
    closed: Arc<AtomicBool>,
    /// Who answers, for errors: "actor actor-5", "lease-7".
    what: Arc<str>,
}

impl<M: Direct> UnixCaller<M> {
    /// Connects and says hello with the token. `what` names who answers, in errors.
    pub(crate) async fn connect(path: &str, token: &str, what: String) -> Result<Self, Error> {
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
        let hello = Hello::client(token);
        say_hello(&hello, &mut rd, &mut wr)
            .await
            .map_err(|e| fail(e.to_string()))?;

        let what: Arc<str> = what.into();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (calls, mut rx) = mpsc::unbounded_channel::<(M, oneshot::Sender<CallReply>)>();

        let (w_pending, w_closed, w_what) = (pending.clone(), closed.clone(), what.clone());
        let (r_closed, r_what) = (closed.clone(), what.clone());
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
                        let _ = reply.send(Err(not_delivered(&w_what)));
                        continue;
                    }
                    next_id += 1;
                    lock(&w_pending).insert(next_id, reply);
                    if write_frame(&mut wr, &call.framed(next_id)).await.is_err() {
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
            for (_, tx) in lock(&pending).drain() {
                let _ = tx.send(Err(gone(&r_what)));
            }
        });
        Ok(UnixCaller {
            calls,
            closed,
            what,
        })
    }

    /// True once the other side closed the socket (its process, or the lease, ended).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Makes one call and waits for its reply.
    pub(crate) async fn call(&self, call: M) -> CallReply {
        let (tx, rx) = oneshot::channel();
        if self.calls.send((call, tx)).is_err() {
            return Err(not_delivered(&self.what));
        }
        rx.await.unwrap_or_else(|_| Err(gone(&self.what)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A call that never reached the process (it had ended): safe to send elsewhere.
fn not_delivered(what: &str) -> RemoteError {
    RemoteError::new(
        ErrorKind::Moved,
        format!("{what} is gone; the call was not delivered"),
    )
}

fn gone(what: &str) -> RemoteError {
    RemoteError::new(
        ErrorKind::WorkerDied,
        format!("{what} went away during the call"),
    )
}
