//! The `command` node provider: the user's own scripts launch and stop nodes, for clouds
//! and machines Ember has no provider for (a cloud CLI, ssh to a pool of machines).
//!
//! **Launch.** The launch command is a shell command line, run with `sh -c` in the provider's
//! directory (for a node types file, the file's directory, so `./launch.sh` is found beside
//! it). It gets the head's environment plus, for this launch:
//!
//! | variable | value |
//! |---|---|
//! | `EMBER_WORKER_COMMAND` | the worker to start, one line for `sh`: `'/path/ember' worker --head ... --launch 3 --node-type l4 --name l4-3 --cpus 8` (or, when an interpreter runs Ember, `/usr/bin/python3 -m ember worker --head ...`) |
//! | `EMBER_TOKEN` | the join token, which `ember worker` reads from the environment (never on its command line) |
//! | `EMBER_LAUNCH`, `EMBER_NODE_TYPE`, `EMBER_NAME` | the launch, its node type, and the worker's name (`TYPE-LAUNCH`) |
//! | `EMBER_HEAD`, `EMBER_FINGERPRINT` | the head's address and certificate fingerprint |
//! | `EMBER_CPUS`, `EMBER_GPUS` | the node type's CPUs and GPUs |
//! | `EMBER_GPU_MEMORY`, `EMBER_ACCELERATOR` | its GPUs' memory and type (only for types with GPUs) |
//!
//! It starts the worker somewhere (the worker must see `EMBER_TOKEN` in its environment) and
//! prints the instance's name, which the provider takes from the **last non-empty line** of
//! its standard output; it exits with 0 once the start is under way, not once the worker has
//! joined. It is waited for up to the provider's timeout, then killed with its process group.
//! A non-zero exit, no instance printed or the timeout is a failed launch, reported with the
//! command's name and the end of its standard error (shown in `ember status`'s autoscaler
//! decisions; the node type backs off before its next launch). A script that leaves the worker
//! running in the background must redirect the worker's output (`> worker.log 2>&1`): the
//! script's own outputs are kept only until it ends. For example:
//!
//! ```sh
//! nohup sh -c "exec $EMBER_WORKER_COMMAND" > "worker-$EMBER_LAUNCH.log" 2>&1 < /dev/null &
//! echo "$!"
//! ```
//!
//! **Stop.** The stop command runs the same way with `EMBER_INSTANCE`, the name the launch
//! printed; a non-zero exit is reported with the end of its standard error.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ember_core::resources::{format_millis, ByteSize};
use ember_head::{LaunchRequest, NodeProvider, ProviderError};
use ember_worker::role::Program;

use super::script::{self, describe};
use super::WorkerInvocation;

/// The variable the stop command reads the instance to stop from.
pub const INSTANCE_VAR: &str = "EMBER_INSTANCE";

/// The variable holding the worker's command line, for `sh`.
pub const WORKER_COMMAND_VAR: &str = "EMBER_WORKER_COMMAND";

/// The `command` provider's settings.
#[derive(Debug, Clone)]
pub struct CommandConfig {
    /// The launch command: a shell command line (`sh -c`) that starts a worker and prints its
    /// instance's name as its last line.
    pub launch: String,
    /// The stop command: a shell command line (`sh -c`) that stops the instance named by
    /// `EMBER_INSTANCE`.
    pub stop: String,
    /// The directory the commands run in.
    pub dir: PathBuf,
    /// How long a launch or stop command may run before it is killed and counted failed.
    pub timeout: Duration,
    /// What runs `ember` on the launched machines, as `EMBER_WORKER_COMMAND` starts it: the
    /// `ember` executable, or an interpreter and its arguments (`python3 -m ember`).
    pub ember: Program,
    /// Whether the workers declare their node type's GPUs as logical ones (machines without
    /// GPUs) rather than finding real ones through NVML.
    pub logical_gpus: bool,
}

/// Nodes launched and stopped by the user's commands (see the module's documentation).
#[derive(Debug)]
pub struct CommandProvider {
    config: CommandConfig,
}

impl CommandProvider {
    /// A provider running `config`'s commands.
    pub fn new(config: CommandConfig) -> Self {
        CommandProvider { config }
    }

    /// The environment the launch command gets for `request`, the token among it.
    fn launch_env(&self, request: &LaunchRequest<'_>) -> Vec<(String, String)> {
        let t = request.node_type;
        let r = &t.resources;
        let invocation = WorkerInvocation::new(request, self.config.logical_gpus);
        let line = invocation.shell_line(&self.config.ember);
        let mut env = invocation.env;
        env.extend([
            (WORKER_COMMAND_VAR.to_string(), line),
            ("EMBER_LAUNCH".into(), request.launch.to_string()),
            ("EMBER_NODE_TYPE".into(), t.name.clone()),
            (
                "EMBER_NAME".into(),
                format!("{}-{}", t.name, request.launch),
            ),
            ("EMBER_HEAD".into(), request.cluster.address.to_string()),
            (
                "EMBER_FINGERPRINT".into(),
                request.cluster.fingerprint.to_string(),
            ),
            ("EMBER_CPUS".into(), format_millis(r.cpu_millis)),
            ("EMBER_GPUS".into(), r.gpus.len().to_string()),
        ]);
        if let Some(first) = r.gpus.first() {
            env.extend([
                (
                    "EMBER_GPU_MEMORY".into(),
                    ByteSize(first.memory).to_string(),
                ),
                ("EMBER_ACCELERATOR".into(), first.accelerator.clone()),
            ]);
        }
        env
    }

    fn shell(&self, line: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(line).current_dir(&self.config.dir);
        command
    }
}

impl NodeProvider for CommandProvider {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn launch(&self, request: &LaunchRequest<'_>) -> Result<String, ProviderError> {
        let t = request.node_type;
        let fail = |reason: String| ProviderError::Launch {
            node_type: t.name.clone(),
            reason,
        };
        let what = format!("the launch command {}", describe(&self.config.launch));
        let mut command = self.shell(&self.config.launch);
        command.envs(self.launch_env(request));
        let printed = script::run(command, &what, None, self.config.timeout)
            .map_err(|e| fail(e.to_string()))?;
        let Some(instance) = printed.last_line() else {
            return Err(fail(format!(
                "{what} printed no instance on its standard output (its last non-empty line \
                 names the instance)"
            )));
        };
        tracing::info!(launch = request.launch, node_type = %t.name, instance, "launch command started a node");
        Ok(instance.to_string())
    }

    fn stop(&self, instance: &str) -> Result<(), ProviderError> {
        let what = format!("the stop command {}", describe(&self.config.stop));
        let mut command = self.shell(&self.config.stop);
        command.env(INSTANCE_VAR, instance);
        script::run(command, &what, None, self.config.timeout).map_err(|e| {
            ProviderError::Stop {
                instance: instance.to_string(),
                reason: e.to_string(),
            }
        })?;
        tracing::info!(instance, "stop command stopped a node");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ember_core::security::Fingerprint;

    use super::*;
    use crate::provider::tests::{cluster, l4};

    fn provider(dir: &std::path::Path, launch: &str, stop: &str) -> CommandProvider {
        CommandProvider::new(CommandConfig {
            launch: launch.into(),
            stop: stop.into(),
            dir: dir.to_path_buf(),
            timeout: Duration::from_secs(10),
            ember: Program::executable("/opt/ember dir/ember".into()),
            logical_gpus: true,
        })
    }

    #[test]
    fn the_launch_command_gets_the_worker_and_names_its_instance() {
        let dir = tempfile::tempdir().unwrap();
        // A script beside the "node types file", found from the provider's directory; it
        // records what it was given and prints a line before the instance.
        std::fs::write(
            dir.path().join("launch.sh"),
            "env | grep '^EMBER_' | sort > given\necho creating\necho i-$EMBER_LAUNCH\n",
        )
        .unwrap();
        let p = provider(dir.path(), "sh ./launch.sh", "true");
        let (t, cluster) = (l4(), cluster());
        let request = LaunchRequest {
            launch: 7,
            node_type: &t,
            cluster: &cluster,
        };
        assert_eq!(p.launch(&request).unwrap(), "i-7");
        let given = std::fs::read_to_string(dir.path().join("given")).unwrap();
        let var = |name: &str| {
            given
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {given}"))
                .to_string()
        };
        assert_eq!(var("EMBER_TOKEN"), "s3cret");
        assert_eq!(var("EMBER_LAUNCH"), "7");
        assert_eq!(var("EMBER_NODE_TYPE"), "l4");
        assert_eq!(var("EMBER_NAME"), "l4-7");
        assert_eq!(var("EMBER_HEAD"), "10.0.0.1:7700");
        assert_eq!(var("EMBER_FINGERPRINT"), Fingerprint([7; 32]).to_string());
        assert_eq!(var("EMBER_CPUS"), "4");
        assert_eq!(var("EMBER_GPUS"), "1");
        assert_eq!(var("EMBER_GPU_MEMORY"), "24GiB");
        assert_eq!(var("EMBER_ACCELERATOR"), "L4");
        let line = var(WORKER_COMMAND_VAR);
        assert!(
            line.starts_with(
                "'/opt/ember dir/ember' worker --head 10.0.0.1:7700 --fingerprint sha256:"
            ),
            "{line}"
        );
        assert!(
            line.contains("--launch 7 --node-type l4 --name l4-7 --cpus 4 --gpus 1"),
            "{line}"
        );
        assert!(
            !line.contains("s3cret"),
            "the token stays off the command line"
        );
    }

    #[test]
    fn the_worker_command_of_an_interpreter_runs_ember_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = provider(dir.path(), "true", "true");
        p.config.ember = Program {
            exe: "/usr/bin/python3".into(),
            args: vec!["-m".into(), "ember".into()],
        };
        let (t, cluster) = (l4(), cluster());
        let request = LaunchRequest {
            launch: 7,
            node_type: &t,
            cluster: &cluster,
        };
        let env = p.launch_env(&request);
        let (_, line) = env
            .iter()
            .find(|(name, _)| name == WORKER_COMMAND_VAR)
            .expect("the worker's command");
        assert!(
            line.starts_with(
                "/usr/bin/python3 -m ember worker --head 10.0.0.1:7700 --fingerprint sha256:"
            ),
            "{line}"
        );
        assert!(
            line.contains("--launch 7 --node-type l4 --name l4-7 --cpus 4 --gpus 1"),
            "{line}"
        );
    }

    #[test]
    fn a_launch_that_fails_or_names_nothing_says_why_and_which_command() {
        let dir = tempfile::tempdir().unwrap();
        let (t, cluster) = (l4(), cluster());
        let request = LaunchRequest {
            launch: 1,
            node_type: &t,
            cluster: &cluster,
        };
        let failing = provider(
            dir.path(),
            "echo trying; echo 'quota exceeded in us-east-1' >&2; exit 1",
            "true",
        );
        let e = failing.launch(&request).unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot launch a node of type l4: the launch command `echo trying; echo 'quota \
             exceeded in us-east-1' >&2; exit 1` failed (exit status: 1): quota exceeded in \
             us-east-1"
        );
        let silent = provider(dir.path(), "echo; echo '   '", "true");
        let e = silent.launch(&request).unwrap_err().to_string();
        assert!(
            e.contains("the launch command `echo; echo '   '` printed no instance"),
            "{e}"
        );
    }

    #[test]
    fn stop_gets_the_instance_and_reports_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(dir.path(), "true", "echo \"$EMBER_INSTANCE\" > stopped");
        p.stop("i-0abc").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stopped")).unwrap(),
            "i-0abc\n"
        );
        let failing = provider(dir.path(), "true", "echo \"no such instance\" >&2; exit 4");
        let e = failing.stop("i-0abc").unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot stop instance i-0abc: the stop command `echo \"no such instance\" >&2; \
             exit 4` failed (exit status: 4): no such instance"
        );
    }
}
