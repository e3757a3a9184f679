//! The autoscaler driven by the head: work no node can take waits (rather than failing) for
//! a node the autoscaler launches; the worker that joins answering the launch takes it; once
//! idle past its type's timeout the node is drained and released.

use std::time::Duration;

use ember_core::proto::{ClientRequest, LaunchTicket, LeaseSpec, WorkerReply};

use super::{command, lease_endpoints, one_h100, placement, Scene};
use crate::autoscale::{Autoscaler, NodeType, Policy};
use crate::io::{Effect, Input};
use crate::state::Config;

fn autoscaled() -> Scene {
    autoscaled_with_warm(0)
}

fn autoscaled_with_warm(warm: u32) -> Scene {
    let h100 = NodeType {
        name: "h100".into(),
        // The workers the scene joins.
        resources: one_h100(),
        min: 0,
        max: 4,
        warm,
        price_micros_per_hour: 2_000_000,
        spot: false,
        idle_timeout: Duration::from_secs(30),
    };
    let autoscaler = Autoscaler::new(Policy {
        types: vec![h100],
        max_nodes: 10,
        upscaling_speed: 1.0,
        launch_timeout: Duration::from_secs(120),
        utilisation: None,
    })
    .expect("a policy it can keep");
    Scene::with_config(Config {
        rejoin_window: Duration::from_secs(2),
        autoscaler: Some(autoscaler),
        autoscale_interval: Duration::from_secs(1),
        ..Config::default()
    })
}

/// The launch among `effects`, if any.
fn launch_in(effects: &[Effect]) -> Option<u64> {
    effects.iter().find_map(|e| match e {
        Effect::LaunchNode { launch, .. } => Some(*launch),
        _ => None,
    })
}

#[test]
fn waiting_work_launches_a_node_which_takes_it_and_goes_once_idle() {
    let mut s = autoscaled();
    let client = s.conn();
    // No node at all: the lease waits for one the autoscaler can launch.
    let (request, effects) = s.ask(
        client,
        ClientRequest::LeaseTask(LeaseSpec {
            name: "train".into(),
            placement: placement(100),
        }),
    );
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Reply { request: r, .. } if *r == request)),
        "it waits rather than failing: {effects:?}"
    );
    s.later(Duration::from_secs(1));
    let effects = s.handle(Input::Tick);
    let launch = effects
        .iter()
        .find_map(|e| match e {
            Effect::LaunchNode { launch, node_type } if node_type == "h100" => Some(*launch),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a launch: {effects:?}"));
    s.handle(Input::Launched {
        launch,
        result: Ok("i-0abc".into()),
    });
    let st = s.status();
    assert_eq!(
        st.queue[0].waiting.as_deref(),
        Some("waiting for resources: a node of type h100 is launching for it"),
        "{st:?}"
    );
    let a = st.autoscaler.expect("the autoscaler's status");
    assert_eq!(a.launching.len(), 1);
    assert!(
        a.decisions[0].decision.starts_with("launch h100"),
        "{:?}",
        a.decisions
    );
    // A second pass launches nothing more: the launch is coming capacity.
    s.later(Duration::from_secs(1));
    let effects = s.handle(Input::Tick);
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::LaunchNode { .. })));

    // The launched worker joins and takes the lease.
    let (_, node, effects) = s.join_with(
        None,
        Some(LaunchTicket {
            launch,
            node_type: "h100".into(),
        }),
    );
    let (to, open, _) = command(&effects);
    assert_eq!(to, node);
    s.reply(open, WorkerReply::LeaseOpened(lease_endpoints()));
    assert!(s.status().autoscaler.unwrap().launching.is_empty());
    // It runs a while, then is given back: the node is idle from then.
    s.later(Duration::from_secs(100));
    s.handle(Input::Heard { node, after: s.now });
    let effects = s.handle(Input::Tick);
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::CloseNode { .. })),
        "busy: kept"
    );
    let effects = s.handle(Input::LeaseReturned {
        request,
        lost: false,
    });
    let (_, close, _) = command(&effects);
    s.reply(close, WorkerReply::LeaseClosed);
    s.later(Duration::from_secs(29));
    s.handle(Input::Heard { node, after: s.now });
    let effects = s.handle(Input::Tick);
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::CloseNode { .. })));
    s.later(Duration::from_secs(2));
    s.handle(Input::Heard { node, after: s.now });
    let effects = s.handle(Input::Tick);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::CloseNode { node: n, .. } if *n == node)),
        "drained: {effects:?}"
    );
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::StopNode { launch: l, instance } if *l == launch && instance == "i-0abc"
        )),
        "its instance stopped: {effects:?}"
    );
    assert_eq!(s.head.node_count(), 0);
}

#[test]
fn work_left_without_a_node_that_fits_waits_for_a_launch_instead_of_failing() {
    let mut s = autoscaled();
    let (conn, _node) = s.join();
    let client = s.conn();
    s.held_lease(client, 100);
    // A second lease waits for the GPU; then the only node dies.
    let (waiting, _) = s.ask(
        client,
        ClientRequest::LeaseTask(LeaseSpec {
            name: "train".into(),
            placement: placement(100),
        }),
    );
    s.handle(Input::Closed { conn });
    let st = s.status();
    let queued = &st.queue[0];
    assert_eq!(
        queued.fails_in_ms, None,
        "not stranded: a node type holds it"
    );
    assert!(
        queued
            .waiting
            .as_deref()
            .is_some_and(|w| w.contains("launches a node of type h100")),
        "{queued:?}"
    );
    // Far past the pending timeout it still waits (for the launch the next pass asks for).
    s.later(Duration::from_secs(600));
    let effects = s.handle(Input::Tick);
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Reply { request, .. } if *request == waiting)),
        "{effects:?}"
    );
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::LaunchNode { node_type, .. } if node_type == "h100")));
}

#[test]
fn a_launch_the_provider_refuses_is_reported_and_tried_again_after_a_back_off() {
    let mut s = autoscaled();
    let client = s.conn();
    s.ask(
        client,
        ClientRequest::LeaseTask(LeaseSpec {
            name: "train".into(),
            placement: placement(100),
        }),
    );
    s.later(Duration::from_secs(1));
    let first = launch_in(&s.handle(Input::Tick)).expect("a launch");
    s.handle(Input::Launched {
        launch: first,
        result: Err("InsufficientInstanceCapacity".into()),
    });
    let st = s.status();
    let a = st.autoscaler.as_ref().unwrap();
    assert!(a.launching.is_empty(), "no longer coming: {a:?}");
    assert!(
        a.decisions.last().unwrap().decision
            == format!(
                "launch {first} of h100 failed: InsufficientInstanceCapacity (next try in 1 s)"
            ),
        "{:?}",
        a.decisions
    );
    // The next pass is within the back-off only if it comes early; one second on it launches.
    s.later(Duration::from_secs(1));
    let second = launch_in(&s.handle(Input::Tick)).expect("launched again");
    assert_ne!(second, first);
}

#[test]
fn a_launch_given_up_before_the_provider_answered_is_stopped_once_it_does() {
    let mut s = autoscaled();
    let client = s.conn();
    s.ask(
        client,
        ClientRequest::LeaseTask(LeaseSpec {
            name: "train".into(),
            placement: placement(100),
        }),
    );
    s.later(Duration::from_secs(1));
    let effects = s.handle(Input::Tick);
    let launch = launch_in(&effects).expect("a launch");
    // The launch timeout (120 s) passes with the provider still busy starting it.
    for _ in 0..120 {
        s.later(Duration::from_secs(1));
        let effects = s.handle(Input::Tick);
        assert!(!effects.iter().any(|e| matches!(e, Effect::StopNode { .. })));
    }
    let effects = s.handle(Input::Launched {
        launch,
        result: Ok("slurm-77".into()),
    });
    assert!(
        effects.iter().any(
            |e| matches!(e, Effect::StopNode { launch: l, instance } if *l == launch && instance == "slurm-77")
        ),
        "stopped as soon as it is named: {effects:?}"
    );
}

#[test]
fn work_that_waits_brings_a_pass_at_once_and_an_idle_node_goes_at_its_timeout_not_a_pass_later() {
    let mut s = autoscaled();
    let client = s.conn();
    let asked = s.now;
    let (request, _) = s.ask(
        client,
        ClientRequest::LeaseTask(LeaseSpec {
            name: "train".into(),
            placement: placement(100),
        }),
    );
    // Event-driven: the pass is due now, not at the next periodic one.
    assert_eq!(s.head.poll_timeout(), Some(asked));
    let effects = s.handle(Input::Tick);
    let launch =
        launch_in(&effects).unwrap_or_else(|| panic!("launched with no time passing: {effects:?}"));
    s.handle(Input::Launched {
        launch,
        result: Ok("i-1".into()),
    });
    let (_, node, effects) = s.join_with(
        None,
        Some(LaunchTicket {
            launch,
            node_type: "h100".into(),
        }),
    );
    let (_, open, _) = command(&effects);
    s.reply(open, WorkerReply::LeaseOpened(lease_endpoints()));
    let effects = s.handle(Input::LeaseReturned {
        request,
        lost: false,
    });
    let (_, close, _) = command(&effects);
    s.reply(close, WorkerReply::LeaseClosed);
    let idle_from = s.now;
    // The idle timeout (30 s) is a deadline of its own: a pass falls due exactly then.
    let mut drained_at = None;
    for _ in 0..40 {
        let next = s.head.poll_timeout().expect("a pass is armed");
        s.now = next;
        s.handle(Input::Heard { node, after: s.now });
        let effects = s.handle(Input::Tick);
        if effects
            .iter()
            .any(|e| matches!(e, Effect::CloseNode { node: n, .. } if *n == node))
        {
            drained_at = Some(s.now);
            break;
        }
    }
    assert_eq!(drained_at, Some(idle_from + Duration::from_secs(30)));
}

#[test]
fn the_first_work_of_a_head_life_journals_nothing_so_its_pass_waits_for_no_commit() {
    let mut s = autoscaled();
    let client = s.conn();
    s.ask(
        client,
        ClientRequest::LeaseTask(LeaseSpec {
            name: "train".into(),
            placement: placement(100),
        }),
    );
    // The shell commits a batch's journal changes before it takes its next input, the pass
    // among them: the lease's id was reserved when the head life began.
    assert!(
        !s.batch.iter().any(|e| matches!(e, Effect::Journal(_))),
        "the pass would wait for a commit: {:?}",
        s.batch
    );
    assert_eq!(s.head.poll_timeout(), Some(s.now));
    let effects = s.handle(Input::Tick);
    assert!(launch_in(&effects).is_some(), "{effects:?}");
}

/// An autoscaled scene with one `h100` node joined from launch 1 (instance `i-1`), idle.
fn with_one_launched_node(s: &mut Scene) -> ember_core::ids::NodeId {
    let client = s.conn();
    let (request, _) = s.ask(
        client,
        ClientRequest::LeaseTask(LeaseSpec {
            name: "train".into(),
            placement: placement(100),
        }),
    );
    let effects = s.handle(Input::Tick);
    let launch = launch_in(&effects).expect("a launch");
    s.handle(Input::Launched {
        launch,
        result: Ok(format!("i-{launch}")),
    });
    let (_, node, effects) = s.join_with(
        None,
        Some(LaunchTicket {
            launch,
            node_type: "h100".into(),
        }),
    );
    let (_, open, _) = command(&effects);
    s.reply(open, WorkerReply::LeaseOpened(lease_endpoints()));
    let effects = s.handle(Input::LeaseReturned {
        request,
        lost: false,
    });
    let (_, close, _) = command(&effects);
    s.reply(close, WorkerReply::LeaseClosed);
    node
}

#[test]
fn a_spot_notice_launches_the_replacement_at_once_and_the_node_is_stopped_once_gone() {
    let mut s = autoscaled();
    let node = with_one_launched_node(&mut s);
    let st = s.status().autoscaler.unwrap();
    assert_eq!(st.nodes.len(), 1);
    assert_eq!(
        (st.nodes[0].state.as_str(), st.nodes[0].instance.as_deref()),
        ("idle", Some("i-1"))
    );
    assert_eq!((st.types[0].nodes, st.types[0].launching), (1, 0));
    let client = s.conn();
    let (_, effects) = s.ask(
        client,
        ClientRequest::DrainNode {
            node,
            grace_ms: 30_000,
            notice: true,
        },
    );
    let replacement = effects
        .iter()
        .find_map(|e| match e {
            Effect::LaunchNode { launch, node_type } if node_type == "h100" => Some(*launch),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a replacement launched with the notice: {effects:?}"));
    let st = s.status().autoscaler.unwrap();
    assert_eq!(st.launching.len(), 1);
    assert_eq!(st.launching[0].launch, replacement);
    assert_eq!(st.launching[0].state, "requested");
    assert_eq!(
        st.launching[0].reason,
        format!("replacing {node} (notice: gone within 30 s)")
    );
    // It had nothing running, so it left at once: its instance is stopped, with why.
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::StopNode { instance, .. } if instance == "i-1")),
        "{effects:?}"
    );
    assert!(st.nodes.is_empty());
    assert_eq!(st.stopped.len(), 1);
    assert_eq!(st.stopped[0].node, Some(node));
    assert_eq!(st.stopped[0].why, "notice: gone within 30 s");
    // A second notice for it launches nothing more.
    let (_, effects) = s.ask(
        client,
        ClientRequest::DrainNode {
            node,
            grace_ms: 30_000,
            notice: true,
        },
    );
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::LaunchNode { .. })));
}

#[test]
fn a_launched_node_that_is_lost_has_its_instance_stopped() {
    let mut s = autoscaled();
    let node = with_one_launched_node(&mut s);
    // Silent past the heartbeat timeout: declared dead.
    for _ in 0..30 {
        s.later(Duration::from_secs(1));
        let effects = s.handle(Input::Tick);
        if effects.iter().any(|e| matches!(e, Effect::StopNode { .. })) {
            let st = s.status().autoscaler.unwrap();
            assert_eq!(st.stopped[0].node, Some(node));
            assert_eq!(st.stopped[0].instance.as_deref(), Some("i-1"));
            return;
        }
    }
    panic!("the lost node's instance was never stopped");
}

#[test]
fn a_warm_node_is_cordoned_until_work_waits_then_takes_it_at_once_and_the_pool_refills() {
    let mut s = autoscaled_with_warm(1);
    s.later(Duration::from_secs(1));
    let effects = s.handle(Input::Tick);
    let launch =
        launch_in(&effects).unwrap_or_else(|| panic!("a launch for the warm pool: {effects:?}"));
    s.handle(Input::Launched {
        launch,
        result: Ok("i-warm".into()),
    });
    let (_, node, _) = s.join_with(
        None,
        Some(LaunchTicket {
            launch,
            node_type: "h100".into(),
        }),
    );
    let st = s.status();
    assert_eq!(st.autoscaler.as_ref().unwrap().nodes[0].state, "warm");
    assert!(
        !st.nodes[0].usage.schedulable,
        "cordoned: {:?}",
        st.nodes[0]
    );
    // Work arrives that only the warm node can take: it lands there in the same step.
    let client = s.conn();
    let (_, effects) = s.ask(
        client,
        ClientRequest::LeaseTask(LeaseSpec {
            name: "train".into(),
            placement: placement(100),
        }),
    );
    let (to, _, _) = command(&effects);
    assert_eq!(to, node, "placed on the warm node at once");
    let st = s.status();
    let a = st.autoscaler.as_ref().unwrap();
    assert_eq!(a.nodes[0].state, "busy");
    assert!(a.decisions.iter().any(|d| d
        .decision
        .starts_with(&format!("warm {node} takes waiting work"))));
    // The next pass refills the pool.
    s.later(Duration::from_secs(1));
    let effects = s.handle(Input::Tick);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::LaunchNode { node_type, .. } if node_type == "h100")),
        "{effects:?}"
    );
}

#[test]
fn a_gang_that_launched_nodes_would_hold_waits_for_them_and_is_placed_when_they_join() {
    use ember_core::proto::{ClientReply, GangSpec, GangStrategy};
    use ember_core::resources::{GpuShare, ResourceDemand};

    let mut s = autoscaled();
    let client = s.conn();
    let bundle = ResourceDemand {
        cpu_millis: 1000,
        gpus: GpuShare::ONE,
        ..ResourceDemand::default()
    };
    let (request, effects) = s.ask(
        client,
        ClientRequest::CreateGang(GangSpec {
            bundles: vec![bundle; 2],
            strategy: GangStrategy::StrictSpread,
            priority: 0,
            pending_timeout_ms: None,
        }),
    );
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Reply { request: r, .. } if *r == request)),
        "no node yet, but two launched h100 nodes would hold it: it waits: {effects:?}"
    );
    let effects = s.handle(Input::Tick);
    let launches: Vec<u64> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::LaunchNode { launch, .. } => Some(*launch),
            _ => None,
        })
        .collect();
    assert_eq!(launches.len(), 2, "one node per bundle: {effects:?}");
    let mut placed = Vec::new();
    for launch in launches {
        let (_, _, effects) = s.join_with(
            None,
            Some(LaunchTicket {
                launch,
                node_type: "h100".into(),
            }),
        );
        placed.extend(effects);
    }
    assert!(
        placed.iter().any(|e| matches!(
            e,
            Effect::Reply { request: r, reply: ClientReply::GangCreated { nodes, .. }, .. }
                if *r == request && nodes.len() == 2
        )),
        "{placed:?}"
    );
}

#[test]
fn work_for_a_task_no_worker_has_launches_one_node_then_waits_stranded_and_fails() {
    let mut s = autoscaled();
    let client = s.conn();
    // Before any worker joined, a type that lists no labels is taken to carry every task.
    let (request, _) = s.ask(
        client,
        ClientRequest::LeaseTask(LeaseSpec {
            name: "nowhere".into(),
            placement: placement(100),
        }),
    );
    s.later(Duration::from_secs(1));
    let launch = launch_in(&s.handle(Input::Tick)).expect("a launch for the waiting lease");
    s.handle(Input::Launched {
        launch,
        result: Ok("i-0abc".into()),
    });
    // Its worker carries `train`, not `nowhere`: the type now carries what its worker does,
    // so the lease is stranded, with its deadline and what it lacks, and nothing more launches.
    s.join_with(
        None,
        Some(LaunchTicket {
            launch,
            node_type: "h100".into(),
        }),
    );
    let st = s.status();
    let queued = &st.queue[0];
    assert!(queued.fails_in_ms.is_some(), "stranded: {queued:?}");
    assert!(
        queued
            .waiting
            .as_deref()
            .is_some_and(|w| w.contains("no worker can run task `nowhere`")),
        "{queued:?}"
    );
    let a = st.autoscaler.expect("the autoscaler's status");
    assert!(
        a.decisions
            .iter()
            .any(|d| d.decision.contains("carry what node-")),
        "{:?}",
        a.decisions
    );
    for _ in 0..5 {
        s.later(Duration::from_secs(1));
        let effects = s.handle(Input::Tick);
        assert_eq!(launch_in(&effects), None, "no launch for it again");
    }
    // At its deadline it fails, naming the task no node carries.
    s.later(Config::default().pending_timeout);
    let effects = s.handle(Input::Tick);
    let reply = effects
        .iter()
        .find_map(|e| match e {
            Effect::Reply { request: r, reply } if *r == request => Some(format!("{reply:?}")),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the lease fails at its deadline: {effects:?}"));
    assert!(reply.contains("task `nowhere`"), "{reply}");
}
