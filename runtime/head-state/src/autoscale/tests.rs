//! The autoscaler's decisions, one rule at a time, with a regression test for each of Ray's
//! autoscaler bugs it must not have (ray#39987, ray#45373, ray#60546), and a peak of work
//! scaled up and back down without a launch-terminate cycle.

use std::time::{Duration, Instant};

use ember_core::ids::NodeId;
use ember_core::proto::GangStrategy;
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand};

use super::{Action, Autoscaler, NodeType, Policy, PolicyError, UtilisationRule, Waiting};

const GIB: u64 = 1 << 30;

fn gpu_type(name: &str, gpus: u32, price: u64) -> NodeType {
    NodeType {
        name: name.into(),
        resources: NodeResources {
            cpu_millis: 32_000,
            gpus: (0..gpus)
                .map(|index| GpuDevice {
                    index,
                    uuid: format!("GPU-{index}"),
                    name: "NVIDIA H100".into(),
                    memory: 80 * GIB,
                    accelerator: "H100".into(),
                    logical: true,
                })
                .collect(),
            custom: Vec::new(),
            labels: Vec::new(),
        },
        min: 0,
        max: 100,
        warm: 0,
        price_micros_per_hour: price,
        spot: false,
        idle_timeout: Duration::from_secs(60),
    }
}

fn cpu_type(name: &str, price: u64) -> NodeType {
    let mut t = gpu_type(name, 0, price);
    t.resources.cpu_millis = 16_000;
    t
}

fn policy(types: Vec<NodeType>) -> Policy {
    Policy {
        types,
        max_nodes: 1000,
        upscaling_speed: 100.0,
        launch_timeout: Duration::from_secs(300),
        utilisation: None,
    }
}

fn gpus(units: u32) -> Waiting {
    Waiting::Request {
        demand: ResourceDemand {
            cpu_millis: 1000,
            gpus: GpuShare::from_units(units),
            ..ResourceDemand::default()
        },
        labels: Vec::new(),
    }
}

fn cpus(n: u64) -> Waiting {
    Waiting::Request {
        demand: ResourceDemand {
            cpu_millis: n * 1000,
            ..ResourceDemand::default()
        },
        labels: Vec::new(),
    }
}

fn launches(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Launch { node_type, .. } => Some(node_type.as_str()),
            _ => None,
        })
        .collect()
}

fn drains(actions: &[Action]) -> Vec<NodeId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Drain { node, .. } => Some(*node),
            _ => None,
        })
        .collect()
}

/// Joins every launch in `actions` as a node (numbered from `next`).
fn join_all(a: &mut Autoscaler, now: Instant, actions: &[Action], next: &mut u64) -> Vec<NodeId> {
    let mut joined = Vec::new();
    for action in actions {
        if let Action::Launch {
            launch, node_type, ..
        } = action
        {
            let node = NodeId(*next);
            *next += 1;
            a.node_joined(now, node, node_type, Some(*launch));
            joined.push(node);
        }
    }
    joined
}

/// ray#39987: Ray summed free GPU fractions across GPUs (0.4 + 0.4 = 0.8) and never launched
/// for a 0.6 actor. Fractions are packed per GPU: two 0.6 requests need two GPUs.
#[test]
fn fractions_are_packed_per_gpu_never_summed_across_gpus() {
    let mut a = Autoscaler::new(policy(vec![gpu_type("one-gpu", 1, 1_000)])).unwrap();
    let now = Instant::now();
    let actions = a.decide(now, &[gpus(60), gpus(60)], None);
    assert_eq!(
        launches(&actions),
        vec!["one-gpu", "one-gpu"],
        "{actions:?}"
    );
    let mut b = Autoscaler::new(policy(vec![gpu_type("two-gpu", 2, 1_000)])).unwrap();
    let actions = b.decide(now, &[gpus(60), gpus(60), gpus(40)], None);
    assert_eq!(
        launches(&actions),
        vec!["two-gpu"],
        "0.6 and 0.4 share a GPU: {actions:?}"
    );
}

/// ray#45373: Ray scaled for a fifth of the queued tasks. Here every waiting request is
/// packed: launches go out as fast as the upscaling speed lets (5 pending from zero nodes),
/// and once they join the rest follow, until exactly what waits is covered.
#[test]
fn launches_cover_all_that_waits() {
    let mut a = Autoscaler::new(policy(vec![gpu_type("h100x8", 8, 1_000)])).unwrap();
    let waiting: Vec<Waiting> = (0..100).map(|_| gpus(100)).collect();
    let now = Instant::now();
    let mut next = 1;
    let first = a.decide(now, &waiting, None);
    assert_eq!(
        launches(&first).len(),
        5,
        "5 pending at most from zero nodes"
    );
    assert!(
        launches(&a.decide(now, &waiting, None)).is_empty(),
        "pending count as coming"
    );
    join_all(&mut a, now, &first, &mut next);
    // Nothing was placed on them yet (say they are still starting): 100 GPUs still wait.
    let second = a.decide(now, &waiting, None);
    assert_eq!(
        launches(&second).len(),
        13,
        "100 GPUs on 8-GPU nodes: 13 nodes in all"
    );
}

/// ray#60546: Ray restarted every node's idle clock whenever anything waited, so idle nodes
/// never went. Here only work landing on a node restarts its clock.
#[test]
fn an_idle_node_goes_after_its_timeout_though_other_work_waits() {
    let mut a = Autoscaler::new(policy(vec![gpu_type("h100", 1, 1_000)])).unwrap();
    let t0 = Instant::now();
    a.node_joined(t0, NodeId(1), "h100", None);
    // Work that no type can hold waits all along (and launches nothing).
    let waiting = [gpus(300)];
    for s in [10, 30, 59] {
        let actions = a.decide(t0 + Duration::from_secs(s), &waiting, None);
        assert!(actions.is_empty(), "{actions:?}");
    }
    let actions = a.decide(t0 + Duration::from_secs(60), &waiting, None);
    assert_eq!(drains(&actions), vec![NodeId(1)]);
    assert!(
        matches!(&actions[0], Action::Drain { reason, .. } if reason.contains("idle for 60 s"))
    );
    assert_eq!(a.unservable(&waiting).len(), 1);
}

#[test]
fn work_landing_restarts_the_idle_clock_and_a_busy_node_never_goes() {
    let mut a = Autoscaler::new(policy(vec![gpu_type("h100", 1, 1_000)])).unwrap();
    let t0 = Instant::now();
    a.node_joined(t0, NodeId(1), "h100", None);
    a.node_leases(t0 + Duration::from_secs(50), NodeId(1), 1);
    assert!(a
        .decide(t0 + Duration::from_secs(500), &[], None)
        .is_empty());
    a.node_leases(t0 + Duration::from_secs(600), NodeId(1), 0);
    assert!(a
        .decide(t0 + Duration::from_secs(659), &[], None)
        .is_empty());
    let actions = a.decide(t0 + Duration::from_secs(660), &[], None);
    assert_eq!(drains(&actions), vec![NodeId(1)]);
    // Asked once.
    assert!(a
        .decide(t0 + Duration::from_secs(700), &[], None)
        .is_empty());
}

#[test]
fn the_cheapest_fitting_type_and_never_a_gpu_node_for_cpu_work() {
    let types = vec![
        gpu_type("h100x8", 8, 30_000),
        gpu_type("h100x1", 1, 4_000),
        cpu_type("cpu", 9_000),
    ];
    let mut a = Autoscaler::new(policy(types)).unwrap();
    let now = Instant::now();
    let actions = a.decide(now, &[gpus(100)], None);
    assert_eq!(launches(&actions), vec!["h100x1"]);
    let actions = a.decide(now, &[cpus(4)], None);
    assert_eq!(
        launches(&actions),
        vec!["cpu"],
        "though a GPU type is cheaper"
    );
    let actions = a.decide(now, &[gpus(200)], None);
    assert_eq!(
        launches(&actions),
        vec!["h100x8"],
        "the only type with 2 GPUs"
    );
}

#[test]
fn gangs_are_packed_by_their_strategy() {
    let mut a = Autoscaler::new(policy(vec![gpu_type("h100x8", 8, 1_000)])).unwrap();
    let bundle = ResourceDemand {
        gpus: GpuShare::ONE,
        ..ResourceDemand::default()
    };
    let spread = Waiting::Gang {
        bundles: vec![bundle.clone(); 3],
        strategy: GangStrategy::StrictSpread,
    };
    assert_eq!(
        launches(&a.decide(Instant::now(), &[spread], None)).len(),
        3
    );
    let mut b = Autoscaler::new(policy(vec![gpu_type("h100x8", 8, 1_000)])).unwrap();
    let pack = Waiting::Gang {
        bundles: vec![bundle; 3],
        strategy: GangStrategy::StrictPack,
    };
    assert_eq!(launches(&b.decide(Instant::now(), &[pack], None)).len(), 1);
}

#[test]
fn min_max_cluster_max_and_upscaling_speed_are_kept() {
    let mut t = gpu_type("h100", 1, 1_000);
    t.min = 2;
    t.max = 4;
    let mut a = Autoscaler::new(policy(vec![t.clone()])).unwrap();
    let now = Instant::now();
    let actions = a.decide(now, &[], None);
    assert_eq!(launches(&actions).len(), 2, "min");
    assert!(actions
        .iter()
        .all(|x| matches!(x, Action::Launch { reason, .. } if reason.contains("at least 2"))));
    let waiting: Vec<Waiting> = (0..10).map(|_| gpus(100)).collect();
    let actions = a.decide(now, &waiting, None);
    assert_eq!(launches(&actions).len(), 2, "max 4 with 2 coming");

    let mut p = policy(vec![gpu_type("h100", 1, 1_000)]);
    p.max_nodes = 3;
    let mut c = Autoscaler::new(p).unwrap();
    assert_eq!(
        launches(&c.decide(now, &waiting, None)).len(),
        3,
        "cluster max"
    );

    let mut p = policy(vec![gpu_type("h100", 1, 1_000)]);
    p.upscaling_speed = 1.0;
    let mut d = Autoscaler::new(p).unwrap();
    assert_eq!(
        launches(&d.decide(now, &waiting, None)).len(),
        5,
        "at least 5 a pass"
    );
}

#[test]
fn a_warm_pool_is_kept_cordoned_refilled_when_taken_and_never_drained() {
    let mut t = gpu_type("h100", 1, 1_000);
    t.warm = 1;
    let mut a = Autoscaler::new(policy(vec![t])).unwrap();
    let t0 = Instant::now();
    let actions = a.decide(t0, &[], None);
    let Some(Action::Launch { launch, reason, .. }) = actions.first() else {
        panic!("a launch for the pool: {actions:?}");
    };
    assert_eq!(reason, "node type h100 keeps 1 nodes warm");
    assert!(
        a.node_joined(t0, NodeId(1), "h100", Some(*launch)),
        "joins warm"
    );
    assert_eq!(a.warm_nodes().collect::<Vec<_>>(), vec![NodeId(1)]);
    // Kept warm, never drained for idleness.
    assert!(a
        .decide(t0 + Duration::from_secs(3600), &[], None)
        .is_empty());
    // Work takes it: the pool is refilled by a launch (no idle node to take the place).
    assert!(a.take_warm(NodeId(1)));
    a.node_leases(t0 + Duration::from_secs(3600), NodeId(1), 1);
    let actions = a.decide(t0 + Duration::from_secs(3600), &[], None);
    let Some(Action::Launch { launch, .. }) = actions.first() else {
        panic!("a launch to refill the pool: {actions:?}");
    };
    assert!(a.node_joined(
        t0 + Duration::from_secs(3600),
        NodeId(2),
        "h100",
        Some(*launch)
    ));
    // The first node's work ends; idle past its timeout it goes, the warm one stays.
    a.node_leases(t0 + Duration::from_secs(3600), NodeId(1), 0);
    let actions = a.decide(t0 + Duration::from_secs(7200), &[], None);
    assert_eq!(drains(&actions), vec![NodeId(1)]);
    assert_eq!(a.warm_nodes().collect::<Vec<_>>(), vec![NodeId(2)]);
}

#[test]
fn an_idle_node_refills_the_warm_pool_before_any_launch() {
    let mut t = gpu_type("h100", 2, 1_000);
    t.warm = 1;
    let mut a = Autoscaler::new(policy(vec![t])).unwrap();
    let t0 = Instant::now();
    // A node launched for work (not the pool), idle now.
    a.node_joined(t0, NodeId(7), "h100", None);
    let actions = a.decide(t0, &[], None);
    assert!(
        matches!(
            &actions[..],
            [Action::KeepWarm {
                node: NodeId(7),
                ..
            }]
        ),
        "{actions:?}"
    );
    assert!(launches(&actions).is_empty());
}

#[test]
fn a_launch_that_never_joins_is_given_up_and_launched_again_after_a_back_off() {
    let mut a = Autoscaler::new(policy(vec![gpu_type("h100", 1, 1_000)])).unwrap();
    let t0 = Instant::now();
    let waiting = [gpus(100)];
    assert_eq!(launches(&a.decide(t0, &waiting, None)).len(), 1);
    assert!(a
        .decide(t0 + Duration::from_secs(299), &waiting, None)
        .is_empty());
    let actions = a.decide(t0 + Duration::from_secs(300), &waiting, None);
    assert!(
        matches!(actions[..], [Action::LaunchTimedOut { launch: 1, .. }]),
        "given up, and not launched again in the same pass: {actions:?}"
    );
    let failed = &a.failures()["h100"];
    assert_eq!(failed.count, 1);
    assert_eq!(failed.reason, "did not join within 300 s");
    let actions = a.decide(t0 + Duration::from_secs(301), &waiting, None);
    assert_eq!(launches(&actions), vec!["h100"], "launched again");
}

#[test]
fn launches_the_provider_refuses_back_off_doubling_and_a_join_clears_them() {
    let mut a = Autoscaler::new(policy(vec![gpu_type("h100", 4, 1_000)])).unwrap();
    let t0 = Instant::now();
    let waiting = [gpus(100)];
    let mut now = t0;
    let mut launch = 0;
    for (failure, backoff) in [(1u32, 1u64), (2, 2), (3, 4), (4, 8)] {
        let actions = a.decide(now, &waiting, None);
        let Some(Action::Launch { launch: l, .. }) = actions.first() else {
            panic!("failure {failure}: expected a launch, got {actions:?}");
        };
        launch = *l;
        a.launch_failed(now, launch, "quota exceeded");
        assert_eq!(a.failures()["h100"].count, failure);
        assert_eq!(a.failures()["h100"].reason, "quota exceeded");
        // Not before the back-off, which doubles.
        let just_before = now + Duration::from_secs(backoff) - Duration::from_millis(1);
        assert!(launches(&a.decide(just_before, &waiting, None)).is_empty());
        now += Duration::from_secs(backoff);
    }
    // The fifth launch joins: its type is healthy again.
    let actions = a.decide(now, &waiting, None);
    assert_eq!(launches(&actions).len(), 1);
    let Some(Action::Launch { launch: l, .. }) = actions.first() else {
        unreachable!()
    };
    assert_ne!(*l, launch);
    a.node_joined(now, NodeId(1), "h100", Some(*l));
    assert!(a.failures().is_empty());
}

#[test]
fn busy_gpus_with_work_waiting_scale_up_once_per_cooldown_with_hysteresis() {
    let mut p = policy(vec![gpu_type("h100", 1, 1_000)]);
    p.utilisation = Some(UtilisationRule {
        percent: 80,
        margin: 10,
        min_waiting: 5,
        samples: 3,
        cooldown: Duration::from_secs(60),
    });
    let mut a = Autoscaler::new(p).unwrap();
    let t0 = Instant::now();
    for n in 1..=6 {
        a.node_joined(t0, NodeId(n), "h100", None);
        a.node_leases(t0, NodeId(n), 1);
    }
    let waiting: Vec<Waiting> = (0..6).map(|_| gpus(100)).collect();
    let at = |s| t0 + Duration::from_secs(s);
    // The packing launches for what waits; those launches are then coming capacity.
    assert_eq!(launches(&a.decide(at(1), &waiting, Some(90.0))).len(), 6);
    assert!(launches(&a.decide(at(2), &waiting, Some(90.0))).is_empty());
    // The third busy pass in a row adds one node for busy GPUs, with its reason.
    let actions = a.decide(at(3), &waiting, Some(90.0));
    assert_eq!(launches(&actions).len(), 1);
    assert!(
        matches!(&actions[0], Action::Launch { reason, .. } if reason.starts_with("GPUs 90% busy"))
    );
    // Not again within the cooldown, however busy.
    for s in 4..=62 {
        assert!(
            launches(&a.decide(at(s), &waiting, Some(90.0))).is_empty(),
            "{s}"
        );
    }
    // Past it, a pass just under the threshold launches nothing but keeps the streak...
    assert!(launches(&a.decide(at(70), &waiting, Some(75.0))).is_empty());
    assert_eq!(
        launches(&a.decide(at(71), &waiting, Some(90.0))).len(),
        1,
        "streak kept"
    );
    // ...while one far under ends it: three busy passes are needed again.
    assert!(launches(&a.decide(at(140), &waiting, Some(60.0))).is_empty());
    assert!(launches(&a.decide(at(141), &waiting, Some(90.0))).is_empty());
    assert!(launches(&a.decide(at(142), &waiting, Some(90.0))).is_empty());
    assert_eq!(launches(&a.decide(at(143), &waiting, Some(90.0))).len(), 1);
    // Too few waiting: no streak at all.
    let mut b = Autoscaler::new(a.policy().clone()).unwrap();
    for n in 1..=6 {
        b.node_joined(t0, NodeId(n), "h100", None);
        b.node_leases(t0, NodeId(n), 1);
    }
    let few: Vec<Waiting> = (0..4).map(|_| gpus(100)).collect();
    let first = b.decide(at(1), &few, Some(99.0));
    assert_eq!(launches(&first).len(), 4, "packing only");
    for s in 2..=10 {
        assert!(launches(&b.decide(at(s), &few, Some(99.0))).is_empty());
    }
}

#[test]
fn a_peak_scales_up_and_back_down_without_a_launch_terminate_cycle() {
    let mut t = gpu_type("h100x2", 2, 1_000);
    t.idle_timeout = Duration::from_secs(30);
    let mut a = Autoscaler::new(policy(vec![t])).unwrap();
    let t0 = Instant::now();
    let mut next = 1;
    let mut nodes: Vec<NodeId> = Vec::new();
    let mut launched = 0;
    let mut drained = Vec::new();
    // 10 s of peak: 8 one-GPU requests wait until nodes join (2 s later) and take them.
    let mut pending: Vec<(Instant, Vec<Action>)> = Vec::new();
    for s in 0..120u64 {
        let now = t0 + Duration::from_secs(s);
        // Launches join 2 s after they were asked.
        let (due, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(at, _)| *at <= now);
        pending = later;
        for (_, actions) in due {
            nodes.extend(join_all(&mut a, now, &actions, &mut next));
        }
        let peak = s < 10;
        let placed = if peak { (nodes.len() * 2).min(8) } else { 0 };
        for (i, n) in nodes.iter().enumerate() {
            a.node_leases(now, *n, usize::from(peak && i * 2 < placed) * 2);
        }
        let waiting: Vec<Waiting> = if peak {
            (placed..8).map(|_| gpus(100)).collect()
        } else {
            Vec::new()
        };
        let actions = a.decide(now, &waiting, None);
        let l = launches(&actions).len();
        let d = drains(&actions);
        assert!(
            l == 0 || d.is_empty(),
            "launched and drained in one pass at {s} s: {actions:?}"
        );
        launched += l;
        for n in &d {
            a.node_left(*n);
            nodes.retain(|x| x != n);
        }
        drained.extend(d);
        if l > 0 {
            pending.push((now + Duration::from_secs(2), actions));
        }
    }
    assert_eq!(launched, 4, "8 GPUs of work on 2-GPU nodes, launched once");
    assert_eq!(drained.len(), 4, "and all given back after the peak");
    assert!(nodes.is_empty());
}

#[test]
fn a_policy_it_cannot_keep_is_refused() {
    let mut t = gpu_type("a", 1, 1);
    t.min = 3;
    t.max = 2;
    assert!(matches!(
        Autoscaler::new(policy(vec![t.clone()])),
        Err(PolicyError::MinAboveMax { .. })
    ));
    let b = gpu_type("b", 1, 1);
    assert!(matches!(
        Autoscaler::new(policy(vec![b.clone(), b])),
        Err(PolicyError::DuplicateType(_))
    ));
    let mut c = gpu_type("c", 1, 1);
    c.min = 5;
    let mut p = policy(vec![c]);
    p.max_nodes = 4;
    let e = Autoscaler::new(p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the node types' minimums add up to 5, above the cluster's max of 4"
    );
}
