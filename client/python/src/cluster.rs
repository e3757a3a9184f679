//! The process's connection to a cluster: one Tokio runtime, and the `ember::Cluster` that
//! `init` made, an embedded local one or a running one. A child forked after `init` has no
//! runtime threads: every call from it fails at once, saying so, rather than hanging.
//!
//! The runtime has one worker thread, as Ember's own processes run single-threaded
//! runtimes: Python threads only hand work to it and wait on results (GIL released), and
//! with a second worker each call woke both (about three context switches per synchronous
//! call between them, against under two with one), which on a small machine cost more than
//! the work.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};

use ember::{Cluster, LocalOptions, Options};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::call_args::PythonArgs;
use crate::envelope::HostForms;
use crate::pending::Pending;
use crate::EmberError;

/// The runtime and the cluster of this process, once `init` ran.
struct Connected {
    runtime: Arc<tokio::runtime::Runtime>,
    cluster: Cluster,
    /// The process that connected: a forked child is another.
    pid: u32,
    /// [`FORKS`] in the process that connected.
    forks: u64,
}

impl Connected {
    /// Whether this is the process that connected, not a fork of it.
    fn here(&self) -> bool {
        self.forks == FORKS.load(Ordering::Acquire)
    }
}

/// Forks this process is away from the first process that loaded the module: a child forked
/// from a process counts one more than it (`pthread_atfork`). Telling a fork from the process
/// that connected by this count needs no system call, where `getpid` is one on every call.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked_child() {
    FORKS.fetch_add(1, Ordering::AcqRel);
}

/// Counts forks from now on ([`FORKS`]); the module calls it when it loads.
pub(crate) fn watch_forks() {
    static WATCHING: Once = Once::new();
    WATCHING.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic, which is
        // async-signal-safe as the child side of a fork requires.
        unsafe {
            libc::pthread_atfork(None, None, Some(forked_child));
        }
    });
}

static CONNECTED: OnceLock<Mutex<Option<Connected>>> = OnceLock::new();

/// Held by `init` while it connects, with the GIL released; `CONNECTED` is only ever held
/// for a moment, so a thread holding the GIL never waits long for it.
static CONNECTING: Mutex<()> = Mutex::new(());

fn connected() -> &'static Mutex<Option<Connected>> {
    CONNECTED.get_or_init(|| Mutex::new(None))
}

pub(crate) fn error(e: impl std::fmt::Display) -> PyErr {
    EmberError::new_err(e.to_string())
}

/// The cluster and its runtime, or why there is none here.
pub(crate) fn current() -> PyResult<(Arc<tokio::runtime::Runtime>, Cluster)> {
    let guard = connected()
        .lock()
        .map_err(|_| error("Ember's state is poisoned"))?;
    let Some(c) = guard.as_ref() else {
        return Err(error(
            "ember is not initialised in this process: call ember.init() first",
        ));
    };
    if !c.here() {
        return Err(error(format!(
            "ember.init() ran in process {} and this process is a fork of it: a forked child \
             cannot use its parent's connection (its runtime threads did not survive the fork); \
             call ember.init() in the child, or start children with the 'spawn' method",
            c.pid
        )));
    }
    Ok((c.runtime.clone(), c.cluster.clone()))
}

/// Runs `fut` on `runtime` and waits for it on this thread, which may itself be driving
/// another runtime (a task's lease thread runs one): the wait is a plain channel's, never a
/// nested `block_on`. Call it with the GIL released.
pub(crate) fn wait<F>(runtime: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .expect("the runtime dropped a future it was waiting on")
}

/// Whether `init` ran in this very process.
#[pyfunction]
fn is_initialized() -> bool {
    connected()
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(Connected::here))
        .unwrap_or(false)
}

/// Connects this process: to the running cluster whose cluster file is `address` (a path),
/// or, with `address` None, to a new embedded local cluster of `workers` worker processes
/// with `gpus` logical GPUs each (this machine's real ones when 0 and it has them). Returns
/// the head's address.
#[pyfunction]
#[pyo3(signature = (address=None, workers=1, gpus=0, cpus=None, gpu_memory=None, accelerator=None))]
fn init(
    py: Python<'_>,
    address: Option<PathBuf>,
    workers: u32,
    gpus: u32,
    cpus: Option<f64>,
    gpu_memory: Option<String>,
    accelerator: Option<String>,
) -> PyResult<String> {
    // Connecting waits with the GIL released, holding only `CONNECTING`: never `CONNECTED`,
    // which threads holding the GIL take (a second task thread asking `is_initialized`).
    py.detach(|| -> Result<String, String> {
        let _one = CONNECTING
            .lock()
            .map_err(|_| "Ember's state is poisoned".to_string())?;
        {
            let mut guard = connected()
                .lock()
                .map_err(|_| "Ember's state is poisoned".to_string())?;
            if let Some(c) = guard.as_ref() {
                if c.here() {
                    return Err("ember is already initialised: call ember.shutdown() first".into());
                }
                // A fork's copy of its parent's connection: never used, never shut down here.
                if let Some(old) = guard.take() {
                    std::mem::forget(old);
                }
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ember-client")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start Ember's runtime: {e}"))?;
        let cluster = wait(&runtime, async move {
            match address {
                Some(path) => Cluster::discover(Some(&path)).await,
                None => {
                    let mut options = LocalOptions::new(workers);
                    options.gpus_per_worker = gpus;
                    options.cpus_per_worker = cpus;
                    options.gpu_memory = gpu_memory;
                    options.accelerator = accelerator;
                    Cluster::local(options).await
                }
            }
        })
        .map_err(|e| e.to_string())?;
        let head = cluster.cluster_file().address.to_string();
        let swept = crate::envelope::sweep_orphans();
        if swept > 0 {
            tracing::info!(
                swept,
                "removed shared-memory buffers of processes that died"
            );
        }
        let mut guard = connected()
            .lock()
            .map_err(|_| "Ember's state is poisoned".to_string())?;
        *guard = Some(Connected {
            runtime: Arc::new(runtime),
            cluster,
            pid: std::process::id(),
            forks: FORKS.load(Ordering::Acquire),
        });
        Ok(head)
    })
    .map_err(error)
}

/// This machine's id (its boot id): an executor on the same machine as its caller hands
/// large buffers over in shared memory.
#[pyfunction]
fn host_id() -> &'static str {
    ember_core::host::host_id()
}

/// Removes the shared-memory files of every result this process received (arrays already
/// made from them stay readable): at shutdown and at exit.
#[pyfunction]
fn release_buffers() {
    crate::envelope::release_all();
}

/// Disconnects: a local cluster's workers and head stop; a running cluster goes on (this
/// client's leases and actors end with its connection). Does nothing if not initialised.
#[pyfunction]
fn shutdown(py: Python<'_>) -> PyResult<()> {
    let taken = {
        let mut guard = connected()
            .lock()
            .map_err(|_| error("Ember's state is poisoned"))?;
        match guard.as_ref() {
            Some(c) if c.here() => guard.take(),
            _ => None,
        }
    };
    if let Some(c) = taken {
        let Connected {
            runtime, cluster, ..
        } = c;
        py.detach(|| wait(&runtime, cluster.shutdown()));
        if let Ok(rt) = Arc::try_unwrap(runtime) {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
    Ok(())
}

/// The options of one call, from the keyword arguments `ember.remote` takes.
pub(crate) fn options(opts: Option<&Bound<'_, PyDict>>) -> PyResult<Options> {
    let mut o = Options::new();
    let Some(opts) = opts else {
        return Ok(o);
    };
    for (key, value) in opts.iter() {
        let key: String = key.extract()?;
        if value.is_none() {
            continue;
        }
        o = match key.as_str() {
            "gpus" | "num_gpus" => o.gpus(value.extract()?),
            "cpus" | "num_cpus" => o.cpus(value.extract()?),
            "gpu_memory" => o.gpu_memory(&value.extract::<String>()?),
            "accelerator" | "accelerator_type" => o.accelerator(&value.extract::<String>()?),
            "priority" => o.priority(value.extract()?),
            "max_retries" => o.max_retries(value.extract()?),
            "retry_exceptions" => o.retry_user_errors(value.extract()?),
            "resources" => {
                let d = value.cast::<PyDict>()?;
                let mut o = o;
                for (name, amount) in d.iter() {
                    o = o.resource(&name.extract::<String>()?, amount.extract()?);
                }
                o
            }
            "max_restarts" => o.max_restarts(value.extract()?),
            "max_task_retries" => o.max_task_retries(value.extract()?),
            "checkpoint" => {
                if value.extract::<bool>()? {
                    o.checkpoint()
                } else {
                    o
                }
            }
            "checkpoint_every" => o.checkpoint_every(value.extract()?),
            "checkpoint_interval_ms" => {
                o.checkpoint_interval(std::time::Duration::from_millis(value.extract()?))
            }
            "pending_timeout_s" => {
                o.pending_timeout(std::time::Duration::from_secs_f64(value.extract()?))
            }
            other => {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "unknown option `{other}`"
                )))
            }
        };
    }
    Ok(o)
}

/// Submits one call of the Python task type with `payload` (the package's pickle) under
/// `options`; returns at once with what to wait on. The call is sent once every one of
/// `deps` (the calls whose results are its arguments) has ended; their results travel ahead
/// of the payload ([`PythonArgs`]), and a failed one fails the call with its error. Each
/// attempt sends their large buffers and the payload's through shared memory when its
/// executor runs on this machine, inline otherwise. `keep` (the actor handles pickled in
/// the payload) stays alive until the call has ended, as do the shared-memory files of its
/// arguments' buffers. The payload is a pickle's bytes or a frame
/// ([`crate::envelope::Frame`]).
#[pyfunction]
#[pyo3(signature = (payload, deps, opts=None, keep=None))]
fn submit_task(
    payload: &Bound<'_, PyAny>,
    deps: Vec<Pending>,
    opts: Option<&Bound<'_, PyDict>>,
    keep: Option<Py<PyAny>>,
) -> PyResult<Pending> {
    let payload = HostForms::new(crate::envelope::bytes_of(payload)?.into());
    let options = options(opts)?;
    let (runtime, cluster) = current()?;
    let pending = Pending::new();
    let done = pending.clone();
    runtime.spawn(async move {
        let outcome = match PythonArgs::gather(&deps, payload).await {
            Ok(args) => cluster
                .run_args(crate::executor::PYTHON_TASK, Arc::new(args), &options)
                .await
                .map_err(explain),
            Err(e) => Err(e),
        };
        done.complete_from(&cluster, outcome).await;
        // The callee holds the actors of the handles it was passed by now.
        drop(keep);
    });
    Ok(pending)
}

/// Same-machine calls on or off for this process's cluster, as
/// [`Cluster::set_same_host_calls`] sets them: off, every call's arguments travel inline
/// (and over QUIC), as to another machine. For tests and comparisons.
#[pyfunction]
fn _set_same_host_calls(enabled: bool) -> PyResult<()> {
    let (_, cluster) = current()?;
    cluster.set_same_host_calls(enabled);
    Ok(())
}

/// An error from the runtime, as Python is told it: a refusal for want of a worker that runs
/// Python says where such workers come from.
pub(crate) fn explain(e: ember::Error) -> String {
    let text = e.to_string();
    if text.contains(crate::executor::PYTHON_TASK) || text.contains(crate::executor::PYTHON_ACTOR) {
        format!(
            "{text} (no worker of this cluster runs Python: Python work runs on workers \
             started from the Python package, by its `ember worker` or `ember up`, or by \
             ember.init())"
        )
    } else {
        text
    }
}

/// The cluster's status as JSON (what `ember status --json` prints).
#[pyfunction]
fn status_json(py: Python<'_>) -> PyResult<String> {
    let (runtime, cluster) = current()?;
    let status = py
        .detach(|| wait(&runtime, async move { cluster.status().await }))
        .map_err(error)?;
    serde_json::to_string(&status).map_err(error)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(init, m)?)?;
    m.add_function(wrap_pyfunction!(shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(host_id, m)?)?;
    m.add_function(wrap_pyfunction!(release_buffers, m)?)?;
    m.add_function(wrap_pyfunction!(is_initialized, m)?)?;
    m.add_function(wrap_pyfunction!(submit_task, m)?)?;
    m.add_function(wrap_pyfunction!(_set_same_host_calls, m)?)?;
    m.add_function(wrap_pyfunction!(status_json, m)?)?;
    Ok(())
}
