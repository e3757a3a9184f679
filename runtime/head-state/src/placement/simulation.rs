//! A simulated cluster of thousands of nodes driving the pure scheduler: nodes join, die and
//! drain, requests arrive and finish, all from a seed so that a failure can be replayed.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand};

const GIB: u64 = 1 << 30;

fn node(rng: &mut StdRng) -> NodeResources {
    let (count, accel, memory) = match rng.gen_range(0..4) {
        0 => (8, "H100", 80 * GIB),
        1 => (4, "A100", 40 * GIB),
        2 => (1, "L4", 24 * GIB),
        _ => (0, "", 0),
    };
    NodeResources {
        cpu_millis: rng.gen_range(4..=64) * 1000,
        gpus: (0..count)
            .map(|i| GpuDevice {
                index: i,
                uuid: format!("GPU-{i}"),
                name: accel.to_string(),
                memory,
                accelerator: accel.to_string(),
                logical: true,
            })
            .collect(),
        custom: Vec::new(),
        labels: if rng.gen_bool(0.9) {
            vec!["task:t".to_string()]
        } else {
            Vec::new()
        },
    }
}

fn demand(rng: &mut StdRng) -> (ResourceDemand, Vec<String>) {
    let mut d = ResourceDemand {
        cpu_millis: rng.gen_range(0..=4) * 500,
        ..ResourceDemand::default()
    };
    match rng.gen_range(0..5) {
        0 => d.gpus = GpuShare::from_units(25),
        1 => d.gpus = GpuShare::from_units(50),
        2 => d.gpus = GpuShare::whole(1),
        3 => {
            d.gpus = GpuShare::whole(rng.gen_range(2..=4));
            d.gpu_memory = 20 * GIB;
        }
        _ => {}
    }
    if d.gpus.units() > 0 && rng.gen_bool(0.2) {
        d.accelerator = Some(["H100", "A100", "L4"][rng.gen_range(0..3)].to_string());
    }
    let labels = if rng.gen_bool(0.5) {
        vec!["task:t".to_string()]
    } else {
        Vec::new()
    };
    (d, labels)
}

/// Runs `steps` random events over a cluster that starts with `nodes` nodes; `request_pct` of
/// them are requests, the rest up to 90% completions, the last 10% joins, deaths and drains.
fn simulate(seed: u64, nodes: u64, steps: u64, request_pct: u32) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = Scheduler::new();
    let mut alive: Vec<NodeId> = Vec::new();
    let mut next_node = 0u64;
    for _ in 0..nodes {
        s.add_node(NodeId(next_node), node(&mut rng));
        alive.push(NodeId(next_node));
        next_node += 1;
    }
    let mut live: BTreeMap<LeaseId, NodeId> = BTreeMap::new();
    let mut queued = 0u64;
    for step in 0..steps {
        let lease = LeaseId(step);
        let roll = rng.gen_range(0..100u32);
        let event = if roll < request_pct {
            0
        } else if roll < 90 {
            1
        } else {
            roll
        };
        match event {
            // Most events are requests and completions.
            0 => {
                let (demand, labels) = demand(&mut rng);
                let mut req = PlacementRequest::new(lease, demand);
                req.labels = labels;
                req.strategy = if rng.gen_bool(0.3) {
                    Strategy::Spread
                } else {
                    Strategy::Pack
                };
                req.priority = rng.gen_range(0..3);
                match s.request(req) {
                    Decision::Placed(l) => {
                        live.insert(l.id, l.node);
                    }
                    Decision::Queued => queued += 1,
                    Decision::Rejected(_) => {}
                }
            }
            1 => {
                if let Some((&id, _)) = live.iter().nth(rng.gen_range(0..live.len().max(1))) {
                    assert!(s.release(id));
                    live.remove(&id);
                    for l in s.place_queued() {
                        live.insert(l.id, l.node);
                    }
                }
            }
            // A node dies: everything on it is lost with it.
            90..=93 if !alive.is_empty() => {
                let dead = alive.swap_remove(rng.gen_range(0..alive.len()));
                let lost = s.remove_node(dead);
                for l in &lost {
                    assert_eq!(live.remove(&l.id), Some(dead));
                }
                assert!(live.values().all(|n| *n != dead));
            }
            // A new node joins and takes queued work.
            94..=97 => {
                s.add_node(NodeId(next_node), node(&mut rng));
                alive.push(NodeId(next_node));
                next_node += 1;
                for l in s.place_queued() {
                    live.insert(l.id, l.node);
                }
            }
            _ if !alive.is_empty() => {
                let n = alive[rng.gen_range(0..alive.len())];
                s.set_schedulable(n, rng.gen_bool(0.5));
                for l in s.place_queued() {
                    live.insert(l.id, l.node);
                }
            }
            _ => {}
        }
        if step % 2_000 == 0 {
            s.check_invariants()
                .unwrap_or_else(|e| panic!("seed {seed}, step {step}: {e}"));
        }
    }
    s.check_invariants()
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(queued > 0, "the simulation should exercise the queue");
    // Everything finishes: every node's capacity returns to its total.
    for id in std::mem::take(&mut live).into_keys() {
        assert!(s.release(id));
    }
    let waiting: Vec<LeaseId> = s.queued().map(|r| r.lease).collect();
    for id in waiting {
        assert!(s.cancel(id));
    }
    for id in s.node_ids().collect::<Vec<_>>() {
        let u = s.usage(id).expect("a live node");
        assert_eq!(
            u.cpu_millis_free, u.cpu_millis_total,
            "seed {seed}: CPU leak on {id}"
        );
        assert_eq!(u.leases, 0);
        for g in &u.gpus {
            assert_eq!(
                g.share_free,
                GpuShare::ONE,
                "seed {seed}: share leak on {id}"
            );
            assert_eq!(g.memory_reserved, 0, "seed {seed}: memory leak on {id}");
        }
    }
}

#[test]
fn two_thousand_nodes_never_overcommit_or_leak() {
    // Requests outnumber completions, so the cluster fills and the queue is exercised.
    simulate(7, 2_000, 12_000, 80);
}

#[test]
fn a_small_churning_cluster_never_overcommits_or_leaks() {
    for seed in 100..120 {
        simulate(seed, 20, 5_000, 55);
    }
}

/// A node of the large queue simulation: 8 CPUs and four H100s, two A100s, one L4 or none.
fn small_node(rng: &mut StdRng) -> NodeResources {
    let (count, accel, memory) = match rng.gen_range(0..4) {
        0 => (4, "H100", 80 * GIB),
        1 => (2, "A100", 40 * GIB),
        2 => (1, "L4", 24 * GIB),
        _ => (0, "", 0),
    };
    NodeResources {
        cpu_millis: 8_000,
        gpus: (0..count)
            .map(|i| GpuDevice {
                index: i,
                uuid: format!("GPU-{i}"),
                name: accel.to_string(),
                memory,
                accelerator: accel.to_string(),
                logical: true,
            })
            .collect(),
        custom: Vec::new(),
        labels: if rng.gen_bool(0.9) {
            vec!["task:t".to_string()]
        } else {
            Vec::new()
        },
    }
}

/// A request of the large queue simulation, from a menu of a dozen shapes (fractions, whole
/// GPUs with memory, accelerator types, CPU only, labels, a few hard affinities).
fn menu_request(rng: &mut StdRng, lease: LeaseId) -> PlacementRequest {
    let cpus = |c: u64| ResourceDemand {
        cpu_millis: c * 1_000,
        ..ResourceDemand::default()
    };
    let mut d = match rng.gen_range(0..8) {
        0 => cpus(2),
        1 => cpus(4),
        2 => ResourceDemand {
            gpus: GpuShare::from_units(25),
            ..cpus(1)
        },
        3 => ResourceDemand {
            gpus: GpuShare::from_units(50),
            accelerator: Some("H100".into()),
            ..cpus(1)
        },
        4 => ResourceDemand {
            gpus: GpuShare::ONE,
            ..cpus(2)
        },
        5 => ResourceDemand {
            gpus: GpuShare::whole(2),
            gpu_memory: 20 * GIB,
            ..cpus(2)
        },
        6 => ResourceDemand {
            gpus: GpuShare::ONE,
            accelerator: Some("L4".into()),
            ..cpus(1)
        },
        _ => ResourceDemand {
            gpus: GpuShare::from_units(50),
            gpu_memory: 30 * GIB,
            ..cpus(1)
        },
    };
    if rng.gen_bool(0.01) {
        // A CPU-only request pinned to one of five nodes.
        d = cpus(1);
    }
    let mut req = PlacementRequest::new(lease, d);
    if req.demand.gpus.units() == 0 && req.demand.cpu_millis == 1_000 {
        req.affinity = Some(NodeAffinity {
            node: NodeId(rng.gen_range(0..5)),
            soft: false,
        });
    } else if rng.gen_bool(0.05) {
        req.affinity = Some(NodeAffinity {
            node: NodeId(rng.gen_range(0..10_000)),
            soft: true,
        });
    }
    if rng.gen_bool(0.3) {
        req.labels = vec!["task:t".to_string()];
    }
    req.strategy = if rng.gen_bool(0.3) {
        Strategy::Spread
    } else {
        Strategy::Pack
    };
    req.priority = rng.gen_range(0..3);
    req
}

/// Whether a request fits anywhere now, by visiting every node (its hard affinity's only).
fn fits_anywhere_now(s: &Scheduler, req: &PlacementRequest) -> bool {
    match req.affinity {
        Some(NodeAffinity { node, soft: false }) => s.position(node).is_some_and(|i| {
            let n = &s.nodes[i];
            n.schedulable && n.has_labels(&req.labels) && n.fits_now(&req.demand)
        }),
        _ => choose_linear(&s.nodes, req).is_some(),
    }
}

/// Checks why every request still waits: none of them fits anywhere now (one request of each
/// group stands for the group, whose requests fit exactly the same nodes), and each could fit
/// once capacity frees.
fn check_waiting(s: &Scheduler, pass: usize) {
    for (key, _) in s.queue.heads() {
        let req = s.queue.at(&key).expect("a group's head is queued");
        assert!(
            !fits_anywhere_now(s, req),
            "pass {pass}: {} waits but fits now",
            req.lease
        );
        match req.affinity {
            Some(NodeAffinity { node, soft: false }) => {
                let i = s.position(node).expect("the pinned node is in the cluster");
                assert!(s.nodes[i].fits_total(&req.demand));
            }
            _ => assert_eq!(s.never_fits(&req.demand, &req.labels), None),
        }
    }
}

/// 10,000 nodes fill up and 100,000 requests of a dozen shapes wait; then leases end a
/// thousand at a time, each batch followed by one pass, until every request has been placed.
/// After every pass nothing that waits fits now; every queued request is placed exactly once;
/// capacity is never over-committed.
#[test]
fn ten_thousand_nodes_work_off_a_hundred_thousand_waiting_requests() {
    let mut rng = StdRng::seed_from_u64(17);
    let mut s = Scheduler::new();
    for n in 0..10_000 {
        s.add_node(NodeId(n), small_node(&mut rng));
    }
    let mut live: Vec<LeaseId> = Vec::new();
    let mut waiting: BTreeSet<LeaseId> = BTreeSet::new();
    let mut next = 0u64;
    while waiting.len() < 100_000 {
        let req = menu_request(&mut rng, LeaseId(next));
        next += 1;
        match s.request(req) {
            Decision::Placed(l) => live.push(l.id),
            Decision::Queued => {
                waiting.insert(LeaseId(next - 1));
            }
            Decision::Rejected(e) => panic!("a request of the menu was rejected: {e}"),
        }
    }
    assert_eq!(s.queued_len(), 100_000);
    assert!(s.queued_groups() <= 30, "{} groups", s.queued_groups());
    s.check_invariants().unwrap();
    check_waiting(&s, 0);

    let mut pass = 0;
    while !waiting.is_empty() {
        pass += 1;
        assert!(pass < 1_000, "{} requests still wait", waiting.len());
        for _ in 0..1_000.min(live.len()) {
            let id = live.swap_remove(rng.gen_range(0..live.len()));
            assert!(s.release(id));
        }
        for lease in s.place_queued() {
            assert!(waiting.remove(&lease.id), "{} placed twice", lease.id);
            live.push(lease.id);
        }
        if pass % 10 == 0 {
            check_waiting(&s, pass);
        }
        assert_eq!(s.queued_len(), waiting.len());
    }
    s.check_invariants().unwrap();
    assert_eq!(s.queued_groups(), 0);
    assert_eq!(s.leases().count(), live.len());
}
