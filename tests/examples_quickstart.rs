//! Runs the quickstart example (a local cluster of two workers with two logical H100s each)
//! and checks what it prints.

use ember_tests::{quickstart_exe, run_cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_runs_and_prints_what_it_promises() {
    let mut cmd = tokio::process::Command::new(quickstart_exe());
    cmd.env_remove("EMBER_ROLE").env("RUST_LOG", "warn");
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("local cluster up at 127.0.0.1:"),
        "{stdout}"
    );

    // Four quarter-GPU tasks on one GPU of one node.
    let quarters: Vec<&str> = (0..4)
        .map(|i| {
            stdout
                .lines()
                .find(|l| l.starts_with(&format!("task {i}: ")))
                .unwrap_or_else(|| panic!("no line for task {i}: {stdout}"))
        })
        .collect();
    let placement = |l: &str| l.split_once(": ").map(|(_, p)| p.to_string()).unwrap();
    for q in &quarters[1..] {
        assert_eq!(placement(q), placement(quarters[0]), "{stdout}");
    }
    assert!(
        quarters[0].contains("x25") || quarters[0].contains("GPU"),
        "{stdout}"
    );

    assert!(
        stdout.contains("sum of squares 1..=1000 = 333833500"),
        "{stdout}"
    );
    assert!(stdout.contains("trainer a: loss"), "{stdout}");
    assert!(stdout.contains("trainer b: loss"), "{stdout}");
    assert!(stdout.contains("8 GPUs: refused:"), "{stdout}");
    assert!(stdout.contains("status: 2 nodes, 2 actors"), "{stdout}");
}
