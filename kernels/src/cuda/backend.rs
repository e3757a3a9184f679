//! The CUDA backend of [`crate::Device`]: one device's context, stream, buffers and the
//! modules compiled for it. Launches live beside it: `registered.rs` (the registry's NVRTC
//! kernels), `cublas.rs` (matmul) and `user_kernels.rs`.

use super::device_buffers::{CudaBuffers, CudaData};
use super::nvrtc::{registered_kernel_options, Nvrtc};
use super::presence::{guarded, require, CudaLibrary};
use crate::cache::{CompileRequest, KernelCache};
use crate::device::{BufferId, ElementSlice, ElementType, ElementVec};
use crate::sources::CudaSource;
use crate::KernelError;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Maps a driver error to [`KernelError::Cuda`] naming the call.
pub(super) fn driver(operation: &'static str) -> impl Fn(DriverError) -> KernelError {
    move |error| KernelError::Cuda {
        operation,
        message: format!("{error:?}"),
    }
}

/// Locks `mutex`, going on with the data if a panic poisoned it.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One CUDA device, its stream, loaded modules and buffers.
pub(crate) struct CudaBackend {
    ordinal: usize,
    name: String,
    arch: String,
    pub(super) context: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    cache: KernelCache,
    modules: Mutex<HashMap<CudaSource, Arc<CudaModule>>>,
    pub(super) blas: Mutex<Option<Arc<CudaBlas>>>,
    pub(super) buffers: CudaBuffers,
}

impl CudaBackend {
    /// Opens device `ordinal`: checks the driver library first, so a machine without CUDA
    /// gets [`KernelError::NoCuda`] and no panic.
    pub(crate) fn open(ordinal: usize, cache: KernelCache) -> Result<CudaBackend, KernelError> {
        require(CudaLibrary::Driver)?;
        guarded("cuInit", || {
            let no_device = |error: DriverError| KernelError::NoCuda {
                reason: format!("the CUDA driver found no usable device: {error:?}"),
            };
            let count = CudaContext::device_count().map_err(no_device)?;
            if ordinal >= usize::try_from(count).unwrap_or(0) {
                return Err(KernelError::NoCuda {
                    reason: format!("no CUDA device {ordinal}: {count} visible"),
                });
            }
            let context = CudaContext::new(ordinal).map_err(driver("cuCtxCreate"))?;
            let name = context.name().map_err(driver("cuDeviceGetName"))?;
            let (major, minor) = context
                .compute_capability()
                .map_err(driver("cuDeviceGetAttribute"))?;
            let stream = context.default_stream();
            Ok(CudaBackend {
                ordinal,
                name,
                arch: format!("sm_{major}{minor}"),
                context,
                stream,
                cache,
                modules: Mutex::new(HashMap::new()),
                blas: Mutex::new(None),
                buffers: CudaBuffers::default(),
            })
        })
    }

    pub(crate) fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Bytes the device reports free.
    pub(crate) fn free_memory(&self) -> Result<u64, KernelError> {
        guarded("cuMemGetInfo", || {
            let (free, _total) = self
                .context
                .mem_get_info()
                .map_err(driver("cuMemGetInfo"))?;
            Ok(free as u64)
        })
    }

    pub(crate) fn alloc_zeroed(
        &self,
        id: BufferId,
        element: ElementType,
        len: usize,
    ) -> Result<(), KernelError> {
        let data = guarded("cuMemAlloc", || match element {
            ElementType::F32 => Ok(CudaData::F32(self.zeros(len)?)),
            ElementType::F16 => Ok(CudaData::F16(self.zeros(len)?)),
            ElementType::Bf16 => Ok(CudaData::Bf16(self.zeros(len)?)),
        })?;
        self.buffers.insert(id, data);
        Ok(())
    }

    pub(crate) fn upload(&self, id: BufferId, data: ElementSlice<'_>) -> Result<(), KernelError> {
        let data = guarded("cuMemcpyHtoD", || match data {
            ElementSlice::F32(v) => Ok(CudaData::F32(self.copy_to_device(v)?)),
            ElementSlice::F16(v) => Ok(CudaData::F16(self.copy_to_device(v)?)),
            ElementSlice::Bf16(v) => Ok(CudaData::Bf16(self.copy_to_device(v)?)),
        })?;
        self.buffers.insert(id, data);
        Ok(())
    }

    pub(crate) fn download(&self, id: BufferId) -> Result<ElementVec, KernelError> {
        let buffers = self.buffers.lock();
        let data = buffers
            .get(&id)
            .ok_or(KernelError::ForeignBuffer { id: id.0 })?;
        guarded("cuMemcpyDtoH", || match data {
            CudaData::F32(s) => Ok(ElementVec::F32(self.copy_to_host(s)?)),
            CudaData::F16(s) => Ok(ElementVec::F16(self.copy_to_host(s)?)),
            CudaData::Bf16(s) => Ok(ElementVec::Bf16(self.copy_to_host(s)?)),
        })
    }

    pub(crate) fn free(&self, id: BufferId) {
        // Dropping the slice frees it (cudarc records a failure in the context, reported by
        // the next synchronize); a panic here must not escape a destructor.
        let _ = guarded("cuMemFree", || {
            drop(self.buffers.remove(id));
            Ok(())
        });
    }

    /// Copies buffer `src` into `dst` on the device (checked: one element type, one length).
    pub(crate) fn copy(&self, src: BufferId, dst: BufferId) -> Result<(), KernelError> {
        guarded("cuMemcpyDtoDAsync", || {
            self.buffers.with_output_data(dst, |map, out| {
                let data = map
                    .get(&src)
                    .ok_or(KernelError::ForeignBuffer { id: src.0 })?;
                match (data, out) {
                    (CudaData::F32(s), CudaData::F32(d)) => self.stream.memcpy_dtod(s, d),
                    (CudaData::F16(s), CudaData::F16(d)) => self.stream.memcpy_dtod(s, d),
                    (CudaData::Bf16(s), CudaData::Bf16(d)) => self.stream.memcpy_dtod(s, d),
                    (s, d) => {
                        return Err(KernelError::ElementType {
                            requested: d.element_name(),
                            actual: s.element_name(),
                        })
                    }
                }
                .map_err(driver("cuMemcpyDtoDAsync"))
            })
        })
    }

    pub(crate) fn synchronize(&self) -> Result<(), KernelError> {
        guarded("cuStreamSynchronize", || {
            self.stream
                .synchronize()
                .map_err(driver("cuStreamSynchronize"))?;
            self.context
                .check_err()
                .map_err(driver("a previous CUDA call"))
        })
    }

    pub(super) fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, KernelError> {
        if len == 0 {
            self.stream.null().map_err(driver("cuMemAlloc"))
        } else {
            self.stream.alloc_zeros(len).map_err(driver("cuMemAlloc"))
        }
    }

    fn copy_to_device<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, KernelError> {
        if data.is_empty() {
            self.stream.null().map_err(driver("cuMemAlloc"))
        } else {
            self.stream.clone_htod(data).map_err(driver("cuMemcpyHtoD"))
        }
    }

    fn copy_to_host<T: DeviceRepr>(&self, data: &CudaSlice<T>) -> Result<Vec<T>, KernelError> {
        if data.is_empty() {
            Ok(Vec::new())
        } else {
            self.stream.clone_dtoh(data).map_err(driver("cuMemcpyDtoH"))
        }
    }

    /// The loaded function `entry` of `source`, compiling (or loading from the cache) and
    /// loading the module on first use.
    pub(super) fn function(
        &self,
        source: CudaSource,
        entry: &str,
    ) -> Result<CudaFunction, KernelError> {
        let mut modules = lock(&self.modules);
        let module = match modules.get(&source) {
            Some(module) => Arc::clone(module),
            None => {
                let options = registered_kernel_options();
                let module = self
                    .compile_and_load(source.file_name(), source.text(), &options)?
                    .0;
                modules.insert(source, Arc::clone(&module));
                module
            }
        };
        module
            .load_function(entry)
            .map_err(driver("cuModuleGetFunction"))
    }

    /// PTX of `text` from the cache or NVRTC, loaded as a module; also says whether the PTX
    /// came from the cache.
    pub(super) fn compile_and_load(
        &self,
        source_name: &str,
        text: &str,
        options: &[String],
    ) -> Result<(Arc<CudaModule>, bool), KernelError> {
        let request = CompileRequest {
            source_name,
            source: text,
            options,
            arch: &self.arch,
        };
        let compiled = self.cache.get_or_compile(&Nvrtc, &request)?;
        let module = self
            .context
            .load_module(Ptx::from_src(compiled.ptx))
            .map_err(driver("cuModuleLoadData"))?;
        Ok((module, compiled.from_cache))
    }
}
