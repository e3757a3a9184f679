//! The head's journal on disk: the tables of `ember_head_state::journal` in a `redb` file in
//! the state directory, `journal.redb`. Each commit is one write transaction with
//! `Durability::Immediate` (one fsync), so what it holds survives a crash; `redb` rolls a torn
//! last write back by itself when the file is opened again. A meta row holds the format
//! version: a file of another version, or one that is not a journal, is refused with its path,
//! never started over. `redb` locks the file, so a second head on one state directory is
//! refused too.

mod error;

use std::path::{Path, PathBuf};

use ember_head_state::journal::{Change, Journaled, RecordError, Table, Tables};
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};

pub use error::JournalError;

/// The journal's file name in the state directory.
pub const FILE_NAME: &str = "journal.redb";

/// The layout of the tables this build writes; another is refused. Bump it whenever a record's
/// layout changes, a worker's hello (kept in node records) included: 2 added `rejoin` to it,
/// 3 the table of collective groups, 4 `pending_timeout_ms` to a placement (kept in actor
/// records), 5 a placement's gang `bundle`.
pub const FORMAT_VERSION: u64 = 5;

/// The key in the meta table of the format version.
const META_FORMAT: u64 = 0;

fn definition(table: Table) -> TableDefinition<'static, u64, &'static [u8]> {
    TableDefinition::new(table.name())
}

/// An open journal: the only one on its file while it lives.
pub struct Journal {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journal({})", self.path.display())
    }
}

impl Journal {
    /// Opens the journal at `path` (creating an empty one where there is none) and reads back
    /// what it holds.
    pub fn open(path: &Path) -> Result<(Journal, Journaled), JournalError> {
        let path = path.to_path_buf();
        // `redb` asserts rather than errs on some damage (a file cut shorter than its header
        // says): that too is a file that cannot be read, not a reason to die without its name.
        let created = std::panic::catch_unwind(|| Database::create(&path)).map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a failed check".into());
            JournalError::Unreadable {
                path: path.clone(),
                reason: format!("the store stopped reading it: {what}"),
            }
        })?;
        let db = created.map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => JournalError::InUse { path: path.clone() },
            other => JournalError::Unreadable {
                path: path.clone(),
                reason: other.to_string(),
            },
        })?;
        let journal = Journal { db, path };
        let journaled = journal.read()?;
        Ok((journal, journaled))
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits changes, in order, in one durable transaction.
    pub fn commit(&self, changes: &[Change]) -> Result<(), JournalError> {
        let txn = self.db.begin_write().map_err(|e| self.store(e))?;
        let mut rows = Rows {
            txn: &txn,
            path: &self.path,
        };
        for change in changes {
            change.apply(&mut rows)?;
        }
        let mut txn = txn;
        txn.set_durability(Durability::Immediate);
        txn.commit().map_err(|e| self.store(e))
    }

    /// Checks the format version (writing it into a new journal) and reads every row back.
    fn read(&self) -> Result<Journaled, JournalError> {
        let txn = self.db.begin_read().map_err(|e| self.store(e))?;
        let mut rows: Vec<(Table, u64, Vec<u8>)> = Vec::new();
        for table in Table::ALL {
            let open = match txn.open_table(definition(table)) {
                Ok(open) => open,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(self.unreadable(e)),
            };
            for row in open.iter().map_err(|e| self.unreadable(e))? {
                let (key, value) = row.map_err(|e| self.unreadable(e))?;
                rows.push((table, key.value(), value.value().to_vec()));
            }
        }
        drop(txn);
        let format = rows
            .iter()
            .find(|(t, k, _)| *t == Table::Meta && *k == META_FORMAT)
            .map(|(_, _, v)| v.as_slice().try_into().map(u64::from_le_bytes));
        match format {
            None if rows.is_empty() => self.write_format()?,
            None => {
                return Err(JournalError::Unreadable {
                    path: self.path.clone(),
                    reason: "it has records but no format version".into(),
                })
            }
            Some(Ok(FORMAT_VERSION)) => {}
            Some(Ok(found)) => {
                return Err(JournalError::WrongVersion {
                    path: self.path.clone(),
                    found,
                })
            }
            Some(Err(_)) => {
                return Err(JournalError::Unreadable {
                    path: self.path.clone(),
                    reason: "its format version is not a number".into(),
                })
            }
        }
        let rows = rows
            .iter()
            .filter(|(t, k, _)| !(*t == Table::Meta && *k == META_FORMAT))
            .map(|(t, k, v)| (*t, *k, v.as_slice()));
        Journaled::from_rows(rows).map_err(|e| JournalError::Record {
            path: self.path.clone(),
            source: e,
        })
    }

    fn write_format(&self) -> Result<(), JournalError> {
        let mut txn = self.db.begin_write().map_err(|e| self.store(e))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut meta = txn
                .open_table(definition(Table::Meta))
                .map_err(|e| self.store(e))?;
            meta.insert(META_FORMAT, &FORMAT_VERSION.to_le_bytes()[..])
                .map_err(|e| self.store(e))?;
        }
        txn.commit().map_err(|e| self.store(e))
    }

    fn store(&self, e: impl Into<redb::Error>) -> JournalError {
        JournalError::Store {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn unreadable(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError::Unreadable {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

/// The rows of one write transaction.
struct Rows<'a> {
    txn: &'a WriteTransaction,
    path: &'a Path,
}

impl Rows<'_> {
    fn store(&self, e: impl Into<redb::Error>) -> JournalError {
        JournalError::Store {
            path: self.path.to_path_buf(),
            source: Box::new(e.into()),
        }
    }
}

impl Tables for Rows<'_> {
    type Error = JournalError;

    fn put(&mut self, table: Table, key: u64, value: &[u8]) -> Result<(), JournalError> {
        let mut open = self
            .txn
            .open_table(definition(table))
            .map_err(|e| self.store(e))?;
        open.insert(key, value).map_err(|e| self.store(e))?;
        Ok(())
    }

    fn remove(&mut self, table: Table, key: u64) -> Result<(), JournalError> {
        let mut open = self
            .txn
            .open_table(definition(table))
            .map_err(|e| self.store(e))?;
        open.remove(key).map_err(|e| self.store(e))?;
        Ok(())
    }
}

impl From<RecordError> for JournalError {
    fn from(e: RecordError) -> Self {
        JournalError::Record {
            path: PathBuf::new(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests;
