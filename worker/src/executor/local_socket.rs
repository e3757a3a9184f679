//! Serving one caller on a same-machine Unix socket, for an actor or a task lease: its hello,
//! then requests sharing the stream, each answered in order. Replies are flushed when no
//! further request is already buffered, so a pipelined batch is answered with few writes.
//! When the owner closes (a task lease taken back or given back), the replies of the requests
//! already answered go out before the socket closes, and no further request is run: a caller
//! left without a reply knows its request did not run.

use std::future::Future;
use std::time::Duration;

use ember_core::proto::{read_frame, write_frame, LocalReply, Wire, MAX_FRAME};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;

use super::actor_host::greet;

/// How long a closing socket waits for its caller to take the last replies.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(1);

/// Serves `stream` until the caller closes it, sends a malformed frame, or `closing`
/// completes; `answer` turns each request into its reply.
pub(super) async fn serve<Req: Wire>(
    token: &str,
    stream: UnixStream,
    closing: impl Future<Output = ()>,
    mut answer: impl AsyncFnMut(Req) -> LocalReply,
) {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    if !greet(token, &mut rd, &mut wr).await {
        return;
    }
    tokio::pin!(closing);
    loop {
        let request = tokio::select! {
            biased;
            () = &mut closing => break,
            request = read_frame::<_, Req>(&mut rd, MAX_FRAME) => request,
        };
        let reply = match request {
            Ok(Some(request)) => answer(request).await,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("malformed request from a local caller: {e}");
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
    // Closing: what was answered goes out; what was not is not run.
    let _ = tokio::time::timeout(FLUSH_ON_CLOSE, wr.flush()).await;
}
