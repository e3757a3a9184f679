//! The client's policy for task leases of one kind (one task function, one set of needs),
//! with no I/O and no clock of its own: which lease a task runs on, when to ask the head for
//! another, and when to give one back. `leases.rs` carries its steps out.
//!
//! A lease's executor runs its tasks one at a time, in the order they arrive. A task takes the
//! lease with the fewest tasks in flight that still has room; otherwise it waits, and the pool
//! asks for one more lease per waiting task, up to [`MAX_LEASES`] held or asked for. A lease
//! has room for one task, or for [`PIPELINE_DEPTH`] once tasks of this kind are known to be
//! short (a moving average of their run time under [`SHORT_TASK`]): the executor then finds
//! the next task already waiting when one ends, and no task waits behind the others for more
//! than about `PIPELINE_DEPTH × SHORT_TASK`. A lease freed of its last task waits idle until it
//! is given back after [`LINGER`] unused. A pool whose leases are for one task each (spread
//! tasks) never pipelines and never reuses a lease.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The most leases one pool holds or asks for at once.
pub(crate) const MAX_LEASES: usize = 64;

/// How long an idle lease is kept for the next task before it is given back.
pub(crate) const LINGER: Duration = Duration::from_millis(100);

/// The most tasks in flight on one lease, once tasks of its kind are short.
pub(crate) const PIPELINE_DEPTH: usize = 16;

/// Tasks whose run time averages under this are short: their leases are pipelined.
pub(crate) const SHORT_TASK: Duration = Duration::from_millis(1);

/// Which of a pool's leases: given with each lease, and handed back when its task ends.
pub(crate) type SlotId = u64;

/// What the pool asks its caller to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<L> {
    /// Run the waiting task `waiter` on `lease`.
    Run {
        /// The task waiting for a lease.
        waiter: u64,
        /// Which lease, for [`LeasePool::finished`].
        slot: SlotId,
        /// The lease.
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

/// A lease the pool holds.
#[derive(Debug)]
struct Slot<L> {
    id: SlotId,
    lease: L,
    /// Tasks sent on it and not yet finished.
    in_flight: usize,
    /// With tasks in flight: when the executor began the oldest of them (when it was sent,
    /// or when the one before it finished). Idle: when its last task finished.
    since: Instant,
}

/// The leases of one kind and the tasks waiting for one.
#[derive(Debug)]
pub(crate) struct LeasePool<L> {
    /// False for leases that run one task each (spread tasks).
    reuse: bool,
    slots: Vec<Slot<L>>,
    next_slot: SlotId,
    /// Leases asked for and not yet granted or refused.
    requested: usize,
    /// Tasks waiting for a lease, oldest first.
    waiting: VecDeque<u64>,
    /// Moving average of how long a task of this kind keeps its lease's executor busy.
    run_time: Option<Duration>,
}

impl<L: Clone> LeasePool<L> {
    /// An empty pool; `reuse` is false when each lease runs one task only.
    pub(crate) fn new(reuse: bool) -> Self {
        LeasePool {
            reuse,
            slots: Vec::new(),
            next_slot: 0,
            requested: 0,
            waiting: VecDeque::new(),
            run_time: None,
        }
    }

    /// A task wants a lease: one with room, or it waits.
    pub(crate) fn want(&mut self, waiter: u64, now: Instant) -> Vec<Step<L>> {
        self.waiting.push_back(waiter);
        self.settle(now, Vec::new())
    }

    /// The head granted a lease asked for.
    pub(crate) fn granted(&mut self, lease: L, now: Instant) -> Vec<Step<L>> {
        self.requested -= 1;
        self.next_slot += 1;
        self.slots.push(Slot {
            id: self.next_slot,
            lease,
            in_flight: 0,
            since: now,
        });
        self.settle(now, Vec::new())
    }

    /// The head refused a lease asked for: the oldest waiting task hears of it.
    pub(crate) fn refused(&mut self, now: Instant) -> Vec<Step<L>> {
        self.requested -= 1;
        let mut steps = Vec::new();
        if let Some(waiter) = self.waiting.pop_front() {
            steps.push(Step::Fail { waiter });
        }
        self.settle(now, steps)
    }

    /// A task sent on lease `slot` is done. A lease that cannot take more tasks (its process
    /// went away, or it was taken back) is forgotten, and the tasks still in flight on it
    /// end on their own.
    pub(crate) fn finished(&mut self, slot: SlotId, reusable: bool, now: Instant) -> Vec<Step<L>> {
        if let Some(i) = self.slots.iter().position(|s| s.id == slot) {
            let s = &mut self.slots[i];
            let ran = now.saturating_duration_since(s.since);
            s.in_flight -= 1;
            s.since = now;
            if reusable && self.reuse {
                self.run_time = Some(match self.run_time {
                    None => ran,
                    Some(avg) => (avg * 7 + ran) / 8,
                });
            } else {
                self.slots.swap_remove(i);
            }
        }
        self.settle(now, Vec::new())
    }

    /// Takes out the leases idle for `linger` or longer, to be given back.
    pub(crate) fn expire(&mut self, now: Instant, linger: Duration) -> Vec<L> {
        self.take_where(|s| s.in_flight == 0 && now.saturating_duration_since(s.since) >= linger)
    }

    /// Takes out every idle lease, to be given back now.
    pub(crate) fn take_idle(&mut self) -> Vec<L> {
        self.take_where(|s| s.in_flight == 0)
    }

    /// True when the pool holds nothing, asks for nothing, and no task waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.requested == 0 && self.waiting.is_empty()
    }

    /// How many tasks one lease takes at once now.
    fn depth(&self) -> usize {
        match self.run_time {
            Some(avg) if self.reuse && avg < SHORT_TASK => PIPELINE_DEPTH,
            _ => 1,
        }
    }

    /// Sends waiting tasks, oldest first, to the leases with room (fewest in flight first;
    /// among idle ones, the most recently used, so the others expire), then asks for one
    /// lease per task still waiting and not yet covered by a request, within the limit.
    fn settle(&mut self, now: Instant, mut steps: Vec<Step<L>>) -> Vec<Step<L>> {
        let depth = self.depth();
        while !self.waiting.is_empty() {
            let Some(s) = self
                .slots
                .iter_mut()
                .filter(|s| s.in_flight < depth)
                .min_by_key(|s| (s.in_flight, std::cmp::Reverse(s.since)))
            else {
                break;
            };
            if s.in_flight == 0 {
                s.since = now;
            }
            s.in_flight += 1;
            let waiter = self.waiting.pop_front().expect("not empty");
            steps.push(Step::Run {
                waiter,
                slot: s.id,
                lease: s.lease.clone(),
            });
        }
        while self.requested < self.waiting.len() && self.slots.len() + self.requested < MAX_LEASES
        {
            self.requested += 1;
            steps.push(Step::Request);
        }
        steps
    }

    fn take_where(&mut self, take: impl Fn(&Slot<L>) -> bool) -> Vec<L> {
        let (taken, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.slots).into_iter().partition(take);
        self.slots = kept;
        taken.into_iter().map(|s| s.lease).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(steps: &[Step<u32>]) -> usize {
        steps.iter().filter(|s| **s == Step::Request).count()
    }

    /// The (waiter, lease) pairs the steps run.
    fn runs(steps: &[Step<u32>]) -> Vec<(u64, u32)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Run { waiter, lease, .. } => Some((*waiter, *lease)),
                _ => None,
            })
            .collect()
    }

    fn slot_of(steps: &[Step<u32>]) -> SlotId {
        match steps.iter().find(|s| matches!(s, Step::Run { .. })) {
            Some(Step::Run { slot, .. }) => *slot,
            _ => panic!("no task was run: {steps:?}"),
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_sequence_of_tasks_reuses_one_lease() {
        let t0 = Instant::now();
        let mut pool = LeasePool::new(true);
        assert_eq!(pool.want(1, t0), vec![Step::Request]);
        let granted = pool.granted(7, t0);
        assert_eq!(runs(&granted), vec![(1, 7)]);
        let slot = slot_of(&granted);
        for waiter in 2..100 {
            assert!(pool.finished(slot, true, t0).is_empty());
            assert_eq!(runs(&pool.want(waiter, t0)), vec![(waiter, 7)]);
        }
        assert!(pool.finished(slot, true, t0).is_empty());
        assert!(pool.expire(t0 + LINGER / 2, LINGER).is_empty());
        assert_eq!(pool.expire(t0 + LINGER, LINGER), vec![7]);
        assert!(pool.is_empty());
    }

    #[test]
    fn concurrent_tasks_ask_for_one_lease_each_up_to_the_limit() {
        let t0 = Instant::now();
        let mut pool = LeasePool::new(true);
        let asked: usize = (0..200).map(|w| requests(&pool.want(w, t0))).sum();
        assert_eq!(asked, MAX_LEASES);
        // Until tasks are known to be short, a lease takes one task, the oldest waiting.
        let first = pool.granted(1, t0);
        assert_eq!(runs(&first), vec![(0, 1)]);
        assert_eq!(runs(&pool.granted(2, t0)), vec![(1, 2)]);
        // A slow task frees its lease for the next one, and tasks stay one per lease.
        let freed = pool.finished(slot_of(&first), true, t0 + 50 * MS);
        assert_eq!(runs(&freed), vec![(2, 1)]);
        // A lease lost with its process is replaced by a request, within the limit.
        assert_eq!(requests(&pool.finished(slot_of(&freed), false, t0)), 1);
    }

    #[test]
    fn short_tasks_are_pipelined_up_to_the_depth() {
        let t0 = Instant::now();
        let mut pool = LeasePool::new(true);
        pool.want(0, t0);
        let slot = slot_of(&pool.granted(9, t0));
        // One short task teaches the pool that this kind is short.
        pool.finished(slot, true, t0 + MS / 10);
        let t1 = t0 + MS;
        let mut sent = 0;
        let mut asked = 0;
        for w in 1..=100 {
            let steps = pool.want(w, t1);
            sent += runs(&steps).len();
            asked += requests(&steps);
        }
        // The one lease takes PIPELINE_DEPTH tasks; one more lease is asked for each task
        // that waits beyond them, within the limit.
        assert_eq!(sent, PIPELINE_DEPTH);
        assert_eq!(asked, (100 - PIPELINE_DEPTH).min(MAX_LEASES - 1));
        // A second lease takes the next PIPELINE_DEPTH waiting tasks, oldest first.
        let second = pool.granted(10, t1);
        let expected: Vec<_> = (PIPELINE_DEPTH as u64 + 1..=2 * PIPELINE_DEPTH as u64)
            .map(|w| (w, 10))
            .collect();
        assert_eq!(runs(&second), expected);
        // One task ending makes room for one more.
        assert_eq!(runs(&pool.finished(slot, true, t1 + MS / 10)).len(), 1);
    }

    #[test]
    fn tasks_that_turn_long_stop_the_pipelining() {
        let t0 = Instant::now();
        let mut pool = LeasePool::new(true);
        pool.want(0, t0);
        let slot = slot_of(&pool.granted(3, t0));
        pool.finished(slot, true, t0 + MS / 10);
        for w in 1..=4 {
            pool.want(w, t0 + MS);
        }
        // Four tasks are in flight on the lease, and each runs for a second.
        let mut t = t0 + MS;
        for _ in 0..4 {
            t += Duration::from_secs(1);
            pool.finished(slot, true, t);
        }
        // The average is far above SHORT_TASK now: one task per lease again.
        let steps: Vec<_> = (5..10).flat_map(|w| pool.want(w, t)).collect();
        assert_eq!(runs(&steps), vec![(5, 3)]);
        assert_eq!(requests(&steps), 4);
    }

    #[test]
    fn a_task_runs_on_the_least_loaded_lease() {
        let t0 = Instant::now();
        let mut pool = LeasePool::new(true);
        pool.want(0, t0);
        pool.want(1, t0);
        let a = slot_of(&pool.granted(1, t0));
        pool.granted(2, t0);
        pool.finished(a, true, t0 + MS / 10);
        // Lease 1 is idle and lease 2 has one task: the next task goes to lease 1.
        assert_eq!(runs(&pool.want(2, t0 + MS)), vec![(2, 1)]);
        // One task each: the tie goes to the lease busy since last (lease 1)...
        assert_eq!(runs(&pool.want(3, t0 + MS)), vec![(3, 1)]);
        // ...and then lease 2, with one task against two.
        assert_eq!(runs(&pool.want(4, t0 + MS)), vec![(4, 2)]);
    }

    #[test]
    fn a_refusal_fails_the_oldest_waiting_task_and_asks_again_for_the_others() {
        let t0 = Instant::now();
        let mut pool = LeasePool::<u32>::new(true);
        for w in 0..3 {
            pool.want(w, t0);
        }
        let steps = pool.refused(t0);
        assert_eq!(steps, vec![Step::Fail { waiter: 0 }]);
        // Two tasks wait, and two requests are still out.
        assert!(pool.refused(t0).contains(&Step::Fail { waiter: 1 }));
        assert_eq!(pool.refused(t0), vec![Step::Fail { waiter: 2 }]);
        assert!(pool.is_empty());
    }

    #[test]
    fn one_task_leases_are_never_reused_nor_pipelined() {
        let t0 = Instant::now();
        let mut pool = LeasePool::new(false);
        pool.want(1, t0);
        let slot = slot_of(&pool.granted(5, t0));
        // Even a short task leaves the pool with no lease: the next one asks anew.
        assert!(pool.finished(slot, true, t0 + MS / 10).is_empty());
        assert!(pool.is_empty());
        assert_eq!(pool.want(2, t0), vec![Step::Request]);
        assert_eq!(pool.want(3, t0), vec![Step::Request]);
    }

    #[test]
    fn a_lost_lease_is_forgotten_while_its_other_tasks_end() {
        let t0 = Instant::now();
        let mut pool = LeasePool::new(true);
        pool.want(0, t0);
        let slot = slot_of(&pool.granted(4, t0));
        pool.finished(slot, true, t0 + MS / 10);
        for w in 1..=3 {
            pool.want(w, t0 + MS);
        }
        // The first task finds the executor gone: the lease takes nothing more, and the
        // others' ends change nothing.
        assert!(pool.finished(slot, false, t0 + MS).is_empty());
        assert!(pool.finished(slot, false, t0 + MS).is_empty());
        assert!(pool.finished(slot, false, t0 + MS).is_empty());
        assert!(pool.is_empty());
        assert_eq!(pool.want(4, t0 + MS), vec![Step::Request]);
    }

    #[test]
    fn idle_leases_can_be_taken_back_at_once() {
        let t0 = Instant::now();
        let mut pool = LeasePool::new(true);
        pool.want(1, t0);
        pool.want(2, t0);
        let a = slot_of(&pool.granted(1, t0));
        let b = slot_of(&pool.granted(2, t0));
        pool.finished(a, true, t0);
        pool.finished(b, true, t0);
        let mut back = pool.take_idle();
        back.sort();
        assert_eq!(back, vec![1, 2]);
        assert!(pool.is_empty());
    }
}
