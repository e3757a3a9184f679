//! Placement across real processes: a head and three workers (A: 2×H100 80 GiB, B: 1×L4
//! 24 GiB, C: no GPU) on 127.0.0.1. Tasks and actors land where their needs say, fractional
//! actors pack onto one GPU, infeasible requests fail at once, queued requests run when
//! capacity frees or a worker joins (or fail at their pending timeout once no worker left
//! could hold them), and `ember status --json` shows the cluster.

use std::time::{Duration, Instant};

use ember::{Cluster, Options};
use ember_tests::tasks::{self, Counter, CounterHandle};
use ember_tests::{ember_exe, gpus_in_use, run_cli, until, within, TestCluster, WorkerSpec};

fn abc() -> Vec<WorkerSpec> {
    vec![
        WorkerSpec::gpus(2, "H100", "80GiB"),
        WorkerSpec::gpus(1, "L4", "24GiB"),
        WorkerSpec::cpu(),
    ]
}

/// Spawns a Counter holding one whole GPU.
async fn whole_gpu_actor(cluster: &Cluster) -> CounterHandle {
    within(
        "spawning a whole-GPU actor",
        cluster.spawn(Counter::remote(0).with(|o| o.gpus(1.0))),
    )
    .await
    .expect("spawn a whole-GPU actor")
}

/// Runs `call` in a Tokio task, so that the test can see whether it has finished.
fn spawn_run(
    cluster: &Cluster,
    call: ember::TaskCall<tasks::Placed>,
) -> tokio::task::JoinHandle<Result<tasks::Placed, ember::Error>> {
    let c = cluster.clone();
    tokio::spawn(async move { c.run(call).await })
}

/// Waits (bounded) until the head's queue holds `n` requests.
async fn wait_for_queue(cluster: &Cluster, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = within("status", cluster.status()).await.expect("status");
        if status.queue.len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the queue never held {n} requests: {:?}",
            status.queue
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_land_where_their_needs_say() {
    let (tc, cluster) = TestCluster::with_workers(&abc()).await;
    let a = tc.node_id(&cluster, "w0").await;
    let b = tc.node_id(&cluster, "w1").await;

    let (node, gpus, cvd) = within("needs_l4", cluster.run(tasks::needs_l4::remote()))
        .await
        .expect("needs_l4 runs");
    assert_eq!(node, b, "an L4 task runs on the L4 node");
    assert_eq!(gpus, vec![0]);
    assert_eq!(cvd, "0");

    let (node, gpus, _) = within("whole_gpu", cluster.run(tasks::whole_gpu::remote()))
        .await
        .expect("whole_gpu runs");
    assert!(
        node == a || node == b,
        "a whole GPU runs on a GPU node, not {node}"
    );
    assert_eq!(gpus.len(), 1);

    let (node, gpus, _) = within("big_memory", cluster.run(tasks::big_memory::remote()))
        .await
        .expect("big_memory runs");
    assert_eq!(node, a, "60 GiB of GPU memory is only on the H100 node");
    assert_eq!(gpus.len(), 1);

    let (node, gpus, cvd) = within("cpu_only", cluster.run(tasks::cpu_only::remote()))
        .await
        .expect("cpu_only runs");
    assert!(!node.is_empty());
    assert!(gpus.is_empty(), "a CPU task gets no GPU");
    assert_eq!(cvd, "");

    let (node, gpus, _) = within("sleep_ms", cluster.run(tasks::sleep_ms::remote(10)))
        .await
        .expect("sleep_ms runs");
    assert_eq!(node, a, "two GPUs are only on node A");
    assert_eq!(gpus.len(), 2);

    // Infeasible requests fail at once, naming what is missing.
    let started = Instant::now();
    let err = within(
        "4 GPUs",
        cluster.run(tasks::whole_gpu::remote().with(|o| o.gpus(4.0))),
    )
    .await
    .expect_err("no node has 4 GPUs");
    assert_eq!(err.kind(), Some(ember::ErrorKind::Infeasible), "{err}");
    assert!(err.to_string().contains("GPU"), "{err}");
    let err = within(
        "an H200",
        cluster.run(tasks::whole_gpu::remote().with(|o| o.accelerator("H200"))),
    )
    .await
    .expect_err("no node has an H200");
    assert_eq!(err.kind(), Some(ember::ErrorKind::Infeasible), "{err}");
    assert!(err.to_string().contains("H200"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "infeasible requests must fail at once, not wait"
    );

    // `ember status --json` prints the cluster.
    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["status", "--json", "--cluster"])
        .arg(tc.state_dir());
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "ember status failed: {stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("status is JSON");
    for key in ["nodes", "actors", "leases", "jobs", "queue"] {
        assert!(json.get(key).is_some(), "no `{key}` in {json}");
    }
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(3), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarter_actors_pack_onto_one_gpu() {
    let (_tc, cluster) = TestCluster::with_workers(&abc()).await;
    let mut actors = Vec::new();
    let mut places = Vec::new();
    for i in 0..5 {
        let h = within(
            "spawning a quarter-GPU actor",
            cluster.spawn(Counter::remote(i).with(|o| o.gpus(0.25))),
        )
        .await
        .expect("spawn a quarter-GPU actor");
        let (node, gpus, cvd) = within("placed", h.placed()).await.expect("placed");
        assert_eq!(gpus.len(), 1, "a fraction is placed on one GPU");
        assert_eq!(cvd, gpus[0].to_string());
        assert_eq!(within("add", h.add(1)).await.expect("add"), i + 1);
        places.push((node, gpus[0]));
        actors.push(h);
    }
    for p in &places[1..4] {
        assert_eq!(p, &places[0], "four quarters share one GPU: {places:?}");
    }
    assert_ne!(
        places[4], places[0],
        "the fifth quarter opens another GPU: {places:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_request_runs_once_capacity_frees() {
    let (tc, cluster) = TestCluster::with_workers(&abc()).await;
    let b = tc.node_id(&cluster, "w1").await;
    let mut blockers = Vec::new();
    for _ in 0..3 {
        blockers.push(whole_gpu_actor(&cluster).await);
    }
    let on_b = blockers
        .iter()
        .position(|h| h.actor().node().to_string() == b)
        .expect("one blocker holds B's GPU");

    let queued = spawn_run(&cluster, tasks::whole_gpu::remote());
    wait_for_queue(&cluster, 1).await;
    assert!(
        !queued.is_finished(),
        "the task must wait while every GPU is held"
    );

    // Freeing B's GPU lets the queued task run there.
    within("kill", blockers[on_b].actor().kill())
        .await
        .expect("kill the blocker on B");
    let (node, gpus, _) = within("the queued task", queued)
        .await
        .expect("join")
        .expect("the queued task runs");
    assert_eq!(node, b);
    assert_eq!(gpus, vec![0]);
    wait_for_queue(&cluster, 0).await;

    // A task holding both of A's GPUs is queued behind the other blockers; it runs once they go.
    let sleeper = spawn_run(&cluster, tasks::sleep_ms::remote(10));
    wait_for_queue(&cluster, 1).await;
    for (i, h) in blockers.iter().enumerate() {
        if i != on_b {
            within("kill", h.actor().kill())
                .await
                .expect("kill a blocker");
        }
    }
    let (_, gpus, _) = within("the queued sleeper", sleeper)
        .await
        .expect("join")
        .expect("the sleeper runs");
    assert_eq!(gpus.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_worker_receives_queued_work() {
    let (mut tc, cluster) = TestCluster::with_workers(&abc()).await;
    let mut blockers = Vec::new();
    for _ in 0..3 {
        blockers.push(whole_gpu_actor(&cluster).await);
    }
    let queued = spawn_run(
        &cluster,
        tasks::whole_gpu::remote().options(Options::new().gpus(1.0)),
    );
    wait_for_queue(&cluster, 1).await;
    assert!(!queued.is_finished());

    tc.add_worker("late", &WorkerSpec::gpus(1, "A10", "24GiB"));
    tc.wait_for_nodes(&cluster, 4).await;
    let d = tc.node_id(&cluster, "late").await;
    let (node, gpus, _) = within("the queued task", queued)
        .await
        .expect("join")
        .expect("the queued task runs on the new worker");
    assert_eq!(node, d, "the worker that joined takes the queued task");
    assert_eq!(gpus, vec![0]);
    drop(blockers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_clients_actors_free_their_gpus() {
    let (tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(1, "L4", "24GiB")]).await;
    let owner = tc.connect().await;
    let actor = whole_gpu_actor(&owner).await;
    assert_eq!(within("add", actor.add(2)).await.expect("add"), 2);
    let queued = spawn_run(&cluster, tasks::whole_gpu::remote());
    wait_for_queue(&cluster, 1).await;
    assert!(!queued.is_finished());

    // The owner goes away: the head stops its actor and the queued task gets the GPU.
    drop(actor);
    drop(owner);
    let (_, gpus, _) = within("the queued task", queued)
        .await
        .expect("join")
        .expect("the queued task runs once the owner's actor is gone");
    assert_eq!(gpus, vec![0]);
    let status = within("status", cluster.status()).await.expect("status");
    assert!(status.actors.is_empty(), "{:?}", status.actors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_keeps_its_gpus_after_its_client_leaves() {
    let (tc, observer) = TestCluster::with_workers(&[WorkerSpec::gpus(2, "H100", "80GiB")]).await;
    let client = tc.connect().await;
    // The client owns an actor (no resources), so the head's clean-up after the client's
    // departure is visible: the actor disappears.
    let marker = within(
        "spawn the marker actor",
        client.spawn(Counter::remote(0).with(|o| o.gpus(0.0))),
    )
    .await
    .expect("marker actor");
    let started = Instant::now();
    let started_file = tc.scratch().join("started").display().to_string();
    let running = client.submit(tasks::mark_then_sleep::remote(started_file.clone(), 6_000));
    let observer = &observer;
    let started_file = &started_file;
    until("the task to start", || async move {
        std::path::Path::new(started_file).exists()
    })
    .await;
    assert_eq!(gpus_in_use(observer).await, vec![100, 100]);

    // The client leaves while its task runs.
    drop(running);
    drop(marker);
    client.shutdown().await;
    until("the head to drop the client's actor", || async move {
        let status = within("status", observer.status()).await.expect("status");
        status.actors.is_empty()
    })
    .await;
    // The task still runs on the worker (it sleeps 6 s): its GPUs stay reserved.
    let in_use = gpus_in_use(observer).await;
    if started.elapsed() < Duration::from_secs(5) {
        assert_eq!(in_use, vec![100, 100], "released while the task still runs");
    }
    // Once it ends, they return.
    until("the task's GPUs to return", || async move {
        gpus_in_use(observer).await == vec![0, 0]
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_and_a_task_left_with_no_fitting_worker_fail_at_their_pending_timeout() {
    let (mut tc, cluster) = TestCluster::with_workers(&[
        WorkerSpec::gpus(1, "A100", "80GiB"),
        WorkerSpec::gpus(1, "H100", "80GiB"),
    ])
    .await;
    let a100 = || {
        Options::new()
            .gpus(1.0)
            .accelerator("A100")
            .pending_timeout(Duration::from_secs(2))
    };
    let _blocker = within(
        "spawning the actor that holds the A100",
        cluster.spawn(Counter::remote(0).with(|o| o.gpus(1.0).accelerator("A100"))),
    )
    .await
    .expect("spawn on the A100");
    let c = cluster.clone();
    let spawn = tokio::spawn(async move {
        let counter = Counter::remote(1).with(|o| {
            o.gpus(1.0)
                .accelerator("A100")
                .pending_timeout(Duration::from_secs(2))
        });
        c.spawn(counter).await.map(|_| ())
    });
    let task = spawn_run(&cluster, tasks::whole_gpu::remote().options(a100()));
    wait_for_queue(&cluster, 2).await;
    let status = within("status", cluster.status()).await.expect("status");
    for w in &status.queue {
        assert!(
            w.waiting
                .as_deref()
                .is_some_and(|r| r.starts_with("waiting for resources: no live node has")),
            "{w:?}"
        );
    }

    tc.kill_worker("w0");
    let cluster_ref = &cluster;
    until("both to be shown infeasible", || async move {
        let status = within("status", cluster_ref.status())
            .await
            .expect("status");
        status.queue.len() == 2
            && status.queue.iter().all(|w| {
                w.fails_in_ms.is_some()
                    && w.waiting.as_deref().is_some_and(|r| {
                        r.starts_with("infeasible: no GPU has accelerator type A100")
                    })
            })
    })
    .await;
    let spawned = within("the spawn to fail", spawn).await.expect("join");
    let ran = within("the task to fail", task).await.expect("join");
    for (what, e) in [
        ("spawn", spawned.expect_err("no A100 is left")),
        ("task", ran.map(|_| ()).expect_err("no A100 is left")),
    ] {
        assert_eq!(e.kind(), Some(ember::ErrorKind::Infeasible), "{what}: {e}");
        assert!(
            e.to_string()
                .contains("no live node can hold it: no GPU has accelerator type A100")
                && e.to_string().contains("within 2000 ms"),
            "{what}: {e}"
        );
    }
}
