//! The CUDA C sources of the registered kernels, from the `.cu` files under `kernels/cuda/`.

/// One CUDA C translation unit that NVRTC compiles into one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CudaSource {
    /// `cuda/elementwise.cu` (after `cuda/grid_stride.cuh`): `axpy`, `add`, `mul`, `scale`.
    Elementwise,
    /// `cuda/reduce.cu` (after `cuda/block_tree.cuh`): fixed-order `sum` and `max`.
    Reduce,
    /// `cuda/softmax.cu` (after `cuda/block_tree.cuh`): row-wise softmax.
    Softmax,
    /// `cuda/matmul_tiled.cu`: the hand-written shared-memory f32 matmul.
    MatmulTiled,
    /// `cuda/combine.cu` (after `cuda/grid_stride.cuh`): the element-wise combining and
    /// division of collective operations, on f32, f16 and bf16.
    Combine,
}

impl CudaSource {
    /// Every source, in a fixed order.
    pub const ALL: [CudaSource; 5] = [
        CudaSource::Elementwise,
        CudaSource::Reduce,
        CudaSource::Softmax,
        CudaSource::MatmulTiled,
        CudaSource::Combine,
    ];

    /// The file the source comes from, e.g. `elementwise.cu`.
    pub fn file_name(self) -> &'static str {
        match self {
            CudaSource::Elementwise => "elementwise.cu",
            CudaSource::Reduce => "reduce.cu",
            CudaSource::Softmax => "softmax.cu",
            CudaSource::MatmulTiled => "matmul_tiled.cu",
            CudaSource::Combine => "combine.cu",
        }
    }

    /// The full text NVRTC compiles (shared headers prepended, as NVRTC gets no include path).
    pub fn text(self) -> &'static str {
        match self {
            CudaSource::Elementwise => concat!(
                include_str!("../cuda/grid_stride.cuh"),
                include_str!("../cuda/elementwise.cu")
            ),
            CudaSource::Reduce => concat!(
                include_str!("../cuda/block_tree.cuh"),
                include_str!("../cuda/reduce.cu")
            ),
            CudaSource::Softmax => concat!(
                include_str!("../cuda/block_tree.cuh"),
                include_str!("../cuda/softmax.cu")
            ),
            CudaSource::MatmulTiled => include_str!("../cuda/matmul_tiled.cu"),
            CudaSource::Combine => concat!(
                include_str!("../cuda/grid_stride.cuh"),
                include_str!("../cuda/combine.cu")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_is_nonempty_and_has_no_nul() {
        for source in CudaSource::ALL {
            assert!(
                source.text().contains("__global__"),
                "{}",
                source.file_name()
            );
            assert!(!source.text().contains('\0'), "{}", source.file_name());
        }
    }
}
