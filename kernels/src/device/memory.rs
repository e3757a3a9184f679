//! Per-handle accounting of device memory against an optional limit.

use crate::KernelError;

/// Bytes a device handle holds, and the most it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MemoryLedger {
    in_use: u64,
    limit: Option<u64>,
}

impl MemoryLedger {
    pub(crate) fn in_use(&self) -> u64 {
        self.in_use
    }

    pub(crate) fn limit(&self) -> Option<u64> {
        self.limit
    }

    pub(crate) fn set_limit(&mut self, limit: Option<u64>) {
        self.limit = limit;
    }

    /// Counts `bytes` as held, or refuses with [`KernelError::MemoryLimit`] and counts nothing.
    pub(crate) fn reserve(&mut self, bytes: u64) -> Result<(), KernelError> {
        let after = self.in_use.checked_add(bytes);
        match (after, self.limit) {
            (Some(after), Some(limit)) if after <= limit => self.in_use = after,
            (Some(after), None) => self.in_use = after,
            _ => {
                return Err(KernelError::MemoryLimit {
                    requested: bytes,
                    in_use: self.in_use,
                    limit: self.limit.unwrap_or(u64::MAX),
                })
            }
        }
        Ok(())
    }

    /// Returns `bytes` reserved before.
    pub(crate) fn release(&mut self, bytes: u64) {
        self.in_use = self.in_use.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_up_to_the_limit_then_refuse() {
        let mut ledger = MemoryLedger::default();
        ledger.set_limit(Some(100));
        ledger.reserve(60).unwrap();
        ledger.reserve(40).unwrap();
        assert_eq!(
            ledger.reserve(1),
            Err(KernelError::MemoryLimit {
                requested: 1,
                in_use: 100,
                limit: 100
            })
        );
        assert_eq!(ledger.in_use(), 100);
        ledger.release(60);
        ledger.reserve(50).unwrap();
        assert_eq!(ledger.in_use(), 90);
    }

    #[test]
    fn no_limit_still_refuses_overflow() {
        let mut ledger = MemoryLedger::default();
        ledger.reserve(u64::MAX).unwrap();
        assert!(ledger.reserve(1).is_err());
    }
}
