//! Allreduce benchmark: time and bus bandwidth of an f32 sum across N actors on this machine,
//! from 4 KiB to 256 MiB, measured the way `../shared/anchors/gloo_allreduce.py` measures
//! `torch.distributed` with Gloo (rank 0's mean time over the iterations, after two warm-up
//! rounds and a barrier; busbw = size / time × 2(n−1)/n, as nccl-tests defines it).
//!
//! Each rank is an actor with its own executor process on one local worker, so ranks talk
//! over the same-machine path (Unix sockets); `--transport quic` makes them use QUIC.
//! `--on-device` starts from a buffer on each rank's device (a share of the machine's first
//! GPU each; with `--logical-gpu`, of a logical GPU, so the CPU backend) and reduces it there
//! with `Group::allreduce_device`.
//!
//! Run: `cargo run --release -p ember-benches --bin allreduce -- --ranks 4 [--on-device]`

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use ember::collective::{self, ReduceOp};
use ember::{Cluster, LocalOptions};

/// The sizes, in bytes, as in the Gloo anchor.
const SIZES: [usize; 6] = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20];

/// One rank of the benchmark.
pub struct BenchRank;

#[ember::actor]
impl BenchRank {
    /// A rank.
    pub fn new() -> Self {
        BenchRank
    }

    /// Runs `iters` allreduces of `bytes` bytes of f32 in group `name` after two warm-up
    /// rounds and a barrier, on a host buffer or (`on_device`) on a buffer on this actor's
    /// device; the mean seconds per allreduce.
    pub fn time_allreduce(
        &mut self,
        name: String,
        bytes: u64,
        iters: u32,
        on_device: bool,
    ) -> Result<f64, String> {
        let group = collective::group(&name).map_err(|e| e.to_string())?;
        let mut buf = vec![1.0f32; bytes as usize / 4];
        let device = ember::device().ok_or("no device handle")?;
        let buffer = device.upload(&buf).map_err(|e| e.to_string())?;
        let mut allreduce = || {
            if on_device {
                group.allreduce_device::<f32>(&device, &buffer, ReduceOp::Sum)
            } else {
                group.allreduce(&mut buf, ReduceOp::Sum)
            }
            .map_err(|e| e.to_string())
        };
        for _ in 0..2 {
            allreduce()?;
        }
        group.barrier().map_err(|e| e.to_string())?;
        let start = Instant::now();
        for _ in 0..iters {
            allreduce()?;
        }
        Ok(start.elapsed().as_secs_f64() / f64::from(iters))
    }

    /// The backend of this actor's device, e.g. `cuda:0` or `cpu`.
    pub fn backend(&mut self) -> Result<String, String> {
        let device = ember::device().ok_or("no device handle")?;
        Ok(device.backend().to_string())
    }
}

impl Default for BenchRank {
    fn default() -> Self {
        BenchRank::new()
    }
}

#[derive(Parser)]
#[command(about = "Ember allreduce time and bus bandwidth between actors on this machine")]
struct Args {
    /// How many ranks.
    #[arg(long, default_value_t = 4)]
    ranks: usize,
    /// `local` (Unix sockets between ranks on one machine) or `quic`.
    #[arg(long, default_value = "local")]
    transport: String,
    /// Only sizes up to this many bytes.
    #[arg(long, default_value_t = 256 << 20)]
    max_bytes: usize,
    /// Reduce a buffer on each rank's device (a 1/ranks share of the GPU each) on the device.
    #[arg(long)]
    on_device: bool,
    /// Declare one logical GPU (devices on the CPU backend) instead of finding real ones.
    #[arg(long)]
    logical_gpu: bool,
}

#[ember::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.transport == "quic" {
        // Read by the executors, which inherit this process's environment.
        std::env::set_var("EMBER_COLLECTIVE_TRANSPORT", "quic");
    }
    let options = match args.logical_gpu {
        true => LocalOptions::new(1).gpus_per_worker(1),
        false => LocalOptions::new(1),
    };
    let cluster = Cluster::local(options).await?;
    let share = 1.0 / args.ranks as f64;
    let mut ranks = Vec::new();
    for _ in 0..args.ranks {
        let rank = if args.on_device {
            BenchRank::remote().with(|o| o.gpus(share))
        } else {
            BenchRank::remote()
        };
        ranks.push(cluster.spawn(rank).await?);
    }
    let label = if args.on_device {
        let backend = ranks[0].backend().await.map_err(anyhow::Error::msg)?;
        format!("ember-device({backend})")
    } else {
        "ember".to_owned()
    };
    let refs: Vec<&ember::ActorRef> = ranks.iter().map(|r| r.actor()).collect();
    let name = "bench";
    cluster.form_group(name, &refs).await?;
    let n = args.ranks as f64;
    for size in SIZES.into_iter().filter(|&s| s <= args.max_bytes) {
        let iters = ((64usize << 20) / size).clamp(3, 200) as u32;
        let calls = ranks
            .iter()
            .map(|r| r.time_allreduce(name.into(), size as u64, iters, args.on_device));
        let times = futures::future::join_all(calls).await;
        let rank0 = times
            .into_iter()
            .next()
            .context("no ranks")?
            .context("rank 0")?;
        let algbw = size as f64 / rank0 / 1e9;
        println!(
            "{label} n={} size={size:>10} B  time={:10.1} us  algbw={algbw:6.3} GB/s  busbw={:6.3} GB/s",
            args.ranks,
            rank0 * 1e6,
            algbw * 2.0 * (n - 1.0) / n
        );
    }
    cluster.shutdown().await;
    Ok(())
}
