//! GPU tests: every kernel on CUDA device 0 against its CPU reference.
//!
//! They need a CUDA GPU (driver, NVRTC 12 and cuBLAS on the library path), so a normal run
//! lists them as ignored; run them with `cargo test -p ember-kernels --test gpu -- --ignored`.
//! Tolerances: element-wise kernels, the reductions (`sum`, `mean`, `max`) and the tiled
//! matmul give the reference's bits; softmax is within 4e-6 relative (CUDA's `expf`, at most
//! 2 ulp off, against Rust's `exp`, through the sum and the division); cuBLAS matmul is within twice the f32 accumulation bound
//! `(k + 2) * eps * sum |a||b|`, plus one output rounding for f16/bf16.

mod common;

use common::{
    check_elementwise, check_matmul_f32, check_matmul_half, check_reductions, check_softmax,
    Tolerance,
};
use ember_kernels::cache::KernelCache;
use ember_kernels::reference::{MatmulShape, REDUCE_BLOCK_THREADS, REDUCE_ITEMS_PER_THREAD};
use ember_kernels::{Backend, Device, KernelArg, KernelError, LaunchGeometry};

const NEEDS_GPU: &str = "needs a CUDA GPU";

fn gpu(cache: &tempfile::TempDir) -> Device {
    let device = Device::open_cuda_with_cache(0, KernelCache::new(cache.path()))
        .unwrap_or_else(|error| panic!("{NEEDS_GPU}: {error}"));
    assert_eq!(device.backend(), Backend::Cuda { ordinal: 0 });
    device
}

const CHUNK: usize = REDUCE_BLOCK_THREADS * REDUCE_ITEMS_PER_THREAD;

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_elementwise_kernels_are_bit_exact() {
    let cache = tempfile::tempdir().unwrap();
    let device = gpu(&cache);
    for (seed, n) in [0, 1, 255, 256, 257, 100_003, 1 << 22]
        .into_iter()
        .enumerate()
    {
        check_elementwise(&device, n, seed as u64);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_reductions_are_bit_exact_with_the_fixed_order() {
    let cache = tempfile::tempdir().unwrap();
    let device = gpu(&cache);
    let sizes = [
        0,
        1,
        255,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        CHUNK * CHUNK,
        CHUNK * CHUNK + 3,
        (1 << 24) + 12_345,
    ];
    for (seed, n) in sizes.into_iter().enumerate() {
        check_reductions(&device, n, seed as u64);
    }
    // The same bits on every run.
    let x: Vec<f32> = (0..1_000_003u64)
        .map(|i| ((i * 7919) % 1000) as f32 * 0.37 - 150.0)
        .collect();
    let xb = device.upload(&x).unwrap();
    let out = device.alloc::<f32>(1).unwrap();
    let mut runs = Vec::new();
    for _ in 0..5 {
        device
            .launch("sum", &[(&xb).into(), (&out).into()])
            .unwrap();
        runs.push(device.download::<f32>(&out).unwrap()[0].to_bits());
    }
    assert!(runs.iter().all(|bits| *bits == runs[0]), "{runs:?}");
    assert_eq!(runs[0], ember_kernels::reference::sum(&x).to_bits());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_softmax_matches_within_4e6_relative() {
    let cache = tempfile::tempdir().unwrap();
    let device = gpu(&cache);
    let tolerance = Tolerance::Close {
        relative: 4e-6,
        absolute: 1e-37,
    };
    for (rows, cols) in [(0, 4), (1, 1), (3, 7), (64, 256), (17, 1000), (2, 70_000)] {
        check_softmax(&device, rows, cols, tolerance, (rows * cols) as u64);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_tiled_matmul_is_bit_exact_and_cublas_is_within_bounds() {
    let cache = tempfile::tempdir().unwrap();
    let device = gpu(&cache);
    for (seed, shape) in [
        MatmulShape { m: 0, k: 4, n: 4 },
        MatmulShape { m: 4, k: 0, n: 4 },
        MatmulShape { m: 1, k: 1, n: 1 },
        MatmulShape { m: 17, k: 33, n: 9 },
        MatmulShape {
            m: 128,
            k: 64,
            n: 96,
        },
        MatmulShape {
            m: 257,
            k: 129,
            n: 65,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let seed = seed as u64;
        check_matmul_f32(&device, "matmul_tiled_f32", shape, true, seed);
        check_matmul_f32(&device, "matmul_f32", shape, false, seed);
        check_matmul_half(&device, shape, false, seed);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_second_open_loads_kernels_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let source = "extern \"C\" __global__ void twice(float *x, unsigned int n) {\n\
                  unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;\n\
                  if (i < n) x[i] = 2.0f * x[i];\n}\n";
    let first = gpu(&cache).compile_user(source, "twice").unwrap();
    assert!(!first.from_cache());
    let files = std::fs::read_dir(cache.path()).unwrap().count();
    assert!(files >= 1);
    // A new handle over the same cache directory: what a restarted worker does.
    let device = gpu(&cache);
    let second = device.compile_user(source, "twice").unwrap();
    assert!(second.from_cache());
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), files);
    // And the cached PTX runs.
    let x = device.upload(&[1.0f32, 2.0, 3.0]).unwrap();
    device
        .launch_user(
            &second,
            LaunchGeometry::covering(3, 128),
            &[(&x).into(), KernelArg::U32(3)],
        )
        .unwrap();
    assert_eq!(device.download::<f32>(&x).unwrap(), vec![2.0, 4.0, 6.0]);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_compile_errors_return_the_nvrtc_log() {
    let cache = tempfile::tempdir().unwrap();
    let device = gpu(&cache);
    match device.compile_user(
        "extern \"C\" __global__ void bad() { undeclared_thing(); }",
        "bad",
    ) {
        Err(KernelError::Compile { log, .. }) => assert!(log.contains("undeclared_thing"), "{log}"),
        other => panic!("expected a compile error, got {other:?}"),
    }
    // A missing entry is named.
    match device.compile_user("extern \"C\" __global__ void present() {}", "absent") {
        Err(KernelError::Cuda { message, .. }) => assert!(message.contains("absent"), "{message}"),
        other => panic!("expected a missing-entry error, got {other:?}"),
    }
    // The handle still works.
    check_elementwise(&device, 10, 1);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_oversized_allocations_are_refused_and_the_device_goes_on() {
    let cache = tempfile::tempdir().unwrap();
    let device = gpu(&cache).with_memory_limit(1 << 20);
    assert!(matches!(
        device.alloc::<f32>((1 << 18) + 1),
        Err(KernelError::MemoryLimit { .. })
    ));
    let held = device.alloc::<f32>(1 << 18).unwrap();
    assert_eq!(device.memory_in_use(), 1 << 20);
    drop(held);
    assert_eq!(device.memory_in_use(), 0);
    // Beyond the device's free memory, with no handle limit.
    let unlimited = gpu(&cache);
    assert!(matches!(
        unlimited.alloc::<f32>(1 << 40),
        Err(KernelError::DeviceMemory { .. })
    ));
    check_reductions(&unlimited, 5000, 2);
    // The reduction's scratch counts against the limit too.
    let tight = gpu(&cache).with_memory_limit((CHUNK * 2 * 4 + 4) as u64);
    let x = tight.alloc::<f32>(CHUNK * 2).unwrap();
    let out = tight.alloc::<f32>(1).unwrap();
    assert!(matches!(
        tight.launch("sum", &[(&x).into(), (&out).into()]),
        Err(KernelError::MemoryLimit { .. })
    ));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_combining_gives_the_reference_bits() {
    let cache = tempfile::tempdir().unwrap();
    let device = gpu(&cache);
    for (seed, n) in [0, 1, 255, 256, 257, 100_003, 1 << 22]
        .into_iter()
        .enumerate()
    {
        common::combining::check_combining(&device, n, seed as u64);
    }
    common::combining::check_partial_copies(&device);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_copies_keep_the_bits_and_refuse_mismatches() {
    let cache = tempfile::tempdir().unwrap();
    let device = gpu(&cache);
    for (seed, n) in [0usize, 1, 1000, 1 << 22].into_iter().enumerate() {
        common::check_copy(&device, n, seed as u64);
    }
}
