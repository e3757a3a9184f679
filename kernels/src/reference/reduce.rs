//! Fixed-order reductions (`sum`, `max`, `mean`): the same bits on every run, CPU or GPU.
//!
//! The order is the one `cuda/reduce.cu` runs, step for step:
//!
//! 1. The input is cut into chunks of [`REDUCE_BLOCK_THREADS`] × [`REDUCE_ITEMS_PER_THREAD`]
//!    contiguous elements, one chunk per GPU block (an empty input is one empty chunk).
//! 2. Within a chunk, thread `t` starts from the identity (`0.0` for sum, NaN for max) and
//!    combines, in increasing `i`, the elements at `i * REDUCE_BLOCK_THREADS + t` that exist.
//! 3. The [`REDUCE_BLOCK_THREADS`] thread values are combined by a fixed pairwise tree:
//!    for `stride` = 128, 64, …, 1, value `t < stride` becomes `op(value[t], value[t + stride])`.
//!    Value 0 is the chunk's partial.
//! 4. While more than one partial remains, steps 1–3 run again over the partials.
//!
//! `mean` is that sum divided by `n` converted to `f32` (round to nearest), one IEEE division.
//! `max` ignores NaN (a NaN loses against any number; all-NaN gives NaN) and keeps the first
//! operand on ties, so `-0.0` against `0.0` is decided by position, the same way on both sides.
//! It only ever selects one of its operands, so the result is always an input's exact bits.

use crate::KernelError;

/// Threads in one reduction block (a power of two).
pub const REDUCE_BLOCK_THREADS: usize = 256;
/// Elements each thread combines from its chunk before the tree.
pub const REDUCE_ITEMS_PER_THREAD: usize = 16;
/// Elements one block reduces.
pub(crate) const REDUCE_CHUNK: usize = REDUCE_BLOCK_THREADS * REDUCE_ITEMS_PER_THREAD;

/// Which combining operation a reduction uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// IEEE addition; identity `0.0`.
    Sum,
    /// NaN-ignoring maximum that keeps the first operand on ties; identity NaN (bits
    /// `0x7fc00000`), which loses against every number.
    Max,
}

impl ReduceOp {
    pub(crate) fn identity(self) -> f32 {
        match self {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => f32::from_bits(0x7fc0_0000),
        }
    }

    pub(crate) fn combine(self, a: f32, b: f32) -> f32 {
        match self {
            ReduceOp::Sum => a + b,
            ReduceOp::Max => {
                if a.is_nan() {
                    b
                } else if b.is_nan() || a >= b {
                    a
                } else {
                    b
                }
            }
        }
    }
}

/// Reduces `x` in the fixed order described in this module's documentation.
pub fn reduce_fixed_order(x: &[f32], op: ReduceOp) -> f32 {
    let mut level = reduce_pass(x, op);
    while level.len() > 1 {
        level = reduce_pass(&level, op);
    }
    level[0]
}

/// Sum of `x` in the fixed order; `0.0` for an empty input.
pub fn sum(x: &[f32]) -> f32 {
    reduce_fixed_order(x, ReduceOp::Sum)
}

/// Largest element of `x` in the fixed order (NaN ignored).
pub fn max(x: &[f32]) -> Result<f32, KernelError> {
    if x.is_empty() {
        return Err(KernelError::EmptyInput { reduction: "max" });
    }
    Ok(reduce_fixed_order(x, ReduceOp::Max))
}

/// Fixed-order sum of `x` divided by `x.len() as f32`.
pub fn mean(x: &[f32]) -> Result<f32, KernelError> {
    if x.is_empty() {
        return Err(KernelError::EmptyInput { reduction: "mean" });
    }
    Ok(sum(x) / x.len() as f32)
}

/// One pass: the partial of each chunk (one identity partial for an empty input).
fn reduce_pass(x: &[f32], op: ReduceOp) -> Vec<f32> {
    if x.is_empty() {
        return vec![block_reduce(&[], op)];
    }
    x.chunks(REDUCE_CHUNK)
        .map(|chunk| block_reduce(chunk, op))
        .collect()
}

/// What one GPU block of [`REDUCE_BLOCK_THREADS`] threads computes over `chunk`: thread `t`
/// folds elements `t`, `t + 256`, `t + 512`, … in that order, then the fixed tree.
pub(crate) fn block_reduce(chunk: &[f32], op: ReduceOp) -> f32 {
    let mut values = [op.identity(); REDUCE_BLOCK_THREADS];
    for (t, value) in values.iter_mut().enumerate() {
        for x in chunk.iter().skip(t).step_by(REDUCE_BLOCK_THREADS) {
            *value = op.combine(*value, *x);
        }
    }
    let mut stride = REDUCE_BLOCK_THREADS / 2;
    while stride > 0 {
        for t in 0..stride {
            values[t] = op.combine(values[t], values[t + stride]);
        }
        stride /= 2;
    }
    values[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sizes around the chunk edges, where the order changes shape.
    fn length() -> impl Strategy<Value = usize> {
        prop_oneof![
            0usize..600,
            (REDUCE_CHUNK - 3)..(REDUCE_CHUNK + 3),
            (REDUCE_CHUNK * 3 - 1)..(REDUCE_CHUNK * 3 + 700),
        ]
    }

    fn values() -> impl Strategy<Value = Vec<f32>> {
        length().prop_flat_map(|n| prop::collection::vec(-1e4f32..1e4, n))
    }

    #[test]
    fn empty_inputs() {
        assert_eq!(sum(&[]).to_bits(), 0.0f32.to_bits());
        assert_eq!(max(&[]), Err(KernelError::EmptyInput { reduction: "max" }));
        assert_eq!(
            mean(&[]),
            Err(KernelError::EmptyInput { reduction: "mean" })
        );
    }

    #[test]
    fn max_ignores_nan_and_all_nan_gives_nan() {
        assert_eq!(max(&[1.0, f32::NAN, 3.0, -2.0]), Ok(3.0));
        assert!(max(&[f32::NAN, f32::NAN]).unwrap().is_nan());
        assert_eq!(max(&[f32::NEG_INFINITY]), Ok(f32::NEG_INFINITY));
    }

    #[test]
    fn the_tree_is_the_documented_one() {
        // Thread 0 holds 1e8, thread 128 holds 1.0 and -1e8 is in thread 1: the tree adds
        // 1e8 + 1.0 (lost to rounding) before -1e8, so the sum is 0, not the exact 1.
        let mut x = vec![0.0f32; 256];
        x[0] = 1e8;
        x[128] = 1.0;
        x[1] = -1e8;
        assert_eq!(sum(&x), 0.0);
        // A sequential sum would give 1e8 - 1e8 + 1 = 1.
        assert_eq!(x.iter().sum::<f32>(), 1.0);
    }

    proptest! {
        #[test]
        fn sum_of_integers_is_exact(x in length().prop_flat_map(|n| prop::collection::vec(-1000i32..1000, n))) {
            // Every partial is an integer below 2^24, so any order gives the exact sum.
            let exact: i64 = x.iter().map(|v| i64::from(*v)).sum();
            let floats: Vec<f32> = x.iter().map(|v| *v as f32).collect();
            prop_assert_eq!(sum(&floats), exact as f32);
        }

        #[test]
        fn sum_is_within_the_error_bound_of_the_exact_sum(x in values()) {
            let exact: f64 = x.iter().map(|v| f64::from(*v)).sum();
            let magnitude: f64 = x.iter().map(|v| f64::from(v.abs())).sum();
            // A tree of depth d has error at most d * eps * sum |x|; d < 40 here.
            let bound = 40.0 * f64::from(f32::EPSILON) * magnitude + 1e-30;
            prop_assert!((f64::from(sum(&x)) - exact).abs() <= bound);
        }

        #[test]
        fn max_is_the_largest_element(x in values()) {
            let expect = x.iter().copied().fold(None, |m: Option<f32>, v| Some(m.map_or(v, |m| m.max(v))));
            match expect {
                None => prop_assert!(max(&x).is_err()),
                Some(m) => prop_assert_eq!(max(&x).unwrap(), m),
            }
        }

        #[test]
        fn mean_is_the_sum_over_n(x in values()) {
            if x.is_empty() {
                prop_assert!(mean(&x).is_err());
            } else {
                let exact: f64 = x.iter().map(|v| f64::from(*v)).sum::<f64>() / x.len() as f64;
                let magnitude: f64 = x.iter().map(|v| f64::from(v.abs())).sum::<f64>() / x.len() as f64;
                let bound = 41.0 * f64::from(f32::EPSILON) * magnitude + 1e-30;
                prop_assert!((f64::from(mean(&x).unwrap()) - exact).abs() <= bound);
                prop_assert_eq!(mean(&x).unwrap().to_bits(), (sum(&x) / x.len() as f32).to_bits());
            }
        }
    }
}
