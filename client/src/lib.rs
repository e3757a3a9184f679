//! Ember's Rust API: declare tasks and actors with their GPU needs, connect to a cluster (or
//! start one on this machine), and call them with typed results.
//!
//! ```no_run
//! #[ember::task(gpus = 0.5)]
//! pub fn add(a: i64, b: i64) -> i64 { a + b }
//!
//! #[ember::main]
//! async fn main() -> Result<(), ember::Error> {
//!     let cluster = ember::Cluster::local(ember::LocalOptions::new(2).gpus_per_worker(1)).await?;
//!     assert_eq!(cluster.run(add::remote(1, 2)).await?, 3);
//!     Ok(())
//! }
//! ```
//!
//! The program's own executable is also its workers' executable: a local cluster starts
//! copies of it in the worker role, so every `#[ember::task]` and `#[ember::actor]` it
//! declares runs there.

mod actor;
mod call;
mod call_args;
mod checkpoint;
#[cfg(feature = "cli")]
pub mod cli;
mod cluster;
mod error;
mod gang;
mod gpu_actor;
mod head_link;
mod holds;
pub mod kernel_check;
mod lease_pool;
mod leases;
#[cfg(feature = "local")]
pub mod local;
mod options;
#[cfg(feature = "local")]
pub mod provider;
mod unix_caller;

pub use actor::{ActorRef, RemoteActor, RESTART_WAIT};
pub use call::{Actor, ActorSpawn, Remote, Task, TaskCall, TaskRef};
pub use call_args::{ArgsError, CallArgs};
pub use checkpoint::Checkpoint;
pub use cluster::{Cluster, Job, JobOutput};
pub use ember_core::ids::{ActorId, GangId, JobId, NodeId, TaskId};
pub use ember_core::proto::ErrorKind;
pub use ember_core::proto::Strategy;
pub use ember_core::proto::WaitReason;
pub use ember_core::proto::{BundleRef, ClusterStatus, GangStrategy, UsageBy, UsageReport};
pub use ember_core::resources::{Allocation, GpuGrant, GpuShare};
/// Ember's GPU kernels: the registry of kernels by name, their CPU references, the PTX cache.
pub use ember_kernels as kernels;
pub use ember_kernels::{
    Backend, Buffer, Device, Element, ElementType, KernelArg, KernelError, LaunchGeometry,
    UserKernel,
};
pub use ember_macros::{actor, main, task};
pub use ember_worker::collective;
pub use ember_worker::context::{GpuKind, TaskContext};
pub use ember_worker::gpu_actor::{
    BufferElement, BufferInfo, GpuActorError, GpuInfo, HostData, LaunchArg, UserKernelInfo,
};
pub use error::Error;
pub use gang::{Gang, GangOptions};
pub use gpu_actor::{GpuActor, GpuActorHandle};
pub use head_link::{ConnectOptions, HeadLinkStatus};
#[cfg(feature = "local")]
pub use local::LocalOptions;
pub use options::Options;
/// The serialization crate for arguments and results: derive its `Archive`, `Serialize` and
/// `Deserialize` on types that travel.
pub use rkyv;

/// What the running task or actor was given (its node, GPUs and shares); `None` outside one.
pub fn context() -> Option<TaskContext> {
    ember_worker::context::current()
}

/// The device handle of the running task's or actor's first GPU (CUDA on a real GPU, the
/// kernels' CPU references on a logical one; a CPU handle when it was given no GPU), limited
/// to its `gpu_memory` share; `None` outside a task or actor. [`Device::backend`] says which
/// backend runs. The handle is shared by the whole task or actor: its buffers count against
/// one limit, and an allocation past it is a [`KernelError::MemoryLimit`], never a crash.
pub fn device() -> Option<Device> {
    ember_worker::context::device()
}

/// One device handle per GPU the running task or actor was given, in the order of its
/// allocation (CUDA ordinals `0..`), or one CPU handle when it was given none; `None`
/// outside a task or actor. See [`device`].
pub fn devices() -> Option<Vec<Device>> {
    ember_worker::context::devices()
}

/// Sends logs to standard error, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    ember_worker::role::init_logging();
}

/// What the macros' generated code uses. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::Checkpoint;
    pub use ember_core::proto::Wire;
    pub use ember_worker::registry::{ActorEntry, ActorInstance, CallError, TaskEntry};
    pub use ember_worker::role::serve_role_if_asked;
    pub use inventory;
    pub use tokio;

    /// Reads a call's arguments.
    pub fn decode_args<T: Wire>(bytes: &[u8]) -> Result<T, CallError> {
        ember_core::proto::decode(bytes).map_err(|e| CallError::BadArgs(e.to_string()))
    }

    /// Archives a call's result.
    pub fn encode_result<T: Wire>(value: &T) -> Result<Vec<u8>, CallError> {
        ember_core::proto::encode(value)
            .map(|a| a.to_vec())
            .map_err(|e| CallError::User(format!("cannot encode the result: {e}")))
    }
}
