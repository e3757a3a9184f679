//! The pending queue: requests that fit nowhere now but could later, in priority order
//! (higher first, first-come first among equals).
//!
//! Besides that order, the queue files every request under its [`Shape`]: what decides
//! *whether* it fits now (its demand, its labels and the node of a hard affinity), but not
//! *where* (strategy, soft affinity) nor when it is tried (priority). Each shape keeps its
//! members in queue order. While a pass places, capacity only shrinks, so once one request of
//! a shape fits nowhere, none of its shape behind it can fit in that pass either: the pass
//! ([`super::Scheduler::place_queued`]) merges the shapes' first members by queue order and
//! drops a shape at its first miss. It tries requests in the very order a walk of the whole
//! queue would, and skips only requests that such a walk would have found not to fit.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::{IdMap, NodeAffinity, PlacementRequest};
use ember_core::ids::{LeaseId, NodeId};

/// Where a request sits in the queue: priority (higher first), then arrival.
pub(crate) type QueueKey = (Reverse<i32>, u64);

/// Which shape a request is filed under: a slot of [`PendingQueue::shapes`].
pub(crate) type ShapeId = u32;

/// What decides whether a request fits now, and nothing else: two requests of one shape fit
/// exactly the same nodes. Accelerator names are kept as written (two spellings make two
/// shapes, which is only less sharing, never a wrong answer).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Shape {
    cpu_millis: u64,
    gpu_units: u32,
    gpu_memory: u64,
    accelerator: Option<String>,
    custom: Vec<(String, u64)>,
    labels: Vec<String>,
    /// The node a hard affinity pins the request to.
    pinned: Option<NodeId>,
}

impl Shape {
    pub(crate) fn of(req: &PlacementRequest) -> Shape {
        let d = &req.demand;
        Shape {
            cpu_millis: d.cpu_millis,
            gpu_units: d.gpus.units(),
            gpu_memory: d.gpu_memory,
            accelerator: d.accelerator.clone(),
            custom: d.custom.clone(),
            labels: req.labels.clone(),
            pinned: match req.affinity {
                Some(NodeAffinity { node, soft: false }) => Some(node),
                _ => None,
            },
        }
    }
}

/// A queued request and the shape it is filed under.
#[derive(Debug, Clone)]
struct Waiting {
    req: PlacementRequest,
    shape: ShapeId,
}

/// The requests of one shape, in queue order; a slot with no members is vacant.
#[derive(Debug, Clone)]
struct ShapeSlot {
    shape: Shape,
    members: BTreeSet<QueueKey>,
}

/// Queued requests in order, with an index by lease for cancelling and one by shape for
/// passes (see the module documentation).
#[derive(Debug, Default, Clone)]
pub(crate) struct PendingQueue {
    order: BTreeMap<QueueKey, Waiting>,
    by_lease: IdMap<LeaseId, QueueKey>,
    /// Slots of shapes; those listed in `vacant` have no members.
    shapes: Vec<ShapeSlot>,
    vacant: Vec<ShapeId>,
    /// The slot of every shape that has members.
    shape_ids: BTreeMap<Shape, ShapeId>,
    next_seq: u64,
}

impl PendingQueue {
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub(crate) fn contains(&self, lease: LeaseId) -> bool {
        self.by_lease.contains_key(&lease)
    }

    /// How many shapes have requests waiting.
    pub(crate) fn shape_count(&self) -> usize {
        self.shape_ids.len()
    }

    /// Adds a request behind every queued request of the same or higher priority.
    pub(crate) fn push(&mut self, req: PlacementRequest) {
        let key = (Reverse(req.priority), self.next_seq);
        self.next_seq += 1;
        let shape = Shape::of(&req);
        let id = match self.shape_ids.get(&shape) {
            Some(&id) => id,
            None => {
                let slot = ShapeSlot {
                    shape: shape.clone(),
                    members: BTreeSet::new(),
                };
                let id = match self.vacant.pop() {
                    Some(id) => {
                        self.shapes[id as usize] = slot;
                        id
                    }
                    None => {
                        self.shapes.push(slot);
                        (self.shapes.len() - 1) as ShapeId
                    }
                };
                self.shape_ids.insert(shape, id);
                id
            }
        };
        self.shapes[id as usize].members.insert(key);
        self.by_lease.insert(req.lease, key);
        self.order.insert(key, Waiting { req, shape: id });
    }

    pub(crate) fn get(&self, lease: LeaseId) -> Option<&PlacementRequest> {
        self.at(self.by_lease.get(&lease)?)
    }

    pub(crate) fn remove(&mut self, lease: LeaseId) -> Option<PlacementRequest> {
        let key = *self.by_lease.get(&lease)?;
        self.remove_key(&key)
    }

    pub(crate) fn remove_key(&mut self, key: &QueueKey) -> Option<PlacementRequest> {
        let Waiting { req, shape } = self.order.remove(key)?;
        self.by_lease.remove(&req.lease);
        let slot = &mut self.shapes[shape as usize];
        slot.members.remove(key);
        if slot.members.is_empty() {
            self.shape_ids.remove(&slot.shape);
            self.vacant.push(shape);
        }
        Some(req)
    }

    /// The queued request at `key`.
    pub(crate) fn at(&self, key: &QueueKey) -> Option<&PlacementRequest> {
        self.order.get(key).map(|w| &w.req)
    }

    /// The shape a queued request is filed under.
    pub(crate) fn shape_of(&self, key: &QueueKey) -> Option<ShapeId> {
        self.order.get(key).map(|w| w.shape)
    }

    /// Every shape with requests waiting, with its first member in queue order; in shape
    /// order, so the same queue always lists them alike.
    pub(crate) fn heads(&self) -> impl Iterator<Item = (QueueKey, ShapeId)> + '_ {
        self.shape_ids.values().map(|&id| {
            let first = *self.shapes[id as usize]
                .members
                .first()
                .expect("a listed shape has members");
            (first, id)
        })
    }

    /// The first member of a shape in queue order; `None` once it has none.
    pub(crate) fn first_of(&self, shape: ShapeId) -> Option<QueueKey> {
        self.shapes
            .get(shape as usize)
            .and_then(|s| s.members.first().copied())
    }

    /// The shape a queued request is filed under, by its lease.
    pub(crate) fn shape_of_lease(&self, lease: LeaseId) -> Option<ShapeId> {
        self.shape_of(self.by_lease.get(&lease)?)
    }

    /// The members of a shape in queue order (none for a vacant or unknown slot).
    pub(crate) fn members(&self, shape: ShapeId) -> impl Iterator<Item = &QueueKey> + '_ {
        self.shapes
            .get(shape as usize)
            .into_iter()
            .flat_map(|s| s.members.iter())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&QueueKey, &PlacementRequest)> {
        self.order.iter().map(|(k, w)| (k, &w.req))
    }

    /// Checks that the order, the index by lease and the shapes agree.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.order.len() != self.by_lease.len() {
            return Err(format!(
                "queue: {} requests but {} indexed",
                self.order.len(),
                self.by_lease.len()
            ));
        }
        for (key, w) in &self.order {
            let req = &w.req;
            if self.by_lease.get(&req.lease) != Some(key) {
                return Err(format!("queue: {} is not indexed at its place", req.lease));
            }
            if key.0 .0 != req.priority {
                return Err(format!(
                    "queue: {} is filed under the wrong priority",
                    req.lease
                ));
            }
            if key.1 >= self.next_seq {
                return Err(format!(
                    "queue: {} arrived after the last arrival",
                    req.lease
                ));
            }
            let slot = self
                .shapes
                .get(w.shape as usize)
                .ok_or_else(|| format!("queue: {} is filed under no shape", req.lease))?;
            if slot.shape != Shape::of(req) || !slot.members.contains(key) {
                return Err(format!("queue: {} is not filed under its shape", req.lease));
            }
        }
        let vacant: BTreeSet<ShapeId> = self.vacant.iter().copied().collect();
        if vacant.len() != self.vacant.len() {
            return Err("queue: a shape slot is listed vacant twice".into());
        }
        let mut members = 0;
        for (shape, &id) in &self.shape_ids {
            let slot = self
                .shapes
                .get(id as usize)
                .ok_or_else(|| format!("queue: shape {id} is past the slots' end"))?;
            if &slot.shape != shape || slot.members.is_empty() || vacant.contains(&id) {
                return Err(format!("queue: shape {id} is listed wrongly"));
            }
            for key in &slot.members {
                if self.order.get(key).map(|w| w.shape) != Some(id) {
                    return Err(format!(
                        "queue: shape {id} holds a request not filed under it"
                    ));
                }
            }
            members += slot.members.len();
        }
        if members != self.order.len() {
            return Err(format!(
                "queue: shapes hold {members} requests, the queue {}",
                self.order.len()
            ));
        }
        if self.shape_ids.len() + self.vacant.len() != self.shapes.len() {
            return Err("queue: shape slots are neither listed nor vacant".into());
        }
        if let Some(id) = self.vacant.iter().find(|&&id| {
            self.shapes
                .get(id as usize)
                .is_none_or(|s| !s.members.is_empty())
        }) {
            return Err(format!("queue: vacant shape slot {id} holds requests"));
        }
        Ok(())
    }
}
