//! A head's next life: the state rebuilt from what its journal committed, the nodes of the last
//! life given up if they do not re-join in time, and the records the state journals of its
//! actors.
//!
//! A worker that loses the head keeps its executors and joins again as the node it was, saying
//! what it still runs ([`Rejoin`]). Every node of the last life is expected for one heartbeat
//! window. A node that re-joins in it is matched to its id and reconciled: an actor it runs
//! that matches the journal (that actor, that incarnation, on this node or being started) is
//! adopted as it runs, with no restart; one the journal does not know, or knows otherwise, is
//! stopped (a `KillActor` of that incarnation), and the journal's incarnation reported sealed
//! (a drain of the last life sealed it) moves, uncounted, from its final checkpoint; its task
//! leases are closed (the journal does not hold task leases); an actor the journal had on it
//! and it no longer runs is lost and restarts. A worker claiming a node the journal does not expect joins as a new node and
//! everything it runs is stopped. When the window ends, the nodes that did not re-join are
//! given up and every actor not adopted starts again: one whose incarnation was alive has lost
//! it (a restart, counted against its policy) and comes back from its newest checkpoint; one
//! that was being started starts under a new incarnation number, uncounted. Collective groups
//! come back at their newest generation with the same members (see `groups.rs`).

use std::time::Instant;

use ember_core::ids::{ActorId, LeaseId, NodeId};
use ember_core::proto::{Rejoin, WorkerCommand};

use super::{Actor, Config, HeadState, Incarnate, Purpose, Work};
use crate::actor_life::ActorLife;
use crate::io::Effect;
use crate::journal::{ActorRecord, Change, Journaled};
use crate::placement::Lease;

impl HeadState {
    /// The state of a head starting on a journal: what the last life committed, in a new life
    /// (its epoch one more than the last). The effects journal the new epoch and the life's
    /// first block of ids; the shell commits them before it serves. Nodes of the last life are
    /// expected until one heartbeat window from `now` (`Config::rejoin_window`); ids continue
    /// where the last life's reservation ended.
    pub fn restore(config: Config, now: Instant, journaled: Journaled) -> (HeadState, Vec<Effect>) {
        let window = config.rejoin_window;
        let mut state = HeadState::new(config);
        state.ledger.begin(now);
        state.epoch = journaled.epoch + 1;
        // The life's first block of ids is reserved now, in the commit made before the head
        // serves, not by its first request: that request (a task lease on a fresh head) then
        // journals nothing, and what it asks for (an autoscaler's pass, when it waits) does
        // not wait behind an fsync first (100 ms and more on a busy disk).
        state.next_id = journaled.ids_reserved.max(1);
        state.ids_reserved = state.next_id + super::ID_BLOCK;
        state.journal(Change::Epoch(state.epoch));
        state.journal(Change::IdsReserved(state.ids_reserved));
        state.restore_groups(&journaled);
        state.expected = journaled.nodes;
        for (id, record) in journaled.actors {
            let checkpoint = journaled.checkpoints.get(&id).map(|c| (c.seq, now));
            let life = ActorLife::restored(
                record.spec.restart,
                record.incarnation,
                record.restarts,
                record.dead,
            );
            if life.live().is_none() && !matches!(life.phase(), crate::actor_life::Phase::Dead(_)) {
                state.restoring.insert(id, record.node);
            }
            // Gangs do not outlive a head life (they are not journaled): an actor that ran in
            // one goes on with the same needs outside any gang.
            let mut spec = record.spec;
            spec.placement.bundle = None;
            state.actors.insert(
                id,
                Actor {
                    spec,
                    owner: record.owner,
                    holders: Default::default(),
                    life,
                    create: None,
                    start: None,
                    checkpoint,
                    stores: 0,
                },
            );
        }
        if !state.expected.is_empty() || !state.restoring.is_empty() {
            state.rejoin_deadline = Some(now + window);
        }
        if !state.actors.is_empty() {
            state.arm(now + window, super::Timer::Unclaimed);
        }
        if let Some(every) = state.config.autoscale_every() {
            state.schedule_autoscale(now + every);
        }
        tracing::info!(
            epoch = state.epoch,
            nodes = state.expected.len(),
            actors = state.actors.len(),
            groups = state.group_keys.len(),
            "head state restored from its journal"
        );
        let effects = std::mem::take(&mut state.out);
        (state, effects)
    }

    /// This head life's number.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Nodes of the last head life that have not re-joined (yet), in id order.
    pub fn expected_nodes(&self) -> Vec<ember_core::ids::NodeId> {
        self.expected.keys().copied().collect()
    }

    /// Whether the state knows `actor` (alive, starting, restoring or dead, not stopped).
    pub fn knows_actor(&self, actor: ActorId) -> bool {
        self.actors.contains_key(&actor)
    }

    /// The nodes of the last life that did not re-join are gone; the actors read back start
    /// again.
    pub(super) fn rejoin_window_ended(&mut self, now: Instant) {
        self.rejoin_deadline = None;
        for node in std::mem::take(&mut self.expected).into_keys() {
            tracing::warn!(%node, "the node did not re-join after the head restarted");
            self.journal(Change::NodeGone { node });
        }
        self.refuse_unplaceable(now);
        for (actor, was_on) in std::mem::take(&mut self.restoring) {
            let Some(a) = self.actors.get_mut(&actor) else {
                continue;
            };
            if was_on.is_some() {
                let incarnation = a.life.incarnation();
                let why = "its worker did not re-join after the head restarted";
                self.actor_lost(now, actor, incarnation, why);
            } else if a.life.resume().is_some() {
                self.journal_actor(actor);
                self.start_actor(now, actor);
                self.notify(now, actor);
            }
        }
    }

    /// A client connection of this life asked where an actor of an earlier life is, or to hold
    /// it: it owns and holds the actor from now on (the actor stops when it and every other
    /// holder let go, as with the connection that created it).
    pub(super) fn claim(&mut self, request: super::RequestId, actor: ActorId) {
        let Some(conn) = self.requests.get(&request).map(|o| o.conn) else {
            return;
        };
        let owner = crate::journal::Owner {
            epoch: self.epoch,
            conn: conn.0,
        };
        if let Some(a) = self.actors.get_mut(&actor) {
            tracing::info!(%actor, ?conn, "a client of this head life claims an actor of an earlier one");
            a.owner = owner;
            a.holders.insert(conn);
            self.journal_actor(actor);
        }
    }

    /// The rejoin window after a restart ended: the actors of an earlier life that no client
    /// connection of this one claimed (by locating them) are stopped, as their owners'
    /// connections would have stopped them when they closed.
    pub(super) fn stop_unclaimed(&mut self, now: Instant) {
        let unclaimed: Vec<ActorId> = self
            .actors
            .iter()
            .filter(|(_, a)| a.owner.epoch < self.epoch)
            .map(|(&actor, _)| actor)
            .collect();
        for actor in unclaimed {
            tracing::warn!(%actor, "no client of this head life claimed the actor: stopping it");
            self.kill_actor(now, actor, None);
        }
    }

    /// Journals an acknowledged actor's record as it stands now.
    pub(super) fn journal_actor(&mut self, actor: ActorId) {
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        let node = a
            .life
            .live()
            .and_then(|live| self.sched.lease(live.lease))
            .map(|lease| lease.node);
        let dead = match a.life.phase() {
            crate::actor_life::Phase::Dead(reason) => Some(reason.clone()),
            _ => None,
        };
        let record = ActorRecord {
            spec: a.spec.clone(),
            owner: a.owner,
            incarnation: a.life.incarnation(),
            restarts: a.life.restarts(),
            node,
            dead,
        };
        self.journal(Change::Actor { actor, record });
    }

    /// Reconciles what a worker that joined as `node` still runs (its [`Rejoin`]) with the
    /// journal. `matched`: it was expected and got its old node id back; otherwise it joined
    /// as a new node and everything it runs is stopped.
    pub(super) fn reconcile(&mut self, now: Instant, node: NodeId, matched: bool, rejoin: Rejoin) {
        // The incarnation the journal has, where the journal has it.
        let journaled = |s: &HeadState, running: &ember_core::proto::RunningActor| {
            matched
                && s.restoring
                    .get(&running.actor)
                    .is_some_and(|was_on| was_on.is_none_or(|n| n == node))
                && s.actors
                    .get(&running.actor)
                    .is_some_and(|a| a.life.incarnation() == running.incarnation)
        };
        let expected = |s: &HeadState, running: &ember_core::proto::RunningActor| {
            !running.sealed && journaled(s, running)
        };
        // What is adopted claims its capacity first: a stray may overlap it (one the last
        // life was stopping when it ended).
        let mut actors = rejoin.actors;
        actors.sort_by_key(|running| !expected(self, running));
        for running in actors {
            let (actor, incarnation) = (running.actor, running.incarnation);
            let expected_here = expected(self, &running);
            let sealed_here = running.sealed && journaled(self, &running);
            let lease = LeaseId(self.next_id());
            let claimed = self.sched.adopt(Lease {
                id: lease,
                node,
                allocation: running.allocation,
            });
            if expected_here && claimed {
                self.work.insert(lease, Work::Actor { actor, incarnation });
                self.restoring.remove(&actor);
                let endpoints = running.endpoints;
                if let Some(a) = self.actors.get_mut(&actor) {
                    a.life.started(incarnation, Incarnate { lease, endpoints });
                }
                self.usage_lease_started(now, lease);
                tracing::info!(%actor, incarnation, %node, "actor adopted after the head restarted");
                self.journal_actor(actor);
                self.notify(now, actor);
            } else {
                tracing::warn!(
                    %actor, incarnation, %node,
                    "a re-joining worker runs an actor incarnation the journal does not have: stopping it"
                );
                let kill = WorkerCommand::KillActor { actor, incarnation };
                self.stop_stray(node, lease, claimed, kill);
                if sealed_here {
                    self.sealed_in_last_life(now, actor);
                }
            }
        }
        for running in rejoin.leases {
            let lease = running.lease;
            tracing::info!(%lease, %node, "closing a task lease of the head's last life");
            let held = LeaseId(self.next_id());
            let claimed = self.sched.adopt(Lease {
                id: held,
                node,
                allocation: running.allocation,
            });
            self.stop_stray(node, held, claimed, WorkerCommand::CloseLease { lease });
        }
        if matched && self.expected.is_empty() {
            // The last node expected is back: what waited for the nodes and none can take
            // is refused now.
            self.refuse_unplaceable(now);
        }
        if matched {
            // What the journal had on this node and it no longer runs is lost.
            let gone: Vec<ActorId> = self
                .restoring
                .iter()
                .filter(|(_, was_on)| **was_on == Some(node))
                .map(|(actor, _)| *actor)
                .collect();
            for actor in gone {
                let Some(incarnation) = self.actors.get(&actor).map(|a| a.life.incarnation())
                else {
                    continue;
                };
                let why = "its worker re-joined after the head restarted without it";
                self.actor_lost(now, actor, incarnation, why);
            }
        }
        self.rejoin_settled();
    }

    /// A re-joining worker runs the journal's incarnation of `actor` sealed: a drain of the
    /// last life sealed it, and its final checkpoint was acknowledged (so journaled) before
    /// it sealed. It moves as the drain would have moved it: the next incarnation starts from
    /// that checkpoint, not counted as a restart.
    fn sealed_in_last_life(&mut self, now: Instant, actor: ActorId) {
        self.restoring.remove(&actor);
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        if let Some(incarnation) = a.life.resume() {
            tracing::info!(%actor, incarnation, "sealed before the head restarted: it moves");
            self.journal_actor(actor);
            self.start_actor(now, actor);
            self.notify(now, actor);
        }
    }

    /// Stops something a re-joining worker still runs with `command`, holding its capacity
    /// under `held` (when it could be `claimed`) until the worker confirms.
    fn stop_stray(&mut self, node: NodeId, held: LeaseId, claimed: bool, command: WorkerCommand) {
        if claimed {
            self.work.insert(held, Work::Stray);
        }
        let held = claimed.then_some(held);
        self.command(node, command, Purpose::StopStray { held });
    }

    /// Clears the re-join deadline once nothing waits for it.
    pub(super) fn rejoin_settled(&mut self) {
        if self.expected.is_empty() && self.restoring.is_empty() {
            self.rejoin_deadline = None;
        }
    }
}
