//! Row-major matmul through cuBLAS (f32, f16, bf16; f32 accumulation).

use super::backend::{lock, CudaBackend};
use super::device_buffers::{CudaData, Inputs};
use super::presence::{require, CudaLibrary};
use crate::device::BufferId;
use crate::reference::MatmulShape;
use crate::KernelError;
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use half::{bf16, f16};
use std::sync::Arc;

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

impl CudaBackend {
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
    pub(super) fn matmul_cublas(
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
            .map_err(super::backend::driver("cuCtxSetCurrent"))?;
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
}
