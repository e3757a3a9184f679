//! Messages between a worker and its executor processes, on a Unix socket.

use ember_runtime::ids::{ActorId, NodeId};
use ember_runtime::proto::{CheckpointPolicy, RemoteError};
use ember_runtime::resources::Allocation;
use ember_runtime::security::Fingerprint;
use rkyv::{Archive, Deserialize, Serialize};

/// What the worker asks an executor to do; `id` pairs the reply with it.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub(crate) enum ExecRequest {
    /// Run a registered task function.
    RunTask {
        id: u64,
        name: String,
        args: Vec<u8>,
        node: NodeId,
        allocation: Allocation,
    },
    /// Construct this executor's actor and open its endpoints for direct calls; the reply
    /// carries an archived [`ActorEndpoints`](ember_runtime::proto::ActorEndpoints).
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
            ExecRequest::RunTask { id, .. }
            | ExecRequest::CreateActor { id, .. }
            | ExecRequest::Seal { id } => *id,
        }
    }
}

/// An executor's answer.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub(crate) struct ExecReply {
    pub(crate) id: u64,
    pub(crate) result: Result<Vec<u8>, RemoteError>,
}
