//! GPU kernels from tasks and actors on real worker processes without a GPU: device handles
//! for exactly the GPUs given (on the CPU backend, within the `gpu_memory` share), the
//! built-in GPU actor (every kernel, every refusal typed, never a panic, always serving on),
//! and `ember kernel run`. On a GPU machine the `gpu_*` tests run the same on CUDA.

use ember::kernel_check::{check_kernel, KernelCheck};
use ember::kernels::registry::KERNELS;
use ember::{
    Backend, Error, ErrorKind, GpuActor, GpuActorError, GpuActorHandle, LaunchArg, LaunchGeometry,
    Options,
};
use ember_core::proto::FrameError;
use ember_tests::tasks::{axpy_task, Kernels};
use ember_tests::{ember_exe, run_cli, until, within, TestCluster, WorkerSpec};

const MIB: u64 = 1 << 20;

fn axpy_reference(a: f32, x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(x, y)| a.mul_add(*x, *y)).collect()
}

/// A GPU actor spawned with `options`.
async fn gpu_actor(cluster: &ember::Cluster, options: Options) -> GpuActorHandle {
    within(
        "spawn a GPU actor",
        cluster.spawn(GpuActor::remote().options(options)),
    )
    .await
    .expect("a GPU actor")
}

/// What a call to the GPU actor was refused with.
fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> GpuActorError {
    match result {
        Err(Error::Gpu(refusal)) => refusal,
        other => panic!("expected a GPU actor refusal, got {other:?}"),
    }
}

fn buf(name: &str) -> LaunchArg {
    LaunchArg::buffer(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_and_actors_get_device_handles_for_exactly_their_gpus() {
    let (_tc, cluster) =
        TestCluster::with_workers(&[WorkerSpec::gpus(2, "H100", "80GiB"), WorkerSpec::cpu()]).await;
    let x: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    let y: Vec<f32> = (0..1000).map(|i| 1000.0 - i as f32).collect();

    // Half a logical GPU with 1 MiB: one CPU handle limited to 1 MiB.
    let (report, out) = within(
        "axpy task",
        cluster.run(axpy_task::remote(2.0, x.clone(), y.clone())),
    )
    .await
    .expect("axpy task");
    assert_eq!(report, ("cpu".to_string(), Some(MIB), 1));
    assert_eq!(out, axpy_reference(2.0, &x, &y));
    // No GPU: one CPU handle with no limit of Ember's.
    let (report, _) = within(
        "axpy task without needs",
        cluster.run(axpy_task::remote(2.0, x.clone(), y.clone()).options(Options::new())),
    )
    .await
    .expect("axpy task without needs");
    assert_eq!(report, ("cpu".to_string(), None, 1));

    // An actor with both GPUs of a worker, then one with one GPU: one handle per GPU, each
    // within 1 MiB.
    let two = within(
        "spawn",
        cluster.spawn(Kernels::remote(1).with(|o| o.gpus(2.0))),
    )
    .await
    .unwrap();
    assert_eq!(
        two.report().await.unwrap(),
        ("cpu".to_string(), Some(MIB), 2)
    );
    within("kill", two.actor().kill()).await.unwrap();
    let one = within("spawn", cluster.spawn(Kernels::remote(0)))
        .await
        .unwrap();
    assert_eq!(
        one.report().await.unwrap(),
        ("cpu".to_string(), Some(MIB), 1)
    );

    // Its buffers count against its share across calls; past it is refused, not a crash.
    assert_eq!(one.hold(200_000).await.unwrap(), 800_000);
    let refused = one.hold(100_000).await.unwrap_err();
    assert_eq!(refused.kind(), Some(ErrorKind::User), "{refused}");
    let message = refused.to_string();
    assert!(
        message.contains("allocation of 400000 bytes refused")
            && message.contains("800000 of the 1048576-byte limit in use"),
        "{message}"
    );
    assert_eq!(one.release().await.unwrap(), 0);
    assert_eq!(one.hold(MIB / 4).await.unwrap(), MIB);
    // The actor and its worker go on serving.
    assert_eq!(
        one.axpy(3.0, vec![1.0], vec![1.0])
            .await
            .unwrap_err()
            .kind(),
        Some(ErrorKind::User),
        "its share is full"
    );
    assert_eq!(one.release().await.unwrap(), 0);
    assert_eq!(
        one.axpy(3.0, x.clone(), y.clone()).await.unwrap(),
        axpy_reference(3.0, &x, &y)
    );
    within(
        "another task",
        cluster.run(axpy_task::remote(1.0, vec![1.0], vec![2.0])),
    )
    .await
    .expect("the worker still runs tasks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gpu_actor_without_a_gpu_runs_every_kernel_and_refuses_the_rest_clearly() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu()]).await;
    let gpu = gpu_actor(&cluster, Options::new()).await;
    let info = gpu.info().await.unwrap();
    assert_eq!(info.backend(), Backend::Cpu);
    assert_eq!((info.device_name, info.memory_limit), (None, None));

    // Every registered kernel, against its CPU reference.
    for spec in KERNELS {
        let check = KernelCheck {
            len: 4099,
            rows: 7,
            cols: 33,
            m: 9,
            k: 17,
            n: 5,
            ..KernelCheck::new(spec.name)
        };
        let report = within(spec.name, check_kernel(&gpu, &check))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        assert!(report.passed(), "{}: {:?}", spec.name, report.outputs);
        assert_eq!(report.info.backend(), Backend::Cpu);
    }
    assert!(
        gpu.info().await.unwrap().buffers.is_empty(),
        "the checks free their buffers"
    );

    // Wrong calls, each refused with what was wrong.
    gpu.put("x", vec![1.0f32; 8]).await.unwrap();
    gpu.alloc::<f32>("out", 8).await.unwrap();
    assert!(matches!(
        refusal(gpu.launch("axpy", [2.0f32.into(), buf("x"), buf("nope")]).await),
        GpuActorError::UnknownBuffer { name } if name == "nope"
    ));
    match refusal(gpu.launch("axpy", [buf("x"), buf("x"), buf("out")]).await) {
        GpuActorError::Rejected { message } => {
            assert!(
                message.contains("argument 0 (a) must be f32, got f32[]"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    match refusal(gpu.launch("add", [buf("x"), buf("out")]).await) {
        GpuActorError::Rejected { message } => assert!(message.contains("takes 3 arguments")),
        other => panic!("{other:?}"),
    }
    match refusal(gpu.launch("conv2d", []).await) {
        GpuActorError::Rejected { message } => {
            assert!(message.contains("unknown kernel \"conv2d\""), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        refusal(gpu.get::<half::f16>("x").await),
        GpuActorError::ElementType { .. }
    ));
    // CUDA C cannot run here: the refusal says CUDA is not available, and why.
    let source = "extern \"C\" __global__ void twice(float *x) { x[threadIdx.x] *= 2.0f; }";
    match refusal(gpu.compile_user(source, "twice").await) {
        error @ GpuActorError::CudaUnavailable { .. } => {
            let message = error.to_string();
            assert!(
                message.starts_with("CUDA is not available: ") && message.contains("CPU"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        refusal(
            gpu.launch_user("twice", LaunchGeometry::covering(8, 32), [buf("x")])
                .await
        ),
        GpuActorError::UnknownUserKernel { .. }
    ));
    // A call with arguments of the wrong shape is the caller's error.
    let bad = gpu
        .actor()
        .call::<_, ()>("launch", &(7u32,))
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), Some(ErrorKind::BadRequest), "{bad}");

    // The same process serves on, its buffers intact.
    gpu.launch("scale", [3.0f32.into(), buf("x"), buf("out")])
        .await
        .unwrap();
    assert_eq!(gpu.get::<f32>("out").await.unwrap(), vec![3.0; 8]);
    assert_eq!(gpu.actor().incarnation(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_beyond_the_gpu_actors_memory_share_is_refused_and_it_serves_on() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(1, "H100", "80GiB")]).await;
    let share = Options::new().gpus(0.5).gpu_memory("1MiB");
    let gpu = gpu_actor(&cluster, share.clone()).await;
    let info = gpu.info().await.unwrap();
    assert_eq!(
        (info.backend(), info.memory_limit),
        (Backend::Cpu, Some(MIB))
    );

    let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    gpu.put("x", x.clone()).await.unwrap();
    assert_eq!(
        refusal(gpu.alloc::<f32>("big", MIB as usize).await),
        GpuActorError::MemoryLimit {
            requested: 4 * MIB,
            in_use: 4000,
            limit: MIB
        }
    );
    assert!(matches!(
        refusal(gpu.put("y", vec![0.0f32; 300_000]).await),
        GpuActorError::MemoryLimit {
            requested: 1_200_000,
            ..
        }
    ));
    assert!(matches!(
        refusal(gpu.alloc::<f32>("huge", 1 << 40).await),
        GpuActorError::MemoryLimit { .. }
    ));
    let message = refusal(gpu.alloc::<f32>("big", MIB as usize).await).to_string();
    assert!(
        message.contains("1048576-byte gpu_memory share"),
        "the refusal names the share: {message}"
    );
    // Arguments too large for one message fail at once, before anything is sent.
    match gpu.put("y", vec![0.0f32; 70 << 20]).await {
        Err(Error::Protocol(FrameError::TooLarge { .. })) => {}
        other => panic!("expected TooLarge, got {:?}", other.map(|_| ())),
    }

    // The actor serves on, with its buffer; what was refused holds no memory.
    assert_eq!(gpu.get::<f32>("x").await.unwrap(), x);
    let info = gpu.info().await.unwrap();
    assert_eq!((info.memory_in_use, info.buffers.len()), (4000, 1));
    gpu.alloc::<f32>("out", 1000).await.unwrap();
    gpu.launch("scale", [0.5f32.into(), buf("x"), buf("out")])
        .await
        .unwrap();
    assert_eq!(
        gpu.get::<f32>("out").await.unwrap(),
        x.iter().map(|v| v * 0.5).collect::<Vec<_>>()
    );
    // And so does its worker: the other half of the GPU takes another GPU actor.
    let other = gpu_actor(&cluster, share).await;
    other.put("z", vec![1.0f32; 4]).await.unwrap();
    assert_eq!(gpu.actor().incarnation(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ember_kernel_run_checks_a_kernel_on_a_cluster_gpu() {
    let (tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(1, "L4", "24GiB")]).await;
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(ember_exe());
        cmd.args(["kernel", "run"])
            .args(args)
            .arg("--cluster")
            .arg(tc.state_dir())
            .env("RUST_LOG", "warn");
        run_cli(cmd)
    };

    let (code, stdout, stderr) = run(&["axpy", "--len", "10000", "--gpu-memory", "1MiB"]).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("kernel axpy on node-"), "{stdout}");
    assert!(stdout.contains("backend cpu"), "{stdout}");
    assert!(stdout.contains("limit 1MiB"), "{stdout}");
    assert!(
        stdout.contains("y: 10000 elements match the CPU reference (bit-exact"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("PASS"), "{stdout}");

    let (code, stdout, stderr) = run(&[
        "matmul_bf16",
        "--gpus",
        "0",
        "--m",
        "8",
        "--k",
        "16",
        "--n",
        "4",
    ])
    .await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("c: 32 elements match"), "{stdout}");

    // Past the share: the actor's refusal, as the command's error.
    let (code, _, stderr) = run(&["add", "--len", "100000", "--gpu-memory", "1MiB"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("gpu_memory share"), "{stderr}");

    let (code, _, stderr) = run(&["conv2d"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("registered kernels: axpy"), "{stderr}");

    // Every GPU actor it started is gone again.
    until("the command's GPU actors to be stopped", || async {
        cluster.status().await.is_ok_and(|s| s.actors.is_empty())
    })
    .await;
}

/// The same checks on a real GPU, found by NVML: every kernel on CUDA within its tolerance,
/// and a user kernel that does not compile returns NVRTC's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a CUDA GPU"]
async fn gpu_the_gpu_actor_runs_every_kernel_and_user_kernels_on_cuda() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu()]).await;
    let gpu = gpu_actor(&cluster, Options::new().gpus(1.0).gpu_memory("1GiB")).await;
    let info = gpu.info().await.unwrap();
    assert_eq!(info.backend(), Backend::Cuda { ordinal: 0 }, "{info:?}");
    for spec in KERNELS {
        let report = check_kernel(&gpu, &KernelCheck::new(spec.name))
            .await
            .unwrap();
        assert!(report.passed(), "{}: {:?}", spec.name, report.outputs);
    }

    let broken = "extern \"C\" __global__ void broken(float *x) { x[0] = undefined_name; }";
    match refusal(gpu.compile_user(broken, "broken").await) {
        GpuActorError::Compile { log, .. } => assert!(log.contains("undefined_name"), "{log}"),
        other => panic!("{other:?}"),
    }
    let source = "extern \"C\" __global__ void twice(float *x, unsigned int n) {
        unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) x[i] *= 2.0f;
    }";
    gpu.compile_user(source, "twice").await.unwrap();
    gpu.put("x", vec![1.5f32; 1000]).await.unwrap();
    gpu.launch_user(
        "twice",
        LaunchGeometry::covering(1000, 256),
        [buf("x"), 1000u32.into()],
    )
    .await
    .unwrap();
    assert_eq!(gpu.get::<f32>("x").await.unwrap(), vec![3.0; 1000]);
}
