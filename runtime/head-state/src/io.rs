//! What goes into the head's state machine and what comes out of it.
//!
//! The shell numbers connections and requests as they arrive ([`ConnId`], [`RequestId`]);
//! the state numbers what it asks of others ([`CommandId`] for commands to workers,
//! [`Ticket`] for checkpoint I/O). Every [`Effect::Command`] is answered by the shell with
//! [`Input::Replied`] (an error when the worker is gone), every checkpoint effect with its
//! input, and every request gets exactly one final effect ([`Effect::Reply`] or
//! [`Effect::End`]).
//!
//! # Acknowledged means committed
//!
//! What the state promises (a welcome, a created actor, a recorded checkpoint) it first asks
//! to be made durable with [`Effect::Journal`], earlier in the same batch of effects (one call
//! of [`HeadState::handle`](crate::HeadState::handle)) than the effect that promises it. The
//! shell commits every `Journal` effect of a batch, in order and in one transaction, before it
//! carries out any other effect of that batch; it may handle several inputs and commit their
//! batches together (group commit), still before carrying out any of their other effects. A
//! commit that fails stops the head: nothing it promised in that batch goes out.

use std::time::Instant;

use ember_core::ids::{ActorId, NodeId};

use crate::journal::Change;
use ember_core::proto::{
    ClientReply, ClientRequest, ErrorKind, RemoteError, WorkerCommand, WorkerEvent, WorkerHello,
    WorkerReply,
};

/// A connection to the head, numbered by the shell; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// One request of a client (one QUIC stream), numbered by the shell; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// One command to a worker, numbered by the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(pub u64);

/// One piece of checkpoint I/O, numbered by the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// A checkpoint read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCheckpoint {
    /// Its sequence number.
    pub seq: u64,
    /// The image, as saved.
    pub image: Vec<u8>,
}

/// What arrived.
#[derive(Debug, Clone)]
pub enum Input {
    /// A worker presented a valid hello (token and version already checked) on `conn`.
    WorkerJoined {
        /// Its connection.
        conn: ConnId,
        /// What it offers.
        hello: Box<WorkerHello>,
    },
    /// A connection closed, whoever closed it: a worker's (it left or died) or a client's.
    Closed {
        /// Which.
        conn: ConnId,
    },
    /// A worker told the head something unasked.
    Event {
        /// The worker.
        node: NodeId,
        /// What.
        event: WorkerEvent,
    },
    /// Packets arrived from a worker's transport since the shell last looked, at `after`: it
    /// is alive even if its heartbeats wait in line behind bulk data, and its heartbeat
    /// deadline runs from now. The shell looks from time to time, so the packets may be older
    /// than the input: only `after` is known of when they came, so a probe sent after `after`
    /// is not answered by them.
    Heard {
        /// The worker.
        node: NodeId,
        /// When the shell looked before: the packets arrived later than this.
        after: Instant,
    },
    /// A client's request, on a stream of its own.
    Request {
        /// The client's connection: the owner of what the request creates.
        conn: ConnId,
        /// The stream.
        request: RequestId,
        /// What it asks.
        body: ClientRequest,
    },
    /// The client ended its side of a task lease's stream: it gives the lease back. `lost`
    /// when it reset it because it lost the lease's executor.
    LeaseReturned {
        /// The lease's request.
        request: RequestId,
        /// The client lost the executor: closing the lease doubles as a probe of its worker.
        lost: bool,
    },
    /// A worker answered a command, or the shell could not deliver it (`Err`: the worker is
    /// gone). A job's command is answered by several replies: every [`WorkerReply::Job`]
    /// event but the last is not final (see [`WorkerReply::is_final`]).
    Replied {
        /// The command.
        command: CommandId,
        /// The reply.
        reply: Result<WorkerReply, RemoteError>,
    },
    /// A checkpoint was written (or could not be).
    CheckpointStored {
        /// The [`Effect::StoreCheckpoint`] it answers.
        ticket: Ticket,
        /// `Err` with why it could not be written.
        result: Result<(), String>,
    },
    /// The newest valid checkpoint of an actor was read (`None`: it has none).
    CheckpointLoaded {
        /// The [`Effect::LoadCheckpoint`] it answers.
        ticket: Ticket,
        /// `Err` with why it could not be read.
        result: Result<Option<LoadedCheckpoint>, String>,
    },
    /// Time passed: the deadline from [`HeadState::poll_timeout`](crate::HeadState::poll_timeout)
    /// came.
    Tick,
    /// The node provider answered an [`Effect::LaunchNode`]: the launch is under way as
    /// `instance` (the provider's name for its machine, process, Slurm job or pod), or it
    /// could not be started, and why.
    Launched {
        /// The launch.
        launch: u64,
        /// The instance, or why there is none.
        result: Result<String, String>,
    },
}

/// What the shell is to do.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Accept the worker on `conn` as `node`.
    Welcome {
        /// Its connection.
        conn: ConnId,
        /// Its node id.
        node: NodeId,
    },
    /// Send a command to a worker and feed its replies back as [`Input::Replied`].
    Command {
        /// The worker.
        node: NodeId,
        /// The command's number.
        command: CommandId,
        /// What.
        body: WorkerCommand,
    },
    /// Stop a command whose replies still stream (a job whose client left): the worker ends
    /// it, and its last reply still comes.
    Cancel {
        /// Which.
        command: CommandId,
    },
    /// Send one frame on a request's stream and keep the stream open (a granted task lease,
    /// a job's events).
    Stream {
        /// The request.
        request: RequestId,
        /// The frame.
        reply: ClientReply,
    },
    /// Answer a request with its last frame and end its stream.
    Reply {
        /// The request.
        request: RequestId,
        /// The frame.
        reply: ClientReply,
    },
    /// End a request's stream with no further frame (a task lease given back).
    End {
        /// The request.
        request: RequestId,
    },
    /// Close a worker's connection: the state has already forgotten the node (it drained, or
    /// it was declared dead).
    CloseNode {
        /// The worker.
        node: NodeId,
        /// Why, for its log.
        reason: String,
    },
    /// Write a checkpoint durably, then answer with [`Input::CheckpointStored`].
    StoreCheckpoint {
        /// The answer's ticket.
        ticket: Ticket,
        /// The actor.
        actor: ActorId,
        /// Its sequence number.
        seq: u64,
        /// The SHA-256 of the image, which names it in the store.
        sha256: [u8; 32],
        /// The image.
        image: Vec<u8>,
    },
    /// Read the newest valid checkpoint of an actor, then answer with
    /// [`Input::CheckpointLoaded`].
    LoadCheckpoint {
        /// The answer's ticket.
        ticket: Ticket,
        /// The actor.
        actor: ActorId,
    },
    /// Delete every checkpoint of an actor that is gone for good.
    ForgetCheckpoints {
        /// The actor.
        actor: ActorId,
    },
    /// Ask the node provider for a node of this type; the worker it starts says `launch` in
    /// its hello ([`LaunchTicket`](ember_core::proto::LaunchTicket)).
    LaunchNode {
        /// The launch's number.
        launch: u64,
        /// The node type.
        node_type: String,
    },
    /// Stop a node the provider started: a launch given up (it never joined in time), or a
    /// node the autoscaler let go once it has left.
    StopNode {
        /// The launch it answered.
        launch: u64,
        /// The provider's instance, as [`Input::Launched`] named it.
        instance: String,
    },
    /// Make a change durable: committed, with every other `Journal` effect of its batch,
    /// before any other effect of the batch is carried out (see the module's docs).
    Journal(Change),
}

/// The error a command is answered with when its worker is gone before answering: what the
/// shell feeds back as [`Input::Replied`] then, and what the state tells those who waited.
pub fn died(node: NodeId) -> RemoteError {
    RemoteError::new(
        ErrorKind::WorkerDied,
        format!("worker {node} died or left before answering"),
    )
}
