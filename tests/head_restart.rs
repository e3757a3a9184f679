//! The head survives its own restart, across real processes: a head with two workers and
//! actors that checkpoint after every call is SIGKILLed and started again on the same state
//! directory and address. The workers keep their actors running through the gap and re-join as
//! the nodes they were; the new head adopts the actors as they run, so they keep their state,
//! their process and their incarnation, and record checkpoints again. A client of the new head
//! life takes them over by id (`Cluster::actor`). A collective group of them comes back at
//! its generation, so forming it again gives the next number. A client rides through: the
//! same `Cluster` connects again by itself, claims the actors it owns from the head's new life
//! (which stops, at the end of its re-join window, those nobody claimed), and its actor
//! handles keep working. `ember status` says, while the head is down, since when.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ember::{Cluster, ClusterStatus, ConnectOptions};
use ember_tests::tasks::{nap, Ledger, LedgerHandle};
use ember_tests::{ember_exe, run_cli, until, within, TestCluster, WorkerSpec};

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
    // A collective group of them, formed twice: generation 2 is the one the head journals.
    let members: Vec<_> = ledgers.iter().map(|l| l.actor()).collect();
    for generation in 1..=2 {
        let formed = within("form a group", cluster.form_group("ledgers", &members))
            .await
            .expect("a group");
        assert_eq!(formed, generation);
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

    // A client of the new head life, as a program started after the restart: it takes the
    // actors over by id (the old client rides through and claims them too).
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
    // The group came back at its generation: forming it again starts the next one, never a
    // number handed out before the restart.
    let taken: Vec<LedgerHandle> = {
        let mut taken = Vec::new();
        for old in &ledgers {
            taken.push(
                within("take over", fresh.actor(old.actor().id()))
                    .await
                    .expect("a handle to the actor"),
            );
        }
        taken
    };
    let members: Vec<_> = taken.iter().map(|l| l.actor()).collect();
    let formed = within(
        "form the group again",
        fresh.form_group("ledgers", &members),
    )
    .await
    .expect("a group");
    assert_eq!(formed, 3, "generation numbers go on past the journaled one");
    let after = status(&fresh).await;
    for (id, (state, incarnation, restarts)) in actor_lives(&after) {
        assert_eq!(
            (state.as_str(), incarnation, restarts),
            ("alive", 1, 0),
            "{id} was restarted instead of adopted"
        );
    }
    // The new head reset the workers' connections to its last life as soon as it heard from
    // them (its reset key is the same in every life), rather than leaving them to time out.
    let logs = tc.logs();
    assert_eq!(
        logs.matches("lost the head: reset by peer").count(),
        2,
        "each worker was reset by the new head:\n{logs}"
    );
    assert!(
        tc.head_log().contains("adopted"),
        "the new head says it adopted them:\n{}",
        tc.head_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_their_actors_ride_through_a_head_restart() {
    let (mut tc, cluster) = TestCluster::with_workers(&[gpu(), gpu()]).await;
    // Two workers with one GPU each hold four ledgers of half a GPU: three of this client's,
    // and one of another client's.
    let mut ledgers: Vec<LedgerHandle> = Vec::new();
    for _ in 0..3 {
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
    // An actor of another client, one that goes away during the gap: no client of the head's
    // next life claims it, so that life stops it at the end of its re-join window.
    let other = tc.connect().await;
    let orphan = within("spawn", other.spawn(Ledger::remote(0)))
        .await
        .expect("the other client's ledger");
    let orphan_id = orphan.actor().id().to_string();
    let before = status(&cluster).await;
    let nodes_before: Vec<String> = before.nodes.iter().map(|n| n.id.clone()).collect();
    let mut lives_before = actor_lives(&before);
    assert_eq!(lives_before.len(), 4, "{before:?}");
    assert!(
        lives_before
            .values()
            .all(|(state, inc, _)| state == "alive" && *inc == 1),
        "{lives_before:?}"
    );
    lives_before.remove(&orphan_id);

    // A task running on its lease when the head dies, and still running when the client
    // notices (the lease's stream at the head ends with the connection): it is answered.
    let running = cluster.submit(nap::remote(12_000));
    until("the long task's lease is granted", || async {
        status(&cluster).await.leases.len() == 1
    })
    .await;

    // Every call to a Ledger records a checkpoint at the head, so none is made while the head
    // is away: its processes must simply outlive the gap.
    tc.kill_head();
    // A task submitted in the gap: its lease request waits for the head's next life.
    let in_gap = cluster.submit(nap::remote(10));
    // An actor created in the gap, before the client knows: the head may or may not have
    // created it, so the creation fails, saying so, and is not sent again.
    let created = within("a creation in the gap", cluster.spawn(Ledger::remote(0))).await;
    match created {
        Err(ember::Error::HeadLost { addr, request }) => {
            assert_eq!(addr, tc.file.address.to_string());
            assert_eq!(request, "creating an actor");
        }
        other => panic!("a creation in the gap: {:?}", other.map(|_| ())),
    }
    // The client and the workers notice the loss when the QUIC connection times out. The
    // head's next life gets a short re-join window, so it starts once they look for it.
    until("the client notices the head is gone", || async {
        cluster.head_link().lost_since.is_some()
    })
    .await;
    until("the workers notice the head is gone", || async {
        ["w0", "w1"]
            .iter()
            .all(|w| tc.worker_log(w).contains("lost the head"))
    })
    .await;
    drop(orphan);
    drop(other);
    tc.restart_head(&["--rejoin-window", "5s"]).await;

    // The same client, not a new one: the task submitted in the gap ran on the head's next
    // life, and the client's requests reach it.
    within("the task submitted in the gap", in_gap)
        .await
        .unwrap_or_else(|e| panic!("the task submitted in the gap: {e}\n{}", tc.logs()));
    within("the task running when the head died", running)
        .await
        .unwrap_or_else(|e| panic!("the task running when the head died: {e}\n{}", tc.logs()));
    let link = cluster.head_link();
    assert!(link.lost_since.is_none(), "{link:?}");
    assert!(
        link.reconnects >= 1 && link.back_since.is_some(),
        "{link:?}"
    );
    tc.wait_for_nodes(&cluster, 2).await;
    until(
        "the workers re-join and their actors are adopted",
        || async {
            let now = status(&cluster).await;
            let mut nodes: Vec<String> = now.nodes.iter().map(|n| n.id.clone()).collect();
            nodes.sort();
            let mut wanted = nodes_before.clone();
            wanted.sort();
            let mut lives = actor_lives(&now);
            lives.remove(&orphan_id);
            nodes == wanted && lives == lives_before
        },
    )
    .await;
    // The window ends: the orphan, which nobody claimed, is stopped; this client's actors,
    // which it claimed again, are not.
    until("the unclaimed actor is stopped", || async {
        let now = status(&cluster).await;
        actor_lives(&now)
            .get(&orphan_id)
            .is_none_or(|(state, _, _)| state != "alive")
    })
    .await;

    // The handles made before the restart answer with each actor's state, from the same
    // process, in the same incarnation, and the actors record checkpoints at the new head
    // again (a Ledger checkpoints after every call).
    for (i, (ledger, (total, pid))) in ledgers.iter().zip(&expected).enumerate() {
        let after = within("add after the restart", ledger.add(100))
            .await
            .unwrap_or_else(|e| panic!("ledger {i} after the restart: {e}\n{}", tc.logs()));
        assert_eq!(after, total + 100, "ledger {i} kept its state");
        assert_eq!(
            within("pid", ledger.pid()).await.expect("pid"),
            *pid,
            "ledger {i} kept its process"
        );
        assert_eq!(ledger.actor().incarnation(), 1);
    }
    let after = status(&cluster).await;
    let lives = actor_lives(&after);
    for id in lives_before.keys() {
        assert_eq!(
            lives.get(id).map(|(s, i, r)| (s.as_str(), *i, *r)),
            Some(("alive", 1, 0)),
            "{id} was restarted or stopped instead of adopted and claimed"
        );
    }
    let log = tc.head_log();
    assert!(log.contains("adopted"), "the new head adopted them:\n{log}");
    assert!(
        log.contains("claims an actor of an earlier one"),
        "the client claimed them:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ember_status_says_since_when_the_head_is_unreachable() {
    let mut tc = TestCluster::start().await;
    // A client that waits one second for a lost head.
    let options = ConnectOptions {
        head_wait: Duration::from_secs(1),
        ..ConnectOptions::default()
    };
    let client = within("connect", Cluster::connect_with(tc.file.clone(), options))
        .await
        .expect("connect");
    within("status", client.status()).await.expect("status");
    tc.kill_head();
    let addr = tc.file.address.to_string();
    for json in [false, true] {
        let mut cmd = tokio::process::Command::new(ember_exe());
        cmd.args(["status", "--wait", "1s", "--cluster"])
            .arg(tc.state_dir())
            .env_remove("EMBER_ROLE")
            .env("RUST_LOG", "warn");
        if json {
            cmd.arg("--json");
        }
        let started = Instant::now();
        let (code, out, err) = run_cli(cmd).await;
        let took = started.elapsed();
        assert_ne!(code, 0, "{out}\n{err}");
        let said = format!("the head at {addr} has been unreachable since ");
        assert!(err.contains(&said) && err.contains(" UTC ("), "{err}");
        // It tried for the time asked, and not much longer.
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(10),
            "{took:?}"
        );
        if json {
            let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
            assert_eq!(v["head_unreachable"]["address"], addr.as_str(), "{v}");
            assert!(
                v["head_unreachable"]["since_unix_ms"].as_u64().is_some(),
                "{v}"
            );
        }
    }
    // The client notices the loss when its connection times out, waits its second, and
    // fails, naming the head and since when it has been lost: every request waiting for it.
    let (first, second) = within("status with the head gone", async {
        tokio::join!(client.status(), client.status())
    })
    .await;
    assert!(
        matches!(second, Err(ember::Error::HeadUnreachable { .. })),
        "{second:?}"
    );
    match first {
        Err(e @ ember::Error::HeadUnreachable { .. }) => {
            let lost = client.head_link().lost_since.expect("a lost head");
            let ember::Error::HeadUnreachable { ref addr, since } = e else {
                unreachable!()
            };
            assert_eq!(addr, &tc.file.address.to_string());
            assert_eq!(since, lost);
            assert!(e.to_string().contains(" UTC ("), "{e}");
        }
        other => panic!("status with the head gone: {other:?}"),
    }
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

/// `ember job submit` started while the head is down waits for it (`--wait`, 60 s by
/// default), saying so, and runs the job once the head is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_while_the_head_is_down_runs_once_it_is_back() {
    let (mut tc, _cluster) = TestCluster::with_workers(&[WorkerSpec::cpu()]).await;
    tc.kill_head();
    let err_path = tc.state_dir().join("submit.err");
    let mut submit = tokio::process::Command::new(ember_exe())
        .args(["job", "submit", "--cluster"])
        .arg(tc.state_dir())
        .args(["--", "echo", "after the gap"])
        .env_remove("EMBER_ROLE")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).expect("a log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("ember job submit");
    until("the command says it waits for the head", || async {
        std::fs::read_to_string(&err_path).is_ok_and(|e| e.contains("does not answer"))
    })
    .await;
    assert!(
        submit.try_wait().expect("its status").is_none(),
        "it gave up: {}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    tc.restart_head(&[]).await;
    let mut stdout = submit.stdout.take().expect("its output");
    let status = within("the job runs", submit.wait())
        .await
        .expect("its exit");
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut out)
        .await
        .expect("its output");
    assert!(
        status.success() && out.contains("after the gap"),
        "{status:?}\n{out}\n{}\n{}",
        std::fs::read_to_string(&err_path).unwrap_or_default(),
        tc.logs()
    );
}
