//! What a running task or actor was given, readable from inside user code.

use std::cell::RefCell;
use std::sync::OnceLock;

use ember_runtime::ids::NodeId;
use ember_runtime::resources::Allocation;

/// What the code now running was given: its node and its resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContext {
    /// The node it runs on.
    pub node: NodeId,
    /// The resources placement gave it; `gpus` lists the physical GPUs and the share of each.
    pub allocation: Allocation,
}

impl TaskContext {
    /// The physical GPU indices, as in this process's `CUDA_VISIBLE_DEVICES`.
    pub fn gpu_indices(&self) -> Vec<u32> {
        self.allocation.gpus.iter().map(|g| g.index).collect()
    }
}

thread_local! {
    static TASK: RefCell<Option<TaskContext>> = const { RefCell::new(None) };
}
static ACTOR: OnceLock<TaskContext> = OnceLock::new();

/// The context of the task or actor running on this thread; `None` outside Ember's executors.
pub fn current() -> Option<TaskContext> {
    TASK.with(|t| t.borrow().clone())
        .or_else(|| ACTOR.get().cloned())
}

/// Runs `f` with `ctx` as the current task context of this thread.
pub(crate) fn with_task<R>(ctx: TaskContext, f: impl FnOnce() -> R) -> R {
    TASK.with(|t| *t.borrow_mut() = Some(ctx));
    let out = f();
    TASK.with(|t| *t.borrow_mut() = None);
    out
}

/// Sets the context of this executor process's one actor.
pub(crate) fn set_actor(ctx: TaskContext) {
    let _ = ACTOR.set(ctx);
}
