//! A simulated cluster of thousands of nodes driving the pure scheduler: nodes join, die and
//! drain, requests arrive and finish, all from a seed so that a failure can be replayed.

use std::collections::BTreeMap;

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
