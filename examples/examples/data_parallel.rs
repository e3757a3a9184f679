//! Data-parallel training across four actors, each on a GPU of its own: every step, each one
//! computes the gradient of a linear model on its shard with the kernels crate (matmul and
//! axpy on its device, the CPU reference where there is no GPU), the group averages the
//! gradients with an allreduce reduced on the devices, and each applies the same update. Midway, one actor's worker
//! is SIGKILLed: the actor comes back on the spare worker from its checkpoint, the driver
//! forms the group again and retries the step, and training goes on. At the end every rank
//! holds bit-for-bit the same weights.
//!
//! Run with `cargo run --release --example data_parallel`.

use std::time::Duration;

use ember::collective::{self, ReduceOp};
use ember::{Checkpoint, Cluster, LocalOptions};

/// Features of the model.
const D: usize = 8;
/// Rows of each shard.
const M: usize = 512;
/// Actors, one shard each.
const RANKS: usize = 4;
/// Training steps.
const STEPS: u64 = 30;
/// The step during which a worker is killed.
const KILL_AT: u64 = 12;
/// Learning rate.
const LR: f32 = 0.5;

/// A value in [-1, 1) from a seed.
fn unit(seed: u64) -> f32 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// The weights the data came from.
fn truth() -> Vec<f32> {
    (0..D).map(|i| (i as f32 + 1.0) / D as f32).collect()
}

/// Shard `shard`: its rows (M × D, row-major), the same transposed, and its targets.
fn shard_data(shard: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let w = truth();
    let x: Vec<f32> = (0..M * D).map(|i| unit(shard << 32 | i as u64)).collect();
    let mut xt = vec![0.0; D * M];
    for r in 0..M {
        for c in 0..D {
            xt[c * M + r] = x[r * D + c];
        }
    }
    let y = (0..M)
        .map(|r| {
            let clean: f32 = (0..D).map(|c| x[r * D + c] * w[c]).sum();
            clean + 0.01 * unit(!(shard << 32 | r as u64))
        })
        .collect();
    (x, xt, y)
}

/// What a trainer checkpoints: its shard, weights, steps applied, and the local gradient and
/// loss of its last step (to take part again, unchanged, if that step is retried).
type TrainerState = (u64, Vec<f32>, u64, Vec<f32>, f32);

/// One data-parallel rank.
pub struct Trainer {
    shard: u64,
    w: Vec<f32>,
    steps: u64,
    last_grad: Vec<f32>,
    last_loss: f32,
    device: ember::Device,
    x: ember::Buffer,
    xt: ember::Buffer,
    y: ember::Buffer,
}

impl Checkpoint for Trainer {
    type State = TrainerState;

    fn save(&self) -> TrainerState {
        (
            self.shard,
            self.w.clone(),
            self.steps,
            self.last_grad.clone(),
            self.last_loss,
        )
    }

    fn restore((shard, w, steps, last_grad, last_loss): TrainerState) -> Self {
        let mut t = Trainer::new(shard);
        t.w = w;
        t.steps = steps;
        t.last_grad = last_grad;
        t.last_loss = last_loss;
        t
    }
}

#[ember::actor(gpus = 1, gpu_memory = "1GiB", checkpoint_every = 1, max_restarts = -1)]
impl Trainer {
    /// A trainer of shard `shard`, starting from zero weights, with its shard on its device.
    pub fn new(shard: u64) -> Self {
        let device = ember::device().expect("runs inside Ember");
        let (x, xt, y) = shard_data(shard);
        let upload = |v: &[f32]| device.upload(v).expect("the shard fits in 1 GiB");
        let (x, xt, y) = (upload(&x), upload(&xt), upload(&y));
        Trainer {
            shard,
            w: vec![0.0; D],
            steps: 0,
            last_grad: Vec::new(),
            last_loss: 0.0,
            device,
            x,
            xt,
            y,
        }
    }

    /// Step `step`: the local gradient, averaged across the group, applied. A step this
    /// trainer already applied (retried because another rank failed) is taken part in again
    /// with the same gradient, and not applied twice. Returns the local loss before it.
    pub fn step(&mut self, step: u64) -> Result<f32, String> {
        let fresh = step == self.steps;
        if !fresh && step + 1 != self.steps {
            return Err(format!(
                "step {step} asked of a trainer at step {}",
                self.steps
            ));
        }
        let (local, loss) = if fresh {
            self.gradient().map_err(|e| e.to_string())?
        } else {
            (self.last_grad.clone(), self.last_loss)
        };
        // Averaged on the device: the group's transfers go through host memory, and every
        // combination runs with the device's combining kernels.
        let group = collective::group("dp").map_err(|e| e.to_string())?;
        let on_device = self.device.upload(&local).map_err(|e| e.to_string())?;
        group
            .allreduce_device::<f32>(&self.device, &on_device, ReduceOp::Mean)
            .map_err(|e| e.to_string())?;
        let grad = self
            .device
            .download::<f32>(&on_device)
            .map_err(|e| e.to_string())?;
        if fresh {
            for (w, g) in self.w.iter_mut().zip(&grad) {
                *w -= LR * g;
            }
            self.steps += 1;
            self.last_grad = local;
            self.last_loss = loss;
        }
        Ok(loss)
    }

    /// The weights' bits.
    pub fn weights(&self) -> Vec<u32> {
        self.w.iter().map(|w| w.to_bits()).collect()
    }

    /// The process id of the worker hosting this actor.
    pub fn worker_pid(&self) -> u32 {
        std::os::unix::process::parent_id()
    }

    /// Where it runs and on which backend.
    pub fn whereabouts(&self) -> String {
        let ctx = ember::context().expect("runs inside Ember");
        format!("{} backend {}", ctx.node, self.device.backend())
    }
}

impl Trainer {
    /// The gradient of the mean squared error on this shard, and the loss:
    /// `g = Xᵀ(Xw − y) / M` with the device's matmul and axpy kernels.
    fn gradient(&self) -> Result<(Vec<f32>, f32), ember::KernelError> {
        let dev = &self.device;
        let w = dev.upload(&self.w)?;
        let residual = dev.alloc::<f32>(M)?;
        let (m, d, one) = (M as u32, D as u32, 1u32);
        dev.launch(
            "matmul_f32",
            &[
                (&self.x).into(),
                (&w).into(),
                (&residual).into(),
                m.into(),
                d.into(),
                one.into(),
            ],
        )?;
        dev.launch(
            "axpy",
            &[(-1.0f32).into(), (&self.y).into(), (&residual).into()],
        )?;
        let grad = dev.alloc::<f32>(D)?;
        dev.launch(
            "matmul_f32",
            &[
                (&self.xt).into(),
                (&residual).into(),
                (&grad).into(),
                d.into(),
                m.into(),
                one.into(),
            ],
        )?;
        let r = dev.download::<f32>(&residual)?;
        let loss = r.iter().map(|v| v * v).sum::<f32>() / (2 * M) as f32;
        let grad = dev.download::<f32>(&grad)?;
        Ok((grad.into_iter().map(|g| g / M as f32).collect(), loss))
    }
}

/// Runs step `step` on every trainer, forming the group again and retrying while any rank
/// fails; returns the mean loss.
async fn step_all(cluster: &Cluster, trainers: &[TrainerHandle], step: u64) -> anyhow::Result<f32> {
    let refs: Vec<&ember::ActorRef> = trainers.iter().map(|t| t.actor()).collect();
    for attempt in 1..=10 {
        let results = futures::future::join_all(trainers.iter().map(|t| t.step(step))).await;
        if results.iter().all(|r| r.is_ok()) {
            let total: f32 = results.into_iter().map(|r| r.unwrap_or_default()).sum();
            return Ok(total / trainers.len() as f32);
        }
        let why = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .map(|e| e.to_string())
            .unwrap_or_default();
        println!("step {step}: attempt {attempt} failed ({why}); forming the group again");
        let generation = cluster.form_group("dp", &refs).await?;
        println!("step {step}: group re-formed as generation {generation}");
    }
    anyhow::bail!("step {step} never completed")
}

#[ember::main]
async fn main() -> anyhow::Result<()> {
    // One worker per trainer, and a spare for the one that loses its worker.
    let options = LocalOptions::new(RANKS as u32 + 1)
        .gpus_per_worker(1)
        .gpu_memory("16GiB");
    let cluster = Cluster::local(options).await?;
    let mut trainers = Vec::new();
    for shard in 0..RANKS as u64 {
        trainers.push(cluster.spawn(Trainer::remote(shard)).await?);
    }
    for (rank, t) in trainers.iter().enumerate() {
        println!("rank {rank}: {}", t.whereabouts().await?);
    }
    let refs: Vec<&ember::ActorRef> = trainers.iter().map(|t| t.actor()).collect();
    cluster.form_group("dp", &refs).await?;

    let mut first_loss = None;
    let mut loss = 0.0;
    for step in 0..STEPS {
        if step == KILL_AT {
            let pid = trainers[1].worker_pid().await?;
            // SIGKILL the worker hosting rank 1 while the step's calls go out.
            let kill = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
            });
            println!("step {step}: killing rank 1's worker (pid {pid})");
            loss = step_all(&cluster, &trainers, step).await?;
            kill.await??;
        } else {
            loss = step_all(&cluster, &trainers, step).await?;
        }
        first_loss.get_or_insert(loss);
        if step % 5 == 0 || step == STEPS - 1 {
            println!("step {step}: mean loss {loss:.6}");
        }
    }
    println!("rank 1 now: {}", trainers[1].whereabouts().await?);

    let weights = futures::future::try_join_all(trainers.iter().map(|t| t.weights())).await?;
    let identical = weights.iter().all(|w| w == &weights[0]);
    let w: Vec<f32> = weights[0].iter().map(|b| f32::from_bits(*b)).collect();
    let error = w
        .iter()
        .zip(truth())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "after {STEPS} steps: loss {:.6} -> {loss:.6}, max |w - truth| {error:.4}",
        first_loss.unwrap_or_default()
    );
    println!("identical weights on all {RANKS} ranks: {identical}");
    cluster.shutdown().await;
    Ok(())
}
