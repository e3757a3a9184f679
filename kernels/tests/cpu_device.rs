//! The CPU backend and the no-GPU paths: every call on a CPU handle returns, never panics;
//! limits are enforced; CUDA-only calls say so.

mod common;

use common::{
    check_elementwise, check_matmul_f32, check_matmul_half, check_reductions, check_softmax,
    Tolerance,
};
use ember_kernels::reference::MatmulShape;
use ember_kernels::registry::KERNELS;
use ember_kernels::{ArgKind, Backend, Device, ElementType, ElementVec, KernelArg, KernelError};
use half::{bf16, f16};

#[test]
fn every_kernel_on_the_cpu_backend_gives_its_reference() {
    let device = Device::cpu();
    assert_eq!(device.backend(), Backend::Cpu);
    for (seed, n) in [0usize, 1, 255, 256, 4097, 10_000].into_iter().enumerate() {
        check_elementwise(&device, n, seed as u64);
        check_reductions(&device, n, seed as u64);
    }
    for (rows, cols) in [(0, 5), (3, 0), (1, 1), (7, 300)] {
        check_softmax(&device, rows, cols, Tolerance::Exact, 7);
    }
    for shape in [
        MatmulShape { m: 0, k: 3, n: 2 },
        MatmulShape { m: 3, k: 0, n: 2 },
        MatmulShape { m: 5, k: 7, n: 3 },
        MatmulShape { m: 17, k: 33, n: 9 },
    ] {
        check_matmul_f32(&device, "matmul_f32", shape, true, 11);
        check_matmul_f32(&device, "matmul_tiled_f32", shape, true, 12);
        check_matmul_half(&device, shape, true, 13);
    }
    assert_eq!(device.memory_in_use(), 0, "every buffer was dropped");
}

/// Arguments of the kinds in `kinds`: buffers taken in turn from `buffers`, `u32`s `shape`.
fn args_of_kinds<'a>(
    buffers: &[&'a ember_kernels::Buffer],
    kinds: &[ArgKind],
    shape: u32,
) -> Vec<KernelArg<'a>> {
    let mut next = buffers.iter().cycle();
    kinds
        .iter()
        .map(|kind| match kind {
            ArgKind::F32 => KernelArg::F32(1.5),
            ArgKind::U32 => KernelArg::U32(shape),
            ArgKind::F32Buf | ArgKind::F16Buf | ArgKind::Bf16Buf => {
                KernelArg::Buffer(next.next().expect("at least one buffer"))
            }
        })
        .collect()
}

#[test]
fn no_kernel_call_panics_whatever_the_arguments() {
    let device = Device::cpu();
    let lengths = [0usize, 1, 2, 4, 3];
    let f32s: Vec<_> = lengths
        .iter()
        .map(|n| device.alloc::<f32>(*n).unwrap())
        .collect();
    let f16s: Vec<_> = lengths
        .iter()
        .map(|n| device.alloc::<f16>(*n).unwrap())
        .collect();
    let bf16s: Vec<_> = lengths
        .iter()
        .map(|n| device.alloc::<bf16>(*n).unwrap())
        .collect();
    let other = Device::cpu();
    let foreign = other.alloc::<f32>(4).unwrap();
    let (mut accepted, mut refused) = (0, 0);
    for spec in KERNELS {
        let kinds: Vec<ArgKind> = spec.args.iter().map(|a| a.kind).collect();
        let pool = match kinds.iter().find(|k| k.is_buffer()) {
            Some(ArgKind::F16Buf) => &f16s,
            Some(ArgKind::Bf16Buf) => &bf16s,
            _ => &f32s,
        };
        // Right kinds, every mix of lengths and shapes (aliased ones included): each call
        // gives Ok or a typed error.
        for rotation in 0..lengths.len() {
            let mut rotated: Vec<_> = pool.iter().collect();
            rotated.rotate_left(rotation);
            for shape in 0..4 {
                match device.launch(spec.name, &args_of_kinds(&rotated, &kinds, shape)) {
                    Ok(()) => accepted += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        // Wrong kinds: refused by name.
        let wrong: Vec<KernelArg<'_>> = kinds.iter().map(|_| KernelArg::U32(1)).collect();
        if kinds.iter().any(|k| *k != ArgKind::U32) {
            assert!(matches!(
                device.launch(spec.name, &wrong),
                Err(KernelError::ArgumentKind { .. })
            ));
        }
        assert!(matches!(
            device.launch(spec.name, &[]),
            Err(KernelError::ArgumentCount { .. })
        ));
        // A buffer of another handle: refused.
        let f32_refs: Vec<_> = f32s.iter().collect();
        let mut with_foreign = args_of_kinds(&f32_refs, &kinds, 2);
        if let Some(slot) = with_foreign
            .iter_mut()
            .find(|a| matches!(a, KernelArg::Buffer(_)))
        {
            if kinds.contains(&ArgKind::F32Buf) {
                *slot = KernelArg::Buffer(&foreign);
                assert!(matches!(
                    device.launch(spec.name, &with_foreign),
                    Err(KernelError::ForeignBuffer { .. })
                ));
            }
        }
    }
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    assert!(matches!(
        device.launch("no_such_kernel", &[]),
        Err(KernelError::UnknownKernel { .. })
    ));
    // The handle still works.
    check_elementwise(&device, 5, 1);
}

#[test]
fn shape_errors_are_typed() {
    let device = Device::cpu();
    let four = device.upload(&[1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let three = device.alloc::<f32>(3).unwrap();
    let one = device.alloc::<f32>(1).unwrap();
    let out4 = device.alloc::<f32>(4).unwrap();
    assert_eq!(
        device.launch("add", &[(&four).into(), (&four).into(), (&three).into()]),
        Err(KernelError::LengthMismatch { x: 4, y: 3 })
    );
    assert!(matches!(
        device.launch("sum", &[(&four).into(), (&three).into()]),
        Err(KernelError::ShapeMismatch {
            expected: 1,
            actual: 3,
            ..
        })
    ));
    assert!(matches!(
        device.launch(
            "softmax",
            &[(&four).into(), (&out4).into(), 3u32.into(), 2u32.into()]
        ),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        device.launch(
            "matmul_f32",
            &[
                (&four).into(),
                (&four).into(),
                (&one).into(),
                2u32.into(),
                2u32.into(),
                2u32.into()
            ]
        ),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert_eq!(
        device.launch("axpy", &[2.0f32.into(), (&four).into(), (&four).into()]),
        Err(KernelError::AliasedOutput { kernel: "axpy" })
    );
    // A read-only buffer may be passed twice.
    let out = device.alloc::<f32>(4).unwrap();
    device
        .launch("mul", &[(&four).into(), (&four).into(), (&out).into()])
        .unwrap();
    assert_eq!(
        device.download::<f32>(&out).unwrap(),
        vec![1.0, 4.0, 9.0, 16.0]
    );
    assert_eq!(
        device.download::<f16>(&out),
        Err(KernelError::ElementType {
            requested: "f16",
            actual: "f32"
        })
    );
}

#[test]
fn an_allocation_beyond_the_limit_is_refused_and_memory_comes_back_on_drop() {
    let device = Device::cpu().with_memory_limit(1024);
    assert_eq!(device.memory_limit(), Some(1024));
    assert_eq!(
        device.alloc::<f32>(257).unwrap_err(),
        KernelError::MemoryLimit {
            requested: 1028,
            in_use: 0,
            limit: 1024
        }
    );
    let full = device.alloc::<f32>(256).unwrap();
    assert_eq!(device.memory_in_use(), 1024);
    assert!(matches!(
        device.upload(&[1.0f32]),
        Err(KernelError::MemoryLimit { .. })
    ));
    assert!(matches!(
        device.alloc::<f16>(1),
        Err(KernelError::MemoryLimit { .. })
    ));
    drop(full);
    assert_eq!(device.memory_in_use(), 0);
    let half = device.alloc::<f16>(512).unwrap();
    assert_eq!(half.size_bytes(), 1024);
    drop(half);
    // A request past the limit by far, or past what any allocation can be, is refused.
    assert!(matches!(
        device.alloc::<f32>(1 << 40),
        Err(KernelError::MemoryLimit { .. })
    ));
    assert!(matches!(
        device.alloc::<f32>(usize::MAX),
        Err(KernelError::TooLarge { .. })
    ));
    // Without a limit, memory the host cannot give is refused, not a crash.
    let unlimited = Device::cpu();
    assert!(matches!(
        unlimited.alloc::<f32>(isize::MAX as usize / 4),
        Err(KernelError::HostMemory { .. })
    ));
    // Nor does one the address space could hold but the host has no memory for (it would
    // end in the out-of-memory killer, not in an error).
    let beyond_the_host = usize::try_from(host_memory_total()).unwrap();
    assert!(matches!(
        unlimited.alloc::<f32>(beyond_the_host),
        Err(KernelError::HostMemory { requested }) if requested == 4 * host_memory_total()
    ));
    assert_eq!(unlimited.memory_in_use(), 0);
    assert_eq!(device.memory_in_use(), 0);
}

/// The host's total memory in bytes (`MemTotal` in `/proc/meminfo`).
fn host_memory_total() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .unwrap();
    line.trim()
        .strip_suffix("kB")
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn buffers_of_a_type_chosen_at_run_time_round_trip() {
    let device = Device::cpu().with_memory_limit(64);
    let halves = ElementVec::Bf16(vec![bf16::from_f32(1.5), bf16::from_f32(-2.0)]);
    let buffer = device.upload_elements(halves.as_slice()).unwrap();
    assert_eq!(buffer.element(), ElementType::Bf16);
    assert_eq!(device.memory_in_use(), 4);
    assert_eq!(device.download_elements(&buffer).unwrap(), halves);
    let zeros = device.alloc_elements(ElementType::F16, 3).unwrap();
    assert_eq!(
        device.download_elements(&zeros).unwrap(),
        ElementVec::F16(vec![f16::ZERO; 3])
    );
    assert!(matches!(
        device.alloc_elements(ElementType::F32, 16),
        Err(KernelError::MemoryLimit { requested: 64, .. })
    ));
    let other = Device::cpu();
    assert!(matches!(
        other.download_elements(&buffer),
        Err(KernelError::ForeignBuffer { .. })
    ));
}

#[test]
fn user_kernels_without_cuda_are_a_clear_error() {
    let device = Device::cpu();
    match device.compile_user(
        "extern \"C\" __global__ void k(float *x) { x[0] = 1.0f; }",
        "k",
    ) {
        Err(KernelError::NoCuda { reason }) => {
            assert!(
                reason.contains("\"k\"") && reason.contains("CPU"),
                "{reason}"
            )
        }
        other => panic!("expected NoCuda, got {other:?}"),
    }
}

#[test]
fn open_gives_cuda_or_says_why_it_fell_back() {
    let device = Device::open(0);
    match device.backend() {
        Backend::Cpu => {
            let reason = device
                .cpu_fallback_reason()
                .expect("a reason for the fallback");
            assert!(
                matches!(
                    reason,
                    KernelError::NoCuda { .. } | KernelError::Cuda { .. }
                ),
                "{reason:?}"
            );
            assert!(device.device_name().is_none());
            // The fallback handle works.
            check_reductions(&device, 100, 3);
        }
        Backend::Cuda { ordinal } => {
            assert_eq!(ordinal, 0);
            assert!(device.cpu_fallback_reason().is_none());
        }
    }
    // A device that surely does not exist is an error, never a panic.
    assert!(Device::open_cuda(4096).is_err());
}

#[test]
fn device_handles_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Device>();
    assert_send_sync::<ember_kernels::Buffer>();
    let device = Device::cpu();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let device = device.clone();
            std::thread::spawn(move || check_elementwise(&device, 100 + i, i as u64))
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn combining_on_the_cpu_backend_gives_the_reference_bits() {
    let device = Device::cpu();
    for (seed, n) in [0, 1, 7, 1000, 65_537].into_iter().enumerate() {
        common::combining::check_combining(&device, n, seed as u64);
    }
    common::combining::check_partial_copies(&device);
}

#[test]
fn combining_refuses_what_it_cannot_do_with_a_typed_error() {
    use ember_kernels::reference::{CombineOp, Operands};
    let device = Device::cpu();
    let four = device.upload(&[1.0f32; 4]).unwrap();
    let other = device.upload(&[1.0f32; 4]).unwrap();
    let halves = device.upload(&[f16::ONE; 4]).unwrap();
    let sum = |acc, incoming, len| {
        device.combine(
            CombineOp::Sum,
            Operands::AccumulatorFirst,
            acc,
            incoming,
            len,
        )
    };
    assert_eq!(
        sum(&four, &four, 4),
        Err(KernelError::AliasedOutput { kernel: "combine" })
    );
    assert_eq!(
        sum(&four, &halves, 4),
        Err(KernelError::ElementType {
            requested: "f16",
            actual: "f32"
        })
    );
    assert!(matches!(
        sum(&four, &other, 5),
        Err(KernelError::OutOfBounds { end: 5, len: 4, .. })
    ));
    assert!(matches!(
        device.write(&four, 3, &[1.0f32, 2.0]),
        Err(KernelError::OutOfBounds { end: 5, len: 4, .. })
    ));
    assert!(matches!(
        device.read_into(&four, usize::MAX, &mut [0.0f32]),
        Err(KernelError::OutOfBounds { .. })
    ));
    assert_eq!(
        device.write(&four, 0, &[f16::ONE]),
        Err(KernelError::ElementType {
            requested: "f16",
            actual: "f32"
        })
    );
    let foreign = Device::cpu().upload(&[1.0f32; 4]).unwrap();
    assert!(matches!(
        sum(&four, &foreign, 4),
        Err(KernelError::ForeignBuffer { .. })
    ));
    assert!(matches!(
        device.divide(&foreign, 4, 2),
        Err(KernelError::ForeignBuffer { .. })
    ));
    // Nothing refused touched the buffer.
    assert_eq!(device.download::<f32>(&four).unwrap(), [1.0; 4]);
}

#[test]
fn copies_on_the_cpu_backend_keep_the_bits_and_refuse_mismatches() {
    let device = Device::cpu();
    for (seed, n) in [0usize, 1, 1000, 100_003].into_iter().enumerate() {
        common::check_copy(&device, n, seed as u64);
    }
}
