//! What the head makes durable, as data: the [`Change`]s the state machine asks the shell to
//! commit ([`Effect::Journal`](crate::Effect::Journal)), the records they hold, and the one way
//! a change is written into the journal's tables ([`Change::apply`]) and read back from them
//! ([`Journaled::from_rows`]).
//!
//! The journal holds the current value of each record, keyed by id, never an ever-growing
//! log: a node's row from its join until it leaves, an actor's row from its first incarnation
//! up until it is stopped, the newest recorded checkpoint of each actor, the newest generation
//! of each collective group (groups are never removed), and a few numbers
//! (the head's epoch, how far ids were given out). `ember-head` keeps these tables in `redb`;
//! the simulation keeps them in memory ([`MemoryTables`]); both write them with
//! [`Change::apply`], so there is one way.

mod records;
mod tables;

pub use records::{ActorRecord, CheckpointRecord, GroupRecord, NodeRecord, Owner};
pub use tables::{Journaled, MemoryTables, RecordError, Table, Tables, META_EPOCH, META_IDS};

use ember_core::ids::{ActorId, NodeId};

/// One thing the head makes durable before it promises it.
/// Records hold specs and hellos, which have no equality: tests compare them as `Debug` text.
#[derive(Debug, Clone)]
pub enum Change {
    /// The head started its life number `epoch` (1 for the first).
    Epoch(u64),
    /// Ids below this may have been given out: a later life continues from here, so no id is
    /// given twice.
    IdsReserved(u64),
    /// A worker joined as `node` (or its record changed).
    Node {
        /// The node.
        node: NodeId,
        /// What it offers.
        record: NodeRecord,
    },
    /// A node left or was declared dead.
    NodeGone {
        /// The node.
        node: NodeId,
    },
    /// An actor came up, or its life changed (a new incarnation, a restart, its death).
    Actor {
        /// The actor.
        actor: ActorId,
        /// Its current record.
        record: ActorRecord,
    },
    /// An actor was stopped for good: its row and its checkpoint's go.
    ActorGone {
        /// The actor.
        actor: ActorId,
    },
    /// A checkpoint was recorded as an actor's newest (or, when newer ones were found
    /// damaged, an older one is its newest again).
    Checkpoint {
        /// The actor.
        actor: ActorId,
        /// The checkpoint.
        record: CheckpointRecord,
    },
    /// Every checkpoint of an actor was found damaged: it has none.
    CheckpointGone {
        /// The actor.
        actor: ActorId,
    },
    /// A collective group's new generation was formed, or its generation was broken.
    Group {
        /// The group's row: a number given to its name when it was first formed (the names
        /// themselves are in the records).
        key: u64,
        /// Its newest generation.
        record: GroupRecord,
    },
}
