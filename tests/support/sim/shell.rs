//! The simulated shell: connections and request streams, the routing of the head's effects to
//! workers, clients and the checkpoint store, and the shell's own promises (a command to a
//! worker that is gone is answered `Err`; nothing arrives on a stream after it ended).

use std::time::Duration;

use ember_core::ids::{ActorId, LeaseId};
use ember_core::proto::{ClientReply, ClientRequest, ErrorKind, RemoteError, WorkerCommand};
use ember_core::resources::{actor_label, task_label};
use ember_head_state::placement::PlacementRequest;
use ember_head_state::{CommandId, ConnId, Effect, Input, LoadedCheckpoint, RequestId};

use super::queue::Ev;
use super::workers::image_inc;
use super::Sim;

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Peer {
    /// Worker `w`'s agent.
    Worker(usize),
    /// Worker `w`'s executors (they record checkpoints).
    Exec(usize),
    /// Client `c`.
    Client(usize),
    /// The simulation itself, asking for the status.
    Observer,
}

/// A connection to the head.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) peer: Peer,
    /// The head was told it closed: nothing more arrives on it.
    pub(super) closed: bool,
}

/// What a request asked, to check its answers against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Lease,
    /// An actor's creation, in the gang it asked to run in.
    Create(Option<ember_core::ids::GangId>),
    Kill,
    /// Holding an actor (of another client, mostly).
    Hold(ActorId),
    Release,
    Job,
    Status,
    Usage,
    Locate {
        actor: ActorId,
        known: u32,
        suspect: bool,
    },
    Save {
        actor: ActorId,
        inc: u32,
        seq: u64,
        /// The seal this final checkpoint is for: worker and command.
        seal: Option<(usize, CommandId)>,
    },
    Drain,
    Group,
    Health,
    Nodes(u32),
    Gang,
}

impl Kind {
    fn of(body: &ClientRequest) -> Kind {
        match body {
            ClientRequest::LeaseTask(_) => Kind::Lease,
            ClientRequest::CreateActor(spec) => Kind::Create(spec.placement.bundle.map(|b| b.gang)),
            ClientRequest::KillActor { .. } => Kind::Kill,
            ClientRequest::HoldActor { actor } => Kind::Hold(*actor),
            ClientRequest::ReleaseActor { .. } => Kind::Release,
            ClientRequest::SubmitJob(_) => Kind::Job,
            ClientRequest::Status => Kind::Status,
            ClientRequest::Usage { .. } => Kind::Usage,
            ClientRequest::LocateActor {
                actor,
                known,
                suspect,
                ..
            } => Kind::Locate {
                actor: *actor,
                known: *known,
                suspect: *suspect,
            },
            ClientRequest::SaveCheckpoint(save) => Kind::Save {
                actor: save.actor,
                inc: save.incarnation,
                seq: save.seq,
                seal: None,
            },
            ClientRequest::DrainNode { .. } => Kind::Drain,
            ClientRequest::FormGroup { .. }
            | ClientRequest::JoinGroup { .. }
            | ClientRequest::GetGroup { .. } => Kind::Group,
            ClientRequest::GroupHealth { .. } | ClientRequest::GroupFailed { .. } => Kind::Health,
            ClientRequest::WaitForNodes { count, .. } => Kind::Nodes(*count),
            ClientRequest::CreateGang(_) | ClientRequest::RemoveGang { .. } => Kind::Gang,
        }
    }
}

/// A request the head has not answered for the last time.
#[derive(Debug)]
pub(super) struct Open {
    pub(super) conn: ConnId,
    pub(super) kind: Kind,
}

/// The one wording of a worker gone, as the shell answers its commands.
pub(super) fn gone(what: &str) -> RemoteError {
    RemoteError::new(ErrorKind::WorkerDied, format!("connection closed: {what}"))
}

impl Sim {
    pub(super) fn new_conn(&mut self, peer: Peer) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            conn,
            Conn {
                peer,
                closed: false,
            },
        );
        conn
    }

    /// Opens a stream on `conn` with `body`, arriving after a hop (if `conn` is still open
    /// then). A final checkpoint of a seal names its seal.
    pub(super) fn send(
        &mut self,
        conn: ConnId,
        body: ClientRequest,
        seal: Option<(usize, CommandId)>,
    ) -> RequestId {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        if let Some(seal) = seal {
            self.seals.insert(request, seal);
        }
        let at = self.now + self.hop();
        self.queue.push(
            at,
            Ev::Send {
                conn,
                request,
                body,
            },
        );
        request
    }

    /// A stream's request arrives, unless its connection closed first.
    pub(super) fn arrive(
        &mut self,
        conn: ConnId,
        request: RequestId,
        body: ClientRequest,
    ) -> Result<(), String> {
        let seal = self.seals.remove(&request);
        if self.conns.get(&conn).is_none_or(|c| c.closed) {
            if let Some((w, command)) = seal {
                self.seal_failed(w, command, "its connection closed");
            }
            return Ok(());
        }
        let mut kind = Kind::of(&body);
        if let Kind::Save { seal: s, .. } = &mut kind {
            *s = seal;
        }
        // A release may be the actor's last holder's: the head may stop it.
        if let ClientRequest::KillActor { actor } | ClientRequest::ReleaseActor { actor } = &body {
            self.actors.entry(*actor).or_default().gone = true;
        }
        // Removing a gang stops the actors in it.
        if let ClientRequest::RemoveGang { gang } = &body {
            for truth in self.actors.values_mut() {
                if truth.gang == Some(*gang) {
                    truth.gone = true;
                }
            }
        }
        let asked = match &body {
            ClientRequest::LeaseTask(spec) => Some((&spec.placement, Some(task_label(&spec.name)))),
            ClientRequest::SubmitJob(spec) => Some((&spec.placement, None)),
            ClientRequest::CreateActor(spec) => {
                Some((&spec.placement, Some(actor_label(&spec.type_name))))
            }
            _ => None,
        };
        // A request in a gang's bundle is placed in what the bundle holds, not on a node.
        if let Some((placement, label)) = asked.filter(|(p, _)| p.bundle.is_none()) {
            let mut demand = placement.demand.clone();
            demand.custom.sort();
            let asked = PlacementRequest {
                lease: LeaseId(0),
                demand,
                strategy: placement.strategy,
                affinity: placement.affinity,
                priority: placement.priority,
                labels: label.into_iter().collect(),
            };
            self.asked.insert(request, asked);
        }
        self.ledger.insert(request, Open { conn, kind });
        self.deliver(Input::Request {
            conn,
            request,
            body,
        })
    }

    /// The shell's bookkeeping of what goes in, before the head sees it.
    pub(super) fn before_input(&mut self, input: &Input) -> Result<(), String> {
        match input {
            Input::Closed { conn } => {
                let Some(c) = self.conns.get_mut(conn) else {
                    return Err(format!("{conn:?} closed but was never opened"));
                };
                c.closed = true;
                match c.peer {
                    Peer::Worker(w) => self.workers[w].forgotten = true,
                    Peer::Client(c) => {
                        let owned: Vec<ActorId> = self.clients[c].actors.keys().copied().collect();
                        for actor in owned {
                            self.actors.entry(actor).or_default().gone = true;
                        }
                    }
                    Peer::Exec(_) | Peer::Observer => {}
                }
            }
            Input::CheckpointStored { ticket, result } => {
                let Some(actor) = self.tickets.remove(ticket) else {
                    return Err(format!("{ticket:?} answered twice or never issued"));
                };
                let writing = self.store.writing.entry(actor).or_default();
                *writing -= 1;
                if *writing == 0 {
                    self.store.writing.remove(&actor);
                }
                if result.is_ok() {
                    self.counts.checkpoints += 1;
                }
                self.touched.insert(actor);
            }
            Input::CheckpointLoaded { ticket, .. } if self.tickets.remove(ticket).is_none() => {
                return Err(format!("{ticket:?} answered twice or never issued"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Carries out one effect of the head.
    pub(super) fn effect(&mut self, effect: Effect) -> Result<(), String> {
        match effect {
            Effect::Welcome { conn, node } => {
                let Some(Conn {
                    peer: Peer::Worker(w),
                    ..
                }) = self.conns.get(&conn)
                else {
                    return Err(format!("{conn:?} welcomed as {node}, but it is no worker"));
                };
                let w = *w;
                if self.workers[w].node.is_some() {
                    return Err(format!("worker {w} welcomed twice"));
                }
                let claimed = self.workers[w].hello.rejoin.as_ref().map(|r| r.node);
                if claimed == Some(node) {
                    self.counts.rejoined += 1;
                }
                if let Some(before) = self.nodes.insert(node, w) {
                    if before != w {
                        return Err(format!("{node} given to two workers ({before} and {w})"));
                    }
                }
                self.workers[w].node = Some(node);
                self.counts.workers += 1;
                let at = self.now + self.hop();
                self.queue.push(at, Ev::Heartbeat(w));
            }
            Effect::Command {
                node,
                command,
                body,
            } => self.command(node, command, body)?,
            Effect::Cancel { command } => {
                if let Some(&w) = self.commands.get(&command) {
                    self.workers[w].cancelled.insert(command);
                }
            }
            Effect::Stream { request, reply } => {
                let Some(open) = self.ledger.get(&request) else {
                    return Err(format!(
                        "{request:?} got a frame after its last answer (or was never asked): \
                         {reply:?}"
                    ));
                };
                let (conn, kind) = (open.conn, open.kind.clone());
                self.answered(conn, request, kind, Some(reply), false)?;
            }
            Effect::Reply { request, reply } => {
                let Some(open) = self.ledger.remove(&request) else {
                    return Err(format!(
                        "{request:?} answered twice (or never asked): {reply:?}"
                    ));
                };
                self.answered(open.conn, request, open.kind, Some(reply), true)?;
            }
            Effect::End { request } => {
                let Some(open) = self.ledger.remove(&request) else {
                    return Err(format!("{request:?} ended twice (or never asked)"));
                };
                let closed = self.conns.get(&open.conn).is_some_and(|c| c.closed);
                if !closed && !matches!(open.kind, Kind::Lease | Kind::Job) {
                    return Err(format!(
                        "{request:?} ({:?}) ended without an answer while its client is there",
                        open.kind
                    ));
                }
                self.answered(open.conn, request, open.kind, None, true)?;
            }
            Effect::CloseNode { node, reason } => {
                let Some(&w) = self.nodes.get(&node) else {
                    return Err(format!("CloseNode for {node}, which never joined"));
                };
                if reason != "drained" {
                    self.counts.declared_dead += 1;
                } else if self.scenario.autoscale {
                    self.provider_closed_drained(node);
                }
                self.workers[w].forgotten = true;
                self.close_worker(w);
            }
            Effect::StoreCheckpoint {
                ticket,
                actor,
                seq,
                image,
                ..
            } => {
                if self.store.forgotten.contains(&actor) {
                    return Err(format!(
                        "a checkpoint of {actor} is written after its checkpoints were forgotten"
                    ));
                }
                let from = image_inc(&image);
                let newest = self.actors.get(&actor).map_or(0, |t| t.created);
                if from < newest {
                    return Err(format!(
                        "checkpoint {seq} of {actor} from incarnation {from} is written, but \
                         incarnation {newest} replaced it"
                    ));
                }
                if self.tickets.insert(ticket, actor).is_some() {
                    return Err(format!("{ticket:?} issued twice"));
                }
                *self.store.writing.entry(actor).or_default() += 1;
                let ok = !self.chance(0.02);
                let at = self.now + self.disk();
                self.queue.push(
                    at,
                    Ev::Stored {
                        ticket,
                        actor,
                        seq,
                        image,
                        ok,
                    },
                );
            }
            Effect::LoadCheckpoint { ticket, actor } => {
                if let Some(n) = self.store.writing.get(&actor) {
                    return Err(format!(
                        "the newest checkpoint of {actor} is read while {n} writes of it are in \
                         flight"
                    ));
                }
                if self.tickets.insert(ticket, actor).is_some() {
                    return Err(format!("{ticket:?} issued twice"));
                }
                let ok = !self.chance(0.01);
                let at = self.now + self.disk();
                self.queue.push(at, Ev::Loaded { ticket, actor, ok });
            }
            Effect::ForgetCheckpoints { actor } => self.forgets.push(actor),
            // Committed with its batch, before any of the batch's other effects.
            Effect::Journal(_) => {}
            // Only the autoscaled scenario's head has an autoscaler, and its shell a provider.
            Effect::LaunchNode { .. } | Effect::StopNode { .. } => {
                if !self.scenario.autoscale {
                    return Err(format!("a head without an autoscaler asked for {effect:?}"));
                }
                self.provider_effect(effect)?;
            }
        }
        Ok(())
    }

    /// How long the checkpoint store takes.
    fn disk(&mut self) -> Duration {
        if self.chance(0.05) {
            self.between(Duration::from_millis(50), Duration::from_millis(400))
        } else {
            self.between(Duration::from_micros(300), Duration::from_millis(8))
        }
    }

    /// The head sends `body` to `node`.
    fn command(
        &mut self,
        node: ember_core::ids::NodeId,
        command: CommandId,
        body: WorkerCommand,
    ) -> Result<(), String> {
        let Some(&w) = self.nodes.get(&node) else {
            return Err(format!("{command:?} sent to {node}, which never joined"));
        };
        if self.workers[w].forgotten {
            return Err(format!(
                "{command:?} sent to {node}, which the head already let go: {body:?}"
            ));
        }
        if self.commands.insert(command, w).is_some() {
            return Err(format!("{command:?} sent twice"));
        }
        if let WorkerCommand::CreateActor {
            actor,
            incarnation,
            restore,
            checkpoint,
            ..
        } = &body
        {
            self.check_restore(*actor, *incarnation, checkpoint.enabled, restore.as_deref())?;
        }
        if !self.workers[w].connected {
            // The connection is closed but the head has not heard yet: the shell answers.
            self.queue.push(
                self.now,
                Ev::Answer {
                    command,
                    reply: Err(gone("the worker's connection is closed")),
                    from: None,
                },
            );
            return Ok(());
        }
        let at = self.now + self.worker_hop(w);
        let conn = self.workers[w].conn;
        self.queue.push(
            at,
            Ev::Exec {
                w,
                conn,
                command,
                body,
            },
        );
        Ok(())
    }

    /// A command's answer reaches the shell: handed to the head if the command still waits
    /// for one (a worker's answer after its connection closed is lost with it).
    pub(super) fn answer(
        &mut self,
        command: CommandId,
        reply: Result<ember_core::proto::WorkerReply, RemoteError>,
        from: Option<ConnId>,
    ) -> Result<(), String> {
        let Some(&w) = self.commands.get(&command) else {
            return Ok(());
        };
        if from.is_some_and(|conn| conn != self.workers[w].conn) {
            return Ok(());
        }
        if reply.is_ok() && !self.workers[w].connected {
            return Ok(());
        }
        if reply.as_ref().map_or(true, |r| r.is_final()) {
            self.commands.remove(&command);
        }
        if reply.is_ok() && self.chance(0.05) {
            // Bulk data from the worker arrived first.
            if let Some(node) = self.workers[w].node {
                let after = self.base + self.now;
                self.deliver(Input::Heard { node, after })?;
            }
        }
        self.deliver(Input::Replied { command, reply })
    }

    /// The shell closes worker `w`'s connection: the head is told, and every command still
    /// waiting for the worker's answer is answered `Err`, in some order.
    pub(super) fn close_worker(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        if !worker.connected {
            return;
        }
        worker.connected = false;
        let conn = worker.conn;
        let up = worker.up;
        let mut inputs: Vec<Ev> = self
            .commands
            .iter()
            .filter(|(_, &cw)| cw == w)
            .map(|(&command, _)| Ev::Answer {
                command,
                reply: Err(gone("the worker's connection closed")),
                from: None,
            })
            .collect();
        inputs.push(Ev::Input(Input::Closed { conn }));
        // The shell's tasks end in no particular order.
        for i in (1..inputs.len()).rev() {
            let j = rand::Rng::gen_range(&mut self.rng, 0..=i);
            inputs.swap(i, j);
        }
        for ev in inputs {
            self.queue.push(self.now, ev);
        }
        if up {
            let at = self.now + self.between(Duration::from_micros(100), Duration::from_millis(80));
            self.queue.push(at, Ev::LostHead(w));
        }
    }

    /// A request was answered: a frame (`last` when it is the final one), or ended with
    /// none (`reply` is `None`).
    fn answered(
        &mut self,
        conn: ConnId,
        request: RequestId,
        kind: Kind,
        reply: Option<ClientReply>,
        last: bool,
    ) -> Result<(), String> {
        if let Some(ClientReply::Error(e)) = &reply {
            self.counts.errors += 1;
            if e.kind == ErrorKind::Timeout {
                self.counts.timeouts += 1;
            }
        }
        self.check_reply(request, conn, &kind, reply.as_ref(), last)?;
        let Some(peer) = self.conns.get(&conn).map(|c| c.peer) else {
            return Ok(());
        };
        match peer {
            Peer::Client(c) => self.client_answered(c, request, &kind, reply, last),
            Peer::Observer => {}
            Peer::Exec(_) | Peer::Worker(_) => {
                if let Kind::Save {
                    seq,
                    seal: Some((w, command)),
                    ..
                } = kind
                {
                    match reply {
                        Some(ClientReply::CheckpointSaved { .. }) => self.sealed(w, command, seq),
                        Some(ClientReply::Error(e)) => self.seal_failed(w, command, &e.message),
                        _ => self.seal_failed(w, command, "its stream ended"),
                    }
                }
            }
        }
        Ok(())
    }

    /// A checkpoint read finished: the newest image stored (or none), or a failure.
    pub(super) fn loaded(
        &mut self,
        ticket: ember_head_state::Ticket,
        actor: ActorId,
        ok: bool,
    ) -> Result<(), String> {
        let result = if ok {
            Ok(self
                .store
                .newest(actor)
                .map(|(seq, image)| LoadedCheckpoint {
                    seq,
                    image: image.clone(),
                }))
        } else {
            Err("the disk failed a read".to_string())
        };
        self.deliver(Input::CheckpointLoaded { ticket, result })
    }

    /// A checkpoint write finished.
    pub(super) fn stored(
        &mut self,
        ticket: ember_head_state::Ticket,
        actor: ActorId,
        seq: u64,
        image: Vec<u8>,
        ok: bool,
    ) -> Result<(), String> {
        let result = if ok {
            self.store
                .images
                .entry(actor)
                .or_default()
                .insert(seq, image);
            Ok(())
        } else {
            Err("the disk is full".to_string())
        };
        self.deliver(Input::CheckpointStored { ticket, result })
    }
}
