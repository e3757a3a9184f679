//! The head crashes: everything in flight to or from it is lost, every connection closes, and
//! a new head is rebuilt from what the journal committed. First the journal is checked: every
//! acknowledged join, actor and checkpoint is in it, and every group's newest generation as
//! the head has it. The head rebuilt has those groups, at no generation older than one it
//! told anyone of.

use std::time::Duration;

use ember_core::ids::ActorId;
use ember_core::proto::ClientRequest;
use ember_head_state::journal::{GroupRecord, Journaled};
use ember_head_state::{Config, HeadState};

use super::queue::Ev;
use super::shell::Peer;
use super::{journal_change, Sim};

impl Sim {
    /// The head dies (SIGKILL) and starts again on its journal.
    pub(super) fn head_crash(&mut self) -> Result<(), String> {
        self.counts.head_crashes += 1;
        self.trace.note("the head crashes");
        let journaled = self
            .journal
            .read()
            .map_err(|e| format!("the journal cannot be read back: {e}"))?;
        for (w, worker) in self.workers.iter().enumerate() {
            if let Some(node) = worker.node.filter(|_| !worker.forgotten) {
                if !journaled.nodes.contains_key(&node) {
                    return Err(format!(
                        "worker {w} joined as {node}, which the journal lost"
                    ));
                }
            }
        }
        for (actor, truth) in &self.actors {
            if truth.owner.is_none() || truth.gone || !self.head.knows_actor(*actor) {
                continue;
            }
            if !journaled.actors.contains_key(actor) {
                return Err(format!("{actor} was acknowledged, but the journal lost it"));
            }
            let recorded = journaled.checkpoints.get(actor).map(|c| c.seq);
            if recorded != self.head.recorded_checkpoint(*actor) {
                return Err(format!(
                    "{actor}'s recorded checkpoint is {:?}, but the journal has {recorded:?}",
                    self.head.recorded_checkpoint(*actor)
                ));
            }
        }

        let journaled_groups = journaled_groups(&journaled);
        let groups = self.head.group_records();
        if groups != journaled_groups {
            return Err(format!(
                "the head has the groups {groups:?}, but the journal has {journaled_groups:?}"
            ));
        }

        // What was in flight to or from the head dies with it.
        self.queue.retain(|ev| {
            !matches!(
                ev,
                Ev::Input(_) | Ev::Answer { .. } | Ev::Stored { .. } | Ev::Loaded { .. }
            )
        });
        self.commands.clear();
        self.tickets.clear();
        self.store.writing.clear();
        self.ledger.clear();
        self.granted_leases.clear();
        self.granted.clear();
        self.released.clear();
        for conn in self.conns.values_mut() {
            conn.closed = true;
        }
        for w in 0..self.workers.len() {
            let worker = &mut self.workers[w];
            if !worker.connected {
                continue;
            }
            worker.connected = false;
            worker.forgotten = true;
            worker.head_crashed = true;
            if worker.up {
                let at =
                    self.now + self.between(Duration::from_micros(100), Duration::from_millis(80));
                self.queue.push(at, Ev::LostHead(w));
            }
        }
        for c in 0..self.clients.len() {
            if !self.clients[c].open {
                // Its going may not have reached the head before the crash: its actors are
                // then read back owned by a dead connection, for the new life to stop.
                let owned: Vec<ActorId> = self.clients[c].actors.keys().copied().collect();
                self.unowned.extend(owned);
                continue;
            }
            self.clients[c].conn = self.new_conn(Peer::Client(c));
            self.clients[c].leases.clear();
            let owned: Vec<ActorId> = self.clients[c].actors.keys().copied().collect();
            self.unowned.extend(owned.iter().copied());
            self.orphans.extend(owned);
        }

        let config = Config {
            heartbeat_timeout: self.scenario.heartbeat_timeout,
            form_wait: self.head.config().form_wait,
            rejoin_window: self.scenario.rejoin_window(),
            pending_timeout: self.head.config().pending_timeout,
            ..Config::default()
        };
        let (head, effects) = HeadState::restore(config, self.base + self.now, journaled);
        self.head = head;
        let restored = self.head.group_records();
        self.counts.groups_restored += restored.len() as u64;
        if restored != journaled_groups {
            return Err(format!(
                "the head rebuilt has the groups {restored:?}, but the journal has \
                 {journaled_groups:?}"
            ));
        }
        for (name, told) in &self.generations {
            let newest = told.keys().next_back().copied().unwrap_or(0);
            let restored = restored
                .iter()
                .find(|g| &g.name == name)
                .map_or(0, |g| g.generation);
            if restored < newest {
                return Err(format!(
                    "group `{name}` was told of generation {newest}, but the head rebuilt \
                     goes on from generation {restored}"
                ));
            }
        }
        self.journal
            .commit(effects.iter().filter_map(journal_change))
            .map_err(|e| format!("a journal change cannot be written: {e}"))?;
        self.head
            .check_invariants()
            .map_err(|e| format!("the head rebuilt from its journal: {e}"))?;
        // The shell collects the checkpoints of actors the journal no longer has.
        let stored: Vec<ActorId> = self.store.images.keys().copied().collect();
        for actor in stored {
            if !self.head.knows_actor(actor) {
                self.forgets.push(actor);
            }
        }
        self.check_step()
    }

    /// As the run winds down, the actors of clients of an earlier head life are stopped (no
    /// connection of this life owns them).
    pub(super) fn stop_orphans(&mut self) {
        let orphans: Vec<ActorId> = std::mem::take(&mut self.orphans)
            .into_iter()
            .filter(|a| self.head.knows_actor(*a))
            .collect();
        if orphans.is_empty() {
            return;
        }
        let conn = self.new_conn(Peer::Observer);
        for actor in orphans {
            self.send(conn, ClientRequest::KillActor { actor }, None);
        }
    }
}

/// The groups a journal holds, in name order (as [`HeadState::group_records`] lists them).
fn journaled_groups(journaled: &Journaled) -> Vec<GroupRecord> {
    let mut groups: Vec<GroupRecord> = journaled.groups.values().cloned().collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    groups
}
