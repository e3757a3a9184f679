//! Placement decisions per second at 1,000 and 10,000 simulated nodes (criterion).
//!
//! Each simulated node offers 64 CPUs and 8 logical H100s of 80 GiB. The workload mixes four
//! demands (a quarter GPU, one GPU, two GPUs with 40 GiB reserved on each, CPU only); a third
//! of the requests spread, the rest pack. The cluster is kept about half full: once the live
//! leases exceed a target, the oldest one is released. One iteration is one request (plus at
//! most one release and the `place_queued` call the head makes after it), so criterion's
//! elements/s is placement decisions per second.
//!
//! Run with `cargo bench -p ember-benches --bench placement`.

use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use ember_core::ids::{LeaseId, NodeId};
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand};
use ember_head_state::placement::{Decision, PlacementRequest, Scheduler, Strategy};

const GIB: u64 = 1 << 30;
const GPUS_PER_NODE: u32 = 8;

/// One node: 64 CPUs, 8 logical H100 80 GiB.
fn node_resources(node: u64) -> NodeResources {
    NodeResources {
        cpu_millis: 64_000,
        gpus: (0..GPUS_PER_NODE)
            .map(|index| GpuDevice {
                index,
                uuid: format!("GPU-sim-{node}-{index}"),
                name: "NVIDIA H100 80GB HBM3".into(),
                memory: 80 * GIB,
                accelerator: "H100".into(),
                logical: true,
            })
            .collect(),
        custom: vec![],
        labels: vec![],
    }
}

/// The four demands of the mix; on average 0.8125 GPU per request.
fn demands() -> [ResourceDemand; 4] {
    [
        ResourceDemand {
            cpu_millis: 1_000,
            gpus: GpuShare::from_units(25),
            ..Default::default()
        },
        ResourceDemand {
            cpu_millis: 1_000,
            gpus: GpuShare::ONE,
            ..Default::default()
        },
        ResourceDemand {
            cpu_millis: 2_000,
            gpus: GpuShare::whole(2),
            gpu_memory: 40 * GIB,
            ..Default::default()
        },
        ResourceDemand {
            cpu_millis: 4_000,
            ..Default::default()
        },
    ]
}

/// A scheduler over `nodes` nodes and the state of the workload driving it.
struct Workload {
    scheduler: Scheduler,
    demands: [ResourceDemand; 4],
    live: VecDeque<LeaseId>,
    target: usize,
    next_lease: u64,
    rng: u64,
    queued: u64,
}

impl Workload {
    fn new(nodes: u64) -> Self {
        let mut scheduler = Scheduler::new();
        for n in 0..nodes {
            scheduler.add_node(NodeId(n), node_resources(n));
        }
        // Half the GPUs, at 0.8125 GPU per lease on average.
        let target = (nodes as f64 * f64::from(GPUS_PER_NODE) / 2.0 / 0.8125) as usize;
        let mut w = Workload {
            scheduler,
            demands: demands(),
            live: VecDeque::with_capacity(target + 2),
            target,
            next_lease: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            queued: 0,
        };
        while w.live.len() < target {
            w.step();
        }
        w.queued = 0;
        w
    }

    /// xorshift64: a fixed, cheap sequence of choices.
    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// One request, and one release of the oldest lease when above the target.
    fn step(&mut self) {
        let r = self.next_rand();
        let mut req = PlacementRequest::new(
            LeaseId(self.next_lease),
            self.demands[(r % 4) as usize].clone(),
        );
        self.next_lease += 1;
        req.strategy = if (r >> 8) % 3 == 0 {
            Strategy::Spread
        } else {
            Strategy::Pack
        };
        match self.scheduler.request(req) {
            Decision::Placed(lease) => self.live.push_back(lease.id),
            Decision::Queued => {
                // Fragmentation left no room now: count it and drop the request, so that
                // every iteration stays one decision.
                self.queued += 1;
                self.scheduler.cancel(LeaseId(self.next_lease - 1));
            }
            Decision::Rejected(e) => panic!("a feasible request was rejected: {e}"),
        }
        if self.live.len() > self.target {
            let oldest = self.live.pop_front().expect("above target, so not empty");
            self.scheduler.release(oldest);
            black_box(self.scheduler.place_queued());
        }
    }
}

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement");
    group.throughput(Throughput::Elements(1));
    for nodes in [1_000u64, 10_000] {
        let mut w = Workload::new(nodes);
        group.bench_with_input(BenchmarkId::new("decisions", nodes), &nodes, |b, _| {
            b.iter(|| w.step())
        });
        w.scheduler
            .check_invariants()
            .expect("placement kept its invariants");
        eprintln!(
            "placement/{nodes}: {} requests, {} live leases (target {}), {} found no room",
            w.next_lease,
            w.live.len(),
            w.target,
            w.queued
        );
    }
    group.finish();
}

/// `criterion_group!` makes an undocumented `pub fn`; it lives here, out of the lints' way.
#[allow(missing_docs, unreachable_pub)]
mod group {
    criterion::criterion_group!(benches, super::placement);
}

criterion_main!(group::benches);
