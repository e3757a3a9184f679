//! Unit tests that read like a user's checks.

use super::*;
use ember_core::resources::GpuDevice;

const GIB: u64 = 1 << 30;

fn gpu(index: u32, accelerator: &str, memory: u64) -> GpuDevice {
    GpuDevice {
        index,
        uuid: format!("GPU-{index}"),
        name: format!("NVIDIA {accelerator}"),
        memory,
        accelerator: accelerator.to_string(),
        logical: false,
    }
}

fn node_res(cpus: u64, gpus: Vec<GpuDevice>) -> NodeResources {
    NodeResources {
        cpu_millis: cpus * 1000,
        gpus,
        custom: Vec::new(),
        labels: Vec::new(),
    }
}

fn h100s(n: u32) -> Vec<GpuDevice> {
    (0..n).map(|i| gpu(i, "H100", 80 * GIB)).collect()
}

fn demand(cpus: u64, gpu_units: u32) -> ResourceDemand {
    ResourceDemand {
        cpu_millis: cpus * 1000,
        gpus: GpuShare::from_units(gpu_units),
        ..Default::default()
    }
}

fn req(lease: u64, d: ResourceDemand) -> PlacementRequest {
    PlacementRequest::new(LeaseId(lease), d)
}

#[track_caller]
fn placed(s: &mut Scheduler, r: PlacementRequest) -> Lease {
    match s.request(r) {
        Decision::Placed(l) => {
            s.check_invariants().unwrap();
            l
        }
        other => panic!("expected Placed, got {other:?}"),
    }
}

#[track_caller]
fn rejected(s: &mut Scheduler, r: PlacementRequest) -> String {
    match s.request(r) {
        Decision::Rejected(e) => e.to_string(),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[track_caller]
fn queued(s: &mut Scheduler, r: PlacementRequest) {
    let d = s.request(r);
    assert_eq!(d, Decision::Queued);
    s.check_invariants().unwrap();
}

fn one_node(cpus: u64, gpus: Vec<GpuDevice>) -> Scheduler {
    let mut s = Scheduler::new();
    s.add_node(NodeId(1), node_res(cpus, gpus));
    s
}

#[test]
fn four_quarters_share_one_gpu_and_a_fifth_opens_another() {
    let mut s = one_node(16, h100s(2));
    let gpus: Vec<u32> = (1..=4)
        .map(|i| placed(&mut s, req(i, demand(1, 25))).allocation.gpus[0].index)
        .collect();
    assert_eq!(gpus, vec![0, 0, 0, 0]);
    let fifth = placed(&mut s, req(5, demand(1, 25)));
    assert_eq!(fifth.allocation.gpus.len(), 1);
    assert_eq!(fifth.allocation.gpus[0].index, 1);
    assert_eq!(fifth.allocation.gpus[0].share, GpuShare::from_units(25));
    let u = s.usage(NodeId(1)).unwrap();
    assert_eq!(u.gpus[0].share_free, GpuShare::ZERO);
    assert_eq!(u.gpus[1].share_used, GpuShare::from_units(25));
}

#[test]
fn fractions_best_fit_the_fullest_gpu() {
    let mut s = one_node(16, h100s(2));
    placed(&mut s, req(1, demand(0, 50))); // GPU 0: 50 free
    placed(&mut s, req(2, demand(0, 80))); // GPU 1: 20 free
    let l = placed(&mut s, req(3, demand(0, 20)));
    assert_eq!(
        l.allocation.gpus[0].index, 1,
        "0.2 fills the GPU with 0.2 free"
    );
    let l = placed(&mut s, req(4, demand(0, 30)));
    assert_eq!(l.allocation.gpus[0].index, 0);
}

#[test]
fn whole_gpus_need_entirely_free_gpus() {
    let mut s = one_node(16, h100s(2));
    placed(&mut s, req(1, demand(0, 10)));
    let l = placed(&mut s, req(2, demand(0, 100)));
    assert_eq!(l.allocation.gpus.len(), 1);
    assert_eq!(l.allocation.gpus[0].index, 1);
    assert_eq!(l.allocation.gpus[0].share, GpuShare::ONE);
    // GPU 0 has 0.9 free but no whole GPU is free: queued, not placed.
    queued(&mut s, req(3, demand(0, 100)));
    assert!(s.release(LeaseId(1)));
    let now = s.place_queued();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].allocation.gpus[0].index, 0);
}

#[test]
fn whole_gpus_take_the_lowest_indices() {
    let mut s = one_node(16, h100s(4));
    let l = placed(&mut s, req(1, demand(0, 200)));
    let idx: Vec<u32> = l.allocation.gpus.iter().map(|g| g.index).collect();
    assert_eq!(idx, vec![0, 1]);
    assert_eq!(l.allocation.cuda_visible_devices(), "0,1");
}

#[test]
fn gpu_memory_is_reserved_per_gpu() {
    let mut s = one_node(16, vec![gpu(0, "L4", 24 * GIB)]);
    let mut d = demand(0, 25);
    d.gpu_memory = 16 * GIB;
    let l = placed(&mut s, req(1, d.clone()));
    assert_eq!(l.allocation.gpus[0].memory, 16 * GIB);
    // Share is free (0.75) but only 8GiB of memory is: the second waits.
    queued(&mut s, req(2, d.clone()));
    let u = s.usage(NodeId(1)).unwrap();
    assert_eq!(u.gpus[0].memory_reserved, 16 * GIB);
    s.release(LeaseId(1));
    assert_eq!(s.place_queued().len(), 1);
    // A request bigger than the GPU's memory could never fit.
    d.gpu_memory = 90 * GIB;
    let msg = rejected(&mut s, req(3, d));
    assert!(msg.contains("90GiB") && msg.contains("24GiB"), "{msg}");
}

#[test]
fn whole_gpu_grants_reserve_memory_on_each_gpu() {
    let mut s = one_node(16, h100s(2));
    let mut d = demand(0, 200);
    d.gpu_memory = 40 * GIB;
    let l = placed(&mut s, req(1, d));
    assert!(l.allocation.gpus.iter().all(|g| g.memory == 40 * GIB));
    let u = s.usage(NodeId(1)).unwrap();
    assert!(u.gpus.iter().all(|g| g.memory_reserved == 40 * GIB));
}

#[test]
fn accelerator_is_honoured_case_insensitively() {
    let mut s = Scheduler::new();
    s.add_node(NodeId(1), node_res(8, vec![gpu(0, "L4", 24 * GIB)]));
    s.add_node(NodeId(2), node_res(8, vec![gpu(0, "H100", 80 * GIB)]));
    let mut d = demand(1, 100);
    d.accelerator = Some("h100".into());
    assert_eq!(placed(&mut s, req(1, d.clone())).node, NodeId(2));
    // The only H100 is busy; an L4 is free, but the request waits for an H100.
    queued(&mut s, req(2, d));
    let mut d = demand(1, 100);
    d.accelerator = Some("H200".into());
    let msg = rejected(&mut s, req(3, d));
    assert_eq!(
        msg,
        "no GPU has accelerator type H200 (the cluster has: H100, L4)"
    );
}

#[test]
fn pack_and_spread_choose_different_nodes() {
    let mut s = Scheduler::new();
    for id in 1..=3 {
        s.add_node(NodeId(id), node_res(8, h100s(2)));
    }
    // Node 2 is partly used.
    let mut first = req(1, demand(1, 100));
    first.affinity = Some(NodeAffinity {
        node: NodeId(2),
        soft: false,
    });
    assert_eq!(placed(&mut s, first).node, NodeId(2));

    let pack = placed(&mut s, req(2, demand(1, 50)));
    assert_eq!(pack.node, NodeId(2), "pack fills the used node");
    let mut spread = req(3, demand(1, 50));
    spread.strategy = Strategy::Spread;
    assert_eq!(
        placed(&mut s, spread).node,
        NodeId(1),
        "spread takes the idle node, lowest id"
    );
    let mut spread = req(4, demand(1, 50));
    spread.strategy = Strategy::Spread;
    assert_eq!(placed(&mut s, spread).node, NodeId(3));
}

#[test]
fn pack_ties_go_to_the_lowest_node_id_and_cpu_breaks_gpu_ties() {
    let mut s = Scheduler::new();
    for id in [5, 3, 9] {
        s.add_node(NodeId(id), node_res(8, vec![]));
    }
    assert_eq!(
        s.node_ids().collect::<Vec<_>>(),
        vec![NodeId(3), NodeId(5), NodeId(9)]
    );
    assert_eq!(placed(&mut s, req(1, demand(1, 0))).node, NodeId(3));
    assert_eq!(placed(&mut s, req(2, demand(1, 0))).node, NodeId(3));
    let mut r = req(3, demand(1, 0));
    r.strategy = Strategy::Spread;
    assert_eq!(placed(&mut s, r).node, NodeId(5));
}

#[test]
fn hard_affinity_only_that_node() {
    let mut s = Scheduler::new();
    s.add_node(NodeId(1), node_res(4, vec![]));
    s.add_node(NodeId(2), node_res(4, vec![]));
    let pin = |lease, cpus| {
        let mut r = req(lease, demand(cpus, 0));
        r.affinity = Some(NodeAffinity {
            node: NodeId(2),
            soft: false,
        });
        r
    };
    assert_eq!(placed(&mut s, pin(1, 3)).node, NodeId(2));
    // Node 1 is idle, but the request is pinned to node 2: it waits.
    queued(&mut s, pin(2, 2));
    let msg = rejected(&mut s, pin(3, 8));
    assert!(msg.contains("node-2") && msg.contains("8 CPUs"), "{msg}");
    let mut r = req(4, demand(1, 0));
    r.affinity = Some(NodeAffinity {
        node: NodeId(7),
        soft: false,
    });
    assert_eq!(
        rejected(&mut s, r),
        "node affinity: node-7 is not in the cluster"
    );
    s.release(LeaseId(1));
    let now = s.place_queued();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].node, NodeId(2));
}

#[test]
fn soft_affinity_prefers_that_node_then_falls_back() {
    let mut s = Scheduler::new();
    s.add_node(NodeId(1), node_res(4, vec![]));
    s.add_node(NodeId(2), node_res(4, vec![]));
    let soft = |lease, cpus, node| {
        let mut r = req(lease, demand(cpus, 0));
        r.affinity = Some(NodeAffinity {
            node: NodeId(node),
            soft: true,
        });
        r
    };
    assert_eq!(placed(&mut s, soft(1, 3, 2)).node, NodeId(2));
    assert_eq!(placed(&mut s, soft(2, 3, 2)).node, NodeId(1), "falls back");
    assert_eq!(
        placed(&mut s, soft(3, 1, 9)).node,
        NodeId(1),
        "unknown node: strategy"
    );
}

#[test]
fn infeasible_requests_are_rejected_naming_the_resource() {
    let mut s = Scheduler::new();
    assert_eq!(
        rejected(&mut s, req(1, demand(1, 0))),
        "the cluster has no nodes"
    );
    s.add_node(NodeId(1), node_res(8, h100s(2)));
    s.add_node(NodeId(2), node_res(4, vec![gpu(0, "L4", 24 * GIB)]));
    assert_eq!(
        rejected(&mut s, req(2, demand(0, 400))),
        "no node has 4 GPUs (the most on one node is 2)"
    );
    assert_eq!(
        rejected(&mut s, req(3, demand(64, 0))),
        "no node has 64 CPUs (the most is 8)"
    );
    let mut d = demand(0, 100);
    d.gpu_memory = 90 * GIB;
    assert_eq!(
        rejected(&mut s, req(4, d)),
        "no GPU has 90GiB of memory (the largest has 80GiB)"
    );
    let mut d = demand(0, 0);
    d.set_custom("tpu", 1000);
    assert_eq!(
        rejected(&mut s, req(5, d)),
        "no node has custom resource `tpu`"
    );
    let mut d = demand(0, 200);
    d.accelerator = Some("L4".into());
    let msg = rejected(&mut s, req(6, d));
    assert_eq!(msg, "no node has 2 L4 GPUs (the most on one node is 1)");
    // Each part exists, but not together on one node.
    let mut d = demand(8, 0);
    d.gpus = GpuShare::from_units(100);
    d.accelerator = Some("L4".into());
    let msg = rejected(&mut s, req(7, d));
    assert!(msg.contains("no single node"), "{msg}");
    assert!(s.leases().next().is_none());
    assert_eq!(s.queued_len(), 0);
}

#[test]
fn malformed_requests_are_rejected() {
    let mut s = one_node(8, h100s(1));
    let mut d = demand(1, 0);
    d.gpu_memory = GIB;
    assert_eq!(
        rejected(&mut s, req(1, d)),
        PlacementError::GpuMemoryWithoutGpus.to_string()
    );
    assert!(PlacementError::GpuMemoryWithoutGpus
        .to_string()
        .starts_with("gpu_memory needs gpus"));
    let mut d = demand(1, 0);
    d.accelerator = Some("H100".into());
    assert!(rejected(&mut s, req(2, d)).starts_with("accelerator needs gpus"));
    assert!(rejected(&mut s, req(3, demand(0, 150))).contains("1.50"));
    placed(&mut s, req(3, demand(1, 0)));
    assert_eq!(
        rejected(&mut s, req(3, demand(1, 0))),
        "lease-3 is already known"
    );
    queued(&mut s, req(4, demand(8, 0)));
    assert_eq!(
        rejected(&mut s, req(4, demand(1, 0))),
        "lease-4 is already known"
    );
}

#[test]
fn custom_resources_are_counted() {
    let mut s = Scheduler::new();
    let mut r = node_res(8, vec![]);
    r.custom = vec![("fpga".into(), 2000)];
    s.add_node(NodeId(1), r);
    let mut d = demand(0, 0);
    d.set_custom("fpga", 1500);
    let l = placed(&mut s, req(1, d.clone()));
    assert_eq!(l.allocation.custom, vec![("fpga".to_string(), 1500)]);
    queued(&mut s, req(2, d.clone()));
    d.set_custom("fpga", 3000);
    assert_eq!(
        rejected(&mut s, req(3, d)),
        "no node has 3 of custom resource `fpga` (the most is 2)"
    );
    let u = s.usage(NodeId(1)).unwrap();
    assert_eq!(u.custom[0].free_millis, 500);
}

#[test]
fn queued_requests_are_placed_after_a_release() {
    let mut s = one_node(4, vec![]);
    placed(&mut s, req(1, demand(4, 0)));
    queued(&mut s, req(2, demand(2, 0)));
    assert!(s.place_queued().is_empty());
    assert!(s.release(LeaseId(1)));
    let now = s.place_queued();
    assert_eq!(
        now.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![LeaseId(2)]
    );
    assert_eq!(s.lease(LeaseId(2)), Some(&now[0]));
    assert_eq!(s.queued_len(), 0);
}

#[test]
fn the_queue_goes_by_priority_then_arrival_and_big_ones_do_not_block() {
    let mut s = one_node(4, vec![]);
    placed(&mut s, req(1, demand(4, 0)));
    let with_prio = |lease, cpus, priority| {
        let mut r = req(lease, demand(cpus, 0));
        r.priority = priority;
        r
    };
    queued(&mut s, with_prio(2, 1, 0));
    queued(&mut s, with_prio(3, 1, 5));
    queued(&mut s, with_prio(4, 4, 9)); // large, top priority
    queued(&mut s, with_prio(5, 1, 5));
    queued(&mut s, with_prio(6, 1, -1));
    let order: Vec<u64> = s.queued().map(|r| r.lease.0).collect();
    assert_eq!(order, vec![4, 3, 5, 2, 6]);
    assert!(s.cancel(LeaseId(6)));
    assert!(!s.cancel(LeaseId(6)));
    // Free 3 CPUs: the 4-CPU request cannot fit, the 1-CPU ones behind it can.
    s.release(LeaseId(1));
    placed(&mut s, req(7, demand(1, 0)));
    let now: Vec<u64> = s.place_queued().iter().map(|l| l.id.0).collect();
    assert_eq!(now, vec![3, 5, 2]);
    assert_eq!(s.queued().map(|r| r.lease.0).collect::<Vec<_>>(), vec![4]);
    s.check_invariants().unwrap();
}

#[test]
fn remove_node_returns_its_leases_and_the_queue_moves_elsewhere() {
    let mut s = Scheduler::new();
    s.add_node(NodeId(1), node_res(4, h100s(1)));
    let a = placed(&mut s, req(1, demand(1, 100)));
    let b = placed(&mut s, req(2, demand(1, 0)));
    queued(&mut s, req(3, demand(1, 100)));
    let gone = s.remove_node(NodeId(1));
    assert_eq!(gone, vec![a, b]);
    assert!(s.lease(LeaseId(1)).is_none());
    assert_eq!(s.queued_len(), 1, "queued requests stay queued");
    assert!(s.place_queued().is_empty());
    s.check_invariants().unwrap();
    s.add_node(NodeId(2), node_res(4, h100s(1)));
    let now = s.place_queued();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].node, NodeId(2));
    // Releasing a lease of the removed node is a no-op.
    assert!(!s.release(LeaseId(1)));
    s.check_invariants().unwrap();
}

#[test]
fn release_is_idempotent() {
    let mut s = one_node(4, h100s(1));
    placed(&mut s, req(1, demand(2, 50)));
    assert!(s.release(LeaseId(1)));
    let before = s.usage(NodeId(1));
    assert!(!s.release(LeaseId(1)));
    assert!(!s.release(LeaseId(99)));
    assert_eq!(s.usage(NodeId(1)), before);
    let u = before.unwrap();
    assert_eq!(u.cpu_millis_free, u.cpu_millis_total);
    assert_eq!(u.gpus[0].share_free, GpuShare::ONE);
    s.check_invariants().unwrap();
}

#[test]
fn draining_nodes_take_no_new_work() {
    let mut s = Scheduler::new();
    s.add_node(NodeId(1), node_res(4, vec![]));
    s.add_node(NodeId(2), node_res(4, vec![]));
    s.set_schedulable(NodeId(1), false);
    s.set_schedulable(NodeId(42), false); // unknown: no-op
    assert_eq!(placed(&mut s, req(1, demand(1, 0))).node, NodeId(2));
    placed(&mut s, req(2, demand(3, 0)));
    queued(&mut s, req(3, demand(1, 0)));
    s.set_schedulable(NodeId(2), false);
    let msg = rejected(&mut s, req(4, demand(1, 0)));
    assert!(msg.contains("draining"), "{msg}");
    assert!(!s.usage(NodeId(1)).unwrap().schedulable);
    s.set_schedulable(NodeId(1), true);
    let now = s.place_queued();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].node, NodeId(1));
}

#[test]
fn usage_serializes_for_status() {
    let mut s = one_node(4, h100s(1));
    placed(&mut s, req(1, demand(1, 25)));
    let json = serde_json::to_string(&s.usage(NodeId(1)).unwrap()).unwrap();
    assert!(json.contains("\"share_used\":25"), "{json}");
    assert!(s.usage(NodeId(2)).is_none());
}

/// How many nodes the index asks whether `r` fits before it chooses, and what it chooses.
fn ask_index(s: &Scheduler, r: &PlacementRequest) -> (Option<NodeId>, usize) {
    let mut asked = 0;
    let chosen = s.index.choose(r, |id| {
        asked += 1;
        let n = &s.nodes[s.position(id).unwrap()];
        n.has_labels(&r.labels) && n.fits_now(&r.demand)
    });
    (chosen, asked)
}

#[test]
fn a_choice_asks_few_nodes_even_when_the_most_used_are_full() {
    let mut s = Scheduler::new();
    for id in 1..=1000 {
        s.add_node(NodeId(id), node_res(64, h100s(8)));
    }
    // Pack fills nodes in id order: nodes 1 to 300 take 32 quarters each, node 301 eight.
    let mut lease = 0;
    for _ in 0..300 * 32 + 8 {
        lease += 1;
        assert!(matches!(
            s.request(req(lease, demand(1, 25))),
            Decision::Placed(_)
        ));
    }
    s.check_invariants().unwrap();
    assert_eq!(s.usage(NodeId(300)).unwrap().leases, 32);
    assert_eq!(s.usage(NodeId(301)).unwrap().leases, 8);

    let (chosen, asked) = ask_index(&s, &req(lease + 1, demand(1, 25)));
    assert_eq!(
        chosen,
        Some(NodeId(301)),
        "pack fills the used node that has room"
    );
    assert!(
        asked <= 2,
        "pack asked {asked} nodes, past the 300 full ones"
    );

    let mut spread = req(lease + 1, demand(1, 25));
    spread.strategy = Strategy::Spread;
    let (chosen, asked) = ask_index(&s, &spread);
    assert_eq!(
        chosen,
        Some(NodeId(302)),
        "spread takes the idle node, lowest id"
    );
    assert!(asked <= 3, "spread asked {asked} nodes");

    // A whole GPU: the full nodes are passed over by what they offer; node 301's eight
    // quarters fill two of its GPUs, so six are whole.
    let (chosen, asked) = ask_index(&s, &req(lease + 1, demand(1, 100)));
    assert_eq!(chosen, Some(NodeId(301)));
    assert!(asked <= 2, "pack asked {asked} nodes for a whole GPU");
}

#[test]
fn adopting_claims_exactly_a_free_allocation_and_nothing_twice() {
    let mut s = Scheduler::new();
    s.add_node(NodeId(1), node_res(8, h100s(2)));
    let Decision::Placed(placed) = s.request(req(1, demand(2, 50))) else {
        panic!("a half GPU fits");
    };
    s.release(placed.id);
    // What a re-joining worker says it holds: the same allocation, under a new lease.
    let adopted = Lease {
        id: LeaseId(2),
        node: NodeId(1),
        allocation: placed.allocation.clone(),
    };
    assert!(s.adopt(adopted.clone()));
    assert!(!s.adopt(adopted.clone()), "one lease id once");
    s.check_invariants().unwrap();
    // The same GPU share again, and more than is free, are refused; so is an unknown node.
    let mut whole = adopted.clone();
    whole.id = LeaseId(3);
    whole.allocation.gpus[0].share = GpuShare::from_units(100);
    assert!(!s.adopt(whole), "a whole GPU of which half is taken");
    let mut elsewhere = adopted.clone();
    elsewhere.id = LeaseId(4);
    elsewhere.node = NodeId(9);
    assert!(!s.adopt(elsewhere));
    let mut twice = adopted;
    twice.id = LeaseId(5);
    let g = twice.allocation.gpus[0];
    twice.allocation.gpus.push(g);
    assert!(!s.adopt(twice), "one GPU named twice");
    s.check_invariants().unwrap();
    assert!(s.release(LeaseId(2)));
    s.check_invariants().unwrap();
    assert_eq!(s.usage(NodeId(1)).unwrap().cpu_millis_free, 8000);
}

/// 100 full nodes and 100,000 requests waiting, of five shapes at two priorities. A pass after
/// one release looks at no more requests than it places plus one per shape, where a walk of
/// the queue looks at them all, and both place exactly the same. A pass after capacity grew
/// only where nothing fits asks the index nothing.
#[test]
fn a_pass_after_a_release_costs_what_it_places_not_the_queue_length() {
    let mut s = Scheduler::new();
    for n in 1..=100 {
        s.add_node(NodeId(n), node_res(8, h100s(8)));
    }
    for lease in 0..800 {
        placed_quietly(&mut s, req(lease, demand(1, 100)));
    }
    let shapes = |i: u64| -> PlacementRequest {
        let mut r = match i % 5 {
            0 => req(i, demand(1, 100)),
            1 => req(i, demand(1, 50)),
            2 => req(i, demand(2, 200)),
            3 => req(i, demand(1, 0)),
            _ => {
                let mut r = req(i, demand(1, 25));
                r.affinity = Some(NodeAffinity {
                    node: NodeId(7),
                    soft: false,
                });
                r
            }
        };
        r.priority = ((i / 5) % 2) as i32;
        r.strategy = if i % 3 == 0 {
            Strategy::Spread
        } else {
            Strategy::Pack
        };
        r
    };
    for i in 1_000..101_000 {
        assert_eq!(s.request(shapes(i)), Decision::Queued);
    }
    assert_eq!(s.queued_len(), 100_000);
    assert_eq!(s.queued_groups(), 5);
    s.check_invariants().unwrap();

    // One lease of node 7 ends: one GPU and one CPU are free there.
    let on_7 = s.leases().find(|l| l.node == NodeId(7)).unwrap().id;
    for pass in 0..2 {
        if pass == 1 {
            // Then the rest of node 7's: eight GPUs and eight CPUs.
            let rest: Vec<LeaseId> = s
                .leases()
                .filter(|l| l.node == NodeId(7))
                .map(|l| l.id)
                .collect();
            for id in rest {
                assert!(s.release(id));
            }
        } else {
            assert!(s.release(on_7));
        }
        let mut walk = s.clone();
        walk.walk_whole_queue = true;
        (s.pass_visits, s.tries, walk.pass_visits) = (0, 0, 0);
        let before = s.queued_len();
        let placed = s.place_queued();
        assert!(!placed.is_empty(), "pass {pass} placed nothing");
        assert!(
            s.pass_visits <= 5 + placed.len() as u64 && s.tries <= 5 + placed.len() as u64,
            "pass {pass}: {} requests looked at and {} tries to place {}",
            s.pass_visits,
            s.tries,
            placed.len()
        );
        assert_eq!(s.queued_len(), before - placed.len());
        assert_eq!(
            walk.place_queued(),
            placed,
            "pass {pass} placed differently"
        );
        assert_eq!(
            walk.pass_visits, before as u64,
            "a walk looks at every request"
        );
        assert!(
            s.queued()
                .map(|r| r.lease)
                .eq(walk.queued().map(|r| r.lease)),
            "pass {pass} left a different queue"
        );
        // What waits fits nowhere now: a second pass places nothing, and asks nothing.
        s.tries = 0;
        assert!(s.place_queued().is_empty());
        assert_eq!(s.tries, 0);
        s.check_invariants().unwrap();
    }

    // Node 8 drains and comes back, full: it grew, but nothing fits on it, so a pass places
    // nothing without asking the index.
    s.set_schedulable(NodeId(8), false);
    s.set_schedulable(NodeId(8), true);
    (s.pass_visits, s.tries) = (0, 0);
    assert!(s.place_queued().is_empty());
    assert_eq!(s.tries, 0);
    assert!(s.pass_visits <= 5);
    s.check_invariants().unwrap();
}

/// Like [`placed`], without checking every invariant after each request.
#[track_caller]
fn placed_quietly(s: &mut Scheduler, r: PlacementRequest) -> Lease {
    match s.request(r) {
        Decision::Placed(l) => l,
        other => panic!("expected Placed, got {other:?}"),
    }
}

#[test]
fn whether_a_queued_request_could_ever_fit_is_asked_of_one_node_or_of_all() {
    let mut s = Scheduler::new();
    s.add_node(NodeId(1), node_res(8, vec![gpu(0, "A100", 80 * GIB)]));
    s.add_node(NodeId(2), node_res(8, h100s(1)));
    let mut a100 = demand(0, 100);
    a100.accelerator = Some("A100".into());
    placed(&mut s, req(1, a100.clone()));
    let waiting = req(2, a100.clone());
    queued(&mut s, waiting.clone());
    assert_eq!(s.queued_request(LeaseId(2)), Some(&waiting));
    assert!(s.could_hold(NodeId(1), &waiting), "once it is free");
    assert!(!s.could_hold(NodeId(2), &waiting));
    assert!(!s.could_hold(NodeId(9), &waiting), "an unknown node");
    assert_eq!(s.never_fits_anywhere(&waiting), None);

    let pinned = PlacementRequest {
        affinity: Some(NodeAffinity {
            node: NodeId(2),
            soft: false,
        }),
        ..req(3, demand(1, 0))
    };
    assert!(!s.could_hold(NodeId(1), &pinned), "pinned elsewhere");
    assert!(s.could_hold(NodeId(2), &pinned));

    s.set_schedulable(NodeId(1), false);
    assert!(
        !s.could_hold(NodeId(1), &waiting),
        "a draining node holds nothing new"
    );
    s.remove_node(NodeId(1));
    assert_eq!(
        s.never_fits_anywhere(&waiting).map(|e| e.to_string()),
        Some("no GPU has accelerator type A100 (the cluster has: H100)".into())
    );
    s.remove_node(NodeId(2));
    assert_eq!(
        s.never_fits_anywhere(&pinned),
        Some(PlacementError::NoNodes)
    );
    s.check_invariants().unwrap();
}

#[test]
fn memory_not_in_whole_mib_and_counts_past_32_bits_still_fit_exactly() {
    // The index holds GPU memory in MiB and CPUs in 32 bits: a demand that fits to the byte,
    // or past 2^32 milli-CPUs, is still found, and one a byte or a milli-CPU over is not.
    const MIB: u64 = 1 << 20;
    let odd = 5 * MIB + 1;
    let mut s = Scheduler::new();
    s.add_node(
        NodeId(1),
        NodeResources {
            cpu_millis: 5_000_000_000,
            gpus: vec![gpu(0, "H100", odd)],
            custom: Vec::new(),
            labels: Vec::new(),
        },
    );
    let mut over = demand(0, 50);
    over.gpu_memory = odd + 1;
    assert!(rejected(&mut s, req(1, over)).contains("memory"));
    let mut exact = demand(0, 50);
    exact.gpu_memory = odd;
    let lease = placed(&mut s, req(2, exact));
    assert_eq!(lease.allocation.gpus[0].memory, odd);
    let cpus = ResourceDemand {
        cpu_millis: 4_999_999_999,
        ..Default::default()
    };
    placed(&mut s, req(3, cpus));
    let one_more = ResourceDemand {
        cpu_millis: 2,
        ..Default::default()
    };
    assert_eq!(s.request(req(4, one_more)), Decision::Queued);
    s.check_invariants().unwrap();
}
