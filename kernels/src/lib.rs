//! `ember-kernels`: Ember's GPU kernels, the CPU reference of each, and a device handle that
//! runs them on a CUDA GPU or, without one, on the CPU.
//!
//! What is here:
//!
//! - [`reference`](mod@reference): the CPU reference of every kernel, in plain Rust: element-wise `axpy`,
//!   `add`, `mul`, `scale`; fixed-order `sum`/`mean`/`max`; row-wise `softmax`; row-major
//!   `matmul` in f32, f16 and bf16. The reductions run in the GPU's order (documented in
//!   `reference/reduce.rs`), so the CPU and the GPU give the very same bits.
//! - [`sources`]: the CUDA C sources, from the `.cu` files under `kernels/cuda/`.
//! - [`registry`]: every kernel by name ([`registry::KERNELS`]), with its argument kinds
//!   ([`ArgKind`]) and the source it lives in (or cuBLAS for `matmul_f32/f16/bf16`).
//! - [`cache`]: the on-disk PTX cache keyed by sha256 of source, NVRTC options and target
//!   architecture (`sm_XY`), written atomically, so a second start does not compile again.
//! - [`Device`]: [`Device::open`] gives the CUDA backend when a GPU is usable, else the CPU
//!   backend ([`Device::backend`] says which); `alloc`, `upload`, `download`, `launch` (by
//!   registered name, arguments checked against the registry and the buffers' lengths),
//!   `synchronize`, a per-handle memory limit ([`Device::with_memory_limit`]), and user
//!   kernels compiled from CUDA C ([`Device::compile_user`], [`Device::launch_user`]).
//! - [`Nvrtc`]: the NVRTC compiler (a [`cache::PtxCompiler`]), usable without a GPU, and
//!   [`cuda_libs`]: finding NVRTC and cuBLAS where cudarc's CUDA 12 names miss them (CUDA 13,
//!   NVIDIA's pip wheels).
//! - [`KernelError`]: the one error type.
//!
//! CUDA is reached through `cudarc` with dynamic loading: building needs no CUDA toolkit, and
//! a machine without `libcuda`/`libnvrtc`/`libcublas` gets [`KernelError::NoCuda`], never a
//! panic (the libraries are probed before cudarc touches them, and cudarc calls run under
//! `catch_unwind` as a second line of defence).

#![warn(missing_docs)]

mod arg_kind;
pub mod cache;
mod cuda;
pub mod cuda_libs;
mod device;
mod error;
pub mod reference;
pub mod registry;
pub mod sources;

pub use arg_kind::ArgKind;
pub use cuda::nvrtc::{registered_kernel_options, Nvrtc};
pub use device::{
    Backend, Buffer, BufferId, Device, Element, ElementSlice, ElementSliceMut, ElementType,
    ElementVec, KernelArg, LaunchGeometry, UserKernel,
};
pub use error::KernelError;
