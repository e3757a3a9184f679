//! Serving one request on a QUIC stream of its own, for an actor or a task lease: read it,
//! answer it, write the reply and finish the stream.

use ember_runtime::proto::MAX_FRAME;
use ember_runtime::proto::{read_frame, write_frame, CallReply, ErrorKind, RemoteError, Wire};

/// Reads one `Req` from `recv`, answers it with `answer` and writes the reply on `send`. A
/// malformed request is answered `BadRequest`, naming it as `what` ("call", "task"); a stream
/// closed with no request is left alone.
pub(super) async fn answer_stream<Req: Wire>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    what: &str,
    answer: impl AsyncFnOnce(Req) -> CallReply,
) {
    let reply = match read_frame::<_, Req>(&mut recv, MAX_FRAME).await {
        Ok(Some(request)) => answer(request).await,
        Ok(None) => return,
        Err(e) => Err(RemoteError::new(
            ErrorKind::BadRequest,
            format!("bad {what}: {e}"),
        )),
    };
    let _ = write_frame(&mut send, &reply).await;
    let _ = send.finish();
}
