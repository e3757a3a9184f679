//! Node providers, where the autoscaler's launches become workers (the trait is
//! [`ember_head::NodeProvider`]):
//!
//! - [`local`]: worker processes of this executable on this machine, with the node type's
//!   GPUs as logical ones by default: `ember up --autoscale`, `ember head --autoscale` and
//!   [`LocalOptions::autoscale`](crate::LocalOptions).
//! - [`command`]: the user's launch and stop scripts (a cloud CLI, ssh), the instance named
//!   on the launch script's standard output.
//! - [`slurm`]: each node a Slurm batch job (`sbatch`, `scancel`), the instance its job id.
//! - `kubernetes` (`kubernetes/`, the `kubernetes` feature): one pod per launch through the
//!   Kubernetes API (`kubernetes::KubernetesProvider`).
//!
//! Every provider starts the same thing, `ember worker` joining the head with its launch
//! ([`WorkerInvocation`]), the token in its environment; they differ in where it runs. What
//! runs `ember` is a [`Program`]: the `ember` executable, or an interpreter and its arguments
//! when Ember runs inside it (`python3 -m ember`), so the worker is `PROGRAM ARGS... worker
//! ...`.

pub mod command;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod local;
mod script;
pub mod slurm;

use ember_core::resources::ByteSize;
use ember_head::LaunchRequest;
use ember_worker::role::Program;

use self::script::shell_join;

/// The variable a launched worker reads its join token from, so that the token is never on a
/// command line (where `ps` shows it).
pub const TOKEN_VAR: &str = "EMBER_TOKEN";

/// How a provider's worker is started: `ember` with these arguments (`worker --head ...
/// --launch ID --node-type NAME ...`) and these environment variables (the join token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInvocation {
    /// The arguments after the program (its executable and its own first arguments), from
    /// `worker` on.
    pub args: Vec<String>,
    /// The environment variables to set.
    pub env: Vec<(String, String)>,
}

impl WorkerInvocation {
    /// The worker for `request`: it joins the head, answers the launch, and is named
    /// `TYPE-LAUNCH`. With `logical_gpus` it declares the node type's GPUs (for machines
    /// without them, as the local provider's are); otherwise it finds its GPUs through NVML,
    /// as on a real GPU machine.
    pub fn new(request: &LaunchRequest<'_>, logical_gpus: bool) -> Self {
        let t = request.node_type;
        let r = &t.resources;
        let mut args: Vec<String> = vec![
            "worker".into(),
            "--head".into(),
            request.cluster.address.to_string(),
            "--fingerprint".into(),
            request.cluster.fingerprint.to_string(),
            "--launch".into(),
            request.launch.to_string(),
            "--node-type".into(),
            t.name.clone(),
            "--name".into(),
            format!("{}-{}", t.name, request.launch),
            "--cpus".into(),
            (r.cpu_millis as f64 / 1000.0).to_string(),
        ];
        if let (true, Some(first)) = (logical_gpus, r.gpus.first()) {
            args.extend([
                "--gpus".into(),
                r.gpus.len().to_string(),
                "--gpu-memory".into(),
                ByteSize(first.memory).to_string(),
                "--accelerator".into(),
                first.accelerator.clone(),
            ]);
        }
        for (name, millis) in &r.custom {
            args.extend([
                "--resource".into(),
                format!("{name}={}", *millis as f64 / 1000.0),
            ]);
        }
        WorkerInvocation {
            args,
            env: vec![(TOKEN_VAR.into(), request.cluster.token.clone())],
        }
    }

    /// The worker's command line for `sh` when `program` runs `ember`: its executable, its
    /// own arguments, then [`args`](Self::args), each word single-quoted unless it is safe
    /// bare (`'/opt/my ember/ember' worker --head ...`, `/usr/bin/python3 -m ember worker
    /// --head ...`). Words that are not UTF-8 are read lossily.
    pub fn shell_line(&self, program: &Program) -> String {
        let program_words = std::iter::once(program.exe.as_os_str())
            .chain(program.args.iter().map(|a| a.as_os_str()))
            .map(|w| w.to_string_lossy().into_owned());
        shell_join(program_words.chain(self.args.iter().cloned()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use ember_core::resources::{GpuDevice, NodeResources};
    use ember_core::security::{ClusterFile, Fingerprint};
    use ember_head::autoscale::NodeType;

    use super::*;

    /// A node type with one logical 24 GiB L4, 4 CPUs and 2 `ssd`.
    pub(crate) fn l4() -> NodeType {
        NodeType {
            name: "l4".into(),
            resources: NodeResources {
                cpu_millis: 4_000,
                gpus: vec![GpuDevice {
                    index: 0,
                    uuid: "logical-0".into(),
                    name: "NVIDIA L4".into(),
                    memory: 24 << 30,
                    accelerator: "L4".into(),
                    logical: true,
                }],
                custom: vec![("ssd".into(), 2_000)],
                ..NodeResources::default()
            },
            min: 0,
            max: 2,
            warm: 0,
            price_micros_per_hour: 800_000,
            spot: false,
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// A cluster at 10.0.0.1:7700 whose join token is `s3cret`.
    pub(crate) fn cluster() -> ClusterFile {
        ClusterFile {
            address: "10.0.0.1:7700".parse().unwrap(),
            token: "s3cret".into(),
            fingerprint: Fingerprint([7; 32]),
        }
    }

    #[test]
    fn a_worker_joins_with_its_launch_and_the_token_stays_off_its_command_line() {
        let cluster = cluster();
        let t = l4();
        let request = LaunchRequest {
            launch: 12,
            node_type: &t,
            cluster: &cluster,
        };
        let real = WorkerInvocation::new(&request, false);
        let line = real.args.join(" ");
        assert!(
            line.starts_with("worker --head 10.0.0.1:7700 --fingerprint sha256:"),
            "{line}"
        );
        assert!(
            line.contains("--launch 12 --node-type l4 --name l4-12 --cpus 4"),
            "{line}"
        );
        assert!(line.ends_with("--resource ssd=2"), "{line}");
        assert!(
            !line.contains("--gpus"),
            "a real machine finds its GPUs: {line}"
        );
        assert!(!line.contains("s3cret"));
        assert_eq!(
            real.env,
            vec![(TOKEN_VAR.to_string(), "s3cret".to_string())]
        );
        let logical = WorkerInvocation::new(&request, true).args.join(" ");
        assert!(
            logical.contains("--gpus 1 --gpu-memory 24GiB --accelerator L4"),
            "{logical}"
        );
    }

    #[test]
    fn a_worker_run_by_an_interpreter_gets_its_arguments_first_quoted_for_sh() {
        let (cluster, t) = (cluster(), l4());
        let request = LaunchRequest {
            launch: 5,
            node_type: &t,
            cluster: &cluster,
        };
        let invocation = WorkerInvocation::new(&request, false);
        let python = Program {
            exe: "/usr/bin/python3".into(),
            args: vec!["-m".into(), "ember".into()],
        };
        let line = invocation.shell_line(&python);
        assert!(
            line.starts_with(
                "/usr/bin/python3 -m ember worker --head 10.0.0.1:7700 --fingerprint sha256:"
            ),
            "{line}"
        );
        assert!(
            line.ends_with("--launch 5 --node-type l4 --name l4-5 --cpus 4 --resource ssd=2"),
            "{line}"
        );
        // An executable alone is the worker's first word, as it always was.
        let ember = Program::executable("/opt/ember/ember".into());
        assert_eq!(
            invocation.shell_line(&ember),
            format!("/opt/ember/ember {}", invocation.args.join(" "))
        );
        // Words that `sh` would split or expand are quoted, and reach the program whole.
        let odd = Program {
            exe: "/opt/my python/python3".into(),
            args: vec!["-c".into(), "import ember; ember.main('$HOME')".into()],
        };
        let line = invocation.shell_line(&odd);
        assert!(
            line.starts_with(
                r"'/opt/my python/python3' -c 'import ember; ember.main('\''$HOME'\'')' worker "
            ),
            "{line}"
        );
        let printed = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' {line}"))
            .output()
            .unwrap();
        let words: Vec<String> = [
            "/opt/my python/python3",
            "-c",
            "import ember; ember.main('$HOME')",
        ]
        .into_iter()
        .map(String::from)
        .chain(invocation.args.iter().cloned())
        .collect();
        assert_eq!(
            String::from_utf8(printed.stdout)
                .unwrap()
                .lines()
                .collect::<Vec<_>>(),
            words
        );
    }
}
