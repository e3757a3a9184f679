//! Placement: the pure core that decides which node (and which GPUs of it) each request for
//! resources gets. No I/O, no clock, no async: the head drives it and tests drive it directly.
//!
//! Every quantity is an exact integer (see [`ember_core::resources`]), so capacity never drifts and
//! nothing is ever over-committed: for every node and every GPU, what is free plus what live
//! leases hold is always exactly the total ([`Scheduler::check_invariants`]).
//!
//! A [`Scheduler::request`] is placed at once when it fits somewhere, queued when some node
//! could satisfy it once others release capacity, and rejected at once, with a message naming
//! the missing resource, when no node of the cluster ever could.

mod error;
mod gang;
mod index;
pub(crate) mod node;
mod queue;
mod shapes;

#[cfg(test)]
mod differential;
#[cfg(test)]
mod gang_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

pub use ember_core::proto::{CustomUsage, GpuUsage, NodeAffinity, NodeUsage, Strategy};
pub use error::PlacementError;
pub use gang::{BundleView, GangDecision, GangRequest, GangView, RemovedGang};
pub use shapes::QueuedGroup;

use ember_core::ids::{LeaseId, NodeId};
use ember_core::resources::{
    Allocation, ByteSize, GpuShare, NodeResources, ResourceDemand, GPU_UNITS,
};
use index::NodeIndex;
use node::NodeState;
use queue::{PendingQueue, QueueKey, ShapeId};

/// One request for resources: a task, an actor or a job asking to be placed.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct PlacementRequest {
    /// The lease this request becomes once placed; unique among live and queued requests.
    pub lease: LeaseId,
    /// What it needs.
    pub demand: ResourceDemand,
    /// How to choose among feasible nodes.
    pub strategy: Strategy,
    /// An optional node to pin it to.
    pub affinity: Option<NodeAffinity>,
    /// Queue order: higher first, first-come first among equals.
    pub priority: i32,
    /// Labels the node must carry (see [`NodeResources::labels`]), e.g. `task:my::add`.
    pub labels: Vec<String>,
}

impl PlacementRequest {
    /// A request with the default strategy, no affinity and priority 0.
    pub fn new(lease: LeaseId, demand: ResourceDemand) -> Self {
        PlacementRequest {
            lease,
            demand,
            strategy: Strategy::default(),
            affinity: None,
            priority: 0,
            labels: Vec::new(),
        }
    }
}

/// A placed request: the node it runs on and exactly what it holds there.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Lease {
    /// The request's lease id.
    pub id: LeaseId,
    /// The node it was placed on.
    pub node: NodeId,
    /// What it holds on that node.
    pub allocation: Allocation,
}

/// What [`Scheduler::request`] did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Placed now; the lease holds its capacity until [`Scheduler::release`].
    Placed(Lease),
    /// Fits nowhere now but could later; [`Scheduler::place_queued`] will place it.
    Queued,
    /// Could never be placed in this cluster (or is malformed); nothing was kept.
    Rejected(PlacementError),
}

/// A map keyed by ids, hashed with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Hashes ids for the scheduler's maps without SipHash. The head hands out lease ids from a
/// counter, so ids alive together often lie close together: the hash keeps each run of 16
/// consecutive ids in 16 neighbouring buckets (an insertion lands next to the last one, in
/// memory already loaded) and scatters the runs (a multiply and a shift), so that no long run
/// of full buckets forms however the live ids cluster. The top seven bits, which the map
/// compares to tell the ids of one bucket group apart, mix the whole id. Lease ids are chosen
/// by the head, not by whoever asks, and nothing depends on the order in which these maps
/// iterate.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

/// The bits of a hash that the map compares within a group of buckets (its top seven).
const HASH_TAG: u64 = 0xFE00_0000_0000_0000;

/// Fibonacci hashing's multiplier: 2^64 over the golden ratio.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let id = self.0;
        let run = (id >> 4).wrapping_mul(FIBONACCI);
        let run = run ^ (run >> 29);
        let bucket = (run << 4) | (id & 15);
        (bucket & !HASH_TAG) | (id.wrapping_mul(FIBONACCI) & HASH_TAG)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        // One id (the usual key) is kept as it is for `finish`; several are mixed together.
        self.0 = self.0.wrapping_mul(FIBONACCI).rotate_left(29) ^ n;
    }
}

/// Most nodes listed as grown between passes; past it, a pass asks the index for every group.
const GROWN_LISTED: usize = 64;

/// Most distinct failed demands remembered during one [`Scheduler::place_queued`] pass.
const FAILED_SHAPES: usize = 32;

/// The placement state of a cluster: its nodes, the live leases and the pending queue.
#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    /// Sorted by id, each id once.
    nodes: Vec<NodeState>,
    /// The ids of `nodes`, in the same order: looking a node up searches these, which lie
    /// close together, rather than the nodes themselves.
    ids: Vec<NodeId>,
    /// The schedulable nodes by usage, for choosing among them without a scan.
    index: NodeIndex,
    leases: IdMap<LeaseId, Lease>,
    queue: PendingQueue,
    /// The nodes whose free capacity grew (a release, a join, a return from draining) since
    /// the last pass over the queue, each once (its `grown` flag set), unless more than
    /// [`GROWN_LISTED`] did (`grown_overflow`). After a pass nothing that waits fits anywhere,
    /// and a request is queued only when it fits nowhere, so a waiting request can fit now
    /// only on a node listed here: the pass asks these nodes before it asks the index.
    grown: Vec<NodeId>,
    grown_overflow: bool,
    /// The gangs and the work in their bundles (`gang.rs`).
    gangs: gang::Gangs,
    /// Choose by scanning every node ([`choose_linear`]) instead of through the index: the
    /// reference the differential test compares the index against.
    #[cfg(test)]
    choose_by_scan: bool,
    /// Pass over the queue by trying every request ([`Scheduler::place_queued_by_walk`]), as
    /// passes did before requests were grouped: the reference for the grouped pass.
    #[cfg(test)]
    walk_whole_queue: bool,
    /// Requests that passes over the queue looked at, for tests of what a pass costs.
    #[cfg(test)]
    pub(crate) pass_visits: u64,
    /// Attempts to place a request (each one query of the index, or of one node for an
    /// affinity), for tests of what a pass costs.
    #[cfg(test)]
    pub(crate) tries: u64,
}

impl Scheduler {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cluster that chooses nodes by scanning them all and passes over the queue by
    /// trying every request, as placement did before the index and the grouped queue: the
    /// reference for the differential test.
    #[cfg(test)]
    pub(crate) fn choosing_by_scan() -> Self {
        Scheduler {
            choose_by_scan: true,
            walk_whole_queue: true,
            ..Self::default()
        }
    }

    /// An empty cluster that chooses through the index but passes over the queue by trying
    /// every request, as passes did before the queue grouped requests.
    #[cfg(test)]
    pub(crate) fn walking_whole_queue() -> Self {
        Scheduler {
            walk_whole_queue: true,
            ..Self::default()
        }
    }

    fn position(&self, id: NodeId) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }

    /// Adds a node with all its capacity free, schedulable. Adding an id that is already
    /// present does nothing (ids are never reused: a worker that rejoins gets a new one).
    /// Call [`Scheduler::place_queued`] afterwards to place what was waiting.
    pub fn add_node(&mut self, id: NodeId, resources: NodeResources) {
        match self.ids.binary_search(&id) {
            Ok(_) => {}
            Err(i) => {
                let node = NodeState::new(id, resources);
                self.index.insert(&node);
                self.nodes.insert(i, node);
                self.ids.insert(i, id);
                self.note_growth(i);
            }
        }
    }

    /// Removes a node; returns the leases it held (their capacity is gone with it), in lease
    /// order. Queued requests stay queued (a node may join later). Unknown node: returns nothing.
    pub fn remove_node(&mut self, id: NodeId) -> Vec<Lease> {
        let Some(i) = self.position(id) else {
            return Vec::new();
        };
        let node = self.nodes.remove(i);
        self.ids.remove(i);
        if node.schedulable {
            self.index.remove(&node);
        }
        let mut gone = Vec::with_capacity(node.leases);
        if node.leases > 0 {
            self.leases.retain(|_, lease| {
                if lease.node == id {
                    gone.push(lease.clone());
                    false
                } else {
                    true
                }
            });
        }
        self.lose_bundles_on(id, &mut gone);
        gone.sort_by_key(|l| l.id);
        gone
    }

    /// Stops (false) or resumes (true) new placements on a node (for draining); its leases
    /// are untouched. Unknown node: no-op.
    pub fn set_schedulable(&mut self, id: NodeId, schedulable: bool) {
        let Some(i) = self.position(id) else {
            return;
        };
        let node = &mut self.nodes[i];
        if node.schedulable == schedulable {
            return;
        }
        node.schedulable = schedulable;
        if schedulable {
            self.index.insert(node);
            self.note_growth(i);
        } else {
            self.index.remove(node);
            self.move_bundles_off(id);
        }
    }

    /// Lists a node whose free capacity grew since the last pass (see `Scheduler::grown`).
    fn note_growth(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.grown || self.grown_overflow {
            return;
        }
        if self.grown.len() >= GROWN_LISTED {
            self.grown_overflow = true;
            return;
        }
        node.grown = true;
        self.grown.push(node.id);
    }

    /// Empties the list of grown nodes: called when a pass ends, after which nothing that
    /// waits fits anywhere.
    fn forget_growth(&mut self) {
        for id in std::mem::take(&mut self.grown) {
            if let Some(i) = self.position(id) {
                self.nodes[i].grown = false;
            }
        }
        self.grown_overflow = false;
    }

    /// Whether a request could fit now on some node whose capacity grew since the last pass;
    /// when not, it fits nowhere (see `Scheduler::grown`). True when too many grew to list.
    fn fits_some_grown(&self, req: &PlacementRequest) -> bool {
        if self.grown_overflow {
            return true;
        }
        let pinned = match req.affinity {
            Some(NodeAffinity { node, soft: false }) => Some(node),
            _ => None,
        };
        self.grown.iter().any(|&id| {
            pinned.is_none_or(|p| p == id)
                && self.position(id).is_some_and(|i| {
                    let n = &self.nodes[i];
                    n.schedulable && n.has_labels(&req.labels) && n.fits_now(&req.demand)
                })
        })
    }

    /// Places now if it fits somewhere; queues if some schedulable node's total capacity could
    /// satisfy it (or, for a hard affinity, that node's); rejects at once, naming the missing
    /// resource, if no node of the cluster could ever satisfy it. Draining nodes count as absent.
    pub fn request(&mut self, req: PlacementRequest) -> Decision {
        self.request_or_wait(req, |_| false)
    }

    /// [`Scheduler::request`], for a cluster whose nodes are not all there yet (a head just
    /// restarted, its workers re-joining; an autoscaler that can launch one that fits): a
    /// well-formed request that no node present could ever satisfy waits in the queue instead
    /// of being rejected when `wait` says so. `wait` is asked only then, never for a request
    /// placed or queued: it may cost what a placement should not.
    pub fn request_or_wait(
        &mut self,
        mut req: PlacementRequest,
        wait: impl FnOnce(&PlacementRequest) -> bool,
    ) -> Decision {
        if let Err(e) = self.validate(&mut req) {
            return Decision::Rejected(e);
        }
        match self.place_or_queue(&req) {
            Decision::Rejected(e) if wait(&req) => {
                tracing::debug!(lease = %req.lease, "waiting for nodes to come: {e}");
                self.queue.push(req);
                Decision::Queued
            }
            Decision::Queued => {
                self.queue.push(req);
                Decision::Queued
            }
            decided => decided,
        }
    }

    /// Places a validated request now, or says it may wait (`Queued`, not yet queued), or
    /// rejects it.
    fn place_or_queue(&mut self, req: &PlacementRequest) -> Decision {
        if self.nodes.is_empty() {
            return Decision::Rejected(PlacementError::NoNodes);
        }
        if let Some(NodeAffinity { node, soft: false }) = req.affinity {
            if let Some(e) = self.affinity_never_fits(node, req) {
                return Decision::Rejected(e);
            }
        }
        if let Some(lease) = self.try_place(req) {
            self.leases.insert(lease.id, lease.clone());
            return Decision::Placed(lease);
        }
        if !matches!(req.affinity, Some(NodeAffinity { soft: false, .. })) {
            if let Some(e) = self.never_fits(&req.demand, &req.labels) {
                return Decision::Rejected(e);
            }
        }
        Decision::Queued
    }

    /// Why the node a hard affinity names could never hold `req`, even entirely free; `None`
    /// when it could.
    fn affinity_never_fits(&self, node: NodeId, req: &PlacementRequest) -> Option<PlacementError> {
        let Some(i) = self.position(node) else {
            return Some(PlacementError::AffinityUnknownNode(node));
        };
        let n = &self.nodes[i];
        if !n.schedulable {
            return Some(PlacementError::AffinityNodeDraining(node));
        }
        if !n.has_labels(&req.labels) {
            let missing = req
                .labels
                .iter()
                .find(|l| !n.has_labels(std::slice::from_ref(l)));
            return Some(PlacementError::MissingLabel(
                missing.cloned().unwrap_or_default(),
            ));
        }
        if !n.fits_total(&req.demand) {
            let reason = explain(std::slice::from_ref(n).iter(), &req.demand);
            return Some(PlacementError::AffinityNeverFits {
                node,
                reason: Box::new(reason),
            });
        }
        None
    }

    /// Takes out of the queue the requests no node could ever take (those queued by
    /// [`Scheduler::request_or_wait`] for nodes that did not come), each with why, in queue
    /// order. Scans every node: for the end of a wait, not for every request.
    pub fn take_unplaceable(&mut self) -> Vec<(LeaseId, PlacementError)> {
        let refused: Vec<(LeaseId, PlacementError)> = self
            .queue
            .iter()
            .filter_map(|(_, req)| Some((req.lease, self.never_fits_anywhere(req)?)))
            .collect();
        for (lease, _) in &refused {
            self.queue.remove(*lease);
        }
        refused
    }

    /// Why no schedulable node of the cluster could ever hold `req`, even entirely free,
    /// naming what is missing as a rejection does; `None` when some node could. Linear in the
    /// nodes: meant for when nodes leave or stop taking work, not for every queue pass.
    pub fn never_fits_anywhere(&self, req: &PlacementRequest) -> Option<PlacementError> {
        if self.nodes.is_empty() {
            return Some(PlacementError::NoNodes);
        }
        match req.affinity {
            Some(NodeAffinity { node, soft: false }) => self.affinity_never_fits(node, req),
            _ => self.never_fits(&req.demand, &req.labels),
        }
    }

    /// Whether node `id`, entirely free, could hold `req`: it is schedulable, carries the
    /// request's labels, its totals cover the demand, and no hard affinity names another node.
    /// Constant in the cluster's size. Unknown node: false.
    pub fn could_hold(&self, id: NodeId, req: &PlacementRequest) -> bool {
        self.position(id)
            .is_some_and(|i| self.nodes[i].schedulable && self.would_hold(id, req))
    }

    /// [`Scheduler::could_hold`], schedulable or not: whether a cordoned node (a warm one)
    /// would hold `req` once it takes work again.
    pub fn would_hold(&self, id: NodeId, req: &PlacementRequest) -> bool {
        if matches!(req.affinity, Some(NodeAffinity { node, soft: false }) if node != id) {
            return false;
        }
        self.position(id).is_some_and(|i| {
            let n = &self.nodes[i];
            n.has_labels(&req.labels) && n.fits_total(&req.demand)
        })
    }

    /// Checks a request's form and normalises it (custom resources sorted by name).
    fn validate(&self, req: &mut PlacementRequest) -> Result<(), PlacementError> {
        if self.leases.contains_key(&req.lease)
            || self.queue.contains(req.lease)
            || self.gangs.knows(req.lease)
        {
            return Err(PlacementError::AlreadyKnown(req.lease));
        }
        Self::check_demand(&mut req.demand)
    }

    /// Checks a demand's form and normalises it (custom resources sorted by name).
    fn check_demand(d: &mut ResourceDemand) -> Result<(), PlacementError> {
        let units = d.gpus.units();
        if units > GPU_UNITS && units % GPU_UNITS != 0 {
            return Err(PlacementError::InvalidGpus(d.gpus));
        }
        if units == 0 && d.gpu_memory > 0 {
            return Err(PlacementError::GpuMemoryWithoutGpus);
        }
        if units == 0 && d.accelerator.is_some() {
            return Err(PlacementError::AcceleratorWithoutGpus);
        }
        if !d.custom.is_sorted_by(|a, b| a.0 < b.0) {
            d.custom.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(w) = d.custom.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(PlacementError::DuplicateCustom(w[0].0.clone()));
            }
        }
        Ok(())
    }

    /// `None` when some schedulable node could ever satisfy the demand; otherwise why not.
    fn never_fits(&self, d: &ResourceDemand, labels: &[String]) -> Option<PlacementError> {
        if let Some(missing) = labels.iter().find(|l| {
            !self
                .nodes
                .iter()
                .any(|n| n.schedulable && n.has_labels(std::slice::from_ref(l)))
        }) {
            return Some(PlacementError::MissingLabel(missing.clone()));
        }
        let mut any = false;
        for n in self
            .nodes
            .iter()
            .filter(|n| n.schedulable && n.has_labels(labels))
        {
            any = true;
            if n.fits_total(d) {
                return None;
            }
        }
        if !any {
            return Some(PlacementError::NoSchedulableNodes {
                draining: self.nodes.len(),
            });
        }
        Some(explain(
            self.nodes
                .iter()
                .filter(|n| n.schedulable && n.has_labels(labels)),
            d,
        ))
    }

    /// Returns a lease's capacity. Unknown lease: returns false and changes nothing, so a
    /// second release of the same lease is harmless. Call [`Scheduler::place_queued`] afterwards.
    pub fn release(&mut self, lease: LeaseId) -> bool {
        let Some(l) = self.leases.remove(&lease) else {
            return self.release_in_bundle(lease);
        };
        if let Some(i) = self.position(l.node) {
            let node = &mut self.nodes[i];
            let usage_before = node.usage_key;
            node.free(&l.allocation);
            self.index.update(usage_before, node);
            self.note_growth(i);
        }
        true
    }

    /// Takes exactly `lease.allocation` on `lease.node` as a lease: what a worker that re-joined
    /// after a head restart still holds for work the head adopts. False (nothing changes) when
    /// the node is unknown, the lease id is in use, or the allocation is not free there now
    /// (a GPU it lacks, a share or an amount over what is free, one GPU named twice).
    pub fn adopt(&mut self, lease: Lease) -> bool {
        if self.leases.contains_key(&lease.id) {
            return false;
        }
        let Some(i) = self.position(lease.node) else {
            return false;
        };
        let node = &mut self.nodes[i];
        let usage_before = node.usage_key;
        if !node.claim(&lease.allocation) {
            return false;
        }
        self.index.update(usage_before, node);
        self.leases.insert(lease.id, lease);
        true
    }

    /// Removes a queued request. Returns whether it was queued.
    pub fn cancel(&mut self, lease: LeaseId) -> bool {
        self.queue.remove(lease).is_some() || self.cancel_in_bundle(lease)
    }

    /// Places queued requests that fit now, in priority order (higher first, FIFO among
    /// equals); a request that does not fit does not block smaller ones behind it. Call after
    /// [`release`](Scheduler::release), [`add_node`](Scheduler::add_node) or
    /// [`set_schedulable`](Scheduler::set_schedulable). Returns the new leases in the order placed.
    ///
    /// The result is exactly that of trying every queued request in turn, but the pass does
    /// not walk the queue: requests are grouped by what decides whether they fit (demand,
    /// labels, hard affinity), and since capacity only shrinks while a pass places, a group
    /// is dropped at its first request that fits nowhere. And since after a pass no waiting
    /// request fits anywhere, a group can fit only on a node whose capacity grew since (a
    /// release, a join, a return from draining): it is asked of those nodes first, and the
    /// index only when one of them has room. A pass costs one look per group plus one attempt
    /// per request placed, whatever the queue's length; a second pass at once asks nothing.
    pub fn place_queued(&mut self) -> Vec<Lease> {
        let mut placed = self.place_in_gangs();
        #[cfg(test)]
        if self.walk_whole_queue {
            placed.extend(self.place_queued_by_walk());
            self.forget_growth();
            return placed;
        }
        if self.queue.is_empty() || self.index.is_empty() || self.grown.is_empty() {
            // Nothing waits, nothing is schedulable, or nothing grew since the last pass
            // (or since the requests that wait were found not to fit).
            self.forget_growth();
            return placed;
        }
        // Taken out while it is worked on, so that placing can borrow the scheduler.
        let mut queue = std::mem::take(&mut self.queue);
        // The first request of every group still in the pass, the earliest in queue order on
        // top: popping it always gives the next request a walk of the whole queue would try
        // among those not known to miss.
        let mut heads: BinaryHeap<Reverse<(QueueKey, ShapeId)>> =
            queue.heads().map(Reverse).collect();
        let mut failed: Vec<(ResourceDemand, Vec<String>)> = Vec::new();
        while let Some(Reverse((key, shape))) = heads.pop() {
            #[cfg(test)]
            {
                self.pass_visits += 1;
            }
            let req = queue.at(&key).expect("a group's head is queued");
            if failed
                .iter()
                .any(|(f, labels)| *labels == req.labels && dominates(&req.demand, f))
            {
                // Needs at least what missed everywhere in this pass: the whole group misses.
                continue;
            }
            if !self.fits_some_grown(req) {
                // It missed everywhere before, and no node where it did not has grown since.
                continue;
            }
            match self.try_place(req) {
                Some(lease) => {
                    self.leases.insert(lease.id, lease.clone());
                    placed.push(lease);
                    queue.remove_key(&key);
                    if let Some(next) = queue.first_of(shape) {
                        debug_assert_eq!(queue.shape_of(&next), Some(shape));
                        heads.push(Reverse((next, shape)));
                    }
                }
                None => {
                    // The rest of the group needs the same and cannot fit either.
                    let hard = matches!(req.affinity, Some(NodeAffinity { soft: false, .. }));
                    if !hard && failed.len() < FAILED_SHAPES {
                        failed.push((req.demand.clone(), req.labels.clone()));
                    }
                }
            }
        }
        self.queue = queue;
        self.forget_growth();
        placed
    }

    /// [`Scheduler::place_queued`] as it was before groups: tries every queued request in
    /// queue order. The reference the differential test compares the grouped pass against.
    #[cfg(test)]
    fn place_queued_by_walk(&mut self) -> Vec<Lease> {
        let mut placed = Vec::new();
        if self.queue.is_empty() || self.index.is_empty() {
            return placed;
        }
        let queue = std::mem::take(&mut self.queue);
        let mut to_remove: Vec<QueueKey> = Vec::new();
        // Demands that fitted nowhere during this pass: capacity only shrinks while it runs,
        // so any request needing at least as much of everything cannot fit either.
        let mut failed: Vec<(ResourceDemand, Vec<String>)> = Vec::new();
        for (key, req) in queue.iter() {
            self.pass_visits += 1;
            if failed
                .iter()
                .any(|(f, labels)| *labels == req.labels && dominates(&req.demand, f))
            {
                continue;
            }
            match self.try_place(req) {
                Some(lease) => {
                    self.leases.insert(lease.id, lease.clone());
                    placed.push(lease);
                    to_remove.push(*key);
                }
                None => {
                    let hard = matches!(req.affinity, Some(NodeAffinity { soft: false, .. }));
                    if !hard && failed.len() < FAILED_SHAPES {
                        failed.push((req.demand.clone(), req.labels.clone()));
                    }
                }
            }
        }
        self.queue = queue;
        for key in &to_remove {
            self.queue.remove_key(key);
        }
        placed
    }

    /// A live lease (placed on its own or in a gang's bundle).
    pub fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id).or_else(|| self.gangs.lease(id))
    }

    /// Every live lease (placed on its own or in a gang's bundle), in no particular order.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values().chain(self.gangs.leases())
    }

    /// The queued requests, in priority order (the order [`Scheduler::place_queued`] tries them).
    pub fn queued(&self) -> impl Iterator<Item = &PlacementRequest> {
        self.queue.iter().map(|(_, r)| r)
    }

    /// A queued request (waiting on its own or in a gang's bundle), by its lease.
    pub fn queued_request(&self, lease: LeaseId) -> Option<&PlacementRequest> {
        self.queue
            .get(lease)
            .or_else(|| self.gangs.queued_request(lease))
    }

    /// How many requests are queued.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// How many groups the queued requests form: requests of one group have the same demand,
    /// labels and hard affinity, so they fit exactly the same nodes. A pass over the queue
    /// ([`Scheduler::place_queued`]) makes at most one attempt per group beyond what it places.
    pub fn queued_groups(&self) -> usize {
        self.queue.shape_count()
    }

    /// The nodes, in id order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().map(|n| n.id)
    }

    /// Totals and what is free on a node, for `ember status`. Unknown node: `None`.
    pub fn usage(&self, id: NodeId) -> Option<NodeUsage> {
        let n = &self.nodes[self.position(id)?];
        Some(NodeUsage {
            node: n.id,
            schedulable: n.schedulable,
            cpu_millis_total: n.cpu_total,
            cpu_millis_free: n.cpu_free,
            gpus: n
                .gpus
                .iter()
                .map(|g| GpuUsage {
                    index: g.index,
                    accelerator: g.accelerator.clone(),
                    share_used: GpuShare::from_units(GPU_UNITS - g.share_free),
                    share_free: GpuShare::from_units(g.share_free),
                    memory_total: g.mem_total,
                    memory_reserved: g.mem_total - g.mem_free,
                })
                .collect(),
            custom: n
                .custom
                .iter()
                .map(|c| CustomUsage {
                    name: c.name.clone(),
                    total_millis: c.total,
                    free_millis: c.free,
                })
                .collect(),
            leases: n.leases,
            labels: n.labels.clone(),
        })
    }

    /// Places a request on the node its soft affinity names if it fits there now, otherwise on
    /// the node its strategy prefers among those where it fits now (hard affinity: only that
    /// node).
    fn try_place(&mut self, req: &PlacementRequest) -> Option<Lease> {
        #[cfg(test)]
        {
            self.tries += 1;
        }
        let d = &req.demand;
        let i = match req.affinity {
            Some(NodeAffinity { node, soft }) => {
                let at = self.position(node).filter(|&i| {
                    let n = &self.nodes[i];
                    n.schedulable && n.has_labels(&req.labels) && n.fits_now(d)
                });
                match (at, soft) {
                    (Some(i), _) => i,
                    (None, false) => return None,
                    (None, true) => self.choose(req)?,
                }
            }
            None => self.choose(req)?,
        };
        let node = &mut self.nodes[i];
        let usage_before = node.usage_key;
        let allocation = node.allocate(d)?;
        self.index.update(usage_before, node);
        Some(Lease {
            id: req.lease,
            node: node.id,
            allocation,
        })
    }

    /// The position of the feasible node the strategy prefers: Pack the most used, Spread the
    /// least used; ties go to the lowest node id. Found through the index, which visits only
    /// nodes that could hold the request, in the order the strategy prefers.
    fn choose(&self, req: &PlacementRequest) -> Option<usize> {
        #[cfg(test)]
        if self.choose_by_scan {
            return choose_linear(&self.nodes, req);
        }
        // The position of the node found to fit last, which is the node chosen unless the
        // index decided without asking.
        let mut last_fit = None;
        let id = self.index.choose_fitting(req, |id| {
            let found = self.position(id).filter(|&i| {
                let n = &self.nodes[i];
                n.schedulable && n.has_labels(&req.labels) && n.fits_now(&req.demand)
            });
            last_fit = found.map(|i| (id, i));
            found.is_some()
        })?;
        match last_fit {
            Some((fit, i)) if fit == id => Some(i),
            _ => self.position(id),
        }
    }

    /// Checks the bookkeeping: for every node and GPU, free plus what live leases hold equals
    /// the total and nothing is over-committed; every lease is on a known node and GPU; the
    /// cached figures and the queue index agree. For tests; linear in nodes plus leases.
    pub fn check_invariants(&self) -> Result<(), String> {
        if !self.nodes.windows(2).all(|w| w[0].id < w[1].id) {
            return Err("nodes are not sorted by id, each once".into());
        }
        if !self.ids.iter().copied().eq(self.nodes.iter().map(|n| n.id)) {
            return Err("the ids of the nodes are stale".into());
        }
        let listed = self
            .grown
            .iter()
            .filter(|&&id| self.position(id).is_some())
            .count();
        if self.grown.len() > GROWN_LISTED
            || self
                .grown
                .iter()
                .any(|&id| self.position(id).is_some_and(|i| !self.nodes[i].grown))
            || self.nodes.iter().filter(|n| n.grown).count() != listed
        {
            return Err("the list of grown nodes and their flags disagree".into());
        }
        if !self.queue.is_empty() && !self.grown_overflow {
            // Nothing that waits fits on a node that has not grown since the last pass. The
            // requests of a group fit the same nodes: one of each stands for its group.
            let mut heads = self
                .queue
                .heads()
                .filter_map(|(key, _)| self.queue.at(&key));
            if let Some(r) = heads.find(|r| {
                self.nodes.iter().any(|n| {
                    !n.grown
                        && n.schedulable
                        && n.has_labels(&r.labels)
                        && n.fits_now(&r.demand)
                        && match r.affinity {
                            Some(NodeAffinity { node, soft: false }) => node == n.id,
                            _ => true,
                        }
                })
            }) {
                return Err(format!(
                    "{} waits and fits on a node that has not grown since the last pass",
                    r.lease
                ));
            }
        }
        let mut cpu = vec![0u64; self.nodes.len()];
        let mut count = vec![0usize; self.nodes.len()];
        let mut share: Vec<Vec<u64>> = self.nodes.iter().map(|n| vec![0; n.gpus.len()]).collect();
        let mut mem: Vec<Vec<u64>> = share.clone();
        let mut custom: Vec<Vec<u64>> =
            self.nodes.iter().map(|n| vec![0; n.custom.len()]).collect();
        for (id, lease) in &self.leases {
            if *id != lease.id {
                return Err(format!("{id} is filed as {}", lease.id));
            }
        }
        // Leases and gangs' placed bundles hold capacity on their nodes alike.
        let held = self
            .leases
            .values()
            .map(|l| (l.id.to_string(), l.node, &l.allocation))
            .chain(
                self.gangs
                    .holdings()
                    .map(|(node, a)| ("a gang's bundle".to_string(), node, a)),
            );
        for (id, node, allocation) in held {
            let Some(i) = self.position(node) else {
                return Err(format!("{id} is on {node}, which is not in the cluster"));
            };
            let n = &self.nodes[i];
            cpu[i] += allocation.cpu_millis;
            count[i] += 1;
            for g in &allocation.gpus {
                let Ok(j) = n.gpus.binary_search_by_key(&g.index, |s| s.index) else {
                    return Err(format!("{id} holds GPU {} that {} lacks", g.index, n.id));
                };
                if g.share.units() == 0 || g.share.units() > GPU_UNITS {
                    return Err(format!("{id} holds a share of {} of one GPU", g.share));
                }
                share[i][j] += u64::from(g.share.units());
                mem[i][j] += g.memory;
            }
            for (name, amount) in &allocation.custom {
                let Ok(j) = n.custom.binary_search_by(|c| c.name.as_str().cmp(name)) else {
                    return Err(format!("{id} holds custom `{name}` that {} lacks", n.id));
                };
                custom[i][j] += amount;
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let id = n.id;
            if n.cpu_free.checked_add(cpu[i]) != Some(n.cpu_total) {
                return Err(format!(
                    "{id}: cpu free {} + leased {} != total {}",
                    n.cpu_free, cpu[i], n.cpu_total
                ));
            }
            if n.leases != count[i] {
                return Err(format!(
                    "{id}: counts {} leases, holds {}",
                    n.leases, count[i]
                ));
            }
            let mut used_units = 0;
            let mut whole = 0;
            let mut max_free = 0;
            for (j, g) in n.gpus.iter().enumerate() {
                if u64::from(g.share_free) + share[i][j] != u64::from(GPU_UNITS) {
                    return Err(format!(
                        "{id} GPU {}: share free {} + leased {} != {GPU_UNITS}",
                        g.index, g.share_free, share[i][j]
                    ));
                }
                if g.mem_free.checked_add(mem[i][j]) != Some(g.mem_total) {
                    return Err(format!(
                        "{id} GPU {}: memory free {} + reserved {} != total {}",
                        g.index, g.mem_free, mem[i][j], g.mem_total
                    ));
                }
                used_units += share[i][j];
                whole += u32::from(g.share_free == GPU_UNITS);
                max_free = max_free.max(g.share_free);
            }
            if n.gpu_units_used != used_units
                || n.gpu_units_total != n.gpus.len() as u64 * u64::from(GPU_UNITS)
                || n.whole_free != whole
                || n.max_share_free != max_free
            {
                return Err(format!("{id}: cached GPU figures are stale"));
            }
            if n.usage_key != n.compute_usage_key() {
                return Err(format!("{id}: cached usage key is stale"));
            }
            for (j, c) in n.custom.iter().enumerate() {
                if c.free.checked_add(custom[i][j]) != Some(c.total) {
                    return Err(format!(
                        "{id} custom `{}`: free {} + leased {} != total {}",
                        c.name, c.free, custom[i][j], c.total
                    ));
                }
            }
        }
        self.index.check(&self.nodes)?;
        self.queue.check()?;
        self.check_gangs()?;
        if let Some(r) = self.queued().find(|r| self.leases.contains_key(&r.lease)) {
            return Err(format!("{} is both queued and placed", r.lease));
        }
        Ok(())
    }
}

/// The feasible node the strategy prefers, found by visiting every node: Pack the most used,
/// Spread the least used; ties go to the lowest node id. The reference that
/// [`Scheduler::choose`] must always agree with.
#[cfg(test)]
fn choose_linear(nodes: &[NodeState], req: &PlacementRequest) -> Option<usize> {
    let (d, strategy) = (&req.demand, req.strategy);
    let mut best: Option<usize> = None;
    for (i, n) in nodes.iter().enumerate() {
        if !n.schedulable || !n.has_labels(&req.labels) || !n.fits_now(d) {
            continue;
        }
        best = match best {
            None => Some(i),
            Some(b) => {
                let ord = n.usage_key.cmp(&nodes[b].usage_key);
                let better = match strategy {
                    Strategy::Pack => ord.is_gt(),
                    Strategy::Spread => ord.is_lt(),
                };
                Some(if better { i } else { b })
            }
        };
    }
    best
}

/// True when `d` needs at least as much of everything as `f` and is at least as constrained,
/// so that `d` cannot fit anywhere `f` did not.
fn dominates(d: &ResourceDemand, f: &ResourceDemand) -> bool {
    d.cpu_millis >= f.cpu_millis
        && d.gpus.units() >= f.gpus.units()
        && d.gpu_memory >= f.gpu_memory
        && match (&f.accelerator, &d.accelerator) {
            (None, _) => true,
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (Some(_), None) => false,
        }
        && f.custom
            .iter()
            .all(|(name, amount)| d.custom(name) >= *amount)
}

/// Why none of `nodes`, even entirely free, can satisfy `d`: the first missing resource found,
/// checking CPUs, custom resources, GPUs, accelerator type and GPU memory in turn.
fn explain<'a>(
    nodes: impl Iterator<Item = &'a NodeState> + Clone,
    d: &ResourceDemand,
) -> PlacementError {
    let most_cpu = nodes.clone().map(|n| n.cpu_total).max().unwrap_or(0);
    if most_cpu < d.cpu_millis {
        return PlacementError::Cpus {
            wanted_millis: d.cpu_millis,
            most_millis: most_cpu,
        };
    }
    for (name, amount) in d.custom.iter().filter(|(_, a)| *a > 0) {
        if !nodes
            .clone()
            .any(|n| n.custom.iter().any(|c| &c.name == name))
        {
            return PlacementError::CustomMissing { name: name.clone() };
        }
        let most = nodes
            .clone()
            .map(|n| n.custom_total(name))
            .max()
            .unwrap_or(0);
        if most < *amount {
            return PlacementError::CustomAmount {
                name: name.clone(),
                wanted_millis: *amount,
                most_millis: most,
            };
        }
    }
    let devices = d.gpus.devices();
    if devices > 0 {
        let all_gpus = nodes.clone().flat_map(|n| n.gpus.iter());
        if all_gpus.clone().next().is_none() {
            return PlacementError::NoGpus { wanted: d.gpus };
        }
        let accel = d.accelerator.as_deref();
        if let Some(a) = accel {
            if !all_gpus.clone().any(|g| g.matches(accel)) {
                let mut available: Vec<String> = all_gpus.map(|g| g.accelerator.clone()).collect();
                available.sort_by_key(|s| s.to_ascii_uppercase());
                available.dedup_by(|x, y| x.eq_ignore_ascii_case(y));
                return PlacementError::Accelerator {
                    wanted: a.to_string(),
                    available,
                };
            }
        }
        let kind = accel.map_or_else(|| "GPU".to_string(), |a| format!("{a} GPU"));
        let most = nodes
            .clone()
            .map(|n| n.gpus.iter().filter(|g| g.matches(accel)).count())
            .max()
            .unwrap_or(0) as u32;
        if most < devices {
            return PlacementError::TooManyGpus {
                what: format!("{kind}s"),
                wanted: devices,
                most,
            };
        }
        let largest = all_gpus
            .filter(|g| g.matches(accel))
            .map(|g| g.mem_total)
            .max()
            .unwrap_or(0);
        if largest < d.gpu_memory {
            return PlacementError::GpuMemory {
                what: kind,
                wanted: d.gpu_memory,
                largest,
            };
        }
        let most = nodes
            .clone()
            .map(|n| {
                n.gpus
                    .iter()
                    .filter(|g| g.matches(accel) && g.mem_total >= d.gpu_memory)
                    .count()
            })
            .max()
            .unwrap_or(0) as u32;
        if most < devices {
            return PlacementError::TooManyGpus {
                what: format!("{kind}s with {} of memory", ByteSize(d.gpu_memory)),
                wanted: devices,
                most,
            };
        }
    }
    PlacementError::NoSingleNode {
        demand: d.to_string(),
    }
}
