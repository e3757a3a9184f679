//! Running tasks on task leases: the head grants this client resources on a worker, and the
//! client sends tasks straight to the executor holding them (its Unix socket on this machine,
//! its QUIC endpoint elsewhere), reusing each lease for the next task of the same kind. The
//! policy (which lease, when to ask for more, when to give one back) is the pure
//! [`LeasePool`]; this module carries its steps out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use ember_core::proto::Strategy;
use ember_core::proto::{
    encode, read_frame, write_frame, CallReply, ClientReply, ClientRequest, ErrorKind, LeaseSpec,
    LeasedTask, Placement, RemoteError, TaskLease, TaskRetry, LEASE_LOST, MAX_FRAME,
};
use tokio::sync::{oneshot, watch};

use crate::cluster::{too_large, Cluster};
use crate::lease_pool::{LeasePool, SlotId, Step, LINGER};
use crate::unix_caller::UnixCaller;
use crate::{CallArgs, Error};

/// How long a task lost with its lease's executor waits for the head to close that lease
/// (and so to probe its worker) before it runs again.
const HEAD_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A task to run: its function, its arguments (made for each attempt's destination), needs
/// and retry policy.
pub(crate) struct TaskRun {
    pub(crate) name: String,
    pub(crate) args: Arc<dyn CallArgs>,
    pub(crate) placement: Placement,
    pub(crate) retry: TaskRetry,
}

/// How tasks reach a lease's executor.
enum LeaseCaller {
    /// Its QUIC endpoint, one stream per task: from anywhere.
    Quic(quinn::Connection),
    /// The lease's Unix socket: from the same machine.
    Unix(UnixCaller<LeasedTask>),
}

/// A lease this client holds. Dropping it gives it back.
pub(crate) struct Lease {
    grant: TaskLease,
    caller: LeaseCaller,
    /// This client's side of the lease's stream at the head: finishing it gives the lease back.
    head: quinn::SendStream,
    /// What the head has said of the lease.
    state: watch::Receiver<LeaseState>,
    /// Set when a task lost the lease's executor: giving it back then asks the head to probe
    /// its worker.
    lost: AtomicBool,
}

/// What the head has said of a lease, on the lease's stream.
#[derive(Clone, Copy, Debug, Default)]
struct LeaseState {
    /// The lease takes no more tasks: the head took it back or lost its worker, or the
    /// connection to the head was lost. In that last case the head's next life closes the
    /// lease on its worker: the tasks already sent on it are answered, or answered `Moved`
    /// and sent on another lease, one the next life grants.
    revoked: bool,
    /// The head took it back (its node drains). Its executor sent the replies of the tasks it
    /// ran before closing, so a task it left without a reply did not run.
    taken_back: bool,
    /// The head is done with the lease: its stream ended.
    ended: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.lost.load(Ordering::Acquire) {
            let _ = self.head.reset(quinn::VarInt::from_u32(LEASE_LOST));
        } else {
            let _ = self.head.finish();
        }
    }
}

impl Lease {
    /// True while tasks may be sent on it.
    fn usable(&self) -> bool {
        let closed = match &self.caller {
            LeaseCaller::Quic(c) => c.close_reason().is_some(),
            LeaseCaller::Unix(u) => u.is_closed(),
        };
        !closed && !self.state.borrow().revoked
    }

    /// Whether its executor runs on this machine (and same-machine calls are on): a task's
    /// arguments are made for it so.
    fn same_host(&self, cluster: &Cluster) -> bool {
        cluster.same_host(&self.grant.endpoints.host)
    }

    async fn run(&self, cluster: &Cluster, task: LeasedTask) -> CallReply {
        match &self.caller {
            LeaseCaller::Unix(unix) => unix.call(task).await,
            LeaseCaller::Quic(conn) => {
                let what = format!("{}'s executor", self.grant.lease);
                match cluster.call_direct(conn, &task, &what).await {
                    Ok(bytes) => Ok(bytes),
                    Err(Error::Remote(e)) => Err(e),
                    // The stream never opened: the task was not sent.
                    Err(Error::ConnectionLost(why)) => Err(RemoteError::new(
                        ErrorKind::Moved,
                        format!("{why}; the task was not delivered"),
                    )),
                    Err(e) => Err(RemoteError::new(ErrorKind::WorkerDied, e.to_string())),
                }
            }
        }
    }
}

/// A lease as a task holds it: which of its pool's leases, and the lease.
type Held = (SlotId, Arc<Lease>);

/// The leases of one kind, and the tasks waiting for one.
struct Pool {
    name: String,
    placement: Placement,
    policy: LeasePool<Arc<Lease>>,
    waiters: HashMap<u64, oneshot::Sender<Result<Held, Error>>>,
}

/// One kind of lease: the task function and its archived needs.
type Kind = (String, Vec<u8>);

/// A client's task leases, by kind.
#[derive(Default)]
pub(crate) struct TaskLeases {
    pools: Mutex<HashMap<Kind, Pool>>,
    next_waiter: AtomicU64,
    reaper_started: AtomicBool,
}

impl TaskLeases {
    /// Runs a task on a lease of its kind, again on another lease when the one it ran on was
    /// lost with its process (up to `max_retries` times) and, when asked, when its own code
    /// failed. A task told that its lease was taken back did not run, and goes to another.
    pub(crate) async fn run(
        self: &Arc<Self>,
        cluster: &Cluster,
        task: TaskRun,
    ) -> Result<Vec<u8>, Error> {
        let placed = encode(&task.placement)?.to_vec();
        let kind: Kind = (task.name.clone(), placed);
        // A spread task takes a lease of its own, so each lands where spreading puts it.
        let reusable = task.placement.strategy != Strategy::Spread;
        let mut retries = 0u32;
        let mut lost: Option<RemoteError> = None;
        loop {
            let outcome = match self.acquire(cluster, &kind, &task, reusable).await {
                Ok((slot, lease)) => {
                    // The arguments as this lease's executor reads them: made anew for each
                    // attempt, which may go to another machine than the last.
                    let args = task
                        .args
                        .bytes_for(lease.same_host(cluster))
                        .map_err(Error::from)
                        .and_then(|args| too_large(args.len()).map(|()| args));
                    let args = match args {
                        Ok(args) => args,
                        Err(e) => {
                            // Nothing was sent: the lease serves on.
                            self.finished(cluster, &kind, slot, lease, reusable);
                            return Err(e);
                        }
                    };
                    let sent = LeasedTask {
                        lease: lease.grant.lease,
                        name: task.name.clone(),
                        args,
                    };
                    let mut reply = lease.run(cluster, sent).await;
                    let lost = matches!(&reply, Err(e) if e.kind == ErrorKind::WorkerDied);
                    let keep = reusable
                        && !lost
                        && !matches!(&reply, Err(e) if e.kind == ErrorKind::Moved);
                    let mut state = lease.state.clone();
                    if lost {
                        lease.lost.store(true, Ordering::Release);
                    }
                    self.finished(cluster, &kind, slot, lease, keep);
                    if lost {
                        // Before running it again, let the head close the lost lease: that
                        // probes its worker, so a dead one is gone before the next placement.
                        let ended = state.wait_for(|s| s.ended);
                        let _ = tokio::time::timeout(HEAD_CLOSE_WAIT, ended).await;
                        if state.borrow().taken_back {
                            reply = Err(RemoteError::new(
                                ErrorKind::Moved,
                                "its lease was taken back before the task ran",
                            ));
                        }
                    }
                    reply.map_err(Error::Remote)
                }
                // A retry no node can take now (the only one that could died): the caller
                // hears of the death, and why the task cannot run again.
                Err(Error::Remote(e))
                    if lost.is_some()
                        && matches!(e.kind, ErrorKind::Infeasible | ErrorKind::Unknown) =>
                {
                    let died = lost.take().expect("checked above");
                    return Err(Error::Remote(RemoteError::new(
                        ErrorKind::WorkerDied,
                        format!("{died}; it cannot run again: {e}"),
                    )));
                }
                // Refused (or its worker died before the lease opened, which counts as a
                // loss like any other).
                Err(e) => Err(e),
            };
            let e = match outcome {
                Ok(bytes) => return Ok(bytes),
                // It did not run there: to another lease, as is.
                Err(Error::Remote(e)) if e.kind == ErrorKind::Moved => continue,
                Err(Error::Remote(e)) => e,
                Err(other) => return Err(other),
            };
            let again = match e.kind {
                ErrorKind::WorkerDied => true,
                ErrorKind::User => task.retry.retry_user_errors,
                _ => false,
            };
            if !again || retries >= task.retry.max_retries {
                return Err(e.into());
            }
            retries += 1;
            tracing::warn!(task = %task.name, retries, "running the task again: {e}");
            if e.kind == ErrorKind::WorkerDied {
                lost = Some(e);
            }
        }
    }

    /// A usable lease of `kind` with room for the task: one held, or one the head grants.
    /// `reusable` is false when each lease of this kind runs one task only.
    async fn acquire(
        self: &Arc<Self>,
        cluster: &Cluster,
        kind: &Kind,
        task: &TaskRun,
        reusable: bool,
    ) -> Result<Held, Error> {
        self.start_reaper();
        loop {
            let waiter = self.next_waiter.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            {
                let mut pools = lock(&self.pools);
                // Looked up before inserting, so the hot path (a pool that exists) does not
                // copy the key.
                if !pools.contains_key(kind) {
                    let pool = Pool {
                        name: task.name.clone(),
                        placement: task.placement.clone(),
                        policy: LeasePool::new(reusable),
                        waiters: HashMap::new(),
                    };
                    pools.insert(kind.clone(), pool);
                }
                let pool = pools.get_mut(kind).expect("inserted above");
                pool.waiters.insert(waiter, tx);
                let steps = pool.policy.want(waiter, Instant::now());
                self.carry_out(&mut pools, cluster, kind, steps, None);
            }
            let (slot, lease) = rx.await.map_err(|_| {
                Error::Remote(RemoteError::new(
                    ErrorKind::Internal,
                    "the task's lease request was dropped",
                ))
            })??;
            if lease.usable() {
                return Ok((slot, lease));
            }
            self.finished(cluster, kind, slot, lease, false);
        }
    }

    /// A task is done with its lease; an unusable one is dropped (given back once no task
    /// holds it).
    fn finished(
        self: &Arc<Self>,
        cluster: &Cluster,
        kind: &Kind,
        slot: SlotId,
        lease: Arc<Lease>,
        keep: bool,
    ) {
        let mut pools = lock(&self.pools);
        let Some(pool) = pools.get_mut(kind) else {
            return;
        };
        let keep = keep && lease.usable();
        drop(lease);
        let steps = pool.policy.finished(slot, keep, Instant::now());
        self.carry_out(&mut pools, cluster, kind, steps, None);
    }

    /// Carries out the pool's steps, and those that follow from them, under the lock.
    /// `refusal` is why the head refused a lease, for the task told of it.
    fn carry_out(
        self: &Arc<Self>,
        pools: &mut HashMap<Kind, Pool>,
        cluster: &Cluster,
        kind: &Kind,
        steps: Vec<Step<Arc<Lease>>>,
        mut refusal: Option<Error>,
    ) {
        let mut steps = std::collections::VecDeque::from(steps);
        let mut give_back = Vec::new();
        while let Some(step) = steps.pop_front() {
            let Some(pool) = pools.get_mut(kind) else {
                return;
            };
            match step {
                Step::Run {
                    waiter,
                    slot,
                    lease,
                } => {
                    let sent = match pool.waiters.remove(&waiter) {
                        Some(tx) => tx.send(Ok((slot, lease))),
                        None => Err(Ok((slot, lease))),
                    };
                    if let Err(Ok((slot, lease))) = sent {
                        // That task went away while it waited: the next one gets the room.
                        let keep = lease.usable();
                        steps.extend(pool.policy.finished(slot, keep, Instant::now()));
                    }
                }
                Step::Fail { waiter } => {
                    let e = refusal.take().unwrap_or_else(|| {
                        Error::Remote(RemoteError::new(
                            ErrorKind::Internal,
                            "no lease was granted for the task",
                        ))
                    });
                    if let Some(tx) = pool.waiters.remove(&waiter) {
                        let _ = tx.send(Err(e));
                    }
                }
                Step::Request => {
                    let (name, placement) = (pool.name.clone(), pool.placement.clone());
                    // Idle leases of other kinds may hold what this one needs: give them back.
                    for (other, p) in pools.iter_mut() {
                        if other != kind {
                            give_back.extend(p.policy.take_idle());
                        }
                    }
                    let this = self.clone();
                    let cluster = cluster.clone();
                    let kind = kind.clone();
                    tokio::spawn(async move {
                        let granted = cluster.lease(name, placement).await;
                        this.on_reply(&cluster, &kind, granted);
                    });
                }
            }
        }
        forget_idle_pools(pools);
        drop(give_back);
    }

    /// The head answered a lease request.
    fn on_reply(self: &Arc<Self>, cluster: &Cluster, kind: &Kind, granted: Result<Lease, Error>) {
        let mut pools = lock(&self.pools);
        let Some(pool) = pools.get_mut(kind) else {
            return;
        };
        let (steps, refusal) = match granted {
            Ok(lease) => (pool.policy.granted(Arc::new(lease), Instant::now()), None),
            Err(e) => (pool.policy.refused(Instant::now()), Some(e)),
        };
        self.carry_out(&mut pools, cluster, kind, steps, refusal);
    }

    /// Gives back, every half `LINGER`, the leases idle for `LINGER`; stops with the client.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let leases: Weak<TaskLeases> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LINGER / 2);
            loop {
                tick.tick().await;
                let Some(leases) = leases.upgrade() else {
                    return;
                };
                let now = Instant::now();
                let expired: Vec<Arc<Lease>> = {
                    let mut pools = lock(&leases.pools);
                    let expired = pools
                        .values_mut()
                        .flat_map(|p| p.policy.expire(now, LINGER))
                        .collect();
                    forget_idle_pools(&mut pools);
                    expired
                };
                drop(expired);
            }
        });
    }
}

impl Cluster {
    /// Asks the head for a task lease and connects to its executor.
    pub(crate) async fn lease(&self, name: String, placement: Placement) -> Result<Lease, Error> {
        let req = ClientRequest::LeaseTask(LeaseSpec { name, placement });
        let (send, mut recv, grant) = loop {
            let (mut send, mut recv, generation) = self.open_head_stream().await?;
            let reply = async {
                write_frame(&mut send, &req).await?;
                read_frame::<_, ClientReply>(&mut recv, MAX_FRAME).await
            }
            .await;
            match reply {
                Ok(Some(ClientReply::TaskLeased(grant))) => break (send, recv, grant),
                Ok(Some(ClientReply::Error(e))) => return Err(e.into()),
                Ok(Some(other)) => return Err(crate::cluster::unexpected(other)),
                // The head went away before it granted the lease: ask its next life (a lease
                // the lost one granted is closed by the next).
                Err(_) | Ok(None) if self.head_lost(generation) => continue,
                Ok(None) => {
                    return Err(Error::ConnectionLost(
                        "the head closed the lease's stream".into(),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        };
        let ep = &grant.endpoints;
        let connected = if self.same_host(&ep.host) {
            let what = format!("{}'s executor", grant.lease);
            UnixCaller::connect(&ep.local_socket, self.token(), what)
                .await
                .map(LeaseCaller::Unix)
        } else {
            self.peer(&ep.peer_addr, ep.peer_fingerprint)
                .await
                .map(LeaseCaller::Quic)
        };
        let caller = match connected {
            Ok(caller) => caller,
            Err(e) => {
                // Its executor cannot be reached: its worker died before the head noticed.
                // Giving the lease back as lost has the head probe that worker, and waiting
                // for it to close the lease keeps the next request off a dead worker. The
                // task counts it as a loss, like one lost while running.
                let mut send = send;
                let _ = send.reset(quinn::VarInt::from_u32(LEASE_LOST));
                let closed = async {
                    while let Ok(Some(_)) = read_frame::<_, ClientReply>(&mut recv, MAX_FRAME).await
                    {
                    }
                };
                let _ = tokio::time::timeout(HEAD_CLOSE_WAIT, closed).await;
                return Err(Error::Remote(RemoteError::new(
                    ErrorKind::WorkerDied,
                    format!("{}'s executor cannot be reached: {e}", grant.lease),
                )));
            }
        };
        let (state_tx, state) = watch::channel(LeaseState::default());
        tokio::spawn(async move {
            // The head writes nothing more unless it takes the lease back or loses its worker,
            // and ends the stream once the lease is closed on the worker.
            if let Ok(Some(word)) = read_frame::<_, ClientReply>(&mut recv, MAX_FRAME).await {
                let taken_back =
                    matches!(word, ClientReply::Error(e) if e.kind == ErrorKind::Moved);
                state_tx.send_modify(|s| {
                    s.revoked = true;
                    s.taken_back = taken_back;
                });
                let _ = read_frame::<_, ClientReply>(&mut recv, MAX_FRAME).await;
            }
            state_tx.send_modify(|s| {
                s.revoked = true;
                s.ended = true;
            });
        });
        Ok(Lease {
            grant,
            caller,
            head: send,
            state,
            lost: AtomicBool::new(false),
        })
    }
}

/// Drops the pools that hold no lease, ask for none, and have no task waiting.
fn forget_idle_pools(pools: &mut HashMap<Kind, Pool>) {
    pools.retain(|_, p| !p.policy.is_empty() || !p.waiters.is_empty());
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
