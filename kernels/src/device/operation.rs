//! A launch of a registered kernel, checked against the registry and the buffers' lengths.
//!
//! Both backends run [`Operation`]s, so a call the CPU backend refuses is refused on CUDA too,
//! with the same error, before anything reaches the device.

use super::arg::KernelArg;
use super::buffer::BufferId;
use super::element::ElementType;
use crate::reference::MatmulShape;
use crate::registry::{Access, KernelSpec};
use crate::KernelError;

/// Which fixed-order reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reduction {
    Sum,
    Mean,
    Max,
}

impl Reduction {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
            Reduction::Max => "max",
        }
    }
}

/// Which element-wise kernel over `n` elements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Elementwise {
    /// `y <- a * x + y` (`out` is `y`).
    Axpy {
        a: f32,
    },
    Add {
        y: BufferId,
    },
    Mul {
        y: BufferId,
    },
    Scale {
        a: f32,
    },
}

/// Which matmul implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatmulEngine {
    Cublas,
    Tiled,
}

/// A checked launch: buffer ids, shapes that fit the buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Operation {
    Elementwise {
        kind: Elementwise,
        x: BufferId,
        out: BufferId,
        n: usize,
    },
    Reduce {
        reduction: Reduction,
        x: BufferId,
        out: BufferId,
        n: usize,
    },
    Softmax {
        x: BufferId,
        y: BufferId,
        rows: usize,
        cols: usize,
    },
    Matmul {
        engine: MatmulEngine,
        element: ElementType,
        a: BufferId,
        b: BufferId,
        c: BufferId,
        shape: MatmulShape,
    },
}

/// The largest element count a kernel indexes (`unsigned int n`).
const KERNEL_INDEX_LIMIT: usize = u32::MAX as usize;

struct Args<'s, 'a> {
    spec: &'s KernelSpec,
    args: &'s [KernelArg<'a>],
}

impl Args<'_, '_> {
    fn buffer(&self, index: usize) -> (BufferId, usize) {
        match self.args[index] {
            KernelArg::Buffer(buffer) => (buffer.id(), buffer.len()),
            // check_kinds ran first; a scalar here cannot happen, and an id that names no
            // buffer is refused by the backend as ForeignBuffer.
            _ => (BufferId(0), 0),
        }
    }

    fn f32(&self, index: usize) -> f32 {
        match self.args[index] {
            KernelArg::F32(value) => value,
            _ => f32::NAN,
        }
    }

    fn u32(&self, index: usize) -> usize {
        match self.args[index] {
            KernelArg::U32(value) => value as usize,
            _ => 0,
        }
    }

    fn within_index_limit(&self, what: &'static str, len: usize) -> Result<usize, KernelError> {
        if len > KERNEL_INDEX_LIMIT {
            return Err(KernelError::TooLarge {
                what,
                value: len,
                limit: KERNEL_INDEX_LIMIT,
            });
        }
        Ok(len)
    }

    fn same_lengths(&self, lengths: &[usize]) -> Result<usize, KernelError> {
        let first = lengths.first().copied().unwrap_or(0);
        for len in lengths {
            if *len != first {
                return Err(KernelError::LengthMismatch { x: first, y: *len });
            }
        }
        self.within_index_limit("buffer length", first)
    }

    /// Refuses a written buffer that is passed again as another argument.
    fn no_aliased_output(&self) -> Result<(), KernelError> {
        for (i, spec) in self.spec.args.iter().enumerate() {
            if spec.access != Access::Write {
                continue;
            }
            let KernelArg::Buffer(written) = self.args[i] else {
                continue;
            };
            let aliased = self.args.iter().enumerate().any(|(j, arg)| {
                j != i && matches!(arg, KernelArg::Buffer(other) if other.id() == written.id())
            });
            if aliased {
                return Err(KernelError::AliasedOutput {
                    kernel: self.spec.name,
                });
            }
        }
        Ok(())
    }
}

impl Operation {
    /// Checks `args` against `spec` and the buffers' lengths.
    pub(crate) fn build(
        spec: &KernelSpec,
        args: &[KernelArg<'_>],
    ) -> Result<Operation, KernelError> {
        let kinds: Vec<_> = args.iter().map(KernelArg::kind).collect();
        spec.check_kinds(&kinds)?;
        let args = Args { spec, args };
        args.no_aliased_output()?;
        match spec.name {
            "axpy" | "scale" => {
                let a = args.f32(0);
                let (x, x_len) = args.buffer(1);
                let (out, out_len) = args.buffer(2);
                let n = args.same_lengths(&[x_len, out_len])?;
                let kind = if spec.name == "axpy" {
                    Elementwise::Axpy { a }
                } else {
                    Elementwise::Scale { a }
                };
                Ok(Operation::Elementwise { kind, x, out, n })
            }
            "add" | "mul" => {
                let (x, x_len) = args.buffer(0);
                let (y, y_len) = args.buffer(1);
                let (out, out_len) = args.buffer(2);
                let n = args.same_lengths(&[x_len, y_len, out_len])?;
                let kind = if spec.name == "add" {
                    Elementwise::Add { y }
                } else {
                    Elementwise::Mul { y }
                };
                Ok(Operation::Elementwise { kind, x, out, n })
            }
            "sum" | "mean" | "max" => {
                let reduction = match spec.name {
                    "sum" => Reduction::Sum,
                    "mean" => Reduction::Mean,
                    _ => Reduction::Max,
                };
                let (x, n) = args.buffer(0);
                let (out, out_len) = args.buffer(1);
                crate::reference::fits_shape("reduction output", 1, out_len)?;
                let n = args.within_index_limit("reduction input length", n)?;
                if n == 0 && reduction != Reduction::Sum {
                    return Err(KernelError::EmptyInput {
                        reduction: reduction.name(),
                    });
                }
                Ok(Operation::Reduce {
                    reduction,
                    x,
                    out,
                    n,
                })
            }
            "softmax" => {
                let (x, x_len) = args.buffer(0);
                let (y, y_len) = args.buffer(1);
                let (rows, cols) = (args.u32(2), args.u32(3));
                let elements = rows.checked_mul(cols).ok_or(KernelError::TooLarge {
                    what: "softmax rows * cols",
                    value: usize::MAX,
                    limit: KERNEL_INDEX_LIMIT,
                })?;
                crate::reference::fits_shape("softmax x (rows x cols)", elements, x_len)?;
                crate::reference::fits_shape("softmax y (rows x cols)", elements, y_len)?;
                args.within_index_limit("softmax rows * cols", elements)?;
                Ok(Operation::Softmax { x, y, rows, cols })
            }
            "matmul_f32" | "matmul_f16" | "matmul_bf16" | "matmul_tiled_f32" => {
                let (a, a_len) = args.buffer(0);
                let (b, b_len) = args.buffer(1);
                let (c, c_len) = args.buffer(2);
                let shape = MatmulShape {
                    m: args.u32(3),
                    k: args.u32(4),
                    n: args.u32(5),
                };
                shape.check(a_len, b_len, c_len)?;
                for len in [a_len, b_len, c_len] {
                    args.within_index_limit("matmul operand length", len)?;
                }
                let (engine, element) = match spec.name {
                    "matmul_tiled_f32" => (MatmulEngine::Tiled, ElementType::F32),
                    "matmul_f16" => (MatmulEngine::Cublas, ElementType::F16),
                    "matmul_bf16" => (MatmulEngine::Cublas, ElementType::Bf16),
                    _ => (MatmulEngine::Cublas, ElementType::F32),
                };
                Ok(Operation::Matmul {
                    engine,
                    element,
                    a,
                    b,
                    c,
                    shape,
                })
            }
            other => Err(KernelError::UnknownKernel {
                name: other.to_owned(),
                known: "(registered but not runnable: a bug in ember-kernels)".to_owned(),
            }),
        }
    }
}
