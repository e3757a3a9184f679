//! Why queued requests wait: for capacity (some live node could hold them once it frees), or
//! infeasible (no live node could ever hold them any more, since a node left or drains).
//!
//! Feasibility is decided when the cluster shrinks or grows, never in a queue pass: when a
//! node leaves or drains, only the queued requests that node could hold are checked against
//! the nodes left; when a node joins, only the stranded requests are checked against it. The
//! checks go by the queue's groups ([`QueuedGroup`]): requests of one group fit exactly the same
//! nodes, so one check answers for the whole group, and a node leaving costs a check per group,
//! not per queued request (plus the bookkeeping of each request it does strand). A
//! stranded request waits until its deadline (its placement's `pending_timeout_ms`, else
//! [`Config::pending_timeout`](super::Config::pending_timeout)) and then fails naming what is
//! missing, unless a node that fits joins first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ember_core::ids::{LeaseId, NodeId};
use ember_core::proto::{ClientReply, ErrorKind, JobEvent, Placement, RemoteError, WaitReason};
use ember_core::resources::ResourceDemand;

use super::{ms, HeadState, LeasePhase, Timer, Work};
use crate::placement::{PlacementError, QueuedGroup};

/// A queued lease that no live node could hold any more: what it lacks, and when it fails
/// with the timeout it was given (none for an actor's restart or move: an actor that exists
/// waits for a node however long it takes, its reason shown).
#[derive(Debug, Clone)]
pub(super) struct Stranded {
    reason: PlacementError,
    deadline: Option<(Instant, Duration)>,
}

impl HeadState {
    /// The groups of queued requests that `node` could hold entirely free: those whose
    /// requests may be stranded once it leaves or drains. One check per group, whatever the
    /// queue's length.
    pub(super) fn could_strand(&mut self, node: NodeId) -> Vec<QueuedGroup> {
        let mut groups = Vec::new();
        for (group, first) in self.sched.queued_group_firsts() {
            #[cfg(test)]
            {
                self.fit_checks += 1;
            }
            if self.sched.could_hold(node, first) {
                groups.push(group);
            }
        }
        groups
    }

    /// After nodes left or stopped taking work: the requests of `candidates` (groups named by
    /// [`HeadState::could_strand`] since, the queue unchanged) that no live node could hold any
    /// more wait, with that reason, until their deadline; in queue order, those stranded
    /// already left as they are. One check per group.
    pub(super) fn strand(&mut self, now: Instant, candidates: Vec<QueuedGroup>) {
        let mut doomed: Vec<(QueuedGroup, PlacementError)> = Vec::new();
        for group in candidates {
            let Some(first) = self.sched.queued_group_first(group) else {
                continue;
            };
            #[cfg(test)]
            {
                self.fit_checks += 1;
            }
            // What a node the autoscaler can launch could hold is not stranded: it waits
            // for that node.
            let launchable = self
                .autoscaling
                .as_ref()
                .is_some_and(|a| a.autoscaler.could_serve(&first.demand, &first.labels));
            if let Some(reason) = self
                .sched
                .never_fits_anywhere(first)
                .filter(|_| !launchable)
            {
                doomed.push((group, reason));
            }
        }
        if doomed.is_empty() {
            return;
        }
        doomed.sort_unstable_by_key(|(group, _)| *group);
        let groups: Vec<QueuedGroup> = doomed.iter().map(|(group, _)| *group).collect();
        for (group, lease) in self.sched.queued_in_groups(&groups) {
            if self.stranded.contains_key(&lease) {
                continue;
            }
            let Ok(at) = doomed.binary_search_by_key(&group, |(g, _)| *g) else {
                continue;
            };
            let reason = doomed[at].1.clone();
            let timeout = self
                .placement_of(lease)
                .and_then(|p| p.pending_timeout_ms)
                .map_or(self.config.pending_timeout, ms);
            let deadline = self.may_fail(lease).then(|| (now + timeout, timeout));
            tracing::warn!(%lease, ?deadline, "no live node can hold it any more: {reason}");
            if let Some((at, _)) = deadline {
                self.arm(at, Timer::Stranded(lease));
            }
            self.stranded.insert(lease, Stranded { reason, deadline });
            self.tell_waiting(now, lease);
        }
    }

    /// A node joined: the stranded requests it could hold wait for capacity again; the others
    /// keep their deadline, with their reason said again against the cluster as it is now.
    /// One check per group of stranded requests.
    pub(super) fn unstrand(&mut self, now: Instant, node: NodeId) {
        let stranded: Vec<LeaseId> = self.stranded.keys().copied().collect();
        // What the cluster says of each group: `None`, some node could hold it now.
        let mut verdicts: BTreeMap<QueuedGroup, Option<PlacementError>> = BTreeMap::new();
        for lease in stranded {
            let Some(group) = self.sched.queued_group(lease) else {
                continue;
            };
            let reason = match verdicts.get(&group) {
                Some(reason) => reason.clone(),
                None => {
                    let Some(first) = self.sched.queued_group_first(group) else {
                        continue;
                    };
                    #[cfg(test)]
                    {
                        self.fit_checks += 1;
                    }
                    let reason = if self.sched.could_hold(node, first) {
                        None
                    } else {
                        self.sched.never_fits_anywhere(first)
                    };
                    verdicts.insert(group, reason.clone());
                    reason
                }
            };
            let Some(reason) = reason else {
                tracing::info!(%lease, %node, "a node that can hold it joined");
                self.forget_stranded(lease);
                self.tell_waiting(now, lease);
                continue;
            };
            if let Some(s) = self.stranded.get_mut(&lease) {
                if s.reason != reason {
                    s.reason = reason;
                    self.tell_waiting(now, lease);
                }
            }
        }
    }

    /// A lease left the queue (placed, withdrawn, failed): it is stranded no more.
    pub(super) fn forget_stranded(&mut self, lease: LeaseId) {
        if let Some(Stranded {
            deadline: Some((at, _)),
            ..
        }) = self.stranded.remove(&lease)
        {
            self.timers.remove(&(at, Timer::Stranded(lease)));
        }
    }

    /// Whether a stranded lease fails at its pending timeout: a task lease, a job, or an
    /// actor's first incarnation (its creation fails). An actor that exists, restarting or
    /// moving off a draining node, keeps waiting: failing it would lose it.
    fn may_fail(&self, lease: LeaseId) -> bool {
        match self.work.get(&lease) {
            Some(Work::Lease(_) | Work::Job(_)) => true,
            Some(Work::Actor { actor, .. }) => {
                self.actors.get(actor).is_some_and(|a| a.create.is_some())
            }
            Some(Work::Stray) | None => false,
        }
    }

    /// What the lease was asked for with.
    fn placement_of(&self, lease: LeaseId) -> Option<&Placement> {
        match self.work.get(&lease)? {
            Work::Lease(l) => Some(&l.placement),
            Work::Job(j) => Some(&j.spec.placement),
            Work::Actor { actor, .. } => self.actors.get(actor).map(|a| &a.spec.placement),
            Work::Stray => None,
        }
    }

    /// Why a queued lease waits at `now`; `None` when it is not queued.
    pub(super) fn wait_reason(&self, now: Instant, lease: LeaseId) -> Option<WaitReason> {
        let request = self.sched.queued_request(lease)?;
        if let Some(s) = self.stranded.get(&lease) {
            return Some(WaitReason {
                infeasible: true,
                reason: s.reason.to_string(),
                fails_in_ms: s
                    .deadline
                    .map(|(at, _)| at.saturating_duration_since(now).as_millis() as u64),
            });
        }
        let reason = if let Some(bundle) = self.sched.bundle_of(lease) {
            let placed = self
                .sched
                .gang(bundle.gang)
                .and_then(|g| g.bundles.get(bundle.index as usize)?.node);
            match placed {
                Some(node) => format!(
                    "{bundle} (on {node}) has not {} free now; it fits once work in it ends",
                    request.demand
                ),
                None => {
                    format!("{bundle} is not placed now; it runs once the gang places the bundle")
                }
            }
        } else if let Some((node_type, launching)) = self.launch_for(request) {
            if launching {
                format!("a node of type {node_type} is launching for it")
            } else {
                format!(
                    "the autoscaler launches a node of type {node_type} for it at its next pass"
                )
            }
        } else {
            let needs = if request.demand == ResourceDemand::default() {
                "its labels".to_string()
            } else {
                request.demand.to_string()
            };
            format!("no live node has {needs} free now; it fits one once capacity frees")
        };
        Some(WaitReason {
            infeasible: false,
            reason,
            fails_in_ms: None,
        })
    }

    /// The node type the autoscaler would launch for `request`, and whether one of that type
    /// is launching now; `None` without an autoscaler or a type that holds it.
    fn launch_for(&self, request: &crate::placement::PlacementRequest) -> Option<(String, bool)> {
        let a = &self.autoscaling.as_ref()?.autoscaler;
        let node_type = a.type_for(&request.demand, &request.labels)?;
        let launching = a.pending_launches().any(|l| l.node_type == node_type);
        Some((node_type.to_string(), launching))
    }

    /// Tells a waiting job's client why it waits (task leases and actors show it in status).
    pub(super) fn tell_waiting(&mut self, now: Instant, lease: LeaseId) {
        let Some(Work::Job(job)) = self.work.get(&lease) else {
            return;
        };
        let Some(request) = job.request else {
            return;
        };
        if let Some(reason) = self.wait_reason(now, lease) {
            self.stream(request, ClientReply::Job(JobEvent::Waiting(reason)));
        }
    }

    /// A stranded lease's deadline came with no node that fits: what waited on it fails,
    /// naming what is missing.
    pub(super) fn stranded_timed_out(&mut self, now: Instant, lease: LeaseId) {
        let Some(Stranded {
            reason,
            deadline: Some((_, timeout)),
        }) = self.stranded.remove(&lease)
        else {
            return;
        };
        let error = RemoteError::new(
            ErrorKind::Infeasible,
            format!(
                "no live node can hold it: {reason} (no node that fits joined within {} ms)",
                timeout.as_millis()
            ),
        );
        match self.work.get(&lease) {
            Some(Work::Lease(l)) if l.phase == LeasePhase::Waiting => {
                let request = l.request;
                self.sched.cancel(lease);
                self.work.remove(&lease);
                self.fail(request, error);
            }
            Some(Work::Job(job)) if job.command.is_none() => {
                let request = job.request;
                self.sched.cancel(lease);
                self.work.remove(&lease);
                if let Some(request) = request {
                    self.fail(request, error);
                }
            }
            Some(&Work::Actor { actor, incarnation }) => {
                self.give_up_start(now, actor, incarnation, error);
            }
            _ => {}
        }
    }

    /// Checks that every stranded lease is queued and, if it may fail, due at its timer.
    pub(super) fn check_stranded(&self) -> Result<(), String> {
        for (lease, s) in &self.stranded {
            if self.sched.queued_request(*lease).is_none() {
                return Err(format!("{lease} is stranded but not queued"));
            }
            if let Some((at, _)) = s.deadline {
                if !self.timers.contains(&(at, Timer::Stranded(*lease))) {
                    return Err(format!("{lease} is stranded without its timer"));
                }
            }
        }
        Ok(())
    }
}
