//! `ember usage` against a real cluster (`ember head` and a testbed worker with two logical
//! H100s, on 127.0.0.1): a batch job, an actor and a task each have a record with plausible
//! GPU-share-seconds, grouped by job, node type and node; and every node's allocated, idle
//! and warm time add up to its life.

use ember_tests::tasks::{self, Counter};
use ember_tests::{ember_exe, run_cli, until, within, TestCluster, WorkerSpec};
use serde_json::Value;

/// `ember usage ARGS --json` against the test cluster, as JSON.
async fn usage(tc: &TestCluster, args: &[&str]) -> Value {
    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["usage", "--json", "--cluster"])
        .arg(tc.state_dir())
        .args(args);
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "ember usage failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

/// The one record of `kind` in a report.
fn record<'a>(report: &'a Value, kind: &str) -> &'a Value {
    let records: Vec<&Value> = report["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["kind"] == kind)
        .collect();
    assert_eq!(records.len(), 1, "one {kind} record in {report:#}");
    records[0]
}

/// A node's split adds up to its life, exactly.
fn adds_up(split: &Value, what: &str) {
    let life = u64_of(split, "life_ns");
    let parts = u64_of(split, "allocated_ns") + u64_of(split, "idle_ns") + u64_of(split, "warm_ns");
    assert_eq!(
        parts, life,
        "{what}: allocated + idle + warm is its life: {split}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_has_a_record_for_a_job_an_actor_and_a_task_and_node_time_adds_up() {
    let (tc, cluster) = TestCluster::with_workers(&[WorkerSpec::gpus(2, "H100", "80GiB")]).await;
    let node = tc.node_id(&cluster, "w0").await;

    // A half-GPU actor, alive through everything that follows.
    let counter = within(
        "spawning a half-GPU actor",
        cluster.spawn(Counter::remote(0)),
    )
    .await
    .expect("spawn the actor");
    assert_eq!(within("add", counter.add(1)).await.expect("add"), 1);
    // A task holding half a GPU for 1.2 s.
    within(
        "a 1.2 s half-GPU task",
        cluster.run(tasks::sleep_ms::remote(1200).with(|o| o.gpus(0.5))),
    )
    .await
    .expect("the task runs");
    // A half-GPU batch job of 1.2 s.
    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["job", "submit", "--cluster"])
        .arg(tc.state_dir())
        .args(["--gpus", "0.5", "--", "sleep", "1.2"]);
    let (code, _, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "the job runs: {stderr}");
    // The task's lease goes back once the client no longer uses it.
    until("the task lease to be given back", || async {
        within("status", cluster.status())
            .await
            .expect("status")
            .leases
            .is_empty()
    })
    .await;

    let report = usage(&tc, &[]).await;
    let window_s = u64_of(&report, "window_ms") as f64 / 1e3;
    let job = record(&report, "job");
    let task = record(&report, "lease");
    let actor = record(&report, "actor");
    for r in [job, task, actor] {
        assert_eq!(r["node"], node.as_str(), "{r}");
        assert_eq!(r["node_type"], "static:H100", "{r}");
        assert_eq!(r["gpu_model"], "H100", "{r}");
        assert_eq!(f64_of(r, "gpus"), 0.5, "{r}");
        let share_s = f64_of(r, "gpu_share_seconds");
        assert!(share_s <= 0.5 * window_s, "no more than it could hold: {r}");
        assert_eq!(
            f64_of(r, "cost"),
            0.0,
            "a node not launched costs nothing: {r}"
        );
    }
    // Each held half a GPU for at least 1.2 s: at least 0.6 GPU-share-seconds.
    assert!(f64_of(job, "gpu_share_seconds") >= 0.6, "{job}");
    assert!(job["ended_ms_ago"].is_u64(), "the job ended: {job}");
    assert_eq!(job["job"], job["id"], "a job is its own job key");
    assert!(f64_of(task, "gpu_share_seconds") >= 0.6, "{task}");
    assert!(
        task["ended_ms_ago"].is_u64(),
        "the lease was given back: {task}"
    );
    // The actor lived through both.
    assert!(f64_of(actor, "gpu_share_seconds") >= 1.2, "{actor}");
    assert!(
        actor["ended_ms_ago"].is_null(),
        "the actor still runs: {actor}"
    );
    assert_eq!(actor["incarnation"], 1);
    assert_eq!(actor["job"], task["job"], "this client owns both");
    assert!(
        actor["job"]
            .as_str()
            .is_some_and(|k| k.starts_with("client-")),
        "{actor}"
    );

    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{report:#}");
    let n = &nodes[0];
    assert_eq!(n["node"], node.as_str());
    adds_up(n, "the node");
    let life_ms = u64_of(n, "life_ns") as f64 / 1e6;
    let joined_ms = u64_of(n, "joined_ms_ago") as f64;
    assert!(
        (life_ms - joined_ms).abs() <= 0.001 * joined_ms,
        "its life is the time since it joined, within 0.1%: {n}"
    );
    assert!(u64_of(n, "allocated_ns") >= 2_400_000_000, "{n}");
    assert!(report["partial"].as_array().is_some_and(|p| p.is_empty()));

    // By node: the node's records and its time, adding up.
    let by_node = usage(&tc, &["--by", "node"]).await;
    assert_eq!(by_node["by"], "node");
    let groups = by_node["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{by_node:#}");
    let g = &groups[0];
    assert_eq!(
        (g["key"].as_str(), u64_of(g, "records")),
        (Some(node.as_str()), 3)
    );
    assert!(f64_of(g, "gpu_share_seconds") >= 0.6 + 0.6 + 1.2, "{g}");
    adds_up(&g["node_time"], "the node's group");
    let life_s = u64_of(&g["node_time"], "life_ns") as f64 / 1e9;
    assert!(
        f64_of(g, "gpu_share_seconds") <= 2.0 * life_s,
        "two GPUs at most: {g}"
    );

    // By job: the job, and the client owning the actor and the task.
    let by_job = usage(&tc, &["--by", "job"]).await;
    let mut keys: Vec<(String, u64)> = by_job["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap_or_default().to_string(),
                u64_of(g, "records"),
            )
        })
        .collect();
    keys.sort();
    let client = actor["job"].as_str().unwrap_or_default().to_string();
    let job_id = job["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(keys, [(client, 2), (job_id, 1)]);

    // A window of the last second counts no more than a second of anything.
    let recent = usage(&tc, &["--since", "1s"]).await;
    let window_s = u64_of(&recent, "window_ms") as f64 / 1e3;
    assert!((1.0..2.0).contains(&window_s), "{recent:#}");
    let actor = record(&recent, "actor");
    assert!(
        f64_of(actor, "gpu_share_seconds") <= 0.5 * window_s + 1e-9,
        "{actor}"
    );
    for n in recent["nodes"].as_array().expect("nodes") {
        adds_up(n, "the node over the window");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_printed_into_a_closed_pipe_stop_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (tc, _cluster) = TestCluster::with_workers(&[WorkerSpec::cpu()]).await;
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["usage"],
        &["usage", "--json"],
    ] {
        // A pipe whose reader is gone before the command starts: its first write fails.
        let (reader, writer) = nix::unistd::pipe().expect("pipe");
        drop(reader);
        let mut cmd = tokio::process::Command::new(ember_exe());
        cmd.args(args)
            .arg("--cluster")
            .arg(tc.state_dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(writer))
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // Not `output()`, which would pipe standard output itself.
        let child = cmd.spawn().expect("ember starts");
        let out = within("the command", child.wait_with_output())
            .await
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "ember {args:?}: {stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(nix::libc::SIGPIPE),
            "ember {args:?} ended with {:?}: {stderr}",
            out.status
        );
    }
}
