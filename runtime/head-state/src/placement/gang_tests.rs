//! Gangs: placed all or nothing with each strategy, waiting holding nothing, refused when no
//! set of nodes could hold them, work placed inside bundles, removal, and a node's death
//! placing only its bundles again; then a property test of random gangs, work, removals,
//! joins and deaths.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::{
    Decision, GangDecision, GangRequest, GpuShare, LeaseId, NodeId, NodeResources, NodeUsage,
    PlacementError, PlacementRequest, ResourceDemand, Scheduler, GPU_UNITS,
};
use ember_core::ids::GangId;
use ember_core::proto::{BundleRef, GangStrategy};
use ember_core::resources::GpuDevice;

const GIB: u64 = 1 << 30;

fn gpus(n: u32) -> Vec<GpuDevice> {
    (0..n)
        .map(|index| GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            name: "NVIDIA H100".into(),
            memory: 80 * GIB,
            accelerator: "H100".into(),
            logical: true,
        })
        .collect()
}

fn node(cpus: u64, gpu_count: u32) -> NodeResources {
    NodeResources {
        cpu_millis: cpus * 1000,
        gpus: gpus(gpu_count),
        custom: Vec::new(),
        labels: vec!["actor:A".into()],
    }
}

fn demand(cpus: u64, gpu_units: u32) -> ResourceDemand {
    ResourceDemand {
        cpu_millis: cpus * 1000,
        gpus: GpuShare::from_units(gpu_units),
        ..Default::default()
    }
}

fn cluster(nodes: &[(u64, u32)]) -> Scheduler {
    let mut s = Scheduler::new();
    for (i, &(cpus, g)) in nodes.iter().enumerate() {
        s.add_node(NodeId(i as u64 + 1), node(cpus, g));
    }
    s
}

fn gang(id: u64, strategy: GangStrategy, bundles: Vec<ResourceDemand>) -> GangRequest {
    GangRequest {
        gang: GangId(id),
        bundles,
        strategy,
        priority: 0,
    }
}

#[track_caller]
fn placed(s: &mut Scheduler, g: GangRequest) -> Vec<NodeId> {
    let decision = s.create_gang(g, false);
    s.check_invariants().unwrap();
    match decision {
        GangDecision::Placed(nodes) => nodes,
        other => panic!("expected Placed, got {other:?}"),
    }
}

#[track_caller]
fn rejected(s: &mut Scheduler, g: GangRequest) -> String {
    match s.create_gang(g, false) {
        GangDecision::Rejected(e) => e.to_string(),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// What every node has free, to compare before and after.
fn free_everywhere(s: &Scheduler) -> Vec<NodeUsage> {
    s.node_ids().filter_map(|id| s.usage(id)).collect()
}

fn in_bundle(
    lease: u64,
    gang: u64,
    index: u32,
    d: ResourceDemand,
) -> (BundleRef, PlacementRequest) {
    (
        BundleRef {
            gang: GangId(gang),
            index,
        },
        PlacementRequest::new(LeaseId(lease), d),
    )
}

#[test]
fn strategies_choose_nodes_as_documented() {
    let mut s = cluster(&[(16, 4), (16, 4), (16, 4)]);
    // Pack: both bundles on one node.
    let nodes = placed(
        &mut s,
        gang(1, GangStrategy::Pack, vec![demand(1, 100), demand(1, 100)]),
    );
    assert_eq!(nodes[0], nodes[1]);
    // Strict spread: three distinct nodes.
    let nodes = placed(
        &mut s,
        gang(2, GangStrategy::StrictSpread, vec![demand(1, 50); 3]),
    );
    assert_eq!(nodes.iter().collect::<BTreeSet<_>>().len(), 3);
    // Spread: distinct nodes while there are, then shared.
    let nodes = placed(
        &mut s,
        gang(3, GangStrategy::Spread, vec![demand(1, 25); 4]),
    );
    assert_eq!(nodes.iter().collect::<BTreeSet<_>>().len(), 3);
    // Strict pack: all on one node.
    let nodes = placed(
        &mut s,
        gang(4, GangStrategy::StrictPack, vec![demand(2, 100); 2]),
    );
    assert!(nodes.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn a_gang_that_does_not_fit_whole_waits_holding_nothing() {
    let mut s = cluster(&[(8, 2), (8, 2)]);
    let before = free_everywhere(&s);
    // Three whole GPUs on distinct nodes: one node short, but two nodes fit two bundles.
    let decision = s.create_gang(
        gang(1, GangStrategy::StrictSpread, vec![demand(1, 100); 3]),
        false,
    );
    assert!(
        matches!(
            decision,
            GangDecision::Rejected(PlacementError::StrictSpreadTooFewNodes {
                bundles: 3,
                most: 2
            })
        ),
        "{decision:?}"
    );
    // Four whole GPUs packed: fits the cluster, but a task holds one GPU now.
    let task = match s.request(PlacementRequest::new(LeaseId(100), demand(1, 100))) {
        Decision::Placed(l) => l,
        other => panic!("{other:?}"),
    };
    let mid = free_everywhere(&s);
    assert_eq!(
        s.create_gang(gang(2, GangStrategy::Pack, vec![demand(1, 100); 4]), false),
        GangDecision::Queued
    );
    s.check_invariants().unwrap();
    assert_eq!(free_everywhere(&s), mid, "a waiting gang holds nothing");
    assert!(s
        .gang_waits_for(GangId(2))
        .unwrap()
        .contains("do not fit together"));
    // The task ends: the next pass places the gang whole.
    assert!(s.release(task.id));
    assert!(s.place_queued().is_empty());
    assert_eq!(s.take_placed_gangs(), vec![GangId(2)]);
    s.check_invariants().unwrap();
    let view = s.gang(GangId(2)).unwrap();
    assert!(view.bundles.iter().all(|b| b.node.is_some()));
    // Removed, every GPU is free again.
    let removed = s.remove_gang(GangId(2)).unwrap();
    assert!(removed.running.is_empty() && !removed.was_waiting);
    s.check_invariants().unwrap();
    assert_eq!(free_everywhere(&s), before);
    assert!(s.gang(GangId(2)).is_none());
}

#[test]
fn impossible_gangs_are_refused_naming_why() {
    let mut s = cluster(&[(8, 2), (8, 2)]);
    let e = rejected(
        &mut s,
        gang(1, GangStrategy::StrictPack, vec![demand(1, 100); 3]),
    );
    assert!(
        e.contains("no node could hold all 3 bundles of this strict_pack gang"),
        "{e}"
    );
    let e = rejected(&mut s, gang(2, GangStrategy::Pack, vec![demand(1, 100); 5]));
    assert!(
        e.contains("could not hold all 5 bundles of this pack gang"),
        "{e}"
    );
    let e = rejected(
        &mut s,
        gang(
            3,
            GangStrategy::Spread,
            vec![demand(1, 100), demand(1, 300)],
        ),
    );
    assert!(
        e.starts_with("bundle 1 of the gang: no node has 3 GPUs"),
        "{e}"
    );
    let e = rejected(&mut s, gang(4, GangStrategy::Pack, vec![]));
    assert!(e.contains("at least one bundle"), "{e}");
    let e = rejected(
        &mut s,
        gang(5, GangStrategy::Pack, vec![demand(1, 0), demand(0, 0)]),
    );
    assert!(e.contains("bundle 1 of the gang asks for nothing"), "{e}");
    let mut bad = demand(1, 0);
    bad.gpu_memory = GIB;
    match s.create_gang(gang(6, GangStrategy::Pack, vec![bad]), false) {
        GangDecision::Rejected(e) => assert!(e.is_malformed(), "{e}"),
        other => panic!("{other:?}"),
    }
    // Nothing was kept.
    assert_eq!(s.gangs().count(), 0);
    s.check_invariants().unwrap();
}

#[test]
fn work_runs_inside_bundles_and_waits_in_them() {
    let mut s = cluster(&[(16, 4), (16, 4)]);
    placed(
        &mut s,
        gang(
            1,
            GangStrategy::StrictSpread,
            vec![demand(4, 100), demand(4, 200)],
        ),
    );
    // Two halves of bundle 0's GPU fit; a third waits in the bundle.
    let (b, r) = in_bundle(10, 1, 0, demand(1, 50));
    let first = match s.request_in_bundle(b, r) {
        Decision::Placed(l) => l,
        other => panic!("{other:?}"),
    };
    let (b, r) = in_bundle(11, 1, 0, demand(1, 50));
    assert!(matches!(s.request_in_bundle(b, r), Decision::Placed(_)));
    let (b, r) = in_bundle(12, 1, 0, demand(1, 50));
    assert_eq!(s.request_in_bundle(b, r), Decision::Queued);
    s.check_invariants().unwrap();
    assert_eq!(
        s.lease(first.id).map(|l| l.node),
        s.gang(GangId(1)).unwrap().bundles[0].node
    );
    // The node outside the bundle still has its other GPUs for others.
    assert!(matches!(
        s.request(PlacementRequest::new(LeaseId(50), demand(1, 200))),
        Decision::Placed(_)
    ));
    // Releasing one lease in the bundle places the one waiting there.
    assert!(s.release(first.id));
    let again = s.place_queued();
    assert_eq!(
        again.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![LeaseId(12)]
    );
    s.check_invariants().unwrap();
    // Never-fitting requests are refused at once, naming the bundle.
    let (b, r) = in_bundle(13, 1, 0, demand(1, 200));
    match s.request_in_bundle(b, r) {
        Decision::Rejected(e) => assert!(e.to_string().contains("bundle 0 of gang-1 can never hold this request: it reserves 1 GPUs, the request needs 2"), "{e}"),
        other => panic!("{other:?}"),
    }
    let (b, r) = in_bundle(14, 1, 2, demand(1, 0));
    assert!(matches!(
        s.request_in_bundle(b, r),
        Decision::Rejected(PlacementError::NoSuchBundle { .. })
    ));
    let (b, r) = in_bundle(15, 9, 0, demand(1, 0));
    assert!(matches!(
        s.request_in_bundle(b, r),
        Decision::Rejected(PlacementError::UnknownGang(_))
    ));
    let (b, mut r) = in_bundle(16, 1, 1, demand(1, 100));
    r.labels = vec!["actor:B".into()];
    assert!(matches!(
        s.request_in_bundle(b, r),
        Decision::Rejected(PlacementError::MissingLabel(_))
    ));
}

#[test]
fn removal_returns_each_bundle_once_its_work_ends() {
    let mut s = cluster(&[(16, 4)]);
    let before = free_everywhere(&s);
    placed(
        &mut s,
        gang(1, GangStrategy::Pack, vec![demand(2, 100), demand(2, 100)]),
    );
    let (b, r) = in_bundle(10, 1, 0, demand(1, 100));
    assert!(matches!(s.request_in_bundle(b, r), Decision::Placed(_)));
    let (b, r) = in_bundle(11, 1, 0, demand(1, 100));
    assert_eq!(s.request_in_bundle(b, r), Decision::Queued);
    let removed = s.remove_gang(GangId(1)).unwrap();
    assert_eq!(removed.withdrawn, vec![LeaseId(11)]);
    assert_eq!(removed.running, vec![LeaseId(10)]);
    s.check_invariants().unwrap();
    // Bundle 1 went back at once; bundle 0 waits for its lease.
    assert_eq!(
        s.usage(NodeId(1))
            .unwrap()
            .gpus
            .iter()
            .filter(|g| g.share_free.units() == 100)
            .count(),
        3
    );
    assert!(s.remove_gang(GangId(1)).is_none(), "removed once");
    let (b, r) = in_bundle(12, 1, 1, demand(1, 0));
    assert!(matches!(
        s.request_in_bundle(b, r),
        Decision::Rejected(PlacementError::GangRemoved(_))
    ));
    assert!(s.release(LeaseId(10)));
    s.check_invariants().unwrap();
    assert_eq!(free_everywhere(&s), before);
    assert_eq!(s.gangs().count(), 0);
}

#[test]
fn a_dead_node_places_only_its_bundles_again() {
    let mut s = cluster(&[(8, 2), (8, 2), (8, 2), (8, 2)]);
    let nodes = placed(
        &mut s,
        gang(1, GangStrategy::StrictSpread, vec![demand(1, 100); 3]),
    );
    let (b, r) = in_bundle(10, 1, 1, demand(1, 100));
    assert!(matches!(s.request_in_bundle(b, r), Decision::Placed(_)));
    let (b, r) = in_bundle(11, 1, 0, demand(1, 50));
    assert!(matches!(s.request_in_bundle(b, r), Decision::Placed(_)));
    assert!(
        s.take_placed_gangs().is_empty(),
        "a gang placed at creation is answered there"
    );
    let gone = s.remove_node(nodes[1]);
    assert_eq!(
        gone.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![LeaseId(10)]
    );
    s.check_invariants().unwrap();
    let view = s.gang(GangId(1)).unwrap();
    assert_eq!(view.bundles[1].node, None);
    assert_eq!(
        (view.bundles[0].node, view.bundles[2].node),
        (Some(nodes[0]), Some(nodes[2]))
    );
    // The next pass places bundle 1 alone, on the one node the others do not use.
    assert!(s.place_queued().is_empty());
    assert_eq!(s.take_placed_gangs(), vec![GangId(1)]);
    let view = s.gang(GangId(1)).unwrap();
    let spare = s.node_ids().find(|n| !nodes.contains(n)).unwrap();
    assert_eq!(view.bundles[1].node, Some(spare));
    assert_eq!(view.bundles[0].node, Some(nodes[0]), "untouched");
    assert_eq!(view.bundles[0].leases, 1, "its work runs on");
    s.check_invariants().unwrap();
}

#[test]
fn a_draining_node_hands_its_bundles_on_and_keeps_what_runs_there_until_it_ends() {
    let mut s = cluster(&[(8, 2), (8, 2), (8, 2)]);
    let nodes = placed(
        &mut s,
        gang(1, GangStrategy::StrictSpread, vec![demand(1, 100); 2]),
    );
    let (b, r) = in_bundle(10, 1, 0, demand(1, 100));
    let running = match s.request_in_bundle(b, r) {
        Decision::Placed(l) => l,
        other => panic!("{other:?}"),
    };
    s.set_schedulable(nodes[0], false);
    s.check_invariants().unwrap();
    // Bundle 0 is placed again on the third node at the next pass...
    assert!(s.place_queued().is_empty());
    assert_eq!(s.take_placed_gangs(), vec![GangId(1)]);
    let third = s.node_ids().find(|n| !nodes.contains(n)).unwrap();
    let view = s.gang(GangId(1)).unwrap();
    assert_eq!(view.bundles[0].node, Some(third));
    assert_eq!(view.bundles[1].node, Some(nodes[1]), "untouched");
    // ...while the lease still running on the draining node keeps its GPU there.
    assert_eq!(s.lease(running.id).map(|l| l.node), Some(nodes[0]));
    let used = |s: &Scheduler, n: NodeId| {
        s.usage(n)
            .unwrap()
            .gpus
            .iter()
            .map(|g| g.share_used.units())
            .sum::<u32>()
    };
    assert_eq!(used(&s, nodes[0]), 100);
    // New work in bundle 0 goes to its new node.
    let (b, r) = in_bundle(11, 1, 0, demand(1, 100));
    match s.request_in_bundle(b, r) {
        Decision::Placed(l) => assert_eq!(l.node, third),
        other => panic!("{other:?}"),
    }
    // The old holding goes back with its last lease.
    assert!(s.release(running.id));
    s.check_invariants().unwrap();
    assert_eq!(used(&s, nodes[0]), 0);
    assert_eq!(used(&s, third), 100);
}

#[test]
fn work_waiting_in_a_lost_bundle_runs_once_it_is_placed_again() {
    let mut s = cluster(&[(8, 1), (8, 1)]);
    let nodes = placed(&mut s, gang(1, GangStrategy::Pack, vec![demand(1, 100)]));
    let gone = s.remove_node(nodes[0]);
    assert!(gone.is_empty());
    // Asked while the bundle is lost: it waits in the bundle, which the pass places again.
    let (b, r) = in_bundle(10, 1, 0, demand(1, 100));
    assert_eq!(s.request_in_bundle(b, r), Decision::Queued);
    let placed = s.place_queued();
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].node, NodeId(2));
    s.check_invariants().unwrap();
}

// ---- the property test ----

#[derive(Debug, Clone)]
enum Op {
    Gang(u8, Vec<(u8, u8)>),
    Work(usize, u8, u8),
    Task(u8),
    Release(usize),
    Remove(usize),
    AddNode(u8),
    RemoveNode(usize),
    SetSchedulable(usize, bool),
    Pass,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4, prop::collection::vec((0u8..4, 0u8..5), 1..5)).prop_map(|(s, b)| Op::Gang(s, b)),
        4 => (any::<usize>(), 0u8..8, 0u8..4).prop_map(|(g, b, d)| Op::Work(g, b, d)),
        2 => (0u8..5).prop_map(Op::Task),
        3 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => (0u8..3).prop_map(Op::AddNode),
        1 => any::<usize>().prop_map(Op::RemoveNode),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(n, on)| Op::SetSchedulable(n, on)),
        2 => Just(Op::Pass),
    ]
}

const STRATEGIES: [GangStrategy; 4] = [
    GangStrategy::Pack,
    GangStrategy::Spread,
    GangStrategy::StrictPack,
    GangStrategy::StrictSpread,
];
/// Bundle sizes: (CPUs, GPU units).
const BUNDLES: [(u64, u32); 5] = [(1, 0), (1, 25), (2, 50), (2, 100), (4, 200)];
/// Sizes of work inside bundles and of tasks outside them.
const WORK: [(u64, u32); 4] = [(0, 25), (1, 0), (1, 50), (1, 100)];
const NODES: [(u64, u32); 3] = [(4, 2), (8, 4), (16, 0)];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Gangs are never partly placed before they are first placed whole, nothing is ever
    /// over-committed (`check_invariants`, which counts bundles as leases of their nodes and
    /// the work in each bundle against it), and once every gang is removed and every lease
    /// released, every node is entirely free.
    #[test]
    fn gangs_never_partly_placed_never_overcommitted_all_released(
        start in prop::collection::vec(0u8..3, 1..5),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut s = Scheduler::new();
        let mut next_node = 1u64;
        for n in start {
            let (c, g) = NODES[n as usize];
            s.add_node(NodeId(next_node), node(c, g));
            next_node += 1;
        }
        let mut next = 1u64;
        let mut gangs: Vec<GangId> = Vec::new();
        let mut live: Vec<LeaseId> = Vec::new();
        let mut placed_whole: BTreeSet<GangId> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Gang(strategy, bundles) => {
                    let id = GangId(next);
                    next += 1;
                    let bundles = bundles.iter().map(|&(b, _)| {
                        let (c, g) = BUNDLES[b as usize];
                        demand(c, g)
                    }).collect();
                    match s.create_gang(gang(id.0, STRATEGIES[strategy as usize], bundles), false) {
                        GangDecision::Placed(nodes) => {
                            prop_assert!(!nodes.is_empty());
                            placed_whole.insert(id);
                            gangs.push(id);
                        }
                        GangDecision::Queued => gangs.push(id),
                        GangDecision::Rejected(_) => prop_assert!(s.gang(id).is_none()),
                    }
                }
                Op::Work(g, b, d) if !gangs.is_empty() => {
                    let gang = gangs[g % gangs.len()];
                    let (c, u) = WORK[d as usize];
                    let lease = LeaseId(next);
                    next += 1;
                    let bundle = BundleRef { gang, index: u32::from(b) };
                    match s.request_in_bundle(bundle, PlacementRequest::new(lease, demand(c, u))) {
                        Decision::Placed(l) => {
                            let view = s.gang(gang).unwrap();
                            prop_assert_eq!(Some(l.node), view.bundles[b as usize].node);
                            live.push(lease);
                        }
                        Decision::Queued => live.push(lease),
                        Decision::Rejected(_) => {}
                    }
                }
                Op::Work(..) => {}
                Op::Task(d) => {
                    let (c, u) = WORK[(d % 4) as usize];
                    let lease = LeaseId(next);
                    next += 1;
                    if !matches!(s.request(PlacementRequest::new(lease, demand(c, u))), Decision::Rejected(_)) {
                        live.push(lease);
                    }
                }
                Op::Release(i) if !live.is_empty() => {
                    let lease = live.remove(i % live.len());
                    if !s.release(lease) {
                        s.cancel(lease);
                    }
                }
                Op::Release(_) => {}
                Op::Remove(i) if !gangs.is_empty() => {
                    let gang = gangs.remove(i % gangs.len());
                    if let Some(removed) = s.remove_gang(gang) {
                        for l in removed.withdrawn {
                            live.retain(|x| *x != l);
                        }
                    }
                }
                Op::Remove(_) => {}
                Op::AddNode(n) => {
                    let (c, g) = NODES[n as usize];
                    s.add_node(NodeId(next_node), node(c, g));
                    next_node += 1;
                }
                Op::RemoveNode(i) => {
                    let ids: Vec<NodeId> = s.node_ids().collect();
                    if !ids.is_empty() {
                        for l in s.remove_node(ids[i % ids.len()]) {
                            live.retain(|x| *x != l.id);
                        }
                    }
                }
                Op::SetSchedulable(i, on) => {
                    let ids: Vec<NodeId> = s.node_ids().collect();
                    if !ids.is_empty() {
                        s.set_schedulable(ids[i % ids.len()], on);
                    }
                }
                Op::Pass => {
                    for l in s.place_queued() {
                        prop_assert!(live.contains(&l.id));
                    }
                }
            }
            for g in s.take_placed_gangs() {
                placed_whole.insert(g);
            }
            s.check_invariants().map_err(TestCaseError::fail)?;
            for view in s.gangs() {
                if !placed_whole.contains(&view.id) {
                    prop_assert!(view.bundles.iter().all(|b| b.node.is_none()), "{:?} partly placed", view.id);
                }
            }
        }
        // Everything goes: every gang removed, every lease released, every request withdrawn.
        for gang in gangs {
            s.remove_gang(gang);
        }
        for lease in live {
            if !s.release(lease) {
                s.cancel(lease);
            }
        }
        s.check_invariants().map_err(TestCaseError::fail)?;
        prop_assert_eq!(s.gangs().count(), 0);
        for id in s.node_ids().collect::<Vec<_>>() {
            let u = s.usage(id).unwrap();
            prop_assert_eq!(u.cpu_millis_free, u.cpu_millis_total);
            prop_assert!(u.gpus.iter().all(|g| g.share_free.units() == GPU_UNITS));
            prop_assert_eq!(u.leases, 0);
        }
    }
}
