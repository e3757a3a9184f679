//! Waiting requests and their reasons: waiting for capacity, or infeasible once the only node
//! that could hold them left or drains, failing at their pending timeout unless a node that
//! fits joins first; and needs that are never ignored.

use std::time::{Duration, Instant};

use ember_core::ids::NodeId;
use ember_core::proto::{
    ClientReply, ClientRequest, ErrorKind, JobEvent, JobSpec, LeaseSpec, Placement, WaitReason,
    WorkStatus, WorkerCommand, WorkerHello,
};
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand};

use super::{command, error_of, reply_to, spec, Scene};
use crate::io::{ConnId, Effect, Input, RequestId};
use crate::journal::Journaled;
use crate::state::{Config, HeadState};

impl Scene {
    /// A worker with one 80 GiB GPU of `accelerator`, which runs any job, joins.
    fn join_gpu(&mut self, accelerator: &str) -> (ConnId, NodeId, Vec<Effect>) {
        let conn = self.conn();
        let hello = WorkerHello {
            name: format!("worker-{}", conn.0),
            resources: NodeResources {
                cpu_millis: 8000,
                gpus: vec![GpuDevice {
                    index: 0,
                    uuid: format!("GPU-{}", conn.0),
                    name: format!("NVIDIA {accelerator}"),
                    memory: 80 << 30,
                    accelerator: accelerator.into(),
                    logical: true,
                }],
                custom: Vec::new(),
                labels: Vec::new(),
            },
            task_types: vec!["train".into()],
            actor_types: vec!["Trainer".into()],
            address: "10.0.0.1:7100".into(),
            rejoin: None,
            launch: None,
        };
        let effects = self.handle(Input::WorkerJoined {
            conn,
            hello: Box::new(hello),
        });
        match effects.as_slice() {
            [Effect::Welcome { conn: c, node }, rest @ ..] if *c == conn => {
                (conn, *node, rest.to_vec())
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// The queue as `ember status` shows it.
    fn queue(&mut self) -> Vec<WorkStatus> {
        self.status().queue
    }

    /// Every worker sends a heartbeat now, so that only the clock the test moves matters.
    fn heartbeats(&mut self) {
        let nodes: Vec<NodeId> = self.head.nodes.keys().copied().collect();
        for node in nodes {
            self.handle(Input::Event {
                node,
                event: ember_core::proto::WorkerEvent::Heartbeat { gpus: Vec::new() },
            });
        }
    }
}

/// One whole GPU of `accelerator`, failing `timeout_ms` after it became infeasible.
fn gpu_of(accelerator: &str, timeout_ms: Option<u64>) -> Placement {
    Placement {
        demand: ResourceDemand {
            gpus: GpuShare::ONE,
            accelerator: Some(accelerator.into()),
            ..ResourceDemand::default()
        },
        pending_timeout_ms: timeout_ms,
        ..Placement::default()
    }
}

fn job(placement: Placement) -> ClientRequest {
    ClientRequest::SubmitJob(JobSpec {
        command: vec!["train.sh".into()],
        env: Vec::new(),
        placement,
    })
}

/// The reasons streamed to `request` among `effects`, in order.
fn waiting(effects: &[Effect], request: RequestId) -> Vec<WaitReason> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Stream {
                request: r,
                reply: ClientReply::Job(JobEvent::Waiting(why)),
            } if *r == request => Some(why.clone()),
            _ => None,
        })
        .collect()
}

fn answered(effects: &[Effect], request: RequestId) -> bool {
    effects.iter().any(|e| {
        matches!(e, Effect::Reply { request: r, .. } | Effect::End { request: r } if *r == request)
    })
}

/// An A100 node busy with one job and an H100 node; a second A100 job waits for capacity.
/// Returns the scene, the A100 node's connection and the waiting job's request.
fn a100_busy(timeout_ms: Option<u64>) -> (Scene, ConnId, RequestId) {
    let mut s = Scene::new();
    let (a100, _, _) = s.join_gpu("A100");
    s.join_gpu("H100");
    let client = s.conn();
    let (_, effects) = s.ask(client, job(gpu_of("A100", None)));
    assert!(
        matches!(command(&effects).2, WorkerCommand::RunJob { .. }),
        "the first A100 job runs at once"
    );
    let (second, effects) = s.ask(client, job(gpu_of("A100", timeout_ms)));
    let why = waiting(&effects, second);
    assert_eq!(why.len(), 1, "told once why it waits: {effects:?}");
    assert!(
        !why[0].infeasible && why[0].fails_in_ms.is_none(),
        "{why:?}"
    );
    assert!(
        why[0].to_string().starts_with("waiting for resources:")
            && why[0].reason.contains("gpus=1"),
        "{}",
        why[0]
    );
    let queue = s.queue();
    assert_eq!(queue.len(), 1);
    assert!(
        queue[0]
            .waiting
            .as_deref()
            .is_some_and(|w| w.starts_with("waiting for resources")),
        "{queue:?}"
    );
    assert_eq!(queue[0].fails_in_ms, None);
    (s, a100, second)
}

#[test]
fn a_job_whose_only_fitting_node_dies_waits_infeasible_then_fails_at_its_pending_timeout() {
    let (mut s, a100, request) = a100_busy(Some(1500));
    let effects = s.handle(Input::Closed { conn: a100 });
    let why = waiting(&effects, request);
    assert_eq!(
        why.len(),
        1,
        "told once that it became infeasible: {effects:?}"
    );
    assert!(why[0].infeasible);
    assert_eq!(why[0].fails_in_ms, Some(1500));
    assert_eq!(
        why[0].reason,
        "no GPU has accelerator type A100 (the cluster has: H100)"
    );
    let queue = s.queue();
    assert_eq!(
        queue[0].waiting.as_deref(),
        Some(
            "infeasible: no GPU has accelerator type A100 (the cluster has: H100) \
             (fails in 1.5 s unless a node that fits joins)"
        )
    );
    assert_eq!(queue[0].fails_in_ms, Some(1500));
    assert_eq!(
        s.head.poll_timeout(),
        Some(s.now + Duration::from_millis(1500))
    );

    s.later(Duration::from_millis(1499));
    s.heartbeats();
    let effects = s.handle(Input::Tick);
    assert!(!answered(&effects, request), "not before its deadline");
    assert_eq!(s.queue()[0].fails_in_ms, Some(1));

    s.later(Duration::from_millis(1));
    let effects = s.handle(Input::Tick);
    let e = error_of(reply_to(&effects, request));
    assert_eq!(e.kind, ErrorKind::Infeasible);
    assert!(
        e.message.contains("no GPU has accelerator type A100")
            && e.message.contains("within 1500 ms"),
        "{}",
        e.message
    );
    assert!(s.queue().is_empty(), "nothing waits any more");
    assert_eq!(s.head.scheduler().queued_len(), 0);
}

#[test]
fn a_stranded_job_is_placed_when_a_fitting_node_joins_before_its_deadline() {
    let (mut s, a100, request) = a100_busy(None);
    s.head.config.pending_timeout = Duration::from_millis(1000);
    let effects = s.handle(Input::Closed { conn: a100 });
    assert_eq!(
        waiting(&effects, request)[0].fails_in_ms,
        Some(1000),
        "the head's default"
    );

    s.later(Duration::from_millis(900));
    s.heartbeats();
    let (_, node, effects) = s.join_gpu("A100");
    let (to, _, body) = command(&effects);
    assert_eq!(to, node, "placed on the node that joined");
    assert!(matches!(body, WorkerCommand::RunJob { .. }), "{body:?}");
    assert!(s.head.stranded.is_empty());

    s.later(Duration::from_millis(200));
    let effects = s.handle(Input::Tick);
    assert!(!answered(&effects, request), "its old deadline is gone");
}

#[test]
fn a_job_left_with_no_nodes_at_all_says_so_and_runs_on_the_next_fitting_node() {
    let mut s = Scene::new();
    let (a100, _, _) = s.join_gpu("A100");
    let client = s.conn();
    s.ask(client, job(gpu_of("A100", Some(1000))));
    let (request, _) = s.ask(client, job(gpu_of("A100", Some(1000))));
    let effects = s.handle(Input::Closed { conn: a100 });
    let why = waiting(&effects, request);
    assert!(why[0].infeasible);
    assert_eq!(why[0].reason, "the cluster has no nodes");

    // A node that cannot hold it keeps its deadline, with the reason said anew; one that can
    // runs it.
    s.later(Duration::from_millis(400));
    let (_, _, effects) = s.join_gpu("H100");
    let why = waiting(&effects, request);
    assert_eq!(why.len(), 1, "{effects:?}");
    assert!(why[0].infeasible);
    assert_eq!(why[0].fails_in_ms, Some(600));
    assert_eq!(
        why[0].reason,
        "no GPU has accelerator type A100 (the cluster has: H100)"
    );
    let (_, node, effects) = s.join_gpu("A100");
    let (to, _, body) = command(&effects);
    assert_eq!(to, node);
    assert!(matches!(body, WorkerCommand::RunJob { .. }), "{body:?}");
    s.later(Duration::from_millis(1000));
    s.heartbeats();
    let effects = s.handle(Input::Tick);
    assert!(!answered(&effects, request));
}

#[test]
fn a_task_lease_stranded_by_a_drain_fails_at_its_timeout() {
    let mut s = Scene::new();
    let (_, a100, _) = s.join_gpu("A100");
    s.join_gpu("H100");
    let client = s.conn();
    let lease = |timeout| {
        ClientRequest::LeaseTask(LeaseSpec {
            name: "train".into(),
            placement: gpu_of("A100", timeout),
        })
    };
    s.ask(client, lease(None));
    let (request, _) = s.ask(client, lease(Some(800)));
    assert!(s.queue()[0]
        .waiting
        .as_deref()
        .is_some_and(|w| w.starts_with("waiting for resources")));

    let admin = s.conn();
    s.ask(
        admin,
        ClientRequest::DrainNode {
            node: a100,
            grace_ms: 10_000,
            notice: false,
        },
    );
    let queue = s.queue();
    assert_eq!(queue[0].fails_in_ms, Some(800));
    assert!(
        queue[0]
            .waiting
            .as_deref()
            .is_some_and(|w| w.starts_with("infeasible: no GPU has accelerator type A100")),
        "a draining node counts as gone: {queue:?}"
    );

    s.later(Duration::from_millis(800));
    s.heartbeats();
    let effects = s.handle(Input::Tick);
    let e = error_of(reply_to(&effects, request));
    assert_eq!(e.kind, ErrorKind::Infeasible);
    assert!(e.message.contains("A100"), "{}", e.message);
}

#[test]
fn an_actor_stranded_while_it_waits_to_be_created_fails_its_creation_at_the_timeout() {
    let mut s = Scene::new();
    s.head.config.pending_timeout = Duration::from_millis(500);
    let (conn, _, _) = s.join_gpu("A100");
    let client = s.conn();
    let mut whole = spec(false);
    whole.placement = gpu_of("A100", None);
    s.ask(client, ClientRequest::CreateActor(whole.clone()));
    let (request, _) = s.ask(client, ClientRequest::CreateActor(whole));
    s.handle(Input::Closed { conn });
    let client2 = s.conn();
    let (status, effects) = s.ask(client2, ClientRequest::Status);
    let ClientReply::Status(status) = reply_to(&effects, status) else {
        panic!("expected the status");
    };
    assert!(
        status.actors.iter().any(|a| a
            .waiting
            .as_deref()
            .is_some_and(|w| w.starts_with("infeasible: the cluster has no nodes"))),
        "{status:?}"
    );

    s.later(Duration::from_millis(500));
    let effects = s.handle(Input::Tick);
    let e = error_of(reply_to(&effects, request));
    assert_eq!(e.kind, ErrorKind::Infeasible);
    assert!(
        e.message.contains("the cluster has no nodes"),
        "{}",
        e.message
    );
    assert_eq!(s.head.scheduler().queued_len(), 0);
}

#[test]
fn gpu_memory_or_an_accelerator_without_gpus_is_a_bad_request() {
    let mut s = Scene::new();
    s.join_gpu("H100");
    let client = s.conn();
    for (demand, needs) in [
        (
            ResourceDemand {
                accelerator: Some("L4".into()),
                ..ResourceDemand::default()
            },
            "accelerator needs gpus",
        ),
        (
            ResourceDemand {
                gpu_memory: 40 << 30,
                ..ResourceDemand::default()
            },
            "gpu_memory needs gpus",
        ),
    ] {
        let placement = Placement {
            demand,
            ..Placement::default()
        };
        let (request, effects) = s.ask(client, job(placement));
        let e = error_of(reply_to(&effects, request));
        assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
        assert!(e.message.starts_with(needs), "{}", e.message);
        assert!(
            !effects.iter().any(|e| matches!(e, Effect::Command { .. })),
            "nothing runs: {effects:?}"
        );
    }
}

#[test]
fn a_restarting_actor_left_with_no_fitting_node_waits_for_one_however_long_it_takes() {
    let mut s = Scene::new();
    s.head.config.pending_timeout = Duration::from_millis(500);
    let (first, _, _) = s.join_gpu("A100");
    let owner = s.conn();
    let mut whole = spec(false);
    whole.placement = gpu_of("A100", None);
    let (request, effects) = s.ask(owner, ClientRequest::CreateActor(whole));
    let (_, command_id, _) = command(&effects);
    let effects = s.reply(
        command_id,
        ember_core::proto::WorkerReply::ActorReady(super::actor_endpoints()),
    );
    assert!(matches!(
        reply_to(&effects, request),
        ClientReply::ActorCreated(_)
    ));
    let (second, _, _) = s.join_gpu("A100");
    let client = s.conn();
    s.ask(client, job(gpu_of("A100", None)));

    // Its node dies: it restarts, waiting for the A100 the job holds; then that node dies too.
    s.handle(Input::Closed { conn: first });
    s.handle(Input::Closed { conn: second });
    let (status, effects) = s.ask(client, ClientRequest::Status);
    let ClientReply::Status(status) = reply_to(&effects, status) else {
        panic!("expected the status");
    };
    let actor = &status.actors[0];
    assert_eq!(
        actor.waiting.as_deref(),
        Some("infeasible: the cluster has no nodes"),
        "{actor:?}"
    );
    assert_eq!(
        actor.fails_in_ms, None,
        "an actor that exists is not given up"
    );

    s.later(Duration::from_secs(5));
    s.handle(Input::Tick);
    assert_eq!(s.head.actor_count(), 1);
    let (_, node, effects) = s.join_gpu("A100");
    let (to, _, body) = command(&effects);
    assert_eq!(to, node);
    assert!(
        matches!(body, WorkerCommand::CreateActor { incarnation: 2, .. }),
        "{body:?}"
    );
}

/// A worker with one 80 GiB GPU of `accelerator` that runs `train`, straight into `head`
/// (no scene: its checks after every input are linear in the cluster); returns its node.
fn join_bare(head: &mut HeadState, now: Instant, conn: ConnId, accelerator: &str) -> NodeId {
    let hello = WorkerHello {
        name: format!("worker-{}", conn.0),
        resources: NodeResources {
            cpu_millis: 8000,
            gpus: vec![GpuDevice {
                index: 0,
                uuid: format!("GPU-{}", conn.0),
                name: format!("NVIDIA {accelerator}"),
                memory: 80 << 30,
                accelerator: accelerator.into(),
                logical: true,
            }],
            custom: Vec::new(),
            labels: Vec::new(),
        },
        task_types: vec!["train".into()],
        actor_types: Vec::new(),
        address: "10.0.0.1:7100".into(),
        rejoin: None,
        launch: None,
    };
    let effects = head.handle(
        now,
        Input::WorkerJoined {
            conn,
            hello: Box::new(hello),
        },
    );
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Welcome { conn: c, node } if *c == conn => Some(*node),
            _ => None,
        })
        .unwrap_or_else(|| panic!("expected a welcome: {effects:?}"))
}

#[test]
fn a_node_leaving_a_big_cluster_checks_each_group_of_waiting_requests_once() {
    let now = Instant::now();
    let (mut head, _) = HeadState::restore(Config::default(), now, Journaled::default());
    let mut conns = 0;
    let mut next_conn = || {
        conns += 1;
        ConnId(conns)
    };
    // One H100 node and 9,999 A100 nodes, each GPU then taken by a task lease.
    let h100_conn = next_conn();
    let h100 = join_bare(&mut head, now, h100_conn, "H100");
    for _ in 1..10_000 {
        let conn = next_conn();
        join_bare(&mut head, now, conn, "A100");
    }
    let client = next_conn();
    let mut requests = 0;
    let mut lease = |head: &mut HeadState, accelerator: Option<&str>, units: u32| {
        requests += 1;
        head.handle(
            now,
            Input::Request {
                conn: client,
                request: RequestId(requests),
                body: ClientRequest::LeaseTask(LeaseSpec {
                    name: "train".into(),
                    placement: Placement {
                        demand: ResourceDemand {
                            gpus: GpuShare::from_units(units),
                            accelerator: accelerator.map(Into::into),
                            ..ResourceDemand::default()
                        },
                        ..Placement::default()
                    },
                }),
            },
        );
    };
    for _ in 0..10_000 {
        lease(&mut head, None, 100);
    }
    assert_eq!(head.sched.queued_len(), 0, "every GPU is leased");
    // 100,000 requests wait, in four groups: any GPU, an H100, an A100, half an A100.
    let shapes = [
        (None, 100),
        (Some("H100"), 100),
        (Some("A100"), 100),
        (Some("A100"), 50),
    ];
    for i in 0..100_000 {
        let (accelerator, units) = shapes[i % shapes.len()];
        lease(&mut head, accelerator, units);
    }
    assert_eq!(head.sched.queued_len(), 100_000);
    assert_eq!(head.sched.queued_groups(), shapes.len());

    // The H100 node leaves: every group is asked once whether it could hold them, and the two
    // it could (any GPU, an H100) once whether any node left could.
    head.fit_checks = 0;
    head.handle(now, Input::Closed { conn: h100_conn });
    assert!(head.sched.usage(h100).is_none());
    assert_eq!(head.fit_checks, 4 + 2);
    let h100_waiting = head
        .sched
        .queued()
        .filter(|r| r.demand.accelerator.as_deref() == Some("H100"))
        .count();
    assert_eq!(h100_waiting, 25_000);
    assert_eq!(
        head.stranded.len(),
        h100_waiting,
        "exactly the H100 requests"
    );
    assert!(head
        .stranded
        .keys()
        .all(|lease| head.sched.queued_request(*lease).is_some_and(|r| r
            .demand
            .accelerator
            .as_deref()
            == Some("H100"))));
    let first = *head.stranded.keys().next().expect("stranded");
    let why = head.wait_reason(now, first).expect("it waits");
    assert!(
        why.infeasible && why.reason.starts_with("no GPU has accelerator type H100"),
        "{why:?}"
    );

    // An H100 node joins: the one group stranded is asked once, and waits for capacity again.
    head.fit_checks = 0;
    let conn = next_conn();
    join_bare(&mut head, now, conn, "H100");
    assert_eq!(head.fit_checks, 1);
    assert!(head.stranded.is_empty());
    head.check_invariants()
        .expect("the state agrees with itself");
}
