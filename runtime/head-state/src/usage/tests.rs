//! The ledger on its own: what a record amounts to, how a node's life splits, windows,
//! prices, what it sums once past its limits; and a property test of random joins, grants,
//! releases, warm-pool moves and leaves, checked against a plain model after every step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ember_core::ids::{JobId, LeaseId, NodeId};
use ember_core::proto::EARLIER;
use ember_core::resources::{Allocation, GpuDevice, GpuGrant, GpuShare, NodeResources};
use proptest::prelude::*;

use super::record::cost_femtos;
use super::*;
use crate::autoscale::NodeType;

const GIB: u64 = 1 << 30;

/// A ledger begun at `t0`.
fn ledger(t0: Instant, limits: LedgerLimits) -> Ledger {
    let mut ledger = Ledger::new(limits);
    ledger.begin(t0);
    ledger
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A node with `gpus` logical GPUs of `model` and `cpus` CPUs.
fn resources(gpus: u32, model: &str, cpus: u64) -> NodeResources {
    NodeResources {
        cpu_millis: cpus * 1000,
        gpus: (0..gpus)
            .map(|i| GpuDevice {
                index: i,
                uuid: format!("logical-{i}"),
                name: model.into(),
                memory: 80 * GIB,
                accelerator: model.into(),
                logical: true,
            })
            .collect(),
        custom: Vec::new(),
        labels: Vec::new(),
    }
}

/// A launched node type `name` with these resources at `price` per hour.
fn launched(
    name: &str,
    resources: &NodeResources,
    price_micros_per_hour: u64,
    spot: bool,
) -> NodeClass {
    NodeClass::launched(
        resources,
        &NodeType {
            name: name.into(),
            resources: resources.clone(),
            min: 0,
            max: 4,
            warm: 0,
            price_micros_per_hour,
            spot,
            idle_timeout: secs(60),
        },
    )
}

/// `units` hundredths of each of the GPUs `indices`, `memory` bytes on each, `cpus` milli-CPUs.
fn allocation(indices: &[u32], units: u32, memory: u64, cpu_millis: u64) -> Allocation {
    Allocation {
        cpu_millis,
        gpus: indices
            .iter()
            .map(|&index| GpuGrant {
                index,
                share: GpuShare::from_units(units),
                memory,
            })
            .collect(),
        custom: Vec::new(),
    }
}

fn job(id: u64) -> UsageSubject {
    UsageSubject::Job {
        job: JobId(id),
        command: "python train.py".into(),
    }
}

fn open(ledger: &mut Ledger, now: Instant, lease: u64, node: u64, job_key: &str, a: &Allocation) {
    let subject = job(lease);
    ledger
        .open(
            now,
            LeaseId(lease),
            NodeId(node),
            Opening {
                subject: &subject,
                job: job_key,
                allocation: a,
            },
        )
        .expect("the record opens");
}

#[test]
fn a_record_amounts_to_its_holding_times_its_seconds_and_pays_its_share() {
    let t0 = Instant::now();
    let mut ledger = ledger(t0, LedgerLimits::default());
    let h100x2 = resources(2, "H100", 16);
    // 2.0 per hour for the node: 2,000,000 micros.
    let class = launched("h100x2", &h100x2, 2_000_000, true);
    ledger.node_joined(t0, NodeId(1), class).expect("joins");
    // Half of one GPU with 8 GiB, and 2 CPUs, for 10 s from t0 + 5 s.
    let a = allocation(&[1], 50, 8 * GIB, 2000);
    open(&mut ledger, t0 + secs(5), 7, 1, "job-7", &a);
    assert_eq!(ledger.mode(NodeId(1)), Some(NodeMode::Allocated));
    assert!(ledger.close(t0 + secs(15), LeaseId(7)));
    assert!(!ledger.close(t0 + secs(16), LeaseId(7)), "closed once");
    assert_eq!(ledger.mode(NodeId(1)), Some(NodeMode::Idle));

    let report = ledger.report(t0 + secs(20), None);
    assert_eq!(report.window_ms, 20_000);
    let r = &report.records[0];
    assert_eq!(
        (r.kind.as_str(), r.id.as_str(), r.job.as_str()),
        ("job", "job-7", "job-7")
    );
    assert_eq!(
        (r.node.as_str(), r.node_type.as_str()),
        ("node-1", "h100x2")
    );
    assert_eq!((r.gpu_model.as_deref(), r.spot), (Some("H100"), true));
    assert_eq!((r.started_ms_ago, r.ended_ms_ago), (15_000, Some(5_000)));
    assert_eq!((r.gpus, r.gpu_memory_gib, r.cpus), (0.5, 8.0, 2.0));
    assert_eq!(r.price_share, 0.25, "half a GPU of two");
    assert_eq!(r.usage.gpu_share_seconds, 5.0);
    assert_eq!(r.usage.gpu_memory_gib_seconds, 80.0);
    assert_eq!(r.usage.cpu_seconds, 20.0);
    // A quarter of 2.0 an hour for 10 s.
    assert!(
        (r.usage.cost - 0.25 * 2.0 * 10.0 / 3600.0).abs() < 1e-12,
        "{}",
        r.usage.cost
    );

    let n = &report.nodes[0];
    assert_eq!(n.split.life_ns, 20_000_000_000);
    assert_eq!(n.split.allocated_ns, 10_000_000_000);
    assert_eq!(n.split.idle_ns, 10_000_000_000);
    assert_eq!(n.split.warm_ns, 0);
    assert!((n.split.allocated_cost - 2.0 * 10.0 / 3600.0).abs() < 1e-12);
    assert!(report.partial.is_empty(), "{:?}", report.partial);
    ledger.check().expect("the ledger agrees with itself");
}

#[test]
fn a_node_splits_its_life_into_allocated_idle_and_warm_exactly() {
    let t0 = Instant::now();
    let mut ledger = ledger(t0, LedgerLimits::default());
    let r = resources(1, "L4", 4);
    ledger
        .node_joined(t0, NodeId(1), NodeClass::unlaunched(&r))
        .expect("joins");
    let a = allocation(&[0], 100, 0, 0);
    // Idle 1 s, allocated 2 s (two overlapping records), idle 3 s, warm 4 s, allocated
    // 5 s while warm (taken from the pool), warm 6 s, then it leaves; asked 7 s later.
    open(&mut ledger, t0 + secs(1), 1, 1, "a", &a);
    open(&mut ledger, t0 + secs(2), 2, 1, "a", &a);
    ledger.close(t0 + secs(2), LeaseId(1));
    ledger.close(t0 + secs(3), LeaseId(2));
    ledger
        .node_warm(t0 + secs(6), NodeId(1), true)
        .expect("live");
    open(&mut ledger, t0 + secs(10), 3, 1, "a", &a);
    assert_eq!(ledger.mode(NodeId(1)), Some(NodeMode::Allocated));
    ledger.close(t0 + secs(15), LeaseId(3));
    assert_eq!(ledger.mode(NodeId(1)), Some(NodeMode::Warm));
    ledger.node_left(t0 + secs(21), NodeId(1)).expect("live");
    assert_eq!(ledger.mode(NodeId(1)), None);
    ledger.check().expect("the ledger agrees with itself");

    let (start, times) = ledger
        .node_times(NodeId(1), None, t0 + secs(28))
        .expect("kept");
    assert_eq!(start, t0);
    let s = |n: u64| n * 1_000_000_000;
    assert_eq!(
        times,
        ModeTimes {
            allocated: s(2 + 5),
            idle: s(1 + 3),
            warm: s(4 + 6),
        }
    );
    assert_eq!(times.total(), s(21), "its life, exactly");

    // A window from t0 + 12 s: allocated 3 s, warm 6 s; nothing after it left.
    let report = ledger.report(t0 + secs(28), Some(t0 + secs(12)));
    let n = &report.nodes[0];
    assert_eq!(n.node_type, "static:L4");
    assert_eq!((n.from_ms_ago, n.left_ms_ago), (16_000, Some(7_000)));
    assert_eq!(
        (n.split.allocated_ns, n.split.idle_ns, n.split.warm_ns),
        (s(3), 0, s(6))
    );
    assert_eq!(n.split.life_ns, s(9));
    // Price 0 for a node the autoscaler did not launch.
    assert_eq!(n.split.allocated_cost + n.split.warm_cost, 0.0);
    // The record that straddles the window counts only its part in it.
    let r: Vec<_> = report
        .records
        .iter()
        .map(|r| (r.id.as_str(), r.usage.gpu_share_seconds))
        .collect();
    assert_eq!(r, [("job-3", 3.0)]);
    // A window after it left leaves it out.
    let later = ledger.report(t0 + secs(28), Some(t0 + secs(22)));
    assert!(later.nodes.is_empty() && later.records.is_empty());
}

#[test]
fn nodes_the_autoscaler_did_not_launch_are_static_by_model() {
    let class = |r: &NodeResources| NodeClass::unlaunched(r).node_type;
    assert_eq!(class(&resources(0, "-", 4)), "static:cpu");
    assert_eq!(class(&resources(2, "H100", 4)), "static:H100");
    let mut mixed = resources(2, "H100", 4);
    mixed.gpus[1].accelerator = "A100".into();
    assert_eq!(class(&mixed), "static:A100+H100");
    let c = NodeClass::unlaunched(&mixed);
    assert_eq!(c.price_micros_per_hour, 0);
    assert_eq!(
        c.gpu_model_of(&allocation(&[1], 100, 0, 0)).as_deref(),
        Some("A100")
    );
    assert_eq!(c.gpu_model_of(&allocation(&[], 0, 0, 1000)), None);
}

#[test]
fn price_goes_by_gpu_share_on_gpu_nodes_and_cpu_share_without_gpus() {
    let gpu_node = launched("g", &resources(4, "H100", 32), 8_000_000, false);
    let cpu_node = launched("c", &resources(0, "-", 8), 400_000, false);
    let two_gpus = Holding::of(&allocation(&[0, 1], 100, 0, 4000));
    let cpus_only = Holding::of(&allocation(&[], 0, 0, 4000));
    assert_eq!(gpu_node.price_share(&two_gpus), (200, 400));
    assert_eq!(
        gpu_node.price_share(&cpus_only),
        (0, 400),
        "CPU work on a GPU node pays no part of it"
    );
    assert_eq!(cpu_node.price_share(&cpus_only), (4000, 8000));
    // Half of 0.4 an hour for an hour, in 1e-15 units.
    let hour = 3_600_000_000_000u128;
    assert_eq!(
        cost_femtos(400_000, (4000, 8000), hour),
        200_000_000_000_000
    );
}

#[test]
fn the_ledger_refuses_what_its_caller_lost_track_of() {
    let t0 = Instant::now();
    let mut ledger = ledger(t0, LedgerLimits::default());
    let r = resources(1, "H100", 4);
    let a = allocation(&[0], 100, 0, 0);
    let subject = job(1);
    let opening = Opening {
        subject: &subject,
        job: "job-1",
        allocation: &a,
    };
    assert_eq!(
        ledger.open(t0, LeaseId(1), NodeId(1), opening),
        Err(LedgerError::UnknownNode(NodeId(1)))
    );
    ledger
        .node_joined(t0, NodeId(1), NodeClass::unlaunched(&r))
        .expect("joins");
    assert_eq!(
        ledger.node_joined(t0, NodeId(1), NodeClass::unlaunched(&r)),
        Err(LedgerError::NodeKnown(NodeId(1)))
    );
    ledger
        .open(t0, LeaseId(1), NodeId(1), opening)
        .expect("opens");
    assert_eq!(
        ledger.open(t0, LeaseId(1), NodeId(1), opening),
        Err(LedgerError::LeaseOpen(LeaseId(1)))
    );
    // Its node leaving closes it.
    ledger.node_left(t0 + secs(3), NodeId(1)).expect("leaves");
    assert!(ledger.open_record(LeaseId(1)).is_none());
    let closed: Vec<_> = ledger.closed_records().map(|r| r.end).collect();
    assert_eq!(closed, [Some(t0 + secs(3))]);
    assert_eq!(
        ledger.node_warm(t0 + secs(4), NodeId(1), true),
        Err(LedgerError::UnknownNode(NodeId(1)))
    );
    ledger.check().expect("the ledger agrees with itself");
}

#[test]
fn past_its_limits_the_ledger_sums_exactly_and_says_what_a_window_cannot_cut() {
    let t0 = Instant::now();
    let limits = LedgerLimits {
        records: 2,
        summaries: 2,
        gone_nodes: 1,
        marks_per_node: 3,
    };
    let mut ledger = ledger(t0, limits);
    let r = resources(1, "H100", 4);
    for node in 1..=3 {
        ledger
            .node_joined(t0, NodeId(node), launched("h100", &r, 3_600_000, false))
            .expect("joins");
    }
    let a = allocation(&[0], 100, 0, 0);
    // Ten one-second records on node 1, one every two seconds, by jobs a, b and c.
    for i in 0..10u64 {
        let job_key = ["a", "b", "c"][i as usize % 3];
        open(&mut ledger, t0 + secs(2 * i), 100 + i, 1, job_key, &a);
        ledger.close(t0 + secs(2 * i + 1), LeaseId(100 + i));
    }
    ledger.check().expect("the ledger agrees with itself");
    assert_eq!(ledger.closed_records().count(), 2);
    let now = t0 + secs(30);
    let (records, amounts) = ledger.totals_by_type(now)["h100"];
    assert_eq!(records, 10, "every record is counted, kept or summed");
    assert_eq!(amounts.gpu_unit_ns, 10 * 100 * 1_000_000_000);
    // 3.6 an hour is 0.001 a second: 0.01 for 10 whole-GPU seconds, in 1e-15 units.
    assert_eq!(amounts.cost_femtos, 10_000_000_000_000);

    let whole = ledger.report(now, None);
    assert!(whole.partial.is_empty(), "{:?}", whole.partial);
    assert_eq!(whole.total().gpu_share_seconds, 10.0);
    assert!(whole
        .earlier
        .iter()
        .any(|e| e.job == EARLIER && e.node == EARLIER));
    // The node's whole life stays exact though its oldest changes of mode were dropped.
    let n = &whole.nodes[0];
    assert_eq!(
        (n.split.allocated_ns, n.split.life_ns),
        (10_000_000_000, 30_000_000_000)
    );

    // A window from 10.5 s holds the two records kept, and cannot cut the summaries that
    // straddle it: the report says so, and that node 1's changes of mode kept start later.
    let cut = ledger.report(now, Some(t0 + Duration::from_millis(10_500)));
    assert_eq!(cut.records.len(), 2);
    assert!(
        cut.partial.iter().any(|p| p.contains("counted whole")),
        "{:?}",
        cut.partial
    );
    assert!(
        cut.partial.iter().any(|p| p.contains("node-1")),
        "{:?}",
        cut.partial
    );
    let n1 = cut
        .nodes
        .iter()
        .find(|n| n.node == "node-1")
        .expect("node 1");
    assert_eq!(n1.split.life_ns, n1.from_ms_ago * 1_000_000);
    // A window after every summed record ended leaves the summaries out.
    let recent = ledger.report(now, Some(t0 + secs(25)));
    assert!(recent.earlier.is_empty() && recent.records.is_empty());

    // Two nodes leave: one is kept one by one, the other summed by type, whole.
    ledger.node_left(t0 + secs(30), NodeId(2)).expect("leaves");
    ledger.node_left(t0 + secs(31), NodeId(3)).expect("leaves");
    ledger.check().expect("the ledger agrees with itself");
    let report = ledger.report(t0 + secs(40), None);
    let earlier: Vec<_> = report
        .earlier_nodes
        .iter()
        .map(|e| (e.node_type.as_str(), e.nodes, e.split.idle_ns))
        .collect();
    assert_eq!(earlier, [("h100", 1, 30_000_000_000)]);
    assert_eq!(ledger.node_times_by_type(t0 + secs(40))["h100"].0, 3);
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Step {
    /// Time passes.
    Wait(u64),
    /// A node with this many GPUs (each 100 units) and CPUs joins, launched at this price or
    /// not launched.
    Join {
        gpus: u32,
        cpus: u64,
        price: Option<u64>,
        spot: bool,
    },
    /// The `n`th live node (mod their count) takes a lease of `units` on one GPU (or whole
    /// GPUs) and `cpus` milli-CPUs, if it has room.
    Grant { n: usize, units: u32, cpus: u64 },
    /// The `n`th open lease ends.
    Release { n: usize },
    /// The `n`th live node goes into the warm pool or out of it.
    Warm { n: usize, warm: bool },
    /// The `n`th live node leaves.
    Leave { n: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..3_000_000_000).prop_map(Step::Wait),
        1 => (0u32..4, 1u64..8, prop::option::of(1u64..10_000_000), any::<bool>())
            .prop_map(|(gpus, cpus, price, spot)| Step::Join { gpus, cpus, price, spot }),
        4 => (any::<usize>(), 1u32..=200, 0u64..4000)
            .prop_map(|(n, units, cpus)| Step::Grant { n, units, cpus }),
        3 => any::<usize>().prop_map(|n| Step::Release { n }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(n, warm)| Step::Warm { n, warm }),
        1 => any::<usize>().prop_map(|n| Step::Leave { n }),
    ]
}

/// A node as the model sees it.
#[derive(Debug, Clone)]
struct ModelNode {
    id: NodeId,
    node_type: String,
    price: u64,
    gpu_free: Vec<u32>,
    cpu_free: u64,
    cpu_total: u64,
    open: usize,
    warm: bool,
    alive: bool,
    times: ModeTimes,
    joined: Instant,
    /// Record costs on it, in 1e-15 units, and its allocated cost.
    record_cost: u128,
}

impl ModelNode {
    /// The part of its price a holding pays: by GPUs with GPUs, by CPUs without.
    fn price_share(&self, holding: &Holding) -> (u64, u64) {
        let units = self.gpu_free.len() as u64 * 100;
        if units > 0 {
            (holding.gpu_units, units)
        } else {
            (holding.cpu_millis, self.cpu_total)
        }
    }

    fn mode(&self) -> NodeMode {
        if self.open > 0 {
            NodeMode::Allocated
        } else if self.warm {
            NodeMode::Warm
        } else {
            NodeMode::Idle
        }
    }
}

/// The model: plain sums, kept as time passes, nothing dropped.
#[derive(Debug, Default)]
struct Model {
    nodes: Vec<ModelNode>,
    /// Open leases: (lease, node index, allocation).
    open: Vec<(LeaseId, usize, Allocation, Instant)>,
    /// Per node type: (records, amounts), every record whole.
    totals: BTreeMap<String, (u64, Amounts)>,
}

fn run(steps: Vec<Step>, limits: LedgerLimits) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let mut now = t0;
    let mut ledger = ledger(t0, limits);
    let mut model = Model::default();
    let mut next = 1u64;
    for step in steps {
        match step {
            Step::Wait(ns) => {
                for n in model.nodes.iter_mut().filter(|n| n.alive) {
                    let mode = n.mode();
                    let mut t = n.times;
                    match mode {
                        NodeMode::Allocated => t.allocated += ns,
                        NodeMode::Idle => t.idle += ns,
                        NodeMode::Warm => t.warm += ns,
                    }
                    n.times = t;
                }
                now += Duration::from_nanos(ns);
            }
            Step::Join {
                gpus,
                cpus,
                price,
                spot,
            } => {
                let id = NodeId(next);
                next += 1;
                let r = resources(gpus, "H100", cpus);
                let class = match price {
                    Some(p) => launched(&format!("t{gpus}"), &r, p, spot),
                    None => NodeClass::unlaunched(&r),
                };
                let node_type = class.node_type.clone();
                let price = class.price_micros_per_hour;
                ledger
                    .node_joined(now, id, class)
                    .expect("a new node joins");
                model.nodes.push(ModelNode {
                    id,
                    node_type,
                    price,
                    gpu_free: vec![100; gpus as usize],
                    cpu_free: cpus * 1000,
                    cpu_total: cpus * 1000,
                    open: 0,
                    warm: false,
                    alive: true,
                    times: ModeTimes::default(),
                    joined: now,
                    record_cost: 0,
                });
            }
            Step::Grant { n, units, cpus } => {
                let live: Vec<usize> = (0..model.nodes.len())
                    .filter(|i| model.nodes[*i].alive)
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let i = live[n % live.len()];
                let node = &mut model.nodes[i];
                if cpus > node.cpu_free {
                    continue;
                }
                // A fraction on the first GPU it fits on, or whole GPUs (units 100 or 200).
                let gpus: Vec<u32> = if units < 100 {
                    match node.gpu_free.iter().position(|f| *f >= units) {
                        Some(g) => vec![g as u32],
                        None => continue,
                    }
                } else {
                    let want = (units / 100) as usize;
                    let free: Vec<u32> = (0..node.gpu_free.len() as u32)
                        .filter(|g| node.gpu_free[*g as usize] == 100)
                        .take(want)
                        .collect();
                    if free.len() < want {
                        continue;
                    }
                    free
                };
                let per_gpu = units.min(100);
                for g in &gpus {
                    node.gpu_free[*g as usize] -= per_gpu;
                }
                node.cpu_free -= cpus;
                node.open += 1;
                let a = allocation(&gpus, per_gpu, GIB, cpus);
                let lease = LeaseId(next);
                next += 1;
                open(&mut ledger, now, lease.0, node.id.0, "job", &a);
                model.open.push((lease, i, a, now));
            }
            Step::Release { n } => {
                if model.open.is_empty() {
                    continue;
                }
                let (lease, i, a, start) = model.open.remove(n % model.open.len());
                prop_assert!(ledger.close(now, lease));
                release(&mut model, i, &a, start, now);
            }
            Step::Warm { n, warm } => {
                let live: Vec<usize> = (0..model.nodes.len())
                    .filter(|i| model.nodes[*i].alive)
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let i = live[n % live.len()];
                model.nodes[i].warm = warm;
                ledger
                    .node_warm(now, model.nodes[i].id, warm)
                    .expect("live");
            }
            Step::Leave { n } => {
                let live: Vec<usize> = (0..model.nodes.len())
                    .filter(|i| model.nodes[*i].alive)
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let i = live[n % live.len()];
                ledger.node_left(now, model.nodes[i].id).expect("live");
                let on_it: Vec<_> = model
                    .open
                    .iter()
                    .filter(|(_, j, _, _)| *j == i)
                    .cloned()
                    .collect();
                model.open.retain(|(_, j, _, _)| *j != i);
                for (_, _, a, start) in on_it {
                    release(&mut model, i, &a, start, now);
                }
                model.nodes[i].alive = false;
            }
        }
        check(&ledger, &model, now, limits)?;
    }
    Ok(())
}

/// The model's side of a lease ending at `now`.
fn release(model: &mut Model, i: usize, a: &Allocation, start: Instant, now: Instant) {
    let node = &mut model.nodes[i];
    for g in &a.gpus {
        node.gpu_free[g.index as usize] += g.share.units();
    }
    node.cpu_free += a.cpu_millis;
    node.open -= 1;
    let holding = Holding::of(a);
    let share = node.price_share(&holding);
    let amounts = Amounts::held(&holding, share, node.price, (now - start).as_nanos());
    node.record_cost += amounts.cost_femtos;
    let t = model.totals.entry(node.node_type.clone()).or_default();
    t.0 += 1;
    t.1.add(&amounts);
}

/// What must hold after every step.
fn check(
    ledger: &Ledger,
    model: &Model,
    now: Instant,
    limits: LedgerLimits,
) -> Result<(), TestCaseError> {
    if let Err(e) = ledger.check() {
        return Err(TestCaseError::fail(e));
    }
    let mut by_type: BTreeMap<String, (u64, ModeTimes)> = BTreeMap::new();
    for n in &model.nodes {
        let t = by_type.entry(n.node_type.clone()).or_default();
        t.0 += 1;
        t.1.add(n.times);
        if n.alive {
            prop_assert_eq!(ledger.mode(n.id), Some(n.mode()));
        }
        let Some((start, times)) = ledger.node_times(n.id, None, now) else {
            // Summed with the gone nodes of its type: checked by type below.
            prop_assert!(!n.alive);
            continue;
        };
        // Allocated, idle and warm add up to its life, exactly, and match the model.
        prop_assert_eq!(start, n.joined);
        prop_assert_eq!(times, n.times);
        // Records never cost more than the node's allocated time.
        let allocated_cost = cost_femtos(n.price, (1, 1), u128::from(times.allocated));
        prop_assert!(
            n.record_cost <= allocated_cost,
            "{} > {}",
            n.record_cost,
            allocated_cost
        );
        // A window from halfway through its life counts the rest of it, exactly (when its
        // history reaches back so far).
        let end = if n.alive {
            now
        } else {
            start + Duration::from_nanos(times.total())
        };
        let half = start + (end - start) / 2;
        if let Some((from, part)) = ledger.node_times(n.id, Some(half), now) {
            prop_assert!(from >= half);
            prop_assert_eq!(u128::from(part.total()), (end - from).as_nanos());
            if limits.marks_per_node >= 1_000 {
                prop_assert_eq!(from, half);
            }
        }
    }
    prop_assert_eq!(ledger.node_times_by_type(now), by_type);
    // Every record, kept or summed, at its exact amounts: closed ones as the model summed
    // them, open ones so far.
    let mut totals = model.totals.clone();
    for (_, i, a, start) in &model.open {
        let node = &model.nodes[*i];
        let holding = Holding::of(a);
        let share = node.price_share(&holding);
        let t = totals.entry(node.node_type.clone()).or_default();
        t.0 += 1;
        t.1.add(&Amounts::held(
            &holding,
            share,
            node.price,
            (now - *start).as_nanos(),
        ));
    }
    prop_assert_eq!(ledger.totals_by_type(now), totals);
    // The report without a window is whole: nothing it cannot cut.
    let report = ledger.report(now, None);
    prop_assert!(report.partial.is_empty(), "{:?}", report.partial);
    for n in &report.nodes {
        let s = n.split;
        prop_assert_eq!(s.allocated_ns + s.idle_ns + s.warm_ns, s.life_ns);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random joins, grants, releases, warm-pool moves and leaves: each node's time adds up to
    /// its life exactly and matches a plain model; every record counts its holding times its
    /// seconds; the records on a node never cost more than its allocated time.
    #[test]
    fn usage_adds_up_to_node_time(steps in prop::collection::vec(step(), 1..120)) {
        run(steps, LedgerLimits::default())?;
    }

    /// The same with tiny limits: what is dropped one by one is summed, and every total stays
    /// exact.
    #[test]
    fn usage_adds_up_past_the_limits(steps in prop::collection::vec(step(), 1..160)) {
        run(steps, LedgerLimits { records: 3, summaries: 2, gone_nodes: 1, marks_per_node: 2 })?;
    }
}
