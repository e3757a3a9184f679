//! Finding NVRTC and cuBLAS where cudarc's names miss them: CUDA 13, and NVIDIA's pip wheels.
//!
//! cudarc (built for CUDA 12.8) loads `libnvrtc` and `libcublas` by the names of CUDA 12
//! and before (`libnvrtc.so`, `libnvrtc.so.12`, ...), through the dynamic loader's search
//! path. A CUDA 13 machine has `libnvrtc.so.13` and `libcublas.so.13`, often only in the
//! folders of NVIDIA's Python wheels (`site-packages/nvidia/cu13/lib`), which no search path
//! names. The calls Ember makes have the same C signatures in 12 and 13 ([`Library::symbols`]).
//!
//! [`prepare`] bridges the gap before the first CUDA call. If cudarc's names already load,
//! nothing happens. Otherwise it looks for the libraries ([`search_dirs`]: the folders in
//! `EMBER_CUDA_LIB_DIRS`, `CUDA_HOME`/`CUDA_PATH`, `/usr/local/cuda`, and the nvidia wheels
//! of `python3`), makes a private folder of symbolic links ([`make_alias_dir`]) that gives
//! each library found cudarc's names (`libnvrtc.so.12 -> .../libnvrtc.so.13`) beside links
//! to the files next to it (`libnvrtc-builtins`, `libcublasLt`, reached through `$ORIGIN`),
//! and executes the program again with that folder first in `LD_LIBRARY_PATH` (the loader
//! reads it only at start). `EMBER_CUDA_ALIAS_DIR` marks the second start, so it happens
//! once; child processes (workers, executors) inherit both variables.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Extra folders to search for the libraries, separated by `:`; searched first.
pub const LIB_DIRS_VAR: &str = "EMBER_CUDA_LIB_DIRS";
/// Set on the program executed again by [`prepare`]: the folder of links it made.
pub const ALIAS_DIR_VAR: &str = "EMBER_CUDA_ALIAS_DIR";
/// The major versions of the libraries this crate can use, newest first.
pub const SUPPORTED_MAJORS: [u32; 2] = [13, 12];

/// Why preparing the CUDA libraries failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaLibsError {
    /// A file or folder of the alias folder could not be made.
    #[error("cannot make {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A library file could not be loaded by its full path.
    #[error("cannot load {path}: {message}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// A library loaded but lacks symbols Ember calls.
    #[error("{path} lacks {missing:?}")]
    MissingSymbols {
        /// The file.
        path: PathBuf,
        /// The symbols not found.
        missing: Vec<&'static str>,
    },
    /// Executing the program again failed.
    #[error("cannot execute {program} again: {source}")]
    Exec {
        /// The executable.
        program: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A CUDA library that cudarc loads by CUDA 12's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Library {
    /// `libnvrtc`, the run-time compiler.
    Nvrtc,
    /// `libcublas`.
    Cublas,
}

impl Library {
    /// Both libraries.
    pub const ALL: [Library; 2] = [Library::Nvrtc, Library::Cublas];

    /// The file name's stem, e.g. `libnvrtc`.
    pub fn stem(self) -> &'static str {
        match self {
            Library::Nvrtc => "libnvrtc",
            Library::Cublas => "libcublas",
        }
    }

    /// The names cudarc asks the loader for that an alias folder provides: the bare
    /// `libX.so` (asked first) and CUDA 12's `libX.so.12`.
    pub fn cudarc_names(self) -> [String; 2] {
        [
            format!("{}.so", self.stem()),
            format!("{}.so.12", self.stem()),
        ]
    }

    /// The C functions Ember's calls resolve in this library (cudarc looks each up on first
    /// use); each has the same signature in CUDA 12 and 13.
    pub fn symbols(self) -> &'static [&'static str] {
        match self {
            Library::Nvrtc => &[
                "nvrtcVersion",
                "nvrtcCreateProgram",
                "nvrtcCompileProgram",
                "nvrtcGetProgramLogSize",
                "nvrtcGetProgramLog",
                "nvrtcGetPTXSize",
                "nvrtcGetPTX",
                "nvrtcDestroyProgram",
            ],
            Library::Cublas => &[
                "cublasCreate_v2",
                "cublasSetStream_v2",
                "cublasDestroy_v2",
                "cublasSgemm_v2",
                "cublasGemmEx",
            ],
        }
    }

    /// Whether cudarc's own names load (a `dlopen` probe; never panics).
    pub fn loadable_by_cudarc(self) -> bool {
        let probe = || match self {
            // SAFETY: the probe only tries `dlopen` on cudarc's names and drops what it
            // opened; no symbol is called.
            Library::Nvrtc => unsafe { cudarc::nvrtc::sys::is_culib_present() },
            // SAFETY: as above.
            Library::Cublas => unsafe { cudarc::cublas::sys::is_culib_present() },
        };
        std::panic::catch_unwind(probe).unwrap_or(false)
    }
}

/// Whether the CUDA driver library (`libcuda`) loads by cudarc's names.
pub fn driver_loadable() -> bool {
    // SAFETY: as in `Library::loadable_by_cudarc`.
    std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// The first of cudarc's names for `library` that loads here, as cudarc picks it (e.g.
/// `libnvrtc.so.12`); `None` when none does.
pub fn cudarc_loaded_name(library: Library) -> Option<String> {
    let short = library.stem().trim_start_matches("lib");
    cudarc::get_lib_name_candidates(short)
        .into_iter()
        // SAFETY: as in `check_symbols`; the library is dropped at once.
        .find(|name| unsafe { libloading::Library::new(name) }.is_ok())
}

/// A library file found in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Which library.
    pub library: Library,
    /// Its file, e.g. `.../nvidia/cu13/lib/libnvrtc.so.13`.
    pub path: PathBuf,
    /// Its major version (from the file name).
    pub major: u32,
}

/// The first of `dirs` holding `library` in a supported major version (the newest such in
/// that folder), named `libX.so.MAJOR`.
pub fn find(library: Library, dirs: &[PathBuf]) -> Option<Found> {
    dirs.iter().find_map(|dir| {
        SUPPORTED_MAJORS.iter().find_map(|&major| {
            let path = dir.join(format!("{}.so.{major}", library.stem()));
            path.is_file().then_some(Found {
                library,
                path,
                major,
            })
        })
    })
}

/// The library folders of NVIDIA's wheels under one `nvidia` package folder:
/// `cu13/lib` first (CUDA 13's wheels share it), then every other `*/lib`, by name.
pub fn wheel_lib_dirs(nvidia_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(nvidia_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("lib"))
        .filter(|lib| lib.is_dir())
        .collect();
    dirs.sort_by_key(|dir| (!dir.starts_with(nvidia_dir.join("cu13")), dir.clone()));
    dirs
}

/// The `nvidia` package folders `python3` imports (NVIDIA's wheels install into one, a
/// namespace package that may span several `site-packages`); empty without `python3` or
/// the package, or if it does not answer within 10 s.
pub fn python_nvidia_dirs() -> Vec<PathBuf> {
    let script = "import nvidia\nfor p in nvidia.__path__: print(p)";
    let Ok(mut child) = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return Vec::new();
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Vec::new();
            }
        }
    }
    let Ok(output) = child.wait_with_output() else {
        return Vec::new();
    };
    if !output.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The folders searched for the libraries, in order: `EMBER_CUDA_LIB_DIRS`, `CUDA_HOME` and
/// `CUDA_PATH` (`lib64`, `lib`), `/usr/local/cuda/lib64`, then the wheels' folders of
/// `python3`'s `nvidia` package (asked only when `ask_python`).
pub fn search_dirs(ask_python: bool) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(LIB_DIRS_VAR)
        .map(|value| std::env::split_paths(&value).collect())
        .unwrap_or_default();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            let root = PathBuf::from(root);
            dirs.push(root.join("lib64"));
            dirs.push(root.join("lib"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    if ask_python {
        for nvidia in python_nvidia_dirs() {
            dirs.extend(wheel_lib_dirs(&nvidia));
        }
    }
    dirs.retain(|dir| !dir.as_os_str().is_empty());
    dirs
}

/// Makes `dir` a folder of symbolic links: for each of `found`, a link to every file in its
/// folder under that file's name, and links under [`Library::cudarc_names`] to the library
/// itself. Links already there are replaced.
pub fn make_alias_dir(found: &[Found], dir: &Path) -> Result<(), CudaLibsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CudaLibsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let link = |target: &Path, name: &str| -> Result<(), CudaLibsError> {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(&path)(error))
            }
            _ => {}
        }
        std::os::unix::fs::symlink(target, &path).map_err(io(&path))
    };
    for library in found {
        let folder = library.path.parent().unwrap_or(Path::new("/"));
        for entry in std::fs::read_dir(folder).map_err(io(folder))? {
            let entry = entry.map_err(io(folder))?;
            if entry.path().is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    link(&entry.path(), name)?;
                }
            }
        }
        for name in library.library.cudarc_names() {
            link(&library.path, &name)?;
        }
    }
    Ok(())
}

/// The alias folder for `found`: under the temporary folder, named by this user and a hash
/// of the libraries' paths, so that programs using the same libraries share it.
pub fn default_alias_dir(found: &[Found]) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for library in found {
        hash.update(library.path.as_os_str().as_encoded_bytes());
        hash.update([0]);
    }
    let digest = hex::encode(&hash.finalize()[..8]);
    // SAFETY: getuid cannot fail and has no preconditions.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("ember-cuda-libs-{uid}-{digest}"))
}

/// Loads the library file at `path` by its full path and looks up every one of
/// `library`'s [`Library::symbols`]. Needs no GPU.
pub fn check_symbols(library: Library, path: &Path) -> Result<(), CudaLibsError> {
    // SAFETY: loading runs the library's initialisers; NVIDIA's libraries have no
    // initialisers with preconditions on the loading process.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|error| CudaLibsError::Load {
        path: path.to_owned(),
        message: error.to_string(),
    })?;
    let missing: Vec<&'static str> = library
        .symbols()
        .iter()
        .copied()
        // SAFETY: the symbol is only looked up, never called.
        .filter(|symbol| unsafe { lib.get::<*const ()>(symbol.as_bytes()) }.is_err())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CudaLibsError::MissingSymbols {
            path: path.to_owned(),
            missing,
        })
    }
}

/// What [`prepare`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preparation {
    /// cudarc's names load every library: nothing to do.
    Loadable,
    /// This process was executed again by [`prepare`] with the links in this folder first
    /// in `LD_LIBRARY_PATH`.
    Prepared {
        /// The alias folder.
        alias_dir: PathBuf,
    },
    /// No CUDA driver here, and the caller asked to look only where one is.
    NoDriver,
    /// Some libraries are neither loadable nor found (those found are not used).
    NotFound {
        /// The libraries neither loadable nor found.
        missing: Vec<Library>,
    },
}

/// When [`prepare`] looks for the libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Always (a program that compiles CUDA C, GPU or not).
    Always,
    /// Only where the CUDA driver loads (a worker: without a GPU it needs neither library).
    DriverPresent,
}

/// What [`prepare`] would do, without executing anything: the libraries cudarc cannot load
/// by its names, and where each was found (`None`: nowhere).
pub fn plan(ask_python: bool) -> Vec<(Library, Option<Found>)> {
    let needed: Vec<Library> = Library::ALL
        .into_iter()
        .filter(|library| !library.loadable_by_cudarc())
        .collect();
    if needed.is_empty() {
        return Vec::new();
    }
    let dirs = search_dirs(ask_python);
    needed
        .into_iter()
        .map(|library| (library, find(library, &dirs)))
        .collect()
}

/// Makes NVRTC and cuBLAS loadable by cudarc's names: see the module's documentation. Call
/// it first thing in `main`, before any thread starts; where the libraries must be found,
/// it does not return (the program starts again, and that call returns
/// [`Preparation::Prepared`]).
pub fn prepare(when: When) -> Result<Preparation, CudaLibsError> {
    if let Some(alias_dir) = std::env::var_os(ALIAS_DIR_VAR) {
        return Ok(Preparation::Prepared {
            alias_dir: alias_dir.into(),
        });
    }
    if when == When::DriverPresent && !driver_loadable() {
        return Ok(Preparation::NoDriver);
    }
    let plan = plan(true);
    if plan.is_empty() {
        return Ok(Preparation::Loadable);
    }
    let found: Vec<Found> = plan.iter().filter_map(|(_, f)| f.clone()).collect();
    if found.len() < plan.len() {
        return Ok(Preparation::NotFound {
            missing: plan
                .iter()
                .filter(|(_, f)| f.is_none())
                .map(|(library, _)| *library)
                .collect(),
        });
    }
    let alias_dir = default_alias_dir(&found);
    make_alias_dir(&found, &alias_dir)?;
    reexec_with(&alias_dir)
}

/// `LD_LIBRARY_PATH` with `dir` first.
pub fn library_path_with(dir: &Path, current: Option<OsString>) -> OsString {
    let mut paths = vec![dir.to_owned()];
    if let Some(current) = current {
        paths.extend(std::env::split_paths(&current).filter(|p| !p.as_os_str().is_empty()));
    }
    std::env::join_paths(paths).unwrap_or_else(|_| dir.as_os_str().to_owned())
}

fn reexec_with(alias_dir: &Path) -> Result<Preparation, CudaLibsError> {
    use std::os::unix::process::CommandExt;
    let program = std::env::current_exe().map_err(|source| CudaLibsError::Exec {
        program: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| program.clone().into());
    let source = Command::new(&program)
        .arg0(arg0)
        .args(args)
        .env(
            "LD_LIBRARY_PATH",
            library_path_with(alias_dir, std::env::var_os("LD_LIBRARY_PATH")),
        )
        .env(ALIAS_DIR_VAR, alias_dir)
        .exec();
    Err(CudaLibsError::Exec { program, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"not really a library").unwrap();
    }

    /// A site-packages with CUDA 13's wheels (one shared `cu13/lib`) and CUDA 12's.
    fn site_packages() -> tempfile::TempDir {
        let site = tempfile::tempdir().unwrap();
        let nvidia = site.path().join("nvidia");
        for file in [
            "cu13/lib/libnvrtc.so.13",
            "cu13/lib/libnvrtc-builtins.so.13.0",
            "cu13/lib/libcublas.so.13",
            "cu13/lib/libcublasLt.so.13",
            "cuda_nvrtc/lib/libnvrtc.so.12",
            "cublas/lib/libcublas.so.12",
        ] {
            touch(&nvidia.join(file));
        }
        std::fs::create_dir_all(nvidia.join("cuda_runtime/include")).unwrap();
        site
    }

    #[test]
    fn wheel_folders_put_cuda_13_first_and_skip_folders_without_lib() {
        let site = site_packages();
        let nvidia = site.path().join("nvidia");
        assert_eq!(
            wheel_lib_dirs(&nvidia),
            vec![
                nvidia.join("cu13/lib"),
                nvidia.join("cublas/lib"),
                nvidia.join("cuda_nvrtc/lib"),
            ]
        );
        assert!(wheel_lib_dirs(&site.path().join("absent")).is_empty());
    }

    #[test]
    fn find_takes_the_first_folder_holding_a_supported_version() {
        let site = site_packages();
        let nvidia = site.path().join("nvidia");
        let dirs = wheel_lib_dirs(&nvidia);
        let nvrtc = find(Library::Nvrtc, &dirs).unwrap();
        assert_eq!(nvrtc.path, nvidia.join("cu13/lib/libnvrtc.so.13"));
        assert_eq!(nvrtc.major, 13);
        // Without the CUDA 13 folder, CUDA 12's.
        let cublas = find(Library::Cublas, &dirs[1..]).unwrap();
        assert_eq!(
            (cublas.path, cublas.major),
            (nvidia.join("cublas/lib/libcublas.so.12"), 12)
        );
        // An unsupported major version is not taken.
        let old = tempfile::tempdir().unwrap();
        touch(&old.path().join("libnvrtc.so.11"));
        assert_eq!(find(Library::Nvrtc, &[old.path().to_owned()]), None);
    }

    #[test]
    fn the_alias_folder_gives_cudarcs_names_and_the_neighbours() {
        let site = site_packages();
        let dirs = wheel_lib_dirs(&site.path().join("nvidia"));
        let found: Vec<Found> = Library::ALL
            .into_iter()
            .map(|library| find(library, &dirs).unwrap())
            .collect();
        let alias = tempfile::tempdir().unwrap();
        // Twice: a second program making the same folder replaces the links.
        for _ in 0..2 {
            make_alias_dir(&found, alias.path()).unwrap();
        }
        let target = |name: &str| std::fs::read_link(alias.path().join(name)).unwrap();
        let lib13 = site.path().join("nvidia/cu13/lib");
        assert_eq!(target("libnvrtc.so.12"), lib13.join("libnvrtc.so.13"));
        assert_eq!(target("libnvrtc.so"), lib13.join("libnvrtc.so.13"));
        assert_eq!(target("libcublas.so.12"), lib13.join("libcublas.so.13"));
        assert_eq!(target("libcublas.so"), lib13.join("libcublas.so.13"));
        assert_eq!(target("libcublasLt.so.13"), lib13.join("libcublasLt.so.13"));
        assert_eq!(
            target("libnvrtc-builtins.so.13.0"),
            lib13.join("libnvrtc-builtins.so.13.0")
        );
        let mut names: Vec<String> = std::fs::read_dir(alias.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 8, "{names:?}");
    }

    #[test]
    fn the_alias_folder_name_depends_on_the_libraries() {
        let a = Found {
            library: Library::Nvrtc,
            path: "/a/libnvrtc.so.13".into(),
            major: 13,
        };
        let b = Found {
            path: "/b/libnvrtc.so.13".into(),
            ..a.clone()
        };
        assert_eq!(
            default_alias_dir(std::slice::from_ref(&a)),
            default_alias_dir(std::slice::from_ref(&a))
        );
        assert_ne!(default_alias_dir(&[a]), default_alias_dir(&[b]));
    }

    #[test]
    fn the_library_path_puts_the_alias_folder_first() {
        let dir = Path::new("/tmp/aliases");
        assert_eq!(library_path_with(dir, None), OsString::from("/tmp/aliases"));
        assert_eq!(
            library_path_with(dir, Some("/x:/y".into())),
            OsString::from("/tmp/aliases:/x:/y")
        );
        assert_eq!(
            library_path_with(dir, Some("".into())),
            OsString::from("/tmp/aliases")
        );
    }

    #[test]
    fn a_file_that_is_no_library_is_a_load_error() {
        let site = site_packages();
        let path = site.path().join("nvidia/cu13/lib/libnvrtc.so.13");
        match check_symbols(Library::Nvrtc, &path) {
            Err(CudaLibsError::Load { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_library_without_the_symbols_names_them() {
        // The C library loads, and has none of NVRTC's functions.
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/libc.so.6",
            "/usr/lib/libc.so.6",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
        let Some(libc) = libc else {
            panic!("no libc.so.6 found to load");
        };
        match check_symbols(Library::Cublas, libc) {
            Err(CudaLibsError::MissingSymbols { missing, .. }) => {
                assert_eq!(missing, Library::Cublas.symbols())
            }
            other => panic!("{other:?}"),
        }
    }

    /// With NVIDIA's NVRTC and cuBLAS wheels for CUDA 13 in `EMBER_CUDA_LIB_DIRS` (as
    /// `.ci/run` installs them), they are found, and every symbol Ember calls resolves.
    #[test]
    #[ignore = "needs NVRTC and cuBLAS 13 in EMBER_CUDA_LIB_DIRS (no GPU needed)"]
    fn cuda13_libraries_are_found_and_have_every_symbol() {
        let dirs = search_dirs(false);
        for library in Library::ALL {
            let found = find(library, &dirs)
                .unwrap_or_else(|| panic!("{} not found in {dirs:?}", library.stem()));
            assert_eq!(found.major, 13, "{found:?}");
            check_symbols(library, &found.path).unwrap();
        }
    }
}
