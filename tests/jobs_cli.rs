//! Batch jobs through the `ember` command-line tool against a real cluster: output, GPU
//! index and node id reach the terminal, the job's exit code becomes the tool's, and an
//! infeasible job fails at once.

use std::time::{Duration, Instant};

use ember_tests::{ember_exe, run_cli, TestCluster, WorkerSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_submit_streams_output_and_exit_code() {
    let (tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(2, "H100", "80GiB")]).await;
    let node = tc.node_id(&cluster, "w0").await;

    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["job", "submit", "--cluster"])
        .arg(tc.state_dir())
        .args([
            "--gpus",
            "0.5",
            "--",
            "sh",
            "-c",
            "echo $CUDA_VISIBLE_DEVICES $EMBER_NODE_ID; exit 3",
        ]);
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 3, "stdout: {stdout}\nstderr: {stderr}");
    let line = stdout.lines().next().unwrap_or_default().to_string();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 2, "{line:?}");
    assert!(words[0] == "0" || words[0] == "1", "GPU index: {line:?}");
    assert_eq!(words[1], node, "{line:?}");

    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["job", "submit", "--cluster"])
        .arg(tc.state_dir())
        .args(["--gpus", "4", "--", "true"]);
    let (code, _, stderr) = run_cli(cmd).await;
    assert_ne!(code, 0, "a job asking for 4 GPUs must fail");
    assert!(stderr.contains("GPU"), "stderr: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
}
