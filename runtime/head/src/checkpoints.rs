//! Where the head keeps checkpoints: on its own disk (the default) or in S3-compatible object
//! storage. Each checkpoint is one file or object, `<actor>/<seq>-<sha256>.ckpt`, named by its
//! sequence number and the SHA-256 of its contents, and checked against that hash when read
//! back. A file is written whole or not at all (temporary file, fsync, rename, fsync of the
//! directory); an object store makes an object visible whole by itself. The newest `keep` of
//! each actor are kept. Checkpoints outlive the head: a head that starts again keeps them,
//! and collects only those of actors its journal no longer has ([`CheckpointStore::actors`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

use ember_core::ids::ActorId;

/// A checkpoint read back and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Restored {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// The image, as saved.
    pub(crate) image: Vec<u8>,
}

/// Why a checkpoint could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The head's disk.
    #[error("checkpoint file: {0}")]
    Io(#[from] std::io::Error),
    /// The object store.
    #[error("checkpoint object store: {0}")]
    Object(#[from] object_store::Error),
    /// The store's address.
    #[error("checkpoint store `{url}`: {reason}")]
    Address {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

enum Backend {
    Disk(PathBuf),
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
    },
}

/// The checkpoints of every actor.
pub(crate) struct CheckpointStore {
    backend: Backend,
    keep: usize,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Disk(d) => write!(f, "CheckpointStore(disk {})", d.display()),
            Backend::Object { prefix, .. } => write!(f, "CheckpointStore(object store {prefix})"),
        }
    }
}

impl CheckpointStore {
    /// A store in directory `dir`, keeping the newest `keep` (at least 1) checkpoints of each
    /// actor. What an earlier head left there is kept.
    pub(crate) fn on_disk(dir: PathBuf, keep: usize) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(&dir)?;
        Ok(CheckpointStore {
            backend: Backend::Disk(dir),
            keep: keep.max(1),
        })
    }

    /// A store under `prefix` of an object store; what an earlier head left there is kept.
    pub(crate) fn in_objects(
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        keep: usize,
    ) -> Result<Self, CheckpointError> {
        Ok(CheckpointStore {
            backend: Backend::Object { store, prefix },
            keep: keep.max(1),
        })
    }

    /// A store in S3-compatible object storage at `url` (`s3://bucket/prefix`), configured
    /// from the usual `AWS_*` variables (`AWS_ENDPOINT` for a server other than AWS's,
    /// `AWS_ALLOW_HTTP=true` for one without TLS).
    pub(crate) async fn in_s3(url: &str, keep: usize) -> Result<Self, CheckpointError> {
        let bad = |reason: String| CheckpointError::Address {
            url: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("only s3://bucket/prefix is supported".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket named".into()));
        }
        // reqwest's TLS uses the process's rustls provider: the same ring as everything else.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()?;
        let prefix = ObjectPath::parse(prefix).map_err(|e| bad(e.to_string()))?;
        CheckpointStore::in_objects(Arc::new(store), prefix, keep)
    }

    /// Every actor with checkpoints in the store, in no particular order.
    pub(crate) async fn actors(&self) -> Result<Vec<ActorId>, CheckpointError> {
        let names: Vec<String> = match &self.backend {
            Backend::Disk(dir) => std::fs::read_dir(dir)?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect(),
            Backend::Object { store, prefix } => store
                .list_with_delimiter(Some(prefix))
                .await?
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(String::from))
                .collect(),
        };
        Ok(names
            .iter()
            .filter_map(|n| n.strip_prefix("actor-")?.parse().ok().map(ActorId))
            .collect())
    }

    /// Writes a checkpoint durably under its SHA-256 (`sha256`, of `image`), then drops the
    /// oldest beyond `keep`.
    pub(crate) async fn save(
        &self,
        actor: ActorId,
        seq: u64,
        sha256: &[u8; 32],
        image: Vec<u8>,
    ) -> Result<(), CheckpointError> {
        let name = file_name(seq, sha256);
        match &self.backend {
            Backend::Disk(dir) => {
                let dir = dir.join(actor.to_string());
                let keep = self.keep;
                blocking(move || save_file(&dir, &name, &image, keep)).await
            }
            Backend::Object { store, prefix } => {
                let dir = actor_prefix(prefix, actor);
                store.put(&dir.clone().join(name), image.into()).await?;
                let files = list_objects(store.as_ref(), &dir).await?;
                let excess = files.len().saturating_sub(self.keep);
                for (_, location) in files.into_iter().take(excess) {
                    store.delete(&location).await?;
                }
                Ok(())
            }
        }
    }

    /// The newest checkpoint of `actor` whose contents match their hash. A newer one that does
    /// not is skipped with a warning and deleted, so that the actor's next checkpoints (which
    /// continue from the one returned) are not shadowed by it.
    pub(crate) async fn latest(&self, actor: ActorId) -> Result<Option<Restored>, CheckpointError> {
        match &self.backend {
            Backend::Disk(dir) => {
                let dir = dir.join(actor.to_string());
                blocking(move || latest_file(actor, &dir)).await
            }
            Backend::Object { store, prefix } => {
                let dir = actor_prefix(prefix, actor);
                for (seq, location) in list_objects(store.as_ref(), &dir).await?.into_iter().rev() {
                    let image = store.get(&location).await?.bytes().await?.to_vec();
                    if matches_its_hash(location.filename().unwrap_or_default(), &image) {
                        return Ok(Some(Restored { seq, image }));
                    }
                    warn_corrupt(actor, seq, location.as_ref());
                    store.delete(&location).await?;
                }
                Ok(None)
            }
        }
    }

    /// Forgets every checkpoint of an actor that is gone for good.
    pub(crate) async fn remove(&self, actor: ActorId) {
        match &self.backend {
            Backend::Disk(dir) => {
                let _ = std::fs::remove_dir_all(dir.join(actor.to_string()));
            }
            Backend::Object { store, prefix } => {
                let dir = actor_prefix(prefix, actor);
                if let Ok(files) = list_objects(store.as_ref(), &dir).await {
                    for (_, location) in files {
                        let _ = store.delete(&location).await;
                    }
                }
            }
        }
    }
}

/// `<seq>-<sha256>.ckpt`, with the sequence number padded so names sort by it.
fn file_name(seq: u64, sha256: &[u8; 32]) -> String {
    format!("{seq:020}-{}.ckpt", hex::encode(sha256))
}

/// The sequence number in a checkpoint's name.
fn seq_of(name: &str) -> Option<u64> {
    name.strip_suffix(".ckpt")?.split('-').next()?.parse().ok()
}

/// True when `image` hashes to the hash in its name.
fn matches_its_hash(name: &str, image: &[u8]) -> bool {
    let expected = name
        .strip_suffix(".ckpt")
        .and_then(|s| s.split_once('-'))
        .map(|(_, h)| h);
    expected == Some(hex::encode(Sha256::digest(image)).as_str())
}

fn warn_corrupt(actor: ActorId, seq: u64, at: &str) {
    tracing::warn!(
        %actor, seq, at,
        "checkpoint does not match its hash: skipping it for the previous one"
    );
}

fn actor_prefix(prefix: &ObjectPath, actor: ActorId) -> ObjectPath {
    prefix.clone().join(actor.to_string())
}

/// The checkpoint objects under `dir`, oldest first.
async fn list_objects(
    store: &dyn ObjectStore,
    dir: &ObjectPath,
) -> Result<Vec<(u64, ObjectPath)>, CheckpointError> {
    let metas: Vec<_> = store.list(Some(dir)).try_collect().await?;
    let mut files: Vec<(u64, ObjectPath)> = metas
        .into_iter()
        .filter_map(|m| Some((seq_of(m.location.filename()?)?, m.location)))
        .collect();
    files.sort();
    Ok(files)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, CheckpointError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CheckpointError::Io(std::io::Error::other(e.to_string())))?
        .map_err(CheckpointError::Io)
}

fn save_file(dir: &Path, name: &str, image: &[u8], keep: usize) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(image)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    let files = list_files(dir)?;
    let excess = files.len().saturating_sub(keep);
    for (_, path) in files.into_iter().take(excess) {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

fn latest_file(actor: ActorId, dir: &Path) -> std::io::Result<Option<Restored>> {
    if !dir.exists() {
        return Ok(None);
    }
    for (seq, path) in list_files(dir)?.into_iter().rev() {
        let image = std::fs::read(&path)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if matches_its_hash(name, &image) {
            return Ok(Some(Restored { seq, image }));
        }
        warn_corrupt(actor, seq, &path.display().to_string());
        std::fs::remove_file(&path)?;
    }
    Ok(None)
}

/// The checkpoint files in `dir`, oldest first.
fn list_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path.file_name().and_then(|n| n.to_str()).and_then(seq_of);
        if let Some(seq) = seq {
            files.push((seq, path));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both backends: the disk, and an object store (in memory here; S3 in `tests/`).
    async fn stores(keep: usize) -> (tempfile::TempDir, Vec<CheckpointStore>) {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let disk = CheckpointStore::on_disk(tmp.path().join("checkpoints"), keep).expect("disk");
        let memory = Arc::new(object_store::memory::InMemory::new());
        let objects =
            CheckpointStore::in_objects(memory, ObjectPath::from("run"), keep).expect("objects");
        (tmp, vec![disk, objects])
    }

    /// Overwrites the newest checkpoint of `actor` with `bytes`, as a damaged disk would.
    async fn damage_newest(store: &CheckpointStore, actor: ActorId, bytes: &'static [u8]) {
        match &store.backend {
            Backend::Disk(dir) => {
                let (_, path) = list_files(&dir.join(actor.to_string()))
                    .unwrap()
                    .pop()
                    .unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            Backend::Object { store, prefix } => {
                let dir = actor_prefix(prefix, actor);
                let (_, location) = list_objects(store.as_ref(), &dir)
                    .await
                    .unwrap()
                    .pop()
                    .unwrap();
                store.put(&location, bytes.into()).await.unwrap();
            }
        }
    }

    async fn seqs(store: &CheckpointStore, actor: ActorId) -> Vec<u64> {
        match &store.backend {
            Backend::Disk(dir) => list_files(&dir.join(actor.to_string()))
                .unwrap_or_default()
                .into_iter()
                .map(|(s, _)| s)
                .collect(),
            Backend::Object { store, prefix } => {
                list_objects(store.as_ref(), &actor_prefix(prefix, actor))
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect()
            }
        }
    }

    #[tokio::test]
    async fn the_newest_checkpoint_comes_back_and_only_keep_remain() {
        let (_tmp, stores) = stores(2).await;
        for store in &stores {
            let a = ActorId(7);
            assert_eq!(store.latest(a).await.unwrap(), None, "{store:?}");
            for seq in 1..=4u64 {
                store
                    .save(
                        a,
                        seq,
                        &digest(&seq.to_le_bytes()),
                        seq.to_le_bytes().to_vec(),
                    )
                    .await
                    .unwrap();
            }
            let got = store.latest(a).await.unwrap().expect("a checkpoint");
            assert_eq!(
                (got.seq, got.image),
                (4, 4u64.to_le_bytes().to_vec()),
                "{store:?}"
            );
            assert_eq!(seqs(store, a).await, vec![3, 4], "{store:?}");
        }
    }

    #[tokio::test]
    async fn a_corrupted_checkpoint_falls_back_to_the_previous_one() {
        let (_tmp, stores) = stores(3).await;
        for store in &stores {
            let a = ActorId(1);
            store
                .save(a, 1, &digest(b"one"), b"one".to_vec())
                .await
                .unwrap();
            store
                .save(a, 2, &digest(b"two"), b"two".to_vec())
                .await
                .unwrap();
            damage_newest(store, a, b"tw0").await;
            let got = store
                .latest(a)
                .await
                .unwrap()
                .expect("the previous checkpoint");
            assert_eq!(
                (got.seq, got.image.as_slice()),
                (1, &b"one"[..]),
                "{store:?}"
            );
            assert_eq!(
                seqs(store, a).await,
                vec![1],
                "the corrupted one is removed"
            );
            // The next checkpoint continues from the one restored.
            store
                .save(a, 2, &digest(b"two again"), b"two again".to_vec())
                .await
                .unwrap();
            assert_eq!(store.latest(a).await.unwrap().unwrap().image, b"two again");
        }
    }

    #[tokio::test]
    async fn every_checkpoint_corrupted_means_none_and_remove_forgets() {
        let (_tmp, stores) = stores(3).await;
        for store in &stores {
            let a = ActorId(2);
            store
                .save(a, 1, &digest(b"one"), b"one".to_vec())
                .await
                .unwrap();
            damage_newest(store, a, b"garbage").await;
            assert_eq!(store.latest(a).await.unwrap(), None, "{store:?}");
            store
                .save(a, 1, &digest(b"one"), b"one".to_vec())
                .await
                .unwrap();
            store.remove(a).await;
            assert!(seqs(store, a).await.is_empty(), "{store:?}");
        }
    }

    #[test]
    fn a_bad_s3_address_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for url in ["file:///tmp/x", "s3://"] {
            let err = rt.block_on(CheckpointStore::in_s3(url, 1)).unwrap_err();
            assert!(err.to_string().contains(url), "{err}");
        }
    }

    #[tokio::test]
    async fn a_new_head_keeps_an_earlier_heads_checkpoints_and_finds_their_actors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("checkpoints");
        let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let open = |memory: &Arc<dyn ObjectStore>| {
            vec![
                CheckpointStore::on_disk(dir.clone(), 1).unwrap(),
                CheckpointStore::in_objects(memory.clone(), ObjectPath::from("p"), 1).unwrap(),
            ]
        };
        for first in open(&memory) {
            let old = b"old".to_vec();
            first.save(ActorId(1), 1, &digest(&old), old).await.unwrap();
            let two = b"two".to_vec();
            first.save(ActorId(2), 4, &digest(&two), two).await.unwrap();
        }
        for second in open(&memory) {
            let found = second.latest(ActorId(1)).await.unwrap().map(|r| r.image);
            assert_eq!(found, Some(b"old".to_vec()), "{second:?}");
            let mut actors = second.actors().await.unwrap();
            actors.sort();
            assert_eq!(actors, [ActorId(1), ActorId(2)], "{second:?}");
            second.remove(ActorId(2)).await;
            assert_eq!(second.actors().await.unwrap(), [ActorId(1)], "{second:?}");
        }
    }

    fn digest(image: &[u8]) -> [u8; 32] {
        Sha256::digest(image).into()
    }
}
