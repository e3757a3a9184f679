//! The pure scheduler alone: placement decisions per second and the latency of each decision
//! at 1,000, 10,000 and 100,000 simulated nodes, and the time of a pass over a queue of
//! 100,000 waiting requests after a release.
//!
//! Nodes are a mix: half with 64 CPUs and 8 H100s of 80 GiB, a quarter with 64 CPUs and 8
//! A100s of 40 GiB, a quarter with 32 CPUs and no GPU. Demands are a mix of six: a quarter GPU,
//! half an H100, one A100, one GPU, two GPUs with 40 GiB reserved on each, and 4 CPUs alone; a
//! third spread, the rest pack. The cluster is kept about half full: once the live leases
//! exceed a target, the oldest one is released and the queue is passed over, as the head does.
//! A decision is one `Scheduler::request`; its latency is timed alone, and decisions per
//! second count whole steps (the request, the release and the pass).
//!
//! The queue pass: 10,000 nodes are filled, then 100,000 requests of the same six demands
//! (three priorities) wait; each pass follows the release of one lease, or of every lease of
//! one node.
//!
//! Run: `cargo run --release -p ember-benches --bin placement`

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Parser;
use ember_core::ids::{LeaseId, NodeId};
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand};
use ember_head_state::placement::{Decision, PlacementRequest, Scheduler, Strategy};

const GIB: u64 = 1 << 30;

/// Placement decisions and a queue pass, with no I/O.
#[derive(Parser)]
struct Args {
    /// Cluster sizes to measure decisions at.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 10_000, 100_000])]
    nodes: Vec<u64>,
    /// Decisions measured at each size (after as many again to warm up).
    #[arg(long, default_value_t = 1_000_000)]
    decisions: u64,
    /// Requests waiting in the queue-pass measurement.
    #[arg(long, default_value_t = 100_000)]
    waiting: u64,
    /// Nodes of the queue-pass measurement.
    #[arg(long, default_value_t = 10_000)]
    queue_nodes: u64,
}

/// One node of the mix (see the module documentation).
fn node_resources(node: u64) -> NodeResources {
    let (cpus, count, accelerator, memory) = match node % 4 {
        0 | 1 => (64_000, 8, "H100", 80 * GIB),
        2 => (64_000, 8, "A100", 40 * GIB),
        _ => (32_000, 0, "", 0),
    };
    NodeResources {
        cpu_millis: cpus,
        gpus: (0..count)
            .map(|index| GpuDevice {
                index,
                uuid: format!("GPU-sim-{node}-{index}"),
                name: accelerator.into(),
                memory,
                accelerator: accelerator.into(),
                logical: true,
            })
            .collect(),
        custom: vec![],
        labels: vec![],
    }
}

/// The six demands of the mix; on average 0.79 GPU per request.
fn demands() -> [ResourceDemand; 6] {
    let gpus = |cpu_millis, units, accelerator: Option<&str>| ResourceDemand {
        cpu_millis,
        gpus: GpuShare::from_units(units),
        accelerator: accelerator.map(Into::into),
        ..Default::default()
    };
    [
        gpus(1_000, 25, None),
        gpus(1_000, 50, Some("H100")),
        gpus(1_000, 100, Some("A100")),
        gpus(1_000, 100, None),
        ResourceDemand {
            gpu_memory: 40 * GIB,
            ..gpus(2_000, 200, None)
        },
        gpus(4_000, 0, None),
    ]
}

/// xorshift64: a fixed, cheap sequence of choices.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A request of the mix.
fn request(rng: &mut Rand, demands: &[ResourceDemand], lease: u64) -> PlacementRequest {
    let r = rng.next();
    let mut req = PlacementRequest::new(LeaseId(lease), demands[(r % 6) as usize].clone());
    req.strategy = if (r >> 8) % 3 == 0 {
        Strategy::Spread
    } else {
        Strategy::Pack
    };
    req.priority = ((r >> 16) % 3) as i32;
    req
}

fn cluster(nodes: u64) -> Scheduler {
    let mut s = Scheduler::new();
    for n in 0..nodes {
        s.add_node(NodeId(n), node_resources(n));
    }
    s
}

/// A scheduler kept about half full and the state of the workload driving it.
struct Workload {
    scheduler: Scheduler,
    demands: [ResourceDemand; 6],
    live: VecDeque<LeaseId>,
    target: usize,
    next_lease: u64,
    rng: Rand,
    found_no_room: u64,
}

impl Workload {
    fn new(nodes: u64) -> Self {
        // Half the GPUs (six nodes in eight have them), at 0.79 GPU per lease on average.
        let target = (nodes as f64 * 6.0 / 2.0 / 0.79) as usize;
        let mut w = Workload {
            scheduler: cluster(nodes),
            demands: demands(),
            live: VecDeque::with_capacity(target + 2),
            target,
            next_lease: 0,
            rng: Rand(0x9E37_79B9_7F4A_7C15),
            found_no_room: 0,
        };
        while w.live.len() < target {
            w.step();
        }
        w.found_no_room = 0;
        w
    }

    /// One request, and one release of the oldest lease (then a pass) when above the target;
    /// returns how long the request's decision took.
    fn step(&mut self) -> Duration {
        let req = request(&mut self.rng, &self.demands, self.next_lease);
        self.next_lease += 1;
        let start = Instant::now();
        let decision = self.scheduler.request(req);
        let took = start.elapsed();
        match decision {
            Decision::Placed(lease) => self.live.push_back(lease.id),
            Decision::Queued => {
                // Fragmentation left no room now: count it and drop the request, so that
                // every step stays one decision.
                self.found_no_room += 1;
                self.scheduler.cancel(LeaseId(self.next_lease - 1));
            }
            Decision::Rejected(e) => panic!("a feasible request was rejected: {e}"),
        }
        if self.live.len() > self.target {
            let oldest = self.live.pop_front().expect("above target, so not empty");
            self.scheduler.release(oldest);
            black_box(self.scheduler.place_queued());
        }
        took
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn decisions(nodes: u64, count: u64) {
    let setup = Instant::now();
    let mut w = Workload::new(nodes);
    let setup = setup.elapsed();
    for _ in 0..count {
        w.step();
    }
    w.found_no_room = 0;
    let mut latencies = Vec::with_capacity(count as usize);
    let start = Instant::now();
    for _ in 0..count {
        latencies.push(w.step());
    }
    let wall = start.elapsed();
    w.scheduler
        .check_invariants()
        .expect("placement kept its invariants");
    latencies.sort_unstable();
    println!(
        "decisions nodes={nodes} count={count} steps_per_s={:.0} mean_step={:.2}us decisions_per_s={:.0} mean={:.2}us p50={:.2}us p99={:.2}us p999={:.2}us max={:.1}us live={} found_no_room={} setup={:.1}s",
        count as f64 / wall.as_secs_f64(),
        wall.as_secs_f64() * 1e6 / count as f64,
        count as f64 / latencies.iter().sum::<Duration>().as_secs_f64(),
        latencies.iter().sum::<Duration>().as_secs_f64() * 1e6 / count as f64,
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        percentile(&latencies, 0.999).as_secs_f64() * 1e6,
        latencies.last().expect("measured").as_secs_f64() * 1e6,
        w.live.len(),
        w.found_no_room,
        setup.as_secs_f64(),
    );
}

fn queue_pass(nodes: u64, waiting: u64) {
    let mut s = cluster(nodes);
    let demands = demands();
    let mut rng = Rand(0x2545_F491_4F6C_DD1D);
    let mut live: Vec<LeaseId> = Vec::new();
    let mut lease = 0;
    let mut queued = 0;
    while queued < waiting {
        match s.request(request(&mut rng, &demands, lease)) {
            Decision::Placed(l) => live.push(l.id),
            Decision::Queued => queued += 1,
            Decision::Rejected(e) => panic!("a feasible request was rejected: {e}"),
        }
        lease += 1;
    }
    println!(
        "queue nodes={nodes} waiting={} groups={} live={}",
        s.queued_len(),
        s.queued_groups(),
        live.len()
    );
    // One lease ends, then one pass; many times.
    let mut times = Vec::new();
    let mut placed = 0;
    for _ in 0..1_000 {
        let i = (rng.next() % live.len() as u64) as usize;
        s.release(live.swap_remove(i));
        let start = Instant::now();
        let now = s.place_queued();
        times.push(start.elapsed());
        placed += now.len();
        live.extend(now.iter().map(|l| l.id));
    }
    times.sort_unstable();
    println!(
        "queue pass after one release: passes=1000 placed_per_pass={:.2} p50={:.2}us p99={:.2}us max={:.1}us waiting_after={}",
        placed as f64 / 1_000.0,
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        times.last().expect("measured").as_secs_f64() * 1e6,
        s.queued_len(),
    );
    // Every lease of one node ends, then one pass; for a hundred nodes.
    let mut times = Vec::new();
    let mut placed = 0;
    for n in 0..100 {
        let node = NodeId(n * (nodes / 100));
        let (on, off): (Vec<LeaseId>, Vec<LeaseId>) = live
            .iter()
            .partition(|l| s.lease(**l).is_some_and(|l| l.node == node));
        live = off;
        for id in on {
            s.release(id);
        }
        let start = Instant::now();
        let now = s.place_queued();
        times.push(start.elapsed());
        placed += now.len();
        live.extend(now.iter().map(|l| l.id));
    }
    times.sort_unstable();
    println!(
        "queue pass after a whole node frees: passes=100 placed_per_pass={:.1} p50={:.1}us p99={:.1}us max={:.1}us waiting_after={}",
        placed as f64 / 100.0,
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        times.last().expect("measured").as_secs_f64() * 1e6,
        s.queued_len(),
    );
    s.check_invariants().expect("placement kept its invariants");
}

fn main() {
    let args = Args::parse();
    for &nodes in &args.nodes {
        decisions(nodes, args.decisions);
    }
    queue_pass(args.queue_nodes, args.waiting);
}
