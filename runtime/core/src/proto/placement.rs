//! Where and how a request may be placed: what a client states about placement, which the
//! head's scheduler honours.

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::{GangId, NodeId};
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
    /// Run inside this bundle of a gang: the request takes its resources from what the bundle
    /// reserved on its node, not from the node. `None`: placed on its own.
    pub bundle: Option<BundleRef>,
}

/// How a gang's bundles are spread over nodes.
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
pub enum GangStrategy {
    /// As few nodes as will hold them: a bundle goes to a node the gang already uses when it
    /// fits there, else to the most used node where it fits.
    #[default]
    Pack,
    /// As many nodes as there are: a bundle goes to the least used node the gang does not
    /// use yet where it fits, else to the least used node where it fits.
    Spread,
    /// Every bundle on one node.
    StrictPack,
    /// Every bundle on a node of its own.
    StrictSpread,
}

impl GangStrategy {
    /// The name the CLI and `ember status` use: `pack`, `spread`, `strict_pack`,
    /// `strict_spread`.
    pub fn name(self) -> &'static str {
        match self {
            GangStrategy::Pack => "pack",
            GangStrategy::Spread => "spread",
            GangStrategy::StrictPack => "strict_pack",
            GangStrategy::StrictSpread => "strict_spread",
        }
    }
}

impl std::fmt::Display for GangStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GangStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "pack" => Ok(GangStrategy::Pack),
            "spread" => Ok(GangStrategy::Spread),
            "strict_pack" => Ok(GangStrategy::StrictPack),
            "strict_spread" => Ok(GangStrategy::StrictSpread),
            _ => Err(format!(
                "unknown gang strategy `{s}`: expected pack, spread, strict_pack or strict_spread"
            )),
        }
    }
}

/// One bundle of a gang: where a task or actor asks to run inside the gang.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct BundleRef {
    /// The gang.
    pub gang: GangId,
    /// The bundle's position in the gang, from 0.
    pub index: u32,
}

impl std::fmt::Display for BundleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bundle {} of {}", self.index, self.gang)
    }
}
