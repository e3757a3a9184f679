//! A kernel compiled from a caller's CUDA C source, and the launch shape it runs with.

use super::DeviceId;
use cudarc::driver::CudaFunction;
use std::fmt;

/// Grid, block and dynamic shared memory of a user kernel launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchGeometry {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Bytes of dynamic shared memory per block.
    pub shared_mem_bytes: u32,
}

impl LaunchGeometry {
    /// A 1-D launch of `threads_per_block`-thread blocks covering `n` threads.
    pub fn covering(n: u32, threads_per_block: u32) -> LaunchGeometry {
        let threads_per_block = threads_per_block.max(1);
        LaunchGeometry {
            grid: (n.div_ceil(threads_per_block).max(1), 1, 1),
            block: (threads_per_block, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// A caller's kernel, compiled by NVRTC for one CUDA device handle (see
/// [`super::Device::compile_user`]); launch it with [`super::Device::launch_user`].
#[derive(Clone)]
pub struct UserKernel {
    pub(crate) device: DeviceId,
    pub(crate) entry: String,
    pub(crate) function: CudaFunction,
    pub(crate) from_cache: bool,
}

impl UserKernel {
    /// The entry point's name.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// Whether its PTX came from the on-disk cache rather than a fresh NVRTC compile.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }
}

impl fmt::Debug for UserKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKernel")
            .field("entry", &self.entry)
            .field("from_cache", &self.from_cache)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_rounds_up_and_never_gives_an_empty_grid() {
        assert_eq!(LaunchGeometry::covering(1000, 256).grid, (4, 1, 1));
        assert_eq!(LaunchGeometry::covering(1024, 256).grid, (4, 1, 1));
        assert_eq!(LaunchGeometry::covering(0, 256).grid, (1, 1, 1));
        assert_eq!(LaunchGeometry::covering(5, 0).block, (1, 1, 1));
    }
}
