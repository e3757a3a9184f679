//! The CUDA backend of [`crate::Device`]: device buffers, registered kernels compiled by
//! NVRTC through the on-disk cache, cuBLAS for matmul, and user kernels.

use super::device_buffers::{CudaBuffers, CudaData, Inputs};
use super::nvrtc::{registered_kernel_options, Nvrtc};
use super::presence::{guarded, require, CudaLibrary};
use crate::cache::{CompileRequest, KernelCache};
use crate::device::{
    BufferId, DeviceShared, ElementSlice, ElementType, ElementVec, Elementwise, KernelArg,
    LaunchGeometry, MatmulEngine, Operation, Reduction, UserKernel,
};
use crate::reference::{MatmulShape, REDUCE_BLOCK_THREADS, REDUCE_ITEMS_PER_THREAD};
use crate::registry::{Implementation, KernelSpec};
use crate::sources::CudaSource;
use crate::KernelError;
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Threads per block of the element-wise kernels.
const ELEMENTWISE_THREADS: u32 = 256;
/// Blocks at most in one element-wise or softmax launch (the kernels grid-stride past it).
const MAX_GRID_BLOCKS: u32 = 1 << 20;
/// Side of the tiled matmul's square tile (`EMBER_TILE` in `matmul_tiled.cu`).
const MATMUL_TILE: u32 = 16;
/// Elements one reduction block reduces.
const REDUCE_CHUNK: usize = REDUCE_BLOCK_THREADS * REDUCE_ITEMS_PER_THREAD;

fn driver(operation: &'static str) -> impl Fn(DriverError) -> KernelError {
    move |error| KernelError::Cuda {
        operation,
        message: format!("{error:?}"),
    }
}

/// The cuBLAS (column-major) configuration computing row-major `C[m x n] = A[m x k] . B[k x n]`
/// as `C^T = B^T . A^T`, with B passed as cuBLAS's first operand.
fn row_major_gemm<T>((m, k, n): (i32, i32, i32), one: T, zero: T) -> GemmConfig<T> {
    GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n,
        n: m,
        k,
        alpha: one,
        lda: n,
        ldb: k,
        beta: zero,
        ldc: n,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One CUDA device, its stream, loaded modules and buffers.
pub(crate) struct CudaBackend {
    ordinal: usize,
    name: String,
    arch: String,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    cache: KernelCache,
    modules: Mutex<HashMap<CudaSource, Arc<CudaModule>>>,
    blas: Mutex<Option<Arc<CudaBlas>>>,
    buffers: CudaBuffers,
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

    fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
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
    fn function(&self, source: CudaSource, entry: &str) -> Result<CudaFunction, KernelError> {
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
    fn compile_and_load(
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

    fn blas(&self) -> Result<Arc<CudaBlas>, KernelError> {
        require(CudaLibrary::Cublas)?;
        let mut blas = lock(&self.blas);
        if let Some(handle) = blas.as_ref() {
            return Ok(Arc::clone(handle));
        }
        let handle = Arc::new(CudaBlas::new(Arc::clone(&self.stream)).map_err(|error| {
            KernelError::Cuda {
                operation: "cublasCreate",
                message: format!("{error:?}"),
            }
        })?);
        *blas = Some(Arc::clone(&handle));
        Ok(handle)
    }

    /// Runs a checked launch of registered kernel `spec`.
    pub(crate) fn run(
        &self,
        spec: &KernelSpec,
        operation: &Operation,
        shared: &DeviceShared,
    ) -> Result<(), KernelError> {
        guarded("kernel launch", || {
            let function = match spec.implementation {
                Implementation::Nvrtc { source, entry } => Some(self.function(source, entry)?),
                Implementation::Cublas => None,
            };
            match (*operation, function) {
                (Operation::Elementwise { kind, x, out, n }, Some(function)) => {
                    self.elementwise(&function, kind, x, out, n)
                }
                (
                    Operation::Reduce {
                        reduction,
                        x,
                        out,
                        n,
                    },
                    Some(function),
                ) => self.reduce(&function, reduction, x, out, n, shared),
                (Operation::Softmax { x, y, rows, cols }, Some(function)) => {
                    self.softmax(&function, x, y, rows, cols)
                }
                (
                    Operation::Matmul {
                        engine: MatmulEngine::Tiled,
                        a,
                        b,
                        c,
                        shape,
                        ..
                    },
                    Some(function),
                ) => self.matmul_tiled(&function, a, b, c, shape),
                (
                    Operation::Matmul {
                        engine: MatmulEngine::Cublas,
                        a,
                        b,
                        c,
                        shape,
                        ..
                    },
                    None,
                ) => self.matmul_cublas(a, b, c, shape),
                _ => Err(KernelError::Cuda {
                    operation: "kernel launch",
                    message: format!("{} has no CUDA implementation of this shape", spec.name),
                }),
            }
        })
    }

    fn elementwise(
        &self,
        function: &CudaFunction,
        kind: Elementwise,
        x: BufferId,
        out: BufferId,
        n: usize,
    ) -> Result<(), KernelError> {
        if n == 0 {
            return Ok(());
        }
        let n = n as u32; // checked against u32::MAX when the operation was built
        let config = LaunchConfig {
            grid_dim: (n.div_ceil(ELEMENTWISE_THREADS).min(MAX_GRID_BLOCKS), 1, 1),
            block_dim: (ELEMENTWISE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        self.buffers.with_output::<f32>(out, |buffers, out| {
            let x = buffers.f32(x)?;
            let mut launch = self.stream.launch_builder(function);
            match kind {
                Elementwise::Axpy { ref a } | Elementwise::Scale { ref a } => {
                    // axpy_f32(a, x, y, n) / scale_f32(a, x, out, n)
                    launch.arg(a).arg(x).arg(out).arg(&n);
                    // SAFETY: the argument list matches the entry's C signature (float,
                    // const float*, float*, unsigned int); x and out hold n f32 each
                    // (checked when the operation was built) and the kernel touches no index
                    // at or past n.
                    unsafe { launch.launch(config) }.map_err(driver("cuLaunchKernel"))?;
                }
                Elementwise::Add { y } | Elementwise::Mul { y } => {
                    let y = buffers.f32(y)?;
                    launch.arg(x).arg(y).arg(out).arg(&n);
                    // SAFETY: matches add_f32/mul_f32(const float*, const float*, float*,
                    // unsigned int); x, y and out hold n f32 each, and no index reaches n.
                    unsafe { launch.launch(config) }.map_err(driver("cuLaunchKernel"))?;
                }
            }
            Ok(())
        })
    }

    fn reduce(
        &self,
        function: &CudaFunction,
        reduction: Reduction,
        x: BufferId,
        out: BufferId,
        n: usize,
        shared: &DeviceShared,
    ) -> Result<(), KernelError> {
        // The pass sizes: n, then ceil(n / chunk) partials, ... down to one.
        let mut passes = vec![n];
        while *passes.last().unwrap_or(&1) > REDUCE_CHUNK {
            let last = passes[passes.len() - 1];
            passes.push(last.div_ceil(REDUCE_CHUNK));
        }
        // Every pass but the first reads partials written by the one before.
        let scratch_lengths: Vec<usize> = passes[1..].to_vec();
        let scratch_bytes: u64 = scratch_lengths.iter().map(|len| *len as u64 * 4).sum();
        shared.reserve(scratch_bytes)?;
        let result = self.buffers.with_output::<f32>(out, |buffers, out| {
            let mut scratch: Vec<CudaSlice<f32>> = Vec::with_capacity(scratch_lengths.len());
            for len in &scratch_lengths {
                // SAFETY (of `alloc`'s unset memory): each partial is written by the pass
                // that produces it before the next pass reads it.
                scratch
                    .push(unsafe { self.stream.alloc::<f32>(*len) }.map_err(driver("cuMemAlloc"))?);
            }
            let input = buffers.f32(x)?;
            for (pass, len) in passes.iter().enumerate() {
                let last = pass + 1 == passes.len();
                let divisor = match reduction {
                    Reduction::Mean if last => n as f32,
                    _ => 1.0f32,
                };
                let len_u32 = *len as u32; // at most n, checked against u32::MAX
                let blocks = len.div_ceil(REDUCE_CHUNK).max(1) as u32;
                let config = LaunchConfig {
                    grid_dim: (blocks, 1, 1),
                    block_dim: (REDUCE_BLOCK_THREADS as u32, 1, 1),
                    shared_mem_bytes: 0,
                };
                let (before, after) = scratch.split_at_mut(pass);
                let source: &CudaSlice<f32> = if pass == 0 { input } else { &before[pass - 1] };
                let target: &mut CudaSlice<f32> = if last { &mut *out } else { &mut after[0] };
                let mut launch = self.stream.launch_builder(function);
                launch.arg(source).arg(target).arg(&len_u32);
                if reduction != Reduction::Max {
                    launch.arg(&divisor);
                }
                // SAFETY: matches reduce_sum_f32(const float*, float*, unsigned int, float)
                // and reduce_max_f32(const float*, float*, unsigned int); `source` holds
                // `len` f32 and `target` one f32 per block (the last pass has one block and
                // writes `out`, which holds one f32, checked when the operation was built).
                unsafe { launch.launch(config) }.map_err(driver("cuLaunchKernel"))?;
            }
            // The scratch slices are freed when dropped here, after the stream's work on
            // them (cudarc orders the free on the same stream).
            Ok(())
        });
        shared.unreserve(scratch_bytes);
        result
    }

    fn softmax(
        &self,
        function: &CudaFunction,
        x: BufferId,
        y: BufferId,
        rows: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let (rows, cols) = (rows as u32, cols as u32); // both came in as u32
        let config = LaunchConfig {
            grid_dim: (rows.min(MAX_GRID_BLOCKS), 1, 1),
            block_dim: (REDUCE_BLOCK_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        self.buffers.with_output::<f32>(y, |buffers, y| {
            let x = buffers.f32(x)?;
            let mut launch = self.stream.launch_builder(function);
            launch.arg(x).arg(y).arg(&rows).arg(&cols);
            // SAFETY: matches softmax_f32(const float*, float*, unsigned int, unsigned int);
            // x and y hold rows * cols f32 (checked when the operation was built).
            unsafe { launch.launch(config) }.map_err(driver("cuLaunchKernel"))?;
            Ok(())
        })
    }

    fn matmul_tiled(
        &self,
        function: &CudaFunction,
        a: BufferId,
        b: BufferId,
        c: BufferId,
        shape: MatmulShape,
    ) -> Result<(), KernelError> {
        if shape.m == 0 || shape.n == 0 {
            return Ok(());
        }
        let grid_y = (shape.m as u32).div_ceil(MATMUL_TILE);
        if grid_y > 65_535 {
            return Err(KernelError::TooLarge {
                what: "matmul_tiled_f32 m",
                value: shape.m,
                limit: 65_535 * MATMUL_TILE as usize,
            });
        }
        let (m, k, n) = (shape.m as u32, shape.k as u32, shape.n as u32);
        let config = LaunchConfig {
            grid_dim: (n.div_ceil(MATMUL_TILE), grid_y, 1),
            block_dim: (MATMUL_TILE, MATMUL_TILE, 1),
            shared_mem_bytes: 0,
        };
        self.buffers.with_output::<f32>(c, |buffers, c| {
            let (a, b) = (buffers.f32(a)?, buffers.f32(b)?);
            let mut launch = self.stream.launch_builder(function);
            launch.arg(a).arg(b).arg(c).arg(&m).arg(&k).arg(&n);
            // SAFETY: matches matmul_tiled_f32(const float*, const float*, float*, unsigned
            // int m, k, n); a, b and c hold m*k, k*n and m*n f32 (checked when the operation
            // was built) and the kernel guards every index against m, k and n.
            unsafe { launch.launch(config) }.map_err(driver("cuLaunchKernel"))?;
            Ok(())
        })
    }

    fn matmul_cublas(
        &self,
        a: BufferId,
        b: BufferId,
        c: BufferId,
        shape: MatmulShape,
    ) -> Result<(), KernelError> {
        if shape.m == 0 || shape.n == 0 {
            return Ok(());
        }
        let dimension = |value: usize| {
            i32::try_from(value).map_err(|_| KernelError::TooLarge {
                what: "cuBLAS matmul dimension",
                value,
                limit: i32::MAX as usize,
            })
        };
        let (m, k, n) = (
            dimension(shape.m)?,
            dimension(shape.k)?,
            dimension(shape.n)?,
        );
        let blas = self.blas()?;
        // cuBLAS uses the calling thread's current context, which may not be ours yet.
        self.context
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        self.buffers.with_output_data(c, |buffers, c| {
            if k == 0 {
                // C = A . B with no terms is zero; cuBLAS's ld checks reject k = 0.
                return c.fill_zero(&self.stream);
            }
            // Row-major C = A . B is column-major C^T = B^T . A^T: pass B first, swap m, n.
            let dims = (m, k, n);
            let gemm_error = |error: cudarc::cublas::result::CublasError| KernelError::Cuda {
                operation: "cublasGemmEx",
                message: format!("{error:?}"),
            };
            match c {
                CudaData::F32(c) => {
                    let (a, b) = (buffers.f32(a)?, buffers.f32(b)?);
                    // SAFETY: a, b, c hold m*k, k*n, m*n elements (checked when the
                    // operation was built) and the leading dimensions describe exactly those
                    // row-major matrices seen as column-major transposes.
                    unsafe { blas.gemm(row_major_gemm(dims, 1.0f32, 0.0f32), b, a, c) }
                        .map_err(gemm_error)
                }
                CudaData::F16(c) => {
                    let (a, b) = (buffers.f16(a)?, buffers.f16(b)?);
                    // SAFETY: as for f32.
                    unsafe { blas.gemm(row_major_gemm(dims, f16::ONE, f16::ZERO), b, a, c) }
                        .map_err(gemm_error)
                }
                CudaData::Bf16(c) => {
                    let (a, b) = (buffers.bf16(a)?, buffers.bf16(b)?);
                    // SAFETY: as for f32.
                    unsafe { blas.gemm(row_major_gemm(dims, bf16::ONE, bf16::ZERO), b, a, c) }
                        .map_err(gemm_error)
                }
            }
        })
    }

    /// Compiles `source` (through the cache) and loads `entry` from it.
    pub(crate) fn compile_user(
        &self,
        device: crate::device::DeviceId,
        source: &str,
        entry: &str,
    ) -> Result<UserKernel, KernelError> {
        if entry.is_empty() || entry.contains('\0') {
            return Err(KernelError::NulInSource {
                source_name: format!("entry name {:?}", entry.replace('\0', "\\0")),
            });
        }
        guarded("user kernel compile", || {
            let options = registered_kernel_options();
            let source_name = format!("{entry}.cu");
            let (module, from_cache) = self.compile_and_load(&source_name, source, &options)?;
            let function = module
                .load_function(entry)
                .map_err(|error| KernelError::Cuda {
                    operation: "cuModuleGetFunction",
                    message: format!(
                        "no extern \"C\" __global__ function {entry:?} in the compiled source: \
                     {error:?}"
                    ),
                })?;
            Ok(UserKernel {
                device,
                entry: entry.to_owned(),
                function,
                from_cache,
            })
        })
    }

    /// Launches a user kernel with `args` in signature order.
    pub(crate) fn launch_user(
        &self,
        kernel: &UserKernel,
        geometry: LaunchGeometry,
        args: &[KernelArg<'_>],
    ) -> Result<(), KernelError> {
        guarded("user kernel launch", || {
            // Scalars need stable addresses until the launch: collect them first.
            let floats: Vec<f32> = args
                .iter()
                .map(|arg| if let KernelArg::F32(v) = arg { *v } else { 0.0 })
                .collect();
            let uints: Vec<u32> = args
                .iter()
                .map(|arg| if let KernelArg::U32(v) = arg { *v } else { 0 })
                .collect();
            let buffers = self.buffers.lock();
            let mut launch = self.stream.launch_builder(&kernel.function);
            for (i, arg) in args.iter().enumerate() {
                match arg {
                    KernelArg::F32(_) => {
                        launch.arg(&floats[i]);
                    }
                    KernelArg::U32(_) => {
                        launch.arg(&uints[i]);
                    }
                    KernelArg::Buffer(buffer) => {
                        match buffers
                            .get(&buffer.id())
                            .ok_or(KernelError::ForeignBuffer { id: buffer.id().0 })?
                        {
                            CudaData::F32(s) => launch.arg(s),
                            CudaData::F16(s) => launch.arg(s),
                            CudaData::Bf16(s) => launch.arg(s),
                        };
                    }
                }
            }
            let config = LaunchConfig {
                grid_dim: geometry.grid,
                block_dim: geometry.block,
                shared_mem_bytes: geometry.shared_mem_bytes,
            };
            // SAFETY: the caller vouches that `args` match the kernel's C signature (the
            // documented contract of `Device::launch_user`); every buffer pointer is a live
            // allocation of this context, held by the locked map for the whole launch, and
            // every scalar lives in `floats`/`uints` until after it.
            unsafe { launch.launch(config) }.map_err(driver("cuLaunchKernel"))?;
            Ok(())
        })
    }
}
