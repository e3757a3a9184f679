//! The element types a collective operation moves and combines. What combining does to each
//! type is defined once, by `ember_kernels::reference::combine`, which a device's combining
//! kernels match bit for bit.

use ember_core::collective::schedule::Order;
use ember_core::collective::{DType, ReduceOp};
use ember_kernels::reference::{self, Combinable, CombineOp, Operands};
use half::{bf16, f16};

/// A type whose buffers collective operations take: plain bytes on the wire (little-endian,
/// as on every machine Ember runs on), combined element by element as [`Combinable`] says.
pub trait Element: Combinable + bytemuck::Pod {
    /// Its wire type.
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for f64 {
    const DTYPE: DType = DType::F64;
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for i64 {
    const DTYPE: DType = DType::I64;
}

/// How `op` combines two elements. `Mean` sums; its division is a separate step of the plan.
pub(crate) fn combine_op(op: ReduceOp) -> CombineOp {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => CombineOp::Sum,
        ReduceOp::Product => CombineOp::Product,
        ReduceOp::Min => CombineOp::Min,
        ReduceOp::Max => CombineOp::Max,
    }
}

/// The plan's operand order, as the combining functions name it.
pub(crate) fn operands(order: Order) -> Operands {
    match order {
        Order::LocalFirst => Operands::AccumulatorFirst,
        Order::IncomingFirst => Operands::IncomingFirst,
    }
}

/// Combines `incoming` into `local` with `op`, the operands in `order`, on the host.
pub(crate) fn reduce<T: Element>(op: ReduceOp, order: Order, local: &mut [T], incoming: &[T]) {
    reference::combine(combine_op(op), operands(order), local, incoming);
}

/// Divides every element by `n` (the last step of a mean), on the host.
pub(crate) fn divide<T: Element>(values: &mut [T], n: usize) {
    reference::divide(values, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_order_and_operation_reach_the_combining() {
        // Min keeps its first operand unless the second is smaller: with a NaN first, the
        // order decides what survives.
        let mut local = [f32::NAN, 1.0];
        reduce(ReduceOp::Min, Order::LocalFirst, &mut local, &[0.0, 0.5]);
        assert!(local[0].is_nan());
        assert_eq!(local[1], 0.5);
        let mut local = [f32::NAN];
        reduce(ReduceOp::Min, Order::IncomingFirst, &mut local, &[0.0]);
        assert_eq!(local[0], 0.0);
        // A mean sums; the plan divides afterwards.
        let mut local = [3i64, 4];
        reduce(ReduceOp::Mean, Order::LocalFirst, &mut local, &[4, 4]);
        divide(&mut local, 2);
        assert_eq!(local, [3, 4]);
        let mut local = [2i32];
        reduce(ReduceOp::Product, Order::IncomingFirst, &mut local, &[-3]);
        assert_eq!(local, [-6]);
    }
}
