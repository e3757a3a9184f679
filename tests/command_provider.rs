//! `ember head --autoscale` with the `command` provider: real launch and stop scripts under
//! the test's directory start `ember worker` in the background (its pid the instance) and
//! kill it. From zero workers, a waiting job launches one, runs on it, and the idle worker is
//! let go and stopped; a launch script that fails is reported in `ember status` with its
//! message and tried again after a back-off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ember_tests::{
    autoscaler_decisions, ember_exe, node_names, processes_with_env, run_cli, status_json, until,
    within, KillMarked, TestCluster,
};

/// Marks the processes of one test: the head, the scripts and the workers they start.
const MARK: &str = "EMBER_TEST_COMMAND_PROVIDER";

/// Fails its first `$FAIL_FIRST` runs (counted in `./tries`) with a message on stderr, then
/// starts the worker in the background and prints its pid (after another line, so that the
/// instance is the last line, not the only one), also keeping it in `instance-LAUNCH`.
const LAUNCH: &str = r#"#!/bin/sh
set -e
tries=$(cat tries 2>/dev/null || echo 0)
echo $((tries + 1)) > tries
if [ "$tries" -lt "${FAIL_FIRST:-0}" ]; then
  echo "no capacity for $EMBER_NODE_TYPE (try $((tries + 1)))" >&2
  exit 1
fi
echo "starting $EMBER_NAME"
nohup sh -c "exec $EMBER_WORKER_COMMAND" > "worker-$EMBER_LAUNCH.log" 2>&1 < /dev/null &
echo "$!" > "instance-$EMBER_LAUNCH"
echo "$!"
"#;

/// Notes the instance, then stops it.
const STOP: &str = r#"#!/bin/sh
echo "$EMBER_INSTANCE" >> stopped
kill "$EMBER_INSTANCE"
"#;

/// A head autoscaling one node type, `box` (one logical T4, idle for 2 s at most), through
/// the scripts above, which fail their first `fail_first` launches.
struct Scene {
    dir: tempfile::TempDir,
    head: TestCluster,
    _workers: KillMarked,
}

impl Scene {
    async fn start(fail_first: u32) -> Scene {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("launch.sh"), LAUNCH).expect("write launch.sh");
        std::fs::write(dir.path().join("stop.sh"), STOP).expect("write stop.sh");
        let types = dir.path().join("node-types.json");
        let file = serde_json::json!({
            "max_nodes": 2,
            "provider": {
                "kind": "command",
                "launch": format!("FAIL_FIRST={fail_first} sh ./launch.sh"),
                "stop": "sh ./stop.sh",
                "timeout": "20s",
                "ember": ember_exe(),
                "logical_gpus": true
            },
            "node_types": [
                { "name": "box", "gpus": 1, "gpu_memory": "16GiB", "accelerator": "T4",
                  "cpus": 2, "max": 2, "idle_timeout": "2s" }
            ]
        });
        std::fs::write(&types, file.to_string()).expect("write the node types");
        let mark = dir.path().display().to_string();
        let workers = KillMarked {
            var: MARK,
            value: mark.clone(),
        };
        let head = TestCluster::start_head(
            "127.0.0.1:0",
            &["--autoscale", types.to_str().expect("a UTF-8 path")],
            &[(MARK, mark.as_str())],
        )
        .await;
        Scene {
            dir,
            head,
            _workers: workers,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn status(&self) -> serde_json::Value {
        status_json(&self.head.state_dir()).await
    }

    /// Submits a one-GPU job that waits for the file `go` to appear, then prints its node.
    fn submit(&self) -> tokio::task::JoinHandle<(i32, String, String)> {
        let mut cmd = tokio::process::Command::new(ember_exe());
        cmd.args(["job", "submit", "--cluster"])
            .arg(self.head.state_dir())
            .args(["--gpus", "1", "--", "sh", "-c"])
            .arg(format!(
                "while [ ! -e '{}' ]; do sleep 0.05; done; echo ran on $EMBER_NODE_ID",
                self.path("go").display()
            ));
        tokio::spawn(run_cli(cmd))
    }

    /// The processes of this test still alive, the head's own among them.
    fn processes(&self) -> Vec<u32> {
        processes_with_env(MARK, &self.dir.path().display().to_string())
    }
}

/// The launch number of the decision `launch box (launch N): ...`.
fn launch_of(decision: &str) -> Option<u64> {
    let rest = decision.strip_prefix("launch box (launch ")?;
    rest[..rest.find(')')?].parse().ok()
}

fn decisions(status: &serde_json::Value) -> Vec<String> {
    autoscaler_decisions(status)
        .into_iter()
        .map(|(d, _)| d)
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_provider_launches_a_worker_for_waiting_work_and_stops_it_when_idle() {
    let scene = Scene::start(0).await;
    assert!(node_names(&scene.status().await).is_empty(), "from zero");
    let job = scene.submit();

    // The waiting job launches a node through the script; its worker joins as `box-LAUNCH`
    // and the job runs there.
    until("the launched worker to join and take the job", || async {
        let status = scene.status().await;
        let running = status["jobs"].as_array().map_or(0, Vec::len);
        node_names(&status).len() == 1 && running == 1
    })
    .await;
    // The job holds the node until it is told to end: this is the node it runs on.
    let status = scene.status().await;
    let name = node_names(&status).remove(0);
    let launches: Vec<u64> = decisions(&status)
        .iter()
        .filter_map(|d| launch_of(d))
        .collect();
    let [launch] = launches[..] else {
        panic!("one launch: {status}");
    };
    assert_eq!(name, format!("box-{launch}"), "{status}");
    let instance = read(&scene.path(&format!("instance-{launch}")));
    let pid: u32 = instance.trim().parse().expect("the script kept its pid");
    assert!(scene.processes().contains(&pid), "the worker runs as {pid}");

    std::fs::write(scene.path("go"), "").expect("let the job end");
    let (code, stdout, stderr) = within("the job", job).await.expect("the job's task");
    assert_eq!(code, 0, "{stderr}\n{}", scene.head.logs());
    assert!(stdout.starts_with("ran on node-"), "{stdout}");

    // Idle past 2 s: let go, and stopped by the stop script with the launch's instance.
    until("the idle worker let go", || async {
        node_names(&scene.status().await).is_empty()
    })
    .await;
    until("the stop script to have run", || async {
        read(&scene.path("stopped")).trim() == pid.to_string()
    })
    .await;
    until("the worker process gone", || async {
        !scene.processes().contains(&pid)
    })
    .await;
    let status = scene.status().await;
    assert!(
        decisions(&status)
            .iter()
            .any(|d| d.starts_with("release node-") && d.contains("idle")),
        "{status}"
    );
    assert_eq!(
        read(&scene.path("tries")).trim(),
        "1",
        "one launch only: {status}\n{}",
        scene.head.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_launch_command_is_reported_and_tried_again_after_a_back_off() {
    let scene = Scene::start(2).await;
    let job = scene.submit();

    // Two launches fail, each shown with the script's message; the third starts the worker.
    until("the third launch to start a worker", || async {
        node_names(&scene.status().await).len() == 1
    })
    .await;
    std::fs::write(scene.path("go"), "").expect("let the job end");
    let (code, stdout, stderr) = within("the job", job).await.expect("the job's task");
    assert_eq!(code, 0, "{stderr}\n{}", scene.head.logs());
    assert!(stdout.starts_with("ran on node-"), "{stdout}");
    assert_eq!(read(&scene.path("tries")).trim(), "3");

    let status = scene.status().await;
    let all = autoscaler_decisions(&status);
    let failed: Vec<&(String, Duration)> = all
        .iter()
        .filter(|(d, _)| d.contains(" failed: "))
        .collect();
    assert_eq!(failed.len(), 2, "{status}");
    for (n, ((decision, _), next)) in failed.iter().zip([1, 2]).enumerate() {
        let try_n = n + 1;
        assert!(
            decision.contains(&format!(
                "cannot launch a node of type box: the launch command `FAIL_FIRST=2 sh \
                 ./launch.sh` failed (exit status: 1): no capacity for box (try {try_n}) \
                 (next try in {next} s)"
            )),
            "{decision}"
        );
    }
    // Each try came after the back-off the failure before it announced.
    let launched_at: Vec<Duration> = all
        .iter()
        .filter(|(d, _)| launch_of(d).is_some())
        .map(|(_, age)| *age)
        .collect();
    assert_eq!(launched_at.len(), 3, "{status}");
    assert!(
        launched_at[0] - launched_at[1] >= Duration::from_millis(900),
        "{launched_at:?}"
    );
    assert!(
        launched_at[1] - launched_at[2] >= Duration::from_millis(1_900),
        "{launched_at:?}"
    );
}
