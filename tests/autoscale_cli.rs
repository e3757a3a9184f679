//! `ember up --autoscale`: from zero workers, waiting jobs launch worker processes of the
//! node type that fits them (the local provider), the jobs run there, and once idle past the
//! type's timeout the workers are drained and released, back to zero.

use std::process::Stdio;

use ember_tests::{
    autoscaler_decisions, ember_exe, node_names, processes_with_env, run_cli, status_json, until,
    within,
};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn status(dir: &std::path::Path) -> serde_json::Value {
    status_json(dir).await
}

fn nodes(status: &serde_json::Value) -> usize {
    node_names(status).len()
}

fn decisions(status: &serde_json::Value) -> Vec<String> {
    autoscaler_decisions(status)
        .into_iter()
        .map(|(d, _)| d)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_autoscale_grows_for_waiting_jobs_and_shrinks_to_zero_when_idle() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let types = dir.path().join("node-types.json");
    std::fs::write(
        &types,
        r#"{
          "max_nodes": 4,
          "node_types": [
            { "name": "l4", "gpus": 1, "gpu_memory": "24GiB", "accelerator": "L4", "cpus": 2,
              "min": 0, "max": 3, "price_per_hour": 0.8, "idle_timeout": "3s" },
            { "name": "cpu", "cpus": 4, "min": 0, "max": 2, "price_per_hour": 0.1 }
          ]
        }"#,
    )
    .expect("write the node types");
    let state = dir.path().join("state");
    let mark = format!("{}", dir.path().display());
    let mut up = tokio::process::Command::new(ember_exe())
        .args(["up", "--autoscale"])
        .arg(&types)
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .env("EMBER_TEST_AUTOSCALE", &mark)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start ember up");
    let mut lines = BufReader::new(up.stdout.take().expect("piped stdout")).lines();
    within("ember up to be ready", async {
        while let Some(line) = lines.next_line().await.expect("readable stdout") {
            if line.contains("Press Ctrl-C") {
                return;
            }
        }
        panic!("ember up ended early");
    })
    .await;
    assert_eq!(
        nodes(&status(&state).await),
        0,
        "it starts from zero workers"
    );

    // Two one-GPU jobs wait for nodes, which the autoscaler launches; both run to the end.
    let submit = |n: u32| {
        let mut cmd = tokio::process::Command::new(ember_exe());
        cmd.args(["job", "submit", "--cluster"])
            .arg(&state)
            .args(["--gpus", "1", "--", "sh", "-c"])
            .arg(format!("sleep 1; echo job {n} on $EMBER_NODE_ID"));
        run_cli(cmd)
    };
    let (a, b) = within("both jobs", async { tokio::join!(submit(1), submit(2)) }).await;
    for (n, (code, stdout, stderr)) in [(1, a), (2, b)] {
        assert_eq!(code, 0, "job {n}: {stderr}");
        assert!(
            stdout.contains(&format!("job {n} on node-")),
            "job {n}: {stdout}"
        );
    }
    let grown = status(&state).await;
    let launched: Vec<String> = decisions(&grown)
        .into_iter()
        .filter(|d| d.starts_with("launch l4"))
        .collect();
    assert_eq!(launched.len(), 2, "one L4 node per waiting job: {grown}");
    assert!(
        !decisions(&grown)
            .iter()
            .any(|d| d.starts_with("launch cpu")),
        "never a CPU node for GPU work: {grown}"
    );
    assert_eq!(nodes(&grown), 2, "{grown}");

    // Idle past the type's 3 s: drained and released, back to zero worker processes.
    until("the idle workers released", || async {
        nodes(&status(&state).await) == 0
    })
    .await;
    let shrunk = status(&state).await;
    assert_eq!(
        decisions(&shrunk)
            .iter()
            .filter(|d| d.starts_with("release"))
            .count(),
        2,
        "{shrunk}"
    );
    // The head alone carries the mark once the released workers are gone.
    until("the released worker processes gone", || async {
        processes_with_env("EMBER_TEST_AUTOSCALE", &mark).len() == 1
    })
    .await;

    let pid = nix::unistd::Pid::from_raw(up.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal");
    let exit = within("ember up to stop", up.wait())
        .await
        .expect("exit status");
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_autoscale_refuses_a_provider_that_does_not_start_local_workers() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let types = dir.path().join("slurm.json");
    std::fs::write(
        &types,
        r#"{ "provider": { "kind": "slurm", "partition": "gpu" },
             "node_types": [{ "name": "l4", "gpus": 1, "max": 2 }] }"#,
    )
    .expect("write the node types");
    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["up", "--autoscale"])
        .arg(&types)
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path().join("state"));
    let (code, _, stderr) = run_cli(cmd).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: `ember up --autoscale` starts workers on this machine, so its provider must \
             be `local`, not `slurm`; start the head alone with `ember head --autoscale",
            types.display()
        )),
        "{stderr}"
    );
}

/// `ember head --autoscale` with the `local` provider: the head alone, its autoscaled
/// workers processes of this `ember`, stopped with the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_autoscale_with_the_local_provider_runs_work_and_stops_its_workers_with_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let types = dir.path().join("node-types.json");
    std::fs::write(
        &types,
        r#"{ "provider": { "kind": "local" },
             "node_types": [{ "name": "cpu", "cpus": 2, "max": 1, "idle_timeout": "60s" }] }"#,
    )
    .expect("write the node types");
    let state = dir.path().join("state");
    let mark = format!("{}", dir.path().display());
    let mut head = tokio::process::Command::new(ember_exe())
        .args(["head", "--autoscale"])
        .arg(&types)
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .env("EMBER_TEST_AUTOSCALE", &mark)
        .env_remove("EMBER_ROLE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start ember head");
    let mut lines = BufReader::new(head.stdout.take().expect("piped stdout")).lines();
    let mut printed = Vec::new();
    within("ember head to listen", async {
        while let Some(line) = lines.next_line().await.expect("readable stdout") {
            let listening = line.contains("listening on");
            printed.push(line);
            if listening {
                return;
            }
        }
        panic!("ember head ended early: {printed:?}");
    })
    .await;
    assert!(
        printed[0].starts_with("Autoscaling with the local provider"),
        "{printed:?}"
    );
    assert_eq!(nodes(&status(&state).await), 0, "the head alone");

    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["job", "submit", "--cluster"]).arg(&state).args([
        "--cpus",
        "1",
        "--",
        "sh",
        "-c",
        "echo on $EMBER_NODE_ID",
    ]);
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("on node-"), "{stdout}");
    let grown = status(&state).await;
    assert_eq!(node_names(&grown), ["cpu-1"], "{grown}");
    assert!(
        processes_with_env("EMBER_TEST_AUTOSCALE", &mark).len() >= 2,
        "the head and its worker (and its executors)"
    );

    // Stopping the head stops the worker it started (not idle long enough to be let go).
    let pid = nix::unistd::Pid::from_raw(head.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal");
    let exit = within("ember head to stop", head.wait())
        .await
        .expect("exit status");
    assert_eq!(exit.code(), Some(0));
    until("the worker gone with the head", || async {
        processes_with_env("EMBER_TEST_AUTOSCALE", &mark).is_empty()
    })
    .await;
}
