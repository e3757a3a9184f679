//! Which machine this is, so that two processes can tell they share one.

use std::sync::OnceLock;

/// An id of this machine's current boot: equal for every process on the machine, different on
/// another machine. Read from `/proc/sys/kernel/random/boot_id`, else the host name.
pub fn host_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        [
            "/proc/sys/kernel/random/boot_id",
            "/proc/sys/kernel/hostname",
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
    })
}
