//! Closed records and gone nodes the ledger no longer keeps one by one, summed exactly: records
//! per (job, node type, node), the oldest of those again per node type; nodes per node type.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ember_core::ids::NodeId;
use ember_core::proto::{EarlierNodeTime, EarlierUsage, EARLIER};

use super::node_time::{ModeTimes, NodeLife};
use super::record::{Amounts, UsageRecord};

/// What records are summed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SummaryKey {
    job: String,
    node_type: String,
    node: NodeId,
}

/// Records summed: how many, their amounts over their whole lives, and the span of those lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RecordSummary {
    pub(super) records: u64,
    pub(super) amounts: Amounts,
    first_start: Instant,
    last_end: Instant,
}

impl RecordSummary {
    fn of(record: &UsageRecord, ended: Instant) -> RecordSummary {
        RecordSummary {
            records: 1,
            amounts: record.amounts(None, ended),
            first_start: record.start,
            last_end: ended,
        }
    }

    fn add(&mut self, other: &RecordSummary) {
        self.records += other.records;
        self.amounts.add(&other.amounts);
        self.first_start = self.first_start.min(other.first_start);
        self.last_end = self.last_end.max(other.last_end);
    }
}

/// Gone nodes of one type summed over their whole lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeSummary {
    pub(super) nodes: u64,
    pub(super) times: ModeTimes,
    price_micros_per_hour: u64,
    first_joined: Instant,
    last_left: Instant,
}

/// How a summary's span meets a window starting at `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cover {
    /// All of it is in the window.
    Whole,
    /// None of it is.
    Outside,
    /// It began before the window and ended in it: it cannot be cut, so it is counted whole.
    Straddles,
}

fn cover(first: Instant, last: Instant, from: Option<Instant>) -> Cover {
    match from {
        None => Cover::Whole,
        Some(f) if f <= first => Cover::Whole,
        Some(f) if f >= last => Cover::Outside,
        Some(_) => Cover::Straddles,
    }
}

/// What the ledger keeps summed.
#[derive(Debug, Clone)]
pub(super) struct Earlier {
    /// Summaries per (job, node type, node) kept at most.
    limit: usize,
    records: BTreeMap<SummaryKey, RecordSummary>,
    /// The summaries by their newest record's end, oldest first.
    by_end: BTreeSet<(Instant, SummaryKey)>,
    /// The oldest summaries, summed again per node type.
    by_type: BTreeMap<String, RecordSummary>,
    nodes: BTreeMap<String, NodeSummary>,
}

impl Earlier {
    /// Nothing summed yet; `limit` summaries per (job, node type, node) kept at most.
    pub(super) fn new(limit: usize) -> Earlier {
        Earlier {
            limit: limit.max(1),
            records: BTreeMap::new(),
            by_end: BTreeSet::new(),
            by_type: BTreeMap::new(),
            nodes: BTreeMap::new(),
        }
    }

    /// Sums a closed record in.
    pub(super) fn add_record(&mut self, record: &UsageRecord) {
        let Some(ended) = record.end else {
            return;
        };
        let key = SummaryKey {
            job: record.job.clone(),
            node_type: record.node_type.clone(),
            node: record.node,
        };
        let summary = RecordSummary::of(record, ended);
        match self.records.get_mut(&key) {
            Some(s) => {
                self.by_end.remove(&(s.last_end, key.clone()));
                s.add(&summary);
                self.by_end.insert((s.last_end, key));
            }
            None => {
                self.by_end.insert((summary.last_end, key.clone()));
                self.records.insert(key, summary);
            }
        }
        while self.records.len() > self.limit {
            let Some((_, oldest)) = self.by_end.pop_first() else {
                break;
            };
            if let Some(s) = self.records.remove(&oldest) {
                match self.by_type.get_mut(&oldest.node_type) {
                    Some(t) => t.add(&s),
                    None => {
                        self.by_type.insert(oldest.node_type, s);
                    }
                }
            }
        }
    }

    /// Sums a gone node's whole life in.
    pub(super) fn add_node(&mut self, life: &NodeLife) {
        let Some(left) = life.left else {
            return;
        };
        let times = life.split(None, left).map(|(_, t)| t).unwrap_or_default();
        let class = &life.class;
        match self.nodes.get_mut(&class.node_type) {
            Some(s) => {
                s.nodes += 1;
                s.times.add(times);
                s.first_joined = s.first_joined.min(life.joined);
                s.last_left = s.last_left.max(left);
            }
            None => {
                self.nodes.insert(
                    class.node_type.clone(),
                    NodeSummary {
                        nodes: 1,
                        times,
                        price_micros_per_hour: class.price_micros_per_hour,
                        first_joined: life.joined,
                        last_left: left,
                    },
                );
            }
        }
    }

    /// The summaries a window from `from` counts, saying in `partial` which it counts
    /// whole though they began before it.
    pub(super) fn report(
        &self,
        from: Option<Instant>,
        partial: &mut Vec<String>,
    ) -> (Vec<EarlierUsage>, Vec<EarlierNodeTime>) {
        let mut straddling = 0;
        let mut usage = Vec::new();
        let summaries = self
            .records
            .iter()
            .map(|(k, s)| (k.job.clone(), k.node_type.clone(), k.node.to_string(), s))
            .chain(
                self.by_type
                    .iter()
                    .map(|(t, s)| (EARLIER.to_string(), t.clone(), EARLIER.to_string(), s)),
            );
        for (job, node_type, node, s) in summaries {
            match cover(s.first_start, s.last_end, from) {
                Cover::Outside => continue,
                Cover::Straddles => straddling += 1,
                Cover::Whole => {}
            }
            usage.push(EarlierUsage {
                job,
                node_type,
                node,
                records: s.records,
                usage: s.amounts.to_report(),
            });
        }
        if straddling > 0 {
            partial.push(format!(
                "{straddling} summaries of records no longer kept one by one began before the \
                 window and are counted whole"
            ));
        }
        let mut straddling = 0;
        let mut nodes = Vec::new();
        for (node_type, s) in &self.nodes {
            match cover(s.first_joined, s.last_left, from) {
                Cover::Outside => continue,
                Cover::Straddles => straddling += 1,
                Cover::Whole => {}
            }
            nodes.push(EarlierNodeTime {
                node_type: node_type.clone(),
                nodes: s.nodes,
                split: s.times.to_split(s.price_micros_per_hour),
            });
        }
        if straddling > 0 {
            partial.push(format!(
                "{straddling} node types' summed nodes began before the window and are counted \
                 whole"
            ));
        }
        (usage, nodes)
    }

    /// Every record summary, as (node type, summary): the kept ones and the oldest.
    pub(super) fn record_summaries(&self) -> impl Iterator<Item = (&str, &RecordSummary)> {
        self.records
            .iter()
            .map(|(k, s)| (k.node_type.as_str(), s))
            .chain(self.by_type.iter().map(|(t, s)| (t.as_str(), s)))
    }

    /// Every node summary, by node type.
    pub(super) fn node_summaries(&self) -> impl Iterator<Item = (&str, &NodeSummary)> {
        self.nodes.iter().map(|(t, s)| (t.as_str(), s))
    }

    /// How many summaries per (job, node type, node) it keeps now.
    pub(super) fn kept(&self) -> usize {
        self.records.len()
    }

    /// Checks that the index by end matches the summaries.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.by_end.len() != self.records.len() {
            return Err(format!(
                "{} summaries, {} in the index by end",
                self.records.len(),
                self.by_end.len()
            ));
        }
        for (at, key) in &self.by_end {
            if self.records.get(key).map(|s| s.last_end) != Some(*at) {
                return Err(format!("{key:?} is indexed at the wrong end"));
            }
        }
        if self.records.len() > self.limit {
            return Err(format!(
                "{} summaries kept, above the limit of {}",
                self.records.len(),
                self.limit
            ));
        }
        Ok(())
    }
}
