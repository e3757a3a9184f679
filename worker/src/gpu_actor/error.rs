//! Why the GPU actor refused a call: typed, so callers can tell a full memory share from a
//! compile error, and sent back as the call's result (the actor goes on serving).

use ember_kernels::KernelError;
use rkyv::{Archive, Deserialize, Serialize};

/// Why a GPU actor refused a call. None of these ends the actor: it keeps its buffers and
/// serves the next call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Archive, Serialize, Deserialize)]
pub enum GpuActorError {
    /// No buffer has this name: `put` or `alloc` it first.
    #[error("the GPU actor has no buffer named {name:?}")]
    UnknownBuffer {
        /// The name asked for.
        name: String,
    },
    /// No user kernel with this entry was compiled on this actor: `compile_user` it first.
    #[error("the GPU actor has compiled no user kernel {entry:?}")]
    UnknownUserKernel {
        /// The entry asked for.
        entry: String,
    },
    /// The kernel layer refused the call: an unknown kernel name, arguments of the wrong
    /// number or kind, shapes that do not fit the buffers, an aliased output, an empty input
    /// to `max`/`mean`, a size past a kernel's limit. `message` says which.
    #[error("{message}")]
    Rejected {
        /// What was wrong, as the kernel layer words it.
        message: String,
    },
    /// A buffer was read as an element type it does not hold.
    #[error("buffer holds {actual}, not {requested}")]
    ElementType {
        /// The element type asked for.
        requested: String,
        /// The element type the buffer holds.
        actual: String,
    },
    /// The allocation would take the actor past its `gpu_memory` share: free buffers, or
    /// create the actor with a larger `gpu_memory`.
    #[error(
        "allocation of {requested} bytes refused: {in_use} bytes of the actor's \
         {limit}-byte gpu_memory share are in use"
    )]
    MemoryLimit {
        /// Bytes asked for.
        requested: u64,
        /// Bytes the actor holds now.
        in_use: u64,
        /// Its `gpu_memory` share.
        limit: u64,
    },
    /// The allocation is larger than the GPU's free memory.
    #[error("allocation of {requested} bytes refused: the GPU has {free} bytes free")]
    DeviceMemory {
        /// Bytes asked for.
        requested: u64,
        /// Bytes the GPU reports free.
        free: u64,
    },
    /// The allocation is larger than the memory the host (standing in for a GPU) can give.
    #[error("allocation of {requested} bytes refused: the host does not have that much memory")]
    HostMemory {
        /// Bytes asked for.
        requested: u64,
    },
    /// NVRTC rejected a kernel source; `log` is the compiler's log.
    #[error("NVRTC could not compile {source_name}:\n{log}")]
    Compile {
        /// The source's name (a user kernel's entry).
        source_name: String,
        /// The compiler log.
        log: String,
    },
    /// CUDA or NVRTC is not usable where the actor runs (no GPU, no driver, or a CPU stand-in
    /// for a logical GPU), so CUDA C cannot be compiled or run there. Registered kernels
    /// still run, on their CPU references.
    #[error("CUDA is not available: {reason}")]
    CudaUnavailable {
        /// What is missing.
        reason: String,
    },
    /// A CUDA driver, NVRTC or cuBLAS call failed (a user kernel that faulted, for instance).
    #[error("CUDA call {operation} failed: {message}")]
    Cuda {
        /// The call.
        operation: String,
        /// The driver's error text.
        message: String,
    },
    /// The worker's compiled-kernel cache could not be read or written.
    #[error("kernel cache: {message}")]
    Cache {
        /// What went wrong, and where.
        message: String,
    },
}

impl From<KernelError> for GpuActorError {
    fn from(error: KernelError) -> Self {
        match error {
            KernelError::MemoryLimit {
                requested,
                in_use,
                limit,
            } => GpuActorError::MemoryLimit {
                requested,
                in_use,
                limit,
            },
            KernelError::DeviceMemory { requested, free } => {
                GpuActorError::DeviceMemory { requested, free }
            }
            KernelError::HostMemory { requested } => GpuActorError::HostMemory { requested },
            KernelError::Compile { source_name, log } => {
                GpuActorError::Compile { source_name, log }
            }
            KernelError::NoCuda { reason } => GpuActorError::CudaUnavailable { reason },
            KernelError::Cuda { operation, message } => GpuActorError::Cuda {
                operation: operation.to_owned(),
                message,
            },
            KernelError::ElementType { requested, actual } => GpuActorError::ElementType {
                requested: requested.to_owned(),
                actual: actual.to_owned(),
            },
            error @ KernelError::Cache { .. } => GpuActorError::Cache {
                message: error.to_string(),
            },
            error @ (KernelError::LengthMismatch { .. }
            | KernelError::ShapeMismatch { .. }
            | KernelError::EmptyInput { .. }
            | KernelError::TooLarge { .. }
            | KernelError::UnknownKernel { .. }
            | KernelError::ArgumentCount { .. }
            | KernelError::ArgumentKind { .. }
            | KernelError::AliasedOutput { .. }
            | KernelError::ForeignBuffer { .. }
            | KernelError::OutOfBounds { .. }
            | KernelError::NulInSource { .. }) => GpuActorError::Rejected {
                message: error.to_string(),
            },
        }
    }
}
