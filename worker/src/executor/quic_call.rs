//! Serving callers over QUIC, for an actor or a task lease alike: the end of a caller's hello
//! stream, and one request on a stream of its own (read it, answer it, write the reply and
//! finish the stream).

use ember_core::proto::MAX_FRAME;
use ember_core::proto::{read_frame, write_frame, CallReply, ErrorKind, RemoteError, Wire};

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

/// Ends a caller's hello stream, on which the welcome or refusal has been written. A refused
/// caller's connection is closed once it has read the refusal. Returns whether to serve it.
pub(super) async fn end_hello(
    mut send: quinn::SendStream,
    conn: &quinn::Connection,
    accepted: bool,
) -> bool {
    let _ = send.finish();
    if !accepted {
        let _ = send.stopped().await;
        conn.close(1u32.into(), b"refused");
    }
    accepted
}
