//! Node providers: where the autoscaler's launches become machines. The head's state decides
//! (`ember_head_state::autoscale`); a provider carries a decision out: it starts a worker for
//! a launch (the worker says the launch in its hello, `LaunchTicket`), stops one whose launch
//! was given up, and releases a node the autoscaler let go once it has left.

use ember_core::ids::NodeId;
use ember_head_state::autoscale::{LaunchId, NodeType};

/// Why a provider could not launch a node.
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
}

/// Starts and stops the machines (or processes) that become the cluster's nodes.
pub trait NodeProvider: Send + Sync + 'static {
    /// Starts a node of `node_type` whose worker joins answering `launch`. Returns once the
    /// start is under way (not once the worker joined).
    fn launch(&self, launch: LaunchId, node_type: &NodeType) -> Result<(), ProviderError>;

    /// A launch was given up (its worker never joined in time): stop it if it runs.
    fn cancel(&self, launch: LaunchId);

    /// A node the autoscaler let go has left the cluster (drained): release its machine.
    fn release(&self, node: NodeId, launch: Option<LaunchId>);
}
