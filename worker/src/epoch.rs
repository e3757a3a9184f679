//! Fencing by head life. Every command a head sends carries its epoch (its life's number); a
//! worker refuses a command of an older life than the one it joined under, and an executor one
//! of an older life than the newest it has been sent. So a command that a head sent before it
//! restarted, still on its way when the worker re-joined the new head, never takes effect.

use std::sync::atomic::{AtomicU64, Ordering};

use ember_core::proto::{ErrorKind, RemoteError};

/// Refuses a command, or a head's terms, from a head of an older life (`sent`) than `newest`,
/// the life this process serves: a stale head, or a stream of an earlier life.
pub(crate) fn check_epoch(newest: u64, sent: u64) -> Result<(), RemoteError> {
    if sent < newest {
        return Err(RemoteError::new(
            ErrorKind::Unauthorized,
            format!("head life {sent} is older than life {newest}, which this process serves"),
        ));
    }
    Ok(())
}

/// The newest head life an executor has been sent a command of.
#[derive(Debug, Default)]
pub(crate) struct EpochFence {
    newest: AtomicU64,
}

impl EpochFence {
    /// Admits a command of head life `sent` unless a newer life's command came first; an
    /// admitted newer life becomes the newest.
    pub(crate) fn admit(&self, sent: u64) -> Result<(), RemoteError> {
        let before = self.newest.fetch_max(sent, Ordering::SeqCst);
        check_epoch(before, sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_of_an_older_head_life_are_refused() {
        assert!(check_epoch(3, 3).is_ok(), "the life joined under");
        assert!(check_epoch(3, 4).is_ok(), "a newer life");
        let refused = check_epoch(3, 2).expect_err("an older life");
        assert_eq!(refused.kind, ErrorKind::Unauthorized);
        assert!(refused.message.contains("life 2"), "{}", refused.message);
    }

    #[test]
    fn an_executor_refuses_a_life_once_a_newer_one_spoke() {
        let fence = EpochFence::default();
        assert!(fence.admit(1).is_ok(), "the first life");
        assert!(fence.admit(1).is_ok(), "the same life again");
        assert!(fence.admit(2).is_ok(), "the head restarted");
        let refused = fence
            .admit(1)
            .expect_err("a command of the first life, late");
        assert!(refused.message.contains("life 1"), "{}", refused.message);
        assert!(fence.admit(2).is_ok(), "the newest life still speaks");
    }
}
