//! What travels for fault recovery: restart and checkpoint policies, task retries, and the
//! checkpoints an actor's process streams to the head.

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::ActorId;

/// The method name that asks an actor for a checkpoint now; answered with the archived `u64`
/// sequence number of the checkpoint once the head has recorded it.
pub const CHECKPOINT_METHOD: &str = "__ember_checkpoint";

/// How often an actor comes back after losing its process, and what happens to calls that
/// were in flight when it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// How many times the actor is restarted: 0 (the default) never, -1 without limit.
    pub max_restarts: i32,
    /// How many times a call in flight when the actor's process died is sent again to the
    /// restarted actor: 0 (the default) never, -1 without limit.
    pub max_task_retries: i32,
}

impl RestartPolicy {
    /// True when `done` restarts still leave room for one more.
    pub fn may_restart(&self, done: u32) -> bool {
        allows(self.max_restarts, done)
    }

    /// True when a call retried `done` times may be retried once more.
    pub fn may_retry_call(&self, done: u32) -> bool {
        allows(self.max_task_retries, done)
    }
}

/// True when a limit (-1 for none) allows one more after `done`.
fn allows(limit: i32, done: u32) -> bool {
    limit < 0 || i64::from(done) < i64::from(limit)
}

/// When an actor saves its state. Any mix may be set; all zero means only on demand (from
/// its handle) and on a drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CheckpointPolicy {
    /// The actor type implements `ember::Checkpoint`; without it no checkpoint can be made.
    pub enabled: bool,
    /// After every this many calls (0: not by count). With 1, a call's reply is sent only once
    /// the checkpoint holding its effect is recorded, so no acknowledged call is ever lost.
    pub every_calls: u32,
    /// Every this many milliseconds when calls happened since the last one (0: not by time).
    pub every_ms: u64,
}

/// How a task is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct TaskRetry {
    /// How many times it runs again after a system failure (its worker died): 3 by default.
    pub max_retries: u32,
    /// Whether an error from the task's own code is retried too (not by default).
    pub retry_user_errors: bool,
}

impl Default for TaskRetry {
    fn default() -> Self {
        TaskRetry {
            max_retries: 3,
            retry_user_errors: false,
        }
    }
}

/// One checkpoint of an actor, sent by the process hosting it to the head, which records it
/// durably before answering [`super::ClientReply::CheckpointSaved`].
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct CheckpointSave {
    /// The actor.
    pub actor: ActorId,
    /// The incarnation saving it: a save from any but the current one is refused, so a process
    /// the head gave up on can never overwrite its successor's state.
    pub incarnation: u32,
    /// Increases with every checkpoint of the actor, across incarnations.
    pub seq: u64,
    /// The opaque image: the actor's state and what the executor needs to resume it.
    pub image: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_and_minus_one_is_unlimited() {
        let none = RestartPolicy::default();
        assert!(!none.may_restart(0));
        assert!(!none.may_retry_call(0));
        let two = RestartPolicy {
            max_restarts: 2,
            max_task_retries: 1,
        };
        assert!(two.may_restart(0) && two.may_restart(1) && !two.may_restart(2));
        assert!(two.may_retry_call(0) && !two.may_retry_call(1));
        let forever = RestartPolicy {
            max_restarts: -1,
            max_task_retries: -1,
        };
        assert!(forever.may_restart(u32::MAX) && forever.may_retry_call(u32::MAX));
    }
}
