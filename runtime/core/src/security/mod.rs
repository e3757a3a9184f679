//! Cluster security: the cluster's identity, TLS configurations with certificate pinning,
//! the join token and the cluster file.
//!
//! The head makes a self-signed certificate and a random token on first start
//! ([`ClusterSecrets::load_or_create`]) and writes a [`ClusterFile`] next to them. Workers and
//! clients connect with [`client_config`], which trusts exactly the certificate whose
//! [`Fingerprint`] they were given, and then present the token, which the head checks with
//! [`token_matches`]. Nothing joins or submits without both.

mod cluster_file;
mod connect;
mod error;
mod fsutil;
mod identity;
mod tls;

#[cfg(test)]
mod tests;

pub use cluster_file::{default_state_dir, ClusterFile, CLUSTER_ENV};
pub use connect::{
    connect_client, connect_with_hello, say_hello, ConnectError, HelloError, HELLO_LIMIT,
};
pub use error::SecurityError;
pub use identity::{token_matches, ClusterSecrets, Fingerprint, Identity};
pub use tls::{client_config, server_config, ALPN, SERVER_NAME};
