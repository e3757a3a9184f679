//! The node types file of `ember up --autoscale FILE` and `ember head --autoscale FILE`:
//! JSON, every field checked (an unknown one is refused, not ignored), turned into the
//! autoscaler's policy and the provider that starts its nodes.
//!
//! ```json
//! {
//!   "max_nodes": 8,
//!   "provider": { "kind": "slurm", "partition": "gpu", "time_limit": "1-00:00:00" },
//!   "node_types": [
//!     { "name": "h100", "gpus": 1, "gpu_memory": "80GiB", "accelerator": "H100", "cpus": 8,
//!       "min": 0, "max": 4, "price_per_hour": 2.5, "idle_timeout": "60s" }
//!   ]
//! }
//! ```
//!
//! The provider (`"kind"`: `local`, the default when absent, `command`, `slurm` or
//! `kubernetes`, whose options are `ember::provider::kubernetes::KubernetesConfig`'s) takes
//! `ember` (the `ember` executable on the nodes; default this program, as
//! `ember_worker::role::program` says: this executable, or the interpreter and arguments
//! that run Ember when an extension module is the `ember` command) and `logical_gpus` (the
//! workers declare their type's GPUs instead of finding real ones; default true for `local`,
//! false otherwise), and the options of its kind: `command` its `launch` and `stop` shell
//! commands (run in this file's directory) and `timeout`; `slurm` `partition`, `account`,
//! `time_limit`, `gres`, `output`, `export`, `sbatch_args`, `bin_dir` and `timeout`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ember_core::resources::{to_millis, ByteSize, GpuDevice, NodeResources};
use ember_head::autoscale::{NodeType, Policy, UtilisationRule};
use ember_head::NodeProvider;
use ember_worker::role::{program, Program};
use serde::Deserialize;

use super::parse_duration;
use crate::provider::command::{CommandConfig, CommandProvider};
#[cfg(feature = "kubernetes")]
use crate::provider::kubernetes::{KubernetesConfig, KubernetesProvider};
use crate::provider::local::LocalProvider;
use crate::provider::slurm::{self, SlurmConfig, SlurmProvider};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    provider: Option<ProviderEntry>,
    node_types: Vec<TypeEntry>,
    #[serde(default = "default_max_nodes")]
    max_nodes: u32,
    #[serde(default = "default_speed")]
    upscaling_speed: f64,
    #[serde(default = "default_launch_timeout")]
    launch_timeout: String,
    #[serde(default)]
    utilisation: Option<UtilisationEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeEntry {
    name: String,
    #[serde(default)]
    cpus: Option<f64>,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    gpu_memory: Option<String>,
    #[serde(default)]
    accelerator: Option<String>,
    #[serde(default)]
    resources: Vec<(String, f64)>,
    #[serde(default)]
    min: u32,
    max: u32,
    #[serde(default)]
    warm: u32,
    #[serde(default)]
    price_per_hour: f64,
    #[serde(default)]
    spot: bool,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UtilisationEntry {
    percent: u8,
    #[serde(default = "default_margin")]
    margin: u8,
    min_waiting: usize,
    #[serde(default = "default_samples")]
    samples: u32,
    #[serde(default = "default_cooldown")]
    cooldown: String,
}

/// The provider section: one variant per kind, tagged by `"kind"`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum ProviderEntry {
    Local(LocalEntry),
    Command(CommandEntry),
    Slurm(SlurmEntry),
    #[cfg(feature = "kubernetes")]
    Kubernetes(KubernetesConfig),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalEntry {
    #[serde(default)]
    ember: Option<PathBuf>,
    #[serde(default)]
    logical_gpus: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandEntry {
    launch: String,
    stop: String,
    #[serde(default = "default_provider_timeout")]
    timeout: String,
    #[serde(default)]
    ember: Option<PathBuf>,
    #[serde(default)]
    logical_gpus: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlurmEntry {
    #[serde(default)]
    partition: Option<String>,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    time_limit: Option<String>,
    #[serde(default = "yes")]
    gres: bool,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    export: Option<Vec<String>>,
    #[serde(default)]
    sbatch_args: Vec<String>,
    #[serde(default)]
    bin_dir: Option<PathBuf>,
    #[serde(default = "default_slurm_timeout")]
    timeout: String,
    #[serde(default)]
    ember: Option<PathBuf>,
    #[serde(default)]
    logical_gpus: bool,
}

fn yes() -> bool {
    true
}
fn default_provider_timeout() -> String {
    "120s".into()
}
fn default_slurm_timeout() -> String {
    "60s".into()
}
fn default_max_nodes() -> u32 {
    64
}
fn default_speed() -> f64 {
    1.0
}
fn default_launch_timeout() -> String {
    "120s".into()
}
fn default_idle_timeout() -> String {
    "60s".into()
}
fn default_margin() -> u8 {
    10
}
fn default_samples() -> u32 {
    3
}
fn default_cooldown() -> String {
    "60s".into()
}

fn duration(what: &str, s: &str) -> anyhow::Result<Duration> {
    parse_duration(s).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// What a node types file says: the autoscaler's policy and where its nodes come from.
#[derive(Debug)]
pub(crate) struct NodeTypes {
    /// The node types and the rules of scaling.
    pub(crate) policy: Policy,
    /// The provider that starts their nodes.
    pub(crate) provider: Provider,
}

/// The provider a node types file names, ready to be made.
#[derive(Debug)]
pub(crate) enum Provider {
    /// Worker processes on this machine.
    Local {
        /// Their executable; this one when `None`.
        ember: Option<PathBuf>,
        /// Whether they declare logical GPUs.
        logical_gpus: bool,
    },
    /// The user's launch and stop commands.
    Command(CommandConfig),
    /// Slurm batch jobs.
    Slurm(SlurmConfig),
    /// Kubernetes pods.
    #[cfg(feature = "kubernetes")]
    Kubernetes(KubernetesConfig),
}

impl Provider {
    /// The kind, as the file names it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Provider::Local { .. } => "local",
            Provider::Command(_) => "command",
            Provider::Slurm(_) => "slurm",
            #[cfg(feature = "kubernetes")]
            Provider::Kubernetes(_) => "kubernetes",
        }
    }

    /// Makes the provider (inside the head's Tokio runtime).
    pub(crate) async fn start(self) -> anyhow::Result<Started> {
        let (provider, local): (Arc<dyn NodeProvider>, _) = match self {
            Provider::Local {
                ember,
                logical_gpus,
            } => {
                let program = match ember {
                    Some(exe) => Program::executable(exe),
                    None => this_program()?,
                };
                let local = Arc::new(LocalProvider::new(program, logical_gpus));
                (local.clone(), Some(local))
            }
            Provider::Command(config) => (Arc::new(CommandProvider::new(config)), None),
            Provider::Slurm(config) => {
                if !slurm::has_sbatch(config.bin_dir.as_deref()) {
                    let place = match &config.bin_dir {
                        Some(d) => format!("in {}", d.display()),
                        None => "on PATH".into(),
                    };
                    bail!("the slurm provider needs `sbatch`, and there is none {place}");
                }
                (Arc::new(SlurmProvider::new(config)), None)
            }
            #[cfg(feature = "kubernetes")]
            Provider::Kubernetes(config) => {
                let provider = KubernetesProvider::new(config)
                    .await
                    .context("the kubernetes provider")?;
                (Arc::new(provider), None)
            }
        };
        Ok(Started { provider, local })
    }
}

/// A provider made for the head.
pub(crate) struct Started {
    /// The provider.
    pub(crate) provider: Arc<dyn NodeProvider>,
    /// For `local`, the same provider, whose workers stop with the head.
    pub(crate) local: Option<Arc<LocalProvider>>,
}

/// What runs this program's workers when the file names no `ember`: this executable, or how
/// an interpreter runs Ember ([`program`]).
fn this_program() -> anyhow::Result<Program> {
    program().context("cannot find this program's path (for `ember`)")
}

/// Reads the provider section; `dir` is the file's directory, where commands run.
fn provider(entry: Option<ProviderEntry>, dir: &Path) -> anyhow::Result<Provider> {
    Ok(
        match entry.unwrap_or(ProviderEntry::Local(LocalEntry::default())) {
            ProviderEntry::Local(e) => Provider::Local {
                ember: e.ember,
                logical_gpus: e.logical_gpus.unwrap_or(true),
            },
            ProviderEntry::Command(e) => {
                for (what, line) in [("launch", &e.launch), ("stop", &e.stop)] {
                    if line.trim().is_empty() {
                        bail!("provider command: its {what} command is empty");
                    }
                }
                Provider::Command(CommandConfig {
                    launch: e.launch,
                    stop: e.stop,
                    dir: dir.to_path_buf(),
                    timeout: duration("provider timeout", &e.timeout)?,
                    ember: match e.ember {
                        Some(exe) => Program::executable(exe),
                        None => this_program()?,
                    },
                    logical_gpus: e.logical_gpus,
                })
            }
            ProviderEntry::Slurm(e) => {
                let mut config = SlurmConfig::new(match e.ember {
                    Some(exe) => Program::executable(exe),
                    None => this_program()?,
                });
                if let Some(vars) = &e.export {
                    if let Some(bad) = vars.iter().find(|v| {
                        v.is_empty() || v.contains([',', '=']) || *v == "ALL" || *v == "NONE"
                    }) {
                        bail!(
                            "provider slurm: export lists variable names (not `{bad}`); leave it \
                         out to export every variable"
                        );
                    }
                }
                config.logical_gpus = e.logical_gpus;
                config.partition = e.partition;
                config.account = e.account;
                config.time_limit = e.time_limit;
                config.gres = e.gres;
                config.output = e.output;
                config.export = e.export;
                config.sbatch_args = e.sbatch_args;
                config.bin_dir = e.bin_dir;
                config.timeout = duration("provider timeout", &e.timeout)?;
                Provider::Slurm(config)
            }
            #[cfg(feature = "kubernetes")]
            ProviderEntry::Kubernetes(config) => Provider::Kubernetes(config),
        },
    )
}

/// Reads the node types file at `path`.
pub(crate) fn read(path: &Path) -> anyhow::Result<NodeTypes> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the node types file {}", path.display()))?;
    let file: File = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid node types file", path.display()))?;
    let dir = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let provider = provider(file.provider, &dir).with_context(|| format!("{}", path.display()))?;
    if file.node_types.is_empty() {
        bail!("{}: no node types", path.display());
    }
    let mut types = Vec::new();
    for t in file.node_types {
        let memory = match &t.gpu_memory {
            Some(m) if t.gpus == 0 => bail!("node type {}: gpu_memory {m} without gpus", t.name),
            Some(m) => {
                m.parse::<ByteSize>()
                    .with_context(|| format!("node type {}", t.name))?
                    .0
            }
            None => 80 << 30,
        };
        if t.accelerator.is_some() && t.gpus == 0 {
            bail!("node type {}: an accelerator without gpus", t.name);
        }
        let accelerator = t.accelerator.clone().unwrap_or_else(|| "GPU".into());
        let cpus = t.cpus.unwrap_or(1.0);
        let resources = NodeResources {
            cpu_millis: to_millis(cpus).with_context(|| format!("node type {}", t.name))?,
            gpus: (0..t.gpus)
                .map(|index| GpuDevice {
                    index,
                    uuid: format!("GPU-{}-{index}", t.name),
                    name: accelerator.clone(),
                    memory,
                    accelerator: accelerator.clone(),
                    logical: true,
                })
                .collect(),
            custom: t
                .resources
                .iter()
                .map(|(n, v)| Ok((n.clone(), to_millis(*v)?)))
                .collect::<Result<_, ember_core::resources::ResourceError>>()
                .with_context(|| format!("node type {}", t.name))?,
            labels: Vec::new(),
        };
        if !(t.price_per_hour.is_finite() && t.price_per_hour >= 0.0) {
            bail!("node type {}: price_per_hour must be 0 or more", t.name);
        }
        types.push(NodeType {
            idle_timeout: duration(
                &format!("node type {} idle_timeout", t.name),
                &t.idle_timeout,
            )?,
            name: t.name,
            resources,
            min: t.min,
            max: t.max,
            warm: t.warm,
            price_micros_per_hour: (t.price_per_hour * 1e6).round() as u64,
            spot: t.spot,
        });
    }
    let utilisation = match file.utilisation {
        Some(u) => Some(UtilisationRule {
            percent: u.percent,
            margin: u.margin,
            min_waiting: u.min_waiting,
            samples: u.samples,
            cooldown: duration("utilisation cooldown", &u.cooldown)?,
        }),
        None => None,
    };
    let policy = Policy {
        types,
        max_nodes: file.max_nodes,
        upscaling_speed: file.upscaling_speed,
        launch_timeout: duration("launch_timeout", &file.launch_timeout)?,
        utilisation,
    };
    Ok(NodeTypes { policy, provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `json` as a node types file in a directory of its own.
    fn read_json(json: &str) -> (tempfile::TempDir, anyhow::Result<NodeTypes>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("types.json");
        std::fs::write(&path, json).unwrap();
        let read = read(&path);
        (dir, read)
    }

    const TYPES: &str = r#""node_types": [{ "name": "l4", "gpus": 1, "cpus": 4, "max": 2 }]"#;

    #[test]
    fn without_a_provider_section_the_nodes_are_local_processes_with_logical_gpus() {
        let (_dir, read) = read_json(&format!("{{ {TYPES} }}"));
        let types = read.unwrap();
        assert!(matches!(
            types.provider,
            Provider::Local {
                ember: None,
                logical_gpus: true
            }
        ));
        assert_eq!(types.policy.types[0].name, "l4");
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn the_kubernetes_example_file_reads_as_a_kubernetes_provider_and_three_types() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes/node-types.json");
        let types = read(&path).unwrap();
        let Provider::Kubernetes(config) = &types.provider else {
            panic!("{:?}", types.provider);
        };
        assert_eq!(config.namespace.as_deref(), Some("ember"));
        assert_eq!(
            config.head_address.as_deref(),
            Some("ember-head.ember.svc.cluster.local:7700")
        );
        let names: Vec<&str> = types.policy.types.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["cpu", "l4", "h100x8"]);
        assert_eq!(types.policy.types[2].resources.gpus.len(), 8);
        // Its options are checked as strictly as the others'.
        let (_dir, read) = read_json(&format!(
            r#"{{ "provider": {{ "kind": "kubernetes", "image": "e:1", "imagee": "x" }}, {TYPES} }}"#
        ));
        assert!(format!("{:#}", read.unwrap_err()).contains("imagee"));
    }

    #[test]
    fn a_command_provider_runs_in_the_files_directory() {
        let (dir, read) = read_json(&format!(
            r#"{{ "provider": {{ "kind": "command", "launch": "./launch.sh", "stop": "./stop.sh",
                 "timeout": "30s", "ember": "/opt/ember/ember" }}, {TYPES} }}"#
        ));
        let Provider::Command(c) = read.unwrap().provider else {
            panic!("not the command provider");
        };
        assert_eq!(c.launch, "./launch.sh");
        assert_eq!(c.stop, "./stop.sh");
        assert_eq!(c.dir, std::fs::canonicalize(dir.path()).unwrap());
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.ember, Program::executable("/opt/ember/ember".into()));
        assert!(!c.logical_gpus, "real GPUs unless said");
    }

    #[test]
    fn a_slurm_provider_takes_its_options_and_defaults_the_others() {
        let (_dir, read) = read_json(&format!(
            r#"{{ "provider": {{ "kind": "slurm", "partition": "gpu", "account": "ml",
                 "time_limit": "4:00:00", "sbatch_args": ["--qos=high"], "gres": false,
                 "logical_gpus": true, "export": ["PATH"] }}, {TYPES} }}"#
        ));
        let Provider::Slurm(c) = read.unwrap().provider else {
            panic!("not the slurm provider");
        };
        assert_eq!(c.partition.as_deref(), Some("gpu"));
        assert_eq!(c.account.as_deref(), Some("ml"));
        assert_eq!(c.time_limit.as_deref(), Some("4:00:00"));
        assert_eq!(c.sbatch_args, ["--qos=high"]);
        assert!(!c.gres && c.logical_gpus);
        assert_eq!(c.export, Some(vec!["PATH".to_string()]));
        assert_eq!(c.ember, program().unwrap(), "this program");
        assert_eq!(
            c.ember,
            Program::executable(std::env::current_exe().unwrap()),
            "this executable, when no interpreter said otherwise"
        );
        assert_eq!(c.timeout, Duration::from_secs(60));
        let (_dir, read) = read_json(&format!(
            r#"{{ "provider": {{ "kind": "slurm" }}, {TYPES} }}"#
        ));
        let Provider::Slurm(c) = read.unwrap().provider else {
            panic!("not the slurm provider");
        };
        assert!(c.gres && !c.logical_gpus && c.partition.is_none() && c.export.is_none());
    }

    #[test]
    fn unknown_kinds_and_fields_and_missing_commands_are_refused() {
        let refusal = |provider: &str| {
            let (_dir, read) = read_json(&format!(r#"{{ "provider": {provider}, {TYPES} }}"#));
            format!("{:#}", read.unwrap_err())
        };
        let e = refusal(r#"{ "kind": "ec2" }"#);
        assert!(e.contains("unknown variant `ec2`"), "{e}");
        let e = refusal(r#"{ "kind": "slurm", "partiton": "gpu" }"#);
        assert!(e.contains("unknown field `partiton`"), "{e}");
        let e = refusal(r#"{ "kind": "local", "launch": "x" }"#);
        assert!(e.contains("unknown field `launch`"), "{e}");
        let e = refusal(r#"{ "kind": "command", "launch": "./up.sh" }"#);
        assert!(e.contains("missing field `stop`"), "{e}");
        let e = refusal(r#"{ "kind": "command", "launch": " ", "stop": "x" }"#);
        assert!(e.contains("its launch command is empty"), "{e}");
        let e = refusal(r#"{ "kind": "slurm", "export": ["NONE"] }"#);
        assert!(
            e.contains("export lists variable names (not `NONE`)"),
            "{e}"
        );
        let e = refusal(r#"{ "partition": "gpu" }"#);
        assert!(e.contains("missing field `kind`"), "{e}");
    }
}
