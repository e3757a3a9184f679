//! Where and how a request may be placed: what a client states about placement, which the
//! head's scheduler honours.

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::NodeId;
use crate::resources::ResourceDemand;

/// How to choose among feasible nodes.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Strategy {
    /// Fill the most-used feasible node first, so that idle nodes stay idle (and can be released).
    #[default]
    Pack,
    /// Use the least-used feasible node, spreading load (and failures) across the cluster.
    Spread,
}

/// Pin a request to a node: hard (only there) or soft (prefer it).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct NodeAffinity {
    /// The node asked for.
    pub node: NodeId,
    /// False: only that node (queue until it fits there). True: that node if it fits now,
    /// otherwise wherever the strategy chooses.
    pub soft: bool,
}

/// Where and how a request may be placed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Placement {
    /// The resources it needs.
    pub demand: ResourceDemand,
    /// Pack (default) or spread.
    pub strategy: Strategy,
    /// An optional node to run on.
    pub affinity: Option<NodeAffinity>,
    /// Higher runs first when requests wait for capacity.
    pub priority: i32,
    /// How long, in milliseconds, it keeps waiting once no live node could ever hold it (its
    /// only fitting node left or drains) before it fails naming what is missing, unless a
    /// node that fits joins first. `None`: the head's default (`ember head --pending-timeout`).
    pub pending_timeout_ms: Option<u64>,
}
