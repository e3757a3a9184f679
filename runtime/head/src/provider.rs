//! Node providers: where the autoscaler's launches become machines. The head's state decides
//! (`ember_head_state::autoscale`); a provider carries a decision out: it starts a worker for
//! a launch and names what it started (an instance: a process, a Slurm job, a pod, a cloud
//! machine), and stops an instance when its launch was given up or its node let go. The worker
//! says its launch in its hello (`LaunchTicket`), which is how the head matches a joining
//! worker to its launch and so to its instance.
//!
//! Calls may block (a cloud CLI, `sbatch`): the head makes them on a blocking thread, never on
//! its state's task, and feeds the answer back to the state.

use ember_core::security::ClusterFile;
use ember_head_state::autoscale::{LaunchId, NodeType};

/// Why a provider could not start or stop a node.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not start the node.
    #[error("cannot launch a node of type {node_type}: {reason}")]
    Launch {
        /// The node type.
        node_type: String,
        /// Why.
        reason: String,
    },
    /// The provider could not stop an instance.
    #[error("cannot stop instance {instance}: {reason}")]
    Stop {
        /// The instance.
        instance: String,
        /// Why.
        reason: String,
    },
}

/// What a launch asks of a provider.
#[derive(Debug, Clone, Copy)]
pub struct LaunchRequest<'a> {
    /// The launch: its worker joins with it (`ember worker --launch ID --node-type NAME`).
    pub launch: LaunchId,
    /// The type of node to start.
    pub node_type: &'a NodeType,
    /// The cluster its worker joins: the head's address, join token and fingerprint.
    pub cluster: &'a ClusterFile,
}

/// Starts and stops the machines (or processes, jobs, pods) that become the cluster's nodes.
pub trait NodeProvider: Send + Sync + 'static {
    /// The provider's kind, for logs and status: `local`, `command`, `slurm`, `kubernetes`.
    fn kind(&self) -> &'static str;

    /// Starts a node whose worker joins answering `request.launch`, and returns the
    /// provider's name for it (its instance). Returns once the start is under way, not once
    /// the worker joined. May block.
    fn launch(&self, request: &LaunchRequest<'_>) -> Result<String, ProviderError>;

    /// Stops an instance this provider started: a launch given up, or a node the autoscaler
    /// let go once it has left. May block.
    fn stop(&self, instance: &str) -> Result<(), ProviderError>;
}
