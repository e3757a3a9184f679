//! Refusals and failures across real processes: wrong tokens and fingerprints, hellos of
//! another protocol version or of a role the head does not take, unknown task names, malformed
//! and oversized frames, tasks that fail or panic, and a worker killed in the
//! middle of a call. Each is an error for that peer or call only; the cluster keeps serving.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ember::{Cluster, Options, TaskCall};
use ember_core::proto::{
    read_frame, write_hello, ClientReply, ErrorKind, Hello, HelloRole, PeerHello, Welcome,
    WorkerHello, HELLO_LIMIT, MAX_FRAME, PROTOCOL_VERSION,
};
use ember_core::resources::NodeResources;
use ember_core::security::{
    client_config, connect_with_hello, ClusterFile, ConnectError, Fingerprint, SERVER_NAME,
};
use ember_tests::tasks;
use ember_tests::{run_cli, until, within, TestCluster, WorkerSpec};

fn one_gpu_worker() -> Vec<WorkerSpec> {
    vec![WorkerSpec::gpus(1, "H100", "80GiB")]
}

/// Checks that a quarter-GPU task still runs.
async fn still_serving(cluster: &Cluster) {
    let (node, gpus, _) = within("a normal task", cluster.run(tasks::quarter_gpu::remote()))
        .await
        .expect("the cluster keeps serving");
    assert!(!node.is_empty());
    assert_eq!(gpus.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_or_fingerprint_is_refused() {
    let (tc, cluster) = TestCluster::with_workers(&one_gpu_worker()).await;

    let wrong_token = ClusterFile {
        token: "not-the-token".into(),
        ..tc.file.clone()
    };
    let err = within(
        "connecting with a wrong token",
        Cluster::connect(wrong_token),
    )
    .await
    .expect_err("a wrong token is refused");
    assert!(err.to_string().contains("token"), "{err}");

    let wrong_fingerprint = ClusterFile {
        fingerprint: Fingerprint([7; 32]),
        ..tc.file.clone()
    };
    let err = within(
        "connecting with a wrong fingerprint",
        Cluster::connect(wrong_fingerprint),
    )
    .await
    .expect_err("a wrong fingerprint is refused");
    assert!(err.to_string().contains("not the cluster's"), "{err}");

    still_serving(&cluster).await;
}

/// A hello of each role (a worker, a client, a group peer) for this cluster, of `version`.
fn hellos(token: &str, version: u32) -> Vec<Hello> {
    let worker = HelloRole::Worker(Box::new(WorkerHello {
        name: "from-elsewhere".into(),
        resources: NodeResources {
            cpu_millis: 1000,
            gpus: Vec::new(),
            custom: Vec::new(),
            labels: Vec::new(),
        },
        task_types: Vec::new(),
        actor_types: Vec::new(),
        address: "127.0.0.1:9".into(),
        rejoin: None,
        launch: None,
    }));
    let peer = HelloRole::Peer(PeerHello {
        group: "g".into(),
        generation: 1,
        from: 1,
        to: 0,
    });
    [worker, HelloRole::Client, peer]
        .into_iter()
        .map(|role| Hello {
            version,
            ..Hello::new(token, role)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_refuses_another_protocol_version_and_a_peer_naming_why() {
    let (tc, cluster) = TestCluster::with_workers(&[WorkerSpec::cpu()]).await;
    let endpoint =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("endpoint");
    let say = async |hello: &Hello| {
        within(
            "the head's answer",
            connect_with_hello(&endpoint, tc.file.address, tc.file.fingerprint, hello),
        )
        .await
        .map(|_| ())
    };

    // Another version, newer or older, is refused with both versions named, whatever the role.
    for version in [PROTOCOL_VERSION + 1, PROTOCOL_VERSION - 1] {
        for hello in hellos(&tc.file.token, version) {
            match say(&hello).await {
                Err(ConnectError::Refused { reason, .. }) => assert!(
                    reason.contains(&format!("protocol version {version} "))
                        && reason.contains(&format!("cluster's version {PROTOCOL_VERSION}")),
                    "{hello:?}: {reason}"
                ),
                other => panic!("{hello:?} was not refused for its version: {other:?}"),
            }
        }
    }

    // A group peer with the right token is refused for what it is, not for its token.
    let peer = hellos(&tc.file.token, PROTOCOL_VERSION)
        .pop()
        .expect("a peer");
    match say(&peer).await {
        Err(ConnectError::Refused { reason, .. }) => {
            assert_eq!(reason, "a group peer cannot connect to the head")
        }
        other => panic!("a peer was not refused for its role: {other:?}"),
    }
    // A client of this version is welcomed on the same endpoint.
    say(&Hello::client(tc.file.token.clone()))
        .await
        .expect("a client of this version is welcomed");

    let status = within("status", cluster.status()).await.expect("status");
    assert_eq!(status.nodes.len(), 1, "no hello above joined a node");
    within("a task", cluster.run(tasks::cpu_only::remote()))
        .await
        .expect("the cluster keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_with_wrong_token_exits_with_an_error() {
    let (tc, cluster) = TestCluster::with_workers(&one_gpu_worker()).await;
    let mut config = tc.worker_config("intruder", &WorkerSpec::cpu());
    config.token = "not-the-token".into();
    let cmd = tokio::process::Command::from(TestCluster::worker_command(&config));
    let (code, _, stderr) = run_cli(cmd).await;
    assert_ne!(code, 0, "a worker with a wrong token must fail: {stderr}");
    assert!(stderr.contains("token"), "stderr: {stderr}");
    let status = within("status", cluster.status()).await.expect("status");
    assert_eq!(status.nodes.len(), 1, "the intruder did not join");
    still_serving(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_is_an_error() {
    let (_tc, cluster) = TestCluster::with_workers(&one_gpu_worker()).await;
    let call = TaskCall::<String>::new("ember_tests::tasks::no_such_task", &(), Options::new());
    let err = within("an unknown task", cluster.run(call))
        .await
        .expect_err("an unknown task fails");
    assert_eq!(err.kind(), Some(ErrorKind::Unknown), "{err}");
    assert!(err.to_string().contains("no worker can run task"), "{err}");
    still_serving(&cluster).await;
}

/// Sends `bytes` raw on a new stream of `conn` and reads the head's reply.
async fn raw_request(conn: &quinn::Connection, bytes: &[u8]) -> Option<ClientReply> {
    let (mut send, mut recv) = within("open a stream", conn.open_bi())
        .await
        .expect("open a stream");
    // The head may stop reading once it has seen the length: ignore write errors.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    within(
        "the head's reply",
        read_frame::<_, ClientReply>(&mut recv, MAX_FRAME),
    )
    .await
    .expect("a well-formed reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_get_errors_and_the_head_keeps_serving() {
    let (tc, cluster) = TestCluster::with_workers(&one_gpu_worker()).await;

    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("endpoint");
    endpoint.set_default_client_config(client_config(tc.file.fingerprint).expect("tls"));
    let conn = within(
        "connecting",
        endpoint
            .connect(tc.file.address, SERVER_NAME)
            .expect("connect"),
    )
    .await
    .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("hello stream");
    let hello = Hello::client(tc.file.token.clone());
    write_hello(&mut send, &hello).await.expect("hello");
    let _ = send.finish();
    let welcome = within("welcome", read_frame::<_, Welcome>(&mut recv, HELLO_LIMIT))
        .await
        .expect("welcome");
    assert!(
        matches!(welcome, Some(Welcome::Accepted { .. })),
        "{welcome:?}"
    );

    // Garbage with a valid length prefix.
    let mut garbage = 16u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xAB; 16]);
    match raw_request(&conn, &garbage).await {
        Some(ClientReply::Error(e)) => {
            assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
            assert!(
                e.to_string().contains("bad request") && e.to_string().contains("malformed"),
                "{e}"
            );
        }
        other => panic!("expected an error reply, got {other:?}"),
    }

    // A length over the limit.
    let oversized = ((MAX_FRAME as u32) + 1).to_le_bytes();
    match raw_request(&conn, &oversized).await {
        Some(ClientReply::Error(e)) => {
            assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
            assert!(e.to_string().contains("over the limit"), "{e}");
        }
        other => panic!("expected an error reply, got {other:?}"),
    }

    // The same raw connection and other clients are still served.
    match raw_request(&conn, &frame(&ember_core::proto::ClientRequest::Status)).await {
        Some(ClientReply::Status(status)) => assert!(!status.nodes.is_empty(), "{status:?}"),
        other => panic!("expected a status reply, got {other:?}"),
    }
    still_serving(&cluster).await;
    conn.close(0u32.into(), b"done");
}

/// A request as a frame.
fn frame(req: &ember_core::proto::ClientRequest) -> Vec<u8> {
    let body = ember_core::proto::encode(req).expect("encode");
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_panicking_tasks_report_to_the_caller() {
    let (_tc, cluster) = TestCluster::with_workers(&one_gpu_worker()).await;
    let err = within("fails", cluster.run(tasks::fails::remote()))
        .await
        .expect_err("the task fails");
    assert_eq!(err.kind(), Some(ErrorKind::User), "{err}");
    assert!(
        err.to_string().contains("the task failed on purpose"),
        "{err}"
    );
    still_serving(&cluster).await;

    let err = within("panics", cluster.run(tasks::panics::remote()))
        .await
        .expect_err("the task panics");
    assert!(
        err.to_string().contains("the task panicked on purpose"),
        "{err}"
    );
    still_serving(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_call_is_reported_and_others_keep_serving() {
    let (mut tc, cluster) = TestCluster::with_workers(&[
        WorkerSpec::gpus(2, "H100", "80GiB"),
        WorkerSpec::gpus(1, "L4", "24GiB"),
    ])
    .await;
    let a = tc.node_id(&cluster, "w0").await;
    let c = cluster.clone();
    let call = tokio::spawn(async move { c.run(tasks::sleep_ms::remote(120_000)).await });

    // Wait (bounded) until the long task runs on A.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = within("status", cluster.status()).await.expect("status");
        if status
            .leases
            .iter()
            .any(|t| t.node.as_deref() == Some(a.as_str()))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the task never ran: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the worker hand the task to its executor.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tc.kill_worker("w0");
    let killed = Instant::now();
    let err = within("the killed call", call)
        .await
        .expect("join")
        .expect_err("the call fails");
    assert_eq!(err.kind(), Some(ErrorKind::WorkerDied), "{err}");
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "the failure took {:?}",
        killed.elapsed()
    );
    // The dead worker's executors do not outlive it (they would keep using its GPUs).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = tc.processes_of("w0");
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed worker's executors still run: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (node, _, _) = within("a task on B", cluster.run(tasks::needs_l4::remote()))
        .await
        .expect("the other worker keeps serving");
    assert_eq!(node, tc.node_id(&cluster, "w1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_declared_dead_and_the_rest_keep_serving() {
    let (tc, cluster) = TestCluster::with_workers(&[
        WorkerSpec::gpus(1, "H100", "80GiB"),
        WorkerSpec::gpus(1, "H100", "80GiB"),
    ])
    .await;
    let frozen = tc.node_id(&cluster, "w0").await;
    // Frozen, the worker sends no heartbeats; its QUIC connection stays open, so only the
    // head's heartbeat watchdog (2 s) can notice.
    tc.signal_worker("w0", nix::sys::signal::Signal::SIGSTOP);
    let started = Instant::now();
    until("the head to drop the silent worker", || async {
        let status = within("status", cluster.status()).await.expect("status");
        status.nodes.iter().all(|n| n.id != frozen)
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "declared dead before the heartbeat window: {:?}",
        started.elapsed()
    );
    still_serving(&cluster).await;
    tc.signal_worker("w0", nix::sys::signal::Signal::SIGCONT);
}
