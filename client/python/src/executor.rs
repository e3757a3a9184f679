//! The Python task type. Workers started from this package (their executors are
//! `python -m ember`) register `ember::python`: its arguments are a pickle the package makes
//! (`ember._executor.run_task` reads it: the function, pickled once per definition and
//! cached here by its id, and the call's arguments), its result the pickle of what the
//! function returned or raised. Placement sends Python work only to workers that carry it;
//! a worker started from a plain Rust executable does not.

use std::cell::Cell;
use std::sync::Mutex;

use ember_worker::registry::{
    ActorEntry, ActorInstance, CallError, CallOutcome, Started, TaskEntry,
};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict};
use tokio::sync::oneshot;

/// The task type name of Python functions.
pub(crate) const PYTHON_TASK: &str = "ember::python";

/// This thread's Python thread state, made on its first call into Python and kept until the
/// thread exits. A thread of Ember's (a lease's, an actor's) has none of its own, and
/// `Python::attach` on such a thread makes one (`PyGILState_Ensure`) and destroys it when it
/// returns: an mmap and munmap of its frame stack and its setting up, on every task. Kept,
/// a call only takes and gives back the GIL.
#[derive(Clone, Copy)]
enum ThreadState {
    /// No call into Python yet on this thread.
    Unknown,
    /// The thread had a state of its own (made by Python): its owner keeps it.
    Foreign,
    /// The state made here, while the thread does not hold the GIL, and what
    /// `PyGILState_Ensure` returned, to give it back at the thread's exit.
    Kept {
        saved: *mut ffi::PyThreadState,
        gil_state: ffi::PyGILState_STATE,
    },
}

/// This thread's [`ThreadState`]; dropping it at the thread's exit destroys a kept state.
struct KeptThreadState(Cell<ThreadState>);

thread_local! {
    static KEPT: KeptThreadState = const { KeptThreadState(Cell::new(ThreadState::Unknown)) };
}

impl KeptThreadState {
    /// Makes this thread's state on its first call, unless it has one.
    fn keep(&self) {
        if !matches!(self.0.get(), ThreadState::Unknown) {
            return;
        }
        // SAFETY: the interpreter runs (this is `python -m ember`'s executor, its extension
        // loaded). A thread with no thread state is not attached, so `PyGILState_Ensure` makes
        // one and takes the GIL, and `PyEval_SaveThread` gives the GIL back keeping the state
        // (its count stays at one). `Python::attach` then finds the state and only takes the GIL.
        let state = unsafe {
            if ffi::PyGILState_GetThisThreadState().is_null() {
                let gil_state = ffi::PyGILState_Ensure();
                let saved = ffi::PyEval_SaveThread();
                ThreadState::Kept { saved, gil_state }
            } else {
                ThreadState::Foreign
            }
        };
        self.0.set(state);
    }
}

impl Drop for KeptThreadState {
    fn drop(&mut self) {
        if let ThreadState::Kept { saved, gil_state } = self.0.get() {
            // SAFETY: the state made by `keep`, not attached now (no `attach` runs while the
            // thread exits): taking the GIL back and releasing the last count destroys it.
            unsafe {
                ffi::PyEval_RestoreThread(saved);
                ffi::PyGILState_Release(gil_state);
            }
        }
    }
}

/// `Python::attach` for Ember's threads, keeping the thread's Python state between calls
/// ([`KeptThreadState`]).
fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    KEPT.with(KeptThreadState::keep);
    Python::attach(f)
}

/// `ember._executor.run_task`, looked up once.
static RUN_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Runs one Python call on the lease's thread: takes the GIL (no Tokio thread waits on it:
/// a lease runs on a thread of its own), hands the bytes to `ember._executor.run_task` (as a
/// bytearray: numpy arrays read out of band from it are writable, as the caller's were) and
/// returns the bytes it gives back. What the function raised travels inside those bytes;
/// only a failure of the machinery itself is an error here.
fn run_python_task(args: &[u8]) -> Result<Vec<u8>, CallError> {
    attach(|py| {
        let run = RUN_TASK
            .import(py, "ember._executor", "run_task")
            .map_err(|e| CallError::User(format!("cannot load Ember's Python executor: {e}")))?;
        let out = run
            .call1((PyByteArray::new(py, args),))
            .map_err(|e| CallError::User(format!("Ember's Python executor failed: {e}")))?;
        crate::envelope::bytes_of(&out)
            .map_err(|e| CallError::User(format!("Ember's Python executor returned no bytes: {e}")))
    })
}

inventory::submit! {
    TaskEntry {
        name: PYTHON_TASK,
        invoke: run_python_task,
    }
}

/// What the task or actor running on this thread was given, as a dict (`node`, `gpus`: the
/// physical indices, `gpu_shares`: the share of each, `gpu_memory`: bytes reserved on each,
/// `cpus`, `logical_gpus`), or `None` outside an executor.
#[pyfunction]
pub(crate) fn task_context(py: Python<'_>) -> PyResult<Option<Bound<'_, PyDict>>> {
    let Some(c) = ember_worker::context::current() else {
        return Ok(None);
    };
    let d = PyDict::new(py);
    d.set_item("node", c.node.to_string())?;
    d.set_item("gpus", c.gpu_indices())?;
    let shares: Vec<f64> = c
        .allocation
        .gpus
        .iter()
        .map(|g| g.share.as_gpus())
        .collect();
    d.set_item("gpu_shares", shares)?;
    let memory: Vec<u64> = c.allocation.gpus.iter().map(|g| g.memory).collect();
    d.set_item("gpu_memory", memory)?;
    d.set_item("cpus", c.allocation.cpu_millis as f64 / 1000.0)?;
    d.set_item(
        "logical_gpus",
        matches!(c.gpu_kind, ember_worker::context::GpuKind::Logical),
    )?;
    Ok(Some(d))
}

/// The actor type name of Python classes.
pub(crate) const PYTHON_ACTOR: &str = "ember::PythonActor";

/// A Python actor in its executor: the package's `ember._executor.ActorBox` around the
/// instance, which unpickles each call's arguments, runs the method and pickles the outcome.
///
/// An async actor (a class with a public `async def` method) has an event loop on a thread
/// of its own: each call is started there and answered [`Started::Later`], its outcome sent by
/// a [`CallDone`] that the loop calls when it ends. The actor's thread only waits for the GIL
/// to start the call, as it waits to run any other actor's call; no Tokio thread does.
struct PythonActor {
    boxed: Py<PyAny>,
    /// Its calls run on its event loop (`ActorBox.is_async`).
    is_async: bool,
}

/// Where the outcome of an async actor's call goes: its event loop calls it once, with the
/// envelope of what the method returned or raised.
#[pyclass(frozen, module = "ember._ember")]
pub(crate) struct CallDone {
    outcome: Mutex<Option<oneshot::Sender<CallOutcome>>>,
}

#[pymethods]
impl CallDone {
    /// Ends the call with `envelope`, its outcome's pickle or frame; a second call does
    /// nothing.
    fn __call__(&self, envelope: &Bound<'_, PyAny>) -> PyResult<()> {
        let sender = self
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(sender) = sender {
            // The caller may have gone: nothing waits for the outcome then.
            let _ = sender.send(Ok(crate::envelope::bytes_of(envelope)?));
        }
        Ok(())
    }
}

/// A Python error raised while building or running an actor, as text for the caller.
fn user(e: PyErr) -> CallError {
    CallError::User(e.to_string())
}

/// Builds an actor through `ember._executor.<how>(bytes)`.
fn make_actor(how: &str, args: &[u8]) -> Result<Box<dyn ActorInstance>, CallError> {
    attach(|py| {
        let boxed = py
            .import("ember._executor")
            .and_then(|m| m.getattr(how))
            .and_then(|f| f.call1((PyByteArray::new(py, args),)))
            .map_err(user)?;
        let is_async = boxed
            .getattr("is_async")
            .and_then(|a| a.is_truthy())
            .map_err(user)?;
        Ok(Box::new(PythonActor {
            boxed: boxed.unbind(),
            is_async,
        }) as Box<dyn ActorInstance>)
    })
}

fn construct_python_actor(args: &[u8]) -> Result<Box<dyn ActorInstance>, CallError> {
    make_actor("new_actor", args)
}

fn restore_python_actor(state: &[u8]) -> Result<Box<dyn ActorInstance>, CallError> {
    make_actor("restore_actor", state)
}

impl ActorInstance for PythonActor {
    fn call(&mut self, method: &str, args: &[u8]) -> Result<Vec<u8>, CallError> {
        attach(|py| {
            let out = self
                .boxed
                .bind(py)
                .call_method1("call", (method, PyByteArray::new(py, args)))
                .map_err(user)?;
            crate::envelope::bytes_of(&out).map_err(user)
        })
    }

    fn start(&mut self, method: &str, args: &[u8]) -> Started {
        if !self.is_async {
            return Started::Done(self.call(method, args));
        }
        let (tx, rx) = oneshot::channel();
        attach(|py| {
            let done = CallDone {
                outcome: Mutex::new(Some(tx)),
            };
            let started = Py::new(py, done).and_then(|done| {
                self.boxed
                    .bind(py)
                    .call_method1("start", (method, PyByteArray::new(py, args), done))
            });
            match started {
                Ok(_) => Started::Later(rx),
                Err(e) => Started::Done(Err(user(e))),
            }
        })
    }

    fn save(&self) -> Option<Result<Vec<u8>, CallError>> {
        attach(|py| {
            let out = match self.boxed.bind(py).call_method0("save") {
                Ok(out) => out,
                Err(e) => return Some(Err(user(e))),
            };
            if out.is_none() {
                return None;
            }
            Some(
                out.cast::<PyBytes>()
                    .map(|b| b.as_bytes().to_vec())
                    .map_err(|e| user(e.into())),
            )
        })
    }
}

inventory::submit! {
    ActorEntry {
        name: PYTHON_ACTOR,
        construct: construct_python_actor,
        restore: Some(restore_python_actor),
    }
}
