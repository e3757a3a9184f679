//! The head's state machine alone, with no network: how many inputs it handles a second, how
//! many actors it creates a second, and how much memory it holds with a large cluster.
//!
//! It joins `--nodes` workers (8 logical 80 GiB H100s each), creates `--actors` actors of a
//! quarter GPU through `HeadState::handle` (each creation is a request, a command to a worker
//! and that worker's reply, answered as the real head answers it), sends a heartbeat from every
//! node, and then stops every actor. Memory is what the state holds live, counted by this
//! binary's allocator.
//!
//! Run: `cargo run --release -p ember-benches --bin head_state -- --nodes 1000 --actors 10000`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ember_core::proto::{
    ActorEndpoints, ActorSpec, CheckpointPolicy, ClientReply, ClientRequest, Placement,
    RestartPolicy, WorkerCommand, WorkerEvent, WorkerHello, WorkerReply,
};
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand};
use ember_core::security::Fingerprint;
use ember_head_state::{Config, ConnId, Effect, HeadState, Input, RequestId};

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed straight to the system allocator; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The head's state machine at scale.
#[derive(Parser)]
struct Args {
    /// Workers joined.
    #[arg(long, default_value_t = 1000)]
    nodes: u64,
    /// Actors created (a quarter GPU each).
    #[arg(long, default_value_t = 10_000)]
    actors: u64,
}

fn hello(i: u64) -> Box<WorkerHello> {
    let gpus = (0..8)
        .map(|g| GpuDevice {
            index: g,
            uuid: format!("logical-{g}"),
            name: "H100".into(),
            memory: 80 << 30,
            accelerator: "H100".into(),
            logical: true,
        })
        .collect();
    Box::new(WorkerHello {
        name: format!("sim-{i}"),
        resources: NodeResources {
            cpu_millis: 64_000,
            gpus,
            custom: Vec::new(),
            labels: Vec::new(),
        },
        task_types: vec!["bench::task".into()],
        actor_types: vec!["bench::Actor".into()],
        address: format!("10.0.{}.{}:7000", i / 256, i % 256),
        rejoin: None,
        launch: None,
    })
}

fn endpoints(i: u64) -> ActorEndpoints {
    ActorEndpoints {
        peer_addr: format!("10.0.0.1:{}", 20_000 + i % 40_000),
        peer_fingerprint: Fingerprint([7; 32]),
        host: "bench-host".into(),
        local_socket: format!("/tmp/ember/actor-{i}.sock"),
        mesh_socket: format!("/tmp/ember/mesh-{i}.sock"),
    }
}

fn spec() -> ActorSpec {
    ActorSpec {
        type_name: "bench::Actor".into(),
        args: vec![0; 16],
        placement: Placement {
            demand: ResourceDemand {
                gpus: GpuShare::from_units(25),
                ..Default::default()
            },
            ..Default::default()
        },
        restart: RestartPolicy {
            max_restarts: -1,
            max_task_retries: 0,
        },
        checkpoint: CheckpointPolicy::default(),
    }
}

/// Feeds one input, answering every command the way a worker would, until nothing is left;
/// returns how many inputs that took. A constructed actor gets `endpoints(actor_seq)`.
fn drive(state: &mut HeadState, now: Instant, first: Input, actor_seq: u64) -> u64 {
    let mut inputs = vec![first];
    let mut handled = 0;
    while let Some(input) = inputs.pop() {
        handled += 1;
        for effect in state.handle(now, input) {
            if let Effect::Command { command, body, .. } = effect {
                let reply = match body {
                    WorkerCommand::CreateActor { .. } => {
                        WorkerReply::ActorReady(endpoints(actor_seq))
                    }
                    WorkerCommand::KillActor { .. } => WorkerReply::ActorKilled,
                    other => panic!("unexpected command {other:?}"),
                };
                inputs.push(Input::Replied {
                    command,
                    reply: Ok(reply),
                });
            }
        }
    }
    handled
}

fn rate(n: u64, took: Duration) -> String {
    format!("{:.0}/s", n as f64 / took.as_secs_f64())
}

fn main() {
    let args = Args::parse();
    let before = LIVE.load(Ordering::Relaxed);
    let now = Instant::now();
    let mut state = HeadState::new(Config::default());
    let client = ConnId(u64::MAX);

    let started = Instant::now();
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        for effect in state.handle(
            now,
            Input::WorkerJoined {
                conn: ConnId(i),
                hello: hello(i),
            },
        ) {
            if let Effect::Welcome { node, .. } = effect {
                nodes.push(node);
            }
        }
    }
    let joins = started.elapsed();

    let started = Instant::now();
    let mut inputs = 0;
    let mut actors = Vec::new();
    for i in 0..args.actors {
        let request = RequestId(i);
        let create = Input::Request {
            conn: client,
            request,
            body: ClientRequest::CreateActor(spec()),
        };
        let mut pending = vec![create];
        while let Some(input) = pending.pop() {
            inputs += 1;
            for effect in state.handle(now, input) {
                match effect {
                    Effect::Command { command, .. } => pending.push(Input::Replied {
                        command,
                        reply: Ok(WorkerReply::ActorReady(endpoints(i))),
                    }),
                    Effect::Reply {
                        reply: ClientReply::ActorCreated(location),
                        ..
                    } => actors.push(location.actor),
                    Effect::Reply { reply, .. } => panic!("creation failed: {reply:?}"),
                    _ => {}
                }
            }
        }
    }
    let creations = started.elapsed();
    assert_eq!(actors.len() as u64, args.actors, "every actor was created");
    let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);

    let started = Instant::now();
    for &node in &nodes {
        state.handle(
            now + Duration::from_millis(500),
            Input::Event {
                node,
                event: WorkerEvent::Heartbeat { gpus: Vec::new() },
            },
        );
    }
    let heartbeats = started.elapsed();

    let started = Instant::now();
    let mut kill_inputs = 0;
    for (i, &actor) in actors.iter().enumerate() {
        let kill = Input::Request {
            conn: client,
            request: RequestId(args.actors + i as u64),
            body: ClientRequest::KillActor { actor },
        };
        kill_inputs += drive(&mut state, now, kill, 0);
    }
    let kills = started.elapsed();
    state
        .check_invariants()
        .expect("the state agrees with itself");

    println!(
        "head state machine: {} nodes, {} actors (release build: {})",
        args.nodes,
        args.actors,
        !cfg!(debug_assertions)
    );
    println!("  joins                {:>12}", rate(args.nodes, joins));
    println!(
        "  actor creations      {:>12}  ({} inputs, {})",
        rate(args.actors, creations),
        inputs,
        rate(inputs, creations)
    );
    println!(
        "  heartbeats           {:>12}",
        rate(args.nodes, heartbeats)
    );
    println!(
        "  actor stops          {:>12}  ({} inputs)",
        rate(args.actors, kills),
        kill_inputs
    );
    println!(
        "  memory held with every actor alive: {:.1} MiB",
        held as f64 / (1 << 20) as f64
    );
}
