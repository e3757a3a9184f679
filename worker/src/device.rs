//! Opening the device handles of a task or actor: exactly the GPUs it was given, each with
//! its share of GPU memory as the limit (see [`crate::context::devices`]).

use std::sync::OnceLock;

use ember_core::resources::GpuGrant;
use ember_kernels::Device;

use crate::context::{GpuKind, TaskContext};

/// The device handles of one context, opened on first use.
#[derive(Default)]
pub(crate) struct ContextDevices {
    opened: OnceLock<Vec<Device>>,
}

impl ContextDevices {
    /// Handles on the context's devices (opening them the first time).
    pub(crate) fn get(&self, context: &TaskContext) -> Vec<Device> {
        self.opened.get_or_init(|| open_all(context)).clone()
    }
}

/// One handle per GPU of `context`, or one CPU handle when it has none.
pub(crate) fn open_all(context: &TaskContext) -> Vec<Device> {
    if context.allocation.gpus.is_empty() {
        return vec![Device::cpu()];
    }
    context
        .allocation
        .gpus
        .iter()
        .enumerate()
        .map(|(ordinal, grant)| open_gpu(ordinal, grant, context.gpu_kind))
        .collect()
}

/// The handle of GPU `ordinal` of this process, limited to the memory `grant` reserved.
fn open_gpu(ordinal: usize, grant: &GpuGrant, kind: GpuKind) -> Device {
    let device = match kind {
        GpuKind::Physical => Device::open(ordinal),
        GpuKind::Logical => Device::cpu(),
    };
    if let Some(reason) = device.cpu_fallback_reason() {
        tracing::warn!(
            ordinal,
            gpu = grant.index,
            %reason,
            "CUDA is not usable: kernels run their CPU references"
        );
    }
    if grant.memory > 0 {
        device.with_memory_limit(grant.memory)
    } else {
        device
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::ids::NodeId;
    use ember_core::resources::{Allocation, GpuShare};
    use ember_kernels::{Backend, KernelError};

    fn context(gpus: Vec<GpuGrant>, gpu_kind: GpuKind) -> TaskContext {
        TaskContext {
            node: NodeId(1),
            allocation: Allocation {
                cpu_millis: 1000,
                gpus,
                custom: Vec::new(),
            },
            gpu_kind,
        }
    }

    fn grant(index: u32, memory: u64) -> GpuGrant {
        GpuGrant {
            index,
            share: GpuShare::from_gpus(0.5).unwrap(),
            memory,
        }
    }

    #[test]
    fn logical_gpus_run_on_the_cpu_within_their_memory_share() {
        let ctx = context(vec![grant(3, 4096), grant(5, 0)], GpuKind::Logical);
        let devices = open_all(&ctx);
        assert_eq!(devices.len(), 2);
        assert!(devices.iter().all(|d| d.backend() == Backend::Cpu));
        assert_eq!(devices[0].memory_limit(), Some(4096));
        assert_eq!(devices[1].memory_limit(), None);
        assert!(matches!(
            devices[0].alloc::<f32>(1025),
            Err(KernelError::MemoryLimit {
                requested: 4100,
                in_use: 0,
                limit: 4096
            })
        ));
        let fits = devices[0].alloc::<f32>(1024).unwrap();
        assert_eq!(devices[0].memory_in_use(), 4096);
        drop(fits);
    }

    #[test]
    fn no_gpu_gives_one_unlimited_cpu_handle() {
        let devices = open_all(&context(Vec::new(), GpuKind::Physical));
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].backend(), Backend::Cpu);
        assert_eq!(devices[0].memory_limit(), None);
    }

    #[test]
    fn a_context_shares_one_memory_account_between_its_calls() {
        let ctx = context(vec![grant(0, 1024)], GpuKind::Logical);
        let devices = ContextDevices::default();
        let held = devices.get(&ctx)[0].alloc::<f32>(200).unwrap();
        let again = &devices.get(&ctx)[0];
        assert_eq!(again.memory_in_use(), 800);
        assert!(matches!(
            again.alloc::<f32>(100),
            Err(KernelError::MemoryLimit { in_use: 800, .. })
        ));
        drop(held);
        assert_eq!(again.memory_in_use(), 0);
    }
}
