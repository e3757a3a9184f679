//! Actors: creation, restarts from the newest checkpoint, where callers find them, recording
//! checkpoints, and stopping them.

use std::time::{Duration, Instant};

use ember_core::ids::{ActorId, LeaseId, NodeId};
use ember_core::proto::{
    ActorLocation, ActorSpec, CheckpointSave, ClientReply, ErrorKind, RemoteError, WorkerCommand,
    WorkerReply,
};
use ember_core::resources::actor_label;

use super::{
    no_actor, unexpected, Actor, HeadState, Incarnate, Io, Purpose, Start, Step, Wait, Work,
};
use sha2::{Digest, Sha256};

use crate::actor_life::{ActorLife, Loss, Phase};
use crate::io::{ConnId, Effect, LoadedCheckpoint, RequestId, Ticket};
use crate::journal::{Change, CheckpointRecord};
use crate::placement::Lease;

impl HeadState {
    pub(super) fn create_actor(
        &mut self,
        now: Instant,
        owner: ConnId,
        request: RequestId,
        spec: ActorSpec,
    ) {
        let actor = ActorId(self.next_id());
        self.set_wait(request, Wait::Create(actor));
        self.actors.insert(
            actor,
            Actor {
                life: ActorLife::new(spec.restart),
                spec,
                owner: self.owner(owner),
                holders: [owner].into(),
                create: Some(request),
                start: None,
                checkpoint: None,
                stores: 0,
            },
        );
        self.start_actor(now, actor);
    }

    /// Places the actor's current incarnation.
    pub(super) fn start_actor(&mut self, now: Instant, actor: ActorId) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        let incarnation = a.life.incarnation();
        let lease = LeaseId(self.next_id());
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        a.start = Some(Start {
            lease,
            step: Step::Placing,
        });
        let placement = a.spec.placement.clone();
        let label = Some(actor_label(&a.spec.type_name));
        let work = Work::Actor { actor, incarnation };
        if let Err(e) = self.place(now, lease, placement, label, work) {
            if let Some(a) = self.actors.get_mut(&actor) {
                a.start = None;
            }
            self.start_failed(now, actor, incarnation, e, "cannot place it: ");
        }
    }

    /// The current incarnation's lease was granted: restore its newest checkpoint (once the
    /// writes in flight have ended), or construct it anew.
    pub(super) fn actor_placed(
        &mut self,
        now: Instant,
        actor: ActorId,
        incarnation: u32,
        granted: Lease,
    ) {
        let Some(a) = self.actors.get_mut(&actor) else {
            // Stopped while it waited.
            self.release(now, granted.id);
            return;
        };
        let Some(start) = a.start.as_mut().filter(|s| s.lease == granted.id) else {
            self.release(now, granted.id);
            return;
        };
        if incarnation > 1 && a.spec.checkpoint.enabled {
            start.step = Step::AwaitingStores;
            self.load_when_written(actor);
        } else {
            self.construct(actor, None);
        }
    }

    /// Reads the newest checkpoint of a starting actor once no write of it is in flight:
    /// every write accepted before this incarnation began is then in the store.
    fn load_when_written(&mut self, actor: ActorId) {
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        if a.stores > 0
            || !matches!(
                a.start,
                Some(Start {
                    step: Step::AwaitingStores,
                    ..
                })
            )
        {
            return;
        }
        let incarnation = a.life.incarnation();
        let ticket = self.ticket(Io::Load { actor, incarnation });
        if let Some(start) = self.actors.get_mut(&actor).and_then(|a| a.start.as_mut()) {
            start.step = Step::Loading(ticket);
        }
        self.out.push(Effect::LoadCheckpoint { ticket, actor });
    }

    pub(super) fn loaded(
        &mut self,
        now: Instant,
        ticket: Ticket,
        result: Result<Option<LoadedCheckpoint>, String>,
    ) {
        let Some(Io::Load { actor, incarnation }) = self.io.remove(&ticket) else {
            return;
        };
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        if !matches!(a.start, Some(Start { step: Step::Loading(t), .. }) if t == ticket) {
            return;
        }
        match result {
            Ok(found) => {
                let fell_back = match (&found, a.checkpoint) {
                    (Some(found), Some((recorded, _))) => found.seq < recorded,
                    (None, recorded) => recorded.is_some(),
                    (Some(_), None) => false,
                };
                if fell_back {
                    // Newer ones failed their hash and were dropped: the store says what is
                    // really there, and the journal must too, or a later head life would take
                    // a dropped checkpoint for the newest.
                    self.fell_back(now, actor, found.as_ref());
                }
                self.construct(actor, found);
            }
            Err(e) => {
                let lease = a.start.take().map(|s| s.lease);
                if let Some(lease) = lease {
                    self.release(now, lease);
                }
                self.start_failed(
                    now,
                    actor,
                    incarnation,
                    RemoteError::new(ErrorKind::Internal, e),
                    "its checkpoints: ",
                );
            }
        }
    }

    /// The newest checkpoint readable is older than the one recorded (`found`, or none at
    /// all): it is recorded, and journaled, as the actor's newest.
    fn fell_back(&mut self, now: Instant, actor: ActorId, found: Option<&LoadedCheckpoint>) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        let at = a.checkpoint.map_or(now, |(_, at)| at);
        a.checkpoint = found.map(|f| (f.seq, at));
        let change = match found {
            Some(f) => {
                tracing::warn!(%actor, seq = f.seq, "newer checkpoints are damaged: restoring an older one");
                let record = CheckpointRecord {
                    seq: f.seq,
                    sha256: Sha256::digest(&f.image).into(),
                };
                Change::Checkpoint { actor, record }
            }
            None => {
                tracing::warn!(%actor, "every checkpoint is damaged: starting it anew");
                Change::CheckpointGone { actor }
            }
        };
        self.journal(change);
    }

    /// Asks the starting incarnation's worker to construct it.
    fn construct(&mut self, actor: ActorId, restore: Option<LoadedCheckpoint>) {
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        let Some(start) = a.start else {
            return;
        };
        let Some(granted) = self.sched.lease(start.lease) else {
            return;
        };
        let incarnation = a.life.incarnation();
        let create = WorkerCommand::CreateActor {
            actor,
            type_name: a.spec.type_name.clone(),
            args: a.spec.args.clone(),
            allocation: granted.allocation.clone(),
            incarnation,
            checkpoint: a.spec.checkpoint,
            restore: restore.map(|r| r.image),
        };
        let node = granted.node;
        let purpose = Purpose::CreateActor {
            actor,
            incarnation,
            lease: start.lease,
        };
        let command = self.command(node, create, purpose);
        if let Some(start) = self.actors.get_mut(&actor).and_then(|a| a.start.as_mut()) {
            start.step = Step::Creating(command);
        }
    }

    /// The worker answered the construction of `incarnation` on `lease`.
    pub(super) fn actor_created(
        &mut self,
        now: Instant,
        node: NodeId,
        actor: ActorId,
        incarnation: u32,
        lease: LeaseId,
        reply: Result<WorkerReply, RemoteError>,
    ) {
        let current = self.actors.get(&actor).is_some_and(|a| {
            a.life.incarnation() == incarnation && a.start.is_some_and(|s| s.lease == lease)
        });
        match reply {
            Ok(WorkerReply::ActorReady(endpoints)) if current => {
                let Some(a) = self.actors.get_mut(&actor) else {
                    return;
                };
                a.start = None;
                a.life.started(incarnation, Incarnate { lease, endpoints });
                let create = a.create.take();
                tracing::info!(%actor, incarnation, %node, "actor up");
                self.journal_actor(actor);
                if let Some(request) = create {
                    if let Some(location) = self.location(actor) {
                        self.reply(request, ClientReply::ActorCreated(location));
                    }
                }
                self.notify(now, actor);
            }
            Ok(WorkerReply::ActorReady(_)) => {
                // Stopped, or replaced, while it was being built: stop what was built (only
                // that incarnation: a newer one may run on the same worker).
                let kill = WorkerCommand::KillActor { actor, incarnation };
                let purpose = Purpose::KillActor {
                    lease: Some(lease),
                    request: None,
                };
                self.command(node, kill, purpose);
            }
            _ if !current => self.release(now, lease),
            Ok(WorkerReply::Error(e)) if e.kind != ErrorKind::WorkerDied => {
                self.give_up_start(now, actor, incarnation, e);
            }
            Ok(WorkerReply::Error(e)) | Err(e) => {
                if let Some(a) = self.actors.get_mut(&actor) {
                    a.start = None;
                }
                self.release(now, lease);
                self.actor_lost(now, actor, incarnation, &e.message);
            }
            Ok(other) => {
                let e = unexpected(&other);
                self.give_up_start(now, actor, incarnation, e);
            }
        }
    }

    /// The start of `incarnation` failed for a reason a retry would not fix.
    pub(super) fn give_up_start(
        &mut self,
        now: Instant,
        actor: ActorId,
        incarnation: u32,
        e: RemoteError,
    ) {
        let lease = self
            .actors
            .get_mut(&actor)
            .and_then(|a| a.start.take())
            .map(|s| s.lease);
        if let Some(lease) = lease {
            self.release(now, lease);
        }
        self.start_failed(now, actor, incarnation, e, "");
    }

    /// An incarnation could not be started: a first one fails its creation (the actor never
    /// existed); a later one leaves the actor dead.
    pub(super) fn start_failed(
        &mut self,
        now: Instant,
        actor: ActorId,
        incarnation: u32,
        e: RemoteError,
        context: &str,
    ) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        if a.life.incarnation() != incarnation {
            return;
        }
        if let Some(request) = a.create {
            self.remove_actor(actor);
            self.fail(request, e);
        } else {
            tracing::error!(%actor, incarnation, "actor could not be restarted: {context}{e}");
            a.life
                .die(format!("{actor} could not be restarted: {context}{e}"));
            self.journal_actor(actor);
        }
        self.notify(now, actor);
    }

    /// Incarnation `incarnation` of `actor` lost its process: restart it if its policy allows,
    /// otherwise it is dead and its callers are told why.
    pub(super) fn actor_lost(
        &mut self,
        now: Instant,
        actor: ActorId,
        incarnation: u32,
        reason: &str,
    ) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        if a.life.incarnation() != incarnation {
            return;
        }
        if a.create.is_some() {
            // Its first incarnation never came up: the creation fails.
            let lease = a.start.take().map(|s| s.lease);
            if let Some(lease) = lease {
                self.release(now, lease);
            }
            let e = RemoteError::new(ErrorKind::WorkerDied, format!("{actor} was lost: {reason}"));
            self.start_failed(now, actor, incarnation, e, "");
            return;
        }
        let lease = a.life.live().map(|l| l.lease).or(a.start.map(|s| s.lease));
        let loss = a.life.lost(incarnation, reason);
        if loss == Loss::Stale {
            return;
        }
        a.start = None;
        self.restoring.remove(&actor);
        self.rejoin_settled();
        self.journal_actor(actor);
        if let Some(lease) = lease {
            self.release(now, lease);
        }
        match loss {
            Loss::Stale => {}
            Loss::GiveUp => {
                tracing::warn!(%actor, incarnation, "actor died: {reason}; no restarts left");
            }
            Loss::Restart { incarnation } => {
                tracing::warn!(%actor, incarnation, "actor lost ({reason}): restarting it");
                self.start_actor(now, actor);
            }
        }
        self.notify(now, actor);
    }

    /// The live incarnation moves (a drain): the next one starts elsewhere from the final
    /// checkpoint. Returns that incarnation, or `None` unless it was alive.
    pub(super) fn move_actor(&mut self, now: Instant, actor: ActorId) -> Option<u32> {
        let a = self.actors.get_mut(&actor)?;
        let lease = a.life.live()?.lease;
        let incarnation = a.life.moving()?;
        self.journal_actor(actor);
        self.release(now, lease);
        self.start_actor(now, actor);
        self.notify(now, actor);
        Some(incarnation)
    }

    /// Where the actor's live incarnation takes calls.
    pub(super) fn location(&self, actor: ActorId) -> Option<ActorLocation> {
        let a = self.actors.get(&actor)?;
        let live = a.life.live()?;
        let granted = self.sched.lease(live.lease)?;
        Some(ActorLocation {
            actor,
            incarnation: a.life.incarnation(),
            node: granted.node,
            endpoints: live.endpoints.clone(),
            allocation: granted.allocation.clone(),
            restart: a.life.policy(),
        })
    }

    /// Looks again at every request waiting on `actor`, whose life changed.
    pub(super) fn notify(&mut self, now: Instant, actor: ActorId) {
        if let Some(waiting) = self.watchers.remove(&actor) {
            for request in waiting {
                match self.requests.get(&request).map(|o| o.wait.clone()) {
                    Some(Wait::Locate { actor, known, .. }) => {
                        self.locate_now(request, actor, known)
                    }
                    Some(Wait::View { .. }) => self.view_now(request),
                    _ => {}
                }
            }
        }
        let draining: Vec<NodeId> = self
            .drains
            .iter()
            .filter(|(_, d)| d.moving.contains_key(&actor))
            .map(|(n, _)| *n)
            .collect();
        for node in draining {
            self.check_drain(now, node);
        }
    }

    // ---- stopping ----

    pub(super) fn kill_request(&mut self, now: Instant, request: RequestId, actor: ActorId) {
        if !self.actors.contains_key(&actor) {
            self.fail(request, no_actor(actor));
            return;
        }
        self.set_wait(request, Wait::Kill);
        self.kill_actor(now, actor, Some(request));
    }

    /// Stops an actor for good: its process is stopped (its resources return once its worker
    /// confirms), its checkpoints are forgotten, and callers learn it is gone. `request` is
    /// answered once the process is stopped.
    pub(super) fn kill_actor(&mut self, now: Instant, actor: ActorId, request: Option<RequestId>) {
        let Some(mut a) = self.actors.remove(&actor) else {
            return;
        };
        self.restoring.remove(&actor);
        self.rejoin_settled();
        if a.create.is_none() {
            self.journal(Change::ActorGone { actor });
        }
        self.forget(actor, a.stores);
        let killing = a.life.live().map(|live| live.lease);
        a.life.die(format!("{actor} was stopped"));
        if let Some(create) = a.create {
            self.fail(
                create,
                RemoteError::new(
                    ErrorKind::Unknown,
                    format!("{actor} was stopped before it started"),
                ),
            );
        }
        if let Some(start) = a.start {
            match start.step {
                // Its worker's answer finds it gone and stops what it built.
                Step::Creating(_) => {}
                Step::Placing | Step::AwaitingStores | Step::Loading(_) => {
                    self.release(now, start.lease)
                }
            }
        }
        match killing.and_then(|lease| Some((lease, self.node_of(lease)?))) {
            Some((lease, node)) => {
                let purpose = Purpose::KillActor {
                    lease: Some(lease),
                    request,
                };
                let kill = WorkerCommand::KillActor {
                    actor,
                    incarnation: a.life.incarnation(),
                };
                self.command(node, kill, purpose);
            }
            None => {
                if let Some(request) = request {
                    self.reply(request, ClientReply::ActorKilled);
                }
            }
        }
        tracing::info!(%actor, "actor stopped");
        self.notify(now, actor);
    }

    /// Drops an actor that never came up.
    fn remove_actor(&mut self, actor: ActorId) {
        if let Some(a) = self.actors.remove(&actor) {
            self.forget(actor, a.stores);
        }
    }

    /// Forgets a gone actor's checkpoints, once its writes in flight have ended.
    fn forget(&mut self, actor: ActorId, stores: u32) {
        if stores == 0 {
            self.out.push(Effect::ForgetCheckpoints { actor });
        } else {
            self.stopped.insert(actor, stores);
        }
    }

    // ---- locating ----

    /// Where `actor` takes calls: an incarnation newer than `known`, waiting up to `timeout`
    /// while it starts. A `suspect` caller lost its connection to incarnation `known`, so
    /// that incarnation's worker is probed first.
    pub(super) fn locate(
        &mut self,
        now: Instant,
        request: RequestId,
        actor: ActorId,
        known: u32,
        suspect: bool,
        timeout: Duration,
    ) {
        let Some(a) = self.actors.get(&actor) else {
            self.fail(request, no_actor(actor));
            return;
        };
        if a.owner.epoch < self.epoch {
            self.claim(request, actor);
        }
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        let deadline = now + timeout;
        let alive_at_known = a.life.live().is_some() && a.life.incarnation() == known;
        if suspect && alive_at_known {
            if let Some(node) = self.location(actor).map(|l| l.node) {
                self.set_wait(
                    request,
                    Wait::Probe {
                        actor,
                        known,
                        deadline,
                        timeout,
                    },
                );
                self.probe_actor(now, node, actor, known, Some(request));
                return;
            }
        }
        self.wait_for_newer(request, actor, known, timeout, deadline);
    }

    /// A locate request waits, until `deadline`, for an incarnation newer than `known`.
    fn wait_for_newer(
        &mut self,
        request: RequestId,
        actor: ActorId,
        known: u32,
        timeout: Duration,
        deadline: Instant,
    ) {
        let wait = Wait::Locate {
            actor,
            known,
            timeout,
        };
        self.set_wait(request, wait);
        self.arm_request(request, deadline);
        self.locate_now(request, actor, known);
    }

    /// Answers a locate request if an incarnation newer than `known` is up or the actor is
    /// dead or gone; otherwise it keeps waiting.
    fn locate_now(&mut self, request: RequestId, actor: ActorId, known: u32) {
        let Some(a) = self.actors.get(&actor) else {
            self.fail(request, no_actor(actor));
            return;
        };
        match a.life.phase() {
            Phase::Alive(_) if a.life.incarnation() > known => {
                if let Some(location) = self.location(actor) {
                    self.reply(request, ClientReply::ActorLocated(location));
                }
            }
            Phase::Dead(reason) => {
                let e =
                    RemoteError::new(ErrorKind::WorkerDied, format!("{actor} is dead: {reason}"));
                self.fail(request, e);
            }
            Phase::Alive(_) | Phase::Starting => self.watch(actor, request),
        }
    }

    /// Asks `node` whether incarnation `incarnation` of `actor` still runs there, for a
    /// caller's `request` or for a group's failure report; a silent worker is declared dead.
    pub(super) fn probe_actor(
        &mut self,
        now: Instant,
        node: NodeId,
        actor: ActorId,
        incarnation: u32,
        request: Option<RequestId>,
    ) {
        let probe = WorkerCommand::Probe { actor, incarnation };
        let purpose = Purpose::Probe {
            actor,
            incarnation,
            request,
        };
        self.probe(now, node, probe, purpose);
    }

    /// A probe of incarnation `incarnation` of `actor` was answered.
    pub(super) fn probed(
        &mut self,
        now: Instant,
        node: NodeId,
        actor: ActorId,
        incarnation: u32,
        request: Option<RequestId>,
        reply: Result<WorkerReply, RemoteError>,
    ) {
        match reply {
            Ok(WorkerReply::Probed { alive: true }) => {
                // A false alarm: the incarnation the caller knows still runs.
                if let Some(request) = request {
                    match self
                        .location(actor)
                        .filter(|l| l.incarnation == incarnation)
                    {
                        Some(location) => {
                            self.reply(request, ClientReply::ActorLocated(location));
                        }
                        None => self.probe_inconclusive(now, request),
                    }
                }
                return;
            }
            Ok(WorkerReply::Probed { alive: false }) => {
                self.actor_lost(now, actor, incarnation, "its process ended");
            }
            _ => {
                let window = self.config.probe_window();
                tracing::warn!(%node, "no answer to a probe within {window:?}: declaring the worker dead");
                self.declare_dead(now, node, "did not answer a probe");
            }
        }
        if let Some(request) = request {
            self.probe_inconclusive(now, request);
        }
    }

    /// A caller's probe ended without showing the incarnation alive: it waits for a newer one.
    pub(super) fn probe_inconclusive(&mut self, _now: Instant, request: RequestId) {
        let Some(Wait::Probe {
            actor,
            known,
            deadline,
            timeout,
        }) = self.requests.get(&request).map(|o| o.wait.clone())
        else {
            return;
        };
        self.wait_for_newer(request, actor, known, timeout, deadline);
    }

    // ---- checkpoints ----

    /// Records a checkpoint durably, if it comes from the actor's live incarnation; answered
    /// once written.
    pub(super) fn save_checkpoint(&mut self, request: RequestId, save: CheckpointSave) {
        let actor = save.actor;
        let Some(a) = self.actors.get_mut(&actor) else {
            self.fail(request, no_actor(actor));
            return;
        };
        let current = a.life.incarnation();
        if self.restoring.contains_key(&actor) && current == save.incarnation {
            // Its worker has not re-joined this head life yet: the incarnation may well be
            // adopted, so it is not told it was replaced (which would seal it for good).
            let e = RemoteError::new(
                ErrorKind::Timeout,
                format!(
                    "checkpoint of {actor} not recorded yet: the head restarted and incarnation \
                     {current} is not taken back yet (its worker has not re-joined)"
                ),
            );
            self.fail(request, e);
            return;
        }
        if a.life.live().is_none() || current != save.incarnation {
            let e = RemoteError::new(
                ErrorKind::Moved,
                format!(
                    "checkpoint of {actor} refused: incarnation {} was replaced by {current}",
                    save.incarnation
                ),
            );
            self.fail(request, e);
            return;
        }
        a.stores += 1;
        let seq = save.seq;
        let sha256: [u8; 32] = Sha256::digest(&save.image).into();
        let ticket = self.ticket(Io::Store {
            actor,
            seq,
            sha256,
            request,
        });
        self.set_wait(request, Wait::Save);
        self.out.push(Effect::StoreCheckpoint {
            ticket,
            actor,
            seq,
            sha256,
            image: save.image,
        });
    }

    pub(super) fn stored(&mut self, now: Instant, ticket: Ticket, result: Result<(), String>) {
        let Some(Io::Store {
            actor,
            seq,
            sha256,
            request,
        }) = self.io.remove(&ticket)
        else {
            return;
        };
        match self.actors.get_mut(&actor) {
            Some(a) => {
                a.stores -= 1;
                if result.is_ok() && a.checkpoint.is_none_or(|(recorded, _)| seq > recorded) {
                    a.checkpoint = Some((seq, now));
                    let record = CheckpointRecord { seq, sha256 };
                    self.journal(Change::Checkpoint { actor, record });
                }
                self.load_when_written(actor);
            }
            None => {
                if let Some(left) = self.stopped.get_mut(&actor) {
                    *left -= 1;
                    if *left == 0 {
                        self.stopped.remove(&actor);
                        self.out.push(Effect::ForgetCheckpoints { actor });
                    }
                }
            }
        }
        match result {
            Ok(()) => self.reply(request, ClientReply::CheckpointSaved { seq }),
            Err(e) => self.fail(
                request,
                RemoteError::new(
                    ErrorKind::Internal,
                    format!("cannot record the checkpoint of {actor}: {e}"),
                ),
            ),
        }
    }
}
