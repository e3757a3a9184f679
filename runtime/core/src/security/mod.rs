//! Cluster security: the cluster's identity, TLS configurations with certificate pinning,
//! the join token and the cluster file.
//!
//! The head makes a self-signed certificate and a random token on first start
//! ([`ClusterSecrets::load_or_create`]) and writes a [`ClusterFile`] next to them. Workers and
//! clients connect with [`client_config`], which trusts exactly the certificate whose
//! [`Fingerprint`] they were given, and then say hello ([`say_hello`]) with the protocol
//! version and the token. Every listener (the head, actors, task leases, group links) checks
//! both with [`accept_hello`], and whether the sender's role may connect there. Nothing joins,
//! submits or calls without both.

mod cluster_file;
mod connect;
mod error;
mod fsutil;
mod hello;
mod identity;
mod tls;

#[cfg(test)]
mod hello_tests;
#[cfg(test)]
mod tests;

pub use cluster_file::{default_state_dir, ClusterFile, CLUSTER_ENV};
pub use connect::{connect_client, connect_with_hello, ConnectError};
pub use error::SecurityError;
pub use hello::{accept_hello, say_hello, HelloError, HelloListener, HelloRefused};
pub use identity::{token_matches, ClusterSecrets, Fingerprint, Identity};
pub use tls::{client_config, server_config, ALPN, SERVER_NAME};
