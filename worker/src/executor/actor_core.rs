//! What an actor's thread does with each call, apart from where the call came from: start it
//! on the instance, record its reply and make the checkpoints it triggers, and seal the actor
//! for a move.
//!
//! Calls start one at a time, in arrival order per caller. A call that ends later
//! ([`Started::Later`], such as a Python `async def` method) runs concurrently with the calls
//! after it when the actor does not checkpoint: its reply goes out when it ends, so replies
//! may pass one another. An actor with a checkpoint policy runs its calls one at a time to
//! their end (and their checkpoint), so a checkpoint always holds the effect of exactly the
//! calls answered before it. A seal waits for the calls in flight to end before its final
//! checkpoint.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use ember_core::ids::ActorId;
use ember_core::proto::{
    encode, ActorCall, CallReply, CheckpointPolicy, CheckpointSave, ErrorKind, RemoteError,
    CHECKPOINT_METHOD,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::checkpoint::{CheckpointImage, ReplyLog, SaveJob};
use super::guarded::{call_error, guarded_start};
use crate::registry::{ActorInstance, CallOutcome, Started};

/// A call's reply, as the actor's thread gives it.
pub(super) enum Reply {
    /// The call ended: its reply.
    Now(CallReply),
    /// The call runs on: its reply comes on this channel when it ends.
    Later(oneshot::Receiver<CallReply>),
}

impl Reply {
    /// Waits for the reply; `actor` names the actor if its thread went away meanwhile.
    pub(super) async fn wait(self, actor: ActorId) -> CallReply {
        match self {
            Reply::Now(reply) => reply,
            Reply::Later(rx) => rx.await.unwrap_or_else(|_| Err(thread_gone(actor))),
        }
    }
}

/// The actor and everything about it that its thread keeps.
pub(super) struct ActorCore {
    actor: ActorId,
    incarnation: u32,
    instance: RefCell<Box<dyn ActorInstance>>,
    policy: CheckpointPolicy,
    /// Calls since the last checkpoint.
    calls_since: Cell<u32>,
    /// The sequence number of the last checkpoint (restored or saved).
    seq: Cell<u64>,
    replies: RefCell<ReplyLog>,
    /// Set by a seal, or when the head refused a checkpoint because a newer incarnation
    /// exists: every call is then answered with [`ErrorKind::Moved`], and the actor's Unix
    /// socket closes its streams ([`ActorCore::sealed`]).
    sealed: watch::Sender<bool>,
    /// Held while a call starts, and, for an actor that checkpoints, until it ends with its
    /// checkpoint; held by a checkpoint and a seal throughout.
    turn: tokio::sync::Mutex<()>,
    /// Calls started and still running (those of an actor that does not checkpoint, which
    /// run concurrently).
    in_flight: watch::Sender<usize>,
    saves: Option<mpsc::UnboundedSender<SaveJob>>,
}

impl ActorCore {
    /// The core of a constructed (or restored) `instance`, whose last checkpoint was `seq`
    /// with the recorded `replies`; `saves` records checkpoints at the head.
    pub(super) fn new(
        actor: ActorId,
        incarnation: u32,
        instance: Box<dyn ActorInstance>,
        policy: CheckpointPolicy,
        (seq, replies): (u64, ReplyLog),
        saves: Option<mpsc::UnboundedSender<SaveJob>>,
    ) -> Rc<ActorCore> {
        Rc::new(ActorCore {
            actor,
            incarnation,
            instance: RefCell::new(instance),
            policy,
            calls_since: Cell::new(0),
            seq: Cell::new(seq),
            replies: RefCell::new(replies),
            sealed: watch::Sender::new(false),
            turn: tokio::sync::Mutex::new(()),
            in_flight: watch::Sender::new(0),
            saves,
        })
    }

    /// The actor's checkpoint policy.
    pub(super) fn policy(&self) -> CheckpointPolicy {
        self.policy
    }

    /// Completes once the actor takes no more calls: sealed for a move, or replaced by a newer
    /// incarnation (or its core is gone).
    pub(super) fn sealed(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut sealed = self.sealed.subscribe();
        async move {
            let _ = sealed.wait_for(|s| *s).await;
        }
    }

    /// Starts one call and answers it: at once when it ended (with the checkpoint it
    /// triggers), or later when it runs on. Must run on the actor's `LocalSet`.
    pub(super) async fn handle(self: &Rc<Self>, call: ActorCall) -> Reply {
        let turn = self.turn.lock().await;
        if call.actor != self.actor {
            return Reply::Now(Err(RemoteError::new(
                ErrorKind::Unknown,
                format!("this endpoint hosts {}, not {}", self.actor, call.actor),
            )));
        }
        if *self.sealed.borrow() {
            return Reply::Now(Err(self.moved()));
        }
        if call.method == CHECKPOINT_METHOD {
            return Reply::Now(
                self.checkpoint()
                    .await
                    .and_then(|seq| encode(&seq).map(|b| b.to_vec()).map_err(internal)),
            );
        }
        let recorded = self.replies.borrow().get(call.caller, call.seq).cloned();
        if let Some(reply) = recorded {
            // Sent again: after a restart (its effect is in the restored state), or after its
            // answer was lost. Its effect may not be in a recorded checkpoint yet: answer only
            // once it is.
            if self.policy.every_calls > 0 && self.calls_since.get() > 0 {
                if let Err(e) = self.checkpoint().await {
                    return Reply::Now(Err(e));
                }
            }
            return Reply::Now(reply);
        }
        let started = {
            let mut instance = self.instance.borrow_mut();
            guarded_start(|| instance.start(&call.method, &call.args))
        };
        let reply = match started {
            Started::Done(outcome) => outcome.map_err(call_error),
            Started::Later(later) if !self.policy.enabled => {
                // Concurrent: the next call may start now; this one is answered when it ends.
                drop(turn);
                return Reply::Later(self.run_on(later));
            }
            Started::Later(later) => finish(later).await,
        };
        if !self.policy.enabled {
            return Reply::Now(reply);
        }
        self.replies
            .borrow_mut()
            .record(call.caller, call.seq, reply.clone());
        self.calls_since.set(self.calls_since.get() + 1);
        let every = self.policy.every_calls;
        if every > 0 && self.calls_since.get() >= every {
            if let Err(e) = self.checkpoint().await {
                return Reply::Now(Err(RemoteError::new(
                    e.kind,
                    format!("the call ran but its checkpoint was not recorded: {e}"),
                )));
            }
        }
        Reply::Now(reply)
    }

    /// Counts a call that runs on as in flight until it ends, on a task of its own (so that
    /// it is counted to its end even if its caller goes away); its reply comes on the channel
    /// returned.
    fn run_on(
        self: &Rc<Self>,
        later: oneshot::Receiver<CallOutcome>,
    ) -> oneshot::Receiver<CallReply> {
        let (tx, rx) = oneshot::channel();
        self.in_flight.send_modify(|n| *n += 1);
        let core = self.clone();
        tokio::task::spawn_local(async move {
            let reply = finish(later).await;
            core.in_flight.send_modify(|n| *n -= 1);
            let _ = tx.send(reply);
        });
        rx
    }

    /// Saves a checkpoint through the head and waits until it is recorded. The caller holds
    /// the turn.
    async fn checkpoint(&self) -> Result<u64, RemoteError> {
        let Some(saves) = &self.saves else {
            return Err(RemoteError::new(
                ErrorKind::BadRequest,
                format!(
                    "{} cannot checkpoint: its type does not implement ember::Checkpoint \
                     (declare it with #[ember::actor(checkpoint, ..)])",
                    self.actor
                ),
            ));
        };
        let state = match self.instance.borrow().save() {
            Some(Ok(state)) => state,
            Some(Err(e)) => return Err(call_error(e)),
            None => return Err(internal("the actor type has no checkpoint support")),
        };
        let seq = self.seq.get() + 1;
        let image = CheckpointImage {
            seq,
            state,
            replies: self.replies.borrow().to_image(),
        };
        let image = encode(&image).map_err(internal)?.to_vec();
        let (tx, rx) = oneshot::channel();
        let save = CheckpointSave {
            actor: self.actor,
            incarnation: self.incarnation,
            seq,
            image,
        };
        saves
            .send(SaveJob { save, done: tx })
            .map_err(|_| process_ending())?;
        match rx.await {
            Ok(Ok(seq)) => {
                self.seq.set(seq);
                self.calls_since.set(0);
                Ok(seq)
            }
            Ok(Err(e)) => {
                if e.kind == ErrorKind::Moved {
                    // A newer incarnation runs elsewhere: this one must not answer again.
                    tracing::warn!(actor = %self.actor, "replaced by a newer incarnation: {e}");
                    self.sealed.send_replace(true);
                }
                Err(e)
            }
            Err(_) => Err(process_ending()),
        }
    }

    /// Stops taking calls, once the calls in flight ended, after a final checkpoint when the
    /// type can make one. Calls that arrive meanwhile wait, then are answered
    /// [`ErrorKind::Moved`].
    pub(super) async fn seal(&self) -> Result<Option<u64>, RemoteError> {
        let _turn = self.turn.lock().await;
        let mut in_flight = self.in_flight.subscribe();
        // Never fails: `self` holds the sender.
        let _ = in_flight.wait_for(|n| *n == 0).await;
        let seq = if self.saves.is_some() {
            Some(self.checkpoint().await?)
        } else {
            None
        };
        self.sealed.send_replace(true);
        Ok(seq)
    }

    /// A checkpoint when calls ran since the last one (the timed policy).
    pub(super) async fn checkpoint_if_changed(&self) {
        let _turn = self.turn.lock().await;
        if self.calls_since.get() > 0 && !*self.sealed.borrow() {
            if let Err(e) = self.checkpoint().await {
                tracing::warn!(actor = %self.actor, "timed checkpoint failed: {e}");
            }
        }
    }

    fn moved(&self) -> RemoteError {
        RemoteError::new(
            ErrorKind::Moved,
            format!(
                "{} incarnation {} no longer takes calls: it moved",
                self.actor, self.incarnation
            ),
        )
    }
}

/// The reply of a call that ended later; a call whose outcome was dropped unsent failed.
async fn finish(later: oneshot::Receiver<CallOutcome>) -> CallReply {
    match later.await {
        Ok(outcome) => outcome.map_err(call_error),
        Err(_) => Err(internal("the call ended without an outcome")),
    }
}

/// The actor's thread is gone: its process is ending.
pub(super) fn thread_gone(actor: ActorId) -> RemoteError {
    RemoteError::new(ErrorKind::WorkerDied, format!("{actor}'s thread is gone"))
}

/// The executor's main thread stopped (its worker is gone) while a checkpoint was on its way:
/// the process is ending, and whether the head recorded the checkpoint is unknown.
fn process_ending() -> RemoteError {
    RemoteError::new(
        ErrorKind::WorkerDied,
        "the actor's process is ending (its worker is gone)",
    )
}

pub(super) fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e.to_string())
}

#[cfg(test)]
#[path = "actor_core_tests.rs"]
mod tests;
