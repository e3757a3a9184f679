//! Collective groups at the head: forming and joining them (the table is
//! [`ember_head_state::groups`]), telling members where their peers are, and answering
//! whether a generation is still whole. The head arranges groups; their data never passes
//! through it.

use std::sync::Arc;
use std::time::Duration;

use ember_core::ids::ActorId;
use ember_core::proto::{ClientReply, ErrorKind, GroupMember, GroupView, RemoteError};
use ember_head_state::groups::{GroupError, Joined, Membership};

use crate::recovery;
use crate::registry::Head;
use ember_head_state::actor_life::Phase;

/// How long forming a group waits for members that are restarting.
const FORM_WAIT: Duration = Duration::from_secs(30);

fn error(kind: ErrorKind, message: impl Into<String>) -> ClientReply {
    ClientReply::Error(RemoteError::new(kind, message))
}

fn refused(e: GroupError) -> ClientReply {
    error(ErrorKind::BadRequest, e.to_string())
}

fn unknown_actor(actor: ActorId) -> ClientReply {
    error(
        ErrorKind::Unknown,
        format!("no actor {actor} in the cluster (never created, or stopped)"),
    )
}

/// Forms a new generation of `name` from `members`, in rank order.
pub(crate) async fn form(head: &Arc<Head>, name: String, members: Vec<ActorId>) -> ClientReply {
    for &actor in &members {
        match head.actors.get(&actor).map(|a| a.life.phase().clone()) {
            None => return unknown_actor(actor),
            Some(Phase::Dead(reason)) => {
                return error(ErrorKind::WorkerDied, format!("{actor} is dead: {reason}"))
            }
            Some(_) => {}
        }
    }
    let formed = head.with_groups(|g| g.form(&name, members));
    match formed {
        Ok(m) => {
            tracing::info!(group = %name, generation = m.generation, size = m.members.len(), "group formed");
            head.groups_changed.notify_waiters();
            view(head, &name, &m, FORM_WAIT).await
        }
        Err(e) => refused(e),
    }
}

/// `actor` joins the next generation of `name`; answered when `world` actors have joined.
pub(crate) async fn join(
    head: &Arc<Head>,
    name: String,
    actor: ActorId,
    world: u32,
    timeout: Duration,
) -> ClientReply {
    if !head.actors.contains_key(&actor) {
        return unknown_actor(actor);
    }
    let waited = tokio::time::timeout(timeout, async {
        let mut before = None;
        loop {
            let changed = head.groups_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let outcome = head.with_groups(|g| match before {
                None => {
                    before = Some(g.current(&name).map_or(0, |m| m.generation));
                    g.join(&name, actor, world).map(Some)
                }
                // Joined already: formed once a newer generation holds this actor.
                Some(seen) => Ok(g
                    .current(&name)
                    .filter(|m| m.generation > seen)
                    .cloned()
                    .map(Joined::Formed)),
            });
            match outcome {
                Err(e) => return Err(refused(e)),
                Ok(Some(Joined::Formed(m))) => {
                    head.groups_changed.notify_waiters();
                    if !m.members.contains(&actor) {
                        return Err(error(
                            ErrorKind::Moved,
                            format!(
                                "group `{name}` was formed as generation {} without {actor}",
                                m.generation
                            ),
                        ));
                    }
                    return Ok(m);
                }
                Ok(_) => changed.await,
            }
        }
    })
    .await;
    match waited {
        Ok(Ok(m)) => {
            tracing::info!(group = %name, generation = m.generation, "group formed by joins");
            view(head, &name, &m, FORM_WAIT).await
        }
        Ok(Err(reply)) => reply,
        Err(_) => {
            head.with_groups(|g| g.leave_rendezvous(&name, actor));
            error(
                ErrorKind::Timeout,
                format!(
                    "{actor} waited {} ms to join group `{name}` of {world}: too few joined",
                    timeout.as_millis()
                ),
            )
        }
    }
}

/// The newest generation of `name`, once every member is alive.
pub(crate) async fn get(head: &Arc<Head>, name: &str, timeout: Duration) -> ClientReply {
    match head.with_groups(|g| g.current(name).cloned()) {
        Some(m) => view(head, name, &m, timeout).await,
        None => error(ErrorKind::Unknown, format!("no group named `{name}`")),
    }
}

/// Whether generation `generation` of `name`, whose members had `incarnations`, can still
/// complete an operation.
pub(crate) fn health(
    head: &Head,
    name: &str,
    generation: u64,
    incarnations: &[u32],
) -> ClientReply {
    let (current, said) =
        head.with_groups(|g| (g.current(name).cloned(), g.broken(name).map(str::to_string)));
    let broken = match current {
        None => Some(format!("group `{name}` no longer exists")),
        Some(m) if m.generation != generation => Some(format!(
            "group `{name}` generation {generation} was replaced by generation {}",
            m.generation
        )),
        Some(_) if said.is_some() => said.map(|s| format!("a member failed: {s}")),
        Some(m) => m.members.iter().zip(incarnations).enumerate().find_map(
            |(rank, (actor, &incarnation))| {
                let phase = head.actors.get(actor).map(|a| a.life.phase().clone());
                match phase {
                    Some(Phase::Alive(l)) if l.incarnation == incarnation => None,
                    Some(Phase::Alive(_)) | Some(Phase::Restarting) => Some(format!(
                        "rank {rank} ({actor}) lost its process (incarnation {incarnation})"
                    )),
                    Some(Phase::Dead(reason)) => {
                        Some(format!("rank {rank} ({actor}) is dead: {reason}"))
                    }
                    None => Some(format!("rank {rank} ({actor}) was stopped")),
                }
            },
        ),
    };
    ClientReply::GroupHealth { broken }
}

/// A member's operation in `generation` of `name` failed: the generation is broken for all,
/// and the worker of a `suspect` rank is probed at once (a dead one is declared dead without
/// waiting for its heartbeats), so that the group can be formed again with its restarted
/// actor.
pub(crate) async fn failed(
    head: &Arc<Head>,
    name: &str,
    generation: u64,
    reason: &str,
    suspect: Option<u32>,
) -> ClientReply {
    let (broke, suspect) = head.with_groups(|g| {
        let broke = g.fail(name, generation, reason);
        let suspect = g
            .current(name)
            .filter(|m| m.generation == generation)
            .and_then(|m| suspect.and_then(|r| m.members.get(r as usize).copied()));
        (broke, suspect)
    });
    if broke {
        tracing::info!(
            group = name,
            generation,
            "group generation broken: {reason}"
        );
    }
    if let Some(actor) = suspect {
        let location = head
            .actors
            .get(&actor)
            .and_then(|a| a.life.location().cloned());
        if let Some(location) = location {
            // In the background: the reporter learns at once that the generation is broken,
            // while the probe (up to its window) finds out whether the suspect is dead.
            let head = head.clone();
            tokio::spawn(async move { recovery::probe(&head, actor, &location).await });
        }
    }
    ClientReply::GroupHealth {
        broken: head.with_groups(|g| g.broken(name).map(str::to_string)),
    }
}

/// The view of `membership`: where each member is, waiting up to `timeout` for members that
/// restart.
async fn view(
    head: &Arc<Head>,
    name: &str,
    membership: &Membership,
    timeout: Duration,
) -> ClientReply {
    let mut members = Vec::with_capacity(membership.members.len());
    for (rank, &actor) in membership.members.iter().enumerate() {
        let Some(mut phase) = head.actors.get(&actor).map(|a| a.phase.subscribe()) else {
            return unknown_actor(actor);
        };
        let settled = tokio::time::timeout(timeout, async {
            phase
                .wait_for(|p| !matches!(p, Phase::Restarting))
                .await
                .map(|p| p.clone())
        })
        .await;
        match settled {
            Ok(Ok(Phase::Alive(l))) => members.push(GroupMember {
                actor,
                incarnation: l.incarnation,
                endpoints: l.endpoints,
            }),
            Ok(Ok(Phase::Dead(reason))) => {
                return error(
                    ErrorKind::WorkerDied,
                    format!("rank {rank} of group `{name}` ({actor}) is dead: {reason}"),
                )
            }
            Ok(_) => return unknown_actor(actor),
            Err(_) => {
                return error(
                    ErrorKind::Timeout,
                    format!(
                        "rank {rank} of group `{name}` ({actor}) did not come back within {} ms",
                        timeout.as_millis()
                    ),
                )
            }
        }
    }
    ClientReply::Group(GroupView {
        name: name.to_string(),
        generation: membership.generation,
        members,
    })
}
