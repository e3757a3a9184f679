//! The `slurm` node provider: each node is a Slurm batch job running `ember worker`.
//!
//! **Launch** submits one job with `sbatch --parsable`, named `ember-TYPE-LAUNCH`, asking
//! for one task on one node with the node type's CPUs (`--cpus-per-task`, rounded up) and,
//! for a type with GPUs, `--gres=gpu:N` (unless `gres` is off), with `--no-requeue` (a job
//! that loses its node is not run again under the same launch: the autoscaler launches
//! anew), then the configured partition, account, time limit and output file, then the
//! configured extra `sbatch` arguments (last, so they can override). The batch script, given
//! to `sbatch` on its standard input (never written to a file), `exec`s the worker: `ember
//! worker --head ... --launch ID --node-type TYPE --name TYPE-LAUNCH ...` (or, when an
//! interpreter runs Ember, `python3 -m ember worker --head ...`). The join token
//! travels in the job's environment: `sbatch` runs with `EMBER_TOKEN` set and
//! `--export=ALL,EMBER_TOKEN` (or `--export=VARS,EMBER_TOKEN` when only some variables are to
//! be exported), so it is on no command line and in no script. The instance is the Slurm job
//! id that `sbatch --parsable` prints.
//!
//! **Stop** is `scancel JOBID`. Slurm signals every process of the job (the worker gets
//! SIGTERM, then SIGKILL after the cluster's `KillWait`); a job that already ended is not an
//! error. A job still pending in Slurm's queue when the autoscaler's `launch_timeout` runs
//! out is cancelled the same way (the launch is given up, and tried again).
//!
//! `sbatch` and `scancel` are found on `PATH`, or in `bin_dir`; each call is waited for up to
//! `timeout`. A failure is reported with the command and the end of its standard error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ember_head::{LaunchRequest, NodeProvider, ProviderError};
use ember_worker::role::Program;

use super::script::{self, shell_quote, CommandLine};
use super::{WorkerInvocation, TOKEN_VAR};

/// The `slurm` provider's settings.
#[derive(Debug, Clone)]
pub struct SlurmConfig {
    /// What runs `ember` on the cluster's nodes: the `ember` executable, or an interpreter and
    /// its arguments (`python3 -m ember`).
    pub ember: Program,
    /// Whether the workers declare their node type's GPUs as logical ones (nodes without
    /// GPUs) rather than finding real ones through NVML.
    pub logical_gpus: bool,
    /// The partition (`--partition`); the cluster's default when `None`.
    pub partition: Option<String>,
    /// The account (`--account`).
    pub account: Option<String>,
    /// The job's time limit (`--time`, in Slurm's format: `30`, `4:00:00`, `1-00:00:00`);
    /// the partition's when `None`. A worker whose job reaches it is stopped by Slurm and
    /// leaves the cluster like any lost worker.
    pub time_limit: Option<String>,
    /// Whether a node type's GPUs are asked for as `--gres=gpu:N`.
    pub gres: bool,
    /// The job's output file (`--output`, a path on the node, with Slurm's `%j` and `%x`);
    /// Slurm's default (`slurm-%j.out` in the head's working directory) when `None`.
    pub output: Option<String>,
    /// The variables of the head's environment the job gets (`--export`) besides the token:
    /// all of them when `None`.
    pub export: Option<Vec<String>>,
    /// More `sbatch` arguments, after Ember's own (e.g. `--qos=high`, `--exclusive`).
    pub sbatch_args: Vec<String>,
    /// Where `sbatch` and `scancel` are; found on `PATH` when `None`.
    pub bin_dir: Option<PathBuf>,
    /// How long an `sbatch` or `scancel` call may take before it is killed and counted
    /// failed.
    pub timeout: Duration,
}

impl SlurmConfig {
    /// Workers run by `ember`, with real GPUs asked for as gres, in the cluster's default
    /// partition, `sbatch`/`scancel` from `PATH` with a 60 s limit.
    pub fn new(ember: Program) -> Self {
        SlurmConfig {
            ember,
            logical_gpus: false,
            partition: None,
            account: None,
            time_limit: None,
            gres: true,
            output: None,
            export: None,
            sbatch_args: Vec::new(),
            bin_dir: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Nodes as Slurm batch jobs (see the module's documentation).
#[derive(Debug)]
pub struct SlurmProvider {
    config: SlurmConfig,
}

impl SlurmProvider {
    /// A provider submitting jobs as `config` says.
    pub fn new(config: SlurmConfig) -> Self {
        SlurmProvider { config }
    }

    /// The job's name: `ember-TYPE-LAUNCH`.
    pub fn job_name(request: &LaunchRequest<'_>) -> String {
        format!("ember-{}-{}", request.node_type.name, request.launch)
    }

    fn program(&self, name: &str) -> PathBuf {
        match &self.config.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// `sbatch`'s arguments for `request`.
    fn sbatch_args(&self, request: &LaunchRequest<'_>) -> Vec<String> {
        let c = &self.config;
        let r = &request.node_type.resources;
        let export = match &c.export {
            None => format!("ALL,{TOKEN_VAR}"),
            Some(vars) => vars
                .iter()
                .map(String::as_str)
                .chain([TOKEN_VAR])
                .collect::<Vec<_>>()
                .join(","),
        };
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={}", Self::job_name(request)),
            "--nodes=1".into(),
            "--ntasks=1".into(),
            format!("--cpus-per-task={}", r.cpu_millis.div_ceil(1000).max(1)),
            "--no-requeue".into(),
            format!("--export={export}"),
        ];
        if c.gres && !r.gpus.is_empty() {
            args.push(format!("--gres=gpu:{}", r.gpus.len()));
        }
        for (flag, value) in [
            ("--partition", &c.partition),
            ("--account", &c.account),
            ("--time", &c.time_limit),
            ("--output", &c.output),
        ] {
            if let Some(v) = value {
                args.push(format!("{flag}={v}"));
            }
        }
        args.extend(c.sbatch_args.iter().cloned());
        args
    }

    /// The batch script for `request`: it `exec`s the worker (the token is not in it).
    fn batch_script(&self, request: &LaunchRequest<'_>) -> String {
        let invocation = WorkerInvocation::new(request, self.config.logical_gpus);
        let line = invocation.shell_line(&self.config.ember);
        format!(
            "#!/bin/sh\n\
             # An Ember worker: launch {launch} of node type {node_type}, submitted by the \
             head's slurm provider.\n\
             # Its join token comes in the job's environment ({TOKEN_VAR}), not in this \
             script.\n\
             exec {line}\n",
            launch = request.launch,
            node_type = shell_quote(&request.node_type.name),
        )
    }
}

/// Reads the job id from what `sbatch --parsable` printed: `ID` or `ID;CLUSTER` on its last
/// line.
fn job_id(printed: Option<&str>) -> Option<&str> {
    let id = printed?.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then_some(id)
}

impl NodeProvider for SlurmProvider {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    fn launch(&self, request: &LaunchRequest<'_>) -> Result<String, ProviderError> {
        let t = request.node_type;
        let fail = |reason: String| ProviderError::Launch {
            node_type: t.name.clone(),
            reason,
        };
        let mut command = Command::new(self.program("sbatch"));
        command
            .args(self.sbatch_args(request))
            .env(TOKEN_VAR, &request.cluster.token);
        let what = format!("`{}`", CommandLine(&command));
        tracing::debug!(launch = request.launch, "submitting {what}");
        let printed = script::run(
            command,
            &what,
            Some(self.batch_script(request).into_bytes()),
            self.config.timeout,
        )
        .map_err(|e| fail(e.to_string()))?;
        let Some(id) = job_id(printed.last_line()) else {
            return Err(fail(format!(
                "{what} printed no job id (its output: {:?})",
                printed.stdout.trim()
            )));
        };
        tracing::info!(launch = request.launch, node_type = %t.name, job = id, "slurm job submitted");
        Ok(id.to_string())
    }

    fn stop(&self, instance: &str) -> Result<(), ProviderError> {
        let fail = |reason: String| ProviderError::Stop {
            instance: instance.to_string(),
            reason,
        };
        if job_id(Some(instance)).is_none() {
            return Err(fail("not a Slurm job id".into()));
        }
        let mut command = Command::new(self.program("scancel"));
        command.arg(instance);
        let what = format!("`{}`", CommandLine(&command));
        script::run(command, &what, None, self.config.timeout).map_err(|e| fail(e.to_string()))?;
        tracing::info!(job = instance, "slurm job cancelled");
        Ok(())
    }
}

/// Whether `dir` holds `sbatch` (for a check before the head starts).
pub fn has_sbatch(dir: Option<&Path>) -> bool {
    match dir {
        Some(d) => d.join("sbatch").is_file(),
        None => std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("sbatch").is_file())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::provider::tests::{cluster, l4};

    /// A directory with stand-ins for `sbatch` and `scancel` that record their arguments,
    /// environment and standard input beside them, then run `then`.
    fn fake_slurm(then: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["sbatch", "scancel"] {
            let path = dir.path().join(name);
            let d = dir.path().display();
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\nprintf '%s\\n' \"$@\" > {d}/{name}.args\n\
                     cat > {d}/{name}.stdin\nenv > {d}/{name}.env\n{then}\n"
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    fn provider(dir: &Path) -> SlurmProvider {
        let mut config = SlurmConfig::new(Program::executable("/opt/ember/bin/ember".into()));
        config.bin_dir = Some(dir.to_path_buf());
        config.partition = Some("gpu".into());
        config.time_limit = Some("4:00:00".into());
        config.sbatch_args = vec!["--qos=high".into()];
        SlurmProvider::new(config)
    }

    #[test]
    fn a_launch_submits_a_job_that_execs_the_worker_with_the_token_in_its_environment() {
        let fake = fake_slurm("echo 4242");
        let p = provider(fake.path());
        let (t, cluster) = (l4(), cluster());
        let request = LaunchRequest {
            launch: 3,
            node_type: &t,
            cluster: &cluster,
        };
        assert_eq!(p.launch(&request).unwrap(), "4242");
        let read = |f: &str| std::fs::read_to_string(fake.path().join(f)).unwrap();
        assert_eq!(
            read("sbatch.args").lines().collect::<Vec<_>>(),
            [
                "--parsable",
                "--job-name=ember-l4-3",
                "--nodes=1",
                "--ntasks=1",
                "--cpus-per-task=4",
                "--no-requeue",
                "--export=ALL,EMBER_TOKEN",
                "--gres=gpu:1",
                "--partition=gpu",
                "--time=4:00:00",
                "--qos=high",
            ]
        );
        let script = read("sbatch.stdin");
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        let exec = script.lines().last().unwrap();
        assert!(
            exec.starts_with(
                "exec /opt/ember/bin/ember worker --head 10.0.0.1:7700 --fingerprint sha256:"
            ),
            "{exec}"
        );
        assert!(
            exec.contains("--launch 3 --node-type l4 --name l4-3 --cpus 4"),
            "{exec}"
        );
        assert!(!exec.contains("--gpus"), "real GPUs are found: {exec}");
        assert!(!script.contains("s3cret"), "no token in the script");
        assert!(
            !read("sbatch.args").contains("s3cret"),
            "nor on the command line"
        );
        assert!(read("sbatch.env")
            .lines()
            .any(|l| l == "EMBER_TOKEN=s3cret"));
    }

    #[test]
    fn the_batch_script_of_an_interpreter_execs_ember_through_it() {
        let mut config = SlurmConfig::new(Program {
            exe: "/opt/venv dir/bin/python3".into(),
            args: vec!["-m".into(), "ember".into()],
        });
        config.logical_gpus = true;
        let p = SlurmProvider::new(config);
        let (t, cluster) = (l4(), cluster());
        let request = LaunchRequest {
            launch: 3,
            node_type: &t,
            cluster: &cluster,
        };
        let script = p.batch_script(&request);
        let exec = script.lines().last().unwrap();
        assert!(
            exec.starts_with(
                "exec '/opt/venv dir/bin/python3' -m ember worker --head 10.0.0.1:7700 \
                 --fingerprint sha256:"
            ),
            "{exec}"
        );
        assert!(
            exec.contains("--launch 3 --node-type l4 --name l4-3 --cpus 4 --gpus 1"),
            "{exec}"
        );
        assert!(!script.contains("s3cret"), "no token in the script");
    }

    #[test]
    fn options_shape_the_job() {
        let fake = fake_slurm("echo '77;cluster-a'");
        let mut config = SlurmConfig::new(Program::executable("ember".into()));
        config.bin_dir = Some(fake.path().to_path_buf());
        config.logical_gpus = true;
        config.gres = false;
        config.account = Some("ml".into());
        config.output = Some("/var/log/ember/%x-%j.out".into());
        config.export = Some(vec!["PATH".into(), "RUST_LOG".into()]);
        let p = SlurmProvider::new(config);
        let (t, cluster) = (l4(), cluster());
        let request = LaunchRequest {
            launch: 9,
            node_type: &t,
            cluster: &cluster,
        };
        assert_eq!(
            p.launch(&request).unwrap(),
            "77",
            "the cluster's name is not the id"
        );
        let args = std::fs::read_to_string(fake.path().join("sbatch.args")).unwrap();
        assert!(
            args.contains("--export=PATH,RUST_LOG,EMBER_TOKEN\n"),
            "{args}"
        );
        assert!(!args.contains("--gres"), "{args}");
        assert!(!args.contains("--partition"), "{args}");
        assert!(args.contains("--account=ml\n"), "{args}");
        assert!(
            args.contains("--output=/var/log/ember/%x-%j.out\n"),
            "{args}"
        );
        let script = std::fs::read_to_string(fake.path().join("sbatch.stdin")).unwrap();
        assert!(
            script.contains("--gpus 1 --gpu-memory 24GiB --accelerator L4"),
            "logical GPUs declared: {script}"
        );
    }

    #[test]
    fn sbatch_refusing_or_printing_no_job_id_is_a_failed_launch() {
        let (t, cluster) = (l4(), cluster());
        let request = LaunchRequest {
            launch: 1,
            node_type: &t,
            cluster: &cluster,
        };
        let refused = fake_slurm(
            "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2; exit 1",
        );
        let e = provider(refused.path())
            .launch(&request)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot launch a node of type l4: `"), "{e}");
        assert!(
            e.contains("/sbatch --parsable --job-name=ember-l4-1 "),
            "{e}"
        );
        assert!(
            e.ends_with(
                "failed (exit status: 1): sbatch: error: Batch job submission failed: Invalid \
                 partition name specified"
            ),
            "{e}"
        );
        let odd = fake_slurm("echo 'Submitted batch job'");
        let e = provider(odd.path())
            .launch(&request)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("printed no job id (its output: \"Submitted batch job\")"),
            "{e}"
        );
    }

    #[test]
    fn stop_cancels_the_job_and_reports_scancel_failing() {
        let fake = fake_slurm("true");
        provider(fake.path()).stop("4242").unwrap();
        assert_eq!(
            std::fs::read_to_string(fake.path().join("scancel.args")).unwrap(),
            "4242\n"
        );
        let e = provider(fake.path()).stop("--all").unwrap_err().to_string();
        assert_eq!(e, "cannot stop instance --all: not a Slurm job id");
        let failing =
            fake_slurm("echo 'scancel: error: Unable to contact slurm controller' >&2; exit 1");
        let e = provider(failing.path())
            .stop("4242")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot stop instance 4242: `"), "{e}");
        assert!(
            e.ends_with(
                "/scancel 4242` failed (exit status: 1): scancel: error: Unable to contact \
                 slurm controller"
            ),
            "{e}"
        );
    }

    #[test]
    fn sbatch_is_looked_for_where_it_is_said_to_be() {
        let fake = fake_slurm("true");
        assert!(has_sbatch(Some(fake.path())));
        assert!(!has_sbatch(Some(Path::new("/nonexistent"))));
    }
}
