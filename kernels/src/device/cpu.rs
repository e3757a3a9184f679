//! The CPU backend: buffers in host memory, every kernel run by its CPU reference.

use super::buffer::BufferId;
use super::combine::{Combining, Step};
use super::element::{Element, ElementSlice, ElementSliceMut, ElementType, ElementVec};
use super::operation::{Elementwise, MatmulEngine, Operation, Reduction};
use crate::reference;
use crate::KernelError;
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Host buffers by id.
#[derive(Debug, Default)]
pub(crate) struct CpuBackend {
    buffers: Mutex<HashMap<BufferId, ElementVec>>,
}

type Buffers = HashMap<BufferId, ElementVec>;

impl CpuBackend {
    fn buffers(&self) -> MutexGuard<'_, Buffers> {
        self.buffers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn alloc_zeroed(
        &self,
        id: BufferId,
        element: ElementType,
        len: usize,
    ) -> Result<(), KernelError> {
        let data = ElementVec::try_zeros(element, len)?;
        self.buffers().insert(id, data);
        Ok(())
    }

    pub(crate) fn upload(&self, id: BufferId, data: ElementSlice<'_>) {
        self.buffers().insert(id, ElementVec::copy_of(data));
    }

    pub(crate) fn download(&self, id: BufferId) -> Result<ElementVec, KernelError> {
        self.buffers()
            .get(&id)
            .cloned()
            .ok_or(KernelError::ForeignBuffer { id: id.0 })
    }

    pub(crate) fn free(&self, id: BufferId) {
        self.buffers().remove(&id);
    }

    pub(crate) fn run(&self, operation: &Operation) -> Result<(), KernelError> {
        let mut buffers = self.buffers();
        match *operation {
            Operation::Elementwise { kind, x, out, .. } => {
                with_output::<f32>(&mut buffers, out, |buffers, out| {
                    let x = input::<f32>(buffers, x)?;
                    match kind {
                        Elementwise::Axpy { a } => reference::axpy(a, x, out),
                        Elementwise::Scale { a } => reference::scale(a, x, out),
                        Elementwise::Add { y } => reference::add(x, input(buffers, y)?, out),
                        Elementwise::Mul { y } => reference::mul(x, input(buffers, y)?, out),
                    }
                })
            }
            Operation::Reduce {
                reduction, x, out, ..
            } => with_output::<f32>(&mut buffers, out, |buffers, out| {
                let x = input::<f32>(buffers, x)?;
                let value = match reduction {
                    Reduction::Sum => reference::sum(x),
                    Reduction::Mean => reference::mean(x)?,
                    Reduction::Max => reference::max(x)?,
                };
                out.copy_from_slice(&[value]);
                Ok(())
            }),
            Operation::Softmax { x, y, rows, cols } => {
                with_output::<f32>(&mut buffers, y, |buffers, y| {
                    reference::softmax(input(buffers, x)?, rows, cols, y)
                })
            }
            Operation::Matmul {
                engine,
                element,
                a,
                b,
                c,
                shape,
            } => match (engine, element) {
                (MatmulEngine::Cublas | MatmulEngine::Tiled, ElementType::F32) => {
                    with_output::<f32>(&mut buffers, c, |buffers, c| {
                        reference::matmul_f32(input(buffers, a)?, input(buffers, b)?, c, shape)
                    })
                }
                (_, ElementType::F16) => with_output::<f16>(&mut buffers, c, |buffers, c| {
                    reference::matmul_f16(input(buffers, a)?, input(buffers, b)?, c, shape)
                }),
                (_, ElementType::Bf16) => with_output::<bf16>(&mut buffers, c, |buffers, c| {
                    reference::matmul_bf16(input(buffers, a)?, input(buffers, b)?, c, shape)
                }),
            },
        }
    }
}

impl CpuBackend {
    pub(crate) fn write(
        &self,
        id: BufferId,
        at: usize,
        data: ElementSlice<'_>,
    ) -> Result<(), KernelError> {
        let mut buffers = self.buffers();
        let target = buffers
            .get_mut(&id)
            .ok_or(KernelError::ForeignBuffer { id: id.0 })?;
        let element = target.element();
        match (target, data) {
            (ElementVec::F32(t), ElementSlice::F32(d)) => t[at..at + d.len()].copy_from_slice(d),
            (ElementVec::F16(t), ElementSlice::F16(d)) => t[at..at + d.len()].copy_from_slice(d),
            (ElementVec::Bf16(t), ElementSlice::Bf16(d)) => t[at..at + d.len()].copy_from_slice(d),
            (_, d) => return Err(type_error(d.element(), element)),
        }
        Ok(())
    }

    pub(crate) fn read_into(
        &self,
        id: BufferId,
        at: usize,
        out: ElementSliceMut<'_>,
    ) -> Result<(), KernelError> {
        let buffers = self.buffers();
        let source = buffers
            .get(&id)
            .ok_or(KernelError::ForeignBuffer { id: id.0 })?;
        match (source, out) {
            (ElementVec::F32(s), ElementSliceMut::F32(o)) => {
                o.copy_from_slice(&s[at..at + o.len()])
            }
            (ElementVec::F16(s), ElementSliceMut::F16(o)) => {
                o.copy_from_slice(&s[at..at + o.len()])
            }
            (ElementVec::Bf16(s), ElementSliceMut::Bf16(o)) => {
                o.copy_from_slice(&s[at..at + o.len()])
            }
            (s, o) => return Err(type_error(o.element(), s.element())),
        }
        Ok(())
    }

    /// Copies buffer `src` into `dst` (checked: one element type, one length).
    pub(crate) fn copy(&self, src: BufferId, dst: BufferId) -> Result<(), KernelError> {
        let mut buffers = self.buffers();
        let mut out = buffers
            .remove(&dst)
            .ok_or(KernelError::ForeignBuffer { id: dst.0 })?;
        let result = match (buffers.get(&src), &mut out) {
            (Some(ElementVec::F32(s)), ElementVec::F32(d)) => {
                d.copy_from_slice(s);
                Ok(())
            }
            (Some(ElementVec::F16(s)), ElementVec::F16(d)) => {
                d.copy_from_slice(s);
                Ok(())
            }
            (Some(ElementVec::Bf16(s)), ElementVec::Bf16(d)) => {
                d.copy_from_slice(s);
                Ok(())
            }
            (Some(s), d) => Err(type_error(d.element(), s.element())),
            (None, _) => Err(KernelError::ForeignBuffer { id: src.0 }),
        };
        buffers.insert(dst, out);
        result
    }

    /// A checked combine or divide, by [`reference::combine`] and [`reference::divide`].
    pub(crate) fn combine(&self, combining: &Combining) -> Result<(), KernelError> {
        fn typed<T: Element>(buffers: &mut Buffers, c: &Combining) -> Result<(), KernelError> {
            with_output::<T>(buffers, c.acc, |buffers, acc| {
                let acc = &mut acc[..c.len];
                match c.step {
                    Step::Combine {
                        op,
                        operands,
                        incoming,
                    } => reference::combine(
                        op,
                        operands,
                        acc,
                        &input::<T>(buffers, incoming)?[..c.len],
                    ),
                    Step::Divide { n } => reference::divide(acc, n),
                }
                Ok(())
            })
        }
        let mut buffers = self.buffers();
        match combining.element {
            ElementType::F32 => typed::<f32>(&mut buffers, combining),
            ElementType::F16 => typed::<f16>(&mut buffers, combining),
            ElementType::Bf16 => typed::<bf16>(&mut buffers, combining),
        }
    }
}

fn type_error(requested: ElementType, actual: ElementType) -> KernelError {
    KernelError::ElementType {
        requested: requested.name(),
        actual: actual.name(),
    }
}

/// The elements of input buffer `id`.
fn input<T: Element>(buffers: &Buffers, id: BufferId) -> Result<&[T], KernelError> {
    let data = buffers
        .get(&id)
        .ok_or(KernelError::ForeignBuffer { id: id.0 })?;
    T::as_slice(data).ok_or(KernelError::ElementType {
        requested: T::TYPE.name(),
        actual: data.element().name(),
    })
}

/// Takes output buffer `id` out of the map while `write` fills it from the inputs left in
/// the map, then puts it back (also when `write` fails).
fn with_output<T: Element>(
    buffers: &mut Buffers,
    id: BufferId,
    write: impl FnOnce(&Buffers, &mut [T]) -> Result<(), KernelError>,
) -> Result<(), KernelError> {
    let mut output = buffers
        .remove(&id)
        .ok_or(KernelError::ForeignBuffer { id: id.0 })?;
    let result = match T::as_mut_slice(&mut output) {
        Some(out) => write(buffers, out),
        None => Err(KernelError::ElementType {
            requested: T::TYPE.name(),
            actual: output.element().name(),
        }),
    };
    buffers.insert(id, output);
    result
}

/// The host memory the kernel says is available for new allocations (`MemAvailable` in
/// `/proc/meminfo`), in bytes; `None` where that file does not say.
pub(crate) fn host_available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&meminfo)
}

/// The `MemAvailable:` line of a `/proc/meminfo` text, in bytes.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let meminfo = "MemTotal:       16314320 kB\nMemFree:         1200000 kB\n\
                       MemAvailable:    8000000 kB\nBuffers:          100 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(8_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots\n"), None);
    }

    #[test]
    fn this_host_says_how_much_memory_is_available() {
        let available = host_available_memory().expect("/proc/meminfo has MemAvailable");
        assert!(available > 0);
    }
}
