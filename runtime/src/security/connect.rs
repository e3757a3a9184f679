//! Opening a client connection: connect with the pinned certificate, then say hello with the
//! token. The command line, programs and executor processes all connect this way.

use std::net::SocketAddr;
use std::time::Duration;

use crate::proto::{read_frame, write_frame, Hello, Welcome};

use super::{client_config, Fingerprint, SERVER_NAME};

/// Why a client connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot reach {addr}: {reason}")]
pub struct ConnectError {
    /// Where it tried.
    pub addr: String,
    /// What went wrong: no answer, a certificate not the pinned one, a refused token.
    pub reason: String,
}

/// Connects to `addr` from `endpoint`, trusting only the certificate `fingerprint`, and says
/// hello as a client with `token`.
pub async fn connect_client(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    token: &str,
) -> Result<quinn::Connection, ConnectError> {
    let fail = |reason: String| ConnectError {
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
    let hello = Hello::Client {
        token: token.to_string(),
    };
    write_frame(&mut send, &hello)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let _ = send.finish();
    match read_frame::<_, Welcome>(&mut recv, 64 << 10).await {
        Ok(Some(Welcome::Accepted { .. })) => Ok(conn),
        Ok(Some(Welcome::Refused { reason })) => Err(fail(format!("refused: {reason}"))),
        _ => Err(fail(match conn.close_reason() {
            Some(r) => format!("refused: {r}"),
            None => "no welcome from the cluster".into(),
        })),
    }
}
