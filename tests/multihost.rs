//! Two hosts on one machine: the head and the client here, a worker in a network namespace of
//! its own behind a veth pair. The worker joins over the link with its default bind address,
//! runs a task, and hosts an actor that the client calls over QUIC at the worker's address.
//!
//! Needs root and iproute2, so it is `#[ignore]`d in the plain suite; `.ci/run` runs it with
//! `--ignored` where network namespaces can be made.

use ember::Options;
use ember_tests::tasks::{self, Counter};
use ember_tests::{within, TestCluster, TestHost, WorkerSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and iproute2 for network namespaces; .ci/run runs it with --ignored"]
async fn a_worker_on_another_host_joins_and_serves_over_the_link() {
    let host = TestHost::create().expect("a network namespace (needs root and iproute2)");
    let mut tc = TestCluster::start_on(&format!("{}:0", host.local_ip)).await;
    tc.add_worker_in(
        "remote",
        &WorkerSpec::gpus(1, "H100", "80GiB"),
        Some(&host.ns),
    );
    let cluster = tc.connect().await;
    tc.wait_for_nodes(&cluster, 1).await;

    // A task placed on the remote worker runs there with its GPU.
    let (node, gpus, visible) = within(
        "a task on the remote worker",
        cluster.run(tasks::quarter_gpu::remote()),
    )
    .await
    .expect("the task runs");
    assert_eq!(node, tc.node_id(&cluster, "remote").await);
    assert_eq!((gpus, visible), (vec![0], "0".to_string()));

    // Its actor listens on the remote host's address and answers over QUIC.
    cluster.set_same_host_calls(false);
    let counter = within(
        "an actor on the remote worker",
        cluster.spawn(Counter::remote(1).options(Options::new().gpus(0.5))),
    )
    .await
    .expect("the actor starts");
    let addr = counter.actor().location().endpoints.peer_addr.clone();
    assert!(
        addr.starts_with(&format!("{}:", host.remote_ip)),
        "actor endpoint {addr} is not on the remote host {}",
        host.remote_ip
    );
    assert!(!counter.actor().is_same_host());
    assert_eq!(
        within("a call over the link", counter.add(2))
            .await
            .unwrap(),
        3
    );
}
