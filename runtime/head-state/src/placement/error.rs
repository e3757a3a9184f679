//! Why a request cannot be placed, in words that name the missing resource.

use ember_core::ids::{GangId, LeaseId, NodeId};
use ember_core::proto::{BundleRef, GangStrategy};
use ember_core::resources::{
    describe_missing_label, format_millis, ByteSize, GpuShare, ResourceError,
};

/// Why the scheduler refused a request outright. Each message names what is missing, so that
/// a user reading it knows which part of the request to change (or which node to add).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No schedulable node carries a label the request requires (e.g. no worker's executable
    /// has the task function).
    #[error("{}", describe_missing_label(.0))]
    MissingLabel(String),
    /// The cluster has no nodes at all.
    #[error("the cluster has no nodes")]
    NoNodes,
    /// Every node of the cluster is draining (not schedulable), so none can take new work.
    #[error("no node accepts new work: all {draining} nodes of the cluster are draining")]
    NoSchedulableNodes {
        /// How many nodes there are, all of them draining.
        draining: usize,
    },
    /// No node has this many CPUs in total.
    #[error("no node has {} CPUs (the most is {})", format_millis(*wanted_millis), format_millis(*most_millis))]
    Cpus {
        /// CPUs asked for, in thousandths.
        wanted_millis: u64,
        /// The most CPUs any one node has, in thousandths.
        most_millis: u64,
    },
    /// No node declares this custom resource.
    #[error("no node has custom resource `{name}`")]
    CustomMissing {
        /// The name of the custom resource.
        name: String,
    },
    /// Some nodes declare this custom resource, but none has this much of it.
    #[error("no node has {} of custom resource `{name}` (the most is {})", format_millis(*wanted_millis), format_millis(*most_millis))]
    CustomAmount {
        /// The name of the custom resource.
        name: String,
        /// The amount asked for, in thousandths.
        wanted_millis: u64,
        /// The most any one node has, in thousandths.
        most_millis: u64,
    },
    /// The request asks for GPUs but no node has any.
    #[error("no node has a GPU (the request asks for {wanted} GPUs)")]
    NoGpus {
        /// The GPUs asked for.
        wanted: GpuShare,
    },
    /// No GPU carries the accelerator type asked for.
    #[error("no GPU has accelerator type {wanted} (the cluster has: {})", available.join(", "))]
    Accelerator {
        /// The accelerator type asked for.
        wanted: String,
        /// The accelerator types the cluster's GPUs carry, sorted, each once.
        available: Vec<String>,
    },
    /// No (suitable) GPU has this much memory.
    #[error("no {what} has {} of memory (the largest has {})", ByteSize(*wanted), ByteSize(*largest))]
    GpuMemory {
        /// What kind of GPU was looked for: `GPU`, or e.g. `H100 GPU`.
        what: String,
        /// Bytes of GPU memory asked for on each GPU.
        wanted: u64,
        /// The most memory any such GPU has, in bytes.
        largest: u64,
    },
    /// No node has this many (suitable) GPUs.
    #[error("no node has {wanted} {what} (the most on one node is {most})")]
    TooManyGpus {
        /// What kind of GPUs were counted: `GPUs`, `H100 GPUs`, `GPUs with 40GiB of memory`.
        what: String,
        /// The number of GPUs asked for.
        wanted: u32,
        /// The most such GPUs any one node has.
        most: u32,
    },
    /// Each resource exists somewhere, but no single node has all of them together.
    #[error("no single node has all of {demand} together")]
    NoSingleNode {
        /// The request, as `cpus=8, gpus=2, …`.
        demand: String,
    },
    /// A hard node affinity names a node that is not in the cluster.
    #[error("node affinity: {0} is not in the cluster")]
    AffinityUnknownNode(NodeId),
    /// A hard node affinity names a node that is draining.
    #[error("node affinity: {0} is draining and accepts no new work")]
    AffinityNodeDraining(NodeId),
    /// A hard node affinity names a node whose whole capacity could never satisfy the request.
    #[error("node affinity: {node} can never satisfy this request: {reason}")]
    AffinityNeverFits {
        /// The node named by the affinity.
        node: NodeId,
        /// What that node lacks.
        reason: Box<PlacementError>,
    },
    /// `gpu_memory` was asked for without any GPUs.
    #[error("{}", ResourceError::GpuMemoryWithoutGpus)]
    GpuMemoryWithoutGpus,
    /// An accelerator type was asked for without any GPUs.
    #[error("{}", ResourceError::AcceleratorWithoutGpus)]
    AcceleratorWithoutGpus,
    /// A GPU share above one GPU that is not a whole number of GPUs.
    #[error("invalid GPU request {0}: use a fraction of one GPU or a whole number of GPUs")]
    InvalidGpus(GpuShare),
    /// The same custom resource is named twice in one request.
    #[error("custom resource `{0}` is named twice")]
    DuplicateCustom(String),
    /// The lease id is already placed or queued.
    #[error("{0} is already known")]
    AlreadyKnown(LeaseId),
    /// The gang id is already in use.
    #[error("{0} is already known")]
    GangAlreadyKnown(GangId),
    /// A gang with no bundles.
    #[error("a gang needs at least one bundle")]
    EmptyGang,
    /// A bundle that asks for nothing.
    #[error(
        "bundle {0} of the gang asks for nothing: a bundle needs CPUs, GPUs or a custom resource"
    )]
    EmptyBundle(u32),
    /// One bundle of a gang is malformed, or no node could ever hold it.
    #[error("bundle {index} of the gang: {reason}")]
    Bundle {
        /// Its position in the gang.
        index: u32,
        /// What is wrong with it.
        reason: Box<PlacementError>,
    },
    /// No node, entirely free, could hold every bundle of a `strict_pack` gang together.
    #[error("no node could hold all {bundles} bundles of this strict_pack gang together")]
    StrictPackNoNode {
        /// How many bundles the gang has.
        bundles: usize,
    },
    /// Too few nodes could each hold a bundle of a `strict_spread` gang.
    #[error("a strict_spread gang of {bundles} bundles needs as many distinct nodes that each hold one; at most {most} could")]
    StrictSpreadTooFewNodes {
        /// How many bundles the gang has.
        bundles: usize,
        /// How many could be placed on distinct nodes, the cluster entirely free.
        most: usize,
    },
    /// The cluster, entirely free, could not hold every bundle of the gang at once.
    #[error("the cluster could not hold all {bundles} bundles of this {strategy} gang at once, even entirely free")]
    GangNeverFits {
        /// How many bundles the gang has.
        bundles: usize,
        /// The gang's strategy.
        strategy: GangStrategy,
    },
    /// The gang named is not in the cluster (never created, or removed).
    #[error("{0} is not in the cluster (never created, or removed)")]
    UnknownGang(GangId),
    /// The gang named is being removed and takes no more work.
    #[error("{0} is being removed and takes no more work")]
    GangRemoved(GangId),
    /// The gang has no bundle of that index.
    #[error("there is no {bundle}: the gang has {bundles} bundles")]
    NoSuchBundle {
        /// The bundle asked for.
        bundle: BundleRef,
        /// How many bundles the gang has.
        bundles: u32,
    },
    /// What a bundle reserves can never hold the request.
    #[error("{bundle} can never hold this request: {why}")]
    BundleNeverFits {
        /// The bundle asked for.
        bundle: BundleRef,
        /// What it lacks.
        why: String,
    },
}

impl PlacementError {
    /// True when the request itself is malformed (whatever the cluster holds), so that the
    /// head answers it as a bad request rather than as one the cluster cannot place.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            PlacementError::GpuMemoryWithoutGpus
                | PlacementError::AcceleratorWithoutGpus
                | PlacementError::InvalidGpus(_)
                | PlacementError::DuplicateCustom(_)
                | PlacementError::EmptyGang
                | PlacementError::EmptyBundle(_)
                | PlacementError::NoSuchBundle { .. }
                | PlacementError::BundleNeverFits { .. }
        ) || matches!(self, PlacementError::Bundle { reason, .. } if reason.is_malformed())
    }
}
