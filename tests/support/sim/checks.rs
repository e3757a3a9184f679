//! What the head promises, checked: at every step the cheap checks (every request answered
//! once and in kind, checkpoints never lost or older, restores from the newest, one process
//! per actor taking calls), every `check_every` steps the whole state (the head's own
//! invariants, each node's capacity against what really runs there, every live incarnation),
//! and at the end, quiescence.

use std::collections::BTreeSet;

use ember_core::ids::{ActorId, LeaseId};
use ember_core::proto::{
    ClientReply, ClientRequest, ClusterStatus, ErrorKind, JobEvent, UsageReport,
};
use ember_head_state::placement::PlacementRequest;
use ember_head_state::{ConnId, Input, RequestId};

use super::shell::{Kind, Open, Peer};
use super::workers::image_seq;
use super::Sim;

/// How the head words a request that failed at its pending timeout, stranded.
const STRANDED_TIMEOUT: &str = "(no node that fits joined within";

impl Sim {
    /// A request failed at its pending timeout: it must have been stranded, so no live node
    /// the head places on (joined, not draining) could hold it, even entirely free.
    fn check_stranded_timeout(
        &mut self,
        request: RequestId,
        asked: Option<&PlacementRequest>,
        message: &str,
    ) -> Result<(), String> {
        let Some(asked) = asked else {
            // In a gang's bundle: it waits for what the bundle holds, not for a node.
            return Ok(());
        };
        let sched = self.head.scheduler();
        if let Some(node) = sched.node_ids().find(|&node| sched.could_hold(node, asked)) {
            return Err(format!(
                "{request:?} failed at its pending timeout, but {node} could hold it: {message}"
            ));
        }
        self.counts.stranded_timeouts += 1;
        Ok(())
    }

    /// The cheap checks, after every step.
    pub(super) fn check_step(&mut self) -> Result<(), String> {
        let open = self.head.open_requests();
        if open != self.ledger.len() {
            return Err(format!(
                "the head holds {open} open requests, but {} were asked and not answered",
                self.ledger.len()
            ));
        }
        for actor in std::mem::take(&mut self.forgets) {
            if let Some(n) = self.store.writing.get(&actor) {
                return Err(format!(
                    "the checkpoints of {actor} are forgotten while {n} writes of them are in \
                     flight"
                ));
            }
            let truth = self.actors.entry(actor).or_default();
            if truth.owner.is_some() && !truth.gone && !self.unowned.contains(&actor) {
                return Err(format!(
                    "the checkpoints of {actor} are forgotten, but nobody stopped it"
                ));
            }
            truth.recorded = None;
            self.store.images.remove(&actor);
            self.store.forgotten.insert(actor);
        }
        for actor in std::mem::take(&mut self.touched) {
            self.check_recorded(actor)?;
        }
        Ok(())
    }

    /// The recorded checkpoint of `actor` is the newest written, and never goes back.
    fn check_recorded(&mut self, actor: ActorId) -> Result<(), String> {
        let recorded = self.head.recorded_checkpoint(actor);
        let newest = self.store.newest(actor).map(|(seq, _)| seq);
        let truth = self.actors.entry(actor).or_default();
        match recorded {
            Some(seq) => {
                if newest != Some(seq) {
                    return Err(format!(
                        "{actor}'s recorded checkpoint is {seq}, but the newest written is \
                         {newest:?}"
                    ));
                }
                if truth.recorded.is_some_and(|before| before > seq) {
                    return Err(format!(
                        "{actor}'s recorded checkpoint went back from {:?} to {seq}",
                        truth.recorded
                    ));
                }
            }
            None if !truth.gone && truth.recorded.is_some() => {
                return Err(format!(
                    "{actor}'s recorded checkpoint {:?} was lost",
                    truth.recorded
                ));
            }
            None => {}
        }
        truth.recorded = recorded;
        Ok(())
    }

    /// The head starts `inc` of `actor`: incarnations only grow, and a restart is restored
    /// from the newest checkpoint written.
    pub(super) fn check_restore(
        &mut self,
        actor: ActorId,
        inc: u32,
        checkpoints: bool,
        restore: Option<&[u8]>,
    ) -> Result<(), String> {
        let newest = self.store.newest(actor).map(|(_, image)| image.clone());
        let truth = self.actors.entry(actor).or_default();
        if inc <= truth.created {
            return Err(format!(
                "{actor} incarnation {inc} is started after incarnation {}",
                truth.created
            ));
        }
        truth.created = inc;
        truth.checkpoints = checkpoints;
        if inc > 1 {
            self.counts.restarts += 1;
        }
        let expected = if inc > 1 && checkpoints { newest } else { None };
        if restore != expected.as_deref() {
            return Err(format!(
                "{actor} incarnation {inc} is restored from checkpoint {:?}, but the newest \
                 written is {:?}",
                restore.map(image_seq),
                expected.as_deref().map(image_seq)
            ));
        }
        if restore.is_some() {
            self.counts.restores += 1;
        }
        Ok(())
    }

    /// Worker `w` builds `inc` of `actor`: no other process of it takes calls on a worker
    /// still connected.
    pub(super) fn check_one_process(
        &self,
        actor: ActorId,
        inc: u32,
        w: usize,
    ) -> Result<(), String> {
        let Some(procs) = self.procs_of.get(&actor) else {
            return Ok(());
        };
        for &(other, other_inc) in procs {
            let worker = &self.workers[other];
            let Some(p) = worker.procs.get(&(actor, other_inc)) else {
                continue;
            };
            if worker.up && worker.connected && !p.sealed {
                return Err(format!(
                    "{actor} incarnation {inc} is built on worker {w} while incarnation \
                     {other_inc} still takes calls on worker {other} ({:?})",
                    worker.node
                ));
            }
        }
        Ok(())
    }

    /// An answer fits its request.
    pub(super) fn check_reply(
        &mut self,
        request: RequestId,
        conn: ConnId,
        kind: &Kind,
        reply: Option<&ClientReply>,
        last: bool,
    ) -> Result<(), String> {
        if last && *kind == Kind::Lease {
            // A lease given back is released before its stream ends; one whose client
            // went away may still be closing on its worker.
            let lease = self.granted_leases.remove(&request);
            let client_there = self.conns.get(&conn).is_some_and(|c| !c.closed);
            if let Some(lease) = lease.filter(|_| client_there) {
                if self.head.scheduler().lease(lease).is_some() {
                    return Err(format!(
                        "{request:?}'s stream ended while {lease} is still held"
                    ));
                }
            }
        }
        let asked = if last {
            self.asked.remove(&request)
        } else {
            self.asked.get(&request).cloned()
        };
        let Some(reply) = reply else {
            return Ok(());
        };
        if let ClientReply::Error(e) = reply {
            if e.kind == ErrorKind::Infeasible && e.message.contains(STRANDED_TIMEOUT) {
                self.check_stranded_timeout(request, asked.as_ref(), &e.message)?;
            }
        }
        let fits = match (kind, reply) {
            (_, ClientReply::Error(_)) => last,
            (Kind::Lease, ClientReply::TaskLeased(granted)) => {
                if let Some(&w) = self.nodes.get(&granted.node) {
                    let worker = &self.workers[w];
                    // The grant left the worker before anything happened to it since.
                    if worker.up
                        && worker.connected
                        && !worker.leases.contains_key(&granted.lease)
                        && !self.lost_leases.contains(&granted.lease)
                    {
                        return Err(format!(
                            "{request:?} was granted {}, which worker {w} did not open",
                            granted.lease
                        ));
                    }
                }
                if self.granted_leases.insert(request, granted.lease).is_some() {
                    return Err(format!("{request:?} was granted a second lease"));
                }
                !last
            }
            (Kind::Create(_), ClientReply::ActorCreated(l)) => {
                self.told(l.actor, l.incarnation, l.node)?;
                last
            }
            (Kind::Kill, ClientReply::ActorKilled) => last,
            (Kind::Job, ClientReply::Job(JobEvent::Exited(_))) => last,
            (Kind::Job, ClientReply::Job(_)) => !last,
            (Kind::Status, ClientReply::Status(status)) => {
                if self.progress == Some(request) {
                    self.progress = None;
                    self.check_calm_status(status)?;
                }
                if status.nodes.len() != self.head.node_count() {
                    return Err(format!(
                        "the status shows {} nodes of {}",
                        status.nodes.len(),
                        self.head.node_count()
                    ));
                }
                last
            }
            (
                Kind::Locate {
                    actor,
                    known,
                    suspect,
                },
                ClientReply::ActorLocated(l),
            ) => {
                if l.actor != *actor
                    || !(l.incarnation > *known || (*suspect && l.incarnation == *known))
                {
                    return Err(format!(
                        "{request:?} asked where {actor} is after incarnation {known} \
                         (suspect: {suspect}) and was told incarnation {} of {}",
                        l.incarnation, l.actor
                    ));
                }
                self.told(l.actor, l.incarnation, l.node)?;
                last
            }
            (Kind::Save { actor, seq, .. }, ClientReply::CheckpointSaved { seq: saved }) => {
                let written = self
                    .store
                    .images
                    .get(actor)
                    .is_some_and(|m| m.contains_key(seq));
                if !written || saved != seq {
                    return Err(format!(
                        "checkpoint {seq} of {actor} was acknowledged as {saved} (written: \
                         {written})"
                    ));
                }
                last
            }
            (Kind::Drain, ClientReply::Drained { .. }) => last,
            (Kind::Group, ClientReply::Group(view)) => {
                for m in &view.members {
                    let truth = self.actors.entry(m.actor).or_default();
                    if m.incarnation < truth.told || m.incarnation > truth.created {
                        return Err(format!(
                            "group `{}` shows {} at incarnation {} (told {}, created {})",
                            view.name, m.actor, m.incarnation, truth.told, truth.created
                        ));
                    }
                    truth.told = m.incarnation;
                }
                let members: Vec<ActorId> = view.members.iter().map(|m| m.actor).collect();
                let told = self
                    .generations
                    .entry(view.name.clone())
                    .or_default()
                    .entry(view.generation)
                    .or_insert_with(|| members.clone());
                if *told != members {
                    return Err(format!(
                        "generation {} of group `{}` was handed out twice: as {told:?}, then \
                         as {members:?}",
                        view.generation, view.name
                    ));
                }
                last
            }
            (Kind::Health, ClientReply::GroupHealth { .. }) => last,
            (Kind::Hold(actor), ClientReply::ActorHeld) => {
                // Held means known: it was not stopped before the hold arrived.
                last && self.head.knows_actor(*actor)
            }
            (Kind::Release, ClientReply::ActorReleased) => last,
            (Kind::Gang, ClientReply::GangCreated { gang, nodes }) => {
                // Answered in the batch that placed it whole: every bundle is where it says.
                if let Some(view) = self.head.scheduler().gang(*gang) {
                    let placed: Vec<_> = view.bundles.iter().map(|b| b.node).collect();
                    let told: Vec<_> = nodes.iter().map(|n| Some(*n)).collect();
                    if placed != told && !view.removing {
                        return Err(format!(
                            "{gang} was answered as placed on {nodes:?} but is at {placed:?}"
                        ));
                    }
                }
                last && !nodes.is_empty()
            }
            (Kind::Gang, ClientReply::GangRemoved) => last,
            (Kind::Nodes(count), ClientReply::NodesReady { count: ready }) => {
                last && ready >= count
            }
            (Kind::Usage, ClientReply::Usage(report)) => {
                self.check_usage(report)?;
                last
            }
            _ => false,
        };
        if !fits {
            return Err(format!(
                "{request:?} ({kind:?}) got {} answer: {reply:?}",
                if last { "a final" } else { "a streamed" }
            ));
        }
        Ok(())
    }

    /// The head told a caller that `inc` of `actor` takes calls on `node`: incarnations told
    /// never go back, and this one was built there.
    fn told(
        &mut self,
        actor: ActorId,
        inc: u32,
        node: ember_core::ids::NodeId,
    ) -> Result<(), String> {
        let built = self
            .nodes
            .get(&node)
            .is_some_and(|&w| self.workers[w].started.contains(&(actor, inc)));
        let truth = self.actors.entry(actor).or_default();
        if inc < truth.told {
            return Err(format!(
                "callers are told {actor} is at incarnation {inc} after incarnation {}",
                truth.told
            ));
        }
        if !built {
            return Err(format!(
                "callers are told {actor} incarnation {inc} is on {node}, which never built it"
            ));
        }
        truth.told = inc;
        Ok(())
    }

    /// The whole state, every `check_every` steps and at the end.
    pub(super) fn check_whole(&mut self) -> Result<(), String> {
        self.head
            .check_invariants()
            .map_err(|e| format!("the head's own invariants: {e}"))?;
        for (actor, inc, node) in self.head.live_incarnations() {
            let created = self.actors.get(&actor).map_or(0, |t| t.created);
            if created != inc {
                return Err(format!(
                    "the head holds {actor} incarnation {inc} live, but incarnation {created} \
                     was started after it"
                ));
            }
            let Some(&w) = self.nodes.get(&node) else {
                return Err(format!("{actor} is live on {node}, which never joined"));
            };
            if !self.workers[w].started.contains(&(actor, inc)) {
                return Err(format!(
                    "{actor} incarnation {inc} is live on {node}, which never built it"
                ));
            }
            if self.killed.contains(&(actor, inc, node)) {
                return Err(format!(
                    "{actor} incarnation {inc} is live on {node}, which stopped it when the head \
                     said so"
                ));
            }
        }
        self.check_capacity()?;
        let now: BTreeSet<LeaseId> = self.head.scheduler().leases().map(|l| l.id).collect();
        if let Some(again) = now.iter().find(|l| self.released.contains(l)) {
            return Err(format!("{again} is granted again after it was released"));
        }
        let gone: Vec<LeaseId> = self.granted.difference(&now).copied().collect();
        self.released.extend(gone);
        self.granted = now;
        Ok(())
    }

    /// On every node the head still has, what really runs there (its open leases, jobs and
    /// actors' processes) is within what the scheduler holds for it, GPU by GPU: nothing
    /// was released while it still runs.
    fn check_capacity(&self) -> Result<(), String> {
        let sched = self.head.scheduler();
        for (w, worker) in self.workers.iter().enumerate() {
            let Some(node) = worker.node else { continue };
            if worker.forgotten || !worker.up || !worker.connected {
                continue;
            }
            let Some(usage) = sched.usage(node) else {
                return Err(format!(
                    "worker {w} is {node}, which the scheduler does not have"
                ));
            };
            let mut cpu = 0u64;
            let mut share = vec![0u64; usage.gpus.len()];
            let mut memory = vec![0u64; usage.gpus.len()];
            let procs = worker
                .procs
                .values()
                // A sealed process waits to be stopped on a node that takes nothing new.
                .filter(|p| !p.sealed || usage.schedulable)
                .map(|p| &p.allocation);
            let running = worker
                .leases
                .values()
                .chain(worker.jobs.values().map(|j| &j.allocation))
                .chain(procs);
            for a in running {
                cpu += a.cpu_millis;
                for g in &a.gpus {
                    let i = usage
                        .gpus
                        .iter()
                        .position(|u| u.index == g.index)
                        .ok_or_else(|| format!("{node} has no GPU {}", g.index))?;
                    share[i] += u64::from(g.share.units());
                    memory[i] += g.memory;
                }
            }
            let held_cpu = usage.cpu_millis_total - usage.cpu_millis_free;
            if cpu > held_cpu {
                return Err(format!(
                    "{cpu} milli-CPUs run on {node}, but the scheduler holds {held_cpu} there"
                ));
            }
            for (i, g) in usage.gpus.iter().enumerate() {
                if share[i] > u64::from(g.share_used.units()) || memory[i] > g.memory_reserved {
                    return Err(format!(
                        "GPU {} of {node}: {} hundredths and {} bytes in use by what runs \
                         there, but the scheduler holds {} and {}",
                        g.index,
                        share[i],
                        memory[i],
                        g.share_used.units(),
                        g.memory_reserved
                    ));
                }
            }
        }
        Ok(())
    }

    /// After a calm spell, every actor that can come back is back: one still starting
    /// waits in the queue for capacity, not anywhere else.
    pub(super) fn check_progress(&mut self) -> Result<(), String> {
        let conn = self.new_conn(Peer::Observer);
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.ledger.insert(
            request,
            Open {
                conn,
                kind: Kind::Status,
            },
        );
        self.progress = Some(request);
        self.deliver(Input::Request {
            conn,
            request,
            body: ClientRequest::Status,
        })?;
        if self.progress.is_some() {
            return Err("the status was not answered at once".into());
        }
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.ledger.insert(
            request,
            Open {
                conn,
                kind: Kind::Usage,
            },
        );
        self.deliver(Input::Request {
            conn,
            request,
            body: ClientRequest::Usage { since_ms_ago: None },
        })?;
        if self.ledger.contains_key(&request) {
            return Err("the usage was not answered at once".into());
        }
        self.deliver(Input::Closed { conn })
    }

    /// The usage ledger adds up: every node's allocated, idle and warm time make its life
    /// exactly, and the nodes in the cluster are those the head has.
    fn check_usage(&self, report: &UsageReport) -> Result<(), String> {
        for n in &report.nodes {
            let s = n.split;
            if s.allocated_ns + s.idle_ns + s.warm_ns != s.life_ns {
                return Err(format!(
                    "{}'s time does not add up to its life: {s:?}",
                    n.node
                ));
            }
        }
        let live = report
            .nodes
            .iter()
            .filter(|n| n.left_ms_ago.is_none())
            .count();
        if live != self.head.node_count() {
            return Err(format!(
                "the usage ledger has {live} nodes in the cluster, the head {}",
                self.head.node_count()
            ));
        }
        Ok(())
    }

    /// The status after a calm spell.
    fn check_calm_status(&self, status: &ClusterStatus) -> Result<(), String> {
        let queued: BTreeSet<&str> = status
            .queue
            .iter()
            .filter(|w| w.kind == "actor")
            .map(|w| w.id.as_str())
            .collect();
        for a in &status.actors {
            let Some(life) = &a.actor else { continue };
            let starting = matches!(life.state.as_str(), "starting" | "restarting");
            if starting && !queued.contains(a.id.as_str()) {
                return Err(format!(
                    "{} is still {} at incarnation {} after 10 s without faults, and waits for                      no capacity",
                    a.id, life.state, life.incarnation
                ));
            }
        }
        Ok(())
    }

    /// At the end, with every client gone: nothing is held, everything was answered, every
    /// checkpoint was forgotten, and every node's capacity is back to its total.
    pub(super) fn check_quiescent(&self) -> Result<(), String> {
        if let Some((request, open)) = self.ledger.iter().next() {
            return Err(format!(
                "{} requests were never answered, e.g. {request:?}: {open:?}",
                self.ledger.len()
            ));
        }
        if let Some((command, w)) = self.commands.iter().next() {
            return Err(format!(
                "{} commands were never answered, e.g. {command:?} to worker {w}",
                self.commands.len()
            ));
        }
        let sched = self.head.scheduler();
        if let Some(lease) = sched.leases().next() {
            return Err(format!(
                "{} leases are still held at the end, e.g. {lease:?}",
                sched.leases().count()
            ));
        }
        if sched.queued_len() > 0 {
            return Err(format!("{} requests still queue", sched.queued_len()));
        }
        if let Some(gang) = sched.gangs().next() {
            return Err(format!(
                "{} gangs outlive their owners, e.g. {gang:?}",
                sched.gangs().count()
            ));
        }
        for node in sched.node_ids() {
            let u = sched.usage(node).expect("listed");
            let gpus_back = u
                .gpus
                .iter()
                .all(|g| g.share_used.units() == 0 && g.memory_reserved == 0);
            if u.cpu_millis_free != u.cpu_millis_total || !gpus_back || u.leases != 0 {
                return Err(format!(
                    "{node}'s capacity did not return to its total: {u:?}"
                ));
            }
        }
        if self.head.actor_count() > 0 {
            return Err(format!(
                "{} actors outlive their owners",
                self.head.actor_count()
            ));
        }
        if let Some((actor, images)) = self.store.images.iter().next() {
            return Err(format!(
                "checkpoints of {actor} ({:?}) were never forgotten",
                images.keys().collect::<Vec<_>>()
            ));
        }
        for (w, worker) in self.workers.iter().enumerate() {
            if worker.up && worker.connected {
                if let Some((key, _)) = worker.procs.iter().next() {
                    return Err(format!(
                        "worker {w} still runs {key:?} at the end, which nobody stopped"
                    ));
                }
                if let Some(lease) = worker.leases.keys().next() {
                    return Err(format!("worker {w} still holds {lease} open at the end"));
                }
            }
        }
        Ok(())
    }
}
