//! The plan packs by shape (each shape starting where its last request found every node
//! full, skipping ranges of nodes that cannot hold it), only as far as a pass asks; this
//! checks it against first fit from the first node for every request, the whole plan made at
//! once as it was before ([`plan_by_scan`]): on random node types, coming nodes and waiting
//! work (requests from small menus, so shapes repeat, and gangs of every strategy), the same
//! launches, in the same order, for the same reasons.

use std::cmp::Reverse;

use proptest::prelude::*;

use super::{carries, cheapest_for, fresh, plan, suits, Bin, Waiting};
use crate::autoscale::NodeType;
use ember_core::proto::GangStrategy;
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand};

const GIB: u64 = 1 << 30;
const ACCELERATORS: [&str; 2] = ["H100", "L4"];
const TYPE_GPUS: [u32; 5] = [0, 1, 2, 4, 8];
const TYPE_CPUS: [u64; 3] = [4_000, 16_000, 64_000];
const TYPE_MEMORIES: [u64; 2] = [24 * GIB, 80 * GIB];
const LABELS: [&str; 2] = ["task:a", "task:b"];
const CPUS: [u64; 4] = [0, 1_000, 4_000, 9_000];
const SHARES: [u32; 9] = [0, 0, 10, 25, 50, 60, 100, 200, 400];
const MEMORIES: [u64; 3] = [0, 16 * GIB, 40 * GIB];
const STRATEGIES: [GangStrategy; 4] = [
    GangStrategy::Pack,
    GangStrategy::Spread,
    GangStrategy::StrictPack,
    GangStrategy::StrictSpread,
];

/// The plan as it was before shapes: every request looks at every node from the first. Its
/// launches, each with why.
fn plan_by_scan(
    types: &[NodeType],
    coming: Vec<usize>,
    waiting: &[Waiting],
) -> Vec<(usize, String)> {
    let mut bins: Vec<Bin> = coming
        .into_iter()
        .map(|type_index| Bin {
            type_index,
            node: fresh(&types[type_index]),
        })
        .collect();
    let mut order: Vec<&Waiting> = waiting.iter().collect();
    order.sort_by_key(|w| Reverse(w.size()));
    let mut launches = Vec::new();
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
                    && trial(&mut bins[i].node, &demands)
            });
            let at = match found {
                Some(i) => i,
                None => {
                    let Some(t) = cheapest_for(types, &demands, labels) else {
                        continue;
                    };
                    let mut node = fresh(&types[t]);
                    trial(&mut node, &demands);
                    let what: Vec<String> = demands.iter().map(|d| d.to_string()).collect();
                    launches.push((
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
    launches
}

/// The plan's launches, each with why, asked for one at a time until there are no more.
fn plan_by_shape(
    types: &[NodeType],
    coming: Vec<usize>,
    waiting: &[Waiting],
) -> Vec<(usize, String)> {
    let mut plan = plan(coming, waiting);
    std::iter::from_fn(|| plan.next_launch(types))
        .map(|(t, why)| (t, why.reason(&types[t])))
        .collect()
}

/// Every demand allocated in order on a copy, kept only if all fit: no shortcut.
fn trial(node: &mut crate::placement::node::NodeState, demands: &[&ResourceDemand]) -> bool {
    let mut copy = node.clone();
    if demands.iter().all(|d| copy.allocate(d).is_some()) {
        *node = copy;
        true
    } else {
        false
    }
}

#[derive(Debug, Clone)]
struct TypeSpec {
    gpus: usize,
    cpus: usize,
    accelerator: usize,
    memory: usize,
    fpga: bool,
    labels: usize,
    price: u64,
}

fn node_type(i: usize, s: &TypeSpec) -> NodeType {
    NodeType {
        name: format!("type-{i}"),
        resources: NodeResources {
            cpu_millis: TYPE_CPUS[s.cpus],
            gpus: (0..TYPE_GPUS[s.gpus])
                .map(|index| GpuDevice {
                    index,
                    uuid: format!("GPU-{index}"),
                    name: ACCELERATORS[s.accelerator].into(),
                    memory: TYPE_MEMORIES[s.memory],
                    accelerator: ACCELERATORS[s.accelerator].into(),
                    logical: true,
                })
                .collect(),
            custom: if s.fpga {
                vec![("fpga".into(), 2_000)]
            } else {
                Vec::new()
            },
            // 0: every label (none listed); 1, 2: one of them.
            labels: match s.labels {
                0 => Vec::new(),
                l => vec![LABELS[l - 1].into()],
            },
        },
        min: 0,
        max: 100,
        warm: 0,
        price_micros_per_hour: s.price,
        spot: false,
        idle_timeout: std::time::Duration::from_secs(60),
    }
}

fn type_spec() -> impl Strategy<Value = TypeSpec> {
    (
        0..5usize,
        0..3usize,
        0..2usize,
        0..2usize,
        any::<bool>(),
        0..3usize,
        1..4u64,
    )
        .prop_map(
            |(gpus, cpus, accelerator, memory, fpga, labels, price)| TypeSpec {
                gpus,
                cpus,
                accelerator,
                memory,
                fpga,
                labels,
                price,
            },
        )
}

fn demand() -> impl Strategy<Value = ResourceDemand> {
    (0..4usize, 0..9usize, 0..3usize, 0..3usize, 0..4usize).prop_map(
        |(cpus, share, memory, accelerator, fpga)| {
            let gpus = GpuShare::from_units(SHARES[share]);
            let with_gpus = gpus.units() > 0;
            let mut d = ResourceDemand {
                cpu_millis: CPUS[cpus],
                gpus,
                gpu_memory: if with_gpus { MEMORIES[memory] } else { 0 },
                accelerator: match accelerator {
                    1 | 2 if with_gpus => Some(ACCELERATORS[accelerator - 1].into()),
                    _ => None,
                },
                ..ResourceDemand::default()
            };
            if fpga == 0 {
                d.set_custom("fpga", 1_000);
            }
            d
        },
    )
}

fn waiting() -> impl Strategy<Value = Waiting> {
    prop_oneof![
        4 => (demand(), 0..3usize).prop_map(|(demand, labels)| Waiting::Request {
            demand,
            labels: match labels {
                0 => Vec::new(),
                l => vec![LABELS[l - 1].into()],
            },
        }),
        1 => (prop::collection::vec(demand(), 0..5), 0..4usize).prop_map(
            |(bundles, strategy)| Waiting::Gang {
                bundles,
                strategy: STRATEGIES[strategy],
            }
        ),
    ]
}

proptest! {
    #[test]
    fn packing_by_shape_plans_exactly_what_first_fit_from_the_first_node_does(
        specs in prop::collection::vec(type_spec(), 1..5),
        coming in prop::collection::vec(0..5usize, 0..12),
        waiting in prop::collection::vec(waiting(), 0..150),
    ) {
        let types: Vec<NodeType> = specs.iter().enumerate().map(|(i, s)| node_type(i, s)).collect();
        let coming: Vec<usize> = coming.into_iter().map(|c| c % types.len()).collect();
        let by_shape = plan_by_shape(&types, coming.clone(), &waiting);
        let by_scan = plan_by_scan(&types, coming, &waiting);
        prop_assert_eq!(by_shape, by_scan);
    }
}

/// A strict-spread gang whose bundle shape already found the first nodes full: its bundles
/// start where that shape left off, skip the nodes its other bundles took (though they have
/// room) without moving past them, and the requests after it fill those nodes.
#[test]
fn a_strict_spread_gang_skips_its_own_nodes_without_losing_them_for_its_shape() {
    let spec = TypeSpec {
        gpus: 3,
        cpus: 2,
        accelerator: 0,
        memory: 1,
        fpga: false,
        labels: 0,
        price: 1,
    };
    let types = vec![node_type(0, &spec)];
    let gpus = |units| ResourceDemand {
        gpus: GpuShare::from_units(units),
        ..ResourceDemand::default()
    };
    let request = |units| Waiting::Request {
        demand: gpus(units),
        labels: Vec::new(),
    };
    // Largest first: two whole nodes fill coming nodes 0 and 1; the gang's first bundle finds
    // them full and takes 2, its others take new nodes 3 and 4; five GPUs then go to 2 (3
    // free) and 3 (2 of its 3 free).
    let mut waiting = vec![request(100); 5];
    waiting.push(Waiting::Gang {
        bundles: vec![gpus(100); 3],
        strategy: GangStrategy::StrictSpread,
    });
    waiting.extend([request(400), request(400)]);
    let by_shape = plan_by_shape(&types, vec![0, 0, 0], &waiting);
    let by_scan = plan_by_scan(&types, vec![0, 0, 0], &waiting);
    assert_eq!(by_shape, by_scan);
    assert_eq!(by_shape.len(), 2, "{by_shape:?}");
}
