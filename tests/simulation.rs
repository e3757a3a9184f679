//! The head's deterministic simulation: the real state machine driven by simulated workers,
//! clients and faults from a seed, checked after every step (see `support/sim/`).
//!
//! A failure prints its seed, the last steps and the command that replays it:
//!
//! ```text
//! EMBER_SIM_SEED=1234 EMBER_SIM_SCENARIO=small cargo test -p ember-tests --test simulation -- --exact replay --nocapture
//! ```
//!
//! `EMBER_SIM_STEPS` makes every run here longer (or shorter); `EMBER_SIM_CHECK_EVERY=1` checks
//! the whole state at every step in the large scenario too (slower). The ignored `sweep` test
//! runs many seeds (`EMBER_SIM_SWEEP=FROM..TO`) to hunt for bugs.

use ember_tests::sim::{run, Scenario};

/// Seeds that reproduce a bug the simulation found in the head (each checked by reverting
/// the fix with the simulation as it is now), kept so the bug stays fixed. When the
/// simulation changes, a seed may stop reproducing its bug: check again with the fix
/// reverted, and replace the seed if so.
const REGRESSIONS: &[(u64, &str)] = &[
    (
        11,
        "a drain moved an actor whose seal failed, or that had restarted elsewhere meanwhile \
         (first found by seed 4)",
    ),
    (
        28,
        "a late ActorReady for a replaced incarnation stopped its successor on the same worker \
         (first found by seed 183)",
    ),
    (
        8,
        "the simulation took a client's actors for owned when its going had not reached the          head before the head crashed (the head stopped them, rightly, as unclaimed)",
    ),
];

/// Runs `seed` and fails the test with the simulation's report if it fails.
fn check(seed: u64, scenario: &Scenario) {
    match run(seed, scenario) {
        Ok(report) => println!("{} {report}", scenario.name),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn small_clusters_with_many_faults() {
    let scenario = Scenario::small().with_env();
    for seed in 1..=6 {
        check(seed, &scenario);
    }
}

#[test]
fn seeds_that_found_bugs() {
    let scenario = Scenario::small().with_env();
    for &(seed, bug) in REGRESSIONS {
        if let Err(failure) = run(seed, &scenario) {
            panic!("a bug came back: {bug}\n{failure}");
        }
    }
}

#[test]
fn a_thousand_nodes_and_ten_thousand_actors() {
    let scenario = Scenario::large().with_env();
    for seed in [7, 8, 9] {
        check(seed, &scenario);
    }
}

#[test]
fn stranded_requests_fail_at_their_pending_timeout() {
    // Every request that fails at its pending timeout is checked to have been stranded (no
    // live node could hold it); these seeds must have some.
    let scenario = Scenario::stranded().with_env();
    let mut stranded = 0;
    for seed in 1..=4 {
        match run(seed, &scenario) {
            Ok(report) => {
                println!("{} {report}", scenario.name);
                stranded += report.counts.stranded_timeouts;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    if scenario.steps >= Scenario::stranded().steps {
        assert!(
            stranded > 0,
            "no request failed at its pending timeout in seeds 1 to 4"
        );
    }
}

#[test]
fn autoscaled_peaks_scale_up_and_back_down_without_launch_terminate_cycles() {
    // Every launch, drain and stop is checked as it happens (bounds, no cycles, stops of
    // started instances), and the floors after the last peak's quiet spell; these seeds must
    // exercise what is checked.
    let scenario = Scenario::autoscaled().with_env();
    let mut total = ember_tests::sim::AutoscaleCounts::default();
    let mut first = None;
    for seed in 1..=3 {
        match run(seed, &scenario) {
            Ok(report) => {
                println!("{} {report}", scenario.name);
                first.get_or_insert(report.trace_hash);
                let c = report.counts.autoscale;
                total.launches += c.launches;
                total.refused += c.refused;
                total.never_joined += c.never_joined;
                total.stopped += c.stopped;
                total.notices += c.notices;
                total.idle_drains += c.idle_drains;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    let again = run(1, &scenario).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        first,
        Some(again.trace_hash),
        "two runs of seed 1 differ: the provider, the autoscaler or the head is not deterministic"
    );
    if scenario.steps >= Scenario::autoscaled().steps {
        let t = &total;
        assert!(
            t.launches > 0
                && t.refused > 0
                && t.never_joined > 0
                && t.stopped > 0
                && t.notices > 0
                && t.idle_drains > 0,
            "seeds 1 to 3 did not exercise every part of the autoscaler: {t:?}"
        );
    }
}

/// Work for a task no worker has launches nothing once a worker told what the node types
/// carry (it used to launch nodes of a type that lists no labels again and again, while
/// such nodes sat idle).
#[test]
fn autoscaled_work_no_worker_can_take_launches_nothing() {
    let scenario = Scenario::autoscaled_unknown_tasks().with_env();
    for seed in 1..=3 {
        check(seed, &scenario);
    }
}

#[test]
fn a_seed_replays_exactly() {
    let scenario = Scenario::small().with_env();
    let first = run(42, &scenario).unwrap_or_else(|f| panic!("{f}"));
    let second = run(42, &scenario).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        first.steps, second.steps,
        "two runs of seed 42 took different steps"
    );
    assert_eq!(
        first.trace_hash, second.trace_hash,
        "two runs of seed 42 differ: the simulation or the head is not deterministic"
    );
    let other = run(43, &scenario).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "seeds 42 and 43 ran the same"
    );
}

/// Replays one seed: `EMBER_SIM_SEED` (and `EMBER_SIM_SCENARIO`: `small` by default,
/// `large`, `stranded`, `autoscaled` or `autoscaled-unknown-tasks`). Does nothing without `EMBER_SIM_SEED`.
#[test]
fn replay() {
    let Some(seed) = std::env::var("EMBER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let name = std::env::var("EMBER_SIM_SCENARIO").unwrap_or_else(|_| "small".into());
    let scenario = Scenario::by_name(&name)
        .unwrap_or_else(|| panic!("no scenario `{name}`: small, large, stranded, autoscaled or autoscaled-unknown-tasks"))
        .with_env();
    check(seed, &scenario);
}

/// Runs many seeds, to hunt for bugs: `EMBER_SIM_SWEEP=100..200` (and `EMBER_SIM_SCENARIO`,
/// `EMBER_SIM_STEPS`). Reports every failing seed, then fails if any did.
#[test]
#[ignore = "a bug hunt over many seeds: set EMBER_SIM_SWEEP=FROM..TO"]
fn sweep() {
    let range = std::env::var("EMBER_SIM_SWEEP").unwrap_or_else(|_| "100..120".into());
    let (from, to) = range
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("EMBER_SIM_SWEEP is FROM..TO, not {range}"));
    let name = std::env::var("EMBER_SIM_SCENARIO").unwrap_or_else(|_| "small".into());
    let scenario = Scenario::by_name(&name)
        .unwrap_or_else(|| panic!("no scenario `{name}`: small, large, stranded, autoscaled or autoscaled-unknown-tasks"))
        .with_env();
    let mut failed = Vec::new();
    for seed in from..to {
        match run(seed, &scenario) {
            Ok(report) => println!("{} {report}", scenario.name),
            Err(failure) => {
                println!("{failure}");
                failed.push(seed);
            }
        }
    }
    assert!(failed.is_empty(), "seeds that failed: {failed:?}");
}
