//! The device handle: upload, download, launch and synchronise on CUDA or on the CPU.
//!
//! [`Device::open`] gives the CUDA backend when a GPU is usable and the CPU backend (every
//! kernel by its CPU reference) otherwise; [`Device::backend`] says which one runs. Both
//! backends check every launch the same way and keep the same per-handle memory limit.

mod arg;
mod buffer;
mod combine;
mod cpu;
mod element;
mod memory;
mod operation;
mod user_kernel;

pub use arg::KernelArg;
pub use buffer::{Buffer, BufferId};
pub use element::{Element, ElementSlice, ElementSliceMut, ElementType, ElementVec};
pub use user_kernel::{LaunchGeometry, UserKernel};

pub(crate) use combine::{Combining, Step};
pub(crate) use operation::{Elementwise, MatmulEngine, Operation, Reduction};

use crate::cache::KernelCache;
use crate::cuda::backend::CudaBackend;
use crate::registry;
use crate::KernelError;
use buffer::checked_byte_size;
use cpu::{host_available_memory, CpuBackend};
use memory::MemoryLedger;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Which backend a device handle runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Host memory; kernels run their CPU references.
    Cpu,
    /// A CUDA GPU.
    Cuda {
        /// The device ordinal (within `CUDA_VISIBLE_DEVICES`).
        ordinal: usize,
    },
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Cpu => f.write_str("cpu"),
            Backend::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// Identifies a device handle, so a buffer or user kernel of another handle is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DeviceId(u64);

enum BackendImpl {
    Cpu(CpuBackend),
    Cuda(Box<CudaBackend>),
}

/// What a handle and its buffers share.
pub(crate) struct DeviceShared {
    id: DeviceId,
    ledger: Mutex<MemoryLedger>,
    backend: BackendImpl,
}

impl DeviceShared {
    fn ledger(&self) -> MutexGuard<'_, MemoryLedger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Frees buffer `id` and returns its bytes.
    pub(crate) fn free(&self, id: BufferId, bytes: u64) {
        match &self.backend {
            BackendImpl::Cpu(cpu) => cpu.free(id),
            BackendImpl::Cuda(cuda) => cuda.free(id),
        }
        self.ledger().release(bytes);
    }

    /// Reserves `bytes` against the handle's limit and the device's free memory (on the CPU
    /// backend, the host's available memory: a request past it would end in the kernel's
    /// out-of-memory killer rather than an error).
    pub(crate) fn reserve(&self, bytes: u64) -> Result<(), KernelError> {
        self.ledger().reserve(bytes)?;
        let refused = match &self.backend {
            BackendImpl::Cuda(cuda) => {
                let free = cuda
                    .free_memory()
                    .inspect_err(|_| self.ledger().release(bytes))?;
                (bytes > free).then_some(KernelError::DeviceMemory {
                    requested: bytes,
                    free,
                })
            }
            BackendImpl::Cpu(_) => host_available_memory()
                .is_some_and(|available| bytes > available)
                .then_some(KernelError::HostMemory { requested: bytes }),
        };
        match refused {
            Some(error) => {
                self.ledger().release(bytes);
                Err(error)
            }
            None => Ok(()),
        }
    }

    /// Returns `bytes` reserved by [`DeviceShared::reserve`] for memory never handed out.
    pub(crate) fn unreserve(&self, bytes: u64) {
        self.ledger().release(bytes);
    }
}

/// A handle on one GPU, or on the CPU standing in for one.
///
/// Cloning gives another handle on the same device with the same buffers and memory
/// account. Every call returns a [`KernelError`] rather than panicking, and the handle stays
/// usable after any error.
#[derive(Clone)]
pub struct Device {
    shared: Arc<DeviceShared>,
    fallback_reason: Option<Arc<KernelError>>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("backend", &self.backend())
            .field("memory_in_use", &self.memory_in_use())
            .field("memory_limit", &self.memory_limit())
            .finish()
    }
}

fn next_device_id() -> DeviceId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    DeviceId(NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Device {
    fn from_backend(backend: BackendImpl) -> Device {
        Device {
            shared: Arc::new(DeviceShared {
                id: next_device_id(),
                ledger: Mutex::new(MemoryLedger::default()),
                backend,
            }),
            fallback_reason: None,
        }
    }

    /// A CPU handle: host memory, CPU references, no memory limit until one is set.
    pub fn cpu() -> Device {
        Device::from_backend(BackendImpl::Cpu(CpuBackend::default()))
    }

    /// The CUDA device `ordinal` when it is usable, else a CPU handle; see
    /// [`Device::cpu_fallback_reason`] for why CUDA was not used. The kernel cache is
    /// [`KernelCache::from_env_or_default`].
    pub fn open(ordinal: usize) -> Device {
        Device::open_with_cache(ordinal, KernelCache::from_env_or_default())
    }

    /// [`Device::open`] with PTX cached in `cache`.
    pub fn open_with_cache(ordinal: usize, cache: KernelCache) -> Device {
        match Device::open_cuda_with_cache(ordinal, cache) {
            Ok(device) => device,
            Err(reason) => Device {
                fallback_reason: Some(Arc::new(reason)),
                ..Device::cpu()
            },
        }
    }

    /// The CUDA device `ordinal`, or why it cannot be used ([`KernelError::NoCuda`] when the
    /// driver library is missing, [`KernelError::Cuda`] when there is no such device).
    pub fn open_cuda(ordinal: usize) -> Result<Device, KernelError> {
        Device::open_cuda_with_cache(ordinal, KernelCache::from_env_or_default())
    }

    /// [`Device::open_cuda`] with PTX cached in `cache`.
    pub fn open_cuda_with_cache(ordinal: usize, cache: KernelCache) -> Result<Device, KernelError> {
        let backend = CudaBackend::open(ordinal, cache)?;
        Ok(Device::from_backend(BackendImpl::Cuda(Box::new(backend))))
    }

    /// This handle with at most `bytes` of buffers at once (on either backend).
    pub fn with_memory_limit(self, bytes: u64) -> Device {
        self.shared.ledger().set_limit(Some(bytes));
        self
    }

    /// Which backend runs this handle's kernels.
    pub fn backend(&self) -> Backend {
        match &self.shared.backend {
            BackendImpl::Cpu(_) => Backend::Cpu,
            BackendImpl::Cuda(cuda) => Backend::Cuda {
                ordinal: cuda.ordinal(),
            },
        }
    }

    /// Why [`Device::open`] fell back to the CPU, if it did.
    pub fn cpu_fallback_reason(&self) -> Option<&KernelError> {
        self.fallback_reason.as_deref()
    }

    /// The GPU's name, e.g. `NVIDIA H100 80GB HBM3`; `None` on the CPU backend.
    pub fn device_name(&self) -> Option<String> {
        match &self.shared.backend {
            BackendImpl::Cpu(_) => None,
            BackendImpl::Cuda(cuda) => Some(cuda.name().to_owned()),
        }
    }

    /// Bytes of buffers this handle holds now.
    pub fn memory_in_use(&self) -> u64 {
        self.shared.ledger().in_use()
    }

    /// The handle's memory limit, if any.
    pub fn memory_limit(&self) -> Option<u64> {
        self.shared.ledger().limit()
    }

    fn new_buffer(&self, element: ElementType, len: usize) -> Result<Buffer, KernelError> {
        let id = BufferId::next();
        let bytes = checked_byte_size(element, len)?;
        self.shared.reserve(bytes)?;
        Ok(Buffer {
            id,
            len,
            element,
            owner: Arc::clone(&self.shared),
        })
    }

    /// A buffer of `len` zeros.
    pub fn alloc<T: Element>(&self, len: usize) -> Result<Buffer, KernelError> {
        self.alloc_elements(T::TYPE, len)
    }

    /// A buffer of `len` zeros of `element`: [`Device::alloc`] with the type chosen at run
    /// time.
    pub fn alloc_elements(&self, element: ElementType, len: usize) -> Result<Buffer, KernelError> {
        let buffer = self.new_buffer(element, len)?;
        match &self.shared.backend {
            BackendImpl::Cpu(cpu) => cpu.alloc_zeroed(buffer.id, element, len)?,
            BackendImpl::Cuda(cuda) => cuda.alloc_zeroed(buffer.id, element, len)?,
        }
        Ok(buffer)
    }

    /// A buffer holding a copy of `data`.
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<Buffer, KernelError> {
        self.upload_elements(T::slice(data))
    }

    /// A buffer holding a copy of `data`: [`Device::upload`] with the type chosen at run time.
    pub fn upload_elements(&self, data: ElementSlice<'_>) -> Result<Buffer, KernelError> {
        let buffer = self.new_buffer(data.element(), data.len())?;
        match &self.shared.backend {
            BackendImpl::Cpu(cpu) => cpu.upload(buffer.id, data),
            BackendImpl::Cuda(cuda) => cuda.upload(buffer.id, data)?,
        }
        Ok(buffer)
    }

    /// A copy of `buffer`'s elements (waits for the kernels that write it).
    pub fn download<T: Element>(&self, buffer: &Buffer) -> Result<Vec<T>, KernelError> {
        let data = self.download_elements(buffer)?;
        let actual = data.element();
        T::from_vec(data).ok_or(KernelError::ElementType {
            requested: T::TYPE.name(),
            actual: actual.name(),
        })
    }

    /// A copy of `buffer`'s elements in the type it holds (waits for the kernels that write
    /// it): [`Device::download`] with the type chosen at run time.
    pub fn download_elements(&self, buffer: &Buffer) -> Result<ElementVec, KernelError> {
        self.check_owner(buffer)?;
        match &self.shared.backend {
            BackendImpl::Cpu(cpu) => cpu.download(buffer.id),
            BackendImpl::Cuda(cuda) => cuda.download(buffer.id),
        }
    }

    /// Runs registered kernel `kernel` (see [`crate::registry::KERNELS`]) on `args`. On CUDA
    /// the launch is asynchronous: [`Device::synchronize`] or a download waits for it.
    pub fn launch(&self, kernel: &str, args: &[KernelArg<'_>]) -> Result<(), KernelError> {
        let spec = registry::lookup(kernel)?;
        for arg in args {
            if let KernelArg::Buffer(buffer) = arg {
                self.check_owner(buffer)?;
            }
        }
        let operation = Operation::build(spec, args)?;
        match &self.shared.backend {
            BackendImpl::Cpu(cpu) => cpu.run(&operation),
            BackendImpl::Cuda(cuda) => cuda.run(spec, &operation, &self.shared),
        }
    }

    /// Copies every element of `src` into `dst` on the device (a device-to-device copy on
    /// CUDA, asynchronous like a launch). Both buffers must be this handle's, of one element
    /// type and one length; copying a buffer onto itself does nothing.
    pub fn copy(&self, src: &Buffer, dst: &Buffer) -> Result<(), KernelError> {
        self.check_owner(src)?;
        self.check_owner(dst)?;
        if src.element != dst.element {
            return Err(KernelError::ElementType {
                requested: dst.element.name(),
                actual: src.element.name(),
            });
        }
        if src.len != dst.len {
            return Err(KernelError::LengthMismatch {
                x: src.len,
                y: dst.len,
            });
        }
        if src.id == dst.id || src.len == 0 {
            return Ok(());
        }
        match &self.shared.backend {
            BackendImpl::Cpu(cpu) => cpu.copy(src.id, dst.id),
            BackendImpl::Cuda(cuda) => cuda.copy(src.id, dst.id),
        }
    }

    /// Waits for every kernel launched on this handle; reports an error a kernel hit.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        match &self.shared.backend {
            BackendImpl::Cpu(_) => Ok(()),
            BackendImpl::Cuda(cuda) => cuda.synchronize(),
        }
    }

    /// Compiles a caller's CUDA C `source` with NVRTC and loads its `extern "C"` function
    /// `entry`. A source that does not compile gives [`KernelError::Compile`] with NVRTC's
    /// log; the CPU backend gives [`KernelError::NoCuda`], as it cannot run CUDA C.
    pub fn compile_user(&self, source: &str, entry: &str) -> Result<UserKernel, KernelError> {
        match &self.shared.backend {
            BackendImpl::Cpu(_) => Err(KernelError::NoCuda {
                reason: match self.cpu_fallback_reason() {
                    Some(reason) => format!(
                        "user kernel {entry:?} needs a CUDA device; this handle runs on the CPU \
                         because {reason}"
                    ),
                    None => format!(
                        "user kernel {entry:?} needs a CUDA device; this handle runs on the CPU"
                    ),
                },
            }),
            BackendImpl::Cuda(cuda) => cuda.compile_user(self.shared.id, source, entry),
        }
    }

    /// Launches a user kernel with `args` in the order its C signature takes them (buffers
    /// as device pointers, `F32` as `float`, `U32` as `unsigned int`).
    ///
    /// The kernel is the caller's code: one that writes out of bounds can corrupt this
    /// handle's device buffers or leave the CUDA context in an error state (reported by this
    /// call or the next ones), though it cannot reach host memory.
    pub fn launch_user(
        &self,
        kernel: &UserKernel,
        geometry: LaunchGeometry,
        args: &[KernelArg<'_>],
    ) -> Result<(), KernelError> {
        if kernel.device != self.shared.id {
            return Err(KernelError::NoCuda {
                reason: format!(
                    "user kernel {:?} was compiled for another device handle",
                    kernel.entry
                ),
            });
        }
        for arg in args {
            if let KernelArg::Buffer(buffer) = arg {
                self.check_owner(buffer)?;
            }
        }
        match &self.shared.backend {
            BackendImpl::Cpu(_) => Err(KernelError::NoCuda {
                reason: "user kernels need a CUDA device".to_owned(),
            }),
            BackendImpl::Cuda(cuda) => cuda.launch_user(kernel, geometry, args),
        }
    }

    fn check_owner(&self, buffer: &Buffer) -> Result<(), KernelError> {
        if Arc::ptr_eq(&buffer.owner, &self.shared) {
            Ok(())
        } else {
            Err(KernelError::ForeignBuffer { id: buffer.id.0 })
        }
    }
}
