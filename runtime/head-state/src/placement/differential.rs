//! The differential test of the index: two schedulers take the same random sequence of joins,
//! requests, releases, cancels, drains and deaths, one choosing nodes through its index (and
//! passing over its queue by groups) and one by scanning every node ([`choose_linear`]) and
//! trying every queued request in turn, placement as it was before the index. Every
//! answer must be the same, lease for lease and GPU for GPU. Before every request the indexed
//! scheduler is also asked to choose for that demand under both strategies, and must name the
//! node the scan names.
//!
//! A second test drives a long queue with many passes and compares the grouped pass over the
//! queue ([`Scheduler::place_queued`]) with a walk of every queued request (the pass as it was
//! before requests were grouped): the same leases, in the same order, and the same requests
//! left waiting.
//!
//! Nodes and demands come from small menus, so that many nodes are used exactly alike (ties go
//! to the lowest id), many are full, and labels, accelerator types, GPU memory and custom
//! resources all decide feasibility somewhere.

use proptest::prelude::*;

use super::{choose_linear, NodeAffinity, PlacementRequest, Scheduler, Strategy as Placing};
use ember_core::ids::{LeaseId, NodeId};
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand};

const GIB: u64 = 1 << 30;
const LABELS: [&str; 2] = ["task:t", "actor:a"];
const ACCELERATORS: [&str; 2] = ["H100", "L4"];
const WANTED_ACCELERATORS: [&str; 3] = ["h100", "L4", "TPU9"];
const NODE_CPUS: [u64; 4] = [0, 4_000, 8_000, 16_000];
const NODE_MEMORIES: [u64; 2] = [24 * GIB, 80 * GIB];
const CPUS: [u64; 5] = [0, 1_000, 2_000, 4_000, 9_000];
const SHARES: [u32; 7] = [0, 0, 25, 50, 75, 100, 200];
const MEMORIES: [u64; 4] = [0, 0, 16 * GIB, 40 * GIB];

#[derive(Debug, Clone)]
struct NodeSpec {
    cpus: usize,
    gpus: usize,
    accelerator: usize,
    memory: usize,
    fpga: bool,
    labels: usize,
}

impl NodeSpec {
    fn resources(&self) -> NodeResources {
        NodeResources {
            cpu_millis: NODE_CPUS[self.cpus],
            gpus: (0..self.gpus as u32)
                .map(|i| GpuDevice {
                    index: i,
                    uuid: format!("GPU-{i}"),
                    name: ACCELERATORS[self.accelerator].to_string(),
                    memory: NODE_MEMORIES[self.memory],
                    accelerator: ACCELERATORS[self.accelerator].to_string(),
                    logical: true,
                })
                .collect(),
            custom: if self.fpga {
                vec![("fpga".to_string(), 2_000)]
            } else {
                Vec::new()
            },
            labels: labels(self.labels),
        }
    }
}

/// The labels of a bit set over [`LABELS`].
fn labels(bits: usize) -> Vec<String> {
    LABELS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, l)| l.to_string())
        .collect()
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        0..NODE_CPUS.len(),
        0usize..=4,
        0..ACCELERATORS.len(),
        0..NODE_MEMORIES.len(),
        prop::bool::weighted(0.2),
        0usize..4,
    )
        .prop_map(|(cpus, gpus, accelerator, memory, fpga, labels)| NodeSpec {
            cpus,
            gpus,
            accelerator,
            memory,
            fpga,
            labels,
        })
}

#[derive(Debug, Clone)]
struct DemandSpec {
    cpus: usize,
    share: usize,
    memory: usize,
    accelerator: Option<usize>,
    fpga: bool,
    labels: usize,
    spread: bool,
    affinity: Option<(usize, bool)>,
    priority: i32,
}

impl DemandSpec {
    fn request(&self, lease: LeaseId, nodes: &[NodeId]) -> PlacementRequest {
        let share = SHARES[self.share];
        let mut demand = ResourceDemand {
            cpu_millis: CPUS[self.cpus],
            gpus: GpuShare::from_units(share),
            // Memory and accelerator types only with GPUs, so that the request is valid.
            gpu_memory: if share > 0 { MEMORIES[self.memory] } else { 0 },
            accelerator: self
                .accelerator
                .filter(|_| share > 0)
                .map(|i| WANTED_ACCELERATORS[i].to_string()),
            custom: Vec::new(),
        };
        if self.fpga {
            demand.set_custom("fpga", 1_000);
        }
        PlacementRequest {
            lease,
            demand,
            strategy: if self.spread {
                Placing::Spread
            } else {
                Placing::Pack
            },
            affinity: self.affinity.map(|(i, soft)| NodeAffinity {
                node: nodes.get(i).copied().unwrap_or(NodeId(i as u64 + 1_000)),
                soft,
            }),
            priority: self.priority,
            labels: labels(self.labels),
        }
    }
}

fn demand_spec() -> impl Strategy<Value = DemandSpec> {
    (
        (0..CPUS.len(), 0..SHARES.len(), 0..MEMORIES.len()),
        prop::option::weighted(0.3, 0..WANTED_ACCELERATORS.len()),
        prop::bool::weighted(0.15),
        0usize..4,
        any::<bool>(),
        prop::option::weighted(0.1, (0usize..48, any::<bool>())),
        -1i32..=1,
    )
        .prop_map(
            |((cpus, share, memory), accelerator, fpga, labels, spread, affinity, priority)| {
                DemandSpec {
                    cpus,
                    share,
                    memory,
                    accelerator,
                    fpga,
                    labels,
                    spread,
                    affinity,
                    priority,
                }
            },
        )
}

#[derive(Debug, Clone)]
enum Op {
    Request(DemandSpec),
    Release(usize),
    Cancel(usize),
    AddNode(NodeSpec),
    RemoveNode(usize),
    SetSchedulable(usize, bool),
    PlaceQueued,
    /// A release followed by a pass, as the head does.
    ReleaseAndPass(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => demand_spec().prop_map(Op::Request),
        6 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => node_spec().prop_map(Op::AddNode),
        1 => any::<usize>().prop_map(Op::RemoveNode),
        2 => (any::<usize>(), prop::bool::weighted(0.6)).prop_map(|(n, b)| Op::SetSchedulable(n, b)),
        3 => Just(Op::PlaceQueued),
    ]
}

/// Operations that keep a long queue and pass over it often: many requests (of few priorities,
/// so that groups interleave), releases each followed by a pass, and drains and joins that
/// make whole groups fit or miss at once.
fn queue_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        14 => demand_spec().prop_map(Op::Request),
        8 => any::<usize>().prop_map(Op::ReleaseAndPass),
        1 => any::<usize>().prop_map(Op::Release),
        2 => any::<usize>().prop_map(Op::Cancel),
        1 => node_spec().prop_map(Op::AddNode),
        1 => any::<usize>().prop_map(Op::RemoveNode),
        2 => (any::<usize>(), prop::bool::weighted(0.6)).prop_map(|(n, b)| Op::SetSchedulable(n, b)),
        2 => Just(Op::PlaceQueued),
    ]
}

/// Checks that the index chooses what the scan chooses for `req` under both strategies, on
/// the indexed scheduler's current state.
fn same_choice(s: &Scheduler, req: &PlacementRequest) -> Result<(), TestCaseError> {
    for strategy in [Placing::Pack, Placing::Spread] {
        let req = PlacementRequest {
            strategy,
            ..req.clone()
        };
        let by_index = s.choose(&req).map(|i| s.nodes[i].id);
        let by_scan = choose_linear(&s.nodes, &req).map(|i| s.nodes[i].id);
        prop_assert_eq!(by_index, by_scan, "{:?} chose differently", strategy);
    }
    Ok(())
}

/// Drives the scheduler under test (`Scheduler::new`) and `reference` through the same
/// operations; every answer, and the queue after every pass, must be the same.
/// Checks that both schedulers hold the same requests waiting, in the same order.
fn same_queue(s: &Scheduler, reference: &Scheduler) -> Result<(), TestCaseError> {
    let waiting = |s: &Scheduler| s.queued().map(|r| r.lease).collect::<Vec<_>>();
    prop_assert_eq!(
        waiting(s),
        waiting(reference),
        "the queues differ after a pass"
    );
    Ok(())
}

fn run(
    specs: Vec<NodeSpec>,
    ops: Vec<Op>,
    reference: fn() -> Scheduler,
) -> Result<(), TestCaseError> {
    let mut indexed = Scheduler::new();
    let mut scan = reference();
    let mut next_node = 0;
    let mut next_lease = 0;
    for spec in &specs {
        next_node += 1;
        indexed.add_node(NodeId(next_node), spec.resources());
        scan.add_node(NodeId(next_node), spec.resources());
    }
    for op in ops {
        let ids: Vec<NodeId> = indexed.node_ids().collect();
        let live: Vec<LeaseId> = {
            let mut l: Vec<LeaseId> = indexed.leases().map(|l| l.id).collect();
            l.sort();
            l
        };
        match op {
            Op::Request(spec) => {
                next_lease += 1;
                let req = spec.request(LeaseId(next_lease), &ids);
                same_choice(&indexed, &req)?;
                prop_assert_eq!(indexed.request(req.clone()), scan.request(req));
            }
            Op::Release(i) => {
                if let Some(&id) = live.get(i % live.len().max(1)) {
                    prop_assert_eq!(indexed.release(id), scan.release(id));
                }
            }
            Op::Cancel(i) => {
                let queued: Vec<LeaseId> = indexed.queued().map(|r| r.lease).collect();
                if let Some(&id) = queued.get(i % queued.len().max(1)) {
                    prop_assert_eq!(indexed.cancel(id), scan.cancel(id));
                }
            }
            Op::AddNode(spec) => {
                next_node += 1;
                indexed.add_node(NodeId(next_node), spec.resources());
                scan.add_node(NodeId(next_node), spec.resources());
            }
            Op::RemoveNode(i) => {
                if let Some(&id) = ids.get(i % ids.len().max(1)) {
                    prop_assert_eq!(indexed.remove_node(id), scan.remove_node(id));
                }
            }
            Op::SetSchedulable(i, on) => {
                if let Some(&id) = ids.get(i % ids.len().max(1)) {
                    indexed.set_schedulable(id, on);
                    scan.set_schedulable(id, on);
                }
            }
            Op::PlaceQueued => {
                prop_assert_eq!(indexed.place_queued(), scan.place_queued());
                same_queue(&indexed, &scan)?;
            }
            Op::ReleaseAndPass(i) => {
                if let Some(&id) = live.get(i % live.len().max(1)) {
                    prop_assert_eq!(indexed.release(id), scan.release(id));
                    prop_assert_eq!(indexed.place_queued(), scan.place_queued());
                    same_queue(&indexed, &scan)?;
                    // A pass leaves nothing that fits: a second one at once places nothing.
                    prop_assert_eq!(indexed.place_queued(), Vec::new());
                }
            }
        }
        indexed.check_invariants().map_err(TestCaseError::fail)?;
        scan.check_invariants().map_err(TestCaseError::fail)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_index_chooses_what_a_scan_of_every_node_chooses(
        specs in prop::collection::vec(node_spec(), 1..=40),
        ops in prop::collection::vec(op(), 1..=300),
    ) {
        run(specs, ops, Scheduler::choosing_by_scan)?;
    }

    /// The grouped pass over the queue against a walk of every queued request (both choosing
    /// through the index): the same requests placed, in the same order, on the same nodes and
    /// GPUs, and the same requests left waiting in the same order.
    #[test]
    fn a_grouped_pass_places_what_a_walk_of_the_whole_queue_places(
        specs in prop::collection::vec(node_spec(), 1..=24),
        ops in prop::collection::vec(queue_op(), 1..=400),
    ) {
        run(specs, ops, Scheduler::walking_whole_queue)?;
    }
}
