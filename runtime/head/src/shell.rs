//! The one task that owns the head's state: it takes inputs over a channel, hands them to
//! [`HeadState::handle`], and carries out the effects: commands to workers, frames to clients,
//! checkpoint I/O, closing connections. Nothing else touches the state.
//!
//! It takes every input that is waiting at once, handles them in order, commits all their
//! `Journal` effects in one durable transaction (group commit), and only then carries out
//! their other effects: nothing is promised before it is committed. A commit that fails stops
//! the head.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ember_core::ids::NodeId;
use ember_core::proto::{
    read_frame, write_frame, ClientReply, ClientRequest, EpochCommand, RemoteError, WorkerCommand,
    WorkerHello, WorkerReply, WorkerTerms, MAX_FRAME,
};
use ember_core::security::ClusterFile;
use ember_head_state::{
    died, CommandId, ConnId, Effect, HeadState, Input, LoadedCheckpoint, RequestId,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoints::CheckpointStore;
use crate::journal::Journal;
use crate::provider::{LaunchRequest, NodeProvider};

/// The most inputs handled, and committed, together.
const GROUP_COMMIT: usize = 256;

/// A frame for a client's request stream, from the state.
#[derive(Debug)]
pub(crate) enum Frame {
    /// Write it and keep the stream open.
    More(ClientReply),
    /// Write it and end the stream.
    Last(ClientReply),
    /// End the stream.
    End,
}

/// What connections send the shell.
pub(crate) enum Msg {
    /// A worker's valid hello: `welcome` gets its node id and the head life it joined.
    Worker {
        conn: ConnId,
        connection: quinn::Connection,
        hello: Box<WorkerHello>,
        welcome: oneshot::Sender<(NodeId, WorkerTerms)>,
    },
    /// A client's request: its frames come back on `frames`.
    Request {
        conn: ConnId,
        request: RequestId,
        body: ClientRequest,
        frames: mpsc::UnboundedSender<Frame>,
    },
    /// Anything else.
    Input(Input),
}

/// How connections reach the shell, and their numbering.
#[derive(Clone)]
pub(crate) struct Shell {
    tx: mpsc::UnboundedSender<Msg>,
    ids: Arc<AtomicU64>,
}

impl Shell {
    /// A fresh number for a connection or a request.
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn send(&self, msg: Msg) {
        let _ = self.tx.send(msg);
    }

    pub(crate) fn input(&self, input: Input) {
        self.send(Msg::Input(input));
    }
}

/// Starts the shell's task; it runs until `stop` turns true or every sender is gone.
pub(crate) fn spawn(
    state: HeadState,
    journal: Journal,
    checkpoints: CheckpointStore,
    provider: Option<(Arc<dyn NodeProvider>, ClusterFile)>,
    stop: watch::Receiver<bool>,
) -> (Shell, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shell = Shell {
        tx: tx.clone(),
        ids: Arc::new(AtomicU64::new(1)),
    };
    let owner = Owner {
        state,
        journal: Arc::new(journal),
        checkpoints: Arc::new(checkpoints),
        tx,
        workers: HashMap::new(),
        conn_nodes: HashMap::new(),
        welcomes: HashMap::new(),
        streams: HashMap::new(),
        cancels: HashMap::new(),
        provider,
    };
    let task = tokio::spawn(owner.run(rx, stop));
    (shell, task)
}

/// The task's own bookkeeping: how to reach what the state names by id. None of it is
/// cluster state.
struct Owner {
    state: HeadState,
    journal: Arc<Journal>,
    checkpoints: Arc<CheckpointStore>,
    tx: mpsc::UnboundedSender<Msg>,
    workers: HashMap<NodeId, quinn::Connection>,
    conn_nodes: HashMap<ConnId, NodeId>,
    welcomes: HashMap<ConnId, (quinn::Connection, oneshot::Sender<(NodeId, WorkerTerms)>)>,
    streams: HashMap<RequestId, mpsc::UnboundedSender<Frame>>,
    cancels: HashMap<CommandId, oneshot::Sender<()>>,
    /// Where the autoscaler's launches go, when the cluster scales itself, and the cluster
    /// its workers join.
    provider: Option<(Arc<dyn NodeProvider>, ClusterFile)>,
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>, mut stop: watch::Receiver<bool>) {
        loop {
            let deadline = self.state.poll_timeout();
            // A timer already due (the autoscaler's pass that waiting work asked for "at
            // once") is handled now, with what else waits: a sleep until it would wait for
            // the runtime's timer, which rounds up to the next millisecond and fires only when
            // the runtime next turns its timer, later on a busy one.
            let first = if deadline.is_some_and(|at| at <= Instant::now()) {
                Some(Input::Tick)
            } else {
                let sleep = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(msg) => self.take(msg),
                        None => return,
                    },
                    _ = sleep => Some(Input::Tick),
                    _ = stop.changed() => return,
                }
            };
            let mut inputs: Vec<Input> = first.into_iter().collect();
            while inputs.len() < GROUP_COMMIT {
                let Ok(msg) = rx.try_recv() else { break };
                inputs.extend(self.take(msg));
            }
            let mut changes = Vec::new();
            let mut effects = Vec::new();
            for input in inputs {
                for effect in self.state.handle(Instant::now(), input) {
                    match effect {
                        Effect::Journal(change) => changes.push(change),
                        other => effects.push(other),
                    }
                }
            }
            if !changes.is_empty() {
                let journal = self.journal.clone();
                let count = changes.len();
                let started = Instant::now();
                let committed = tokio::task::spawn_blocking(move || journal.commit(&changes)).await;
                match committed {
                    Ok(Ok(())) => {
                        // Off by default; `RUST_LOG=ember_head::shell=debug` shows what each
                        // group commit (one fsync) costs on this disk.
                        tracing::debug!(
                            changes = count,
                            micros = started.elapsed().as_micros() as u64,
                            "journal commit"
                        );
                    }
                    Ok(Err(e)) => {
                        tracing::error!("stopping the head: {e}");
                        return;
                    }
                    Err(e) => {
                        tracing::error!("stopping the head: the journal's commit failed: {e}");
                        return;
                    }
                }
            }
            for effect in effects {
                self.carry_out(effect);
            }
        }
    }

    /// Turns a connection's message into the state's input, keeping what the effects need.
    fn take(&mut self, msg: Msg) -> Option<Input> {
        match msg {
            Msg::Worker {
                conn,
                connection,
                hello,
                welcome,
            } => {
                self.welcomes.insert(conn, (connection, welcome));
                Some(Input::WorkerJoined { conn, hello })
            }
            Msg::Request {
                conn,
                request,
                body,
                frames,
            } => {
                self.streams.insert(request, frames);
                Some(Input::Request {
                    conn,
                    request,
                    body,
                })
            }
            Msg::Input(input) => {
                if let Input::Closed { conn } = &input {
                    self.welcomes.remove(conn);
                    if let Some(node) = self.conn_nodes.remove(conn) {
                        self.workers.remove(&node);
                    }
                }
                Some(input)
            }
        }
    }

    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Welcome { conn, node } => {
                if let Some((connection, welcome)) = self.welcomes.remove(&conn) {
                    self.workers.insert(node, connection);
                    self.conn_nodes.insert(conn, node);
                    let terms = WorkerTerms {
                        epoch: self.state.epoch(),
                    };
                    let _ = welcome.send((node, terms));
                }
            }
            Effect::Command {
                node,
                command,
                body,
            } => self.send_command(node, command, body),
            Effect::Cancel { command } => {
                if let Some(cancel) = self.cancels.remove(&command) {
                    let _ = cancel.send(());
                }
            }
            Effect::Stream { request, reply } => {
                if let Some(frames) = self.streams.get(&request) {
                    let _ = frames.send(Frame::More(reply));
                }
            }
            Effect::Reply { request, reply } => {
                if let Some(frames) = self.streams.remove(&request) {
                    let _ = frames.send(Frame::Last(reply));
                }
            }
            Effect::End { request } => {
                if let Some(frames) = self.streams.remove(&request) {
                    let _ = frames.send(Frame::End);
                }
            }
            Effect::CloseNode { node, reason } => {
                if let Some(connection) = self.workers.remove(&node) {
                    tracing::warn!(%node, "closing the worker's connection: {reason}");
                    connection.close(4u32.into(), reason.as_bytes());
                }
            }
            Effect::StoreCheckpoint {
                ticket,
                actor,
                seq,
                sha256,
                image,
            } => {
                let store = self.checkpoints.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let result = store
                        .save(actor, seq, &sha256, image)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Msg::Input(Input::CheckpointStored { ticket, result }));
                });
            }
            Effect::LoadCheckpoint { ticket, actor } => {
                let store = self.checkpoints.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let result = store
                        .latest(actor)
                        .await
                        .map(|found| {
                            found.map(|r| LoadedCheckpoint {
                                seq: r.seq,
                                image: r.image,
                            })
                        })
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Msg::Input(Input::CheckpointLoaded { ticket, result }));
                });
            }
            Effect::Journal(change) => {
                // `run` takes every one out of its batch before this.
                tracing::error!(?change, "a journal change was not committed with its batch");
            }
            Effect::ForgetCheckpoints { actor } => {
                let store = self.checkpoints.clone();
                tokio::spawn(async move { store.remove(actor).await });
            }
            // The state has an autoscaler only when `HeadConfig::autoscale` gave it one, with
            // its provider. Provider calls may block (a cloud CLI, `sbatch`), so they run on a
            // blocking thread; a launch's answer goes back to the state.
            Effect::LaunchNode { launch, node_type } => {
                let found = self
                    .state
                    .config()
                    .autoscaler
                    .as_ref()
                    .and_then(|a| a.policy().types.iter().find(|t| t.name == node_type))
                    .cloned();
                let result = match (&self.provider, found) {
                    (Some((provider, cluster)), Some(t)) => {
                        let (provider, cluster) = (provider.clone(), cluster.clone());
                        let tx = self.tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let request = LaunchRequest {
                                launch,
                                node_type: &t,
                                cluster: &cluster,
                            };
                            let result = provider.launch(&request).map_err(|e| {
                                tracing::warn!(launch, "{e}");
                                e.to_string()
                            });
                            let _ = tx.send(Msg::Input(Input::Launched { launch, result }));
                        });
                        return;
                    }
                    (None, _) => Err("this head has no node provider".to_string()),
                    (_, None) => Err(format!("no node type `{node_type}`")),
                };
                let _ = self.tx.send(Msg::Input(Input::Launched { launch, result }));
            }
            Effect::StopNode { launch, instance } => {
                if let Some((provider, _)) = &self.provider {
                    let provider = provider.clone();
                    tokio::task::spawn_blocking(move || match provider.stop(&instance) {
                        Ok(()) => tracing::info!(launch, %instance, "instance stopped"),
                        Err(e) => tracing::error!(launch, "{e}"),
                    });
                }
            }
        }
    }

    /// Sends one command on a stream of its own and feeds every reply back, the last one
    /// (or the failure) included. A job's command can be cancelled: its stream is reset and
    /// the worker's last reply still read.
    fn send_command(&mut self, node: NodeId, command: CommandId, body: WorkerCommand) {
        let tx = self.tx.clone();
        let reply = move |reply: Result<WorkerReply, RemoteError>| {
            let _ = tx.send(Msg::Input(Input::Replied { command, reply }));
        };
        let Some(connection) = self.workers.get(&node).cloned() else {
            reply(Err(died(node)));
            return;
        };
        let epoch = self.state.epoch();
        let (cancel_tx, mut cancel) = oneshot::channel::<()>();
        // A job's stream stays open: resetting it cancels the job.
        let cancellable = matches!(body, WorkerCommand::RunJob { .. });
        if cancellable {
            self.cancels.insert(command, cancel_tx);
        }
        tokio::spawn(async move {
            let opened = async {
                let (mut send, recv) = connection.open_bi().await.ok()?;
                let fenced = EpochCommand {
                    epoch,
                    command: body,
                };
                write_frame(&mut send, &fenced).await.ok()?;
                if !cancellable {
                    let _ = send.finish();
                }
                Some((send, recv))
            };
            let Some((mut send, mut recv)) = opened.await else {
                return reply(Err(died(node)));
            };
            let mut cancellable = cancellable;
            loop {
                let frame = tokio::select! {
                    frame = read_frame::<_, WorkerReply>(&mut recv, MAX_FRAME) => frame,
                    _ = &mut cancel, if cancellable => {
                        cancellable = false;
                        let _ = send.reset(0u32.into());
                        continue;
                    }
                };
                match frame {
                    Ok(Some(r)) => {
                        let last = r.is_final();
                        reply(Ok(r));
                        if last {
                            let _ = send.finish();
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return reply(Err(died(node))),
                }
            }
        });
    }
}
