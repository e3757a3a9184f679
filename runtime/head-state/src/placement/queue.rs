//! The pending queue: requests that fit nowhere now but could later, in priority order
//! (higher first, first-come first among equals).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use super::PlacementRequest;
use ember_core::ids::LeaseId;

/// Where a request sits in the queue: priority (higher first), then arrival.
pub(crate) type QueueKey = (Reverse<i32>, u64);

/// Queued requests in order, with an index by lease for cancelling.
#[derive(Debug, Default, Clone)]
pub(crate) struct PendingQueue {
    order: BTreeMap<QueueKey, PlacementRequest>,
    by_lease: HashMap<LeaseId, QueueKey>,
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

    /// Adds a request behind every queued request of the same or higher priority.
    pub(crate) fn push(&mut self, req: PlacementRequest) {
        let key = (Reverse(req.priority), self.next_seq);
        self.next_seq += 1;
        self.by_lease.insert(req.lease, key);
        self.order.insert(key, req);
    }

    pub(crate) fn get(&self, lease: LeaseId) -> Option<&PlacementRequest> {
        self.order.get(self.by_lease.get(&lease)?)
    }

    pub(crate) fn remove(&mut self, lease: LeaseId) -> Option<PlacementRequest> {
        let key = self.by_lease.remove(&lease)?;
        self.order.remove(&key)
    }

    pub(crate) fn remove_key(&mut self, key: &QueueKey) -> Option<PlacementRequest> {
        let req = self.order.remove(key)?;
        self.by_lease.remove(&req.lease);
        Some(req)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&QueueKey, &PlacementRequest)> {
        self.order.iter()
    }

    /// Checks that the index and the order agree.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.order.len() != self.by_lease.len() {
            return Err(format!(
                "queue: {} requests but {} indexed",
                self.order.len(),
                self.by_lease.len()
            ));
        }
        for (key, req) in &self.order {
            if self.by_lease.get(&req.lease) != Some(key) {
                return Err(format!("queue: {} is not indexed at its place", req.lease));
            }
            if key.0 .0 != req.priority {
                return Err(format!(
                    "queue: {} is filed under the wrong priority",
                    req.lease
                ));
            }
        }
        Ok(())
    }
}
