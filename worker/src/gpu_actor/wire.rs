//! What travels to and from the GPU actor: host data, launch arguments, and what it reports.

use ember_kernels::{Backend, Element, ElementType, ElementVec, LaunchGeometry};
use half::{bf16, f16};
use rkyv::{Archive, Deserialize, Serialize};

use super::GpuActorError;

/// The element type of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
pub enum BufferElement {
    /// `f32`.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl From<ElementType> for BufferElement {
    fn from(element: ElementType) -> Self {
        match element {
            ElementType::F32 => BufferElement::F32,
            ElementType::F16 => BufferElement::F16,
            ElementType::Bf16 => BufferElement::Bf16,
        }
    }
}

impl From<BufferElement> for ElementType {
    fn from(element: BufferElement) -> Self {
        match element {
            BufferElement::F32 => ElementType::F32,
            BufferElement::F16 => ElementType::F16,
            BufferElement::Bf16 => ElementType::Bf16,
        }
    }
}

/// Elements on their way to or from a GPU actor's buffer; f16 and bf16 travel as their bits.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub enum HostData {
    /// f32 elements.
    F32(Vec<f32>),
    /// The bits of IEEE half-precision elements.
    F16(Vec<u16>),
    /// The bits of bfloat16 elements.
    Bf16(Vec<u16>),
}

impl HostData {
    /// The element type.
    pub fn element(&self) -> BufferElement {
        match self {
            HostData::F32(_) => BufferElement::F32,
            HostData::F16(_) => BufferElement::F16,
            HostData::Bf16(_) => BufferElement::Bf16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F16(v) | HostData::Bf16(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as `T`, or [`GpuActorError::ElementType`] when they are of another type.
    pub fn into_vec<T: Element>(self) -> Result<Vec<T>, GpuActorError> {
        let elements = ElementVec::from(self);
        let actual = elements.element();
        T::from_vec(elements).ok_or_else(|| GpuActorError::ElementType {
            requested: T::TYPE.name().to_owned(),
            actual: actual.name().to_owned(),
        })
    }
}

impl From<ElementVec> for HostData {
    fn from(elements: ElementVec) -> Self {
        match elements {
            ElementVec::F32(v) => HostData::F32(v),
            ElementVec::F16(v) => HostData::F16(v.into_iter().map(f16::to_bits).collect()),
            ElementVec::Bf16(v) => HostData::Bf16(v.into_iter().map(bf16::to_bits).collect()),
        }
    }
}

impl From<HostData> for ElementVec {
    fn from(data: HostData) -> Self {
        match data {
            HostData::F32(v) => ElementVec::F32(v),
            HostData::F16(v) => ElementVec::F16(v.into_iter().map(f16::from_bits).collect()),
            HostData::Bf16(v) => ElementVec::Bf16(v.into_iter().map(bf16::from_bits).collect()),
        }
    }
}

impl<T: Element> From<&[T]> for HostData {
    fn from(elements: &[T]) -> Self {
        ElementVec::copy_of(T::slice(elements)).into()
    }
}

impl<T: Element> From<Vec<T>> for HostData {
    fn from(elements: Vec<T>) -> Self {
        HostData::from(elements.as_slice())
    }
}

/// One argument of a kernel launched on a GPU actor.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub enum LaunchArg {
    /// The actor's buffer of this name.
    Buffer(String),
    /// An `f32` scalar.
    F32(f32),
    /// A `u32` scalar (lengths and shapes).
    U32(u32),
}

impl LaunchArg {
    /// The buffer named `name`.
    pub fn buffer(name: impl Into<String>) -> LaunchArg {
        LaunchArg::Buffer(name.into())
    }
}

impl From<f32> for LaunchArg {
    fn from(value: f32) -> Self {
        LaunchArg::F32(value)
    }
}

impl From<u32> for LaunchArg {
    fn from(value: u32) -> Self {
        LaunchArg::U32(value)
    }
}

/// Grid, block and dynamic shared memory of a user kernel launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct LaunchShape {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Bytes of dynamic shared memory per block.
    pub shared_mem_bytes: u32,
}

impl From<LaunchGeometry> for LaunchShape {
    fn from(g: LaunchGeometry) -> Self {
        LaunchShape {
            grid: [g.grid.0, g.grid.1, g.grid.2],
            block: [g.block.0, g.block.1, g.block.2],
            shared_mem_bytes: g.shared_mem_bytes,
        }
    }
}

impl From<LaunchShape> for LaunchGeometry {
    fn from(s: LaunchShape) -> Self {
        LaunchGeometry {
            grid: (s.grid[0], s.grid[1], s.grid[2]),
            block: (s.block[0], s.block[1], s.block[2]),
            shared_mem_bytes: s.shared_mem_bytes,
        }
    }
}

/// One buffer of a GPU actor.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct BufferInfo {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub element: BufferElement,
    /// Number of elements.
    pub len: u64,
    /// Bytes it takes on the device.
    pub bytes: u64,
}

/// A user kernel compiled on a GPU actor.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct UserKernelInfo {
    /// Its entry point, the name to launch it by.
    pub entry: String,
    /// Whether its PTX came from the worker's on-disk cache rather than a fresh compile.
    pub from_cache: bool,
}

/// What a GPU actor runs on and holds.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct GpuInfo {
    /// The CUDA ordinal (within the actor's `CUDA_VISIBLE_DEVICES`) its kernels run on, or
    /// `None` when they run their CPU references.
    pub cuda_ordinal: Option<u32>,
    /// The GPU's name, e.g. `NVIDIA H100 80GB HBM3`; `None` on the CPU.
    pub device_name: Option<String>,
    /// Why a real GPU was not used, when the actor was given one but runs on the CPU.
    pub cpu_fallback_reason: Option<String>,
    /// Bytes of buffers held now.
    pub memory_in_use: u64,
    /// The most it may hold: its `gpu_memory` share, if it reserved one.
    pub memory_limit: Option<u64>,
    /// Its buffers, by name.
    pub buffers: Vec<BufferInfo>,
    /// The entry points of its compiled user kernels, sorted.
    pub user_kernels: Vec<String>,
}

impl GpuInfo {
    /// The backend its kernels run on.
    pub fn backend(&self) -> Backend {
        match self.cuda_ordinal {
            Some(ordinal) => Backend::Cuda {
                ordinal: ordinal as usize,
            },
            None => Backend::Cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_travels_as_its_bits() {
        let halves = vec![f16::from_f32(1.5), f16::NAN, f16::NEG_INFINITY];
        let data = HostData::from(halves.clone());
        assert_eq!(data.element(), BufferElement::F16);
        assert_eq!(data.len(), 3);
        let back: Vec<f16> = data.clone().into_vec().unwrap();
        assert_eq!(
            back.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
            halves.iter().map(|h| h.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            data.into_vec::<f32>(),
            Err(GpuActorError::ElementType {
                requested: "f32".into(),
                actual: "f16".into()
            })
        );
        let brains = HostData::from(&[bf16::from_f32(-2.0)][..]);
        assert_eq!(
            ElementVec::from(brains),
            ElementVec::Bf16(vec![bf16::from_f32(-2.0)])
        );
    }

    #[test]
    fn launch_shapes_convert_both_ways() {
        let geometry = LaunchGeometry::covering(1000, 256);
        let shape = LaunchShape::from(geometry);
        assert_eq!(shape.grid, [4, 1, 1]);
        assert_eq!(LaunchGeometry::from(shape), geometry);
    }
}
