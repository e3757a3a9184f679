//! The kinds of value a kernel argument can be.

use std::fmt;

/// The kind of one kernel argument: a device buffer of some element type, or a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgKind {
    /// A buffer of `f32`.
    F32Buf,
    /// A buffer of IEEE half precision (`half::f16`).
    F16Buf,
    /// A buffer of bfloat16 (`half::bf16`).
    Bf16Buf,
    /// An `f32` scalar.
    F32,
    /// A `u32` scalar (lengths and shapes).
    U32,
}

impl ArgKind {
    /// Whether this kind is a buffer (as opposed to a scalar).
    pub fn is_buffer(self) -> bool {
        matches!(self, ArgKind::F32Buf | ArgKind::F16Buf | ArgKind::Bf16Buf)
    }

    /// The name used in signatures and errors, e.g. `f32[]` or `u32`.
    pub fn name(self) -> &'static str {
        match self {
            ArgKind::F32Buf => "f32[]",
            ArgKind::F16Buf => "f16[]",
            ArgKind::Bf16Buf => "bf16[]",
            ArgKind::F32 => "f32",
            ArgKind::U32 => "u32",
        }
    }
}

impl fmt::Display for ArgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
