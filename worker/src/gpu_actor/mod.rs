//! The built-in GPU actor: every worker can host it, so callers that cannot ship Rust code
//! (the `ember` command line, other languages) can still run kernels on a cluster GPU.
//!
//! It keeps named buffers on the device handle of the GPU it was given (see
//! [`crate::context::devices`]: CUDA on a real GPU, the CPU references otherwise, within its
//! `gpu_memory` share) and runs registered kernels or user kernels (CUDA C compiled by NVRTC)
//! on them. Each method is a [`GpuMethod`] in [`methods`], which fixes its name, its
//! arguments and its result for both the actor and its callers; a refused call comes back as
//! a [`GpuActorError`] and leaves the actor serving.

pub(crate) mod actor;
mod error;
pub mod methods;
mod wire;

pub use error::GpuActorError;
pub use methods::GpuMethod;
pub use wire::{
    BufferElement, BufferInfo, GpuInfo, HostData, LaunchArg, LaunchShape, UserKernelInfo,
};

use crate::registry::{ActorEntry, ActorInstance, CallError};

/// The name the GPU actor is registered under on every worker.
pub const GPU_ACTOR: &str = "ember::GpuActor";

/// The registry entry of the GPU actor (its constructor takes no arguments).
pub(crate) static ENTRY: ActorEntry = ActorEntry {
    name: GPU_ACTOR,
    construct,
    restore: None,
};

fn construct(args: &[u8]) -> Result<Box<dyn ActorInstance>, CallError> {
    ember_core::proto::decode::<()>(args).map_err(|e| CallError::BadArgs(e.to_string()))?;
    let device = crate::context::device().unwrap_or_else(ember_kernels::Device::cpu);
    tracing::info!(backend = %device.backend(), "GPU actor started");
    Ok(Box::new(actor::GpuActor::new(device)))
}

#[cfg(test)]
mod tests;
