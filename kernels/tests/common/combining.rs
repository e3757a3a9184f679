//! The combining of collective operations (`Device::combine`, `Device::divide`) and the
//! partial copies around it, on a device handle, against `reference::combine` bit for bit.

use super::Rng;
use ember_kernels::reference::{self, Combinable, CombineOp, Operands};
use ember_kernels::{Device, Element};
use half::{bf16, f16};

/// A type whose values the check draws from every bit pattern (NaNs, infinities,
/// subnormals, signed zeros) as well as from ordinary numbers.
trait Bits: Element + Combinable + PartialEq + std::fmt::Debug {
    fn from_random(rng: &mut Rng, ordinary: bool) -> Self;
    fn bits(self) -> u32;
    fn is_nan(self) -> bool;
}

impl Bits for f32 {
    fn from_random(rng: &mut Rng, ordinary: bool) -> Self {
        if ordinary {
            rng.f32(-1e3, 1e3)
        } else {
            f32::from_bits(rng.f32(0.0, 1.0).to_bits().rotate_left(13) ^ rng.next_u32())
        }
    }
    fn bits(self) -> u32 {
        self.to_bits()
    }
    fn is_nan(self) -> bool {
        self.is_nan()
    }
}

impl Bits for f16 {
    fn from_random(rng: &mut Rng, ordinary: bool) -> Self {
        if ordinary {
            f16::from_f32(rng.f32(-100.0, 100.0))
        } else {
            f16::from_bits(rng.next_u32() as u16)
        }
    }
    fn bits(self) -> u32 {
        u32::from(self.to_bits())
    }
    fn is_nan(self) -> bool {
        self.is_nan()
    }
}

impl Bits for bf16 {
    fn from_random(rng: &mut Rng, ordinary: bool) -> Self {
        if ordinary {
            bf16::from_f32(rng.f32(-100.0, 100.0))
        } else {
            bf16::from_bits(rng.next_u32() as u16)
        }
    }
    fn bits(self) -> u32 {
        u32::from(self.to_bits())
    }
    fn is_nan(self) -> bool {
        self.is_nan()
    }
}

/// Every operation, operand order and element type on `n` elements: the device's result
/// has the reference's bits (a NaN from arithmetic may carry another payload).
pub(crate) fn check_combining(device: &Device, n: usize, seed: u64) {
    check_type::<f32>(device, n, seed);
    check_type::<f16>(device, n, seed + 1);
    check_type::<bf16>(device, n, seed + 2);
}

fn check_type<T: Bits>(device: &Device, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let values =
        |rng: &mut Rng| -> Vec<T> { (0..n).map(|i| T::from_random(rng, i % 4 != 0)).collect() };
    let (acc, incoming) = (values(&mut rng), values(&mut rng));
    let what = std::any::type_name::<T>();
    for op in [
        CombineOp::Sum,
        CombineOp::Product,
        CombineOp::Min,
        CombineOp::Max,
    ] {
        for operands in [Operands::AccumulatorFirst, Operands::IncomingFirst] {
            let mut want = acc.clone();
            reference::combine(op, operands, &mut want, &incoming);
            let acc_buffer = device.upload(&acc).unwrap();
            let incoming_buffer = device.upload(&incoming).unwrap();
            device
                .combine(op, operands, &acc_buffer, &incoming_buffer, n)
                .unwrap();
            let got = device.download::<T>(&acc_buffer).unwrap();
            let arithmetic = matches!(op, CombineOp::Sum | CombineOp::Product);
            same_bits(
                &format!("{what} {op:?} {operands:?}"),
                &got,
                &want,
                arithmetic,
            );
        }
    }
    for divisor in [1, 3, 7] {
        let mut want = acc.clone();
        reference::divide(&mut want, divisor);
        let buffer = device.upload(&acc).unwrap();
        device.divide(&buffer, n, divisor).unwrap();
        let got = device.download::<T>(&buffer).unwrap();
        same_bits(&format!("{what} divide by {divisor}"), &got, &want, true);
    }
}

fn same_bits<T: Bits>(what: &str, got: &[T], want: &[T], nan_payload_may_differ: bool) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.bits() == w.bits() || (nan_payload_may_differ && g.is_nan() && w.is_nan());
        assert!(
            same,
            "{what}: element {i}: got {g:?} ({:#x}), reference {w:?} ({:#x})",
            g.bits(),
            w.bits()
        );
    }
}

/// `write` and `read_into` move exactly the range asked for, and only a part of a buffer
/// can be combined.
pub(crate) fn check_partial_copies(device: &Device) {
    let buffer = device.upload(&[0.0f32; 8]).unwrap();
    device.write(&buffer, 3, &[1.0f32, 2.0, 3.0]).unwrap();
    assert_eq!(
        device.download::<f32>(&buffer).unwrap(),
        [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0]
    );
    let mut out = [9.0f32; 2];
    device.read_into(&buffer, 4, &mut out).unwrap();
    assert_eq!(out, [2.0, 3.0]);
    // The first 4 elements only.
    let ones = device.upload(&[1.0f32; 8]).unwrap();
    device
        .combine(
            CombineOp::Sum,
            Operands::AccumulatorFirst,
            &buffer,
            &ones,
            4,
        )
        .unwrap();
    assert_eq!(
        device.download::<f32>(&buffer).unwrap(),
        [1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 0.0, 0.0]
    );
    device.divide(&buffer, 5, 2).unwrap();
    assert_eq!(
        device.download::<f32>(&buffer).unwrap(),
        [0.5, 0.5, 0.5, 1.0, 1.0, 3.0, 0.0, 0.0]
    );
    // Empty ranges are fine anywhere up to the end.
    device.write::<f32>(&buffer, 8, &[]).unwrap();
    device.read_into::<f32>(&buffer, 8, &mut []).unwrap();
    device
        .combine(CombineOp::Max, Operands::IncomingFirst, &buffer, &ones, 0)
        .unwrap();
}
