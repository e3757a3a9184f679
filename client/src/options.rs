//! Resource needs and placement settings of one task, actor or job.

use ember_runtime::ids::NodeId;
use ember_runtime::placement::{NodeAffinity, Strategy};
use ember_runtime::proto::Placement;
use ember_runtime::resources::{to_millis, ByteSize, GpuShare, ResourceError};

/// What a task or actor needs and how to place it. Declared in the attribute, overridable per
/// call; an invalid value is reported when the call is submitted.
#[derive(Debug, Clone, Default)]
pub struct Options {
    placement: Placement,
    error: Option<ResourceError>,
}

impl Options {
    /// No needs: any node with the type runs it.
    pub fn new() -> Self {
        Options::default()
    }

    fn record(mut self, r: Result<(), ResourceError>) -> Self {
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
        self
    }

    /// GPUs: a fraction of one (e.g. 0.25, placed on one GPU) or a whole number.
    pub fn gpus(mut self, gpus: f64) -> Self {
        let r = GpuShare::from_gpus(gpus).map(|g| self.placement.demand.gpus = g);
        self.record(r)
    }

    /// GPU memory reserved on each assigned GPU, e.g. `"8GiB"`.
    pub fn gpu_memory(mut self, size: &str) -> Self {
        let r = size
            .parse::<ByteSize>()
            .map(|b| self.placement.demand.gpu_memory = b.0);
        self.record(r)
    }

    /// The accelerator type every assigned GPU must be, e.g. `"H100"`.
    pub fn accelerator(mut self, accelerator: &str) -> Self {
        self.placement.demand.accelerator = Some(accelerator.to_string());
        self
    }

    /// CPUs, in steps of 0.001.
    pub fn cpus(mut self, cpus: f64) -> Self {
        let r = to_millis(cpus).map(|m| self.placement.demand.cpu_millis = m);
        self.record(r)
    }

    /// A custom resource, in steps of 0.001.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        let r = to_millis(amount).map(|m| self.placement.demand.set_custom(name, m));
        self.record(r)
    }

    /// Pack (the default: fill nodes before opening new ones) or spread.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.placement.strategy = strategy;
        self
    }

    /// Run only on `node`.
    pub fn node(mut self, node: NodeId) -> Self {
        self.placement.affinity = Some(NodeAffinity { node, soft: false });
        self
    }

    /// Prefer `node`, but run elsewhere if it has no room.
    pub fn prefer_node(mut self, node: NodeId) -> Self {
        self.placement.affinity = Some(NodeAffinity { node, soft: true });
        self
    }

    /// Higher runs first when requests wait for capacity.
    pub fn priority(mut self, priority: i32) -> Self {
        self.placement.priority = priority;
        self
    }

    /// The placement to send, or the first invalid value given.
    pub(crate) fn into_placement(self) -> Result<Placement, ResourceError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.placement),
        }
    }
}
