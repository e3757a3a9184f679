//! Running work on workers: leases held by guards, task leases, actor creation and
//! stopping, jobs, and the one-command exchange with a worker.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use ember_core::ids::{ActorId, JobId, LeaseId, NodeId, TaskId};
use ember_core::proto::{
    read_frame, write_frame, ActorLocation, ActorSpec, ClientReply, ErrorKind, JobEvent, JobSpec,
    LeaseSpec, RemoteError, TaskLease, WorkerCommand, WorkerReply, LEASE_LOST, MAX_FRAME,
};
use ember_core::resources::{actor_label, task_label};
use ember_head_state::placement::Lease;

use crate::recovery::node_lost;
use crate::registry::{ActorEntry, Head, Work, WorkEntry};
use ember_head_state::actor_life::ActorLife;

/// Holds a lease until dropped, so that capacity returns however a request ends.
pub(crate) struct LeaseGuard<'a> {
    head: &'a Head,
    lease: LeaseId,
    /// Set once the lease outlives the request (a live actor holds it).
    pub(crate) keep: bool,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.head.abandon(self.lease);
        }
    }
}

/// Waits for a lease for `work`, or gives up if `cancelled` resolves first (its client went
/// away); the guard releases the lease however the request ends.
pub(crate) async fn acquire<'a>(
    head: &'a Head,
    work: Work,
    placement: &ember_core::proto::Placement,
    label: Option<String>,
    cancelled: impl Future,
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
        _ = cancelled => {
            return Err(RemoteError::new(ErrorKind::Internal, "the client went away"));
        }
    };
    if let Some(mut w) = head.work.get_mut(&lease) {
        w.running = Some((granted.node, granted.allocation.clone()));
    }
    Ok((guard, granted))
}

/// Grants a task lease and holds it until the client gives it back (finishes its side of
/// `input`), the client or the worker goes, or the node drains. Meanwhile the client sends
/// tasks straight to the executor; the lease is closed on the worker (after its running task)
/// before its resources return.
pub(crate) async fn lease_task(
    head: &Arc<Head>,
    spec: LeaseSpec,
    client: &quinn::Connection,
    out: &mut quinn::SendStream,
    input: &mut quinn::RecvStream,
) {
    let work = Work::Task {
        id: TaskId(head.next_id()),
        name: spec.name.clone(),
    };
    let label = Some(task_label(&spec.name));
    let (_guard, lease) = match acquire(head, work, &spec.placement, label, client.closed()).await {
        Ok(l) => l,
        Err(e) => {
            let _ = write_frame(out, &ClientReply::Error(e)).await;
            return;
        }
    };
    let open = WorkerCommand::OpenLease {
        lease: lease.id,
        allocation: lease.allocation.clone(),
    };
    let opened = match call_worker(head, lease.node, &open).await {
        Ok(WorkerReply::LeaseOpened(endpoints)) => Ok(endpoints),
        Ok(WorkerReply::Error(e)) | Err(e) => Err(e),
        Ok(other) => Err(unexpected(&other)),
    };
    let endpoints = match opened {
        Ok(endpoints) => endpoints,
        Err(e) => {
            let _ = write_frame(out, &ClientReply::Error(e)).await;
            return;
        }
    };
    let granted = TaskLease {
        lease: lease.id,
        node: lease.node,
        allocation: lease.allocation,
        endpoints,
    };
    let Some(worker) = head.node_conn(lease.node) else {
        let _ = write_frame(out, &ClientReply::Error(died(lease.node))).await;
        return;
    };
    let held = async {
        if write_frame(out, &ClientReply::TaskLeased(granted))
            .await
            .is_err()
        {
            return false;
        }
        // Nothing more is sent on it: the end of the stream (or its reset) gives it back.
        let lost = quinn::VarInt::from_u32(LEASE_LOST);
        matches!(
            input.read_to_end(64).await,
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code == lost
        )
    };
    let mut lost = false;
    let taken_back = tokio::select! {
        l = held => {
            lost = l;
            None
        }
        _ = client.closed() => None,
        _ = worker.closed() => {
            let _ = write_frame(out, &ClientReply::Error(died(lease.node))).await;
            return;
        }
        _ = head.node_draining(lease.node) => Some(RemoteError::new(
            ErrorKind::Moved,
            format!("{} was taken back: node {} is draining", lease.id, lease.node),
        )),
    };
    close_lease(head, lease.node, lease.id, lost).await;
    if let Some(e) = taken_back {
        let _ = write_frame(out, &ClientReply::Error(e)).await;
    }
}

/// Closes a task lease on its worker, waiting until its running task (if any) ended. When the
/// client `lost` the lease's executor, often because its worker died, the close doubles as a
/// probe: the lease runs no task then, so a worker silent for the probe window is declared
/// dead.
async fn close_lease(head: &Arc<Head>, node: NodeId, lease: LeaseId, lost: bool) {
    let cmd = WorkerCommand::CloseLease { lease };
    let close = call_worker(head, node, &cmd);
    tokio::pin!(close);
    if !lost {
        let _ = close.await;
        return;
    }
    let window = head.probe_timeout();
    let before = head.datagrams_from(node);
    if tokio::time::timeout(window, &mut close).await.is_ok() {
        return;
    }
    if !head.heard_from_since(node, before) {
        head.declare_dead(node, window);
        // Forget it now, before the client (told once this returns) asks for a new lease.
        node_lost(head, node, "did not answer a probe");
        return;
    }
    // Alive, and its lease still runs a task: its resources return when that task ends.
    let _ = close.await;
}

/// Creates an actor (incarnation 1) and records it, with what it takes to start it again.
pub(crate) async fn create_actor(
    head: &Arc<Head>,
    spec: ActorSpec,
    client: &quinn::Connection,
) -> ClientReply {
    let owner = client.stable_id();
    let actor = ActorId(head.next_id());
    let work = Work::Actor {
        id: actor,
        type_name: spec.type_name.clone(),
    };
    let label = Some(actor_label(&spec.type_name));
    let (mut guard, lease) =
        match acquire(head, work, &spec.placement, label, client.closed()).await {
            Ok(l) => l,
            Err(e) => return ClientReply::Error(e),
        };
    let cmd = WorkerCommand::CreateActor {
        actor,
        type_name: spec.type_name.clone(),
        args: spec.args.clone(),
        allocation: lease.allocation.clone(),
        incarnation: 1,
        checkpoint: spec.checkpoint,
        restore: None,
    };
    match call_worker(head, lease.node, &cmd).await {
        Ok(WorkerReply::ActorReady(endpoints)) => {
            guard.keep = true;
            let location = ActorLocation {
                actor,
                incarnation: 1,
                node: lease.node,
                endpoints,
                allocation: lease.allocation,
                restart: spec.restart,
            };
            let life = ActorLife::new(spec.restart, location.clone());
            let phase = tokio::sync::watch::channel(life.phase().clone()).0;
            head.actors.insert(
                actor,
                ActorEntry {
                    spec,
                    owner,
                    owner_conn: client.clone(),
                    lease: Some(lease.id),
                    life,
                    last_checkpoint: None,
                    phase,
                    checkpoint_lock: Arc::default(),
                },
            );
            tracing::info!(%actor, node = %lease.node, "actor created");
            if client.close_reason().is_some() {
                // Its owner left while it was being built: it dies with its owner.
                kill_actor(head, actor).await;
            }
            ClientReply::ActorCreated(location)
        }
        Ok(WorkerReply::Error(e)) => ClientReply::Error(e),
        Ok(other) => ClientReply::Error(unexpected(&other)),
        Err(e) => ClientReply::Error(e),
    }
}

/// Stops an actor for good, frees its resources and forgets its checkpoints. False if no such
/// actor exists. A restart in progress finds it gone and stops what it started.
pub(crate) async fn kill_actor(head: &Head, actor: ActorId) -> bool {
    let Some((_, mut entry)) = head.actors.remove(&actor) else {
        return false;
    };
    let node = entry.node();
    entry.life.die(format!("{actor} was stopped"));
    entry.phase.send_replace(entry.life.phase().clone());
    if let Some(node) = node {
        let _ = call_worker(head, node, &WorkerCommand::KillActor { actor }).await;
    }
    if let Some(lease) = entry.lease {
        head.release(lease);
    }
    let _lock = entry.checkpoint_lock.lock().await;
    head.checkpoints.remove(actor).await;
    tracing::info!(%actor, "actor stopped");
    true
}

/// Records that a checkpoint of `actor` was saved, for status.
pub(crate) fn checkpoint_recorded(head: &Head, actor: ActorId, seq: u64) {
    if let Some(mut a) = head.actors.get_mut(&actor) {
        a.last_checkpoint = Some((seq, Instant::now()));
    }
}

pub(crate) async fn run_job(
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
    let (_guard, lease) = match acquire(head, work, &spec.placement, None, client.closed()).await {
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
pub(crate) async fn call_worker(
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
        _ => {
            if conn.close_reason().is_some() {
                // The worker is gone for good: nothing more goes there while the connection's
                // own task forgets the node.
                head.with_scheduler(|s| s.set_schedulable(node, false));
            }
            Err(died(node))
        }
    }
}

pub(crate) fn died(node: NodeId) -> RemoteError {
    RemoteError::new(
        ErrorKind::WorkerDied,
        format!("worker {node} died or left before answering"),
    )
}

pub(crate) fn unexpected(reply: &WorkerReply) -> RemoteError {
    RemoteError::new(
        ErrorKind::Internal,
        format!("worker sent an unexpected reply: {reply:?}"),
    )
}
