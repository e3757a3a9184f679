//! Opening a connection: connect with the pinned certificate, then say hello with the token.
//! The command line, programs, executor processes and group peers all connect this way.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

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

/// The largest hello or welcome frame read.
pub const HELLO_LIMIT: usize = 64 << 10;

/// Why a hello was not welcomed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The stream failed, or carried something other than a welcome.
    #[error("{0}")]
    Io(String),
    /// The other side refused, with its reason (a wrong token, a malformed hello).
    #[error("refused: {0}")]
    Refused(String),
    /// The stream ended before the welcome.
    #[error("closed before its welcome")]
    Closed,
}

/// Says `hello` on a stream and reads the welcome: the one way every party opens a
/// connection, on QUIC or a Unix socket.
pub async fn say_hello<R, W>(hello: &Hello, rd: &mut R, wr: &mut W) -> Result<(), HelloError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = |e: &dyn std::fmt::Display| HelloError::Io(e.to_string());
    write_frame(wr, hello).await.map_err(|e| io(&e))?;
    wr.flush().await.map_err(|e| io(&e))?;
    match read_frame::<_, Welcome>(rd, HELLO_LIMIT).await {
        Ok(Some(Welcome::Accepted { .. })) => Ok(()),
        Ok(Some(Welcome::Refused { reason })) => Err(HelloError::Refused(reason)),
        Ok(None) => Err(HelloError::Closed),
        Err(e) => Err(io(&e)),
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
    match say_hello(hello, &mut recv, &mut send).await {
        Ok(()) => Ok((conn, send, recv)),
        Err(e @ HelloError::Refused(_)) => Err(fail(e.to_string())),
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
    let hello = Hello::Client {
        token: token.to_string(),
    };
    let (conn, mut send, _) = connect_with_hello(endpoint, addr, fingerprint, &hello).await?;
    let _ = send.finish();
    Ok(conn)
}
