//! Launches of the registry's NVRTC kernels (element-wise, reductions, softmax, tiled
//! matmul) on the CUDA backend.

use super::backend::{driver, CudaBackend};
use super::device_buffers::Inputs;
use super::presence::guarded;
use crate::device::{BufferId, DeviceShared, Elementwise, MatmulEngine, Operation, Reduction};
use crate::reference::{MatmulShape, REDUCE_BLOCK_THREADS, REDUCE_ITEMS_PER_THREAD};
use crate::registry::{Implementation, KernelSpec};
use crate::KernelError;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};

/// Threads per block of the element-wise kernels.
pub(super) const ELEMENTWISE_THREADS: u32 = 256;
/// Blocks at most in one element-wise or softmax launch (the kernels grid-stride past it).
pub(super) const MAX_GRID_BLOCKS: u32 = 1 << 20;
/// Side of the tiled matmul's square tile (`EMBER_TILE` in `matmul_tiled.cu`).
const MATMUL_TILE: u32 = 16;
/// Elements one reduction block reduces.
const REDUCE_CHUNK: usize = REDUCE_BLOCK_THREADS * REDUCE_ITEMS_PER_THREAD;

impl CudaBackend {
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
                scratch.push(self.zeros::<f32>(*len)?);
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
}
