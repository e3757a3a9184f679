//! GPU discovery and live statistics.
//!
//! A worker finds its GPUs once at start with [`discover`]: either the logical GPUs declared on
//! the command line ([`LogicalGpus`], from [`parse_logical`]) or the physical ones NVML reports.
//! A machine without an NVIDIA driver reports no GPUs and says so once in the log; nothing here
//! panics for want of a driver. [`GpuMonitor`] then samples free memory and utilisation for each
//! heartbeat.

use crate::context::GpuKind;
use ember_core::resources::{accelerator_from_name, ByteSize, GpuDevice, GpuStat, ResourceError};
use nvml_wrapper::Nvml;

/// Memory of each logical GPU when `--gpu-memory` is not given: 80GiB.
pub const DEFAULT_LOGICAL_MEMORY: u64 = 80 << 30;
/// Accelerator label of logical GPUs when `--accelerator` is not given: `GPU`.
pub const DEFAULT_LOGICAL_ACCELERATOR: &str = "GPU";

/// Errors in the GPU options of the command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// `--gpu-memory` or `--accelerator` was given without `--gpus N`, so it would describe nothing.
    #[error("{0} describes logical GPUs and needs --gpus N as well")]
    WithoutCount(&'static str),
    /// `--gpus 0`: declaring zero logical GPUs is meaningless; leave the option out instead.
    #[error("--gpus 0 declares no GPUs: leave --gpus out, or give a count of at least 1")]
    ZeroCount,
    /// `--gpu-memory` could not be read as a size, or was zero.
    #[error("invalid --gpu-memory {value:?}: {source}")]
    InvalidMemory {
        /// What was written.
        value: String,
        /// Why it is not a size.
        #[source]
        source: ResourceError,
    },
    /// `--accelerator` was empty or blank.
    #[error("--accelerator must not be empty (e.g. --accelerator H100)")]
    EmptyAccelerator,
}

/// GPUs declared on the command line for a machine without them
/// (`--gpus N --gpu-memory 80GiB --accelerator H100`).
///
/// Without `--gpu-memory` each logical GPU has [`DEFAULT_LOGICAL_MEMORY`] (80GiB); without
/// `--accelerator` its label is [`DEFAULT_LOGICAL_ACCELERATOR`] (`GPU`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalGpus {
    /// How many logical GPUs, at least one.
    pub count: u32,
    /// Memory of each, in bytes.
    pub memory: u64,
    /// The accelerator label each carries, e.g. `H100`.
    pub accelerator: String,
}

/// Reads the command line's GPU options into [`LogicalGpus`].
///
/// `None` when `count` is `None` (the worker then asks NVML). Errors when `memory` or
/// `accelerator` is given without `count`, when `count` is zero, when `memory` is not a size
/// (such as `80GiB`, `24GB` or plain bytes) or is zero, or when `accelerator` is blank.
/// Missing memory and accelerator take the defaults documented on [`LogicalGpus`].
pub fn parse_logical(
    count: Option<u32>,
    memory: Option<&str>,
    accelerator: Option<&str>,
) -> Result<Option<LogicalGpus>, GpuError> {
    let Some(count) = count else {
        if memory.is_some() {
            return Err(GpuError::WithoutCount("--gpu-memory"));
        }
        if accelerator.is_some() {
            return Err(GpuError::WithoutCount("--accelerator"));
        }
        return Ok(None);
    };
    if count == 0 {
        return Err(GpuError::ZeroCount);
    }
    let memory = match memory {
        None => DEFAULT_LOGICAL_MEMORY,
        Some(text) => {
            let size: ByteSize = text.parse().map_err(|source| GpuError::InvalidMemory {
                value: text.to_string(),
                source,
            })?;
            if size.0 == 0 {
                return Err(GpuError::InvalidMemory {
                    value: text.to_string(),
                    source: ResourceError::InvalidSize(text.to_string()),
                });
            }
            size.0
        }
    };
    let accelerator = match accelerator {
        None => DEFAULT_LOGICAL_ACCELERATOR.to_string(),
        Some(a) if a.trim().is_empty() => return Err(GpuError::EmptyAccelerator),
        Some(a) => a.trim().to_string(),
    };
    Ok(Some(LogicalGpus {
        count,
        memory,
        accelerator,
    }))
}

/// Where a worker's GPUs came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSource {
    /// Found through NVML, with the driver's version.
    Nvml {
        /// The NVIDIA driver version, e.g. `550.54.15` (empty if NVML would not say).
        driver_version: String,
    },
    /// Declared on the command line with `--gpus N`.
    Logical,
    /// No GPUs: NVML could not be used on this machine.
    None {
        /// Why, e.g. that `libnvidia-ml.so.1` could not be loaded.
        reason: String,
    },
}

/// The worker's GPUs, found once at start by [`discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInventory {
    /// The GPUs, in driver index order.
    pub devices: Vec<GpuDevice>,
    /// Where they came from.
    pub source: GpuSource,
}

impl GpuInventory {
    /// Whether these GPUs are real devices (kernels may use CUDA on them) or logical ones.
    /// A worker without GPUs counts as logical: its tasks and actors get CPU device handles.
    pub fn gpu_kind(&self) -> GpuKind {
        match self.source {
            GpuSource::Nvml { .. } => GpuKind::Physical,
            GpuSource::Logical | GpuSource::None { .. } => GpuKind::Logical,
        }
    }
}

/// Finds the GPUs.
///
/// With `logical` given, reports those (indices `0..count`, uuid `logical-N`, name
/// `logical <accelerator>`, `logical: true`) and does not touch NVML. Otherwise initialises
/// NVML and reports each device's index, UUID, name, total memory and accelerator label (from
/// [`accelerator_from_name`]). Where NVML finds no driver or library, returns no devices with
/// [`GpuSource::None`] and logs one `info` line saying so. A device NVML cannot describe is left
/// out with a warning. Never panics.
pub fn discover(logical: Option<&LogicalGpus>) -> GpuInventory {
    if let Some(l) = logical {
        return GpuInventory {
            devices: logical_devices(l),
            source: GpuSource::Logical,
        };
    }
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => return no_gpus(format!("NVML unavailable: {e}")),
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => return no_gpus(format!("NVML could not count devices: {e}")),
    };
    let driver_version = nvml.sys_driver_version().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "NVML did not report the driver version");
        String::new()
    });
    let mut devices = Vec::with_capacity(count as usize);
    for index in 0..count {
        match describe(&nvml, index) {
            Ok(device) => devices.push(device),
            Err(e) => tracing::warn!(index, error = %e, "leaving out a GPU NVML cannot describe"),
        }
    }
    tracing::info!(
        gpus = devices.len(),
        driver = %driver_version,
        "found GPUs through NVML"
    );
    GpuInventory {
        devices,
        source: GpuSource::Nvml { driver_version },
    }
}

/// The devices of a logical declaration.
pub(crate) fn logical_devices(l: &LogicalGpus) -> Vec<GpuDevice> {
    (0..l.count)
        .map(|index| GpuDevice {
            index,
            uuid: format!("logical-{index}"),
            name: format!("logical {}", l.accelerator),
            memory: l.memory,
            accelerator: l.accelerator.clone(),
            logical: true,
        })
        .collect()
}

/// An inventory without GPUs, logging once why.
pub(crate) fn no_gpus(reason: String) -> GpuInventory {
    tracing::info!(
        %reason,
        "this worker reports no GPUs; declare logical ones with `--gpus N` (and optionally --gpu-memory, --accelerator)"
    );
    GpuInventory {
        devices: Vec::new(),
        source: GpuSource::None { reason },
    }
}

/// One physical GPU as NVML describes it.
pub(crate) fn describe(
    nvml: &Nvml,
    index: u32,
) -> Result<GpuDevice, nvml_wrapper::error::NvmlError> {
    let device = nvml.device_by_index(index)?;
    let name = device.name()?;
    Ok(GpuDevice {
        index,
        uuid: device.uuid()?,
        accelerator: accelerator_from_name(&name),
        name,
        memory: device.memory_info()?.total,
        logical: false,
    })
}

/// Samples free memory and utilisation for heartbeats. Keeps the NVML handle when NVML was
/// found at discovery.
pub struct GpuMonitor {
    /// The NVML handle, for an inventory from NVML that could be opened again.
    nvml: Option<Nvml>,
    /// Index and total memory of each device, in inventory order.
    devices: Vec<(u32, u64)>,
}

impl std::fmt::Debug for GpuMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMonitor")
            .field("nvml", &self.nvml.is_some())
            .field("devices", &self.devices)
            .finish()
    }
}

impl GpuMonitor {
    /// A monitor for `inventory`'s devices. Initialises NVML again only if the inventory came
    /// from NVML; if that fails now, it warns and samples every device as 0 free / 0% busy.
    pub fn new(inventory: &GpuInventory) -> Self {
        let nvml = match inventory.source {
            GpuSource::Nvml { .. } => match Nvml::init() {
                Ok(nvml) => Some(nvml),
                Err(e) => {
                    tracing::warn!(error = %e, "NVML could not be opened again for GPU statistics");
                    None
                }
            },
            GpuSource::Logical | GpuSource::None { .. } => None,
        };
        let physical = matches!(inventory.source, GpuSource::Nvml { .. });
        let devices = inventory
            .devices
            .iter()
            // A physical GPU whose NVML handle is lost reports nothing free rather than everything.
            .map(|d| (d.index, if physical && !d.logical { 0 } else { d.memory }))
            .collect();
        GpuMonitor { nvml, devices }
    }

    /// One [`GpuStat`] per device, in inventory order: from NVML when present
    /// (`memory_info().free`, `utilization_rates().gpu`); for logical GPUs the free memory is
    /// the total and the utilisation 0. An NVML error for one device yields 0 free / 0% for it
    /// and a warning, never a panic.
    pub fn sample(&self) -> Vec<GpuStat> {
        self.devices
            .iter()
            .map(|&(index, fallback_free)| match &self.nvml {
                None => GpuStat {
                    index,
                    memory_free: fallback_free,
                    utilization: 0,
                },
                Some(nvml) => match sample_one(nvml, index) {
                    Ok(stat) => stat,
                    Err(e) => {
                        tracing::warn!(index, error = %e, "could not sample GPU statistics");
                        GpuStat {
                            index,
                            memory_free: 0,
                            utilization: 0,
                        }
                    }
                },
            })
            .collect()
    }
}

/// One device's live figures from NVML.
pub(crate) fn sample_one(
    nvml: &Nvml,
    index: u32,
) -> Result<GpuStat, nvml_wrapper::error::NvmlError> {
    let device = nvml.device_by_index(index)?;
    Ok(GpuStat {
        index,
        memory_free: device.memory_info()?.free,
        utilization: device.utilization_rates()?.gpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100s() -> LogicalGpus {
        LogicalGpus {
            count: 2,
            memory: 80 << 30,
            accelerator: "H100".to_string(),
        }
    }

    #[test]
    fn monitor_can_move_to_a_heartbeat_task() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<GpuMonitor>();
        send_sync::<GpuInventory>();
    }

    #[test]
    fn nvml_init_does_not_panic_without_a_driver() {
        // Whatever the machine, init returns (Ok with a driver, Err without), never panics.
        let result = std::panic::catch_unwind(Nvml::init);
        assert!(result.is_ok(), "Nvml::init panicked");
    }

    #[test]
    fn discover_without_logical_never_panics_and_is_consistent() {
        let inv = discover(None);
        match &inv.source {
            GpuSource::None { reason } => {
                assert!(inv.devices.is_empty());
                assert!(!reason.is_empty());
                eprintln!("no NVIDIA driver here: {reason}");
            }
            GpuSource::Nvml { .. } => assert!(inv.devices.iter().all(|d| !d.logical)),
            GpuSource::Logical => panic!("discover(None) must not report logical GPUs"),
        }
    }

    #[test]
    fn discover_without_driver_reports_none() {
        // On a machine without libnvidia-ml (such as CI) there must be no devices and a reason.
        if Nvml::init().is_ok() {
            eprintln!("SKIPPED discover_without_driver_reports_none: an NVIDIA driver is present");
            return;
        }
        let inv = discover(None);
        assert!(inv.devices.is_empty());
        match inv.source {
            GpuSource::None { reason } => assert!(!reason.is_empty()),
            other => panic!("expected GpuSource::None, got {other:?}"),
        }
    }

    #[test]
    fn discover_logical_reports_declared_gpus() {
        let inv = discover(Some(&h100s()));
        assert_eq!(inv.source, GpuSource::Logical);
        assert_eq!(inv.devices.len(), 2);
        for (i, d) in inv.devices.iter().enumerate() {
            assert_eq!(d.index, i as u32);
            assert_eq!(d.uuid, format!("logical-{i}"));
            assert_eq!(d.name, "logical H100");
            assert_eq!(d.memory, 80 << 30);
            assert_eq!(d.accelerator, "H100");
            assert!(d.logical);
        }
    }

    #[test]
    fn monitor_on_logical_gpus_reports_all_memory_free() {
        let inv = discover(Some(&h100s()));
        let stats = GpuMonitor::new(&inv).sample();
        assert_eq!(
            stats,
            vec![
                GpuStat {
                    index: 0,
                    memory_free: 80 << 30,
                    utilization: 0
                },
                GpuStat {
                    index: 1,
                    memory_free: 80 << 30,
                    utilization: 0
                },
            ]
        );
    }

    #[test]
    fn monitor_without_gpus_samples_nothing() {
        let inv = GpuInventory {
            devices: Vec::new(),
            source: GpuSource::None {
                reason: "test".to_string(),
            },
        };
        assert!(GpuMonitor::new(&inv).sample().is_empty());
    }

    #[test]
    fn parse_logical_defaults_and_errors() {
        assert_eq!(parse_logical(None, None, None), Ok(None));
        assert_eq!(
            parse_logical(Some(4), None, None),
            Ok(Some(LogicalGpus {
                count: 4,
                memory: 80 << 30,
                accelerator: "GPU".to_string(),
            }))
        );
        assert_eq!(
            parse_logical(Some(2), Some("80GiB"), Some("H100")),
            Ok(Some(h100s()))
        );
        assert_eq!(
            parse_logical(Some(1), Some("24GB"), None)
                .unwrap()
                .unwrap()
                .memory,
            24_000_000_000
        );
        assert_eq!(
            parse_logical(None, Some("80GiB"), None),
            Err(GpuError::WithoutCount("--gpu-memory"))
        );
        assert_eq!(
            parse_logical(None, None, Some("H100")),
            Err(GpuError::WithoutCount("--accelerator"))
        );
        assert!(matches!(
            parse_logical(Some(2), Some("8 parsecs"), None),
            Err(GpuError::InvalidMemory { .. })
        ));
        assert!(matches!(
            parse_logical(Some(2), Some("0"), None),
            Err(GpuError::InvalidMemory { .. })
        ));
        assert_eq!(parse_logical(Some(0), None, None), Err(GpuError::ZeroCount));
        assert_eq!(
            parse_logical(Some(1), None, Some("  ")),
            Err(GpuError::EmptyAccelerator)
        );
        let msg = parse_logical(Some(2), Some("8 parsecs"), None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("8 parsecs"), "{msg}");
    }

    /// GPU-only: listed as ignored on machines without a GPU; on a GPU machine run
    /// `cargo test -p ember-worker -- --ignored gpu_`.
    #[test]
    #[ignore = "needs an NVIDIA GPU and driver (run with --ignored on a GPU machine)"]
    fn gpu_nvml_devices_match_sample() {
        let inv = discover(None);
        assert!(
            matches!(inv.source, GpuSource::Nvml { .. }),
            "no NVIDIA driver found through NVML: {:?}",
            inv.source
        );
        let stats = GpuMonitor::new(&inv).sample();
        assert_eq!(stats.len(), inv.devices.len());
        for (device, stat) in inv.devices.iter().zip(&stats) {
            assert_eq!(stat.index, device.index);
            assert!(
                stat.memory_free <= device.memory,
                "GPU {}: {} free of {}",
                device.index,
                stat.memory_free,
                device.memory
            );
            assert!(stat.utilization <= 100);
            assert!(!device.uuid.is_empty() && !device.name.is_empty());
        }
    }
}
