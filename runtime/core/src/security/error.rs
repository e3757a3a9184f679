//! The one error type of [`crate::security`].

use std::path::PathBuf;

use super::Fingerprint;

/// Everything that can go wrong while making, loading or using the cluster's identity.
///
/// Each message names the file or value at fault and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// A file or directory could not be read, written or created. Check the path exists and
    /// that this user may read and write it (the state directory should be owned by the
    /// user running Ember and have mode 0700).
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "write", "create", ...
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Generating a self-signed certificate failed. This is not expected to happen; retrying is
    /// the only remedy.
    #[error("cannot generate the cluster certificate: {0}")]
    CertificateGeneration(#[from] rcgen::Error),

    /// A stored certificate, key or token is unreadable or inconsistent (not PEM, empty, or a
    /// key that does not belong to the certificate). Restore the file from a backup, or delete
    /// the state directory's `cluster.crt`, `cluster.key` and `token` to make a new cluster
    /// identity (every worker and client must then be given the new join command).
    #[error("{}: {reason}: restore it, or delete cluster.crt, cluster.key and token in its directory to make a new cluster identity", path.display())]
    CorruptSecret {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A fingerprint was not `sha256:` followed by 64 hexadecimal digits. Copy it again from
    /// the head's join command or cluster file.
    #[error("bad certificate fingerprint {input:?}: {reason} (expected sha256:<64 hex digits>)")]
    BadFingerprint {
        /// The text that failed to parse.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Building a TLS configuration failed (for instance, the key cannot sign). Check the
    /// identity's certificate and key.
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),

    /// The TLS configuration has no cipher suite QUIC can use for its initial packets. This
    /// is a build problem (the ring provider lacks TLS13_AES_128_GCM_SHA256), not a user error.
    #[error("cannot build the QUIC configuration: {0}")]
    Quic(String),

    /// No cluster file exists where one was looked for. Start a head there, or say where the
    /// cluster is with `--cluster` or `EMBER_CLUSTER`.
    #[error("no Ember cluster at {}: start one with `ember head` or `ember up`, or point --cluster / EMBER_CLUSTER at its state directory", path.display())]
    NoCluster {
        /// The cluster file that does not exist.
        path: PathBuf,
    },

    /// A cluster file exists but is not valid. Restart the head to rewrite it, or fix it by
    /// hand.
    #[error("bad cluster file {}: {source}: restart the head to rewrite it", path.display())]
    BadClusterFile {
        /// The cluster file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// The server presented a certificate other than the pinned one: either the fingerprint
    /// given to this process is wrong or stale (the head made a new identity), or something
    /// else answers at that address. Check `--fingerprint` or the cluster file.
    #[error("the server's certificate {presented} is not the cluster's (expected {expected}): check --fingerprint or the cluster file")]
    FingerprintMismatch {
        /// The fingerprint this process trusts.
        expected: Fingerprint,
        /// The fingerprint of the certificate the server presented.
        presented: Fingerprint,
    },
}

impl SecurityError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
