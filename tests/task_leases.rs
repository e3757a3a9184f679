//! Task leases across real processes on 127.0.0.1: a client runs a sequence of tasks on one
//! lease (one executor thread, no head on the path), gives it back when idle, takes a lease of
//! its own for each spread task, runs many tasks at once on several leases, reaches leases
//! over QUIC as a client elsewhere would, and carries on elsewhere when a drain takes its
//! lease back, running each task exactly once even with short tasks queued on the lease.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ember::{Cluster, Error, ErrorKind, Options};
use ember_core::proto::{decode, encode, FrameError, MAX_FRAME};
use ember_tests::recording::RecordingArgs;
use ember_tests::tasks::{claim, cpu_only, fails, runner, spin, spread_runner};
use ember_tests::{until, within, TestCluster, WorkerSpec};

/// Runs `n` tasks one after another and returns where each ran.
async fn run_in_sequence(cluster: &Cluster, n: usize) -> Vec<(String, String, u32)> {
    let mut ran = Vec::new();
    for _ in 0..n {
        ran.push(
            within("a task", cluster.run(runner::remote()))
                .await
                .expect("runs"),
        );
    }
    ran
}

/// Waits (bounded) until the head lists no task: every lease was given back.
async fn until_no_leases(cluster: &Cluster) {
    until("every lease is given back", || {
        let cluster = cluster.clone();
        async move { cluster.status().await.expect("status").leases.is_empty() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_of_tasks_runs_on_one_lease_given_back_when_idle() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu(), WorkerSpec::cpu()]).await;
    let ran = run_in_sequence(&cluster, 30).await;
    let threads: HashSet<_> = ran.iter().map(|(_, thread, _)| thread.clone()).collect();
    assert_eq!(threads.len(), 1, "one lease ran them all: {threads:?}");
    let thread = threads.into_iter().next().unwrap();
    assert!(thread.starts_with("lease-"), "a lease's thread: {thread}");
    until_no_leases(&cluster).await;

    // Once given back, the next task takes a new lease from the same executor.
    let (_, next_thread, pid) = within("a task", cluster.run(runner::remote()))
        .await
        .unwrap();
    assert_ne!(next_thread, thread, "a new lease");
    assert_eq!(pid, ran[0].2, "on the same executor process");

    // A user error comes back as such, and the lease serves on.
    let err = within("fails", cluster.run(fails::remote()))
        .await
        .expect_err("fails");
    assert_eq!(err.kind(), Some(ErrorKind::User));
    assert!(err.to_string().contains("failed on purpose"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_tasks_take_a_lease_each_and_concurrent_tasks_share_several() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu(), WorkerSpec::cpu()]).await;
    let mut threads = HashSet::new();
    for _ in 0..4 {
        let (_, thread, _) = within("spread", cluster.run(spread_runner::remote()))
            .await
            .expect("runs");
        threads.insert(thread);
    }
    assert_eq!(threads.len(), 4, "each spread task had a lease of its own");

    // Many at once: every task runs once, on more than one lease.
    let tasks: Vec<_> = (0..300).map(|_| cluster.submit(runner::remote())).collect();
    let ran = within("300 tasks", futures::future::try_join_all(tasks))
        .await
        .expect("all run");
    let leases: HashSet<_> = ran.iter().map(|(_, thread, _)| thread.clone()).collect();
    assert!(leases.len() > 1, "several leases: {leases:?}");
    until_no_leases(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_reached_over_quic_from_elsewhere() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu()]).await;
    cluster.set_same_host_calls(false);
    let ran = run_in_sequence(&cluster, 10).await;
    let threads: HashSet<_> = ran.iter().map(|(_, thread, _)| thread.clone()).collect();
    assert_eq!(threads.len(), 1, "one lease over QUIC: {threads:?}");
    let placed = within("cpu_only", cluster.run(cpu_only::remote()))
        .await
        .expect("runs");
    assert_eq!(placed.0, ran[0].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_arguments_are_made_for_whether_its_executor_shares_this_machine() {
    let (tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu()]).await;
    let bytes = encode(&(0u64, vec![5u8; 1000])).expect("encodes").to_vec();
    let run = |args: Arc<RecordingArgs>| {
        let cluster = cluster.clone();
        async move {
            let out = within(
                "a task",
                cluster.run_args(ember_tests::tasks::spin::NAME, args, &Options::new()),
            )
            .await?;
            Ok::<u64, Error>(decode(&out).expect("a u64"))
        }
    };

    // The local cluster's executor runs on this machine.
    let here = Arc::new(RecordingArgs::new(bytes.clone()));
    assert_eq!(run(here.clone()).await.expect("runs"), 1000);
    assert_eq!(here.asked(), [true]);

    // A retry asks again, for where it goes.
    let marker = tc.scratch().join("fails-once").display().to_string();
    let retried = Arc::new(RecordingArgs::new(
        encode(&(marker,)).expect("encodes").to_vec(),
    ));
    let out = within(
        "a retried task",
        cluster.run_args(
            ember_tests::tasks::fails_once::NAME,
            retried.clone(),
            &Options::new().retry_user_errors(true),
        ),
    )
    .await
    .expect("runs again");
    assert_eq!(
        decode::<String>(&out).expect("a string"),
        "succeeded on a retry"
    );
    assert_eq!(retried.asked(), [true, true], "once per attempt");

    // Same-machine calls off: made as for another machine.
    cluster.set_same_host_calls(false);
    let elsewhere = Arc::new(RecordingArgs::new(bytes));
    assert_eq!(run(elsewhere.clone()).await.expect("runs"), 1000);
    assert_eq!(elsewhere.asked(), [false]);

    // Arguments that cannot be made fail the call, saying why; the client serves on.
    match run(Arc::new(RecordingArgs::failing())).await {
        Err(Error::Args(e)) => assert!(e.to_string().contains("cannot be made"), "{e}"),
        other => panic!("expected Error::Args, got {other:?}"),
    }
    // As do arguments made too large to travel.
    let huge = Arc::new(RecordingArgs::new(vec![7u8; MAX_FRAME]));
    match run(huge).await {
        Err(Error::Protocol(FrameError::TooLarge { .. })) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    within("after", cluster.run(spin::remote(0, vec![1; 1024])))
        .await
        .expect("the next task runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_task_arguments_fail_at_once_and_the_client_serves_on() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu()]).await;
    let huge = vec![7u8; MAX_FRAME];
    match within("huge", cluster.run(spin::remote(0, huge))).await {
        Err(Error::Protocol(FrameError::TooLarge { .. })) => {}
        other => panic!("expected TooLarge, got {:?}", other.map(|_| ())),
    }
    within("after", cluster.run(spin::remote(0, vec![1; 1024])))
        .await
        .expect("the next task runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_takes_a_lease_back_and_the_next_task_runs_elsewhere() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu(), WorkerSpec::cpu()]).await;
    let (first_node, thread, _) = within("a task", cluster.run(runner::remote()))
        .await
        .unwrap();
    let node = first_node.parse().expect("a node id");
    within("drain", cluster.drain(node, Duration::from_secs(5)))
        .await
        .expect("drain");
    let (next_node, next_thread, _) = within("after the drain", cluster.run(runner::remote()))
        .await
        .expect("runs elsewhere");
    assert_ne!(next_node, first_node, "not on the drained node");
    assert_ne!(next_thread, thread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_amid_a_burst_of_short_tasks_runs_each_exactly_once() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu(), WorkerSpec::cpu()]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = |i: usize| dir.path().join(i.to_string()).display().to_string();
    // A few in a row teach the client that these tasks are short, so the burst is pipelined:
    // several tasks are queued on each lease when the drain comes.
    let mut first_node = String::new();
    for i in 0..20 {
        first_node = within("a claim", cluster.run(claim::remote(path(i), 200)))
            .await
            .expect("runs");
    }
    const BURST: usize = 3000;
    let burst: Vec<_> = (20..20 + BURST)
        .map(|i| cluster.submit(claim::remote(path(i), 200)))
        .collect();
    let burst = tokio::spawn(futures::future::join_all(burst));
    let claimed = || std::fs::read_dir(dir.path()).map_or(0, |d| d.count());
    until("a tenth of the burst ran", || async {
        claimed() >= 20 + BURST / 10
    })
    .await;
    let node = first_node.parse().expect("a node id");
    within("drain", cluster.drain(node, Duration::from_secs(5)))
        .await
        .expect("drain");
    let results = within("the burst", burst).await.expect("joined");
    let mut after_drain = 0;
    for result in results {
        // A task run twice would fail to claim its file.
        let ran_on = result.expect("each task runs once");
        after_drain += usize::from(ran_on != first_node);
    }
    assert_eq!(claimed(), 20 + BURST, "every task ran");
    assert!(after_drain > 0, "the burst went on on the other node");
}
