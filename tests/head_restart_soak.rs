//! The head is SIGKILLed and started again 20 times, at random moments, while ten actors take
//! calls (each call recording a checkpoint) and a stream of tasks runs, all through one client
//! and the handles it made before the first kill. Half-way, one worker is SIGKILLed too, so its
//! actors restart elsewhere from their checkpoints while the others keep running.
//!
//! After each restart every actor answers. At the end each actor's state is exactly the calls
//! it acknowledged, every task's result came back once and right, and actors whose worker lived
//! kept their process's incarnation. The moments come from a seed, printed first; run again
//! with `EMBER_SOAK_SEED=<seed>` to replay them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember::{Cluster, ClusterStatus};
use ember_tests::tasks::{slow_square, Ledger, LedgerHandle};
use ember_tests::{until, within, TestCluster, WorkerSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RESTARTS: usize = 20;
const ACTORS: usize = 10;
/// The restart after which worker `w2` is SIGKILLed.
const WORKER_KILLED_AFTER: usize = 10;

/// Room for all ten ledgers (half a GPU each) on any two of the three workers.
fn roomy() -> WorkerSpec {
    WorkerSpec::gpus(4, "H100", "80GiB")
}

async fn status(cluster: &Cluster) -> ClusterStatus {
    within("status", cluster.status()).await.expect("status")
}

/// What one actor's caller saw: the sum and the number of its acknowledged adds.
#[derive(Default)]
struct Acknowledged {
    total: AtomicU64,
    adds: AtomicU64,
}

/// Calls `add` on `ledger` until `stop`, each call acknowledged before the next is made.
async fn call_until(
    ledger: LedgerHandle,
    seen: Arc<Acknowledged>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut n = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let total = ledger
            .add(n)
            .await
            .map_err(|e| format!("add({n}) to {}: {e}", ledger.actor().id()))?;
        let expected = seen.total.load(Ordering::Relaxed) + n;
        if total != expected {
            return Err(format!(
                "{}: add({n}) answered {total}, but the acknowledged adds sum to {expected}",
                ledger.actor().id()
            ));
        }
        seen.total.store(total, Ordering::Relaxed);
        seen.adds.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    Ok(())
}

/// Runs tasks one after another until `stop`, recording each input whose result came back.
async fn tasks_until(
    cluster: Cluster,
    done: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let square = cluster
            .run(slow_square::remote(k, 5).with(|o| o.max_retries(3)))
            .await
            .map_err(|e| format!("task {k}: {e}"))?;
        if square != k * k {
            return Err(format!("task {k} answered {square}"));
        }
        done.lock().unwrap().push(k);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_head_restarts_lose_nothing_acknowledged() {
    let seed: u64 = std::env::var("EMBER_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("EMBER_SOAK_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let (mut tc, cluster) = TestCluster::with_workers(&[roomy(), roomy(), roomy()]).await;
    let mut ledgers = Vec::new();
    for _ in 0..ACTORS {
        let ledger: LedgerHandle = within("spawn", cluster.spawn(Ledger::remote(0)))
            .await
            .expect("a ledger");
        ledgers.push(ledger);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Acknowledged>> = (0..ACTORS).map(|_| Arc::default()).collect();
    let callers: Vec<_> = ledgers
        .iter()
        .zip(&seen)
        .map(|(l, s)| tokio::spawn(call_until(l.clone(), s.clone(), stop.clone())))
        .collect();
    let tasks_done = Arc::new(Mutex::new(Vec::new()));
    let tasks = tokio::spawn(tasks_until(
        cluster.clone(),
        tasks_done.clone(),
        stop.clone(),
    ));
    let adds = |seen: &[Arc<Acknowledged>]| -> Vec<u64> {
        seen.iter()
            .map(|s| s.adds.load(Ordering::Relaxed))
            .collect()
    };

    let mut nodes = 3;
    let mut moved: BTreeSet<String> = BTreeSet::new();
    for restart in 1..=RESTARTS {
        // A random moment: the workload runs meanwhile (this sleep paces the test; nothing
        // waits on it).
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..1200))).await;
        tc.kill_head();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        tc.restart_head(&[]).await;

        let before = adds(&seen);
        let tasks_before = tasks_done.lock().unwrap().len();
        until(
            &format!("restart {restart}: every node re-joins and every actor answers"),
            || async {
                let now = adds(&seen);
                let answered = now.iter().zip(&before).all(|(a, b)| a > b);
                let ran = tasks_done.lock().unwrap().len() > tasks_before;
                let finished = callers.iter().any(|c| c.is_finished()) || tasks.is_finished();
                if finished {
                    return true; // a caller failed: reported below
                }
                answered && ran && {
                    let s = status(&cluster).await;
                    s.nodes.len() == nodes
                        && s.actors
                            .iter()
                            .all(|a| a.actor.as_ref().is_some_and(|life| life.state == "alive"))
                }
            },
        )
        .await;
        assert!(
            !callers.iter().any(|c| c.is_finished()) && !tasks.is_finished(),
            "a caller stopped at restart {restart} (seed {seed}); see its error below"
        );

        if restart == WORKER_KILLED_AFTER {
            let on_w2: BTreeSet<String> = {
                let s = status(&cluster).await;
                let w2 = s
                    .nodes
                    .iter()
                    .find(|n| n.name == "w2")
                    .map(|n| n.id.clone())
                    .expect("w2 in the status");
                s.actors
                    .iter()
                    .filter(|a| a.node.as_deref() == Some(w2.as_str()))
                    .map(|a| a.id.clone())
                    .collect()
            };
            tc.kill_worker("w2");
            nodes = 2;
            let before = adds(&seen);
            until("w2's actors answer again from elsewhere", || async {
                let now = adds(&seen);
                now.iter().zip(&before).all(|(a, b)| a > b)
            })
            .await;
            moved = on_w2;
        }
    }

    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        within("a caller ends", caller)
            .await
            .expect("the caller's task")
            .unwrap_or_else(|e| panic!("{e} (seed {seed})\n{}", tc.logs()));
    }
    within("the tasks end", tasks)
        .await
        .expect("the tasks' task")
        .unwrap_or_else(|e| panic!("{e} (seed {seed})\n{}", tc.logs()));

    // Each actor's state is exactly its acknowledged calls.
    for (ledger, seen) in ledgers.iter().zip(&seen) {
        let (total, count) = within("totals", ledger.totals()).await.expect("totals");
        assert_eq!(
            (total, count),
            (
                seen.total.load(Ordering::Relaxed),
                seen.adds.load(Ordering::Relaxed)
            ),
            "{} (seed {seed})",
            ledger.actor().id()
        );
    }
    // Every task's result came back once, in order.
    let done = tasks_done.lock().unwrap().clone();
    assert!(!done.is_empty());
    assert!(
        done.iter().zip(1..).all(|(&k, i)| k == i),
        "task results out of order or repeated (seed {seed})"
    );
    // Actors whose worker lived kept their first incarnation; w2's restarted once.
    let lives: BTreeMap<String, (u32, u32)> = status(&cluster)
        .await
        .actors
        .iter()
        .filter_map(|a| {
            let life = a.actor.as_ref()?;
            Some((a.id.clone(), (life.incarnation, life.restarts)))
        })
        .collect();
    assert_eq!(lives.len(), ACTORS);
    for (id, life) in &lives {
        let want = if moved.contains(id) { (2, 1) } else { (1, 0) };
        assert_eq!(*life, want, "{id} (seed {seed}; w2 ran {moved:?})");
    }
    println!(
        "{RESTARTS} head restarts: {} calls and {} tasks acknowledged, {} actors moved with w2",
        adds(&seen).iter().sum::<u64>(),
        done.len(),
        moved.len()
    );
}
