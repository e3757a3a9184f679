//! The framing of a Python result whose pickle has out-of-band buffers (pickle protocol 5),
//! as `ember._serialize` writes it: `EMB2`, the buffer count (u32), then each buffer: a kind
//! byte and its length (u64), followed by its bytes (kind 0, inline) or by the name of a file
//! in `/dev/shm` holding them (kind 1: a u16 length and the name; written by an executor on
//! the caller's machine, so the caller maps it instead of copying); then the pickle itself.
//! All little-endian. Any other result is a plain pickle.
//!
//! The process that receives such a result owns its files: they are removed once nothing
//! here can read them any more ([`SharedFiles`]), and at shutdown.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

/// The framing's first bytes.
const MAGIC: &[u8; 4] = b"EMB2";
/// Where the shared-memory files live.
const SHM_DIR: &str = "/dev/shm";

/// The buffers of a framed result, as (kind, length, where its bytes or name are).
struct Buffer {
    kind: u8,
    len: u64,
    /// The range of its bytes (inline) or of its file's name (shared), in the frame.
    at: std::ops::Range<usize>,
}

/// The buffers and the offset of the pickle, or `None` for a plain pickle (or a frame that
/// does not parse: the Python side then reports it).
fn parse(frame: &[u8]) -> Option<(Vec<Buffer>, usize)> {
    if !frame.starts_with(MAGIC) {
        return None;
    }
    let mut at = MAGIC.len();
    let take = |at: &mut usize, n: usize| -> Option<std::ops::Range<usize>> {
        let r = *at..at.checked_add(n)?;
        frame.get(r.clone())?;
        *at = r.end;
        Some(r)
    };
    let count = u32::from_le_bytes(frame.get(take(&mut at, 4)?)?.try_into().ok()?);
    let mut buffers = Vec::new();
    for _ in 0..count {
        let kind = frame[take(&mut at, 1)?.start];
        let len = u64::from_le_bytes(frame.get(take(&mut at, 8)?)?.try_into().ok()?);
        let range = match kind {
            0 => take(&mut at, usize::try_from(len).ok()?)?,
            1 => {
                let n = u16::from_le_bytes(frame.get(take(&mut at, 2)?)?.try_into().ok()?);
                take(&mut at, usize::from(n))?
            }
            _ => return None,
        };
        buffers.push(Buffer {
            kind,
            len,
            at: range,
        });
    }
    Some((buffers, at))
}

/// The shared-memory files a result names.
pub(crate) fn shared_files(frame: &[u8]) -> Vec<PathBuf> {
    let Some((buffers, _)) = parse(frame) else {
        return Vec::new();
    };
    buffers
        .iter()
        .filter(|b| b.kind == 1)
        .filter_map(|b| std::str::from_utf8(&frame[b.at.clone()]).ok())
        // Only a plain name in the shared-memory directory: never a path elsewhere.
        .filter(|name| !name.is_empty() && !name.contains('/') && !name.starts_with('.'))
        .map(|name| PathBuf::from(SHM_DIR).join(name))
        .collect()
}

/// The result with every shared buffer's bytes inline: what another process, maybe on
/// another machine, can read (a result passed on as an argument).
pub(crate) fn inline(frame: Vec<u8>) -> Result<Vec<u8>, String> {
    let Some((buffers, pickle_at)) = parse(&frame) else {
        return Ok(frame);
    };
    if buffers.iter().all(|b| b.kind == 0) {
        return Ok(frame);
    }
    let mut out = Vec::with_capacity(frame.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(buffers.len() as u32).to_le_bytes());
    let files = shared_files(&frame);
    let mut files = files.iter();
    for b in &buffers {
        out.push(0);
        out.extend_from_slice(&b.len.to_le_bytes());
        match b.kind {
            0 => out.extend_from_slice(&frame[b.at.clone()]),
            _ => {
                let path = files
                    .next()
                    .ok_or_else(|| "a result names a shared buffer it does not hold".to_string())?;
                let bytes = std::fs::read(path).map_err(|e| {
                    format!("a result's shared buffer {} is gone: {e}", path.display())
                })?;
                if bytes.len() as u64 != b.len {
                    return Err(format!(
                        "a result's shared buffer {} holds {} bytes, not {}",
                        path.display(),
                        bytes.len(),
                        b.len
                    ));
                }
                out.extend_from_slice(&bytes);
            }
        }
    }
    out.extend_from_slice(&frame[pickle_at..]);
    Ok(out)
}

/// Every shared-memory file this process owns now, to remove at shutdown.
static OWNED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// The shared-memory files of one result, removed when it is dropped (the caller has mapped
/// them by then, or never will).
#[derive(Debug, Default)]
pub(crate) struct SharedFiles(Vec<PathBuf>);

impl SharedFiles {
    /// Takes ownership of the files `frame` names.
    pub(crate) fn of(frame: &[u8]) -> Self {
        let files = shared_files(frame);
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
