//! The head survives its own restart, across real processes: a head with two workers and
//! actors that checkpoint after every call is SIGKILLed and started again on the same state
//! directory and address. The workers keep their actors running through the gap and re-join as
//! the nodes they were; the new head adopts the actors as they run, so they keep their state,
//! their process and their incarnation, and record checkpoints again. A client of the new head
//! life takes them over by id (`Cluster::actor`).

use std::collections::BTreeMap;

use ember::{Cluster, ClusterStatus};
use ember_tests::tasks::{Ledger, LedgerHandle};
use ember_tests::{until, within, TestCluster, WorkerSpec};

fn gpu() -> WorkerSpec {
    WorkerSpec::gpus(1, "H100", "80GiB")
}

async fn status(cluster: &Cluster) -> ClusterStatus {
    within("status", cluster.status()).await.expect("status")
}

/// Each actor's (state, incarnation, restarts) in the head's status.
fn actor_lives(status: &ClusterStatus) -> BTreeMap<String, (String, u32, u32)> {
    status
        .actors
        .iter()
        .filter_map(|a| {
            let life = a.actor.as_ref()?;
            Some((
                a.id.clone(),
                (life.state.clone(), life.incarnation, life.restarts),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_their_actors_live_through_a_head_restart() {
    let (mut tc, cluster) = TestCluster::with_workers(&[gpu(), gpu()]).await;
    let mut ledgers: Vec<LedgerHandle> = Vec::new();
    for _ in 0..4 {
        let ledger = within("spawn", cluster.spawn(Ledger::remote(0)))
            .await
            .expect("a ledger");
        ledgers.push(ledger);
    }
    let mut expected = Vec::new();
    for (i, ledger) in ledgers.iter().enumerate() {
        let mut total = 0;
        for n in 1..=(i as u64 + 2) {
            total = within("add", ledger.add(n)).await.expect("add");
        }
        let pid = within("pid", ledger.pid()).await.expect("pid");
        expected.push((total, pid));
    }
    let before = status(&cluster).await;
    let nodes_before: Vec<String> = before.nodes.iter().map(|n| n.id.clone()).collect();
    let lives_before = actor_lives(&before);
    assert_eq!(lives_before.len(), 4, "{before:?}");
    assert!(
        lives_before
            .values()
            .all(|(state, inc, _)| state == "alive" && *inc == 1),
        "{lives_before:?}"
    );

    // Every call to a Ledger records a checkpoint at the head, so none is made while the head
    // is away: its processes must simply outlive the gap.
    tc.kill_head();
    tc.restart_head(&[]).await;

    // The old client's connection died with the head's first life: connect again.
    let fresh = tc.connect().await;
    tc.wait_for_nodes(&fresh, 2).await;
    until(
        "the workers re-join and their actors are adopted",
        || async {
            let now = status(&fresh).await;
            let mut nodes: Vec<String> = now.nodes.iter().map(|n| n.id.clone()).collect();
            nodes.sort();
            let mut wanted = nodes_before.clone();
            wanted.sort();
            nodes == wanted && actor_lives(&now) == lives_before
        },
    )
    .await;

    // The new client takes the actors over by id (they would be stopped at the end of the
    // re-join window otherwise). Every actor answers with its state, from the same process,
    // in the same incarnation, and records checkpoints at the new head again (a Ledger
    // checkpoints after every call). The old handles reach the same processes directly.
    for (i, (old, (total, pid))) in ledgers.iter().zip(&expected).enumerate() {
        let ledger: LedgerHandle = within("take over", fresh.actor(old.actor().id()))
            .await
            .expect("a handle to the actor");
        assert_eq!(ledger.actor().incarnation(), 1);
        let after = within("add after the restart", ledger.add(100))
            .await
            .unwrap_or_else(|e| panic!("ledger {i} after the restart: {e}\n{}", tc.logs()));
        assert_eq!(after, total + 100, "ledger {i} kept its state");
        assert_eq!(
            within("pid", ledger.pid()).await.expect("pid"),
            *pid,
            "ledger {i} kept its process"
        );
        let (again, _) = within("an old handle", old.totals())
            .await
            .expect("the old handle reaches the same process");
        assert_eq!(again, total + 100);
    }
    let after = status(&fresh).await;
    for (id, (state, incarnation, restarts)) in actor_lives(&after) {
        assert_eq!(
            (state.as_str(), incarnation, restarts),
            ("alive", 1, 0),
            "{id} was restarted instead of adopted"
        );
    }
    assert!(
        tc.head_log().contains("adopted"),
        "the new head says it adopted them:\n{}",
        tc.head_log()
    );
}

/// A call that records a checkpoint while the head is away waits for the head instead of
/// failing, and is answered once the restarted head has recorded its checkpoint: nothing is
/// acknowledged that a restart from that checkpoint would lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_while_the_head_is_away_is_answered_once_recorded() {
    let (mut tc, cluster) = TestCluster::with_workers(&[gpu()]).await;
    let ledger = within("spawn", cluster.spawn(Ledger::remote(10)))
        .await
        .expect("a ledger");
    assert_eq!(within("add", ledger.add(1)).await.expect("add"), 11);
    let id = ledger.actor().id();

    tc.kill_head();
    let in_gap = tokio::spawn({
        let ledger = ledger.clone();
        async move { ledger.add(2).await }
    });
    until("the call's checkpoint waits for the head", || async {
        tc.logs().contains("a checkpoint waits for the head")
    })
    .await;
    assert!(
        !in_gap.is_finished(),
        "answered before its checkpoint was recorded"
    );
    tc.restart_head(&[]).await;

    let total = within("the call made in the gap", in_gap)
        .await
        .expect("the call's task")
        .unwrap_or_else(|e| panic!("the call made in the gap: {e}\n{}", tc.logs()));
    assert_eq!(total, 13);
    let fresh = tc.connect().await;
    let after = status(&fresh).await;
    let life = after
        .actors
        .iter()
        .find_map(|a| a.actor.as_ref().filter(|_| a.id == id.to_string()))
        .expect("the ledger in the status");
    assert_eq!((life.incarnation, life.restarts), (1, 0), "{after:?}");
    assert_eq!(
        life.checkpoint_seq,
        Some(2),
        "the call's checkpoint is recorded at the new head: {after:?}"
    );
    let taken: LedgerHandle = within("take over", fresh.actor(id))
        .await
        .expect("a handle");
    assert_eq!(
        within("totals", taken.totals()).await.expect("totals"),
        (13, 2)
    );
}
