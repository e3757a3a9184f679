//! The usage ledger (`crate::usage`) fed by the head: a node's join and loss; each job, actor
//! incarnation and task lease as its lease is granted (or adopted from a re-joining worker)
//! and released; and `ember usage`, answered from it.
//!
//! The ledger derives a node's allocated and idle time from the records open on it, so the
//! grants and releases here are all it needs, and the warm pool: the autoscaling code calls
//! [`HeadState::usage_warm`] when a node goes into its warm pool (cordoned, kept ready) or
//! out of it, and its idle time counts as warm meanwhile.

use std::time::{Duration, Instant};

use ember_core::ids::{LeaseId, NodeId};
use ember_core::proto::UsageReport;

use super::{HeadState, Work};
use crate::journal::Owner;
use crate::usage::{Holding, NodeClass, Opening, UsageSubject};

/// The job key of an actor or a task lease: the client connection that owns it.
fn client_key(owner: Owner) -> String {
    format!("client-{}.{}", owner.epoch, owner.conn)
}

impl HeadState {
    /// A worker joined as `node` at `now`: its time counts from now, under the node type it
    /// was launched as, or `static:MODEL` when the autoscaler did not launch it.
    pub(super) fn usage_node_joined(&mut self, now: Instant, node: NodeId) {
        let Some(n) = self.nodes.get(&node) else {
            return;
        };
        let resources = &n.hello.resources;
        let class = match &n.hello.launch {
            None => NodeClass::unlaunched(resources),
            Some(ticket) => {
                let node_type = self.autoscaling.as_ref().and_then(|a| {
                    a.autoscaler
                        .policy()
                        .types
                        .iter()
                        .find(|t| t.name == ticket.node_type)
                });
                match node_type {
                    Some(t) => NodeClass::launched(resources, t),
                    None => {
                        tracing::warn!(
                            %node,
                            "usage: launched as type `{}`, which the autoscaler does not \
                             have: counted at price 0",
                            ticket.node_type
                        );
                        NodeClass::new(resources, ticket.node_type.clone(), 0, false)
                    }
                }
            }
        };
        if let Err(e) = self.ledger.node_joined(now, node, class) {
            tracing::warn!(%node, "usage: {e}");
        }
    }

    /// `node` went into the autoscaler's warm pool (`warm`) or out of it at `now`.
    pub(super) fn usage_warm(&mut self, now: Instant, node: NodeId, warm: bool) {
        if let Err(e) = self.ledger.node_warm(now, node, warm) {
            tracing::warn!(%node, "usage: {e}");
        }
    }

    /// `node` is gone at `now`: the records open on it close and its life ends.
    pub(super) fn usage_node_gone(&mut self, now: Instant, node: NodeId) {
        if let Err(e) = self.ledger.node_left(now, node) {
            tracing::warn!(%node, "usage: {e}");
        }
    }

    /// `lease` holds its resources from `now` (granted, or adopted): the record of the job,
    /// actor incarnation or task lease it is for opens. Nothing for a lease held for something
    /// the head is stopping.
    pub(super) fn usage_lease_started(&mut self, now: Instant, lease: LeaseId) {
        let Some(granted) = self.sched.lease(lease) else {
            return;
        };
        let (subject, job) = match self.work.get(&lease) {
            Some(Work::Lease(l)) => (
                UsageSubject::TaskLease {
                    lease,
                    function: l.name.clone(),
                },
                self.requests
                    .get(&l.request)
                    .map(|open| client_key(self.owner(open.conn))),
            ),
            Some(Work::Job(j)) => (
                UsageSubject::Job {
                    job: j.job,
                    command: j.spec.command.join(" "),
                },
                Some(j.job.to_string()),
            ),
            Some(&Work::Actor { actor, incarnation }) => {
                let a = self.actors.get(&actor);
                (
                    UsageSubject::Actor {
                        actor,
                        incarnation,
                        type_name: a.map(|a| a.spec.type_name.clone()).unwrap_or_default(),
                    },
                    a.map(|a| client_key(a.owner)),
                )
            }
            Some(Work::Stray) | None => return,
        };
        let job = job.unwrap_or_else(|| "-".to_string());
        let opening = Opening {
            subject: &subject,
            job: &job,
            allocation: &granted.allocation,
        };
        if let Err(e) = self.ledger.open(now, lease, granted.node, opening) {
            tracing::warn!(%lease, "usage: {e}");
        }
    }

    /// `lease` gives its resources back at `now`: its record, if it has one, closes.
    pub(super) fn usage_lease_ended(&mut self, now: Instant, lease: LeaseId) {
        self.ledger.close(now, lease);
    }

    /// `ember usage`: the ledger from `since_ms_ago` before `now` (everything when `None`).
    pub(super) fn usage_report(&self, now: Instant, since_ms_ago: Option<u64>) -> UsageReport {
        let from = since_ms_ago.and_then(|ms| now.checked_sub(Duration::from_millis(ms)));
        self.ledger.report(now, from)
    }

    /// Checks that the ledger agrees with itself and with the state: every node has its life
    /// in it; every granted lease of a job, actor incarnation or task lease has its record
    /// open, on its node, holding its allocation; and no other record is open.
    pub(super) fn check_usage(&self) -> Result<(), String> {
        self.ledger.check()?;
        if let Some(node) = self.nodes.keys().find(|n| self.ledger.mode(**n).is_none()) {
            return Err(format!(
                "{node} is in the cluster but not in the usage ledger"
            ));
        }
        let mut counted = 0;
        for lease in self.sched.leases() {
            if matches!(self.work.get(&lease.id), Some(Work::Stray) | None) {
                continue;
            }
            counted += 1;
            match self.ledger.open_record(lease.id) {
                Some(r) if r.node == lease.node && r.holding == Holding::of(&lease.allocation) => {}
                other => {
                    return Err(format!(
                        "{} on {} holds {:?} but its usage record is {other:?}",
                        lease.id, lease.node, lease.allocation
                    ))
                }
            }
        }
        let open = self.ledger.open_records().count();
        if open != counted {
            return Err(format!(
                "{open} usage records are open for {counted} granted leases"
            ));
        }
        Ok(())
    }
}
