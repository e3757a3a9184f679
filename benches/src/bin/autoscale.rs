//! The autoscaler's planning pass at scale (issue 19: a pass with 1,000 nodes and 10,000
//! waiting requests, target under 10 ms; Ray's autoscaler loop takes about 30 s a pass at 300
//! workers, ray#57624).
//!
//! The cluster may launch five node types: 16 CPUs; 1 L4 (24 GiB); 1 H100 (80 GiB); 8 H100s;
//! and 4 A100s (40 GiB) with a custom `nvme` resource, whose workers carry only the `embed`
//! and `score` tasks (a type with labels). Joined nodes are a mix of them (3 in 10 CPU-only,
//! 2 L4, 2 one-H100, 2 eight-H100, 1 A100), four in five busy. Waiting requests are a mix:
//! fractions of a GPU (0.1 to 1.0, some with GPU memory reserved or an accelerator type),
//! whole GPUs (1 to 8, some with 40 GiB reserved on each), CPUs alone (1 to 16), and work
//! labelled for the A100 pool (with `nvme`); 20 gangs wait besides them (strict pack, strict
//! spread, pack and spread).
//!
//! - **decide**: the pure `Autoscaler::decide`. A *first* pass decides with no launch
//!   pending (each timed on a fresh copy of the same autoscaler); a *steady* pass decides
//!   again while the launches of the first are still pending (they are coming capacity that
//!   the waiting work is packed onto first; no node joins), one virtual second apart.
//! - **head**: the head's whole pass, `HeadState::handle(now, Input::Tick)` with the
//!   autoscaler's timer due: the waiting list built from the scheduler's queue and gangs, the
//!   lease counts, `decide`, and its actions carried out. Workers join through
//!   `Input::WorkerJoined` (each answering a launch), busy ones get a lease that fills them,
//!   then requests are asked for until the wanted number waits in the queue (what fits an
//!   idle node is placed there). The first pass is timed once; steady passes follow.
//! - **scaling**: both at 100, 1,000 and 5,000 nodes and 1,000, 10,000 and 50,000 waiting.
//!
//! Run: `cargo run --release -p ember-benches --bin autoscale`

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clap::Parser;
use ember_core::ids::NodeId;
use ember_core::proto::{
    ClientReply, ClientRequest, GangSpec, GangStrategy, LaunchTicket, LeaseEndpoints, LeaseSpec,
    NodeAffinity, Placement, WorkerCommand, WorkerHello, WorkerReply,
};
use ember_core::resources::{task_label, GpuDevice, GpuShare, NodeResources, ResourceDemand};
use ember_core::security::Fingerprint;
use ember_head_state::autoscale::{Action, Autoscaler, NodeType, Policy, UtilisationRule, Waiting};
use ember_head_state::journal::Journaled;
use ember_head_state::{Config, ConnId, Effect, HeadState, Input, RequestId};

const GIB: u64 = 1 << 30;

/// The autoscaler's pass at scale, pure and through the head.
#[derive(Parser)]
struct Args {
    /// Joined nodes of the main measurement.
    #[arg(long, default_value_t = 1_000)]
    nodes: u64,
    /// Waiting requests of the main measurement (the gangs come on top).
    #[arg(long, default_value_t = 10_000)]
    waiting: u64,
    /// Passes timed in each main measurement.
    #[arg(long, default_value_t = 200)]
    passes: u32,
    /// Node counts of the scaling lines.
    #[arg(long, value_delimiter = ',', default_values_t = [100u64, 1_000, 5_000])]
    scale_nodes: Vec<u64>,
    /// Waiting counts of the scaling lines.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 10_000, 50_000])]
    scale_waiting: Vec<u64>,
    /// Passes timed in each scaling measurement.
    #[arg(long, default_value_t = 20)]
    scale_passes: u32,
    /// Skip the scaling lines.
    #[arg(long)]
    no_scaling: bool,
    /// Measure only the pure pass (`decide`) or only the head's (`head`), e.g. to profile one.
    #[arg(long)]
    only: Option<Only>,
}

/// One of the two measurements.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    /// The pure `Autoscaler::decide`.
    Decide,
    /// The head's whole pass.
    Head,
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

fn gpus(count: u32, accelerator: &str, memory: u64) -> Vec<GpuDevice> {
    (0..count)
        .map(|index| GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            name: format!("NVIDIA {accelerator}"),
            memory,
            accelerator: accelerator.into(),
            logical: true,
        })
        .collect()
}

/// The tasks of the A100 pool's executable; every other type runs the cluster's own, with
/// every task.
const EMBED_TASKS: [&str; 2] = ["embed", "score"];
const ALL_TASKS: [&str; 5] = ["train", "serve", "etl", "embed", "score"];

/// The node types, in the order of [`type_of`].
fn node_types() -> Vec<NodeType> {
    let t = |name: &str, cpus: u64, gpus: Vec<GpuDevice>, price: u64| NodeType {
        name: name.into(),
        resources: NodeResources {
            cpu_millis: cpus * 1_000,
            gpus,
            custom: Vec::new(),
            labels: Vec::new(),
        },
        min: 0,
        max: 5_000,
        warm: 0,
        price_micros_per_hour: price,
        spot: false,
        idle_timeout: Duration::from_secs(600),
    };
    let mut cpu = t("cpu16", 16, Vec::new(), 700_000);
    cpu.min = 10;
    cpu.idle_timeout = Duration::from_secs(300);
    let mut l4 = t("l4x1", 8, gpus(1, "L4", 24 * GIB), 800_000);
    l4.warm = 2;
    let h100 = t("h100x1", 12, gpus(1, "H100", 80 * GIB), 4_000_000);
    let h100x8 = t("h100x8", 96, gpus(8, "H100", 80 * GIB), 30_000_000);
    let mut a100 = t("a100x4-embed", 48, gpus(4, "A100", 40 * GIB), 12_000_000);
    a100.resources.custom = vec![("nvme".into(), 4_000)];
    a100.resources.labels = EMBED_TASKS.iter().map(|t| task_label(t)).collect();
    a100.max = 1_000;
    vec![cpu, l4, h100, h100x8, a100]
}

/// The type of the `i`th joined node: 3 in 10 CPU-only, 2 L4, 2 one-H100, 2 eight-H100,
/// 1 A100.
fn type_of(i: u64) -> usize {
    [0, 0, 0, 1, 1, 2, 2, 3, 3, 4][(i % 10) as usize]
}

fn policy() -> Policy {
    Policy {
        types: node_types(),
        max_nodes: 20_000,
        upscaling_speed: 1.0,
        launch_timeout: Duration::from_secs(600),
        utilisation: Some(UtilisationRule {
            percent: 80,
            margin: 10,
            min_waiting: 100,
            samples: 3,
            cooldown: Duration::from_secs(60),
        }),
    }
}

/// One waiting request of the mix: its demand and its task.
fn shape(rng: &mut Rand) -> (ResourceDemand, &'static str) {
    let r = rng.next();
    let pick = |n: u64, shift: u32| ((r >> shift) % n) as usize;
    let gpu = |cpus: u64, units: u32, memory: u64, accelerator: Option<&str>| ResourceDemand {
        cpu_millis: cpus * 1_000,
        gpus: GpuShare::from_units(units),
        gpu_memory: memory,
        accelerator: accelerator.map(Into::into),
        ..ResourceDemand::default()
    };
    match r % 100 {
        // A fraction of a GPU, 0.1 to 1.0, some with GPU memory or an accelerator type.
        0..=34 => {
            let units = 10 * (1 + pick(10, 8) as u32);
            let memory = [0, 0, 4, 8, 16, 20][pick(6, 16)] * GIB;
            let accelerator = [None, None, Some("L4"), Some("H100")][pick(4, 24)];
            let task = ["train", "serve"][pick(2, 32)];
            (
                gpu(1 + pick(2, 36) as u64, units, memory, accelerator),
                task,
            )
        }
        // Whole GPUs, 1 to 8 (1, 2, 4 and 8 the most), some with 40 GiB on each.
        35..=59 => {
            let count = [1, 1, 1, 2, 2, 4, 4, 8, 3, 5, 6, 7][pick(12, 8)];
            let memory = [0, 40][pick(2, 16)] * GIB;
            let accelerator = [None, Some("H100")][pick(2, 24)];
            (
                gpu(8 * u64::from(count), 100 * count, memory, accelerator),
                "train",
            )
        }
        // CPUs alone, 1 to 16.
        60..=84 => {
            let task = ["serve", "etl"][pick(2, 16)];
            (gpu(1 + pick(16, 8) as u64, 0, 0, None), task)
        }
        // The A100 pool's work: a quarter to two A100s with local NVMe.
        _ => {
            let units = [25, 50, 100, 200][pick(4, 8)];
            let mut d = gpu(4, units, 0, Some("A100"));
            d.set_custom("nvme", 1_000);
            (d, EMBED_TASKS[pick(2, 16)])
        }
    }
}

/// The 20 waiting gangs: 5 of each strategy.
fn gangs() -> Vec<(Vec<ResourceDemand>, GangStrategy)> {
    let d = |units: u32| ResourceDemand {
        cpu_millis: 4_000,
        gpus: GpuShare::from_units(units),
        ..ResourceDemand::default()
    };
    (0..5)
        .flat_map(|_| {
            [
                (vec![d(400); 2], GangStrategy::StrictPack),
                (vec![d(100); 4], GangStrategy::StrictSpread),
                (vec![d(50); 8], GangStrategy::Pack),
                (vec![d(200); 3], GangStrategy::Spread),
            ]
        })
        .collect()
}

/// What waits, as the autoscaler sees it: `count` requests of the mix, then the gangs.
fn waiting(count: u64) -> Vec<Waiting> {
    let mut rng = Rand(0x9E37_79B9_7F4A_7C15);
    let mut w: Vec<Waiting> = (0..count)
        .map(|_| {
            let (demand, task) = shape(&mut rng);
            Waiting::Request {
                demand,
                labels: vec![task_label(task)],
            }
        })
        .collect();
    w.extend(
        gangs()
            .into_iter()
            .map(|(bundles, strategy)| Waiting::Gang { bundles, strategy }),
    );
    w
}

/// Distinct (demand, labels) among what waits: what packing could group.
fn distinct_shapes(waiting: &[Waiting]) -> usize {
    waiting
        .iter()
        .filter_map(|w| match w {
            Waiting::Request { demand, labels } => Some(format!("{demand:?}{labels:?}")),
            Waiting::Gang { .. } => None,
        })
        .collect::<BTreeSet<_>>()
        .len()
}

/// An autoscaler that knows `nodes` joined nodes (four in five busy), none launching.
fn joined(nodes: u64, t0: Instant) -> Autoscaler {
    let mut a = Autoscaler::new(policy()).expect("a policy it can keep");
    let types = node_types();
    for i in 0..nodes {
        let node = NodeId(i + 1);
        a.node_joined(t0, node, &types[type_of(i)].name, None);
        if i % 5 != 0 {
            a.node_leases(t0, node, 1 + (i % 4) as usize);
        }
    }
    a
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// p50, p99 and max of `times`, in ms.
fn summary(mut times: Vec<Duration>) -> String {
    times.sort_unstable();
    format!(
        "p50={:.2}ms p99={:.2}ms max={:.2}ms",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().expect("measured")),
    )
}

fn launches(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Launch { .. }))
        .count()
}

fn drains(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Drain { .. }))
        .count()
}

/// The pure pass: what a first pass and a steady pass take.
struct DecideTimes {
    first: Vec<Duration>,
    steady: Vec<Duration>,
    launches: usize,
    drains: usize,
    steady_launches: usize,
    pending: usize,
}

fn decide(nodes: u64, waiting: &[Waiting], passes: u32) -> DecideTimes {
    let t0 = Instant::now();
    let base = joined(nodes, t0);
    // Idle CPU nodes are past their 300 s; the others are not at 600 s.
    let at = t0 + Duration::from_secs(400);
    let mut first = Vec::with_capacity(passes as usize);
    let mut actions = Vec::new();
    for _ in 0..passes {
        let mut a = base.clone();
        let start = Instant::now();
        actions = a.decide(at, waiting, Some(85.0));
        first.push(start.elapsed());
    }
    let mut a = base.clone();
    a.decide(at, waiting, Some(85.0));
    let pending = a.pending_launches().count();
    let mut steady = Vec::with_capacity(passes as usize);
    let mut steady_launches = 0;
    for s in 1..=passes {
        let now = at + Duration::from_secs(u64::from(s));
        let start = Instant::now();
        let actions = a.decide(now, waiting, Some(85.0));
        steady.push(start.elapsed());
        steady_launches += launches(&actions);
    }
    DecideTimes {
        first,
        steady,
        launches: launches(&actions),
        drains: drains(&actions),
        steady_launches,
        pending,
    }
}

fn endpoints() -> LeaseEndpoints {
    LeaseEndpoints {
        peer_addr: "10.0.0.1:7300".into(),
        peer_fingerprint: Fingerprint([2; 32]),
        host: "bench-host".into(),
        local_socket: "/tmp/ember/lease.sock".into(),
    }
}

/// A head whose cluster is set up as the module documentation says, at `t0`.
struct Head {
    state: HeadState,
    t0: Instant,
    next_request: u64,
    /// Final replies to lease requests: refusals (none expected).
    refused: u64,
    busy: u64,
}

impl Head {
    fn handle(&mut self, now: Instant, input: Input) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            for effect in self.state.handle(now, input) {
                match &effect {
                    Effect::Command {
                        command,
                        body: WorkerCommand::OpenLease { .. },
                        ..
                    } => inputs.push(Input::Replied {
                        command: *command,
                        reply: Ok(WorkerReply::LeaseOpened(endpoints())),
                    }),
                    Effect::Reply {
                        reply: ClientReply::Error(_),
                        ..
                    } => self.refused += 1,
                    _ => {}
                }
                all.push(effect);
            }
        }
        all
    }

    fn ask(&mut self, body: ClientRequest) -> Vec<Effect> {
        self.next_request += 1;
        let input = Input::Request {
            conn: ConnId(u64::MAX),
            request: RequestId(self.next_request),
            body,
        };
        self.handle(self.t0, input)
    }

    fn new(nodes: u64, waiting: u64) -> Head {
        let t0 = Instant::now();
        let config = Config {
            heartbeat_timeout: Duration::from_secs(3_600),
            pending_timeout: Duration::from_secs(3_600),
            autoscaler: Some(Autoscaler::new(policy()).expect("a policy it can keep")),
            autoscale_interval: Duration::from_secs(1),
            ..Config::default()
        };
        let (state, _) = HeadState::restore(config, t0, Journaled::default());
        let mut head = Head {
            state,
            t0,
            next_request: 0,
            refused: 0,
            busy: 0,
        };
        let types = node_types();
        for i in 0..nodes {
            let t = &types[type_of(i)];
            let tasks: &[&str] = if t.resources.labels.is_empty() {
                &ALL_TASKS
            } else {
                &EMBED_TASKS
            };
            let hello = WorkerHello {
                name: format!("sim-{i}"),
                resources: NodeResources {
                    labels: Vec::new(),
                    ..t.resources.clone()
                },
                task_types: tasks.iter().map(|t| t.to_string()).collect(),
                actor_types: Vec::new(),
                address: format!("10.0.{}.{}:7000", i / 256, i % 256),
                rejoin: None,
                launch: Some(LaunchTicket {
                    launch: 1_000_000 + i,
                    node_type: t.name.clone(),
                }),
            };
            let effects = head.handle(
                t0,
                Input::WorkerJoined {
                    conn: ConnId(i),
                    hello: Box::new(hello),
                },
            );
            let node = effects
                .iter()
                .find_map(|e| match e {
                    Effect::Welcome { node, .. } => Some(*node),
                    _ => None,
                })
                .expect("welcomed");
            // Four in five are busy: a lease fills the node.
            if i % 5 != 0 {
                let r = &t.resources;
                let mut demand = ResourceDemand {
                    cpu_millis: r.cpu_millis,
                    gpus: GpuShare::from_units(100 * r.gpus.len() as u32),
                    ..ResourceDemand::default()
                };
                for (name, amount) in &r.custom {
                    demand.set_custom(name, *amount);
                }
                head.ask(ClientRequest::LeaseTask(LeaseSpec {
                    name: tasks[0].into(),
                    placement: Placement {
                        demand,
                        affinity: Some(NodeAffinity { node, soft: false }),
                        ..Placement::default()
                    },
                }));
                head.busy += 1;
            }
        }
        let mut rng = Rand(0x9E37_79B9_7F4A_7C15);
        while (head.state.scheduler().queued_len() as u64) < waiting {
            let (demand, task) = shape(&mut rng);
            head.ask(ClientRequest::LeaseTask(LeaseSpec {
                name: task.into(),
                placement: Placement {
                    demand,
                    ..Placement::default()
                },
            }));
        }
        for (bundles, strategy) in gangs() {
            head.ask(ClientRequest::CreateGang(GangSpec {
                bundles,
                strategy,
                priority: 0,
                pending_timeout_ms: None,
            }));
        }
        head
    }

    fn waiting_gangs(&self) -> usize {
        self.state
            .scheduler()
            .gangs()
            .filter(|g| g.bundles.iter().any(|b| b.node.is_none()))
            .count()
    }
}

/// The head's pass: the first, then steady ones a second apart.
struct HeadTimes {
    first: Duration,
    steady: Vec<Duration>,
    launches: usize,
    queued: usize,
    gangs: usize,
    busy: u64,
    refused: u64,
}

fn head(nodes: u64, waiting: u64, passes: u32) -> HeadTimes {
    let mut head = Head::new(nodes, waiting);
    let queued = head.state.scheduler().queued_len();
    let gangs = head.waiting_gangs();
    let tick = |head: &mut Head, s: u64| {
        let now = head.t0 + Duration::from_secs(s);
        let start = Instant::now();
        let effects = head.handle(now, Input::Tick);
        (start.elapsed(), effects)
    };
    let (first, effects) = tick(&mut head, 1);
    let launches = effects
        .iter()
        .filter(|e| matches!(e, Effect::LaunchNode { .. }))
        .count();
    let steady = (2..2 + u64::from(passes))
        .map(|s| tick(&mut head, s).0)
        .collect();
    head.state
        .check_invariants()
        .expect("the state agrees with itself");
    HeadTimes {
        first,
        steady,
        launches,
        queued,
        gangs,
        busy: head.busy,
        refused: head.refused,
    }
}

fn main() {
    let args = Args::parse();
    println!(
        "autoscaler pass (release build: {})",
        !cfg!(debug_assertions)
    );
    let w = waiting(args.waiting);
    let shapes = distinct_shapes(&w);
    if args.only != Some(Only::Head) {
        let d = decide(args.nodes, &w, args.passes);
        println!(
        "decide nodes={} waiting={} gangs={} distinct_shapes={shapes} first: passes={} {} launches={} drains={}",
        args.nodes,
        args.waiting,
        w.len() as u64 - args.waiting,
        args.passes,
        summary(d.first),
        d.launches,
        d.drains,
    );
        println!(
            "decide nodes={} waiting={} steady ({} launches pending): passes={} {} launches={}",
            args.nodes,
            args.waiting,
            d.pending,
            args.passes,
            summary(d.steady),
            d.steady_launches,
        );
    }
    if args.only != Some(Only::Decide) {
        let h = head(args.nodes, args.waiting, args.passes);
        println!(
        "head nodes={} busy={} waiting={} gangs_waiting={} refused={}: first={:.2}ms launches={}; steady: passes={} {}",
        args.nodes,
        h.busy,
        h.queued,
        h.gangs,
        h.refused,
        ms(h.first),
        h.launches,
        args.passes,
        summary(h.steady),
        );
    }
    if args.no_scaling || args.only.is_some() {
        return;
    }
    for &nodes in &args.scale_nodes {
        for &waiting_count in &args.scale_waiting {
            let w = waiting(waiting_count);
            let d = decide(nodes, &w, args.scale_passes);
            let h = head(nodes, waiting_count, args.scale_passes);
            println!(
                "scale nodes={nodes:>5} waiting={waiting_count:>6}: decide first {} launches={}; steady {}; head first={:.2}ms steady {}",
                summary(d.first),
                d.launches,
                summary(d.steady),
                ms(h.first),
                summary(h.steady),
            );
        }
    }
}
