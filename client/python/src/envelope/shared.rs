//! The shared-memory files a frame names. An executor on the caller's machine writes a large
//! result buffer to a file in `/dev/shm` and names it in the frame; the caller maps it instead
//! of copying. The process that receives such a result owns its files: they are removed once
//! nothing here can read them any more ([`SharedFiles`]), and at shutdown.

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
