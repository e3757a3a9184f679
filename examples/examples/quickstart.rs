//! Ember's main job on an embedded local cluster: tasks and actors declared with their GPU
//! needs land on workers where they fit.
//!
//! Run with `cargo run --release --example quickstart`.

use ember::{Cluster, LocalOptions};

/// Where a task ran: any type that derives rkyv's traits travels as an argument or result.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Whereabouts {
    /// The caller's label.
    pub label: String,
    /// The node it ran on.
    pub node: String,
    /// Each GPU it was given, with its share.
    pub gpus: Vec<(u32, String)>,
    /// What its process saw in `CUDA_VISIBLE_DEVICES`.
    pub visible: String,
}

impl std::fmt::Display for Whereabouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gpus: Vec<String> = self
            .gpus
            .iter()
            .map(|(index, share)| format!("GPU {index} x{share}"))
            .collect();
        write!(
            f,
            "{}: {} [{}] CUDA_VISIBLE_DEVICES={}",
            self.label,
            self.node,
            gpus.join(", "),
            self.visible
        )
    }
}

/// A task that needs a quarter of a GPU: reports where it ran and what it was given.
#[ember::task(gpus = 0.25)]
pub fn where_am_i(label: String) -> Whereabouts {
    let ctx = ember::context().expect("runs inside Ember");
    Whereabouts {
        label,
        node: ctx.node.to_string(),
        gpus: ctx
            .allocation
            .gpus
            .iter()
            .map(|g| (g.index, g.share.to_string()))
            .collect(),
        visible: std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default(),
    }
}

/// A CPU task.
#[ember::task(cpus = 1)]
pub fn sum_of_squares(n: u64) -> u64 {
    (1..=n).map(|i| i * i).sum()
}

/// An actor holding a whole GPU with 16 GiB of its memory reserved.
pub struct Trainer {
    steps: u64,
    loss: f64,
}

#[ember::actor(gpus = 1, gpu_memory = "16GiB")]
impl Trainer {
    /// A trainer starting at `loss`.
    pub fn new(loss: f64) -> Self {
        Trainer { steps: 0, loss }
    }

    /// One step: the loss shrinks.
    pub fn step(&mut self, lr: f64) -> f64 {
        self.steps += 1;
        self.loss *= 1.0 - lr;
        self.loss
    }

    /// Where this actor runs.
    pub fn placement(&self) -> String {
        let ctx = ember::context().expect("runs inside Ember");
        format!(
            "{} GPUs {:?} after {} steps",
            ctx.node,
            ctx.gpu_indices(),
            self.steps
        )
    }
}

#[ember::main]
async fn main() -> Result<(), ember::Error> {
    // Two workers with two logical 80 GiB H100s each (no GPU is needed to try Ember).
    let options = LocalOptions::new(2)
        .gpus_per_worker(2)
        .gpu_memory("80GiB")
        .accelerator("H100")
        .cpus_per_worker(2.0);
    let cluster = Cluster::local(options).await?;
    println!("local cluster up at {}", cluster.cluster_file().address);

    // Four quarter-GPU tasks at once pack onto one GPU.
    let refs: Vec<_> = (0..4)
        .map(|i| cluster.submit(where_am_i::remote(format!("task {i}"))))
        .collect();
    for r in refs {
        println!("{}", r.await?);
    }
    println!(
        "sum of squares 1..=1000 = {}",
        cluster.run(sum_of_squares::remote(1000)).await?
    );

    // Two trainers, one whole GPU each; a per-call override asks for an H100 explicitly.
    let a = cluster.spawn(Trainer::remote(1.0)).await?;
    let b = cluster
        .spawn(Trainer::remote(2.0).with(|o| o.accelerator("H100")))
        .await?;
    for _ in 0..3 {
        a.step(0.1).await?;
        b.step(0.2).await?;
    }
    println!(
        "trainer a: loss {:.3} on {}",
        a.step(0.1).await?,
        a.placement().await?
    );
    println!(
        "trainer b: loss {:.3} on {}",
        b.step(0.2).await?,
        b.placement().await?
    );

    // Asking for more than any node has fails at once, naming what is missing.
    match cluster
        .run(where_am_i::remote("too big".into()).with(|o| o.gpus(8.0)))
        .await
    {
        Err(e) => println!("8 GPUs: refused: {e}"),
        Ok(s) => println!("8 GPUs: unexpectedly ran: {s}"),
    }

    let status = cluster.status().await?;
    println!(
        "status: {} nodes, {} actors, {} task leases, {} queued",
        status.nodes.len(),
        status.actors.len(),
        status.leases.len(),
        status.queue.len()
    );
    cluster.shutdown().await;
    Ok(())
}
