//! One executable, three roles: the user's program (or the `ember` tool), a worker agent, and an
//! executor. A process learns its role from `EMBER_ROLE`, set by whoever started it.
//!
//! Processes of the other roles are started as [`program`]: this executable, unless the
//! process said otherwise first ([`set_program`]), as an interpreter that runs Ember from an
//! extension module does (`python -m ember._role`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::agent::{self, WorkerConfig};

/// How to start a process of this program in another role: an executable and the arguments
/// that come before anything else, with the role in [`ROLE_VAR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The executable.
    pub exe: PathBuf,
    /// Its first arguments, e.g. `["-m", "ember._role"]` for an interpreter.
    pub args: Vec<OsString>,
}

impl Program {
    /// `exe`, with no arguments of its own.
    pub fn executable(exe: PathBuf) -> Self {
        Program {
            exe,
            args: Vec::new(),
        }
    }

    /// A command that starts it (the role and its settings still to be added).
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(&self.args);
        cmd
    }
}

impl std::fmt::Display for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.exe.display())?;
        for a in &self.args {
            write!(f, " {}", a.to_string_lossy())?;
        }
        Ok(())
    }
}

static PROGRAM: OnceLock<Program> = OnceLock::new();

/// Says how processes of this program start in another role, before any is started; an
/// error with the program already in use if it was set before.
pub fn set_program(program: Program) -> Result<(), Program> {
    PROGRAM.set(program.clone())?;
    Ok(())
}

/// How processes of this program start in another role: as set by [`set_program`], else
/// this executable.
pub fn program() -> std::io::Result<Program> {
    match PROGRAM.get() {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().map(Program::executable),
    }
}

/// The variable that names a process's role.
pub const ROLE_VAR: &str = "EMBER_ROLE";
/// The role of an executor process.
pub const ROLE_EXECUTOR: &str = "executor";
/// The role of a worker agent started by a local cluster.
pub const ROLE_WORKER: &str = "worker";
/// The Unix socket an executor connects back to.
pub const SOCKET_VAR: &str = "EMBER_EXECUTOR_SOCKET";
/// The process id of the worker that started an executor, which the executor checks is its
/// parent once it has armed its parent-death signal.
pub const WORKER_PID_VAR: &str = "EMBER_WORKER_PID";
/// A worker's configuration, as JSON, for a worker started by a local cluster.
pub const WORKER_CONFIG_VAR: &str = "EMBER_WORKER_CONFIG";

/// Serves this process's role and exits if it was started as an executor or a worker; returns
/// at once otherwise. Every Ember program calls it first (`#[ember::main]` does).
pub fn serve_role_if_asked() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let code = match role.as_str() {
        ROLE_EXECUTOR => run_executor(),
        ROLE_WORKER => run_worker_from_env(),
        other => {
            eprintln!("ember: unknown {ROLE_VAR}={other}");
            2
        }
    };
    std::process::exit(code);
}

fn run_executor() -> i32 {
    if let Err(e) = crate::executor::die_with_worker() {
        eprintln!("ember executor: {e}");
        return 2;
    }
    init_logging();
    let Ok(socket) = std::env::var(SOCKET_VAR) else {
        eprintln!("ember executor: {SOCKET_VAR} is not set");
        return 2;
    };
    let Some(rt) = runtime("executor") else {
        return 1;
    };
    let code = match rt.block_on(crate::executor::serve(&socket)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ember executor: {e}");
            1
        }
    };
    // User code still running on blocking threads dies with the process: its worker is gone.
    rt.shutdown_background();
    code
}

fn run_worker_from_env() -> i32 {
    let config: WorkerConfig = match std::env::var(WORKER_CONFIG_VAR)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ember worker: bad {WORKER_CONFIG_VAR}: {e}");
            return 2;
        }
    };
    run_worker(config)
}

/// Runs this process as a worker agent with `config` until it is told to stop (Ctrl-C,
/// SIGTERM) or gives up on the head, and returns its exit code (errors printed). The one way
/// every worker agent runs, whoever started it: `ember worker`, or a local cluster through
/// [`ROLE_VAR`]. It runs on the calling thread, on the single-threaded runtime every role
/// uses.
///
/// Where a CUDA driver is, it first makes NVRTC and cuBLAS loadable when cudarc's CUDA 12
/// names miss them (CUDA 13, NVIDIA's wheels): the process then starts again once, with an
/// alias folder in `LD_LIBRARY_PATH` that its executors inherit
/// ([`ember_kernels::cuda_libs::prepare`]).
pub fn run_worker(config: WorkerConfig) -> i32 {
    use ember_kernels::cuda_libs::{prepare, Preparation, When};
    let preparation = prepare(When::DriverPresent);
    init_logging();
    match preparation {
        Ok(Preparation::Prepared { alias_dir }) => tracing::info!(
            alias_dir = %alias_dir.display(),
            "NVRTC and cuBLAS loaded through an alias folder"
        ),
        Ok(Preparation::NotFound { missing }) => tracing::warn!(
            ?missing,
            "CUDA libraries not found (set EMBER_CUDA_LIB_DIRS); kernels needing them will fail"
        ),
        Ok(Preparation::Loadable | Preparation::NoDriver) => {}
        Err(error) => tracing::warn!(%error, "could not prepare the CUDA libraries"),
    }
    let Some(rt) = runtime("worker") else {
        return 1;
    };
    match rt.block_on(agent::run(config, agent::shutdown_signal())) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ember worker: {e}");
            1
        }
    }
}

/// The single-threaded runtime every role runs on (cross-thread wake-ups cost more than they
/// give on small machines); `None`, with the error printed, if it cannot be built.
fn runtime(role: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("ember {role}: cannot start the runtime: {e}");
            None
        }
    }
}

/// Sends `tracing` output to standard error, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
