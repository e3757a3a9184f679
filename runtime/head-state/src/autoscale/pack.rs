//! Which nodes waiting work needs: first-fit decreasing onto the capacity already coming,
//! then onto new nodes of the cheapest type that fits, GPU by GPU through the scheduler's own
//! per-node bookkeeping ([`NodeState`]), so a fraction and its GPU memory land on one GPU.
//!
//! First fit looks at the nodes of the plan in order, and a plan for 10,000 waiting requests
//! has thousands of them; but many requests are alike. A single demand with its labels is a
//! [`ShapeKey`]: two requests of one shape fit exactly the same nodes. While the plan packs, a
//! node's free capacity only shrinks, so a node that could not take a demand of one shape
//! never can later in the same plan. Each shape keeps how far its requests have found every
//! node full (its cursor), and the next request of that shape starts looking there; from
//! there, a tree of what ranges of nodes offer at most (`bins.rs`) skips the ranges that
//! cannot hold it. Either way first fit chooses the very node it would have chosen looking
//! at every node from the first, which `pack_tests.rs` checks.
//!
//! A pass launches at most what its budget allows (the upscaling speed, the cluster's max),
//! often far fewer nodes than all that waits would need, and none while its launches are
//! still pending. So the plan packs only as far as the pass asks ([`Plan::next_launch`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};

use ember_core::ids::NodeId;
use ember_core::proto::GangStrategy;
use ember_core::resources::ResourceDemand;

use super::NodeType;
use crate::placement::node::NodeState;
use bins::{type_bit, Bin, Bins, Need};

#[path = "bins.rs"]
mod bins;
#[cfg(test)]
#[path = "pack_tests.rs"]
mod tests;

/// Work that fits no live node now, as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// One request, with the labels its node must carry.
    Request {
        /// What it needs.
        demand: ResourceDemand,
        /// Labels its node must carry (`task:NAME`, `actor:NAME`).
        labels: Vec<String>,
    },
    /// A gang waiting to be placed whole.
    Gang {
        /// Its bundles not placed.
        bundles: Vec<ResourceDemand>,
        /// How they spread over nodes.
        strategy: GangStrategy,
    },
}

impl Waiting {
    /// How many requests it counts as: one, or a gang's bundles.
    pub fn requests(&self) -> usize {
        match self {
            Waiting::Request { .. } => 1,
            Waiting::Gang { bundles, .. } => bundles.len(),
        }
    }

    /// Its demands.
    pub fn demands(&self) -> Box<dyn Iterator<Item = &ResourceDemand> + '_> {
        match self {
            Waiting::Request { demand, .. } => Box::new(std::iter::once(demand)),
            Waiting::Gang { bundles, .. } => Box::new(bundles.iter()),
        }
    }

    fn labels(&self) -> &[String] {
        match self {
            Waiting::Request { labels, .. } => labels,
            Waiting::Gang { .. } => &[],
        }
    }

    /// How large it is, for packing the largest first.
    fn size(&self) -> (u64, u64, u64) {
        let demands = match self {
            Waiting::Request { demand, .. } => std::slice::from_ref(demand),
            Waiting::Gang { bundles, .. } => bundles.as_slice(),
        };
        demands.iter().fold((0, 0, 0), |(g, m, c), d| {
            (
                g + u64::from(d.gpus.units()),
                m + d.gpu_memory,
                c + d.cpu_millis,
            )
        })
    }
}

/// Why a node of the plan is needed: the demands that opened it. Only the launches a pass
/// makes are told why, so it is said only when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Why<'w> {
    demands: &'w [ResourceDemand],
}

impl Why<'_> {
    /// Why a node of type `t`.
    pub(super) fn reason(&self, t: &NodeType) -> String {
        let what: Vec<String> = self.demands.iter().map(|d| d.to_string()).collect();
        format!(
            "waiting work needs [{}]: node type {} is the cheapest that holds it",
            what.join("; "),
            t.name
        )
    }
}

fn fresh(t: &NodeType) -> NodeState {
    NodeState::new(NodeId(0), t.resources.clone())
}

/// Whether a node of this type may take the demand at all: GPU work on GPU types, work that
/// needs no GPU on types without GPUs (never a GPU node for CPU-only work).
fn suits(t: &NodeType, d: &ResourceDemand) -> bool {
    let needs_gpus = d.gpus.units() > 0;
    let has_gpus = !t.resources.gpus.is_empty();
    needs_gpus == has_gpus
}

/// Whether a node of this type carries `labels`. A type that lists no labels runs the
/// cluster's own executable, with every task and actor type: it carries them all.
fn carries(t: &NodeType, labels: &[String]) -> bool {
    t.resources.labels.is_empty() || labels.iter().all(|l| t.resources.labels.contains(l))
}

/// Whether every demand fits on `node` together, allocated in order; on success `node`
/// holds them.
fn take_all(node: &mut NodeState, demands: &[&ResourceDemand]) -> bool {
    if let [d] = demands {
        // `allocate` changes nothing when the demand does not fit.
        return node.allocate(d).is_some();
    }
    // What each needs alone, and what they need together of the CPUs and GPU shares, must be
    // free: checked before trying them on a copy.
    let cpus: u64 = demands.iter().map(|d| d.cpu_millis).sum();
    let units: u64 = demands.iter().map(|d| u64::from(d.gpus.units())).sum();
    if cpus > node.cpu_free
        || units > node.gpu_units_total - node.gpu_units_used
        || !demands.iter().all(|d| node.fits_now(d))
    {
        return false;
    }
    let mut trial = node.clone();
    if demands.iter().all(|d| trial.allocate(d).is_some()) {
        *node = trial;
        true
    } else {
        false
    }
}

/// The cheapest type a fresh node of which holds `d` (and that suits it), ties by name.
pub(super) fn cheapest_type(types: &[NodeType], d: &ResourceDemand) -> Option<usize> {
    cheapest_for(types, &[d], &[])
}

/// The cheapest GPU type that holds `d`, when `d` needs GPUs.
pub(super) fn cheapest_gpu_type(types: &[NodeType], d: &ResourceDemand) -> Option<usize> {
    if d.gpus.units() == 0 {
        return None;
    }
    cheapest_type(types, d)
}

/// The cheapest type that suits every demand, carries `labels`, and whose fresh node holds
/// all of them together.
pub(super) fn cheapest_for(
    types: &[NodeType],
    demands: &[&ResourceDemand],
    labels: &[String],
) -> Option<usize> {
    types
        .iter()
        .enumerate()
        .filter(|(_, t)| demands.iter().all(|d| suits(t, d)))
        .filter(|(_, t)| {
            let mut node = fresh(t);
            carries(t, labels) && take_all(&mut node, demands)
        })
        .min_by_key(|(_, t)| (t.price_micros_per_hour, t.name.as_str()))
        .map(|(i, _)| i)
}

/// What decides which nodes of the plan a single demand fits, and nothing else: its demand
/// and the labels its node must carry. Two demands of one shape fit the same nodes.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ShapeKey<'a> {
    gpu_units: u32,
    cpu_millis: u64,
    gpu_memory: u64,
    accelerator: Option<&'a str>,
    custom: &'a [(String, u64)],
    labels: &'a [String],
}

impl<'a> ShapeKey<'a> {
    fn of(d: &'a ResourceDemand, labels: &'a [String]) -> Self {
        ShapeKey {
            gpu_units: d.gpus.units(),
            cpu_millis: d.cpu_millis,
            gpu_memory: d.gpu_memory,
            accelerator: d.accelerator.as_deref(),
            custom: &d.custom,
            labels,
        }
    }
}

/// The mask ([`type_bit`]) of the allowed types.
fn mask(allowed: &[bool]) -> u64 {
    allowed
        .iter()
        .enumerate()
        .filter(|(_, a)| **a)
        .fold(0, |m, (t, _)| m | type_bit(t))
}

/// What the plan knows of one shape.
struct Shape {
    /// Which types may take it (suit it and carry its labels), by type index.
    allowed: Vec<bool>,
    /// What a node must offer at least to hold it.
    need: Need,
    /// Every node of the plan before this one cannot hold it now, and so never will in this
    /// plan (capacity only shrinks while it packs).
    cursor: usize,
    /// The type of a new node for it, once asked (`Some(None)`: no type holds it).
    cheapest: Option<Option<usize>>,
}

/// The new nodes waiting work needs, made as a pass asks for them
/// ([`Plan::next_launch`]): a pass takes launches until it can make no more, and what waits
/// behind them is never packed.
pub(super) struct Plan<'w> {
    /// The types of the coming nodes, until the plan starts.
    coming: Vec<usize>,
    waiting: &'w [Waiting],
    /// What waits, largest first, and how far it is packed; `None` until the plan starts.
    order: Option<std::vec::IntoIter<&'w Waiting>>,
    /// A fresh node of each type, once one was needed: new nodes are copies of it.
    fresh: Vec<Option<NodeState>>,
    bins: Bins,
    shapes: BTreeMap<ShapeKey<'w>, Shape>,
    /// New nodes opened and not asked for yet (a gang may open several).
    opened: VecDeque<(usize, Why<'w>)>,
}

/// A plan that packs `waiting`, largest first, onto the coming nodes (`coming`: their types),
/// opening new nodes of the cheapest fitting type for what does not fit. Work that no type can
/// hold is left out (see `Autoscaler::unservable`).
pub(super) fn plan(coming: Vec<usize>, waiting: &[Waiting]) -> Plan<'_> {
    Plan {
        coming,
        waiting,
        order: None,
        fresh: Vec::new(),
        bins: Bins::default(),
        shapes: BTreeMap::new(),
        opened: VecDeque::new(),
    }
}

impl<'w> Plan<'w> {
    /// The next new node the waiting work needs: its type (an index into `types`, the
    /// policy's types, the same at every call) and why; `None` once all that waits is packed.
    pub(super) fn next_launch(&mut self, types: &[NodeType]) -> Option<(usize, Why<'w>)> {
        if self.order.is_none() {
            self.start(types);
        }
        loop {
            if let Some(launch) = self.opened.pop_front() {
                return Some(launch);
            }
            let w = self.order.as_mut()?.next()?;
            self.pack(types, w);
        }
    }

    /// The coming nodes, and what waits in the order it is packed.
    fn start(&mut self, types: &[NodeType]) {
        self.fresh = vec![None; types.len()];
        for type_index in std::mem::take(&mut self.coming) {
            let node = self.new_node(types, type_index);
            self.bins.push(Bin { type_index, node });
        }
        let mut order: Vec<&Waiting> = self.waiting.iter().collect();
        // Stable: among equals, the order they wait in.
        order.sort_by_cached_key(|w| Reverse(w.size()));
        self.order = Some(order.into_iter());
    }

    fn new_node(&mut self, types: &[NodeType], t: usize) -> NodeState {
        self.fresh[t]
            .get_or_insert_with(|| fresh(&types[t]))
            .clone()
    }

    /// Packs one waiting item, as first fit would.
    fn pack(&mut self, types: &[NodeType], w: &'w Waiting) {
        let labels = w.labels();
        match w {
            Waiting::Request { demand, .. } => {
                self.single(types, demand, labels, &[]);
            }
            Waiting::Gang {
                bundles,
                strategy: GangStrategy::StrictPack,
            } if bundles.len() != 1 => self.together(types, bundles, labels),
            Waiting::Gang { bundles, strategy } => {
                // Strict spread: each bundle on a node of its own.
                let distinct = *strategy == GangStrategy::StrictSpread;
                let mut used: Vec<usize> = Vec::new();
                for d in bundles {
                    let skip = if distinct { used.as_slice() } else { &[] };
                    if let Some(at) = self.single(types, d, labels, skip) {
                        used.push(at);
                    }
                }
            }
        }
    }

    /// Puts one demand on the first node of the plan that holds it (none of `skip`), or on a
    /// new node of the cheapest type that does; returns which, or `None` when no type can.
    fn single(
        &mut self,
        types: &[NodeType],
        d: &'w ResourceDemand,
        labels: &'w [String],
        skip: &[usize],
    ) -> Option<usize> {
        let shape = self
            .shapes
            .entry(ShapeKey::of(d, labels))
            .or_insert_with(|| {
                let allowed: Vec<bool> = types
                    .iter()
                    .map(|t| suits(t, d) && carries(t, labels))
                    .collect();
                Shape {
                    need: Need::of(mask(&allowed), [d]),
                    allowed,
                    cursor: 0,
                    cheapest: None,
                }
            });
        // The cursor moves only over nodes that cannot hold the shape, never over a skipped
        // one that might.
        let mut behind = true;
        let mut from = shape.cursor;
        while let Some(i) = self.bins.first(from, &shape.need) {
            from = i + 1;
            if behind {
                shape.cursor = i;
            }
            if skip.contains(&i) {
                behind = false;
                continue;
            }
            if shape.allowed[self.bins.type_of(i)] && self.bins.take(i, &[d]) {
                return Some(i);
            }
            if behind {
                shape.cursor = i + 1;
            }
        }
        if behind {
            shape.cursor = self.bins.len();
        }
        let prototypes = &mut self.fresh;
        let t = (*shape.cheapest.get_or_insert_with(|| {
            // As `cheapest_for`: a fresh node holds a single demand when it fits there.
            types
                .iter()
                .enumerate()
                .filter(|(i, t)| {
                    shape.allowed[*i] && prototypes[*i].get_or_insert_with(|| fresh(t)).fits_now(d)
                })
                .min_by_key(|(_, t)| (t.price_micros_per_hour, t.name.as_str()))
                .map(|(i, _)| i)
        }))?;
        Some(self.open(types, t, std::slice::from_ref(d)))
    }

    /// Puts demands that go together (a strict-pack gang) on the first node of the plan that
    /// holds them all, or on a new node of the cheapest type that does.
    fn together(&mut self, types: &[NodeType], bundles: &'w [ResourceDemand], labels: &[String]) {
        let demands: Vec<&ResourceDemand> = bundles.iter().collect();
        let demands = demands.as_slice();
        let allowed: Vec<bool> = types
            .iter()
            .map(|t| demands.iter().all(|d| suits(t, d)) && carries(t, labels))
            .collect();
        let need = Need::of(mask(&allowed), demands.iter().copied());
        let mut from = 0;
        while let Some(i) = self.bins.first(from, &need) {
            if allowed[self.bins.type_of(i)] && self.bins.take(i, demands) {
                return;
            }
            from = i + 1;
        }
        if let Some(t) = cheapest_for(types, demands, labels) {
            self.open(types, t, bundles);
        }
    }

    /// A new node of type `t` holding `demands`, launched for them; returns its place.
    fn open(&mut self, types: &[NodeType], t: usize, demands: &'w [ResourceDemand]) -> usize {
        let mut node = self.new_node(types, t);
        if let [d] = demands {
            take_all(&mut node, &[d]);
        } else {
            let refs: Vec<&ResourceDemand> = demands.iter().collect();
            take_all(&mut node, &refs);
        }
        self.opened.push_back((t, Why { demands }));
        self.bins.push(Bin {
            type_index: t,
            node,
        });
        self.bins.len() - 1
    }
}
