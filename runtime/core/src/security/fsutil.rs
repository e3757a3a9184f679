//! Small file-system helpers: private directories and atomic writes.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::SecurityError;

/// Creates `dir` (and its parents) if missing; a directory created here gets mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), SecurityError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| SecurityError::io("create directory", dir, e))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, created with
/// `mode`, is written, synced and renamed over `path`; then the directory is synced.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SecurityError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));

    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options
            .open(&tmp)
            .map_err(|e| SecurityError::io("create", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| SecurityError::io("write", &tmp, e))?;
        file.sync_all()
            .map_err(|e| SecurityError::io("sync", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| SecurityError::io("replace", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable. Not every platform can open a directory; that is fine.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a file, mapping "not found" to `None`.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, SecurityError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SecurityError::io("read", path, e)),
    }
}
