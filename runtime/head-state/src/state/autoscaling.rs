//! The autoscaler driven by the head: every [`Config::autoscale_every`](super::Config) a pass
//! tells it which nodes are idle and what waits, and carries out what it decides: a launch
//! becomes [`Effect::LaunchNode`] (the shell asks its node provider), a node to let go is
//! drained like any other (its actors move with their checkpoints) and released
//! ([`Effect::ReleaseNode`]) once it has left, and a launch given up is cancelled
//! ([`Effect::CancelLaunch`]). A worker the autoscaler launched says so in its hello
//! ([`LaunchTicket`]), which matches it to its launch. The decisions (`autoscale/`) are pure.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ember_core::ids::{LeaseId, NodeId};
use ember_core::proto::LaunchTicket;

use super::{HeadState, Timer};
use crate::autoscale::{Action, Autoscaler, LaunchId, Waiting};
use crate::io::Effect;
use crate::placement::Scheduler;

#[cfg(test)]
#[path = "autoscaling_waiting_tests.rs"]
mod waiting_tests;

/// How many of the autoscaler's latest decisions `ember status` shows.
const DECISIONS_KEPT: usize = 20;

/// How long a node the autoscaler lets go has to finish its tasks.
const RELEASE_GRACE: Duration = Duration::from_secs(30);

/// The autoscaler and what the head keeps around it.
#[derive(Debug)]
pub(super) struct Autoscaling {
    pub(super) autoscaler: Autoscaler,
    /// Its latest decisions, newest last, with when.
    pub(super) decisions: VecDeque<(Instant, String)>,
    /// The nodes it launched, with their launch and type.
    pub(super) launched: BTreeMap<NodeId, LaunchTicket>,
    /// The nodes it is letting go: released once they have left.
    pub(super) releasing: BTreeMap<NodeId, Option<LaunchId>>,
    /// What waits, as the last pass handed it to the autoscaler ([`WaitingList`]).
    waiting: WaitingList,
}

impl Autoscaling {
    pub(super) fn new(autoscaler: Autoscaler) -> Self {
        Autoscaling {
            autoscaler,
            decisions: VecDeque::new(),
            launched: BTreeMap::new(),
            releasing: BTreeMap::new(),
            waiting: WaitingList::default(),
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
    /// A worker joined: one the autoscaler launched is matched to its launch; any other is
    /// not the autoscaler's to let go.
    pub(super) fn autoscaled_join(
        &mut self,
        now: Instant,
        node: NodeId,
        ticket: Option<LaunchTicket>,
    ) {
        let (Some(a), Some(ticket)) = (self.autoscaling.as_mut(), ticket) else {
            return;
        };
        a.autoscaler
            .node_joined(now, node, &ticket.node_type, Some(ticket.launch));
        a.launched.insert(node, ticket);
    }

    /// A node is gone: one the autoscaler was letting go is released to its provider.
    pub(super) fn autoscaled_gone(&mut self, node: NodeId) {
        let Some(a) = self.autoscaling.as_mut() else {
            return;
        };
        a.autoscaler.node_left(node);
        a.launched.remove(&node);
        if let Some(launch) = a.releasing.remove(&node) {
            self.out.push(Effect::ReleaseNode { node, launch });
        }
    }

    /// The leases on a node changed: work landing on it stops its idle clock, its last lease
    /// ending starts it.
    pub(super) fn autoscaled_leases(&mut self, now: Instant, node: NodeId) {
        let Some(a) = self.autoscaling.as_mut() else {
            return;
        };
        if let Some(leases) = self.sched.lease_count(node) {
            a.autoscaler.node_leases(now, node, leases);
        }
    }

    /// One pass of the autoscaler: what it decides is carried out, and the next pass armed.
    pub(super) fn autoscale(&mut self, now: Instant) {
        let Some(every) = self.config.autoscale_every() else {
            return;
        };
        self.arm(now + every, Timer::Autoscale);
        let utilisation = self.gpu_utilisation();
        let leases: Vec<(NodeId, usize)> = self
            .sched
            .node_ids()
            .filter_map(|n| Some((n, self.sched.lease_count(n)?)))
            .collect();
        let Some(a) = self.autoscaling.as_mut() else {
            return;
        };
        // Grants and releases tell it at once (`autoscaled_leases`); this catches holdings
        // that come another way (a gang's bundles, leases adopted after a head restart).
        for (node, count) in leases {
            a.autoscaler.node_leases(now, node, count);
        }
        let waiting = a.waiting.update(&self.sched);
        let actions = a.autoscaler.decide(now, waiting, utilisation);
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
                    self.out.push(Effect::CancelLaunch { launch });
                }
                Action::Drain { node, reason } => {
                    if let Some(a) = self.autoscaling.as_mut() {
                        a.note(now, format!("release {node}: {reason}"));
                        let launch = a.launched.get(&node).map(|t| t.launch);
                        a.releasing.insert(node, launch);
                    }
                    self.drain(now, node, RELEASE_GRACE, None);
                }
            }
        }
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

/// What waits and fits no live node now, as the autoscaler is handed it: queued requests
/// with their labels, in queue order, then gangs waiting for bundles.
///
/// The list is kept from one pass to the next, each queued request's entry with its lease:
/// a request that still waits keeps its entry (a lease's demand and labels never change while
/// it is queued, and the queue keeps the order of those that stay), and only the requests
/// queued since are copied. Copying every waiting demand and its labels each pass was most of
/// a pass at 10,000 waiting, whose decisions are otherwise quick (nothing is packed while the
/// launches a pass could make are all pending).
#[derive(Debug, Default)]
pub(super) struct WaitingList {
    /// The lease of each request, in the order of `waiting`'s first entries.
    leases: Vec<LeaseId>,
    /// The requests' entries, then the gangs'.
    waiting: Vec<Waiting>,
    /// Buffers for building the next list, kept to be reused.
    spare_leases: Vec<LeaseId>,
    spare: Vec<Waiting>,
}

impl WaitingList {
    /// The list as `sched` has it now.
    pub(super) fn update(&mut self, sched: &Scheduler) -> &[Waiting] {
        let mut leases = std::mem::take(&mut self.spare_leases);
        let mut waiting = std::mem::take(&mut self.spare);
        // The last list's gangs go; its requests are kept while they still wait.
        self.waiting.truncate(self.leases.len());
        let mut last = self.leases.drain(..).zip(self.waiting.drain(..)).peekable();
        for r in sched.queued() {
            let kept = loop {
                match last.peek() {
                    Some((lease, _)) if *lease == r.lease => break last.next().map(|(_, w)| w),
                    // Placed, cancelled or refused since: gone from the list.
                    Some((lease, _)) if sched.queued_request(*lease).is_none() => {
                        last.next();
                    }
                    // Still waits, behind `r`: `r` was queued since the last pass.
                    _ => break None,
                }
            };
            let entry = kept.unwrap_or_else(|| Waiting::Request {
                demand: r.demand.clone(),
                labels: r.labels.clone(),
            });
            debug_assert!(
                matches!(&entry, Waiting::Request { demand, labels } if *demand == r.demand && *labels == r.labels),
                "a queued lease's demand and labels changed: {entry:?} for {r:?}"
            );
            leases.push(r.lease);
            waiting.push(entry);
        }
        drop(last);
        for g in sched.gangs() {
            let bundles: Vec<_> = g
                .bundles
                .into_iter()
                .filter(|b| b.node.is_none())
                .map(|b| b.demand)
                .collect();
            if !bundles.is_empty() && !g.removing {
                waiting.push(Waiting::Gang {
                    bundles,
                    strategy: g.strategy,
                });
            }
        }
        self.spare_leases = std::mem::replace(&mut self.leases, leases);
        self.spare = std::mem::replace(&mut self.waiting, waiting);
        &self.waiting
    }
}
