//! `ember head --autoscale` with the `slurm` provider, against a real Slurm controller and
//! node on this machine (`tests/slurm/start.sh` starts them as root; `.ci/run` runs it, then
//! this test, which is `#[ignore]`d because it needs them): a waiting job makes the head
//! `sbatch` a worker, `squeue` shows that job, its worker joins as `TYPE-LAUNCH` with the
//! type's logical GPU (and a `--gres=gpu:1` of Slurm's), the job runs there, and once the
//! worker is idle past its timeout the head `scancel`s it and `squeue` no longer shows it.

use std::path::Path;
use std::process::Command;

use ember_tests::{
    autoscaler_decisions, ember_exe, node_names, processes_with_env, run_cli, status_json, until,
    within, KillMarked, TestCluster,
};

/// Marks the head and, through the job's exported environment, the worker Slurm starts.
const MARK: &str = "EMBER_TEST_SLURM_PROVIDER";

/// Runs a Slurm command to its end, returning (success, stdout, stderr).
fn slurm(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is Slurm installed?)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The Slurm jobs named `ember-PREFIX...`, as (job id, name, state).
fn jobs(prefix: &str) -> Vec<(String, String, String)> {
    let (ok, out, err) = slurm("squeue", &["-h", "-o", "%i %j %T"]);
    assert!(ok, "squeue failed: {err}");
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (id, name, state) = (f.next()?, f.next()?, f.next()?);
            name.starts_with(prefix)
                .then(|| (id.to_string(), name.to_string(), state.to_string()))
        })
        .collect()
}

/// Cancels this test's jobs when dropped (even on panic).
struct CancelJobs(String);

impl Drop for CancelJobs {
    fn drop(&mut self) {
        for (id, ..) in jobs(&self.0) {
            let _ = slurm("scancel", &[&id]);
        }
    }
}

/// The last lines of every file in `dir` whose name starts with `slurm-`, for failures.
fn job_outputs(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("slurm-") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            out.push_str(&format!("--- {name} ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Slurm controller and node here: run tests/slurm/start.sh as root first (.ci/run does)"]
async fn slurm_provider_launches_and_cancels_workers() {
    let (ok, out, err) = slurm("sinfo", &["-h", "-o", "%t"]);
    assert!(
        ok && !out.trim().is_empty(),
        "Slurm does not answer here (sinfo: {out}{err}): run tests/slurm/start.sh as root"
    );

    let dir = tempfile::tempdir().expect("a temporary directory");
    // A node type of this run's own, so that its jobs are told apart from any other's.
    let node_type = format!("t{}", std::process::id());
    let prefix = format!("ember-{node_type}-");
    let _cancel = CancelJobs(prefix.clone());
    let types = dir.path().join("node-types.json");
    let file = serde_json::json!({
        "provider": {
            "kind": "slurm",
            "logical_gpus": true,
            "time_limit": "10",
            "output": dir.path().join("slurm-%j.out"),
        },
        "node_types": [
            { "name": node_type, "gpus": 1, "gpu_memory": "16GiB", "accelerator": "T4",
              "cpus": 1, "max": 1, "idle_timeout": "2s" }
        ]
    });
    std::fs::write(&types, file.to_string()).expect("write the node types");
    let mark = dir.path().display().to_string();
    let _workers = KillMarked {
        var: MARK,
        value: mark.clone(),
    };
    let head = TestCluster::start_head(
        "127.0.0.1:0",
        &["--autoscale", types.to_str().expect("a UTF-8 path")],
        &[(MARK, mark.as_str())],
    )
    .await;
    let state = head.state_dir();
    assert!(
        node_names(&status_json(&state).await).is_empty(),
        "from zero"
    );

    // A one-GPU job waits; the head submits a Slurm job for a node of the type.
    let go = dir.path().join("go");
    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["job", "submit", "--cluster"])
        .arg(&state)
        .args(["--gpus", "1", "--", "sh", "-c"])
        .arg(format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done; echo ran on $EMBER_NODE_ID",
            go.display()
        ));
    let job = tokio::spawn(run_cli(cmd));
    let mut submitted = None;
    until("squeue to show the worker's job", || {
        let found = jobs(&prefix).into_iter().next();
        let seen = found.is_some();
        submitted = found;
        async move { seen }
    })
    .await;
    let (job_id, job_name, _) = submitted.expect("a job");
    let launch: u64 = job_name[prefix.len()..]
        .parse()
        .unwrap_or_else(|_| panic!("a job named ember-TYPE-LAUNCH, not {job_name}"));

    // Its worker joins as TYPE-LAUNCH, with the logical GPU, and takes the job.
    let name = format!("{node_type}-{launch}");
    until(
        "the Slurm job's worker to join and take the job",
        || async {
            let status = status_json(&state).await;
            let running = status["jobs"].as_array().map_or(0, Vec::len);
            node_names(&status) == [name.clone()] && running == 1
        },
    )
    .await;
    let status = status_json(&state).await;
    let gpus = &status["nodes"][0]["usage"]["gpus"];
    assert_eq!(gpus[0]["accelerator"], "T4", "{status}");
    let running: Vec<_> = jobs(&prefix);
    assert_eq!(
        running,
        [(job_id.clone(), job_name.clone(), "RUNNING".to_string())],
        "one Slurm job, running"
    );
    // Slurm gave it the GPU gres asked for; the token is neither in its script nor on the
    // worker's command line, but in its environment.
    let (ok, shown, err) = slurm("scontrol", &["show", "job", &job_id]);
    assert!(ok, "{err}");
    assert!(
        shown.contains("TresPerNode=gres:gpu:1") || shown.contains("TresPerNode=gres/gpu:1"),
        "{shown}"
    );
    let (ok, script, err) = slurm("scontrol", &["write", "batch_script", &job_id, "-"]);
    assert!(ok, "{err}");
    assert!(
        script.contains(&format!("--launch {launch} --node-type {node_type}")),
        "{script}"
    );
    assert!(
        !script.contains(&head.file.token),
        "no token in the batch script"
    );
    let workers = processes_with_env(MARK, &mark);
    let worker = workers
        .iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("--name\0{name}\0")))
        })
        .unwrap_or_else(|| panic!("no worker process named {name} among {workers:?}"));
    let cmdline = std::fs::read(format!("/proc/{worker}/cmdline")).expect("its command line");
    assert!(!String::from_utf8_lossy(&cmdline).contains(&head.file.token));
    let environ = std::fs::read(format!("/proc/{worker}/environ")).expect("its environment");
    assert!(environ
        .split(|b| *b == 0)
        .any(|v| v == format!("EMBER_TOKEN={}", head.file.token).as_bytes()));

    std::fs::write(&go, "").expect("let the job end");
    let (code, stdout, stderr) = within("the job", job).await.expect("the job's task");
    assert_eq!(
        code,
        0,
        "{stderr}\n{}\n{}",
        head.logs(),
        job_outputs(dir.path())
    );
    assert!(stdout.starts_with("ran on node-"), "{stdout}");

    // Idle past 2 s: let go, and its Slurm job cancelled.
    until("the idle worker let go", || async {
        node_names(&status_json(&state).await).is_empty()
    })
    .await;
    until("squeue no longer showing the worker's job", || async {
        jobs(&prefix).is_empty()
    })
    .await;
    until("the worker process gone", || async {
        processes_with_env(MARK, &mark).len() == 1
    })
    .await;
    let status = status_json(&state).await;
    let decisions: Vec<String> = autoscaler_decisions(&status)
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert!(
        decisions
            .iter()
            .any(|d| d.starts_with(&format!("launch {node_type} (launch {launch})"))),
        "{status}"
    );
    assert!(
        decisions
            .iter()
            .any(|d| d.starts_with("release node-") && d.contains("idle")),
        "{status}"
    );
    assert!(
        !head.head_log().contains("cannot stop instance"),
        "scancel succeeded: {}",
        head.head_log()
    );
}
