//! Bringing actors back: restarts after a loss (from the newest valid checkpoint), telling
//! callers where an actor is now, fast checks of workers that callers suspect, recording
//! checkpoints, and draining a node by moving its actors away.

use std::sync::Arc;
use std::time::Duration;

use ember_core::ids::{ActorId, NodeId};
use ember_core::proto::{
    ActorLocation, CheckpointSave, ClientReply, ErrorKind, RemoteError, WorkerCommand, WorkerReply,
};
use ember_core::resources::actor_label;

use crate::registry::{Head, Work};
use crate::work::{acquire, call_worker, checkpoint_recorded, unexpected};
use ember_head_state::actor_life::{Loss, Phase};

/// Incarnation `incarnation` of `actor` lost its process: restart it if its policy allows,
/// otherwise it is dead and its callers are told why.
pub(crate) fn actor_lost(head: &Arc<Head>, actor: ActorId, incarnation: u32, reason: &str) {
    let (loss, lease) = {
        let Some(mut a) = head.actors.get_mut(&actor) else {
            return;
        };
        let loss = a.life.lost(incarnation, reason);
        let lease = if loss == Loss::Stale {
            None
        } else {
            a.lease.take()
        };
        (loss, lease)
    };
    if let Some(lease) = lease {
        head.release(lease);
    }
    match loss {
        Loss::Stale => {}
        Loss::GiveUp => {
            tracing::warn!(%actor, incarnation, "actor died: {reason}; no restarts left");
            head.publish(actor);
        }
        Loss::Restart { incarnation } => {
            tracing::warn!(%actor, incarnation, "actor lost ({reason}): restarting it");
            head.publish(actor);
            tokio::spawn(restart(head.clone(), actor, incarnation));
        }
    }
}

/// Places `actor` again with its original needs, restores its newest valid checkpoint there
/// and makes `incarnation` the live one.
async fn restart(head: Arc<Head>, actor: ActorId, incarnation: u32) {
    let Some((spec, owner, lock)) = head.actors.get(&actor).map(|a| {
        (
            a.spec.clone(),
            a.owner_conn.clone(),
            a.checkpoint_lock.clone(),
        )
    }) else {
        return;
    };
    let work = Work::Actor {
        id: actor,
        type_name: spec.type_name.clone(),
    };
    let label = Some(actor_label(&spec.type_name));
    let (mut guard, lease) =
        match acquire(&head, work, &spec.placement, label, owner.closed()).await {
            Ok(l) => l,
            Err(e) => return give_up(&head, actor, incarnation, format!("cannot place it: {e}")),
        };
    let restore = if spec.checkpoint.enabled {
        // Every save accepted before this incarnation began is on disk once the lock is held.
        let _held = lock.lock().await;
        match head.checkpoints.latest(actor).await {
            Ok(found) => found,
            Err(e) => return give_up(&head, actor, incarnation, format!("its checkpoints: {e}")),
        }
    } else {
        None
    };
    let restored_seq = restore.as_ref().map(|r| r.seq);
    let cmd = WorkerCommand::CreateActor {
        actor,
        type_name: spec.type_name.clone(),
        args: spec.args.clone(),
        allocation: lease.allocation.clone(),
        incarnation,
        checkpoint: spec.checkpoint,
        restore: restore.map(|r| r.image),
    };
    match call_worker(&head, lease.node, &cmd).await {
        Ok(WorkerReply::ActorReady(endpoints)) => {
            let location = ActorLocation {
                actor,
                incarnation,
                node: lease.node,
                endpoints,
                allocation: lease.allocation.clone(),
                restart: spec.restart,
            };
            let started = head.actors.get_mut(&actor).is_some_and(|mut a| {
                let started = a.life.started(location);
                if started {
                    a.lease = Some(lease.id);
                }
                started
            });
            if started {
                guard.keep = true;
                head.publish(actor);
                tracing::info!(
                    %actor, incarnation, node = %lease.node, checkpoint = ?restored_seq,
                    "actor restarted"
                );
            } else {
                // Stopped, or lost again, while it was being built.
                let _ = call_worker(&head, lease.node, &WorkerCommand::KillActor { actor }).await;
            }
        }
        Ok(WorkerReply::Error(e)) if e.kind == ErrorKind::WorkerDied => {
            drop(guard);
            actor_lost(&head, actor, incarnation, &e.message);
        }
        Ok(WorkerReply::Error(e)) => give_up(&head, actor, incarnation, e.to_string()),
        Ok(other) => give_up(&head, actor, incarnation, unexpected(&other).message),
        Err(e) => {
            drop(guard);
            actor_lost(&head, actor, incarnation, &e.message);
        }
    }
}

/// The restart of `incarnation` failed for a reason a retry would not fix: the actor is dead.
fn give_up(head: &Head, actor: ActorId, incarnation: u32, reason: String) {
    let dead = head.actors.get_mut(&actor).is_some_and(|mut a| {
        let current = a.life.incarnation() == incarnation;
        if current {
            a.life
                .die(format!("{actor} could not be restarted: {reason}"));
        }
        current
    });
    if dead {
        tracing::error!(%actor, incarnation, "actor could not be restarted: {reason}");
        head.publish(actor);
    }
}

/// Where `actor` takes calls: an incarnation newer than `known`, waiting up to `timeout` while
/// it restarts. A `suspect` caller lost its connection to incarnation `known`, so that
/// incarnation's worker is probed first: a worker that does not answer is declared dead at
/// once, without waiting for its heartbeats to lapse.
pub(crate) async fn locate(
    head: &Arc<Head>,
    actor: ActorId,
    known: u32,
    suspect: bool,
    timeout: Duration,
) -> ClientReply {
    let stopped = || {
        ClientReply::Error(RemoteError::new(
            ErrorKind::Unknown,
            format!("no actor {actor} in the cluster (never created, or stopped)"),
        ))
    };
    let Some((mut phase, current)) = head.actors.get(&actor).map(|a| {
        (
            a.phase.subscribe(),
            a.life
                .location()
                .filter(|l| l.incarnation == known)
                .cloned(),
        )
    }) else {
        return stopped();
    };
    if let (true, Some(location)) = (suspect, current) {
        if probe(head, actor, &location).await {
            // A false alarm: the incarnation the caller knows still runs.
            return ClientReply::ActorLocated(location);
        }
    }
    let newer = |p: &Phase| match p {
        Phase::Alive(l) => l.incarnation > known,
        Phase::Restarting => false,
        Phase::Dead(_) => true,
    };
    let waited = tokio::time::timeout(timeout, async {
        phase.wait_for(newer).await.map(|p| p.clone())
    })
    .await;
    match waited {
        Ok(Ok(p)) => match p {
            Phase::Alive(l) => ClientReply::ActorLocated(l),
            Phase::Dead(reason) => ClientReply::Error(RemoteError::new(
                ErrorKind::WorkerDied,
                format!("{actor} is dead: {reason}"),
            )),
            Phase::Restarting => unreachable_phase(),
        },
        Ok(Err(_)) => stopped(),
        Err(_) => ClientReply::Error(RemoteError::new(
            ErrorKind::Timeout,
            format!(
                "{actor} did not come back within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

fn unreachable_phase() -> ClientReply {
    ClientReply::Error(RemoteError::new(
        ErrorKind::Internal,
        "a restarting actor was reported as located",
    ))
}

/// Asks the worker of `location` whether that incarnation still runs. No answer within the
/// probe window means the worker is dead: its connection is closed, which loses (and restarts)
/// everything on it. True only when the incarnation is confirmed alive.
pub(crate) async fn probe(head: &Arc<Head>, actor: ActorId, location: &ActorLocation) -> bool {
    let node = location.node;
    let cmd = WorkerCommand::Probe {
        actor,
        incarnation: location.incarnation,
    };
    let window = head.probe_timeout();
    let before = head.datagrams_from(node);
    match tokio::time::timeout(window, call_worker(head, node, &cmd)).await {
        Ok(Ok(WorkerReply::Probed { alive: true })) => true,
        Ok(Ok(WorkerReply::Probed { alive: false })) => {
            actor_lost(head, actor, location.incarnation, "its process ended");
            false
        }
        Err(_) if head.heard_from_since(node, before) => {
            // Slow to answer but not silent: a busy worker, which reports a lost actor
            // process itself.
            tracing::info!(%node, "slow to answer a probe, but alive");
            false
        }
        Ok(_) | Err(_) => {
            head.declare_dead(node, window);
            false
        }
    }
}

/// Records a checkpoint durably, if it comes from the actor's live incarnation.
pub(crate) async fn save_checkpoint(head: &Arc<Head>, save: CheckpointSave) -> ClientReply {
    let actor = save.actor;
    let Some(lock) = head.actors.get(&actor).map(|a| a.checkpoint_lock.clone()) else {
        return ClientReply::Error(RemoteError::new(
            ErrorKind::Unknown,
            format!("no actor {actor} in the cluster"),
        ));
    };
    let _held = lock.lock().await;
    let current = head
        .actors
        .get(&actor)
        .map(|a| (a.life.incarnation(), a.life.location().is_some()));
    match current {
        Some((incarnation, true)) if incarnation == save.incarnation => {}
        Some((incarnation, _)) => {
            return ClientReply::Error(RemoteError::new(
                ErrorKind::Moved,
                format!(
                    "checkpoint of {actor} refused: incarnation {} was replaced by {incarnation}",
                    save.incarnation
                ),
            ))
        }
        None => {
            return ClientReply::Error(RemoteError::new(
                ErrorKind::Unknown,
                format!("{actor} was stopped"),
            ))
        }
    }
    let seq = save.seq;
    match head.checkpoints.save(actor, seq, save.image).await {
        Ok(()) => {
            checkpoint_recorded(head, actor, seq);
            ClientReply::CheckpointSaved { seq }
        }
        Err(e) => ClientReply::Error(RemoteError::new(
            ErrorKind::Internal,
            format!("cannot record the checkpoint of {actor}: {e}"),
        )),
    }
}

/// A node leaves for good: whatever ran there is lost, and its actors restart elsewhere.
pub(crate) fn node_lost(head: &Arc<Head>, node: NodeId, why: &str) -> usize {
    let (leases, actors) = head.remove_node(node);
    for (actor, incarnation) in actors {
        actor_lost(
            head,
            actor,
            incarnation,
            &format!("its worker {node} {why}"),
        );
    }
    leases.len()
}

/// Drains `node`: no new work goes there; each of its actors is sealed (it stops taking calls
/// and saves a final checkpoint), started elsewhere from that checkpoint, and then stopped
/// there; its tasks and jobs get up to `grace` to finish. Then the worker is told to leave, and
/// what still runs there is retried elsewhere like after any worker loss.
pub(crate) async fn drain(head: &Arc<Head>, node: NodeId, grace: Duration) -> ClientReply {
    let Some(conn) = head.node_conn(node) else {
        return ClientReply::Error(RemoteError::new(
            ErrorKind::Unknown,
            format!("no node {node} in the cluster"),
        ));
    };
    let deadline = tokio::time::Instant::now() + grace;
    head.start_draining(node);
    tracing::info!(%node, ?grace, "draining");
    let actors: Vec<ActorId> = head
        .actors
        .iter()
        .filter(|a| a.node() == Some(node))
        .map(|a| *a.key())
        .collect();
    let moves = actors
        .into_iter()
        .map(|actor| move_actor(head, actor, node, deadline));
    let moved = futures::future::join_all(moves)
        .await
        .into_iter()
        .filter(|m| *m)
        .count();
    while head.running_on(node) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.close(0u32.into(), b"drained");
    tracing::info!(%node, moved, "drained");
    ClientReply::Drained {
        moved: moved as u32,
    }
}

/// Moves one actor off a draining node; true once it runs elsewhere.
async fn move_actor(
    head: &Arc<Head>,
    actor: ActorId,
    node: NodeId,
    deadline: tokio::time::Instant,
) -> bool {
    match call_worker(head, node, &WorkerCommand::SealActor { actor }).await {
        Ok(WorkerReply::Sealed { seq: Some(seq) }) => {
            tracing::info!(%actor, seq, "sealed with a final checkpoint");
        }
        Ok(WorkerReply::Sealed { seq: None }) => {
            tracing::warn!(%actor, "its type cannot checkpoint: it starts anew elsewhere");
        }
        Ok(WorkerReply::Error(e)) => tracing::warn!(%actor, "cannot seal it: {e}"),
        other => tracing::warn!(%actor, "cannot seal it: {other:?}"),
    }
    let moving = head.actors.get_mut(&actor).and_then(|mut a| {
        let incarnation = a.life.moving()?;
        Some((incarnation, a.lease.take(), a.phase.subscribe()))
    });
    let Some((incarnation, lease, mut phase)) = moving else {
        return false;
    };
    if let Some(lease) = lease {
        head.release(lease);
    }
    head.publish(actor);
    tokio::spawn(restart(head.clone(), actor, incarnation));
    let up = |p: &Phase| match p {
        Phase::Alive(l) => l.incarnation >= incarnation,
        Phase::Restarting => false,
        Phase::Dead(_) => true,
    };
    let moved = tokio::time::timeout_at(deadline, async {
        phase
            .wait_for(up)
            .await
            .is_ok_and(|p| matches!(&*p, Phase::Alive(_)))
    })
    .await
    .unwrap_or(false);
    let _ = call_worker(head, node, &WorkerCommand::KillActor { actor }).await;
    moved
}
