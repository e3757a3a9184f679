//! Row-wise, numerically stable `softmax` over a row-major `[rows, cols]` matrix.
//!
//! For each row: `m` = the row's max, `e_j = exp(x_j - m)`, `s` = the sum of the `e_j`,
//! `y_j = e_j / s`. The max and the sum run in the order of one 256-thread GPU block
//! (see [`super::reduce`]: strided per-thread folds, then the fixed tree), as
//! `cuda/softmax.cu` does; the GPU's `expf` may differ from Rust's `exp` by a few ulps, so
//! the kernel matches this reference within a stated tolerance, not bit for bit.

use super::reduce::{block_reduce, ReduceOp};
use super::{fits_shape, same_length};
use crate::KernelError;

/// `out = softmax(x)` row by row; `x` and `out` are `rows * cols` long.
pub fn softmax(x: &[f32], rows: usize, cols: usize, out: &mut [f32]) -> Result<(), KernelError> {
    let elements = rows.checked_mul(cols).ok_or(KernelError::TooLarge {
        what: "softmax rows * cols",
        value: usize::MAX,
        limit: usize::MAX,
    })?;
    fits_shape("softmax x (rows x cols)", elements, x.len())?;
    same_length(x.len(), out.len())?;
    if cols == 0 {
        return Ok(());
    }
    for (row, out_row) in x.chunks(cols).zip(out.chunks_mut(cols)) {
        let row_max = block_reduce(row, ReduceOp::Max);
        for (o, v) in out_row.iter_mut().zip(row) {
            *o = (v - row_max).exp();
        }
        let total = block_reduce(out_row, ReduceOp::Sum);
        for o in out_row.iter_mut() {
            *o /= total;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
        (0usize..9, prop_oneof![0usize..40, 250usize..600]).prop_flat_map(|(rows, cols)| {
            (
                Just(rows),
                Just(cols),
                prop::collection::vec(-80f32..80.0, rows * cols),
            )
        })
    }

    #[test]
    fn shape_is_checked() {
        let mut out = [0.0; 6];
        assert!(softmax(&[0.0; 6], 2, 2, &mut out).is_err());
        assert!(softmax(&[0.0; 4], 2, 2, &mut out).is_err());
    }

    #[test]
    fn large_inputs_do_not_overflow() {
        let mut out = [0.0; 2];
        softmax(&[1000.0, 1000.0], 1, 2, &mut out).unwrap();
        assert_eq!(out, [0.5, 0.5]);
    }

    proptest! {
        #[test]
        fn matches_the_definition_in_f64((rows, cols, x) in matrix()) {
            let mut out = vec![f32::NAN; x.len()];
            softmax(&x, rows, cols, &mut out).unwrap();
            for r in 0..rows {
                let row = &x[r * cols..(r + 1) * cols];
                let m = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(f64::from(*v)));
                let s: f64 = row.iter().map(|v| (f64::from(*v) - m).exp()).sum();
                for c in 0..cols {
                    let expect = (f64::from(row[c]) - m).exp() / s;
                    let got = f64::from(out[r * cols + c]);
                    // f32 rounding of `x - m` (|x - m| < 256) moves the exponent by up to 7.6e-6.
                    prop_assert!((got - expect).abs() <= 2e-5 * expect + 1e-37,
                        "row {} col {}: {} vs {}", r, c, got, expect);
                }
            }
        }
    }
}
