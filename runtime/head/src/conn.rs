//! One connection to the head, a worker's or a client's, from hello to goodbye. This side only
//! translates: frames from the network become the state's inputs, and the state's frames go
//! back on the streams they answer.

use std::time::{Duration, Instant};

use ember_core::proto::{
    read_frame, write_frame, ClientReply, ClientRequest, ErrorKind, FrameError, HelloRole,
    RemoteError, Welcome, WorkerEvent, LEASE_LOST, MAX_FRAME,
};
use ember_core::security::{accept_hello, HelloListener};
use ember_head_state::{ConnId, Input, RequestId};
use tokio::sync::{mpsc, oneshot};

use crate::shell::{Frame, Msg, Shell};

/// How often a worker's connection is checked for packets that show it alive.
const HEARD_EVERY: Duration = Duration::from_millis(100);

/// Serves one incoming connection until it closes.
pub(crate) async fn serve(shell: Shell, token: String, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%remote, "connection failed during the handshake: {e}");
            return;
        }
    };
    let Ok(Ok((mut send, mut recv))) =
        tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await
    else {
        conn.close(2u32.into(), b"no hello within 10 s");
        return;
    };
    let role = match accept_hello(&mut recv, &mut send, &token, HelloListener::Head).await {
        Ok(role) => role,
        Err(refused) => {
            tracing::warn!(%remote, "refused a connection: {refused}");
            let _ = send.finish();
            // Let the refusal arrive before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            conn.close(1u32.into(), refused.reason.as_bytes());
            return;
        }
    };
    match role {
        HelloRole::Worker(hello) => {
            let id = ConnId(shell.next_id());
            let (welcome, node) = oneshot::channel();
            shell.send(Msg::Worker {
                conn: id,
                connection: conn.clone(),
                hello,
                welcome,
            });
            let Ok((node, terms)) = node.await else {
                return;
            };
            let accepted = Welcome::Accepted { node: Some(node) };
            let welcomed = async {
                write_frame(&mut send, &accepted).await?;
                write_frame(&mut send, &terms).await
            };
            if welcomed.await.is_err() {
                shell.input(Input::Closed { conn: id });
                return;
            }
            let _ = send.finish();
            tracing::info!(%node, %remote, "worker joined");
            serve_worker(&shell, &conn, id, node).await;
        }
        _ => {
            if write_frame(&mut send, &Welcome::Accepted { node: None })
                .await
                .is_err()
            {
                return;
            }
            let _ = send.finish();
            serve_client(&shell, &conn).await;
        }
    }
}

/// Passes a worker's events to the state, and tells it when packets show the worker alive,
/// until the connection closes.
async fn serve_worker(
    shell: &Shell,
    conn: &quinn::Connection,
    id: ConnId,
    node: ember_core::ids::NodeId,
) {
    let events = {
        let shell = shell.clone();
        let conn = conn.clone();
        async move {
            let Ok(mut recv) = conn.accept_uni().await else {
                return;
            };
            loop {
                match read_frame::<_, WorkerEvent>(&mut recv, MAX_FRAME).await {
                    Ok(Some(event)) => shell.input(Input::Event { node, event }),
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(%node, "malformed event from worker: {e}");
                        conn.close(3u32.into(), format!("malformed event: {e}").as_bytes());
                        return;
                    }
                }
            }
        }
    };
    let heard = {
        let shell = shell.clone();
        let conn = conn.clone();
        async move {
            // Any datagram from the worker (its QUIC stack acknowledging bulk data, or its
            // keep-alives) shows it alive: a worker so busy that a heartbeat waits in line
            // is not dead. A frozen or killed one sends nothing at all.
            let mut received = conn.stats().udp_rx.datagrams;
            let mut looked = Instant::now();
            let mut tick = tokio::time::interval(HEARD_EVERY);
            loop {
                tick.tick().await;
                let now = conn.stats().udp_rx.datagrams;
                let after = std::mem::replace(&mut looked, Instant::now());
                if now != received {
                    received = now;
                    shell.input(Input::Heard { node, after });
                }
            }
        }
    };
    let reason = tokio::select! {
        reason = conn.closed() => reason,
        _ = async { tokio::join!(events, heard) } => conn.closed().await,
    };
    tracing::info!(%node, "worker connection closed: {reason}");
    shell.input(Input::Closed { conn: id });
}

/// Serves a client's requests, one stream each, until it disconnects.
async fn serve_client(shell: &Shell, conn: &quinn::Connection) {
    let id = ConnId(shell.next_id());
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_request(shell.clone(), id, send, recv));
    }
    shell.input(Input::Closed { conn: id });
}

/// Reads one request, hands it to the state, and writes the frames the state answers with.
/// A task lease's stream stays open while the client holds the lease: its end gives it back.
async fn serve_request(
    shell: Shell,
    conn: ConnId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let body = match read_frame::<_, ClientRequest>(&mut recv, MAX_FRAME).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            if matches!(e, FrameError::TooLarge { .. }) {
                let _ = recv.stop(0u32.into());
            }
            let err = RemoteError::new(ErrorKind::BadRequest, format!("bad request: {e}"));
            let _ = write_frame(&mut send, &ClientReply::Error(err)).await;
            let _ = send.finish();
            return;
        }
    };
    let lease = matches!(body, ClientRequest::LeaseTask(_));
    let request = RequestId(shell.next_id());
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    shell.send(Msg::Request {
        conn,
        request,
        body,
        frames: frames_tx,
    });
    // Nothing more is sent on a lease's stream: its end (or its reset) gives the lease back.
    let mut given_back = !lease;
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => frame,
            ended = recv.read_to_end(64), if !given_back => {
                given_back = true;
                let lost = quinn::VarInt::from_u32(LEASE_LOST);
                let lost = matches!(
                    ended,
                    Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code == lost
                );
                shell.input(Input::LeaseReturned { request, lost });
                continue;
            }
        };
        match frame {
            Some(Frame::More(reply)) => {
                let _ = write_frame(&mut send, &reply).await;
            }
            Some(Frame::Last(reply)) => {
                let _ = write_frame(&mut send, &reply).await;
                let _ = send.finish();
                return;
            }
            Some(Frame::End) | None => {
                let _ = send.finish();
                return;
            }
        }
    }
}
