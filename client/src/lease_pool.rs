//! The client's policy for task leases of one kind (one task function, one set of needs),
//! with no I/O and no clock of its own: which lease a task runs on, when to ask the head for
//! another, and when to give one back. `leases.rs` carries its steps out.
//!
//! A lease runs one task at a time. A task takes an idle lease when there is one; otherwise it
//! waits, and the pool asks for one more lease per waiting task, up to [`MAX_LEASES`] held or
//! asked for. A lease freed by a task goes to the oldest waiting task, or waits idle until it is
//! given back after [`LINGER`] unused.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The most leases one pool holds or asks for at once: the most tasks of one kind a client
/// runs at the same time.
pub(crate) const MAX_LEASES: usize = 64;

/// How long an idle lease is kept for the next task before it is given back.
pub(crate) const LINGER: Duration = Duration::from_millis(100);

/// What the pool asks its caller to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<L> {
    /// Run the waiting task `waiter` on `lease`.
    Run {
        /// The task waiting for a lease.
        waiter: u64,
        /// Its lease.
        lease: L,
    },
    /// Tell the waiting task `waiter` that the head refused the lease it waited for.
    Fail {
        /// The task.
        waiter: u64,
    },
    /// Ask the head for one more lease.
    Request,
}

/// The leases of one kind and the tasks waiting for one.
#[derive(Debug)]
pub(crate) struct LeasePool<L> {
    /// Leases with no task, each with the time it was freed; the most recently freed last.
    idle: Vec<(L, Instant)>,
    /// Leases running a task.
    busy: usize,
    /// Leases asked for and not yet granted or refused.
    requested: usize,
    /// Tasks waiting for a lease, oldest first.
    waiting: VecDeque<u64>,
}

impl<L> Default for LeasePool<L> {
    fn default() -> Self {
        LeasePool {
            idle: Vec::new(),
            busy: 0,
            requested: 0,
            waiting: VecDeque::new(),
        }
    }
}

impl<L> LeasePool<L> {
    /// A task wants a lease: the most recently freed idle one, or it waits.
    pub(crate) fn want(&mut self, waiter: u64) -> Vec<Step<L>> {
        if let Some((lease, _)) = self.idle.pop() {
            self.busy += 1;
            return vec![Step::Run { waiter, lease }];
        }
        self.waiting.push_back(waiter);
        self.top_up(Vec::new())
    }

    /// The head granted a lease asked for.
    pub(crate) fn granted(&mut self, lease: L, now: Instant) -> Vec<Step<L>> {
        self.requested -= 1;
        self.free(lease, now, Vec::new())
    }

    /// The head refused a lease asked for: the oldest waiting task hears of it.
    pub(crate) fn refused(&mut self) -> Vec<Step<L>> {
        self.requested -= 1;
        let mut steps = Vec::new();
        if let Some(waiter) = self.waiting.pop_front() {
            steps.push(Step::Fail { waiter });
        }
        self.top_up(steps)
    }

    /// A task is done with its lease. A lease that cannot take more tasks (its process went
    /// away, it was taken back, or it was for one task only) is dropped by the caller.
    pub(crate) fn finished(&mut self, lease: L, reusable: bool, now: Instant) -> Vec<Step<L>> {
        self.busy -= 1;
        if reusable {
            self.free(lease, now, Vec::new())
        } else {
            drop(lease);
            self.top_up(Vec::new())
        }
    }

    /// Takes out the leases idle for `linger` or longer, to be given back.
    pub(crate) fn expire(&mut self, now: Instant, linger: Duration) -> Vec<L> {
        let (old, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.idle)
            .into_iter()
            .partition(|(_, freed)| now.saturating_duration_since(*freed) >= linger);
        self.idle = kept;
        old.into_iter().map(|(lease, _)| lease).collect()
    }

    /// Takes out every idle lease, to be given back now.
    pub(crate) fn take_idle(&mut self) -> Vec<L> {
        std::mem::take(&mut self.idle)
            .into_iter()
            .map(|(lease, _)| lease)
            .collect()
    }

    /// True when the pool holds nothing, asks for nothing, and no task waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.idle.is_empty() && self.busy == 0 && self.requested == 0 && self.waiting.is_empty()
    }

    /// A lease with no task: to the oldest waiting task, else idle.
    fn free(&mut self, lease: L, now: Instant, mut steps: Vec<Step<L>>) -> Vec<Step<L>> {
        match self.waiting.pop_front() {
            Some(waiter) => {
                self.busy += 1;
                steps.push(Step::Run { waiter, lease });
            }
            None => self.idle.push((lease, now)),
        }
        steps
    }

    /// Asks for one lease per waiting task not yet covered by a request, within the limit.
    fn top_up(&mut self, mut steps: Vec<Step<L>>) -> Vec<Step<L>> {
        while self.requested < self.waiting.len()
            && self.busy + self.idle.len() + self.requested < MAX_LEASES
        {
            self.requested += 1;
            steps.push(Step::Request);
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(steps: &[Step<u32>]) -> usize {
        steps.iter().filter(|s| **s == Step::Request).count()
    }

    #[test]
    fn a_sequence_of_tasks_reuses_one_lease() {
        let t0 = Instant::now();
        let mut pool = LeasePool::default();
        assert_eq!(pool.want(1), vec![Step::Request]);
        assert_eq!(
            pool.granted(7, t0),
            vec![Step::Run {
                waiter: 1,
                lease: 7
            }]
        );
        for waiter in 2..100 {
            assert!(pool.finished(7, true, t0).is_empty());
            assert_eq!(pool.want(waiter), vec![Step::Run { waiter, lease: 7 }]);
        }
        assert!(pool.finished(7, true, t0).is_empty());
        assert!(pool.expire(t0 + LINGER / 2, LINGER).is_empty());
        assert_eq!(pool.expire(t0 + LINGER, LINGER), vec![7]);
        assert!(pool.is_empty());
    }

    #[test]
    fn concurrent_tasks_ask_for_one_lease_each_up_to_the_limit() {
        let t0 = Instant::now();
        let mut pool = LeasePool::default();
        let asked: usize = (0..200).map(|w| requests(&pool.want(w))).sum();
        assert_eq!(asked, MAX_LEASES);
        // Each grant runs the oldest waiting task; a freed lease goes to the next one.
        assert_eq!(
            pool.granted(1, t0),
            vec![Step::Run {
                waiter: 0,
                lease: 1
            }]
        );
        assert_eq!(
            pool.granted(2, t0),
            vec![Step::Run {
                waiter: 1,
                lease: 2
            }]
        );
        assert_eq!(
            pool.finished(1, true, t0),
            vec![Step::Run {
                waiter: 2,
                lease: 1
            }]
        );
        // A lease lost with its process is replaced by a request, within the limit.
        assert_eq!(requests(&pool.finished(2, false, t0)), 1);
    }

    #[test]
    fn a_refusal_fails_the_oldest_waiting_task_and_asks_again_for_the_others() {
        let mut pool = LeasePool::<u32>::default();
        for w in 0..3 {
            pool.want(w);
        }
        let steps = pool.refused();
        assert_eq!(steps, vec![Step::Fail { waiter: 0 }]);
        // Two tasks wait, and two requests are still out.
        assert!(pool.refused().contains(&Step::Fail { waiter: 1 }));
        assert_eq!(pool.refused(), vec![Step::Fail { waiter: 2 }]);
        assert!(pool.is_empty());
    }

    #[test]
    fn a_one_task_lease_is_never_reused() {
        let t0 = Instant::now();
        let mut pool = LeasePool::default();
        pool.want(1);
        pool.granted(5, t0);
        assert!(pool.finished(5, false, t0).is_empty());
        assert!(pool.is_empty());
        assert_eq!(pool.want(2), vec![Step::Request]);
    }

    #[test]
    fn idle_leases_can_be_taken_back_at_once() {
        let t0 = Instant::now();
        let mut pool = LeasePool::default();
        pool.want(1);
        pool.want(2);
        pool.granted(1, t0);
        pool.granted(2, t0);
        pool.finished(1, true, t0);
        pool.finished(2, true, t0);
        let mut back = pool.take_idle();
        back.sort();
        assert_eq!(back, vec![1, 2]);
        assert!(pool.is_empty());
    }
}
