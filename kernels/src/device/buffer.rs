//! A buffer on a device handle: freed (and its bytes returned to the handle) when dropped.

use super::element::ElementType;
use super::DeviceShared;
use crate::KernelError;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Identifies a buffer within its device handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub(crate) u64);

impl BufferId {
    pub(crate) fn next() -> BufferId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        BufferId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for BufferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Memory on one [`super::Device`] handle (device memory on CUDA, host memory on the CPU
/// backend). Read it back with [`super::Device::download`]. Dropping it frees the memory and
/// returns its bytes to the handle's limit.
pub struct Buffer {
    pub(crate) id: BufferId,
    pub(crate) len: usize,
    pub(crate) element: ElementType,
    pub(crate) owner: Arc<DeviceShared>,
}

impl Buffer {
    /// Its id.
    pub fn id(&self) -> BufferId {
        self.id
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its element type.
    pub fn element(&self) -> ElementType {
        self.element
    }

    /// Bytes it takes.
    pub fn size_bytes(&self) -> u64 {
        byte_size(self.element, self.len)
    }
}

/// Bytes `len` elements of `element` take (saturating; see [`checked_byte_size`]).
pub(crate) fn byte_size(element: ElementType, len: usize) -> u64 {
    (len as u64).saturating_mul(element.size_bytes() as u64)
}

/// Bytes `len` elements of `element` take, or [`KernelError::TooLarge`] past `isize::MAX`
/// (the most any allocation can be).
pub(crate) fn checked_byte_size(element: ElementType, len: usize) -> Result<u64, KernelError> {
    len.checked_mul(element.size_bytes())
        .filter(|bytes| *bytes <= isize::MAX as usize)
        .map(|bytes| bytes as u64)
        .ok_or(KernelError::TooLarge {
            what: "buffer length",
            value: len,
            limit: isize::MAX as usize / element.size_bytes(),
        })
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("id", &self.id)
            .field("len", &self.len)
            .field("element", &self.element)
            .finish()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.owner.free(self.id, self.size_bytes());
    }
}
