//! Opening a connection: connect with the pinned certificate, then say hello with the token.
//! The command line, programs, executor processes and group peers all connect this way.

use std::net::SocketAddr;
use std::time::Duration;

use crate::proto::Hello;

use super::{client_config, say_hello, Fingerprint, HelloError, SERVER_NAME};

/// Why a connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Nothing welcomed the hello: no answer, a certificate not the pinned one, a connection
    /// lost before the welcome.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// Where it tried.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The other side read the hello and refused it, saying why: another protocol version
    /// (both named), a wrong token, a role not accepted there.
    #[error("{addr} refused the connection: {reason}")]
    Refused {
        /// Where it tried.
        addr: String,
        /// The other side's reason.
        reason: String,
    },
}

impl ConnectError {
    /// Where it tried.
    pub fn addr(&self) -> &str {
        match self {
            ConnectError::Unreachable { addr, .. } | ConnectError::Refused { addr, .. } => addr,
        }
    }
}

/// Connects to `addr` from `endpoint`, trusting only the certificate `fingerprint`, and says
/// `hello` on the connection's first stream. Returns the connection and that stream, welcomed
/// and open for whatever follows the hello.
pub async fn connect_with_hello(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    hello: &Hello,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), ConnectError> {
    let fail = |reason: String| ConnectError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let config = client_config(fingerprint).map_err(|e| fail(e.to_string()))?;
    let conn = endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|e| fail(e.to_string()))?;
    let conn = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .map_err(|_| fail("no answer within 10 s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| fail(e.to_string()))?;
    match say_hello(hello, &mut recv, &mut send).await {
        Ok(_) => Ok((conn, send, recv)),
        Err(HelloError::Refused(reason)) => Err(ConnectError::Refused {
            addr: addr.to_string(),
            reason,
        }),
        Err(_) => Err(fail(match conn.close_reason() {
            Some(r) => format!("refused: {r}"),
            None => "no welcome from the cluster".into(),
        })),
    }
}

/// Connects to `addr` from `endpoint`, trusting only the certificate `fingerprint`, and says
/// hello as a client with `token`.
pub async fn connect_client(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    token: &str,
) -> Result<quinn::Connection, ConnectError> {
    let hello = Hello::client(token);
    let (conn, mut send, _) = connect_with_hello(endpoint, addr, fingerprint, &hello).await?;
    let _ = send.finish();
    Ok(conn)
}
