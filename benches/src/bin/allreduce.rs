//! Allreduce benchmark: time and bus bandwidth of an f32 sum across N actors on this machine,
//! from 4 KiB to 256 MiB, measured the way `../shared/anchors/gloo_allreduce.py` measures
//! `torch.distributed` with Gloo (rank 0's mean time over the iterations, after two warm-up
//! rounds and a barrier; busbw = size / time × 2(n−1)/n, as nccl-tests defines it).
//!
//! Each rank is an actor with its own executor process on one local worker, so ranks talk
//! over the same-machine path (Unix sockets); `--transport quic` makes them use QUIC.
//!
//! Run: `cargo run --release -p ember-benches --bin allreduce -- --ranks 4`

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
    /// rounds and a barrier; the mean seconds per allreduce.
    pub fn time_allreduce(&mut self, name: String, bytes: u64, iters: u32) -> Result<f64, String> {
        let group = collective::group(&name).map_err(|e| e.to_string())?;
        let mut buf = vec![1.0f32; bytes as usize / 4];
        for _ in 0..2 {
            group
                .allreduce(&mut buf, ReduceOp::Sum)
                .map_err(|e| e.to_string())?;
        }
        group.barrier().map_err(|e| e.to_string())?;
        let start = Instant::now();
        for _ in 0..iters {
            group
                .allreduce(&mut buf, ReduceOp::Sum)
                .map_err(|e| e.to_string())?;
        }
        Ok(start.elapsed().as_secs_f64() / f64::from(iters))
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
}

#[ember::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.transport == "quic" {
        // Read by the executors, which inherit this process's environment.
        std::env::set_var("EMBER_COLLECTIVE_TRANSPORT", "quic");
    }
    let cluster = Cluster::local(LocalOptions::new(1)).await?;
    let mut ranks = Vec::new();
    for _ in 0..args.ranks {
        ranks.push(cluster.spawn(BenchRank::remote()).await?);
    }
    let refs: Vec<&ember::ActorRef> = ranks.iter().map(|r| r.actor()).collect();
    let name = "bench";
    cluster.form_group(name, &refs).await?;
    let n = args.ranks as f64;
    for size in SIZES.into_iter().filter(|&s| s <= args.max_bytes) {
        let iters = ((64usize << 20) / size).clamp(3, 200) as u32;
        let calls = ranks
            .iter()
            .map(|r| r.time_allreduce(name.into(), size as u64, iters));
        let times = futures::future::join_all(calls).await;
        let rank0 = times
            .into_iter()
            .next()
            .context("no ranks")?
            .context("rank 0")?;
        let algbw = size as f64 / rank0 / 1e9;
        println!(
            "ember n={} size={size:>10} B  time={:10.1} us  algbw={algbw:6.3} GB/s  busbw={:6.3} GB/s",
            args.ranks,
            rank0 * 1e6,
            algbw * 2.0 * (n - 1.0) / n
        );
    }
    cluster.shutdown().await;
    Ok(())
}
