//! `ember up`: a head and workers from one command, seen by `ember status`, all stopped
//! together on Ctrl-C.

use std::process::Stdio;

use ember_tests::{ember_exe, processes_with_env, run_cli, until, within};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_a_cluster_that_status_sees_and_ctrl_c_stops_it_all() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mark = format!("{}", dir.path().display());
    let mut up = tokio::process::Command::new(ember_exe())
        .args(["up", "--workers", "2", "--gpus-per-worker", "1"])
        .args(["--accelerator", "L4", "--gpu-memory", "24GiB"])
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path())
        .env("EMBER_TEST_UP", &mark)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start ember up");

    // `ember up` prints its status and "Press Ctrl-C" once every worker has joined.
    let mut lines = BufReader::new(up.stdout.take().expect("piped stdout")).lines();
    let mut printed = String::new();
    within("ember up to be ready", async {
        while let Some(line) = lines.next_line().await.expect("readable stdout") {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("Press Ctrl-C") {
                return;
            }
        }
        panic!("ember up ended early:\n{printed}");
    })
    .await;
    assert!(printed.contains("NODES (2)"), "{printed}");
    assert!(printed.contains("ember worker --head"), "{printed}");

    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["status", "--json", "--cluster"]).arg(dir.path());
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("status is JSON");
    for key in ["nodes", "actors", "leases", "jobs", "queue"] {
        assert!(status.get(key).is_some(), "missing `{key}`: {stdout}");
    }
    let nodes = status["nodes"].as_array().expect("nodes is a list");
    assert_eq!(nodes.len(), 2, "{stdout}");
    for n in nodes {
        let gpus = n["usage"]["gpus"].as_array().expect("gpus is a list");
        assert_eq!(gpus.len(), 1, "{n}");
        assert_eq!(gpus[0]["accelerator"], "L4", "{n}");
    }
    // The head and two workers (and no executor yet) carry the mark.
    assert_eq!(processes_with_env("EMBER_TEST_UP", &mark).len(), 3);

    // Ctrl-C: the workers leave, the head stops, `ember up` exits 0 and leaves nothing behind.
    let pid = nix::unistd::Pid::from_raw(up.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal");
    let status = within("ember up to stop", up.wait())
        .await
        .expect("exit status");
    assert_eq!(status.code(), Some(0));
    until("the workers to be gone", || async {
        processes_with_env("EMBER_TEST_UP", &mark).is_empty()
    })
    .await;
}
