//! Gangs (placement groups): bundles of resources placed all or nothing, and the work that
//! then runs inside a bundle.
//!
//! A gang asks for bundles (each a [`ResourceDemand`]) and a [`GangStrategy`]. It is placed
//! whole or not at all: a try allocates its bundles one by one (the largest first) and gives
//! back what it took at the first bundle that fits nowhere, so capacity is exactly as before.
//! A gang that does not fit now waits holding nothing and is tried again by every pass over
//! the queue after capacity grew; one that no set of nodes could ever hold, even entirely
//! free, is refused at once, naming why.
//!
//! A placed bundle holds its resources on its node as a lease does. Work placed in it
//! ([`Scheduler::request_in_bundle`]) takes from what the bundle holds, not from the node,
//! and waits in the bundle's own queue when the bundle is full (or not placed). When a node
//! dies, only the bundles on it are lost: the work in them is lost with the node, and the
//! gang places just those bundles again, keeping its strategy against the bundles it still
//! has (a `strict_spread` bundle avoids their nodes). A node that stops taking work (it
//! drains) hands its bundles on the same way, except that the holding there stays, *leaving*,
//! until the work still running in it ends. Removing a gang refuses what waits in
//! it and gives back each bundle once the work in it has ended: capacity never returns
//! while work the head has not stopped yet still runs on it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use ember_core::ids::{GangId, LeaseId, NodeId};
use ember_core::proto::{BundleRef, GangStrategy};
use ember_core::resources::{format_millis, Allocation, ByteSize, ResourceDemand, GPU_UNITS};

use super::node::{CustomSlot, GpuSlot, NodeState};
use super::queue::QueueKey;
use super::{IdMap, Lease, PlacementError, PlacementRequest, Scheduler, Strategy};

/// A request for a gang: its bundles, placed all or nothing with its strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GangRequest {
    /// The gang's id; unique among the gangs of the cluster.
    pub gang: GangId,
    /// What each bundle needs, in bundle order.
    pub bundles: Vec<ResourceDemand>,
    /// How the bundles are spread over nodes.
    pub strategy: GangStrategy,
    /// Order among waiting gangs: higher first, first-come first among equals.
    pub priority: i32,
}

/// What [`Scheduler::create_gang`] did with a gang.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GangDecision {
    /// Every bundle is placed: the nodes, in bundle order.
    Placed(Vec<NodeId>),
    /// It fits nowhere whole now but could once capacity frees; it holds nothing meanwhile.
    Queued,
    /// No set of nodes could ever hold it (or it is malformed); nothing was kept.
    Rejected(PlacementError),
}

/// A gang as `ember status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GangView {
    /// Which gang.
    pub id: GangId,
    /// Its strategy.
    pub strategy: GangStrategy,
    /// Its bundles, in order.
    pub bundles: Vec<BundleView>,
    /// Whether it was ever placed whole (a gang that lost bundles with a node stays so).
    pub placed_once: bool,
    /// Whether its removal was asked for and waits on work still running in it.
    pub removing: bool,
}

/// One bundle of a [`GangView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleView {
    /// What it reserves.
    pub demand: ResourceDemand,
    /// Where it is placed, if it is.
    pub node: Option<NodeId>,
    /// The leases running in it.
    pub leases: usize,
    /// The requests waiting in it.
    pub waiting: usize,
}

/// What [`Scheduler::remove_gang`] left for the head to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemovedGang {
    /// Requests that waited in its bundles, now withdrawn.
    pub withdrawn: Vec<LeaseId>,
    /// Leases running in its bundles: the head stops their work and releases them, and each
    /// bundle's capacity returns with its last one.
    pub running: Vec<LeaseId>,
    /// Whether the gang waited, never placed whole (its creation is still unanswered).
    pub was_waiting: bool,
}

/// A gang in the scheduler.
#[derive(Debug, Clone)]
pub(crate) struct Gang {
    strategy: GangStrategy,
    priority: i32,
    bundles: Vec<Bundle>,
    /// Placed whole at least once: before that it holds nothing at all.
    placed_once: bool,
    /// Its removal was asked for: nothing more is placed in it, and each bundle goes once
    /// its last lease is released.
    removed: bool,
    /// Must be tried at the next pass whatever grew: it was just created or lost bundles.
    fresh: bool,
}

impl Gang {
    /// Waits for bundles to be placed (not removed, some bundle unplaced).
    fn waits(&self) -> bool {
        !self.removed && self.bundles.iter().any(|b| b.placed.is_none())
    }

    /// Holds nothing anywhere.
    fn holds_nothing(&self) -> bool {
        self.bundles
            .iter()
            .all(|b| b.placed.is_none() && b.leaving.is_empty())
    }
}

impl Bundle {
    /// Its holding on `node`: where it is placed, or one it is leaving.
    fn holding_on(&mut self, node: NodeId) -> Option<&mut Placed> {
        match &mut self.placed {
            Some(p) if p.node == node => Some(p),
            _ => self.leaving.iter_mut().find(|p| p.node == node),
        }
    }
}

/// One bundle of a gang.
#[derive(Debug, Clone)]
struct Bundle {
    demand: ResourceDemand,
    placed: Option<Placed>,
    /// Holdings on nodes that stopped taking work, kept until the leases in them end: the
    /// bundle is placed again elsewhere meanwhile.
    leaving: Vec<Placed>,
    /// Requests waiting to run in it, in queue order.
    queue: BTreeMap<QueueKey, PlacementRequest>,
}

/// A placed bundle: what it holds on its node, and what of that is free for work in it.
#[derive(Debug, Clone)]
struct Placed {
    node: NodeId,
    allocation: Allocation,
    /// The bundle's holding as a node of its own, for the work placed in it.
    room: NodeState,
}

/// The gangs of a cluster and the work in their bundles.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gangs {
    by_id: BTreeMap<GangId, Gang>,
    /// Leases placed in bundles, with their bundle.
    leases: IdMap<LeaseId, (BundleRef, Lease)>,
    /// Requests waiting in bundles: their bundle and place in its queue.
    queued: IdMap<LeaseId, (BundleRef, QueueKey)>,
    /// Bundles with room that grew (placed, or a lease in them released) since the last pass.
    grown: BTreeSet<BundleRef>,
    /// Gangs placed whole (or whose lost bundles were placed again) since last taken.
    placed: Vec<GangId>,
    /// Requests refused since last taken: they waited in a bundle that can never hold them.
    refused: Vec<(LeaseId, PlacementError)>,
    /// Arrival order of requests in bundles.
    seq: u64,
}

impl Gangs {
    pub(crate) fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id).map(|(_, l)| l)
    }

    pub(crate) fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values().map(|(_, l)| l)
    }

    pub(crate) fn knows(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id) || self.queued.contains_key(&id)
    }

    pub(crate) fn queued_request(&self, id: LeaseId) -> Option<&PlacementRequest> {
        let (b, key) = self.queued.get(&id)?;
        self.by_id.get(&b.gang)?.bundles[b.index as usize]
            .queue
            .get(key)
    }

    /// The placed bundles as leases of their nodes, for the scheduler's accounting.
    pub(crate) fn holdings(&self) -> impl Iterator<Item = (NodeId, &Allocation)> {
        self.by_id.values().flat_map(|g| {
            g.bundles.iter().flat_map(|b| {
                b.placed
                    .iter()
                    .chain(&b.leaving)
                    .map(|p| (p.node, &p.allocation))
            })
        })
    }
}

/// The bundle's holding as a node of its own: its node's id and labels, the CPUs, GPU shares
/// and memory and custom resources it holds, all free.
fn room_of(node: &NodeState, a: &Allocation) -> NodeState {
    let mut room = node.clone();
    room.cpu_total = a.cpu_millis;
    room.cpu_free = a.cpu_millis;
    room.gpus = a
        .gpus
        .iter()
        .map(|g| {
            let slot = node.gpus.iter().find(|s| s.index == g.index);
            GpuSlot {
                index: g.index,
                accelerator: slot.map(|s| s.accelerator.clone()).unwrap_or_default(),
                mem_total: g.memory,
                mem_free: g.memory,
                share_free: g.share.units(),
                // The node's kinds come with the clone; a GPU it lacks matches no type.
                kind: slot.map_or(u32::MAX, |s| s.kind),
            }
        })
        .collect();
    room.custom = a
        .custom
        .iter()
        .map(|(name, amount)| CustomSlot {
            name: name.clone(),
            total: *amount,
            free: *amount,
        })
        .collect();
    room.gpu_units_total = a.gpus.iter().map(|g| u64::from(g.share.units())).sum();
    room.gpu_units_used = 0;
    room.leases = 0;
    room.schedulable = true;
    room.grown = false;
    room.refresh_gpu_cache();
    room.usage_key = room.compute_usage_key();
    room
}

/// Why a bundle reserving `b` can never hold `d`; `None` when it can.
fn bundle_lacks(b: &ResourceDemand, d: &ResourceDemand) -> Option<String> {
    if d.cpu_millis > b.cpu_millis {
        return Some(format!(
            "it reserves {} CPUs, the request needs {}",
            format_millis(b.cpu_millis),
            format_millis(d.cpu_millis)
        ));
    }
    for (name, amount) in d.custom.iter().filter(|(_, a)| *a > 0) {
        if b.custom(name) < *amount {
            return Some(format!(
                "it reserves {} of `{name}`, the request needs {}",
                format_millis(b.custom(name)),
                format_millis(*amount)
            ));
        }
    }
    let (want, have) = (d.gpus.units(), b.gpus.units());
    if want > 0 {
        let holds = if have == 0 {
            false
        } else if want < GPU_UNITS {
            // A fraction fits on one GPU of the bundle: a whole one, or its own fraction.
            have >= GPU_UNITS || want <= have
        } else {
            have >= GPU_UNITS && want <= have
        };
        if !holds {
            return Some(format!(
                "it reserves {} GPUs, the request needs {}",
                b.gpus, d.gpus
            ));
        }
        if d.gpu_memory > b.gpu_memory {
            return Some(format!(
                "it reserves {} of memory on each GPU, the request needs {}",
                ByteSize(b.gpu_memory),
                ByteSize(d.gpu_memory)
            ));
        }
        if let Some(a) = &d.accelerator {
            if !b
                .accelerator
                .as_ref()
                .is_some_and(|x| x.eq_ignore_ascii_case(a))
            {
                return Some(format!(
                    "the request needs {a} GPUs and the bundle does not ask for that type"
                ));
            }
        }
    }
    None
}

/// How large a bundle is, for placing the largest first.
fn size(d: &ResourceDemand) -> (u32, u64, u64, usize) {
    (d.gpus.units(), d.gpu_memory, d.cpu_millis, d.custom.len())
}

/// Whether a demand asks for anything at all.
fn asks_nothing(d: &ResourceDemand) -> bool {
    d.cpu_millis == 0 && d.gpus.units() == 0 && d.custom.iter().all(|(_, a)| *a == 0)
}

impl Scheduler {
    /// Places a gang whole now if it fits; queues it (holding nothing) if some set of nodes,
    /// entirely free, could hold it; rejects it at once, naming why, if none could. Draining
    /// nodes count as absent. With `wait` (nodes of the head's last life expected back), a
    /// gang that no node present could hold waits instead of being rejected.
    pub fn create_gang(&mut self, req: GangRequest, wait: bool) -> GangDecision {
        if self.gangs.by_id.contains_key(&req.gang) {
            return GangDecision::Rejected(PlacementError::GangAlreadyKnown(req.gang));
        }
        if req.bundles.is_empty() {
            return GangDecision::Rejected(PlacementError::EmptyGang);
        }
        let mut bundles = Vec::with_capacity(req.bundles.len());
        for (index, mut demand) in req.bundles.into_iter().enumerate() {
            let index = index as u32;
            if asks_nothing(&demand) {
                return GangDecision::Rejected(PlacementError::EmptyBundle(index));
            }
            if let Err(e) = Self::check_demand(&mut demand) {
                return GangDecision::Rejected(PlacementError::Bundle {
                    index,
                    reason: Box::new(e),
                });
            }
            bundles.push(Bundle {
                demand,
                placed: None,
                leaving: Vec::new(),
                queue: BTreeMap::new(),
            });
        }
        let gang = req.gang;
        self.gangs.by_id.insert(
            gang,
            Gang {
                strategy: req.strategy,
                priority: req.priority,
                bundles,
                placed_once: false,
                removed: false,
                fresh: false,
            },
        );
        if self.try_place_gang(gang) {
            self.gangs.placed.retain(|g| *g != gang);
            let nodes = self.gangs.by_id[&gang]
                .bundles
                .iter()
                .filter_map(|b| b.placed.as_ref().map(|p| p.node))
                .collect();
            return GangDecision::Placed(nodes);
        }
        match self.gang_never_fits(gang) {
            Some(e) if !wait => {
                self.gangs.by_id.remove(&gang);
                GangDecision::Rejected(e)
            }
            _ => GangDecision::Queued,
        }
    }

    /// Asks for `req` to run inside `bundle` of a gang: placed now in what the bundle holds
    /// if it fits there, queued in the bundle otherwise (the bundle full, or not placed yet),
    /// rejected at once if the bundle could never hold it (the gang unknown or being removed,
    /// no such bundle, a demand past what the bundle reserves, a label its node lacks).
    pub fn request_in_bundle(
        &mut self,
        bundle: BundleRef,
        mut req: PlacementRequest,
    ) -> super::Decision {
        use super::Decision;
        if let Err(e) = self.validate(&mut req) {
            return Decision::Rejected(e);
        }
        let Some(gang) = self.gangs.by_id.get(&bundle.gang) else {
            return Decision::Rejected(PlacementError::UnknownGang(bundle.gang));
        };
        if gang.removed {
            return Decision::Rejected(PlacementError::GangRemoved(bundle.gang));
        }
        let Some(b) = gang.bundles.get(bundle.index as usize) else {
            return Decision::Rejected(PlacementError::NoSuchBundle {
                bundle,
                bundles: gang.bundles.len() as u32,
            });
        };
        if let Some(why) = bundle_lacks(&b.demand, &req.demand) {
            return Decision::Rejected(PlacementError::BundleNeverFits { bundle, why });
        }
        if let Some(p) = &b.placed {
            if let Some(label) = req
                .labels
                .iter()
                .find(|l| !p.room.has_labels(std::slice::from_ref(l)))
            {
                return Decision::Rejected(PlacementError::MissingLabel(label.clone()));
            }
            if let Some(lease) = self.place_in_bundle(bundle, &req) {
                return Decision::Placed(lease);
            }
        }
        self.gangs.seq += 1;
        let key: QueueKey = (Reverse(req.priority), self.gangs.seq);
        self.gangs.queued.insert(req.lease, (bundle, key));
        if let Some(g) = self.gangs.by_id.get_mut(&bundle.gang) {
            g.bundles[bundle.index as usize].queue.insert(key, req);
        }
        Decision::Queued
    }

    /// Places `req` in the bundle's room if it fits now and the bundle's node takes work.
    fn place_in_bundle(&mut self, bundle: BundleRef, req: &PlacementRequest) -> Option<Lease> {
        let node_takes_work = {
            let p = self.gangs.by_id.get(&bundle.gang)?.bundles[bundle.index as usize]
                .placed
                .as_ref()?;
            self.position(p.node)
                .is_some_and(|i| self.nodes[i].schedulable)
        };
        if !node_takes_work {
            return None;
        }
        let p = self.gangs.by_id.get_mut(&bundle.gang)?.bundles[bundle.index as usize]
            .placed
            .as_mut()?;
        let allocation = p.room.allocate(&req.demand)?;
        let lease = Lease {
            id: req.lease,
            node: p.node,
            allocation,
        };
        self.gangs.leases.insert(req.lease, (bundle, lease.clone()));
        Some(lease)
    }

    /// Removes a gang: what waits in it is withdrawn, its bundles without running work go
    /// back now, and those with work go back once the last of it is released. `None` for a
    /// gang that is unknown or already being removed.
    pub fn remove_gang(&mut self, id: GangId) -> Option<RemovedGang> {
        let gang = self.gangs.by_id.get_mut(&id).filter(|g| !g.removed)?;
        gang.removed = true;
        let mut removed = RemovedGang {
            was_waiting: !gang.placed_once,
            ..RemovedGang::default()
        };
        for b in &mut gang.bundles {
            for (_, req) in std::mem::take(&mut b.queue) {
                removed.withdrawn.push(req.lease);
            }
        }
        for lease in &removed.withdrawn {
            self.gangs.queued.remove(lease);
        }
        removed.running = self
            .gangs
            .leases
            .iter()
            .filter(|(_, (b, _))| b.gang == id)
            .map(|(l, _)| *l)
            .collect();
        removed.running.sort();
        for index in 0..self.gangs.by_id[&id].bundles.len() {
            self.give_back_bundle_if_idle(BundleRef {
                gang: id,
                index: index as u32,
            });
        }
        Some(removed)
    }

    /// For a removed gang: gives a bundle's holding back to its node once no lease runs in
    /// it, and forgets the gang once it holds nothing.
    fn give_back_bundle_if_idle(&mut self, bundle: BundleRef) {
        let Some(gang) = self.gangs.by_id.get_mut(&bundle.gang) else {
            return;
        };
        if !gang.removed {
            return;
        }
        let b = &mut gang.bundles[bundle.index as usize];
        let idle = b.placed.take_if(|p| p.room.leases == 0);
        let empty = gang.holds_nothing();
        if let Some(p) = idle {
            self.give_back_holding(&p);
        }
        if empty {
            self.gangs.by_id.remove(&bundle.gang);
            self.gangs.grown.retain(|b| b.gang != bundle.gang);
        }
    }

    /// Gives a bundle's holding back to its node.
    fn give_back_holding(&mut self, p: &Placed) {
        if let Some(i) = self.position(p.node) {
            let node = &mut self.nodes[i];
            let usage_before = node.usage_key;
            node.free(&p.allocation);
            if node.schedulable {
                self.index.update(usage_before, node);
            }
            self.note_growth(i);
        }
    }

    /// Releases a lease placed in a bundle; false when no such lease is in a bundle. A
    /// holding the bundle is leaving goes back to its node with its last lease.
    pub(super) fn release_in_bundle(&mut self, lease: LeaseId) -> bool {
        let Some((bundle, l)) = self.gangs.leases.remove(&lease) else {
            return false;
        };
        let Some(b) = self
            .gangs
            .by_id
            .get_mut(&bundle.gang)
            .map(|g| &mut g.bundles[bundle.index as usize])
        else {
            return true;
        };
        let placed_here = b.placed.as_ref().is_some_and(|p| p.node == l.node);
        let mut drained = false;
        if let Some(p) = b.holding_on(l.node) {
            p.room.free(&l.allocation);
            drained = !placed_here && p.room.leases == 0;
        }
        if placed_here {
            self.gangs.grown.insert(bundle);
        }
        if drained {
            let at = b
                .leaving
                .iter()
                .position(|p| p.node == l.node)
                .expect("found above");
            let p = b.leaving.remove(at);
            self.give_back_holding(&p);
            let removed = self
                .gangs
                .by_id
                .get(&bundle.gang)
                .is_some_and(|g| g.removed && g.holds_nothing());
            if removed {
                self.gangs.by_id.remove(&bundle.gang);
            }
        }
        self.give_back_bundle_if_idle(bundle);
        true
    }

    /// A node stopped taking work (it drains): the bundles placed there are placed again
    /// elsewhere at the next pass, and their holdings there stay, leaving, until the leases
    /// in them end (a holding with none goes back at once).
    pub(super) fn move_bundles_off(&mut self, node: NodeId) {
        let mut idle = Vec::new();
        for (id, g) in self.gangs.by_id.iter_mut() {
            for (i, b) in g.bundles.iter_mut().enumerate() {
                let Some(p) = b.placed.take_if(|p| p.node == node) else {
                    continue;
                };
                g.fresh = true;
                self.gangs.grown.remove(&BundleRef {
                    gang: *id,
                    index: i as u32,
                });
                if p.room.leases == 0 {
                    idle.push(p);
                } else {
                    b.leaving.push(p);
                }
            }
        }
        for p in &idle {
            self.give_back_holding(p);
        }
        self.gangs
            .by_id
            .retain(|_, g| !(g.removed && g.holds_nothing()));
    }

    /// Withdraws a request waiting in a bundle; false when none waits there.
    pub(super) fn cancel_in_bundle(&mut self, lease: LeaseId) -> bool {
        let Some((bundle, key)) = self.gangs.queued.remove(&lease) else {
            return false;
        };
        if let Some(g) = self.gangs.by_id.get_mut(&bundle.gang) {
            g.bundles[bundle.index as usize].queue.remove(&key);
        }
        true
    }

    /// A node is gone: the bundles on it are lost, and the leases in them with it (added to
    /// `gone`). Their gangs place those bundles again at the next pass.
    pub(super) fn lose_bundles_on(&mut self, node: NodeId, gone: &mut Vec<Lease>) {
        // Every lease in a bundle runs on the node of the bundle's holding it draws on.
        self.gangs.leases.retain(|_, (_, lease)| {
            if lease.node == node {
                gone.push(lease.clone());
                false
            } else {
                true
            }
        });
        for (id, gang) in self.gangs.by_id.iter_mut() {
            for (i, b) in gang.bundles.iter_mut().enumerate() {
                b.leaving.retain(|p| p.node != node);
                if b.placed.take_if(|p| p.node == node).is_some() {
                    gang.fresh = true;
                    self.gangs.grown.remove(&BundleRef {
                        gang: *id,
                        index: i as u32,
                    });
                }
            }
        }
        self.gangs
            .by_id
            .retain(|_, g| !(g.removed && g.holds_nothing()));
    }

    /// Tries the waiting gangs (those just created or that lost bundles, and, when capacity
    /// grew, all of them, by priority then age), then the requests waiting in bundles whose
    /// room grew. Returns the leases placed in bundles.
    pub(super) fn place_in_gangs(&mut self) -> Vec<Lease> {
        let grew = !self.grown.is_empty() || self.grown_overflow;
        let mut waiting: Vec<(Reverse<i32>, GangId)> = self
            .gangs
            .by_id
            .iter()
            .filter(|(_, g)| g.waits() && (grew || g.fresh))
            .map(|(id, g)| (Reverse(g.priority), *id))
            .collect();
        waiting.sort();
        for (_, id) in waiting {
            if let Some(g) = self.gangs.by_id.get_mut(&id) {
                g.fresh = false;
            }
            self.try_place_gang(id);
        }
        let mut placed = Vec::new();
        for bundle in std::mem::take(&mut self.gangs.grown) {
            let Some(b) = self
                .gangs
                .by_id
                .get(&bundle.gang)
                .map(|g| &g.bundles[bundle.index as usize])
            else {
                continue;
            };
            let Some(p) = &b.placed else {
                continue;
            };
            // What waits here that its node lacks a label for can never run here.
            let refused: Vec<(LeaseId, String)> = b
                .queue
                .values()
                .filter_map(|r| {
                    let missing = r
                        .labels
                        .iter()
                        .find(|l| !p.room.has_labels(std::slice::from_ref(l)))?;
                    Some((r.lease, missing.clone()))
                })
                .collect();
            for (lease, label) in refused {
                self.cancel_in_bundle(lease);
                self.gangs
                    .refused
                    .push((lease, PlacementError::MissingLabel(label)));
            }
            let waiting: Vec<PlacementRequest> = self.gangs.by_id[&bundle.gang].bundles
                [bundle.index as usize]
                .queue
                .values()
                .cloned()
                .collect();
            for req in waiting {
                if let Some(lease) = self.place_in_bundle(bundle, &req) {
                    self.cancel_in_bundle(req.lease);
                    placed.push(lease);
                }
            }
        }
        placed
    }

    /// Places every unplaced bundle of a waiting gang, or none: returns whether it did. The
    /// largest bundles go first; each goes where the strategy says among the nodes where it
    /// fits now, and at the first that fits nowhere every bundle placed by this try is given
    /// back, leaving capacity exactly as it was.
    fn try_place_gang(&mut self, id: GangId) -> bool {
        let Some(gang) = self.gangs.by_id.get(&id).filter(|g| g.waits()) else {
            return false;
        };
        let strategy = gang.strategy;
        let mut todo: Vec<(usize, ResourceDemand)> = gang
            .bundles
            .iter()
            .enumerate()
            .filter(|(_, b)| b.placed.is_none())
            .map(|(i, b)| (i, b.demand.clone()))
            .collect();
        todo.sort_by_key(|(i, d)| (Reverse(size(d)), *i));
        let mut used: Vec<NodeId> = gang
            .bundles
            .iter()
            .filter_map(|b| b.placed.as_ref().map(|p| p.node))
            .collect();
        let mut taken: Vec<(usize, usize, Allocation)> = Vec::with_capacity(todo.len());
        if strategy == GangStrategy::StrictPack && used.is_empty() {
            // All on one node: the node the strategy prefers where all of them fit together.
            let demands: Vec<&ResourceDemand> = todo.iter().map(|(_, d)| d).collect();
            match self.choose_for_all(&demands) {
                Some(i) => used.push(self.nodes[i].id),
                None => return false,
            }
        }
        for (bundle, demand) in &todo {
            let leaving: Vec<NodeId> = self.gangs.by_id[&id].bundles[*bundle]
                .leaving
                .iter()
                .map(|p| p.node)
                .collect();
            let Some(i) = self.choose_for_bundle(strategy, demand, &used, &leaving) else {
                self.give_back(&taken);
                return false;
            };
            let node = &mut self.nodes[i];
            let usage_before = node.usage_key;
            let Some(allocation) = node.allocate(demand) else {
                self.give_back(&taken);
                return false;
            };
            self.index.update(usage_before, node);
            if !used.contains(&node.id) {
                used.push(node.id);
            }
            taken.push((*bundle, i, allocation));
        }
        let nodes = &self.nodes;
        let gang = self.gangs.by_id.get_mut(&id).expect("checked above");
        for (bundle, i, allocation) in taken {
            let node = &nodes[i];
            gang.bundles[bundle].placed = Some(Placed {
                node: node.id,
                room: room_of(node, &allocation),
                allocation,
            });
            self.gangs.grown.insert(BundleRef {
                gang: id,
                index: bundle as u32,
            });
        }
        gang.placed_once = true;
        self.gangs.placed.push(id);
        true
    }

    /// Gives back what a failed try of a gang took.
    fn give_back(&mut self, taken: &[(usize, usize, Allocation)]) {
        for (_, i, allocation) in taken.iter().rev() {
            let node = &mut self.nodes[*i];
            let usage_before = node.usage_key;
            node.free(allocation);
            self.index.update(usage_before, node);
        }
    }

    /// The position of the node for one bundle, given the nodes the gang uses (`used`).
    fn choose_for_bundle(
        &self,
        strategy: GangStrategy,
        demand: &ResourceDemand,
        used: &[NodeId],
        leaving: &[NodeId],
    ) -> Option<usize> {
        // Never on a node where the bundle still has a holding it is leaving.
        let fits_at = |id: NodeId| {
            self.position(id).filter(|&i| {
                let n = &self.nodes[i];
                n.schedulable && n.fits_now(demand) && !leaving.contains(&id)
            })
        };
        let pick = |order: Strategy, avoid: &[NodeId]| {
            let probe = PlacementRequest {
                strategy: order,
                ..PlacementRequest::new(LeaseId(0), demand.clone())
            };
            let id = self
                .index
                .choose(&probe, |id| !avoid.contains(&id) && fits_at(id).is_some())?;
            self.position(id)
        };
        match strategy {
            GangStrategy::StrictPack => fits_at(*used.first()?),
            GangStrategy::StrictSpread => pick(Strategy::Spread, used),
            GangStrategy::Pack => used
                .iter()
                .find_map(|&id| fits_at(id))
                .or_else(|| pick(Strategy::Pack, &[])),
            GangStrategy::Spread => {
                pick(Strategy::Spread, used).or_else(|| pick(Strategy::Spread, &[]))
            }
        }
    }

    /// The position of the most used schedulable node where every one of `demands` fits now
    /// together (tried in order on a copy of the node).
    fn choose_for_all(&self, demands: &[&ResourceDemand]) -> Option<usize> {
        let first = demands.first()?;
        let probe = PlacementRequest::new(LeaseId(0), (*first).clone());
        let id = self.index.choose(&probe, |id| {
            self.position(id).is_some_and(|i| {
                let n = &self.nodes[i];
                n.schedulable && holds_all(n.clone(), demands)
            })
        })?;
        self.position(id)
    }

    /// Why no set of schedulable nodes, entirely free, could hold the gang's unplaced
    /// bundles beside its placed ones; `None` when one could. Linear in the nodes: asked when
    /// a gang does not fit now, and when nodes leave.
    pub fn gang_never_fits(&self, id: GangId) -> Option<PlacementError> {
        let gang = self.gangs.by_id.get(&id)?;
        if self.nodes.is_empty() {
            return Some(PlacementError::NoNodes);
        }
        let todo: Vec<(usize, &ResourceDemand)> = gang
            .bundles
            .iter()
            .enumerate()
            .filter(|(_, b)| b.placed.is_none())
            .map(|(i, b)| (i, &b.demand))
            .collect();
        for (index, d) in &todo {
            if let Some(e) = self.never_fits(d, &[]) {
                return Some(PlacementError::Bundle {
                    index: *index as u32,
                    reason: Box::new(e),
                });
            }
        }
        let used: Vec<NodeId> = gang
            .bundles
            .iter()
            .filter_map(|b| b.placed.as_ref().map(|p| p.node))
            .collect();
        let free: Vec<NodeState> = self
            .nodes
            .iter()
            .filter(|n| n.schedulable)
            .map(emptied)
            .collect();
        let bundles = gang.bundles.len();
        match gang.strategy {
            GangStrategy::StrictPack => {
                let demands: Vec<&ResourceDemand> = todo.iter().map(|(_, d)| *d).collect();
                let fits = match used.first() {
                    // Lost bundles go back beside the others, on their node.
                    Some(n) => free
                        .iter()
                        .find(|f| f.id == *n)
                        .is_some_and(|f| holds_all(f.clone(), &demands)),
                    None => free.iter().any(|f| holds_all(f.clone(), &demands)),
                };
                (!fits).then_some(PlacementError::StrictPackNoNode { bundles })
            }
            GangStrategy::StrictSpread => {
                let open: Vec<&NodeState> = free.iter().filter(|f| !used.contains(&f.id)).collect();
                let demands: Vec<&ResourceDemand> = todo.iter().map(|(_, d)| *d).collect();
                let most = matching(&demands, &open);
                (most < demands.len()).then_some(PlacementError::StrictSpreadTooFewNodes {
                    bundles,
                    most: most + used.len(),
                })
            }
            GangStrategy::Pack | GangStrategy::Spread => {
                // First fit, largest first, on the cluster entirely free.
                let mut free = free;
                let mut order: Vec<&ResourceDemand> = todo.iter().map(|(_, d)| *d).collect();
                order.sort_by_key(|d| Reverse(size(d)));
                let all = order.iter().all(|d| {
                    free.iter_mut()
                        .find(|f| f.fits_now(d))
                        .and_then(|f| f.allocate(d))
                        .is_some()
                });
                (!all).then_some(PlacementError::GangNeverFits {
                    bundles,
                    strategy: gang.strategy,
                })
            }
        }
    }

    /// Why a waiting gang does not fit now: the first bundle (largest first) that fits on no
    /// node now, or that they do not fit together. `None` for a gang that does not wait.
    pub fn gang_waits_for(&self, id: GangId) -> Option<String> {
        let gang = self.gangs.by_id.get(&id).filter(|g| g.waits())?;
        let lacking = gang.bundles.iter().enumerate().find(|(_, b)| {
            b.placed.is_none()
                && !self
                    .nodes
                    .iter()
                    .any(|n| n.schedulable && n.fits_now(&b.demand))
        });
        Some(match lacking {
            Some((i, b)) => format!(
                "waiting for capacity: bundle {i} ({}) fits on no node now",
                b.demand
            ),
            None => format!(
                "waiting for capacity: its bundles do not fit together now as {} asks",
                gang.strategy
            ),
        })
    }

    /// Takes the gangs placed whole (or whose lost bundles were placed again) since last
    /// asked, in the order placed.
    pub fn take_placed_gangs(&mut self) -> Vec<GangId> {
        std::mem::take(&mut self.gangs.placed)
    }

    /// Takes the requests refused since last asked: they waited in a bundle that, once
    /// placed, could never hold them (its node lacks a label they need).
    pub fn take_refused(&mut self) -> Vec<(LeaseId, PlacementError)> {
        std::mem::take(&mut self.gangs.refused)
    }

    /// A gang, as `ember status` shows it.
    pub fn gang(&self, id: GangId) -> Option<GangView> {
        let g = self.gangs.by_id.get(&id)?;
        Some(GangView {
            id,
            strategy: g.strategy,
            bundles: g
                .bundles
                .iter()
                .map(|b| BundleView {
                    demand: b.demand.clone(),
                    node: b.placed.as_ref().map(|p| p.node),
                    leases: b
                        .placed
                        .iter()
                        .chain(&b.leaving)
                        .map(|p| p.room.leases)
                        .sum(),
                    waiting: b.queue.len(),
                })
                .collect(),
            placed_once: g.placed_once,
            removing: g.removed,
        })
    }

    /// Every gang, in id order.
    pub fn gangs(&self) -> impl Iterator<Item = GangView> + '_ {
        self.gangs.by_id.keys().filter_map(|id| self.gang(*id))
    }

    /// The requests waiting in bundles, gang by gang, bundle by bundle, in queue order.
    pub fn queued_in_bundles(&self) -> impl Iterator<Item = &PlacementRequest> {
        self.gangs
            .by_id
            .values()
            .flat_map(|g| g.bundles.iter().flat_map(|b| b.queue.values()))
    }

    /// The bundle a lease runs or waits in, if any.
    pub fn bundle_of(&self, lease: LeaseId) -> Option<BundleRef> {
        self.gangs
            .leases
            .get(&lease)
            .map(|(b, _)| *b)
            .or_else(|| self.gangs.queued.get(&lease).map(|(b, _)| *b))
    }

    /// Checks the gangs: none partly placed before it was first placed whole; a strict_pack
    /// gang on one node, a strict_spread gang on distinct nodes; every bundle's room agrees
    /// with the leases in it; the tables of leases and waiting requests agree with the
    /// bundles. For tests.
    pub(super) fn check_gangs(&self) -> Result<(), String> {
        for (id, g) in &self.gangs.by_id {
            let nodes: Vec<NodeId> = g
                .bundles
                .iter()
                .filter_map(|b| b.placed.as_ref().map(|p| p.node))
                .collect();
            if !g.placed_once && !nodes.is_empty() {
                return Err(format!(
                    "{id} is partly placed before it was ever placed whole"
                ));
            }
            if g.removed && g.holds_nothing() {
                return Err(format!("{id} is removed and holds nothing, yet is kept"));
            }
            match g.strategy {
                GangStrategy::StrictPack if nodes.windows(2).any(|w| w[0] != w[1]) => {
                    return Err(format!("strict_pack {id} is on several nodes: {nodes:?}"));
                }
                GangStrategy::StrictSpread => {
                    let distinct: BTreeSet<&NodeId> = nodes.iter().collect();
                    if distinct.len() != nodes.len() {
                        return Err(format!("strict_spread {id} shares a node: {nodes:?}"));
                    }
                }
                _ => {}
            }
            for (i, b) in g.bundles.iter().enumerate() {
                let here = BundleRef {
                    gang: *id,
                    index: i as u32,
                };
                if g.removed && !b.queue.is_empty() {
                    return Err(format!("removed {here} still has waiting requests"));
                }
                for (key, req) in &b.queue {
                    if self.gangs.queued.get(&req.lease) != Some(&(here, *key)) {
                        return Err(format!(
                            "{} waits in {here} but is not filed there",
                            req.lease
                        ));
                    }
                }
                let holdings: Vec<&Placed> = b.placed.iter().chain(&b.leaving).collect();
                let mut nodes_held: Vec<NodeId> = holdings.iter().map(|p| p.node).collect();
                nodes_held.sort();
                if nodes_held.windows(2).any(|w| w[0] == w[1]) {
                    return Err(format!("{here} holds twice on one node: {nodes_held:?}"));
                }
                if b.leaving.iter().any(|p| p.room.leases == 0) {
                    return Err(format!(
                        "{here} keeps a holding it left with no lease in it"
                    ));
                }
                let mine = || {
                    self.gangs
                        .leases
                        .iter()
                        .filter(move |(_, (b2, _))| *b2 == here)
                };
                if let Some((lease, (_, l))) =
                    mine().find(|(id, (_, l))| l.id != **id || !nodes_held.contains(&l.node))
                {
                    return Err(format!(
                        "{lease} in {here} is on {}, where it holds nothing",
                        l.node
                    ));
                }
                for p in holdings {
                    let on_it: Vec<&Lease> = mine()
                        .map(|(_, (_, l))| l)
                        .filter(|l| l.node == p.node)
                        .collect();
                    if p.room.leases != on_it.len() {
                        return Err(format!(
                            "{here} on {} counts {} leases, holds {}",
                            p.node,
                            p.room.leases,
                            on_it.len()
                        ));
                    }
                    let cpu: u64 = on_it.iter().map(|l| l.allocation.cpu_millis).sum();
                    if p.room.cpu_free + cpu != p.allocation.cpu_millis {
                        return Err(format!("{here}: cpu free + leased != reserved"));
                    }
                    for slot in &p.room.gpus {
                        let used: u32 = on_it
                            .iter()
                            .flat_map(|l| &l.allocation.gpus)
                            .filter(|g| g.index == slot.index)
                            .map(|g| g.share.units())
                            .sum();
                        let reserved = p
                            .allocation
                            .gpus
                            .iter()
                            .find(|g| g.index == slot.index)
                            .map_or(0, |g| g.share.units());
                        if slot.share_free + used != reserved {
                            return Err(format!(
                                "{here} GPU {}: share free + leased != reserved",
                                slot.index
                            ));
                        }
                    }
                }
            }
        }
        for (lease, (b, _)) in &self.gangs.queued {
            if !self.gangs.by_id.contains_key(&b.gang) {
                return Err(format!("{lease} waits in {b}, which is gone"));
            }
        }
        for (lease, (b, _)) in &self.gangs.leases {
            if !self.gangs.by_id.contains_key(&b.gang) {
                return Err(format!("{lease} runs in {b}, which is gone"));
            }
        }
        Ok(())
    }
}

/// The node with all of its capacity free.
fn emptied(n: &NodeState) -> NodeState {
    let mut f = n.clone();
    f.cpu_free = f.cpu_total;
    for g in &mut f.gpus {
        g.share_free = GPU_UNITS;
        g.mem_free = g.mem_total;
    }
    for c in &mut f.custom {
        c.free = c.total;
    }
    f.gpu_units_used = 0;
    f.leases = 0;
    f.refresh_gpu_cache();
    f.usage_key = f.compute_usage_key();
    f
}

/// Whether every one of `demands` fits on `node` together, allocated in order.
fn holds_all(mut node: NodeState, demands: &[&ResourceDemand]) -> bool {
    demands.iter().all(|d| node.allocate(d).is_some())
}

/// The most bundles that can each have a node of their own among `nodes` (entirely free),
/// found by augmenting paths.
fn matching(demands: &[&ResourceDemand], nodes: &[&NodeState]) -> usize {
    let fits: Vec<Vec<usize>> = demands
        .iter()
        .map(|d| {
            nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.fits_total(d))
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    let mut owner: Vec<Option<usize>> = vec![None; nodes.len()];
    let mut matched = 0;
    for b in 0..demands.len() {
        let mut seen = vec![false; nodes.len()];
        if augment(b, &fits, &mut owner, &mut seen) {
            matched += 1;
        }
    }
    matched
}

fn augment(b: usize, fits: &[Vec<usize>], owner: &mut [Option<usize>], seen: &mut [bool]) -> bool {
    for &j in &fits[b] {
        if seen[j] {
            continue;
        }
        seen[j] = true;
        if owner[j].is_none_or(|o| augment(o, fits, owner, seen)) {
            owner[j] = Some(b);
            return true;
        }
    }
    false
}
