//! What a running task or actor was given, readable from inside user code.

use std::cell::RefCell;
use std::sync::OnceLock;

use ember_core::ids::NodeId;
use ember_core::resources::Allocation;
use ember_kernels::Device;

use crate::device::ContextDevices;

/// Whether the GPUs a worker offers are real devices or logical ones declared with
/// `--gpus N` (for scheduling on machines without GPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuKind {
    /// Real GPUs found through NVML: kernels run on them through CUDA when it is usable.
    Physical,
    /// Logical GPUs: kernels run their CPU references.
    Logical,
}

impl GpuKind {
    /// The variable through which a worker tells its executor processes the kind of their GPUs.
    pub(crate) const VAR: &'static str = "EMBER_GPU_KIND";

    /// The value of [`GpuKind::VAR`] for this kind.
    pub(crate) fn as_env(self) -> &'static str {
        match self {
            GpuKind::Physical => "physical",
            GpuKind::Logical => "logical",
        }
    }

    /// The kind this executor process was started with; logical (the CPU) unless the worker
    /// said its GPUs are physical, so that a GPU is never used by mistake.
    pub(crate) fn from_env() -> GpuKind {
        match std::env::var(GpuKind::VAR).as_deref() {
            Ok("physical") => GpuKind::Physical,
            _ => GpuKind::Logical,
        }
    }
}

/// What the code now running was given: its node and its resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContext {
    /// The node it runs on.
    pub node: NodeId,
    /// The resources placement gave it; `gpus` lists the physical GPUs and the share of each.
    pub allocation: Allocation,
    /// Whether those GPUs are real devices or logical ones.
    pub gpu_kind: GpuKind,
}

impl TaskContext {
    /// The physical GPU indices, as in this process's `CUDA_VISIBLE_DEVICES`.
    pub fn gpu_indices(&self) -> Vec<u32> {
        self.allocation.gpus.iter().map(|g| g.index).collect()
    }
}

/// A context and the device handles opened for it (on first use).
struct Current {
    context: TaskContext,
    devices: ContextDevices,
}

thread_local! {
    static TASK: RefCell<Option<Current>> = const { RefCell::new(None) };
}
static ACTOR: OnceLock<Current> = OnceLock::new();

/// The context of the task or actor running on this thread; `None` outside Ember's executors.
pub fn current() -> Option<TaskContext> {
    TASK.with(|t| t.borrow().as_ref().map(|c| c.context.clone()))
        .or_else(|| ACTOR.get().map(|c| c.context.clone()))
}

/// The device handles of the task or actor running on this thread, one per GPU it was given,
/// or one CPU handle when it was given none; `None` outside Ember's executors.
///
/// Handle `i` is the `i`-th GPU of the allocation: CUDA ordinal `i` within this process's
/// `CUDA_VISIBLE_DEVICES`. On [`GpuKind::Physical`] GPUs it runs on CUDA when CUDA is usable,
/// else on the CPU (`Device::cpu_fallback_reason` says why); on [`GpuKind::Logical`] GPUs,
/// and without GPUs, it runs the kernels' CPU references. `Device::backend` says which.
///
/// Its memory limit is the `gpu_memory` reserved on that GPU: an allocation past it, or past
/// the device's free memory (the host's available memory on the CPU), is refused with a
/// `KernelError`. The handles are opened on first use and shared by the whole task or actor,
/// so all its buffers count against the one limit.
pub fn devices() -> Option<Vec<Device>> {
    TASK.with(|t| t.borrow().as_ref().map(|c| c.devices.get(&c.context)))
        .or_else(|| ACTOR.get().map(|c| c.devices.get(&c.context)))
}

/// The device handle of the first GPU of the task or actor running on this thread (a CPU
/// handle when it was given no GPU); `None` outside Ember's executors.
pub fn device() -> Option<Device> {
    devices().and_then(|devices| devices.into_iter().next())
}

/// Runs `f` with `ctx` as the current task context of this thread. Device handles the task
/// opened are dropped when it ends, freeing the buffers it left behind.
pub(crate) fn with_task<R>(ctx: TaskContext, f: impl FnOnce() -> R) -> R {
    TASK.with(|t| {
        *t.borrow_mut() = Some(Current {
            context: ctx,
            devices: ContextDevices::default(),
        })
    });
    let out = f();
    let finished = TASK.with(|t| t.borrow_mut().take());
    drop(finished);
    out
}

/// Sets the context of this executor process's one actor.
pub(crate) fn set_actor(ctx: TaskContext) {
    let _ = ACTOR.set(Current {
        context: ctx,
        devices: ContextDevices::default(),
    });
}
