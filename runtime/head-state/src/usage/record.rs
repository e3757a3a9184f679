//! One usage record, what it holds, the class of node it runs on, and the exact integer
//! amounts it adds up to.

use std::time::Instant;

use ember_core::ids::{ActorId, JobId, LeaseId, NodeId};
use ember_core::proto::UsageAmounts;
use ember_core::resources::{Allocation, NodeResources};

use crate::autoscale::NodeType;

/// Nanoseconds in an hour: prices are per hour.
const NS_PER_HOUR: u128 = 3_600_000_000_000;

/// What a record is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageSubject {
    /// A batch job.
    Job {
        /// Its id.
        job: JobId,
        /// Its command, for humans.
        command: String,
    },
    /// One incarnation of an actor: each has a record of its own.
    Actor {
        /// The actor.
        actor: ActorId,
        /// Which incarnation.
        incarnation: u32,
        /// Its type's registered name.
        type_name: String,
    },
    /// A task lease: tasks of one function, one at a time.
    TaskLease {
        /// The lease.
        lease: LeaseId,
        /// The task function's registered name.
        function: String,
    },
}

impl UsageSubject {
    /// `job`, `actor` or `lease`.
    pub fn kind(&self) -> &'static str {
        match self {
            UsageSubject::Job { .. } => "job",
            UsageSubject::Actor { .. } => "actor",
            UsageSubject::TaskLease { .. } => "lease",
        }
    }

    /// Its id as users see it: `job-7`, `actor-3`, `lease-12`.
    pub fn id(&self) -> String {
        match self {
            UsageSubject::Job { job, .. } => job.to_string(),
            UsageSubject::Actor { actor, .. } => actor.to_string(),
            UsageSubject::TaskLease { lease, .. } => lease.to_string(),
        }
    }

    /// The command, actor type or task function.
    pub fn name(&self) -> &str {
        match self {
            UsageSubject::Job { command, .. } => command,
            UsageSubject::Actor { type_name, .. } => type_name,
            UsageSubject::TaskLease { function, .. } => function,
        }
    }
}

/// What a record holds on its node, the same for its whole life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    /// Hundredths of a GPU, summed over its GPUs.
    pub gpu_units: u64,
    /// Bytes of GPU memory reserved, summed over its GPUs.
    pub gpu_memory: u64,
    /// Thousandths of a CPU.
    pub cpu_millis: u64,
}

impl Holding {
    /// What an allocation holds.
    pub fn of(allocation: &Allocation) -> Holding {
        Holding {
            gpu_units: allocation
                .gpus
                .iter()
                .map(|g| u64::from(g.share.units()))
                .sum(),
            gpu_memory: allocation.gpus.iter().map(|g| g.memory).sum(),
            cpu_millis: allocation.cpu_millis,
        }
    }
}

/// What kind of node a node is, for pricing and grouping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeClass {
    /// Its type: the autoscaler's type name, or `static:MODEL` for a node it did not launch.
    pub node_type: String,
    /// The accelerator model of each of its GPUs, by GPU index.
    pub gpus: Vec<(u32, String)>,
    /// Spot (preemptible) or not.
    pub spot: bool,
    /// Its price, in millionths of a currency unit per hour.
    pub price_micros_per_hour: u64,
    /// Its CPUs, in thousandths.
    pub cpu_millis: u64,
}

impl NodeClass {
    /// A node with `resources` that the autoscaler launched as `node_type`.
    pub fn launched(resources: &NodeResources, node_type: &NodeType) -> NodeClass {
        NodeClass::new(
            resources,
            node_type.name.clone(),
            node_type.price_micros_per_hour,
            node_type.spot,
        )
    }

    /// A node with `resources` the autoscaler did not launch: of type `static:MODEL`
    /// (`static:cpu` without GPUs), at price 0, not spot.
    pub fn unlaunched(resources: &NodeResources) -> NodeClass {
        let mut class = NodeClass::new(resources, String::new(), 0, false);
        class.node_type = format!(
            "static:{}",
            class.gpu_model().unwrap_or_else(|| "cpu".to_string())
        );
        class
    }

    /// A node with `resources` of type `node_type`, at `price_micros_per_hour`.
    pub fn new(
        resources: &NodeResources,
        node_type: String,
        price_micros_per_hour: u64,
        spot: bool,
    ) -> NodeClass {
        NodeClass {
            node_type,
            gpus: resources
                .gpus
                .iter()
                .map(|g| (g.index, g.accelerator.clone()))
                .collect(),
            spot,
            price_micros_per_hour,
            cpu_millis: resources.cpu_millis,
        }
    }

    /// Its GPU units: a hundred per GPU.
    pub fn gpu_units(&self) -> u64 {
        self.gpus.len() as u64 * u64::from(ember_core::resources::GPU_UNITS)
    }

    /// The accelerator model of its GPUs (models joined with `+` when mixed); `None` without
    /// GPUs.
    pub fn gpu_model(&self) -> Option<String> {
        models(self.gpus.iter().map(|(_, m)| m.as_str()))
    }

    /// The accelerator model of the GPUs an allocation on it holds.
    pub fn gpu_model_of(&self, allocation: &Allocation) -> Option<String> {
        models(allocation.gpus.iter().filter_map(|grant| {
            self.gpus
                .iter()
                .find(|(index, _)| *index == grant.index)
                .map(|(_, m)| m.as_str())
        }))
    }

    /// The part of its price a holding pays, as a fraction: its share of the node's GPUs on a
    /// node with GPUs, of its CPUs otherwise.
    pub fn price_share(&self, holding: &Holding) -> (u64, u64) {
        if self.gpu_units() > 0 {
            (holding.gpu_units, self.gpu_units())
        } else if self.cpu_millis > 0 {
            (holding.cpu_millis, self.cpu_millis)
        } else {
            (0, 1)
        }
    }
}

/// Distinct models, sorted, joined with `+`; `None` for none.
fn models<'a>(models: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut all: Vec<&str> = models.collect();
    all.sort_unstable();
    all.dedup();
    (!all.is_empty()).then(|| all.join("+"))
}

/// Amounts in exact integers, so that sums are exact: resource × nanoseconds, and cost in
/// billionths of a millionth of a currency unit (1e-15).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    /// Hundredths of a GPU × nanoseconds.
    pub gpu_unit_ns: u128,
    /// Bytes of GPU memory × nanoseconds.
    pub gpu_memory_byte_ns: u128,
    /// Thousandths of a CPU × nanoseconds.
    pub cpu_milli_ns: u128,
    /// Cost in 1e-15 of a currency unit.
    pub cost_femtos: u128,
}

impl Amounts {
    /// What `holding` amounts to over `ns` nanoseconds, paying `share` of `price_micros_per_hour`.
    pub fn held(
        holding: &Holding,
        share: (u64, u64),
        price_micros_per_hour: u64,
        ns: u128,
    ) -> Amounts {
        Amounts {
            gpu_unit_ns: u128::from(holding.gpu_units).saturating_mul(ns),
            gpu_memory_byte_ns: u128::from(holding.gpu_memory).saturating_mul(ns),
            cpu_milli_ns: u128::from(holding.cpu_millis).saturating_mul(ns),
            cost_femtos: cost_femtos(price_micros_per_hour, share, ns),
        }
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &Amounts) {
        self.gpu_unit_ns = self.gpu_unit_ns.saturating_add(other.gpu_unit_ns);
        self.gpu_memory_byte_ns = self
            .gpu_memory_byte_ns
            .saturating_add(other.gpu_memory_byte_ns);
        self.cpu_milli_ns = self.cpu_milli_ns.saturating_add(other.cpu_milli_ns);
        self.cost_femtos = self.cost_femtos.saturating_add(other.cost_femtos);
    }

    /// As a report shows them: GPU-share-seconds, GPU-memory-GiB-seconds, CPU-seconds and
    /// cost in currency units.
    pub fn to_report(&self) -> UsageAmounts {
        const NS: f64 = 1e9;
        UsageAmounts {
            gpu_share_seconds: self.gpu_unit_ns as f64 / 100.0 / NS,
            gpu_memory_gib_seconds: self.gpu_memory_byte_ns as f64 / (1u64 << 30) as f64 / NS,
            cpu_seconds: self.cpu_milli_ns as f64 / 1000.0 / NS,
            cost: femtos_to_units(self.cost_femtos),
        }
    }
}

/// `share` of a price per hour over `ns` nanoseconds, in 1e-15 of a currency unit (the price
/// is in 1e-6): `price × num × ns / (den × 3.6e12) × 1e9`.
pub(super) fn cost_femtos(price_micros_per_hour: u64, share: (u64, u64), ns: u128) -> u128 {
    let (num, den) = share;
    if den == 0 {
        return 0;
    }
    u128::from(price_micros_per_hour)
        .saturating_mul(u128::from(num))
        .saturating_mul(ns)
        / (u128::from(den) * (NS_PER_HOUR / 1_000_000_000))
}

/// 1e-15 of a currency unit, as currency units.
pub(super) fn femtos_to_units(femtos: u128) -> f64 {
    femtos as f64 / 1e15
}

/// One job, actor incarnation or task lease holding resources on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The lease that holds the resources.
    pub lease: LeaseId,
    /// What it is for.
    pub subject: UsageSubject,
    /// What `--by job` groups it under (see the module's documentation).
    pub job: String,
    /// Its node.
    pub node: NodeId,
    /// Its node's type.
    pub node_type: String,
    /// The accelerator model of the GPUs it holds.
    pub gpu_model: Option<String>,
    /// Whether its node is a spot node.
    pub spot: bool,
    /// What it holds.
    pub holding: Holding,
    /// The part of its node's price it pays, as a fraction.
    pub price_share: (u64, u64),
    /// Its node's price, in millionths of a currency unit per hour.
    pub price_micros_per_hour: u64,
    /// When it started holding.
    pub start: Instant,
    /// When it stopped; `None` while it holds.
    pub end: Option<Instant>,
}

impl UsageRecord {
    /// When it ends, or `now` while it holds.
    pub fn end_or(&self, now: Instant) -> Instant {
        self.end.unwrap_or(now)
    }

    /// What it amounts to over the part of its life from `from` (its start when `None`)
    /// until `now`.
    pub fn amounts(&self, from: Option<Instant>, now: Instant) -> Amounts {
        let start = from.map_or(self.start, |f| f.max(self.start));
        let ns = self.end_or(now).saturating_duration_since(start).as_nanos();
        Amounts::held(
            &self.holding,
            self.price_share,
            self.price_micros_per_hour,
            ns,
        )
    }
}
