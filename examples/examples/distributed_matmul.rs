//! A matrix multiply across four GPU actors: `C = A . B`, with `A` split by rows. Each actor
//! keeps `B` on its GPU and multiplies its shard of `A` with the `matmul_f32` kernel (cuBLAS
//! on a real GPU, the CPU reference on the logical GPUs of this local cluster). The same
//! multiply then runs on the built-in GPU actors, which need no Rust code on the workers.
//! Both results are checked against the CPU reference.
//!
//! Run with `cargo run --release --example distributed_matmul`.

use ember::kernels::reference::{self, MatmulShape};
use ember::{Cluster, GpuActor, LaunchArg, LocalOptions};

/// Rows of `A` and `C`.
const M: usize = 256;
/// Columns of `A`, rows of `B`.
const K: usize = 128;
/// Columns of `B` and `C`.
const N: usize = 192;
/// Actors, one GPU each: every actor multiplies `M / SHARDS` rows.
const SHARDS: usize = 4;

/// One shard's worker: `B` on its GPU, ready for rows of `A`.
pub struct MatmulShard {
    device: ember::Device,
    b: ember::Buffer,
    k: u32,
    n: u32,
}

#[ember::actor(gpus = 1, gpu_memory = "64MiB")]
impl MatmulShard {
    /// A shard holding `b` (`k` x `n`, row-major) on its GPU.
    pub fn new(b: Vec<f32>, k: u32, n: u32) -> Self {
        let device = ember::device().expect("runs inside Ember");
        let b = device.upload(&b).expect("B fits the actor's 64 MiB");
        MatmulShard { device, b, k, n }
    }

    /// Where it runs: its node and the backend of its GPU.
    pub fn whereabouts(&self) -> String {
        let ctx = ember::context().expect("runs inside Ember");
        format!(
            "{} GPU {:?} backend {}",
            ctx.node,
            ctx.gpu_indices(),
            self.device.backend()
        )
    }

    /// `rows` rows of `A` times `B`.
    pub fn multiply(&self, a: Vec<f32>, rows: u32) -> Result<Vec<f32>, ember::KernelError> {
        let a = self.device.upload(&a)?;
        let c = self.device.alloc::<f32>(rows as usize * self.n as usize)?;
        let args = [
            (&a).into(),
            (&self.b).into(),
            (&c).into(),
            rows.into(),
            self.k.into(),
            self.n.into(),
        ];
        self.device.launch("matmul_f32", &args)?;
        self.device.download(&c)
    }
}

/// Deterministic inputs in [-1, 1).
fn matrix(rows: usize, cols: usize, seed: u32) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761);
            (h >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// The largest `|got - want|`.
fn max_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "C has the wrong size");
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max)
}

#[ember::main]
async fn main() -> anyhow::Result<()> {
    // Two workers with two logical GPUs each: four GPUs, one per shard.
    let options = LocalOptions::new(2)
        .gpus_per_worker(2)
        .gpu_memory("16GiB")
        .cpus_per_worker(2.0);
    let cluster = Cluster::local(options).await?;
    let a = matrix(M, K, 1);
    let b = matrix(K, N, 2);
    let mut want = vec![0.0f32; M * N];
    reference::matmul_f32(&a, &b, &mut want, MatmulShape { m: M, k: K, n: N })?;
    let rows = M / SHARDS;
    let shards_of_a = || a.chunks(rows * K).map(<[f32]>::to_vec);

    // Rust actors holding B, each multiplying its rows of A.
    let mut shards = Vec::new();
    for _ in 0..SHARDS {
        shards.push(
            cluster
                .spawn(MatmulShard::remote(b.clone(), K as u32, N as u32))
                .await?,
        );
    }
    for (i, shard) in shards.iter().enumerate() {
        println!("shard {i}: {}", shard.whereabouts().await?);
    }
    // The shards multiply at the same time.
    let calls = shards
        .iter()
        .zip(shards_of_a())
        .map(|(shard, rows_of_a)| shard.multiply(rows_of_a, rows as u32));
    let parts = futures::future::try_join_all(calls).await?;
    let c: Vec<f32> = parts.concat();
    println!(
        "actors: C = A . B ({M}x{K} . {K}x{N}) on {SHARDS} GPUs, max |error| vs CPU reference {:e}",
        max_error(&c, &want)
    );
    for shard in &shards {
        shard.actor().kill().await?;
    }

    // The same on the built-in GPU actors: buffers and kernels by name, no Rust on workers.
    let mut gpus = Vec::new();
    for _ in 0..SHARDS {
        gpus.push(
            cluster
                .spawn(GpuActor::remote().with(|o| o.gpu_memory("64MiB")))
                .await?,
        );
    }
    let mut parts = Vec::new();
    for (gpu, rows_of_a) in gpus.iter().zip(shards_of_a()) {
        gpu.put("a", rows_of_a).await?;
        gpu.put("b", b.clone()).await?;
        gpu.alloc::<f32>("c", rows * N).await?;
        let shape = [rows as u32, K as u32, N as u32].map(LaunchArg::U32);
        let buffers = ["a", "b", "c"].map(LaunchArg::buffer);
        gpu.launch("matmul_f32", buffers.into_iter().chain(shape))
            .await?;
        parts.push(gpu.get::<f32>("c").await?);
    }
    let info = gpus[0].info().await?;
    let c_builtin: Vec<f32> = parts.concat();
    println!(
        "GPU actors: backend {}, {} of {} bytes in use, max |error| vs CPU reference {:e}, \
         same bits as the actors: {}",
        info.backend(),
        info.memory_in_use,
        info.memory_limit.unwrap_or_default(),
        max_error(&c_builtin, &want),
        c_builtin
            .iter()
            .map(|v| v.to_bits())
            .eq(c.iter().map(|v| v.to_bits()))
    );
    cluster.shutdown().await;
    Ok(())
}
