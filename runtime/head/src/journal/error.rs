//! Why the journal could not be opened or written.

use std::path::PathBuf;

use ember_head_state::journal::RecordError;

/// Why the journal could not be opened or written. Each names the file: a head that cannot
/// open its journal refuses to start rather than start empty.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another head has this state directory's journal open: stop it first, or give this one
    /// another state directory.
    #[error("the journal {} is in use by another head on this state directory", path.display())]
    InUse {
        /// The journal's file.
        path: PathBuf,
    },
    /// The file is not a journal, or is damaged beyond what the store repairs: restore it
    /// from a backup, or move it away to start a new cluster.
    #[error("the journal {} cannot be read: {reason}", path.display())]
    Unreadable {
        /// The journal's file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The journal was written by a head of another format version: run that version.
    #[error(
        "the journal {} has format version {found}; this head reads version {}",
        path.display(),
        super::FORMAT_VERSION
    )]
    WrongVersion {
        /// The journal's file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// A record in the journal is damaged (or could not be written).
    #[error("the journal {}: {source}", path.display())]
    Record {
        /// The journal's file (empty for a record that could not be archived).
        path: PathBuf,
        /// The record's error.
        source: RecordError,
    },
    /// The store failed a read or a commit (the disk): nothing of that commit was kept.
    #[error("the journal {}: {source}", path.display())]
    Store {
        /// The journal's file.
        path: PathBuf,
        /// The store's error.
        source: Box<redb::Error>,
    },
}
