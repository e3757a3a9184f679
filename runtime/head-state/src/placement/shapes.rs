//! The queue's groups seen from outside the scheduler: requests filed together fit exactly the
//! same nodes (same demand, labels and hard affinity; see `queue.rs`), so whatever
//! [`Scheduler::could_hold`] or [`Scheduler::never_fits_anywhere`] says of one of them it says
//! of all. The head asks those questions once per group when a node leaves, drains or joins,
//! rather than once per queued request.

use ember_core::ids::LeaseId;

use super::queue::ShapeId;
use super::{PlacementRequest, Scheduler};

/// A group of queued requests that fit exactly the same nodes. It names the group only until
/// the queue next changes (a request queued, placed or cancelled): a group whose requests have
/// all left may be reused for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueuedGroup(ShapeId);

impl Scheduler {
    /// Every group of queued requests with its first request in queue order, which stands for
    /// the whole group; in group order, so the same queue lists them alike.
    pub fn queued_group_firsts(&self) -> impl Iterator<Item = (QueuedGroup, &PlacementRequest)> {
        self.queue
            .heads()
            .filter_map(|(key, shape)| Some((QueuedGroup(shape), self.queue.at(&key)?)))
    }

    /// The group a queued request is filed under; `None` when it is not queued.
    pub fn queued_group(&self, lease: LeaseId) -> Option<QueuedGroup> {
        self.queue.shape_of_lease(lease).map(QueuedGroup)
    }

    /// The first request of a group in queue order; `None` when the group has none.
    pub fn queued_group_first(&self, group: QueuedGroup) -> Option<&PlacementRequest> {
        self.queue.at(&self.queue.first_of(group.0)?)
    }

    /// The leases of every request of `groups`, each with its group, in queue order. Linear in
    /// those requests (and a sort of them), not in the queue.
    pub fn queued_in_groups(&self, groups: &[QueuedGroup]) -> Vec<(QueuedGroup, LeaseId)> {
        let mut found: Vec<_> = groups
            .iter()
            .flat_map(|&group| {
                self.queue
                    .members(group.0)
                    .filter_map(move |key| Some((*key, group, self.queue.at(key)?.lease)))
            })
            .collect();
        found.sort_unstable_by_key(|&(key, _, _)| key);
        found.dedup_by_key(|&mut (key, _, _)| key);
        found
            .into_iter()
            .map(|(_, group, lease)| (group, lease))
            .collect()
    }
}
