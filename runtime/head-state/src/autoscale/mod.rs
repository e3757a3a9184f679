//! The autoscaler's decisions, as a pure core: no I/O, time passed in. It knows the node
//! types the cluster may launch, the nodes it has (their type, and since when each is idle),
//! the launches not joined yet, and what waits; [`Autoscaler::decide`] says which nodes to
//! launch and which to drain, each with its reason. The head feeds it and carries its actions
//! out through a node provider.
//!
//! How it decides:
//! - **Waiting work** is bin-packed onto nodes, GPU by GPU (a fraction and its GPU memory live
//!   on one GPU; 0.4 free on two GPUs is never 0.6), first onto the capacity already coming
//!   (launches not joined yet), then onto new nodes of the cheapest type that fits, never a GPU
//!   type for work that needs no GPU. Each type's `max`, the cluster's `max_nodes` and the
//!   upscaling speed (launches pending at once) bound the launches.
//! - **Floors**: every type keeps `min` nodes, and `warm` joined idle nodes kept ready and
//!   cordoned (a warm pool): the head places nothing on a warm node until work waits that it
//!   can take, then hands it over at once ([`Autoscaler::take_warm`]), and the pool is
//!   refilled, from an idle node of the type when there is one, else by a launch.
//! - **Busy GPUs**: optionally, a mean GPU utilisation above a threshold with at least N
//!   requests waiting, for M passes in a row, launches one more node, then waits a cooldown;
//!   the streak ends only once utilisation falls below the threshold by a margin.
//! - **Idle nodes**: a node idle for its type's `idle_timeout` is drained, unless that would
//!   take its type under `min` or its warm pool. A node's idle clock starts when its last lease
//!   ends and restarts only when work lands on it; nothing else (work waiting elsewhere, a
//!   pass) touches it.
//! - **Launches that never join** are given up after `launch_timeout`, reported, and no longer
//!   count as coming capacity, so the next pass launches again if the work still waits.

mod pack;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ember_core::ids::NodeId;
use ember_core::proto::GangStrategy;
use ember_core::resources::{NodeResources, ResourceDemand};

pub use pack::Waiting;

/// A kind of node the cluster may launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeType {
    /// Its name, e.g. `h100x8-spot`.
    pub name: String,
    /// What one node of it has. Its labels are those its workers carry. Types that list none
    /// run the cluster's own executable: they are taken to carry every task and actor type
    /// until the first worker of one joins, and from then on what that worker carries
    /// ([`Autoscaler::learn_labels`]), so work no worker can run is not launched for again
    /// and again.
    pub resources: NodeResources,
    /// Nodes of it always kept.
    pub min: u32,
    /// Nodes of it at most.
    pub max: u32,
    /// Idle nodes of it kept ready beyond what is used (a warm pool).
    pub warm: u32,
    /// Its price, in millionths of a currency unit per hour.
    pub price_micros_per_hour: u64,
    /// Spot (preemptible) or on-demand.
    pub spot: bool,
    /// How long a node of it may sit idle before it is drained.
    pub idle_timeout: Duration,
}

/// Scale up on busy GPUs: mean utilisation at least `percent` with at least `min_waiting`
/// requests waiting, for `samples` passes in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtilisationRule {
    /// The threshold, in percent of each GPU's time busy.
    pub percent: u8,
    /// How far below the threshold utilisation must fall to end a streak.
    pub margin: u8,
    /// Requests that must be waiting.
    pub min_waiting: usize,
    /// Consecutive passes over the threshold.
    pub samples: u32,
    /// After a launch for busy GPUs, how long before another.
    pub cooldown: Duration,
}

/// What the autoscaler may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The node types, each name once.
    pub types: Vec<NodeType>,
    /// Nodes in the cluster at most, launching ones included.
    pub max_nodes: u32,
    /// Launches pending (asked, not joined) at once: at most `max(5, upscaling_speed ×
    /// nodes)`, as Ray's `upscaling_speed`.
    pub upscaling_speed: f64,
    /// How long a launch may take to join before it is given up.
    pub launch_timeout: Duration,
    /// Scale up on busy GPUs, when set.
    pub utilisation: Option<UtilisationRule>,
}

/// Why a policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Two types share a name.
    #[error("node type `{0}` is declared twice")]
    DuplicateType(String),
    /// A type's min is above its max.
    #[error("node type `{name}`: min {min} is above max {max}")]
    MinAboveMax {
        /// The type.
        name: String,
        /// Its min.
        min: u32,
        /// Its max.
        max: u32,
    },
    /// The types' minimums add up past the cluster's max.
    #[error("the node types' minimums add up to {sum}, above the cluster's max of {max_nodes}")]
    MinimumsAboveMax {
        /// Their sum.
        sum: u32,
        /// The cluster's max.
        max_nodes: u32,
    },
}

/// A launch the autoscaler asked for, until its node joins or it is given up.
pub type LaunchId = u64;

/// What the autoscaler decided, each with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Launch a node of this type.
    Launch {
        /// Names the launch, for matching the node that joins.
        launch: LaunchId,
        /// The type's name.
        node_type: String,
        /// Why.
        reason: String,
    },
    /// Drain this node (its actors move with their checkpoints), then release it.
    Drain {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// Keep this idle node warm: cordon it (no work is placed on it) until work waits that it
    /// can take.
    KeepWarm {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// A launch did not join in time: it no longer counts as coming capacity.
    LaunchTimedOut {
        /// The launch.
        launch: LaunchId,
        /// Its type.
        node_type: String,
    },
}

/// A node the autoscaler knows.
#[derive(Debug, Clone)]
struct Tracked {
    node_type: String,
    /// Since when it holds no lease; `None` while it holds some.
    idle_since: Option<Instant>,
    /// A drain was asked for: it is on its way out.
    draining: bool,
    /// In its type's warm pool: idle, kept ready, cordoned until work needs it.
    warm: bool,
}

/// A launch not joined yet.
#[derive(Debug, Clone)]
struct Launching {
    node_type: String,
    since: Instant,
    /// Why it was asked for.
    reason: String,
    /// For its type's warm pool: the node joins warm.
    for_warm: bool,
}

/// A type whose launches fail: launched again only after a back-off that doubles with each
/// failure in a row (up to [`MAX_BACKOFF`]), so a broken provider is not hammered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchFailures {
    /// Failures in a row (a launch the provider refused, or one that never joined).
    pub count: u32,
    /// The latest one's reason.
    pub reason: String,
    /// No launch of the type before this.
    pub retry_at: Instant,
}

/// The longest back-off between launches of a type that keep failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The autoscaler: a policy and what it has seen.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    policy: Policy,
    nodes: BTreeMap<NodeId, Tracked>,
    launches: BTreeMap<LaunchId, Launching>,
    /// Types whose latest launches failed, by name; a join clears its type.
    failures: BTreeMap<String, LaunchFailures>,
    /// While a pass decides, [`Autoscaler::count_of`] for each type (by index), counted at
    /// its start and kept up to date by its launches and drains, so that each launch's check
    /// of its type's max is a lookup rather than a walk over every node (with 1,000 nodes and
    /// 1,000 launches a pass, the walks were most of it); `None` between passes.
    counts: Option<Vec<u32>>,
    /// Whether the types that list no labels have taken those of their first worker.
    labels_learned: bool,
    next_launch: LaunchId,
    /// Consecutive passes with busy GPUs and enough waiting.
    busy_streak: u32,
    /// The last launch for busy GPUs.
    last_busy_launch: Option<Instant>,
}

impl Autoscaler {
    /// An autoscaler with no nodes yet; refuses a policy it cannot keep.
    pub fn new(policy: Policy) -> Result<Self, PolicyError> {
        let mut seen = std::collections::BTreeSet::new();
        for t in &policy.types {
            if !seen.insert(t.name.as_str()) {
                return Err(PolicyError::DuplicateType(t.name.clone()));
            }
            if t.min > t.max {
                return Err(PolicyError::MinAboveMax {
                    name: t.name.clone(),
                    min: t.min,
                    max: t.max,
                });
            }
        }
        let sum: u32 = policy.types.iter().map(|t| t.min).sum();
        if sum > policy.max_nodes {
            return Err(PolicyError::MinimumsAboveMax {
                sum,
                max_nodes: policy.max_nodes,
            });
        }
        Ok(Autoscaler {
            policy,
            nodes: BTreeMap::new(),
            launches: BTreeMap::new(),
            failures: BTreeMap::new(),
            counts: None,
            labels_learned: false,
            next_launch: 1,
            busy_streak: 0,
            last_busy_launch: None,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A node joined, of `node_type`, answering `launch` if it came from one. It starts idle.
    /// Returns whether it joins its type's warm pool (launched for it): the head cordons it
    /// until work needs it.
    pub fn node_joined(
        &mut self,
        now: Instant,
        node: NodeId,
        node_type: &str,
        launch: Option<LaunchId>,
    ) -> bool {
        let warm = launch
            .and_then(|l| self.launches.remove(&l))
            .is_some_and(|l| l.for_warm);
        self.failures.remove(node_type);
        self.nodes.insert(
            node,
            Tracked {
                node_type: node_type.to_string(),
                idle_since: Some(now),
                draining: false,
                warm,
            },
        );
        warm
    }

    /// A worker of `node_type` joined carrying `labels`. The types that list no labels run
    /// the cluster's own executable: the first such worker tells what they all carry, and
    /// they take its labels as their own, so that work none of their workers can run no
    /// longer counts as something a launch would serve. Returns whether they did (once, if
    /// ever): the head then checks again what waits for a launch.
    pub fn learn_labels(&mut self, node_type: &str, labels: &[String]) -> bool {
        let unlisted = |t: &NodeType| t.resources.labels.is_empty();
        if self.labels_learned
            || labels.is_empty()
            || !self
                .policy
                .types
                .iter()
                .any(|t| t.name == node_type && unlisted(t))
        {
            return false;
        }
        let mut learned = labels.to_vec();
        learned.sort();
        for t in self.policy.types.iter_mut().filter(|t| unlisted(t)) {
            t.resources.labels.clone_from(&learned);
        }
        self.labels_learned = true;
        true
    }

    /// The head hands a warm node to work that waits: it leaves the warm pool (the next pass
    /// refills the pool). False if it was not warm.
    pub fn take_warm(&mut self, node: NodeId) -> bool {
        match self.nodes.get_mut(&node) {
            Some(n) if n.warm => {
                n.warm = false;
                true
            }
            _ => false,
        }
    }

    /// The warm nodes, in id order.
    pub fn warm_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .filter(|(_, n)| n.warm && !n.draining)
            .map(|(id, _)| *id)
    }

    /// The provider could not start `launch`: it no longer counts as coming capacity, and its
    /// type backs off before the next launch.
    pub fn launch_failed(&mut self, now: Instant, launch: LaunchId, reason: &str) {
        if let Some(l) = self.launches.remove(&launch) {
            self.failed(now, l.node_type, reason.to_string());
        }
    }

    /// Records a failed launch of `node_type`.
    fn failed(&mut self, now: Instant, node_type: String, reason: String) {
        let count = self.failures.get(&node_type).map_or(0, |f| f.count) + 1;
        let backoff = Duration::from_secs(1u64 << (count - 1).min(6)).min(MAX_BACKOFF);
        self.failures.insert(
            node_type,
            LaunchFailures {
                count,
                reason,
                retry_at: now + backoff,
            },
        );
    }

    /// Types whose latest launches failed, by name.
    pub fn failures(&self) -> &BTreeMap<String, LaunchFailures> {
        &self.failures
    }

    /// A node is gone (released, or lost).
    pub fn node_left(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }

    /// How many leases a node holds now: work landing on an idle node stops its idle clock;
    /// its last lease ending starts it again. Nothing else moves it.
    pub fn node_leases(&mut self, now: Instant, node: NodeId, leases: usize) {
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        match (leases, n.idle_since) {
            (0, None) => n.idle_since = Some(now),
            (l, Some(_)) if l > 0 => n.idle_since = None,
            _ => {}
        }
        if leases > 0 {
            n.warm = false;
        }
    }

    /// One pass: what to launch and what to drain now, given what waits (`waiting`: requests
    /// and gangs that fit no live node now) and the mean GPU utilisation, in percent, if
    /// known.
    pub fn decide(
        &mut self,
        now: Instant,
        waiting: &[Waiting],
        gpu_utilisation: Option<f64>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        self.give_up_launches(now, &mut actions);
        let mut budget = self.budget();
        self.counts = Some(self.count_all());
        self.keep_floors(now, &mut budget, &mut actions);
        let mut plan = pack::plan(self.coming(), waiting);
        // The plan's launches, until the pass can launch no more.
        while budget.cluster_room > 0 && budget.pass_room > 0 {
            let Some((type_index, why)) = plan.next_launch(&self.policy.types) else {
                break;
            };
            let reason = why.reason(&self.policy.types[type_index]);
            self.launch(now, type_index, reason, false, &mut budget, &mut actions);
        }
        self.scale_on_busy_gpus(now, waiting, gpu_utilisation, &mut budget, &mut actions);
        self.drain_idle(now, &mut actions);
        let counted = self.counts.take();
        debug_assert_eq!(counted, Some(self.count_all()), "the pass's counts drifted");
        actions
    }

    /// [`Autoscaler::count_of`] of every type, by index, in one walk.
    fn count_all(&self) -> Vec<u32> {
        let mut counts = vec![0; self.policy.types.len()];
        let live = self
            .nodes
            .values()
            .filter(|n| !n.draining)
            .map(|n| &n.node_type);
        for name in live.chain(self.launches.values().map(|l| &l.node_type)) {
            if let Some(i) = self.type_index(name) {
                counts[i] += 1;
            }
        }
        counts
    }

    /// What may be launched now: the cluster's room, and the launches that may be pending at
    /// once (as Ray's `upscaling_speed`: at most max(5, speed × nodes)).
    fn budget(&self) -> Budget {
        let live = self.nodes.values().filter(|n| !n.draining).count() as u32;
        let pending = self.launches.len() as u32;
        let speed_cap = ((self.policy.upscaling_speed * f64::from(live)).floor() as u32).max(5);
        Budget {
            cluster_room: self.policy.max_nodes.saturating_sub(live + pending),
            pass_room: speed_cap.saturating_sub(pending),
        }
    }

    /// A node is draining (a user drained it, or it is leaving on its own): it no longer
    /// counts as a node of its type.
    pub fn node_draining(&mut self, node: NodeId) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.draining = true;
        }
    }

    /// A node is going away on notice (a spot interruption): it stops counting as a node of
    /// its type, and a node of the same type is launched at once in its place (within the
    /// type's and the cluster's max), before it is gone.
    pub fn replace(&mut self, now: Instant, node: NodeId, why: &str) -> Option<Action> {
        let n = self.nodes.get_mut(&node)?;
        if n.draining {
            return None;
        }
        n.draining = true;
        let name = n.node_type.clone();
        let i = self.type_index(&name)?;
        let mut budget = self.budget();
        let mut actions = Vec::new();
        let reason = format!("replacing {node} ({why})");
        self.launch(now, i, reason, false, &mut budget, &mut actions);
        actions.pop()
    }

    /// Launches that did not join within the launch timeout are given up.
    fn give_up_launches(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let timeout = self.policy.launch_timeout;
        let late: Vec<LaunchId> = self
            .launches
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.since) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for launch in late {
            if let Some(l) = self.launches.remove(&launch) {
                let reason = format!("did not join within {} s", timeout.as_secs());
                self.failed(now, l.node_type.clone(), reason);
                actions.push(Action::LaunchTimedOut {
                    launch,
                    node_type: l.node_type,
                });
            }
        }
    }

    /// How many nodes of a type there are or are coming (draining ones excluded).
    fn count_of(&self, name: &str) -> u32 {
        if let (Some(counts), Some(i)) = (&self.counts, self.type_index(name)) {
            return counts[i];
        }
        let live = self
            .nodes
            .values()
            .filter(|n| !n.draining && n.node_type == name)
            .count();
        let coming = self
            .launches
            .values()
            .filter(|l| l.node_type == name)
            .count();
        (live + coming) as u32
    }

    /// A type's warm pool: its warm nodes, and its launches for the pool not joined yet.
    fn warm_of(&self, name: &str) -> u32 {
        let warm = self
            .nodes
            .values()
            .filter(|n| !n.draining && n.node_type == name && n.warm)
            .count();
        let coming = self
            .launches
            .values()
            .filter(|l| l.node_type == name && l.for_warm)
            .count();
        (warm + coming) as u32
    }

    /// The types of launches not joined yet, as indexes into the policy's types.
    fn coming(&self) -> Vec<usize> {
        self.launches
            .values()
            .filter_map(|l| self.type_index(&l.node_type))
            .collect()
    }

    fn type_index(&self, name: &str) -> Option<usize> {
        self.policy.types.iter().position(|t| t.name == name)
    }

    /// Every type keeps its `min` nodes and its warm pool: an idle node of the type joins the
    /// pool before one is launched for it.
    fn keep_floors(&mut self, now: Instant, budget: &mut Budget, actions: &mut Vec<Action>) {
        for i in 0..self.policy.types.len() {
            let t = &self.policy.types[i];
            let (name, min, warm) = (t.name.clone(), t.min, t.warm);
            while self.count_of(&name) < min {
                let reason = format!("node type {name} keeps at least {min} nodes");
                if !self.launch(now, i, reason, false, budget, actions) {
                    break;
                }
            }
            while self.warm_of(&name) < warm {
                let reason = format!("node type {name} keeps {warm} nodes warm");
                let idle = self
                    .nodes
                    .iter_mut()
                    .filter(|(_, n)| {
                        !n.draining && !n.warm && n.node_type == name && n.idle_since.is_some()
                    })
                    .min_by_key(|(_, n)| n.idle_since);
                if let Some((node, n)) = idle {
                    n.warm = true;
                    actions.push(Action::KeepWarm {
                        node: *node,
                        reason,
                    });
                } else if !self.launch(now, i, reason, true, budget, actions) {
                    break;
                }
            }
        }
    }

    /// Launches a node of type `i` if its max, the cluster's and this pass's allow; returns
    /// whether it did.
    fn launch(
        &mut self,
        now: Instant,
        i: usize,
        reason: String,
        for_warm: bool,
        budget: &mut Budget,
        actions: &mut Vec<Action>,
    ) -> bool {
        let t = &self.policy.types[i];
        let backing_off = self.failures.get(&t.name).is_some_and(|f| now < f.retry_at);
        if budget.cluster_room == 0
            || budget.pass_room == 0
            || backing_off
            || self.count_of(&t.name) >= t.max
        {
            return false;
        }
        budget.cluster_room -= 1;
        budget.pass_room -= 1;
        if let Some(c) = self.counts.as_mut() {
            c[i] += 1;
        }
        let launch = self.next_launch;
        self.next_launch += 1;
        let node_type = t.name.clone();
        self.launches.insert(
            launch,
            Launching {
                node_type: node_type.clone(),
                since: now,
                reason: reason.clone(),
                for_warm,
            },
        );
        actions.push(Action::Launch {
            launch,
            node_type,
            reason,
        });
        true
    }

    /// The utilisation rule: a busy pass ending a streak of `samples` busy passes (a pass
    /// just under the threshold, within the margin, neither adds to the streak nor ends it)
    /// launches one node of the cheapest GPU type that fits the first waiting request, at
    /// most once per cooldown.
    fn scale_on_busy_gpus(
        &mut self,
        now: Instant,
        waiting: &[Waiting],
        utilisation: Option<f64>,
        budget: &mut Budget,
        actions: &mut Vec<Action>,
    ) {
        let Some(rule) = self.policy.utilisation else {
            return;
        };
        let Some(util) = utilisation else {
            return;
        };
        let count = waiting.iter().map(Waiting::requests).sum::<usize>();
        let busy = util >= f64::from(rule.percent) && count >= rule.min_waiting;
        if busy {
            self.busy_streak += 1;
        } else if util < f64::from(rule.percent.saturating_sub(rule.margin))
            || count < rule.min_waiting
        {
            self.busy_streak = 0;
        }
        let cooled = self
            .last_busy_launch
            .is_none_or(|at| now.saturating_duration_since(at) >= rule.cooldown);
        if !busy || self.busy_streak < rule.samples || !cooled {
            return;
        }
        let first = waiting.iter().flat_map(Waiting::demands).next();
        let Some(i) = first.and_then(|d| pack::cheapest_gpu_type(&self.policy.types, d)) else {
            return;
        };
        let reason = format!(
            "GPUs {util:.0}% busy (at least {}%) for {} passes with {count} requests waiting",
            rule.percent, rule.samples
        );
        if self.launch(now, i, reason, false, budget, actions) {
            self.last_busy_launch = Some(now);
            self.busy_streak = 0;
        }
    }

    /// Drains nodes idle past their type's timeout, keeping each type's min; warm nodes are
    /// kept (they are idle by design).
    fn drain_idle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut idle: Vec<(Instant, NodeId)> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.draining && !n.warm)
            .filter_map(|(id, n)| Some((n.idle_since?, *id)))
            .collect();
        // The longest idle go first.
        idle.sort();
        for (since, node) in idle {
            let name = self.nodes[&node].node_type.clone();
            let Some(t) = self.type_index(&name).map(|i| &self.policy.types[i]) else {
                continue;
            };
            let idle_for = now.saturating_duration_since(since);
            if idle_for < t.idle_timeout || self.count_of(&name) <= t.min {
                continue;
            }
            let reason = format!(
                "idle for {} s (node type {name} drains after {} s idle)",
                idle_for.as_secs(),
                t.idle_timeout.as_secs()
            );
            if let Some(n) = self.nodes.get_mut(&node) {
                n.draining = true;
            }
            let i = self.type_index(&name);
            if let (Some(c), Some(i)) = (self.counts.as_mut(), i) {
                c[i] -= 1;
            }
            actions.push(Action::Drain { node, reason });
        }
    }

    /// The next moment after `now` at which a pass would decide something with nothing else
    /// changed: a launch's timeout, a type's back-off ending, a node's idle timeout. The head
    /// runs a pass then rather than waiting for its next periodic one.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let launches = self
            .launches
            .values()
            .map(|l| l.since + self.policy.launch_timeout);
        let backoffs = self.failures.values().map(|f| f.retry_at);
        let idle = self
            .nodes
            .values()
            .filter(|n| !n.draining && !n.warm)
            .filter_map(|n| {
                let t = self.type_index(&n.node_type)?;
                Some(n.idle_since? + self.policy.types[t].idle_timeout)
            });
        launches
            .chain(backoffs)
            .chain(idle)
            .filter(|at| *at > now)
            .min()
    }

    /// Whether a node of some type could hold `demand` on its own, carrying `labels`: such a
    /// request waits for a launch rather than being refused.
    pub fn could_serve(&self, demand: &ResourceDemand, labels: &[String]) -> bool {
        self.type_for(demand, labels).is_some()
    }

    /// Whether nodes it could launch would hold a gang: with `strict_pack` one node of some
    /// type holds every bundle; otherwise each bundle fits some type (a node of its own, as
    /// launches may give it). Such a gang waits for launches rather than being refused.
    pub fn could_serve_gang(&self, bundles: &[ResourceDemand], strategy: GangStrategy) -> bool {
        let types = &self.policy.types;
        match strategy {
            GangStrategy::StrictPack => {
                let all: Vec<&ResourceDemand> = bundles.iter().collect();
                pack::cheapest_for(types, &all, &[]).is_some()
            }
            _ => bundles
                .iter()
                .all(|b| pack::cheapest_for(types, &[b], &[]).is_some()),
        }
    }

    /// The cheapest node type a node of which could hold `demand` on its own, carrying
    /// `labels`.
    pub fn type_for(&self, demand: &ResourceDemand, labels: &[String]) -> Option<&str> {
        pack::cheapest_for(&self.policy.types, &[demand], labels)
            .map(|i| self.policy.types[i].name.as_str())
    }

    /// Launches not joined yet, by number.
    pub fn pending_launches(&self) -> impl Iterator<Item = PendingLaunch<'_>> {
        self.launches.iter().map(|(id, l)| PendingLaunch {
            launch: *id,
            node_type: &l.node_type,
            since: l.since,
            reason: &l.reason,
        })
    }

    /// The type of a node it knows, and whether it is idle and since when (`None`: busy) and
    /// whether it is on its way out.
    pub fn node(&self, node: NodeId) -> Option<TrackedNode<'_>> {
        self.nodes.get(&node).map(|n| TrackedNode {
            node_type: &n.node_type,
            warm: n.warm,
            idle_since: n.idle_since,
            draining: n.draining,
        })
    }

    /// Demands the autoscaler can never serve: no type fits them. For telling users.
    pub fn unservable<'a>(&self, waiting: &'a [Waiting]) -> Vec<&'a ResourceDemand> {
        waiting
            .iter()
            .flat_map(Waiting::demands)
            .filter(|d| pack::cheapest_type(&self.policy.types, d).is_none())
            .collect()
    }
}

/// A launch not joined yet, as [`Autoscaler::pending_launches`] lists it.
#[derive(Debug, Clone, Copy)]
pub struct PendingLaunch<'a> {
    /// Its number.
    pub launch: LaunchId,
    /// Its node type.
    pub node_type: &'a str,
    /// When it was asked for.
    pub since: Instant,
    /// Why.
    pub reason: &'a str,
}

/// A node the autoscaler knows, as [`Autoscaler::node`] tells it.
#[derive(Debug, Clone, Copy)]
pub struct TrackedNode<'a> {
    /// Its node type.
    pub node_type: &'a str,
    /// In its type's warm pool (cordoned).
    pub warm: bool,
    /// Since when it is idle; `None` while it holds work.
    pub idle_since: Option<Instant>,
    /// It is on its way out (drained, or going on notice).
    pub draining: bool,
}

/// What one pass may still launch.
struct Budget {
    cluster_room: u32,
    pass_room: u32,
}
