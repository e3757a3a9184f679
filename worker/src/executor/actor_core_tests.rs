//! The actor's thread with calls that end later: concurrent when the actor does not
//! checkpoint, one at a time when it does, and a seal that waits for the calls in flight.
//! Every wait is on an event, bounded by [`BOUND`] so that a broken host fails instead of
//! hanging.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_core::proto::{read_frame, write_frame, Hello, LocalCall, LocalReply, MAX_FRAME};
use ember_core::security::say_hello;
use tokio::net::UnixStream;
use tokio::sync::Notify;

use super::*;
use crate::executor::actor_host::{answer_job, serve_local_caller};
use crate::registry::CallError;

const TOKEN: &str = "t0ken";
const ACTOR: ActorId = ActorId(9);

/// How long any one step may take before the test fails: far beyond what it needs.
const BOUND: Duration = Duration::from_secs(20);

/// What the test and its actor share.
#[derive(Default)]
struct Gate {
    /// Calls to `wait` not yet ended.
    waiting: Mutex<Vec<oneshot::Sender<CallOutcome>>>,
    /// What happened, in order.
    log: Mutex<Vec<String>>,
    /// Told when a `wait` call started.
    started: Notify,
}

impl Gate {
    fn note(&self, what: &str) {
        self.log.lock().unwrap().push(what.to_string());
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Ends every `wait` call in flight; returns how many.
    fn open(&self) -> usize {
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap());
        let n = waiting.len();
        for w in waiting {
            let _ = w.send(Ok(b"opened".to_vec()));
        }
        n
    }
}

/// An actor whose `wait` calls end only when an `open` call (or the test) opens the gate,
/// as a Python `async def` method awaiting an event that a later call sets.
struct GateActor(Arc<Gate>);

impl ActorInstance for GateActor {
    fn call(&mut self, method: &str, _args: &[u8]) -> CallOutcome {
        Err(CallError::UnknownMethod(method.to_string()))
    }

    fn start(&mut self, method: &str, _args: &[u8]) -> Started {
        self.0.note(&format!("{method} starts"));
        match method {
            "wait" => {
                let (tx, rx) = oneshot::channel();
                self.0.waiting.lock().unwrap().push(tx);
                self.0.started.notify_one();
                Started::Later(rx)
            }
            "open" => Started::Done(Ok(self.0.open().to_le_bytes().to_vec())),
            "fail_later" => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(CallError::User("ValueError: boom".into())));
                Started::Later(rx)
            }
            "note" => Started::Done(Ok(Vec::new())),
            other => Started::Done(Err(CallError::UnknownMethod(other.to_string()))),
        }
    }

    fn save(&self) -> Option<Result<Vec<u8>, CallError>> {
        Some(Ok(Vec::new()))
    }
}

/// A core around a fresh gate actor; with `checkpoints`, a checkpoint after every call,
/// recorded at once by a stand-in for the head.
fn gate_core(checkpoints: bool) -> (Rc<ActorCore>, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let policy = CheckpointPolicy {
        enabled: checkpoints,
        every_calls: u32::from(checkpoints),
        every_ms: 0,
    };
    let saves = checkpoints.then(|| {
        let (tx, mut rx) = mpsc::unbounded_channel::<SaveJob>();
        tokio::task::spawn_local(async move {
            while let Some(job) = rx.recv().await {
                let _ = job.done.send(Ok(job.save.seq));
            }
        });
        tx
    });
    let instance = Box::new(GateActor(gate.clone()));
    let core = ActorCore::new(ACTOR, 1, instance, policy, (0, ReplyLog::default()), saves);
    (core, gate)
}

fn call(seq: u64, method: &str) -> ActorCall {
    ActorCall {
        actor: ACTOR,
        caller: 7,
        seq,
        method: method.into(),
        args: Vec::new(),
    }
}

/// Runs `test` on a `LocalSet`, as the actor's thread runs its core, failing past [`BOUND`].
async fn on_actor_thread(test: impl std::future::Future<Output = ()>) {
    let local = tokio::task::LocalSet::new();
    tokio::time::timeout(BOUND, local.run_until(test))
        .await
        .expect("the test ended in time (a call left waiting means calls did not overlap)");
}

/// Sends `call` as the QUIC endpoint passes it to the actor's thread; its reply comes on the
/// channel returned.
fn send_job(core: &Rc<ActorCore>, call: ActorCall) -> oneshot::Receiver<CallReply> {
    let (tx, rx) = oneshot::channel();
    tokio::task::spawn_local(answer_job(core.clone(), call, tx));
    rx
}

#[tokio::test]
async fn on_the_unix_socket_a_call_that_waits_for_a_later_call_ends() {
    on_actor_thread(async {
        let (core, _gate) = gate_core(false);
        let (server, client) = UnixStream::pair().unwrap();
        tokio::task::spawn_local(serve_local_caller(core, TOKEN.into(), server));
        let (mut rd, mut wr) = client.into_split();
        say_hello(&Hello::client(TOKEN), &mut rd, &mut wr)
            .await
            .unwrap();
        // One at a time, the first call would wait forever for the second.
        for (id, method) in [(1, "wait"), (2, "open")] {
            let frame = LocalCall {
                id,
                call: call(id, method),
            };
            write_frame(&mut wr, &frame).await.unwrap();
        }
        tokio::io::AsyncWriteExt::flush(&mut wr).await.unwrap();
        let mut replies = std::collections::BTreeMap::new();
        for _ in 0..2 {
            let LocalReply { id, reply } = read_frame(&mut rd, MAX_FRAME).await.unwrap().unwrap();
            replies.insert(id, reply);
        }
        assert_eq!(
            replies[&1],
            Ok(b"opened".to_vec()),
            "the waiting call ended"
        );
        assert_eq!(
            replies[&2],
            Ok(1usize.to_le_bytes().to_vec()),
            "it opened one"
        );
    })
    .await;
}

#[tokio::test]
async fn over_quic_a_call_that_waits_for_a_later_call_ends() {
    on_actor_thread(async {
        let (core, _gate) = gate_core(false);
        let waiting = send_job(&core, call(1, "wait"));
        let opening = send_job(&core, call(2, "open"));
        assert_eq!(opening.await.unwrap(), Ok(1usize.to_le_bytes().to_vec()));
        assert_eq!(waiting.await.unwrap(), Ok(b"opened".to_vec()));
    })
    .await;
}

#[tokio::test]
async fn a_call_that_fails_later_reaches_its_caller_as_the_users_error() {
    on_actor_thread(async {
        let (core, _gate) = gate_core(false);
        let err = send_job(&core, call(1, "fail_later"))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::User, "{err}");
        assert!(err.message.contains("ValueError: boom"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn an_actor_that_checkpoints_runs_its_calls_one_at_a_time() {
    on_actor_thread(async {
        let (core, gate) = gate_core(true);
        let waiting = send_job(&core, call(1, "wait"));
        let noting = send_job(&core, call(2, "note"));
        gate.started.notified().await;
        gate.note("wait ends");
        assert_eq!(gate.open(), 1);
        assert_eq!(waiting.await.unwrap(), Ok(b"opened".to_vec()));
        assert_eq!(noting.await.unwrap(), Ok(Vec::new()));
        assert_eq!(
            gate.log(),
            ["wait starts", "wait ends", "note starts"],
            "the second call started only once the first ended"
        );
    })
    .await;
}

#[tokio::test]
async fn a_seal_waits_for_the_calls_in_flight() {
    on_actor_thread(async {
        let (core, gate) = gate_core(false);
        let waiting = send_job(&core, call(1, "wait"));
        gate.started.notified().await;
        let sealing = {
            let (core, gate) = (core.clone(), gate.clone());
            tokio::task::spawn_local(async move {
                let sealed = core.seal().await;
                gate.note("sealed");
                sealed
            })
        };
        // Let the seal run as far as it can before the call in flight ends.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        gate.note("wait ends");
        gate.open();
        assert_eq!(
            sealing.await.unwrap(),
            Ok(None),
            "no checkpoints: no final one"
        );
        assert_eq!(waiting.await.unwrap(), Ok(b"opened".to_vec()));
        assert_eq!(gate.log(), ["wait starts", "wait ends", "sealed"]);
        let err = send_job(&core, call(2, "note")).await.unwrap().unwrap_err();
        assert_eq!(err.kind, ErrorKind::Moved, "{err}");
    })
    .await;
}

#[tokio::test]
async fn a_sealed_actors_socket_answers_what_ran_then_says_nothing_else_did() {
    on_actor_thread(async {
        let (core, gate) = gate_core(false);
        let (server, client) = UnixStream::pair().unwrap();
        tokio::task::spawn_local(serve_local_caller(core.clone(), TOKEN.into(), server));
        let (mut rd, mut wr) = client.into_split();
        say_hello(&Hello::client(TOKEN), &mut rd, &mut wr)
            .await
            .unwrap();
        let frame = LocalCall {
            id: 1,
            call: call(1, "wait"),
        };
        write_frame(&mut wr, &frame).await.unwrap();
        tokio::io::AsyncWriteExt::flush(&mut wr).await.unwrap();
        tokio::time::timeout(BOUND, gate.started.notified())
            .await
            .expect("the call starts");
        let sealing = {
            let core = core.clone();
            tokio::task::spawn_local(async move { core.seal().await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        gate.open();
        assert_eq!(sealing.await.unwrap(), Ok(None));
        let mut next = async || {
            tokio::time::timeout(BOUND, read_frame::<_, LocalReply>(&mut rd, MAX_FRAME))
                .await
                .expect("the socket answers")
                .unwrap()
        };
        let ran = next().await.expect("the call that ran is answered");
        assert_eq!((ran.id, ran.reply), (1, Ok(b"opened".to_vec())));
        let last = next().await.expect("then the closing reply");
        assert_eq!(last.id, ember_core::proto::CLOSING_REPLY_ID);
        assert_eq!(last.reply.unwrap_err().kind, ErrorKind::Moved);
        assert!(next().await.is_none(), "then the stream ends");
    })
    .await;
}
