//! The usage ledger as the head feeds it: a record for each job, actor incarnation and task
//! lease from its grant to its release, under the job key the head has; the node's time split
//! into allocated and idle; a lost node closing what ran on it; a node the autoscaler launched
//! priced by its type.

use std::time::Duration;

use ember_core::proto::{
    ClientReply, ClientRequest, JobEvent, JobSpec, LaunchTicket, RecordUsage, UsageReport,
    WorkerCommand, WorkerReply,
};

use super::restore_tests::{rejoin, running_actor_of};
use super::{command, one_h100, placement, reply_to, spec, Scene};
use crate::autoscale::{Autoscaler, NodeType, Policy};
use crate::io::{ConnId, Input};
use crate::state::Config;

const SEC: u64 = 1_000_000_000;

impl Scene {
    /// The usage ledger from `since_ms_ago` (everything when `None`), asked on a connection
    /// of its own.
    fn usage(&mut self, since_ms_ago: Option<u64>) -> UsageReport {
        let observer = self.conn();
        let (request, effects) = self.ask(observer, ClientRequest::Usage { since_ms_ago });
        match reply_to(&effects, request) {
            ClientReply::Usage(report) => *report,
            other => panic!("expected the usage, got {other:?}"),
        }
    }

    /// Moves on by `secs` seconds, the workers' heartbeats keeping them alive.
    fn wait(&mut self, secs: u64) {
        for _ in 0..secs {
            self.later(Duration::from_secs(1));
            let nodes: Vec<_> = self.head.nodes.keys().copied().collect();
            for node in nodes {
                self.handle(Input::Event {
                    node,
                    event: ember_core::proto::WorkerEvent::Heartbeat { gpus: Vec::new() },
                });
            }
            self.handle(Input::Tick);
        }
    }
}

/// The record of `id` in `report`.
fn record<'a>(report: &'a UsageReport, id: &str) -> &'a RecordUsage {
    report
        .records
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no record of {id} in {report:?}"))
}

/// The job key of what `conn` owns in the scene's first head life.
fn client_key(conn: ConnId) -> String {
    format!("client-1.{}", conn.0)
}

#[test]
fn each_job_actor_and_task_lease_has_a_record_from_its_grant_to_its_release() {
    let mut s = Scene::new();
    let (_, node) = s.join();
    let client = s.conn();
    s.wait(1);
    // At 1 s: a quarter-GPU task lease, a half-GPU actor and a quarter-GPU job.
    let lease_request = s.held_lease(client, 25);
    let (actor, _) = s.actor(client, false);
    let job = JobSpec {
        command: vec!["train.sh".into(), "--fast".into()],
        env: Vec::new(),
        placement: placement(25),
    };
    let (_, effects) = s.ask(client, ClientRequest::SubmitJob(job));
    let (_, run, body) = command(&effects);
    let WorkerCommand::RunJob { job, .. } = body else {
        panic!("expected the job to run, got {body:?}");
    };
    // The job ends at 3 s, the task lease at 4 s; the actor runs on.
    s.wait(2);
    s.reply(run, WorkerReply::Job(JobEvent::Exited(0)));
    s.wait(1);
    let effects = s.handle(Input::LeaseReturned {
        request: lease_request,
        lost: false,
    });
    let (_, close, _) = command(&effects);
    s.reply(close, WorkerReply::LeaseClosed);
    s.wait(2);

    let report = s.usage(None);
    assert_eq!(report.window_ms, 6_000);
    assert_eq!(report.records.len(), 3, "{report:?}");
    let j = record(&report, &job.to_string());
    assert_eq!(
        (j.kind.as_str(), j.name.as_str()),
        ("job", "train.sh --fast")
    );
    assert_eq!(j.job, job.to_string(), "a job is its own job key");
    assert_eq!((j.started_ms_ago, j.ended_ms_ago), (5_000, Some(3_000)));
    assert_eq!(j.usage.gpu_share_seconds, 0.5);
    let a = record(&report, &actor.to_string());
    assert_eq!((a.kind.as_str(), a.incarnation), ("actor", Some(1)));
    assert_eq!(a.job, client_key(client), "an actor is its owner's");
    assert_eq!(a.ended_ms_ago, None, "it still runs");
    assert_eq!(a.usage.gpu_share_seconds, 2.5);
    let l = report
        .records
        .iter()
        .find(|r| r.kind == "lease")
        .expect("the task lease's record");
    assert_eq!(
        (l.name.as_str(), l.job.clone()),
        ("train", client_key(client))
    );
    assert_eq!(l.usage.gpu_share_seconds, 0.75);
    for r in &report.records {
        assert_eq!(
            (r.node.clone(), r.node_type.as_str()),
            (node.to_string(), "static:H100")
        );
        assert_eq!((r.gpu_model.as_deref(), r.usage.cost), (Some("H100"), 0.0));
    }

    // The node: idle for its first second, allocated since.
    let n = &report.nodes[0];
    assert_eq!(n.node, node.to_string());
    assert_eq!(
        (n.split.allocated_ns, n.split.idle_ns, n.split.warm_ns),
        (5 * SEC, SEC, 0)
    );
    assert_eq!(n.split.life_ns, 6 * SEC);

    // The last 1.5 s: only the actor, for 1.5 s of its life.
    let recent = s.usage(Some(1_500));
    assert_eq!(recent.records.len(), 1);
    assert_eq!(recent.records[0].usage.gpu_share_seconds, 0.75);
    assert_eq!(recent.nodes[0].split.allocated_ns, 3 * SEC / 2);
    // By job: the job's and the client's.
    let by_job = report.groups(ember_core::proto::UsageBy::Job);
    let keys: Vec<_> = by_job
        .groups
        .iter()
        .map(|g| (g.key.clone(), g.records))
        .collect();
    assert_eq!(keys, [(client_key(client), 2), (job.to_string(), 1)]);
}

#[test]
fn a_lost_node_closes_what_ran_on_it_and_a_launched_node_is_priced_by_its_type() {
    let h100 = NodeType {
        name: "h100-spot".into(),
        resources: one_h100(),
        min: 0,
        max: 4,
        warm: 0,
        // 2.0 an hour.
        price_micros_per_hour: 2_000_000,
        spot: true,
        idle_timeout: Duration::from_secs(600),
    };
    let autoscaler = Autoscaler::new(Policy {
        types: vec![h100],
        max_nodes: 4,
        upscaling_speed: 1.0,
        launch_timeout: Duration::from_secs(120),
        utilisation: None,
    })
    .expect("a policy it can keep");
    let mut s = Scene::with_config(Config {
        rejoin_window: Duration::from_secs(2),
        autoscaler: Some(autoscaler),
        autoscale_interval: Duration::from_secs(60),
        ..Config::default()
    });
    let ticket = LaunchTicket {
        launch: 1,
        node_type: "h100-spot".into(),
    };
    let (conn, node, _) = s.join_with(None, Some(ticket));
    let client = s.conn();
    s.held_lease(client, 50);
    s.wait(10);
    // The worker's connection closes: the node is lost, and the lease with it.
    s.handle(Input::Closed { conn });
    s.wait(1);

    let report = s.usage(None);
    let r = &report.records[0];
    assert_eq!((r.node_type.as_str(), r.spot), ("h100-spot", true));
    assert_eq!((r.ended_ms_ago, r.price_share), (Some(1_000), 0.5));
    assert_eq!(r.usage.gpu_share_seconds, 5.0);
    // Half of 2.0 an hour for 10 s.
    assert!(
        (r.usage.cost - 10.0 / 3600.0).abs() < 1e-12,
        "{}",
        r.usage.cost
    );
    let n = &report.nodes[0];
    assert_eq!(
        (n.node.clone(), n.left_ms_ago),
        (node.to_string(), Some(1_000))
    );
    assert_eq!(
        (n.split.allocated_ns, n.split.life_ns),
        (10 * SEC, 10 * SEC)
    );
    assert!((n.split.allocated_cost - 2.0 * 10.0 / 3600.0).abs() < 1e-12);
    assert_eq!(n.price_per_hour, 2.0);
}

#[test]
fn a_restarted_head_counts_from_its_start_and_adopted_work_from_its_re_join() {
    let mut s = Scene::new();
    s.join();
    let owner = s.conn();
    let (actor, node, running) = running_actor_of(&mut s, owner, spec(false));
    s.wait(5);
    s.restart();
    s.later(Duration::from_secs(1));
    let (_, back, _) = s.join_as(rejoin(node, vec![running], vec![]));
    assert_eq!(back, node);
    s.wait(1);

    let report = s.usage(None);
    assert_eq!(
        report.head_started_ms_ago, 2_000,
        "the ledger lives in memory: it begins with the head life"
    );
    let a = record(&report, &actor.to_string());
    assert_eq!((a.started_ms_ago, a.ended_ms_ago), (1_000, None));
    assert_eq!(a.job, client_key(owner), "owned as journaled");
    let n = &report.nodes[0];
    assert_eq!(
        (n.joined_ms_ago, n.split.allocated_ns, n.split.life_ns),
        (1_000, SEC, SEC)
    );
    // A window reaching back before the restart says what is not kept.
    let before = s.usage(Some(10_000));
    assert!(
        before.partial.iter().any(|p| p.contains("not kept")),
        "{:?}",
        before.partial
    );
}
