//! Results to wait for. A submitted call completes its [`Pending`] from the runtime's
//! threads (never touching Python); Python threads wait for one or several with the GIL
//! released, waking every 50 ms to let Python handle signals, so Ctrl-C interrupts a wait.

use std::sync::{Arc, Condvar, Mutex};

use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::envelope::SharedFiles;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::EmberError;

/// How often a waiting thread takes the GIL to check for signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// How a call ended: its result's bytes, or why it failed.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The bytes the executor sent back.
    Done(Vec<u8>),
    /// The runtime's error, as text.
    Failed(String),
}

impl From<Result<Vec<u8>, String>> for Outcome {
    fn from(r: Result<Vec<u8>, String>) -> Self {
        match r {
            Ok(b) => Outcome::Done(b),
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// Completions of every call of this process: a generation counter, bumped and announced on
/// each, so that one wait can watch many calls.
static COMPLETIONS: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());

/// A submitted call's result, once it came: Python threads wait for it through
/// [`COMPLETIONS`], the runtime's tasks (a call waiting on its arguments) through the channel.
/// It owns the shared-memory files its result names: they go when the last clone does.
#[pyclass(frozen, from_py_object, module = "ember._ember")]
#[derive(Clone)]
pub(crate) struct Pending {
    inner: Arc<Inner>,
}

struct Inner {
    slot: watch::Sender<Option<Outcome>>,
    files: Mutex<SharedFiles>,
}

impl Pending {
    pub(crate) fn new() -> Self {
        Pending {
            inner: Arc::new(Inner {
                slot: watch::Sender::new(None),
                files: Mutex::new(SharedFiles::default()),
            }),
        }
    }

    /// The call ended: stores how, and wakes every waiter.
    pub(crate) fn complete(&self, outcome: Outcome) {
        if let Outcome::Done(bytes) = &outcome {
            if let Ok(mut f) = self.inner.files.lock() {
                *f = SharedFiles::of(bytes);
            }
        }
        self.inner.slot.send_replace(Some(outcome));
        let (lock, cv) = &COMPLETIONS;
        if let Ok(mut g) = lock.lock() {
            *g += 1;
        }
        cv.notify_all();
    }

    fn outcome(&self) -> Option<Outcome> {
        self.inner.slot.borrow().clone()
    }

    fn is_done(&self) -> bool {
        self.inner.slot.borrow().is_some()
    }

    /// How the call ended, once it has (for a call whose argument it is).
    pub(crate) async fn ended(&self) -> Outcome {
        let mut rx = self.inner.slot.subscribe();
        let ended = match rx.wait_for(Option::is_some).await {
            Ok(o) => o.clone(),
            Err(_) => None,
        };
        ended.unwrap_or_else(|| Outcome::Failed("the result was lost".into()))
    }
}

/// Waits, GIL released, until `ready()` holds or `timeout` passes; checks for signals (so
/// Ctrl-C raises KeyboardInterrupt) every [`SIGNAL_CHECK`]. Returns whether `ready()` held.
fn wait_until(
    py: Python<'_>,
    timeout: Option<f64>,
    ready: impl Fn() -> bool + Sync,
) -> PyResult<bool> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    loop {
        let done = py.detach(|| {
            let (lock, cv) = &COMPLETIONS;
            let Ok(mut generation) = lock.lock() else {
                return true;
            };
            let step = deadline.map_or(SIGNAL_CHECK, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(SIGNAL_CHECK)
            });
            let seen = *generation;
            while !ready() && *generation == seen {
                let (g, t) = match cv.wait_timeout(generation, step) {
                    Ok(r) => r,
                    Err(_) => return true,
                };
                generation = g;
                if t.timed_out() {
                    break;
                }
            }
            ready()
        });
        if done {
            return Ok(true);
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

#[pymethods]
impl Pending {
    /// Whether the call has ended.
    fn done(&self) -> bool {
        self.is_done()
    }

    /// The result's bytes, waiting up to `timeout` seconds (forever with None); raises
    /// TimeoutError when it passes, EmberError when the call failed in the runtime.
    #[pyo3(signature = (timeout=None))]
    fn result<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyBytes>> {
        if !wait_until(py, timeout, || self.is_done())? {
            return Err(pyo3::exceptions::PyTimeoutError::new_err(format!(
                "the result did not come within {} s",
                timeout.unwrap_or_default()
            )));
        }
        match self.outcome() {
            Some(Outcome::Done(b)) => Ok(PyBytes::new(py, &b)),
            Some(Outcome::Failed(e)) => Err(EmberError::new_err(e)),
            None => Err(EmberError::new_err("the result was lost")),
        }
    }
}

/// A call already ended with `bytes`: what `ember.put` makes.
#[pyfunction]
fn completed(bytes: Vec<u8>) -> Pending {
    let p = Pending::new();
    p.complete(Outcome::Done(bytes));
    p
}

/// Waits until `num_returns` of `pending` have ended or `timeout` seconds pass; returns the
/// indices of those ended, in order.
#[pyfunction]
#[pyo3(signature = (pending, num_returns, timeout=None))]
fn wait_any(
    py: Python<'_>,
    pending: Vec<Pending>,
    num_returns: usize,
    timeout: Option<f64>,
) -> PyResult<Vec<usize>> {
    let enough = || pending.iter().filter(|p| p.is_done()).count() >= num_returns;
    wait_until(py, timeout, enough)?;
    Ok(pending
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_done())
        .map(|(i, _)| i)
        .collect())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Pending>()?;
    m.add_function(wrap_pyfunction!(wait_any, m)?)?;
    m.add_function(wrap_pyfunction!(completed, m)?)?;
    Ok(())
}
