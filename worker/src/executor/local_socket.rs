//! Serving one caller on a same-machine Unix socket, for an actor or a task lease: its hello,
//! then requests sharing the stream. Each request is answered before the next is read, unless
//! its answer comes later (a call of a concurrent actor still running): the next requests are
//! then read and answered meanwhile, and each reply goes out when it is ready, paired with its
//! request by id. Replies are flushed when no further request is already buffered, so a
//! pipelined batch is answered with few writes. When the owner closes (an actor sealed for a
//! move, a task lease taken back or given back), no further request is read, the replies of the
//! requests that ran go out, then the reply [`CLOSING_REPLY_ID`] says that nothing else ran or
//! will: a caller left without a reply knows its request did not run.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ember_core::proto::{
    read_frame, write_frame, ErrorKind, LocalReply, RemoteError, Wire, CLOSING_REPLY_ID, MAX_FRAME,
};
use futures::stream::{self, FuturesUnordered, StreamExt};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;

use super::actor_host::greet;

/// How long a closing socket waits for its caller to take the last replies.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(1);

/// A request's answer, as the serving side gives it.
pub(super) enum Answer {
    /// The reply, ready now.
    Now(LocalReply),
    /// The reply of a call that runs on: ready when this completes.
    Later(Pin<Box<dyn Future<Output = LocalReply>>>),
}

/// Serves `stream` until the caller closes it (once the answers still coming are sent), sends
/// a malformed frame, or `closing` completes (once the answers of the requests that ran are
/// sent, followed by the closing reply); `answer` turns each request into its reply.
pub(super) async fn serve<Req: Wire>(
    token: &str,
    stream: UnixStream,
    closing: impl Future<Output = ()>,
    mut answer: impl AsyncFnMut(Req) -> Answer,
) {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    if !greet(token, &mut rd, &mut wr).await {
        return;
    }
    // Each request, with whether another is already buffered behind it. A read cut short to
    // send a later reply resumes where it was: the stream keeps it.
    let requests = stream::unfold(rd, |mut rd| async move {
        let request = read_frame::<_, Req>(&mut rd, MAX_FRAME).await;
        let more = !rd.buffer().is_empty();
        Some(((request, more), rd))
    });
    tokio::pin!(requests);
    tokio::pin!(closing);
    let mut coming = FuturesUnordered::new();
    let mut reading = true;
    let mut closed = false;
    loop {
        if !reading && coming.is_empty() {
            break;
        }
        let (reply, more) = tokio::select! {
            biased;
            () = &mut closing, if !closed => {
                // Nothing more is read; the requests running still answer.
                closed = true;
                reading = false;
                continue;
            }
            Some(reply) = coming.next(), if !coming.is_empty() => (reply, false),
            Some((request, more)) = requests.next(), if reading => match request {
                Ok(Some(request)) => match answer(request).await {
                    Answer::Now(reply) => (reply, more),
                    Answer::Later(reply) => {
                        coming.push(reply);
                        continue;
                    }
                },
                Ok(None) => {
                    reading = false;
                    continue;
                }
                Err(e) => {
                    tracing::warn!("malformed request from a local caller: {e}");
                    return;
                }
            },
        };
        if write_frame(&mut wr, &reply).await.is_err() {
            return;
        }
        if !more && wr.flush().await.is_err() {
            return;
        }
    }
    if closed {
        let last = LocalReply {
            id: CLOSING_REPLY_ID,
            reply: Err(RemoteError::new(
                ErrorKind::Moved,
                "no longer taking calls here: what was not answered did not run",
            )),
        };
        if write_frame(&mut wr, &last).await.is_err() {
            return;
        }
    }
    // The caller may be slow to read the last replies; it does not hold the owner up for long.
    let _ = tokio::time::timeout(FLUSH_ON_CLOSE, wr.flush()).await;
}
