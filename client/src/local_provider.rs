//! The `local` node provider: the autoscaler's launches become worker processes on this
//! machine, running this executable with the node type's resources as logical GPUs. `ember up
//! --autoscale` and [`LocalOptions::autoscale`](crate::LocalOptions) use it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ember_core::ids::NodeId;
use ember_core::proto::LaunchTicket;
use ember_core::security::ClusterFile;
use ember_head::autoscale::{LaunchId, NodeType};
use ember_head::{NodeProvider, ProviderError};
use ember_worker::agent::WorkerConfig;
use tokio::process::Child;

use crate::local::worker_command;

/// Worker processes on this machine, one per launch.
#[derive(Debug)]
pub(crate) struct LocalProvider {
    exe: PathBuf,
    /// The cluster to join, known once the head is up (before its first autoscaler pass).
    file: OnceLock<ClusterFile>,
    children: Mutex<HashMap<LaunchId, Child>>,
}

impl LocalProvider {
    pub(crate) fn new(exe: PathBuf) -> Self {
        LocalProvider {
            exe,
            file: OnceLock::new(),
            children: Mutex::new(HashMap::new()),
        }
    }

    /// The cluster its workers join.
    pub(crate) fn set_cluster(&self, file: ClusterFile) {
        let _ = self.file.set(file);
    }

    fn take(&self, launch: LaunchId) -> Option<Child> {
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&launch)
    }

    /// Every worker it started, for stopping them with the cluster.
    pub(crate) fn take_all(&self) -> Vec<Child> {
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect()
    }
}

/// Stops a worker process outright (its executors die with it) and reaps it.
fn stop(mut child: Child) {
    let _ = child.start_kill();
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
}

impl NodeProvider for LocalProvider {
    fn launch(&self, launch: LaunchId, node_type: &NodeType) -> Result<(), ProviderError> {
        let fail = |reason: String| ProviderError::Launch {
            node_type: node_type.name.clone(),
            reason,
        };
        let file = self
            .file
            .get()
            .ok_or_else(|| fail("the head is not up yet".into()))?;
        let r = &node_type.resources;
        let mut wc = WorkerConfig::new(file.address, file.token.clone(), file.fingerprint);
        wc.name = Some(format!("{}-{launch}", node_type.name));
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
            launch,
            node_type: node_type.name.clone(),
        });
        let child = worker_command(&self.exe, &wc)
            .map_err(|e| fail(e.to_string()))?
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", self.exe.display())))?;
        tracing::info!(launch, node_type = %node_type.name, "local worker started");
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(launch, child);
        Ok(())
    }

    fn cancel(&self, launch: LaunchId) {
        if let Some(child) = self.take(launch) {
            stop(child);
        }
    }

    fn release(&self, node: NodeId, launch: Option<LaunchId>) {
        if let Some(child) = launch.and_then(|l| self.take(l)) {
            tracing::info!(%node, "local worker released");
            stop(child);
        }
    }
}
