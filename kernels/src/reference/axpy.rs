//! `axpy`: `y <- a * x + y`.

use super::same_length;
use crate::KernelError;

/// `y <- a * x + y`, element by element, each as one fused multiply-add (`fmaf` on the GPU),
/// so the kernel gives the very same bits.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    same_length(x.len(), y.len())?;
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
        axpy(2.0, &[1.0, 1.0, 1.0], &mut y).unwrap();
        assert_eq!(y, vec![3.0, 4.0, 5.0]);
        let mut empty: Vec<f32> = Vec::new();
        axpy(2.0, &[], &mut empty).unwrap();
    }

    #[test]
    fn axpy_refuses_unequal_lengths() {
        assert_eq!(
            axpy(1.0, &[1.0], &mut [1.0, 2.0]),
            Err(KernelError::LengthMismatch { x: 1, y: 2 })
        );
    }

    proptest! {
        #[test]
        fn axpy_is_fused_multiply_add(a in -1e3f32..1e3, xs in prop::collection::vec(-1e3f32..1e3, 0..257)) {
            let mut y: Vec<f32> = xs.iter().map(|v| v * 0.5).collect();
            let expect: Vec<f32> = xs.iter().zip(&y).map(|(x, y)| a.mul_add(*x, *y)).collect();
            axpy(a, &xs, &mut y).unwrap();
            prop_assert_eq!(y, expect);
        }
    }
}
