//! The CUDA side: library presence checks, NVRTC, and the CUDA backend of [`crate::Device`].

pub(crate) mod backend;
mod combine;
mod cublas;
mod device_buffers;
pub(crate) mod nvrtc;
pub(crate) mod presence;
mod registered;
mod user_kernels;
