//! A whole-cluster load generator mirroring `ray microbenchmark`: it starts a local cluster
//! whose workers run this same executable, drives it with trivial tasks and actor calls, and
//! prints rows in Ray's own format (`NAME per second MEAN +- STDDEV`) so that the two can be
//! compared line by line.
//!
//! Rows (Ray's names and semantics):
//! - `single_client_tasks_sync`: one task submitted and awaited at a time.
//! - `single_client_tasks_async`: batches of 1,000 tasks submitted at once, then all awaited.
//! - `1_1_actor_calls_sync`: one client, one actor, one call awaited at a time.
//! - `1_1_actor_calls_async`: one client, one actor, batches of 1,000 concurrent calls.
//! - `n_n_actor_calls_async`: N actors (N = workers, by default the machine's cores), each
//!   driven by its own concurrent client loop sending batches of 1,000 calls.
//! - `actor_creations` (Ember only): actors created one at a time (each killed after the trial).
//! - `placement_group_create_removal`: as Ray's `placement group create/removal`, 100 gangs
//!   of one bundle (0.001 CPU; Ray's asks 0.001 of a custom resource) created at once, each
//!   awaited until placed, then all 100 removed.
//!
//! Like Ray's `timeit`, each row warms up for a second, then runs `--trials` trials of
//! `--duration-secs` each and reports the mean and standard deviation of the trials' rates.
//!
//! Build and run: `cargo build --release -p ember-benches --bin microbench` then
//! `target/release/microbench [--rows PATTERN] [--duration-secs S]`.

use std::future::Future;
use std::time::{Duration, Instant};

use clap::Parser;
use ember::{Cluster, GangOptions, GangStrategy, LocalOptions, Options};
use futures::future::join_all;

/// The trivial task: no arguments, no result.
#[ember::task]
pub fn noop() {}

/// The trivial actor.
#[derive(Debug, Default)]
pub struct Sink;

#[ember::actor]
impl Sink {
    /// A new sink.
    pub fn new() -> Self {
        Sink
    }

    /// Does nothing and answers.
    pub fn ping(&self) {}
}

/// Ember's counterpart of `ray microbenchmark`.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Run only the rows whose names contain this substring (like Ray's `TESTS_TO_RUN`).
    #[arg(long)]
    rows: Option<String>,
    /// Length of one trial, in seconds.
    #[arg(long, default_value_t = 2.0)]
    duration_secs: f64,
    /// Trials per row (after one warm-up second).
    #[arg(long, default_value_t = 4)]
    trials: usize,
    /// Calls per batch in the async rows.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Worker processes of the local cluster, and actors/clients of the n_n row; the
    /// machine's core count when not given.
    #[arg(long)]
    workers: Option<u32>,
    /// Send tasks and actor calls over QUIC, as a client on another machine would, instead
    /// of through the same-machine Unix sockets of leases and actors.
    #[arg(long)]
    quic: bool,
}

const ROWS: [&str; 7] = [
    "single_client_tasks_sync",
    "single_client_tasks_async",
    "1_1_actor_calls_sync",
    "1_1_actor_calls_async",
    "n_n_actor_calls_async",
    "actor_creations",
    "placement_group_create_removal",
];

/// Gangs per operation of the `placement_group_create_removal` row, as in Ray's.
const GANGS_PER_OP: usize = 100;

/// Runs `op` (which does `per_op` calls) repeatedly: a warm-up second, then `trials` trials of
/// `duration`, with `after_trial` run outside the timing after each; returns mean and standard
/// deviation of the calls per second.
async fn timeit<F, Fut, C, CFut>(
    duration: Duration,
    trials: usize,
    per_op: usize,
    mut op: F,
    mut after_trial: C,
) -> anyhow::Result<(f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
    C: FnMut() -> CFut,
    CFut: Future<Output = anyhow::Result<()>>,
{
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        op().await?;
    }
    after_trial().await?;
    let mut rates = Vec::with_capacity(trials);
    for _ in 0..trials {
        let start = Instant::now();
        let mut count = 0usize;
        while start.elapsed() < duration {
            op().await?;
            count += per_op;
        }
        rates.push(count as f64 / start.elapsed().as_secs_f64());
        after_trial().await?;
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
    Ok((mean, var.sqrt()))
}

async fn nothing() -> anyhow::Result<()> {
    Ok(())
}

fn report(name: &str, (mean, sd): (f64, f64)) {
    println!("{name} per second {mean:.2} +- {sd:.2}");
}

#[ember::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs_f64(args.duration_secs);
    let trials = args.trials.max(1);
    let batch = args.batch.max(1);
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    let selected: Vec<&str> = ROWS
        .iter()
        .copied()
        .filter(|r| args.rows.as_deref().is_none_or(|p| r.contains(p)))
        .collect();
    if selected.is_empty() {
        anyhow::bail!(
            "no row matches {:?}; rows are: {}",
            args.rows.unwrap_or_default(),
            ROWS.join(", ")
        );
    }

    let cluster = Cluster::local(LocalOptions::new(workers)).await?;
    cluster.set_same_host_calls(!args.quic);
    for row in selected {
        let result = match row {
            "single_client_tasks_sync" => {
                timeit(
                    duration,
                    trials,
                    1,
                    || async { Ok(cluster.run(noop::remote()).await?) },
                    nothing,
                )
                .await?
            }
            "single_client_tasks_async" => {
                timeit(
                    duration,
                    trials,
                    batch,
                    || async {
                        let refs: Vec<_> =
                            (0..batch).map(|_| cluster.submit(noop::remote())).collect();
                        for r in join_all(refs).await {
                            r?;
                        }
                        Ok(())
                    },
                    nothing,
                )
                .await?
            }
            "1_1_actor_calls_sync" => {
                let sink = cluster.spawn(Sink::remote()).await?;
                let r = timeit(
                    duration,
                    trials,
                    1,
                    || async { Ok(sink.ping().await?) },
                    nothing,
                )
                .await?;
                sink.actor().kill().await?;
                r
            }
            "1_1_actor_calls_async" => {
                let sink = cluster.spawn(Sink::remote()).await?;
                let r = timeit(
                    duration,
                    trials,
                    batch,
                    || async {
                        for r in join_all((0..batch).map(|_| sink.ping())).await {
                            r?;
                        }
                        Ok(())
                    },
                    nothing,
                )
                .await?;
                sink.actor().kill().await?;
                r
            }
            "n_n_actor_calls_async" => {
                let mut sinks = Vec::new();
                for _ in 0..workers {
                    sinks.push(cluster.spawn(Sink::remote()).await?);
                }
                let r = timeit(
                    duration,
                    trials,
                    batch * sinks.len(),
                    || {
                        // One concurrent client loop per actor, each with its own handle.
                        let clients: Vec<_> = sinks
                            .iter()
                            .cloned()
                            .map(|sink| {
                                tokio::spawn(async move {
                                    for r in join_all((0..batch).map(|_| sink.ping())).await {
                                        r?;
                                    }
                                    Ok::<_, ember::Error>(())
                                })
                            })
                            .collect();
                        async move {
                            for c in join_all(clients).await {
                                c??;
                            }
                            Ok(())
                        }
                    },
                    nothing,
                )
                .await?;
                for s in &sinks {
                    s.actor().kill().await?;
                }
                r
            }
            "actor_creations" => {
                let created = std::sync::Mutex::new(Vec::new());
                timeit(
                    duration,
                    trials,
                    1,
                    || async {
                        let sink = cluster.spawn(Sink::remote()).await?;
                        created.lock().expect("not poisoned").push(sink);
                        Ok(())
                    },
                    || async {
                        let sinks = std::mem::take(&mut *created.lock().expect("not poisoned"));
                        for r in join_all(sinks.iter().map(|s| s.actor().kill())).await {
                            r?;
                        }
                        Ok(())
                    },
                )
                .await?
            }
            "placement_group_create_removal" => {
                timeit(
                    duration,
                    trials,
                    GANGS_PER_OP,
                    || async {
                        let bundle = || {
                            GangOptions::new(GangStrategy::Pack).bundle(Options::new().cpus(0.001))
                        };
                        let created =
                            join_all((0..GANGS_PER_OP).map(|_| cluster.create_gang(bundle())))
                                .await;
                        let gangs = created.into_iter().collect::<Result<Vec<_>, _>>()?;
                        for r in join_all(gangs.into_iter().map(|g| g.remove())).await {
                            r?;
                        }
                        Ok(())
                    },
                    nothing,
                )
                .await?
            }
            other => unreachable!("unknown row {other}"),
        };
        report(row, result);
    }
    cluster.shutdown().await;
    Ok(())
}
