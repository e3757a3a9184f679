//! One connection to the head: a worker's or a client's, from hello to goodbye.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ids::{ActorId, JobId, LeaseId, NodeId, TaskId};
use crate::placement::Lease;
use crate::proto::{
    read_frame, write_frame, ActorLocation, ActorSpec, ClientReply, ClientRequest, ErrorKind,
    FrameError, Hello, JobEvent, JobSpec, RemoteError, TaskSpec, Welcome, WorkerCommand,
    WorkerEvent, WorkerReply, MAX_FRAME,
};
use crate::security::token_matches;

use super::registry::{ActorEntry, Head, Work, WorkEntry};
use super::status;
use crate::resources::{actor_label, task_label};

/// The largest hello accepted: a worker's list of types fits easily.
const MAX_HELLO: usize = 1 << 20;

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
    let hello = read_frame::<_, Hello>(&mut recv, MAX_HELLO).await;
    let refuse = |reason: String| Welcome::Refused { reason };
    let welcome_and_role = match hello {
        Ok(Some(Hello::Worker(h))) if token_matches(&head.token, &h.token) => {
            let node = NodeId(head.next_id());
            (Welcome::Accepted { node: Some(node) }, Some(Ok((node, *h))))
        }
        Ok(Some(Hello::Client { token })) if token_matches(&head.token, &token) => {
            (Welcome::Accepted { node: None }, Some(Err(())))
        }
        Ok(Some(_)) => (refuse("wrong cluster token".into()), None),
        Ok(None) => (refuse("the connection sent no hello".into()), None),
        Err(e) => (refuse(format!("malformed hello: {e}")), None),
    };
    let (welcome, role) = welcome_and_role;
    if let Welcome::Refused { reason } = &welcome {
        tracing::warn!(%remote, "refused a connection: {reason}");
        let _ = write_frame(&mut send, &welcome).await;
        let _ = send.finish();
        // Let the refusal arrive before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        conn.close(1u32.into(), reason.as_bytes());
        return;
    }
    match role {
        Some(Ok((node, hello))) => {
            let name = hello.name.clone();
            head.add_node(node, conn.clone(), hello);
            if write_frame(&mut send, &welcome).await.is_err() {
                head.remove_node(node);
                return;
            }
            let _ = send.finish();
            tracing::info!(%node, %remote, "worker {name} joined");
            serve_worker(head, conn, node).await;
        }
        _ => {
            if write_frame(&mut send, &welcome).await.is_err() {
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
            loop {
                tick.tick().await;
                let silent = head
                    .nodes
                    .get(&node)
                    .map(|n| n.last_heartbeat.elapsed())
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
    let lost = head.remove_node(node);
    if leaving {
        tracing::info!(%node, "worker left");
    } else {
        tracing::warn!(%node, lost = lost.len(), "worker died: {reason}");
    }
}

fn on_worker_event(head: &Head, node: NodeId, ev: WorkerEvent) {
    match ev {
        WorkerEvent::Heartbeat { gpus } => {
            if let Some(mut n) = head.nodes.get_mut(&node) {
                n.last_heartbeat = Instant::now();
                n.gpu_stats = gpus;
            }
        }
        WorkerEvent::ActorExited { actor, reason } => {
            if let Some((_, a)) = head.actors.remove(&actor) {
                tracing::warn!(%actor, %node, "actor exited: {reason}");
                head.release(a.lease);
            }
        }
        WorkerEvent::Leaving => {
            if let Some(mut n) = head.nodes.get_mut(&node) {
                n.leaving = true;
            }
            head.with_scheduler(|s| s.set_schedulable(node, false));
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
        ClientRequest::SubmitTask(spec) => run_task(&head, spec, &conn).await,
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

/// Holds a lease until dropped, so that capacity returns however a request ends.
struct LeaseGuard<'a> {
    head: &'a Head,
    lease: LeaseId,
    keep: bool,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.head.abandon(self.lease);
        }
    }
}

/// Waits for a lease for `work`, or gives up if `client` goes away first; the guard releases
/// the lease however the request ends.
async fn acquire<'a>(
    head: &'a Head,
    work: Work,
    placement: &crate::proto::Placement,
    label: Option<String>,
    client: &quinn::Connection,
) -> Result<(LeaseGuard<'a>, Lease), RemoteError> {
    let lease = LeaseId(head.next_id());
    head.work.insert(
        lease,
        WorkEntry {
            work,
            placement: placement.clone(),
            running: None,
        },
    );
    let guard = LeaseGuard {
        head,
        lease,
        keep: false,
    };
    let granted = tokio::select! {
        granted = head.acquire(lease, placement, label) => granted?,
        _ = client.closed() => {
            return Err(RemoteError::new(ErrorKind::Internal, "the client went away"));
        }
    };
    if let Some(mut w) = head.work.get_mut(&lease) {
        w.running = Some((granted.node, granted.allocation.clone()));
    }
    Ok((guard, granted))
}

async fn run_task(head: &Head, spec: TaskSpec, client: &quinn::Connection) -> ClientReply {
    let task = TaskId(head.next_id());
    let work = Work::Task {
        id: task,
        name: spec.name.clone(),
    };
    let (_guard, lease) = match acquire(
        head,
        work,
        &spec.placement,
        Some(task_label(&spec.name)),
        client,
    )
    .await
    {
        Ok(l) => l,
        Err(e) => return ClientReply::Error(e),
    };
    let cmd = WorkerCommand::RunTask {
        task,
        name: spec.name,
        args: spec.args,
        allocation: lease.allocation,
    };
    match call_worker(head, lease.node, &cmd).await {
        Ok(WorkerReply::TaskDone(bytes)) => ClientReply::TaskDone(bytes),
        Ok(WorkerReply::Error(e)) => ClientReply::Error(e),
        Ok(other) => ClientReply::Error(unexpected(&other)),
        Err(e) => ClientReply::Error(e),
    }
}

async fn create_actor(head: &Head, spec: ActorSpec, client: &quinn::Connection) -> ClientReply {
    let owner = client.stable_id();
    let actor = ActorId(head.next_id());
    let work = Work::Actor {
        id: actor,
        type_name: spec.type_name.clone(),
    };
    let label = Some(actor_label(&spec.type_name));
    let (mut guard, lease) = match acquire(head, work, &spec.placement, label, client).await {
        Ok(l) => l,
        Err(e) => return ClientReply::Error(e),
    };
    let cmd = WorkerCommand::CreateActor {
        actor,
        type_name: spec.type_name,
        args: spec.args,
        allocation: lease.allocation.clone(),
    };
    match call_worker(head, lease.node, &cmd).await {
        Ok(WorkerReply::ActorReady(endpoints)) => {
            guard.keep = true;
            head.actors.insert(
                actor,
                ActorEntry {
                    lease: lease.id,
                    node: lease.node,
                    owner,
                },
            );
            tracing::info!(%actor, node = %lease.node, "actor created");
            if client.close_reason().is_some() {
                // Its owner left while it was being built: it dies with its owner.
                kill_actor(head, actor).await;
            }
            ClientReply::ActorCreated(ActorLocation {
                actor,
                node: lease.node,
                endpoints,
                allocation: lease.allocation,
            })
        }
        Ok(WorkerReply::Error(e)) => ClientReply::Error(e),
        Ok(other) => ClientReply::Error(unexpected(&other)),
        Err(e) => ClientReply::Error(e),
    }
}

/// Stops an actor and frees its resources. False if no such actor is alive.
async fn kill_actor(head: &Head, actor: ActorId) -> bool {
    let Some((_, entry)) = head.actors.remove(&actor) else {
        return false;
    };
    let _ = call_worker(head, entry.node, &WorkerCommand::KillActor { actor }).await;
    head.release(entry.lease);
    tracing::info!(%actor, "actor stopped");
    true
}

async fn run_job(
    head: &Head,
    spec: JobSpec,
    client: &quinn::Connection,
    out: &mut quinn::SendStream,
) {
    let job = JobId(head.next_id());
    let work = Work::Job {
        id: job,
        command: spec.command.join(" "),
    };
    let (_guard, lease) = match acquire(head, work, &spec.placement, None, client).await {
        Ok(l) => l,
        Err(e) => {
            let _ = write_frame(out, &ClientReply::Error(e)).await;
            return;
        }
    };
    let Some(conn) = head.node_conn(lease.node) else {
        let _ = write_frame(out, &ClientReply::Error(died(lease.node))).await;
        return;
    };
    let cmd = WorkerCommand::RunJob {
        job,
        command: spec.command,
        env: spec.env,
        allocation: lease.allocation,
    };
    let relay = async {
        // The command's stream stays open: resetting it cancels the job.
        let (mut wsend, mut wrecv) = conn.open_bi().await.map_err(|_| died(lease.node))?;
        write_frame(&mut wsend, &cmd)
            .await
            .map_err(|_| died(lease.node))?;
        // Frames are read by a task of their own, so that waiting for them can be interrupted
        // without losing half a frame.
        let (frames_tx, mut frames) = tokio::sync::mpsc::channel(16);
        let reader = tokio::spawn(async move {
            loop {
                let frame = read_frame::<_, WorkerReply>(&mut wrecv, MAX_FRAME).await;
                let end = !matches!(frame, Ok(Some(_)));
                if frames_tx.send(frame).await.is_err() || end {
                    return;
                }
            }
        });
        let _reader = AbortOnDrop(reader);
        let mut client_here = true;
        loop {
            let frame = tokio::select! {
                frame = frames.recv() => frame,
                _ = client.closed(), if client_here => {
                    // The client left: cancel the job, and keep its resources until the
                    // worker reports it gone.
                    client_here = false;
                    let _ = wsend.reset(0u32.into());
                    continue;
                }
            };
            match frame {
                Some(Ok(Some(WorkerReply::Job(ev)))) => {
                    let exited = matches!(ev, JobEvent::Exited(_));
                    if client_here && write_frame(out, &ClientReply::Job(ev)).await.is_err() {
                        client_here = false;
                        let _ = wsend.reset(0u32.into());
                    }
                    if exited {
                        return Ok(());
                    }
                }
                Some(Ok(Some(WorkerReply::Error(e)))) => return Err(e),
                Some(Ok(Some(other))) => return Err(unexpected(&other)),
                Some(Ok(None)) | Some(Err(_)) | None => return Err(died(lease.node)),
            }
        }
    };
    if let Err(e) = relay.await {
        let _ = write_frame(out, &ClientReply::Error(e)).await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one command to a worker and reads its one reply.
async fn call_worker(
    head: &Head,
    node: NodeId,
    cmd: &WorkerCommand,
) -> Result<WorkerReply, RemoteError> {
    let conn = head.node_conn(node).ok_or_else(|| died(node))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|_| died(node))?;
    write_frame(&mut send, cmd).await.map_err(|_| died(node))?;
    let _ = send.finish();
    match read_frame::<_, WorkerReply>(&mut recv, MAX_FRAME).await {
        Ok(Some(reply)) => Ok(reply),
        _ => Err(died(node)),
    }
}

fn died(node: NodeId) -> RemoteError {
    RemoteError::new(
        ErrorKind::WorkerDied,
        format!("worker {node} died or left before answering"),
    )
}

fn unexpected(reply: &WorkerReply) -> RemoteError {
    RemoteError::new(
        ErrorKind::Internal,
        format!("worker sent an unexpected reply: {reply:?}"),
    )
}
