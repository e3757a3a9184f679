//! Resource needs and placement settings of one task, actor or job.

use ember_core::ids::NodeId;
use ember_core::proto::{NodeAffinity, Strategy};
use std::time::Duration;

use ember_core::proto::{CheckpointPolicy, Placement, RestartPolicy, TaskRetry};
use ember_core::resources::{to_millis, ByteSize, GpuShare, ResourceDemand, ResourceError};

/// What a task or actor needs and how to place it. Declared in the attribute, overridable per
/// call; an invalid value is reported when the call is submitted.
#[derive(Debug, Clone, Default)]
pub struct Options {
    placement: Placement,
    pub(crate) restart: RestartPolicy,
    pub(crate) checkpoint: CheckpointPolicy,
    pub(crate) retry: TaskRetry,
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

    /// How long it keeps waiting once no live node could ever hold it (its only fitting node
    /// left or drains) before it fails naming what is missing, unless a node that fits joins
    /// first. Without it, the head's `--pending-timeout` (60 s by default) applies.
    pub fn pending_timeout(mut self, timeout: Duration) -> Self {
        self.placement.pending_timeout_ms = Some(timeout.as_millis() as u64);
        self
    }

    /// Run inside a bundle of a gang ([`Gang::bundle`](crate::Gang::bundle)): the needs are
    /// taken from what the bundle reserved on its node, and must fit within it. Strategy and
    /// node affinity do not apply (the bundle's node is the place); a need past the bundle's
    /// is refused by the head, naming the bundle.
    pub fn in_bundle(mut self, bundle: ember_core::proto::BundleRef) -> Self {
        self.placement.bundle = Some(bundle);
        self
    }

    /// Actors: how many times it is restarted after losing its process (0, the default:
    /// never; -1: without limit).
    pub fn max_restarts(mut self, n: i32) -> Self {
        self.restart.max_restarts = n;
        self
    }

    /// Actors: how many times a call in flight when its process died is sent again to the
    /// restarted actor (0, the default: never; -1: without limit). A call whose effect a
    /// restored checkpoint already holds is answered from its recorded reply, not run twice.
    pub fn max_task_retries(mut self, n: i32) -> Self {
        self.restart.max_task_retries = n;
        self
    }

    /// Actors: the type implements [`Checkpoint`](crate::Checkpoint), so it can be
    /// checkpointed on demand and moved with its state by a drain. Set by the `checkpoint`
    /// setting of `#[ember::actor]`, and by the two policies below.
    pub fn checkpoint(mut self) -> Self {
        self.checkpoint.enabled = true;
        self
    }

    /// Actors: save a checkpoint after every `n` calls. With 1, a call is answered only once
    /// the checkpoint holding its effect is recorded, so a restart never loses an answered call.
    pub fn checkpoint_every(mut self, n: u32) -> Self {
        self.checkpoint.enabled = true;
        self.checkpoint.every_calls = n;
        self
    }

    /// Actors: save a checkpoint every `period` when calls ran since the last one.
    pub fn checkpoint_interval(mut self, period: Duration) -> Self {
        self.checkpoint.enabled = true;
        self.checkpoint.every_ms = period.as_millis().max(1) as u64;
        self
    }

    /// Tasks: how many times it runs again when its worker dies (3 by default).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.retry.max_retries = n;
        self
    }

    /// Tasks: retry errors from the task's own code too (not by default).
    pub fn retry_user_errors(mut self, retry: bool) -> Self {
        self.retry.retry_user_errors = retry;
        self
    }

    /// The placement to send, or the first invalid value given. Every request of the Rust
    /// API and the command line goes through here: GPU memory or an accelerator type without
    /// GPUs is refused ([`ResourceError::GpuMemoryWithoutGpus`],
    /// [`ResourceError::AcceleratorWithoutGpus`]), never dropped and never turned into a GPU.
    pub(crate) fn placement(&self) -> Result<Placement, ResourceError> {
        self.placement_checked()
    }

    /// The resources alone, for a gang's bundle: refused (saying which) when anything else is
    /// set, since a bundle has no strategy, node, priority, retries or checkpoints of its own.
    pub(crate) fn bundle_demand(&self) -> Result<ResourceDemand, String> {
        let p = self.placement_checked().map_err(|e| e.to_string())?;
        let extra = [
            (p.strategy != Strategy::default(), "a strategy"),
            (p.affinity.is_some(), "a node"),
            (p.priority != 0, "a priority"),
            (p.pending_timeout_ms.is_some(), "a pending timeout"),
            (p.bundle.is_some(), "a bundle"),
            (self.restart != RestartPolicy::default(), "restarts"),
            (
                self.checkpoint != CheckpointPolicy::default(),
                "checkpoints",
            ),
            (self.retry != TaskRetry::default(), "retries"),
        ];
        match extra.iter().find(|(set, _)| *set) {
            Some((_, what)) => Err(format!(
                "a bundle takes only resources (GPUs, GPU memory, accelerator, CPUs, custom \
                 resources), not {what}"
            )),
            None => Ok(p.demand),
        }
    }

    fn placement_checked(&self) -> Result<Placement, ResourceError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => {
                self.placement.demand.check()?;
                Ok(self.placement.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_memory_or_an_accelerator_without_gpus_is_refused_not_ignored() {
        let e = Options::new().accelerator("L4").placement().unwrap_err();
        assert_eq!(e, ResourceError::AcceleratorWithoutGpus);
        assert!(e.to_string().starts_with("accelerator needs gpus"), "{e}");
        let e = Options::new().gpu_memory("40GiB").placement().unwrap_err();
        assert_eq!(e, ResourceError::GpuMemoryWithoutGpus);
        assert!(e.to_string().contains("--gpus 1"), "{e}");

        let p = Options::new()
            .gpus(1.0)
            .accelerator("L4")
            .gpu_memory("40GiB")
            .pending_timeout(Duration::from_secs(5))
            .placement()
            .expect("with GPUs, both are meaningful");
        assert_eq!(p.demand.accelerator.as_deref(), Some("L4"));
        assert_eq!(p.demand.gpu_memory, 40 << 30);
        assert_eq!(p.pending_timeout_ms, Some(5000));
    }
}
