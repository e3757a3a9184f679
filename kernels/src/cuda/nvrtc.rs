//! NVRTC as a [`PtxCompiler`]: CUDA C source to PTX for one architecture.

use super::presence::{guarded, require, CudaLibrary};
use crate::cache::{CompileRequest, PtxCompiler};
use crate::KernelError;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

/// The NVRTC options of the registered kernels: IEEE division and square root, denormals
/// kept (`--ftz=false`), so results match the CPU references; `--fmad=true` only lets the
/// compiler fuse `a * b + c` written as such, which the kernels never rely on.
pub fn registered_kernel_options() -> Vec<String> {
    [
        "--ftz=false",
        "--prec-div=true",
        "--prec-sqrt=true",
        "--fmad=true",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Compiles with the NVRTC library found at run time (see [`crate::cuda_libs`]); needs no
/// GPU. A machine without NVRTC gets [`KernelError::NoCuda`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Nvrtc;

impl Nvrtc {
    /// The NVRTC library's version, `(major, minor)`, e.g. `(13, 0)`.
    pub fn version() -> Result<(i32, i32), KernelError> {
        require(CudaLibrary::Nvrtc)?;
        guarded("nvrtcVersion", || {
            let (mut major, mut minor) = (0, 0);
            // SAFETY: nvrtcVersion writes two ints through the pointers given.
            let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
            if status == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
                Ok((major, minor))
            } else {
                Err(KernelError::Cuda {
                    operation: "nvrtcVersion",
                    message: format!("{status:?}"),
                })
            }
        })
    }
}

impl PtxCompiler for Nvrtc {
    fn compile(&self, request: &CompileRequest<'_>) -> Result<String, KernelError> {
        if request.source.contains('\0') || request.source_name.contains('\0') {
            return Err(KernelError::NulInSource {
                source_name: request.source_name.replace('\0', "\\0"),
            });
        }
        require(CudaLibrary::Nvrtc)?;
        let mut options = request.options.to_vec();
        options.push(format!("--gpu-architecture={}", request.arch));
        let compile_options = CompileOptions {
            options,
            name: Some(request.source_name.to_owned()),
            ..CompileOptions::default()
        };
        guarded("nvrtcCompileProgram", || {
            compile_ptx_with_opts(request.source, compile_options)
                .map(|ptx| ptx.to_src())
                .map_err(|error| match error {
                    CompileError::CompileError { log, .. } => KernelError::Compile {
                        source_name: request.source_name.to_owned(),
                        log: log.to_string_lossy().into_owned(),
                    },
                    other => KernelError::Cuda {
                        operation: "nvrtc",
                        message: format!("{other:?}"),
                    },
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::CudaSource;

    fn request<'a>(name: &'a str, source: &'a str, options: &'a [String]) -> CompileRequest<'a> {
        CompileRequest {
            source_name: name,
            source,
            options,
            arch: "sm_80",
        }
    }

    #[test]
    fn a_nul_byte_is_refused_before_nvrtc() {
        let result = Nvrtc.compile(&request("bad.cu", "int x;\0", &[]));
        assert_eq!(
            result,
            Err(KernelError::NulInSource {
                source_name: "bad.cu".to_owned()
            })
        );
    }

    #[test]
    fn without_nvrtc_compiling_is_a_no_cuda_error() {
        if require(CudaLibrary::Nvrtc).is_ok() {
            return; // covered by nvrtc_compiles_every_registered_source
        }
        let result = Nvrtc.compile(&request("k.cu", "extern \"C\" __global__ void k() {}", &[]));
        assert!(
            matches!(result, Err(KernelError::NoCuda { .. })),
            "{result:?}"
        );
    }

    #[test]
    #[ignore = "needs libnvrtc (CUDA 12) on the library path; no GPU needed"]
    fn nvrtc_compiles_every_registered_source() {
        let options = registered_kernel_options();
        for source in CudaSource::ALL {
            let ptx = Nvrtc
                .compile(&request(source.file_name(), source.text(), &options))
                .unwrap_or_else(|error| panic!("{}: {error}", source.file_name()));
            assert!(ptx.contains(".visible .entry"), "{}", source.file_name());
            if source == CudaSource::Combine {
                for entry in super::super::combine::every_entry() {
                    assert!(ptx.contains(&format!(".entry {entry}(")), "{entry} missing");
                }
            }
        }
    }

    #[test]
    #[ignore = "needs libnvrtc (CUDA 12) on the library path; no GPU needed"]
    fn nvrtc_returns_the_log_of_a_bad_source() {
        let result = Nvrtc.compile(&request(
            "broken.cu",
            "extern \"C\" __global__ void broken(float *x) { x[0] = undeclared_name; }",
            &[],
        ));
        match result {
            Err(KernelError::Compile { source_name, log }) => {
                assert_eq!(source_name, "broken.cu");
                assert!(log.contains("undeclared_name"), "{log}");
            }
            other => panic!("expected a compile error, got {other:?}"),
        }
    }

    #[test]
    #[ignore = "needs libnvrtc (CUDA 12) on the library path; no GPU needed"]
    fn nvrtc_through_the_cache_compiles_once() {
        let dir = tempfile::tempdir().unwrap();
        let options = registered_kernel_options();
        let source = CudaSource::Elementwise;
        let req = request(source.file_name(), source.text(), &options);
        let first = crate::cache::KernelCache::new(dir.path())
            .get_or_compile(&Nvrtc, &req)
            .unwrap();
        assert!(!first.from_cache);
        let second = crate::cache::KernelCache::new(dir.path())
            .get_or_compile(&Nvrtc, &req)
            .unwrap();
        assert!(second.from_cache);
        assert_eq!(first.ptx, second.ptx);
    }
}
