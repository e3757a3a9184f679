//! Results to wait for. A submitted call completes its [`Pending`] from the runtime's
//! threads (never touching Python); Python threads wait for one or several with the GIL
//! released: first spinning briefly, one thread at a time ([`SPIN`]), then parked until a
//! call they wait for ends (each call wakes only its own waiters), waking every 50 ms to let
//! Python handle signals, so Ctrl-C interrupts a wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

use ember::{ActorId, Cluster};

use crate::envelope::{self, HostForms};
use crate::EmberError;

/// How often a waiting thread takes the GIL to check for signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// How long a waiting thread spins, yielding its CPU to any other thread that can run,
/// before it parks. A synchronous call's result comes within about this on one machine, and
/// a thread that parks lets its CPU go idle: waking it and the threads it hands work to then
/// costs more than the call (on this project's 2-vCPU virtual machine, sync calls ran about
/// twice as fast with the spin, and with less CPU per call).
const SPIN: Duration = Duration::from_micros(100);

/// Set while a thread spins: the others park at once, so that spinning never takes more
/// than one CPU from the threads doing the work.
static SPINNING: AtomicBool = AtomicBool::new(false);

/// Spins, yielding, until `ready()` holds or `until` passes, unless another thread spins;
/// returns whether `ready()` held.
fn spin_until(until: Instant, ready: impl Fn() -> bool) -> bool {
    if SPINNING.swap(true, Ordering::Acquire) {
        return false;
    }
    let done = loop {
        if ready() {
            break true;
        }
        if Instant::now() >= until {
            break false;
        }
        std::thread::yield_now();
    };
    SPINNING.store(false, Ordering::Release);
    done
}

/// How a call ended: its result's bytes, or why it failed.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The bytes the executor sent back (or that `put` laid out), shared: every `get` and
    /// every call taking it as an argument reads the same bytes, each call in the form its
    /// destination reads (shared-memory files on this machine, inline elsewhere), each form
    /// made once. It owns the shared-memory files they name: removed when the last clone
    /// goes.
    Done(Arc<HostForms>),
    /// The runtime's error, as text.
    Failed(String),
}

impl From<Result<Vec<u8>, String>> for Outcome {
    fn from(r: Result<Vec<u8>, String>) -> Self {
        match r {
            Ok(b) => Outcome::Done(Arc::new(HostForms::new(b.into()))),
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// A call's outcome and who waits for it.
#[derive(Default)]
struct Slot {
    /// The outcome once it came; the runtime's tasks (a call waiting on its arguments)
    /// wait on it through the channel.
    outcome: watch::Sender<Option<Outcome>>,
    /// Python threads parked until it comes.
    waiters: Mutex<Vec<Thread>>,
    /// The actors its result's handles name, held from its arrival until the last clone of
    /// the [`Pending`] goes: however late the result is unpickled, its handles find them.
    held: Mutex<Option<Held>>,
    /// What a put value keeps alive while it lives: the handles pickled in it, which hold
    /// their actors.
    keep: Mutex<Option<Py<PyAny>>>,
}

/// Actors held for a result, let go of when it goes.
struct Held {
    runtime: tokio::runtime::Handle,
    cluster: Cluster,
    actors: Vec<ActorId>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (cluster, actors) = (self.cluster.clone(), std::mem::take(&mut self.actors));
        self.runtime.spawn(async move {
            for actor in actors {
                if let Err(e) = cluster.release_actor(actor).await {
                    tracing::debug!(%actor, "letting go of an actor a result named: {e}");
                }
            }
        });
    }
}

impl Slot {
    fn waiters(&self) -> MutexGuard<'_, Vec<Thread>> {
        lock(&self.waiters)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A submitted call's result, once it came. Its outcome owns the shared-memory files its
/// result names.
#[pyclass(frozen, from_py_object, module = "ember._ember")]
#[derive(Clone)]
pub(crate) struct Pending {
    slot: Arc<Slot>,
}

impl Pending {
    pub(crate) fn new() -> Self {
        Pending {
            slot: Arc::new(Slot::default()),
        }
    }

    /// The call ended with `result` from `cluster`: holds the actors its result's handles
    /// name (before anyone can see it, so that they are held before the executor lets go of
    /// its own handles), then completes as [`Pending::complete`] does. An actor that cannot be
    /// held (stopped meanwhile) is left out: its handle fails, saying why, when called.
    pub(crate) async fn complete_from(&self, cluster: &Cluster, result: Result<Vec<u8>, String>) {
        if let Ok(bytes) = &result {
            let mut actors = envelope::actors_of(bytes);
            if !actors.is_empty() {
                let mut held = Vec::with_capacity(actors.len());
                for actor in actors.drain(..) {
                    match cluster.hold_actor(actor).await {
                        Ok(()) => held.push(actor),
                        Err(e) => {
                            tracing::debug!(%actor, "a result names an actor that is gone: {e}")
                        }
                    }
                }
                *lock(&self.slot.held) = Some(Held {
                    runtime: tokio::runtime::Handle::current(),
                    cluster: cluster.clone(),
                    actors: held,
                });
            }
        }
        self.complete(Outcome::from(result));
    }

    /// The call ended: stores how, and wakes its waiters.
    pub(crate) fn complete(&self, outcome: Outcome) {
        self.slot.outcome.send_replace(Some(outcome));
        let waiters = std::mem::take(&mut *self.slot.waiters());
        for thread in waiters {
            thread.unpark();
        }
    }

    /// A call already ended with `bytes`, keeping `keep` alive while it lives.
    pub(crate) fn ended_with(bytes: Vec<u8>, keep: Option<Py<PyAny>>) -> Self {
        let p = Pending::new();
        *lock(&p.slot.keep) = keep;
        p.slot
            .outcome
            .send_replace(Some(Outcome::Done(Arc::new(HostForms::new(bytes.into())))));
        p
    }

    fn outcome(&self) -> Option<Outcome> {
        self.slot.outcome.borrow().clone()
    }

    fn is_done(&self) -> bool {
        self.slot.outcome.borrow().is_some()
    }

    /// How the call ended, once it has (for a call whose argument it is).
    pub(crate) async fn ended(&self) -> Outcome {
        let mut rx = self.slot.outcome.subscribe();
        let ended = match rx.wait_for(Option::is_some).await {
            Ok(o) => o.clone(),
            Err(_) => None,
        };
        ended.unwrap_or_else(|| Outcome::Failed("the result was lost".into()))
    }
}

/// This thread, registered as a waiter of some calls until dropped.
struct Waiting<'a> {
    on: &'a [Pending],
    me: Thread,
}

impl<'a> Waiting<'a> {
    /// Registers this thread with each of `on` still running: its end unparks the thread.
    fn register(on: &'a [Pending]) -> Self {
        let me = std::thread::current();
        for p in on {
            let mut waiters = p.slot.waiters();
            // Checked under the lock `complete` takes after storing the outcome: a call that
            // ends later finds this thread in its list.
            if !p.is_done() {
                waiters.push(me.clone());
            }
        }
        Waiting { on, me }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        for p in self.on {
            p.slot.waiters().retain(|t| t.id() != self.me.id());
        }
    }
}

/// Waits, GIL released, until `ready()` holds or `timeout` passes: spins for up to [`SPIN`],
/// then parks, woken by the end of any of `on` (the calls `ready` looks at); checks for
/// signals (so Ctrl-C raises KeyboardInterrupt) every [`SIGNAL_CHECK`]. Returns whether
/// `ready()` held.
fn wait_until(
    py: Python<'_>,
    timeout: Option<f64>,
    on: &[Pending],
    ready: impl Fn() -> bool + Sync,
) -> PyResult<bool> {
    if ready() {
        return Ok(true);
    }
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    let spin = Instant::now() + SPIN;
    if py.detach(|| spin_until(deadline.map_or(spin, |d| d.min(spin)), &ready)) {
        return Ok(true);
    }
    let _waiting = Waiting::register(on);
    loop {
        let done = py.detach(|| {
            let step = Instant::now() + SIGNAL_CHECK;
            let until = deadline.map_or(step, |d| d.min(step));
            loop {
                if ready() {
                    return true;
                }
                let now = Instant::now();
                if now >= until {
                    return false;
                }
                // Returns at an unpark, also one left from an earlier wait: `ready` decides.
                std::thread::park_timeout(until - now);
            }
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
    /// TimeoutError when it passes, EmberError when the call failed in the runtime. A frame
    /// (a value with out-of-band buffers) comes as a bytearray, so that the arrays unpickled
    /// over it are writable without another copy.
    #[pyo3(signature = (timeout=None))]
    fn result<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let this = std::slice::from_ref(self);
        if !wait_until(py, timeout, this, || self.is_done())? {
            return Err(pyo3::exceptions::PyTimeoutError::new_err(format!(
                "the result did not come within {} s",
                timeout.unwrap_or_default()
            )));
        }
        match self.outcome() {
            Some(Outcome::Done(b)) if envelope::is_framed(b.given()) => {
                Ok(PyByteArray::new(py, b.given()).into_any())
            }
            Some(Outcome::Done(b)) => Ok(PyBytes::new(py, b.given()).into_any()),
            Some(Outcome::Failed(e)) => Err(EmberError::new_err(e)),
            None => Err(EmberError::new_err("the result was lost")),
        }
    }
}

/// A call already ended with `value` (a pickle's bytes or a [`Frame`](envelope::Frame)):
/// what `ember.put` makes. `keep` (the actor handles pickled in it) lives as long as it.
#[pyfunction]
#[pyo3(signature = (value, keep=None))]
fn completed(value: &Bound<'_, PyAny>, keep: Option<Py<PyAny>>) -> PyResult<Pending> {
    Ok(Pending::ended_with(envelope::bytes_of(value)?, keep))
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
    wait_until(py, timeout, &pending, enough)?;
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
