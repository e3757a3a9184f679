//! Task leases: the head grants a client resources on a worker, and the client then sends its
//! tasks straight to the executor holding them, one at a time, with no head or worker agent on
//! the path.

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::{LeaseId, NodeId};
use crate::resources::Allocation;
use crate::security::Fingerprint;

/// The error code with which a client resets its side of a lease's stream when it lost the
/// lease's executor (its process or its worker died): the head then probes that worker.
pub const LEASE_LOST: u32 = 1;

/// A granted task lease.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct TaskLease {
    /// The lease, which every task sent on it names.
    pub lease: LeaseId,
    /// The node holding it.
    pub node: NodeId,
    /// What its tasks are given.
    pub allocation: Allocation,
    /// Where its executor takes tasks.
    pub endpoints: LeaseEndpoints,
}

/// Where an executor takes the tasks of one lease: a QUIC endpoint from anywhere, and a Unix
/// socket of the lease's own from the same machine.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LeaseEndpoints {
    /// The address of the executor's QUIC endpoint.
    pub peer_addr: String,
    /// The certificate fingerprint that endpoint presents.
    pub peer_fingerprint: Fingerprint,
    /// The machine it runs on (see [`crate::host::host_id`]).
    pub host: String,
    /// The lease's Unix socket, for callers on the same machine.
    pub local_socket: String,
}

/// A task sent straight to the executor holding its lease; answered with a
/// [`CallReply`](super::CallReply).
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct LeasedTask {
    /// The lease it runs on.
    pub lease: LeaseId,
    /// The registered name of the task function.
    pub name: String,
    /// Archived arguments.
    pub args: Vec<u8>,
}

/// A [`LeasedTask`] on a lease's Unix socket, where tasks share one stream: `id` pairs it with
/// its [`LocalReply`](super::LocalReply).
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct LocalTask {
    /// Chosen by the caller, unique among its tasks in flight.
    pub id: u64,
    /// The task.
    pub task: LeasedTask,
}
