//! Collective operations between actors: `allreduce`, `broadcast`, `allgather`,
//! `reduce_scatter` and `barrier`, with the data going straight between the actors' processes
//! (a Unix socket on one machine, QUIC between machines); the head only arranges the group.
//!
//! ```ignore
//! let group = ember::collective::group("dp")?;      // the newest generation, from the head
//! group.allreduce(&mut grads, ReduceOp::Mean)?;      // the same bits on every rank
//! ```
//!
//! **The guarantee.** Every rank ends an operation with exactly the same bits, and the same
//! operation on the same inputs with the same membership gives the same bits again: the order
//! in which values are combined is fixed by the plan in
//! [`ember_core::collective::schedule`] (a function of the group size, the ranks and the
//! buffer's length and element type), never by the order in which messages arrive.
//!
//! **Failures.** When a member dies during an operation, every other member's operation fails
//! with [`CollectiveError::Broken`] within a bounded time: at once when the link to it breaks,
//! otherwise when the head says the generation is broken (asked every quarter second while an
//! operation waits). The head knows because the member lost its process, or because another
//! member reported a failure (a broken link makes the head probe that rank's worker at once).
//! In any case the operation ends at its timeout. A generation in which an operation failed
//! stays failed; form the group again (the same actors, restarted ones, or others) and retry.

mod combiner;
mod element;
mod engine;
pub(crate) mod link;
pub(crate) mod mesh;
mod shm;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::collective::schedule::{self, Action, Algorithm, Plan};
use ember_core::proto::{ClientReply, ClientRequest, GroupView, RemoteError};

pub use element::Element;
pub use ember_core::collective::{DType, ReduceOp};

use combiner::{Combine, Host, OnDevice};
use engine::{Failure, Run};
use mesh::Mesh;

/// How long an operation may wait for its peers by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long looking a group up waits for members that are restarting.
const RESTART_WAIT: Duration = Duration::from_secs(60);

/// How often a waiting operation asks the head whether its generation is still whole.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// How long a failing operation waits for the head to take its report.
const REPORT_WAIT: Duration = Duration::from_secs(2);

/// Why a collective call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectiveError {
    /// Collective operations run inside actors only.
    #[error("collective operations run inside an Ember actor")]
    NotInActor,
    /// The head refused or failed the request (an unknown group, a join that timed out, a
    /// member that did not come back).
    #[error("{0}")]
    Head(RemoteError),
    /// This actor is not in the group's newest generation.
    #[error("this actor is not a member of group `{group}` (generation {generation})")]
    NotMember {
        /// The group.
        group: String,
        /// Its generation.
        generation: u64,
    },
    /// The operation could not complete: a member failed or left, ranks disagreed on the
    /// operation, or it timed out. Later operations in this generation fail too; form the
    /// group again and retry.
    #[error("group `{group}` generation {generation}: {reason}")]
    Broken {
        /// The group.
        group: String,
        /// Its generation.
        generation: u64,
        /// What happened.
        reason: String,
    },
    /// An argument no rank could accept (a root outside the group).
    #[error("{0}")]
    InvalidArgument(String),
    /// Moving a device buffer to or from host memory failed.
    #[error("device buffer: {0}")]
    Device(String),
}

/// One generation of a collective group, as one of its members holds it.
pub struct Group {
    view: GroupView,
    rank: usize,
    timeout: Duration,
    mesh: Arc<Mesh>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.view.name)
            .field("generation", &self.view.generation)
            .field("rank", &self.rank)
            .field("size", &self.view.members.len())
            .finish()
    }
}

/// The newest generation of group `name`, as the head knows it now (waiting for members that
/// are restarting). Look the group up again after an error: the driver may have formed it
/// anew.
pub fn group(name: &str) -> Result<Group, CollectiveError> {
    let mesh = mesh::current().ok_or(CollectiveError::NotInActor)?;
    let request = ClientRequest::GetGroup {
        name: name.to_string(),
        timeout_ms: RESTART_WAIT.as_millis() as u64,
    };
    Group::from_head(mesh, request)
}

/// Joins the next generation of group `name`, which forms once `world` actors have joined;
/// ranks follow the actors' ids (their creation order). Waits up to `timeout` for the others.
pub fn join(name: &str, world: u32, timeout: Duration) -> Result<Group, CollectiveError> {
    let mesh = mesh::current().ok_or(CollectiveError::NotInActor)?;
    let request = ClientRequest::JoinGroup {
        name: name.to_string(),
        actor: mesh.actor,
        world,
        timeout_ms: timeout.as_millis() as u64,
    };
    Group::from_head(mesh, request)
}

/// Runs `work` to completion on this (blocked) thread. Links and timers belong to the main
/// runtime, so nothing here needs the caller's runtime; `unconstrained` keeps tokio's
/// cooperative budget of the actor's own task from starving the loop.
fn block_on<F: std::future::Future>(work: F) -> F::Output {
    futures::executor::block_on(tokio::task::unconstrained(work))
}

/// A short digest of what an operation is, compared between ranks.
fn signature(parts: &[u64]) -> u32 {
    let h = shm::fnv(bytemuck::cast_slice(parts));
    (h ^ (h >> 32)) as u32
}

impl Group {
    fn from_head(mesh: Arc<Mesh>, request: ClientRequest) -> Result<Group, CollectiveError> {
        let reply = block_on(mesh.ask_head(request)).map_err(CollectiveError::Head)?;
        let ClientReply::Group(view) = reply else {
            return Err(CollectiveError::Head(RemoteError::new(
                ember_core::proto::ErrorKind::Internal,
                format!("unexpected answer to a group lookup: {reply:?}"),
            )));
        };
        let rank = view
            .rank_of(mesh.actor)
            .ok_or_else(|| CollectiveError::NotMember {
                group: view.name.clone(),
                generation: view.generation,
            })?;
        Ok(Group {
            view,
            rank,
            timeout: DEFAULT_TIMEOUT,
            mesh,
        })
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.view.name
    }

    /// This member's rank, from 0.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many members the group has.
    pub fn size(&self) -> usize {
        self.view.members.len()
    }

    /// Which formation of the group this is.
    pub fn generation(&self) -> u64 {
        self.view.generation
    }

    /// How long each operation may wait for its peers ([`DEFAULT_TIMEOUT`] unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Combines `buf` across every rank with `op`; every rank ends with the same bits.
    pub fn allreduce<T: Element>(
        &self,
        buf: &mut [T],
        op: ReduceOp,
    ) -> Result<(), CollectiveError> {
        self.allreduce_with(buf, op, &mut Host)
    }

    /// [`Group::allreduce`], each combination carried out by `combiner`.
    fn allreduce_with<T: Element>(
        &self,
        buf: &mut [T],
        op: ReduceOp,
        combiner: &mut dyn Combine<T>,
    ) -> Result<(), CollectiveError> {
        let plan = schedule::allreduce(
            self.size(),
            self.rank,
            buf.len(),
            std::mem::size_of::<T>(),
            op == ReduceOp::Mean,
        );
        let sig = [1, T::DTYPE as u64, op as u64, buf.len() as u64];
        if plan.algorithm == Algorithm::Ring && self.mesh.all_local(&self.view) {
            let barrier = schedule::barrier(self.size(), self.rank);
            let body = Body::SharedMemory { barrier: &barrier };
            return self.run(body, buf, op, &sig, combiner);
        }
        self.run(Body::Plan(&plan), buf, op, &sig, combiner)
    }

    /// [`Group::allreduce`] of a buffer on `device`, reduced on the device: the buffer is
    /// staged through host memory for the transfers between ranks, and every combination
    /// of the plan runs on `device` with its combining kernels (on a GPU, `cuda/combine.cu`;
    /// on the CPU backend, their CPU reference). The plan is the host path's and the kernels
    /// give the host's bits, so every rank ends with the same bits whichever way it
    /// combines. The result is written back into `buffer`.
    pub fn allreduce_device<T>(
        &self,
        device: &ember_kernels::Device,
        buffer: &ember_kernels::Buffer,
        op: ReduceOp,
    ) -> Result<(), CollectiveError>
    where
        T: Element + ember_kernels::Element,
    {
        let device_error = |e: ember_kernels::KernelError| CollectiveError::Device(e.to_string());
        let mut host = device.download::<T>(buffer).map_err(device_error)?;
        let mut on_device = OnDevice::new::<T>(device, host.len()).map_err(device_error)?;
        self.allreduce_with(&mut host, op, &mut on_device)?;
        device.write(buffer, 0, &host).map_err(device_error)
    }

    /// Combines `buf` across every rank with `op`, leaving each rank only its share of the
    /// result: the returned range of `buf` (rank `r` gets elements `r·len/n .. (r+1)·len/n`;
    /// the rest of `buf` holds partial results).
    pub fn reduce_scatter<T: Element>(
        &self,
        buf: &mut [T],
        op: ReduceOp,
    ) -> Result<Range<usize>, CollectiveError> {
        let n = self.size();
        let plan = schedule::reduce_scatter(n, self.rank, buf.len(), op == ReduceOp::Mean);
        let sig = [2, T::DTYPE as u64, op as u64, buf.len() as u64];
        self.run(Body::Plan(&plan), buf, op, &sig, &mut Host)?;
        Ok(schedule::chunk(buf.len(), n, self.rank))
    }

    /// Every rank's `input`, in rank order (all inputs must have the same length).
    pub fn allgather<T: Element>(&self, input: &[T]) -> Result<Vec<T>, CollectiveError> {
        let block = input.len();
        let mut out = vec![T::zeroed(); block * self.size()];
        out[self.rank * block..(self.rank + 1) * block].copy_from_slice(input);
        let plan = schedule::allgather(self.size(), self.rank, block);
        let sig = [3, T::DTYPE as u64, block as u64];
        self.run(Body::Plan(&plan), &mut out, ReduceOp::Sum, &sig, &mut Host)?;
        Ok(out)
    }

    /// Copies `root`'s `buf` into every rank's `buf`.
    pub fn broadcast<T: Element>(&self, buf: &mut [T], root: usize) -> Result<(), CollectiveError> {
        if root >= self.size() {
            return Err(CollectiveError::InvalidArgument(format!(
                "broadcast from rank {root} in a group of {}",
                self.size()
            )));
        }
        let plan = schedule::broadcast(
            self.size(),
            self.rank,
            root,
            buf.len(),
            std::mem::size_of::<T>(),
        );
        let sig = [4, T::DTYPE as u64, root as u64, buf.len() as u64];
        self.run(Body::Plan(&plan), buf, ReduceOp::Sum, &sig, &mut Host)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), CollectiveError> {
        let plan = schedule::barrier(self.size(), self.rank);
        self.run::<i32>(Body::Plan(&plan), &mut [], ReduceOp::Sum, &[5], &mut Host)
    }

    fn broken(&self, reason: String) -> CollectiveError {
        CollectiveError::Broken {
            group: self.view.name.clone(),
            generation: self.view.generation,
            reason,
        }
    }

    /// Runs one operation's plan, watching the group's health and the timeout. A failure
    /// marks the generation failed and closes its links, so that peers still in the
    /// operation fail at once.
    fn run<T: Element>(
        &self,
        body: Body<'_>,
        buf: &mut [T],
        reduce: ReduceOp,
        signature_parts: &[u64],
        combiner: &mut dyn Combine<T>,
    ) -> Result<(), CollectiveError> {
        let mesh = &self.mesh;
        let (name, generation) = (self.view.name.as_str(), self.view.generation);
        if let Some(reason) = mesh.failure(name, generation) {
            return Err(self.broken(format!("an earlier operation failed: {reason}")));
        }
        let op = mesh.next_op(name, generation);
        let deadline = Instant::now() + self.timeout;
        let peers = match body {
            Body::Plan(plan) | Body::SharedMemory { barrier: plan } => peers(plan),
        };
        let sleep = |d: Duration| mesh.sleep(d);
        let run = Run {
            op,
            signature: signature(signature_parts),
            reduce,
            size: self.size(),
            jitter: jitter(),
            sleep: &sleep,
        };
        if let Body::Plan(_) = body {
            mesh.announce(name, generation, run.tag());
        }
        let work = async {
            let mut links = mesh
                .links(&self.view, self.rank as u32, &peers)
                .await
                .map_err(|(peer, reason)| Failure::Link { peer, reason })?;
            match body {
                Body::Plan(plan) => engine::execute(plan, buf, &mut links, &run, combiner).await?,
                Body::SharedMemory { barrier } => {
                    let links = &mut links;
                    self.shared_memory_allreduce(buf, barrier, links, &run, deadline, combiner)
                        .await?
                }
            }
            Ok::<_, Failure>(links)
        };
        let outcome = block_on(async {
            let done = tokio::select! {
                biased;
                done = work => done,
                reason = self.watch_health() => return Err(reason),
                _ = mesh.sleep(self.timeout) => Err(Failure::Timeout(self.timeout)),
            };
            match done {
                Ok(links) => Ok(links),
                Err(Failure::Head(reason)) => Err(reason),
                Err(failure) => {
                    let reason = failure.to_string();
                    self.report(&reason, failure.suspect()).await;
                    Err(reason)
                }
            }
        });
        match outcome {
            Ok(links) => {
                mesh.keep(&self.view, links);
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(
                    group = name,
                    generation,
                    rank = self.rank,
                    "collective operation failed: {reason}"
                );
                mesh.fail(name, generation, &reason);
                Err(self.broken(reason))
            }
        }
    }

    /// An allreduce through shared memory ([`shm`]). The segments of this generation are
    /// made on its first such operation, with two barriers over the links (all made, then all
    /// mapped); the operation itself passes no message and blocks this thread, watching the
    /// deadline, the links and the head as it waits ([`Watch`]).
    async fn shared_memory_allreduce<T: Element>(
        &self,
        buf: &mut [T],
        barrier: &Plan,
        links: &mut std::collections::HashMap<u32, link::Link>,
        run: &Run<'_>,
        deadline: Instant,
        combiner: &mut dyn Combine<T>,
    ) -> Result<(), Failure> {
        let (name, generation) = (self.view.name.as_str(), self.view.generation);
        let mesh = &self.mesh;
        let mut segments = match mesh.take_segments(name, generation) {
            Some(segments) => segments,
            None => {
                let shm_failed = |e: std::io::Error| Failure::SharedMemory(e.to_string());
                let cluster = mesh.cluster_tag();
                let own = shm::create(cluster, &self.view, self.rank).map_err(shm_failed)?;
                meet(barrier, links, run).await?;
                let segments =
                    shm::map_all(cluster, &self.view, self.rank, own).map_err(shm_failed)?;
                meet(barrier, links, run).await?;
                segments.unlink();
                segments
            }
        };
        let mut watch = Watch {
            group: self,
            links,
            deadline,
            next_health: Instant::now() + HEALTH_EVERY,
            asking: None,
        };
        let tag = run.tag();
        let check = &mut || watch.check();
        segments.allreduce(buf, run.reduce, tag, run.jitter, check, combiner)?;
        mesh.keep_segments(name, generation, segments);
        Ok(())
    }

    /// Tells the head this generation failed here, so that members still waiting fail too
    /// and the worker of a rank whose link broke is checked at once. Bounded: the head may be
    /// unreachable.
    async fn report(&self, reason: &str, suspect: Option<u32>) {
        let request = ClientRequest::GroupFailed {
            name: self.view.name.clone(),
            generation: self.view.generation,
            reason: format!("rank {}: {reason}", self.rank),
            suspect,
        };
        tokio::select! {
            biased;
            _ = self.mesh.ask_head(request) => {}
            _ = self.mesh.sleep(REPORT_WAIT) => {}
        }
    }

    /// The question whose answer says whether this generation is still whole.
    fn health_request(&self) -> ClientRequest {
        ClientRequest::GroupHealth {
            name: self.view.name.clone(),
            generation: self.view.generation,
            incarnations: self.view.members.iter().map(|m| m.incarnation).collect(),
        }
    }

    /// Ends (with the reason) only once the head says the generation is broken.
    async fn watch_health(&self) -> String {
        loop {
            self.mesh.sleep(HEALTH_EVERY).await;
            if let Some(reason) = broken(&self.mesh, self.health_request()).await {
                return reason;
            }
        }
    }
}

/// Why the generation `request` asks about can no longer complete an operation, as the head
/// sees it (`None` if whole, or if the head could not be asked).
async fn broken(mesh: &Mesh, request: ClientRequest) -> Option<String> {
    match mesh.ask_head(request).await {
        Ok(ClientReply::GroupHealth { broken }) => broken,
        _ => None,
    }
}

/// What a rank blocked in a shared-memory operation checks while it waits for its peers:
/// its deadline, its links (a peer that died closed them) and, every [`HEALTH_EVERY`], the
/// head.
struct Watch<'a> {
    group: &'a Group,
    links: &'a std::collections::HashMap<u32, link::Link>,
    deadline: Instant,
    next_health: Instant,
    /// The head's answer to the question in flight.
    asking: Option<tokio::sync::oneshot::Receiver<Option<String>>>,
}

impl Watch<'_> {
    fn check(&mut self) -> Result<(), Failure> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(Failure::Timeout(self.group.timeout));
        }
        for (&peer, link) in self.links.iter() {
            if let Some(reason) = link.closed() {
                return Err(Failure::Link { peer, reason });
            }
        }
        if let Some(answer) = &mut self.asking {
            match answer.try_recv() {
                Ok(Some(reason)) => return Err(Failure::Head(reason)),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return Ok(()),
                Ok(None) | Err(_) => self.asking = None,
            }
        }
        if now >= self.next_health {
            self.next_health = now + HEALTH_EVERY;
            let (tell, answer) = tokio::sync::oneshot::channel();
            let (mesh, request) = (self.group.mesh.clone(), self.group.health_request());
            self.group.mesh.main.spawn(async move {
                let _ = tell.send(broken(&mesh, request).await);
            });
            self.asking = Some(answer);
        }
        Ok(())
    }
}

/// A barrier within an operation, over its links.
async fn meet(
    barrier: &Plan,
    links: &mut std::collections::HashMap<u32, link::Link>,
    run: &Run<'_>,
) -> Result<(), Failure> {
    engine::execute::<i32>(barrier, &mut [], links, run, &mut Host).await
}

/// What an operation runs: a plan over the links, or the shared-memory allreduce.
#[derive(Clone, Copy)]
enum Body<'a> {
    Plan(&'a Plan),
    /// The shared-memory allreduce, whose steps meet at this barrier.
    SharedMemory {
        barrier: &'a Plan,
    },
}

/// The peers a plan exchanges with.
fn peers(plan: &Plan) -> HashSet<u32> {
    let mut peers = HashSet::new();
    for action in &plan.actions {
        match action {
            Action::Exchange { sends, recv } => {
                peers.extend(sends.iter().map(|s| s.peer as u32));
                peers.extend(recv.iter().map(|r| r.transfer.peer as u32));
            }
            Action::Relay { from, to, .. } => {
                peers.insert(*from as u32);
                peers.insert(*to as u32);
            }
            Action::Scale { .. } => {}
        }
    }
    peers
}

/// `EMBER_COLLECTIVE_JITTER_US=N`: a random pause of up to N µs before each segment is sent,
/// for tests that check that timing never changes results.
fn jitter() -> Option<Duration> {
    static JITTER: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *JITTER.get_or_init(|| {
        std::env::var("EMBER_COLLECTIVE_JITTER_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&us: &u64| us > 0)
            .map(Duration::from_micros)
    })
}
