//! The node types file of `ember up --autoscale FILE`: JSON, every field checked (an unknown
//! one is refused, not ignored), turned into the autoscaler's policy.
//!
//! ```json
//! {
//!   "max_nodes": 8,
//!   "node_types": [
//!     { "name": "h100", "gpus": 1, "gpu_memory": "80GiB", "accelerator": "H100", "cpus": 8,
//!       "min": 0, "max": 4, "price_per_hour": 2.5, "idle_timeout": "60s" }
//!   ]
//! }
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use ember_core::resources::{to_millis, ByteSize, GpuDevice, NodeResources};
use ember_head::autoscale::{NodeType, Policy, UtilisationRule};
use serde::Deserialize;

use super::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
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

/// Reads the node types file at `path` into a policy.
pub(crate) fn read(path: &Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the node types file {}", path.display()))?;
    let file: File = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid node types file", path.display()))?;
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
    Ok(Policy {
        types,
        max_nodes: file.max_nodes,
        upscaling_speed: file.upscaling_speed,
        launch_timeout: duration("launch_timeout", &file.launch_timeout)?,
        utilisation,
    })
}
