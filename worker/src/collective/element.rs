//! The element types a collective operation moves and combines, and how each is combined.

use ember_runtime::collective::schedule::Order;
use ember_runtime::collective::{DType, ReduceOp};
use half::{bf16, f16};

/// A type whose buffers collective operations take: plain bytes on the wire (little-endian,
/// as on every machine Ember runs on), combined element by element.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// Its wire type.
    const DTYPE: DType;
    /// `a + b` (integers wrap).
    fn add(a: Self, b: Self) -> Self;
    /// `a · b` (integers wrap).
    fn mul(a: Self, b: Self) -> Self;
    /// The smaller; for floats, `a` unless `b < a` (so a NaN in `a` stays).
    fn min(a: Self, b: Self) -> Self;
    /// The larger; for floats, `a` unless `b > a`.
    fn max(a: Self, b: Self) -> Self;
    /// `self / n`: a float divided by `n`, an integer's quotient rounded toward zero.
    fn divide(self, n: usize) -> Self;
}

macro_rules! float {
    ($t:ty, $d:expr, $div:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
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

float!(f32, DType::F32, |x, n| x / n as f32);
float!(f64, DType::F64, |x, n| x / n as f64);
float!(f16, DType::F16, |x, n| f16::from_f32(x.to_f32() / n as f32));
float!(bf16, DType::BF16, |x, n| bf16::from_f32(
    x.to_f32() / n as f32
));

macro_rules! integer {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
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

integer!(i32, DType::I32);
integer!(i64, DType::I64);

/// Combines `incoming` into `local` with `op`, the operands in `order`. `Mean` sums here; its
/// division is a separate step of the plan.
pub(crate) fn reduce<T: Element>(op: ReduceOp, order: Order, local: &mut [T], incoming: &[T]) {
    #[inline(always)]
    fn apply<T: Element>(
        local: &mut [T],
        incoming: &[T],
        first_incoming: bool,
        f: impl Fn(T, T) -> T,
    ) {
        if first_incoming {
            for (l, &x) in local.iter_mut().zip(incoming) {
                *l = f(x, *l);
            }
        } else {
            for (l, &x) in local.iter_mut().zip(incoming) {
                *l = f(*l, x);
            }
        }
    }
    let first_incoming = order == Order::IncomingFirst;
    // One monomorphic loop per operation, so each one vectorises.
    match op {
        ReduceOp::Sum | ReduceOp::Mean => apply(local, incoming, first_incoming, T::add),
        ReduceOp::Product => apply(local, incoming, first_incoming, T::mul),
        ReduceOp::Min => apply(local, incoming, first_incoming, T::min),
        ReduceOp::Max => apply(local, incoming, first_incoming, T::max),
    }
}

/// Divides every element by `n` (the last step of a mean).
pub(crate) fn divide<T: Element>(values: &mut [T], n: usize) {
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
        let mut local = [1.0f32, 5.0];
        reduce(ReduceOp::Sum, Order::LocalFirst, &mut local, &[2.0, 3.0]);
        assert_eq!(local, [3.0, 8.0]);
        let mut local = [f32::NAN, 1.0];
        reduce(ReduceOp::Min, Order::LocalFirst, &mut local, &[0.0, 0.5]);
        assert!(local[0].is_nan());
        assert_eq!(local[1], 0.5);
        let mut local = [f32::NAN];
        reduce(ReduceOp::Min, Order::IncomingFirst, &mut local, &[0.0]);
        assert_eq!(local[0], 0.0);
    }

    #[test]
    fn integers_wrap_and_divide_toward_zero() {
        let mut local = [i32::MAX, -7];
        reduce(ReduceOp::Sum, Order::LocalFirst, &mut local, &[1, 0]);
        assert_eq!(local, [i32::MIN, -7]);
        divide(&mut local[1..], 2);
        assert_eq!(local[1], -3);
        let mut p = [3i64];
        reduce(ReduceOp::Product, Order::IncomingFirst, &mut p, &[-4]);
        assert_eq!(p, [-12]);
    }

    #[test]
    fn half_precision_means_round_once() {
        let mut v = [f16::from_f32(3.0), f16::from_f32(1.0)];
        divide(&mut v, 2);
        assert_eq!(v, [f16::from_f32(1.5), f16::from_f32(0.5)]);
        assert_eq!(
            <bf16 as Element>::divide(bf16::from_f32(1.0), 3),
            bf16::from_f32(1.0 / 3.0)
        );
    }
}
