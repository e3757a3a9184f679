//! The executor's own connection to the head, for what its actor asks of the cluster:
//! recording checkpoints and looking up its collective groups.

use std::net::SocketAddr;
use std::sync::Arc;

use ember_core::proto::{
    read_frame, write_frame, ClientReply, ClientRequest, ErrorKind, RemoteError, MAX_FRAME,
};
use ember_core::security::{connect_client, Fingerprint};

/// Where the head is and how to prove membership to it.
#[derive(Debug, Clone)]
pub(crate) struct HeadAddress {
    pub(crate) addr: String,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) token: String,
}

/// One connection to the head, opened on first use and again when it breaks; requests on it
/// run side by side, one stream each. Used from the executor's main runtime.
#[derive(Clone)]
pub(crate) struct HeadLink {
    head: HeadAddress,
    conn: Arc<tokio::sync::Mutex<Option<(quinn::Endpoint, quinn::Connection)>>>,
}

impl HeadLink {
    pub(crate) fn new(head: HeadAddress) -> Self {
        HeadLink {
            head,
            conn: Arc::default(),
        }
    }

    /// Sends `request` and reads the head's one reply. A broken connection is opened again
    /// and the request sent once more, so requests must be safe to repeat. An unreachable
    /// head is an error of kind [`ErrorKind::WorkerDied`]; an error the head answers is
    /// returned as the head worded it.
    pub(crate) async fn request(
        &self,
        request: &ClientRequest,
    ) -> Result<ClientReply, RemoteError> {
        let reply = match self.exchange(request).await {
            Err(e) if e.kind == ErrorKind::WorkerDied => {
                self.forget().await;
                self.exchange(request).await?
            }
            other => other?,
        };
        match reply {
            ClientReply::Error(e) => Err(e),
            reply => Ok(reply),
        }
    }

    async fn forget(&self) {
        *self.conn.lock().await = None;
    }

    async fn connection(&self) -> Result<quinn::Connection, RemoteError> {
        let mut slot = self.conn.lock().await;
        if let Some((_, conn)) = slot.as_ref().filter(|(_, c)| c.close_reason().is_none()) {
            return Ok(conn.clone());
        }
        let head = &self.head;
        let addr: SocketAddr = head
            .addr
            .parse()
            .map_err(|e| unreachable(format!("bad head address {}: {e}", head.addr)))?;
        let bind = SocketAddr::new(
            if addr.is_ipv6() {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            },
            0,
        );
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| unreachable(e.to_string()))?;
        let conn = connect_client(&endpoint, addr, head.fingerprint, &head.token)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        *slot = Some((endpoint, conn.clone()));
        Ok(conn)
    }

    async fn exchange(&self, request: &ClientRequest) -> Result<ClientReply, RemoteError> {
        let conn = self.connection().await?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        write_frame(&mut send, request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = send.finish();
        match read_frame::<_, ClientReply>(&mut recv, MAX_FRAME).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) | Err(_) => Err(unreachable("the head did not answer".into())),
        }
    }
}

fn unreachable(e: String) -> RemoteError {
    RemoteError::new(ErrorKind::WorkerDied, format!("cannot reach the head: {e}"))
}
