//! Where a worker keeps the Unix sockets of its executors, actors and leases: a directory of
//! its own, mode 0700, made fresh under a random name, in a memory-backed file system when the
//! machine has one.
//!
//! Each actor binds two sockets (its calls and its group peers) and each executor one, so
//! creating an actor creates inodes there. On a disk file system that is slow: on ext4, with
//! the inodes of recently deleted sockets around (actors come and go), binding one socket took
//! over 1 ms on this project's VM, against about 15 µs on tmpfs. `/dev/shm` is tmpfs on
//! Linux, so the directory goes there, and into the temporary directory where there is no
//! `/dev/shm` or it is not writable.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use ember_core::ids::NodeId;

/// The memory-backed file system preferred for socket directories.
const MEMORY_FS: &str = "/dev/shm";

/// What every socket directory's name starts with, before the worker's process id.
const PREFIX: &str = "ember-worker-";

/// The directories socket directories may live in, preferred first.
fn bases() -> Vec<PathBuf> {
    let mut bases = vec![PathBuf::from(MEMORY_FS)];
    let temp = std::env::temp_dir();
    if !bases.contains(&temp) {
        bases.push(temp);
    }
    bases
}

/// Creates this worker's socket directory, readable by this user only, in the first base where
/// that works: a directory someone else made, or one left behind, is never taken over, since
/// the name is fresh (process id, node, random) and creating an existing one fails.
pub(crate) fn create(node: NodeId) -> io::Result<PathBuf> {
    let name = format!(
        "{PREFIX}{}-{}-{:016x}",
        std::process::id(),
        node.0,
        rand::random::<u64>()
    );
    let mut last = None;
    for base in bases() {
        let dir = base.join(&name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => {
                tracing::debug!(base = %base.display(), "cannot make the socket directory: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no directory for sockets")))
}

/// Removes the socket directories of workers that are gone (killed workers cannot remove
/// their own), in every base: those named for a process id that no longer runs, owned by
/// this user.
pub(crate) fn sweep_stale() {
    for base in bases() {
        sweep_stale_in(&base);
    }
}

fn sweep_stale_in(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let mine = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if mine && !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn socket_dirs_are_private_fresh_and_in_memory_when_possible() {
        let a = create(NodeId(7)).expect("a socket directory");
        let b = create(NodeId(7)).expect("another");
        assert_ne!(
            a, b,
            "two workers of one process on one node share a directory"
        );
        let mode = std::fs::metadata(&a).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Whether this user can make a directory in the memory-backed file system.
        let probe = Path::new(MEMORY_FS).join(format!("ember-probe-{}", std::process::id()));
        let shm_usable = std::fs::create_dir(&probe).is_ok();
        let _ = std::fs::remove_dir(&probe);
        let expected = if shm_usable {
            PathBuf::from(MEMORY_FS)
        } else {
            std::env::temp_dir()
        };
        assert_eq!(a.parent(), Some(expected.as_path()));
        for d in [a, b] {
            std::fs::remove_dir(d).expect("clean up");
        }
    }

    #[test]
    fn stale_socket_dirs_of_dead_workers_are_swept_in_every_base() {
        // A process that has exited: its id names no running process.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let dead = child.id();
        child.wait().expect("reap");
        let mut made = Vec::new();
        for base in bases() {
            let stale = base.join(format!("{PREFIX}{dead}-1-test"));
            let live = base.join(format!("{PREFIX}{}-1-test", std::process::id()));
            if std::fs::create_dir_all(&stale).is_ok() && std::fs::create_dir_all(&live).is_ok() {
                made.push((stale, live));
            }
        }
        assert!(!made.is_empty(), "no base is writable");
        sweep_stale();
        for (stale, live) in &made {
            assert!(
                !stale.exists(),
                "a dead worker's directory stays: {stale:?}"
            );
            assert!(
                live.exists(),
                "a live worker's directory was removed: {live:?}"
            );
            std::fs::remove_dir_all(live).expect("clean up");
        }
    }
}
