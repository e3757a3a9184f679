//! The cluster's state as `ember status` shows it.

use std::time::Instant;

use ember_core::ids::LeaseId;
use ember_core::proto::{
    ActorLifeStatus, BundleStatus, ClusterStatus, GangStatus, NodeStatus, Placement, WorkStatus,
};

use super::{HeadState, Work};
use crate::actor_life::Phase;

/// Milliseconds from `then` to `now` (0 if `then` is later).
pub(super) fn millis_since(now: Instant, then: Instant) -> u64 {
    now.saturating_duration_since(then).as_millis() as u64
}

impl HeadState {
    /// The cluster at `now`.
    pub(super) fn status(&self, now: Instant) -> ClusterStatus {
        let mut status = ClusterStatus::default();
        for (&id, n) in &self.nodes {
            let Some(usage) = self.sched.usage(id) else {
                continue;
            };
            status.nodes.push(NodeStatus {
                id: id.to_string(),
                name: n.hello.name.clone(),
                address: n.hello.address.clone(),
                usage,
                gpu_stats: n.gpu_stats.clone(),
                heartbeat_age_ms: millis_since(now, n.last_heartbeat),
                types: n.hello.task_types.len() + n.hello.actor_types.len(),
            });
        }
        for (&lease, work) in &self.work {
            if self.sched.lease(lease).is_none() {
                continue;
            }
            match work {
                Work::Lease(l) => status.leases.push(self.work_status(
                    lease,
                    lease.to_string(),
                    "lease",
                    &l.name,
                    &l.placement,
                )),
                Work::Job(j) => status.jobs.push(self.work_status(
                    lease,
                    j.job.to_string(),
                    "job",
                    &j.spec.command.join(" "),
                    &j.spec.placement,
                )),
                Work::Actor { .. } | Work::Stray => {}
            }
        }
        for (&id, a) in &self.actors {
            let (state, reason) = match a.life.phase() {
                Phase::Alive(_) => ("alive", None),
                Phase::Starting if a.create.is_some() => ("starting", None),
                Phase::Starting => ("restarting", None),
                Phase::Dead(why) => ("dead", Some(why.clone())),
            };
            let lease = a.life.live().map(|l| l.lease).unwrap_or(LeaseId(u64::MAX));
            let mut entry = self.work_status(
                lease,
                id.to_string(),
                "actor",
                &a.spec.type_name,
                &a.spec.placement,
            );
            entry.actor = Some(ActorLifeStatus {
                state: state.to_string(),
                incarnation: a.life.incarnation(),
                restarts: a.life.restarts(),
                checkpoint_seq: a.checkpoint.map(|(seq, _)| seq),
                checkpoint_age_ms: a.checkpoint.map(|(_, at)| millis_since(now, at)),
                reason,
                holders: a.holders.len() as u32,
            });
            if let Some(start) = a.start {
                self.add_wait_reason(now, start.lease, &mut entry);
            }
            status.actors.push(entry);
        }
        for queued in self.sched.queued().chain(self.sched.queued_in_bundles()) {
            let lease = queued.lease;
            let entry = match self.work.get(&lease) {
                Some(Work::Lease(l)) => {
                    self.work_status(lease, lease.to_string(), "lease", &l.name, &l.placement)
                }
                Some(Work::Job(j)) => self.work_status(
                    lease,
                    j.job.to_string(),
                    "job",
                    &j.spec.command.join(" "),
                    &j.spec.placement,
                ),
                Some(Work::Actor { actor, .. }) => match self.actors.get(actor) {
                    Some(a) => self.work_status(
                        lease,
                        actor.to_string(),
                        "actor",
                        &a.spec.type_name,
                        &a.spec.placement,
                    ),
                    None => continue,
                },
                Some(Work::Stray) | None => continue,
            };
            let mut entry = entry;
            self.add_wait_reason(now, lease, &mut entry);
            status.queue.push(entry);
        }
        for gang in self.sched.gangs() {
            let (waiting, fails_in_ms) = self.gang_wait(now, gang.id);
            let state = if gang.removing {
                "removing"
            } else if !gang.placed_once {
                "waiting"
            } else if gang.bundles.iter().any(|b| b.node.is_none()) {
                "replacing"
            } else {
                "placed"
            };
            status.gangs.push(GangStatus {
                id: gang.id.to_string(),
                strategy: gang.strategy.to_string(),
                state: state.to_string(),
                waiting,
                fails_in_ms,
                bundles: gang
                    .bundles
                    .iter()
                    .map(|b| BundleStatus {
                        demand: b.demand.to_string(),
                        node: b.node.map(|n| n.to_string()),
                        leases: b.leases as u32,
                        waiting: b.waiting as u32,
                    })
                    .collect(),
            });
        }
        status.autoscaler = self.autoscaling.as_ref().map(|a| a.status(now));
        status
    }

    /// Why `lease` waits, if it is queued.
    fn add_wait_reason(&self, now: Instant, lease: LeaseId, entry: &mut WorkStatus) {
        if let Some(why) = self.wait_reason(now, lease) {
            entry.fails_in_ms = why.fails_in_ms;
            entry.waiting = Some(why.to_string());
        }
    }

    /// One entry, placed where `lease` is granted (nowhere when it is not).
    fn work_status(
        &self,
        lease: LeaseId,
        id: String,
        kind: &str,
        name: &str,
        placement: &Placement,
    ) -> WorkStatus {
        let granted = self.sched.lease(lease);
        WorkStatus {
            id,
            kind: kind.to_string(),
            name: name.to_string(),
            demand: placement.demand.to_string(),
            node: granted.map(|g| g.node.to_string()),
            gpus: granted
                .map(|g| g.allocation.gpus.clone())
                .unwrap_or_default(),
            priority: placement.priority,
            actor: None,
            waiting: None,
            fails_in_ms: None,
        }
    }
}
