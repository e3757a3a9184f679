//! Spot notices on an autoscaled cluster (the local provider): a node given notice is
//! replaced at once by a node of its type, its checkpointing actor moves there with its state
//! and no answered call lost, and the noticed node's instance is stopped once it has left.

use std::time::Duration;

use ember::{Cluster, LocalOptions};
use ember_core::resources::{GpuDevice, NodeResources};
use ember_head::autoscale::{NodeType, Policy};
use ember_tests::tasks::Tally;
use ember_tests::{testbed_exe, until, within};

fn spot_h100() -> NodeType {
    NodeType {
        name: "spot-h100".into(),
        resources: NodeResources {
            cpu_millis: 2_000,
            gpus: vec![GpuDevice {
                index: 0,
                uuid: "logical-0".into(),
                name: "H100".into(),
                memory: 80 << 30,
                accelerator: "H100".into(),
                logical: true,
            }],
            custom: Vec::new(),
            labels: Vec::new(),
        },
        min: 1,
        max: 2,
        warm: 0,
        price_micros_per_hour: 1_200_000,
        spot: true,
        idle_timeout: Duration::from_secs(600),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_replaces_the_node_at_once_and_its_actor_moves_with_its_state() {
    let mut options = LocalOptions::new(0);
    options.worker_exe = Some(testbed_exe());
    options.autoscale = Some(Policy {
        types: vec![spot_h100()],
        max_nodes: 2,
        upscaling_speed: 1.0,
        launch_timeout: Duration::from_secs(60),
        utilisation: None,
    });
    let cluster = within("an autoscaled local cluster", Cluster::local(options))
        .await
        .expect("a cluster");
    // The type's min launches its first node.
    within(
        "the first node",
        cluster.wait_for_nodes(1, Duration::from_secs(60)),
    )
    .await
    .expect("one node");
    let tally = within("spawn", cluster.spawn(Tally::remote(0)))
        .await
        .expect("a tally");
    let first = tally.actor().node();
    let adder = {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut answered = 0u64;
            for _ in 0..200 {
                tally.add(1).await.expect("an add during the notice");
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

    let moved = within(
        "the drain on notice",
        cluster.drain_on_notice(first, Duration::from_secs(20)),
    )
    .await
    .expect("drained on notice");
    assert_eq!(moved, 1);
    let answered = within("adder", adder).await.unwrap();
    assert_eq!(
        within("total", tally.add(0)).await.unwrap(),
        answered,
        "every answered add survived the move"
    );
    let second = tally.actor().node();
    assert_ne!(second, first);

    let status = within("status", cluster.status()).await.unwrap();
    let a = status.autoscaler.expect("the autoscaler's status");
    let replacing = format!("replacing {first} (notice: gone within 20 s)");
    assert!(
        a.decisions.iter().any(|d| d.decision.ends_with(&replacing)),
        "the replacement was launched for the notice: {:?}",
        a.decisions
    );
    assert_eq!(a.nodes.len(), 1, "{:?}", a.nodes);
    assert_eq!(a.nodes[0].node, second);
    assert_eq!(a.nodes[0].node_type, "spot-h100");
    // The noticed node has left and its worker process is stopped.
    until("the noticed node's instance stopped", || async {
        let status = cluster.status().await.expect("status");
        status.autoscaler.is_some_and(|a| {
            a.stopped
                .iter()
                .any(|s| s.node == Some(first) && s.why == "notice: gone within 20 s")
        })
    })
    .await;
    let status = within("status", cluster.status()).await.unwrap();
    assert!(status.nodes.iter().all(|n| n.id != first.to_string()));
    within("shutdown", cluster.shutdown()).await;
}
