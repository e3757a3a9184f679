//! The GPU actor through its method calls, on the CPU backend: what works, what is refused
//! (typed), and that nothing panics or stops it serving.

use ember_core::proto::{decode, encode, Wire};
use ember_kernels::registry::KERNELS;
use ember_kernels::{ArgKind, Backend, Device, LaunchGeometry};
use half::f16;

use super::actor::GpuActor;
use super::methods::{Alloc, CompileUser, Free, Get, GpuMethod, Info, Launch, LaunchUser, Put};
use super::{BufferElement, GpuActorError, GpuInfo, HostData, LaunchArg};
use crate::registry::{ActorInstance, CallError};

/// Calls `M` on `actor` the way a remote caller does: archived arguments, archived reply.
fn call<M: GpuMethod>(actor: &mut GpuActor, args: M::Args) -> Result<M::Output, GpuActorError>
where
    Result<M::Output, GpuActorError>: Wire,
{
    let bytes = encode(&args).unwrap();
    let reply = actor
        .call(M::NAME, &bytes)
        .unwrap_or_else(|e| panic!("{} failed as a call: {e}", M::NAME));
    decode(&reply).unwrap()
}

fn info_of(actor: &mut GpuActor) -> GpuInfo {
    call::<Info>(actor, ()).unwrap()
}

fn buf(name: &str) -> LaunchArg {
    LaunchArg::buffer(name)
}

#[test]
fn buffers_kernels_and_info_on_the_cpu() {
    let mut actor = GpuActor::new(Device::cpu().with_memory_limit(1 << 20));
    let put = call::<Put>(&mut actor, ("x".into(), vec![1.0f32, 2.0, 3.0].into())).unwrap();
    assert_eq!(
        (put.element, put.len, put.bytes),
        (BufferElement::F32, 3, 12)
    );
    call::<Put>(&mut actor, ("y".into(), vec![10.0f32, 20.0, 30.0].into())).unwrap();
    call::<Launch>(
        &mut actor,
        ("axpy".into(), vec![2.0f32.into(), buf("x"), buf("y")]),
    )
    .unwrap();
    assert_eq!(
        call::<Get>(&mut actor, ("y".into(),)).unwrap(),
        HostData::F32(vec![12.0, 24.0, 36.0])
    );
    call::<Alloc>(&mut actor, ("total".into(), BufferElement::F32, 1)).unwrap();
    call::<Launch>(&mut actor, ("sum".into(), vec![buf("y"), buf("total")])).unwrap();
    assert_eq!(
        call::<Get>(&mut actor, ("total".into(),)).unwrap(),
        HostData::F32(vec![72.0])
    );

    let info = info_of(&mut actor);
    assert_eq!(info.backend(), Backend::Cpu);
    assert_eq!(info.device_name, None);
    assert_eq!(info.memory_in_use, 28);
    assert_eq!(info.memory_limit, Some(1 << 20));
    let names: Vec<&str> = info.buffers.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["total", "x", "y"]);

    // Putting a name again replaces its buffer; freeing gives its memory back.
    call::<Put>(&mut actor, ("x".into(), vec![f16::ONE; 2].into())).unwrap();
    assert_eq!(info_of(&mut actor).memory_in_use, 4 + 4 + 12);
    let freed = call::<Free>(&mut actor, ("y".into(),)).unwrap();
    assert_eq!(freed.bytes, 12);
    assert_eq!(info_of(&mut actor).memory_in_use, 4 + 4);
}

#[test]
fn refusals_are_typed_and_the_actor_keeps_serving() {
    let mut actor = GpuActor::new(Device::cpu().with_memory_limit(1024));
    call::<Put>(&mut actor, ("x".into(), vec![1.0f32; 4].into())).unwrap();

    assert_eq!(
        call::<Get>(&mut actor, ("nope".into(),)),
        Err(GpuActorError::UnknownBuffer {
            name: "nope".into()
        })
    );
    assert_eq!(
        call::<Free>(&mut actor, ("nope".into(),)),
        Err(GpuActorError::UnknownBuffer {
            name: "nope".into()
        })
    );
    match call::<Launch>(&mut actor, ("axpyy".into(), vec![])) {
        Err(GpuActorError::Rejected { message }) => {
            assert!(
                message.contains("axpyy") && message.contains("softmax"),
                "{message}"
            )
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    match call::<Launch>(
        &mut actor,
        ("axpy".into(), vec![buf("x"), buf("x"), buf("x")]),
    ) {
        Err(GpuActorError::Rejected { message }) => {
            assert!(message.contains("argument 0 (a) must be f32"), "{message}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }

    // Past the memory share: refused with the figures, nothing held for it.
    assert_eq!(
        call::<Alloc>(&mut actor, ("big".into(), BufferElement::F32, 1_000_000)),
        Err(GpuActorError::MemoryLimit {
            requested: 4_000_000,
            in_use: 16,
            limit: 1024
        })
    );
    assert_eq!(
        call::<Alloc>(&mut actor, ("huge".into(), BufferElement::F32, u64::MAX)).map(|_| ()),
        Err(GpuActorError::Rejected {
            message: format!(
                "buffer length is {}, beyond the kernel limit of {}",
                u64::MAX,
                isize::MAX as usize / 4
            )
        })
    );
    assert_eq!(info_of(&mut actor).memory_in_use, 16);

    // CUDA C on the CPU backend: says CUDA is unavailable, and why.
    match call::<CompileUser>(
        &mut actor,
        (
            "extern \"C\" __global__ void k(float *x) { x[0] = 1.0f; }".into(),
            "k".into(),
        ),
    ) {
        Err(GpuActorError::CudaUnavailable { reason }) => {
            assert!(
                reason.contains("\"k\"") && reason.contains("CPU"),
                "{reason}"
            )
        }
        other => panic!("expected CudaUnavailable, got {other:?}"),
    }
    assert_eq!(
        call::<LaunchUser>(
            &mut actor,
            (
                "k".into(),
                LaunchGeometry::covering(4, 32).into(),
                vec![buf("x")]
            )
        ),
        Err(GpuActorError::UnknownUserKernel { entry: "k".into() })
    );

    // Calls that are not the actor's: errors of the call, not of the GPU.
    assert!(matches!(
        actor.call("launch", b"garbage"),
        Err(CallError::BadArgs(_))
    ));
    assert_eq!(
        actor.call("reboot", &[]).unwrap_err(),
        CallError::UnknownMethod("reboot".into())
    );

    // Still serving, with its buffer intact.
    call::<Launch>(
        &mut actor,
        ("scale".into(), vec![3.0f32.into(), buf("x"), buf("x")]),
    )
    .unwrap_err();
    call::<Alloc>(&mut actor, ("out".into(), BufferElement::F32, 4)).unwrap();
    call::<Launch>(
        &mut actor,
        ("scale".into(), vec![3.0f32.into(), buf("x"), buf("out")]),
    )
    .unwrap();
    assert_eq!(
        call::<Get>(&mut actor, ("out".into(),)).unwrap(),
        HostData::F32(vec![3.0; 4])
    );
}

#[test]
fn no_kernel_call_panics_whatever_the_arguments() {
    let mut actor = GpuActor::new(Device::cpu().with_memory_limit(1 << 16));
    let buffers = [
        ("f32_0", HostData::F32(Vec::new())),
        ("f32_1", HostData::F32(vec![1.5])),
        ("f32_7", HostData::F32(vec![0.25; 7])),
        ("f32_16", HostData::F32((0..16).map(|i| i as f32).collect())),
        ("f16_4", HostData::F16(vec![0x3c00; 4])),
        ("bf16_4", HostData::Bf16(vec![0x3f80; 4])),
    ];
    for (name, data) in &buffers {
        call::<Put>(&mut actor, (name.to_string(), data.clone())).unwrap();
    }
    let candidates = |kind: ArgKind| -> Vec<LaunchArg> {
        match kind {
            ArgKind::F32 => vec![0.5f32.into(), f32::NAN.into(), buf("f32_1")],
            ArgKind::U32 => vec![0u32.into(), 4u32.into(), u32::MAX.into()],
            ArgKind::F32Buf => vec![buf("f32_0"), buf("f32_7"), buf("f32_16"), buf("f16_4")],
            ArgKind::F16Buf => vec![buf("f16_4"), buf("f32_16"), 1u32.into()],
            ArgKind::Bf16Buf => vec![buf("bf16_4"), buf("missing")],
        }
    };
    let mut launches = 0;
    for spec in KERNELS {
        // Each argument in turn takes each of its candidates while the others keep their
        // first; and every list one argument short and one too long.
        let firsts: Vec<LaunchArg> = spec
            .args
            .iter()
            .map(|a| candidates(a.kind)[0].clone())
            .collect();
        let mut lists = vec![firsts[..firsts.len() - 1].to_vec(), {
            let mut long = firsts.clone();
            long.push(buf("f32_7"));
            long
        }];
        for (i, arg) in spec.args.iter().enumerate() {
            for candidate in candidates(arg.kind) {
                let mut args = firsts.clone();
                args[i] = candidate;
                lists.push(args);
            }
        }
        for args in lists {
            let _ = call::<Launch>(&mut actor, (spec.name.to_string(), args));
            launches += 1;
        }
    }
    assert!(launches > 100, "{launches}");
    // Every buffer is still there and the memory account unchanged.
    let info = info_of(&mut actor);
    assert_eq!(info.buffers.len(), buffers.len());
    assert_eq!(info.memory_in_use, 4 * (1 + 7 + 16) + 2 * 4 + 2 * 4);
}
