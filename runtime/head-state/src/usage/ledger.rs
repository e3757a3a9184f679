//! The ledger: nodes as they join, warm up and leave, records as they open and close, and a
//! report over any window.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use ember_core::ids::{LeaseId, NodeId};
use ember_core::proto::{NodeTime, RecordUsage, UsageReport};
use ember_core::resources::{Allocation, GPU_UNITS, MILLIS};

use super::earlier::Earlier;
use super::node_time::{ModeTimes, NodeLife, NodeMode};
use super::record::{Amounts, Holding, NodeClass, UsageRecord, UsageSubject};

/// How much the ledger keeps one by one; beyond it, it sums (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerLimits {
    /// Closed records kept one by one.
    pub records: usize,
    /// Summaries of older records per (job, node type, node) kept.
    pub summaries: usize,
    /// Nodes that left kept one by one.
    pub gone_nodes: usize,
    /// Changes of mode kept per node.
    pub marks_per_node: usize,
}

impl Default for LedgerLimits {
    /// 10,000 closed records and as many summaries, 1,000 gone nodes, 1,000 changes of mode
    /// per node: a few megabytes at most.
    fn default() -> Self {
        LedgerLimits {
            records: 10_000,
            summaries: 10_000,
            gone_nodes: 1_000,
            marks_per_node: 1_000,
        }
    }
}

/// What the ledger refuses: a sign that its caller lost track, which the head logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The node never joined, or left: nothing can run on it.
    #[error("{0} is not in the usage ledger (it never joined, or it left)")]
    UnknownNode(NodeId),
    /// The node joined already; a node joins once.
    #[error("{0} joined the usage ledger already")]
    NodeKnown(NodeId),
    /// The lease has an open record already; a lease is granted once.
    #[error("{0} has an open usage record already")]
    LeaseOpen(LeaseId),
}

/// A record to open: what it is for, whose it is, and what it holds.
#[derive(Debug, Clone, Copy)]
pub struct Opening<'a> {
    /// What it is for.
    pub subject: &'a UsageSubject,
    /// What `--by job` groups it under.
    pub job: &'a str,
    /// What its lease holds.
    pub allocation: &'a Allocation,
}

/// The usage ledger: open records, the newest closed ones, sums of older ones, and every
/// node's time by mode.
#[derive(Debug, Clone)]
pub struct Ledger {
    limits: LedgerLimits,
    /// When it began: this head life's start (or its first input).
    started: Option<Instant>,
    /// Live nodes, and gone ones kept one by one.
    nodes: BTreeMap<NodeId, NodeLife>,
    /// The gone nodes kept one by one, in the order they left.
    gone: VecDeque<NodeId>,
    open: BTreeMap<LeaseId, UsageRecord>,
    /// The closed records kept one by one, in the order they closed.
    closed: VecDeque<UsageRecord>,
    earlier: Earlier,
}

/// Milliseconds from `then` to `now`.
fn ms_ago(then: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(then).as_millis() as u64
}

impl Ledger {
    /// An empty ledger, not begun: it begins with [`Ledger::begin`].
    pub fn new(limits: LedgerLimits) -> Ledger {
        Ledger {
            limits,
            started: None,
            nodes: BTreeMap::new(),
            gone: VecDeque::new(),
            open: BTreeMap::new(),
            closed: VecDeque::new(),
            earlier: Earlier::new(limits.summaries),
        }
    }

    /// It begins at `now`, unless it began already: usage is counted from then on.
    pub fn begin(&mut self, now: Instant) {
        self.started.get_or_insert(now);
    }

    /// When it began.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// A node joined at `now`, idle.
    pub fn node_joined(
        &mut self,
        now: Instant,
        node: NodeId,
        class: NodeClass,
    ) -> Result<(), LedgerError> {
        if self.nodes.contains_key(&node) {
            return Err(LedgerError::NodeKnown(node));
        }
        let life = NodeLife::new(class, now, self.limits.marks_per_node);
        self.nodes.insert(node, life);
        Ok(())
    }

    /// **The warm pool's hook**: the autoscaler took a node into its warm pool (`warm`:
    /// cordoned, kept ready) or out of it. While it holds no record, its time counts as warm
    /// rather than idle from `now` on; while it holds one, as allocated either way.
    pub fn node_warm(&mut self, now: Instant, node: NodeId, warm: bool) -> Result<(), LedgerError> {
        let life = self.live_node(node)?;
        life.warm = warm;
        life.settle(now);
        Ok(())
    }

    /// A node left (or was lost) at `now`: the records open on it close, and its life ends.
    pub fn node_left(&mut self, now: Instant, node: NodeId) -> Result<(), LedgerError> {
        self.live_node(node)?;
        let on_it: Vec<LeaseId> = self
            .open
            .values()
            .filter(|r| r.node == node)
            .map(|r| r.lease)
            .collect();
        for lease in on_it {
            self.close(now, lease);
        }
        let life = self.live_node(node)?;
        life.warm = false;
        life.settle(now);
        life.left = Some(now.max(life.joined));
        self.gone.push_back(node);
        while self.gone.len() > self.limits.gone_nodes {
            let Some(oldest) = self.gone.pop_front() else {
                break;
            };
            if let Some(life) = self.nodes.remove(&oldest) {
                self.earlier.add_node(&life);
            }
        }
        Ok(())
    }

    fn live_node(&mut self, node: NodeId) -> Result<&mut NodeLife, LedgerError> {
        self.nodes
            .get_mut(&node)
            .filter(|n| n.left.is_none())
            .ok_or(LedgerError::UnknownNode(node))
    }

    /// `lease` started holding `opening.allocation` on `node` at `now`: its record opens, and
    /// the node is allocated.
    pub fn open(
        &mut self,
        now: Instant,
        lease: LeaseId,
        node: NodeId,
        opening: Opening<'_>,
    ) -> Result<(), LedgerError> {
        if self.open.contains_key(&lease) {
            return Err(LedgerError::LeaseOpen(lease));
        }
        let life = self.live_node(node)?;
        let holding = Holding::of(opening.allocation);
        let class = &life.class;
        let record = UsageRecord {
            lease,
            subject: opening.subject.clone(),
            job: opening.job.to_string(),
            node,
            node_type: class.node_type.clone(),
            gpu_model: class.gpu_model_of(opening.allocation),
            spot: class.spot,
            holding,
            price_share: class.price_share(&holding),
            price_micros_per_hour: class.price_micros_per_hour,
            start: now,
            end: None,
        };
        life.holding += 1;
        life.settle(now);
        self.open.insert(lease, record);
        Ok(())
    }

    /// `lease` stopped holding its resources at `now`: its record closes. False if it had no
    /// open record (a lease that held nothing the ledger counts, or was closed already).
    pub fn close(&mut self, now: Instant, lease: LeaseId) -> bool {
        let Some(mut record) = self.open.remove(&lease) else {
            return false;
        };
        let end = now.max(record.start);
        record.end = Some(end);
        if let Some(life) = self.nodes.get_mut(&record.node) {
            life.holding = life.holding.saturating_sub(1);
            life.settle(end);
        }
        self.closed.push_back(record);
        while self.closed.len() > self.limits.records {
            let Some(oldest) = self.closed.pop_front() else {
                break;
            };
            self.earlier.add_record(&oldest);
        }
        true
    }

    /// The mode a node is in now; `None` for a node not in the cluster.
    pub fn mode(&self, node: NodeId) -> Option<NodeMode> {
        self.nodes
            .get(&node)
            .filter(|n| n.left.is_none())
            .map(NodeLife::mode)
    }

    /// The open record of a lease.
    pub fn open_record(&self, lease: LeaseId) -> Option<&UsageRecord> {
        self.open.get(&lease)
    }

    /// Every open record, by lease.
    pub fn open_records(&self) -> impl Iterator<Item = &UsageRecord> {
        self.open.values()
    }

    /// The closed records kept one by one, in the order they closed.
    pub fn closed_records(&self) -> impl Iterator<Item = &UsageRecord> {
        self.closed.iter()
    }

    /// A node's time in each mode from `from` (its join when `None`) until it left or `now`,
    /// with when that count starts (see [`Ledger::report`]); `None` for a node not kept one
    /// by one, or gone before `from`.
    pub fn node_times(
        &self,
        node: NodeId,
        from: Option<Instant>,
        now: Instant,
    ) -> Option<(Instant, ModeTimes)> {
        self.nodes.get(&node)?.split(from, now)
    }

    /// The exact amounts of every record and summary, whole, per node type: what a report
    /// without a window sums to.
    pub fn totals_by_type(&self, now: Instant) -> BTreeMap<String, (u64, Amounts)> {
        let mut totals: BTreeMap<String, (u64, Amounts)> = BTreeMap::new();
        for r in self.closed.iter().chain(self.open.values()) {
            let t = totals.entry(r.node_type.clone()).or_default();
            t.0 += 1;
            t.1.add(&r.amounts(None, now));
        }
        for (node_type, s) in self.earlier.record_summaries() {
            let t = totals.entry(node_type.to_string()).or_default();
            t.0 += s.records;
            t.1.add(&s.amounts);
        }
        totals
    }

    /// Every node's whole life by mode, per node type, gone nodes summed included, with how
    /// many nodes.
    pub fn node_times_by_type(&self, now: Instant) -> BTreeMap<String, (u64, ModeTimes)> {
        let mut totals: BTreeMap<String, (u64, ModeTimes)> = BTreeMap::new();
        for life in self.nodes.values() {
            let t = totals.entry(life.class.node_type.clone()).or_default();
            t.0 += 1;
            if let Some((_, times)) = life.split(None, now) {
                t.1.add(times);
            }
        }
        for (node_type, s) in self.earlier.node_summaries() {
            let t = totals.entry(node_type.to_string()).or_default();
            t.0 += s.nodes;
            t.1.add(s.times);
        }
        totals
    }

    /// The usage from `from` (everything kept when `None`) until `now`: each record and node
    /// over the part of its life in that window, the summaries it covers, and why any figure
    /// does not cover exactly the window.
    pub fn report(&self, now: Instant, from: Option<Instant>) -> UsageReport {
        let started = self.started.unwrap_or(now);
        let head_started_ms_ago = ms_ago(started, now);
        let mut partial = Vec::new();
        if let Some(f) = from.filter(|f| *f < started) {
            partial.push(format!(
                "the window reaches back {} ms, but this head life began {head_started_ms_ago} \
                 ms ago: usage before it is not kept (the ledger lives in the head's memory)",
                ms_ago(f, now)
            ));
        }
        let mut records: Vec<&UsageRecord> = self
            .closed
            .iter()
            .chain(self.open.values())
            .filter(|r| from.is_none_or(|f| r.end_or(now) >= f))
            .collect();
        records.sort_by_key(|r| (r.start, r.lease));
        let records = records
            .into_iter()
            .map(|r| record_usage(r, from, now))
            .collect();
        let mut nodes = Vec::new();
        let mut clipped = Vec::new();
        for (&node, life) in &self.nodes {
            let Some((start, times)) = life.split(from, now) else {
                continue;
            };
            if from.is_some_and(|f| start > f.max(life.joined)) {
                clipped.push(node.to_string());
            }
            let class = &life.class;
            nodes.push(NodeTime {
                node: node.to_string(),
                node_type: class.node_type.clone(),
                gpu_model: class.gpu_model(),
                spot: class.spot,
                price_per_hour: class.price_micros_per_hour as f64 / 1e6,
                joined_ms_ago: ms_ago(life.joined, now),
                left_ms_ago: life.left.map(|left| ms_ago(left, now)),
                from_ms_ago: ms_ago(start, now),
                split: times.to_split(class.price_micros_per_hour),
            });
        }
        if !clipped.is_empty() {
            partial.push(format!(
                "the window reaches back further than the changes of mode kept for {}: their \
                 time counts from their oldest change kept (from_ms_ago)",
                clipped.join(", ")
            ));
        }
        let (earlier, earlier_nodes) = self.earlier.report(from, &mut partial);
        UsageReport {
            window_ms: from.map_or(head_started_ms_ago, |f| ms_ago(f, now)),
            head_started_ms_ago,
            records,
            earlier,
            nodes,
            earlier_nodes,
            partial,
        }
    }

    /// Checks that the ledger agrees with itself: each node's changes of mode follow one
    /// another and its mode is what it holds says; each open record is on a live node; what
    /// is kept is within the limits. Linear in its size.
    pub fn check(&self) -> Result<(), String> {
        let mut holding: BTreeMap<NodeId, usize> = BTreeMap::new();
        for r in self.open.values() {
            if r.end.is_some() {
                return Err(format!("{} is open with an end", r.lease));
            }
            match self.nodes.get(&r.node) {
                Some(n) if n.left.is_none() => *holding.entry(r.node).or_default() += 1,
                _ => {
                    return Err(format!(
                        "{} is open on {}, not in the cluster",
                        r.lease, r.node
                    ))
                }
            }
        }
        for (node, life) in &self.nodes {
            life.check().map_err(|e| format!("{node}: {e}"))?;
            let open = holding.get(node).copied().unwrap_or(0);
            if life.holding != open {
                return Err(format!(
                    "{node} counts {} open records, {open} are open on it",
                    life.holding
                ));
            }
            if life.left.is_some() != self.gone.contains(node) {
                return Err(format!(
                    "{node} is gone but not listed as gone, or the reverse"
                ));
            }
        }
        if self.gone.len() > self.limits.gone_nodes || self.closed.len() > self.limits.records {
            return Err(format!(
                "{} gone nodes and {} closed records kept, above the limits {:?}",
                self.gone.len(),
                self.closed.len(),
                self.limits
            ));
        }
        if self.earlier.kept() > self.limits.summaries {
            return Err("more summaries than the limit".into());
        }
        self.earlier.check()
    }
}

/// A record as a report shows it, counted from `from`.
fn record_usage(r: &UsageRecord, from: Option<Instant>, now: Instant) -> RecordUsage {
    let incarnation = match &r.subject {
        UsageSubject::Actor { incarnation, .. } => Some(*incarnation),
        _ => None,
    };
    let (num, den) = r.price_share;
    RecordUsage {
        kind: r.subject.kind().to_string(),
        id: r.subject.id(),
        incarnation,
        name: r.subject.name().to_string(),
        job: r.job.clone(),
        node: r.node.to_string(),
        node_type: r.node_type.clone(),
        gpu_model: r.gpu_model.clone(),
        spot: r.spot,
        gpus: r.holding.gpu_units as f64 / f64::from(GPU_UNITS),
        gpu_memory_gib: r.holding.gpu_memory as f64 / (1u64 << 30) as f64,
        cpus: r.holding.cpu_millis as f64 / MILLIS as f64,
        price_share: if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        },
        started_ms_ago: ms_ago(r.start, now),
        ended_ms_ago: r.end.map(|end| ms_ago(end, now)),
        usage: r.amounts(from, now).to_report(),
    }
}
