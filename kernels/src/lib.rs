//! `ember-kernels`: Ember's GPU kernels and the CPU reference of each.
//!
//! What is here:
//!
//! - [`reference`]: the CPU reference of every kernel, in plain Rust (element-wise `axpy`,
//!   `add`, `mul`, `scale`; fixed-order `sum`/`mean`/`max`; row-wise `softmax`; row-major
//!   `matmul` in f32, f16 and bf16). The reductions run in the GPU's order, so they give the
//!   very same bits as the kernel.
//! - [`sources`]: the CUDA C sources, from the `.cu` files under `kernels/cuda/`.
//! - [`registry`]: every kernel by name, with its argument kinds and the source it lives in.
//! - [`cache`]: the on-disk PTX cache keyed by sha256 of source, options and architecture.
//! - [`KernelError`]: the one error type; nothing in this crate panics when CUDA is missing.

#![warn(missing_docs)]

mod arg_kind;
pub mod cache;
mod cuda;
mod device;
mod error;
pub mod reference;
pub mod registry;
pub mod sources;

pub use arg_kind::ArgKind;
pub use device::{
    Backend, Buffer, BufferId, Device, Element, ElementSlice, ElementType, ElementVec, KernelArg,
    LaunchGeometry, UserKernel,
};
pub use error::KernelError;
