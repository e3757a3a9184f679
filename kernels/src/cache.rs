//! The on-disk compile cache: PTX keyed by the sha256 of source, options and architecture.
//!
//! A worker that starts again finds the PTX it compiled last time and does not run NVRTC.
//! Files are written to a temporary name in the cache directory and renamed into place, so a
//! reader never sees half a file, and two processes compiling the same kernel at once both
//! end with a whole one. The compile step is the [`PtxCompiler`] trait: NVRTC in production,
//! a counting fake in tests, so everything here is tested without CUDA.

use crate::KernelError;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that moves the cache directory.
pub const CACHE_DIR_ENV: &str = "EMBER_KERNEL_CACHE_DIR";

/// Bumped when the key's layout or the cached format changes, so old entries are not reused.
const KEY_FORMAT: &str = "ember-kernels ptx cache v1";

/// What is compiled: everything that changes the PTX is in here, and all of it is in the key.
#[derive(Debug, Clone, Copy)]
pub struct CompileRequest<'a> {
    /// A name for logs and errors (a `.cu` file name or a user kernel's entry).
    pub source_name: &'a str,
    /// The CUDA C source.
    pub source: &'a str,
    /// NVRTC options, e.g. `--ftz=false`.
    pub options: &'a [String],
    /// The target architecture, e.g. `sm_90`.
    pub arch: &'a str,
}

/// Compiles CUDA C to PTX.
pub trait PtxCompiler {
    /// The PTX text of `request`, or the compiler's log as [`KernelError::Compile`].
    fn compile(&self, request: &CompileRequest<'_>) -> Result<String, KernelError>;
}

/// The cache key of a compile: the hex sha256 of source, options and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of `request`. Every part is length-prefixed, so no two different requests
    /// (say options `["a b"]` and `["a", "b"]`) hash the same bytes. The source name is left
    /// out: the same text under another name is the same PTX.
    pub fn of(request: &CompileRequest<'_>) -> CacheKey {
        let mut hasher = Sha256::new();
        let mut part = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        part(KEY_FORMAT.as_bytes());
        part(request.source.as_bytes());
        part(&(request.options.len() as u64).to_le_bytes());
        for option in request.options {
            part(option.as_bytes());
        }
        part(request.arch.as_bytes());
        CacheKey(hex::encode(hasher.finalize()))
    }

    /// The key as 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// PTX and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPtx {
    /// The PTX text.
    pub ptx: String,
    /// `true` when it was read from the cache, `false` when it was compiled now.
    pub from_cache: bool,
    /// Why a freshly compiled PTX could not be stored (it is still returned and usable).
    pub store_error: Option<KernelError>,
}

/// A directory of compiled PTX, one file per [`CacheKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCache {
    dir: PathBuf,
}

impl KernelCache {
    /// A cache in `dir` (created on the first store).
    pub fn new(dir: impl Into<PathBuf>) -> KernelCache {
        KernelCache { dir: dir.into() }
    }

    /// The cache in `$EMBER_KERNEL_CACHE_DIR` if set, else `<user cache dir>/ember/kernels`,
    /// else (no home at all) `<temp dir>/ember/kernels`.
    pub fn from_env_or_default() -> KernelCache {
        let dir = std::env::var_os(CACHE_DIR_ENV)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|dir| dir.join("ember").join("kernels")))
            .unwrap_or_else(|| std::env::temp_dir().join("ember").join("kernels"));
        KernelCache::new(dir)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds the PTX of `key`.
    pub fn path_of(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.ptx", key.as_str()))
    }

    /// The PTX stored under `key`, or `None` when there is none.
    pub fn load(&self, key: &CacheKey) -> Result<Option<String>, KernelError> {
        let path = self.path_of(key);
        match fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(ptx) if !ptx.is_empty() && !ptx.contains('\0') => Ok(Some(ptx)),
                // Not something this crate wrote: treat as absent, a store replaces it.
                _ => Ok(None),
            },
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(cache_error(&path, &error)),
        }
    }

    /// Stores `ptx` under `key`: written to a temporary file beside it, then renamed.
    pub fn store(&self, key: &CacheKey, ptx: &str) -> Result<(), KernelError> {
        static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);
        fs::create_dir_all(&self.dir).map_err(|error| cache_error(&self.dir, &error))?;
        let temp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            key.as_str(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::File::create(&temp)
            .and_then(|mut file| {
                file.write_all(ptx.as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&temp, self.path_of(key)));
        written.map_err(|error| {
            let _ = fs::remove_file(&temp);
            cache_error(&temp, &error)
        })
    }

    /// The PTX of `request`: from the cache when there, else compiled by `compiler` and stored.
    /// A compile error (with its log) is returned as is and nothing is stored.
    pub fn get_or_compile(
        &self,
        compiler: &dyn PtxCompiler,
        request: &CompileRequest<'_>,
    ) -> Result<CachedPtx, KernelError> {
        let key = CacheKey::of(request);
        // An unreadable cache is a miss: compiling again is always correct.
        if let Ok(Some(ptx)) = self.load(&key) {
            return Ok(CachedPtx {
                ptx,
                from_cache: true,
                store_error: None,
            });
        }
        let ptx = compiler.compile(request)?;
        let store_error = self.store(&key, &ptx).err();
        Ok(CachedPtx {
            ptx,
            from_cache: false,
            store_error,
        })
    }
}

fn cache_error(path: &Path, error: &std::io::Error) -> KernelError {
    KernelError::Cache {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Counts compiles; "compiles" a source to a fake PTX naming it, or fails on `error`.
    struct CountingCompiler {
        compiles: Cell<usize>,
    }

    impl CountingCompiler {
        fn new() -> Self {
            CountingCompiler {
                compiles: Cell::new(0),
            }
        }
    }

    impl PtxCompiler for CountingCompiler {
        fn compile(&self, request: &CompileRequest<'_>) -> Result<String, KernelError> {
            self.compiles.set(self.compiles.get() + 1);
            if request.source.contains("error") {
                return Err(KernelError::Compile {
                    source_name: request.source_name.to_owned(),
                    log: "line 1: error: expected a ';'".to_owned(),
                });
            }
            Ok(format!("// ptx of {} for {}", request.source, request.arch))
        }
    }

    fn request<'a>(source: &'a str, options: &'a [String], arch: &'a str) -> CompileRequest<'a> {
        CompileRequest {
            source_name: "test.cu",
            source,
            options,
            arch,
        }
    }

    #[test]
    fn key_covers_source_options_and_arch_but_not_the_name() {
        let none: Vec<String> = vec![];
        let ftz = vec!["--ftz=true".to_owned()];
        let base = CacheKey::of(&request("k", &none, "sm_80"));
        assert_eq!(base.as_str().len(), 64);
        assert_eq!(base, CacheKey::of(&request("k", &none, "sm_80")));
        assert_ne!(base, CacheKey::of(&request("k2", &none, "sm_80")));
        assert_ne!(base, CacheKey::of(&request("k", &ftz, "sm_80")));
        assert_ne!(base, CacheKey::of(&request("k", &none, "sm_90")));
        let renamed = CompileRequest {
            source_name: "other.cu",
            ..request("k", &none, "sm_80")
        };
        assert_eq!(base, CacheKey::of(&renamed));
        let joined = vec!["a b".to_owned()];
        let split = vec!["a".to_owned(), "b".to_owned()];
        assert_ne!(
            CacheKey::of(&request("k", &joined, "sm_80")),
            CacheKey::of(&request("k", &split, "sm_80"))
        );
    }

    #[test]
    fn second_start_loads_instead_of_compiling() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = CountingCompiler::new();
        let options = vec!["--ftz=false".to_owned()];
        let req = request("kernel body", &options, "sm_90");

        let first = KernelCache::new(dir.path().join("cache"))
            .get_or_compile(&compiler, &req)
            .unwrap();
        assert!(!first.from_cache);
        assert_eq!(first.store_error, None);
        assert_eq!(compiler.compiles.get(), 1);

        // A new cache over the same directory: what a restarted worker does.
        let restarted = KernelCache::new(dir.path().join("cache"));
        let second = restarted.get_or_compile(&compiler, &req).unwrap();
        assert!(second.from_cache);
        assert_eq!(second.ptx, first.ptx);
        assert_eq!(compiler.compiles.get(), 1);

        // Another architecture is another entry.
        let other = restarted
            .get_or_compile(&compiler, &request("kernel body", &options, "sm_80"))
            .unwrap();
        assert!(!other.from_cache);
        assert_eq!(compiler.compiles.get(), 2);
    }

    #[test]
    fn store_is_atomic_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(dir.path());
        let key = CacheKey::of(&request("k", &[], "sm_80"));
        assert_eq!(cache.load(&key).unwrap(), None);
        cache.store(&key, "first").unwrap();
        cache.store(&key, "second").unwrap();
        assert_eq!(cache.load(&key).unwrap().as_deref(), Some("second"));
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![format!("{}.ptx", key.as_str())]);
    }

    #[test]
    fn compile_errors_carry_the_log_and_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(dir.path());
        let compiler = CountingCompiler::new();
        let req = request("syntax error here", &[], "sm_80");
        for expected_compiles in 1..=2 {
            match cache.get_or_compile(&compiler, &req) {
                Err(KernelError::Compile { log, .. }) => assert!(log.contains("expected a ';'")),
                other => panic!("expected a compile error, got {other:?}"),
            }
            assert_eq!(compiler.compiles.get(), expected_compiles);
        }
        assert_eq!(cache.load(&CacheKey::of(&req)).unwrap(), None);
    }

    #[test]
    fn an_unwritable_cache_still_gives_the_ptx() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("a-file");
        fs::write(&blocker, "not a directory").unwrap();
        let cache = KernelCache::new(blocker.join("cache"));
        let compiler = CountingCompiler::new();
        let result = cache
            .get_or_compile(&compiler, &request("k", &[], "sm_80"))
            .unwrap();
        assert!(result.ptx.contains("ptx of k"));
        assert!(matches!(
            result.store_error,
            Some(KernelError::Cache { .. })
        ));
    }

    #[test]
    fn an_empty_cache_file_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(dir.path());
        let req = request("k", &[], "sm_80");
        fs::write(cache.path_of(&CacheKey::of(&req)), "").unwrap();
        let compiler = CountingCompiler::new();
        assert!(!cache.get_or_compile(&compiler, &req).unwrap().from_cache);
        assert_eq!(compiler.compiles.get(), 1);
    }

    #[test]
    fn default_dir_is_ember_kernels_under_the_user_cache() {
        // The variable is not set here (set_var is unsafe with other test threads running).
        if std::env::var_os(CACHE_DIR_ENV).is_none() {
            assert!(KernelCache::from_env_or_default()
                .dir()
                .ends_with("ember/kernels"));
        }
    }
}
