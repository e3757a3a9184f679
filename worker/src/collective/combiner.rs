//! Where an operation's combining runs: on the host, or on the device a buffer lives on.
//!
//! The engine and the shared-memory path hand every combination the plan calls for to a
//! [`Combine`]. [`Host`] combines in place. [`OnDevice`] stages the two operands through
//! host memory into two device buffers, runs the device's combining kernel
//! (`ember_kernels::Device::combine`) and copies the result back, piece by piece. The plan,
//! and so the order of every combination, is the same either way, and the device's kernels
//! give the host's bits, so a group gets the same bits whichever way each rank combines.

use ember_core::collective::schedule::Order;
use ember_core::collective::ReduceOp;
use ember_kernels::{Buffer, Device, KernelError};

use super::element::{combine_op, divide, operands, reduce, Element};
use super::engine::Failure;
use super::link::SEGMENT_BYTES;

/// Carries out the combinations of one operation.
pub(crate) trait Combine<T> {
    /// `local ⊕ incoming` (or `incoming ⊕ local`, as `order` says) into `local`.
    fn combine(
        &mut self,
        op: ReduceOp,
        order: Order,
        local: &mut [T],
        incoming: &[T],
    ) -> Result<(), Failure>;
    /// Divides every element of `values` by `n` (the last step of a mean).
    fn divide(&mut self, values: &mut [T], n: usize) -> Result<(), Failure>;
}

/// Combines on the host, in place.
pub(crate) struct Host;

impl<T: Element> Combine<T> for Host {
    fn combine(
        &mut self,
        op: ReduceOp,
        order: Order,
        local: &mut [T],
        incoming: &[T],
    ) -> Result<(), Failure> {
        reduce(op, order, local, incoming);
        Ok(())
    }

    fn divide(&mut self, values: &mut [T], n: usize) -> Result<(), Failure> {
        divide(values, n);
        Ok(())
    }
}

/// Combines on `device`: each piece of up to a segment's worth of elements (or the whole
/// buffer, when smaller) is copied into two device buffers, combined there, and copied back.
pub(crate) struct OnDevice<'d> {
    device: &'d Device,
    acc: Buffer,
    incoming: Buffer,
}

impl<'d> OnDevice<'d> {
    /// Two staging buffers on `device` for combining a buffer of `len` elements of `T`.
    pub(crate) fn new<T: ember_kernels::Element>(
        device: &'d Device,
        len: usize,
    ) -> Result<Self, KernelError> {
        let segment = SEGMENT_BYTES / std::mem::size_of::<T>();
        let capacity = segment.min(len).max(1);
        Ok(OnDevice {
            device,
            acc: device.alloc::<T>(capacity)?,
            incoming: device.alloc::<T>(capacity)?,
        })
    }
}

impl<T: Element + ember_kernels::Element> Combine<T> for OnDevice<'_> {
    fn combine(
        &mut self,
        op: ReduceOp,
        order: Order,
        local: &mut [T],
        incoming: &[T],
    ) -> Result<(), Failure> {
        let piece = self.acc.len();
        for (local, incoming) in local.chunks_mut(piece).zip(incoming.chunks(piece)) {
            let len = local.len();
            let device = self.device;
            device.write(&self.acc, 0, local).map_err(failed)?;
            device.write(&self.incoming, 0, incoming).map_err(failed)?;
            device
                .combine(
                    combine_op(op),
                    operands(order),
                    &self.acc,
                    &self.incoming,
                    len,
                )
                .map_err(failed)?;
            device.read_into(&self.acc, 0, local).map_err(failed)?;
        }
        Ok(())
    }

    fn divide(&mut self, values: &mut [T], n: usize) -> Result<(), Failure> {
        for piece in values.chunks_mut(self.acc.len()) {
            let device = self.device;
            device.write(&self.acc, 0, piece).map_err(failed)?;
            device.divide(&self.acc, piece.len(), n).map_err(failed)?;
            device.read_into(&self.acc, 0, piece).map_err(failed)?;
        }
        Ok(())
    }
}

fn failed(error: KernelError) -> Failure {
    Failure::Device(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_a_device_pieces_combine_as_on_the_host() {
        // Longer than a segment, so the device combines it in several pieces.
        let n = SEGMENT_BYTES / 4 * 2 + 3;
        let local: Vec<f32> = (0..n).map(|i| (i as f32).sin() * 1e4).collect();
        let incoming: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).cos()).collect();
        let device = Device::cpu();
        for (op, order) in [
            (ReduceOp::Sum, Order::IncomingFirst),
            (ReduceOp::Min, Order::LocalFirst),
            (ReduceOp::Mean, Order::LocalFirst),
        ] {
            let mut on_host = local.clone();
            Host.combine(op, order, &mut on_host, &incoming).unwrap();
            Combine::<f32>::divide(&mut Host, &mut on_host, 3).unwrap();
            let mut on_device = local.clone();
            let mut staged = OnDevice::new::<f32>(&device, n).unwrap();
            staged
                .combine(op, order, &mut on_device, &incoming)
                .unwrap();
            Combine::<f32>::divide(&mut staged, &mut on_device, 3).unwrap();
            assert!(
                on_host
                    .iter()
                    .zip(&on_device)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{op:?} {order:?}"
            );
        }
    }

    #[test]
    fn staging_buffers_count_against_the_device_memory_limit() {
        let device = Device::cpu().with_memory_limit(1024);
        let refused = OnDevice::new::<f32>(&device, 1 << 20).err();
        assert!(
            matches!(refused, Some(KernelError::MemoryLimit { .. })),
            "{refused:?}"
        );
        assert_eq!(device.memory_in_use(), 0);
    }
}
