//! What a collective operation asks of a device: copies into and out of part of a buffer,
//! and the element-wise combining of two buffers ([`crate::reference::combine`] on the CPU
//! backend, `cuda/combine.cu` on a GPU, the same bits).

use super::buffer::{Buffer, BufferId};
use super::element::{Element, ElementType};
use super::{BackendImpl, Device};
use crate::reference::{CombineOp, Operands};
use crate::KernelError;

/// A checked combine or divide: buffers of one handle and one element type, `len` elements
/// within each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Combining {
    /// What is done to each element.
    pub(crate) step: Step,
    /// The buffer written.
    pub(crate) acc: BufferId,
    /// The element type of every buffer involved.
    pub(crate) element: ElementType,
    /// Elements combined (from the start of each buffer).
    pub(crate) len: usize,
}

/// One element-wise step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// `acc ⊕ incoming` (or `incoming ⊕ acc`).
    Combine {
        op: CombineOp,
        operands: Operands,
        incoming: BufferId,
    },
    /// `acc / n`.
    Divide { n: usize },
}

/// The largest element count a kernel indexes (`unsigned int n`).
const INDEX_LIMIT: usize = u32::MAX as usize;

impl Device {
    /// Copies `data` into `buffer`, from element `at` on.
    pub fn write<T: Element>(
        &self,
        buffer: &Buffer,
        at: usize,
        data: &[T],
    ) -> Result<(), KernelError> {
        self.check_owner(buffer)?;
        same_type(buffer.element, T::TYPE)?;
        within("write", buffer, at, data.len())?;
        match &self.shared.backend {
            BackendImpl::Cpu(cpu) => cpu.write(buffer.id, at, T::slice(data)),
            BackendImpl::Cuda(cuda) => cuda.write(buffer.id, at, T::slice(data)),
        }
    }

    /// Copies `out.len()` elements of `buffer`, from element `at` on, into `out` (waits for
    /// the kernels that write it).
    pub fn read_into<T: Element>(
        &self,
        buffer: &Buffer,
        at: usize,
        out: &mut [T],
    ) -> Result<(), KernelError> {
        self.check_owner(buffer)?;
        same_type(buffer.element, T::TYPE)?;
        within("read", buffer, at, out.len())?;
        match &self.shared.backend {
            BackendImpl::Cpu(cpu) => cpu.read_into(buffer.id, at, T::slice_mut(out)),
            BackendImpl::Cuda(cuda) => cuda.read_into(buffer.id, at, T::slice_mut(out)),
        }
    }

    /// Combines the first `len` elements of `incoming` into those of `acc` with `op`, the
    /// operands in `operands` order: the device's run of [`crate::reference::combine`], with
    /// the same bits. Both buffers hold one element type; `acc` is written in place.
    pub fn combine(
        &self,
        op: CombineOp,
        operands: Operands,
        acc: &Buffer,
        incoming: &Buffer,
        len: usize,
    ) -> Result<(), KernelError> {
        self.check_owner(acc)?;
        self.check_owner(incoming)?;
        if acc.id == incoming.id {
            return Err(KernelError::AliasedOutput { kernel: "combine" });
        }
        same_type(acc.element, incoming.element)?;
        within("combine's accumulator", acc, 0, len)?;
        within("combine's incoming buffer", incoming, 0, len)?;
        self.run_combining(Combining {
            step: Step::Combine {
                op,
                operands,
                incoming: incoming.id,
            },
            acc: acc.id,
            element: acc.element,
            len,
        })
    }

    /// Divides the first `len` elements of `values` by `n` (the last step of a mean):
    /// [`crate::reference::divide`] on the device, with the same bits.
    pub fn divide(&self, values: &Buffer, len: usize, n: usize) -> Result<(), KernelError> {
        self.check_owner(values)?;
        within("divide", values, 0, len)?;
        self.run_combining(Combining {
            step: Step::Divide { n },
            acc: values.id,
            element: values.element,
            len,
        })
    }

    fn run_combining(&self, combining: Combining) -> Result<(), KernelError> {
        if combining.len > INDEX_LIMIT {
            return Err(KernelError::TooLarge {
                what: "elements combined at once",
                value: combining.len,
                limit: INDEX_LIMIT,
            });
        }
        match &self.shared.backend {
            BackendImpl::Cpu(cpu) => cpu.combine(&combining),
            BackendImpl::Cuda(cuda) => cuda.combine(&combining),
        }
    }
}

/// `Ok` when a buffer of `actual` is used as `requested`.
fn same_type(actual: ElementType, requested: ElementType) -> Result<(), KernelError> {
    if actual == requested {
        Ok(())
    } else {
        Err(KernelError::ElementType {
            requested: requested.name(),
            actual: actual.name(),
        })
    }
}

/// `Ok` when `at..at + len` lies within `buffer`.
fn within(what: &'static str, buffer: &Buffer, at: usize, len: usize) -> Result<(), KernelError> {
    match at.checked_add(len) {
        Some(end) if end <= buffer.len => Ok(()),
        end => Err(KernelError::OutOfBounds {
            what,
            end: end.unwrap_or(usize::MAX),
            len: buffer.len,
        }),
    }
}
