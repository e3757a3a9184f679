//! Shared by the CPU-device and GPU tests: run every registered kernel on a device handle
//! and compare what comes back with the CPU reference.

#![allow(dead_code)] // each test binary uses part of it

pub(crate) mod combining;

use ember_kernels::reference::{self, MatmulShape};
use ember_kernels::{Device, KernelArg, KernelError};
use half::{bf16, f16};

/// A small deterministic generator, so a failure replays.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[low, high)`.
    pub(crate) fn f32(&mut self, low: f32, high: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        low + (high - low) * unit
    }

    pub(crate) fn vec(&mut self, n: usize, low: f32, high: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(low, high)).collect()
    }
}

/// How close a device result must be to the reference.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tolerance {
    /// The same bits.
    Exact,
    /// `|got - want| <= relative * |want| + absolute`.
    Close { relative: f64, absolute: f64 },
}

pub(crate) fn assert_matches(what: &str, got: &[f32], want: &[f32], tolerance: Tolerance) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = match tolerance {
            Tolerance::Exact => g.to_bits() == w.to_bits(),
            Tolerance::Close { relative, absolute } => {
                let (g, w) = (f64::from(*g), f64::from(*w));
                (g - w).abs() <= relative * w.abs() + absolute
            }
        };
        assert!(
            ok,
            "{what}: element {i}: got {g:e}, reference {w:e} ({tolerance:?})"
        );
    }
}

fn run_f32(
    device: &Device,
    kernel: &str,
    args: &[KernelArg<'_>],
    out: &ember_kernels::Buffer,
) -> Vec<f32> {
    device
        .launch(kernel, args)
        .unwrap_or_else(|error| panic!("{kernel}: {error}"));
    device.synchronize().unwrap();
    device.download::<f32>(out).unwrap()
}

/// axpy, add, mul and scale over `n` elements: exact on every backend.
pub(crate) fn check_elementwise(device: &Device, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (x, y) = (rng.vec(n, -1e3, 1e3), rng.vec(n, -1e3, 1e3));
    let a = rng.f32(-4.0, 4.0);
    let (xb, yb) = (device.upload(&x).unwrap(), device.upload(&y).unwrap());
    let out = device.alloc::<f32>(n).unwrap();

    let mut want = y.clone();
    reference::axpy(a, &x, &mut want).unwrap();
    let y_in_place = device.upload(&y).unwrap();
    let got = run_f32(
        device,
        "axpy",
        &[a.into(), (&xb).into(), (&y_in_place).into()],
        &y_in_place,
    );
    assert_matches(&format!("axpy n={n}"), &got, &want, Tolerance::Exact);

    let mut want = vec![0.0; n];
    reference::add(&x, &y, &mut want).unwrap();
    let got = run_f32(
        device,
        "add",
        &[(&xb).into(), (&yb).into(), (&out).into()],
        &out,
    );
    assert_matches(&format!("add n={n}"), &got, &want, Tolerance::Exact);

    reference::mul(&x, &y, &mut want).unwrap();
    let got = run_f32(
        device,
        "mul",
        &[(&xb).into(), (&yb).into(), (&out).into()],
        &out,
    );
    assert_matches(&format!("mul n={n}"), &got, &want, Tolerance::Exact);

    reference::scale(a, &x, &mut want).unwrap();
    let got = run_f32(
        device,
        "scale",
        &[a.into(), (&xb).into(), (&out).into()],
        &out,
    );
    assert_matches(&format!("scale n={n}"), &got, &want, Tolerance::Exact);
}

/// sum, mean and max over `n` elements: the same bits as the reference on every backend.
pub(crate) fn check_reductions(device: &Device, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.vec(n, -1e3, 1e3);
    let xb = device.upload(&x).unwrap();
    let out = device.alloc::<f32>(1).unwrap();
    let sum = run_f32(device, "sum", &[(&xb).into(), (&out).into()], &out);
    assert_matches(
        &format!("sum n={n}"),
        &sum,
        &[reference::sum(&x)],
        Tolerance::Exact,
    );
    if n == 0 {
        for kernel in ["mean", "max"] {
            assert!(matches!(
                device.launch(kernel, &[(&xb).into(), (&out).into()]),
                Err(KernelError::EmptyInput { .. })
            ));
        }
        return;
    }
    let mean = run_f32(device, "mean", &[(&xb).into(), (&out).into()], &out);
    assert_matches(
        &format!("mean n={n}"),
        &mean,
        &[reference::mean(&x).unwrap()],
        Tolerance::Exact,
    );
    let max = run_f32(device, "max", &[(&xb).into(), (&out).into()], &out);
    assert_matches(
        &format!("max n={n}"),
        &max,
        &[reference::max(&x).unwrap()],
        Tolerance::Exact,
    );
}

/// Row-wise softmax of a `rows x cols` matrix.
pub(crate) fn check_softmax(
    device: &Device,
    rows: usize,
    cols: usize,
    tolerance: Tolerance,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let x = rng.vec(rows * cols, -30.0, 30.0);
    let mut want = vec![0.0; x.len()];
    reference::softmax(&x, rows, cols, &mut want).unwrap();
    let xb = device.upload(&x).unwrap();
    let yb = device.alloc::<f32>(x.len()).unwrap();
    let args = [
        (&xb).into(),
        (&yb).into(),
        KernelArg::U32(rows as u32),
        KernelArg::U32(cols as u32),
    ];
    let got = run_f32(device, "softmax", &args, &yb);
    assert_matches(&format!("softmax {rows}x{cols}"), &got, &want, tolerance);
}

fn shape_args(shape: MatmulShape) -> [KernelArg<'static>; 3] {
    [
        KernelArg::U32(shape.m as u32),
        KernelArg::U32(shape.k as u32),
        KernelArg::U32(shape.n as u32),
    ]
}

/// Per-element bound `slack * (k + 2) * eps * sum_p |a_ip b_pj|` around the reference.
fn matmul_bounds(a: &[f32], b: &[f32], shape: MatmulShape, slack: f64) -> Vec<f64> {
    let MatmulShape { m, k, n } = shape;
    let mut bounds = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let magnitude: f64 = (0..k)
                .map(|p| (f64::from(a[i * k + p]) * f64::from(b[p * n + j])).abs())
                .sum();
            bounds.push(slack * (k as f64 + 2.0) * f64::from(f32::EPSILON) * magnitude + 1e-30);
        }
    }
    bounds
}

/// An f32 matmul kernel (`matmul_f32` through cuBLAS or `matmul_tiled_f32`).
/// `exact` asks for the reference's bits; otherwise the accumulation-error bound applies.
pub(crate) fn check_matmul_f32(
    device: &Device,
    kernel: &str,
    shape: MatmulShape,
    exact: bool,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let a = rng.vec(shape.m * shape.k, -2.0, 2.0);
    let b = rng.vec(shape.k * shape.n, -2.0, 2.0);
    let mut want = vec![0.0; shape.m * shape.n];
    reference::matmul_f32(&a, &b, &mut want, shape).unwrap();
    let (ab, bb) = (device.upload(&a).unwrap(), device.upload(&b).unwrap());
    let cb = device.alloc::<f32>(want.len()).unwrap();
    let [m, k, n] = shape_args(shape);
    let got = run_f32(
        device,
        kernel,
        &[(&ab).into(), (&bb).into(), (&cb).into(), m, k, n],
        &cb,
    );
    if exact {
        assert_matches(
            &format!("{kernel} {shape:?}"),
            &got,
            &want,
            Tolerance::Exact,
        );
        return;
    }
    for (i, bound) in matmul_bounds(&a, &b, shape, 2.0).iter().enumerate() {
        let diff = (f64::from(got[i]) - f64::from(want[i])).abs();
        assert!(
            diff <= *bound,
            "{kernel} {shape:?} element {i}: {} vs {} (bound {bound:e})",
            got[i],
            want[i]
        );
    }
}

/// `matmul_f16` and `matmul_bf16`: within the f32 accumulation bound plus one rounding of
/// the output (`exact` asks for the reference's bits).
pub(crate) fn check_matmul_half(device: &Device, shape: MatmulShape, exact: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let a = rng.vec(shape.m * shape.k, -2.0, 2.0);
    let b = rng.vec(shape.k * shape.n, -2.0, 2.0);
    let [m, k, n] = shape_args(shape);

    let a16: Vec<f16> = a.iter().map(|v| f16::from_f32(*v)).collect();
    let b16: Vec<f16> = b.iter().map(|v| f16::from_f32(*v)).collect();
    let mut want16 = vec![f16::ZERO; shape.m * shape.n];
    reference::matmul_f16(&a16, &b16, &mut want16, shape).unwrap();
    let (ab, bb) = (device.upload(&a16).unwrap(), device.upload(&b16).unwrap());
    let cb = device.alloc::<f16>(want16.len()).unwrap();
    device
        .launch(
            "matmul_f16",
            &[(&ab).into(), (&bb).into(), (&cb).into(), m, k, n],
        )
        .unwrap();
    let got16: Vec<f32> = device
        .download::<f16>(&cb)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    let want16: Vec<f32> = want16.iter().map(|v| v.to_f32()).collect();
    let a16w: Vec<f32> = a16.iter().map(|v| v.to_f32()).collect();
    let b16w: Vec<f32> = b16.iter().map(|v| v.to_f32()).collect();
    compare_half(
        "matmul_f16",
        &got16,
        &want16,
        &matmul_bounds(&a16w, &b16w, shape, 2.0),
        2f64.powi(-10),
        exact,
    );

    let abf: Vec<bf16> = a.iter().map(|v| bf16::from_f32(*v)).collect();
    let bbf: Vec<bf16> = b.iter().map(|v| bf16::from_f32(*v)).collect();
    let mut wantbf = vec![bf16::ZERO; shape.m * shape.n];
    reference::matmul_bf16(&abf, &bbf, &mut wantbf, shape).unwrap();
    let (ab, bb) = (device.upload(&abf).unwrap(), device.upload(&bbf).unwrap());
    let cb = device.alloc::<bf16>(wantbf.len()).unwrap();
    device
        .launch(
            "matmul_bf16",
            &[(&ab).into(), (&bb).into(), (&cb).into(), m, k, n],
        )
        .unwrap();
    let gotbf: Vec<f32> = device
        .download::<bf16>(&cb)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    let wantbf: Vec<f32> = wantbf.iter().map(|v| v.to_f32()).collect();
    let abfw: Vec<f32> = abf.iter().map(|v| v.to_f32()).collect();
    let bbfw: Vec<f32> = bbf.iter().map(|v| v.to_f32()).collect();
    compare_half(
        "matmul_bf16",
        &gotbf,
        &wantbf,
        &matmul_bounds(&abfw, &bbfw, shape, 2.0),
        2f64.powi(-7),
        exact,
    );
}

/// `one_ulp` is the output type's relative spacing: the device and the reference may round
/// a slightly different f32 sum to neighbouring values.
fn compare_half(what: &str, got: &[f32], want: &[f32], bounds: &[f64], one_ulp: f64, exact: bool) {
    if exact {
        assert_matches(what, got, want, Tolerance::Exact);
        return;
    }
    for i in 0..got.len() {
        let (g, w) = (f64::from(got[i]), f64::from(want[i]));
        let bound = bounds[i] + one_ulp * w.abs() + 1e-7;
        assert!(
            (g - w).abs() <= bound,
            "{what} element {i}: {g} vs {w} (bound {bound:e})"
        );
    }
}

/// A device-to-device copy: every element type, the same bits; refusals of other types,
/// other lengths and another handle's buffer; a buffer onto itself and empty buffers.
pub(crate) fn check_copy(device: &Device, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.vec(n, -1e30, 1e30);
    let (src, dst) = (device.upload(&x).unwrap(), device.alloc::<f32>(n).unwrap());
    device.copy(&src, &dst).unwrap();
    assert_eq!(device.download::<f32>(&dst).unwrap(), x, "copy of {n} f32");
    let halves: Vec<f16> = x
        .iter()
        .map(|v| f16::from_bits(v.to_bits() as u16))
        .collect();
    let (src16, dst16) = (
        device.upload(&halves).unwrap(),
        device.alloc::<f16>(n).unwrap(),
    );
    device.copy(&src16, &dst16).unwrap();
    let got: Vec<u16> = device
        .download::<f16>(&dst16)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let want: Vec<u16> = halves.iter().map(|v| v.to_bits()).collect();
    assert_eq!(got, want, "copy of {n} f16 (bits)");
    let brains: Vec<bf16> = x.iter().map(|v| bf16::from_f32(*v)).collect();
    let (srcb, dstb) = (
        device.upload(&brains).unwrap(),
        device.alloc::<bf16>(n).unwrap(),
    );
    device.copy(&srcb, &dstb).unwrap();
    assert_eq!(device.download::<bf16>(&dstb).unwrap(), brains);
    // Onto itself: nothing changes.
    device.copy(&src, &src).unwrap();
    assert_eq!(device.download::<f32>(&src).unwrap(), x);
    // Refusals.
    assert!(matches!(
        device.copy(&src, &dst16),
        Err(KernelError::ElementType { .. })
    ));
    let longer = device.alloc::<f32>(n + 1).unwrap();
    assert!(matches!(
        device.copy(&src, &longer),
        Err(KernelError::LengthMismatch { .. })
    ));
    let other = Device::cpu();
    let foreign = other.alloc::<f32>(n).unwrap();
    assert!(matches!(
        device.copy(&foreign, &dst),
        Err(KernelError::ForeignBuffer { .. })
    ));
    let (e1, e2) = (
        device.alloc::<f32>(0).unwrap(),
        device.alloc::<f32>(0).unwrap(),
    );
    device.copy(&e1, &e2).unwrap();
}
