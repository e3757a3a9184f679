//! Draining a node: no new work goes there; each actor seals (a final checkpoint) and starts
//! elsewhere from it; task leases are taken back; jobs get the grace period to end. Then the
//! node is let go.

use std::time::{Duration, Instant};

use ember_core::ids::{ActorId, NodeId};
use ember_core::proto::{ClientReply, ErrorKind, RemoteError, WorkerCommand, WorkerReply};

use super::{Drain, HeadState, LeaseEnd, LeasePhase, Purpose, Timer, Wait, Work};
use crate::actor_life::Phase;
use crate::io::{Effect, RequestId};

impl HeadState {
    /// Drains `node` within `grace`; `request` is answered once it is done. `on_notice`: the
    /// node goes within `grace` whatever happens (a spot interruption), so an autoscaled
    /// cluster replaces it at once.
    pub(super) fn drain(
        &mut self,
        now: Instant,
        node: NodeId,
        grace: Duration,
        request: Option<RequestId>,
        on_notice: bool,
    ) {
        if !self.nodes.contains_key(&node) {
            if let Some(request) = request {
                let e =
                    RemoteError::new(ErrorKind::Unknown, format!("no node {node} in the cluster"));
                self.fail(request, e);
            }
            return;
        }
        if let Some(request) = request {
            self.set_wait(request, Wait::Drain(node));
        }
        if let Some(d) = self.drains.get_mut(&node) {
            // Already draining: this request is answered with the first.
            d.requests.extend(request);
            return;
        }
        tracing::info!(%node, ?grace, "draining");
        self.autoscaled_draining(now, node, on_notice.then_some(grace));
        let may_strand = self.could_strand(node);
        self.sched.set_schedulable(node, false);
        self.strand(now, may_strand);
        self.strand_gangs(now);
        // Gangs place their bundles on it elsewhere, for the actors moving off it.
        self.place_queued(now);
        let mut drain = Drain::default();
        drain.requests.extend(request);
        self.drains.insert(node, drain);
        self.arm(now + grace, Timer::Drain(node));
        let actors: Vec<ActorId> = self
            .actors
            .iter()
            .filter(|(_, a)| {
                a.life
                    .live()
                    .is_some_and(|l| self.sched.lease(l.lease).is_some_and(|g| g.node == node))
            })
            .map(|(id, _)| *id)
            .collect();
        for actor in actors {
            if let Some(d) = self.drains.get_mut(&node) {
                d.sealing.insert(actor);
            }
            self.command(
                node,
                WorkerCommand::SealActor { actor },
                Purpose::Seal { actor },
            );
        }
        let leases: Vec<_> = self
            .work
            .iter()
            .filter(|(lease, w)| {
                matches!(w, Work::Lease(l) if matches!(l.phase, LeasePhase::Opening | LeasePhase::Held))
                    && self.node_of(**lease) == Some(node)
            })
            .map(|(lease, _)| *lease)
            .collect();
        for lease in leases {
            self.end_lease(now, lease, LeaseEnd::TakenBack);
        }
        self.check_drain(now, node);
    }

    /// An actor on a draining node answered its seal: once sealed, it moves. An actor whose
    /// seal failed still takes calls where it is, so it is not started elsewhere: it goes
    /// with the node when the drain ends (and comes back from its newest checkpoint if its
    /// policy allows). Nor does one that was lost and restarted elsewhere meanwhile move
    /// again: its live incarnation is not the one asked to seal.
    pub(super) fn sealed(
        &mut self,
        now: Instant,
        node: NodeId,
        actor: ActorId,
        reply: Result<WorkerReply, RemoteError>,
    ) {
        match &reply {
            Ok(WorkerReply::Sealed { seq: Some(seq) }) => {
                tracing::info!(%actor, seq, "sealed with a final checkpoint");
            }
            Ok(WorkerReply::Sealed { seq: None }) => {
                tracing::warn!(%actor, "its type cannot checkpoint: it starts anew elsewhere");
            }
            Ok(WorkerReply::Error(e)) | Err(e) => tracing::warn!(%actor, "cannot seal it: {e}"),
            Ok(other) => tracing::warn!(%actor, "cannot seal it: {other:?}"),
        }
        if !self.drains.contains_key(&node) {
            return;
        }
        let sealed = matches!(reply, Ok(WorkerReply::Sealed { .. }));
        let here = self.location(actor).is_some_and(|l| l.node == node);
        // Still filed as sealing while it moves: releasing its lease checks the drain,
        // which must not end before this actor is up elsewhere.
        let moved = if sealed && here {
            self.move_actor(now, actor)
        } else {
            None
        };
        let Some(d) = self.drains.get_mut(&node) else {
            return;
        };
        d.sealing.remove(&actor);
        if let Some(incarnation) = moved {
            d.moving.insert(actor, incarnation);
        }
        self.check_drain(now, node);
    }

    /// Counts actors that came up elsewhere, and lets the node go once nothing is left to
    /// wait for.
    pub(super) fn check_drain(&mut self, now: Instant, node: NodeId) {
        let Some(d) = self.drains.get(&node) else {
            return;
        };
        let settled: Vec<(ActorId, u32, bool)> = d
            .moving
            .iter()
            .filter_map(|(&actor, &incarnation)| match self.actors.get(&actor) {
                None => Some((actor, incarnation, false)),
                Some(a) => match a.life.phase() {
                    Phase::Alive(_) if a.life.incarnation() >= incarnation => {
                        Some((actor, incarnation, true))
                    }
                    Phase::Dead(_) => Some((actor, incarnation, false)),
                    _ => None,
                },
            })
            .collect();
        for (actor, incarnation, moved) in settled {
            self.left_behind(node, actor, incarnation);
            if let Some(d) = self.drains.get_mut(&node) {
                d.moving.remove(&actor);
                d.moved += u32::from(moved);
            }
        }
        let Some(d) = self.drains.get(&node) else {
            return;
        };
        let running = self.sched.leases().any(|l| {
            l.node == node && !matches!(self.work.get(&l.id), Some(Work::Actor { .. }) | None)
        });
        if d.sealing.is_empty() && d.moving.is_empty() && !running {
            self.finish_drain(now, node);
        }
    }

    /// Stops the process an actor left on a draining node: the incarnation before
    /// `successor`, which moved away.
    fn left_behind(&mut self, node: NodeId, actor: ActorId, successor: u32) {
        let purpose = Purpose::KillActor {
            lease: None,
            request: None,
        };
        let kill = WorkerCommand::KillActor {
            actor,
            incarnation: successor - 1,
        };
        self.command(node, kill, purpose);
    }

    /// The drain is over (done, out of time, or the node is gone): the node is let go and
    /// its requests answered.
    pub(super) fn finish_drain(&mut self, now: Instant, node: NodeId) {
        let Some(d) = self.drains.remove(&node) else {
            return;
        };
        let moved = d.moved;
        if self.nodes.contains_key(&node) {
            for (&actor, &incarnation) in &d.moving {
                self.left_behind(node, actor, incarnation);
            }
            // The worker goes; what still runs there is lost like on any worker loss.
            self.node_lost(now, node, "left");
            self.out.push(Effect::CloseNode {
                node,
                reason: "drained".into(),
            });
        }
        tracing::info!(%node, moved, "drained");
        for request in d.requests {
            self.reply(request, ClientReply::Drained { moved });
        }
    }
}
