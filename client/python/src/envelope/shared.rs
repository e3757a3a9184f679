//! The shared-memory files a frame names. An executor on the caller's machine writes a large
//! result buffer to a file in `/dev/shm` and names it in the frame; the caller maps it instead
//! of copying. The process that receives such a result owns its files: they are removed once
//! nothing here can read them any more ([`SharedFiles`]), and at shutdown. A file is named
//! `ember-buf-<receiver's pid>-<random>`: those of a receiver that died without removing
//! them (a SIGKILL) are swept by the next `ember.init()` on the machine ([`sweep_orphans`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

use super::frame::Parsed;

/// Where the shared-memory files live.
const SHM_DIR: &str = "/dev/shm";

/// The shared-memory files `parsed` (of `frame`) names, in order. A name that is not a plain
/// file name in the shared-memory directory (a path elsewhere) is an error.
pub(crate) fn files_of(frame: &[u8], parsed: &Parsed) -> Result<Vec<PathBuf>, String> {
    parsed
        .buffers
        .iter()
        .filter(|b| b.is_shared())
        .map(|b| {
            let name = std::str::from_utf8(&frame[b.at.clone()]).unwrap_or_default();
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(format!(
                    "a result names a shared buffer {name:?} outside {SHM_DIR}"
                ));
            }
            Ok(PathBuf::from(SHM_DIR).join(name))
        })
        .collect()
}

/// Every shared-memory file this process owns now, to remove at shutdown.
static OWNED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// The shared-memory files of one result, removed when it is dropped (the caller has mapped
/// them by then, or never will).
#[derive(Debug, Default)]
pub(crate) struct SharedFiles(Vec<PathBuf>);

impl SharedFiles {
    /// Takes ownership of `files`.
    pub(crate) fn own(files: Vec<PathBuf>) -> Self {
        if !files.is_empty() {
            if let Ok(mut owned) = OWNED.lock() {
                owned
                    .get_or_insert_with(HashSet::new)
                    .extend(files.iter().cloned());
            }
        }
        SharedFiles(files)
    }
}

impl Drop for SharedFiles {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut owned = OWNED.lock().ok();
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
            if let Some(Some(set)) = owned.as_deref_mut() {
                set.remove(f);
            }
        }
    }
}

/// Removes every shared-memory file this process still owns (arrays already mapped stay
/// readable): at shutdown and at exit.
pub(crate) fn release_all() {
    let files = OWNED.lock().ok().and_then(|mut o| o.take());
    for f in files.into_iter().flatten() {
        let _ = std::fs::remove_file(f);
    }
}

/// The prefix of every shared-memory file's name (`_serialize._to_shared` and
/// [`write_file`] name them).
const PREFIX: &str = "ember-buf-";

/// Writes `bytes` to a new shared-memory file named for this process (which owns it: the
/// caller hands it to [`SharedFiles::own`]); its path and its name.
pub(crate) fn write_file(bytes: &[u8]) -> std::io::Result<(PathBuf, String)> {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        // A name no other file has: random per process, then counted.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let name = format!("{PREFIX}{}-{:016x}", std::process::id(), h.finish());
        let path = PathBuf::from(SHM_DIR).join(&name);
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = file.write_all(bytes) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        return Ok((path, name));
    }
}

/// Removes the shared-memory files whose receiving process is gone (killed before it could
/// remove them); returns how many. Files of a live process, or not named as Ember names
/// them, are left alone.
pub(crate) fn sweep_orphans() -> usize {
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
        return 0;
    };
    let mut swept = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid > 0
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::remove_file(entry.path()).is_ok()
        {
            swept += 1;
        }
    }
    swept
}
