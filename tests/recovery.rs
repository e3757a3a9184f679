//! Fault recovery across real processes: actors restart from checkpoints recorded by the head
//! when their worker is SIGKILLed, calls made meanwhile wait and succeed, restarts run out with
//! a clear error, a corrupted checkpoint falls back to the previous one, tasks run again when
//! their worker dies, and a drain moves actors with their state.

use std::time::Duration;

use ember::{Cluster, ErrorKind, NodeId};
use ember_tests::tasks::{fails_once, nap, spin, Counter, Ledger, LedgerHandle, Meter, Tally};
use ember_tests::{until, within, worker_of, S3Server, TestCluster, WorkerSpec};

fn gpu() -> WorkerSpec {
    WorkerSpec::gpus(1, "H100", "80GiB")
}

async fn ledger(cluster: &Cluster) -> LedgerHandle {
    within("spawn", cluster.spawn(Ledger::remote(0)))
        .await
        .expect("a ledger")
}

/// The actor's line in the head's status.
async fn actor_status(cluster: &Cluster, id: ember::ActorId) -> ember::ClusterStatus {
    let status = within("status", cluster.status()).await.expect("status");
    assert!(
        status.actors.iter().any(|a| a.id == id.to_string()),
        "{status:?}"
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_actor_resumes_elsewhere_from_its_checkpoint() {
    let (mut tc, cluster) = TestCluster::with_workers(&[gpu(), gpu()]).await;
    let ledger = ledger(&cluster).await;
    for n in 1..=5 {
        within("add", ledger.add(n)).await.expect("add");
    }
    let first = ledger.actor().node();
    let old_pid = within("pid", ledger.pid()).await.expect("pid");
    tc.kill_worker(&worker_of(&cluster, first).await);

    // Calls made while it restarts wait for it, and each lands exactly once.
    let calls: Vec<_> = (0..10).map(|_| ledger.add(1)).collect();
    let results = within("calls during the restart", futures::future::join_all(calls)).await;
    let mut totals: Vec<u64> = results
        .into_iter()
        .map(|r| r.expect("a call made during the restart"))
        .collect();
    totals.sort_unstable();
    assert_eq!(
        totals,
        (16..=25).collect::<Vec<u64>>(),
        "each call once, on the restored 15"
    );
    assert_eq!(within("totals", ledger.totals()).await.unwrap(), (25, 15));

    assert_ne!(
        ledger.actor().node(),
        first,
        "restarted on the surviving worker"
    );
    assert_eq!(ledger.actor().incarnation(), 2);
    assert_ne!(within("pid", ledger.pid()).await.unwrap(), old_pid);
    let status = actor_status(&cluster, ledger.actor().id()).await;
    let life = status.actors[0].actor.clone().expect("an actor's life");
    assert_eq!(
        (life.state.as_str(), life.restarts),
        ("alive", 1),
        "{life:?}"
    );
    assert!(life.checkpoint_seq >= Some(16), "{life:?}");
    assert!(tc.head_log().contains("restarting it"), "{}", tc.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_run_out_with_a_clear_error() {
    let (mut tc, cluster) = TestCluster::with_workers(&[gpu(), gpu(), gpu()]).await;
    let ledger = within(
        "spawn",
        cluster.spawn(Ledger::remote(0).with(|o| o.max_restarts(1))),
    )
    .await
    .expect("a ledger");
    within("add", ledger.add(7)).await.unwrap();
    tc.kill_worker(&worker_of(&cluster, ledger.actor().node()).await);
    assert_eq!(within("after one loss", ledger.add(1)).await.unwrap(), 8);
    tc.kill_worker(&worker_of(&cluster, ledger.actor().node()).await);
    let err = within("after two losses", ledger.add(1))
        .await
        .expect_err("no restarts left");
    assert_eq!(err.kind(), Some(ErrorKind::WorkerDied), "{err}");
    assert!(err.to_string().contains("all 1 of its restarts"), "{err}");
    let status = actor_status(&cluster, ledger.actor().id()).await;
    let life = status.actors[0].actor.clone().unwrap();
    assert_eq!(life.state, "dead", "{life:?}");
    assert!(life.reason.unwrap().contains("died"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_without_restarts_fails_its_callers_with_the_reason() {
    let (mut tc, cluster) = TestCluster::with_workers(&[gpu(), gpu()]).await;
    let counter = within("spawn", cluster.spawn(Counter::remote(1)))
        .await
        .unwrap();
    let host = worker_of(&cluster, counter.actor().node()).await;
    tc.kill_worker(&host);
    until("the actor's process ends with its worker", || {
        let gone = tc.processes_of(&host).is_empty();
        async move { gone }
    })
    .await;
    let err = within("call", counter.add(1))
        .await
        .expect_err("it is gone");
    assert_eq!(err.kind(), Some(ErrorKind::WorkerDied), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_checkpoint_falls_back_to_the_previous_one() {
    let (mut tc, cluster) = TestCluster::with_workers(&[gpu(), gpu()]).await;
    let ledger = ledger(&cluster).await;
    for n in [1, 2, 3] {
        within("add", ledger.add(n)).await.unwrap();
    }
    // The newest of the kept checkpoints (seq 3, total 6) is damaged on the head's disk.
    let dir = tc
        .state_dir()
        .join("checkpoints")
        .join(ledger.actor().id().to_string());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the actor's checkpoints")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    let newest = files.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(newest, bytes).unwrap();

    tc.kill_worker(&worker_of(&cluster, ledger.actor().node()).await);
    assert_eq!(
        within("totals", ledger.totals()).await.unwrap(),
        (3, 2),
        "restored from the previous checkpoint"
    );
    assert!(
        tc.head_log().contains("does not match its hash"),
        "{}",
        tc.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_again_when_its_worker_dies() {
    let (mut tc, cluster) =
        TestCluster::with_workers(&[WorkerSpec::cpu(), WorkerSpec::cpu()]).await;
    let task = cluster.submit(nap::remote(3_000));
    let running_on = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    until("the task runs", || {
        let cluster = cluster.clone();
        let found = running_on.clone();
        async move {
            let status = cluster.status().await.expect("status");
            let node = status.leases.first().and_then(|t| t.node.clone());
            let running = node.is_some();
            *found.lock().unwrap() = node;
            running
        }
    })
    .await;
    let running_on = running_on.lock().unwrap().clone().expect("a node");
    let node: NodeId = running_on.parse().expect("a node id");
    tc.kill_worker(&worker_of(&cluster, node).await);
    let ran_on = within("the retried task", task).await.expect("retried");
    assert_ne!(ran_on, running_on, "it ran again on the other worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_are_retried_only_when_asked() {
    let (tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu()]).await;
    let marker = |name: &str| tc.scratch().join(name).display().to_string();
    let err = within("no retry", cluster.run(fails_once::remote(marker("a"))))
        .await
        .expect_err("fails once, not retried");
    assert_eq!(err.kind(), Some(ErrorKind::User));
    let call = fails_once::remote(marker("b")).with(|o| o.retry_user_errors(true));
    assert_eq!(
        within("retry", cluster.run(call)).await.unwrap(),
        "succeeded on a retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_actors_with_no_lost_update() {
    let (tc, cluster) = TestCluster::with_workers(&[gpu(), gpu()]).await;
    // Checkpointed only when sealed for the move: the seal must carry every answered add.
    let tally = within("spawn", cluster.spawn(Tally::remote(0)))
        .await
        .unwrap();
    let from = tally.actor().node();
    let adder = {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut answered = 0u64;
            for _ in 0..300 {
                tally.add(1).await.expect("an add during the drain");
                answered += 1;
            }
            answered
        })
    };
    within("first adds", async {
        while tally.add(0).await.unwrap() < 20 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let moved = within("drain", cluster.drain(from, Duration::from_secs(5)))
        .await
        .expect("drain");
    assert_eq!(moved, 1);
    let answered = within("adder", adder).await.unwrap();
    assert_eq!(within("total", tally.add(0)).await.unwrap(), answered);
    assert_ne!(tally.actor().node(), from);
    let status = within("status", cluster.status()).await.unwrap();
    assert!(
        status.nodes.iter().all(|n| n.id != from.to_string()),
        "the drained worker left: {:?}",
        status.nodes
    );
    let life = status.actors[0].actor.clone().unwrap();
    assert_eq!((life.incarnation, life.restarts), (2, 0), "{life:?}");
    drop(tc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_declared_dead_rejoins_as_a_new_node_without_its_old_work() {
    let (tc, cluster) = TestCluster::with_workers(&[gpu(), gpu()]).await;
    let ledger = ledger(&cluster).await;
    within("add", ledger.add(5)).await.unwrap();
    let first = ledger.actor().node();
    let host = worker_of(&cluster, first).await;
    let old_pid = within("pid", ledger.pid()).await.unwrap();
    // Frozen: no heartbeats, so the head declares it dead and restarts the actor elsewhere.
    tc.signal_worker(&host, nix::sys::signal::Signal::SIGSTOP);
    until("the head to drop the frozen worker", || async {
        let status = within("status", cluster.status()).await.expect("status");
        status.nodes.iter().all(|n| n.id != first.to_string())
    })
    .await;
    assert_eq!(within("add", ledger.add(1)).await.unwrap(), 6);
    assert_ne!(ledger.actor().node(), first);
    // Thawed, it finds its connection gone, stops what it ran, and joins again as a new node.
    tc.signal_worker(&host, nix::sys::signal::Signal::SIGCONT);
    until("the worker to rejoin", || async {
        let status = within("status", cluster.status()).await.expect("status");
        status
            .nodes
            .iter()
            .any(|n| n.name == host && n.id != first.to_string())
    })
    .await;
    until("its old actor process to be gone", || async {
        !std::path::Path::new(&format!("/proc/{old_pid}")).exists()
    })
    .await;
    assert_eq!(within("totals", ledger.totals()).await.unwrap(), (6, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_a_workers_actors_before_it_leaves() {
    let (tc, cluster) = TestCluster::with_workers(&[gpu(), gpu()]).await;
    let tally = within("spawn", cluster.spawn(Tally::remote(0)))
        .await
        .unwrap();
    for _ in 0..10 {
        within("add", tally.add(1)).await.unwrap();
    }
    let from = tally.actor().node();
    tc.signal_worker(
        &worker_of(&cluster, from).await,
        nix::sys::signal::Signal::SIGTERM,
    );
    until("the worker to leave", || async {
        let status = within("status", cluster.status()).await.expect("status");
        status.nodes.len() == 1
    })
    .await;
    // Its state moved with it (saved when it was sealed), though it never checkpointed before.
    assert_eq!(within("add", tally.add(1)).await.unwrap(), 11);
    assert_ne!(tally.actor().node(), from);
    assert!(!tc.head_log().contains("worker died"), "{}", tc.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_is_not_mistaken_for_a_dead_one() {
    let (tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu()]).await;
    let node = tc.node_id(&cluster, "w0").await;
    // Four CPU-bound tasks on a 2-core machine, each bringing 16 MiB over the worker's
    // connection, for longer than the heartbeat window: heartbeats travel on their own stream.
    let payload = vec![7u8; 16 << 20];
    let load: Vec<_> = (0..8)
        .map(|_| cluster.submit(spin::remote(1_500, payload.clone())))
        .collect();
    for task in load {
        assert_eq!(within("spin", task).await.unwrap(), 16 << 20);
    }
    assert_eq!(
        tc.node_id(&cluster, "w0").await,
        node,
        "still the same node"
    );
    assert!(
        !tc.head_log().contains("declaring the worker dead"),
        "{}",
        tc.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto's S3 server: pip install 'moto[server]' (.ci/run installs it and runs this)"]
async fn checkpoints_in_s3_outlive_the_worker() {
    let s3 = S3Server::start()
        .await
        .expect("moto_server is not installed: pip install 'moto[server]'");
    let (status, body) = s3.request("PUT", "/ember");
    assert_eq!(status, 200, "cannot create the bucket: {body}");
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut tc = TestCluster::start_head(
        "127.0.0.1:0",
        &["--checkpoint-store", "s3://ember/run"],
        &env,
    )
    .await;
    tc.add_worker("w0", &gpu());
    tc.add_worker("w1", &gpu());
    let cluster = tc.connect().await;
    tc.wait_for_nodes(&cluster, 2).await;

    let ledger = ledger(&cluster).await;
    for n in 1..=5 {
        within("add", ledger.add(n)).await.expect("add");
    }
    // The checkpoints are objects in the bucket (the newest three), not files on the head.
    let actor = ledger.actor().id();
    let (status, listing) = s3.request("GET", &format!("/ember?list-type=2&prefix=run/{actor}/"));
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing.matches("<Key>").count(), 3, "{listing}");
    assert!(
        listing.contains(&format!("run/{actor}/00000000000000000005-")),
        "{listing}"
    );
    assert!(!tc.state_dir().join("checkpoints").exists());

    tc.kill_worker(&worker_of(&cluster, ledger.actor().node()).await);
    assert_eq!(within("totals", ledger.totals()).await.unwrap(), (15, 5));
    assert_eq!(ledger.actor().incarnation(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto's S3 server: pip install 'moto[server]' (.ci/run installs it and runs this)"]
async fn checkpoints_in_s3_survive_a_head_restart() {
    let s3 = S3Server::start()
        .await
        .expect("moto_server is not installed: pip install 'moto[server]'");
    let (status, body) = s3.request("PUT", "/ember");
    assert_eq!(status, 200, "cannot create the bucket: {body}");
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = ["--checkpoint-store", "s3://ember/run"];
    let mut tc = TestCluster::start_head("127.0.0.1:0", &store, &env).await;
    tc.add_worker("w0", &gpu());
    tc.add_worker("w1", &gpu());
    let cluster = tc.connect().await;
    tc.wait_for_nodes(&cluster, 2).await;

    let ledger = ledger(&cluster).await;
    for n in 1..=5 {
        within("add", ledger.add(n)).await.expect("add");
    }
    let actor = ledger.actor().id();
    let objects = format!("/ember?list-type=2&prefix=run/{actor}/");
    let keys = |listing: &str| -> Vec<String> {
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next().map(String::from))
            .collect()
    };
    let (status, listing) = s3.request("GET", &objects);
    assert_eq!(status, 200, "{listing}");
    let before = keys(&listing);
    assert_eq!(before.len(), 3, "{listing}");
    assert!(
        before
            .iter()
            .any(|k| k.starts_with(&format!("run/{actor}/00000000000000000005-"))),
        "{listing}"
    );

    tc.kill_head();
    tc.restart_head_with(&store, &env).await;
    // The new head keeps every checkpoint of the actors its journal has.
    let (status, listing) = s3.request("GET", &objects);
    assert_eq!(status, 200, "{listing}");
    assert_eq!(
        keys(&listing),
        before,
        "the checkpoints in the bucket are kept"
    );

    let fresh = tc.connect().await;
    tc.wait_for_nodes(&fresh, 2).await;
    until("the actor is adopted, its checkpoint known", || async {
        let status = within("status", fresh.status()).await.expect("status");
        status.actors.iter().any(|a| {
            a.id == actor.to_string()
                && a.actor.as_ref().is_some_and(|life| {
                    life.state == "alive" && life.incarnation == 1 && life.checkpoint_seq == Some(5)
                })
        })
    })
    .await;
    // Its worker dies: the actor comes back elsewhere from the checkpoint in S3 written before
    // the restart (nothing was called since), with its state.
    let taken: LedgerHandle = within("take over", fresh.actor(actor))
        .await
        .expect("a handle to the actor");
    tc.kill_worker(&worker_of(&fresh, taken.actor().node()).await);
    assert_eq!(
        within("totals", taken.totals())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", tc.logs())),
        (15, 5)
    );
    assert_eq!(taken.actor().incarnation(), 2);
    assert!(!tc.state_dir().join("checkpoints").exists());
}

/// The sequence number of an actor's newest recorded checkpoint, from the head's status.
async fn checkpoint_seq(cluster: &Cluster, actor: ember::ActorId) -> Option<u64> {
    let status = within("status", cluster.status()).await.expect("status");
    status
        .actors
        .iter()
        .find(|a| a.id == actor.to_string())
        .and_then(|a| a.actor.as_ref())
        .and_then(|life| life.checkpoint_seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_and_on_demand_checkpoints_bring_the_state_back() {
    let (mut tc, cluster) = TestCluster::with_workers(&[gpu(), gpu(), gpu()]).await;

    // Every 100 ms while it changes: once recorded, the state survives the worker.
    let meter = within("spawn", cluster.spawn(Meter::remote(0)))
        .await
        .unwrap();
    for n in 1..=4 {
        within("add", meter.add(n)).await.unwrap();
    }
    let id = meter.actor().id();
    until("a timed checkpoint", || async {
        checkpoint_seq(&cluster, id).await.is_some()
    })
    .await;
    tc.kill_worker(&worker_of(&cluster, meter.actor().node()).await);
    assert_eq!(within("add", meter.add(0)).await.unwrap(), 10);

    // On demand only: the handle asks, and gets the checkpoint's number once recorded.
    let tally = within(
        "spawn",
        cluster.spawn(Tally::remote(0).with(|o| o.max_restarts(1).max_task_retries(1))),
    )
    .await
    .unwrap();
    within("add", tally.add(5)).await.unwrap();
    assert_eq!(
        within("checkpoint", tally.actor().checkpoint())
            .await
            .unwrap(),
        1
    );
    assert_eq!(checkpoint_seq(&cluster, tally.actor().id()).await, Some(1));
    within("add", tally.add(1)).await.unwrap();
    tc.kill_worker(&worker_of(&cluster, tally.actor().node()).await);
    assert_eq!(
        within("add", tally.add(0)).await.unwrap(),
        5,
        "back to the checkpoint: the add after it was never saved"
    );

    // A type that cannot checkpoint says so.
    let counter = within("spawn", cluster.spawn(Counter::remote(0)))
        .await
        .unwrap();
    let err = within("checkpoint", counter.actor().checkpoint())
        .await
        .expect_err("Counter does not implement Checkpoint");
    assert_eq!(err.kind(), Some(ErrorKind::BadRequest), "{err}");
    assert!(err.to_string().contains("ember::Checkpoint"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_short_is_not_retried_without_max_task_retries() {
    let (mut tc, cluster) = TestCluster::with_workers(&[gpu(), gpu()]).await;
    let ledger = within(
        "spawn",
        cluster.spawn(Ledger::remote(0).with(|o| o.max_task_retries(0))),
    )
    .await
    .unwrap();
    within("add", ledger.add(1)).await.unwrap();
    let host = worker_of(&cluster, ledger.actor().node()).await;
    let started = tc.scratch().join("slow-add-started");
    let slow = {
        let ledger = ledger.clone();
        let started = started.display().to_string();
        tokio::spawn(async move { ledger.slow_add(started, 5_000, 100).await })
    };
    until("the slow call to run", || {
        let running = started.exists();
        async move { running }
    })
    .await;
    tc.kill_worker(&host);
    let err = within("the cut call", slow)
        .await
        .unwrap()
        .expect_err("not retried");
    assert_eq!(err.kind(), Some(ErrorKind::WorkerDied), "{err}");
    assert!(err.to_string().contains("max_task_retries = 0"), "{err}");
    // The actor itself came back, without the cut call's effect.
    assert_eq!(within("totals", ledger.totals()).await.unwrap(), (1, 1));
}
