//! The Python task type. Workers started from this package (their executors are
//! `python -m ember`) register `ember::python`: its arguments are a pickle the package makes
//! (`ember._executor.run_task` reads it: the function, pickled once per definition and
//! cached here by its id, and the call's arguments), its result the pickle of what the
//! function returned or raised. Placement sends Python work only to workers that carry it;
//! a worker started from a plain Rust executable does not.

use std::sync::Mutex;

use ember_worker::registry::{
    ActorEntry, ActorInstance, CallError, CallOutcome, Started, TaskEntry,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tokio::sync::oneshot;

/// The task type name of Python functions.
pub(crate) const PYTHON_TASK: &str = "ember::python";

/// Runs one Python call on the lease's thread: takes the GIL (no Tokio thread waits on it:
/// a lease runs on a thread of its own), hands the bytes to `ember._executor.run_task` and
/// returns the bytes it gives back. What the function raised travels inside those bytes;
/// only a failure of the machinery itself is an error here.
fn run_python_task(args: &[u8]) -> Result<Vec<u8>, CallError> {
    Python::attach(|py| {
        let run = py
            .import("ember._executor")
            .and_then(|m| m.getattr("run_task"))
            .map_err(|e| CallError::User(format!("cannot load Ember's Python executor: {e}")))?;
        let out = run
            .call1((PyBytes::new(py, args),))
            .map_err(|e| CallError::User(format!("Ember's Python executor failed: {e}")))?;
        let bytes = out.cast::<PyBytes>().map_err(|e| {
            CallError::User(format!("Ember's Python executor returned no bytes: {e}"))
        })?;
        Ok(bytes.as_bytes().to_vec())
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
    /// Ends the call with `envelope`, the pickle of its outcome; a second call does nothing.
    fn __call__(&self, envelope: &Bound<'_, PyBytes>) {
        let sender = self
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(sender) = sender {
            // The caller may have gone: nothing waits for the outcome then.
            let _ = sender.send(Ok(envelope.as_bytes().to_vec()));
        }
    }
}

/// A Python error raised while building or running an actor, as text for the caller.
fn user(e: PyErr) -> CallError {
    CallError::User(e.to_string())
}

/// Builds an actor through `ember._executor.<how>(bytes)`.
fn make_actor(how: &str, args: &[u8]) -> Result<Box<dyn ActorInstance>, CallError> {
    Python::attach(|py| {
        let boxed = py
            .import("ember._executor")
            .and_then(|m| m.getattr(how))
            .and_then(|f| f.call1((PyBytes::new(py, args),)))
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
        Python::attach(|py| {
            let out = self
                .boxed
                .bind(py)
                .call_method1("call", (method, PyBytes::new(py, args)))
                .map_err(user)?;
            let bytes = out.cast::<PyBytes>().map_err(|e| user(e.into()))?;
            Ok(bytes.as_bytes().to_vec())
        })
    }

    fn start(&mut self, method: &str, args: &[u8]) -> Started {
        if !self.is_async {
            return Started::Done(self.call(method, args));
        }
        let (tx, rx) = oneshot::channel();
        Python::attach(|py| {
            let done = CallDone {
                outcome: Mutex::new(Some(tx)),
            };
            let started = Py::new(py, done).and_then(|done| {
                self.boxed
                    .bind(py)
                    .call_method1("start", (method, PyBytes::new(py, args), done))
            });
            match started {
                Ok(_) => Started::Later(rx),
                Err(e) => Started::Done(Err(user(e))),
            }
        })
    }

    fn save(&self) -> Option<Result<Vec<u8>, CallError>> {
        Python::attach(|py| {
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
