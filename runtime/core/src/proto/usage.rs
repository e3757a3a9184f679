//! What `ember usage` shows: the head's usage ledger over a window, as a typed message that
//! the command line prints as a table or as JSON, and its totals grouped by job, node type or
//! node ([`UsageReport::groups`]).
//!
//! Times are ages, in milliseconds before the head answered, as in `ember status`: the head
//! reads no wall clock, and the client turns ages into dates with its own. Node time is in
//! whole nanoseconds, so that a node's allocated, idle and warm time add up to its life
//! exactly; resource-seconds and costs are decimal, converted once from the ledger's exact
//! integer totals.

use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::{Deserialize, Serialize};

/// The key of usage summed before it: records or nodes the head no longer keeps one by one.
pub const EARLIER: &str = "(earlier)";

/// What some usage amounts to: resource-seconds and the price apportioned to it.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Archive,
    RkyvSerialize,
    RkyvDeserialize,
    Serialize,
    Deserialize,
)]
pub struct UsageAmounts {
    /// The share of each GPU held (1 for a whole GPU) times the seconds held, summed over the
    /// GPUs held.
    pub gpu_share_seconds: f64,
    /// GPU memory reserved, in GiB, times the seconds reserved, summed over the GPUs.
    pub gpu_memory_gib_seconds: f64,
    /// CPUs held times the seconds held.
    pub cpu_seconds: f64,
    /// The node's price apportioned to it, in the currency of the node types' prices.
    pub cost: f64,
}

impl std::ops::AddAssign for UsageAmounts {
    fn add_assign(&mut self, other: UsageAmounts) {
        self.gpu_share_seconds += other.gpu_share_seconds;
        self.gpu_memory_gib_seconds += other.gpu_memory_gib_seconds;
        self.cpu_seconds += other.cpu_seconds;
        self.cost += other.cost;
    }
}

/// The usage ledger over a window: the JSON object of `ember usage --json`.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Archive,
    RkyvSerialize,
    RkyvDeserialize,
    Serialize,
    Deserialize,
)]
pub struct UsageReport {
    /// How far back the window reaches, in milliseconds: the window asked for, or, without
    /// one, everything this head life has seen.
    pub window_ms: u64,
    /// How long ago this head life began. Usage before it is not kept: the ledger lives in
    /// the head's memory.
    pub head_started_ms_ago: u64,
    /// Each job, actor incarnation and task lease that held resources in the window (running
    /// ones included), its amounts counted within the window.
    pub records: Vec<RecordUsage>,
    /// Records the head no longer keeps one by one, summed by job, node type and node.
    pub earlier: Vec<EarlierUsage>,
    /// Each node alive in the window: its time in the window, allocated, idle and warm.
    pub nodes: Vec<NodeTime>,
    /// Nodes that left and the head no longer keeps one by one, summed by node type.
    pub earlier_nodes: Vec<EarlierNodeTime>,
    /// Why some figures do not cover exactly the window, when they do not; empty when they
    /// all do.
    pub partial: Vec<String>,
}

/// One job, actor incarnation or task lease, over the part of its life within the window.
#[derive(
    Debug, Clone, PartialEq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct RecordUsage {
    /// `job`, `actor` or `lease`.
    pub kind: String,
    /// Its id: `job-7`, `actor-3` or `lease-12`.
    pub id: String,
    /// For an actor: which incarnation (each has a record of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u32>,
    /// The job's command, the actor's type or the task function.
    pub name: String,
    /// What `--by job` groups it under: a batch job's own id, otherwise the client connection
    /// that owns it, `client-E.C` (connection C of head life E).
    pub job: String,
    /// Its node, e.g. `node-3`.
    pub node: String,
    /// Its node's type: the autoscaler's type name, or `static:MODEL` (`static:cpu` without
    /// GPUs) for a node the autoscaler did not launch.
    pub node_type: String,
    /// The accelerator model of the GPUs it holds, e.g. `H100`; absent without GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// Whether its node is a spot (preemptible) node.
    pub spot: bool,
    /// The GPU share it holds, summed over its GPUs.
    pub gpus: f64,
    /// The GPU memory it reserves, in GiB, summed over its GPUs.
    pub gpu_memory_gib: f64,
    /// The CPUs it holds.
    pub cpus: f64,
    /// The part of its node's price it pays: its share of the node's GPUs, or of its CPUs on
    /// a node without GPUs.
    pub price_share: f64,
    /// Milliseconds before the answer when it started holding resources.
    pub started_ms_ago: u64,
    /// Milliseconds before the answer when it stopped; absent while it still holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms_ago: Option<u64>,
    /// What it amounts to within the window.
    #[serde(flatten)]
    pub usage: UsageAmounts,
}

/// Records the head no longer keeps one by one, summed for one job, node type and node.
/// Summaries of the oldest are summed again by node type alone, with `job` and `node`
/// [`EARLIER`].
#[derive(
    Debug, Clone, PartialEq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct EarlierUsage {
    /// The job key, as in [`RecordUsage::job`], or [`EARLIER`].
    pub job: String,
    /// The node type.
    pub node_type: String,
    /// The node, or [`EARLIER`].
    pub node: String,
    /// How many records.
    pub records: u64,
    /// What they amount to, whole.
    #[serde(flatten)]
    pub usage: UsageAmounts,
}

/// A node's time, split by what it was doing, in whole nanoseconds, with its price split the
/// same way. `allocated_ns + idle_ns + warm_ns == life_ns`, always.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Archive,
    RkyvSerialize,
    RkyvDeserialize,
    Serialize,
    Deserialize,
)]
pub struct NodeSplit {
    /// The time counted.
    pub life_ns: u64,
    /// Time holding at least one job, actor or task lease.
    pub allocated_ns: u64,
    /// Time holding none, outside the warm pool.
    pub idle_ns: u64,
    /// Time holding none, kept ready in the autoscaler's warm pool.
    pub warm_ns: u64,
    /// The node's price over its allocated time.
    pub allocated_cost: f64,
    /// The node's price over its idle time.
    pub idle_cost: f64,
    /// The node's price over its warm time: what the warm pool costs, apart.
    pub warm_cost: f64,
}

impl std::ops::AddAssign for NodeSplit {
    fn add_assign(&mut self, other: NodeSplit) {
        self.life_ns += other.life_ns;
        self.allocated_ns += other.allocated_ns;
        self.idle_ns += other.idle_ns;
        self.warm_ns += other.warm_ns;
        self.allocated_cost += other.allocated_cost;
        self.idle_cost += other.idle_cost;
        self.warm_cost += other.warm_cost;
    }
}

/// One node's time within the window.
#[derive(
    Debug, Clone, PartialEq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct NodeTime {
    /// The node, e.g. `node-3`.
    pub node: String,
    /// Its type, as in [`RecordUsage::node_type`].
    pub node_type: String,
    /// The accelerator model of its GPUs; absent without GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// Whether it is a spot (preemptible) node.
    pub spot: bool,
    /// Its price per hour (0 for a node the autoscaler did not launch).
    pub price_per_hour: f64,
    /// Milliseconds before the answer when it joined.
    pub joined_ms_ago: u64,
    /// Milliseconds before the answer when it left; absent while it is in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_ms_ago: Option<u64>,
    /// Where its figures start, in milliseconds before the answer: the later of its join and
    /// the window's start (later still where its oldest history was dropped; `partial` then
    /// says so).
    pub from_ms_ago: u64,
    /// Its time from then until it left or the answer, split.
    #[serde(flatten)]
    pub split: NodeSplit,
}

/// Nodes of one type that left and that the head no longer keeps one by one, summed over
/// their whole lives.
#[derive(
    Debug, Clone, PartialEq, Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize,
)]
pub struct EarlierNodeTime {
    /// The node type.
    pub node_type: String,
    /// How many nodes.
    pub nodes: u64,
    /// Their lives, split.
    #[serde(flatten)]
    pub split: NodeSplit,
}

/// What `--by` groups totals by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageBy {
    /// The job key: a batch job, or the client connection owning actors and task leases.
    Job,
    /// The node type.
    Type,
    /// The node.
    Node,
}

impl std::str::FromStr for UsageBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "job" => Ok(UsageBy::Job),
            "type" => Ok(UsageBy::Type),
            "node" => Ok(UsageBy::Node),
            other => Err(format!("cannot group by `{other}`: use job, type or node")),
        }
    }
}

/// The totals of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageGroup {
    /// The job key, node type or node.
    pub key: String,
    /// How many records, kept or summed.
    pub records: u64,
    /// What they amount to.
    #[serde(flatten)]
    pub usage: UsageAmounts,
    /// By type or node: the nodes' time, split (absent by job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_time: Option<NodeSplit>,
}

/// The totals of a report grouped: the JSON object of `ember usage --by … --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageGroups {
    /// What the groups are of.
    pub by: UsageBy,
    /// As in [`UsageReport::window_ms`].
    pub window_ms: u64,
    /// As in [`UsageReport::head_started_ms_ago`].
    pub head_started_ms_ago: u64,
    /// One per key, in key order.
    pub groups: Vec<UsageGroup>,
    /// As in [`UsageReport::partial`].
    pub partial: Vec<String>,
}

impl UsageReport {
    /// The JSON text, as `ember usage --json` prints it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The totals by job, node type or node: kept records and summaries of earlier ones
    /// alike; by type or node, with the nodes' time too (nodes summed earlier come under
    /// their type, or [`EARLIER`] by node).
    pub fn groups(&self, by: UsageBy) -> UsageGroups {
        let mut groups: BTreeMap<String, UsageGroup> = BTreeMap::new();
        for r in &self.records {
            let key = match by {
                UsageBy::Job => &r.job,
                UsageBy::Type => &r.node_type,
                UsageBy::Node => &r.node,
            };
            let g = group_of(&mut groups, key, by);
            g.records += 1;
            g.usage += r.usage;
        }
        for e in &self.earlier {
            let key = match by {
                UsageBy::Job => &e.job,
                UsageBy::Type => &e.node_type,
                UsageBy::Node => &e.node,
            };
            let g = group_of(&mut groups, key, by);
            g.records += e.records;
            g.usage += e.usage;
        }
        if by != UsageBy::Job {
            for n in &self.nodes {
                let key = if by == UsageBy::Type {
                    &n.node_type
                } else {
                    &n.node
                };
                if let Some(t) = group_of(&mut groups, key, by).node_time.as_mut() {
                    *t += n.split;
                }
            }
            for n in &self.earlier_nodes {
                let key = if by == UsageBy::Type {
                    n.node_type.as_str()
                } else {
                    EARLIER
                };
                if let Some(t) = group_of(&mut groups, key, by).node_time.as_mut() {
                    *t += n.split;
                }
            }
        }
        UsageGroups {
            by,
            window_ms: self.window_ms,
            head_started_ms_ago: self.head_started_ms_ago,
            groups: groups.into_values().collect(),
            partial: self.partial.clone(),
        }
    }

    /// The totals of every record, kept or summed.
    pub fn total(&self) -> UsageAmounts {
        let mut total = UsageAmounts::default();
        for r in &self.records {
            total += r.usage;
        }
        for e in &self.earlier {
            total += e.usage;
        }
        total
    }
}

/// The group of `key`, empty when new.
fn group_of<'a>(
    groups: &'a mut BTreeMap<String, UsageGroup>,
    key: &str,
    by: UsageBy,
) -> &'a mut UsageGroup {
    groups.entry(key.to_string()).or_insert_with(|| UsageGroup {
        key: key.to_string(),
        records: 0,
        usage: UsageAmounts::default(),
        node_time: (by != UsageBy::Job).then(NodeSplit::default),
    })
}

impl UsageGroups {
    /// The JSON text, as `ember usage --by … --json` prints it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job: &str, node: &str, node_type: &str, gpu_share_seconds: f64) -> RecordUsage {
        RecordUsage {
            kind: "job".into(),
            id: job.into(),
            incarnation: None,
            name: "train".into(),
            job: job.into(),
            node: node.into(),
            node_type: node_type.into(),
            gpu_model: Some("H100".into()),
            spot: false,
            gpus: 1.0,
            gpu_memory_gib: 0.0,
            cpus: 0.0,
            price_share: 1.0,
            started_ms_ago: 2000,
            ended_ms_ago: None,
            usage: UsageAmounts {
                gpu_share_seconds,
                ..UsageAmounts::default()
            },
        }
    }

    fn node(node: &str, node_type: &str, allocated_ns: u64, idle_ns: u64) -> NodeTime {
        NodeTime {
            node: node.into(),
            node_type: node_type.into(),
            gpu_model: None,
            spot: false,
            price_per_hour: 0.0,
            joined_ms_ago: 5000,
            left_ms_ago: None,
            from_ms_ago: 5000,
            split: NodeSplit {
                life_ns: allocated_ns + idle_ns,
                allocated_ns,
                idle_ns,
                ..NodeSplit::default()
            },
        }
    }

    fn report() -> UsageReport {
        UsageReport {
            window_ms: 5000,
            head_started_ms_ago: 5000,
            records: vec![
                record("job-1", "node-1", "a", 1.0),
                record("job-2", "node-1", "a", 2.0),
                record("job-2", "node-2", "b", 4.0),
            ],
            earlier: vec![EarlierUsage {
                job: "job-1".into(),
                node_type: "b".into(),
                node: EARLIER.into(),
                records: 3,
                usage: UsageAmounts {
                    gpu_share_seconds: 8.0,
                    ..UsageAmounts::default()
                },
            }],
            nodes: vec![node("node-1", "a", 3, 2), node("node-2", "b", 4, 1)],
            earlier_nodes: vec![EarlierNodeTime {
                node_type: "b".into(),
                nodes: 2,
                split: NodeSplit {
                    life_ns: 10,
                    idle_ns: 10,
                    ..NodeSplit::default()
                },
            }],
            partial: Vec::new(),
        }
    }

    #[test]
    fn groups_sum_kept_and_earlier_records_and_node_time() {
        let r = report();
        let by_job = r.groups(UsageBy::Job);
        let keys: Vec<_> = by_job.groups.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys, ["job-1", "job-2"]);
        assert_eq!(by_job.groups[0].records, 4);
        assert_eq!(by_job.groups[0].usage.gpu_share_seconds, 9.0);
        assert_eq!(by_job.groups[1].usage.gpu_share_seconds, 6.0);
        assert!(by_job.groups.iter().all(|g| g.node_time.is_none()));

        let by_type = r.groups(UsageBy::Type);
        let b = &by_type.groups[1];
        assert_eq!((b.key.as_str(), b.records), ("b", 4));
        let t = b.node_time.expect("node time by type");
        assert_eq!((t.life_ns, t.allocated_ns, t.idle_ns), (15, 4, 11));

        let by_node = r.groups(UsageBy::Node);
        let keys: Vec<_> = by_node.groups.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys, [EARLIER, "node-1", "node-2"]);
        assert_eq!(by_node.groups[0].node_time.map(|t| t.idle_ns), Some(10));
        assert_eq!(r.total().gpu_share_seconds, 15.0);
    }

    #[test]
    fn json_flattens_amounts_and_reads_back() {
        let r = report();
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("JSON");
        assert_eq!(json["records"][2]["gpu_share_seconds"], 4.0);
        assert_eq!(json["nodes"][0]["allocated_ns"], 3);
        let back: UsageReport = serde_json::from_str(&r.to_json()).expect("reads back");
        assert_eq!(back, r);
        let grouped: serde_json::Value =
            serde_json::from_str(&r.groups(UsageBy::Node).to_json()).expect("JSON");
        assert_eq!(grouped["by"], "node");
        assert_eq!("type".parse::<UsageBy>(), Ok(UsageBy::Type));
        assert!("owner".parse::<UsageBy>().is_err());
    }
}
