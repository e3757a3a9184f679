//! CPU references: the result every kernel must give, in plain Rust.
//!
//! Each function mirrors one kernel of [`crate::registry::KERNELS`]: same arguments, same
//! output buffer, same order of floating-point operations where the kernel promises bit-exact
//! results (the reductions), a stated tolerance elsewhere.

mod axpy;
mod combine;
mod elementwise;
mod matmul;
mod reduce;
mod softmax;

pub use axpy::axpy;
pub use combine::{combine, divide, Combinable, CombineOp, Operands};
pub use elementwise::{add, mul, scale};
pub use matmul::{matmul_bf16, matmul_f16, matmul_f32, MatmulShape};
pub use reduce::{
    max, mean, reduce_fixed_order, sum, ReduceOp, REDUCE_BLOCK_THREADS, REDUCE_ITEMS_PER_THREAD,
};
pub use softmax::softmax;

use crate::KernelError;

/// `Ok` when `x` and `y` have the same length, else [`KernelError::LengthMismatch`].
pub(crate) fn same_length(x: usize, y: usize) -> Result<(), KernelError> {
    if x == y {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch { x, y })
    }
}

/// `Ok` when a buffer of `actual` elements fits a shape calling for `expected`.
pub(crate) fn fits_shape(what: &str, expected: usize, actual: usize) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::ShapeMismatch {
            what: what.to_owned(),
            expected,
            actual,
        })
    }
}
