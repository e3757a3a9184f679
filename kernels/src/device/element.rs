//! The element types a device buffer can hold: f32, f16 and bf16.

use crate::reference::Combinable;
use crate::{ArgKind, KernelError};
use half::{bf16, f16};

/// The element type of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// `f32`.
    F32,
    /// IEEE half precision, `half::f16`.
    F16,
    /// bfloat16, `half::bf16`.
    Bf16,
}

impl ElementType {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            ElementType::F32 => 4,
            ElementType::F16 | ElementType::Bf16 => 2,
        }
    }

    /// The name used in errors, e.g. `f32`.
    pub fn name(self) -> &'static str {
        match self {
            ElementType::F32 => "f32",
            ElementType::F16 => "f16",
            ElementType::Bf16 => "bf16",
        }
    }

    /// The argument kind of a buffer of this type.
    pub fn buffer_kind(self) -> ArgKind {
        match self {
            ElementType::F32 => ArgKind::F32Buf,
            ElementType::F16 => ArgKind::F16Buf,
            ElementType::Bf16 => ArgKind::Bf16Buf,
        }
    }
}

/// Borrowed host data of one element type, on its way to a device.
#[derive(Debug, Clone, Copy)]
pub enum ElementSlice<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    Bf16(&'a [bf16]),
}

impl ElementSlice<'_> {
    /// Its element type.
    pub fn element(&self) -> ElementType {
        match self {
            ElementSlice::F32(_) => ElementType::F32,
            ElementSlice::F16(_) => ElementType::F16,
            ElementSlice::Bf16(_) => ElementType::Bf16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ElementSlice::F32(v) => v.len(),
            ElementSlice::F16(v) => v.len(),
            ElementSlice::Bf16(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Borrowed host memory of one element type, for a device to copy into.
#[derive(Debug)]
pub enum ElementSliceMut<'a> {
    /// f32 elements.
    F32(&'a mut [f32]),
    /// f16 elements.
    F16(&'a mut [f16]),
    /// bf16 elements.
    Bf16(&'a mut [bf16]),
}

impl ElementSliceMut<'_> {
    /// Its element type.
    pub fn element(&self) -> ElementType {
        match self {
            ElementSliceMut::F32(_) => ElementType::F32,
            ElementSliceMut::F16(_) => ElementType::F16,
            ElementSliceMut::Bf16(_) => ElementType::Bf16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ElementSliceMut::F32(v) => v.len(),
            ElementSliceMut::F16(v) => v.len(),
            ElementSliceMut::Bf16(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Owned host data of one element type: what a CPU buffer holds and a download returns.
#[derive(Debug, Clone, PartialEq)]
pub enum ElementVec {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    Bf16(Vec<bf16>),
}

impl ElementVec {
    /// `len` zeros of `element`, or [`KernelError::HostMemory`] when the host cannot give
    /// the memory.
    pub fn try_zeros(element: ElementType, len: usize) -> Result<ElementVec, KernelError> {
        fn zeros<T: Clone>(zero: T, len: usize) -> Result<Vec<T>, KernelError> {
            let mut data = Vec::new();
            data.try_reserve_exact(len)
                .map_err(|_| KernelError::HostMemory {
                    requested: (len as u64).saturating_mul(std::mem::size_of::<T>() as u64),
                })?;
            data.resize(len, zero);
            Ok(data)
        }
        Ok(match element {
            ElementType::F32 => ElementVec::F32(zeros(0.0, len)?),
            ElementType::F16 => ElementVec::F16(zeros(f16::ZERO, len)?),
            ElementType::Bf16 => ElementVec::Bf16(zeros(bf16::ZERO, len)?),
        })
    }

    /// A copy of `slice`.
    pub fn copy_of(slice: ElementSlice<'_>) -> ElementVec {
        match slice {
            ElementSlice::F32(v) => ElementVec::F32(v.to_vec()),
            ElementSlice::F16(v) => ElementVec::F16(v.to_vec()),
            ElementSlice::Bf16(v) => ElementVec::Bf16(v.to_vec()),
        }
    }

    /// The elements, borrowed.
    pub fn as_slice(&self) -> ElementSlice<'_> {
        match self {
            ElementVec::F32(v) => ElementSlice::F32(v),
            ElementVec::F16(v) => ElementSlice::F16(v),
            ElementVec::Bf16(v) => ElementSlice::Bf16(v),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its element type.
    pub fn element(&self) -> ElementType {
        match self {
            ElementVec::F32(_) => ElementType::F32,
            ElementVec::F16(_) => ElementType::F16,
            ElementVec::Bf16(_) => ElementType::Bf16,
        }
    }
}

mod sealed {
    /// Keeps [`super::Element`] to the three types the kernels take.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A type a device buffer can hold: `f32`, `half::f16` or `half::bf16`.
pub trait Element: sealed::Sealed + Combinable + Copy + Sized + 'static {
    /// Its [`ElementType`].
    const TYPE: ElementType;
    /// `data` as an [`ElementSlice`].
    fn slice(data: &[Self]) -> ElementSlice<'_>;
    /// `data` as an [`ElementSliceMut`].
    fn slice_mut(data: &mut [Self]) -> ElementSliceMut<'_>;
    /// The elements of `data` when it holds this type.
    fn from_vec(data: ElementVec) -> Option<Vec<Self>>;
    /// The elements of `data` when it holds this type.
    fn as_slice(data: &ElementVec) -> Option<&[Self]>;
    /// The elements of `data` when it holds this type.
    fn as_mut_slice(data: &mut ElementVec) -> Option<&mut [Self]>;
}

macro_rules! element {
    ($ty:ty, $variant:ident) => {
        impl Element for $ty {
            const TYPE: ElementType = ElementType::$variant;
            fn slice(data: &[Self]) -> ElementSlice<'_> {
                ElementSlice::$variant(data)
            }
            fn slice_mut(data: &mut [Self]) -> ElementSliceMut<'_> {
                ElementSliceMut::$variant(data)
            }
            fn from_vec(data: ElementVec) -> Option<Vec<Self>> {
                match data {
                    ElementVec::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn as_slice(data: &ElementVec) -> Option<&[Self]> {
                match data {
                    ElementVec::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn as_mut_slice(data: &mut ElementVec) -> Option<&mut [Self]> {
                match data {
                    ElementVec::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

element!(f32, F32);
element!(f16, F16);
element!(bf16, Bf16);
