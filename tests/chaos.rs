//! Chaos: workers SIGKILLed every few seconds and replaced, while retrying tasks and actors
//! that checkpoint after every call keep running. Every task's result reaches its caller
//! exactly once, every actor's final state equals the calls it acknowledged, and once all is
//! done no capacity is left held anywhere. Bounded to about a minute.

use std::time::Duration;

use ember_tests::tasks::{slow_square, Ledger};
use ember_tests::{until, within_for, TestCluster, WorkerSpec};

const TASKS: u64 = 2_000;
const ACTORS: usize = 10;
const KILLS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_and_actors_survive_workers_killed_every_few_seconds() {
    let spec = WorkerSpec::gpus(4, "H100", "80GiB");
    let (mut tc, cluster) =
        TestCluster::with_workers(&[spec.clone(), spec.clone(), spec.clone()]).await;

    let mut actors = Vec::new();
    for _ in 0..ACTORS {
        let spawn = Ledger::remote(0).with(|o| o.gpus(0.25));
        actors.push(
            within_for(Duration::from_secs(60), "spawn", cluster.spawn(spawn))
                .await
                .expect("a ledger"),
        );
    }

    // Tasks: submitted in waves so that they keep running through every kill.
    let tasks = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            let mut pending = Vec::new();
            for n in 0..TASKS {
                let call = slow_square::remote(n, 60).with(|o| o.max_retries(50));
                pending.push((n, cluster.submit(call)));
                if pending.len() == 100 {
                    for (n, task) in pending.drain(..) {
                        results.push((n, task.await));
                    }
                }
            }
            for (n, task) in pending {
                results.push((n, task.await));
            }
            results
        })
    };

    // Actor calls: each actor's caller adds 1 again and again, counting acknowledged adds.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = actors
        .iter()
        .cloned()
        .map(|ledger| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acknowledged = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let total = ledger.add(1).await.expect("an add survives restarts");
                    acknowledged += 1;
                    assert_eq!(
                        total, acknowledged,
                        "an acknowledged add was lost or doubled"
                    );
                }
                acknowledged
            })
        })
        .collect();

    // The chaos: kill the oldest worker every few seconds, start a replacement.
    for round in 0..KILLS {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let victim = format!("w{round}");
        tc.kill_worker(&victim);
        tc.add_worker(&format!("w{}", round + 3), &spec);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let results = within_for(Duration::from_secs(120), "tasks", tasks)
        .await
        .unwrap();
    assert_eq!(results.len() as u64, TASKS);
    for (n, result) in results {
        assert_eq!(result.expect("a task survives worker deaths"), n * n);
    }
    for (caller, ledger) in callers.into_iter().zip(&actors) {
        let acknowledged = within_for(Duration::from_secs(60), "caller", caller)
            .await
            .unwrap();
        assert!(acknowledged > 0);
        let (total, adds) = within_for(Duration::from_secs(60), "totals", ledger.totals())
            .await
            .expect("the final state");
        assert_eq!(
            (total, adds),
            (acknowledged, acknowledged),
            "final state = acknowledged calls"
        );
    }

    // No capacity held once the actors are gone.
    for ledger in &actors {
        within_for(Duration::from_secs(30), "kill", ledger.actor().kill())
            .await
            .expect("kill");
    }
    // The last worker killed is gone once the head has noticed (heartbeats or a probe).
    until("the killed workers to be gone", || {
        let cluster = cluster.clone();
        async move { cluster.status().await.expect("status").nodes.len() == 3 }
    })
    .await;
    let status = within_for(Duration::from_secs(30), "status", cluster.status())
        .await
        .unwrap();
    assert_eq!(status.nodes.len(), 3, "{:?}", status.nodes);
    for node in &status.nodes {
        let u = &node.usage;
        assert_eq!(u.cpu_millis_free, u.cpu_millis_total, "{node:?}");
        for g in &u.gpus {
            assert_eq!(g.share_used, ember::GpuShare::ZERO, "{node:?}");
            assert_eq!(g.memory_reserved, 0, "{node:?}");
        }
    }
    assert!(
        status.leases.is_empty() && status.jobs.is_empty() && status.queue.is_empty(),
        "{status:?}"
    );
}
