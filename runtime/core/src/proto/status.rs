//! The cluster's state as `ember status` shows it: a typed message from the head, which the
//! command line prints as a table or as JSON.

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::resources::{GpuGrant, GpuShare, GpuStat};

/// The whole cluster at one moment: the JSON object of `ember status --json`.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Archive,
    RkyvSerialize,
    RkyvDeserialize,
    Serialize,
    Deserialize,
)]
pub struct ClusterStatus {
    /// Every joined node with its capacity and what is free, in id order.
    pub nodes: Vec<NodeStatus>,
    /// Every actor: starting, alive, restarting, or dead with its reason.
    pub actors: Vec<WorkStatus>,
    /// Every granted task lease (each runs tasks of one function, one at a time).
    pub leases: Vec<WorkStatus>,
    /// Every running batch job.
    pub jobs: Vec<WorkStatus>,
    /// Requests waiting for capacity, first to be placed first.
    pub queue: Vec<WorkStatus>,
    /// Every gang (placement group), in id order.
    pub gangs: Vec<GangStatus>,
    /// The autoscaler, when the cluster scales itself.
    pub autoscaler: Option<AutoscalerStatus>,
}

/// What the autoscaler is doing: the node types it launches, its nodes through their life
/// (requested, launching, joined idle or busy or warm, draining, stopped), and its latest
/// decisions.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct AutoscalerStatus {
    /// The node types it may launch, as the policy declares them, with their counts now.
    pub types: Vec<NodeTypeStatus>,
    /// Launches not joined yet: `requested` (the provider has not answered) or `launching`
    /// (it named an instance), each with why it was asked for.
    pub launching: Vec<LaunchStatus>,
    /// The joined nodes it launched, in id order.
    pub nodes: Vec<AutoscaledNodeStatus>,
    /// The latest instances it had stopped, oldest first, each with why.
    pub stopped: Vec<StoppedStatus>,
    /// Its latest decisions, oldest first, each with why.
    pub decisions: Vec<DecisionStatus>,
}

/// A node type, and how many of its nodes there are.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct NodeTypeStatus {
    /// Its name.
    pub name: String,
    /// What one node of it has, e.g. `cpus=8, gpus=1 (H100 80GiB)`.
    pub resources: String,
    /// Nodes kept at least.
    pub min: u32,
    /// Nodes at most.
    pub max: u32,
    /// Idle nodes kept warm.
    pub warm: u32,
    /// Its price, in millionths of a currency unit per hour.
    pub price_micros_per_hour: u64,
    /// Spot (preemptible) or on-demand.
    pub spot: bool,
    /// Joined nodes of it, draining ones included.
    pub nodes: u32,
    /// Launches of it not joined yet.
    pub launching: u32,
    /// Why its latest launches failed and how many in a row, while it backs off.
    pub failing: Option<String>,
}

/// A launch not joined yet.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct LaunchStatus {
    /// The launch's number.
    pub launch: u64,
    /// Its node type.
    pub node_type: String,
    /// `requested` (the provider has not answered yet) or `launching` (its instance starts).
    pub state: String,
    /// The provider's instance, once it named one.
    pub instance: Option<String>,
    /// Why it was asked for.
    pub reason: String,
    /// How long ago it was asked for, in milliseconds.
    pub age_ms: u64,
}

/// A joined node the autoscaler launched.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct AutoscaledNodeStatus {
    /// The node.
    pub node: NodeId,
    /// Its node type.
    pub node_type: String,
    /// The provider's instance.
    pub instance: Option<String>,
    /// `busy` (it holds work), `idle`, `warm` (idle, kept ready) or `draining`.
    pub state: String,
    /// How long it has been idle, in milliseconds, when it is.
    pub idle_ms: Option<u64>,
}

/// An instance the autoscaler had its provider stop.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct StoppedStatus {
    /// Its node, if it joined.
    pub node: Option<NodeId>,
    /// Its launch.
    pub launch: u64,
    /// The provider's instance, if it named one.
    pub instance: Option<String>,
    /// Why it was stopped.
    pub why: String,
    /// How long ago, in milliseconds.
    pub age_ms: u64,
}

/// One decision of the autoscaler.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct DecisionStatus {
    /// How long ago, in milliseconds.
    pub age_ms: u64,
    /// What and why, e.g. `launch h100x8 (launch 3): waiting work needs [gpus=1]: …`.
    pub decision: String,
}

/// One gang: its bundles, where each is, and why it waits.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct GangStatus {
    /// Its id, as `gang-N`.
    pub id: String,
    /// `pack`, `spread`, `strict_pack` or `strict_spread`.
    pub strategy: String,
    /// `placed` (every bundle placed), `waiting` (never placed whole yet: holds nothing),
    /// `replacing` (bundles lost with a node are being placed again) or `removing` (its
    /// removal waits for the work still running in it to stop).
    pub state: String,
    /// Why it waits, naming what is missing, when it does.
    pub waiting: Option<String>,
    /// When it fails unless a node that can hold it joins first, in milliseconds from now.
    pub fails_in_ms: Option<u64>,
    /// Its bundles, in order.
    pub bundles: Vec<BundleStatus>,
}

/// One bundle of a gang.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct BundleStatus {
    /// What it reserves, as `cpus=2, gpus=1, …`.
    pub demand: String,
    /// Its node, once placed.
    pub node: Option<String>,
    /// Leases (tasks, actors) running in it.
    pub leases: u32,
    /// Requests waiting in it.
    pub waiting: u32,
}

/// One node.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct NodeStatus {
    /// Its id, e.g. `node-3`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The worker's address.
    pub address: String,
    /// Capacity and what is in use.
    pub usage: NodeUsage,
    /// Live GPU figures from the last heartbeat.
    pub gpu_stats: Vec<GpuStat>,
    /// Milliseconds since the last heartbeat.
    pub heartbeat_age_ms: u64,
    /// How many task functions and actor types its executable has.
    pub types: usize,
}

/// One task lease, job or actor.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct WorkStatus {
    /// Its id, e.g. `lease-12`, `actor-3`, `job-7`.
    pub id: String,
    /// `lease`, `actor` or `job`.
    pub kind: String,
    /// The task function, actor type or command.
    pub name: String,
    /// What it asked for, e.g. `gpus=0.5, gpu_memory=8GiB`.
    pub demand: String,
    /// Where it runs; absent while it waits.
    pub node: Option<String>,
    /// The GPUs it was given.
    pub gpus: Vec<GpuGrant>,
    /// Its priority while waiting.
    pub priority: i32,
    /// For an actor: its life and checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<ActorLifeStatus>,
    /// While it waits: why (`waiting for resources: …`, or `infeasible: …` naming what is
    /// missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// While it waits infeasible: milliseconds until it fails unless a node that fits joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fails_in_ms: Option<u64>,
}

/// Where an actor is in its life.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct ActorLifeStatus {
    /// `starting`, `alive`, `restarting` or `dead`.
    pub state: String,
    /// Which life this is: 1 when created, one more at each restart or move.
    pub incarnation: u32,
    /// How many times it was restarted after losing its process.
    pub restarts: u32,
    /// The sequence number of its newest recorded checkpoint.
    pub checkpoint_seq: Option<u64>,
    /// Milliseconds since that checkpoint was recorded.
    pub checkpoint_age_ms: Option<u64>,
    /// Why it is dead.
    pub reason: Option<String>,
    /// How many client connections hold it (its creator's among them while it holds it);
    /// 0 for an actor of an earlier head life that no client of this one claimed yet.
    #[serde(default)]
    pub holders: u32,
}

impl ClusterStatus {
    /// The JSON text, as `ember status --json` prints it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// One GPU's totals and what is in use, for `ember status`.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct GpuUsage {
    /// The physical index of the GPU on its node.
    pub index: u32,
    /// The accelerator type label, e.g. `H100`.
    pub accelerator: String,
    /// The share granted to leases.
    pub share_used: GpuShare,
    /// The share still free.
    pub share_free: GpuShare,
    /// Device memory in bytes.
    pub memory_total: u64,
    /// Bytes of device memory reserved by leases.
    pub memory_reserved: u64,
}

/// One custom resource's total and what is free, for `ember status`.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct CustomUsage {
    /// The resource's name.
    pub name: String,
    /// The node's total, in thousandths.
    pub total_millis: u64,
    /// What is free, in thousandths.
    pub free_millis: u64,
}

/// One node's totals and what is free, for `ember status`.
#[derive(
    Debug, Clone, PartialEq, Eq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct NodeUsage {
    /// The node.
    pub node: NodeId,
    /// False while the node is draining (takes no new placements).
    pub schedulable: bool,
    /// CPUs in thousandths.
    pub cpu_millis_total: u64,
    /// Free CPUs in thousandths.
    pub cpu_millis_free: u64,
    /// Each GPU, by index.
    pub gpus: Vec<GpuUsage>,
    /// Each custom resource, by name.
    pub custom: Vec<CustomUsage>,
    /// How many leases the node holds.
    pub leases: usize,
    /// The labels requests may require (the node's task and actor types).
    pub labels: Vec<String>,
}
