//! Element-wise combining of two buffers: the step a collective operation repeats (a
//! reduction across ranks is a chain of these, in an order its plan fixes).
//!
//! This is the one definition of what `sum`, `product`, `min`, `max` and a mean's division
//! do to each element type. Collectives on host buffers call it directly; the device
//! handle's [`crate::Device::combine`] runs it on the CPU backend and `cuda/combine.cu` on a
//! GPU, which does the same IEEE operations in the same order, so a GPU and the CPU give the
//! same bits (NaN payloads aside: a GPU returns its canonical NaN).

use half::{bf16, f16};

/// What combining two elements does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CombineOp {
    /// `a + b` (integers wrap).
    Sum,
    /// `a · b` (integers wrap).
    Product,
    /// The smaller; for floats, the first operand unless the second is smaller, so a NaN
    /// first stays.
    Min,
    /// The larger; for floats, the first operand unless the second is larger.
    Max,
}

/// Which operand comes first: it matters for floating-point rounding chains and for which
/// NaN survives a `min` or `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operands {
    /// `acc ⊕ incoming`.
    AccumulatorFirst,
    /// `incoming ⊕ acc`.
    IncomingFirst,
}

/// An element type that can be combined: f32, f64, f16, bf16, i32 and i64.
///
/// Half-precision values are combined in f32 and rounded once to nearest-even, which gives
/// the correctly rounded half-precision result (f32 has more than twice their precision).
pub trait Combinable: Copy + Send + Sync + 'static {
    /// `a + b` (integers wrap).
    fn add(a: Self, b: Self) -> Self;
    /// `a · b` (integers wrap).
    fn mul(a: Self, b: Self) -> Self;
    /// The smaller; for floats, `a` unless `b < a` (so a NaN in `a` stays).
    fn min(a: Self, b: Self) -> Self;
    /// The larger; for floats, `a` unless `b > a`.
    fn max(a: Self, b: Self) -> Self;
    /// `self / n`: a float divided by `n` (half precision in f32, rounded once), an
    /// integer's quotient rounded toward zero.
    fn divide(self, n: usize) -> Self;
}

macro_rules! float {
    ($t:ty, $div:expr) => {
        impl Combinable for $t {
            #[inline]
            fn add(a: Self, b: Self) -> Self {
                a + b
            }
            #[inline]
            fn mul(a: Self, b: Self) -> Self {
                a * b
            }
            #[inline]
            fn min(a: Self, b: Self) -> Self {
                if b < a {
                    b
                } else {
                    a
                }
            }
            #[inline]
            fn max(a: Self, b: Self) -> Self {
                if b > a {
                    b
                } else {
                    a
                }
            }
            #[inline]
            fn divide(self, n: usize) -> Self {
                let div: fn(Self, usize) -> Self = $div;
                div(self, n)
            }
        }
    };
}

float!(f32, |x, n| x / n as f32);
float!(f64, |x, n| x / n as f64);
float!(f16, |x, n| f16::from_f32(x.to_f32() / n as f32));
float!(bf16, |x, n| bf16::from_f32(x.to_f32() / n as f32));

macro_rules! integer {
    ($t:ty) => {
        impl Combinable for $t {
            #[inline]
            fn add(a: Self, b: Self) -> Self {
                a.wrapping_add(b)
            }
            #[inline]
            fn mul(a: Self, b: Self) -> Self {
                a.wrapping_mul(b)
            }
            #[inline]
            fn min(a: Self, b: Self) -> Self {
                Ord::min(a, b)
            }
            #[inline]
            fn max(a: Self, b: Self) -> Self {
                Ord::max(a, b)
            }
            #[inline]
            fn divide(self, n: usize) -> Self {
                self / n as $t
            }
        }
    };
}

integer!(i32);
integer!(i64);

/// Combines `incoming` into `acc` element by element with `op`, the operands in `operands`
/// order. Only the common length is combined; callers pass equal lengths.
#[inline]
pub fn combine<T: Combinable>(op: CombineOp, operands: Operands, acc: &mut [T], incoming: &[T]) {
    #[inline(always)]
    fn apply<T: Combinable>(
        acc: &mut [T],
        incoming: &[T],
        incoming_first: bool,
        f: impl Fn(T, T) -> T,
    ) {
        if incoming_first {
            for (a, &x) in acc.iter_mut().zip(incoming) {
                *a = f(x, *a);
            }
        } else {
            for (a, &x) in acc.iter_mut().zip(incoming) {
                *a = f(*a, x);
            }
        }
    }
    let incoming_first = operands == Operands::IncomingFirst;
    // One monomorphic loop per operation, so each one vectorises.
    match op {
        CombineOp::Sum => apply(acc, incoming, incoming_first, T::add),
        CombineOp::Product => apply(acc, incoming, incoming_first, T::mul),
        CombineOp::Min => apply(acc, incoming, incoming_first, T::min),
        CombineOp::Max => apply(acc, incoming, incoming_first, T::max),
    }
}

/// Divides every element by `n` (the last step of a mean).
#[inline]
pub fn divide<T: Combinable>(values: &mut [T], n: usize) {
    for v in values {
        *v = v.divide(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operand_order_is_respected() {
        // Min keeps its first operand unless the second is smaller: with a NaN, the order
        // decides what survives.
        let mut acc = [1.0f32, 5.0];
        combine(
            CombineOp::Sum,
            Operands::AccumulatorFirst,
            &mut acc,
            &[2.0, 3.0],
        );
        assert_eq!(acc, [3.0, 8.0]);
        let mut acc = [f32::NAN, 1.0];
        combine(
            CombineOp::Min,
            Operands::AccumulatorFirst,
            &mut acc,
            &[0.0, 0.5],
        );
        assert!(acc[0].is_nan());
        assert_eq!(acc[1], 0.5);
        let mut acc = [f32::NAN];
        combine(CombineOp::Min, Operands::IncomingFirst, &mut acc, &[0.0]);
        assert_eq!(acc[0], 0.0);
    }

    #[test]
    fn integers_wrap_and_divide_toward_zero() {
        let mut acc = [i32::MAX, -7];
        combine(
            CombineOp::Sum,
            Operands::AccumulatorFirst,
            &mut acc,
            &[1, 0],
        );
        assert_eq!(acc, [i32::MIN, -7]);
        divide(&mut acc[1..], 2);
        assert_eq!(acc[1], -3);
        let mut p = [3i64];
        combine(CombineOp::Product, Operands::IncomingFirst, &mut p, &[-4]);
        assert_eq!(p, [-12]);
    }

    #[test]
    fn half_precision_rounds_once_to_nearest_even() {
        let mut v = [f16::from_f32(3.0), f16::from_f32(1.0)];
        divide(&mut v, 2);
        assert_eq!(v, [f16::from_f32(1.5), f16::from_f32(0.5)]);
        assert_eq!(
            <bf16 as Combinable>::divide(bf16::from_f32(1.0), 3),
            bf16::from_f32(1.0 / 3.0)
        );
        // 2048 + 1 is halfway between the f16 neighbours 2048 and 2050: to even, 2048.
        let mut acc = [f16::from_f32(2048.0)];
        combine(
            CombineOp::Sum,
            Operands::AccumulatorFirst,
            &mut acc,
            &[f16::ONE],
        );
        assert_eq!(acc[0], f16::from_f32(2048.0));
        // 2050 + 1 is halfway between 2050 and 2052: to even, 2052.
        let mut acc = [f16::from_f32(2050.0)];
        combine(
            CombineOp::Sum,
            Operands::AccumulatorFirst,
            &mut acc,
            &[f16::ONE],
        );
        assert_eq!(acc[0], f16::from_f32(2052.0));
    }

    #[test]
    fn float_sums_depend_on_the_operand_order_only_through_rounding() {
        // (1e8 + 1) + -1e8 differs from 1 + (1e8 + -1e8): combining is not reordered.
        let mut acc = [1e8f32];
        combine(CombineOp::Sum, Operands::AccumulatorFirst, &mut acc, &[1.0]);
        combine(CombineOp::Sum, Operands::IncomingFirst, &mut acc, &[-1e8]);
        assert_eq!(acc[0], 0.0);
        let mut acc = [1e8f32];
        combine(
            CombineOp::Sum,
            Operands::AccumulatorFirst,
            &mut acc,
            &[-1e8],
        );
        combine(CombineOp::Sum, Operands::AccumulatorFirst, &mut acc, &[1.0]);
        assert_eq!(acc[0], 1.0);
    }
}
