//! Runs the data-parallel training example (four trainers on a local cluster, one of whose
//! workers is SIGKILLed mid-run) and checks what it prints: the group re-formed, training went
//! on, and every rank ends with the same weights.

use ember_tests::{example_exe, run_cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_parallel_training_survives_a_killed_worker_with_identical_weights() {
    let mut cmd = tokio::process::Command::new(example_exe("data_parallel"));
    cmd.env_remove("EMBER_ROLE").env("RUST_LOG", "warn");
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");

    assert!(stdout.contains("killing rank 1's worker"), "{stdout}");
    assert!(
        stdout.contains("group re-formed as generation 2"),
        "the kill broke a step and the group was formed again: {stdout}"
    );
    assert!(
        stdout.contains("identical weights on all 4 ranks: true"),
        "{stdout}"
    );
    // Training went on after the failure: the loss fell by orders of magnitude and the
    // weights approach the ones the data came from.
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("after 30 steps"))
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    let numbers: Vec<f32> = summary
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    let (first, last, error) = (numbers[1], numbers[2], numbers[3]);
    assert!(last < first / 100.0, "loss {first} -> {last}: {summary}");
    assert!(error < 0.05, "weights far from the truth: {summary}");
    // Rank 1 ended on another worker than it started on.
    let start = stdout.lines().find(|l| l.starts_with("rank 1: ")).unwrap();
    let end = stdout
        .lines()
        .find(|l| l.starts_with("rank 1 now: "))
        .unwrap();
    assert_ne!(
        start.trim_start_matches("rank 1: "),
        end.trim_start_matches("rank 1 now: "),
        "{stdout}"
    );
}
