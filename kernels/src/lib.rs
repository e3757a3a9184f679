//! `ember-kernels`: Ember's GPU kernels and the CPU reference of each.
//!
//! For now it holds the CPU reference of `axpy`. The CUDA sources compiled with NVRTC
//! through `cudarc` come with the kernels issue; every kernel keeps a reference here.

/// Why a kernel call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// Two buffers that must be the same length were not.
    #[error("length mismatch: x has {x} elements, y has {y}")]
    LengthMismatch {
        /// Length of `x`.
        x: usize,
        /// Length of `y`.
        y: usize,
    },
}

/// `y <- a * x + y`, element by element, on the CPU: the reference the GPU kernel must match.
pub fn axpy_reference(a: f32, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    if x.len() != y.len() {
        return Err(KernelError::LengthMismatch {
            x: x.len(),
            y: y.len(),
        });
    }
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = a.mul_add(*xi, *yi);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn axpy_matches_its_definition() {
        let mut y = vec![1.0, 2.0, 3.0];
        axpy_reference(2.0, &[1.0, 1.0, 1.0], &mut y).unwrap();
        assert_eq!(y, vec![3.0, 4.0, 5.0]);
        let mut empty: Vec<f32> = Vec::new();
        axpy_reference(2.0, &[], &mut empty).unwrap();
        assert!(axpy_reference(1.0, &[1.0], &mut [1.0, 2.0]).is_err());
    }

    proptest! {
        #[test]
        fn axpy_is_fused_multiply_add(a in -1e3f32..1e3, xs in prop::collection::vec(-1e3f32..1e3, 0..257)) {
            let mut y: Vec<f32> = xs.iter().map(|v| v * 0.5).collect();
            let expect: Vec<f32> = xs.iter().zip(&y).map(|(x, y)| a.mul_add(*x, *y)).collect();
            axpy_reference(a, &xs, &mut y).unwrap();
            prop_assert_eq!(y, expect);
        }
    }
}
