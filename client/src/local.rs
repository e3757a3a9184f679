//! A whole cluster on this machine: a head in this process and worker processes running this
//! executable. `ember up` and [`Cluster::local`](crate::Cluster::local) both use it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ember_core::security::ClusterFile;
use ember_head::autoscale::Autoscaler;
use ember_head::{Autoscale, HeadConfig, RunningHead};
use ember_worker::agent::WorkerConfig;
use ember_worker::role::{program, Program, ROLE_VAR, ROLE_WORKER, WORKER_CONFIG_VAR};
use tokio::process::{Child, Command};

use crate::provider::local::{stop_workers, LocalProvider};
use crate::Error;

/// How many workers to start and what each offers.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// How many worker processes.
    pub workers: u32,
    /// Logical GPUs per worker (this machine's real GPUs are found through NVML when 0).
    pub gpus_per_worker: u32,
    /// Memory of each logical GPU, e.g. `80GiB`.
    pub gpu_memory: Option<String>,
    /// Accelerator type of the logical GPUs, e.g. `H100`.
    pub accelerator: Option<String>,
    /// CPUs each worker offers; the machine's count when `None`.
    pub cpus_per_worker: Option<f64>,
    /// Where the head listens; a free loopback port when `None`.
    pub listen: Option<SocketAddr>,
    /// The head's state directory; a fresh temporary one (removed at shutdown) when `None`.
    pub state_dir: Option<PathBuf>,
    /// The workers' executable; this program ([`ember_worker::role::program`]) when `None`.
    pub worker_exe: Option<PathBuf>,
    /// Scale the cluster with demand: the autoscaler's policy, whose launches start worker
    /// processes here (logical GPUs as each node type declares). `None`: `workers` workers,
    /// fixed.
    pub autoscale: Option<ember_head::autoscale::Policy>,
    /// Whether the autoscaler's workers declare their node type's GPUs as logical ones (the
    /// default: no GPU needed) rather than finding this machine's through NVML.
    pub autoscale_logical_gpus: bool,
}

impl LocalOptions {
    /// `workers` workers with no logical GPUs.
    pub fn new(workers: u32) -> Self {
        LocalOptions {
            workers,
            gpus_per_worker: 0,
            gpu_memory: None,
            accelerator: None,
            cpus_per_worker: None,
            listen: None,
            state_dir: None,
            worker_exe: None,
            autoscale: None,
            autoscale_logical_gpus: true,
        }
    }

    /// Declares `n` logical GPUs on each worker.
    pub fn gpus_per_worker(mut self, n: u32) -> Self {
        self.gpus_per_worker = n;
        self
    }

    /// Sets the memory of each logical GPU, e.g. `"80GiB"`.
    pub fn gpu_memory(mut self, size: &str) -> Self {
        self.gpu_memory = Some(size.to_string());
        self
    }

    /// Sets the accelerator type of the logical GPUs, e.g. `"H100"`.
    pub fn accelerator(mut self, accelerator: &str) -> Self {
        self.accelerator = Some(accelerator.to_string());
        self
    }

    /// Sets the CPUs each worker offers.
    pub fn cpus_per_worker(mut self, cpus: f64) -> Self {
        self.cpus_per_worker = Some(cpus);
        self
    }
}

/// A running local cluster.
pub struct LocalCluster {
    head: Option<RunningHead>,
    workers: Vec<Child>,
    /// Where the autoscaler's workers come from, when it scales.
    provider: Option<Arc<LocalProvider>>,
    file: ClusterFile,
    temp_dir: Option<PathBuf>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("head", &self.file.address)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl LocalCluster {
    /// Starts the head and the worker processes (without waiting for them to join).
    pub async fn start(options: LocalOptions) -> Result<Self, Error> {
        let (state_dir, temp_dir) = match &options.state_dir {
            Some(d) => (d.clone(), None),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "ember-local-{}-{}",
                    std::process::id(),
                    next_local()
                ));
                (d.clone(), Some(d))
            }
        };
        let mut config = HeadConfig::new(state_dir);
        config.listen = options
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let program = match &options.worker_exe {
            Some(p) => Program::executable(p.clone()),
            None => program().map_err(|e| Error::Local(e.to_string()))?,
        };
        let provider = match &options.autoscale {
            Some(policy) => {
                let autoscaler = Autoscaler::new(policy.clone())
                    .map_err(|e| Error::Local(format!("autoscaling: {e}")))?;
                let provider = Arc::new(LocalProvider::new(
                    program.clone(),
                    options.autoscale_logical_gpus,
                ));
                config.autoscale = Some(Autoscale {
                    autoscaler,
                    interval: Duration::from_secs(1),
                    provider: provider.clone(),
                });
                Some(provider)
            }
            None => None,
        };
        let head = ember_head::start(config)
            .await
            .map_err(|e| Error::Local(e.to_string()))?;
        let file = head.cluster.clone();
        let mut workers = Vec::new();
        for i in 0..options.workers {
            let mut wc = WorkerConfig::new(file.address, file.token.clone(), file.fingerprint);
            wc.name = Some(format!("local-{i}"));
            // The whole cluster stops together: nothing to wait for while actors move.
            wc.grace_ms = 0;
            if options.state_dir.is_none() {
                // The head lives in this process, its state in a temporary directory: once
                // it is lost (this process killed), it never comes back, and the workers
                // stop at once rather than wait to join it again.
                wc.rejoin_ms = 0;
            }
            wc.cpus = options.cpus_per_worker;
            if options.gpus_per_worker > 0 {
                wc.gpus = Some(options.gpus_per_worker);
                wc.gpu_memory = options.gpu_memory.clone();
                wc.accelerator = options.accelerator.clone();
            }
            let child = worker_command(&program, &wc)?
                .spawn()
                .map_err(|e| Error::Local(format!("cannot start worker {program}: {e}")))?;
            workers.push(child);
        }
        Ok(LocalCluster {
            head: Some(head),
            workers,
            provider,
            file,
            temp_dir,
        })
    }

    /// What a client or worker needs to join.
    pub fn cluster_file(&self) -> &ClusterFile {
        &self.file
    }

    /// Asks every worker to leave (SIGTERM), waits for them (killing stragglers after 5 s),
    /// then stops the head.
    pub async fn shutdown(mut self) {
        let mut workers = std::mem::take(&mut self.workers);
        if let Some(p) = &self.provider {
            workers.extend(p.take_all());
        }
        stop_workers(workers).await;
        if let Some(head) = self.head.take() {
            head.stop().await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Some(d) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The command that starts a worker process of `program` with `wc`: the one way local workers
/// start, fixed ones and the autoscaler's alike.
pub(crate) fn worker_command(program: &Program, wc: &WorkerConfig) -> Result<Command, Error> {
    let json = serde_json::to_string(wc).map_err(|e| Error::Local(e.to_string()))?;
    let mut cmd = program.command();
    cmd.env(ROLE_VAR, ROLE_WORKER)
        .env(WORKER_CONFIG_VAR, json)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    Ok(cmd)
}

fn next_local() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
