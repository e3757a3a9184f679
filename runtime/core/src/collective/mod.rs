//! Collective operations, the pure part: the element types and operations, and the schedule
//! every rank follows for each operation ([`schedule`]). The head's table of groups lives in
//! `ember-head-state`.
//!
//! The engine that moves the bytes lives in `ember-worker`; it only interprets the plans made
//! here. A plan is a fixed function of the group size, the rank, the buffer's length and the
//! operation, never of timing, which is what makes every rank end with the same bits.

pub mod schedule;

use rkyv::{Archive, Deserialize, Serialize};

/// The element types a collective operation works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
pub enum DType {
    /// IEEE 754 binary16.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
    /// Signed 32-bit integers.
    I32,
    /// Signed 64-bit integers.
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::I64 => "i64",
        })
    }
}

/// How the ranks' values are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
pub enum ReduceOp {
    /// The sum (integers wrap on overflow).
    Sum,
    /// The sum divided by the number of ranks (integers: the quotient, rounded toward zero).
    Mean,
    /// The smallest value.
    Min,
    /// The largest value.
    Max,
    /// The product (integers wrap on overflow).
    Product,
}

impl std::fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
            ReduceOp::Product => "product",
        })
    }
}
