//! Which nodes waiting work needs: first-fit decreasing onto the capacity already coming,
//! then onto new nodes of the cheapest type that fits, GPU by GPU through the scheduler's own
//! per-node bookkeeping ([`NodeState`]), so a fraction and its GPU memory land on one GPU.

use std::cmp::Reverse;

use ember_core::ids::NodeId;
use ember_core::proto::GangStrategy;
use ember_core::resources::ResourceDemand;

use super::NodeType;
use crate::placement::node::NodeState;

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
        self.demands().fold((0, 0, 0), |(g, m, c), d| {
            (
                g + u64::from(d.gpus.units()),
                m + d.gpu_memory,
                c + d.cpu_millis,
            )
        })
    }
}

/// The new nodes waiting work needs: each a type (its index) and why.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) launches: Vec<(usize, String)>,
}

/// A node of the plan: coming (launched, not joined) or new, with what the plan put on it.
struct Bin {
    type_index: usize,
    node: NodeState,
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

/// Packs what waits, largest first, onto the coming nodes (`coming`: their types), opening
/// new nodes of the cheapest fitting type for what does not fit. Work that no type can hold
/// is left out (see `Autoscaler::unservable`).
pub(super) fn plan(types: &[NodeType], coming: Vec<usize>, waiting: &[Waiting]) -> Plan {
    let mut bins: Vec<Bin> = coming
        .into_iter()
        .map(|type_index| Bin {
            type_index,
            node: fresh(&types[type_index]),
        })
        .collect();
    let mut order: Vec<&Waiting> = waiting.iter().collect();
    order.sort_by_key(|w| Reverse(w.size()));
    let mut plan = Plan::default();
    for w in order {
        let labels = w.labels();
        let groups: Vec<Vec<&ResourceDemand>> = match w {
            Waiting::Gang {
                bundles,
                strategy: GangStrategy::StrictPack,
            } => vec![bundles.iter().collect()],
            _ => w.demands().map(|d| vec![d]).collect(),
        };
        let distinct = matches!(
            w,
            Waiting::Gang {
                strategy: GangStrategy::StrictSpread,
                ..
            }
        );
        let mut used: Vec<usize> = Vec::new();
        for demands in groups {
            let fits = |b: &Bin| {
                let t = &types[b.type_index];
                demands.iter().all(|d| suits(t, d)) && carries(t, labels)
            };
            let found = (0..bins.len()).find(|&i| {
                !(distinct && used.contains(&i))
                    && fits(&bins[i])
                    && take_all(&mut bins[i].node, &demands)
            });
            let at = match found {
                Some(i) => i,
                None => {
                    let Some(t) = cheapest_for(types, &demands, labels) else {
                        continue;
                    };
                    let mut node = fresh(&types[t]);
                    take_all(&mut node, &demands);
                    let what: Vec<String> = demands.iter().map(|d| d.to_string()).collect();
                    plan.launches.push((
                        t,
                        format!(
                            "waiting work needs [{}]: node type {} is the cheapest that holds it",
                            what.join("; "),
                            types[t].name
                        ),
                    ));
                    bins.push(Bin {
                        type_index: t,
                        node,
                    });
                    bins.len() - 1
                }
            };
            used.push(at);
        }
    }
    plan
}
