//! Batch jobs through the `ember` command-line tool against a real cluster: output, GPU
//! index and node id reach the terminal, the job's exit code becomes the tool's, and an
//! infeasible job fails at once.

use std::time::{Duration, Instant};

use ember_tests::{ember_exe, gpus_in_use, run_cli, until, within, TestCluster, WorkerSpec};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_client_dies_is_stopped_before_its_gpus_are_freed() {
    let (tc, observer) = TestCluster::with_workers(&[WorkerSpec::gpus(2, "H100", "80GiB")]).await;
    let pid_file = tc.scratch().join("job.pid");
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    let mut submit = tokio::process::Command::new(ember_exe())
        .args(["job", "submit", "--cluster"])
        .arg(tc.state_dir())
        .args(["--gpus", "2", "--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ember job submit");
    let job_pid = within("the job to start", async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                if let Ok(pid) = text.trim().parse::<i32>() {
                    if gpus_in_use(&observer).await == vec![100, 100] {
                        return pid;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // The submitting client dies; the silent job must be stopped, and its GPUs freed only
    // once its process is gone.
    let started = Instant::now();
    submit.kill().await.expect("kill ember job submit");
    let alive = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let observer = &observer;
    until("the job's GPUs to be freed", || async move {
        gpus_in_use(observer).await == vec![0, 0]
    })
    .await;
    // A process once gone stays gone: it was gone when its GPUs were freed.
    assert!(!alive(job_pid), "GPUs freed while the job still runs");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the job ran on after its client died"
    );
}
