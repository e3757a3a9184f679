//! How many nodes of each type a pass sees: counted once at its start, then kept up to date
//! by its own launches and drains, so that the floors, each launch's check of its type's
//! `max` and each idle node's check of its type's `min` and warm pool are lookups rather
//! than walks over every node and launch (with 1,000 nodes and 1,000 launches a pass, those
//! walks were most of it). Between passes there are no counts, and `Autoscaler::count_of`
//! and `idle_of` walk as before; in debug builds every pass ends checking that its counts
//! agree with those walks.

use std::collections::BTreeMap;

use ember_core::ids::NodeId;

use super::{Autoscaler, LaunchId, Launching, NodeType, Tracked};

/// The nodes of one type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct TypeCount {
    /// Joined and not draining.
    pub(super) live: u32,
    /// Of those, the idle ones.
    pub(super) idle: u32,
    /// Launched, not joined yet (they join idle).
    pub(super) coming: u32,
}

impl TypeCount {
    /// Nodes there are or are coming (draining ones excluded).
    pub(super) fn all(&self) -> u32 {
        self.live + self.coming
    }

    /// Idle nodes, and those coming.
    pub(super) fn idle(&self) -> u32 {
        self.idle + self.coming
    }
}

/// The nodes of each type (by index into `types`), counted now. Nodes and launches of a type
/// the policy does not have are not counted.
pub(super) fn count(
    types: &[NodeType],
    nodes: &BTreeMap<NodeId, Tracked>,
    launches: &BTreeMap<LaunchId, Launching>,
) -> Vec<TypeCount> {
    let index = |name: &str| types.iter().position(|t| t.name == name);
    let mut counts = vec![TypeCount::default(); types.len()];
    for n in nodes.values().filter(|n| !n.draining) {
        if let Some(i) = index(&n.node_type) {
            counts[i].live += 1;
            counts[i].idle += u32::from(n.idle_since.is_some());
        }
    }
    for l in launches.values() {
        if let Some(i) = index(&l.node_type) {
            counts[i].coming += 1;
        }
    }
    counts
}

/// Whether the counts a pass kept (`counted`) agree with a walk over the nodes and launches
/// now (the autoscaler holding no counts any more); what differs, if not.
pub(super) fn check(a: &Autoscaler, counted: Option<&[TypeCount]>) -> Result<(), String> {
    let Some(counted) = counted else {
        return Err("the pass kept no counts".into());
    };
    for (t, c) in a.policy.types.iter().zip(counted) {
        let walked = (a.count_of(&t.name), a.idle_of(&t.name));
        if (c.all(), c.idle()) != walked {
            return Err(format!(
                "node type {}: the pass counted {} nodes, {} idle; there are {}, {} idle",
                t.name,
                c.all(),
                c.idle(),
                walked.0,
                walked.1
            ));
        }
    }
    Ok(())
}
