//! One node's life, split by mode: cumulative nanoseconds in each mode at every change of
//! mode, so the split over any part of its life is a difference of two cumulative figures,
//! and adds up to that part's length exactly.

use std::collections::VecDeque;
use std::time::Instant;

use ember_core::proto::NodeSplit;

use super::record::{cost_femtos, femtos_to_units, NodeClass};

/// What a node's time is spent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeMode {
    /// It holds at least one job, actor incarnation or task lease.
    Allocated,
    /// It holds none, outside the warm pool.
    Idle,
    /// It holds none and the autoscaler keeps it ready in its warm pool.
    Warm,
}

/// Nanoseconds in each mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeTimes {
    /// Allocated.
    pub allocated: u64,
    /// Idle.
    pub idle: u64,
    /// Warm.
    pub warm: u64,
}

impl ModeTimes {
    /// All three: the time counted.
    pub fn total(&self) -> u64 {
        self.allocated + self.idle + self.warm
    }

    /// These times with `ns` more in `mode`.
    fn plus(mut self, mode: NodeMode, ns: u64) -> ModeTimes {
        match mode {
            NodeMode::Allocated => self.allocated += ns,
            NodeMode::Idle => self.idle += ns,
            NodeMode::Warm => self.warm += ns,
        }
        self
    }

    /// The time from `earlier` to these (cumulative) times.
    fn since(self, earlier: ModeTimes) -> ModeTimes {
        ModeTimes {
            allocated: self.allocated - earlier.allocated,
            idle: self.idle - earlier.idle,
            warm: self.warm - earlier.warm,
        }
    }

    /// Adds `other` in.
    pub(super) fn add(&mut self, other: ModeTimes) {
        self.allocated += other.allocated;
        self.idle += other.idle;
        self.warm += other.warm;
    }

    /// As a report shows them, with a node's price over each.
    pub(super) fn to_split(self, price_micros_per_hour: u64) -> NodeSplit {
        let cost =
            |ns: u64| femtos_to_units(cost_femtos(price_micros_per_hour, (1, 1), u128::from(ns)));
        NodeSplit {
            life_ns: self.total(),
            allocated_ns: self.allocated,
            idle_ns: self.idle,
            warm_ns: self.warm,
            allocated_cost: cost(self.allocated),
            idle_cost: cost(self.idle),
            warm_cost: cost(self.warm),
        }
    }
}

/// Nanoseconds from `earlier` to `later` (0 if `later` is not later).
fn ns_between(earlier: Instant, later: Instant) -> u64 {
    later.saturating_duration_since(earlier).as_nanos() as u64
}

/// A change of mode: from `at` on, the node is in `mode`; `before` is its time in each mode
/// from its join until `at`.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    mode: NodeMode,
    before: ModeTimes,
}

/// One node's life as the ledger sees it.
#[derive(Debug, Clone)]
pub(super) struct NodeLife {
    pub(super) class: NodeClass,
    pub(super) joined: Instant,
    pub(super) left: Option<Instant>,
    /// The autoscaler keeps it in its warm pool.
    pub(super) warm: bool,
    /// How many open records it holds.
    pub(super) holding: usize,
    /// Its changes of mode, oldest first: at least one, the newest `kept` at most.
    marks: VecDeque<Mark>,
    kept: usize,
}

impl NodeLife {
    /// A node that joined at `now`, idle, keeping its newest `kept` changes of mode.
    pub(super) fn new(class: NodeClass, now: Instant, kept: usize) -> NodeLife {
        let mut marks = VecDeque::new();
        marks.push_back(Mark {
            at: now,
            mode: NodeMode::Idle,
            before: ModeTimes::default(),
        });
        NodeLife {
            class,
            joined: now,
            left: None,
            warm: false,
            holding: 0,
            marks,
            kept: kept.max(1),
        }
    }

    /// The mode it is in now.
    pub(super) fn mode(&self) -> NodeMode {
        self.last().mode
    }

    fn last(&self) -> &Mark {
        self.marks.back().expect("a node always has a mark")
    }

    /// The mode what it holds says it is in.
    pub(super) fn due_mode(&self) -> NodeMode {
        if self.holding > 0 {
            NodeMode::Allocated
        } else if self.warm {
            NodeMode::Warm
        } else {
            NodeMode::Idle
        }
    }

    /// From `now` on, it is in the mode what it holds says, if that changed.
    pub(super) fn settle(&mut self, now: Instant) {
        let mode = self.due_mode();
        let last = *self.last();
        if last.mode == mode {
            return;
        }
        if now <= last.at {
            // No time passed in the last mode: the change replaces it, and where that
            // returns to the mode before, the node never left it.
            let back_to_before = self.marks.len() > 1
                && self.marks.get(self.marks.len() - 2).map(|m| m.mode) == Some(mode);
            if back_to_before {
                self.marks.pop_back();
            } else if let Some(m) = self.marks.back_mut() {
                m.mode = mode;
            }
            return;
        }
        self.marks.push_back(Mark {
            at: now,
            mode,
            before: last.before.plus(last.mode, ns_between(last.at, now)),
        });
        if self.marks.len() > self.kept {
            self.marks.pop_front();
        }
    }

    /// When its life ends: when it left, or `now`.
    pub(super) fn end_or(&self, now: Instant) -> Instant {
        self.left.unwrap_or(now)
    }

    /// Its time in each mode from its join until `t` (no later than its end), if its
    /// history reaches back to `t`.
    fn cumulative(&self, t: Instant) -> Option<ModeTimes> {
        if t <= self.joined {
            return Some(ModeTimes::default());
        }
        let i = self.marks.partition_point(|m| m.at <= t);
        let m = self.marks.get(i.checked_sub(1)?)?;
        Some(m.before.plus(m.mode, ns_between(m.at, t)))
    }

    /// Its time in each mode from `from` (its join when `None` or earlier) until it left or
    /// `now`, with when that count starts: `from`, or its oldest change kept when its history
    /// no longer reaches back to `from`. `None` when it left before `from`.
    pub(super) fn split(
        &self,
        from: Option<Instant>,
        now: Instant,
    ) -> Option<(Instant, ModeTimes)> {
        let end = self.end_or(now);
        let start = from.map_or(self.joined, |f| f.max(self.joined));
        if self.left.is_some_and(|left| left < start) {
            return None;
        }
        let start = start.min(end);
        let end_times = self.cumulative(end)?;
        match self.cumulative(start) {
            Some(at_start) => Some((start, end_times.since(at_start))),
            None => {
                let oldest = self.marks.front()?;
                Some((oldest.at, end_times.since(oldest.before)))
            }
        }
    }

    /// Checks that its marks are in time order from its join, each a change of mode, each
    /// counting the time before it, and that its mode is what it holds says.
    pub(super) fn check(&self) -> Result<(), String> {
        let first = self.marks.front().ok_or("no mark")?;
        if first.at < self.joined {
            return Err("a mark before its join".into());
        }
        if first.before.total() != ns_between(self.joined, first.at) {
            return Err(format!(
                "its oldest mark counts {} ns from its join, {} ns passed",
                first.before.total(),
                ns_between(self.joined, first.at)
            ));
        }
        for (a, b) in self.marks.iter().zip(self.marks.iter().skip(1)) {
            if b.at <= a.at || a.mode == b.mode {
                return Err(format!(
                    "marks out of order or not changes: {a:?} then {b:?}"
                ));
            }
            if b.before != a.before.plus(a.mode, ns_between(a.at, b.at)) {
                return Err(format!("{b:?} does not follow {a:?}"));
            }
        }
        if self.left.is_none() && self.mode() != self.due_mode() {
            return Err(format!(
                "it is {:?} but holds {} records (warm: {})",
                self.mode(),
                self.holding,
                self.warm
            ));
        }
        Ok(())
    }
}
