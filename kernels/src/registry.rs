//! The registry: every kernel by name, with its arguments and where its code lives.
//!
//! A caller (and the command line) looks a kernel up by [`lookup`] and checks the kinds of the
//! arguments it has with [`KernelSpec::check_kinds`] before anything touches a device. Element
//! counts are not arguments: they come from the buffers, and shapes (`rows`, `m`, …) are
//! checked against the buffers' lengths at launch.

use crate::sources::CudaSource;
use crate::{ArgKind, KernelError};
use std::fmt::Write as _;
use ArgKind::{Bf16Buf, F16Buf, F32Buf, F32, U32};
use CudaSource::{Elementwise, MatmulTiled, Reduce, Softmax};

/// Whether a kernel reads or writes a buffer argument (scalars are always read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The kernel only reads it.
    Read,
    /// The kernel writes it (and may read it, as `axpy` does with `y`).
    Write,
}

/// One argument of a registered kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgSpec {
    /// Its name, as in the kernel's documentation.
    pub name: &'static str,
    /// Its kind.
    pub kind: ArgKind,
    /// Whether the kernel writes it.
    pub access: Access,
}

/// Where a registered kernel's code comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// An `extern "C" __global__` function in one of the crate's `.cu` files, compiled by NVRTC.
    Nvrtc {
        /// The source file.
        source: CudaSource,
        /// The `extern "C"` entry point.
        entry: &'static str,
    },
    /// A cuBLAS GEMM (through cudarc's wrapper) on row-major operands.
    Cublas,
}

/// A registered kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// The name callers use.
    pub name: &'static str,
    /// What it computes, in one line.
    pub summary: &'static str,
    /// Its arguments, in order.
    pub args: &'static [ArgSpec],
    /// Where its GPU code comes from.
    pub implementation: Implementation,
}

impl KernelSpec {
    /// The signature, e.g. `a: f32, x: f32[], mut y: f32[]`.
    pub fn signature(&self) -> String {
        let mut out = String::new();
        for (i, arg) in self.args.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let access = if arg.access == Access::Write {
                "mut "
            } else {
                ""
            };
            let _ = write!(out, "{access}{}: {}", arg.name, arg.kind);
        }
        out
    }

    /// `Ok` when `kinds` are exactly this kernel's argument kinds, in order.
    pub fn check_kinds(&self, kinds: &[ArgKind]) -> Result<(), KernelError> {
        if kinds.len() != self.args.len() {
            return Err(KernelError::ArgumentCount {
                kernel: self.name,
                expected: self.args.len(),
                got: kinds.len(),
                signature: self.signature(),
            });
        }
        for (index, (spec, got)) in self.args.iter().zip(kinds).enumerate() {
            if spec.kind != *got {
                return Err(KernelError::ArgumentKind {
                    kernel: self.name,
                    index,
                    name: spec.name,
                    expected: spec.kind,
                    got: *got,
                });
            }
        }
        Ok(())
    }
}

const fn read(name: &'static str, kind: ArgKind) -> ArgSpec {
    ArgSpec {
        name,
        kind,
        access: Access::Read,
    }
}

const fn write(name: &'static str, kind: ArgKind) -> ArgSpec {
    ArgSpec {
        name,
        kind,
        access: Access::Write,
    }
}

const fn nvrtc(source: CudaSource, entry: &'static str) -> Implementation {
    Implementation::Nvrtc { source, entry }
}

const MATMUL_F32_ARGS: &[ArgSpec] = &[
    read("a", F32Buf),
    read("b", F32Buf),
    write("c", F32Buf),
    read("m", U32),
    read("k", U32),
    read("n", U32),
];

/// Every registered kernel.
pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "axpy",
        summary: "y <- a * x + y, one fused multiply-add per element",
        args: &[read("a", F32), read("x", F32Buf), write("y", F32Buf)],
        implementation: nvrtc(Elementwise, "axpy_f32"),
    },
    KernelSpec {
        name: "add",
        summary: "out <- x + y",
        args: &[read("x", F32Buf), read("y", F32Buf), write("out", F32Buf)],
        implementation: nvrtc(Elementwise, "add_f32"),
    },
    KernelSpec {
        name: "mul",
        summary: "out <- x * y",
        args: &[read("x", F32Buf), read("y", F32Buf), write("out", F32Buf)],
        implementation: nvrtc(Elementwise, "mul_f32"),
    },
    KernelSpec {
        name: "scale",
        summary: "out <- a * x",
        args: &[read("a", F32), read("x", F32Buf), write("out", F32Buf)],
        implementation: nvrtc(Elementwise, "scale_f32"),
    },
    KernelSpec {
        name: "sum",
        summary: "out[0] <- sum of x, in the fixed order (bit-exact with the CPU)",
        args: &[read("x", F32Buf), write("out", F32Buf)],
        implementation: nvrtc(Reduce, "reduce_sum_f32"),
    },
    KernelSpec {
        name: "mean",
        summary: "out[0] <- fixed-order sum of x / n (bit-exact with the CPU)",
        args: &[read("x", F32Buf), write("out", F32Buf)],
        implementation: nvrtc(Reduce, "reduce_sum_f32"),
    },
    KernelSpec {
        name: "max",
        summary: "out[0] <- largest element of x, NaN ignored (bit-exact with the CPU)",
        args: &[read("x", F32Buf), write("out", F32Buf)],
        implementation: nvrtc(Reduce, "reduce_max_f32"),
    },
    KernelSpec {
        name: "softmax",
        summary: "y <- row-wise softmax of the row-major [rows, cols] matrix x",
        args: &[
            read("x", F32Buf),
            write("y", F32Buf),
            read("rows", U32),
            read("cols", U32),
        ],
        implementation: nvrtc(Softmax, "softmax_f32"),
    },
    KernelSpec {
        name: "matmul_f32",
        summary: "c <- a . b, row-major f32, through cuBLAS",
        args: MATMUL_F32_ARGS,
        implementation: Implementation::Cublas,
    },
    KernelSpec {
        name: "matmul_f16",
        summary: "c <- a . b, row-major f16, accumulated in f32, through cuBLAS",
        args: &[
            read("a", F16Buf),
            read("b", F16Buf),
            write("c", F16Buf),
            read("m", U32),
            read("k", U32),
            read("n", U32),
        ],
        implementation: Implementation::Cublas,
    },
    KernelSpec {
        name: "matmul_bf16",
        summary: "c <- a . b, row-major bf16, accumulated in f32, through cuBLAS",
        args: &[
            read("a", Bf16Buf),
            read("b", Bf16Buf),
            write("c", Bf16Buf),
            read("m", U32),
            read("k", U32),
            read("n", U32),
        ],
        implementation: Implementation::Cublas,
    },
    KernelSpec {
        name: "matmul_tiled_f32",
        summary: "c <- a . b, row-major f32, hand-written shared-memory tiles (for comparison)",
        args: MATMUL_F32_ARGS,
        implementation: nvrtc(MatmulTiled, "matmul_tiled_f32"),
    },
];

/// The registered kernel called `name`, or [`KernelError::UnknownKernel`] listing the names.
pub fn lookup(name: &str) -> Result<&'static KernelSpec, KernelError> {
    KERNELS
        .iter()
        .find(|spec| spec.name == name)
        .ok_or_else(|| KernelError::UnknownKernel {
            name: name.to_owned(),
            known: KERNELS
                .iter()
                .map(|spec| spec.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_entries_exist_in_their_source() {
        let mut names = HashSet::new();
        for spec in KERNELS {
            assert!(names.insert(spec.name), "duplicate {}", spec.name);
            if let Implementation::Nvrtc { source, entry } = spec.implementation {
                let declaration = format!("extern \"C\" __global__ void {entry}(");
                assert!(
                    source.text().contains(&declaration),
                    "{} not in {}",
                    entry,
                    source.file_name()
                );
            }
            assert!(
                spec.args
                    .iter()
                    .any(|a| a.access == Access::Write && a.kind.is_buffer()),
                "{} writes no buffer",
                spec.name
            );
        }
    }

    #[test]
    fn lookup_finds_kernels_and_names_the_known_ones_otherwise() {
        assert_eq!(lookup("axpy").unwrap().name, "axpy");
        match lookup("axpyy") {
            Err(KernelError::UnknownKernel { name, known }) => {
                assert_eq!(name, "axpyy");
                assert!(known.contains("softmax") && known.contains("matmul_bf16"));
            }
            other => panic!("expected UnknownKernel, got {other:?}"),
        }
    }

    #[test]
    fn wrong_argument_kinds_are_named() {
        let axpy = lookup("axpy").unwrap();
        assert_eq!(axpy.signature(), "a: f32, x: f32[], mut y: f32[]");
        assert!(axpy.check_kinds(&[F32, F32Buf, F32Buf]).is_ok());
        assert_eq!(
            axpy.check_kinds(&[F32Buf, F32Buf, F32Buf]),
            Err(KernelError::ArgumentKind {
                kernel: "axpy",
                index: 0,
                name: "a",
                expected: F32,
                got: F32Buf,
            })
        );
        assert!(matches!(
            axpy.check_kinds(&[F32, F32Buf]),
            Err(KernelError::ArgumentCount {
                expected: 3,
                got: 2,
                ..
            })
        ));
        let error = lookup("matmul_f16")
            .unwrap()
            .check_kinds(&[F32Buf, F16Buf, F16Buf, U32, U32, U32])
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "kernel matmul_f16 argument 0 (a) must be f16[], got f32[]"
        );
    }
}
