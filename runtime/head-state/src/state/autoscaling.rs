//! The autoscaler driven by the head: every [`Config::autoscale_every`](super::Config) a pass
//! tells it which nodes are idle and what waits, and carries out what it decides: a launch
//! becomes [`Effect::LaunchNode`] (the shell asks its node provider, and answers with
//! [`Input::Launched`](crate::io::Input::Launched): the provider's instance, or why it could
//! not start one), a node to let go is drained like any other (its actors move with their
//! checkpoints) and its instance stopped ([`Effect::StopNode`]) once it has left, and so is a
//! launch given up. A worker the autoscaler launched says so in its hello ([`LaunchTicket`]),
//! which matches it to its launch and so to its instance. The decisions (`autoscale/`) are
//! pure.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ember_core::ids::{LeaseId, NodeId};
use ember_core::proto::{
    AutoscaledNodeStatus, AutoscalerStatus, DecisionStatus, LaunchStatus, LaunchTicket,
    NodeTypeStatus, StoppedStatus,
};

use super::status::millis_since;
use super::{HeadState, Timer};
use crate::autoscale::{Action, Autoscaler, LaunchId, Waiting};
use crate::io::Effect;

/// How many of the autoscaler's latest decisions `ember status` shows.
const DECISIONS_KEPT: usize = 20;

/// Passes asked for by events (work waiting) come at most this often: a burst of requests
/// makes one pass, and a launch is decided within this of the work arriving.
const EVENT_PASS_SPACING: Duration = Duration::from_millis(20);

/// How long a node the autoscaler lets go has to finish its tasks.
const RELEASE_GRACE: Duration = Duration::from_secs(30);

/// An instance the head had its provider stop.
#[derive(Debug, Clone)]
pub(super) struct Stopped {
    /// Its node, if it joined.
    pub(super) node: Option<NodeId>,
    /// Its launch.
    pub(super) launch: LaunchId,
    /// The provider's instance.
    pub(super) instance: Option<String>,
    /// Why it was stopped.
    pub(super) why: String,
}

/// The autoscaler and what the head keeps around it.
#[derive(Debug)]
pub(super) struct Autoscaling {
    pub(super) autoscaler: Autoscaler,
    /// Its latest decisions, newest last, with when.
    pub(super) decisions: VecDeque<(Instant, String)>,
    /// The nodes it launched, with their launch and type.
    pub(super) launched: BTreeMap<NodeId, LaunchTicket>,
    /// Why each node on its way out goes (let go for idleness, a notice): said when it has
    /// left and its instance is stopped.
    pub(super) leaving: BTreeMap<NodeId, String>,
    /// The latest instances stopped, newest last: when, and what.
    pub(super) stopped: VecDeque<(Instant, Stopped)>,
    /// The provider's instance of each launch it started, until the instance is stopped.
    pub(super) instances: BTreeMap<LaunchId, String>,
    /// Launches to stop once the provider names their instance (given up, or their node let
    /// go, before it answered).
    pub(super) stop_when_started: BTreeSet<LaunchId>,
    /// When the next pass is armed.
    next_pass: Option<Instant>,
    /// When the latest pass ran.
    last_pass: Option<Instant>,
}

impl Autoscaling {
    pub(super) fn new(autoscaler: Autoscaler) -> Self {
        Autoscaling {
            autoscaler,
            decisions: VecDeque::new(),
            launched: BTreeMap::new(),
            leaving: BTreeMap::new(),
            stopped: VecDeque::new(),
            instances: BTreeMap::new(),
            stop_when_started: BTreeSet::new(),
            next_pass: None,
            last_pass: None,
        }
    }

    /// What `ember status` shows of it.
    pub(super) fn status(&self, now: Instant) -> AutoscalerStatus {
        let policy = self.autoscaler.policy();
        let launching: Vec<LaunchStatus> = self
            .autoscaler
            .pending_launches()
            .map(|l| {
                let instance = self.instances.get(&l.launch).cloned();
                LaunchStatus {
                    launch: l.launch,
                    node_type: l.node_type.to_string(),
                    state: if instance.is_some() {
                        "launching"
                    } else {
                        "requested"
                    }
                    .into(),
                    instance,
                    reason: l.reason.to_string(),
                    age_ms: millis_since(now, l.since),
                }
            })
            .collect();
        let nodes: Vec<AutoscaledNodeStatus> = self
            .launched
            .iter()
            .filter_map(|(node, ticket)| {
                let n = self.autoscaler.node(*node)?;
                let state = match (n.draining, n.warm, n.idle_since) {
                    (true, ..) => "draining",
                    (false, true, _) => "warm",
                    (false, false, None) => "busy",
                    (false, false, Some(_)) => "idle",
                };
                Some(AutoscaledNodeStatus {
                    node: *node,
                    node_type: ticket.node_type.clone(),
                    instance: self.instances.get(&ticket.launch).cloned(),
                    state: state.into(),
                    idle_ms: n.idle_since.map(|since| millis_since(now, since)),
                })
            })
            .collect();
        let types = policy
            .types
            .iter()
            .map(|t| NodeTypeStatus {
                name: t.name.clone(),
                resources: t.resources.to_string(),
                min: t.min,
                max: t.max,
                warm: t.warm,
                price_micros_per_hour: t.price_micros_per_hour,
                spot: t.spot,
                nodes: nodes.iter().filter(|n| n.node_type == t.name).count() as u32,
                launching: launching.iter().filter(|l| l.node_type == t.name).count() as u32,
                failing: self.autoscaler.failures().get(&t.name).map(|f| {
                    format!(
                        "{} failure(s) in a row, the latest: {}; next try in {} ms",
                        f.count,
                        f.reason,
                        f.retry_at.saturating_duration_since(now).as_millis()
                    )
                }),
            })
            .collect();
        AutoscalerStatus {
            types,
            launching,
            nodes,
            stopped: self
                .stopped
                .iter()
                .map(|(at, s)| StoppedStatus {
                    node: s.node,
                    launch: s.launch,
                    instance: s.instance.clone(),
                    why: s.why.clone(),
                    age_ms: millis_since(now, *at),
                })
                .collect(),
            decisions: self
                .decisions
                .iter()
                .map(|(at, decision)| DecisionStatus {
                    age_ms: millis_since(now, *at),
                    decision: decision.clone(),
                })
                .collect(),
        }
    }

    fn note(&mut self, now: Instant, decision: String) {
        tracing::info!("autoscaler: {decision}");
        if self.decisions.len() == DECISIONS_KEPT {
            self.decisions.pop_front();
        }
        self.decisions.push_back((now, decision));
    }
}

impl HeadState {
    /// Arms the autoscaler's next pass at `at`, unless one is armed sooner.
    pub(super) fn schedule_autoscale(&mut self, at: Instant) {
        let Some(a) = self.autoscaling.as_mut() else {
            return;
        };
        match a.next_pass {
            Some(armed) if armed <= at => return,
            Some(armed) => {
                self.timers.remove(&(armed, Timer::Autoscale));
            }
            None => {}
        }
        a.next_pass = Some(at);
        self.arm(at, Timer::Autoscale);
    }

    /// Work began to wait: a pass comes now (or within [`EVENT_PASS_SPACING`] of the last),
    /// not at the next periodic one, so a launch is decided as the work arrives.
    pub(super) fn autoscale_soon(&mut self, now: Instant) {
        let Some(a) = self.autoscaling.as_ref() else {
            return;
        };
        let at = a
            .last_pass
            .map_or(now, |last| (last + EVENT_PASS_SPACING).max(now));
        self.schedule_autoscale(at);
    }

    /// A worker joined: one the autoscaler launched is matched to its launch; any other is
    /// not the autoscaler's to let go.
    ///
    /// The first worker of a type that lists no labels tells what all such types carry;
    /// what waited for a launch that none of their workers could run is then checked again,
    /// and waits as stranded (failing at its deadline) unless a type or a live node could
    /// take it.
    pub(super) fn autoscaled_join(
        &mut self,
        now: Instant,
        node: NodeId,
        ticket: Option<LaunchTicket>,
        labels: &[String],
    ) {
        let (Some(a), Some(ticket)) = (self.autoscaling.as_mut(), ticket) else {
            return;
        };
        let warm = a
            .autoscaler
            .node_joined(now, node, &ticket.node_type, Some(ticket.launch));
        let learned = a.autoscaler.learn_labels(&ticket.node_type, labels);
        if learned {
            a.note(
                now,
                format!(
                    "node types that list no labels carry what {node} of {} carries: {} task \
                     and actor types",
                    ticket.node_type,
                    labels.len()
                ),
            );
        }
        a.launched.insert(node, ticket);
        if learned {
            let groups = self.sched.queued_group_firsts().map(|(g, _)| g).collect();
            self.strand(now, groups);
        }
        if !warm {
            return;
        }
        // Launched for the warm pool: cordoned, unless work already waits that it can take.
        if self.sched.queued().any(|r| self.sched.would_hold(node, r)) {
            if let Some(a) = self.autoscaling.as_mut() {
                a.autoscaler.take_warm(node);
                a.note(
                    now,
                    format!("{node} joined for the warm pool and takes waiting work"),
                );
            }
        } else {
            self.sched.set_schedulable(node, false);
            self.usage_warm(now, node, true);
        }
    }

    /// Work began to wait: a warm node that can take it is handed over at once (uncordoned;
    /// the next pass refills the pool). Returns whether one was.
    pub(super) fn take_warm_for(&mut self, now: Instant, lease: LeaseId) -> bool {
        let Some(a) = self.autoscaling.as_ref() else {
            return false;
        };
        let Some(req) = self.sched.queued_request(lease) else {
            return false;
        };
        let Some(node) = a
            .autoscaler
            .warm_nodes()
            .find(|n| self.sched.would_hold(*n, req))
        else {
            return false;
        };
        if let Some(a) = self.autoscaling.as_mut() {
            a.autoscaler.take_warm(node);
            a.note(now, format!("warm {node} takes waiting work ({lease})"));
        }
        self.sched.set_schedulable(node, true);
        self.usage_warm(now, node, false);
        self.place_queued(now);
        true
    }

    /// A node is gone: one the autoscaler launched has its instance stopped, whether it was
    /// let go, left on notice or was lost (a machine whose worker is gone still costs).
    pub(super) fn autoscaled_gone(&mut self, now: Instant, node: NodeId) {
        let Some(a) = self.autoscaling.as_mut() else {
            return;
        };
        a.autoscaler.node_left(node);
        let why = a
            .leaving
            .remove(&node)
            .unwrap_or_else(|| "it left the cluster".into());
        if let Some(ticket) = a.launched.remove(&node) {
            self.stop_instance(now, Some(node), ticket.launch, why);
        }
    }

    /// A node is draining: it no longer counts as a node of its type. With a `notice` (a
    /// spot interruption, or `ember drain --notice`), one of its type is launched at once to
    /// replace it.
    pub(super) fn autoscaled_draining(
        &mut self,
        now: Instant,
        node: NodeId,
        notice: Option<Duration>,
    ) {
        let Some(a) = self.autoscaling.as_mut() else {
            return;
        };
        let Some(notice) = notice else {
            a.autoscaler.node_draining(node);
            return;
        };
        let why = format!("notice: gone within {} s", notice.as_secs());
        a.leaving.insert(node, why.clone());
        match a.autoscaler.replace(now, node, &why) {
            Some(Action::Launch {
                launch,
                node_type,
                reason,
            }) => {
                a.note(
                    now,
                    format!("launch {node_type} (launch {launch}): {reason}"),
                );
                self.out.push(Effect::LaunchNode { launch, node_type });
            }
            _ => {
                if a.autoscaler.node(node).is_some() {
                    a.note(
                        now,
                        format!("{node} is going ({why}); no replacement within max"),
                    );
                }
            }
        }
    }

    /// The provider answered a launch: with its instance (stopped at once if the launch was
    /// given up meanwhile), or with why it could not start one (its type backs off).
    pub(super) fn launched(
        &mut self,
        now: Instant,
        launch: LaunchId,
        result: Result<String, String>,
    ) {
        let Some(a) = self.autoscaling.as_mut() else {
            return;
        };
        match result {
            Ok(instance) => {
                tracing::info!(launch, %instance, "launch started");
                a.instances.insert(launch, instance);
                if a.stop_when_started.remove(&launch) {
                    let why = "its launch was given up".to_string();
                    self.stop_instance(now, None, launch, why);
                }
            }
            Err(reason) => {
                a.stop_when_started.remove(&launch);
                let node_type = a
                    .autoscaler
                    .pending_launches()
                    .find(|l| l.launch == launch)
                    .map(|l| l.node_type.to_string());
                if let Some(node_type) = node_type {
                    a.autoscaler.launch_failed(now, launch, &reason);
                    let retry = a.autoscaler.failures()[&node_type].retry_at;
                    let note = format!(
                        "launch {launch} of {node_type} failed: {reason} (next try in {} s)",
                        retry.saturating_duration_since(now).as_secs()
                    );
                    a.note(now, note);
                }
            }
        }
    }

    /// Stops a launch's instance, or does so once the provider names it.
    fn stop_instance(&mut self, now: Instant, node: Option<NodeId>, launch: LaunchId, why: String) {
        let Some(a) = self.autoscaling.as_mut() else {
            return;
        };
        let instance = a.instances.remove(&launch);
        match &instance {
            Some(instance) => self.out.push(Effect::StopNode {
                launch,
                instance: instance.clone(),
            }),
            None => {
                a.stop_when_started.insert(launch);
            }
        }
        if a.stopped.len() == DECISIONS_KEPT {
            a.stopped.pop_front();
        }
        let stopped = Stopped {
            node,
            launch,
            instance,
            why,
        };
        a.stopped.push_back((now, stopped));
    }

    /// The leases on a node changed: work landing on it stops its idle clock, its last lease
    /// ending starts it.
    pub(super) fn autoscaled_leases(&mut self, now: Instant, node: NodeId) {
        let Some(a) = self.autoscaling.as_mut() else {
            return;
        };
        if let Some(usage) = self.sched.usage(node) {
            a.autoscaler.node_leases(now, node, usage.leases);
        }
    }

    /// One pass of the autoscaler: what it decides is carried out, and the next pass armed.
    pub(super) fn autoscale(&mut self, now: Instant) {
        let Some(every) = self.config.autoscale_every() else {
            return;
        };
        if let Some(a) = self.autoscaling.as_mut() {
            a.next_pass = None;
            a.last_pass = Some(now);
        }
        let waiting = self.waiting_work();
        let utilisation = self.gpu_utilisation();
        let leases: Vec<(NodeId, usize)> = self
            .sched
            .node_ids()
            .filter_map(|n| Some((n, self.sched.usage(n)?.leases)))
            .collect();
        let Some(a) = self.autoscaling.as_mut() else {
            return;
        };
        // Grants and releases tell it at once (`autoscaled_leases`); this catches holdings
        // that come another way (a gang's bundles, leases adopted after a head restart).
        for (node, count) in leases {
            a.autoscaler.node_leases(now, node, count);
        }
        let actions = a.autoscaler.decide(now, &waiting, utilisation);
        for action in actions {
            match action {
                Action::Launch {
                    launch,
                    node_type,
                    reason,
                } => {
                    if let Some(a) = self.autoscaling.as_mut() {
                        a.note(
                            now,
                            format!("launch {node_type} (launch {launch}): {reason}"),
                        );
                    }
                    self.out.push(Effect::LaunchNode { launch, node_type });
                }
                Action::LaunchTimedOut { launch, node_type } => {
                    if let Some(a) = self.autoscaling.as_mut() {
                        a.note(
                            now,
                            format!("launch {launch} of {node_type} never joined: given up"),
                        );
                    }
                    self.stop_instance(now, None, launch, "it never joined".into());
                }
                Action::KeepWarm { node, reason } => {
                    if let Some(a) = self.autoscaling.as_mut() {
                        a.note(now, format!("keep {node} warm (cordoned): {reason}"));
                    }
                    self.sched.set_schedulable(node, false);
                    self.usage_warm(now, node, true);
                }
                Action::Drain { node, reason } => {
                    if let Some(a) = self.autoscaling.as_mut() {
                        a.note(now, format!("release {node}: {reason}"));
                        a.leaving.insert(node, format!("let go: {reason}"));
                    }
                    self.drain(now, node, RELEASE_GRACE, None, false);
                }
            }
        }
        // The next pass: the periodic one (utilisation is sampled then), or sooner when
        // something falls due (an idle timeout, a launch timeout, a back-off's end).
        let due = self
            .autoscaling
            .as_ref()
            .and_then(|a| a.autoscaler.next_deadline(now));
        let next = due.map_or(now + every, |at| at.min(now + every));
        self.schedule_autoscale(next);
    }

    /// What waits and fits no live node now: queued requests with their labels, and gangs
    /// waiting for bundles.
    fn waiting_work(&self) -> Vec<Waiting> {
        let mut waiting: Vec<Waiting> = self
            .sched
            .queued()
            .map(|r| Waiting::Request {
                demand: r.demand.clone(),
                labels: r.labels.clone(),
            })
            .collect();
        for g in self.sched.gangs() {
            let bundles: Vec<_> = g
                .bundles
                .iter()
                .filter(|b| b.node.is_none())
                .map(|b| b.demand.clone())
                .collect();
            if !bundles.is_empty() && !g.removing {
                waiting.push(Waiting::Gang {
                    bundles,
                    strategy: g.strategy,
                });
            }
        }
        waiting
    }

    /// The mean utilisation of every GPU the workers report, in percent; `None` with none.
    fn gpu_utilisation(&self) -> Option<f64> {
        let (sum, count) = self
            .nodes
            .values()
            .flat_map(|n| n.gpu_stats.iter())
            .fold((0u64, 0u64), |(s, c), g| {
                (s + u64::from(g.utilization), c + 1)
            });
        (count > 0).then(|| sum as f64 / count as f64)
    }
}
