//! The records the journal keeps, archived with `rkyv` (checked when read back).

use ember_core::ids::{ActorId, NodeId};
use ember_core::proto::{ActorSpec, WorkerHello};
use rkyv::{Archive, Deserialize, Serialize};

/// A joined node: what its worker said when it joined.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its worker's hello: name, resources, types, address.
    pub hello: WorkerHello,
}

/// The client connection that created an actor: a connection of one head life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Archive, Serialize, Deserialize)]
pub struct Owner {
    /// The head life (epoch) the connection belonged to.
    pub epoch: u64,
    /// The connection's number in that life.
    pub conn: u64,
}

/// An actor the head acknowledged, as it stands.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct ActorRecord {
    /// What was asked: type, arguments, needs, restart and checkpoint policies.
    pub spec: ActorSpec,
    /// Who created it.
    pub owner: Owner,
    /// Its current incarnation (alive, or being started).
    pub incarnation: u32,
    /// Restarts after losses so far.
    pub restarts: u32,
    /// The node its current incarnation runs on; `None` while it is being started.
    pub node: Option<NodeId>,
    /// Why it is dead for good, if it is.
    pub dead: Option<String>,
}

/// An actor's newest recorded checkpoint. Where it lies follows from the actor, `seq` and
/// `sha256` (the checkpoint store names it by them).
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Its sequence number.
    pub seq: u64,
    /// The SHA-256 of its image.
    pub sha256: [u8; 32],
}

/// A collective group's newest generation, as it stands: what a later head life needs to go
/// on answering its members (their views and whether the generation is whole) and to number
/// the group's next generation past every one handed out.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group's name.
    pub name: String,
    /// Its newest generation (generations count formations of the name, from 1).
    pub generation: u64,
    /// That generation's members; a member's rank is its index.
    pub members: Vec<ActorId>,
    /// Why that generation can no longer complete an operation, once a member said.
    pub broken: Option<String>,
}
