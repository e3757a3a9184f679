//! The device buffers of one CUDA handle, by id, and borrowing them for a launch.

use crate::device::{BufferId, Element};
use crate::KernelError;
use cudarc::driver::{CudaSlice, CudaStream, DriverError};
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// One device allocation, typed.
pub(crate) enum CudaData {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    Bf16(CudaSlice<bf16>),
}

impl CudaData {
    pub(crate) fn element_name(&self) -> &'static str {
        match self {
            CudaData::F32(_) => "f32",
            CudaData::F16(_) => "f16",
            CudaData::Bf16(_) => "bf16",
        }
    }

    /// Sets every element to zero.
    pub(crate) fn fill_zero(&mut self, stream: &Arc<CudaStream>) -> Result<(), KernelError> {
        let result = match self {
            CudaData::F32(s) if !s.is_empty() => stream.memset_zeros(s),
            CudaData::F16(s) if !s.is_empty() => stream.memset_zeros(s),
            CudaData::Bf16(s) if !s.is_empty() => stream.memset_zeros(s),
            _ => Ok(()),
        };
        result.map_err(|error: DriverError| KernelError::Cuda {
            operation: "cuMemsetD8",
            message: format!("{error:?}"),
        })
    }
}

/// Buffers by id.
pub(crate) type BufferMap = HashMap<BufferId, CudaData>;

/// Read access to the buffers a launch takes as inputs.
pub(crate) trait Inputs {
    fn f32(&self, id: BufferId) -> Result<&CudaSlice<f32>, KernelError>;
    fn f16(&self, id: BufferId) -> Result<&CudaSlice<f16>, KernelError>;
    fn bf16(&self, id: BufferId) -> Result<&CudaSlice<bf16>, KernelError>;
}

fn typed<'m, T: Element, S>(
    map: &'m BufferMap,
    id: BufferId,
    pick: impl Fn(&'m CudaData) -> Option<&'m S>,
) -> Result<&'m S, KernelError> {
    let data = map
        .get(&id)
        .ok_or(KernelError::ForeignBuffer { id: id.0 })?;
    pick(data).ok_or(KernelError::ElementType {
        requested: T::TYPE.name(),
        actual: data.element_name(),
    })
}

impl Inputs for BufferMap {
    fn f32(&self, id: BufferId) -> Result<&CudaSlice<f32>, KernelError> {
        typed::<f32, _>(self, id, |d| match d {
            CudaData::F32(s) => Some(s),
            _ => None,
        })
    }
    fn f16(&self, id: BufferId) -> Result<&CudaSlice<f16>, KernelError> {
        typed::<f16, _>(self, id, |d| match d {
            CudaData::F16(s) => Some(s),
            _ => None,
        })
    }
    fn bf16(&self, id: BufferId) -> Result<&CudaSlice<bf16>, KernelError> {
        typed::<bf16, _>(self, id, |d| match d {
            CudaData::Bf16(s) => Some(s),
            _ => None,
        })
    }
}

/// The buffer map behind a lock.
#[derive(Default)]
pub(crate) struct CudaBuffers {
    map: Mutex<BufferMap>,
}

impl CudaBuffers {
    pub(crate) fn lock(&self) -> MutexGuard<'_, BufferMap> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, id: BufferId, data: CudaData) {
        self.lock().insert(id, data);
    }

    pub(crate) fn remove(&self, id: BufferId) -> Option<CudaData> {
        self.lock().remove(&id)
    }

    /// Takes output buffer `id` out of the map while `write` launches into it with the
    /// inputs left in the map, then puts it back (also on error).
    pub(crate) fn with_output_data(
        &self,
        id: BufferId,
        write: impl FnOnce(&BufferMap, &mut CudaData) -> Result<(), KernelError>,
    ) -> Result<(), KernelError> {
        let mut map = self.lock();
        let mut output = map
            .remove(&id)
            .ok_or(KernelError::ForeignBuffer { id: id.0 })?;
        let result = write(&map, &mut output);
        map.insert(id, output);
        result
    }

    /// [`CudaBuffers::with_output_data`] for an f32 output.
    pub(crate) fn with_output<T: Element>(
        &self,
        id: BufferId,
        write: impl FnOnce(&BufferMap, &mut CudaSlice<f32>) -> Result<(), KernelError>,
    ) -> Result<(), KernelError> {
        self.with_output_data(id, |map, output| match output {
            CudaData::F32(out) => write(map, out),
            other => Err(KernelError::ElementType {
                requested: T::TYPE.name(),
                actual: other.element_name(),
            }),
        })
    }
}
