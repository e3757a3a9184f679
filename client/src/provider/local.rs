//! The `local` node provider: the autoscaler's launches become worker processes on this
//! machine, running this executable with the node type's resources as logical GPUs. `ember up
//! --autoscale` and [`LocalOptions::autoscale`](crate::LocalOptions) use it. An instance is
//! `local-PID`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use ember_core::proto::LaunchTicket;
use ember_head::{LaunchRequest, NodeProvider, ProviderError};
use ember_worker::agent::WorkerConfig;
use tokio::process::Child;

use crate::local::worker_command;

/// Worker processes on this machine, one per launch.
#[derive(Debug)]
pub(crate) struct LocalProvider {
    exe: PathBuf,
    /// The runtime the workers' processes are reaped on.
    runtime: tokio::runtime::Handle,
    children: Mutex<HashMap<String, Child>>,
}

impl LocalProvider {
    /// Starts workers of `exe`; must be made inside a Tokio runtime.
    pub(crate) fn new(exe: PathBuf) -> Self {
        LocalProvider {
            exe,
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
        if let Some(first) = r.gpus.first() {
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
        let mut command = worker_command(&self.exe, &wc).map_err(|e| fail(e.to_string()))?;
        // Spawned on the runtime, so that the child is reaped there.
        let _entered = self.runtime.enter();
        let child = command
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", self.exe.display())))?;
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
