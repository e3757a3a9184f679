//! The built-in GPU actor of every worker, from the caller's side: named buffers on a
//! cluster GPU and kernels run on them, with no Rust code shipped to the worker.
//!
//! ```no_run
//! # async fn demo(cluster: &ember::Cluster) -> Result<(), ember::Error> {
//! use ember::{GpuActor, LaunchArg};
//!
//! let gpu = cluster
//!     .spawn(GpuActor::remote().with(|o| o.gpus(1.0).gpu_memory("1GiB")))
//!     .await?;
//! gpu.put("x", vec![1.0f32, 2.0, 3.0]).await?;
//! gpu.put("y", vec![10.0f32, 20.0, 30.0]).await?;
//! gpu.launch("axpy", [2.0f32.into(), LaunchArg::buffer("x"), LaunchArg::buffer("y")])
//!     .await?;
//! let y: Vec<f32> = gpu.get("y").await?;
//! println!("{y:?} on {}", gpu.info().await?.backend());
//! # Ok(())
//! # }
//! ```

use ember_kernels::{Element, ElementType, LaunchGeometry};
use ember_worker::gpu_actor::methods::{
    Alloc, CompileUser, Free, Get, GpuMethod, Info, Launch, LaunchUser, Put,
};
use ember_worker::gpu_actor::{
    BufferInfo, GpuActorError, GpuInfo, HostData, LaunchArg, UserKernelInfo, GPU_ACTOR,
};

use crate::{ActorRef, ActorSpawn, Error, Options, RemoteActor};

/// The built-in GPU actor, registered on every worker.
#[derive(Debug)]
pub enum GpuActor {}

impl GpuActor {
    /// Describes a GPU actor on one whole GPU; change its needs with `.with(..)`, e.g.
    /// `.with(|o| o.gpus(0.5).gpu_memory("4GiB"))`, or `o.gpus(0.0)` for one that runs the
    /// kernels' CPU references on any worker. Its `gpu_memory` is the most its buffers may
    /// hold at once.
    pub fn remote() -> ActorSpawn<GpuActorHandle> {
        ActorSpawn::new(GPU_ACTOR, &(), Options::new().gpus(1.0))
    }
}

/// A handle to a remote [`GpuActor`]. Every method waits for the actor's answer; a call the
/// actor refuses fails with [`Error::Gpu`] and leaves the actor serving.
#[derive(Debug, Clone)]
pub struct GpuActorHandle {
    actor: ActorRef,
}

impl RemoteActor for GpuActorHandle {
    fn from_ref(actor: ActorRef) -> Self {
        GpuActorHandle { actor }
    }

    fn actor_ref(&self) -> &ActorRef {
        &self.actor
    }
}

impl GpuActorHandle {
    async fn call<M: GpuMethod>(&self, args: &M::Args) -> Result<M::Output, Error>
    where
        Result<M::Output, GpuActorError>: ember_core::proto::Wire,
    {
        let reply: Result<M::Output, GpuActorError> = self.actor.call(M::NAME, args).await?;
        Ok(reply?)
    }

    /// A buffer named `name` holding `data` (`Vec<f32>`, `&[half::f16]`, ...), replacing any
    /// buffer of that name.
    pub async fn put(&self, name: &str, data: impl Into<HostData>) -> Result<BufferInfo, Error> {
        self.call::<Put>(&(name.to_owned(), data.into())).await
    }

    /// A buffer named `name` of `len` zeros of type `T`, replacing any buffer of that name.
    pub async fn alloc<T: Element>(&self, name: &str, len: usize) -> Result<BufferInfo, Error> {
        self.alloc_elements(name, T::TYPE, len).await
    }

    /// [`GpuActorHandle::alloc`] with the element type chosen at run time.
    pub async fn alloc_elements(
        &self,
        name: &str,
        element: ElementType,
        len: usize,
    ) -> Result<BufferInfo, Error> {
        self.call::<Alloc>(&(name.to_owned(), element.into(), len as u64))
            .await
    }

    /// A copy of the elements of buffer `name`, which must hold `T`s.
    pub async fn get<T: Element>(&self, name: &str) -> Result<Vec<T>, Error> {
        Ok(self.get_data(name).await?.into_vec()?)
    }

    /// A copy of the elements of buffer `name`, whatever their type.
    pub async fn get_data(&self, name: &str) -> Result<HostData, Error> {
        self.call::<Get>(&(name.to_owned(),)).await
    }

    /// Frees buffer `name`.
    pub async fn free(&self, name: &str) -> Result<BufferInfo, Error> {
        self.call::<Free>(&(name.to_owned(),)).await
    }

    /// Runs registered kernel `kernel` (see `ember::kernels::registry::KERNELS`) on `args`
    /// and returns once it has finished.
    pub async fn launch(
        &self,
        kernel: &str,
        args: impl IntoIterator<Item = LaunchArg>,
    ) -> Result<(), Error> {
        self.call::<Launch>(&(kernel.to_owned(), args.into_iter().collect()))
            .await
    }

    /// Compiles CUDA C `source` with NVRTC on the actor's GPU and keeps its `extern "C"`
    /// function `entry`. A source that does not compile fails with
    /// [`GpuActorError::Compile`] carrying the compiler's log; an actor without a usable CUDA
    /// GPU answers [`GpuActorError::CudaUnavailable`].
    pub async fn compile_user(&self, source: &str, entry: &str) -> Result<UserKernelInfo, Error> {
        self.call::<CompileUser>(&(source.to_owned(), entry.to_owned()))
            .await
    }

    /// Runs compiled user kernel `entry` with `args` in the order of its C signature
    /// (buffers as device pointers, `F32` as `float`, `U32` as `unsigned int`).
    pub async fn launch_user(
        &self,
        entry: &str,
        geometry: LaunchGeometry,
        args: impl IntoIterator<Item = LaunchArg>,
    ) -> Result<(), Error> {
        let args = (
            entry.to_owned(),
            geometry.into(),
            args.into_iter().collect(),
        );
        self.call::<LaunchUser>(&args).await
    }

    /// The backend its kernels run on, the device, memory in use and its limit, its buffers.
    pub async fn info(&self) -> Result<GpuInfo, Error> {
        self.call::<Info>(&()).await
    }

    /// The untyped reference: id, node, what it was given; `kill()` stops it.
    pub fn actor(&self) -> &ActorRef {
        &self.actor
    }
}
