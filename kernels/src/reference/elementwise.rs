//! Element-wise `add`, `mul` and `scale`: one IEEE operation per element, so exact.

use super::same_length;
use crate::KernelError;

/// `out[i] = x[i] + y[i]`.
pub fn add(x: &[f32], y: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    binary(x, y, out, |a, b| a + b)
}

/// `out[i] = x[i] * y[i]`.
pub fn mul(x: &[f32], y: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    binary(x, y, out, |a, b| a * b)
}

/// `out[i] = a * x[i]`.
pub fn scale(a: f32, x: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    same_length(x.len(), out.len())?;
    for (o, xi) in out.iter_mut().zip(x) {
        *o = a * xi;
    }
    Ok(())
}

fn binary(
    x: &[f32],
    y: &[f32],
    out: &mut [f32],
    op: impl Fn(f32, f32) -> f32,
) -> Result<(), KernelError> {
    same_length(x.len(), y.len())?;
    same_length(x.len(), out.len())?;
    for ((o, a), b) in out.iter_mut().zip(x).zip(y) {
        *o = op(*a, *b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        (0usize..300).prop_flat_map(|n| {
            (
                prop::collection::vec(-1e6f32..1e6, n),
                prop::collection::vec(-1e6f32..1e6, n),
            )
        })
    }

    #[test]
    fn shapes_are_checked() {
        let mut out = [0.0; 2];
        assert!(add(&[1.0, 2.0], &[1.0], &mut out).is_err());
        assert!(mul(&[1.0, 2.0], &[1.0, 2.0], &mut [0.0]).is_err());
        assert!(scale(2.0, &[1.0], &mut out).is_err());
    }

    proptest! {
        #[test]
        fn add_is_exact((x, y) in pair()) {
            let mut out = vec![f32::NAN; x.len()];
            add(&x, &y, &mut out).unwrap();
            for i in 0..x.len() {
                prop_assert_eq!(out[i].to_bits(), (x[i] + y[i]).to_bits());
            }
        }

        #[test]
        fn mul_is_exact((x, y) in pair()) {
            let mut out = vec![f32::NAN; x.len()];
            mul(&x, &y, &mut out).unwrap();
            for i in 0..x.len() {
                prop_assert_eq!(out[i].to_bits(), (x[i] * y[i]).to_bits());
            }
        }

        #[test]
        fn scale_is_exact(a in -1e3f32..1e3, x in prop::collection::vec(-1e6f32..1e6, 0..300)) {
            let mut out = vec![f32::NAN; x.len()];
            scale(a, &x, &mut out).unwrap();
            for i in 0..x.len() {
                prop_assert_eq!(out[i].to_bits(), (a * x[i]).to_bits());
            }
        }
    }
}
