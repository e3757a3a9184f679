//! Checkpoints on the head's disk: one directory per actor, one file per checkpoint, named by
//! its sequence number and the SHA-256 of its contents. A file is written whole or not at all
//! (temporary file, fsync, rename, fsync of the directory) and checked against its hash when
//! read back; the newest `keep` of each actor are kept.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ids::ActorId;

/// A checkpoint read back and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Restored {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// The image, as saved.
    pub(crate) image: Vec<u8>,
}

/// The checkpoints of every actor, under one directory.
#[derive(Debug)]
pub(crate) struct CheckpointStore {
    dir: PathBuf,
    keep: usize,
}

impl CheckpointStore {
    /// A store in `dir`, keeping the newest `keep` (at least 1) checkpoints of each actor.
    /// Checkpoints left by an earlier head are removed: actor ids start again with each head.
    pub(crate) fn open(dir: PathBuf, keep: usize) -> io::Result<Self> {
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(CheckpointStore {
            dir,
            keep: keep.max(1),
        })
    }

    /// The directory holding `actor`'s checkpoints.
    pub(crate) fn actor_dir(&self, actor: ActorId) -> PathBuf {
        self.dir.join(actor.to_string())
    }

    /// Writes a checkpoint durably, then drops the oldest beyond `keep`.
    pub(crate) fn save(&self, actor: ActorId, seq: u64, image: &[u8]) -> io::Result<()> {
        let dir = self.actor_dir(actor);
        fs::create_dir_all(&dir)?;
        let hash = hex::encode(Sha256::digest(image));
        let name = format!("{seq:020}-{hash}.ckpt");
        let tmp = dir.join(format!(".{name}.tmp"));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(image)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(&name))?;
        fs::File::open(&dir)?.sync_all()?;
        let files = list(&dir)?;
        let excess = files.len().saturating_sub(self.keep);
        for (_, path) in files.into_iter().take(excess) {
            fs::remove_file(path)?;
        }
        Ok(())
    }

    /// The newest checkpoint of `actor` whose contents match their hash. A newer one that does
    /// not is skipped with a warning and deleted, so that the actor's next checkpoints (which
    /// continue from the one returned) are not shadowed by it.
    pub(crate) fn latest(&self, actor: ActorId) -> io::Result<Option<Restored>> {
        let dir = self.actor_dir(actor);
        if !dir.exists() {
            return Ok(None);
        }
        for (seq, path) in list(&dir)?.into_iter().rev() {
            let image = fs::read(&path)?;
            let expected = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.split_once('-'))
                .map(|(_, h)| h.to_string())
                .unwrap_or_default();
            if hex::encode(Sha256::digest(&image)) == expected {
                return Ok(Some(Restored { seq, image }));
            }
            tracing::warn!(
                %actor, seq, path = %path.display(),
                "checkpoint does not match its hash: skipping it for the previous one"
            );
            fs::remove_file(&path)?;
        }
        Ok(None)
    }

    /// Forgets every checkpoint of an actor that is gone for good.
    pub(crate) fn remove(&self, actor: ActorId) {
        let _ = fs::remove_dir_all(self.actor_dir(actor));
    }
}

/// The checkpoint files in `dir`, oldest first.
fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "ckpt") {
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('-').next())
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(seq) = seq {
                files.push((seq, path));
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(keep: usize) -> (tempfile::TempDir, CheckpointStore) {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let store = CheckpointStore::open(tmp.path().join("checkpoints"), keep).expect("open");
        (tmp, store)
    }

    #[test]
    fn the_newest_checkpoint_comes_back_and_only_keep_remain() {
        let (_tmp, store) = store(2);
        let a = ActorId(7);
        assert_eq!(store.latest(a).unwrap(), None);
        for seq in 1..=4u64 {
            store.save(a, seq, &seq.to_le_bytes()).unwrap();
        }
        let got = store.latest(a).unwrap().expect("a checkpoint");
        assert_eq!((got.seq, got.image), (4, 4u64.to_le_bytes().to_vec()));
        let seqs: Vec<u64> = list(&store.actor_dir(a))
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, vec![3, 4]);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(store.actor_dir(a)).unwrap().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn a_corrupted_checkpoint_falls_back_to_the_previous_one() {
        let (_tmp, store) = store(3);
        let a = ActorId(1);
        store.save(a, 1, b"one").unwrap();
        store.save(a, 2, b"two").unwrap();
        let (_, newest) = list(&store.actor_dir(a)).unwrap().pop().unwrap();
        fs::write(&newest, b"tw0").unwrap();
        let got = store.latest(a).unwrap().expect("the previous checkpoint");
        assert_eq!((got.seq, got.image.as_slice()), (1, &b"one"[..]));
        assert!(!newest.exists(), "the corrupted file is removed");
        // The next checkpoint continues from the one restored.
        store.save(a, 2, b"two again").unwrap();
        assert_eq!(store.latest(a).unwrap().unwrap().image, b"two again");
    }

    #[test]
    fn every_checkpoint_corrupted_means_none() {
        let (_tmp, store) = store(3);
        let a = ActorId(2);
        store.save(a, 1, b"one").unwrap();
        for (_, path) in list(&store.actor_dir(a)).unwrap() {
            fs::write(path, b"garbage").unwrap();
        }
        assert_eq!(store.latest(a).unwrap(), None);
        store.remove(a);
        assert!(!store.actor_dir(a).exists());
    }

    #[test]
    fn opening_clears_an_earlier_heads_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("checkpoints");
        let first = CheckpointStore::open(dir.clone(), 1).unwrap();
        first.save(ActorId(1), 1, b"old").unwrap();
        let second = CheckpointStore::open(dir, 1).unwrap();
        assert_eq!(second.latest(ActorId(1)).unwrap(), None);
    }
}
