//! The GPU actor's state (a device handle, named buffers, compiled user kernels) and the
//! dispatch of its methods.

use std::collections::BTreeMap;

use ember_core::proto::{decode, encode};
use ember_kernels::{Backend, Buffer, Device, ElementVec, KernelArg, UserKernel};

use super::methods::{Alloc, CompileUser, Free, Get, GpuMethod, Info, Launch, LaunchUser, Put};
use super::wire::{
    BufferElement, BufferInfo, GpuInfo, HostData, LaunchArg, LaunchShape, UserKernelInfo,
};
use super::GpuActorError;
use crate::registry::{ActorInstance, CallError};

/// A GPU actor: named buffers and compiled user kernels on one device handle.
pub(crate) struct GpuActor {
    device: Device,
    buffers: BTreeMap<String, Buffer>,
    user_kernels: BTreeMap<String, UserKernel>,
}

impl GpuActor {
    /// An actor with no buffers on `device`.
    pub(crate) fn new(device: Device) -> GpuActor {
        GpuActor {
            device,
            buffers: BTreeMap::new(),
            user_kernels: BTreeMap::new(),
        }
    }

    fn put(&mut self, name: String, data: HostData) -> Result<BufferInfo, GpuActorError> {
        self.buffers.remove(&name);
        let elements = ElementVec::from(data);
        let buffer = self.device.upload_elements(elements.as_slice())?;
        Ok(self.keep(name, buffer))
    }

    fn alloc(
        &mut self,
        name: String,
        element: BufferElement,
        len: u64,
    ) -> Result<BufferInfo, GpuActorError> {
        let len = usize::try_from(len).map_err(|_| GpuActorError::Rejected {
            message: format!("a buffer of {len} elements is beyond this worker's address space"),
        })?;
        self.buffers.remove(&name);
        let buffer = self.device.alloc_elements(element.into(), len)?;
        Ok(self.keep(name, buffer))
    }

    fn keep(&mut self, name: String, buffer: Buffer) -> BufferInfo {
        let info = buffer_info(&name, &buffer);
        self.buffers.insert(name, buffer);
        info
    }

    fn buffer(&self, name: &str) -> Result<&Buffer, GpuActorError> {
        self.buffers
            .get(name)
            .ok_or_else(|| GpuActorError::UnknownBuffer {
                name: name.to_owned(),
            })
    }

    fn get(&self, name: &str) -> Result<HostData, GpuActorError> {
        let elements = self.device.download_elements(self.buffer(name)?)?;
        Ok(elements.into())
    }

    fn free(&mut self, name: &str) -> Result<BufferInfo, GpuActorError> {
        let buffer = self
            .buffers
            .remove(name)
            .ok_or_else(|| GpuActorError::UnknownBuffer {
                name: name.to_owned(),
            })?;
        Ok(buffer_info(name, &buffer))
    }

    fn kernel_args(&self, args: &[LaunchArg]) -> Result<Vec<KernelArg<'_>>, GpuActorError> {
        args.iter()
            .map(|arg| {
                Ok(match arg {
                    LaunchArg::Buffer(name) => KernelArg::Buffer(self.buffer(name)?),
                    LaunchArg::F32(value) => KernelArg::F32(*value),
                    LaunchArg::U32(value) => KernelArg::U32(*value),
                })
            })
            .collect()
    }

    fn launch(&self, kernel: &str, args: &[LaunchArg]) -> Result<(), GpuActorError> {
        let args = self.kernel_args(args)?;
        self.device.launch(kernel, &args)?;
        self.device.synchronize()?;
        Ok(())
    }

    fn compile_user(
        &mut self,
        source: &str,
        entry: String,
    ) -> Result<UserKernelInfo, GpuActorError> {
        let kernel = self.device.compile_user(source, &entry)?;
        let info = UserKernelInfo {
            entry: entry.clone(),
            from_cache: kernel.from_cache(),
        };
        self.user_kernels.insert(entry, kernel);
        Ok(info)
    }

    fn launch_user(
        &self,
        entry: &str,
        shape: LaunchShape,
        args: &[LaunchArg],
    ) -> Result<(), GpuActorError> {
        let kernel =
            self.user_kernels
                .get(entry)
                .ok_or_else(|| GpuActorError::UnknownUserKernel {
                    entry: entry.to_owned(),
                })?;
        let args = self.kernel_args(args)?;
        self.device.launch_user(kernel, shape.into(), &args)?;
        self.device.synchronize()?;
        Ok(())
    }

    fn info(&self) -> GpuInfo {
        GpuInfo {
            cuda_ordinal: match self.device.backend() {
                Backend::Cuda { ordinal } => u32::try_from(ordinal).ok(),
                Backend::Cpu => None,
            },
            device_name: self.device.device_name(),
            cpu_fallback_reason: self.device.cpu_fallback_reason().map(|e| e.to_string()),
            memory_in_use: self.device.memory_in_use(),
            memory_limit: self.device.memory_limit(),
            buffers: self
                .buffers
                .iter()
                .map(|(name, buffer)| buffer_info(name, buffer))
                .collect(),
            user_kernels: self.user_kernels.keys().cloned().collect(),
        }
    }
}

fn buffer_info(name: &str, buffer: &Buffer) -> BufferInfo {
    BufferInfo {
        name: name.to_owned(),
        element: buffer.element().into(),
        len: buffer.len() as u64,
        bytes: buffer.size_bytes(),
    }
}

/// Decodes `M`'s arguments, runs it, and archives its `Result` as the call's reply.
fn serve<M: GpuMethod>(
    args: &[u8],
    run: impl FnOnce(M::Args) -> Result<M::Output, GpuActorError>,
) -> Result<Vec<u8>, CallError> {
    let args = decode::<M::Args>(args).map_err(|e| CallError::BadArgs(e.to_string()))?;
    let reply = run(args);
    if let Err(error) = &reply {
        tracing::debug!(method = M::NAME, %error, "GPU actor refused a call");
    }
    encode(&reply)
        .map(|archive| archive.to_vec())
        .map_err(|e| CallError::User(format!("cannot encode the reply: {e}")))
}

impl ActorInstance for GpuActor {
    fn call(&mut self, method: &str, args: &[u8]) -> Result<Vec<u8>, CallError> {
        match method {
            Put::NAME => serve::<Put>(args, |(name, data)| self.put(name, data)),
            Alloc::NAME => {
                serve::<Alloc>(args, |(name, element, len)| self.alloc(name, element, len))
            }
            Get::NAME => serve::<Get>(args, |(name,)| self.get(&name)),
            Free::NAME => serve::<Free>(args, |(name,)| self.free(&name)),
            Launch::NAME => serve::<Launch>(args, |(kernel, args)| self.launch(&kernel, &args)),
            CompileUser::NAME => {
                serve::<CompileUser>(args, |(source, entry)| self.compile_user(&source, entry))
            }
            LaunchUser::NAME => serve::<LaunchUser>(args, |(entry, shape, args)| {
                self.launch_user(&entry, shape, &args)
            }),
            Info::NAME => serve::<Info>(args, |()| Ok(self.info())),
            other => Err(CallError::UnknownMethod(other.to_owned())),
        }
    }
}
