//! Gangs (placement groups) at the head: creating one (answered once it is placed whole),
//! removing one (what waits in it fails, the work running in it is stopped), the gangs of a
//! closed connection, and a waiting gang that no live node set can hold any more (it fails at
//! its pending timeout unless a node that fits joins). The placement itself is the
//! scheduler's (`placement/gang.rs`).

use std::time::{Duration, Instant};

use ember_core::ids::GangId;
use ember_core::proto::{ClientReply, ErrorKind, GangSpec, RemoteError};

use super::work::rejection;
use super::{ms, ConnId, HeadState, LeaseEnd, RequestId, Timer, Wait, Work};
use crate::journal::Owner;
use crate::placement::{GangDecision, GangRequest, PlacementError};

/// What the head keeps of a gang beside the scheduler's placement of it.
#[derive(Debug, Clone)]
pub(super) struct GangEntry {
    /// The client connection that created it: the gang is removed when it closes.
    pub(super) owner: Owner,
    /// The creation request, until the gang is first placed whole.
    pub(super) create: Option<RequestId>,
    /// Its pending timeout, if it asked for one.
    pending_timeout: Option<Duration>,
    /// Why no set of live nodes could hold it any more, and when it fails for that.
    pub(super) stranded: Option<(PlacementError, Instant)>,
}

/// The error of work whose gang was removed.
fn gang_removed(gang: GangId) -> RemoteError {
    RemoteError::new(ErrorKind::Unknown, format!("{gang} was removed"))
}

impl HeadState {
    /// Creates a gang: answered once it is placed whole, or at once when it never could be.
    pub(super) fn create_gang(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: RequestId,
        spec: GangSpec,
    ) {
        let gang = GangId(self.next_id());
        let req = GangRequest {
            gang,
            bundles: spec.bundles,
            strategy: spec.strategy,
            priority: spec.priority,
        };
        // While nodes of the last head life are expected, a gang waits for them; so does one
        // that nodes the autoscaler can launch would hold.
        let wait = !self.expected.is_empty()
            || self
                .autoscaling
                .as_ref()
                .is_some_and(|a| a.autoscaler.could_serve_gang(&req.bundles, req.strategy));
        let decision = self.sched.create_gang(req, wait);
        let entry = GangEntry {
            owner: self.owner(conn),
            create: None,
            pending_timeout: spec.pending_timeout_ms.map(ms),
            stranded: None,
        };
        match decision {
            GangDecision::Placed(nodes) => {
                self.gangs.insert(gang, entry);
                tracing::debug!(%gang, ?nodes, "gang placed");
                self.reply(request, ClientReply::GangCreated { gang, nodes });
            }
            GangDecision::Queued => {
                tracing::debug!(%gang, "gang waits for capacity");
                self.autoscale_soon(now);
                self.gangs.insert(
                    gang,
                    GangEntry {
                        create: Some(request),
                        ..entry
                    },
                );
                self.set_wait(request, Wait::Gang(gang));
            }
            GangDecision::Rejected(e) => self.fail(request, rejection(e)),
        }
    }

    /// A client asked to remove a gang.
    pub(super) fn remove_gang_request(&mut self, now: Instant, request: RequestId, gang: GangId) {
        if !self.gangs.contains_key(&gang) {
            self.fail(request, rejection(PlacementError::UnknownGang(gang)));
            return;
        }
        self.remove_gang(now, gang);
        self.reply(request, ClientReply::GangRemoved);
    }

    /// Removes a gang: its unanswered creation fails, what waits in its bundles fails, and
    /// the work running in them is stopped (task leases closed and answered as taken back,
    /// actors stopped, jobs cancelled); each bundle's resources return with its last lease.
    pub(super) fn remove_gang(&mut self, now: Instant, gang: GangId) {
        let Some(entry) = self.gangs.remove(&gang) else {
            return;
        };
        if let Some((_, at)) = entry.stranded {
            self.timers.remove(&(at, Timer::GangStranded(gang)));
        }
        if let Some(create) = entry.create {
            self.fail(
                create,
                RemoteError::new(
                    ErrorKind::Unknown,
                    format!("{gang} was removed before it was placed"),
                ),
            );
        }
        let Some(removed) = self.sched.remove_gang(gang) else {
            return;
        };
        tracing::info!(%gang, withdrawn = removed.withdrawn.len(), running = removed.running.len(), "gang removed");
        for lease in removed.withdrawn.into_iter().chain(removed.running) {
            match self.work.get_mut(&lease) {
                Some(Work::Lease(_)) => self.end_lease(now, lease, LeaseEnd::GangRemoved(gang)),
                Some(Work::Job(job)) => {
                    let (request, command) = (job.request.take(), job.command);
                    if let Some(request) = request {
                        self.fail(request, gang_removed(gang));
                    }
                    match command {
                        Some(command) => self.out.push(crate::io::Effect::Cancel { command }),
                        None => {
                            self.forget_stranded(lease);
                            self.work.remove(&lease);
                        }
                    }
                }
                Some(Work::Actor { actor, .. }) => {
                    let actor = *actor;
                    self.kill_actor(now, actor, None);
                }
                Some(Work::Stray) | None => {}
            }
        }
        self.place_queued(now);
    }

    /// A client connection closed: the gangs it created go.
    pub(super) fn remove_gangs_of(&mut self, now: Instant, owner: Owner) {
        let owned: Vec<GangId> = self
            .gangs
            .iter()
            .filter(|(_, g)| g.owner == owner)
            .map(|(id, _)| *id)
            .collect();
        for gang in owned {
            self.remove_gang(now, gang);
        }
    }

    /// After a pass over the queue: answers the creation of each gang now placed whole.
    pub(super) fn gangs_placed(&mut self) {
        for gang in self.sched.take_placed_gangs() {
            let Some(entry) = self.gangs.get_mut(&gang) else {
                continue;
            };
            let stranded = entry.stranded.take();
            let create = entry.create.take();
            if let Some((_, at)) = stranded {
                self.timers.remove(&(at, Timer::GangStranded(gang)));
            }
            let nodes = self
                .sched
                .gang(gang)
                .map(|v| v.bundles.iter().filter_map(|b| b.node).collect())
                .unwrap_or_default();
            tracing::debug!(%gang, ?nodes, "gang placed");
            if let Some(request) = create {
                self.reply(request, ClientReply::GangCreated { gang, nodes });
            }
        }
    }

    /// After nodes left or stopped taking work: each gang still waiting to be created that
    /// no set of live nodes could hold any more fails at its pending timeout, unless a node
    /// that fits joins first.
    pub(super) fn strand_gangs(&mut self, now: Instant) {
        let waiting: Vec<GangId> = self
            .gangs
            .iter()
            .filter(|(_, g)| g.create.is_some() && g.stranded.is_none())
            .map(|(id, _)| *id)
            .collect();
        for gang in waiting {
            let Some(reason) = self.sched.gang_never_fits(gang) else {
                continue;
            };
            let timeout = self.gangs[&gang]
                .pending_timeout
                .unwrap_or(self.config.pending_timeout);
            let at = now + timeout;
            tracing::warn!(%gang, ?timeout, "no set of live nodes can hold it any more: {reason}");
            self.arm(at, Timer::GangStranded(gang));
            if let Some(g) = self.gangs.get_mut(&gang) {
                g.stranded = Some((reason, at));
            }
        }
    }

    /// A node joined: a stranded gang that some set of nodes could hold again waits for
    /// capacity again.
    pub(super) fn unstrand_gangs(&mut self) {
        let stranded: Vec<(GangId, Instant)> = self
            .gangs
            .iter()
            .filter_map(|(id, g)| Some((*id, g.stranded.as_ref()?.1)))
            .collect();
        for (gang, at) in stranded {
            if self.sched.gang_never_fits(gang).is_none() {
                tracing::info!(%gang, "a node that can hold it joined");
                self.timers.remove(&(at, Timer::GangStranded(gang)));
                if let Some(g) = self.gangs.get_mut(&gang) {
                    g.stranded = None;
                }
            }
        }
    }

    /// A stranded gang's pending timeout passed: it fails with its reason.
    pub(super) fn gang_stranded_timed_out(&mut self, now: Instant, gang: GangId) {
        let Some(entry) = self.gangs.get_mut(&gang) else {
            return;
        };
        let Some((reason, _)) = entry.stranded.take() else {
            return;
        };
        let create = entry.create.take();
        if let Some(request) = create {
            let e = rejection(reason);
            self.fail(
                request,
                RemoteError::new(e.kind, format!("{gang} waited too long: {}", e.message)),
            );
        }
        self.remove_gang(now, gang);
    }

    /// Why a gang waits, and in how long it fails, for `ember status`.
    pub(super) fn gang_wait(&self, now: Instant, gang: GangId) -> (Option<String>, Option<u64>) {
        match self.gangs.get(&gang).and_then(|g| g.stranded.as_ref()) {
            Some((reason, at)) => (
                Some(format!("infeasible: {reason}")),
                Some(at.saturating_duration_since(now).as_millis() as u64),
            ),
            None => (self.sched.gang_waits_for(gang), None),
        }
    }
}
