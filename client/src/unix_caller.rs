//! Calls on a same-machine Unix socket: to an actor's process, or to the thread of a task
//! lease. One stream carries every call, paired with its reply by id, with writes batched while
//! calls queue up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use ember_core::proto::{
    read_frame, write_frame, ActorCall, CallReply, ErrorKind, Hello, LeasedTask, LocalCall,
    LocalReply, LocalTask, RemoteError, Wire, CLOSING_REPLY_ID, MAX_FRAME,
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

/// The socket is open.
const OPEN: u8 = 0;
/// The process said it takes no more calls on it ([`CLOSING_REPLY_ID`]): what it did not
/// answer did not run.
const CLOSED: u8 = 1;
/// It ended without saying so: a call it did not answer may have run.
const GONE: u8 = 2;

/// A connection to one Unix socket of an actor or a task lease.
#[derive(Debug)]
pub(crate) struct UnixCaller<M> {
    calls: mpsc::UnboundedSender<(M, oneshot::Sender<CallReply>)>,
    /// [`OPEN`], [`CLOSED`] or [`GONE`].
    state: Arc<AtomicU8>,
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
        let state = Arc::new(AtomicU8::new(OPEN));
        let (calls, mut rx) = mpsc::unbounded_channel::<(M, oneshot::Sender<CallReply>)>();

        let (w_pending, w_state, w_what) = (pending.clone(), state.clone(), what.clone());
        let (r_state, r_what) = (state.clone(), what.clone());
        tokio::spawn(async move {
            let mut next_id = 0u64;
            // The frames of one batch, and where each call's frame ends in them.
            let mut frames: Vec<u8> = Vec::with_capacity(64 << 10);
            let mut ends: Vec<(u64, usize)> = Vec::new();
            let mut wr = wr.into_inner();
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                frames.clear();
                ends.clear();
                for (call, reply) in batch {
                    if w_state.load(Ordering::Acquire) != OPEN {
                        // Known gone before this call was written: it never ran.
                        let _ = reply.send(Err(not_delivered(&w_what)));
                        continue;
                    }
                    next_id += 1;
                    let start = frames.len();
                    if let Err(e) = write_frame(&mut frames, &call.framed(next_id)).await {
                        frames.truncate(start);
                        let _ = reply.send(Err(RemoteError::new(
                            ErrorKind::BadRequest,
                            format!("cannot send the call to {w_what}: {e}"),
                        )));
                        continue;
                    }
                    lock(&w_pending).insert(next_id, reply);
                    ends.push((next_id, frames.len()));
                }
                let mut written = 0;
                while written < frames.len() {
                    match wr.write(&frames[written..]).await {
                        Ok(n) if n > 0 => written += n,
                        _ => {
                            // The socket took only the frames that end by `written`: the
                            // others never reached the process, so none of them ran.
                            let mut pending = lock(&w_pending);
                            for &(id, end) in &ends {
                                if end > written {
                                    if let Some(tx) = pending.remove(&id) {
                                        let _ = tx.send(Err(not_delivered(&w_what)));
                                    }
                                }
                            }
                            return;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            while let Ok(Some(LocalReply { id, reply })) =
                read_frame::<_, LocalReply>(&mut rd, MAX_FRAME).await
            {
                if id == CLOSING_REPLY_ID {
                    // Nothing unanswered ran: each such call may go elsewhere. Calls written
                    // meanwhile are failed the same way at the end of the stream.
                    r_state.store(CLOSED, Ordering::Release);
                    for (_, tx) in lock(&pending).drain() {
                        let _ = tx.send(Err(not_delivered(&r_what)));
                    }
                } else if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            let said = r_state
                .compare_exchange(OPEN, GONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err();
            for (_, tx) in lock(&pending).drain() {
                let _ = tx.send(Err(if said {
                    not_delivered(&r_what)
                } else {
                    gone(&r_what)
                }));
            }
        });
        Ok(UnixCaller { calls, state, what })
    }

    /// True once no call can reach the process on this socket: it closed it (sealed, or the
    /// lease ended) or it ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) != OPEN
    }

    /// True when the process ended without closing the socket as it should: it is likely
    /// gone (killed, crashed), where [`UnixCaller::is_closed`] alone may mean it moved on.
    pub(crate) fn is_gone(&self) -> bool {
        self.state.load(Ordering::Acquire) == GONE
    }

    /// Makes one call and waits for its reply.
    pub(crate) async fn call(&self, call: M) -> CallReply {
        let (tx, rx) = oneshot::channel();
        if self.calls.send((call, tx)).is_err() {
            return Err(not_delivered(&self.what));
        }
        // Dropped unanswered only by a writer that stopped before writing it.
        rx.await.unwrap_or_else(|_| Err(not_delivered(&self.what)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::ids::ActorId;
    use ember_core::security::{accept_hello, HelloListener};
    use tokio::net::UnixListener;

    const TOKEN: &str = "t0ken";

    fn call(seq: u64) -> ActorCall {
        ActorCall {
            actor: ActorId(1),
            caller: 7,
            seq,
            method: "add".into(),
            args: vec![1],
        }
    }

    /// A process that welcomes one caller, then does `then` with its stream.
    async fn serve_one<F, Fut>(then: F) -> (UnixCaller<ActorCall>, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let dir = std::env::temp_dir().join(format!(
            "ember-unix-caller-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("actor.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (mut rd, mut wr) = stream.split();
            accept_hello(&mut rd, &mut wr, TOKEN, HelloListener::Calls)
                .await
                .unwrap();
            write_frame(
                &mut wr,
                &ember_core::proto::Welcome::Accepted { node: None },
            )
            .await
            .unwrap();
            then(stream).await;
            let _ = std::fs::remove_dir_all(&dir);
        });
        let caller = UnixCaller::connect(path.to_str().unwrap(), TOKEN, "actor actor-1".into())
            .await
            .unwrap();
        (caller, server)
    }

    #[tokio::test]
    async fn a_call_the_socket_never_took_was_not_delivered() {
        // The process closes its socket without reading: every call after that reached
        // nobody, so it is safe to send elsewhere (Moved), never "went away during the call".
        let (caller, server) = serve_one(|stream| async move { drop(stream) }).await;
        server.await.unwrap();
        for seq in 0..20 {
            let err = caller.call(call(seq)).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::Moved, "call {seq}: {err}");
        }
    }

    #[tokio::test]
    async fn a_call_read_and_never_answered_went_away_during_the_call() {
        let (caller, _server) = serve_one(|mut stream| async move {
            let read = read_frame::<_, LocalCall>(&mut stream, MAX_FRAME).await;
            assert!(matches!(read, Ok(Some(_))), "{read:?}");
            drop(stream);
        })
        .await;
        let err = caller.call(call(1)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::WorkerDied, "{err}");
        assert!(err.message.contains("went away during the call"), "{err}");
    }

    #[tokio::test]
    async fn a_call_left_unanswered_by_a_closing_socket_was_not_delivered() {
        // The process reads a call, then closes the stream as a sealed actor does: the call
        // did not run, so it may go elsewhere, and the caller does not suspect the process.
        let (caller, server) = serve_one(|mut stream| async move {
            let read = read_frame::<_, LocalCall>(&mut stream, MAX_FRAME).await;
            assert!(matches!(read, Ok(Some(_))), "{read:?}");
            let last = LocalReply {
                id: CLOSING_REPLY_ID,
                reply: Err(RemoteError::new(ErrorKind::Moved, "sealed")),
            };
            write_frame(&mut stream, &last).await.unwrap();
            stream.flush().await.unwrap();
        })
        .await;
        let err = caller.call(call(1)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Moved, "{err}");
        server.await.unwrap();
        let err = caller.call(call(2)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Moved, "{err}");
        assert!(caller.is_closed() && !caller.is_gone());
    }
}
