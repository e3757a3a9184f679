//! The GPU kit: every GPU check and benchmark of Ember in one run, for a GPU machine lent
//! for minutes (no toolchain, no network), and, with `--dry-run`, the same steps here on the
//! CPU backend and logical GPUs.
//!
//! It makes NVRTC and cuBLAS loadable first (`ember_kernels::cuda_libs::prepare`: CUDA 13's
//! libraries, or NVIDIA's wheels found through `python3`), then runs, each check on its own
//! (one failing never stops the others):
//!
//! 1. the CUDA libraries: found, loaded, every symbol Ember calls resolving;
//! 2. NVRTC: every `kernels/cuda/*.cu` compiled for sm_90 (and the GPU's architecture),
//!    compile and cache-hit times;
//! 3. every kernel on CUDA device 0 against its CPU reference (`kernels/tests/gpu.rs`'s
//!    checks), user kernels, memory limits; then bandwidth and matmul benchmarks;
//! 4. a local cluster on the GPU (workers are this binary, started again): the worker's NVML
//!    report, the GPU actor, four quarter-GPU tasks at once, `allreduce_device` on 4 ranks
//!    with the host path's bits and its bus bandwidth.
//!
//! It writes `results.json` and `results.md` into `--out` and exits 1 if any check failed.
//! Build and stage it with `benches/gpu/build.sh`; run it with `benches/gpu/run.sh OUT`.

mod cluster;
#[path = "../../../../kernels/tests/common/mod.rs"]
mod common;
mod kernels;
mod libs;
mod report;

use clap::Parser;
use ember::{Cluster, LocalOptions};
use ember_kernels::cuda_libs::{self, When};
use report::{Done, Kit};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Ember's GPU kit: every GPU check and benchmark in one run")]
struct Args {
    /// Where to write results.json and results.md.
    #[arg(long)]
    out: PathBuf,
    /// Run every step on the CPU backend and logical GPUs (no GPU needed).
    #[arg(long)]
    dry_run: bool,
    /// Fail (not skip) the library and NVRTC checks when NVRTC or cuBLAS is missing; always
    /// so without --dry-run.
    #[arg(long)]
    require_cuda_libs: bool,
    /// `torch.matmul`'s figures from `torch_matmul.py` in the same run, to compare with.
    #[arg(long)]
    torch_json: Option<PathBuf>,
}

/// Runs the cluster checks (items 3a, 3c, 3d, 3e) on a local cluster of one worker.
fn cluster_checks(mut kit: Kit, dry: bool) -> Kit {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            kit.check("3", "cluster", || Err(format!("no runtime: {error}")));
            return kit;
        }
    };
    runtime.block_on(async move {
        let options = if dry {
            LocalOptions::new(1).gpus_per_worker(1)
        } else {
            LocalOptions::new(1)
        };
        match Cluster::local(options).await {
            Ok(cluster) => {
                let limit = Duration::from_secs(120);
                kit.check_async("3a", "nvml-worker-reports-gpu", limit, async {
                    cluster::worker_reports_gpu(&cluster, dry).await
                })
                .await;
                kit.check_async("3c", "gpu-actor", limit, cluster::gpu_actor(&cluster, dry))
                    .await;
                kit.check_async(
                    "3d",
                    "shared-gpu-tasks",
                    limit,
                    cluster::shared_gpu_tasks(&cluster, dry),
                )
                .await;
                kit.check_async(
                    "3e",
                    "allreduce-device",
                    limit,
                    cluster::allreduce_device(&cluster, dry),
                )
                .await;
                cluster.shutdown().await;
            }
            Err(error) => {
                let why = format!("the local cluster did not start: {error}");
                for name in [
                    "nvml-worker-reports-gpu",
                    "gpu-actor",
                    "shared-gpu-tasks",
                    "allreduce-device",
                ] {
                    let why = why.clone();
                    kit.check("3", name, move || Err(why));
                }
            }
        }
        kit
    })
}

#[ember::main]
async fn main() {
    // First: this may start the program again with the libraries on its search path.
    let preparation = cuda_libs::prepare(When::Always);
    let args = Args::parse();
    report::install_panic_hook();
    let mut kit = Kit::new(args.dry_run);
    let required = args.require_cuda_libs || !args.dry_run;
    println!(
        "Ember GPU kit{}: results into {}",
        if args.dry_run { " (dry run)" } else { "" },
        args.out.display()
    );
    let preparation = match preparation {
        Ok(preparation) => preparation,
        Err(error) => {
            kit.check("2", "cuda-libraries", || Err(error.to_string()));
            cuda_libs::Preparation::NotFound {
                missing: cuda_libs::Library::ALL.to_vec(),
            }
        }
    };
    kit.check("2", "cuda-libraries", || {
        libs::check_libraries(&preparation, required)
    });
    kit.check("2", "nvrtc-sm90", || libs::check_nvrtc("sm_90", required));

    let torch = args
        .torch_json
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    match kernels::Target::open(args.dry_run) {
        Ok(target) => {
            if !args.dry_run {
                kit.device = kernels::describe(&target);
                kit.check("2", "nvrtc-device-arch", || {
                    // The registered kernels compile for the device's own architecture as
                    // they load; this compiles them all for it up front.
                    match target.device.launch("sum", &[]) {
                        Err(ember_kernels::KernelError::ArgumentCount { .. }) => Ok(Done::pass(
                            "the device opened; sources compile as kernels load",
                        )),
                        other => Err(format!("{other:?}")),
                    }
                });
            }
            let t = &target;
            kit.check("3b", "kernels-elementwise", || kernels::elementwise(t));
            kit.check("3b", "kernels-reductions", || kernels::reductions(t));
            kit.check("3b", "kernels-softmax", || kernels::softmax(t));
            kit.check("3b", "kernels-matmul", || kernels::matmul(t));
            kit.check("3b", "kernels-combining", || kernels::combining(t));
            kit.check("3b", "kernels-copy", || kernels::copies(t));
            kit.check("3b", "kernels-user", || kernels::user_kernels(t));
            kit.check("3b", "kernels-memory-limits", || kernels::memory_limits(t));
            kit.check("3f", "bench-bandwidth", || kernels::bandwidth(t));
            kit.check("3f", "bench-matmul", || {
                kernels::matmul_speed(t, torch.as_ref())
            });
        }
        Err(why) => {
            for name in ["kernels", "bench-bandwidth", "bench-matmul"] {
                let why = why.clone();
                kit.check("3b", name, move || Err(why));
            }
        }
    }

    // The cluster's head runs in this process: on a runtime of its own with several
    // threads, so that the checks' CPU work (references, comparisons) never holds up its
    // heartbeats.
    let dry = args.dry_run;
    let kit = match std::thread::spawn(move || cluster_checks(kit, dry)).join() {
        Ok(kit) => kit,
        Err(_) => {
            eprintln!("the cluster checks' thread panicked");
            std::process::exit(2);
        }
    };

    if let Err(error) = kit.write(&args.out) {
        eprintln!(
            "cannot write the results into {}: {error}",
            args.out.display()
        );
        std::process::exit(2);
    }
    println!(
        "results: {} and {}",
        args.out.join("results.json").display(),
        args.out.join("results.md").display()
    );
    std::process::exit(i32::from(kit.failed()));
}
