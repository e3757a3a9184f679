//! Row-major matrix multiply `C = A · B` for f32, f16 and bf16 (accumulated in f32).
//!
//! `A` is `m × k`, `B` is `k × n`, `C` is `m × n`, all row-major. Each `C[i][j]` is
//! accumulated in f32 over increasing `p` as `acc = fma(A[i][p], B[p][j], acc)`, starting
//! from `0.0`: the order of the tiled kernel (`cuda/matmul_tiled.cu`). cuBLAS chooses its own
//! order, so the GPU matches within a tolerance. The f16/bf16 products convert each input to
//! f32 exactly and round the f32 result to the output type once, at the end.

use super::fits_shape;
use crate::KernelError;
use half::{bf16, f16};

/// The shape of `C[m × n] = A[m × k] · B[k × n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulShape {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
}

impl MatmulShape {
    /// Checks that buffers of these lengths hold `A`, `B` and `C`.
    pub fn check(&self, a: usize, b: usize, c: usize) -> Result<(), KernelError> {
        fits_shape("matmul a (m x k)", product(self.m, self.k)?, a)?;
        fits_shape("matmul b (k x n)", product(self.k, self.n)?, b)?;
        fits_shape("matmul c (m x n)", product(self.m, self.n)?, c)
    }
}

fn product(a: usize, b: usize) -> Result<usize, KernelError> {
    a.checked_mul(b).ok_or(KernelError::TooLarge {
        what: "matmul dimension product",
        value: usize::MAX,
        limit: usize::MAX,
    })
}

/// `c = a · b` in f32.
pub fn matmul_f32(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    shape: MatmulShape,
) -> Result<(), KernelError> {
    matmul_generic(a, b, c, shape, |v| v, |v| v)
}

/// `c = a · b` for f16 inputs and output, accumulated in f32.
pub fn matmul_f16(
    a: &[f16],
    b: &[f16],
    c: &mut [f16],
    shape: MatmulShape,
) -> Result<(), KernelError> {
    matmul_generic(a, b, c, shape, f16::to_f32, f16::from_f32)
}

/// `c = a · b` for bf16 inputs and output, accumulated in f32.
pub fn matmul_bf16(
    a: &[bf16],
    b: &[bf16],
    c: &mut [bf16],
    shape: MatmulShape,
) -> Result<(), KernelError> {
    matmul_generic(a, b, c, shape, bf16::to_f32, bf16::from_f32)
}

fn matmul_generic<T: Copy>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    shape: MatmulShape,
    widen: impl Fn(T) -> f32,
    narrow: impl Fn(f32) -> T,
) -> Result<(), KernelError> {
    shape.check(a.len(), b.len(), c.len())?;
    let MatmulShape { m, k, n } = shape;
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc = widen(a[i * k + p]).mul_add(widen(b[p * n + j]), acc);
            }
            c[i * n + j] = narrow(acc);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn problem() -> impl Strategy<Value = (MatmulShape, Vec<f32>, Vec<f32>)> {
        (0usize..13, 0usize..20, 0usize..13).prop_flat_map(|(m, k, n)| {
            (
                Just(MatmulShape { m, k, n }),
                prop::collection::vec(-4f32..4.0, m * k),
                prop::collection::vec(-4f32..4.0, k * n),
            )
        })
    }

    /// The textbook product in f64, with the bound `k * eps * sum |a||b|` for an f32 result.
    fn naive(a: &[f32], b: &[f32], shape: MatmulShape) -> Vec<(f64, f64)> {
        let MatmulShape { m, k, n } = shape;
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut dot, mut magnitude) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let term = f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
                    dot += term;
                    magnitude += term.abs();
                }
                out.push((dot, magnitude));
            }
        }
        out
    }

    #[test]
    fn shapes_are_checked() {
        let shape = MatmulShape { m: 2, k: 3, n: 2 };
        let mut c = [0.0; 4];
        assert!(matmul_f32(&[0.0; 6], &[0.0; 6], &mut c, shape).is_ok());
        assert!(matches!(
            matmul_f32(&[0.0; 5], &[0.0; 6], &mut c, shape),
            Err(KernelError::ShapeMismatch {
                expected: 6,
                actual: 5,
                ..
            })
        ));
        assert!(matmul_f32(&[0.0; 6], &[0.0; 6], &mut [0.0; 3], shape).is_err());
    }

    #[test]
    fn small_product_is_exact() {
        let shape = MatmulShape { m: 2, k: 2, n: 2 };
        let mut c = [0.0; 4];
        matmul_f32(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], &mut c, shape).unwrap();
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
    }

    proptest! {
        #[test]
        fn f32_matches_the_definition((shape, a, b) in problem()) {
            let mut c = vec![f32::NAN; shape.m * shape.n];
            matmul_f32(&a, &b, &mut c, shape).unwrap();
            for (got, (dot, magnitude)) in c.iter().zip(naive(&a, &b, shape)) {
                let bound = (shape.k as f64 + 1.0) * f64::from(f32::EPSILON) * magnitude;
                prop_assert!((f64::from(*got) - dot).abs() <= bound);
            }
        }

        #[test]
        fn f16_and_bf16_accumulate_in_f32_and_round_once((shape, a, b) in problem()) {
            let a16: Vec<f16> = a.iter().map(|v| f16::from_f32(*v)).collect();
            let b16: Vec<f16> = b.iter().map(|v| f16::from_f32(*v)).collect();
            let mut c16 = vec![f16::NAN; shape.m * shape.n];
            matmul_f16(&a16, &b16, &mut c16, shape).unwrap();
            let abf: Vec<bf16> = a.iter().map(|v| bf16::from_f32(*v)).collect();
            let bbf: Vec<bf16> = b.iter().map(|v| bf16::from_f32(*v)).collect();
            let mut cbf = vec![bf16::NAN; shape.m * shape.n];
            matmul_bf16(&abf, &bbf, &mut cbf, shape).unwrap();

            let a16w: Vec<f32> = a16.iter().map(|v| v.to_f32()).collect();
            let b16w: Vec<f32> = b16.iter().map(|v| v.to_f32()).collect();
            for (got, (dot, magnitude)) in c16.iter().zip(naive(&a16w, &b16w, shape)) {
                // One f16 rounding (2^-11 relative) on top of the f32 accumulation.
                let bound = (shape.k as f64 + 1.0) * f64::from(f32::EPSILON) * magnitude
                    + dot.abs() * 2f64.powi(-11) + 6e-8;
                prop_assert!((f64::from(got.to_f32()) - dot).abs() <= bound);
            }
            let abfw: Vec<f32> = abf.iter().map(|v| v.to_f32()).collect();
            let bbfw: Vec<f32> = bbf.iter().map(|v| v.to_f32()).collect();
            for (got, (dot, magnitude)) in cbf.iter().zip(naive(&abfw, &bbfw, shape)) {
                // One bf16 rounding (2^-8 relative) on top of the f32 accumulation.
                let bound = (shape.k as f64 + 1.0) * f64::from(f32::EPSILON) * magnitude
                    + dot.abs() * 2f64.powi(-8) + 1e-38;
                prop_assert!((f64::from(got.to_f32()) - dot).abs() <= bound);
            }
        }
    }
}
