//! Item 3 (a), (c), (d), (e) and the `allreduce_device` benchmark: a local cluster on the
//! real GPU (on a logical one in a dry run), with worker processes started from this binary.

use crate::report::{Done, Metric, Outcome};
use ember::collective::{self, ReduceOp};
use ember::kernel_check::{check_kernel, KernelCheck};
use ember::kernels::registry::KERNELS;
use ember::{Cluster, Error, GpuActor, GpuActorError, LaunchArg, LaunchGeometry};
use half::bf16;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A quarter of a GPU: runs `axpy` on its device, checks the bits against the reference,
/// holds its buffers for `hold_ms`, and says what it saw: `CUDA_VISIBLE_DEVICES`, its
/// backend, when it ran (ms since the epoch) and whether the bits matched.
#[ember::task(gpus = 0.25, gpu_memory = "1GiB")]
pub(crate) fn kit_quarter_gpu(
    seed: u32,
    hold_ms: u32,
) -> Result<(String, String, u64, u64, bool), String> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    let device = ember::device().ok_or("no device handle")?;
    let start = now_ms();
    let n = 1 << 20;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i as u32 ^ seed) % 977) as f32 * 0.01)
        .collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 13) as f32 - 6.0).collect();
    let (xb, yb) = (
        device.upload(&x).map_err(|e| e.to_string())?,
        device.upload(&y).map_err(|e| e.to_string())?,
    );
    device
        .launch("axpy", &[1.25f32.into(), (&xb).into(), (&yb).into()])
        .map_err(|e| e.to_string())?;
    let got = device.download::<f32>(&yb).map_err(|e| e.to_string())?;
    let mut want = y;
    ember::kernels::reference::axpy(1.25, &x, &mut want).map_err(|e| e.to_string())?;
    let same = got
        .iter()
        .zip(&want)
        .all(|(g, w)| g.to_bits() == w.to_bits());
    std::thread::sleep(std::time::Duration::from_millis(u64::from(hold_ms)));
    Ok((visible, device.backend().to_string(), start, now_ms(), same))
}

/// One rank of the collective checks, on a quarter of the GPU.
pub(crate) struct KitRank {
    rank: u32,
}

/// Made-up input of `rank`: magnitudes from 1e-3 to 1e3 and both signs, so that the order
/// of addition changes the result.
fn input(rank: u32, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let v = ((i as u64 * 7919 + u64::from(rank) * 104_729) % 1000) as f32 + 0.123;
            let sign = if (i + rank as usize) % 3 == 0 {
                -1.0
            } else {
                1.0
            };
            sign * v * 10f32.powi((i % 7) as i32 - 3)
        })
        .collect()
}

#[ember::actor(gpus = 0.25, gpu_memory = "4GiB")]
impl KitRank {
    /// Rank `rank`.
    pub(crate) fn new(rank: u32) -> Self {
        KitRank { rank }
    }

    /// The backend of its device, e.g. `cuda:0` or `cpu`.
    pub(crate) fn backend(&mut self) -> Result<String, String> {
        let device = ember::device().ok_or("no device handle")?;
        Ok(device.backend().to_string())
    }

    /// Sums its made-up input across group `name` on the host and on the device, in f32
    /// and in bf16; the bits of the four results (bf16 widened).
    pub(crate) fn host_and_device_bits(
        &mut self,
        name: String,
        len: u64,
    ) -> Result<Vec<Vec<u32>>, String> {
        let group = collective::group(&name).map_err(|e| e.to_string())?;
        let device = ember::device().ok_or("no device handle")?;
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let x = input(self.rank, len as usize);
        let mut host = x.clone();
        group
            .allreduce(&mut host, ReduceOp::Sum)
            .map_err(|err| e(&err))?;
        let buffer = device.upload(&x).map_err(|err| e(&err))?;
        group
            .allreduce_device::<f32>(&device, &buffer, ReduceOp::Sum)
            .map_err(|err| e(&err))?;
        let on_device = device.download::<f32>(&buffer).map_err(|err| e(&err))?;
        let xb: Vec<bf16> = x.iter().map(|v| bf16::from_f32(*v)).collect();
        let mut host_b = xb.clone();
        group
            .allreduce(&mut host_b, ReduceOp::Sum)
            .map_err(|err| e(&err))?;
        let buffer_b = device.upload(&xb).map_err(|err| e(&err))?;
        group
            .allreduce_device::<bf16>(&device, &buffer_b, ReduceOp::Sum)
            .map_err(|err| e(&err))?;
        let on_device_b = device.download::<bf16>(&buffer_b).map_err(|err| e(&err))?;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let bits_b = |v: &[bf16]| {
            v.iter()
                .map(|x| u32::from(x.to_bits()))
                .collect::<Vec<u32>>()
        };
        Ok(vec![
            bits(&host),
            bits(&on_device),
            bits_b(&host_b),
            bits_b(&on_device_b),
        ])
    }

    /// Mean seconds of one `allreduce_device` of `bytes` of f32 over `iters` runs, after
    /// two warm-up runs and a barrier.
    pub(crate) fn time_device(
        &mut self,
        name: String,
        bytes: u64,
        iters: u32,
    ) -> Result<f64, String> {
        let group = collective::group(&name).map_err(|e| e.to_string())?;
        let device = ember::device().ok_or("no device handle")?;
        let buffer = device
            .upload(&vec![1.0f32; bytes as usize / 4])
            .map_err(|e| e.to_string())?;
        let run = || {
            group
                .allreduce_device::<f32>(&device, &buffer, ReduceOp::Sum)
                .map_err(|e| e.to_string())
        };
        for _ in 0..2 {
            run()?;
        }
        group.barrier().map_err(|e| e.to_string())?;
        let start = Instant::now();
        for _ in 0..iters {
            run()?;
        }
        Ok(start.elapsed().as_secs_f64() / f64::from(iters))
    }
}

/// (a) The worker reports the GPU NVML describes (name, UUID, memory), through the head.
pub(crate) async fn worker_reports_gpu(cluster: &Cluster, dry_run: bool) -> Outcome {
    let status = cluster.status().await.map_err(|e| e.to_string())?;
    let node = status.nodes.first().ok_or("no node joined")?;
    let gpus = &node.usage.gpus;
    if gpus.len() != 1 {
        return Err(format!("the worker reports {} GPUs: {gpus:?}", gpus.len()));
    }
    if dry_run {
        return Ok(Done::pass(format!(
            "dry run: the worker reports its logical GPU ({}, {} bytes)",
            gpus[0].accelerator, gpus[0].memory_total
        )));
    }
    let inventory = ember_worker::gpu::discover(None);
    let described = inventory
        .devices
        .first()
        .ok_or_else(|| format!("NVML found no GPU: {:?}", inventory.source))?;
    if described.uuid.is_empty() || described.name.is_empty() || described.memory == 0 {
        return Err(format!("NVML's description is incomplete: {described:?}"));
    }
    if gpus[0].memory_total != described.memory || gpus[0].accelerator != described.accelerator {
        return Err(format!(
            "the worker reports {:?}, NVML describes {described:?}",
            gpus[0]
        ));
    }
    let stats = ember_worker::gpu::GpuMonitor::new(&inventory).sample();
    if stats.len() != inventory.devices.len() || stats[0].memory_free > described.memory {
        return Err(format!("NVML's samples do not fit its devices: {stats:?}"));
    }
    Ok(Done::pass(format!(
        "{} {} ({} bytes, accelerator {}; {:?}), reported by the worker to the head",
        described.name, described.uuid, described.memory, described.accelerator, inventory.source
    )))
}

fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> Result<GpuActorError, String> {
    match result {
        Err(Error::Gpu(refusal)) => Ok(refusal),
        other => Err(format!("expected a GPU actor refusal, got {other:?}")),
    }
}

/// (c) The GPU actor: every registered kernel against its reference, a user kernel, a
/// compile error's log, an allocation past its `gpu_memory` refused.
pub(crate) async fn gpu_actor(cluster: &Cluster, dry_run: bool) -> Outcome {
    let gpu = cluster
        .spawn(GpuActor::remote().with(|o| o.gpus(1.0).gpu_memory("1GiB")))
        .await
        .map_err(|e| e.to_string())?;
    let info = gpu.info().await.map_err(|e| e.to_string())?;
    let backend = info.backend().to_string();
    let want = if dry_run { "cpu" } else { "cuda:0" };
    if backend != want {
        return Err(format!("the actor runs on {backend}, not {want}: {info:?}"));
    }
    for spec in KERNELS {
        let report = check_kernel(&gpu, &KernelCheck::new(spec.name))
            .await
            .map_err(|e| format!("{}: {e}", spec.name))?;
        if !report.passed() {
            return Err(format!("{}: {:?}", spec.name, report.outputs));
        }
    }
    let broken = "extern \"C\" __global__ void broken(float *x) { x[0] = undefined_name; }";
    let source = "extern \"C\" __global__ void twice(float *x, unsigned int n) {
        unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) x[i] *= 2.0f;
    }";
    let user = if dry_run {
        match refusal(gpu.compile_user(source, "twice").await)? {
            GpuActorError::CudaUnavailable { .. } => {
                "user kernels refused with CudaUnavailable on the CPU backend".to_owned()
            }
            other => return Err(format!("a user kernel on the CPU gave {other:?}")),
        }
    } else {
        match refusal(gpu.compile_user(broken, "broken").await)? {
            GpuActorError::Compile { log, .. } if log.contains("undefined_name") => {}
            other => return Err(format!("a broken source gave {other:?}")),
        }
        gpu.compile_user(source, "twice")
            .await
            .map_err(|e| e.to_string())?;
        gpu.put("x", vec![1.5f32; 1000])
            .await
            .map_err(|e| e.to_string())?;
        gpu.launch_user(
            "twice",
            LaunchGeometry::covering(1000, 256),
            [LaunchArg::buffer("x"), 1000u32.into()],
        )
        .await
        .map_err(|e| e.to_string())?;
        let got = gpu.get::<f32>("x").await.map_err(|e| e.to_string())?;
        if got != vec![3.0; 1000] {
            return Err("the user kernel gave wrong values".into());
        }
        "a user kernel ran; NVRTC's log for a broken one".to_owned()
    };
    match refusal(gpu.alloc::<f32>("huge", 1 << 30).await)? {
        GpuActorError::MemoryLimit { .. } => {}
        other => return Err(format!("4 GiB past a 1 GiB share gave {other:?}")),
    }
    // And it serves on.
    gpu.info().await.map_err(|e| e.to_string())?;
    gpu.actor().kill().await.map_err(|e| e.to_string())?;
    Ok(Done::pass(format!(
        "on {backend}: all {} kernels match their references; {user}; 4 GiB past the 1 GiB share refused",
        KERNELS.len()
    )))
}

/// (d) Four quarter-GPU tasks at once, sharing the GPU, each running a kernel.
pub(crate) async fn shared_gpu_tasks(cluster: &Cluster, dry_run: bool) -> Outcome {
    let calls: Vec<_> = (0..4)
        .map(|seed| cluster.submit(kit_quarter_gpu::remote(seed, 1500)))
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.map_err(|e| e.to_string())?);
    }
    let want = if dry_run { "cpu" } else { "cuda:0" };
    for (visible, backend, _, _, same) in &results {
        if backend != want || !same {
            return Err(format!(
                "a task ran on {backend} (want {want}), bits equal: {same}"
            ));
        }
        if !dry_run && visible.is_empty() {
            return Err("a task saw no CUDA_VISIBLE_DEVICES".into());
        }
    }
    let visible: Vec<&str> = results.iter().map(|r| r.0.as_str()).collect();
    if visible.iter().any(|v| *v != visible[0]) {
        return Err(format!("the tasks saw different GPUs: {visible:?}"));
    }
    let latest_start = results.iter().map(|r| r.2).max().unwrap_or(0);
    let earliest_end = results.iter().map(|r| r.3).min().unwrap_or(0);
    if latest_start >= earliest_end {
        return Err(format!(
            "the four tasks did not run at the same time (starts and ends: {:?})",
            results.iter().map(|r| (r.2, r.3)).collect::<Vec<_>>()
        ));
    }
    Ok(Done::pass(format!(
        "4 tasks of 0.25 GPU ran at once on {want} with CUDA_VISIBLE_DEVICES={:?}, axpy bit-exact in each",
        visible[0]
    )))
}

/// (e) `allreduce_device` across 4 ranks sharing the GPU gives the host path's bits (f32
/// and bf16); then its time and bus bandwidth.
pub(crate) async fn allreduce_device(cluster: &Cluster, dry_run: bool) -> Outcome {
    let mut ranks = Vec::new();
    for rank in 0..4 {
        ranks.push(
            cluster
                .spawn(KitRank::remote(rank))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let backend = ranks[0].backend().await.map_err(|e| e.to_string())?;
    let refs: Vec<&ember::ActorRef> = ranks.iter().map(|r| r.actor()).collect();
    cluster
        .form_group("kit", &refs)
        .await
        .map_err(|e| e.to_string())?;
    // On the CPU backend of a debug build, every combination runs unoptimised: keep it short.
    let len = if dry_run { 100_003u64 } else { 1_000_003 };
    let answers = futures::future::join_all(
        ranks
            .iter()
            .map(|r| r.host_and_device_bits("kit".into(), len)),
    )
    .await;
    let mut all = Vec::new();
    for answer in answers {
        all.push(answer.map_err(|e| e.to_string())?);
    }
    for (rank, bits) in all.iter().enumerate() {
        if bits[1] != bits[0] || bits[3] != bits[2] {
            return Err(format!(
                "rank {rank}: the device's bits differ from the host's"
            ));
        }
        if bits != &all[0] {
            return Err(format!("rank {rank}'s bits differ from rank 0's"));
        }
    }
    let mut metrics = Vec::new();
    let max = if dry_run { 4 << 20 } else { 256 << 20 };
    for size in [1usize << 20, 16 << 20, 64 << 20, 256 << 20] {
        if size > max {
            continue;
        }
        let iters = ((256usize << 20) / size).clamp(3, 20) as u32;
        let times = futures::future::join_all(
            ranks
                .iter()
                .map(|r| r.time_device("kit".into(), size as u64, iters)),
        )
        .await;
        let rank0 = times
            .into_iter()
            .next()
            .ok_or("no ranks")?
            .map_err(|e| e.to_string())?;
        let busbw = size as f64 / rank0 / 1e9 * 2.0 * 3.0 / 4.0;
        metrics.push(Metric::new(
            format!("allreduce_device 4 ranks {} MiB busbw", size >> 20),
            busbw,
            "GB/s",
        ));
        metrics.push(Metric::new(
            format!("allreduce_device 4 ranks {} MiB time", size >> 20),
            rank0 * 1e6,
            "us",
        ));
    }
    for rank in &ranks {
        rank.actor().kill().await.map_err(|e| e.to_string())?;
    }
    Ok(Done::pass(format!(
        "4 ranks on {backend}: f32 and bf16 sums of {len} elements give the host path's bits on every rank"
    ))
    .with(metrics))
}
