//! The methods of the GPU actor: each fixes its name, arguments and result for the actor and
//! its callers alike. A call's reply is `Result<Output, GpuActorError>`.

use ember_core::proto::Wire;

use super::wire::{
    BufferElement, BufferInfo, GpuInfo, HostData, LaunchArg, LaunchShape, UserKernelInfo,
};

/// One method of the GPU actor.
pub trait GpuMethod {
    /// The method's name in actor calls.
    const NAME: &'static str;
    /// Its arguments, as one tuple.
    type Args: Wire;
    /// What it returns when it succeeds.
    type Output: Wire;
}

/// `put(name, data)`: a buffer named `name` holding `data`, replacing (and first freeing) any
/// buffer of that name.
#[derive(Debug)]
pub enum Put {}

impl GpuMethod for Put {
    const NAME: &'static str = "put";
    type Args = (String, HostData);
    type Output = BufferInfo;
}

/// `alloc(name, element, len)`: a buffer named `name` of `len` zeros, replacing (and first
/// freeing) any buffer of that name.
#[derive(Debug)]
pub enum Alloc {}

impl GpuMethod for Alloc {
    const NAME: &'static str = "alloc";
    type Args = (String, BufferElement, u64);
    type Output = BufferInfo;
}

/// `get(name)`: a copy of the buffer's elements.
#[derive(Debug)]
pub enum Get {}

impl GpuMethod for Get {
    const NAME: &'static str = "get";
    type Args = (String,);
    type Output = HostData;
}

/// `free(name)`: frees the buffer, returning what it was.
#[derive(Debug)]
pub enum Free {}

impl GpuMethod for Free {
    const NAME: &'static str = "free";
    type Args = (String,);
    type Output = BufferInfo;
}

/// `launch(kernel, args)`: runs the registered kernel (`ember_kernels::registry::KERNELS`)
/// on buffers named in `args` and returns once it has finished.
#[derive(Debug)]
pub enum Launch {}

impl GpuMethod for Launch {
    const NAME: &'static str = "launch";
    type Args = (String, Vec<LaunchArg>);
    type Output = ();
}

/// `compile_user(source, entry)`: compiles CUDA C `source` with NVRTC and keeps its
/// `extern "C"` function `entry` for [`LaunchUser`]; a source that does not compile gives
/// [`super::GpuActorError::Compile`] with the compiler's log.
#[derive(Debug)]
pub enum CompileUser {}

impl GpuMethod for CompileUser {
    const NAME: &'static str = "compile_user";
    type Args = (String, String);
    type Output = UserKernelInfo;
}

/// `launch_user(entry, shape, args)`: runs a compiled user kernel with its arguments in the
/// order of its C signature and returns once it has finished.
#[derive(Debug)]
pub enum LaunchUser {}

impl GpuMethod for LaunchUser {
    const NAME: &'static str = "launch_user";
    type Args = (String, LaunchShape, Vec<LaunchArg>);
    type Output = ();
}

/// `info()`: the backend, the device, memory in use and the limit, the buffers and the
/// compiled user kernels.
#[derive(Debug)]
pub enum Info {}

impl GpuMethod for Info {
    const NAME: &'static str = "info";
    type Args = ();
    type Output = GpuInfo;
}
