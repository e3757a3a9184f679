//! Placement and the leases it grants: task leases through their life (waiting, opening,
//! held, closing) and batch jobs.

use std::time::Instant;

use ember_core::ids::{JobId, LeaseId, NodeId};
use ember_core::proto::{
    ClientReply, ErrorKind, JobEvent, JobSpec, LeaseSpec, Placement, RemoteError,
    TaskLease as Granted, WorkerCommand, WorkerReply,
};
use ember_core::resources::task_label;

use super::{
    died, unexpected, HeadState, Job, LeaseEnd, LeasePhase, Purpose, TaskLease, Wait, Work,
};
use crate::io::RequestId;
use crate::placement::{Decision, Lease, PlacementError, PlacementRequest};

/// The error a rejected placement is answered with.
pub(super) fn rejection(e: PlacementError) -> RemoteError {
    // No node has the type at all: the request names something unknown.
    // A malformed demand is the sender's mistake, whatever the cluster holds.
    let kind = match e {
        PlacementError::MissingLabel(_)
        | PlacementError::UnknownGang(_)
        | PlacementError::GangRemoved(_) => ErrorKind::Unknown,
        _ if e.is_malformed() => ErrorKind::BadRequest,
        _ => ErrorKind::Infeasible,
    };
    RemoteError::new(kind, e.to_string())
}

impl HeadState {
    /// Asks the scheduler for `lease`, filed as `work`: granted now (handed to
    /// [`HeadState::placed`]), queued, or rejected (the work is forgotten and the error
    /// returned). While nodes of the last head life are expected, it is queued rather than
    /// rejected.
    pub(super) fn place(
        &mut self,
        now: Instant,
        lease: LeaseId,
        placement: Placement,
        label: Option<String>,
        work: Work,
    ) -> Result<(), RemoteError> {
        self.work.insert(lease, work);
        let request = PlacementRequest {
            lease,
            demand: placement.demand,
            strategy: placement.strategy,
            affinity: placement.affinity,
            priority: placement.priority,
            labels: label.into_iter().collect(),
        };
        // While nodes of the head's last life are expected back, what they could take waits
        // for them rather than failing on the nodes already back; so does what a node the
        // autoscaler can launch could take (asked only of what no node here can hold).
        let expected = !self.expected.is_empty();
        let autoscaling = &self.autoscaling;
        let decision = if let Some(bundle) = placement.bundle {
            self.sched.request_in_bundle(bundle, request)
        } else {
            self.sched.request_or_wait(request, |r| {
                expected
                    || autoscaling
                        .as_ref()
                        .is_some_and(|a| a.autoscaler.could_serve(&r.demand, &r.labels))
            })
        };
        match decision {
            Decision::Placed(granted) => {
                self.placed(now, granted);
                Ok(())
            }
            Decision::Queued => {
                tracing::debug!(%lease, "waiting for capacity");
                if self.take_warm_for(now, lease) && self.sched.queued_request(lease).is_none() {
                    return Ok(());
                }
                self.autoscale_soon(now);
                self.tell_waiting(now, lease);
                Ok(())
            }
            Decision::Rejected(e) => {
                self.work.remove(&lease);
                Err(rejection(e))
            }
        }
    }

    /// Refuses what waits for capacity and no node could ever take, as it would have been
    /// refused when asked: once the nodes of the last head life it waited for are all back or
    /// given up.
    pub(super) fn refuse_unplaceable(&mut self, now: Instant) {
        let refused = self.sched.take_unplaceable();
        self.refuse(now, refused);
    }

    /// Fails what was taken out of the queue as never placeable, each with why.
    fn refuse(&mut self, now: Instant, refused: Vec<(LeaseId, PlacementError)>) {
        for (lease, e) in refused {
            self.forget_stranded(lease);
            let e = rejection(e);
            match self.work.remove(&lease) {
                Some(Work::Lease(l)) => self.fail(l.request, e),
                Some(Work::Job(job)) => {
                    if let Some(request) = job.request {
                        self.fail(request, e);
                    }
                }
                Some(Work::Actor { actor, incarnation }) => {
                    if let Some(a) = self.actors.get_mut(&actor) {
                        a.start = None;
                    }
                    self.start_failed(now, actor, incarnation, e, "cannot place it: ");
                }
                Some(Work::Stray) | None => {}
            }
        }
    }

    /// Places what waits and fits now.
    pub(super) fn place_queued(&mut self, now: Instant) {
        loop {
            let placed = self.sched.place_queued();
            self.gangs_placed();
            let refused = self.sched.take_refused();
            self.refuse(now, refused);
            if placed.is_empty() {
                return;
            }
            for granted in placed {
                self.placed(now, granted);
            }
        }
    }

    /// A lease was granted: start what it is for.
    fn placed(&mut self, now: Instant, granted: Lease) {
        let lease = granted.id;
        self.forget_stranded(lease);
        self.autoscaled_leases(now, granted.node);
        match self.work.get_mut(&lease) {
            Some(Work::Lease(l)) => {
                l.phase = LeasePhase::Opening;
                let open = WorkerCommand::OpenLease {
                    lease,
                    allocation: granted.allocation,
                };
                self.command(granted.node, open, Purpose::OpenLease(lease));
            }
            Some(Work::Job(job)) => {
                let run = WorkerCommand::RunJob {
                    job: job.job,
                    command: job.spec.command.clone(),
                    env: job.spec.env.clone(),
                    allocation: granted.allocation,
                };
                let command = self.command(granted.node, run, Purpose::RunJob(lease));
                if let Some(Work::Job(job)) = self.work.get_mut(&lease) {
                    job.command = Some(command);
                }
            }
            Some(Work::Actor { actor, incarnation }) => {
                let (actor, incarnation) = (*actor, *incarnation);
                self.actor_placed(now, actor, incarnation, granted);
            }
            Some(Work::Stray) | None => {
                // Nothing is waiting for it any more.
                self.release(now, lease);
            }
        }
    }

    /// Gives a lease's capacity back (once: a second release does nothing) and places what
    /// fits now.
    pub(super) fn release(&mut self, now: Instant, lease: LeaseId) {
        let node = self.sched.lease(lease).map(|l| l.node);
        self.work.remove(&lease);
        self.forget_stranded(lease);
        if self.sched.release(lease) {
            self.place_queued(now);
        } else {
            self.sched.cancel(lease);
        }
        if let Some(node) = node {
            self.autoscaled_leases(now, node);
            if self.drains.contains_key(&node) {
                self.check_drain(now, node);
            }
        }
    }

    /// Where a granted lease is: its node.
    pub(super) fn node_of(&self, lease: LeaseId) -> Option<NodeId> {
        self.sched.lease(lease).map(|l| l.node)
    }

    // ---- task leases ----

    pub(super) fn lease_task(&mut self, now: Instant, request: RequestId, spec: LeaseSpec) {
        let lease = LeaseId(self.next_id());
        self.set_wait(request, Wait::Lease(lease));
        let label = Some(task_label(&spec.name));
        let work = Work::Lease(TaskLease {
            request,
            name: spec.name,
            placement: spec.placement.clone(),
            phase: LeasePhase::Waiting,
            end: None,
        });
        if let Err(e) = self.place(now, lease, spec.placement, label, work) {
            self.fail(request, e);
        }
    }

    /// The worker opened a task lease (or could not).
    pub(super) fn lease_opened(
        &mut self,
        now: Instant,
        lease: LeaseId,
        reply: Result<WorkerReply, RemoteError>,
    ) {
        let Some(Work::Lease(l)) = self.work.get_mut(&lease) else {
            return;
        };
        let request = l.request;
        match reply {
            Ok(WorkerReply::LeaseOpened(endpoints)) => {
                if l.end.is_some() {
                    // Given back, or taken back, while it opened.
                    self.close_lease(now, lease);
                    return;
                }
                l.phase = LeasePhase::Held;
                let Some(granted) = self.sched.lease(lease) else {
                    return;
                };
                let granted = Granted {
                    lease,
                    node: granted.node,
                    allocation: granted.allocation.clone(),
                    endpoints,
                };
                self.stream(request, ClientReply::TaskLeased(granted));
            }
            Ok(WorkerReply::Error(e)) | Err(e) => {
                self.release(now, lease);
                self.fail(request, e);
            }
            Ok(other) => {
                self.release(now, lease);
                self.fail(request, unexpected(&other));
            }
        }
    }

    /// The client gave a task lease back (`lost`: it lost the lease's executor).
    pub(super) fn lease_returned(&mut self, now: Instant, request: RequestId, lost: bool) {
        let Some(Wait::Lease(lease)) = self.requests.get(&request).map(|o| o.wait.clone()) else {
            return;
        };
        let end = if lost {
            LeaseEnd::Lost
        } else {
            LeaseEnd::Returned
        };
        self.end_lease(now, lease, end);
    }

    /// The client of a task lease went away.
    pub(super) fn lease_abandoned(&mut self, now: Instant, lease: LeaseId) {
        self.end_lease(now, lease, LeaseEnd::ClientGone);
    }

    /// Ends a task lease for `end`: withdrawn while it waits, closed on its worker once open.
    pub(super) fn end_lease(&mut self, now: Instant, lease: LeaseId, end: LeaseEnd) {
        let Some(Work::Lease(l)) = self.work.get_mut(&lease) else {
            return;
        };
        if l.end.is_some() {
            return;
        }
        l.end = Some(end);
        let (phase, request) = (l.phase, l.request);
        match phase {
            LeasePhase::Waiting => {
                self.sched.cancel(lease);
                self.forget_stranded(lease);
                self.work.remove(&lease);
                self.finish_lease(request, end, None);
            }
            // Closed once open.
            LeasePhase::Opening | LeasePhase::Closing => {}
            LeasePhase::Held => self.close_lease(now, lease),
        }
    }

    /// Closes a task lease on its worker, after its running task. When the client lost the
    /// lease's executor, the close doubles as a probe of the worker.
    fn close_lease(&mut self, now: Instant, lease: LeaseId) {
        let Some(Work::Lease(l)) = self.work.get_mut(&lease) else {
            return;
        };
        l.phase = LeasePhase::Closing;
        let lost = l.end == Some(LeaseEnd::Lost);
        let Some(node) = self.node_of(lease) else {
            return;
        };
        let close = WorkerCommand::CloseLease { lease };
        if lost {
            self.probe(now, node, close, Purpose::CloseLease(lease));
        } else {
            self.command(node, close, Purpose::CloseLease(lease));
        }
    }

    /// The worker closed a task lease (or is gone): its capacity returns.
    pub(super) fn lease_closed(&mut self, now: Instant, lease: LeaseId) {
        let Some(Work::Lease(l)) = self.work.get(&lease) else {
            return;
        };
        let (request, end) = (l.request, l.end.unwrap_or(LeaseEnd::Returned));
        let node = self.node_of(lease);
        self.release(now, lease);
        self.finish_lease(request, end, node);
    }

    /// A task lease's node was lost.
    pub(super) fn lease_lost(&mut self, l: TaskLease, node: NodeId) {
        match l.end {
            Some(end) => self.finish_lease(l.request, end, Some(node)),
            None => self.fail(l.request, died(node)),
        }
    }

    /// Answers a task lease's request as it ended.
    fn finish_lease(&mut self, request: RequestId, end: LeaseEnd, node: Option<NodeId>) {
        match end {
            LeaseEnd::TakenBack => {
                let node = node.map_or_else(|| "its node".to_string(), |n| format!("node {n}"));
                let lease = match self.requests.get(&request).map(|o| &o.wait) {
                    Some(Wait::Lease(l)) => l.to_string(),
                    _ => "the lease".to_string(),
                };
                self.fail(
                    request,
                    RemoteError::new(
                        ErrorKind::Moved,
                        format!("{lease} was taken back: {node} is draining"),
                    ),
                );
            }
            LeaseEnd::GangRemoved(gang) => self.fail(
                request,
                RemoteError::new(ErrorKind::Moved, format!("{gang} was removed")),
            ),
            LeaseEnd::Returned | LeaseEnd::Lost | LeaseEnd::ClientGone => self.end(request),
        }
    }

    // ---- jobs ----

    pub(super) fn submit_job(&mut self, now: Instant, request: RequestId, spec: JobSpec) {
        let lease = LeaseId(self.next_id());
        let job = JobId(self.next_id());
        self.set_wait(request, Wait::Job(lease));
        let placement = spec.placement.clone();
        let work = Work::Job(Job {
            request: Some(request),
            job,
            spec,
            command: None,
        });
        if let Err(e) = self.place(now, lease, placement, None, work) {
            self.fail(request, e);
        }
    }

    /// One of a job's replies: its events go to the client; the last one ends it.
    pub(super) fn job_replied(
        &mut self,
        now: Instant,
        lease: LeaseId,
        reply: Result<WorkerReply, RemoteError>,
        last: bool,
    ) {
        let Some(Work::Job(job)) = self.work.get(&lease) else {
            return;
        };
        let request = job.request;
        let node = self.node_of(lease);
        if last {
            self.release(now, lease);
        }
        let Some(request) = request else {
            return;
        };
        match reply {
            Ok(WorkerReply::Job(ev @ JobEvent::Exited(_))) => {
                self.reply(request, ClientReply::Job(ev));
            }
            Ok(WorkerReply::Job(ev)) => self.stream(request, ClientReply::Job(ev)),
            Ok(WorkerReply::Error(e)) => self.fail(request, e),
            Ok(other) => self.fail(request, unexpected(&other)),
            Err(e) => match node {
                Some(node) if e.kind == ErrorKind::WorkerDied => self.fail(request, died(node)),
                _ => self.fail(request, e),
            },
        }
    }

    /// A job's client went away: a waiting job is withdrawn; a running one is cancelled, and
    /// its resources return when the worker reports it ended.
    pub(super) fn job_abandoned(&mut self, lease: LeaseId) {
        let Some(Work::Job(job)) = self.work.get_mut(&lease) else {
            return;
        };
        job.request = None;
        match job.command {
            Some(command) => self.out.push(crate::io::Effect::Cancel { command }),
            None => {
                self.sched.cancel(lease);
                self.forget_stranded(lease);
                self.work.remove(&lease);
            }
        }
    }
}
