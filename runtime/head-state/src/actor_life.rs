//! The life of one actor as the head sees it, as a pure state machine: alive at some
//! incarnation, restarting after a loss, or dead for good. Every transition is a plain method,
//! so the restart rules are tested without processes or sockets.

use ember_core::proto::{ActorLocation, RestartPolicy};

/// Where an actor is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Taking calls at this location.
    Alive(ActorLocation),
    /// Its process is gone (or it is moving): it is being placed and restored.
    Restarting,
    /// Gone for good, with the reason callers are told.
    Dead(String),
}

/// What a loss of the actor's process leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// Restart it as this incarnation.
    Restart {
        /// The new incarnation.
        incarnation: u32,
    },
    /// No restarts are left: the actor is dead.
    GiveUp,
    /// The loss is of an incarnation already replaced or an actor already dead: nothing to do.
    Stale,
}

/// One actor's restart bookkeeping.
#[derive(Debug, Clone)]
pub struct ActorLife {
    policy: RestartPolicy,
    incarnation: u32,
    restarts: u32,
    phase: Phase,
}

impl ActorLife {
    /// An actor just created at `location` (incarnation 1).
    pub fn new(policy: RestartPolicy, location: ActorLocation) -> Self {
        ActorLife {
            policy,
            incarnation: location.incarnation,
            restarts: 0,
            phase: Phase::Alive(location),
        }
    }

    /// The current incarnation: the one alive, or the one being started.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// How many times it was restarted after a loss (moves are not counted).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Its phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The location of the live incarnation.
    pub fn location(&self) -> Option<&ActorLocation> {
        match &self.phase {
            Phase::Alive(l) => Some(l),
            _ => None,
        }
    }

    /// Incarnation `incarnation` lost its process (its worker died, or the process ended).
    pub fn lost(&mut self, incarnation: u32, reason: &str) -> Loss {
        if incarnation != self.incarnation || matches!(self.phase, Phase::Dead(_)) {
            return Loss::Stale;
        }
        if self.policy.may_restart(self.restarts) {
            self.restarts += 1;
            self.incarnation += 1;
            self.phase = Phase::Restarting;
            Loss::Restart {
                incarnation: self.incarnation,
            }
        } else {
            let limit = self.policy.max_restarts;
            self.phase = Phase::Dead(if self.restarts == 0 && limit == 0 {
                format!("{reason}, and the actor has no restarts (max_restarts = 0)")
            } else {
                format!("{reason}, and the actor used all {limit} of its restarts")
            });
            Loss::GiveUp
        }
    }

    /// The live incarnation is to move (a drain): the next incarnation is started from its
    /// final checkpoint. Not counted as a restart. `None` unless it is alive.
    pub fn moving(&mut self) -> Option<u32> {
        if !matches!(self.phase, Phase::Alive(_)) {
            return None;
        }
        self.incarnation += 1;
        self.phase = Phase::Restarting;
        Some(self.incarnation)
    }

    /// Incarnation `incarnation` is up at `location`. False (and nothing changes) when that
    /// incarnation was replaced or the actor died meanwhile: the caller must stop it.
    pub fn started(&mut self, location: ActorLocation) -> bool {
        if location.incarnation != self.incarnation || !matches!(self.phase, Phase::Restarting) {
            return false;
        }
        self.phase = Phase::Alive(location);
        true
    }

    /// It cannot come back (its restore failed, or it was stopped): dead with `reason`.
    pub fn die(&mut self, reason: String) {
        self.phase = Phase::Dead(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::ids::{ActorId, NodeId};
    use ember_core::proto::ActorEndpoints;
    use ember_core::resources::Allocation;
    use ember_core::security::Fingerprint;

    fn at(incarnation: u32, node: u64, policy: RestartPolicy) -> ActorLocation {
        ActorLocation {
            actor: ActorId(1),
            incarnation,
            node: NodeId(node),
            endpoints: ActorEndpoints {
                peer_addr: "127.0.0.1:1".into(),
                peer_fingerprint: Fingerprint([0; 32]),
                host: "h".into(),
                local_socket: "/s".into(),
                mesh_socket: "/m".into(),
            },
            allocation: Allocation::default(),
            restart: policy,
        }
    }

    fn policy(max_restarts: i32) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            max_task_retries: 0,
        }
    }

    #[test]
    fn without_restarts_a_loss_is_death_with_the_reason() {
        let mut life = ActorLife::new(policy(0), at(1, 1, policy(0)));
        assert_eq!(life.lost(1, "worker node-1 died"), Loss::GiveUp);
        match life.phase() {
            Phase::Dead(why) => {
                assert!(why.contains("worker node-1 died"), "{why}");
                assert!(why.contains("max_restarts = 0"), "{why}");
            }
            other => panic!("expected dead, got {other:?}"),
        }
        assert_eq!(life.lost(1, "again"), Loss::Stale);
    }

    #[test]
    fn restarts_are_counted_until_the_limit() {
        let p = policy(2);
        let mut life = ActorLife::new(p, at(1, 1, p));
        assert_eq!(life.lost(1, "x"), Loss::Restart { incarnation: 2 });
        assert!(life.location().is_none());
        assert!(life.started(at(2, 2, p)));
        assert_eq!(life.location().map(|l| l.node), Some(NodeId(2)));
        assert_eq!(life.lost(2, "x"), Loss::Restart { incarnation: 3 });
        // The worker chosen for incarnation 3 dies while building it: another restart.
        assert_eq!(life.lost(3, "x"), Loss::GiveUp);
        assert_eq!(life.restarts(), 2);
        assert!(matches!(life.phase(), Phase::Dead(why) if why.contains("all 2")));
    }

    #[test]
    fn losses_of_replaced_incarnations_are_stale() {
        let p = policy(-1);
        let mut life = ActorLife::new(p, at(1, 1, p));
        assert_eq!(life.lost(1, "x"), Loss::Restart { incarnation: 2 });
        // The same death reported twice (the worker's event and the head's own detection).
        assert_eq!(life.lost(1, "x"), Loss::Stale);
        assert!(life.started(at(2, 3, p)));
        assert_eq!(life.lost(1, "x"), Loss::Stale);
        assert_eq!(life.incarnation(), 2);
    }

    #[test]
    fn unlimited_restarts_never_give_up() {
        let p = policy(-1);
        let mut life = ActorLife::new(p, at(1, 1, p));
        for i in 1..1000u32 {
            assert_eq!(life.lost(i, "x"), Loss::Restart { incarnation: i + 1 });
            assert!(life.started(at(i + 1, 1, p)));
        }
        assert_eq!(life.restarts(), 999);
    }

    #[test]
    fn a_start_that_lost_the_race_is_refused() {
        let p = policy(1);
        let mut life = ActorLife::new(p, at(1, 1, p));
        assert_eq!(life.lost(1, "x"), Loss::Restart { incarnation: 2 });
        life.die("stopped by its owner".into());
        assert!(
            !life.started(at(2, 2, p)),
            "a dead actor does not come back"
        );
        let mut life = ActorLife::new(p, at(1, 1, p));
        assert!(
            !life.started(at(1, 1, p)),
            "an alive incarnation is not started twice"
        );
    }

    #[test]
    fn a_move_is_not_a_restart() {
        let p = policy(0);
        let mut life = ActorLife::new(p, at(1, 1, p));
        assert_eq!(life.moving(), Some(2));
        assert_eq!(life.moving(), None, "already moving");
        assert!(life.started(at(2, 2, p)));
        assert_eq!(life.restarts(), 0);
        assert_eq!(life.lost(2, "x"), Loss::GiveUp, "moves spend no restarts");
    }
}
