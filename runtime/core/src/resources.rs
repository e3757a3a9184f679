//! The resource model. Every quantity is an exact integer so that capacity never drifts:
//! GPUs in hundredths ([`GpuShare`]), CPUs and custom resources in thousandths, memory in bytes.

use std::fmt;
use std::str::FromStr;

/// How many [`GpuShare`] units make one whole GPU.
pub const GPU_UNITS: u32 = 100;
/// How many milli-units make one CPU or one unit of a custom resource.
pub const MILLIS: u64 = 1000;

/// Errors in resource declarations: what was written and why it cannot be a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// A GPU count that is negative, not finite, finer than 1/100, or fractional above one GPU.
    #[error("invalid GPU request {0}: use a fraction of one GPU in steps of 0.01 (e.g. 0.25), or a whole number of GPUs")]
    InvalidGpus(String),
    /// A CPU or custom-resource amount that is negative, not finite, or finer than 1/1000.
    #[error("invalid amount {0}: use a non-negative number in steps of 0.001")]
    InvalidAmount(String),
    /// A memory size that could not be read, such as `8 parsecs`.
    #[error(
        "invalid size {0:?}: write bytes or a number with a unit such as 512MiB, 8GiB or 24GB"
    )]
    InvalidSize(String),
    /// GPU memory was asked for without any GPUs: refused rather than ignored (or a GPU
    /// implied), since the request cannot say how much of a GPU it means.
    #[error("gpu_memory needs gpus: ask for a GPU share along with it (e.g. gpus=1 or gpus=0.25; `--gpus 1` on the command line)")]
    GpuMemoryWithoutGpus,
    /// An accelerator type was asked for without any GPUs: refused rather than ignored.
    #[error("accelerator needs gpus: ask for a GPU share along with it (e.g. gpus=1; `--gpus 1` on the command line)")]
    AcceleratorWithoutGpus,
}

/// A share of GPUs in hundredths of a GPU: `GpuShare::from_units(25)` is a quarter GPU.
///
/// A share below one GPU is placed on a single physical GPU; a share of one or more must be whole.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct GpuShare(u32);

impl GpuShare {
    /// No GPU at all.
    pub const ZERO: GpuShare = GpuShare(0);
    /// One whole GPU.
    pub const ONE: GpuShare = GpuShare(GPU_UNITS);

    /// A share from hundredths of a GPU.
    pub const fn from_units(units: u32) -> Self {
        GpuShare(units)
    }

    /// A share of `n` whole GPUs.
    pub const fn whole(n: u32) -> Self {
        GpuShare(n * GPU_UNITS)
    }

    /// Reads a count such as `0.25` or `2`; refuses fractions above one GPU (e.g. `1.5`).
    pub fn from_gpus(gpus: f64) -> Result<Self, ResourceError> {
        let bad = || ResourceError::InvalidGpus(gpus.to_string());
        if !gpus.is_finite() || !(0.0..=1e6).contains(&gpus) {
            return Err(bad());
        }
        let units = (gpus * f64::from(GPU_UNITS)).round();
        if (units - gpus * f64::from(GPU_UNITS)).abs() > 1e-6 {
            return Err(bad());
        }
        let share = GpuShare(units as u32);
        if share.0 > GPU_UNITS && share.0 % GPU_UNITS != 0 {
            return Err(bad());
        }
        Ok(share)
    }

    /// Hundredths of a GPU.
    pub const fn units(self) -> u32 {
        self.0
    }

    /// True for a share strictly between zero and one GPU.
    pub const fn is_fraction(self) -> bool {
        self.0 > 0 && self.0 < GPU_UNITS
    }

    /// How many physical GPUs this share occupies: one for a fraction, `n` for `n` whole GPUs.
    pub const fn devices(self) -> u32 {
        if self.0 == 0 {
            0
        } else if self.0 < GPU_UNITS {
            1
        } else {
            self.0 / GPU_UNITS
        }
    }

    /// The share as a decimal number of GPUs, for display.
    pub fn as_gpus(self) -> f64 {
        f64::from(self.0) / f64::from(GPU_UNITS)
    }
}

impl fmt::Display for GpuShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % GPU_UNITS == 0 {
            write!(f, "{}", self.0 / GPU_UNITS)
        } else {
            write!(f, "{}.{:02}", self.0 / GPU_UNITS, self.0 % GPU_UNITS)
        }
    }
}

/// Converts a decimal amount (CPUs, custom resources) to exact milli-units.
pub fn to_millis(amount: f64) -> Result<u64, ResourceError> {
    let bad = || ResourceError::InvalidAmount(amount.to_string());
    if !amount.is_finite() || !(0.0..=1e12).contains(&amount) {
        return Err(bad());
    }
    let millis = (amount * MILLIS as f64).round();
    if (millis - amount * MILLIS as f64).abs() > 1e-6 {
        return Err(bad());
    }
    Ok(millis as u64)
}

/// Formats milli-units as a decimal amount (`1500` → `1.5`).
pub fn format_millis(millis: u64) -> String {
    if millis % MILLIS == 0 {
        format!("{}", millis / MILLIS)
    } else {
        let s = format!("{}.{:03}", millis / MILLIS, millis % MILLIS);
        s.trim_end_matches('0').to_string()
    }
}

/// A number of bytes, read from and written as `8GiB`, `24GB`, `512MiB` or plain bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = ResourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ResourceError::InvalidSize(s.to_string());
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" | "ki" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" | "mi" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" | "gi" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" | "ti" => 1 << 40,
            _ => return Err(bad()),
        };
        let bytes = num * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, size) in UNITS {
            if self.0 >= size {
                let v = self.0 as f64 / size as f64;
                return if self.0 % size == 0 {
                    write!(f, "{}{}", self.0 / size, name)
                } else {
                    write!(f, "{v:.1}{name}")
                };
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// What one task or actor needs. Declared where the function or actor is declared and
/// overridable per call.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct ResourceDemand {
    /// CPUs in thousandths.
    pub cpu_millis: u64,
    /// GPUs: a fraction of one GPU, or a whole number of GPUs.
    pub gpus: GpuShare,
    /// Bytes of GPU memory reserved on each assigned GPU.
    pub gpu_memory: u64,
    /// The accelerator type every assigned GPU must carry, e.g. `H100` (case-insensitive).
    pub accelerator: Option<String>,
    /// Custom resources in thousandths, sorted by name, each name once.
    pub custom: Vec<(String, u64)>,
}

impl ResourceDemand {
    /// Checks that every need is meaningful on its own: GPU memory or an accelerator type
    /// asked for without any GPUs is refused, never ignored. The client checks this before it
    /// sends a request and the head checks it again on what arrives.
    pub fn check(&self) -> Result<(), ResourceError> {
        if self.gpus.units() == 0 && self.gpu_memory > 0 {
            return Err(ResourceError::GpuMemoryWithoutGpus);
        }
        if self.gpus.units() == 0 && self.accelerator.is_some() {
            return Err(ResourceError::AcceleratorWithoutGpus);
        }
        Ok(())
    }

    /// Sets a custom resource, keeping the list sorted and each name once.
    pub fn set_custom(&mut self, name: &str, millis: u64) {
        match self.custom.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.custom[i].1 = millis,
            Err(i) => self.custom.insert(i, (name.to_string(), millis)),
        }
    }

    /// The amount of a custom resource asked for, in thousandths.
    pub fn custom(&self, name: &str) -> u64 {
        self.custom
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }
}

impl fmt::Display for ResourceDemand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.cpu_millis > 0 {
            parts.push(format!("cpus={}", format_millis(self.cpu_millis)));
        }
        if self.gpus.units() > 0 {
            parts.push(format!("gpus={}", self.gpus));
        }
        if self.gpu_memory > 0 {
            parts.push(format!("gpu_memory={}", ByteSize(self.gpu_memory)));
        }
        if let Some(a) = &self.accelerator {
            parts.push(format!("accelerator={a}"));
        }
        for (name, v) in &self.custom {
            parts.push(format!("{name}={}", format_millis(*v)));
        }
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// One physical (or declared logical) GPU of a node.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct GpuDevice {
    /// The device index as the driver numbers it; what `CUDA_VISIBLE_DEVICES` names.
    pub index: u32,
    /// The device UUID (`GPU-…`), or `logical-N` for a declared logical GPU.
    pub uuid: String,
    /// The marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total device memory in bytes.
    pub memory: u64,
    /// The accelerator type label that placement matches, e.g. `H100`.
    pub accelerator: String,
    /// True for a GPU declared with `--gpus` rather than found through NVML.
    pub logical: bool,
}

/// Everything a node offers, as it reports on joining.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct NodeResources {
    /// CPUs in thousandths.
    pub cpu_millis: u64,
    /// The node's GPUs, each placed on separately.
    pub gpus: Vec<GpuDevice>,
    /// Custom resources in thousandths, sorted by name.
    pub custom: Vec<(String, u64)>,
    /// Labels a request may require, not consumed by placement: the task functions and actor
    /// types this node's executable can run (`task:NAME`, `actor:NAME`), sorted.
    pub labels: Vec<String>,
}

impl fmt::Display for NodeResources {
    /// `cpus=8, gpus=2 (H100 80GiB), ssd=2`: what a node offers, in one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec![format!("cpus={}", format_millis(self.cpu_millis))];
        if let Some(first) = self.gpus.first() {
            parts.push(format!(
                "gpus={} ({} {})",
                self.gpus.len(),
                first.accelerator,
                ByteSize(first.memory)
            ));
        }
        for (name, v) in &self.custom {
            parts.push(format!("{name}={}", format_millis(*v)));
        }
        f.write_str(&parts.join(", "))
    }
}

/// The label of nodes whose executable has the task function `name`.
pub fn task_label(name: &str) -> String {
    format!("task:{name}")
}

/// The label of nodes whose executable has the actor type `name`.
pub fn actor_label(name: &str) -> String {
    format!("actor:{name}")
}

/// Words for a label no node carries, naming the task or actor type it stands for.
pub fn describe_missing_label(label: &str) -> String {
    if let Some(task) = label.strip_prefix("task:") {
        format!("no worker can run task `{task}`: no joined worker's executable registers it")
    } else if let Some(actor) = label.strip_prefix("actor:") {
        format!("no worker can host actor `{actor}`: no joined worker's executable registers it")
    } else {
        format!("no node has label `{label}`")
    }
}

/// The part of one GPU given to a task or actor.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct GpuGrant {
    /// The physical index of the GPU on its node.
    pub index: u32,
    /// The share of that GPU.
    pub share: GpuShare,
    /// Bytes of that GPU's memory reserved.
    pub memory: u64,
}

/// What placement gave one request on its node: exactly the demand, resolved to devices.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Allocation {
    /// CPUs in thousandths.
    pub cpu_millis: u64,
    /// The GPUs and the part of each.
    pub gpus: Vec<GpuGrant>,
    /// Custom resources in thousandths, sorted by name.
    pub custom: Vec<(String, u64)>,
}

impl Allocation {
    /// The value for `CUDA_VISIBLE_DEVICES`: the physical indices, comma-separated.
    pub fn cuda_visible_devices(&self) -> String {
        let idx: Vec<String> = self.gpus.iter().map(|g| g.index.to_string()).collect();
        idx.join(",")
    }
}

/// A GPU's live figures, sent with every heartbeat.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct GpuStat {
    /// The physical index of the GPU on its node.
    pub index: u32,
    /// Free device memory in bytes, as the driver reports it.
    pub memory_free: u64,
    /// Busy time over the last sample period, in percent (0 for a logical GPU).
    pub utilization: u32,
}

/// Derives the accelerator label from a GPU's name: `NVIDIA H100 80GB HBM3` → `H100`.
pub fn accelerator_from_name(name: &str) -> String {
    const KNOWN: [&str; 12] = [
        "GH200", "H200", "H100", "H20", "B200", "A100", "A10G", "A10", "L40S", "L40", "L4", "T4",
    ];
    let upper = name.to_ascii_uppercase();
    for known in KNOWN {
        if upper
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w == known)
        {
            return known.to_string();
        }
    }
    upper
        .split_whitespace()
        .find(|w| *w != "NVIDIA" && *w != "TESLA" && *w != "GEFORCE")
        .unwrap_or("GPU")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_shares_are_exact() {
        assert_eq!(GpuShare::from_gpus(0.25).unwrap().units(), 25);
        assert_eq!(GpuShare::from_gpus(2.0).unwrap().devices(), 2);
        assert_eq!(GpuShare::from_gpus(0.1).unwrap().devices(), 1);
        assert!(GpuShare::from_gpus(1.5).is_err());
        assert!(GpuShare::from_gpus(0.001).is_err());
        assert!(GpuShare::from_gpus(-1.0).is_err());
        assert!(GpuShare::from_gpus(f64::NAN).is_err());
        // Ten tenths are exactly one GPU: no float drift.
        let tenth = GpuShare::from_gpus(0.1).unwrap().units();
        assert_eq!(tenth * 10, GPU_UNITS);
        assert_eq!(GpuShare::from_units(25).to_string(), "0.25");
    }

    #[test]
    fn byte_sizes_parse_and_print() {
        assert_eq!("8GiB".parse::<ByteSize>().unwrap().0, 8 << 30);
        assert_eq!("24GB".parse::<ByteSize>().unwrap().0, 24_000_000_000);
        assert_eq!("512 MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("1024".parse::<ByteSize>().unwrap().0, 1024);
        assert!("8 parsecs".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(80 << 30).to_string(), "80GiB");
    }

    #[test]
    fn accelerator_labels_come_from_names() {
        assert_eq!(accelerator_from_name("NVIDIA H100 80GB HBM3"), "H100");
        assert_eq!(accelerator_from_name("NVIDIA L4"), "L4");
        assert_eq!(accelerator_from_name("NVIDIA A100-SXM4-40GB"), "A100");
        assert_eq!(accelerator_from_name("Tesla T4"), "T4");
    }

    #[test]
    fn millis_round_trip() {
        assert_eq!(to_millis(1.5).unwrap(), 1500);
        assert_eq!(format_millis(1500), "1.5");
        assert_eq!(format_millis(2000), "2");
        assert!(to_millis(0.0001).is_err());
    }
}
