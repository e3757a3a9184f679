//! Handles to remote actors. Calls go straight to the process hosting the actor; when that
//! process is lost, the handle asks the head where the actor is now, waits while it restarts,
//! and sends the call there.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_core::ids::{ActorId, NodeId};
use ember_core::proto::{
    ActorCall, ActorLocation, ErrorKind, RemoteError, Wire, CHECKPOINT_METHOD, MAX_FRAME,
};
use ember_core::resources::Allocation;

use crate::cluster::{too_large, Cluster};
use crate::unix_caller::UnixCaller;
use crate::{CallArgs, Error};

/// How long a call waits for its actor to come back before it fails.
pub const RESTART_WAIT: Duration = Duration::from_secs(30);

/// How calls reach an actor's process.
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// Over QUIC, one stream per call: from anywhere.
    Quic(quinn::Connection),
    /// Over its Unix socket: from the same machine.
    Unix(Arc<UnixCaller<ActorCall>>),
}

impl Caller {
    /// True once no call can reach the process this way.
    fn is_closed(&self) -> bool {
        match self {
            Caller::Quic(c) => c.close_reason().is_some(),
            Caller::Unix(u) => u.is_closed(),
        }
    }

    /// True when the connection ended in a way that suggests the process is gone (not one
    /// that closed its socket after a seal): the head should check on it.
    fn is_suspect(&self) -> bool {
        match self {
            Caller::Quic(c) => c.close_reason().is_some(),
            Caller::Unix(u) => u.is_gone(),
        }
    }
}

/// Where calls go now.
#[derive(Debug)]
struct Route {
    location: ActorLocation,
    caller: Caller,
}

/// How long a handle's hold on its actor lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Until [`ActorRef::release`] (or this client disconnects): the creator's hold, and
    /// that of [`Cluster::actor`].
    UntilReleased,
    /// Until the handle's last clone is dropped, or [`ActorRef::release`]: that of
    /// [`Cluster::lookup_actor`].
    WhileHandled,
}

/// What every clone of one handle shares.
struct ActorLink {
    cluster: Cluster,
    actor: ActorId,
    hold: Hold,
    /// The handle still holds the actor (not released yet).
    holding: AtomicBool,
    /// Names this handle's calls, with their sequence numbers, so that a call sent again after
    /// a restart is recognised.
    caller_id: u64,
    next_seq: AtomicU64,
    route: Mutex<Arc<Route>>,
    /// One relocation at a time; the others find the new route when they get the lock.
    relocating: tokio::sync::Mutex<()>,
}

/// The largest archived arguments of one actor call: a frame, less room for the call's
/// envelope (method name, ids).
pub(crate) const MAX_CALL_ARGS: usize = MAX_FRAME - 4096;

/// An untyped reference to an actor. Generated `<Type>Handle`s wrap one.
#[derive(Clone)]
pub struct ActorRef {
    cluster: Cluster,
    link: Arc<ActorLink>,
}

impl fmt::Debug for ActorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = self.route();
        f.debug_struct("ActorRef")
            .field("actor", &self.link.actor)
            .field("incarnation", &route.location.incarnation)
            .field("node", &route.location.node)
            .field("same_host", &matches!(route.caller, Caller::Unix(_)))
            .finish()
    }
}

impl ActorRef {
    pub(crate) fn new(
        cluster: Cluster,
        location: ActorLocation,
        caller: Caller,
        hold: Hold,
    ) -> Self {
        ActorRef {
            cluster: cluster.clone(),
            link: Arc::new(ActorLink {
                cluster,
                actor: location.actor,
                hold,
                holding: AtomicBool::new(true),
                caller_id: rand::random(),
                next_seq: AtomicU64::new(1),
                route: Mutex::new(Arc::new(Route { location, caller })),
                relocating: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn route(&self) -> Arc<Route> {
        self.link
            .route
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.link.actor
    }

    /// The node it runs on (as last reached).
    pub fn node(&self) -> NodeId {
        self.route().location.node
    }

    /// Where it runs and takes calls (as last reached).
    pub fn location(&self) -> ActorLocation {
        self.route().location.clone()
    }

    /// Which life of the actor calls reach: 1 when created, one more at each restart or move.
    pub fn incarnation(&self) -> u32 {
        self.route().location.incarnation
    }

    /// What placement gave it.
    pub fn allocation(&self) -> Allocation {
        self.route().location.allocation.clone()
    }

    /// True when calls go through the actor's Unix socket (it runs on this machine).
    pub fn is_same_host(&self) -> bool {
        matches!(self.route().caller, Caller::Unix(_))
    }

    /// Calls `method` with archived `args` and reads its result as `T`.
    ///
    /// If the actor's process is gone, the call waits (up to [`RESTART_WAIT`]) for the actor
    /// to restart and goes there. A call that was in flight when the process died is sent
    /// again only as often as the actor's `max_task_retries` allows; otherwise it fails with
    /// [`ErrorKind::WorkerDied`].
    ///
    /// Arguments too large to travel in one frame (with the call around them, within
    /// [`MAX_FRAME`]) fail at once with [`FrameError::TooLarge`](ember_core::proto::FrameError::TooLarge), before anything is sent.
    pub async fn call<A: Wire, T: Wire>(&self, method: &str, args: &A) -> Result<T, Error> {
        let args = ember_core::proto::encode(args)?.to_vec();
        let bytes = self.call_bytes(method, args).await?;
        Ok(ember_core::proto::decode(&bytes)?)
    }

    /// Calls `method` with its arguments as the actor's executor takes them (for a typed
    /// actor, their archive) and returns its result's bytes as they came: what
    /// [`ActorRef::call`] does after encoding and before decoding, for bindings whose actors
    /// take bytes of their own making (Python's pickles), with the same retries and moves.
    pub async fn call_bytes(&self, method: &str, args: Vec<u8>) -> Result<Vec<u8>, Error> {
        too_large(args.len())?;
        self.call_args(method, &args).await
    }

    /// Calls `method` as [`ActorRef::call_bytes`] does, with arguments made for each
    /// attempt's destination: every attempt (the first, and each one after the actor
    /// restarted or moved) asks `args` for its bytes, saying whether the actor's process now
    /// runs on this machine. Bytes too large to travel fail the call with
    /// [`FrameError::TooLarge`](ember_core::proto::FrameError::TooLarge), and bytes that cannot be made with [`Error::Args`], before
    /// they are sent.
    pub async fn call_args(&self, method: &str, args: &dyn CallArgs) -> Result<Vec<u8>, Error> {
        let seq = self.link.next_seq.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + RESTART_WAIT;
        let mut retries = 0u32;
        loop {
            let route = self.route();
            if route.caller.is_closed() {
                // Known to be unreachable before sending: wait for the next incarnation.
                self.relocate(&route, route.caller.is_suspect(), deadline)
                    .await?;
                continue;
            }
            // Made anew for each attempt: the actor may have moved to another machine.
            let same_host = self.cluster.same_host(&route.location.endpoints.host);
            let args = args.bytes_for(same_host)?;
            too_large(args.len())?;
            let call = ActorCall {
                actor: self.link.actor,
                caller: self.link.caller_id,
                seq,
                method: method.to_string(),
                args,
            };
            let outcome = match &route.caller {
                Caller::Unix(unix) => unix.call(call).await.map_err(Error::from),
                Caller::Quic(conn) => {
                    let what = format!("actor {actor}'s worker", actor = self.link.actor);
                    self.cluster.call_direct(conn, &call, &what).await
                }
            };
            let err = match outcome {
                Ok(bytes) => return Ok(bytes),
                Err(e) => e,
            };
            match lost(&err) {
                Lost::No => return Err(err),
                Lost::Moved => {
                    // The call did not run there: it goes to the next incarnation as is. A
                    // connection lost (not closed after a seal) means the process is gone:
                    // suspect it.
                    let suspect = route.caller.is_suspect();
                    self.relocate(&route, suspect, deadline).await?;
                }
                Lost::Process => {
                    let policy = route.location.restart;
                    if policy.max_restarts == 0 {
                        return Err(err);
                    }
                    self.relocate(&route, true, deadline).await?;
                    if !policy.may_retry_call(retries) {
                        return Err(Error::Remote(RemoteError::new(
                            ErrorKind::WorkerDied,
                            format!(
                                "{}'s process died during the call to `{method}`; the actor \
                                 restarted, but the call is not retried (max_task_retries = {})",
                                self.link.actor, policy.max_task_retries
                            ),
                        )));
                    }
                    retries += 1;
                }
            }
        }
    }

    /// Finds the incarnation after the one `stale` reached and connects to it, waiting while
    /// it restarts, until `deadline`. An incarnation that cannot be reached is reported to the
    /// head as suspect in turn.
    async fn relocate(
        &self,
        stale: &Arc<Route>,
        mut suspect: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(), Error> {
        let _one = self.link.relocating.lock().await;
        if !Arc::ptr_eq(&self.route(), stale) {
            return Ok(()); // Another call already moved on.
        }
        let mut known = stale.location.incarnation;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Remote(RemoteError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{} did not come back within {} s",
                        self.link.actor,
                        RESTART_WAIT.as_secs()
                    ),
                )));
            }
            let location = self
                .cluster
                .locate_actor(self.link.actor, known, suspect, left)
                .await?;
            let same = location.incarnation == known;
            // A new incarnation, or the same one found alive by the head: connect afresh.
            match self.cluster.caller(&location).await {
                Ok(caller) => {
                    *self.link.route.lock().unwrap_or_else(|p| p.into_inner()) =
                        Arc::new(Route { location, caller });
                    return Ok(());
                }
                Err(e) if matches!(lost(&e), Lost::Process) => {
                    tracing::debug!(actor = %self.link.actor, "cannot reach it yet: {e}");
                    known = location.incarnation;
                    suspect = true;
                    if same {
                        // Its worker has not noticed the loss yet: give it a moment.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Saves a checkpoint now and returns its sequence number once the head has recorded it.
    /// The actor's type must implement [`Checkpoint`](crate::Checkpoint).
    pub async fn checkpoint(&self) -> Result<u64, Error> {
        self.call(CHECKPOINT_METHOD, &()).await
    }

    /// Stops the actor for good and frees its resources, whoever holds it.
    pub async fn kill(&self) -> Result<(), Error> {
        self.link.holding.store(false, Ordering::Relaxed);
        self.cluster.kill_actor(self.link.actor).await
    }

    /// Lets go of this handle's hold on the actor, for every clone of it: the actor stops
    /// once no handle of any client holds it (its creator's included), and lives on while
    /// another does. The handle can still call it while it lives. Releasing twice is
    /// releasing once.
    pub async fn release(&self) -> Result<(), Error> {
        if !self.link.holding.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        self.cluster
            .held()
            .release(&self.cluster, self.link.actor)
            .await
    }
}

impl Drop for ActorLink {
    /// The last clone of a [`Hold::WhileHandled`] handle lets go of its hold (on the Tokio
    /// runtime it is dropped on; without one, the hold lasts until this client disconnects).
    fn drop(&mut self) {
        if self.hold != Hold::WhileHandled || !self.holding.swap(false, Ordering::Relaxed) {
            return;
        }
        let (cluster, actor) = (self.cluster.clone(), self.actor);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = cluster.held().release(&cluster, actor).await {
                        tracing::debug!(%actor, "releasing a dropped handle's hold: {e}");
                    }
                });
            }
            Err(_) => tracing::debug!(
                %actor,
                "a handle dropped outside a Tokio runtime keeps its hold until disconnect"
            ),
        }
    }
}

/// Whether a failed call lost its actor's process.
enum Lost {
    /// No: the error is the call's own.
    No,
    /// The call did not run: the actor moved, or its process was gone before the call was
    /// written.
    Moved,
    /// The process (or its connection) went away; the call may or may not have run.
    Process,
}

/// A head that went away is none of these: the head is not on a call's path, and a request
/// to it ([`Error::HeadUnreachable`], [`Error::HeadLost`]) says nothing of the actor's process.
fn lost(e: &Error) -> Lost {
    match e {
        Error::Remote(r) if r.kind == ErrorKind::Moved => Lost::Moved,
        Error::Remote(r) if r.kind == ErrorKind::WorkerDied => Lost::Process,
        Error::ConnectionLost(_) | Error::Connect { .. } => Lost::Process,
        _ => Lost::No,
    }
}

/// A typed actor handle, generated by `#[ember::actor]`.
pub trait RemoteActor: Sized {
    /// Wraps a reference to a newly created actor.
    fn from_ref(actor: ActorRef) -> Self;
    /// The untyped reference.
    fn actor_ref(&self) -> &ActorRef;
}
