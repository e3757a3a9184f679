//! Partial copies and the combining kernels of `cuda/combine.cu` on the CUDA backend: what
//! a collective operation asks of a GPU.

use super::backend::{driver, CudaBackend};
use super::device_buffers::{CudaData, Inputs};
use super::presence::guarded;
use super::registered::{ELEMENTWISE_THREADS, MAX_GRID_BLOCKS};
use crate::device::{BufferId, Combining, ElementSlice, ElementSliceMut, ElementType, Step};
use crate::reference::{CombineOp, Operands};
use crate::sources::CudaSource;
use crate::KernelError;
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};

/// The entry of `cuda/combine.cu` that runs `step` on `element`.
pub(crate) fn entry(step: &Step, element: ElementType) -> &'static str {
    use CombineOp::*;
    use ElementType::*;
    match (step, element) {
        (Step::Combine { op: Sum, .. }, F32) => "combine_sum_f32",
        (Step::Combine { op: Sum, .. }, F16) => "combine_sum_f16",
        (Step::Combine { op: Sum, .. }, Bf16) => "combine_sum_bf16",
        (Step::Combine { op: Product, .. }, F32) => "combine_product_f32",
        (Step::Combine { op: Product, .. }, F16) => "combine_product_f16",
        (Step::Combine { op: Product, .. }, Bf16) => "combine_product_bf16",
        (Step::Combine { op: Min, .. }, F32) => "combine_min_f32",
        (Step::Combine { op: Min, .. }, F16) => "combine_min_f16",
        (Step::Combine { op: Min, .. }, Bf16) => "combine_min_bf16",
        (Step::Combine { op: Max, .. }, F32) => "combine_max_f32",
        (Step::Combine { op: Max, .. }, F16) => "combine_max_f16",
        (Step::Combine { op: Max, .. }, Bf16) => "combine_max_bf16",
        (Step::Divide { .. }, F32) => "divide_f32",
        (Step::Divide { .. }, F16) => "divide_f16",
        (Step::Divide { .. }, Bf16) => "divide_bf16",
    }
}

/// Every entry [`entry`] names.
#[cfg(test)]
pub(crate) fn every_entry() -> Vec<&'static str> {
    let steps = [
        CombineOp::Sum,
        CombineOp::Product,
        CombineOp::Min,
        CombineOp::Max,
    ]
    .map(|op| Step::Combine {
        op,
        operands: Operands::AccumulatorFirst,
        incoming: BufferId(0),
    });
    let elements = [ElementType::F32, ElementType::F16, ElementType::Bf16];
    steps
        .iter()
        .chain(&[Step::Divide { n: 1 }])
        .flat_map(|step| elements.map(|element| entry(step, element)))
        .collect()
}

impl CudaBackend {
    /// Copies `data` into buffer `id` from element `at` on (bounds checked by the caller).
    pub(crate) fn write(
        &self,
        id: BufferId,
        at: usize,
        data: ElementSlice<'_>,
    ) -> Result<(), KernelError> {
        let mut buffers = self.buffers.lock();
        let target = buffers
            .get_mut(&id)
            .ok_or(KernelError::ForeignBuffer { id: id.0 })?;
        guarded("cuMemcpyHtoD", || match (target, data) {
            (CudaData::F32(t), ElementSlice::F32(d)) => self.copy_in(t, at, d),
            (CudaData::F16(t), ElementSlice::F16(d)) => self.copy_in(t, at, d),
            (CudaData::Bf16(t), ElementSlice::Bf16(d)) => self.copy_in(t, at, d),
            (t, d) => Err(KernelError::ElementType {
                requested: d.element().name(),
                actual: t.element_name(),
            }),
        })
    }

    /// Copies `out.len()` elements of buffer `id` from element `at` on into `out`.
    pub(crate) fn read_into(
        &self,
        id: BufferId,
        at: usize,
        out: ElementSliceMut<'_>,
    ) -> Result<(), KernelError> {
        let buffers = self.buffers.lock();
        let source = buffers
            .get(&id)
            .ok_or(KernelError::ForeignBuffer { id: id.0 })?;
        guarded("cuMemcpyDtoH", || match (source, out) {
            (CudaData::F32(s), ElementSliceMut::F32(o)) => self.copy_out(s, at, o),
            (CudaData::F16(s), ElementSliceMut::F16(o)) => self.copy_out(s, at, o),
            (CudaData::Bf16(s), ElementSliceMut::Bf16(o)) => self.copy_out(s, at, o),
            (s, o) => Err(KernelError::ElementType {
                requested: o.element().name(),
                actual: s.element_name(),
            }),
        })
    }

    fn copy_in<T: DeviceRepr>(
        &self,
        target: &mut CudaSlice<T>,
        at: usize,
        data: &[T],
    ) -> Result<(), KernelError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut view = target.slice_mut(at..at + data.len());
        // A copy from pageable host memory: the data has been read when this returns.
        self.stream
            .memcpy_htod(data, &mut view)
            .map_err(driver("cuMemcpyHtoD"))
    }

    fn copy_out<T: DeviceRepr>(
        &self,
        source: &CudaSlice<T>,
        at: usize,
        out: &mut [T],
    ) -> Result<(), KernelError> {
        if out.is_empty() {
            return Ok(());
        }
        let view = source.slice(at..at + out.len());
        // Ordered after the kernels on the stream; `out` is filled when this returns.
        self.stream
            .memcpy_dtoh(&view, out)
            .map_err(driver("cuMemcpyDtoH"))
    }

    /// A checked combine or divide, by its kernel in `cuda/combine.cu`.
    pub(crate) fn combine(&self, combining: &Combining) -> Result<(), KernelError> {
        if combining.len == 0 {
            return Ok(());
        }
        guarded("kernel launch", || {
            let function = self.function(
                CudaSource::Combine,
                entry(&combining.step, combining.element),
            )?;
            let n = combining.len as u32; // checked against u32::MAX by the caller
            let config = LaunchConfig {
                grid_dim: (n.div_ceil(ELEMENTWISE_THREADS).min(MAX_GRID_BLOCKS), 1, 1),
                block_dim: (ELEMENTWISE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            self.buffers
                .with_output_data(combining.acc, |buffers, acc| {
                    let mut launch = self.stream.launch_builder(&function);
                    match acc {
                        CudaData::F32(acc) => launch.arg(acc),
                        CudaData::F16(acc) => launch.arg(acc),
                        CudaData::Bf16(acc) => launch.arg(acc),
                    };
                    // Set by the step; pushed as arguments, so they outlive the launch.
                    let incoming_first: i32;
                    let divisor: f32;
                    match combining.step {
                        Step::Combine {
                            incoming, operands, ..
                        } => {
                            incoming_first = i32::from(operands == Operands::IncomingFirst);
                            match combining.element {
                                ElementType::F32 => launch.arg(buffers.f32(incoming)?),
                                ElementType::F16 => launch.arg(buffers.f16(incoming)?),
                                ElementType::Bf16 => launch.arg(buffers.bf16(incoming)?),
                            };
                            launch.arg(&n).arg(&incoming_first);
                        }
                        Step::Divide { n: by } => {
                            divisor = by as f32;
                            launch.arg(&n).arg(&divisor);
                        }
                    }
                    // SAFETY: the arguments match the entry's C signature:
                    // combine_<op>_<type>(T *acc, const T *incoming, unsigned int n, int
                    // incoming_first) or divide_<type>(T *values, unsigned int n, float d),
                    // with T the buffers' element type (f32 as float, f16 and bf16 as their
                    // 16 bits). Both buffers hold at least n elements (checked by the caller)
                    // and the kernels touch no index at or past n.
                    unsafe { launch.launch(config) }.map_err(driver("cuLaunchKernel"))?;
                    Ok(())
                })
        })
    }
}
