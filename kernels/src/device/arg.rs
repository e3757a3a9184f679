//! The values passed to a kernel launch.

use super::buffer::Buffer;
use crate::ArgKind;

/// One argument of a kernel launch: a buffer or a scalar.
#[derive(Debug, Clone, Copy)]
pub enum KernelArg<'a> {
    /// A buffer of the launching device handle.
    Buffer(&'a Buffer),
    /// An `f32` scalar.
    F32(f32),
    /// A `u32` scalar.
    U32(u32),
}

impl KernelArg<'_> {
    /// Its kind, as the registry names it.
    pub fn kind(&self) -> ArgKind {
        match self {
            KernelArg::Buffer(buffer) => buffer.element().buffer_kind(),
            KernelArg::F32(_) => ArgKind::F32,
            KernelArg::U32(_) => ArgKind::U32,
        }
    }
}

impl<'a> From<&'a Buffer> for KernelArg<'a> {
    fn from(buffer: &'a Buffer) -> Self {
        KernelArg::Buffer(buffer)
    }
}

impl From<f32> for KernelArg<'_> {
    fn from(value: f32) -> Self {
        KernelArg::F32(value)
    }
}

impl From<u32> for KernelArg<'_> {
    fn from(value: u32) -> Self {
        KernelArg::U32(value)
    }
}
