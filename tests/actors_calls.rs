//! Direct calls to actors: through the actor's Unix socket from the same machine (the default)
//! and over QUIC (as from another machine). Both give the same answers, both refuse a wrong
//! token, and both report an actor whose process dies mid-call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember::ErrorKind;
use ember_core::proto::{decode, encode, LocalCall};
use ember_tests::recording::RecordingArgs;
use ember_tests::tasks::{Counter, CounterHandle, Ledger};
use ember_tests::{until, within, TestCluster, WorkerSpec};

async fn counter(cluster: &ember::Cluster) -> CounterHandle {
    within("spawn", cluster.spawn(Counter::remote(10)))
        .await
        .expect("a counter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_and_quic_calls_agree() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(1, "H100", "80GiB")]).await;

    let local = counter(&cluster).await;
    assert!(local.actor().is_same_host(), "same machine: Unix socket");

    cluster.set_same_host_calls(false);
    let remote = counter(&cluster).await;
    assert!(!remote.actor().is_same_host(), "forced: QUIC");

    for handle in [&local, &remote] {
        assert_eq!(within("add", handle.add(5)).await.unwrap(), 15);
        // Many calls in flight at once come back in order of the actor's execution.
        let calls: Vec<_> = (0..200).map(|_| handle.add(1)).collect();
        let mut results: Vec<u64> = futures_results(calls).await;
        results.sort_unstable();
        assert_eq!(results, (16..216).collect::<Vec<u64>>());
        // An unknown method is an error for the caller; the actor keeps serving.
        let err = within("bad", handle.actor().call::<_, u64>("no_such", &()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::BadRequest), "{err}");
        assert_eq!(within("add", handle.add(0)).await.unwrap(), 215);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_calls_arguments_are_made_for_whether_the_actor_shares_this_machine() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(1, "H100", "80GiB")]).await;
    let handle = counter(&cluster).await;
    let add = |n: u64| RecordingArgs::new(encode(&(n,)).expect("encodes").to_vec());

    let here = add(5);
    let out = within("add", handle.actor().call_args("add", &here))
        .await
        .expect("adds");
    assert_eq!(decode::<u64>(&out).unwrap(), 15);
    assert_eq!(here.asked(), [true], "the actor runs on this machine");

    // Same-machine calls off: made as for another machine, even on the handle's socket.
    cluster.set_same_host_calls(false);
    let elsewhere = add(1);
    let out = within("add", handle.actor().call_args("add", &elsewhere))
        .await
        .expect("adds");
    assert_eq!(decode::<u64>(&out).unwrap(), 16);
    assert_eq!(elsewhere.asked(), [false]);

    // Arguments that cannot be made fail the call, saying why; the actor serves on.
    let err = within(
        "failing",
        handle.actor().call_args("add", &RecordingArgs::failing()),
    )
    .await
    .expect_err("cannot be made");
    assert!(matches!(err, ember::Error::Args(_)), "{err}");
    assert_eq!(within("add", handle.add(0)).await.unwrap(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_retried_after_its_actor_restarts_asks_for_its_arguments_again() {
    let (tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(1, "H100", "80GiB")]).await;
    // Restarts without limit and retries the call that was running.
    let ledger = within("spawn", cluster.spawn(Ledger::remote(0)))
        .await
        .expect("a ledger");
    let pid = within("pid", ledger.pid()).await.unwrap();
    let started = tc.scratch().join("slow-add-started");
    let args = Arc::new(RecordingArgs::new(
        encode(&(started.display().to_string(), 2_000u64, 7u64))
            .expect("encodes")
            .to_vec(),
    ));
    let slow = {
        let (actor, args) = (ledger.actor().clone(), args.clone());
        tokio::spawn(async move { actor.call_args("slow_add", &*args).await })
    };
    until("the slow call to run", || {
        let running = started.exists();
        async move { running }
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the actor's process");
    let out = within("the retried call", slow)
        .await
        .expect("joined")
        .expect("retried on the next incarnation");
    assert_eq!(decode::<u64>(&out).unwrap(), 7);
    assert_eq!(args.asked(), [true, true], "asked once per attempt");
}

async fn futures_results<F, T>(calls: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = Result<T, ember::Error>>,
{
    let mut out = Vec::new();
    for r in within("batch", futures::future::join_all(calls)).await {
        out.push(r.expect("a call"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actor_socket_refuses_a_wrong_token() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(1, "H100", "80GiB")]).await;
    let handle = counter(&cluster).await;
    let socket = handle.actor().location().endpoints.local_socket.clone();

    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect");
    let hello = ember_core::proto::Hello::client("not-the-token");
    ember_core::proto::write_hello(&mut stream, &hello)
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let welcome: ember_core::proto::Welcome = within(
        "welcome",
        ember_core::proto::read_frame(&mut stream, 1 << 16),
    )
    .await
    .unwrap()
    .expect("an answer");
    match welcome {
        ember_core::proto::Welcome::Refused { reason } => assert!(reason.contains("token")),
        other => panic!("a wrong token was accepted: {other:?}"),
    }
    // A call sent anyway is never run.
    let call = LocalCall {
        id: 1,
        call: ember_core::proto::ActorCall {
            actor: handle.actor().id(),
            caller: 1,
            seq: 1,
            method: "add".into(),
            args: ember_core::proto::encode(&(1000u64,)).unwrap().to_vec(),
        },
    };
    let _ = ember_core::proto::write_frame(&mut stream, &call).await;
    assert_eq!(within("add", handle.add(0)).await.unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_killed_mid_call_is_reported_on_both_paths() {
    let (_tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(1, "H100", "80GiB")]).await;
    for same_host in [true, false] {
        cluster.set_same_host_calls(same_host);
        let handle = counter(&cluster).await;
        assert_eq!(handle.actor().is_same_host(), same_host);
        let pid = within("pid", handle.pid()).await.unwrap();
        let slow = {
            let handle = handle.clone();
            tokio::spawn(async move { handle.slow_add(60_000, 1).await })
        };
        // The call is running once the actor's thread sleeps; then its process is killed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the actor's process");
        let err = within("the failed call", slow)
            .await
            .expect("joined")
            .expect_err("the call cannot succeed");
        assert_eq!(err.kind(), Some(ErrorKind::WorkerDied), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        // The head frees the dead actor's GPU share: a new counter fits on the one GPU again.
        let again = counter(&cluster).await;
        assert_eq!(within("add", again.add(1)).await.unwrap(), 11);
        again.actor().kill().await.expect("kill");
    }
}
