//! The nodes of a plan, in the order first fit looks at them, with a tree over them of the
//! most any node of each range offers (the types among them, free CPUs, the largest free
//! share of one GPU, entirely free GPUs). First fit asks the tree for the first node from a
//! place on whose range could hold a demand, and so skips the ranges that cannot, instead of
//! looking at every node. An offer only tells what cannot fit: whether a node that may hold a
//! demand really does is the node's own check ([`NodeState::allocate`]).

use ember_core::resources::{ResourceDemand, GPU_UNITS};

use crate::placement::node::NodeState;

/// A node of the plan: coming (launched, not joined) or new, with what the plan put on it.
#[derive(Debug, Clone)]
pub(super) struct Bin {
    /// Its type, an index into the policy's types.
    pub(super) type_index: usize,
    /// What is free on it.
    pub(super) node: NodeState,
}

/// The bit of a type in a mask of types; types past the 64th share the last bit, which only
/// makes the tree skip less.
pub(super) fn type_bit(type_index: usize) -> u64 {
    1 << type_index.min(63)
}

/// The most any node of a range offers, each figure on its own.
#[derive(Debug, Clone, Copy, Default)]
struct Offer {
    /// The types of its nodes, as a mask ([`type_bit`]).
    types: u64,
    cpu_free: u64,
    max_share_free: u32,
    whole_free: u32,
}

impl Offer {
    fn of(b: &Bin) -> Offer {
        Offer {
            types: type_bit(b.type_index),
            cpu_free: b.node.cpu_free,
            max_share_free: b.node.max_share_free,
            whole_free: b.node.whole_free,
        }
    }

    fn max(a: Offer, b: Offer) -> Offer {
        Offer {
            types: a.types | b.types,
            cpu_free: a.cpu_free.max(b.cpu_free),
            max_share_free: a.max_share_free.max(b.max_share_free),
            whole_free: a.whole_free.max(b.whole_free),
        }
    }

    fn may_hold(&self, need: &Need) -> bool {
        self.types & need.types != 0
            && self.cpu_free >= need.cpu_millis
            && self.max_share_free >= need.share
            && self.whole_free >= need.whole
    }
}

/// What a node must offer, at least, to hold some demands together: one of `types`, their
/// CPUs, the largest fraction among them on one GPU, and their whole GPUs entirely free.
#[derive(Debug, Clone, Copy)]
pub(super) struct Need {
    types: u64,
    cpu_millis: u64,
    share: u32,
    whole: u32,
}

impl Need {
    /// What holding every one of `demands` together takes at least, on a node of one of
    /// `types` (a mask).
    pub(super) fn of<'d>(
        types: u64,
        demands: impl IntoIterator<Item = &'d ResourceDemand>,
    ) -> Self {
        let mut need = Need {
            types,
            cpu_millis: 0,
            share: 0,
            whole: 0,
        };
        for d in demands {
            need.cpu_millis += d.cpu_millis;
            let units = d.gpus.units();
            if units < GPU_UNITS {
                need.share = need.share.max(units);
            } else {
                need.whole += units / GPU_UNITS;
            }
        }
        need
    }
}

/// The nodes of a plan and the tree of their offers.
#[derive(Debug, Default)]
pub(super) struct Bins {
    bins: Vec<Bin>,
    /// A complete binary tree over `leaves` slots, the root at 1 and slot `i`'s leaf at
    /// `leaves + i`; slots past the last node offer nothing.
    tree: Vec<Offer>,
    leaves: usize,
}

impl Bins {
    /// How many nodes the plan has.
    pub(super) fn len(&self) -> usize {
        self.bins.len()
    }

    /// The type of node `i`.
    pub(super) fn type_of(&self, i: usize) -> usize {
        self.bins[i].type_index
    }

    /// Adds a node at the end.
    pub(super) fn push(&mut self, bin: Bin) {
        self.bins.push(bin);
        let i = self.bins.len() - 1;
        if i < self.leaves {
            self.update(i);
            return;
        }
        // Full: twice the slots, the tree built again.
        self.leaves = (self.leaves * 2).max(16);
        self.tree = vec![Offer::default(); 2 * self.leaves];
        for (i, b) in self.bins.iter().enumerate() {
            self.tree[self.leaves + i] = Offer::of(b);
        }
        for at in (1..self.leaves).rev() {
            self.tree[at] = Offer::max(self.tree[2 * at], self.tree[2 * at + 1]);
        }
    }

    /// Node `i`'s offer changed: its leaf and those above it follow.
    fn update(&mut self, i: usize) {
        let mut at = self.leaves + i;
        self.tree[at] = Offer::of(&self.bins[i]);
        while at > 1 {
            at /= 2;
            self.tree[at] = Offer::max(self.tree[2 * at], self.tree[2 * at + 1]);
        }
    }

    /// The first node from `from` on that may hold `need`: every node between `from` and it
    /// cannot.
    pub(super) fn first(&self, from: usize, need: &Need) -> Option<usize> {
        if from >= self.bins.len() {
            return None;
        }
        // Often the very node asked from (where the last demand of a shape went).
        if self.tree[self.leaves + from].may_hold(need) {
            return Some(from);
        }
        self.descend(1, 0, self.leaves, from + 1, need)
    }

    fn descend(&self, at: usize, lo: usize, hi: usize, from: usize, need: &Need) -> Option<usize> {
        if hi <= from || !self.tree[at].may_hold(need) {
            return None;
        }
        if hi - lo == 1 {
            return (lo < self.bins.len()).then_some(lo);
        }
        let mid = lo + (hi - lo) / 2;
        self.descend(2 * at, lo, mid, from, need)
            .or_else(|| self.descend(2 * at + 1, mid, hi, from, need))
    }

    /// Allocates `demands` on node `i`, in order, all or none (see `take_all`); returns
    /// whether they fit.
    pub(super) fn take(&mut self, i: usize, demands: &[&ResourceDemand]) -> bool {
        let taken = super::take_all(&mut self.bins[i].node, demands);
        if taken {
            self.update(i);
        }
        taken
    }
}
