//! Python actors from the caller's side: an [`Actor`] is created in the background (its
//! constructor's arguments may wait on other calls) and takes calls at once; they are sent
//! in the order they were made, once it exists, each answered through a [`Pending`].
//!
//! Each handle holds its actor: the creator's from its creation, one unpickled in another
//! process ([`attach_actor`]) from its unpickling. When Python drops a handle, its hold is
//! released once its calls are answered, and the actor stops once no handle anywhere holds
//! it. A call whose arguments carry handles keeps them alive until it ends (`keep`), by when
//! the callee holds those actors itself.

use ember::{ActorRef, CallArgs, Cluster};
use futures::stream::{FuturesUnordered, StreamExt};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::{mpsc, watch};

use crate::call_args::PythonArgs;
use crate::cluster::{current, explain, options, wait};
use crate::envelope::HostForms;
use crate::pending::{Outcome, Pending};

/// One call, queued for the actor.
struct Call {
    method: String,
    /// Its pickle, which owns the shared-memory files of its arguments' buffers (removed once
    /// the call has ended).
    payload: HostForms,
    deps: Vec<Pending>,
    pending: Pending,
    /// The actor handles pickled in `payload`, alive until the call has ended.
    keep: Option<Py<PyAny>>,
}

/// A Python actor's handle.
#[pyclass(frozen, module = "ember._ember")]
pub(crate) struct Actor {
    calls: mpsc::UnboundedSender<Call>,
    created: watch::Receiver<Option<Result<ActorRef, String>>>,
}

/// Creates a Python actor from `payload` (the package's pickle of the class and the
/// constructor's arguments) under `opts`, once `deps` ended; returns its handle at once.
/// `keep` (the actor handles pickled in the arguments) stays alive until the actor is
/// constructed, or could not be.
#[pyfunction]
#[pyo3(signature = (payload, deps, opts=None, keep=None))]
fn spawn_actor(
    payload: Vec<u8>,
    deps: Vec<Pending>,
    opts: Option<&Bound<'_, PyDict>>,
    keep: Option<Py<PyAny>>,
) -> PyResult<Actor> {
    let options = options(opts)?;
    let (runtime, cluster) = current()?;
    let (calls, queue) = mpsc::unbounded_channel();
    let (created_tx, created) = watch::channel(None);
    runtime.spawn(async move {
        // The head keeps the constructor's arguments to build the actor again, maybe on
        // another machine: inline.
        let args = PythonArgs::gather(&deps, HostForms::new(payload.into()))
            .await
            .and_then(|args| args.bytes_for(false).map_err(|e| e.to_string()));
        let made = match args {
            Ok(args) => cluster
                .spawn_bytes(crate::executor::PYTHON_ACTOR, args, &options)
                .await
                .map_err(explain),
            Err(e) => Err(e),
        };
        drop(keep);
        created_tx.send_replace(Some(made.clone()));
        serve(cluster, made, queue).await;
    });
    Ok(Actor { calls, created })
}

/// A handle to the existing actor `id`, made in another process (a handle passed to a task
/// or another actor): it holds the actor, taken before this returns (the GIL released
/// meanwhile), so the call that carried it may end and its creator let go without stopping
/// it; it calls the actor, following it across restarts, and releases it when Python drops
/// it. An actor that cannot be found gives a handle whose calls fail saying why.
#[pyfunction]
fn attach_actor(py: Python<'_>, id: &str) -> PyResult<Actor> {
    let id: ember::ActorId = id
        .parse()
        .map_err(|_| pyo3::exceptions::PyValueError::new_err(format!("not an actor id: {id}")))?;
    let (runtime, cluster) = current()?;
    let (calls, queue) = mpsc::unbounded_channel();
    let looked_up = cluster.clone();
    let found = py.detach(|| {
        wait(&runtime, async move {
            looked_up.lookup_actor(id).await.map_err(|e| e.to_string())
        })
    });
    let (_, created) = watch::channel(Some(found.clone()));
    runtime.spawn(serve(cluster, found, queue));
    Ok(Actor { calls, created })
}

/// Sends the actor's calls in order as they come, each once its arguments' calls ended,
/// many in flight at once; or fails them all if it could not be created. Once the handle is
/// dropped and its calls are answered, releases the handle's hold: the actor stops if no
/// other handle, here or in another process, holds it.
async fn serve(
    cluster: Cluster,
    made: Result<ActorRef, String>,
    mut queue: mpsc::UnboundedReceiver<Call>,
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
                let deps = PythonArgs::gather(&call.deps, call.payload);
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
                let keep = call.keep;
                let cluster = &cluster;
                in_flight.push(async move {
                    // Each attempt's arguments for where the actor runs then.
                    let outcome = actor.call_args(&method, &args).await.map_err(|e| e.to_string());
                    // Its arguments' shared-memory files go now.
                    drop(args);
                    pending.complete_from(cluster, outcome).await;
                    // The callee holds the actors of the handles it was passed by now.
                    drop(keep);
                });
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
    // Python dropped the handle and every call is answered: nothing here can call it any
    // more, so its hold goes. The actor stops once no handle anywhere holds it, as a Ray
    // actor does when its handles go.
    if let Ok(actor) = made {
        if let Err(e) = actor.release().await {
            tracing::debug!(actor = %actor.id(), "releasing an actor whose handle is gone: {e}");
        }
    }
}

#[pymethods]
impl Actor {
    /// Calls `method` with `payload` (the package's pickle of the arguments, or its frame)
    /// once `deps` ended; returns at once with what to wait on. Each attempt sends the large
    /// buffers of the payload and of the deps' results through shared memory when the actor
    /// runs on this machine, inline otherwise. `keep` (the actor handles pickled in the
    /// payload) and the shared-memory files of its arguments' buffers stay alive until the
    /// call has ended.
    #[pyo3(signature = (method, payload, deps, keep=None))]
    fn call(
        &self,
        method: String,
        payload: &Bound<'_, PyAny>,
        deps: Vec<Pending>,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<Pending> {
        let payload = HostForms::new(crate::envelope::bytes_of(payload)?.into());
        current()?;
        let pending = Pending::new();
        let call = Call {
            method,
            payload,
            deps,
            pending: pending.clone(),
            keep,
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
