//! Batch jobs through the `ember` command-line tool against a real cluster: output, GPU
//! index and node id reach the terminal, the job's exit code becomes the tool's, an
//! infeasible job fails at once, needs without GPUs are refused, and a waiting job says why
//! (and fails at its pending timeout once its only fitting node left, unless one joins).

use std::process::Stdio;
use std::time::{Duration, Instant};

use ember::Cluster;
use ember_tests::{ember_exe, gpus_in_use, run_cli, until, within, TestCluster, WorkerSpec};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

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

/// `ember job submit --gpus GPUS` of a silent job that writes its pid to `pid_file`, then
/// sleeps for a minute; killed when dropped.
fn submit_sleeper(
    tc: &TestCluster,
    gpus: u32,
    pid_file: &std::path::Path,
) -> tokio::process::Child {
    let script = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    tokio::process::Command::new(ember_exe())
        .args(["job", "submit", "--cluster"])
        .arg(tc.state_dir())
        .args(["--gpus", &gpus.to_string(), "--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ember job submit")
}

/// The pid a job wrote to `pid_file`, once it has.
async fn pid_written(pid_file: &std::path::Path) -> i32 {
    within("the job to start", async {
        loop {
            if let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_client_dies_is_stopped_before_its_gpus_are_freed() {
    let (tc, observer) = TestCluster::with_workers(&[WorkerSpec::gpus(2, "H100", "80GiB")]).await;
    let pid_file = tc.scratch().join("job.pid");
    let mut submit = submit_sleeper(&tc, 2, &pid_file);
    let job_pid = pid_written(&pid_file).await;
    until("the job's GPUs in use", || async {
        gpus_in_use(&observer).await == vec![100, 100]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_dies_with_its_worker_killed_outright() {
    let (mut tc, _observer) =
        TestCluster::with_workers(&[WorkerSpec::gpus(1, "H100", "80GiB")]).await;
    let pid_file = tc.scratch().join("job.pid");
    let _submit = submit_sleeper(&tc, 1, &pid_file);
    let job_pid = pid_written(&pid_file).await;
    let alive = |pid: i32| {
        // A zombie waits for a parent that is gone; count only a process still running.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
    };
    assert!(alive(job_pid));
    // SIGKILL: the worker runs no clean-up, yet its job must not outlive it holding GPUs.
    tc.kill_worker("w0");
    until("the job to die with its worker", || async move {
        !alive(job_pid)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_submit_refuses_an_accelerator_or_gpu_memory_without_gpus() {
    let (tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(1, "H100", "80GiB")]).await;
    for (flag, value, needs) in [
        ("--accelerator", "L4", "accelerator needs gpus"),
        ("--gpu-memory", "40GiB", "gpu_memory needs gpus"),
    ] {
        let mut cmd = tokio::process::Command::new(ember_exe());
        cmd.args(["job", "submit", "--cluster"])
            .arg(tc.state_dir())
            .args([flag, value, "--", "true"]);
        let (code, stdout, stderr) = run_cli(cmd).await;
        assert_ne!(code, 0, "{flag} without --gpus must be refused");
        assert!(stdout.is_empty(), "nothing ran: {stdout}");
        assert!(
            stderr.contains(needs) && stderr.contains("--gpus 1"),
            "{flag}: {stderr}"
        );
    }
    let status = within("status", cluster.status()).await.expect("status");
    assert!(status.jobs.is_empty() && status.queue.is_empty());
}

/// `ember job submit` running in the background, its standard error read line by line.
struct Submitted {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Submitted {
    fn start(tc: &TestCluster, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(ember_exe())
            .args(["job", "submit", "--cluster"])
            .arg(tc.state_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("ember job submit");
        let (send, lines) = mpsc::unbounded_channel();
        let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Submitted {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line of its standard error that contains `text`.
    async fn line_with(&mut self, text: &str) -> String {
        let what = format!("ember job submit to print a line with {text:?}");
        let line = within(&what, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if line.contains(text) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        line.unwrap_or_else(|| panic!("no line with {text:?} in {:#?}", self.seen))
    }

    /// Its exit code and the rest of its standard error.
    async fn exit(mut self) -> (i32, String) {
        let status = within("ember job submit to exit", self.child.wait())
            .await
            .expect("wait");
        while let Some(line) = within("its standard error to end", self.lines.recv()).await {
            self.seen.push(line);
        }
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }
}

/// One A100 worker running a long A100 job and one H100 worker; a second A100 job waits for
/// capacity and says so, and `ember status` shows why it waits. Returns both jobs' clients
/// (the first one's job stops if its client goes).
async fn second_a100_job_waits(
    pending_timeout: &str,
) -> (TestCluster, Cluster, Submitted, Submitted) {
    let (tc, cluster) = TestCluster::with_workers(&[
        WorkerSpec::gpus(1, "A100", "80GiB"),
        WorkerSpec::gpus(1, "H100", "80GiB"),
    ])
    .await;
    let mut first = Submitted::start(
        &tc,
        &["--gpus", "1", "--accelerator", "A100", "--", "sleep", "60"],
    );
    first.line_with("running on").await;
    let mut second = Submitted::start(
        &tc,
        &[
            "--gpus",
            "1",
            "--accelerator",
            "A100",
            "--pending-timeout",
            pending_timeout,
            "--",
            "sh",
            "-c",
            "echo ran on $EMBER_NODE_ID",
        ],
    );
    let line = second.line_with("job waiting").await;
    assert!(
        line.contains("waiting for resources: no live node has gpus=1, accelerator=A100 free now"),
        "{line}"
    );
    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["status", "--cluster"]).arg(tc.state_dir());
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("QUEUE (1)") && stdout.contains("waiting for resources: no live node has"),
        "{stdout}"
    );
    (tc, cluster, first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_only_fitting_worker_dies_says_why_and_fails_at_its_pending_timeout() {
    let (mut tc, cluster, first, mut second) = second_a100_job_waits("3s").await;
    tc.kill_worker("w0");
    let (code, stderr) = first.exit().await;
    assert_ne!(code, 0, "the first job went with its worker: {stderr}");
    let line = second.line_with("infeasible").await;
    let died = Instant::now();
    assert!(
        line.contains(
            "job waiting: infeasible: no GPU has accelerator type A100 (the cluster has: H100)"
        ) && line.contains("unless a node that fits joins"),
        "{line}"
    );
    let cluster = &cluster;
    until("status to show the job infeasible", || async move {
        let status = within("status", cluster.status()).await.expect("status");
        status.queue.len() == 1
            && status.queue[0].fails_in_ms.is_some()
            && status.queue[0]
                .waiting
                .as_deref()
                .is_some_and(|w| w.starts_with("infeasible: no GPU has accelerator type A100"))
    })
    .await;

    let (code, stderr) = second.exit().await;
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("no live node can hold it: no GPU has accelerator type A100")
            && stderr.contains("within 3000 ms"),
        "{stderr}"
    );
    let waited = died.elapsed();
    assert!(
        waited > Duration::from_millis(2000),
        "failed {waited:?} after its node left, before its 3 s"
    );
    let status = within("status", cluster.status()).await.expect("status");
    assert!(status.queue.is_empty(), "{:?}", status.queue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranded_job_runs_on_a_fitting_worker_that_joins_in_time() {
    let (mut tc, cluster, _first, mut second) = second_a100_job_waits("60s").await;
    tc.kill_worker("w0");
    second
        .line_with("infeasible: no GPU has accelerator type A100")
        .await;
    tc.add_worker("w2", &WorkerSpec::gpus(1, "A100", "80GiB"));
    tc.wait_for_nodes(&cluster, 2).await;
    let node = tc.node_id(&cluster, "w2").await;
    let line = second.line_with("running on").await;
    assert!(line.contains(&node), "{line}");
    let (code, stderr) = second.exit().await;
    assert_eq!(code, 0, "{stderr}");
}
