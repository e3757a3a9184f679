//! Workers started as people start them, with `ember worker`, and as programs start them
//! (`EMBER_ROLE=worker`, which a local cluster uses): both run the one worker entry point
//! (`ember_worker::role::run_worker`) on the same runtime. Each hosts executors (task
//! executors and actors, and executors started ahead for the next actors) that stay up while
//! the worker idles, and that die with it when it is SIGKILLed, even frozen: no orphan
//! executor keeps answering. An actor takes the executor started ahead only for its own GPUs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ember::{GpuActor, Options};
use ember_tests::tasks::{self, Counter};
use ember_tests::{until, within, TestCluster, WorkerSpec};
use nix::sys::signal::Signal;

/// The executor processes of the worker named `name` (its processes but itself).
fn executors(tc: &TestCluster, name: &str) -> BTreeSet<u32> {
    let worker = tc.worker_pid(name);
    tc.processes_of(name)
        .into_iter()
        .filter(|pid| *pid != worker)
        .collect()
}

/// Sends `sig` to process `pid`, which may be gone already.
fn signal(pid: u32, sig: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Whether something still accepts connections on the Unix socket at `path`.
async fn answers(path: &str) -> bool {
    tokio::net::UnixStream::connect(path).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_outlive_idle_time_and_die_with_their_sigkilled_worker() {
    let mut tc = TestCluster::start().await;
    // The `ember` binary's own worker: it hosts the built-in GPU actor, on T4s.
    tc.add_cli_worker("cli", &WorkerSpec::gpus(1, "T4", "16GiB"));
    // The tests' program as a worker: it has the tasks and actors of `ember_tests::tasks`.
    tc.add_worker("program", &WorkerSpec::gpus(1, "H100", "80GiB"));
    let cluster = tc.connect().await;
    tc.wait_for_nodes(&cluster, 2).await;
    let cli_node = tc.node_id(&cluster, "cli").await;
    let program_node = tc.node_id(&cluster, "program").await;

    // An actor on the `ember worker`.
    let gpu = within(
        "a GPU actor on the `ember worker`",
        cluster.spawn(GpuActor::remote().with(|o| o.gpus(0.5).accelerator("T4"))),
    )
    .await
    .expect("the GPU actor starts");
    assert_eq!(gpu.actor().location().node.to_string(), cli_node);
    gpu.put("x", vec![1.0f32, 2.0, 3.0]).await.expect("put");
    // Tasks (a CPU-only one and one on a GPU share: two task executors) and an actor on the
    // program's worker.
    let (node, _, _) = within("a CPU task", cluster.run(tasks::cpu_only::remote()))
        .await
        .expect("the CPU task runs");
    assert_eq!(node, program_node);
    let (node, gpus, _) = within("a GPU task", cluster.run(tasks::quarter_gpu::remote()))
        .await
        .expect("the GPU task runs");
    assert_eq!((node, gpus), (program_node.clone(), vec![0]));
    let counter = within(
        "an actor on the program's worker",
        cluster.spawn(Counter::remote(1).options(Options::new().gpus(0.5))),
    )
    .await
    .expect("the counter starts");
    assert_eq!(within("add", counter.add(1)).await.unwrap(), 2);
    let counter_pid = within("pid", counter.pid()).await.unwrap();

    // Each worker also starts an executor ahead for its next actor on the same GPUs.
    until("each worker's executors to be up", || async {
        executors(&tc, "cli").len() == 2 && executors(&tc, "program").len() == 4
    })
    .await;
    let started = [executors(&tc, "cli"), executors(&tc, "program")];
    assert!(
        started[1].contains(&counter_pid),
        "task executors, the counter's and a warm one: {started:?}"
    );

    // Idle longer than a blocking-pool thread lives (10 s): executors forked from such a
    // thread would die with it, their workers alive.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        [executors(&tc, "cli"), executors(&tc, "program")],
        started,
        "executors died while their workers lived"
    );
    let y: Vec<f32> = within("get", gpu.get("x")).await.expect("get");
    assert_eq!(y, vec![1.0, 2.0, 3.0]);
    assert_eq!(within("add", counter.add(1)).await.unwrap(), 3);
    within("a CPU task again", cluster.run(tasks::cpu_only::remote()))
        .await
        .expect("the CPU task runs again");

    // Freeze every executor, then SIGKILL both workers. A frozen executor cannot notice that
    // its worker's socket closed and exit by itself, and a killed worker cleans nothing up:
    // only the kernel (`PR_SET_PDEATHSIG`, armed by the thread that forked it) can end it.
    let sockets = [
        gpu.actor().location().endpoints.local_socket.clone(),
        counter.actor().location().endpoints.local_socket.clone(),
    ];
    for socket in &sockets {
        assert!(
            answers(socket).await,
            "{socket} answers while its worker lives"
        );
    }
    let frozen: Vec<u32> = started.iter().flatten().copied().collect();
    for pid in &frozen {
        signal(*pid, Signal::SIGSTOP);
    }
    tc.kill_worker("cli");
    tc.kill_worker("program");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<u32> = ["cli", "program"]
            .iter()
            .flat_map(|name| tc.processes_of(name))
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for pid in &left {
                signal(*pid, Signal::SIGKILL);
            }
            panic!("executors outlived their SIGKILLed workers: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A process that is gone from the process table may still be closing its files: its
    // socket stops answering a moment later.
    for socket in &sockets {
        until(&format!("{socket} to stop answering"), || async {
            !answers(socket).await
        })
        .await;
    }
    until("the head to forget both workers", || async {
        let status = within("status", cluster.status()).await.expect("status");
        status.nodes.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_takes_the_executor_started_ahead_only_for_its_own_gpus() {
    let mut tc = TestCluster::start().await;
    tc.add_worker("two", &WorkerSpec::gpus(2, "H100", "80GiB"));
    let cluster = tc.connect().await;
    tc.wait_for_nodes(&cluster, 1).await;
    let node = tc.node_id(&cluster, "two").await;
    let half = || Counter::remote(0).options(Options::new().gpus(0.5));

    // No actor yet, so no executor: the first actor's is started for it.
    assert!(executors(&tc, "two").is_empty());
    let first = within("the first actor", cluster.spawn(half()))
        .await
        .expect("the first actor starts");
    let first_pid = within("pid", first.pid()).await.unwrap();
    let (_, first_gpus, first_visible) = within("placed", first.placed()).await.unwrap();
    assert_eq!(first_gpus.len(), 1);
    assert_eq!(first_visible, first_gpus[0].to_string());

    // Then one more is started ahead, for that GPU set, hosting nothing yet.
    until("an executor started ahead", || async {
        executors(&tc, "two").len() == 2
    })
    .await;
    let warm: Vec<u32> = executors(&tc, "two")
        .into_iter()
        .filter(|pid| *pid != first_pid)
        .collect();
    assert_eq!(warm.len(), 1, "{warm:?}");

    // The second half packs onto the first's GPU: it takes that executor, and has its own
    // allocation and its own identity.
    let second = within("the second actor", cluster.spawn(half()))
        .await
        .expect("the second actor starts");
    assert_eq!(within("pid", second.pid()).await.unwrap(), warm[0]);
    assert_eq!(
        within("placed", second.placed()).await.unwrap(),
        (node.clone(), first_gpus.clone(), first_visible.clone())
    );
    assert_eq!(second.actor().allocation().gpus.len(), 1);
    assert_eq!(
        second.actor().allocation().gpus[0].index,
        first_gpus[0],
        "{:?}",
        second.actor().allocation()
    );
    assert_ne!(
        second.actor().location().endpoints.peer_fingerprint,
        first.actor().location().endpoints.peer_fingerprint,
        "two actors share a TLS identity"
    );

    // That GPU is full: the third goes to the other one, in an executor that sees only that
    // GPU, never the one started ahead for the first GPU.
    until("the next executor started ahead", || async {
        executors(&tc, "two").len() == 3
    })
    .await;
    let before: BTreeSet<u32> = executors(&tc, "two");
    let third = within("the third actor", cluster.spawn(half()))
        .await
        .expect("the third actor starts");
    let third_pid = within("pid", third.pid()).await.unwrap();
    assert!(
        !before.contains(&third_pid),
        "the third actor took an executor started for another GPU: {third_pid} in {before:?}"
    );
    let (third_node, third_gpus, third_visible) = within("placed", third.placed()).await.unwrap();
    assert_eq!(third_node, node);
    assert_eq!(third_gpus.len(), 1);
    assert_ne!(third_gpus, first_gpus);
    assert_eq!(third_visible, third_gpus[0].to_string());
    for (a, b) in [(&first, &third), (&second, &third)] {
        assert_ne!(
            a.actor().location().endpoints.peer_fingerprint,
            b.actor().location().endpoints.peer_fingerprint,
            "two actors share a TLS identity"
        );
    }
    // Each answers as itself.
    assert_eq!(within("add", first.add(1)).await.unwrap(), 1);
    assert_eq!(within("add", second.add(2)).await.unwrap(), 2);
    assert_eq!(within("add", third.add(3)).await.unwrap(), 3);
}
