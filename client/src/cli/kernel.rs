//! `ember kernel`: the registered kernels, and a smoke test of one on a cluster GPU through
//! the built-in GPU actor.

use anyhow::Result;
use clap::{Args, Subcommand};
use ember_core::resources::ByteSize;

use super::{ClusterArg, HeadWaitArg};
use crate::kernel_check::{check_kernel, KernelCheck, KernelCheckReport};
use crate::kernels::registry::KERNELS;
use crate::GpuActor;

#[derive(Subcommand)]
pub(crate) enum KernelCommand {
    /// List the registered kernels with their arguments.
    List,
    /// Run a registered kernel on a cluster GPU and check it against its CPU reference: made-up
    /// inputs go to a GPU actor, the kernel runs there, and its output comes back to be
    /// compared. Exits with 1 when the output is outside the kernel's tolerance.
    Run(RunArgs),
}

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    cluster: ClusterArg,
    #[command(flatten)]
    head: HeadWaitArg,
    /// The kernel, e.g. axpy (see `ember kernel list`).
    kernel: String,
    /// Elements of the element-wise kernels' and the reductions' inputs (each buffer travels
    /// in one message of at most 256 MiB).
    #[arg(long, default_value_t = 1 << 20)]
    len: usize,
    /// Rows of softmax's matrix.
    #[arg(long, default_value_t = 64)]
    rows: u32,
    /// Columns of softmax's matrix.
    #[arg(long, default_value_t = 1000)]
    cols: u32,
    /// matmul: rows of a and c.
    #[arg(long, default_value_t = 256)]
    m: u32,
    /// matmul: columns of a, rows of b.
    #[arg(long, default_value_t = 256)]
    k: u32,
    /// matmul: columns of b and c.
    #[arg(long, default_value_t = 256)]
    n: u32,
    /// Seed of the made-up inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// GPUs for the GPU actor: a fraction of one, 1, or 0 for the CPU reference on any worker.
    #[arg(long, default_value_t = 1.0)]
    gpus: f64,
    /// GPU memory for the GPU actor, e.g. 1GiB: the most its buffers may hold.
    #[arg(long)]
    gpu_memory: Option<String>,
    /// Accelerator type, e.g. H100.
    #[arg(long)]
    accelerator: Option<String>,
}

/// Runs `command`; the exit code is 0 unless a check failed.
pub(crate) async fn run(command: KernelCommand) -> Result<i32> {
    match command {
        KernelCommand::List => {
            for spec in KERNELS {
                println!("{:<18} {}", spec.name, spec.signature());
                println!("{:<18} {}", "", spec.summary);
            }
            Ok(0)
        }
        KernelCommand::Run(args) => run_check(args).await,
    }
}

async fn run_check(args: RunArgs) -> Result<i32> {
    let cluster = args.cluster.connect(args.head.wait).await?;
    let check = KernelCheck {
        kernel: args.kernel,
        len: args.len,
        rows: args.rows,
        cols: args.cols,
        m: args.m,
        k: args.k,
        n: args.n,
        seed: args.seed,
    };
    let spawn = GpuActor::remote().with(|o| {
        let o = o.gpus(args.gpus);
        let o = match &args.gpu_memory {
            Some(memory) => o.gpu_memory(memory),
            None => o,
        };
        match &args.accelerator {
            Some(accelerator) => o.accelerator(accelerator),
            None => o,
        }
    });
    let gpu = cluster.spawn(spawn).await?;
    let report = check_kernel(&gpu, &check).await;
    let node = gpu.actor().node();
    if let Err(e) = gpu.actor().kill().await {
        eprintln!("ember: could not stop the GPU actor: {e}");
    }
    let report = report?;
    print_report(&report, &node.to_string());
    Ok(if report.passed() { 0 } else { 1 })
}

fn print_report(report: &KernelCheckReport, node: &str) {
    let info = &report.info;
    let mut backend = format!("backend {}", info.backend());
    if let Some(name) = &info.device_name {
        backend.push_str(&format!(" ({name})"));
    }
    println!("kernel {} on {node}, {backend}", report.kernel);
    if let Some(reason) = &info.cpu_fallback_reason {
        println!("  the GPU is not used: {reason}");
    }
    let limit = info
        .memory_limit
        .map_or("no limit".to_owned(), |l| format!("limit {}", ByteSize(l)));
    println!(
        "  upload {:.1} ms, launch {:.1} ms, download {:.1} ms; memory in use {} ({limit})",
        report.upload.as_secs_f64() * 1e3,
        report.launch.as_secs_f64() * 1e3,
        report.download.as_secs_f64() * 1e3,
        ByteSize(info.memory_in_use),
    );
    for output in &report.outputs {
        match output.first_mismatch {
            None => println!(
                "  {}: {} elements match the CPU reference ({}, max |error| {:e})",
                output.name, output.elements, report.tolerance, output.max_abs_error
            ),
            Some((index, got, want)) => println!(
                "  {}: {} of {} elements outside {}; first at {index}: got {got:e}, \
                 reference {want:e}",
                output.name, output.mismatches, output.elements, report.tolerance
            ),
        }
    }
    println!("{}", if report.passed() { "PASS" } else { "FAIL" });
}
