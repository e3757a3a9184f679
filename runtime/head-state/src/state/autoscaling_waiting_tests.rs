//! The waiting list kept between passes ([`WaitingList`]) against the list built afresh from
//! the scheduler every pass, as it was before: on a random run of requests (of a few demands,
//! labels and priorities, so that the queue reorders what arrives), cancels, releases with
//! passes over the queue, nodes joining and gangs created and removed, the very same list
//! after every step.

use proptest::prelude::*;

use super::WaitingList;
use crate::autoscale::Waiting;
use crate::placement::{Decision, GangDecision, GangRequest, PlacementRequest, Scheduler};
use ember_core::ids::{GangId, LeaseId, NodeId};
use ember_core::proto::GangStrategy;
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand};

const SHARES: [u32; 4] = [25, 50, 100, 200];
const LABELS: [&str; 2] = ["task:a", "task:b"];

/// The list as it was built every pass.
fn afresh(sched: &Scheduler) -> Vec<Waiting> {
    let mut waiting: Vec<Waiting> = sched
        .queued()
        .map(|r| Waiting::Request {
            demand: r.demand.clone(),
            labels: r.labels.clone(),
        })
        .collect();
    for g in sched.gangs() {
        let bundles: Vec<_> = g
            .bundles
            .iter()
            .filter(|b| b.node.is_none())
            .map(|b| b.demand.clone())
            .collect();
        if !bundles.is_empty() && !g.removing {
            waiting.push(Waiting::Gang {
                bundles,
                strategy: g.strategy,
            });
        }
    }
    waiting
}

fn node(gpus: u32) -> NodeResources {
    NodeResources {
        cpu_millis: 8_000,
        gpus: (0..gpus)
            .map(|index| GpuDevice {
                index,
                uuid: format!("GPU-{index}"),
                name: "H100".into(),
                memory: 80 << 30,
                accelerator: "H100".into(),
                logical: true,
            })
            .collect(),
        custom: Vec::new(),
        labels: LABELS.iter().map(|l| l.to_string()).collect(),
    }
}

fn demand(share: usize) -> ResourceDemand {
    ResourceDemand {
        gpus: GpuShare::from_units(SHARES[share]),
        ..ResourceDemand::default()
    }
}

#[derive(Debug, Clone)]
enum Step {
    Request {
        share: usize,
        label: usize,
        priority: i32,
    },
    /// Cancels the `n`th waiting request, if there is one.
    Cancel(usize),
    /// Releases the `n`th lease, if there is one, then a pass over the queue.
    Release(usize),
    Join(u32),
    Gang(Vec<usize>),
    /// Removes the `n`th gang, if there is one.
    RemoveGang(usize),
    /// An autoscaler's pass: the list is taken.
    Pass,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..4usize, 0..2usize, 0..3i32).prop_map(|(share, label, priority)| Step::Request {
            share,
            label,
            priority
        }),
        2 => any::<usize>().prop_map(Step::Cancel),
        3 => any::<usize>().prop_map(Step::Release),
        1 => (1..3u32).prop_map(Step::Join),
        1 => prop::collection::vec(0..4usize, 1..4).prop_map(Step::Gang),
        1 => any::<usize>().prop_map(Step::RemoveGang),
        4 => Just(Step::Pass),
    ]
}

proptest! {
    #[test]
    fn the_list_kept_between_passes_is_the_list_built_afresh(
        steps in prop::collection::vec(step(), 1..200),
    ) {
        let mut sched = Scheduler::new();
        sched.add_node(NodeId(1), node(1));
        let mut list = WaitingList::default();
        let (mut next, mut nodes) = (1u64, 1u64);
        let mut leases: Vec<LeaseId> = Vec::new();
        let mut gangs: Vec<GangId> = Vec::new();
        for step in steps {
            match step {
                Step::Request { share, label, priority } => {
                    let mut req = PlacementRequest::new(LeaseId(next), demand(share));
                    req.labels = vec![LABELS[label].into()];
                    req.priority = priority;
                    next += 1;
                    if let Decision::Placed(l) = sched.request(req) {
                        leases.push(l.id);
                    }
                }
                Step::Cancel(n) => {
                    let queued: Vec<LeaseId> = sched.queued().map(|r| r.lease).collect();
                    if !queued.is_empty() {
                        sched.cancel(queued[n % queued.len()]);
                    }
                }
                Step::Release(n) => {
                    if !leases.is_empty() {
                        sched.release(leases.swap_remove(n % leases.len()));
                    }
                    leases.extend(sched.place_queued().into_iter().map(|l| l.id));
                }
                Step::Join(gpus) => {
                    nodes += 1;
                    sched.add_node(NodeId(nodes), node(gpus));
                    leases.extend(sched.place_queued().into_iter().map(|l| l.id));
                }
                Step::Gang(bundles) => {
                    let gang = GangId(next);
                    next += 1;
                    let req = GangRequest {
                        gang,
                        bundles: bundles.into_iter().map(demand).collect(),
                        strategy: GangStrategy::Pack,
                        priority: 0,
                    };
                    if !matches!(sched.create_gang(req, true), GangDecision::Rejected(_)) {
                        gangs.push(gang);
                    }
                }
                Step::RemoveGang(n) => {
                    if !gangs.is_empty() {
                        sched.remove_gang(gangs.swap_remove(n % gangs.len()));
                    }
                }
                Step::Pass => {
                    let expected = afresh(&sched);
                    prop_assert_eq!(list.update(&sched), expected.as_slice());
                }
            }
        }
        let expected = afresh(&sched);
        prop_assert_eq!(list.update(&sched), expected.as_slice());
    }
}
