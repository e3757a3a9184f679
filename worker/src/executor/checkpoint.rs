//! An actor's checkpoints from the executor's side: the image saved (the user's state, its
//! sequence number and the replies of recent calls), and the link that records it at the head.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use ember_runtime::proto::{
    read_frame, write_frame, CallReply, CheckpointSave, ClientReply, ClientRequest, ErrorKind,
    RemoteError, MAX_FRAME,
};
use ember_runtime::security::{connect_client, Fingerprint};
use rkyv::{Archive, Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// How many recent replies a checkpoint carries, so that a call retried after a restart is
/// answered from its recorded reply instead of running twice.
pub(crate) const REPLIES_KEPT: usize = 4096;

/// What one checkpoint holds.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub(crate) struct CheckpointImage {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// The actor's own state, from `ember::Checkpoint::save`.
    pub(crate) state: Vec<u8>,
    /// Replies of the calls that ran most recently: `(caller, seq, reply)`, oldest first.
    pub(crate) replies: Vec<(u64, u64, CallReply)>,
}

/// The replies of the most recent calls, by caller and call number.
#[derive(Debug, Default)]
pub(crate) struct ReplyLog {
    order: VecDeque<(u64, u64)>,
    replies: HashMap<(u64, u64), CallReply>,
}

impl ReplyLog {
    /// A log holding `replies` (oldest first).
    pub(crate) fn from_image(replies: Vec<(u64, u64, CallReply)>) -> Self {
        let mut log = ReplyLog::default();
        for (caller, seq, reply) in replies {
            log.record(caller, seq, reply);
        }
        log
    }

    /// The recorded reply of call `seq` from `caller`.
    pub(crate) fn get(&self, caller: u64, seq: u64) -> Option<&CallReply> {
        self.replies.get(&(caller, seq))
    }

    /// Records a reply, forgetting the oldest beyond [`REPLIES_KEPT`].
    pub(crate) fn record(&mut self, caller: u64, seq: u64, reply: CallReply) {
        if self.replies.insert((caller, seq), reply).is_none() {
            self.order.push_back((caller, seq));
        }
        while self.order.len() > REPLIES_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.replies.remove(&old);
            }
        }
    }

    /// The log as a checkpoint carries it.
    pub(crate) fn to_image(&self) -> Vec<(u64, u64, CallReply)> {
        self.order
            .iter()
            .filter_map(|k| self.replies.get(k).map(|r| (k.0, k.1, r.clone())))
            .collect()
    }
}

/// One checkpoint to record, and where to say how that went.
pub(crate) struct SaveJob {
    pub(crate) save: CheckpointSave,
    pub(crate) done: oneshot::Sender<Result<u64, RemoteError>>,
}

/// Where the head is and how to prove membership to it.
#[derive(Debug, Clone)]
pub(crate) struct HeadAddress {
    pub(crate) addr: String,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) token: String,
}

/// Records checkpoints at the head, one at a time, over one connection opened on first use
/// (and again if it breaks). Runs on the executor's main runtime.
pub(crate) async fn serve_saves(head: HeadAddress, mut jobs: mpsc::UnboundedReceiver<SaveJob>) {
    let mut link: Option<(quinn::Endpoint, quinn::Connection)> = None;
    while let Some(job) = jobs.recv().await {
        let mut result = save(&head, &mut link, &job.save).await;
        if matches!(&result, Err(e) if e.kind == ErrorKind::WorkerDied) {
            // The connection broke: open a new one and try once more.
            link = None;
            result = save(&head, &mut link, &job.save).await;
        }
        let _ = job.done.send(result);
    }
}

async fn save(
    head: &HeadAddress,
    link: &mut Option<(quinn::Endpoint, quinn::Connection)>,
    save: &CheckpointSave,
) -> Result<u64, RemoteError> {
    let lost = |e: String| {
        RemoteError::new(
            ErrorKind::WorkerDied,
            format!("cannot reach the head to record a checkpoint: {e}"),
        )
    };
    if link
        .as_ref()
        .is_none_or(|(_, c)| c.close_reason().is_some())
    {
        let addr: SocketAddr = head
            .addr
            .parse()
            .map_err(|e| lost(format!("bad head address {}: {e}", head.addr)))?;
        let bind = SocketAddr::new(
            if addr.is_ipv6() {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            },
            0,
        );
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| lost(e.to_string()))?;
        let conn = connect_client(&endpoint, addr, head.fingerprint, &head.token)
            .await
            .map_err(|e| lost(e.to_string()))?;
        *link = Some((endpoint, conn));
    }
    let Some((_, conn)) = link.as_ref() else {
        return Err(lost("no connection".into()));
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
    write_frame(&mut send, &ClientRequest::SaveCheckpoint(save.clone()))
        .await
        .map_err(|e| lost(e.to_string()))?;
    let _ = send.finish();
    match read_frame::<_, ClientReply>(&mut recv, MAX_FRAME).await {
        Ok(Some(ClientReply::CheckpointSaved { seq })) => Ok(seq),
        Ok(Some(ClientReply::Error(e))) => Err(e),
        Ok(Some(other)) => Err(RemoteError::new(
            ErrorKind::Internal,
            format!("unexpected answer to a checkpoint: {other:?}"),
        )),
        Ok(None) | Err(_) => Err(lost("the head did not answer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_log_keeps_the_newest_and_round_trips() {
        let mut log = ReplyLog::default();
        for seq in 0..(REPLIES_KEPT as u64 + 10) {
            log.record(7, seq, Ok(seq.to_le_bytes().to_vec()));
        }
        assert!(log.get(7, 9).is_none(), "the oldest are forgotten");
        assert_eq!(log.get(7, 10), Some(&Ok(10u64.to_le_bytes().to_vec())));
        let again = ReplyLog::from_image(log.to_image());
        assert_eq!(again.to_image(), log.to_image());
        assert!(again.get(8, 10).is_none(), "callers are told apart");
    }
}
