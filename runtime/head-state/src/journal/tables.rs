//! The journal's tables as rows (`table`, `u64` key, bytes), how a [`Change`] becomes rows,
//! and how rows become a [`Journaled`] again. Any store of rows implements [`Tables`].

use std::collections::BTreeMap;

use ember_core::ids::{ActorId, NodeId};
use ember_core::proto::{decode, encode, Wire};

use super::{ActorRecord, Change, CheckpointRecord, GroupRecord, NodeRecord};

/// The journal's tables. Every row is keyed by a `u64`: an id, or a `META_*` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Joined nodes: [`NodeRecord`] by node id.
    Nodes,
    /// Acknowledged actors: [`ActorRecord`] by actor id.
    Actors,
    /// Each actor's newest recorded checkpoint: [`CheckpointRecord`] by actor id.
    Checkpoints,
    /// Collective groups: [`GroupRecord`] by the key given to the group's name.
    Groups,
    /// Numbers, little-endian `u64`, by `META_*` key.
    Meta,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 5] = [
        Table::Nodes,
        Table::Actors,
        Table::Checkpoints,
        Table::Groups,
        Table::Meta,
    ];

    /// Its name in a store.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nodes => "nodes",
            Table::Actors => "actors",
            Table::Checkpoints => "checkpoints",
            Table::Groups => "groups",
            Table::Meta => "meta",
        }
    }
}

/// The key in [`Table::Meta`] of the head's epoch.
pub const META_EPOCH: u64 = 1;
/// The key in [`Table::Meta`] of how far ids were given out ([`Change::IdsReserved`]).
pub const META_IDS: u64 = 2;

/// A row that could not be made or read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A record could not be archived.
    #[error("cannot archive a journal record: {0}")]
    Encode(String),
    /// A row is not a valid record of its table: the journal is damaged.
    #[error("row {key} of table `{table}` is not a valid record: {reason}")]
    Decode {
        /// The table's name.
        table: &'static str,
        /// The row's key.
        key: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Somewhere rows are written: a `redb` write transaction, or memory.
pub trait Tables {
    /// Why a write failed.
    type Error: From<RecordError>;
    /// Sets the row `key` of `table`.
    fn put(&mut self, table: Table, key: u64, value: &[u8]) -> Result<(), Self::Error>;
    /// Removes the row `key` of `table`, if there is one.
    fn remove(&mut self, table: Table, key: u64) -> Result<(), Self::Error>;
}

fn archive<T: Wire>(value: &T) -> Result<Vec<u8>, RecordError> {
    encode(value)
        .map(|bytes| bytes.to_vec())
        .map_err(|e| RecordError::Encode(e.to_string()))
}

impl Change {
    /// Writes this change into `tables`: the one way a change is made durable.
    pub fn apply<T: Tables>(&self, tables: &mut T) -> Result<(), T::Error> {
        match self {
            Change::Epoch(epoch) => tables.put(Table::Meta, META_EPOCH, &epoch.to_le_bytes()),
            Change::IdsReserved(below) => tables.put(Table::Meta, META_IDS, &below.to_le_bytes()),
            Change::Node { node, record } => tables.put(Table::Nodes, node.0, &archive(record)?),
            Change::NodeGone { node } => tables.remove(Table::Nodes, node.0),
            Change::Actor { actor, record } => {
                tables.put(Table::Actors, actor.0, &archive(record)?)
            }
            Change::ActorGone { actor } => {
                tables.remove(Table::Actors, actor.0)?;
                tables.remove(Table::Checkpoints, actor.0)
            }
            Change::Checkpoint { actor, record } => {
                tables.put(Table::Checkpoints, actor.0, &archive(record)?)
            }
            Change::CheckpointGone { actor } => tables.remove(Table::Checkpoints, actor.0),
            Change::Group { key, record } => tables.put(Table::Groups, *key, &archive(record)?),
        }
    }
}

/// What a journal holds, read back: everything the head had committed when it stopped.
#[derive(Debug, Clone, Default)]
pub struct Journaled {
    /// The epoch of the last head life (0 for a new journal).
    pub epoch: u64,
    /// Ids below this may have been given out.
    pub ids_reserved: u64,
    /// Joined nodes.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Acknowledged actors.
    pub actors: BTreeMap<ActorId, ActorRecord>,
    /// Each actor's newest recorded checkpoint.
    pub checkpoints: BTreeMap<ActorId, CheckpointRecord>,
    /// Each collective group's newest generation, by its row's key.
    pub groups: BTreeMap<u64, GroupRecord>,
}

impl Journaled {
    /// Reads rows back, checking each record. Unknown meta keys are skipped (a later format
    /// version bumps the store's version instead of relying on this).
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = (Table, u64, &'a [u8])>,
    ) -> Result<Journaled, RecordError> {
        let mut journaled = Journaled::default();
        for (table, key, value) in rows {
            let bad = |reason: String| RecordError::Decode {
                table: table.name(),
                key,
                reason,
            };
            let record = |value: &[u8]| bad(format!("{} bytes", value.len()));
            match table {
                Table::Nodes => {
                    let node = decode(value).map_err(|e| bad(e.to_string()))?;
                    journaled.nodes.insert(NodeId(key), node);
                }
                Table::Actors => {
                    let actor = decode(value).map_err(|e| bad(e.to_string()))?;
                    journaled.actors.insert(ActorId(key), actor);
                }
                Table::Checkpoints => {
                    let checkpoint = decode(value).map_err(|e| bad(e.to_string()))?;
                    journaled.checkpoints.insert(ActorId(key), checkpoint);
                }
                Table::Groups => {
                    let group: GroupRecord = decode(value).map_err(|e| bad(e.to_string()))?;
                    journaled.groups.insert(key, group);
                }
                Table::Meta => {
                    let number = u64::from_le_bytes(value.try_into().map_err(|_| record(value))?);
                    match key {
                        META_EPOCH => journaled.epoch = number,
                        META_IDS => journaled.ids_reserved = number,
                        _ => {}
                    }
                }
            }
        }
        Ok(journaled)
    }
}

/// The journal's tables in memory: what the simulation and tests commit to, written by the
/// same [`Change::apply`] as the store on disk.
#[derive(Debug, Clone, Default)]
pub struct MemoryTables {
    rows: BTreeMap<(Table, u64), Vec<u8>>,
}

impl MemoryTables {
    /// Empty tables.
    pub fn new() -> Self {
        MemoryTables::default()
    }

    /// Commits changes, in order.
    pub fn commit<'a>(
        &mut self,
        changes: impl IntoIterator<Item = &'a Change>,
    ) -> Result<(), RecordError> {
        for change in changes {
            change.apply(self)?;
        }
        Ok(())
    }

    /// Every row, in (table, key) order.
    pub fn rows(&self) -> impl Iterator<Item = (Table, u64, &[u8])> {
        self.rows.iter().map(|(&(t, k), v)| (t, k, v.as_slice()))
    }

    /// What the tables hold, read back.
    pub fn read(&self) -> Result<Journaled, RecordError> {
        Journaled::from_rows(self.rows())
    }
}

impl Tables for MemoryTables {
    type Error = RecordError;

    fn put(&mut self, table: Table, key: u64, value: &[u8]) -> Result<(), RecordError> {
        self.rows.insert((table, key), value.to_vec());
        Ok(())
    }

    fn remove(&mut self, table: Table, key: u64) -> Result<(), RecordError> {
        self.rows.remove(&(table, key));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_and_its_undoing_leave_the_tables_as_they_were() {
        let mut tables = MemoryTables::new();
        tables
            .commit(&[Change::Epoch(4), Change::IdsReserved(2048)])
            .unwrap();
        let before: Vec<_> = tables.rows().map(|(t, k, v)| (t, k, v.to_vec())).collect();
        let record = CheckpointRecord {
            seq: 9,
            sha256: [7; 32],
        };
        let actor = ActorId(5);
        tables
            .commit(&[Change::Checkpoint {
                actor,
                record: record.clone(),
            }])
            .unwrap();
        let read = tables.read().unwrap();
        assert_eq!((read.epoch, read.ids_reserved), (4, 2048));
        assert_eq!(read.checkpoints.get(&actor), Some(&record));
        tables.commit(&[Change::ActorGone { actor }]).unwrap();
        let after: Vec<_> = tables.rows().map(|(t, k, v)| (t, k, v.to_vec())).collect();
        assert_eq!(before, after, "a gone actor's checkpoint row goes with it");
    }

    #[test]
    fn a_damaged_row_is_an_error_naming_its_table_and_key() {
        let rows = [(Table::Actors, 12, &[0xffu8; 5][..])];
        match Journaled::from_rows(rows) {
            Err(RecordError::Decode { table, key, .. }) => {
                assert_eq!((table, key), ("actors", 12));
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
        let short = [(Table::Meta, META_EPOCH, &[1u8, 2][..])];
        assert!(Journaled::from_rows(short).is_err());
    }
}
