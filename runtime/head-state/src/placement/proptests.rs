//! Property tests: random clusters under random sequences of requests, releases, cancels,
//! joins, deaths and drains. After every step the bookkeeping must balance, and every decision
//! must agree with a simple independent oracle built from [`Scheduler::usage`].

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::{
    Decision, GpuUsage, Lease, NodeAffinity, NodeUsage, PlacementError, PlacementRequest,
    Scheduler, Strategy as Placing,
};
use ember_core::ids::{LeaseId, NodeId};
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand, GPU_UNITS};

const GIB: u64 = 1 << 30;
const LABELS: [&str; 3] = ["H100", "L4", "A100"];
const WANTED_LABELS: [&str; 4] = ["H100", "l4", "A100", "TPU9"];
const MEMORIES: [u64; 4] = [16 * GIB, 24 * GIB, 40 * GIB, 80 * GIB];
/// The label of nodes whose executable has the task type `t`.
const TASK_LABEL: &str = "task:t";
const SHARES: [u32; 9] = [0, 10, 25, 33, 50, 75, 100, 200, 300];
const DEMAND_MEMORIES: [u64; 6] = [0, 0, 8 * GIB, 16 * GIB, 32 * GIB, 90 * GIB];

#[derive(Debug, Clone)]
struct NodeSpec {
    cpu_millis: u64,
    gpus: Vec<(usize, usize)>, // (label, memory)
    fpga: Option<u64>,
}

impl NodeSpec {
    fn resources(&self) -> NodeResources {
        NodeResources {
            cpu_millis: self.cpu_millis,
            gpus: self
                .gpus
                .iter()
                .enumerate()
                .map(|(i, &(label, mem))| GpuDevice {
                    index: i as u32,
                    uuid: format!("GPU-{i}"),
                    name: LABELS[label].to_string(),
                    memory: MEMORIES[mem],
                    accelerator: LABELS[label].to_string(),
                    logical: true,
                })
                .collect(),
            custom: self
                .fpga
                .map(|v| ("fpga".to_string(), v))
                .into_iter()
                .collect(),
            // Half the nodes' executables have the task type `t`.
            labels: if self.cpu_millis % 2 == 0 {
                vec![TASK_LABEL.to_string()]
            } else {
                Vec::new()
            },
        }
    }
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        0u64..=16_000,
        prop::collection::vec((0..LABELS.len(), 0..MEMORIES.len()), 0..=4),
        prop::option::of(0u64..=4000),
    )
        .prop_map(|(cpu_millis, gpus, fpga)| NodeSpec {
            cpu_millis,
            gpus,
            fpga,
        })
}

#[derive(Debug, Clone)]
struct DemandSpec {
    cpu_millis: u64,
    share: usize,
    memory: usize,
    accelerator: Option<usize>,
    fpga: Option<u64>,
    spread: bool,
    affinity: Option<(usize, bool)>,
    priority: i32,
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
}

fn demand_spec() -> impl Strategy<Value = DemandSpec> {
    (
        (0u64..=8_000, 0..SHARES.len(), 0..DEMAND_MEMORIES.len()),
        prop::option::weighted(0.3, 0..WANTED_LABELS.len()),
        prop::option::weighted(0.2, 0u64..=3000),
        any::<bool>(),
        prop::option::weighted(0.2, (0usize..16, any::<bool>())),
        -2i32..=2,
    )
        .prop_map(
            |((cpu_millis, share, memory), accelerator, fpga, spread, affinity, priority)| {
                DemandSpec {
                    cpu_millis,
                    share,
                    memory,
                    accelerator,
                    fpga,
                    spread,
                    affinity,
                    priority,
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => demand_spec().prop_map(Op::Request),
        5 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => node_spec().prop_map(Op::AddNode),
        1 => any::<usize>().prop_map(Op::RemoveNode),
        1 => (any::<usize>(), prop::bool::weighted(0.6)).prop_map(|(n, b)| Op::SetSchedulable(n, b)),
        3 => Just(Op::PlaceQueued),
    ]
}

/// Whether `d` fits on the node described by `u`, now (`now`) or if it were entirely free.
fn oracle_fits(u: &NodeUsage, d: &ResourceDemand, now: bool) -> bool {
    let cpu = if now {
        u.cpu_millis_free
    } else {
        u.cpu_millis_total
    };
    if cpu < d.cpu_millis {
        return false;
    }
    for (name, amount) in &d.custom {
        let have = u.custom.iter().find(|c| &c.name == name).map_or(0, |c| {
            if now {
                c.free_millis
            } else {
                c.total_millis
            }
        });
        if have < *amount {
            return false;
        }
    }
    let ok_label = |g: &GpuUsage| {
        d.accelerator
            .as_ref()
            .is_none_or(|a| a.eq_ignore_ascii_case(&g.accelerator))
    };
    let mem_free = |g: &GpuUsage| {
        if now {
            g.memory_total - g.memory_reserved
        } else {
            g.memory_total
        }
    };
    let share_free = |g: &GpuUsage| {
        if now {
            g.share_free.units()
        } else {
            GPU_UNITS
        }
    };
    let units = d.gpus.units();
    if units == 0 {
        true
    } else if units < GPU_UNITS {
        u.gpus
            .iter()
            .any(|g| ok_label(g) && share_free(g) >= units && mem_free(g) >= d.gpu_memory)
    } else {
        let n = u
            .gpus
            .iter()
            .filter(|g| ok_label(g) && share_free(g) == GPU_UNITS && mem_free(g) >= d.gpu_memory)
            .count() as u32;
        n >= units / GPU_UNITS
    }
}

/// The nodes a request may go to: its hard-affinity node, or every node; draining ones never.
fn eligible(s: &Scheduler, r: &PlacementRequest) -> Vec<NodeUsage> {
    s.node_ids()
        .filter_map(|id| s.usage(id))
        .filter(|u| u.schedulable)
        .filter(|u| r.labels.iter().all(|l| u.labels.contains(l)))
        .filter(|u| match r.affinity {
            Some(NodeAffinity { node, soft: false }) => u.node == node,
            _ => true,
        })
        .collect()
}

/// Checks that a lease holds exactly what its request asked for, on a real node.
fn check_allocation(s: &Scheduler, r: &PlacementRequest, l: &Lease) -> Result<(), TestCaseError> {
    let d = &r.demand;
    let a = &l.allocation;
    prop_assert_eq!(l.id, r.lease);
    let u = s.usage(l.node).expect("lease on a known node");
    prop_assert_eq!(a.cpu_millis, d.cpu_millis);
    let want_custom: Vec<_> = d.custom.iter().filter(|(_, v)| *v > 0).cloned().collect();
    prop_assert_eq!(&a.custom, &want_custom);
    prop_assert_eq!(a.gpus.len() as u32, d.gpus.devices());
    let mut seen = BTreeSet::new();
    for g in &a.gpus {
        prop_assert!(seen.insert(g.index), "GPU {} granted twice", g.index);
        let dev = u
            .gpus
            .iter()
            .find(|x| x.index == g.index)
            .expect("a real GPU");
        prop_assert_eq!(g.memory, d.gpu_memory);
        prop_assert!(g.memory <= dev.memory_total);
        if let Some(acc) = &d.accelerator {
            prop_assert!(acc.eq_ignore_ascii_case(&dev.accelerator));
        }
        if d.gpus.is_fraction() {
            prop_assert_eq!(g.share, d.gpus);
        } else {
            prop_assert_eq!(g.share, GpuShare::ONE);
        }
    }
    if let Some(NodeAffinity { node, soft: false }) = r.affinity {
        prop_assert_eq!(l.node, node);
    }
    Ok(())
}

fn is_validation(e: &PlacementError) -> bool {
    matches!(
        e,
        PlacementError::GpuMemoryWithoutGpus
            | PlacementError::AcceleratorWithoutGpus
            | PlacementError::InvalidGpus(_)
            | PlacementError::DuplicateCustom(_)
            | PlacementError::AlreadyKnown(_)
    )
}

fn run(specs: Vec<NodeSpec>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut s = Scheduler::new();
    let mut next_node = 0u64;
    let mut next_lease = 0u64;
    for spec in &specs {
        next_node += 1;
        s.add_node(NodeId(next_node), spec.resources());
    }
    let mut live: BTreeMap<LeaseId, PlacementRequest> = BTreeMap::new();
    let mut waiting: BTreeMap<LeaseId, PlacementRequest> = BTreeMap::new();
    let mut removed: BTreeSet<NodeId> = BTreeSet::new();

    for op in ops {
        let ids: Vec<NodeId> = s.node_ids().collect();
        match op {
            Op::Request(spec) => {
                next_lease += 1;
                let mut demand = ResourceDemand {
                    cpu_millis: spec.cpu_millis,
                    gpus: GpuShare::from_units(SHARES[spec.share]),
                    gpu_memory: DEMAND_MEMORIES[spec.memory],
                    accelerator: spec.accelerator.map(|i| WANTED_LABELS[i].to_string()),
                    custom: Vec::new(),
                };
                if let Some(v) = spec.fpga {
                    demand.set_custom("fpga", v);
                }
                let affinity = spec.affinity.map(|(i, soft)| NodeAffinity {
                    // Sometimes a node that is gone or never was.
                    node: if i < ids.len() {
                        ids[i]
                    } else {
                        NodeId(i as u64)
                    },
                    soft,
                });
                let r = PlacementRequest {
                    lease: LeaseId(next_lease),
                    demand,
                    strategy: if spec.spread {
                        Placing::Spread
                    } else {
                        Placing::Pack
                    },
                    affinity,
                    priority: spec.priority,
                    // Half the requests need a node whose executable has `t`.
                    labels: if spec.priority % 2 == 0 {
                        vec![TASK_LABEL.to_string()]
                    } else {
                        Vec::new()
                    },
                };
                let elig = eligible(&s, &r);
                let fits_now = elig.iter().any(|u| oracle_fits(u, &r.demand, true));
                let fits_ever = elig.iter().any(|u| oracle_fits(u, &r.demand, false));
                match s.request(r.clone()) {
                    Decision::Placed(l) => {
                        prop_assert!(fits_now, "placed where the oracle says nothing fits");
                        if let Some(NodeAffinity { node, soft: true }) = r.affinity {
                            if elig
                                .iter()
                                .any(|u| u.node == node && oracle_fits(u, &r.demand, true))
                            {
                                prop_assert_eq!(l.node, node);
                            }
                        }
                        check_allocation(&s, &r, &l)?;
                        prop_assert_eq!(s.lease(l.id), Some(&l));
                        live.insert(l.id, r);
                    }
                    Decision::Queued => {
                        prop_assert!(!fits_now, "queued though it fits now");
                        prop_assert!(fits_ever, "queued though it can never fit");
                        waiting.insert(r.lease, r);
                    }
                    Decision::Rejected(e) => {
                        if !is_validation(&e) {
                            prop_assert!(!fits_ever, "rejected ({e}) though it could fit");
                        }
                        prop_assert!(!e.to_string().is_empty());
                    }
                }
            }
            Op::Release(i) => {
                if !live.is_empty() {
                    let id = *live.keys().nth(i % live.len()).unwrap();
                    prop_assert!(s.release(id));
                    prop_assert!(!s.release(id));
                    live.remove(&id);
                }
            }
            Op::Cancel(i) => {
                if !waiting.is_empty() {
                    let id = *waiting.keys().nth(i % waiting.len()).unwrap();
                    prop_assert!(s.cancel(id));
                    prop_assert!(!s.cancel(id));
                    waiting.remove(&id);
                }
            }
            Op::AddNode(spec) => {
                next_node += 1;
                s.add_node(NodeId(next_node), spec.resources());
            }
            Op::RemoveNode(i) => {
                if !ids.is_empty() {
                    let id = ids[i % ids.len()];
                    let gone = s.remove_node(id);
                    for l in &gone {
                        prop_assert_eq!(l.node, id);
                        prop_assert!(live.remove(&l.id).is_some());
                    }
                    removed.insert(id);
                }
            }
            Op::SetSchedulable(i, on) => {
                if !ids.is_empty() {
                    s.set_schedulable(ids[i % ids.len()], on);
                }
            }
            Op::PlaceQueued => {
                let order: Vec<LeaseId> = s.queued().map(|r| r.lease).collect();
                let now = s.place_queued();
                let mut last = 0;
                for l in &now {
                    let r = waiting.remove(&l.id).expect("placed a queued request");
                    check_allocation(&s, &r, l)?;
                    let pos = order.iter().position(|x| *x == l.id).unwrap();
                    prop_assert!(pos >= last, "placed out of queue order");
                    last = pos;
                    live.insert(l.id, r);
                }
                // Nothing left in the queue fits now: a big request blocks no small one.
                for r in s.queued() {
                    let fits = eligible(&s, r)
                        .iter()
                        .any(|u| oracle_fits(u, &r.demand, true));
                    prop_assert!(!fits, "{} left queued though it fits", r.lease);
                }
            }
        }
        if let Err(e) = s.check_invariants() {
            return Err(TestCaseError::fail(e));
        }
        let nodes: BTreeSet<NodeId> = s.node_ids().collect();
        for l in s.leases() {
            prop_assert!(nodes.contains(&l.node) && !removed.contains(&l.node));
        }
        let placed: BTreeSet<LeaseId> = s.leases().map(|l| l.id).collect();
        prop_assert_eq!(&placed, &live.keys().copied().collect::<BTreeSet<_>>());
        let queued: BTreeSet<LeaseId> = s.queued().map(|r| r.lease).collect();
        prop_assert_eq!(&queued, &waiting.keys().copied().collect::<BTreeSet<_>>());
        let prios: Vec<i32> = s.queued().map(|r| r.priority).collect();
        prop_assert!(prios.windows(2).all(|w| w[0] >= w[1]), "queue out of order");
    }

    for id in live.keys() {
        prop_assert!(s.release(*id));
    }
    for id in waiting.keys() {
        prop_assert!(s.cancel(*id));
    }
    prop_assert_eq!(s.queued_len(), 0);
    for id in s.node_ids() {
        let u = s.usage(id).unwrap();
        prop_assert_eq!(u.cpu_millis_free, u.cpu_millis_total);
        prop_assert_eq!(u.leases, 0);
        for g in &u.gpus {
            prop_assert_eq!(g.share_free, GpuShare::ONE);
            prop_assert_eq!(g.share_used, GpuShare::ZERO);
            prop_assert_eq!(g.memory_reserved, 0);
        }
        for c in &u.custom {
            prop_assert_eq!(c.free_millis, c.total_millis);
        }
    }
    if let Err(e) = s.check_invariants() {
        return Err(TestCaseError::fail(e));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn placement_never_over_commits_and_never_leaks(
        specs in prop::collection::vec(node_spec(), 1..=8),
        ops in prop::collection::vec(op(), 1..=200),
    ) {
        run(specs, ops)?;
    }
}
