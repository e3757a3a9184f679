//! [`HeadState`]: the head's whole cluster state and its one way in, [`HeadState::handle`].
//!
//! The files beside this one each take one concern: `nodes.rs` (joins, liveness, probes,
//! losses), `work.rs` (placement, task leases, jobs), `actors.rs` (creation, restarts,
//! locating, checkpoints, stopping), `drain.rs`, `groups.rs` (collective groups),
//! `gangs.rs` (placement groups: creation, removal, a waiting gang that cannot be placed),
//! `status.rs` (`ember status`), `restore.rs` (a head's restart from its journal, and what
//! the state journals), `usage.rs` (the usage ledger fed with joins, grants, releases and
//! losses, and `ember usage`).
//!
//! Everything is stored once. The scheduler owns what runs where (a lease: its node and
//! allocation); [`Work`] says what each lease is for; an actor keeps only the lease of its
//! live or starting incarnation; a request keeps only what it waits for. Maps are ordered, so
//! every pass over them is in id order and a run replays exactly from the same inputs.

mod actors;
mod autoscaling;
mod drain;
mod gangs;
mod groups;
mod holds;
mod nodes;
mod pending;
mod restore;
mod status;
mod usage;
mod work;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ember_core::ids::{ActorId, GangId, JobId, LeaseId, NodeId};
use ember_core::proto::{
    ActorEndpoints, ActorSpec, ClientReply, ClientRequest, ErrorKind, JobSpec, Placement,
    RemoteError, WorkerCommand, WorkerHello,
};
use ember_core::resources::GpuStat;

use crate::actor_life::ActorLife;
use crate::groups::Groups;
pub(crate) use crate::io::died;
use crate::io::{CommandId, ConnId, Effect, Input, RequestId, Ticket};
use crate::journal::{Change, NodeRecord, Owner};
use crate::placement::Scheduler;
use crate::usage::{Ledger, LedgerLimits};

/// How the head behaves; every duration is of the clock passed to [`HeadState::handle`].
#[derive(Debug, Clone)]
pub struct Config {
    /// A worker silent for this long is declared dead.
    pub heartbeat_timeout: Duration,
    /// How long forming a group waits for members that are restarting.
    pub form_wait: Duration,
    /// After a restart, how long the nodes of the last head life are waited for before they
    /// are given up and their actors restarted elsewhere. It must be at least the workers'
    /// own window (`WorkerConfig::rejoin_ms`): a worker that has not re-joined by then has
    /// stopped its executors, so no actor is restarted while its old incarnation still runs.
    pub rejoin_window: Duration,
    /// How long a queued request waits once no live node could ever hold it (its only
    /// fitting node left or drains) before it fails naming what is missing, unless a node that
    /// fits joins first; a request's own `pending_timeout_ms` overrides it.
    pub pending_timeout: Duration,
    /// The autoscaler, when the cluster scales itself (its node types and policy); `None`:
    /// the nodes are what joins.
    pub autoscaler: Option<crate::autoscale::Autoscaler>,
    /// How often the autoscaler decides.
    pub autoscale_interval: Duration,
}

impl Config {
    /// A worker suspected by a caller has this long to answer a probe before it is declared
    /// dead: a quarter of the heartbeat window, at least 200 ms.
    pub fn probe_window(&self) -> Duration {
        (self.heartbeat_timeout / 4).max(Duration::from_millis(200))
    }

    /// How often the autoscaler decides, when there is one.
    pub fn autoscale_every(&self) -> Option<Duration> {
        self.autoscaler.as_ref().map(|_| self.autoscale_interval)
    }
}

impl Default for Config {
    /// A 2 s heartbeat window; 30 s for group members to come back; 60 s for the workers of
    /// the last head life to re-join; 60 s for a request no live node can hold any more.
    fn default() -> Self {
        Config {
            heartbeat_timeout: Duration::from_secs(2),
            form_wait: Duration::from_secs(30),
            rejoin_window: Duration::from_secs(60),
            pending_timeout: Duration::from_secs(60),
            autoscaler: None,
            autoscale_interval: Duration::from_secs(1),
        }
    }
}

/// A joined worker.
#[derive(Debug)]
struct Node {
    conn: ConnId,
    hello: Box<WorkerHello>,
    last_heartbeat: Instant,
    /// The last time anything came from it: a heartbeat, an event, a reply, or packets the
    /// shell reported then (which may have come up to one look earlier). Its heartbeat
    /// deadline runs from here.
    last_heard: Instant,
    /// The last time it is known to have been alive: as `last_heard`, except that packets
    /// count from when the shell looked before them. Only this answers a probe.
    alive_at: Instant,
    gpu_stats: Vec<GpuStat>,
}

/// What a lease is for. Where it runs (or that it waits) is the scheduler's to say.
#[derive(Debug)]
enum Work {
    /// A task lease: a client runs tasks of one function on it.
    Lease(TaskLease),
    /// A batch job.
    Job(Job),
    /// An incarnation of an actor (its entry may be gone: stopped, its process still ending).
    Actor { actor: ActorId, incarnation: u32 },
    /// Something a worker re-joining after a head restart still ran and the head stops (an
    /// actor incarnation or a task lease it does not know): its capacity is held until the
    /// worker confirms.
    Stray,
}

#[derive(Debug)]
struct TaskLease {
    request: RequestId,
    name: String,
    placement: Placement,
    phase: LeasePhase,
    /// Why it ends, once something ended it.
    end: Option<LeaseEnd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeasePhase {
    /// Waiting for capacity.
    Waiting,
    /// Opening on its worker.
    Opening,
    /// Granted: the client sends it tasks.
    Held,
    /// Closing on its worker (after its running task).
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseEnd {
    /// The client gave it back.
    Returned,
    /// The client gave it back, having lost its executor: closing it probes the worker.
    Lost,
    /// The client went away.
    ClientGone,
    /// Its node drains: the client is told it moved.
    TakenBack,
    /// Its gang was removed: the client is told so.
    GangRemoved(GangId),
}

#[derive(Debug)]
struct Job {
    /// `None` once its client went away.
    request: Option<RequestId>,
    job: JobId,
    spec: JobSpec,
    /// The worker's command running it, once placed.
    command: Option<CommandId>,
}

/// What the head keeps of an actor's live incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Incarnate {
    lease: LeaseId,
    endpoints: ActorEndpoints,
}

/// An actor, from its creation until it is stopped.
#[derive(Debug)]
struct Actor {
    spec: ActorSpec,
    /// The client connection that created it, or the one of this head life that claimed it
    /// after a restart (journaled: an owner of an earlier life means nobody claimed it yet).
    owner: Owner,
    /// The connections of this head life that hold it (`holds.rs`): its owner's from its
    /// creation or claim, and those that asked to. It stops when the last one lets go.
    holders: BTreeSet<ConnId>,
    life: ActorLife<Incarnate>,
    /// The request that created it, until its first incarnation is up.
    create: Option<RequestId>,
    /// The incarnation being started: its lease and step.
    start: Option<Start>,
    /// The newest recorded checkpoint: its sequence number and when it was recorded.
    checkpoint: Option<(u64, Instant)>,
    /// Checkpoint writes accepted and not yet finished: a restore reads only once they are.
    stores: u32,
}

#[derive(Debug, Clone, Copy)]
struct Start {
    lease: LeaseId,
    step: Step,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for capacity.
    Placing,
    /// Placed; waiting for checkpoint writes in flight before reading the newest.
    AwaitingStores,
    /// Reading its newest checkpoint.
    Loading(Ticket),
    /// Being constructed on its worker.
    Creating(CommandId),
}

/// A request that is not answered yet, and what it waits for.
#[derive(Debug)]
struct Open {
    conn: ConnId,
    wait: Wait,
    /// When its current wait ends, if it has a deadline.
    deadline: Option<Instant>,
}

#[derive(Debug, Clone)]
enum Wait {
    /// Being answered in this step.
    Now,
    /// A task lease, through its life.
    Lease(LeaseId),
    /// A job, until it ends.
    Job(LeaseId),
    /// An actor's creation, until its first incarnation is up.
    Create(ActorId),
    /// A worker's confirmation that it stopped an actor.
    Kill,
    /// A probe of the incarnation the caller lost; then [`Wait::Locate`] until `deadline`.
    Probe {
        actor: ActorId,
        known: u32,
        deadline: Instant,
        timeout: Duration,
    },
    /// An incarnation newer than `known`, for up to `timeout`.
    Locate {
        actor: ActorId,
        known: u32,
        timeout: Duration,
    },
    /// A checkpoint being written.
    Save,
    /// A node's drain.
    Drain(NodeId),
    /// A group's rendezvous.
    Join {
        group: String,
        actor: ActorId,
        world: u32,
        timeout: Duration,
    },
    /// Every member of a group's generation alive.
    View {
        group: String,
        generation: u64,
        members: Vec<ActorId>,
        timeout: Duration,
    },
    /// This many joined workers.
    Nodes { count: u32, timeout: Duration },
    /// A gang's creation, until it is placed whole.
    Gang(GangId),
}

/// A command sent to a worker and not answered yet, and what its answer is for.
#[derive(Debug, Clone)]
struct Pending {
    node: NodeId,
    purpose: Purpose,
}

#[derive(Debug, Clone)]
enum Purpose {
    OpenLease(LeaseId),
    CloseLease(LeaseId),
    CreateActor {
        actor: ActorId,
        incarnation: u32,
        lease: LeaseId,
    },
    /// Stop an actor's process; then release `lease` and answer `request`.
    KillActor {
        lease: Option<LeaseId>,
        request: Option<RequestId>,
    },
    /// Is this incarnation alive? For a caller's `request`, or for a group's report.
    Probe {
        actor: ActorId,
        incarnation: u32,
        request: Option<RequestId>,
    },
    Seal {
        actor: ActorId,
    },
    RunJob(LeaseId),
    /// Stop something a re-joining worker still ran; then release what it `held`.
    StopStray {
        held: Option<LeaseId>,
    },
}

/// A probe in flight: a command whose answer, or the worker's silence, says whether the worker
/// lives.
#[derive(Debug, Clone, Copy)]
struct Probing {
    node: NodeId,
    since: Instant,
}

/// Checkpoint I/O in flight.
#[derive(Debug, Clone)]
enum Io {
    Store {
        actor: ActorId,
        seq: u64,
        sha256: [u8; 32],
        request: RequestId,
    },
    Load {
        actor: ActorId,
        incarnation: u32,
    },
}

/// Something due at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A request's wait ends.
    Request(RequestId),
    /// A probe's window ends.
    Probe(CommandId),
    /// A drain's grace ends.
    Drain(NodeId),
    /// The actors of an earlier head life that no client connection of this one claimed are
    /// stopped.
    Unclaimed,
    /// A queued lease that no live node can hold fails, unless a node that fits joined.
    Stranded(LeaseId),
    /// A waiting gang that no set of live nodes can hold fails, unless a node that fits joined.
    GangStranded(GangId),
    /// The autoscaler's next pass.
    Autoscale,
}

/// A node being drained.
#[derive(Debug, Default)]
struct Drain {
    requests: Vec<RequestId>,
    /// Actors asked to seal, not answered yet.
    sealing: BTreeSet<ActorId>,
    /// Actors moving away, with the incarnation that replaces the one here.
    moving: BTreeMap<ActorId, u32>,
    moved: u32,
}

/// The head's whole cluster state. Its only way in is [`HeadState::handle`]; it does no I/O
/// and reads no clock.
#[derive(Debug)]
pub struct HeadState {
    config: Config,
    /// This head life's number: one more than the last life's in the journal.
    epoch: u64,
    next_id: u64,
    /// Ids below this may have been given out (journaled as [`Change::IdsReserved`]).
    ids_reserved: u64,
    /// Nodes of the last head life, expected to re-join until `rejoin_deadline`.
    expected: BTreeMap<NodeId, NodeRecord>,
    /// Actors read back from the journal and not adopted or started again yet, with the node
    /// their incarnation was alive on when the last life ended (`None`: it was being started).
    restoring: BTreeMap<ActorId, Option<NodeId>>,
    /// When the nodes of the last life that did not re-join are given up.
    rejoin_deadline: Option<Instant>,
    next_command: u64,
    next_ticket: u64,
    sched: Scheduler,
    nodes: BTreeMap<NodeId, Node>,
    /// Worker connections.
    conns: BTreeMap<ConnId, NodeId>,
    /// When each node is declared dead unless heard from: `(deadline, node)`.
    liveness: BTreeSet<(Instant, NodeId)>,
    work: BTreeMap<LeaseId, Work>,
    actors: BTreeMap<ActorId, Actor>,
    /// Stopped actors whose checkpoint writes are still in flight: forgotten once they end.
    stopped: BTreeMap<ActorId, u32>,
    requests: BTreeMap<RequestId, Open>,
    commands: BTreeMap<CommandId, Pending>,
    probes: BTreeMap<CommandId, Probing>,
    io: BTreeMap<Ticket, Io>,
    timers: BTreeSet<(Instant, Timer)>,
    /// Requests to look at again when an actor's life changes.
    watchers: BTreeMap<ActorId, BTreeSet<RequestId>>,
    groups: Groups,
    /// The journal row of each group formed, by name ([`Change::Group`]).
    group_keys: BTreeMap<String, u64>,
    /// Requests waiting in a group's rendezvous.
    joins: BTreeMap<String, BTreeSet<RequestId>>,
    /// Requests waiting for more workers.
    node_waits: BTreeSet<RequestId>,
    drains: BTreeMap<NodeId, Drain>,
    /// Queued leases no live node could hold any more, until a fitting node joins or their
    /// deadline.
    stranded: BTreeMap<LeaseId, pending::Stranded>,
    /// The gangs, beside the scheduler's placement of them (`gangs.rs`).
    gangs: BTreeMap<GangId, gangs::GangEntry>,
    /// The autoscaler, when the cluster scales itself (`autoscaling.rs`).
    autoscaling: Option<autoscaling::Autoscaling>,
    /// Usage and cost of every job, actor incarnation and task lease, and every node's time
    /// (`usage.rs`); in memory only, begun with this head life.
    ledger: Ledger,
    out: Vec<Effect>,
    /// Whether-it-fits checks (`could_hold`, `never_fits_anywhere`) made to strand or
    /// unstrand requests, for tests of what a node leaving or joining costs.
    #[cfg(test)]
    pub(super) fit_checks: u64,
}

impl HeadState {
    /// An empty cluster in the first head life, with nothing journaled. A head with a journal
    /// starts with [`HeadState::restore`] instead (an empty journal gives this same state).
    pub fn new(config: Config) -> Self {
        let autoscaling = config.autoscaler.clone().map(autoscaling::Autoscaling::new);
        HeadState {
            config,
            epoch: 1,
            next_id: 1,
            ids_reserved: 0,
            expected: BTreeMap::new(),
            restoring: BTreeMap::new(),
            rejoin_deadline: None,
            next_command: 1,
            next_ticket: 1,
            sched: Scheduler::new(),
            nodes: BTreeMap::new(),
            conns: BTreeMap::new(),
            liveness: BTreeSet::new(),
            work: BTreeMap::new(),
            actors: BTreeMap::new(),
            stopped: BTreeMap::new(),
            requests: BTreeMap::new(),
            commands: BTreeMap::new(),
            probes: BTreeMap::new(),
            io: BTreeMap::new(),
            timers: BTreeSet::new(),
            watchers: BTreeMap::new(),
            groups: Groups::new(),
            group_keys: BTreeMap::new(),
            joins: BTreeMap::new(),
            node_waits: BTreeSet::new(),
            drains: BTreeMap::new(),
            stranded: BTreeMap::new(),
            gangs: BTreeMap::new(),
            autoscaling,
            ledger: Ledger::new(LedgerLimits::default()),
            out: Vec::new(),
            #[cfg(test)]
            fit_checks: 0,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Takes in what arrived at `now` and returns what to do, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Effect> {
        self.ledger.begin(now);
        match input {
            Input::WorkerJoined { conn, hello } => self.worker_joined(now, conn, hello),
            Input::Closed { conn } => self.closed(now, conn),
            Input::Event { node, event } => self.event(now, node, event),
            Input::Heard { node, after } => self.heard_packets(now, after, node),
            Input::Request {
                conn,
                request,
                body,
            } => self.request(now, conn, request, body),
            Input::LeaseReturned { request, lost } => self.lease_returned(now, request, lost),
            Input::Replied { command, reply } => self.replied(now, command, reply),
            Input::CheckpointStored { ticket, result } => self.stored(now, ticket, result),
            Input::CheckpointLoaded { ticket, result } => self.loaded(now, ticket, result),
            Input::Tick => self.tick(now),
            Input::Launched { launch, result } => self.launched(now, launch, result),
        }
        std::mem::take(&mut self.out)
    }

    /// When [`Input::Tick`] is next due, if anything waits on time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.first().map(|(at, _)| *at);
        let timer = match (timer, self.rejoin_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let liveness = self.liveness.first().map(|(at, _)| *at);
        match (timer, liveness) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many workers have joined.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// How many actors exist (alive, starting or dead but not stopped).
    pub fn actor_count(&self) -> usize {
        self.actors.len()
    }

    /// The scheduler, for invariant checks.
    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// The autoscaler, when the cluster scales itself: the nodes it launched (their type, idle
    /// or not, warm, draining) and its launches not joined yet, for the simulation's checks.
    pub fn autoscaler(&self) -> Option<&crate::autoscale::Autoscaler> {
        self.autoscaling.as_ref().map(|a| &a.autoscaler)
    }

    /// How many requests wait for an answer.
    pub fn open_requests(&self) -> usize {
        self.requests.len()
    }

    /// The live incarnation of every actor that has one: `(actor, incarnation, node)`, in id
    /// order.
    pub fn live_incarnations(&self) -> Vec<(ActorId, u32, NodeId)> {
        self.actors
            .iter()
            .filter_map(|(&id, a)| {
                let live = a.life.live()?;
                let node = self.sched.lease(live.lease)?.node;
                Some((id, a.life.incarnation(), node))
            })
            .collect()
    }

    /// The newest recorded checkpoint of an actor.
    pub fn recorded_checkpoint(&self, actor: ActorId) -> Option<u64> {
        self.actors.get(&actor)?.checkpoint.map(|(seq, _)| seq)
    }

    /// Checks that the state agrees with itself: the scheduler's own invariants; every lease
    /// has a record of what it is for and every record a lease (granted or queued); every live
    /// or starting incarnation's lease is that actor's; every open request waits on something
    /// that exists. For tests and the simulation; linear in the state's size.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.sched.check_invariants()?;
        let queued: BTreeSet<LeaseId> = self
            .sched
            .queued()
            .map(|r| r.lease)
            .chain(
                self.work
                    .keys()
                    .copied()
                    .filter(|l| self.sched.bundle_of(*l).is_some()),
            )
            .collect();
        for lease in self
            .sched
            .leases()
            .map(|l| l.id)
            .chain(queued.iter().copied())
        {
            if !self.work.contains_key(&lease) {
                return Err(format!("{lease} is granted or queued for nothing"));
            }
        }
        for (&lease, work) in &self.work {
            let granted = self.sched.lease(lease).is_some();
            if !granted && !queued.contains(&lease) {
                return Err(format!("{lease} ({work:?}) is neither granted nor queued"));
            }
        }
        for (&id, a) in &self.actors {
            let lease = a.life.live().map(|l| l.lease).or(a.start.map(|s| s.lease));
            if let Some(lease) = lease {
                match self.work.get(&lease) {
                    Some(Work::Actor { actor, incarnation })
                        if *actor == id && *incarnation == a.life.incarnation() => {}
                    other => {
                        return Err(format!("{id}'s lease {lease} is filed as {other:?}"));
                    }
                }
            }
            if a.life.live().is_some() && a.start.is_some() {
                return Err(format!("{id} is both alive and starting"));
            }
        }
        for &id in self.restoring.keys() {
            match self.actors.get(&id) {
                Some(a) if a.start.is_none() && a.life.live().is_none() => {}
                other => return Err(format!("{id} is being restored but is {other:?}")),
            }
        }
        let waiting = !self.expected.is_empty() || !self.restoring.is_empty();
        if waiting != self.rejoin_deadline.is_some() {
            return Err(format!(
                "{} nodes expected and {} actors restoring, but the re-join deadline is {:?}",
                self.expected.len(),
                self.restoring.len(),
                self.rejoin_deadline
            ));
        }
        if let Some(node) = self.expected.keys().find(|n| self.nodes.contains_key(n)) {
            return Err(format!("{node} is both expected and joined"));
        }
        if let Some(name) =
            self.groups.names().into_iter().find(|name| {
                self.groups.current(name).is_some() && !self.group_keys.contains_key(name)
            })
        {
            return Err(format!("group `{name}` was formed but has no journal row"));
        }
        if self.next_id > self.ids_reserved {
            return Err(format!(
                "id {} was given out beyond the journaled reservation {}",
                self.next_id - 1,
                self.ids_reserved
            ));
        }
        self.check_stranded()?;
        self.check_usage()?;
        self.check_holders()?;
        for view in self.sched.gangs() {
            if !self.gangs.contains_key(&view.id) && !view.removing {
                return Err(format!("{} is placed for no one", view.id));
            }
        }
        if let Some(gang) = self
            .gangs
            .keys()
            .find(|g| self.sched.gang(**g).is_none_or(|v| v.removing))
        {
            return Err(format!("{gang} is kept but not placed, or being removed"));
        }
        for (request, open) in &self.requests {
            let ok = match &open.wait {
                Wait::Now => false,
                Wait::Lease(l) | Wait::Job(l) => self.work.contains_key(l),
                Wait::Create(a) => self
                    .actors
                    .get(a)
                    .is_some_and(|a| a.create == Some(*request)),
                Wait::Drain(n) => self.drains.contains_key(n),
                Wait::Gang(g) => self
                    .gangs
                    .get(g)
                    .is_some_and(|g| g.create == Some(*request)),
                _ => true,
            };
            if !ok {
                return Err(format!(
                    "{request:?} waits on what is gone: {:?}",
                    open.wait
                ));
            }
        }
        Ok(())
    }

    // ---- ids, effects and timers ----

    /// A fresh id for a node, actor, lease or job. Ids are reserved in the journal a block at
    /// a time (a life's first block as it begins, in [`HeadState::restore`]), so none is given
    /// again by a later head life.
    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if id >= self.ids_reserved {
            self.ids_reserved = id + ID_BLOCK;
            self.journal(Change::IdsReserved(self.ids_reserved));
        }
        id
    }

    /// Asks for a change to be committed before what follows it in this batch goes out.
    fn journal(&mut self, change: Change) {
        self.out.push(Effect::Journal(change));
    }

    /// A connection of this head life, as an owner.
    fn owner(&self, conn: ConnId) -> Owner {
        Owner {
            epoch: self.epoch,
            conn: conn.0,
        }
    }

    /// Sends a command to a worker; its answer comes back as [`Input::Replied`].
    fn command(&mut self, node: NodeId, body: WorkerCommand, purpose: Purpose) -> CommandId {
        let command = CommandId(self.next_command);
        self.next_command += 1;
        self.commands.insert(command, Pending { node, purpose });
        self.out.push(Effect::Command {
            node,
            command,
            body,
        });
        command
    }

    fn ticket(&mut self, io: Io) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.io.insert(ticket, io);
        ticket
    }

    fn arm(&mut self, at: Instant, timer: Timer) {
        self.timers.insert((at, timer));
    }

    /// Sends a frame on a request's stream, keeping it open.
    fn stream(&mut self, request: RequestId, reply: ClientReply) {
        if self.requests.contains_key(&request) {
            self.out.push(Effect::Stream { request, reply });
        }
    }

    /// Gives a request's current wait a deadline (replacing an earlier one).
    fn arm_request(&mut self, request: RequestId, at: Instant) {
        if let Some(open) = self.requests.get_mut(&request) {
            if let Some(old) = open.deadline.replace(at) {
                self.timers.remove(&(old, Timer::Request(request)));
            }
            self.timers.insert((at, Timer::Request(request)));
        }
    }

    /// Forgets an answered request, and its deadline. False if it was answered already.
    fn close_request(&mut self, request: RequestId) -> bool {
        match self.requests.remove(&request) {
            Some(open) => {
                if let Some(at) = open.deadline {
                    self.timers.remove(&(at, Timer::Request(request)));
                }
                true
            }
            None => false,
        }
    }

    /// Answers a request for the last time. A request already answered is left alone, so
    /// every request is answered exactly once.
    fn reply(&mut self, request: RequestId, reply: ClientReply) {
        if self.close_request(request) {
            self.out.push(Effect::Reply { request, reply });
        }
    }

    fn fail(&mut self, request: RequestId, error: RemoteError) {
        self.reply(request, ClientReply::Error(error));
    }

    /// Ends a request's stream with no further frame.
    fn end(&mut self, request: RequestId) {
        if self.close_request(request) {
            self.out.push(Effect::End { request });
        }
    }

    fn set_wait(&mut self, request: RequestId, wait: Wait) {
        if let Some(open) = self.requests.get_mut(&request) {
            open.wait = wait;
        }
    }

    fn watch(&mut self, actor: ActorId, request: RequestId) {
        self.watchers.entry(actor).or_default().insert(request);
    }

    // ---- requests ----

    fn request(&mut self, now: Instant, conn: ConnId, request: RequestId, body: ClientRequest) {
        if self.requests.contains_key(&request) {
            tracing::warn!(?request, "a request id was used twice; ignored");
            return;
        }
        self.requests.insert(
            request,
            Open {
                conn,
                wait: Wait::Now,
                deadline: None,
            },
        );
        match body {
            ClientRequest::LeaseTask(spec) => self.lease_task(now, request, spec),
            ClientRequest::CreateActor(spec) => self.create_actor(now, conn, request, spec),
            ClientRequest::KillActor { actor } => self.kill_request(now, request, actor),
            ClientRequest::HoldActor { actor } => self.hold_request(conn, request, actor),
            ClientRequest::ReleaseActor { actor } => {
                self.release_request(now, conn, request, actor)
            }
            ClientRequest::SubmitJob(spec) => self.submit_job(now, request, spec),
            ClientRequest::Status => {
                let status = self.status(now);
                self.reply(request, ClientReply::Status(Box::new(status)));
            }
            ClientRequest::Usage { since_ms_ago } => {
                let report = self.usage_report(now, since_ms_ago);
                self.reply(request, ClientReply::Usage(Box::new(report)));
            }
            ClientRequest::LocateActor {
                actor,
                known,
                suspect,
                timeout_ms,
            } => self.locate(now, request, actor, known, suspect, ms(timeout_ms)),
            ClientRequest::SaveCheckpoint(save) => self.save_checkpoint(request, save),
            ClientRequest::DrainNode {
                node,
                grace_ms,
                notice,
            } => {
                self.drain(now, node, ms(grace_ms), Some(request), notice);
            }
            ClientRequest::FormGroup { name, members } => {
                self.form_group(now, request, name, members)
            }
            ClientRequest::JoinGroup {
                name,
                actor,
                world,
                timeout_ms,
            } => self.join_group(now, request, name, actor, world, ms(timeout_ms)),
            ClientRequest::GetGroup { name, timeout_ms } => {
                self.get_group(now, request, name, ms(timeout_ms))
            }
            ClientRequest::GroupHealth {
                name,
                generation,
                incarnations,
            } => {
                let broken = self.group_health(&name, generation, &incarnations);
                self.reply(request, ClientReply::GroupHealth { broken });
            }
            ClientRequest::GroupFailed {
                name,
                generation,
                reason,
                suspect,
            } => self.group_failed(now, request, &name, generation, &reason, suspect),
            ClientRequest::CreateGang(spec) => self.create_gang(now, conn, request, spec),
            ClientRequest::RemoveGang { gang } => self.remove_gang_request(now, request, gang),
            ClientRequest::WaitForNodes { count, timeout_ms } => {
                self.wait_for_nodes(now, request, count, ms(timeout_ms))
            }
        }
    }

    /// A client's request whose stream is gone: let go of what it waits for.
    fn abandon(&mut self, now: Instant, request: RequestId) {
        let Some(open) = self.requests.get(&request) else {
            return;
        };
        match open.wait.clone() {
            Wait::Lease(lease) => self.lease_abandoned(now, lease),
            Wait::Job(lease) => self.job_abandoned(lease),
            Wait::Join { group, actor, .. } => {
                self.groups.leave_rendezvous(&group, actor);
                if let Some(waiting) = self.joins.get_mut(&group) {
                    waiting.remove(&request);
                }
            }
            Wait::Nodes { .. } => {
                self.node_waits.remove(&request);
            }
            Wait::Drain(node) => {
                if let Some(d) = self.drains.get_mut(&node) {
                    d.requests.retain(|r| *r != request);
                }
            }
            // A creation dropped before the gang was placed withdraws the gang.
            Wait::Gang(gang) => {
                if let Some(g) = self.gangs.get_mut(&gang) {
                    g.create = None;
                }
                self.remove_gang(now, gang);
            }
            // The rest end by themselves; their answers go nowhere.
            Wait::Now
            | Wait::Create(_)
            | Wait::Kill
            | Wait::Probe { .. }
            | Wait::Locate { .. }
            | Wait::Save
            | Wait::View { .. } => {}
        }
        self.end(request);
    }

    /// A connection closed: a worker's is a node lost (or gone after its drain); a client's
    /// takes its requests with it, and lets go of the actors it held (those nobody else holds
    /// stop).
    fn closed(&mut self, now: Instant, conn: ConnId) {
        if let Some(&node) = self.conns.get(&conn) {
            let why = if self.drains.contains_key(&node) {
                "left"
            } else {
                "died"
            };
            self.node_lost(now, node, why);
            return;
        }
        let requests: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, o)| o.conn == conn)
            .map(|(r, _)| *r)
            .collect();
        for request in requests {
            self.abandon(now, request);
        }
        self.release_all(now, conn);
        self.remove_gangs_of(now, self.owner(conn));
    }

    fn tick(&mut self, now: Instant) {
        if self.rejoin_deadline.is_some_and(|at| at <= now) {
            self.rejoin_window_ended(now);
        }
        while let Some(&(at, node)) = self.liveness.first() {
            if at > now {
                break;
            }
            self.liveness.pop_first();
            if let Some(n) = self.nodes.get(&node) {
                let silent = now.saturating_duration_since(n.last_heard);
                tracing::warn!(%node, "no heartbeat for {silent:?}: declaring the worker dead");
                self.declare_dead(now, node, "missed heartbeats");
            }
        }
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Request(request) => {
                    let due = self.requests.get(&request).and_then(|o| o.deadline);
                    if due == Some(at) {
                        self.request_timed_out(request);
                    }
                }
                Timer::Probe(command) => self.probe_window_ended(now, command),
                Timer::Drain(node) => self.finish_drain(now, node),
                Timer::Unclaimed => self.stop_unclaimed(now),
                Timer::Stranded(lease) => self.stranded_timed_out(now, lease),
                Timer::GangStranded(gang) => self.gang_stranded_timed_out(now, gang),
                Timer::Autoscale => self.autoscale(now),
            }
        }
    }

    /// A request's wait ran out.
    fn request_timed_out(&mut self, request: RequestId) {
        let Some(open) = self.requests.get(&request) else {
            return;
        };
        let error = match open.wait.clone() {
            Wait::Locate { actor, timeout, .. } => RemoteError::new(
                ErrorKind::Timeout,
                format!(
                    "{actor} did not come back within {} ms",
                    timeout.as_millis()
                ),
            ),
            Wait::Join {
                group,
                actor,
                world,
                timeout,
            } => {
                self.groups.leave_rendezvous(&group, actor);
                if let Some(waiting) = self.joins.get_mut(&group) {
                    waiting.remove(&request);
                }
                RemoteError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{actor} waited {} ms to join group `{group}` of {world}: too few joined",
                        timeout.as_millis()
                    ),
                )
            }
            Wait::View {
                group,
                members,
                timeout,
                ..
            } => {
                let (rank, actor) = members
                    .iter()
                    .enumerate()
                    .find(|(_, a)| self.actors.get(a).is_some_and(|a| a.life.live().is_none()))
                    .map(|(r, a)| (r, *a))
                    .unwrap_or((0, members[0]));
                RemoteError::new(
                    ErrorKind::Timeout,
                    format!(
                        "rank {rank} of group `{group}` ({actor}) did not come back within {} ms",
                        timeout.as_millis()
                    ),
                )
            }
            Wait::Nodes { count, timeout } => {
                self.node_waits.remove(&request);
                RemoteError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{} of {count} workers joined within {} ms",
                        self.nodes.len(),
                        timeout.as_millis()
                    ),
                )
            }
            // Waits without deadlines, or a deadline that lapsed with its wait.
            _ => return,
        };
        self.fail(request, error);
    }
}

/// How many ids one journaled reservation covers.
const ID_BLOCK: u64 = 1024;

/// Milliseconds as a duration.
fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The one wording of an actor the head does not know.
fn no_actor(actor: ActorId) -> RemoteError {
    RemoteError::new(
        ErrorKind::Unknown,
        format!("no actor {actor} in the cluster (never created, or stopped)"),
    )
}

/// A reply a command should not have had.
fn unexpected(reply: &ember_core::proto::WorkerReply) -> RemoteError {
    RemoteError::new(
        ErrorKind::Internal,
        format!("worker sent an unexpected reply: {reply:?}"),
    )
}
