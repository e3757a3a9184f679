//! The cluster file: what a client or worker needs to reach a cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::fsutil::{create_private_dir, read_optional, write_atomic};
use super::{Fingerprint, SecurityError};

/// The environment variable naming a cluster's state directory (or its cluster file).
pub const CLUSTER_ENV: &str = "EMBER_CLUSTER";

/// What a client or worker needs to reach a cluster: the head's address, the join token and
/// the fingerprint of the cluster certificate. The head writes it as
/// `<state_dir>/cluster.json` (mode 0600, atomically).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClusterFile {
    /// The head's QUIC address.
    pub address: SocketAddr,
    /// The cluster's join token (a secret).
    pub token: String,
    /// The fingerprint of the cluster certificate, to pin.
    pub fingerprint: Fingerprint,
}

impl ClusterFile {
    /// The cluster file's name inside a state directory.
    pub const FILE_NAME: &'static str = "cluster.json";

    /// Writes `<state_dir>/cluster.json` atomically with mode 0600, creating `state_dir`
    /// (mode 0700) if needed.
    pub fn write(&self, state_dir: &Path) -> Result<(), SecurityError> {
        create_private_dir(state_dir)?;
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|source| SecurityError::BadClusterFile {
                path: state_dir.join(Self::FILE_NAME),
                source,
            })?;
        json.push(b'\n');
        write_atomic(&state_dir.join(Self::FILE_NAME), &json, 0o600)
    }

    /// Reads a cluster file. `path` may be the state directory or the cluster file itself; a
    /// path that does not exist is taken as a state directory unless it ends in `.json`.
    pub fn load(path: &Path) -> Result<Self, SecurityError> {
        let file = Self::file_path(path);
        let bytes = read_optional(&file)?.ok_or(SecurityError::NoCluster { path: file.clone() })?;
        serde_json::from_slice(&bytes)
            .map_err(|source| SecurityError::BadClusterFile { path: file, source })
    }

    /// Finds and reads the cluster file: `explicit` (from `--cluster`), else the
    /// `EMBER_CLUSTER` variable, else [`default_state_dir`]. When nothing is there the error
    /// says where it looked and how to fix it.
    pub fn discover(explicit: Option<&Path>) -> Result<Self, SecurityError> {
        let from_env = std::env::var_os(CLUSTER_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let place = match (explicit, from_env) {
            (Some(p), _) => p.to_owned(),
            (None, Some(p)) => p,
            (None, None) => default_state_dir(),
        };
        Self::load(&place)
    }

    /// The exact command that joins a worker to this cluster:
    /// `ember worker --head ADDR --token TOKEN --fingerprint sha256:…`.
    pub fn join_command(&self) -> String {
        format!(
            "ember worker --head {} --token {} --fingerprint {}",
            self.address, self.token, self.fingerprint
        )
    }

    fn file_path(path: &Path) -> PathBuf {
        let is_json = path.extension().is_some_and(|e| e == "json");
        if path.is_dir() || (!path.exists() && !is_json) {
            path.join(Self::FILE_NAME)
        } else {
            path.to_owned()
        }
    }
}

/// The default state directory, `$HOME/.ember` (`./.ember` when there is no home directory).
pub fn default_state_dir() -> PathBuf {
    dirs::home_dir()
        .map(|h| h.join(".ember"))
        .unwrap_or_else(|| PathBuf::from(".ember"))
}
