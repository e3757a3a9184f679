//! The `local` node provider: the autoscaler's launches become worker processes on this
//! machine, running this executable (or the one given) with the node type's resources, its
//! GPUs as logical ones unless told to find the machine's real ones. `ember up --autoscale`,
//! `ember head --autoscale` with `"provider": {"kind": "local"}` and
//! [`LocalOptions::autoscale`](crate::LocalOptions) use it. An instance is `local-PID`. The
//! workers are this process's children: they stop with it ([`LocalProvider::shutdown`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ember_core::proto::LaunchTicket;
use ember_head::{LaunchRequest, NodeProvider, ProviderError};
use ember_worker::agent::WorkerConfig;
use ember_worker::role::Program;
use tokio::process::Child;

use crate::local::worker_command;

/// Worker processes on this machine, one per launch.
#[derive(Debug)]
pub struct LocalProvider {
    program: Program,
    logical_gpus: bool,
    /// The runtime the workers' processes are reaped on.
    runtime: tokio::runtime::Handle,
    children: Mutex<HashMap<String, Child>>,
}

impl LocalProvider {
    /// Starts workers of `program`, declaring their node type's GPUs as logical ones when
    /// `logical_gpus` (else they find this machine's through NVML); must be made inside a
    /// Tokio runtime.
    pub fn new(program: Program, logical_gpus: bool) -> Self {
        LocalProvider {
            program,
            logical_gpus,
            runtime: tokio::runtime::Handle::current(),
            children: Mutex::new(HashMap::new()),
        }
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every worker it started, for stopping them with the cluster.
    pub(crate) fn take_all(&self) -> Vec<Child> {
        self.children().drain().map(|(_, c)| c).collect()
    }

    /// Stops every worker it started and has not stopped yet: asks each to leave (SIGTERM),
    /// and kills those still there after 5 s.
    pub async fn shutdown(&self) {
        stop_workers(self.take_all()).await;
    }
}

impl NodeProvider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn launch(&self, request: &LaunchRequest<'_>) -> Result<String, ProviderError> {
        let t = request.node_type;
        let fail = |reason: String| ProviderError::Launch {
            node_type: t.name.clone(),
            reason,
        };
        let file = request.cluster;
        let r = &t.resources;
        let mut wc = WorkerConfig::new(file.address, file.token.clone(), file.fingerprint);
        wc.name = Some(format!("{}-{}", t.name, request.launch));
        wc.cpus = Some(r.cpu_millis as f64 / 1000.0);
        if let (true, Some(first)) = (self.logical_gpus, r.gpus.first()) {
            wc.gpus = Some(r.gpus.len() as u32);
            wc.gpu_memory = Some(first.memory.to_string());
            wc.accelerator = Some(first.accelerator.clone());
        }
        wc.resources = r
            .custom
            .iter()
            .map(|(name, millis)| (name.clone(), *millis as f64 / 1000.0))
            .collect();
        wc.launch = Some(LaunchTicket {
            launch: request.launch,
            node_type: t.name.clone(),
        });
        let mut command = worker_command(&self.program, &wc).map_err(|e| fail(e.to_string()))?;
        // Spawned on the runtime, so that the child is reaped there.
        let _entered = self.runtime.enter();
        let child = command
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", self.program)))?;
        let instance = format!("local-{}", child.id().unwrap_or_default());
        tracing::info!(launch = request.launch, node_type = %t.name, %instance, "local worker started");
        self.children().insert(instance.clone(), child);
        Ok(instance)
    }

    fn stop(&self, instance: &str) -> Result<(), ProviderError> {
        let Some(mut child) = self.children().remove(instance) else {
            return Err(ProviderError::Stop {
                instance: instance.to_string(),
                reason: "no such local worker".into(),
            });
        };
        // Stopped outright (its executors die with it) and reaped.
        let _ = child.start_kill();
        self.runtime.spawn(async move {
            let _ = child.wait().await;
        });
        tracing::info!(%instance, "local worker stopped");
        Ok(())
    }
}

/// Asks `workers` to leave (SIGTERM) and waits for them, killing those still there after 5 s.
pub(crate) async fn stop_workers(mut workers: Vec<Child>) {
    for w in &workers {
        if let Some(pid) = w.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for w in &mut workers {
        if tokio::time::timeout(Duration::from_secs(5), w.wait())
            .await
            .is_err()
        {
            let _ = w.kill().await;
        }
    }
}
