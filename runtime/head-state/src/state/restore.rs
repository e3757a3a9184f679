//! A head's next life: the state rebuilt from what its journal committed, the nodes of the last
//! life given up if they do not re-join in time, and the records the state journals of its
//! actors.
//!
//! Re-joining is not built yet: a worker that loses the head kills its executors and joins as a
//! new node. So every node of the last life is expected for one heartbeat window and then given
//! up, and every actor read back starts again then: one whose incarnation was alive has lost it
//! (a restart, counted against its policy) and comes back from its newest checkpoint; one that
//! was being started starts under a new incarnation number, uncounted.

use std::time::Instant;

use ember_core::ids::ActorId;

use super::{Actor, Config, HeadState};
use crate::actor_life::ActorLife;
use crate::io::Effect;
use crate::journal::{ActorRecord, Change, Journaled};

impl HeadState {
    /// The state of a head starting on a journal: what the last life committed, in a new life
    /// (its epoch one more than the last). The effects journal the new epoch; the shell commits
    /// them before it serves. Nodes of the last life are expected until one heartbeat window
    /// from `now`; ids continue where the last life's reservation ended.
    pub fn restore(config: Config, now: Instant, journaled: Journaled) -> (HeadState, Vec<Effect>) {
        let window = config.heartbeat_timeout;
        let mut state = HeadState::new(config);
        state.epoch = journaled.epoch + 1;
        state.next_id = journaled.ids_reserved.max(1);
        state.ids_reserved = state.next_id;
        state.journal(Change::Epoch(state.epoch));
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
                state.restoring.insert(id, record.node.is_some());
            }
            state.actors.insert(
                id,
                Actor {
                    spec: record.spec,
                    owner: record.owner,
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
        tracing::info!(
            epoch = state.epoch,
            nodes = state.expected.len(),
            actors = state.actors.len(),
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
        for (actor, was_alive) in std::mem::take(&mut self.restoring) {
            let Some(a) = self.actors.get_mut(&actor) else {
                continue;
            };
            if was_alive {
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
}
