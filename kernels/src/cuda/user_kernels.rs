//! User kernels on the CUDA backend: a caller's CUDA C compiled by NVRTC (through the
//! cache) and launched with arguments in its signature's order.

use super::backend::{driver, CudaBackend};
use super::device_buffers::CudaData;
use super::nvrtc::registered_kernel_options;
use super::presence::guarded;
use crate::device::{DeviceId, KernelArg, LaunchGeometry, UserKernel};
use crate::KernelError;
use cudarc::driver::{LaunchConfig, PushKernelArg};

impl CudaBackend {
    /// Compiles `source` (through the cache) and loads `entry` from it.
    pub(crate) fn compile_user(
        &self,
        device: DeviceId,
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
