//! Serving one caller on a same-machine Unix socket, for an actor or a task lease: its hello,
//! then requests sharing the stream, each answered in order. Replies are flushed when no
//! further request is already buffered, so a pipelined batch is answered with few writes.

use ember_runtime::proto::{read_frame, write_frame, LocalReply, Wire, MAX_FRAME};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;

use super::actor_host::greet;

/// Serves `stream` until the caller closes it or sends a malformed frame; `answer` turns each
/// request into its reply.
pub(super) async fn serve<Req: Wire>(
    token: &str,
    stream: UnixStream,
    mut answer: impl AsyncFnMut(Req) -> LocalReply,
) {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    if !greet(token, &mut rd, &mut wr).await {
        return;
    }
    loop {
        let reply = match read_frame::<_, Req>(&mut rd, MAX_FRAME).await {
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
}
