//! An actor's checkpoints from the executor's side: the image saved (the user's state, its
//! sequence number and the replies of recent calls), and the task that records it at the head.

use std::collections::{HashMap, VecDeque};

use ember_core::backoff::Backoff;
use ember_core::proto::{
    CallReply, CheckpointSave, ClientReply, ClientRequest, ErrorKind, RemoteError,
};
use rkyv::{Archive, Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::head_link::HeadLink;

/// How many recent replies a checkpoint carries, so that a call retried after a restart is
/// answered from its recorded reply instead of running twice.
pub(crate) const REPLIES_KEPT: usize = 4096;

/// The most bytes of replies a checkpoint carries: the oldest go first beyond it (the newest
/// reply is always kept), so that actors returning large results keep small checkpoints.
pub(crate) const REPLY_BYTES_KEPT: usize = 4 << 20;

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
    /// The bytes of the replies held.
    bytes: usize,
}

fn reply_bytes(reply: &CallReply) -> usize {
    match reply {
        Ok(bytes) => bytes.len(),
        Err(e) => e.message.len(),
    }
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

    /// Records a reply, forgetting the oldest beyond [`REPLIES_KEPT`] replies or
    /// [`REPLY_BYTES_KEPT`] bytes.
    pub(crate) fn record(&mut self, caller: u64, seq: u64, reply: CallReply) {
        self.bytes += reply_bytes(&reply);
        if let Some(old) = self.replies.insert((caller, seq), reply) {
            // Recorded again: it is the newest now, not where it first was.
            self.bytes -= reply_bytes(&old);
            self.order.retain(|&k| k != (caller, seq));
        }
        self.order.push_back((caller, seq));
        while self.order.len() > REPLIES_KEPT
            || (self.bytes > REPLY_BYTES_KEPT && self.order.len() > 1)
        {
            if let Some(old) = self.order.pop_front() {
                if let Some(r) = self.replies.remove(&old) {
                    self.bytes -= reply_bytes(&r);
                }
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

/// Records checkpoints at the head, one at a time, in the order the actor took them. Runs on
/// the executor's main runtime.
///
/// A head that cannot be reached, or that restarted and has not taken this incarnation back
/// yet, is asked again with [`Backoff`] until it records the checkpoint or refuses it: the call
/// that triggered it is answered late rather than answered unrecorded. This waits no longer
/// than the worker does: a worker that gives its head up stops its executors.
pub(crate) async fn serve_saves(head: HeadLink, mut jobs: mpsc::UnboundedReceiver<SaveJob>) {
    while let Some(job) = jobs.recv().await {
        let mut backoff = Backoff::new();
        let mut attempts = 0u32;
        let result = loop {
            attempts += 1;
            match record(&head, &job.save).await {
                Err(e) if head_away(&e) => {
                    let actor = job.save.actor;
                    if attempts == 1 {
                        tracing::warn!(%actor, "a checkpoint waits for the head: {e}");
                    } else {
                        tracing::debug!(%actor, attempts, "a checkpoint still waits: {e}");
                    }
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                result => break result,
            }
        };
        let _ = job.done.send(result);
    }
}

/// Asks the head to record one checkpoint.
async fn record(head: &HeadLink, save: &CheckpointSave) -> Result<u64, RemoteError> {
    match head
        .request(&ClientRequest::SaveCheckpoint(save.clone()))
        .await?
    {
        ClientReply::CheckpointSaved { seq } => Ok(seq),
        other => Err(RemoteError::new(
            ErrorKind::Internal,
            format!("unexpected answer to a checkpoint: {other:?}"),
        )),
    }
}

/// Whether a checkpoint failed only because the head is away: unreachable ([`HeadLink`]'s
/// `WorkerDied`), or restarted and waiting for this actor's worker to re-join (`Timeout`).
fn head_away(e: &RemoteError) -> bool {
    matches!(e.kind, ErrorKind::WorkerDied | ErrorKind::Timeout)
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

    #[test]
    fn a_reply_recorded_again_is_the_newest() {
        let mut log = ReplyLog::default();
        let big = REPLY_BYTES_KEPT / 2;
        log.record(1, 1, Ok(vec![1; big]));
        log.record(1, 2, Ok(vec![2; 8]));
        log.record(1, 1, Ok(vec![1; big]));
        log.record(1, 3, Ok(vec![3; big]));
        assert!(log.get(1, 1).is_some(), "recorded again, so not the oldest");
        assert!(log.get(1, 3).is_some(), "the newest stays");
        assert!(log.get(1, 2).is_none(), "the oldest goes");
    }

    #[test]
    fn large_replies_push_out_the_oldest_but_the_newest_stays() {
        let mut log = ReplyLog::default();
        let big = REPLY_BYTES_KEPT / 3;
        for seq in 0..5 {
            log.record(1, seq, Ok(vec![seq as u8; big]));
        }
        assert!(log.get(1, 1).is_none());
        assert!(log.get(1, 2).is_some() && log.get(1, 4).is_some());
        log.record(1, 5, Ok(vec![0; REPLY_BYTES_KEPT * 2]));
        assert_eq!(log.to_image().len(), 1, "only the newest, oversized reply");
        assert!(log.get(1, 5).is_some());
    }
}
