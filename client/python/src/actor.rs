//! Python actors from the caller's side: an [`Actor`] is created in the background (its
//! constructor's arguments may wait on other calls) and takes calls at once; they are sent
//! in the order they were made, once it exists, each answered through a [`Pending`]. When
//! Python drops the handle, the actor stops once its calls are answered.

use ember::ActorRef;
use futures::stream::{FuturesUnordered, StreamExt};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::{mpsc, watch};

use crate::cluster::{current, explain, options, wait, with_deps};
use crate::pending::{Outcome, Pending};

/// One call, queued for the actor.
struct Call {
    method: String,
    payload: Vec<u8>,
    deps: Vec<Pending>,
    pending: Pending,
}

/// A Python actor's handle.
#[pyclass(frozen, module = "ember._ember")]
pub(crate) struct Actor {
    calls: mpsc::UnboundedSender<Call>,
    created: watch::Receiver<Option<Result<ActorRef, String>>>,
}

/// Creates a Python actor from `payload` (the package's pickle of the class and the
/// constructor's arguments) under `opts`, once `deps` ended; returns its handle at once.
#[pyfunction]
#[pyo3(signature = (payload, deps, opts=None))]
fn spawn_actor(
    payload: Vec<u8>,
    deps: Vec<Pending>,
    opts: Option<&Bound<'_, PyDict>>,
) -> PyResult<Actor> {
    let options = options(opts)?;
    let (runtime, cluster) = current()?;
    let (calls, queue) = mpsc::unbounded_channel();
    let (created_tx, created) = watch::channel(None);
    runtime.spawn(async move {
        let made = match with_deps(&deps, payload).await {
            Ok(args) => cluster
                .spawn_bytes(crate::executor::PYTHON_ACTOR, args, &options)
                .await
                .map_err(explain),
            Err(e) => Err(e),
        };
        created_tx.send_replace(Some(made.clone()));
        serve(made, queue, Owner::This).await;
    });
    Ok(Actor { calls, created })
}

/// A handle to the existing actor `id`, which this process does not own (a handle passed to
/// a task or another actor): it calls the actor, following it across restarts, and leaves
/// stopping it to its owner.
#[pyfunction]
fn attach_actor(id: &str) -> PyResult<Actor> {
    let id: ember::ActorId = id
        .parse()
        .map_err(|_| pyo3::exceptions::PyValueError::new_err(format!("not an actor id: {id}")))?;
    let (runtime, cluster) = current()?;
    let (calls, queue) = mpsc::unbounded_channel();
    let (created_tx, created) = watch::channel(None);
    runtime.spawn(async move {
        let found = cluster.lookup_actor(id).await.map_err(|e| e.to_string());
        created_tx.send_replace(Some(found.clone()));
        serve(found, queue, Owner::Another).await;
    });
    Ok(Actor { calls, created })
}

/// Who stops an actor once its handles here are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// This process created it: it stops with its last handle here.
    This,
    /// Another process created it: it lives on.
    Another,
}

/// Sends the actor's calls in order as they come, each once its arguments' calls ended,
/// many in flight at once; or fails them all if it could not be created. Once the handle is
/// dropped and its calls are answered, stops the actor if this process owns it.
async fn serve(
    made: Result<ActorRef, String>,
    mut queue: mpsc::UnboundedReceiver<Call>,
    owner: Owner,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some(call) = next else { break };
                let actor = match &made {
                    Ok(a) => a.clone(),
                    Err(e) => {
                        call.pending.complete(Outcome::Failed(format!("the actor could not be created: {e}")));
                        continue;
                    }
                };
                // Its arguments may be results of this actor's calls in flight: they go on
                // while it waits.
                let deps = with_deps(&call.deps, call.payload);
                tokio::pin!(deps);
                let args = loop {
                    tokio::select! {
                        args = &mut deps => break args,
                        Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                    }
                };
                let args = match args {
                    Ok(args) => args,
                    Err(e) => {
                        call.pending.complete(Outcome::Failed(e));
                        continue;
                    }
                };
                let pending = call.pending;
                let method = call.method;
                in_flight.push(async move {
                    let outcome = actor.call_bytes(&method, args).await.map_err(|e| e.to_string());
                    pending.complete(Outcome::from(outcome));
                });
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
    // Every handle is gone (Python dropped the last one) and every call answered: nothing
    // here can call it any more, so the actor this process made stops, as a Ray actor does
    // when its handles go.
    if let (Ok(actor), Owner::This) = (made, owner) {
        if let Err(e) = actor.kill().await {
            tracing::debug!(actor = %actor.id(), "stopping an actor whose handles are gone: {e}");
        }
    }
}

#[pymethods]
impl Actor {
    /// Calls `method` with `payload` (the package's pickle of the arguments) once `deps`
    /// ended; returns at once with what to wait on.
    fn call(&self, method: String, payload: Vec<u8>, deps: Vec<Pending>) -> PyResult<Pending> {
        current()?;
        let pending = Pending::new();
        let call = Call {
            method,
            payload,
            deps,
            pending: pending.clone(),
        };
        if self.calls.send(call).is_err() {
            pending.complete(Outcome::Failed("the actor's handle is closed".into()));
        }
        Ok(pending)
    }

    /// The actor's id once it exists, waiting up to `timeout` seconds; raises why it could
    /// not be created.
    #[pyo3(signature = (timeout=None))]
    fn id(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<String> {
        Ok(self.created(py, timeout)?.id().to_string())
    }

    /// Stops the actor (no restart), once it exists.
    fn kill(&self, py: Python<'_>) -> PyResult<()> {
        let (runtime, _) = current()?;
        let mut created = self.created.clone();
        py.detach(|| {
            wait(&runtime, async move {
                let made = created
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|v| v.clone());
                match made {
                    Some(Ok(a)) => a.kill().await.map_err(|e| e.to_string()),
                    Some(Err(_)) | None => Ok(()),
                }
            })
        })
        .map_err(crate::cluster::error)
    }
}

impl Actor {
    /// The actor once it exists, waiting up to `timeout` seconds (forever with `None`);
    /// an error saying why it could not be created, or that it was not in time.
    pub(crate) fn created(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<ActorRef> {
        let (runtime, _) = current()?;
        let mut created = self.created.clone();
        let made = async move {
            created
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|v| v.clone())
        };
        let made = py.detach(|| {
            wait(&runtime, async move {
                match timeout {
                    Some(t) => tokio::time::timeout(std::time::Duration::from_secs_f64(t), made)
                        .await
                        .ok()
                        .flatten(),
                    None => made.await,
                }
            })
        });
        match made {
            Some(Ok(a)) => Ok(a),
            Some(Err(e)) => Err(crate::cluster::error(e)),
            None => Err(pyo3::exceptions::PyTimeoutError::new_err(
                "the actor was not created in time",
            )),
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Actor>()?;
    m.add_function(wrap_pyfunction!(spawn_actor, m)?)?;
    m.add_function(wrap_pyfunction!(attach_actor, m)?)?;
    Ok(())
}
