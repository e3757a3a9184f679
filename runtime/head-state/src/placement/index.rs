//! The index that lets placement choose a node without visiting every node.
//!
//! The schedulable nodes sit in a treap ordered by [`NodeState::usage_key`], and every subtree
//! carries the most any of its nodes offers ([`Offer`]): free CPUs, the largest free share of
//! one GPU, whole free GPUs, the most free memory of one GPU, and which labels and accelerator
//! types its nodes carry. A search walks the order from the end the strategy prefers and skips
//! every subtree that cannot hold the demand, so the full nodes that Pack meets first are
//! passed over a subtree at a time, not one by one. Only the nodes that pass the offer check
//! are asked whether the demand fits ([`NodeState::fits_now`], which also checks custom
//! resources and the GPUs one by one).
//!
//! The treap's shape comes from a hash of each node's id, so it is the same on every run.
//!
//! Every change of a node's free capacity moves its entry, so the layout is kept small: an
//! entry (rank, links, priority and its subtree's offer) fills one 64-byte cache line, and
//! what each node offers itself lies in an array of its own, read only where the subtree's
//! offer already covers the demand. Offers hold CPUs and GPU memory in 32 bits, rounded so
//! that an offer still covers every demand that fits ([`Offer::covers`] only prunes).

use std::cmp::Reverse;

use ember_core::ids::NodeId;
use ember_core::proto::Strategy;
use ember_core::resources::GPU_UNITS;

use super::node::NodeState;
use super::PlacementRequest;

/// No entry.
const NIL: u32 = u32::MAX;

/// Where a node sits in the index: by usage, then by id descending, so that the last entry is
/// the most used node and, among equally used ones, the one with the lowest id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    usage: u128,
    id: Reverse<NodeId>,
}

impl Rank {
    const FIRST: Rank = Rank {
        usage: 0,
        id: Reverse(NodeId(u64::MAX)),
    };

    fn of(node: &NodeState) -> Rank {
        Rank {
            usage: node.usage_key,
            id: Reverse(node.id),
        }
    }

    /// The last rank a node of this usage can have (that of node id 0).
    fn last_of_usage(usage: u128) -> Rank {
        Rank {
            usage,
            id: Reverse(NodeId(0)),
        }
    }
}

/// The most a node, or a set of nodes, offers in each dimension the index prunes by. A demand
/// fits a node only if the node's offer [covers](Offer::covers) the demand's
/// [least offer](Offer::least_for); the converse need not hold. Counts are narrowed to fit 24
/// bytes, by maps that keep that promise: saturating (CPUs, whole GPUs), and GPU memory in
/// MiB rounded up for what a node offers and down for what a demand needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Offer {
    /// Free milli-CPUs, saturating at `u32::MAX`.
    cpu_free: u32,
    /// The most free memory of one GPU that has some share free, in MiB (see above).
    gpu_memory_free: u32,
    /// One bit per label carried (a Bloom filter: bits may be shared).
    labels: u64,
    /// One bit per accelerator type of the GPUs, ASCII case folded (a Bloom filter).
    accelerators: u32,
    /// The largest free share of one GPU, in hundredths.
    share_free: u16,
    /// How many GPUs are entirely free, saturating at `u16::MAX`.
    whole_free: u16,
}

/// `n`, or `u32::MAX` where it is larger.
fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `n`, or `u16::MAX` where it is larger.
fn saturate16(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

const MIB: u64 = 1 << 20;

impl Offer {
    /// What a node offers now.
    fn of(node: &NodeState) -> Offer {
        let labels = node.labels.iter().fold(0, |bits, l| bits | bit(l, false));
        let accelerators = node
            .gpus
            .iter()
            .fold(0, |bits, g| bits | bit32(&g.accelerator));
        Offer::refreshed(
            node,
            Offer {
                labels,
                accelerators,
                ..Offer::default()
            },
        )
    }

    /// What a node offers now, given what it offered before: labels and GPUs never change,
    /// so their bits are kept rather than hashed again.
    fn refreshed(node: &NodeState, before: Offer) -> Offer {
        let memory = node
            .gpus
            .iter()
            .filter(|g| g.share_free > 0)
            .map(|g| g.mem_free)
            .max()
            .unwrap_or(0);
        Offer {
            cpu_free: saturate(node.cpu_free),
            share_free: saturate16(node.max_share_free),
            whole_free: saturate16(node.whole_free),
            gpu_memory_free: saturate(memory.div_ceil(MIB)),
            labels: before.labels,
            accelerators: before.accelerators,
        }
    }

    /// Whether a node's offer covering the request's [least offer](Offer::least_for) means
    /// that the request fits the node, not only that it could: for a request with no labels,
    /// no custom resources, no GPU memory and no accelerator type, whose CPUs and whole GPUs
    /// the offer's narrow counts hold exactly. Then whether it fits is free CPUs, the largest
    /// free share of one GPU or how many GPUs are entirely free ([`NodeState::fits_now`]),
    /// which the offer holds as they are (a count saturated in the offer is at least the
    /// request's, which is below saturation).
    #[inline]
    fn decides(req: &PlacementRequest) -> bool {
        let d = &req.demand;
        req.labels.is_empty()
            && d.custom.iter().all(|&(_, amount)| amount == 0)
            && d.gpu_memory == 0
            && d.accelerator.is_none()
            && d.cpu_millis < u64::from(u32::MAX)
            && d.gpus.units() / GPU_UNITS < u32::from(u16::MAX)
    }

    /// The least offer of a node where the request could fit.
    fn least_for(req: &PlacementRequest) -> Offer {
        let d = &req.demand;
        let units = d.gpus.units();
        let (share_free, whole_free) = match units {
            0 => (0, 0),
            u if u < GPU_UNITS => (u, 0),
            u => (GPU_UNITS, u / GPU_UNITS),
        };
        Offer {
            cpu_free: saturate(d.cpu_millis),
            share_free: saturate16(share_free),
            whole_free: saturate16(whole_free),
            gpu_memory_free: if units > 0 {
                saturate(d.gpu_memory / MIB)
            } else {
                0
            },
            labels: req.labels.iter().fold(0, |bits, l| bits | bit(l, false)),
            accelerators: match &d.accelerator {
                Some(a) if units > 0 => bit32(a),
                _ => 0,
            },
        }
    }

    /// Whether this offer is at least `least` in every dimension.
    #[inline]
    fn covers(&self, least: &Offer) -> bool {
        self.cpu_free >= least.cpu_free
            && self.share_free >= least.share_free
            && self.whole_free >= least.whole_free
            && self.gpu_memory_free >= least.gpu_memory_free
            && self.labels & least.labels == least.labels
            && self.accelerators & least.accelerators == least.accelerators
    }

    /// The most of both.
    fn join(self, other: Offer) -> Offer {
        Offer {
            cpu_free: self.cpu_free.max(other.cpu_free),
            share_free: self.share_free.max(other.share_free),
            whole_free: self.whole_free.max(other.whole_free),
            gpu_memory_free: self.gpu_memory_free.max(other.gpu_memory_free),
            labels: self.labels | other.labels,
            accelerators: self.accelerators | other.accelerators,
        }
    }
}

/// The Bloom filter bit of a name (FNV-1a), optionally ASCII case folded.
fn bit(name: &str, fold_case: bool) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        let b = if fold_case { b.to_ascii_lowercase() } else { b };
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    1 << (hash >> 58)
}

/// The Bloom filter bit of an accelerator type, ASCII case folded, among 32.
fn bit32(name: &str) -> u32 {
    1 << (bit(name, true).trailing_zeros() & 31)
}

/// A node's treap priority: a hash of its id (the high half of splitmix64), so the shape is
/// deterministic.
fn priority(id: NodeId) -> u32 {
    let mut z = id.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 32) as u32
}

/// One indexed node: its rank (usage, then id), its links, its priority and what its subtree
/// offers, in one cache line. What the node offers itself is in [`NodeIndex::own`].
#[derive(Debug, Clone)]
#[repr(align(64))]
struct Entry {
    usage: u128,
    id: NodeId,
    left: u32,
    right: u32,
    priority: u32,
    /// What this node and its subtree offer at most.
    subtree: Offer,
}

// An entry fills one cache line, and no more.
const _: () = assert!(std::mem::size_of::<Entry>() == 64);
const _: () = assert!(std::mem::size_of::<Offer>() == 24);

impl Entry {
    #[inline]
    fn rank(&self) -> Rank {
        Rank {
            usage: self.usage,
            id: Reverse(self.id),
        }
    }
}

/// The schedulable nodes, ordered by usage, with what each subtree offers (see the module
/// documentation). The scheduler keeps it in step with its nodes: every change of a node's
/// free capacity or schedulability goes through [`NodeIndex::insert`], [`NodeIndex::update`]
/// or [`NodeIndex::remove`].
#[derive(Debug, Clone)]
pub(crate) struct NodeIndex {
    /// Slots of the treap; those listed in `vacant` are unused.
    entries: Vec<Entry>,
    /// What the node of each slot offers.
    own: Vec<Offer>,
    vacant: Vec<u32>,
    root: u32,
}

impl Default for NodeIndex {
    fn default() -> Self {
        NodeIndex {
            entries: Vec::new(),
            own: Vec::new(),
            vacant: Vec::new(),
            root: NIL,
        }
    }
}

impl NodeIndex {
    /// Whether no node is indexed (no node is schedulable).
    pub(crate) fn is_empty(&self) -> bool {
        self.root == NIL
    }

    /// Indexes a schedulable node that is not indexed yet.
    pub(crate) fn insert(&mut self, node: &NodeState) {
        self.insert_offer(Rank::of(node), Offer::of(node));
    }

    /// Re-indexes a node whose free capacity changed; `usage_before` is the usage key it had
    /// when last indexed. A node that is not indexed (not schedulable) is left out.
    pub(crate) fn update(&mut self, usage_before: u128, node: &NodeState) {
        let before = Rank {
            usage: usage_before,
            id: Reverse(node.id),
        };
        self.root = self.rerank(self.root, before, node);
    }

    /// Removes a node, indexed under its current usage key; returns whether it was indexed.
    pub(crate) fn remove(&mut self, node: &NodeState) -> bool {
        self.take(Rank::of(node)).is_some()
    }

    /// [`NodeIndex::choose`] where `fits` says only whether the request fits the node now
    /// ([`NodeState::fits_now`]): then it is not asked where the offer says exactly whether
    /// the request fits (see [`Offer::decides`]).
    pub(crate) fn choose_fitting(
        &self,
        req: &PlacementRequest,
        mut fits: impl FnMut(NodeId) -> bool,
    ) -> Option<NodeId> {
        let decided = Offer::decides(req);
        self.choose(req, |id| decided || fits(id))
    }

    /// The node the strategy prefers among the indexed ones that pass `fits`, which is asked
    /// only about nodes whose offer could hold the request: Pack the most used, Spread the
    /// least used, the lowest id among equally used nodes.
    pub(crate) fn choose(
        &self,
        req: &PlacementRequest,
        mut fits: impl FnMut(NodeId) -> bool,
    ) -> Option<NodeId> {
        let least = Offer::least_for(req);
        let found = match req.strategy {
            Strategy::Pack => {
                let most = Rank::last_of_usage(u128::MAX);
                self.last(self.root, Rank::FIRST, most, &least, &mut fits)?
            }
            Strategy::Spread => {
                // The first fitting entry has the least usage but the highest id of it; the
                // last fitting entry of that usage has the lowest.
                let first = self.first(self.root, &least, &mut fits)?;
                let upto = Rank::last_of_usage(first.usage);
                self.last(self.root, first, upto, &least, &mut fits)?
            }
        };
        Some(found.id.0)
    }

    /// The first entry of subtree `t` in rank order that could hold `least` and fits.
    fn first(&self, t: u32, least: &Offer, fits: &mut impl FnMut(NodeId) -> bool) -> Option<Rank> {
        if t == NIL {
            return None;
        }
        let e = &self.entries[t as usize];
        if !e.subtree.covers(least) {
            return None;
        }
        if let Some(found) = self.first(e.left, least, fits) {
            return Some(found);
        }
        if self.own[t as usize].covers(least) && fits(e.id) {
            return Some(e.rank());
        }
        self.first(e.right, least, fits)
    }

    /// The last entry of subtree `t` in rank order, ranked from `lower` to `upper` (both
    /// included), that could hold `least` and fits.
    fn last(
        &self,
        t: u32,
        lower: Rank,
        upper: Rank,
        least: &Offer,
        fits: &mut impl FnMut(NodeId) -> bool,
    ) -> Option<Rank> {
        if t == NIL {
            return None;
        }
        let e = &self.entries[t as usize];
        if !e.subtree.covers(least) {
            return None;
        }
        if e.rank() > upper {
            return self.last(e.left, lower, upper, least, fits);
        }
        if e.rank() < lower {
            return self.last(e.right, lower, upper, least, fits);
        }
        if let Some(found) = self.last(e.right, lower, upper, least, fits) {
            return Some(found);
        }
        if self.own[t as usize].covers(least) && fits(e.id) {
            return Some(e.rank());
        }
        self.last(e.left, lower, upper, least, fits)
    }

    /// Moves the entry ranked `from` in subtree `t` to the node's current rank, with what it
    /// offers now; returns the subtree's new root. Where both ranks lie on the same side of an
    /// entry the walk goes down that side, so only the subtree where they part is rebuilt,
    /// and every entry on the way is pulled once, unless what its child below offers did not
    /// change (then neither did what it offers: the usual case, high in the treap).
    fn rerank(&mut self, t: u32, from: Rank, node: &NodeState) -> u32 {
        if t == NIL {
            return NIL;
        }
        let to = Rank::of(node);
        let e = &self.entries[t as usize];
        if from != e.rank() && (from < e.rank()) == (to < e.rank()) {
            if from < e.rank() {
                let child = e.left;
                let before = self.subtree_of(child);
                let left = self.rerank(child, from, node);
                self.entries[t as usize].left = left;
                self.pull_unless_same(t, left, before);
            } else {
                let child = e.right;
                let before = self.subtree_of(child);
                let right = self.rerank(child, from, node);
                self.entries[t as usize].right = right;
                self.pull_unless_same(t, right, before);
            }
            return t;
        }
        let (t, taken) = self.take_from(t, from);
        let Some(slot) = taken else {
            return t;
        };
        let own = Offer::refreshed(node, self.own[slot as usize]);
        self.own[slot as usize] = own;
        let entry = &mut self.entries[slot as usize];
        *entry = Entry {
            usage: to.usage,
            id: to.id.0,
            priority: entry.priority,
            left: NIL,
            right: NIL,
            subtree: own,
        };
        self.insert_into(t, slot)
    }

    /// Puts the unlinked entry `slot` into subtree `t`; returns the subtree's new root.
    fn insert_into(&mut self, t: u32, slot: u32) -> u32 {
        if t == NIL {
            return slot;
        }
        let (rank, priority) = {
            let e = &self.entries[slot as usize];
            (e.rank(), e.priority)
        };
        let e = &self.entries[t as usize];
        if priority > e.priority {
            let (below, above) = self.split(t, rank);
            let new = &mut self.entries[slot as usize];
            new.left = below;
            new.right = above;
            self.pull(slot);
            return slot;
        }
        if rank < e.rank() {
            let child = e.left;
            let before = self.subtree_of(child);
            let left = self.insert_into(child, slot);
            self.entries[t as usize].left = left;
            self.pull_unless_same(t, left, before);
        } else {
            let child = e.right;
            let before = self.subtree_of(child);
            let right = self.insert_into(child, slot);
            self.entries[t as usize].right = right;
            self.pull_unless_same(t, right, before);
        }
        t
    }

    fn insert_offer(&mut self, rank: Rank, own: Offer) {
        let entry = Entry {
            usage: rank.usage,
            id: rank.id.0,
            priority: priority(rank.id.0),
            left: NIL,
            right: NIL,
            subtree: own,
        };
        let slot = match self.vacant.pop() {
            Some(slot) => {
                self.entries[slot as usize] = entry;
                self.own[slot as usize] = own;
                slot
            }
            None => {
                self.entries.push(entry);
                self.own.push(own);
                (self.entries.len() - 1) as u32
            }
        };
        self.root = self.insert_into(self.root, slot);
    }

    /// Removes the entry of that rank; returns what it offered.
    fn take(&mut self, rank: Rank) -> Option<Offer> {
        let (root, taken) = self.take_from(self.root, rank);
        self.root = root;
        let slot = taken?;
        self.vacant.push(slot);
        Some(self.own[slot as usize])
    }

    /// Removes the entry of that rank from subtree `t`; returns the subtree's new root and the
    /// removed slot.
    fn take_from(&mut self, t: u32, rank: Rank) -> (u32, Option<u32>) {
        if t == NIL {
            return (NIL, None);
        }
        let (left, right) = (
            self.entries[t as usize].left,
            self.entries[t as usize].right,
        );
        match rank.cmp(&self.entries[t as usize].rank()) {
            std::cmp::Ordering::Equal => (self.merge(left, right), Some(t)),
            std::cmp::Ordering::Less => {
                let before = self.subtree_of(left);
                let (left, taken) = self.take_from(left, rank);
                self.entries[t as usize].left = left;
                self.pull_unless_same(t, left, before);
                (t, taken)
            }
            std::cmp::Ordering::Greater => {
                let before = self.subtree_of(right);
                let (right, taken) = self.take_from(right, rank);
                self.entries[t as usize].right = right;
                self.pull_unless_same(t, right, before);
                (t, taken)
            }
        }
    }

    /// Splits subtree `t` into the entries ranked below `at` and the rest.
    fn split(&mut self, t: u32, at: Rank) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        let e = &self.entries[t as usize];
        if e.rank() < at {
            let (below, above) = self.split(e.right, at);
            self.entries[t as usize].right = below;
            self.pull(t);
            (t, above)
        } else {
            let (below, above) = self.split(e.left, at);
            self.entries[t as usize].left = above;
            self.pull(t);
            (below, t)
        }
    }

    /// Joins two subtrees, every entry of `a` ranked below every entry of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.entries[a as usize].priority >= self.entries[b as usize].priority {
            let right = self.merge(self.entries[a as usize].right, b);
            self.entries[a as usize].right = right;
            self.pull(a);
            a
        } else {
            let left = self.merge(a, self.entries[b as usize].left);
            self.entries[b as usize].left = left;
            self.pull(b);
            b
        }
    }

    /// What subtree `t` offers (nothing, for no subtree).
    #[inline]
    fn subtree_of(&self, t: u32) -> Offer {
        if t == NIL {
            Offer::default()
        } else {
            self.entries[t as usize].subtree
        }
    }

    /// Recomputes what subtree `t` offers after its child subtree `child` changed, which
    /// offered `before`; where that child offers just as much, so does `t`, and it is left.
    #[inline]
    fn pull_unless_same(&mut self, t: u32, child: u32, before: Offer) {
        if self.subtree_of(child) != before {
            self.pull(t);
        }
    }

    /// Recomputes what subtree `t` offers from its node and its children.
    fn pull(&mut self, t: u32) {
        let e = &self.entries[t as usize];
        let mut offer = self.own[t as usize];
        for child in [e.left, e.right] {
            if child != NIL {
                offer = offer.join(self.entries[child as usize].subtree);
            }
        }
        self.entries[t as usize].subtree = offer;
    }

    /// Checks the index against the nodes (sorted by id): it holds exactly the schedulable
    /// nodes, each at its current usage with what it offers now; the treap is ordered, its
    /// priorities are heap-ordered and every subtree's offer is its entries' joined; every slot
    /// is either in the treap or vacant.
    pub(crate) fn check(&self, nodes: &[NodeState]) -> Result<(), String> {
        let mut seen = vec![false; self.entries.len()];
        let mut previous: Option<Rank> = None;
        let indexed = self.check_subtree(self.root, nodes, &mut seen, &mut previous)?;
        let schedulable = nodes.iter().filter(|n| n.schedulable).count();
        if indexed != schedulable {
            return Err(format!(
                "index holds {indexed} nodes, {schedulable} are schedulable"
            ));
        }
        for &slot in &self.vacant {
            if std::mem::replace(&mut seen[slot as usize], true) {
                return Err(format!("index slot {slot} is both used and vacant"));
            }
        }
        if !seen.iter().all(|&s| s) {
            return Err("an index slot is neither used nor vacant".into());
        }
        Ok(())
    }

    /// Checks subtree `t` in rank order; returns how many entries it holds.
    fn check_subtree(
        &self,
        t: u32,
        nodes: &[NodeState],
        seen: &mut [bool],
        previous: &mut Option<Rank>,
    ) -> Result<usize, String> {
        if t == NIL {
            return Ok(0);
        }
        let e = self
            .entries
            .get(t as usize)
            .ok_or_else(|| format!("index links to slot {t}, past its end"))?;
        if std::mem::replace(&mut seen[t as usize], true) {
            return Err(format!("index slot {t} is linked twice"));
        }
        let mut count = self.check_subtree(e.left, nodes, seen, previous)?;
        let id = e.id;
        if previous.is_some_and(|p| p >= e.rank()) {
            return Err(format!("index is out of order at {id}"));
        }
        *previous = Some(e.rank());
        let Ok(i) = nodes.binary_search_by_key(&id, |n| n.id) else {
            return Err(format!("index holds {id}, which is not in the cluster"));
        };
        let node = &nodes[i];
        if !node.schedulable {
            return Err(format!("index holds {id}, which is not schedulable"));
        }
        if e.rank() != Rank::of(node) {
            return Err(format!("index holds {id} at a stale usage"));
        }
        if self.own[t as usize] != Offer::of(node) {
            return Err(format!("index holds a stale offer for {id}"));
        }
        if e.priority != priority(id) {
            return Err(format!("index holds a wrong priority for {id}"));
        }
        let mut subtree = self.own[t as usize];
        for child in [e.left, e.right] {
            if child != NIL {
                let c = self
                    .entries
                    .get(child as usize)
                    .ok_or_else(|| format!("index links to slot {child}, past its end"))?;
                if c.priority > e.priority {
                    return Err(format!("index is not heap-ordered under {id}"));
                }
                subtree = subtree.join(c.subtree);
            }
        }
        if e.subtree != subtree {
            return Err(format!("index holds a stale subtree offer under {id}"));
        }
        count += 1 + self.check_subtree(e.right, nodes, seen, previous)?;
        Ok(count)
    }
}
