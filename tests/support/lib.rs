//! Support for Ember's integration tests: the shared task and actor declarations
//! ([`tasks`]) and a harness ([`TestCluster`]) that runs a real head (`ember head`) and real
//! worker processes (`ember-testbed`) talking QUIC on 127.0.0.1, and kills them all on drop;
//! and the head's deterministic simulation ([`sim`]), which needs no processes at all.

pub mod ranks;
pub mod recording;
pub mod sim;
pub mod tasks;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ember::Cluster;
use ember_core::security::ClusterFile;
use ember_worker::agent::WorkerConfig;

/// The bound on every wait in the tests.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Awaits `fut`, panicking with `what` if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(TIMEOUT, what, fut).await
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Asks `holds` again every 20 ms until it says yes, within [`TIMEOUT`]: for states that can
/// only be observed by asking (the head's status, `/proc`), not awaited as events.
pub async fn until<F, Fut>(what: &str, mut holds: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !holds().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The live (not zombie) processes whose environment holds `var=value`. Reads `/proc`.
pub fn processes_with_env(var: &str, value: &str) -> Vec<u32> {
    let want = format!("{var}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true);
            !zombie && env.split(|b| *b == 0).any(|v| v == want.as_bytes())
        })
        .collect()
}

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The worker executable of the tests.
pub fn testbed_exe() -> PathBuf {
    bin_dir().join("ember-testbed")
}

/// Marks the processes of one test worker (inherited by its executors).
const MARK_VAR: &str = "EMBER_TESTS_WORKER";

static BUILT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A built binary at `path`: brought up to date with `cargo build <args>` once per test
/// process (so that it never runs stale code), unless `EMBER_TESTS_NO_BUILD` is set, in which
/// case it is only built when missing.
fn built(path: PathBuf, args: &[&str]) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let skip = std::env::var_os("EMBER_TESTS_NO_BUILD").is_some() && path.exists();
    if !skip && !built.contains(&path) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Variables cargo set for this test (CARGO_PKG_*, CARGO_MANIFEST_DIR, ...) would make
        // the inner build see a changed environment and rebuild: leave them out.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .arg("build")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .expect("cannot run cargo");
        assert!(
            out.status.success(),
            "cargo build {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        built.push(path.clone());
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The `ember` command-line tool (built with `cargo build -p ember-client` if missing).
pub fn ember_exe() -> PathBuf {
    built(
        bin_dir().join("ember"),
        &["-p", "ember-client", "--bin", "ember"],
    )
}

/// The quickstart example (built with `cargo build -p ember-examples` if missing).
pub fn quickstart_exe() -> PathBuf {
    example_exe("quickstart")
}

/// The example `name` of `examples/examples/` (built with `cargo build -p ember-examples` if
/// missing).
pub fn example_exe(name: &str) -> PathBuf {
    built(
        bin_dir().join("examples").join(name),
        &["-p", "ember-examples", "--example", name],
    )
}

/// What a worker offers.
#[derive(Debug, Clone, Default)]
pub struct WorkerSpec {
    /// Logical GPUs.
    pub gpus: u32,
    /// Memory of each, e.g. `80GiB`.
    pub gpu_memory: Option<String>,
    /// Accelerator type, e.g. `H100`.
    pub accelerator: Option<String>,
    /// Extra environment for the worker and its executors.
    pub env: Vec<(String, String)>,
}

impl WorkerSpec {
    /// No GPUs.
    pub fn cpu() -> Self {
        WorkerSpec::default()
    }

    /// `gpus` logical GPUs of type `accelerator` with `memory` each.
    pub fn gpus(gpus: u32, accelerator: &str, memory: &str) -> Self {
        WorkerSpec {
            gpus,
            gpu_memory: Some(memory.to_string()),
            accelerator: Some(accelerator.to_string()),
            env: Vec::new(),
        }
    }

    /// The same, with `var=value` in the worker's environment.
    pub fn with_env(mut self, var: &str, value: &str) -> Self {
        self.env.push((var.to_string(), value.to_string()));
        self
    }
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A head process and worker processes on 127.0.0.1, killed on drop (even on panic).
pub struct TestCluster {
    dir: tempfile::TempDir,
    head: Proc,
    workers: Vec<Proc>,
    /// How many times the head was started.
    head_starts: u32,
    /// The cluster file the head wrote.
    pub file: ClusterFile,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("head", &self.file.address)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl TestCluster {
    /// Starts `ember head` on a free loopback port and waits for its cluster file.
    pub async fn start() -> Self {
        TestCluster::start_on("127.0.0.1:0").await
    }

    /// Starts `ember head` listening on `listen` and waits for its cluster file.
    pub async fn start_on(listen: &str) -> Self {
        TestCluster::start_head(listen, &[], &[]).await
    }

    /// Starts `ember head` on a free loopback port with extra arguments and environment, and
    /// waits for its cluster file.
    pub async fn start_head(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        let log = dir.path().join("head.log");
        let child = Command::new(ember_exe())
            .args(["head", "--listen", listen, "--state-dir"])
            .arg(&state)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .env_remove("EMBER_ROLE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("cannot start `ember head`");
        let mut head = Proc {
            name: "head".into(),
            child,
            log,
        };
        // Process start-up: poll for the cluster file with a deadline.
        let deadline = Instant::now() + Duration::from_secs(20);
        let file = loop {
            if let Ok(f) = ClusterFile::load(&state) {
                break f;
            }
            if let Ok(Some(status)) = head.child.try_wait() {
                panic!(
                    "`ember head` exited with {status}: {}",
                    std::fs::read_to_string(&head.log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = head.child.kill();
                panic!("`ember head` wrote no cluster file within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        TestCluster {
            dir,
            head,
            workers: Vec::new(),
            head_starts: 1,
            file,
        }
    }

    /// SIGKILLs the head.
    pub fn kill_head(&mut self) {
        let _ = self.head.child.kill();
        let _ = self.head.child.wait();
    }

    /// Starts `ember head` again, after [`TestCluster::kill_head`], on the same state directory
    /// and address with extra `args`, and waits until it says it listens (it prints that once
    /// it has restored its journal and serves).
    pub async fn restart_head(&mut self, args: &[&str]) {
        self.restart_head_with(args, &[]).await;
    }

    /// [`TestCluster::restart_head`] with extra environment too (an S3 store's `AWS_*`).
    pub async fn restart_head_with(&mut self, args: &[&str], env: &[(&str, &str)]) {
        self.head_starts += 1;
        let n = self.head_starts;
        let log = self.dir.path().join(format!("head-{n}.log"));
        let out = self.dir.path().join(format!("head-{n}.out"));
        let child = Command::new(ember_exe())
            .args([
                "head",
                "--listen",
                &self.file.address.to_string(),
                "--state-dir",
            ])
            .arg(self.state_dir())
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn,ember_head_state=info")
            .env_remove("EMBER_ROLE")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("output file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("cannot start `ember head` again");
        self.head = Proc {
            name: format!("head (start {n})"),
            child,
            log,
        };
        // Process start-up: poll its output for the line it prints once serving.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let printed = std::fs::read_to_string(&out).unwrap_or_default();
            if printed.contains("listening on") {
                break;
            }
            if let Ok(Some(status)) = self.head.child.try_wait() {
                panic!(
                    "`ember head` exited with {status} on restart:\n{}",
                    self.head_log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "`ember head` did not listen again within 20 s:\n{}",
                    self.head_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a head and one worker per spec, named `w0`, `w1`, ..., and waits until they
    /// have all joined.
    pub async fn with_workers(specs: &[WorkerSpec]) -> (Self, Cluster) {
        let mut tc = TestCluster::start().await;
        for (i, spec) in specs.iter().enumerate() {
            tc.add_worker(&format!("w{i}"), spec);
        }
        let cluster = tc.connect().await;
        tc.wait_for_nodes(&cluster, specs.len() as u32).await;
        (tc, cluster)
    }

    /// The head's state directory (what `--cluster` takes).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A scratch directory removed with the cluster.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// A worker configuration joining this cluster.
    pub fn worker_config(&self, name: &str, spec: &WorkerSpec) -> WorkerConfig {
        let mut wc = WorkerConfig::new(
            self.file.address,
            self.file.token.clone(),
            self.file.fingerprint,
        );
        wc.name = Some(name.to_string());
        wc.cpus = Some(4.0);
        if spec.gpus > 0 {
            wc.gpus = Some(spec.gpus);
            wc.gpu_memory = spec.gpu_memory.clone();
            wc.accelerator = spec.accelerator.clone();
        }
        wc
    }

    /// The command that runs `ember-testbed` as a worker with `config`.
    pub fn worker_command(config: &WorkerConfig) -> Command {
        TestCluster::worker_command_in(config, None)
    }

    /// [`TestCluster::worker_command`], inside network namespace `netns` when given.
    pub fn worker_command_in(config: &WorkerConfig, netns: Option<&str>) -> Command {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(testbed_exe());
                c
            }
            None => Command::new(testbed_exe()),
        };
        cmd.env("EMBER_ROLE", "worker")
            .env(
                "EMBER_WORKER_CONFIG",
                serde_json::to_string(config).expect("config json"),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// Starts a worker process named `name` (without waiting for it to join).
    pub fn add_worker(&mut self, name: &str, spec: &WorkerSpec) {
        self.add_worker_in(name, spec, None);
    }

    /// Starts a worker process named `name`, inside network namespace `netns` when given (a
    /// host of its own), without waiting for it to join.
    pub fn add_worker_in(&mut self, name: &str, spec: &WorkerSpec, netns: Option<&str>) {
        let config = self.worker_config(name, spec);
        let log = self.dir.path().join(format!("{name}.log"));
        let child = Self::worker_command_in(&config, netns)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env(MARK_VAR, self.mark(name))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("cannot start ember-testbed");
        self.workers.push(Proc {
            name: name.to_string(),
            child,
            log,
        });
    }

    /// Starts a worker named `name` exactly as a person would, with the `ember worker`
    /// command of the `ember` binary and this cluster's join flags (without waiting for it to
    /// join). Its executors are `ember` processes too, so it hosts only the built-in actor
    /// types (the GPU actor), no task of [`tasks`].
    pub fn add_cli_worker(&mut self, name: &str, spec: &WorkerSpec) {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(ember_exe());
        cmd.args(["worker", "--head", &self.file.address.to_string()])
            .args(["--token", &self.file.token])
            .args(["--fingerprint", &self.file.fingerprint.to_string()])
            .args(["--name", name, "--cpus", "4", "--listen", "127.0.0.1:0"]);
        if spec.gpus > 0 {
            cmd.args(["--gpus", &spec.gpus.to_string()]);
        }
        if let Some(memory) = &spec.gpu_memory {
            cmd.args(["--gpu-memory", memory]);
        }
        if let Some(accelerator) = &spec.accelerator {
            cmd.args(["--accelerator", accelerator]);
        }
        let child = cmd
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env_remove("EMBER_ROLE")
            .env("RUST_LOG", "warn")
            .env(MARK_VAR, self.mark(name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("cannot start `ember worker`");
        self.workers.push(Proc {
            name: name.to_string(),
            child,
            log,
        });
    }

    /// The process id of the worker named `name` (not of its executors).
    pub fn worker_pid(&self, name: &str) -> u32 {
        self.workers
            .iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no worker {name}"))
            .child
            .id()
    }

    fn mark(&self, name: &str) -> String {
        format!("{}/{name}", self.dir.path().display())
    }

    /// The processes started for the worker named `name`: the worker and its executors
    /// (which inherit its environment). Reads `/proc`.
    pub fn processes_of(&self, name: &str) -> Vec<u32> {
        processes_with_env(MARK_VAR, &self.mark(name))
    }

    /// SIGKILLs the worker named `name`.
    pub fn kill_worker(&mut self, name: &str) {
        let w = self
            .workers
            .iter_mut()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no worker {name}"));
        let _ = w.child.kill();
        let _ = w.child.wait();
    }

    /// Sends `signal` to the worker named `name` (e.g. SIGSTOP to make it fall silent).
    pub fn signal_worker(&self, name: &str, signal: nix::sys::signal::Signal) {
        let w = self
            .workers
            .iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no worker {name}"));
        let pid = nix::unistd::Pid::from_raw(w.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the worker");
    }

    /// Connects a client with the head's cluster file.
    pub async fn connect(&self) -> Cluster {
        within(
            "connecting to the head",
            Cluster::connect(self.file.clone()),
        )
        .await
        .expect("connect to the head")
    }

    /// Waits until `count` workers have joined.
    pub async fn wait_for_nodes(&self, cluster: &Cluster, count: u32) {
        let r = within(
            "workers joining",
            cluster.wait_for_nodes(count, Duration::from_secs(50)),
        )
        .await;
        if let Err(e) = r {
            panic!("{count} workers did not join: {e}\n{}", self.logs());
        }
    }

    /// The node id (`node-N`) of the worker named `name`, from the head's status.
    pub async fn node_id(&self, cluster: &Cluster, name: &str) -> String {
        let status = within("status", cluster.status()).await.expect("status");
        status
            .nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name} in {:?}", status.nodes))
            .id
            .clone()
    }

    /// The whole log so far of the worker named `name` (not of its executors).
    pub fn worker_log(&self, name: &str) -> String {
        let w = self
            .workers
            .iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no worker {name}"));
        std::fs::read_to_string(&w.log).unwrap_or_default()
    }

    /// The head's whole log so far.
    pub fn head_log(&self) -> String {
        std::fs::read_to_string(&self.head.log).unwrap_or_default()
    }

    /// Every process's log so far, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in std::iter::once(&self.head).chain(&self.workers) {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {} ---\n", p.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for p in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.head))
        {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// `ember status --json` of the cluster whose state directory (or cluster file) is `cluster`.
pub async fn status_json(cluster: &Path) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["status", "--json", "--cluster"]).arg(cluster);
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "ember status: {stderr}");
    serde_json::from_str(&stdout).expect("status is JSON")
}

/// The names of the nodes in a status.
pub fn node_names(status: &serde_json::Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The autoscaler's latest decisions in a status, oldest first, each with how long ago it
/// was made.
pub fn autoscaler_decisions(status: &serde_json::Value) -> Vec<(String, Duration)> {
    status["autoscaler"]["decisions"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|x| {
                    let decision = x["decision"].as_str()?.to_string();
                    let age = Duration::from_millis(x["age_ms"].as_u64()?);
                    Some((decision, age))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every live process whose environment holds `var=value` when dropped (even on
/// panic): for processes a test started outside its own children, like the workers a node
/// provider's scripts start.
#[derive(Debug)]
pub struct KillMarked {
    /// The variable.
    pub var: &'static str,
    /// Its value.
    pub value: String,
}

impl Drop for KillMarked {
    fn drop(&mut self) {
        let me = std::process::id();
        for pid in processes_with_env(self.var, &self.value) {
            if pid != me {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Runs a command to completion within [`TIMEOUT`], returning (exit code, stdout, stderr).
pub async fn run_cli(mut cmd: tokio::process::Command) -> (i32, String, String) {
    cmd.kill_on_drop(true).stdin(Stdio::null());
    let out = within("a command", cmd.output())
        .await
        .expect("cannot run the command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A second host for tests: a network namespace joined to this one by a veth pair, with an
/// address on each side. Removed on drop. Needs root and iproute2.
#[derive(Debug)]
pub struct TestHost {
    /// The namespace's name, for `ip netns exec`.
    pub ns: String,
    veth: String,
    /// This side's address (the head listens here).
    pub local_ip: std::net::IpAddr,
    /// The other host's address.
    pub remote_ip: std::net::IpAddr,
}

impl TestHost {
    /// Creates the namespace and the link, or says why it cannot.
    pub fn create() -> Result<Self, String> {
        let id = std::process::id();
        let subnet = 16 + id % 200;
        let host = TestHost {
            ns: format!("ember-test-{id}"),
            veth: format!("emb{id}"),
            local_ip: std::net::IpAddr::from([10, 213, subnet as u8, 1]),
            remote_ip: std::net::IpAddr::from([10, 213, subnet as u8, 2]),
        };
        let peer = format!("{}p", host.veth);
        let local = format!("{}/24", host.local_ip);
        let remote = format!("{}/24", host.remote_ip);
        let steps: [&[&str]; 8] = [
            &["netns", "add", &host.ns],
            &[
                "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
            ],
            &["link", "set", &peer, "netns", &host.ns],
            &["addr", "add", &local, "dev", &host.veth],
            &["link", "set", &host.veth, "up"],
            &["-n", &host.ns, "addr", "add", &remote, "dev", &peer],
            &["-n", &host.ns, "link", "set", &peer, "up"],
            &["-n", &host.ns, "link", "set", "lo", "up"],
        ];
        for args in steps {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run `ip`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`ip {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(host)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
    }
}

/// The name of the worker that joined as `node`, from the head's status.
pub async fn worker_of(cluster: &Cluster, node: ember::NodeId) -> String {
    let status = within("status", cluster.status()).await.expect("status");
    status
        .nodes
        .iter()
        .find(|n| n.id == node.to_string())
        .unwrap_or_else(|| panic!("no {node} in {:?}", status.nodes))
        .name
        .clone()
}

/// The GPU shares (in hundredths) in use on the first node, from the head's status.
pub async fn gpus_in_use(cluster: &Cluster) -> Vec<u32> {
    let status = within("status", cluster.status()).await.expect("status");
    status.nodes[0]
        .usage
        .gpus
        .iter()
        .map(|g| g.share_used.units())
        .collect()
}

/// A local S3 server (moto's, from PyPI: `pip install 'moto[server]'`) on a free loopback
/// port, killed on drop.
pub struct S3Server {
    child: Child,
    /// Its address, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
    port: u16,
}

impl S3Server {
    /// Starts `moto_server` and waits until it answers; `None` if moto is not installed.
    pub async fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        // Process start-up: poll with a deadline until it answers a whole request (its port
        // may accept, then reset, a connection before the server behind it is ready).
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.try_request("GET", "/").is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(server)
    }

    /// One plain HTTP request (moto does not check signatures); the status and body.
    pub fn request(&self, method: &str, path: &str) -> (u16, String) {
        self.try_request(method, path)
            .unwrap_or_else(|e| panic!("{method} {path} to moto_server: {e}"))
    }

    fn try_request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("");
        Ok((status, body.to_string()))
    }

    /// The environment that points a head at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
