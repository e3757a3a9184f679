//! Item 3 (b) and the kernel benchmarks of (f): every kernel on the device against its CPU
//! reference (the content of `kernels/tests/gpu.rs`, through the same helpers), then the
//! bandwidth of the element-wise kernels and reductions against a device-to-device copy and
//! the matmuls' TFLOP/s.

use crate::common::{self, Tolerance};
use crate::report::{Done, Metric, Outcome};
use ember_kernels::cache::KernelCache;
use ember_kernels::reference::{MatmulShape, REDUCE_BLOCK_THREADS, REDUCE_ITEMS_PER_THREAD};
use ember_kernels::{Backend, Buffer, Device, KernelArg, KernelError, LaunchGeometry};
use half::bf16;
use serde_json::Value;
use std::time::Instant;

const CHUNK: usize = REDUCE_BLOCK_THREADS * REDUCE_ITEMS_PER_THREAD;

/// The device the kernel checks run on: CUDA device 0, or (dry run) the CPU backend.
pub(crate) struct Target {
    pub(crate) device: Device,
    pub(crate) dry_run: bool,
    cache: tempfile::TempDir,
}

impl Target {
    pub(crate) fn open(dry_run: bool) -> Result<Target, String> {
        let cache = tempfile::tempdir().map_err(|e| e.to_string())?;
        let device = if dry_run {
            Device::cpu()
        } else {
            Device::open_cuda_with_cache(0, KernelCache::new(cache.path()))
                .map_err(|e| format!("CUDA device 0: {e}"))?
        };
        Ok(Target {
            device,
            dry_run,
            cache,
        })
    }

    /// A second handle on the same device over the same cache (what a restarted worker does).
    fn reopen(&self) -> Result<Device, String> {
        if self.dry_run {
            return Ok(Device::cpu());
        }
        Device::open_cuda_with_cache(0, KernelCache::new(self.cache.path()))
            .map_err(|e| e.to_string())
    }

    /// The sizes to run: all on a GPU; on the CPU backend those up to 2^22 elements.
    fn sizes(&self, sizes: &[usize]) -> Vec<usize> {
        sizes
            .iter()
            .copied()
            .filter(|&n| !self.dry_run || n <= 1 << 22)
            .collect()
    }

    fn note(&self) -> &'static str {
        if self.dry_run {
            " (CPU backend; sizes over 2^22 left out)"
        } else {
            ""
        }
    }
}

pub(crate) fn elementwise(t: &Target) -> Outcome {
    let sizes = t.sizes(&[0, 1, 255, 256, 257, 100_003, 1 << 22]);
    for (seed, &n) in sizes.iter().enumerate() {
        common::check_elementwise(&t.device, n, seed as u64);
    }
    Ok(Done::pass(format!(
        "axpy, add, mul, scale bit-exact at {sizes:?}{}",
        t.note()
    )))
}

pub(crate) fn reductions(t: &Target) -> Outcome {
    let sizes = t.sizes(&[
        0,
        1,
        255,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        CHUNK * CHUNK,
        CHUNK * CHUNK + 3,
        (1 << 24) + 12_345,
    ]);
    for (seed, &n) in sizes.iter().enumerate() {
        common::check_reductions(&t.device, n, seed as u64);
    }
    // The same bits on every run.
    let x: Vec<f32> = (0..1_000_003u64)
        .map(|i| ((i * 7919) % 1000) as f32 * 0.37 - 150.0)
        .collect();
    let xb = t.device.upload(&x).map_err(|e| e.to_string())?;
    let out = t.device.alloc::<f32>(1).map_err(|e| e.to_string())?;
    let mut runs = Vec::new();
    for _ in 0..5 {
        t.device
            .launch("sum", &[(&xb).into(), (&out).into()])
            .map_err(|e| e.to_string())?;
        runs.push(t.device.download::<f32>(&out).map_err(|e| e.to_string())?[0].to_bits());
    }
    let want = ember_kernels::reference::sum(&x).to_bits();
    if runs.iter().any(|&bits| bits != want) {
        return Err(format!(
            "sum of 1,000,003: runs {runs:x?}, reference {want:x}"
        ));
    }
    Ok(Done::pass(format!(
        "sum, mean, max bit-exact at {sizes:?}; 5 runs give the same bits{}",
        t.note()
    )))
}

pub(crate) fn softmax(t: &Target) -> Outcome {
    let tolerance = Tolerance::Close {
        relative: 4e-6,
        absolute: 1e-37,
    };
    for (rows, cols) in [(0, 4), (1, 1), (3, 7), (64, 256), (17, 1000), (2, 70_000)] {
        common::check_softmax(&t.device, rows, cols, tolerance, (rows * cols) as u64);
    }
    Ok(Done::pass("within 4e-6 relative of the reference"))
}

pub(crate) fn matmul(t: &Target) -> Outcome {
    let shapes = [
        (0, 4, 4),
        (4, 0, 4),
        (1, 1, 1),
        (17, 33, 9),
        (128, 64, 96),
        (257, 129, 65),
    ];
    for (seed, (m, k, n)) in shapes.into_iter().enumerate() {
        let shape = MatmulShape { m, k, n };
        let seed = seed as u64;
        common::check_matmul_f32(&t.device, "matmul_tiled_f32", shape, true, seed);
        common::check_matmul_f32(&t.device, "matmul_f32", shape, t.dry_run, seed);
        common::check_matmul_half(&t.device, shape, t.dry_run, seed);
    }
    Ok(Done::pass(if t.dry_run {
        "tiled, f32, f16, bf16 give the reference's bits (CPU backend)"
    } else {
        "tiled f32 bit-exact; cuBLAS f32, f16, bf16 within the accumulation bound"
    }))
}

pub(crate) fn combining(t: &Target) -> Outcome {
    let sizes = t.sizes(&[0, 1, 255, 256, 257, 100_003, 1 << 22]);
    for (seed, &n) in sizes.iter().enumerate() {
        common::combining::check_combining(&t.device, n, seed as u64);
    }
    common::combining::check_partial_copies(&t.device);
    Ok(Done::pass(format!(
        "every op and element type (all f16/bf16 bit patterns) gives the reference's bits at {sizes:?}{}",
        t.note()
    )))
}

pub(crate) fn copies(t: &Target) -> Outcome {
    let sizes = t.sizes(&[0, 1, 1000, 1 << 22]);
    for (seed, &n) in sizes.iter().enumerate() {
        common::check_copy(&t.device, n, seed as u64);
    }
    Ok(Done::pass(format!(
        "device-to-device copies keep the bits at {sizes:?}"
    )))
}

/// A user kernel compiled, cached on disk and loaded from the cache by a second handle;
/// a compile error returns NVRTC's log; a missing entry is named.
pub(crate) fn user_kernels(t: &Target) -> Outcome {
    if t.dry_run {
        return match t
            .device
            .compile_user("extern \"C\" __global__ void k() {}", "k")
        {
            Err(KernelError::NoCuda { .. }) => Ok(Done::pass(
                "CPU backend: user kernels refused with NoCuda, as documented \
                 (compiling is checked by the NVRTC check)",
            )),
            other => Err(format!("the CPU backend compiled a user kernel: {other:?}")),
        };
    }
    let source = "extern \"C\" __global__ void twice(float *x, unsigned int n) {\n\
                  unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;\n\
                  if (i < n) x[i] = 2.0f * x[i];\n}\n";
    let first = t
        .device
        .compile_user(source, "twice")
        .map_err(|e| e.to_string())?;
    if first.from_cache() {
        return Err("the first compile came from the cache".into());
    }
    let device = t.reopen()?;
    let second = device
        .compile_user(source, "twice")
        .map_err(|e| e.to_string())?;
    if !second.from_cache() {
        return Err("the second handle compiled again".into());
    }
    let x = device
        .upload(&[1.0f32, 2.0, 3.0])
        .map_err(|e| e.to_string())?;
    device
        .launch_user(
            &second,
            LaunchGeometry::covering(3, 128),
            &[(&x).into(), KernelArg::U32(3)],
        )
        .map_err(|e| e.to_string())?;
    let got = device.download::<f32>(&x).map_err(|e| e.to_string())?;
    if got != [2.0, 4.0, 6.0] {
        return Err(format!("the cached kernel gave {got:?}"));
    }
    match t.device.compile_user(
        "extern \"C\" __global__ void bad() { undeclared_thing(); }",
        "bad",
    ) {
        Err(KernelError::Compile { log, .. }) if log.contains("undeclared_thing") => {}
        other => return Err(format!("a broken source gave {other:?}")),
    }
    match t
        .device
        .compile_user("extern \"C\" __global__ void present() {}", "absent")
    {
        Err(KernelError::Cuda { message, .. }) if message.contains("absent") => {}
        other => return Err(format!("a missing entry gave {other:?}")),
    }
    common::check_elementwise(&t.device, 10, 1);
    Ok(Done::pass(
        "compiled, cached, loaded from the cache by a second handle and run; \
         NVRTC's log for a broken source; a missing entry named",
    ))
}

/// Allocations past the handle's limit, and past the device's (or host's) memory, refused;
/// the reduction's scratch counted; the device goes on.
pub(crate) fn memory_limits(t: &Target) -> Outcome {
    let device = t.reopen()?.with_memory_limit(1 << 20);
    if !matches!(
        device.alloc::<f32>((1 << 18) + 1),
        Err(KernelError::MemoryLimit { .. })
    ) {
        return Err("1 MiB + 4 B under a 1 MiB limit was not refused".into());
    }
    let held = device.alloc::<f32>(1 << 18).map_err(|e| e.to_string())?;
    if device.memory_in_use() != 1 << 20 {
        return Err(format!("{} bytes in use", device.memory_in_use()));
    }
    drop(held);
    if device.memory_in_use() != 0 {
        return Err("memory did not come back".into());
    }
    let unlimited = t.reopen()?;
    match unlimited.alloc::<f32>(1 << 40) {
        Err(KernelError::DeviceMemory { .. } | KernelError::HostMemory { .. }) => {}
        other => return Err(format!("4 TiB gave {other:?}")),
    }
    common::check_reductions(&unlimited, 5000, 2);
    let tight = t.reopen()?.with_memory_limit((CHUNK * 2 * 4 + 4) as u64);
    let x = tight.alloc::<f32>(CHUNK * 2).map_err(|e| e.to_string())?;
    let out = tight.alloc::<f32>(1).map_err(|e| e.to_string())?;
    match tight.launch("sum", &[(&x).into(), (&out).into()]) {
        Err(KernelError::MemoryLimit { .. }) => {}
        // The CPU backend needs no scratch.
        Ok(()) if t.dry_run => {}
        other => {
            return Err(format!(
                "a sum needing scratch past the limit gave {other:?}"
            ))
        }
    }
    Ok(Done::pass(
        "past the limit and past the device refused; memory returns; the device goes on",
    ))
}

/// Seconds per call of `f`, after one warm-up call, over `iters` calls.
fn time(
    device: &Device,
    iters: u32,
    mut f: impl FnMut() -> Result<(), KernelError>,
) -> Result<f64, String> {
    f().map_err(|e| e.to_string())?;
    device.synchronize().map_err(|e| e.to_string())?;
    let start = Instant::now();
    for _ in 0..iters {
        f().map_err(|e| e.to_string())?;
    }
    device.synchronize().map_err(|e| e.to_string())?;
    Ok(start.elapsed().as_secs_f64() / f64::from(iters))
}

/// One timed launch.
type Launch<'a> = Box<dyn Fn() -> Result<(), KernelError> + 'a>;

/// Bandwidth of the element-wise kernels and reductions as a fraction of a device-to-device
/// copy's, measured in the same run on buffers of 2^26 f32 (2^22 on the CPU backend).
pub(crate) fn bandwidth(t: &Target) -> Outcome {
    let n: usize = if t.dry_run { 1 << 22 } else { 1 << 26 };
    let iters = if t.dry_run { 3 } else { 20 };
    let d = &t.device;
    let e = |e: KernelError| e.to_string();
    let x = d.upload(&vec![1.5f32; n]).map_err(e)?;
    let y = d.upload(&vec![0.25f32; n]).map_err(e)?;
    let out = d.alloc::<f32>(n).map_err(e)?;
    let one = d.alloc::<f32>(1).map_err(e)?;
    let bytes = (n * 4) as f64;
    let copy = time(d, iters, || d.copy(&x, &out))?;
    let copy_bw = 2.0 * bytes / copy / 1e9;
    let mut metrics = vec![Metric::new("device-to-device copy", copy_bw, "GB/s")];
    let runs: [(&str, f64, Launch<'_>); 6] = [
        (
            "add",
            3.0,
            Box::new(|| d.launch("add", &[(&x).into(), (&y).into(), (&out).into()])),
        ),
        (
            "mul",
            3.0,
            Box::new(|| d.launch("mul", &[(&x).into(), (&y).into(), (&out).into()])),
        ),
        (
            "axpy",
            3.0,
            Box::new(|| d.launch("axpy", &[0.5f32.into(), (&x).into(), (&out).into()])),
        ),
        (
            "scale",
            2.0,
            Box::new(|| d.launch("scale", &[2.0f32.into(), (&x).into(), (&out).into()])),
        ),
        (
            "sum",
            1.0,
            Box::new(|| d.launch("sum", &[(&x).into(), (&one).into()])),
        ),
        (
            "max",
            1.0,
            Box::new(|| d.launch("max", &[(&x).into(), (&one).into()])),
        ),
    ];
    for (kernel, passes, run) in runs {
        let seconds = time(d, iters, run)?;
        metrics.push(
            Metric::new(
                format!("{kernel} (2^{} f32)", n.trailing_zeros()),
                passes * bytes / seconds / 1e9,
                "GB/s",
            )
            .against("copy", copy_bw, 0.85),
        );
    }
    Ok(Done::pass(format!("{iters} iterations each after a warm-up")).with(metrics))
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = common::Rng::new(seed);
    rng.vec(n, -1.0, 1.0)
}

/// What the torch script measured for `dtype`, if it ran: (TFLOP/s, m, k, n).
fn torch_tflops(torch: Option<&Value>, dtype: &str) -> Option<(f64, u64)> {
    let entry = torch?.get("matmul")?.get(dtype)?;
    Some((entry.get("tflops")?.as_f64()?, entry.get("m")?.as_u64()?))
}

/// cuBLAS matmul in f32 and bf16 at 8192^3 against `torch.matmul` (when its results are
/// given), and the tiled kernel at 4096^3 (128^3 each on the CPU backend).
pub(crate) fn matmul_speed(t: &Target, torch: Option<&Value>) -> Outcome {
    let d = &t.device;
    let e = |e: KernelError| e.to_string();
    let size = if t.dry_run { 128 } else { 8192 };
    let tiled_size = if t.dry_run { 128 } else { 4096 };
    let iters = if t.dry_run { 2 } else { 10 };
    let mut metrics = Vec::new();
    let flops = |s: usize| 2.0 * (s as f64).powi(3);
    let shape_args = |s: usize| {
        [
            KernelArg::U32(s as u32),
            KernelArg::U32(s as u32),
            KernelArg::U32(s as u32),
        ]
    };
    let run = |kernel: &str, a: &Buffer, b: &Buffer, c: &Buffer, s: usize| -> Result<f64, String> {
        let [m, k, n] = shape_args(s);
        let seconds = time(d, iters, || {
            d.launch(kernel, &[a.into(), b.into(), c.into(), m, k, n])
        })?;
        Ok(flops(s) / seconds / 1e12)
    };
    let a = random(size * size, 1);
    let b = random(size * size, 2);
    for (dtype, kernel) in [("f32", "matmul_f32"), ("bf16", "matmul_bf16")] {
        let tflops = if dtype == "f32" {
            let (ab, bb) = (d.upload(&a).map_err(e)?, d.upload(&b).map_err(e)?);
            let cb = d.alloc::<f32>(size * size).map_err(e)?;
            run(kernel, &ab, &bb, &cb, size)?
        } else {
            let conv = |v: &[f32]| v.iter().map(|x| bf16::from_f32(*x)).collect::<Vec<_>>();
            let (ab, bb) = (
                d.upload(&conv(&a)).map_err(e)?,
                d.upload(&conv(&b)).map_err(e)?,
            );
            let cb = d.alloc::<bf16>(size * size).map_err(e)?;
            run(kernel, &ab, &bb, &cb, size)?
        };
        let name = format!("cuBLAS {kernel} {size}^3");
        metrics.push(match torch_tflops(torch, dtype) {
            Some((theirs, m)) if m == size as u64 => Metric::new(name, tflops, "TFLOP/s").against(
                format!("torch.matmul {dtype}"),
                theirs,
                0.95,
            ),
            _ => Metric::new(name, tflops, "TFLOP/s"),
        });
    }
    let a = random(tiled_size * tiled_size, 3);
    let b = random(tiled_size * tiled_size, 4);
    let (ab, bb) = (d.upload(&a).map_err(e)?, d.upload(&b).map_err(e)?);
    let cb = d.alloc::<f32>(tiled_size * tiled_size).map_err(e)?;
    let tiled = run("matmul_tiled_f32", &ab, &bb, &cb, tiled_size)?;
    metrics.push(Metric::new(
        format!("matmul_tiled_f32 {tiled_size}^3"),
        tiled,
        "TFLOP/s",
    ));
    let detail = match torch {
        Some(_) => {
            format!("{iters} iterations each after a warm-up; torch's figures from the same run")
        }
        None => {
            format!("{iters} iterations each after a warm-up; no torch figures (torch not run)")
        }
    };
    Ok(Done::pass(detail).with(metrics))
}

/// What a GPU-mode run says about the device.
pub(crate) fn describe(t: &Target) -> String {
    match t.device.backend() {
        Backend::Cuda { ordinal } => format!(
            "{} (cuda:{ordinal})",
            t.device.device_name().unwrap_or_default()
        ),
        Backend::Cpu => "cpu".to_owned(),
    }
}
