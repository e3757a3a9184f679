//! Messages between a worker and its executor processes, on a Unix socket.

use ember_core::ids::{ActorId, LeaseId, NodeId};
use ember_core::proto::{CheckpointPolicy, RemoteError};
use ember_core::resources::Allocation;
use ember_core::security::Fingerprint;
use rkyv::{Archive, Deserialize, Serialize};

/// What the worker asks an executor to do; `id` pairs the reply with it.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub(crate) enum ExecRequest {
    /// Open a task lease: a thread of its own that runs the lease's tasks one at a time,
    /// taking them on a Unix socket of its own and from the executor's QUIC endpoint. The
    /// reply carries an archived [`LeaseEndpoints`](ember_core::proto::LeaseEndpoints).
    OpenLease {
        id: u64,
        lease: LeaseId,
        node: NodeId,
        allocation: Allocation,
        /// The cluster token callers must present.
        token: String,
        /// The address to listen on for callers from elsewhere (the port is chosen by the
        /// system), once per executor.
        listen: String,
        /// The lease's Unix socket.
        socket: String,
    },
    /// Close a task lease once its running task ends; the reply is empty.
    CloseLease { id: u64, lease: LeaseId },
    /// Construct this executor's actor and open its endpoints for direct calls; the reply
    /// carries an archived [`ActorEndpoints`](ember_core::proto::ActorEndpoints).
    CreateActor {
        id: u64,
        actor: ActorId,
        type_name: String,
        args: Vec<u8>,
        node: NodeId,
        allocation: Allocation,
        /// The cluster token callers must present.
        token: String,
        /// The address to listen on for callers (its port is chosen by the system).
        listen: String,
        /// The Unix socket to listen on for callers on this machine.
        socket: String,
        /// Which life of the actor this is.
        incarnation: u32,
        /// When it saves its state.
        checkpoint: CheckpointPolicy,
        /// The checkpoint image to resume from.
        restore: Option<Vec<u8>>,
        /// Where checkpoints go: the head's address and certificate.
        head: String,
        /// The fingerprint of the head's certificate.
        head_fingerprint: Fingerprint,
    },
    /// Stop the actor taking calls and save a final checkpoint; the reply carries the
    /// archived `Option<u64>` sequence number of that checkpoint.
    Seal { id: u64 },
}

impl ExecRequest {
    pub(crate) fn id(&self) -> u64 {
        match self {
            ExecRequest::OpenLease { id, .. }
            | ExecRequest::CloseLease { id, .. }
            | ExecRequest::CreateActor { id, .. }
            | ExecRequest::Seal { id } => *id,
        }
    }
}

/// A request as it travels: with the life of the head whose command it carries out. An
/// executor refuses one of an older life than the newest it has been sent.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub(crate) struct ExecCommand {
    /// The head life (epoch) of the command this request carries out.
    pub(crate) epoch: u64,
    /// What to do.
    pub(crate) request: ExecRequest,
}

/// An executor's answer.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub(crate) struct ExecReply {
    pub(crate) id: u64,
    pub(crate) result: Result<Vec<u8>, RemoteError>,
}
