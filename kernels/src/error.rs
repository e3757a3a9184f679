//! The one error type of this crate: every refused kernel call, compile or allocation.

use crate::arg_kind::ArgKind;

/// Why a kernel call, a compile or an allocation was refused.
///
/// Every variant says what the caller can do about it; none of them is a crash of the
/// process or of the device handle, which stays usable after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// Two buffers that must be the same length were not: pass equal lengths.
    #[error("length mismatch: x has {x} elements, y has {y}")]
    LengthMismatch {
        /// Length of the first buffer.
        x: usize,
        /// Length of the second buffer.
        y: usize,
    },
    /// A buffer's length does not fit the shape given with it: fix the shape or the buffer.
    #[error("shape mismatch for {what}: expected {expected} elements, got {actual}")]
    ShapeMismatch {
        /// Which operand, e.g. `"matmul a (m x k)"`.
        what: String,
        /// Elements the shape calls for.
        expected: usize,
        /// Elements the buffer has.
        actual: usize,
    },
    /// A reduction with no identity result (`max`, `mean`) was given no elements.
    #[error("{reduction} of an empty input has no value")]
    EmptyInput {
        /// The reduction, e.g. `"max"`.
        reduction: &'static str,
    },
    /// A length or shape is beyond what a kernel indexes (`u32`): split the work.
    #[error("{what} is {value}, beyond the kernel limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The largest value allowed.
        limit: usize,
    },
    /// No registered kernel has this name: `known` lists the registered names.
    #[error("unknown kernel {name:?}; registered kernels: {known}")]
    UnknownKernel {
        /// The name asked for.
        name: String,
        /// The registered names, comma separated.
        known: String,
    },
    /// A kernel was given the wrong number of arguments.
    #[error("kernel {kernel} takes {expected} arguments ({signature}), got {got}")]
    ArgumentCount {
        /// The kernel.
        kernel: &'static str,
        /// How many it takes.
        expected: usize,
        /// How many were given.
        got: usize,
        /// Its signature, e.g. `a: f32, x: f32[], y: mut f32[]`.
        signature: String,
    },
    /// A kernel argument was of the wrong kind.
    #[error("kernel {kernel} argument {index} ({name}) must be {expected}, got {got}")]
    ArgumentKind {
        /// The kernel.
        kernel: &'static str,
        /// Zero-based position of the argument.
        index: usize,
        /// The argument's name in the registry.
        name: &'static str,
        /// The kind the kernel takes there.
        expected: ArgKind,
        /// The kind that was given.
        got: ArgKind,
    },
    /// The same buffer was passed where the kernel writes one argument and reads another.
    #[error("kernel {kernel}: a buffer written by the kernel is also passed as another argument")]
    AliasedOutput {
        /// The kernel.
        kernel: &'static str,
    },
    /// A range of a buffer reaches past its end: stay within the buffer.
    #[error("{what} reaches element {end} of a {len}-element buffer")]
    OutOfBounds {
        /// What the range is for, e.g. `"write"`.
        what: &'static str,
        /// The end of the range.
        end: usize,
        /// The buffer's length.
        len: usize,
    },
    /// A buffer was downloaded as an element type it does not hold.
    #[error("buffer holds {actual}, not {requested}")]
    ElementType {
        /// The element type asked for.
        requested: &'static str,
        /// The element type the buffer holds.
        actual: &'static str,
    },
    /// A buffer belongs to another device handle, or was already freed.
    #[error("buffer {id} does not belong to this device handle")]
    ForeignBuffer {
        /// The buffer's id.
        id: u64,
    },
    /// CUDA is not usable here (no driver library, no NVRTC, no device): use the CPU backend.
    #[error("CUDA is not available: {reason}")]
    NoCuda {
        /// What is missing.
        reason: String,
    },
    /// A CUDA driver, NVRTC or cuBLAS call failed.
    #[error("CUDA call {operation} failed: {message}")]
    Cuda {
        /// The call, e.g. `"cuMemAlloc"` or `"load_module"`.
        operation: &'static str,
        /// The driver's error text.
        message: String,
    },
    /// NVRTC rejected a kernel source; `log` is the compiler's log for the caller to read.
    #[error("NVRTC could not compile {source_name}:\n{log}")]
    Compile {
        /// Name of the source (a `.cu` file or a user kernel's entry).
        source_name: String,
        /// The compiler log.
        log: String,
    },
    /// A kernel source holds a NUL byte, which NVRTC cannot take.
    #[error("kernel source {source_name} holds a NUL byte")]
    NulInSource {
        /// Name of the source.
        source_name: String,
    },
    /// An allocation would take the handle past its memory limit: free buffers or raise it.
    #[error("allocation of {requested} bytes refused: {in_use} of the {limit}-byte limit in use")]
    MemoryLimit {
        /// Bytes asked for.
        requested: u64,
        /// Bytes this handle holds now.
        in_use: u64,
        /// The handle's limit.
        limit: u64,
    },
    /// An allocation is larger than the device's free memory.
    #[error("allocation of {requested} bytes refused: the device has {free} bytes free")]
    DeviceMemory {
        /// Bytes asked for.
        requested: u64,
        /// Bytes the device reports free.
        free: u64,
    },
    /// The CPU backend could not get this much host memory.
    #[error("allocation of {requested} bytes refused: the host could not provide it")]
    HostMemory {
        /// Bytes asked for.
        requested: u64,
    },
    /// Reading or writing the compile cache failed.
    #[error("kernel cache {path}: {message}")]
    Cache {
        /// The file or directory.
        path: String,
        /// What went wrong.
        message: String,
    },
}
