//! The `ember` command line: start a head, workers or a local cluster; inspect it; submit
//! jobs; run a kernel on a cluster GPU. [`main`] is the whole command, so that the `ember`
//! binary and a Python extension's `ember` script run the same one.

mod kernel;
mod node_types;
mod usage;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ember_core::proto::LaunchTicket;
use ember_core::resources::{format_millis, ByteSize};
use ember_core::security::{default_state_dir, ClusterFile, Fingerprint};
use ember_head::autoscale::Autoscaler;
use ember_head::{Autoscale, HeadConfig};
use ember_worker::agent::{self, WorkerConfig};

use crate::{Cluster, ClusterStatus, ConnectOptions, JobOutput, LocalOptions, Options};

#[derive(Parser)]
#[command(
    name = "ember",
    version,
    about = "Ember: a distributed GPU task runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a head node.
    Head {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// State directory (certificate, key, token, cluster file). Default: ~/.ember
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// A worker silent this long is declared dead, e.g. 2s, 500ms.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        heartbeat_timeout: Duration,
        /// How many checkpoints of each actor the head keeps.
        #[arg(long, default_value_t = 3)]
        keep_checkpoints: usize,
        /// Keep checkpoints in S3-compatible object storage, `s3://bucket/prefix`, instead of
        /// the state directory (credentials and endpoint from the AWS_* variables).
        #[arg(long)]
        checkpoint_store: Option<String>,
        /// After a restart, how long to wait for the workers of the last life to re-join
        /// before their actors restart elsewhere, e.g. 60s; at least the workers'
        /// --rejoin-window.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        rejoin_window: Duration,
        /// How long a waiting request that no live node could hold any more (its only fitting
        /// node left or drains) keeps waiting for one to join before it fails, e.g. 60s.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        pending_timeout: Duration,
        /// Scale the cluster with demand: a JSON file of node types (resources, min, max,
        /// warm, price, idle timeout) and the provider that starts their nodes (`local`
        /// worker processes, your `command` scripts, or `slurm` jobs).
        #[arg(long, value_name = "NODE_TYPES_FILE")]
        autoscale: Option<PathBuf>,
    },
    /// Join a cluster as a worker.
    Worker(WorkerArgs),
    /// Start a head and N workers on this machine; Ctrl-C stops them all.
    Up {
        /// How many workers.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Logical GPUs per worker (for machines without GPUs).
        #[arg(long, default_value_t = 0)]
        gpus_per_worker: u32,
        /// Memory of each logical GPU.
        #[arg(long)]
        gpu_memory: Option<String>,
        /// Accelerator type of the logical GPUs.
        #[arg(long)]
        accelerator: Option<String>,
        /// CPUs each worker offers.
        #[arg(long)]
        cpus_per_worker: Option<f64>,
        /// Where the head listens.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// State directory. Default: ~/.ember
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Scale with demand from zero workers (instead of --workers): a JSON file of node
        /// types (resources, min, max, warm, price, idle timeout), whose nodes start as worker
        /// processes on this machine (its provider must be `local`; `ember head --autoscale`
        /// takes the others).
        #[arg(long, value_name = "NODE_TYPES_FILE", conflicts_with = "workers")]
        autoscale: Option<PathBuf>,
    },
    /// Show nodes, GPUs, actors, tasks, the queue and gangs.
    Status {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Print one JSON object with the keys nodes, actors, leases, jobs, queue and gangs (or, when the
        /// head cannot be reached, one with the key head_unreachable).
        #[arg(long)]
        json: bool,
        /// How long to keep trying a head that does not answer (it may be restarting) before
        /// saying it is unreachable and since when (exit code 3), e.g. 2s, 500ms.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Usage and cost by the second: each job, actor incarnation and task lease with its
    /// GPU-share-seconds, GPU-memory-GiB-seconds, CPU-seconds and cost, and each node's time
    /// split into allocated, idle and warm (this head life's; not kept across head restarts).
    Usage {
        #[command(flatten)]
        cluster: ClusterArg,
        #[command(flatten)]
        head: HeadWaitArg,
        /// Only usage since then: a duration ago (30m, 1h, 2d), a UTC date and time
        /// (2025-01-31T12:00:00Z), or seconds since the Unix epoch. Default: everything the
        /// head has.
        #[arg(long, value_parser = usage::parse_since)]
        since: Option<usage::Since>,
        /// Totals per job (a batch job, or the client connection owning actors and task
        /// leases), per node type, or per node (with its time split), instead of each record.
        #[arg(long, value_name = "job|type|node")]
        by: Option<crate::UsageBy>,
        /// Print one JSON object: the report (records, earlier, nodes, earlier_nodes,
        /// partial), or with --by the groups; times in it are milliseconds before
        /// answered_unix_ms.
        #[arg(long)]
        json: bool,
    },
    /// Batch jobs.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Move everything off a node and let it leave: no new work goes there, its actors move
    /// to other nodes with a final checkpoint, and its tasks get the grace period to finish.
    Drain {
        #[command(flatten)]
        cluster: ClusterArg,
        #[command(flatten)]
        head: HeadWaitArg,
        /// The node, as `ember status` names it (e.g. node-3).
        node: crate::NodeId,
        /// How long its running tasks may take to finish, e.g. 30s, 2m, 500ms.
        #[arg(long, default_value = "30s", value_parser = parse_duration, conflicts_with = "notice")]
        grace: Duration,
        /// The node goes within this whatever happens (a spot interruption notice, e.g. 30s,
        /// 2m): its tasks get until then, and an autoscaled cluster launches its replacement
        /// at once.
        #[arg(long, value_parser = parse_duration)]
        notice: Option<Duration>,
    },
    /// GPU kernels: list the registered ones, or run one on a cluster GPU as a smoke test.
    Kernel {
        #[command(subcommand)]
        command: kernel::KernelCommand,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Run a command on a worker chosen by placement; its output streams here and its exit
    /// code becomes this command's.
    Submit {
        #[command(flatten)]
        cluster: ClusterArg,
        #[command(flatten)]
        head: HeadWaitArg,
        /// GPUs: a fraction of one, or a whole number.
        #[arg(long)]
        gpus: Option<f64>,
        /// GPU memory per GPU, e.g. 8GiB.
        #[arg(long)]
        gpu_memory: Option<String>,
        /// Accelerator type, e.g. H100.
        #[arg(long)]
        accelerator: Option<String>,
        /// CPUs.
        #[arg(long)]
        cpus: Option<f64>,
        /// Once no live node could hold the job any more (its only fitting node left), how long
        /// to wait for one to join before failing, e.g. 30s (default: the head's).
        #[arg(long, value_parser = parse_duration)]
        pending_timeout: Option<Duration>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Args)]
struct ClusterArg {
    /// The cluster's state directory or cluster file (default: $EMBER_CLUSTER, then ~/.ember).
    #[arg(long)]
    cluster: Option<PathBuf>,
}

impl ClusterArg {
    /// Connects, waiting up to `wait` for a head that does not answer (it may be restarting),
    /// both now and whenever the connection is lost while the command runs.
    async fn connect(&self, wait: Duration) -> Result<Cluster, crate::Error> {
        let file = ClusterFile::discover(self.cluster.as_deref())?;
        let options = ConnectOptions {
            head_wait: wait,
            connect_wait: wait,
        };
        Cluster::connect_with(file, options).await
    }
}

/// How long a command rides through a head that does not answer.
#[derive(Args)]
struct HeadWaitArg {
    /// How long to wait for a head that does not answer (it may be restarting), when
    /// connecting and whenever the connection is lost, before failing with since when it has
    /// been unreachable, e.g. 30s, 2m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    wait: Duration,
}

#[derive(Args)]
struct WorkerArgs {
    /// The head's address.
    #[arg(long, requires_all = ["token", "fingerprint"])]
    head: Option<SocketAddr>,
    /// The cluster's join token (or set EMBER_TOKEN, which keeps it off the command line).
    #[arg(long, env = "EMBER_TOKEN", hide_env_values = true, value_parser = parse_token)]
    token: Option<String>,
    /// The head certificate's fingerprint (sha256:...).
    #[arg(long)]
    fingerprint: Option<Fingerprint>,
    /// Read head, token and fingerprint from this state directory or cluster file instead.
    #[arg(long, conflicts_with = "head")]
    cluster: Option<PathBuf>,
    /// Declare N logical GPUs (machines without GPUs).
    #[arg(long)]
    gpus: Option<u32>,
    /// Memory of each logical GPU, e.g. 80GiB.
    #[arg(long)]
    gpu_memory: Option<String>,
    /// Accelerator type of the logical GPUs, e.g. H100.
    #[arg(long)]
    accelerator: Option<String>,
    /// CPUs to offer (default: all).
    #[arg(long)]
    cpus: Option<f64>,
    /// Custom resources, NAME=AMOUNT, repeatable.
    #[arg(long = "resource", value_parser = parse_resource)]
    resources: Vec<(String, f64)>,
    /// The address to bind; actors listen on its IP for direct calls (with 0.0.0.0: on the
    /// local IP through which this worker reaches the head).
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// A name for this worker.
    #[arg(long)]
    name: Option<String>,
    /// On SIGTERM or Ctrl-C, how long running tasks may take to finish while the head moves
    /// this worker's actors away, e.g. 30s, 2m (a spot interruption notice).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace: Duration,
    /// After losing the head, how long to keep running actors and task leases and try to join
    /// again as the same node (while the head restarts), e.g. 60s; then the worker stops them
    /// and joins as a new node.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    rejoin_window: Duration,
    /// The autoscaler launch this worker answers (a node provider starts it with this), so
    /// the head matches it to its launch.
    #[arg(long, requires = "node_type")]
    launch: Option<u64>,
    /// The node type of the launch this worker answers.
    #[arg(long, requires = "launch")]
    node_type: Option<String>,
}

/// How often `ember head --autoscale`'s autoscaler decides (as `ember up --autoscale`'s).
const AUTOSCALE_INTERVAL: Duration = Duration::from_secs(1);

/// Reads `500ms`, `30s`, `2m`, or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write e.g. 500ms, 30s or 2m"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        other => return Err(format!("unknown unit `{other}`: use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// A join token as given, without the whitespace around it (a token read from a file, or
/// from a Kubernetes Secret made from one, often ends with a newline); an empty one is refused.
fn parse_token(s: &str) -> Result<String, String> {
    let token = s.trim();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    Ok(token.to_string())
}

fn parse_resource(s: &str) -> Result<(String, f64), String> {
    let (k, v) = s.split_once('=').ok_or("write NAME=AMOUNT")?;
    let v: f64 = v.parse().map_err(|_| format!("`{v}` is not a number"))?;
    Ok((k.to_string(), v))
}

/// Runs the `ember` command line with `args` (the program's name first, as
/// [`std::env::args_os`] gives them) and returns the status the process should exit with:
/// what the `ember` binary does, as `ExitCode::from(main(args))`. It is a number, not an
/// [`ExitCode`](std::process::ExitCode) (which keeps its value to itself), so that an
/// interpreter can exit with it too (Python's `sys.exit`).
///
/// First, a process started in another role (`EMBER_ROLE`: a worker or an executor, see
/// [`ember_worker::role`]) serves that role and exits the process here. Then logging goes to
/// standard error and the arguments are read: help and the version are printed with exit
/// code 0, a usage error with 2. Then the command runs: `ember worker` on the calling thread,
/// as every worker agent runs, and every other command on a multi-thread Tokio runtime made
/// for it, dropped (not waited for) when the command ends. The exit code is the command's (a
/// job's for `ember job submit`, 3 for an unreachable head in `ember status`), or 1 after an
/// error, which is printed as `ember: ...`; the status is its low 8 bits, as with
/// [`std::process::exit`].
pub fn main(args: Vec<OsString>) -> u8 {
    // Workers started by `ember up` and executors run this same program.
    ember_worker::role::serve_role_if_asked();
    crate::init_logging();
    let code = match Cli::try_parse_from(args) {
        Ok(cli) => run_command(cli.command),
        Err(e) => {
            // As clap's `exit` does: help and the version on standard output, errors on
            // standard error.
            let _ = e.print();
            e.exit_code()
        }
    };
    // What was printed is out before the caller goes on (an interpreter may not flush this
    // standard output when it exits).
    let _ = std::io::stdout().flush();
    // An exit status keeps the code's low 8 bits, as `std::process::exit`'s does.
    code as u8
}

/// Runs a parsed command and returns its exit code.
fn run_command(command: Command) -> i32 {
    if let Command::Worker(args) = command {
        // Every worker agent runs the same way, on its single-threaded runtime: this one as
        // those a local cluster starts.
        return match worker_config(args) {
            Ok(config) => ember_worker::role::run_worker(config),
            Err(e) => {
                eprintln!("ember: {e:#}");
                2
            }
        };
    }
    if matches!(command, Command::Status { .. } | Command::Usage { .. }) {
        stop_when_the_reader_goes();
    }
    let rt = tokio::runtime::Runtime::new().expect("cannot start the Tokio runtime");
    let code = match rt.block_on(run(command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ember: {e:#}");
            1
        }
    };
    // The command is over: what it left running (blocking calls of a node provider, say)
    // is dropped, not waited for, as when the process exits.
    rt.shutdown_background();
    code
}

/// A command that prints a report and ends stops quietly, as Unix tools do, once whoever
/// reads its output has gone (`ember status | head`), instead of panicking on the broken pipe:
/// SIGPIPE's default action. Only for such commands: a head, a worker or a local cluster keeps
/// SIGPIPE ignored, so that a peer closing a socket is an error they handle.
fn stop_when_the_reader_goes() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs the default action, no handler: nothing runs in signal context.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        tracing::debug!("cannot restore SIGPIPE's default action: {e}");
    }
}

/// The configuration `ember worker` joins with.
fn worker_config(args: WorkerArgs) -> Result<WorkerConfig> {
    let file = match (&args.head, &args.cluster) {
        (Some(head), _) => ClusterFile {
            address: *head,
            token: args.token.clone().context("--token is required")?,
            fingerprint: args.fingerprint.context("--fingerprint is required")?,
        },
        (None, path) => ClusterFile::discover(path.as_deref())?,
    };
    let mut config = WorkerConfig::new(file.address, file.token, file.fingerprint);
    config.name = args.name;
    config.cpus = args.cpus;
    config.gpus = args.gpus;
    config.gpu_memory = args.gpu_memory;
    config.accelerator = args.accelerator;
    config.resources = args.resources;
    config.listen = args.listen;
    config.grace_ms = args.grace.as_millis() as u64;
    config.rejoin_ms = args.rejoin_window.as_millis() as u64;
    config.launch = args
        .launch
        .zip(args.node_type)
        .map(|(launch, node_type)| LaunchTicket { launch, node_type });
    Ok(config)
}

async fn run(command: Command) -> Result<i32> {
    match command {
        Command::Head {
            listen,
            state_dir,
            heartbeat_timeout,
            keep_checkpoints,
            checkpoint_store,
            rejoin_window,
            pending_timeout,
            autoscale,
        } => {
            let mut config = HeadConfig::new(state_dir.unwrap_or_else(default_state_dir));
            // The provider's local workers, stopped with the head.
            let mut local_workers = None;
            if let Some(path) = &autoscale {
                let node_types = node_types::read(path)?;
                let kind = node_types.provider.kind();
                let ip = listen.ip();
                // A kubernetes provider has its own `head_address` (the head's Service).
                if !matches!(kind, "local" | "kubernetes")
                    && (ip.is_unspecified() || ip.is_loopback())
                {
                    eprintln!(
                        "ember: warning: the {kind} provider's workers are told to join the \
                         head at its listen address, {listen}, which only this machine \
                         reaches; for other machines, listen on an address they reach (e.g. \
                         --listen 10.0.0.5:7700)"
                    );
                }
                let started = node_types.provider.start().await?;
                local_workers = started.local;
                let autoscaler = Autoscaler::new(node_types.policy)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                config.autoscale = Some(Autoscale {
                    autoscaler,
                    interval: AUTOSCALE_INTERVAL,
                    provider: started.provider,
                });
                println!("Autoscaling with the {kind} provider ({})", path.display());
            }
            config.pending_timeout = pending_timeout;
            config.listen = listen;
            config.heartbeat_timeout = heartbeat_timeout;
            config.keep_checkpoints = keep_checkpoints;
            config.checkpoint_store = checkpoint_store;
            config.rejoin_window = rejoin_window;
            let state_dir = config.state_dir.clone();
            let head = ember_head::start(config).await?;
            println!("Ember head listening on {}", head.addr);
            println!("State directory: {}", state_dir.display());
            println!("Join a worker with:\n  {}", head.cluster.join_command());
            agent::shutdown_signal().await;
            if let Some(local) = local_workers {
                local.shutdown().await;
            }
            head.stop().await;
            Ok(0)
        }
        Command::Worker(_) => unreachable!("`ember worker` runs in `main`"),
        Command::Up {
            workers,
            gpus_per_worker,
            gpu_memory,
            accelerator,
            cpus_per_worker,
            listen,
            state_dir,
            autoscale,
        } => {
            let mut options = LocalOptions::new(workers).gpus_per_worker(gpus_per_worker);
            if let Some(path) = &autoscale {
                let node_types = node_types::read(path)?;
                let node_types::Provider::Local {
                    ember,
                    logical_gpus,
                } = node_types.provider
                else {
                    bail!(
                        "{}: `ember up --autoscale` starts workers on this machine, so its \
                         provider must be `local`, not `{}`; start the head alone with `ember \
                         head --autoscale {}` for that one",
                        path.display(),
                        node_types.provider.kind(),
                        path.display()
                    );
                };
                options.workers = 0;
                options.autoscale = Some(node_types.policy);
                options.autoscale_logical_gpus = logical_gpus;
                options.worker_exe = ember;
            }
            options.gpu_memory = gpu_memory;
            options.accelerator = accelerator;
            options.cpus_per_worker = cpus_per_worker;
            options.listen = Some(listen);
            options.state_dir = Some(state_dir.unwrap_or_else(default_state_dir));
            let cluster = Cluster::local(options).await?;
            println!(
                "Ember cluster up: head on {}",
                cluster.cluster_file().address
            );
            print_status(&cluster.status().await?);
            println!(
                "\nJoin more workers with:\n  {}",
                cluster.cluster_file().join_command()
            );
            println!("Press Ctrl-C to stop.");
            agent::shutdown_signal().await;
            println!("Stopping...");
            cluster.shutdown().await;
            Ok(0)
        }
        Command::Drain {
            cluster,
            head,
            node,
            grace,
            notice,
        } => {
            let c = cluster.connect(head.wait).await?;
            let moved = match notice {
                Some(notice) => c.drain_on_notice(node, notice).await?,
                None => c.drain(node, grace).await?,
            };
            println!("{node} drained: {moved} actor(s) moved to other nodes");
            Ok(0)
        }
        Command::Kernel { command } => kernel::run(command).await,
        Command::Usage {
            cluster,
            head,
            since,
            by,
            json,
        } => {
            let c = cluster.connect(head.wait).await?;
            let since = since.map(|s| s.ago(std::time::SystemTime::now()));
            let report = c.usage(since).await?;
            usage::print(&report, by, json, std::time::SystemTime::now());
            Ok(0)
        }
        Command::Status {
            cluster,
            json,
            wait,
        } => {
            let status = match cluster.connect(wait).await {
                Ok(c) => c.status().await,
                Err(e) => Err(e),
            };
            let status = match status {
                Ok(status) => status,
                Err(e @ crate::Error::HeadUnreachable { .. }) => {
                    return Ok(head_unreachable(&e, json))
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                println!("{}", status.to_json());
            } else {
                print_status(&status);
            }
            Ok(0)
        }
        Command::Job {
            command:
                JobCommand::Submit {
                    cluster,
                    head,
                    gpus,
                    gpu_memory,
                    accelerator,
                    cpus,
                    pending_timeout,
                    command,
                },
        } => {
            let c = cluster.connect(head.wait).await?;
            let mut options = Options::new();
            if let Some(g) = gpus {
                options = options.gpus(g);
            }
            if let Some(m) = &gpu_memory {
                options = options.gpu_memory(m);
            }
            if let Some(a) = &accelerator {
                options = options.accelerator(a);
            }
            if let Some(n) = cpus {
                options = options.cpus(n);
            }
            if let Some(t) = pending_timeout {
                options = options.pending_timeout(t);
            }
            let mut waiting = Waiting::new();
            let submitted = c
                .submit_job_watching(command, Vec::new(), options, |why| waiting.show(why))
                .await;
            waiting.finish();
            let mut job = submitted?;
            let gpus: Vec<String> = job
                .allocation
                .gpus
                .iter()
                .map(|g| format!("{}({})", g.index, g.share))
                .collect();
            eprintln!(
                "ember: {} running on {} with GPUs [{}]",
                job.id,
                job.node,
                gpus.join(", ")
            );
            loop {
                match job.next().await? {
                    Some(JobOutput::Stdout(b)) => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&b)?;
                        out.flush()?;
                    }
                    Some(JobOutput::Stderr(b)) => {
                        let mut err = std::io::stderr().lock();
                        err.write_all(&b)?;
                        err.flush()?;
                    }
                    Some(JobOutput::Exited(code)) => return Ok(code),
                    None => bail!("the job's stream ended without an exit code"),
                }
            }
        }
    }
}

/// Says that the head cannot be reached, and since when (`e` is
/// [`crate::Error::HeadUnreachable`]); the exit code of `ember status` then.
fn head_unreachable(e: &crate::Error, json: bool) -> i32 {
    if json {
        if let crate::Error::HeadUnreachable { addr, since } = e {
            let since_ms = since
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let out = serde_json::json!({
                "head_unreachable": {
                    "address": addr,
                    "since_unix_ms": since_ms,
                    "message": e.to_string(),
                }
            });
            println!("{out}");
        }
    }
    eprintln!("ember: {e}");
    3
}

/// What `ember job submit` shows while its job waits: a spinner with the reason on a
/// terminal, a plain line for each new reason otherwise.
struct Waiting {
    spinner: Option<indicatif::ProgressBar>,
}

impl Waiting {
    fn new() -> Self {
        Waiting { spinner: None }
    }

    fn show(&mut self, why: &crate::WaitReason) {
        if !std::io::stderr().is_terminal() {
            eprintln!("ember: job waiting: {why}");
            return;
        }
        let spinner = self.spinner.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        spinner.set_message(format!("job waiting: {why}"));
    }

    /// The job started or failed: the spinner goes, its last reason stays on screen.
    fn finish(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.finish();
        }
    }
}

fn print_status(s: &ClusterStatus) {
    println!("NODES ({})", s.nodes.len());
    for n in &s.nodes {
        let u = &n.usage;
        println!(
            "  {} {} at {}  cpus {}/{} free{}",
            n.id,
            n.name,
            n.address,
            format_millis(u.cpu_millis_free),
            format_millis(u.cpu_millis_total),
            if u.schedulable {
                ""
            } else {
                "  (cordoned: draining, or warm)"
            }
        );
        for g in &u.gpus {
            println!(
                "    gpu {} {}  share used {} free {}  memory reserved {} of {}",
                g.index,
                g.accelerator,
                g.share_used,
                g.share_free,
                ByteSize(g.memory_reserved),
                ByteSize(g.memory_total)
            );
        }
        for c in &u.custom {
            println!(
                "    {} {}/{} free",
                c.name,
                format_millis(c.free_millis),
                format_millis(c.total_millis)
            );
        }
    }
    for (title, list) in [
        ("ACTORS", &s.actors),
        ("TASK LEASES", &s.leases),
        ("JOBS", &s.jobs),
        ("QUEUE", &s.queue),
    ] {
        println!("{title} ({})", list.len());
        for w in list {
            let gpus: Vec<String> = w
                .gpus
                .iter()
                .map(|g| format!("{}({})", g.index, g.share))
                .collect();
            let life = match &w.actor {
                Some(a) => {
                    let checkpoint = match (a.checkpoint_seq, a.checkpoint_age_ms) {
                        (Some(seq), Some(age)) => format!(", checkpoint {seq} {age} ms ago"),
                        _ => String::new(),
                    };
                    let why = a
                        .reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    format!(
                        "  [{} #{}, {} restarts, {} holders{checkpoint}{why}]",
                        a.state, a.incarnation, a.restarts, a.holders
                    )
                }
                None => String::new(),
            };
            println!(
                "  {} {} {}  needs [{}]  on {}  gpus [{}]{life}",
                w.id,
                w.kind,
                w.name,
                w.demand,
                w.node.as_deref().unwrap_or("-"),
                gpus.join(", ")
            );
            if let Some(why) = &w.waiting {
                println!("    {why}");
            }
        }
    }
    println!("GANGS ({})", s.gangs.len());
    for g in &s.gangs {
        println!("  {} {} {}", g.id, g.strategy, g.state);
        if let Some(why) = &g.waiting {
            let fails = g
                .fails_in_ms
                .map(|ms| format!(" (fails in {ms} ms)"))
                .unwrap_or_default();
            println!("    {why}{fails}");
        }
        for (i, b) in g.bundles.iter().enumerate() {
            println!(
                "    bundle {i} [{}]  on {}  {} running, {} waiting",
                b.demand,
                b.node.as_deref().unwrap_or("-"),
                b.leases,
                b.waiting
            );
        }
    }
    if let Some(a) = &s.autoscaler {
        print_autoscaler(a);
    }
}

/// The AUTOSCALER section: node types, launches, its nodes, what it stopped, its decisions.
fn print_autoscaler(a: &ember_core::proto::AutoscalerStatus) {
    println!("AUTOSCALER");
    println!("  node types ({})", a.types.len());
    for t in &a.types {
        println!(
            "    {} [{}]  {} nodes, {} launching  min {} max {} warm {}  {:.2}/h{}",
            t.name,
            t.resources,
            t.nodes,
            t.launching,
            t.min,
            t.max,
            t.warm,
            t.price_micros_per_hour as f64 / 1e6,
            if t.spot { " spot" } else { "" }
        );
        if let Some(why) = &t.failing {
            println!("      failing: {why}");
        }
    }
    println!("  launching ({})", a.launching.len());
    for l in &a.launching {
        println!(
            "    launch {} {} {} {}  {} ms ago: {}",
            l.launch,
            l.node_type,
            l.state,
            l.instance.as_deref().unwrap_or("-"),
            l.age_ms,
            l.reason
        );
    }
    println!("  nodes ({})", a.nodes.len());
    for n in &a.nodes {
        let idle = n
            .idle_ms
            .map(|ms| format!(" for {ms} ms"))
            .unwrap_or_default();
        println!(
            "    {} {} {}  {}{idle}",
            n.node,
            n.node_type,
            n.instance.as_deref().unwrap_or("-"),
            n.state
        );
    }
    println!("  stopped ({})", a.stopped.len());
    for st in &a.stopped {
        let node = st.node.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "    launch {} {} {}  {} ms ago: {}",
            st.launch,
            node,
            st.instance.as_deref().unwrap_or("-"),
            st.age_ms,
            st.why
        );
    }
    println!("  decisions ({})", a.decisions.len());
    for d in &a.decisions {
        println!("    {} ms ago: {}", d.age_ms, d.decision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ember(args: &[&str]) -> u8 {
        main(
            std::iter::once("ember")
                .chain(args.iter().copied())
                .map(OsString::from)
                .collect(),
        )
    }

    #[test]
    fn a_token_loses_the_whitespace_around_it_and_an_empty_one_is_refused() {
        assert_eq!(parse_token("s3cret\n").unwrap(), "s3cret");
        assert_eq!(parse_token("  s3cret ").unwrap(), "s3cret");
        assert!(parse_token(" \n").unwrap_err().contains("empty"));
    }

    #[test]
    fn the_exit_status_is_the_commands_as_the_binary_exits_with() {
        assert_eq!(ember(&["--version"]), 0, "the version");
        assert_eq!(ember(&["bogus"]), 2, "a usage error");
        let dir = tempfile::tempdir().unwrap();
        let nowhere = dir.path().join("no-cluster");
        assert_eq!(
            ember(&["status", "--cluster", nowhere.to_str().unwrap()]),
            1,
            "an error, on the runtime made for the command"
        );
    }
}
