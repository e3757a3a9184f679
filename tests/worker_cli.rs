//! Workers started as people start them, with `ember worker`, and as programs start them
//! (`EMBER_ROLE=worker`, which a local cluster uses): both run the one worker entry point
//! (`ember_worker::role::run_worker`) on the same runtime. Each hosts executors (task
//! executors and actors) that stay up while the worker idles, and that die with it when it is
//! SIGKILLed, even frozen: no orphan executor keeps answering.

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

    let started = [executors(&tc, "cli"), executors(&tc, "program")];
    assert_eq!(started[0].len(), 1, "the GPU actor's executor: {started:?}");
    assert!(
        started[1].len() >= 2 && started[1].contains(&counter_pid),
        "task executors and the counter's: {started:?}"
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
    for socket in &sockets {
        assert!(!answers(socket).await, "{socket} still answers");
    }
    until("the head to forget both workers", || async {
        let status = within("status", cluster.status()).await.expect("status");
        status.nodes.is_empty()
    })
    .await;
}
