//! Gangs (placement groups) with real head and worker processes on 127.0.0.1: a strict_spread
//! gang runs one actor per node and a collective group over them; an impossible gang fails at
//! once; a gang that does not fit whole waits holding nothing, says why, and is placed when
//! capacity frees; a killed worker loses only its bundle, whose actor comes back in the bundle
//! placed again; removing a gang stops its actors and frees everything.

use std::collections::BTreeSet;

use ember::{ClusterStatus, ErrorKind, GangOptions, GangStrategy, Options};
use ember_tests::ranks::{Member, MemberHandle};
use ember_tests::tasks::Counter;
use ember_tests::{ember_exe, run_cli, until, within, worker_of, TestCluster, WorkerSpec};

fn one_gpu() -> Options {
    Options::new().gpus(1.0).cpus(0.5)
}

async fn status(cluster: &ember::Cluster) -> ClusterStatus {
    within("status", cluster.status()).await.expect("status")
}

/// Every member's f32 sum allreduce over group `name`, in rank order.
async fn allreduce(members: &[MemberHandle], name: &str) -> Vec<Result<Vec<u8>, ember::Error>> {
    let calls = members
        .iter()
        .map(|m| m.allreduce(name.into(), "f32".into(), "sum".into(), 4096));
    within("allreduce", futures::future::join_all(calls)).await
}

/// Spawns one member in each bundle of `gang`.
async fn members_in(cluster: &ember::Cluster, gang: &ember::Gang) -> Vec<MemberHandle> {
    let mut out = Vec::new();
    for i in 0..gang.len() as u32 {
        let spawn = Member::remote().with(|o| o.in_bundle(gang.bundle(i)));
        out.push(
            within("spawn a member", cluster.spawn(spawn))
                .await
                .expect("a member in its bundle"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_spread_gang_runs_a_collective_group_one_rank_per_node_and_removal_frees_it() {
    let (_tc, cluster) =
        TestCluster::with_workers(&vec![WorkerSpec::gpus(2, "H100", "80GiB"); 4]).await;

    // Impossible gangs fail at once, naming why; nothing is kept.
    let e = within(
        "an impossible gang",
        cluster.create_gang(GangOptions::new(GangStrategy::StrictSpread).bundles(5, one_gpu())),
    )
    .await
    .expect_err("5 bundles on 4 nodes");
    assert_eq!(e.kind(), Some(ErrorKind::Infeasible), "{e}");
    assert!(
        e.to_string().contains("strict_spread gang of 5 bundles"),
        "{e}"
    );
    let e = within(
        "a strict_pack gang no node holds",
        cluster.create_gang(GangOptions::new(GangStrategy::StrictPack).bundles(3, one_gpu())),
    )
    .await
    .expect_err("3 GPUs on one 2-GPU node");
    assert!(
        e.to_string().contains("no node could hold all 3 bundles"),
        "{e}"
    );
    let e = within(
        "a bundle with a strategy",
        cluster.create_gang(GangOptions::new(GangStrategy::Pack).bundle(one_gpu().priority(3))),
    )
    .await
    .expect_err("a bundle takes only resources");
    assert!(
        e.to_string()
            .contains("bundle 0: a bundle takes only resources"),
        "{e}"
    );
    assert!(status(&cluster).await.gangs.is_empty());

    let gang = within(
        "create the gang",
        cluster.create_gang(GangOptions::new(GangStrategy::StrictSpread).bundles(3, one_gpu())),
    )
    .await
    .expect("three GPUs on three nodes");
    let nodes: BTreeSet<_> = gang.nodes().iter().collect();
    assert_eq!(nodes.len(), 3, "one bundle per node: {:?}", gang.nodes());

    // One member per bundle, each on its bundle's node.
    let members = members_in(&cluster, &gang).await;
    for (i, m) in members.iter().enumerate() {
        assert_eq!(
            m.actor().node(),
            gang.nodes()[i],
            "member {i} runs in bundle {i}"
        );
    }
    // Work past what a bundle reserves is refused, naming the bundle.
    let e = within(
        "a counter past its bundle",
        cluster.spawn(Counter::remote(0).with(|o| o.gpus(2.0).in_bundle(gang.bundle(0)))),
    )
    .await
    .expect_err("2 GPUs in a 1-GPU bundle");
    assert_eq!(e.kind(), Some(ErrorKind::BadRequest), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("bundle 0 of {} can never hold", gang.id())),
        "{e}"
    );

    // A collective group over the gang's actors: the same bits on every rank.
    let refs: Vec<&ember::ActorRef> = members.iter().map(|m| m.actor()).collect();
    within("form", cluster.form_group("gang", &refs))
        .await
        .expect("the group forms");
    let results: Vec<Vec<u8>> = allreduce(&members, "gang")
        .await
        .into_iter()
        .map(|r| r.expect("every rank's allreduce"))
        .collect();
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "every rank has the same bits"
    );

    let s = status(&cluster).await;
    let g = &s.gangs[0];
    assert_eq!(
        (g.id.clone(), g.state.as_str()),
        (gang.id().to_string(), "placed")
    );
    assert!(
        g.bundles.iter().all(|b| b.leases == 1 && b.node.is_some()),
        "{g:?}"
    );

    // Removing it stops its actors and frees every GPU.
    within("remove", gang.clone().remove())
        .await
        .expect("removed");
    until("every GPU free and no gang left", || async {
        let s = status(&cluster).await;
        s.gangs.is_empty()
            && s.actors.is_empty()
            && s.nodes
                .iter()
                .all(|n| n.usage.gpus.iter().all(|g| g.share_used.units() == 0))
    })
    .await;
    let e = within("a call to a stopped member", members[0].done())
        .await
        .expect_err("its gang was removed");
    assert!(e.to_string().contains("stopped"), "{e}");
    let e = within("remove twice", gang.remove())
        .await
        .expect_err("gone");
    assert!(e.to_string().contains("is not in the cluster"), "{e}");
    assert_eq!(e.kind(), Some(ErrorKind::Unknown), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_that_does_not_fit_whole_waits_holding_nothing_and_is_placed_when_capacity_frees() {
    let (tc, cluster) =
        TestCluster::with_workers(&vec![WorkerSpec::gpus(1, "H100", "80GiB"); 2]).await;
    // A counter holds half of one node's GPU.
    let counter = within("spawn a counter", cluster.spawn(Counter::remote(0)))
        .await
        .expect("a counter");
    let creating = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            cluster
                .create_gang(GangOptions::new(GangStrategy::StrictSpread).bundles(2, one_gpu()))
                .await
        })
    };
    until("the gang waits, saying why", || async {
        status(&cluster).await.gangs.first().is_some_and(|g| {
            g.state == "waiting"
                && g.waiting
                    .as_deref()
                    .is_some_and(|w| w.starts_with("waiting for capacity"))
                && g.bundles.iter().all(|b| b.node.is_none())
        })
    })
    .await;
    // It holds nothing: the other node's GPU is free for others meanwhile.
    let free: u32 = status(&cluster)
        .await
        .nodes
        .iter()
        .flat_map(|n| n.usage.gpus.iter().map(|g| g.share_free.units()))
        .sum();
    assert_eq!(free, 150, "only the counter's half is taken");
    assert!(!creating.is_finished());
    // `ember status` shows the gang and why it waits.
    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["status", "--cluster"]).arg(tc.state_dir());
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("GANGS (1)"), "{stdout}");
    assert!(stdout.contains("strict_spread waiting"), "{stdout}");
    assert!(stdout.contains("waiting for capacity"), "{stdout}");

    within("kill the counter", counter.actor().kill())
        .await
        .expect("killed");
    let gang = within("the gang is placed", creating)
        .await
        .expect("the task")
        .expect("placed whole once the GPU is free");
    assert_eq!(gang.nodes().iter().collect::<BTreeSet<_>>().len(), 2);
    assert_eq!(status(&cluster).await.gangs[0].state, "placed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_only_its_bundle_and_its_actor_comes_back_in_the_bundle_placed_again()
{
    let (mut tc, cluster) =
        TestCluster::with_workers(&vec![WorkerSpec::gpus(1, "H100", "80GiB"); 4]).await;
    let gang = within(
        "create the gang",
        cluster.create_gang(GangOptions::new(GangStrategy::StrictSpread).bundles(3, one_gpu())),
    )
    .await
    .expect("three nodes of four");
    let members = members_in(&cluster, &gang).await;
    for m in &members {
        within("a call", m.done()).await.expect("alive");
    }
    let victim = worker_of(&cluster, gang.nodes()[1]).await;
    tc.kill_worker(&victim);

    // Bundle 1 alone is placed again, on the spare node; bundles 0 and 2 stay where they were.
    let spare = {
        let s = status(&cluster).await;
        s.nodes
            .iter()
            .map(|n| n.id.clone())
            .find(|id| !gang.nodes().iter().any(|g| g.to_string() == *id))
            .expect("a fourth node")
    };
    until("bundle 1 placed again on the spare node", || async {
        let s = status(&cluster).await;
        let g = &s.gangs[0];
        g.state == "placed" && g.bundles[1].node.as_deref() == Some(spare.as_str())
    })
    .await;
    let s = status(&cluster).await;
    assert_eq!(
        s.gangs[0].bundles[0].node,
        Some(gang.nodes()[0].to_string())
    );
    assert_eq!(
        s.gangs[0].bundles[2].node,
        Some(gang.nodes()[2].to_string())
    );

    // Its member restarts in it (from its checkpoint), and the others were never touched.
    within("the member comes back", members[1].done())
        .await
        .expect("restarted");
    assert_eq!(members[1].actor().node().to_string(), spare);
    assert_eq!(members[1].actor().incarnation(), 2);
    assert_eq!(members[0].actor().incarnation(), 1);
    assert_eq!(members[2].actor().incarnation(), 1);

    // A group formed again over the gang's actors works across the new placement.
    let refs: Vec<&ember::ActorRef> = members.iter().map(|m| m.actor()).collect();
    let mut done = false;
    for _ in 0..10 {
        within("form", cluster.form_group("gang", &refs))
            .await
            .expect("the group forms");
        let results = allreduce(&members, "gang").await;
        if results.iter().all(|r| r.is_ok()) {
            let bits: Vec<Vec<u8>> = results.into_iter().map(Result::unwrap).collect();
            assert!(bits.windows(2).all(|w| w[0] == w[1]));
            done = true;
            break;
        }
    }
    assert!(done, "the group over the gang never completed an allreduce");
}
