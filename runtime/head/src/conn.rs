//! One connection to the head: a worker's or a client's, from hello to goodbye.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::ids::{ActorId, NodeId};
use ember_core::proto::{
    read_frame, write_frame, ClientReply, ClientRequest, ErrorKind, FrameError, HelloRole,
    RemoteError, Welcome, WorkerEvent, MAX_FRAME,
};
use ember_core::security::{accept_hello, HelloListener};

use crate::groups;
use crate::recovery::{self, actor_lost, node_lost};
use crate::registry::Head;
use crate::status;
use crate::work::{create_actor, kill_actor, lease_task, run_job};

/// Serves one incoming connection until it closes.
pub(crate) async fn serve(head: Arc<Head>, incoming: quinn::Incoming) {
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
    let role = match accept_hello(&mut recv, &mut send, &head.token, HelloListener::Head).await {
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
            let node = NodeId(head.next_id());
            let welcome = Welcome::Accepted { node: Some(node) };
            let name = hello.name.clone();
            head.add_node(node, conn.clone(), *hello);
            if write_frame(&mut send, &welcome).await.is_err() {
                node_lost(&head, node, "left during its welcome");
                return;
            }
            let _ = send.finish();
            tracing::info!(%node, %remote, "worker {name} joined");
            serve_worker(head, conn, node).await;
        }
        _ => {
            if write_frame(&mut send, &Welcome::Accepted { node: None })
                .await
                .is_err()
            {
                return;
            }
            let _ = send.finish();
            serve_client(head, conn).await;
        }
    }
}

/// Reads a worker's events and watches its heartbeats until it leaves or dies.
async fn serve_worker(head: Arc<Head>, conn: quinn::Connection, node: NodeId) {
    let events = {
        let head = head.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let Ok(mut recv) = conn.accept_uni().await else {
                return;
            };
            loop {
                match read_frame::<_, WorkerEvent>(&mut recv, MAX_FRAME).await {
                    Ok(Some(ev)) => on_worker_event(&head, node, ev),
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(%node, "malformed event from worker: {e}");
                        conn.close(3u32.into(), format!("malformed event: {e}").as_bytes());
                        return;
                    }
                }
            }
        })
    };
    let watchdog = {
        let head = head.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let timeout = head.heartbeat_timeout;
            let mut tick = tokio::time::interval(timeout / 8);
            // Any datagram from the worker (its QUIC stack acknowledging bulk data, or its
            // keep-alives) proves it alive too: a worker so busy that a heartbeat waits in
            // line is not dead. A frozen or killed one sends nothing at all.
            let mut received = conn.stats().udp_rx.datagrams;
            let mut heard = Instant::now();
            loop {
                tick.tick().await;
                let now_received = conn.stats().udp_rx.datagrams;
                if now_received != received {
                    received = now_received;
                    heard = Instant::now();
                }
                let silent = head
                    .nodes
                    .get(&node)
                    .map(|n| n.last_heartbeat.elapsed().min(heard.elapsed()))
                    .unwrap_or_default();
                if silent > timeout {
                    tracing::warn!(%node, "no heartbeat for {silent:?}: declaring the worker dead");
                    conn.close(4u32.into(), b"missed heartbeats");
                    return;
                }
            }
        })
    };
    let reason = conn.closed().await;
    events.abort();
    watchdog.abort();
    let leaving = head.nodes.get(&node).is_some_and(|n| n.leaving);
    if leaving {
        node_lost(&head, node, "left");
        tracing::info!(%node, "worker left");
    } else {
        let lost = node_lost(&head, node, "died");
        tracing::warn!(%node, lost, "worker died: {reason}");
    }
}

fn on_worker_event(head: &Arc<Head>, node: NodeId, ev: WorkerEvent) {
    match ev {
        WorkerEvent::Heartbeat { gpus } => {
            if let Some(mut n) = head.nodes.get_mut(&node) {
                n.last_heartbeat = Instant::now();
                n.gpu_stats = gpus;
            }
        }
        WorkerEvent::ActorExited {
            actor,
            incarnation,
            reason,
        } => {
            tracing::warn!(%actor, %node, incarnation, "actor's process ended: {reason}");
            actor_lost(head, actor, incarnation, &reason);
        }
        WorkerEvent::Leaving { grace_ms } => {
            let head = head.clone();
            tokio::spawn(async move {
                recovery::drain(&head, node, Duration::from_millis(grace_ms)).await;
            });
        }
    }
}

/// Serves a client's requests, one stream each, until it disconnects; then stops its actors.
async fn serve_client(head: Arc<Head>, conn: quinn::Connection) {
    let owner = conn.stable_id();
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_request(head.clone(), conn.clone(), send, recv));
    }
    let owned: Vec<ActorId> = head
        .actors
        .iter()
        .filter(|a| a.owner == owner)
        .map(|a| *a.key())
        .collect();
    for actor in owned {
        kill_actor(&head, actor).await;
    }
}

async fn serve_request(
    head: Arc<Head>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let request = match read_frame::<_, ClientRequest>(&mut recv, MAX_FRAME).await {
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
    // A request whose client goes away is withdrawn while it waits for capacity; once placed,
    // it runs to the end so that its resources are released only when the worker is done.
    let reply = match request {
        ClientRequest::LeaseTask(spec) => {
            lease_task(&head, spec, &conn, &mut send, &mut recv).await;
            let _ = send.finish();
            return;
        }
        ClientRequest::LocateActor {
            actor,
            known,
            suspect,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            recovery::locate(&head, actor, known, suspect, timeout).await
        }
        ClientRequest::SaveCheckpoint(save) => recovery::save_checkpoint(&head, save).await,
        ClientRequest::DrainNode { node, grace_ms } => {
            recovery::drain(&head, node, Duration::from_millis(grace_ms)).await
        }
        ClientRequest::CreateActor(spec) => create_actor(&head, spec, &conn).await,
        ClientRequest::KillActor { actor } => {
            if kill_actor(&head, actor).await {
                ClientReply::ActorKilled
            } else {
                ClientReply::Error(RemoteError::new(
                    ErrorKind::Unknown,
                    format!("no actor {actor} in the cluster"),
                ))
            }
        }
        ClientRequest::SubmitJob(spec) => {
            run_job(&head, spec, &conn, &mut send).await;
            let _ = send.finish();
            return;
        }
        ClientRequest::Status => ClientReply::Status(status::collect(&head).to_json()),
        ClientRequest::FormGroup { name, members } => groups::form(&head, name, members).await,
        ClientRequest::JoinGroup {
            name,
            actor,
            world,
            timeout_ms,
        } => groups::join(&head, name, actor, world, Duration::from_millis(timeout_ms)).await,
        ClientRequest::GetGroup { name, timeout_ms } => {
            groups::get(&head, &name, Duration::from_millis(timeout_ms)).await
        }
        ClientRequest::GroupHealth {
            name,
            generation,
            incarnations,
        } => groups::health(&head, &name, generation, &incarnations),
        ClientRequest::GroupFailed {
            name,
            generation,
            reason,
            suspect,
        } => groups::failed(&head, &name, generation, &reason, suspect).await,
        ClientRequest::WaitForNodes { count, timeout_ms } => {
            let mut rx = head.node_count.subscribe();
            let wait = async { rx.wait_for(|n| *n >= count).await.map(|n| *n) };
            match tokio::time::timeout(Duration::from_millis(timeout_ms), wait).await {
                Ok(Ok(n)) => ClientReply::NodesReady { count: n },
                _ => ClientReply::Error(RemoteError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{} of {count} workers joined within {timeout_ms} ms",
                        head.nodes.len()
                    ),
                )),
            }
        }
    };
    let _ = write_frame(&mut send, &reply).await;
    let _ = send.finish();
}
