//! Every message Ember sends. Each exchange is one QUIC stream: the opener writes a request,
//! the other side answers with one reply or, for jobs, a sequence of events.

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::{ActorId, GangId, JobId, LeaseId, NodeId};
use crate::resources::{Allocation, GpuStat, ResourceDemand};
use crate::security::Fingerprint;

use super::{
    CheckpointPolicy, CheckpointSave, ClusterStatus, GangStrategy, GroupView, LeaseEndpoints,
    Placement, RestartPolicy, TaskLease, UsageReport,
};

/// What a task lease is for: tasks of one function with one set of needs.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct LeaseSpec {
    /// The registered name of the task function.
    pub name: String,
    /// The needs of each task, held for the lease's life.
    pub placement: Placement,
}

/// An actor to create.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct ActorSpec {
    /// The registered name of the actor type.
    pub type_name: String,
    /// The archived constructor arguments.
    pub args: Vec<u8>,
    /// Its needs, held for the actor's life.
    pub placement: Placement,
    /// Whether and how often it comes back when its process dies.
    pub restart: RestartPolicy,
    /// When it saves its state.
    pub checkpoint: CheckpointPolicy,
}

/// A command to run as a batch job.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct JobSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Its needs, held while it runs.
    pub placement: Placement,
}

/// A gang (placement group) to create: bundles of resources placed all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct GangSpec {
    /// What each bundle reserves, in bundle order.
    pub bundles: Vec<ResourceDemand>,
    /// How the bundles are spread over nodes.
    pub strategy: GangStrategy,
    /// Order among waiting gangs: higher first.
    pub priority: i32,
    /// How long, in milliseconds, it keeps waiting once no set of live nodes could ever hold
    /// it (a node it needed left) before it fails naming why. `None`: the head's default.
    pub pending_timeout_ms: Option<u64>,
}

/// What a client asks of the head.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Lease resources for running tasks, one at a time, straight on an executor; answered
    /// with [`ClientReply::TaskLeased`] or an error. The lease is held while this stream stays
    /// open: the client gives it back by finishing its side, or by resetting it with
    /// [`LEASE_LOST`](super::LEASE_LOST) when it lost the lease's executor. A lease the head
    /// takes back (its node drains) ends with an error frame on the stream.
    LeaseTask(LeaseSpec),
    /// Create an actor; answered with [`ClientReply::ActorCreated`] or an error.
    CreateActor(ActorSpec),
    /// Stop an actor and free its resources, whoever holds it.
    KillActor {
        /// Which.
        actor: ActorId,
    },
    /// This connection holds the actor: it lives while any connection holds it (the one that
    /// created it holds it from its creation), and stops once the last holder releases it or
    /// closes. Holding twice is holding once. Answered with [`ClientReply::ActorHeld`], or an
    /// error if the head does not know the actor. After a head restart, holding an actor of
    /// the last life claims it, as locating it does.
    HoldActor {
        /// Which.
        actor: ActorId,
    },
    /// This connection no longer holds the actor; it stops if nobody else holds it.
    /// Releasing what is not held (or gone) does nothing. Answered with
    /// [`ClientReply::ActorReleased`].
    ReleaseActor {
        /// Which.
        actor: ActorId,
    },
    /// Run a job; answered with a stream of [`ClientReply::Job`] events.
    SubmitJob(JobSpec),
    /// The cluster's state; answered with [`ClientReply::Status`].
    Status,
    /// Where an actor takes calls now: answered with [`ClientReply::ActorLocated`] once an
    /// incarnation newer than `known` is up (at once if one is), or with an error if the actor
    /// is dead or `timeout_ms` passes while it restarts.
    LocateActor {
        /// Which.
        actor: ActorId,
        /// The incarnation the caller last reached (0 for none).
        known: u32,
        /// The caller lost its connection to incarnation `known`: the head checks that
        /// incarnation's worker at once rather than waiting for missed heartbeats.
        suspect: bool,
        /// How long to wait for a restart, in milliseconds.
        timeout_ms: u64,
    },
    /// Record a checkpoint (sent by the process hosting the actor); answered with
    /// [`ClientReply::CheckpointSaved`] once it is durable.
    SaveCheckpoint(CheckpointSave),
    /// Stop placing work on a node, move its actors elsewhere from fresh checkpoints, and let
    /// it leave once its tasks end (or the grace period does); answered with
    /// [`ClientReply::Drained`].
    DrainNode {
        /// Which.
        node: NodeId,
        /// How long its running tasks may take to finish, in milliseconds.
        grace_ms: u64,
        /// The node is going away within the grace whatever happens (a spot interruption
        /// notice): an autoscaled cluster launches its replacement at once.
        notice: bool,
    },
    /// Form a new generation of a collective group from these actors, in rank order; answered
    /// with [`ClientReply::Group`].
    FormGroup {
        /// The group's name.
        name: String,
        /// Its members, in rank order.
        members: Vec<ActorId>,
    },
    /// An actor joins the next generation of a group, which forms once `world` actors have
    /// joined (ranks follow actor ids); answered with [`ClientReply::Group`] then, or with an
    /// error after `timeout_ms`.
    JoinGroup {
        /// The group's name.
        name: String,
        /// The joining actor.
        actor: ActorId,
        /// How many members the generation has.
        world: u32,
        /// How long to wait for the others, in milliseconds.
        timeout_ms: u64,
    },
    /// The newest generation of a group, answered with [`ClientReply::Group`] once every
    /// member is alive (waiting up to `timeout_ms` for members that restart).
    GetGroup {
        /// The group's name.
        name: String,
        /// How long to wait for restarting members, in milliseconds.
        timeout_ms: u64,
    },
    /// Is this generation of the group still whole (every member alive in the incarnation it
    /// had, and no newer generation)? Answered with [`ClientReply::GroupHealth`]. Members ask
    /// while an operation waits on a peer, so a dead peer is an error within a bounded time.
    GroupHealth {
        /// The group's name.
        name: String,
        /// The generation in use.
        generation: u64,
        /// The incarnation of each member in rank order, as the generation was looked up.
        incarnations: Vec<u32>,
    },
    /// A member's operation in this generation of the group failed (sent by the member):
    /// the head marks the generation broken, so members still waiting fail too, and probes
    /// the worker of the `suspect` rank whose link broke. Answered with
    /// [`ClientReply::GroupHealth`].
    GroupFailed {
        /// The group's name.
        name: String,
        /// The generation in use.
        generation: u64,
        /// What happened, as the member saw it.
        reason: String,
        /// The rank whose link broke, if that was the failure.
        suspect: Option<u32>,
    },
    /// Create a gang; answered with [`ClientReply::GangCreated`] once every bundle is placed
    /// (waiting, holding nothing, while it does not fit whole), or with an error at once when
    /// no set of nodes could ever hold it. The gang belongs to this connection: it is removed
    /// when the connection closes, placed or still waiting.
    CreateGang(GangSpec),
    /// Remove a gang: what waits in it fails, the tasks and actors running in it are stopped,
    /// and each bundle's resources return once its work has stopped. Answered with
    /// [`ClientReply::GangRemoved`].
    RemoveGang {
        /// Which.
        gang: GangId,
    },
    /// Answered once at least `count` workers have joined, or with an error after the timeout.
    WaitForNodes {
        /// How many workers.
        count: u32,
        /// How long to wait at most, in milliseconds.
        timeout_ms: u64,
    },
    /// The usage ledger: each job, actor incarnation and task lease that held resources in
    /// the window, and each node's time split into allocated, idle and warm; answered with
    /// [`ClientReply::Usage`].
    Usage {
        /// Where the window starts, in milliseconds before the head answers (the client turns
        /// a date into this with its own clock); `None`: everything the head has.
        since_ms_ago: Option<u64>,
    },
}

/// What the head answers a client.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub enum ClientReply {
    /// A task lease was granted: send tasks to the executor at its endpoints.
    TaskLeased(TaskLease),
    /// The actor is up; calls go straight to its worker.
    ActorCreated(ActorLocation),
    /// The actor is gone and its resources are free.
    ActorKilled,
    /// This connection holds the actor.
    ActorHeld,
    /// This connection no longer holds the actor.
    ActorReleased,
    /// Where an actor takes calls now.
    ActorLocated(ActorLocation),
    /// The checkpoint is recorded durably.
    CheckpointSaved {
        /// Its sequence number.
        seq: u64,
    },
    /// The node drained: how many actors moved off it.
    Drained {
        /// Actors moved to other nodes.
        moved: u32,
    },
    /// One event of a job.
    Job(JobEvent),
    /// The cluster's state.
    Status(Box<ClusterStatus>),
    /// The usage ledger over the window asked for.
    Usage(Box<UsageReport>),
    /// A generation of a collective group.
    Group(GroupView),
    /// Whether a generation of a group is whole: `None` when it is, or why it is not.
    GroupHealth {
        /// Why the generation can no longer complete an operation.
        broken: Option<String>,
    },
    /// The gang is placed whole: its id and the node of each bundle, in bundle order.
    GangCreated {
        /// Its id, for running work in its bundles and removing it.
        gang: GangId,
        /// Each bundle's node.
        nodes: Vec<NodeId>,
    },
    /// The gang is removed.
    GangRemoved,
    /// Enough workers have joined.
    NodesReady {
        /// How many are in the cluster now.
        count: u32,
    },
    /// The request failed.
    Error(RemoteError),
}

/// Where the process hosting an actor takes calls: a QUIC endpoint from anywhere, and a Unix
/// socket from the same machine.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ActorEndpoints {
    /// The address of the actor's QUIC endpoint.
    pub peer_addr: String,
    /// The certificate fingerprint that endpoint presents.
    pub peer_fingerprint: Fingerprint,
    /// The machine it runs on (see [`crate::host::host_id`]).
    pub host: String,
    /// The Unix socket that callers on the same machine may use instead.
    pub local_socket: String,
    /// The Unix socket where members of its collective groups on the same machine link to it.
    pub mesh_socket: String,
}

/// Where an actor lives, for direct calls to the process hosting it.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ActorLocation {
    /// The actor.
    pub actor: ActorId,
    /// Which life of the actor this is: 1 when created, one more at each restart or move.
    pub incarnation: u32,
    /// Its node.
    pub node: NodeId,
    /// Where it takes calls.
    pub endpoints: ActorEndpoints,
    /// What it was given.
    pub allocation: Allocation,
    /// Its restart policy, which tells callers whether to retry a call lost with its process.
    pub restart: RestartPolicy,
}

/// One event in a job's life.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub enum JobEvent {
    /// Not placed yet, and why: the head sends it when the job starts waiting and each time
    /// the reason changes (waiting for capacity, or no live node could ever hold it).
    Waiting(WaitReason),
    /// Placed and started.
    Started {
        /// The job.
        job: JobId,
        /// Where it runs.
        node: NodeId,
        /// What it was given.
        allocation: Allocation,
    },
    /// Bytes the command wrote to its standard output.
    Stdout(Vec<u8>),
    /// Bytes the command wrote to its standard error.
    Stderr(Vec<u8>),
    /// The command ended with this exit code (128 + signal number when killed by a signal).
    Exited(i32),
}

/// Why a request waits instead of running.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WaitReason {
    /// False: it fits a live node once capacity frees there. True: no live node could ever
    /// hold it (for instance its only fitting node left), and it fails in `fails_in_ms` unless
    /// a node that fits joins first.
    pub infeasible: bool,
    /// The reason in words, naming what is missing when infeasible.
    pub reason: String,
    /// When infeasible: milliseconds until it fails.
    pub fails_in_ms: Option<u64>,
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.infeasible {
            write!(f, "infeasible: {}", self.reason)?;
            if let Some(ms) = self.fails_in_ms {
                write!(
                    f,
                    " (fails in {:.1} s unless a node that fits joins)",
                    ms as f64 / 1e3
                )?;
            }
            Ok(())
        } else {
            write!(f, "waiting for resources: {}", self.reason)
        }
    }
}

/// The kind of a failure, so that a caller can decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum ErrorKind {
    /// No node of the cluster could ever satisfy the request.
    Infeasible,
    /// No worker has the task or actor type, or no such actor exists.
    Unknown,
    /// The user's code returned an error or panicked.
    User,
    /// The worker running it died or left.
    WorkerDied,
    /// The actor moved (a drain, or a newer incarnation took over) and did not run the call:
    /// ask the head where it is and send the call there.
    Moved,
    /// The request was malformed or not allowed.
    BadRequest,
    /// The token was wrong.
    Unauthorized,
    /// Waited too long.
    Timeout,
    /// Something failed inside Ember.
    Internal,
}

/// A failure reported to the party whose request caused it.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A message for humans, naming what was wrong.
    pub message: String,
}

impl RemoteError {
    /// A failure of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RemoteError {
            kind,
            message: message.into(),
        }
    }
}

/// A command as it travels: with the life (epoch) of the head that sends it, so a worker
/// refuses one from an older head life than the one it joined under.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct EpochCommand {
    /// The sending head's epoch (see [`crate::proto::WorkerTerms`]).
    pub epoch: u64,
    /// The command.
    pub command: WorkerCommand,
}

/// What the head asks of a worker, each on its own stream.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub enum WorkerCommand {
    /// Open a task lease on the executor for this allocation's GPUs; answered with
    /// [`WorkerReply::LeaseOpened`] or an error.
    OpenLease {
        /// The lease.
        lease: LeaseId,
        /// What its tasks are given.
        allocation: Allocation,
    },
    /// Close a task lease once its running task (if any) ends; answered with
    /// [`WorkerReply::LeaseClosed`]. Tasks sent later are told it moved.
    CloseLease {
        /// Which.
        lease: LeaseId,
    },
    /// Start an actor; answered with [`WorkerReply::ActorReady`] or an error.
    CreateActor {
        /// The actor.
        actor: ActorId,
        /// Its registered type.
        type_name: String,
        /// Archived constructor arguments.
        args: Vec<u8>,
        /// What it was given.
        allocation: Allocation,
        /// Which life of the actor this is.
        incarnation: u32,
        /// When it saves its state.
        checkpoint: CheckpointPolicy,
        /// The checkpoint image to resume from instead of constructing it anew.
        restore: Option<Vec<u8>>,
    },
    /// Stop one incarnation of an actor (a newer one of the same actor on this worker is left
    /// alone); answered with [`WorkerReply::ActorKilled`].
    KillActor {
        /// Which actor.
        actor: ActorId,
        /// Which incarnation.
        incarnation: u32,
    },
    /// Is this incarnation of the actor still running here? Answered with
    /// [`WorkerReply::Probed`]; the head asks when a caller lost its connection.
    Probe {
        /// Which actor.
        actor: ActorId,
        /// Which incarnation.
        incarnation: u32,
    },
    /// Stop taking calls, save a final checkpoint, then exit; answered with
    /// [`WorkerReply::Sealed`]. Calls that arrive later are told the actor moved.
    SealActor {
        /// Which.
        actor: ActorId,
    },
    /// Run a job; answered with a stream of [`WorkerReply::Job`] events ending in `Exited`.
    RunJob {
        /// The job.
        job: JobId,
        /// Program and arguments.
        command: Vec<String>,
        /// Extra environment.
        env: Vec<(String, String)>,
        /// What it was given.
        allocation: Allocation,
    },
}

/// A worker's answer to a [`WorkerCommand`].
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub enum WorkerReply {
    /// The lease is open at these endpoints.
    LeaseOpened(LeaseEndpoints),
    /// The lease is closed and no task of it runs.
    LeaseClosed,
    /// The actor is constructed and takes calls directly at its own endpoints.
    ActorReady(ActorEndpoints),
    /// The actor is stopped.
    ActorKilled,
    /// Whether the probed incarnation runs here.
    Probed {
        /// True when it does.
        alive: bool,
    },
    /// The actor took its final checkpoint and stopped taking calls.
    Sealed {
        /// The checkpoint's sequence number, `None` when its type cannot checkpoint.
        seq: Option<u64>,
    },
    /// One event of a job.
    Job(JobEvent),
    /// It failed.
    Error(RemoteError),
}

impl WorkerReply {
    /// False only for a job's events before its last: a command is answered when a final
    /// reply arrives.
    pub fn is_final(&self) -> bool {
        !matches!(self, WorkerReply::Job(ev) if !matches!(ev, JobEvent::Exited(_)))
    }
}

/// What a worker tells the head unasked, in order, on one long-lived stream of its own.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub enum WorkerEvent {
    /// Liveness and live GPU figures.
    Heartbeat {
        /// One entry per GPU.
        gpus: Vec<GpuStat>,
    },
    /// An actor's process ended without being asked to.
    ActorExited {
        /// Which.
        actor: ActorId,
        /// Which incarnation.
        incarnation: u32,
        /// Why, for the log and the actor's callers.
        reason: String,
    },
    /// The worker is leaving on purpose (Ctrl-C, SIGTERM): the head drains it (its actors
    /// move, its tasks get `grace_ms` to finish) and then closes its connection.
    Leaving {
        /// How long its running tasks may take to finish, in milliseconds.
        grace_ms: u64,
    },
}

/// A call from a client straight to the process hosting an actor.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct ActorCall {
    /// The actor.
    pub actor: ActorId,
    /// Who calls: chosen at random by each handle, so that with `seq` it names the call.
    pub caller: u64,
    /// The caller's number for this call. A call sent again after its actor restarted carries
    /// the same pair, and an actor whose checkpoint already holds its effect answers it from
    /// the recorded reply instead of running it twice.
    pub seq: u64,
    /// The method's name.
    pub method: String,
    /// Archived arguments.
    pub args: Vec<u8>,
}

/// The answer to an [`ActorCall`]: the archived result or the failure.
pub type CallReply = Result<Vec<u8>, RemoteError>;

/// An [`ActorCall`] on a same-machine socket, where calls share one stream: `id` pairs it with
/// its [`LocalReply`].
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct LocalCall {
    /// Chosen by the caller, unique among its calls in flight.
    pub id: u64,
    /// The call.
    pub call: ActorCall,
}

/// The `id` of the [`LocalReply`] a same-machine socket sends last, when its owner stops
/// taking calls (an actor sealed for a move, a task lease closed): no request on the stream
/// that was not answered before it ran, and none sent after it will. Callers number their
/// requests from 1.
pub const CLOSING_REPLY_ID: u64 = 0;

/// The answer to a [`LocalCall`].
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct LocalReply {
    /// The id of the call answered.
    pub id: u64,
    /// Its result.
    pub reply: CallReply,
}
