//! The plans, run by a simulator: every rank's plan at once, messages delivered in a random
//! order, values kept as fingerprints of the exact order of their combination.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::*;

/// A symbolic element: which index it is, which ranks went into it, and a fingerprint of the
/// exact expression that combined them (not commutative, so `a ⊕ b` and `b ⊕ a` differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Val {
    index: usize,
    count: u32,
    rank_sum: u64,
    expr: u64,
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Val {
    fn leaf(rank: usize, index: usize) -> Val {
        Val {
            index,
            count: 1,
            rank_sum: rank as u64,
            expr: mix((rank as u64) << 32 | index as u64),
        }
    }

    fn combine(a: Val, b: Val) -> Val {
        assert_eq!(a.index, b.index, "elements of different indices combined");
        Val {
            index: a.index,
            count: a.count + b.count,
            rank_sum: a.rank_sum + b.rank_sum,
            expr: mix(a.expr.wrapping_mul(31) ^ mix(b.expr).rotate_left(17)),
        }
    }

    fn scaled(self) -> Val {
        Val {
            expr: mix(self.expr ^ 0x5CA1E),
            ..self
        }
    }
}

struct Rank {
    buf: Vec<Val>,
    plan: Vec<Action>,
    pc: usize,
    posted: bool,
}

/// Runs the plans of all ranks to the end, picking the next rank to move at random. Panics on
/// a deadlock or on a message whose length differs from what its receiver expects.
fn simulate(plans: Vec<Plan>, init: Vec<Vec<Val>>, seed: u64) -> Vec<Vec<Val>> {
    let n = plans.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ranks: Vec<Rank> = plans
        .into_iter()
        .zip(init)
        .map(|(p, buf)| Rank {
            buf,
            plan: p.actions,
            pc: 0,
            posted: false,
        })
        .collect();
    let mut wires: HashMap<(usize, usize), VecDeque<Vec<Val>>> = HashMap::new();
    let mut order: Vec<usize> = (0..n).collect();
    loop {
        // Each round visits the ranks in a fresh random order and lets each one that can
        // move take one step, or not (at random), so the interleavings differ by seed.
        order.shuffle(&mut rng);
        let mut moved = false;
        for &r in &order {
            let ready = {
                let rank = &ranks[r];
                match rank.plan.get(rank.pc) {
                    None => false,
                    Some(Action::Exchange { recv: None, .. }) | Some(Action::Scale { .. }) => true,
                    Some(Action::Exchange { recv: Some(rv), .. }) => {
                        !rank.posted
                            || wires
                                .get(&(rv.transfer.peer, r))
                                .is_some_and(|q| !q.is_empty())
                    }
                    Some(Action::Relay { from, .. }) => {
                        wires.get(&(*from, r)).is_some_and(|q| !q.is_empty())
                    }
                }
            };
            if ready && rng.gen_bool(0.7) {
                step(r, &mut ranks[r], &mut wires);
                moved = true;
            } else if ready {
                moved = true;
            }
        }
        if !moved {
            let stuck: Vec<usize> = (0..n)
                .filter(|&r| ranks[r].pc < ranks[r].plan.len())
                .collect();
            assert!(stuck.is_empty(), "deadlock: ranks {stuck:?} wait forever");
            assert!(
                wires.values().all(|q| q.is_empty()),
                "messages sent that nobody received"
            );
            return ranks.into_iter().map(|r| r.buf).collect();
        }
    }
}

/// Takes one step of rank `r`, which can move.
fn step(r: usize, rank: &mut Rank, wires: &mut HashMap<(usize, usize), VecDeque<Vec<Val>>>) {
    let action = rank.plan[rank.pc].clone();
    match action {
        Action::Exchange { sends, recv } => {
            if !rank.posted {
                for t in &sends {
                    wires
                        .entry((r, t.peer))
                        .or_default()
                        .push_back(rank.buf[t.range.clone()].to_vec());
                }
                rank.posted = true;
                if recv.is_some() {
                    return;
                }
            }
            if let Some(rv) = recv {
                let msg = wires
                    .get_mut(&(rv.transfer.peer, r))
                    .and_then(|q| q.pop_front())
                    .expect("runnable only with a message waiting");
                assert_eq!(msg.len(), rv.transfer.range.len(), "length mismatch");
                for (slot, got) in rank.buf[rv.transfer.range].iter_mut().zip(msg) {
                    *slot = match rv.arrival {
                        Arrival::Copy => got,
                        Arrival::Reduce(Order::IncomingFirst) => Val::combine(got, *slot),
                        Arrival::Reduce(Order::LocalFirst) => Val::combine(*slot, got),
                    };
                }
            }
            rank.pc += 1;
            rank.posted = false;
        }
        Action::Relay { from, to, range } => {
            let msg = wires
                .get_mut(&(from, r))
                .and_then(|q| q.pop_front())
                .unwrap();
            assert_eq!(msg.len(), range.len(), "length mismatch");
            rank.buf[range].copy_from_slice(&msg);
            wires.entry((r, to)).or_default().push_back(msg);
            rank.pc += 1;
        }
        Action::Scale { range } => {
            for v in &mut rank.buf[range] {
                *v = v.scaled();
            }
            rank.pc += 1;
        }
    }
}

fn leaves(n: usize, len: usize) -> Vec<Vec<Val>> {
    (0..n)
        .map(|r| (0..len).map(|i| Val::leaf(r, i)).collect())
        .collect()
}

fn run_allreduce(n: usize, len: usize, elem: usize, mean: bool, seed: u64) -> Vec<Vec<Val>> {
    let plans = (0..n).map(|r| allreduce(n, r, len, elem, mean)).collect();
    simulate(plans, leaves(n, len), seed)
}

fn assert_complete(v: &Val, n: usize) {
    assert_eq!(v.count as usize, n, "element {} misses ranks", v.index);
    assert_eq!(v.rank_sum, (n * (n - 1) / 2) as u64, "a rank counted twice");
}

#[test]
fn allreduce_gives_every_rank_the_same_complete_expression() {
    for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 31] {
        for (len, elem) in [(0, 4), (1, 4), (5, 4), (1000, 4), (40_000, 4), (40_000, 2)] {
            for mean in [false, true] {
                let out = run_allreduce(n, len, elem, mean, n as u64 * 7 + len as u64);
                for (r, buf) in out.iter().enumerate() {
                    assert_eq!(buf, &out[0], "rank {r} differs (n={n}, len={len})");
                }
                for v in &out[0] {
                    assert_complete(v, n);
                }
            }
        }
    }
}

#[test]
fn the_order_of_combination_does_not_depend_on_delivery_order() {
    for n in [3, 4, 6] {
        for len in [7, 50_000] {
            let first = run_allreduce(n, len, 4, true, 1);
            for seed in 2..6 {
                assert_eq!(run_allreduce(n, len, 4, true, seed), first);
            }
        }
    }
}

#[test]
fn the_ring_sums_each_chunk_starting_after_its_owner() {
    let (n, len) = (5, 100_000);
    assert_eq!(allreduce(n, 0, len, 4, false).algorithm, Algorithm::Ring);
    let out = run_allreduce(n, len, 4, false, 3);
    for c in 0..n {
        for i in chunk(len, n, c) {
            let mut expected = Val::leaf((c + 1) % n, i);
            for k in 2..=n {
                expected = Val::combine(expected, Val::leaf((c + k) % n, i));
            }
            assert_eq!(out[0][i], expected, "chunk {c}, element {i}");
        }
    }
}

#[test]
fn small_buffers_use_recursive_doubling_and_large_ones_the_ring() {
    assert_eq!(
        allreduce(4, 1, 1024, 4, false).algorithm,
        Algorithm::RecursiveDoubling
    );
    assert_eq!(
        allreduce(4, 1, SMALL_BYTES / 4 + 1, 4, false).algorithm,
        Algorithm::Ring
    );
    assert_eq!(
        allreduce(1, 0, 1 << 20, 4, false).algorithm,
        Algorithm::Local
    );
    // Recursive doubling takes log2(n) rounds, plus two for a rank folded in.
    assert_eq!(allreduce(8, 3, 16, 4, false).actions.len(), 3);
    assert_eq!(allreduce(6, 5, 16, 4, false).actions.len(), 2);
    assert_eq!(allreduce(6, 1, 16, 4, false).actions.len(), 4);
    // The ring: n-1 steps each way.
    assert_eq!(allreduce(4, 0, 1 << 20, 4, false).actions.len(), 6);
}

#[test]
fn reduce_scatter_leaves_each_rank_its_own_chunk_complete() {
    for n in [2, 3, 4, 7] {
        let len = 1000;
        let plans = (0..n).map(|r| reduce_scatter(n, r, len, false)).collect();
        let out = simulate(plans, leaves(n, len), 9);
        // The ring's allreduce (forced by a large element size) sums in the same order.
        let ring = run_allreduce(n, len, 1 << 10, false, 1);
        for (r, buf) in out.iter().enumerate() {
            for i in chunk(len, n, r) {
                assert_complete(&buf[i], n);
                assert_eq!(buf[i], ring[0][i]);
            }
        }
    }
}

#[test]
fn allgather_gives_every_rank_every_block() {
    for n in [2, 3, 5, 8] {
        let block = 3;
        let init = (0..n)
            .map(|r| {
                (0..n * block)
                    .map(|i| {
                        if i / block == r {
                            Val::leaf(r, i)
                        } else {
                            Val::leaf(usize::MAX >> 40, i)
                        }
                    })
                    .collect()
            })
            .collect();
        let plans = (0..n).map(|r| allgather(n, r, block)).collect();
        let out = simulate(plans, init, 4);
        for buf in &out {
            for (i, v) in buf.iter().enumerate() {
                assert_eq!(*v, Val::leaf(i / block, i));
            }
        }
    }
}

#[test]
fn broadcast_copies_the_roots_buffer_to_every_rank() {
    for n in [2, 3, 4, 9] {
        for root in [0, n - 1, n / 2] {
            for len in [10, SMALL_BYTES] {
                let plans = (0..n).map(|r| broadcast(n, r, root, len, 4)).collect();
                let out = simulate(plans, leaves(n, len), 5);
                for buf in &out {
                    assert_eq!(buf, &out[root]);
                }
                assert_eq!(out[root][0], Val::leaf(root, 0));
            }
        }
    }
}

#[test]
fn barrier_involves_every_rank() {
    for n in [2, 3, 5, 8, 11] {
        let plans: Vec<Plan> = (0..n).map(|r| barrier(n, r)).collect();
        // No rank may finish before every rank has sent something it depends on: with
        // one element the allreduce would be complete, so the same plans on zero elements
        // exchange the same messages.
        let one: Vec<Plan> = (0..n).map(|r| allreduce(n, r, 1, 1, false)).collect();
        assert_eq!(
            plans.iter().map(|p| p.actions.len()).collect::<Vec<_>>(),
            one.iter().map(|p| p.actions.len()).collect::<Vec<_>>()
        );
        let out = simulate(one, leaves(n, 1), 2);
        assert_complete(&out[n - 1][0], n);
    }
}

#[test]
fn a_thousand_ranks_agree() {
    for n in [1000, 1024] {
        // Recursive doubling, with and without ranks folded in.
        let out = run_allreduce(n, 3, 4, false, 11);
        assert!(out.iter().all(|b| b == &out[0]));
        for v in &out[0] {
            assert_complete(v, n);
        }
    }
    // The ring (forced by a large element size), with chunks of one or two elements: 2(n-1)
    // steps for each of n ranks.
    let n = 512;
    assert_eq!(
        allreduce(n, 0, n + n / 2, 1 << 10, true).algorithm,
        Algorithm::Ring
    );
    let ring = run_allreduce(n, n + n / 2, 1 << 10, true, 12);
    assert!(ring.iter().all(|b| b == &ring[0]));
    for v in &ring[0] {
        assert_complete(v, n);
    }
}
