//! The head's record of the cluster: nodes and their connections, what runs where, and the
//! requests waiting for capacity. Placement decisions come from the pure scheduler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{oneshot, watch};

use ember_core::ids::{ActorId, JobId, LeaseId, NodeId, TaskId};
use ember_core::proto::{ActorSpec, ErrorKind, Placement, RemoteError, WorkerHello};
use ember_core::resources::{actor_label, task_label, Allocation, GpuStat};
use ember_head_state::groups::Groups;
use ember_head_state::placement::{Decision, Lease, PlacementError, PlacementRequest, Scheduler};

use crate::checkpoints::CheckpointStore;
use ember_head_state::actor_life::{ActorLife, Phase};

/// A worker that has joined.
pub(crate) struct NodeEntry {
    pub(crate) conn: quinn::Connection,
    pub(crate) hello: WorkerHello,
    pub(crate) last_heartbeat: Instant,
    pub(crate) gpu_stats: Vec<GpuStat>,
    pub(crate) leaving: bool,
}

/// What a lease is for, for status and for cleaning up.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    Task { id: TaskId, name: String },
    Actor { id: ActorId, type_name: String },
    Job { id: JobId, command: String },
}

/// A request's life: waiting for capacity, then running on a node.
#[derive(Debug, Clone)]
pub(crate) struct WorkEntry {
    pub(crate) work: Work,
    pub(crate) placement: Placement,
    pub(crate) running: Option<(NodeId, Allocation)>,
}

/// An actor, from its creation until it is stopped: its spec (to start it again), its life
/// (alive, restarting or dead), and the lease of its live incarnation.
pub(crate) struct ActorEntry {
    pub(crate) spec: ActorSpec,
    /// The client connection that created it (its `stable_id`): the actor dies with it.
    pub(crate) owner: usize,
    pub(crate) owner_conn: quinn::Connection,
    /// The lease of the live incarnation; `None` while it restarts or once it is dead.
    pub(crate) lease: Option<LeaseId>,
    pub(crate) life: ActorLife,
    /// The newest recorded checkpoint: its sequence number and when it was recorded.
    pub(crate) last_checkpoint: Option<(u64, Instant)>,
    /// The phase as callers waiting for a restart see it.
    pub(crate) phase: watch::Sender<Phase>,
    /// Orders checkpoint writes against restores: a restore reads what every accepted save
    /// wrote, and a save checked against an incarnation is written before a restart reads.
    pub(crate) checkpoint_lock: Arc<tokio::sync::Mutex<()>>,
}

impl ActorEntry {
    /// The node its live incarnation runs on.
    pub(crate) fn node(&self) -> Option<NodeId> {
        self.life.location().map(|l| l.node)
    }
}

/// The head's shared state.
pub(crate) struct Head {
    pub(crate) token: String,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) checkpoints: CheckpointStore,
    sched: Mutex<Scheduler>,
    pub(crate) nodes: DashMap<NodeId, NodeEntry>,
    pub(crate) work: DashMap<LeaseId, WorkEntry>,
    pub(crate) actors: DashMap<ActorId, ActorEntry>,
    waiting: DashMap<LeaseId, oneshot::Sender<Lease>>,
    next_id: AtomicU64,
    pub(crate) node_count: watch::Sender<u32>,
    groups: Mutex<Groups>,
    /// Woken whenever a group forms, for actors waiting in a rendezvous.
    pub(crate) groups_changed: tokio::sync::Notify,
    /// Bumped whenever a node starts draining, for the task leases it holds.
    drains: watch::Sender<u64>,
}

impl Head {
    pub(crate) fn new(
        token: String,
        heartbeat_timeout: Duration,
        checkpoints: CheckpointStore,
    ) -> Self {
        Head {
            token,
            heartbeat_timeout,
            checkpoints,
            sched: Mutex::new(Scheduler::new()),
            nodes: DashMap::new(),
            work: DashMap::new(),
            actors: DashMap::new(),
            waiting: DashMap::new(),
            next_id: AtomicU64::new(1),
            node_count: watch::channel(0).0,
            groups: Mutex::new(Groups::new()),
            groups_changed: tokio::sync::Notify::new(),
            drains: watch::channel(0).0,
        }
    }

    /// A fresh number for any id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn with_scheduler<R>(&self, f: impl FnOnce(&mut Scheduler) -> R) -> R {
        let mut s = self.sched.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    pub(crate) fn with_groups<R>(&self, f: impl FnOnce(&mut Groups) -> R) -> R {
        let mut g = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Registers a joined worker.
    pub(crate) fn add_node(&self, id: NodeId, conn: quinn::Connection, hello: WorkerHello) {
        let mut resources = hello.resources.clone();
        resources.labels = hello
            .task_types
            .iter()
            .map(|t| task_label(t))
            .chain(hello.actor_types.iter().map(|a| actor_label(a)))
            .collect();
        resources.labels.sort();
        self.nodes.insert(
            id,
            NodeEntry {
                conn,
                hello,
                last_heartbeat: Instant::now(),
                gpu_stats: Vec::new(),
                leaving: false,
            },
        );
        self.with_scheduler(|s| s.add_node(id, resources));
        self.node_count.send_replace(self.nodes.len() as u32);
        self.place_waiting();
    }

    /// Forgets a node that left or died; what ran there is lost with it. Returns the leases
    /// lost and the actors (with their incarnations) that ran there.
    pub(crate) fn remove_node(&self, id: NodeId) -> (Vec<LeaseId>, Vec<(ActorId, u32)>) {
        let lost = self.with_scheduler(|s| s.remove_node(id));
        self.nodes.remove(&id);
        self.node_count.send_replace(self.nodes.len() as u32);
        let lost: Vec<LeaseId> = lost.into_iter().map(|l| l.id).collect();
        for lease in &lost {
            self.work.remove(lease);
        }
        let actors = self
            .actors
            .iter()
            .filter(|a| a.node() == Some(id))
            .map(|a| (*a.key(), a.life.incarnation()))
            .collect();
        (lost, actors)
    }

    /// True while a task or job holds a lease on `node`.
    pub(crate) fn running_on(&self, node: NodeId) -> bool {
        self.work.iter().any(|w| {
            !matches!(w.work, Work::Actor { .. })
                && w.running.as_ref().is_some_and(|(n, _)| *n == node)
        })
    }

    /// Tells callers waiting on an actor about its current phase.
    pub(crate) fn publish(&self, actor: ActorId) {
        if let Some(a) = self.actors.get(&actor) {
            a.phase.send_replace(a.life.phase().clone());
        }
    }

    /// How long a worker suspected by a caller has to answer a probe before it is declared
    /// dead: a quarter of the heartbeat window, at least 200 ms.
    pub(crate) fn probe_timeout(&self) -> Duration {
        (self.heartbeat_timeout / 4).max(Duration::from_millis(200))
    }

    /// Asks for capacity and waits for it. Fails at once if no node could ever satisfy it.
    /// `label` restricts placement to nodes whose executable has that task or actor type.
    pub(crate) async fn acquire(
        &self,
        lease: LeaseId,
        placement: &Placement,
        label: Option<String>,
    ) -> Result<Lease, RemoteError> {
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(lease, tx);
        let request = PlacementRequest {
            lease,
            demand: placement.demand.clone(),
            strategy: placement.strategy,
            affinity: placement.affinity,
            priority: placement.priority,
            labels: label.into_iter().collect(),
        };
        let decision = self.with_scheduler(|s| s.request(request));
        match decision {
            Decision::Placed(l) => {
                self.waiting.remove(&lease);
                Ok(l)
            }
            Decision::Rejected(e) => {
                self.waiting.remove(&lease);
                // No node has the type at all: the request names something unknown.
                let kind = match e {
                    PlacementError::MissingLabel(_) => ErrorKind::Unknown,
                    _ => ErrorKind::Infeasible,
                };
                Err(RemoteError::new(kind, e.to_string()))
            }
            Decision::Queued => {
                tracing::debug!(%lease, "waiting for capacity");
                rx.await.map_err(|_| {
                    RemoteError::new(ErrorKind::Internal, "the head dropped a waiting request")
                })
            }
        }
    }

    /// Withdraws a request that still waits, or releases it if it was placed meanwhile.
    pub(crate) fn abandon(&self, lease: LeaseId) {
        self.waiting.remove(&lease);
        let cancelled = self.with_scheduler(|s| s.cancel(lease));
        if !cancelled {
            self.release(lease);
        }
    }

    /// Returns a lease's capacity and hands freed capacity to waiting requests.
    pub(crate) fn release(&self, lease: LeaseId) {
        self.work.remove(&lease);
        if self.with_scheduler(|s| s.release(lease)) {
            self.place_waiting();
        }
    }

    /// Places waiting requests that fit now and wakes their handlers.
    pub(crate) fn place_waiting(&self) {
        loop {
            let placed = self.with_scheduler(|s| s.place_queued());
            if placed.is_empty() {
                return;
            }
            let mut freed = false;
            for lease in placed {
                let id = lease.id;
                let delivered = match self.waiting.remove(&id) {
                    Some((_, tx)) => tx.send(lease).is_ok(),
                    None => false,
                };
                if !delivered {
                    // Its requester is gone: give the capacity straight back.
                    freed |= self.with_scheduler(|s| s.release(id));
                }
            }
            if !freed {
                return;
            }
        }
    }

    /// Marks a node as leaving: nothing new is placed there, and its task leases are taken
    /// back.
    pub(crate) fn start_draining(&self, node: NodeId) {
        self.with_scheduler(|s| s.set_schedulable(node, false));
        if let Some(mut n) = self.nodes.get_mut(&node) {
            n.leaving = true;
        }
        self.drains.send_modify(|n| *n += 1);
    }

    /// Resolves once `node` is draining (at once if it already is, or is gone).
    pub(crate) async fn node_draining(&self, node: NodeId) {
        let mut drains = self.drains.subscribe();
        loop {
            if self.nodes.get(&node).is_none_or(|n| n.leaving) {
                return;
            }
            if drains.changed().await.is_err() {
                return;
            }
        }
    }

    /// How many datagrams have come from a node's worker, to tell a busy worker from a silent
    /// one.
    pub(crate) fn datagrams_from(&self, node: NodeId) -> Option<u64> {
        self.node_conn(node).map(|c| c.stats().udp_rx.datagrams)
    }

    /// True when datagrams came from a node's worker since `before` (its count from
    /// [`Head::datagrams_from`]): a worker slow to answer but not silent is busy, not dead.
    pub(crate) fn heard_from_since(&self, node: NodeId, before: Option<u64>) -> bool {
        before.is_some() && self.datagrams_from(node) != before
    }

    /// Closes the connection of a worker that did not answer within `window`, which loses
    /// (and restarts) everything on it.
    pub(crate) fn declare_dead(&self, node: NodeId, window: Duration) {
        if let Some(conn) = self.node_conn(node).filter(|c| c.close_reason().is_none()) {
            tracing::warn!(%node, "no answer to a probe within {window:?}: declaring the worker dead");
            conn.close(5u32.into(), b"no answer to a probe");
        }
    }

    /// A joined node's connection.
    pub(crate) fn node_conn(&self, id: NodeId) -> Option<quinn::Connection> {
        self.nodes.get(&id).map(|n| n.conn.clone())
    }
}
