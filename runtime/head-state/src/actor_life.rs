//! The life of one actor as the head sees it: starting some incarnation, alive in it, or dead
//! for good. Every transition is a plain method, so the restart rules are tested alone.
//!
//! `L` is what the head keeps of a live incarnation (its lease and endpoints).

use ember_core::proto::RestartPolicy;

/// Where an actor is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase<L> {
    /// Taking calls.
    Alive(L),
    /// Its current incarnation is being placed and started: the first, or the next after a
    /// loss or a move (restored from its newest checkpoint).
    Starting,
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
pub struct ActorLife<L> {
    policy: RestartPolicy,
    incarnation: u32,
    restarts: u32,
    phase: Phase<L>,
}

impl<L> ActorLife<L> {
    /// An actor being created: incarnation 1, starting.
    pub fn new(policy: RestartPolicy) -> Self {
        ActorLife {
            policy,
            incarnation: 1,
            restarts: 0,
            phase: Phase::Starting,
        }
    }

    /// An actor read back from the journal after the head restarted: starting its current
    /// incarnation, or dead with `dead`.
    pub fn restored(
        policy: RestartPolicy,
        incarnation: u32,
        restarts: u32,
        dead: Option<String>,
    ) -> Self {
        ActorLife {
            policy,
            incarnation,
            restarts,
            phase: dead.map_or(Phase::Starting, Phase::Dead),
        }
    }

    /// A starting actor starts again under a new incarnation number (the head restarted while
    /// it was being started, so the one being built may exist): not counted as a restart.
    /// `None` unless it is starting.
    pub fn resume(&mut self) -> Option<u32> {
        if !matches!(self.phase, Phase::Starting) {
            return None;
        }
        self.incarnation += 1;
        Some(self.incarnation)
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
    pub fn phase(&self) -> &Phase<L> {
        &self.phase
    }

    /// Its restart policy.
    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }

    /// What is kept of the live incarnation.
    pub fn live(&self) -> Option<&L> {
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
            self.phase = Phase::Starting;
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
        self.phase = Phase::Starting;
        Some(self.incarnation)
    }

    /// Incarnation `incarnation` is up. False (and nothing changes) when that incarnation was
    /// replaced or the actor died meanwhile: the caller must stop it.
    pub fn started(&mut self, incarnation: u32, live: L) -> bool {
        if incarnation != self.incarnation || !matches!(self.phase, Phase::Starting) {
            return false;
        }
        self.phase = Phase::Alive(live);
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

    /// The live incarnation's node, standing in for what the head keeps.
    type Life = ActorLife<u64>;

    fn policy(max_restarts: i32) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            max_task_retries: 0,
        }
    }

    fn up(p: RestartPolicy, node: u64) -> Life {
        let mut life = Life::new(p);
        assert!(life.started(1, node));
        life
    }

    #[test]
    fn a_new_actor_starts_as_incarnation_one() {
        let mut life = Life::new(policy(0));
        assert_eq!(life.incarnation(), 1);
        assert_eq!(life.phase(), &Phase::Starting);
        assert!(!life.started(2, 1), "only the current incarnation starts");
        assert!(life.started(1, 7));
        assert_eq!(life.live(), Some(&7));
    }

    #[test]
    fn without_restarts_a_loss_is_death_with_the_reason() {
        let mut life = up(policy(0), 1);
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
        let mut life = up(p, 1);
        assert_eq!(life.lost(1, "x"), Loss::Restart { incarnation: 2 });
        assert!(life.live().is_none());
        assert!(life.started(2, 2));
        assert_eq!(life.live(), Some(&2));
        assert_eq!(life.lost(2, "x"), Loss::Restart { incarnation: 3 });
        // The worker chosen for incarnation 3 dies while building it: another restart.
        assert_eq!(life.lost(3, "x"), Loss::GiveUp);
        assert_eq!(life.restarts(), 2);
        assert!(matches!(life.phase(), Phase::Dead(why) if why.contains("all 2")));
    }

    #[test]
    fn losses_of_replaced_incarnations_are_stale() {
        let p = policy(-1);
        let mut life = up(p, 1);
        assert_eq!(life.lost(1, "x"), Loss::Restart { incarnation: 2 });
        // The same death reported twice (the worker's event and the head's own detection).
        assert_eq!(life.lost(1, "x"), Loss::Stale);
        assert!(life.started(2, 3));
        assert_eq!(life.lost(1, "x"), Loss::Stale);
        assert_eq!(life.incarnation(), 2);
    }

    #[test]
    fn unlimited_restarts_never_give_up() {
        let p = policy(-1);
        let mut life = up(p, 1);
        for i in 1..1000u32 {
            assert_eq!(life.lost(i, "x"), Loss::Restart { incarnation: i + 1 });
            assert!(life.started(i + 1, 1));
        }
        assert_eq!(life.restarts(), 999);
    }

    #[test]
    fn a_start_that_lost_the_race_is_refused() {
        let p = policy(1);
        let mut life = up(p, 1);
        assert_eq!(life.lost(1, "x"), Loss::Restart { incarnation: 2 });
        life.die("stopped by its owner".into());
        assert!(!life.started(2, 2), "a dead actor does not come back");
        let mut life = up(p, 1);
        assert!(
            !life.started(1, 1),
            "an alive incarnation is not started twice"
        );
    }

    #[test]
    fn a_move_is_not_a_restart() {
        let p = policy(0);
        let mut life = up(p, 1);
        assert_eq!(life.moving(), Some(2));
        assert_eq!(life.moving(), None, "already moving");
        assert!(life.started(2, 2));
        assert_eq!(life.restarts(), 0);
        assert_eq!(life.lost(2, "x"), Loss::GiveUp, "moves spend no restarts");
    }
}
