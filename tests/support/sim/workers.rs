//! Simulated workers: what each runs (actors' processes, task leases, jobs), how it answers
//! the head's commands, its heartbeats and events, and the faults that befall it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ember_core::ids::{ActorId, LeaseId, NodeId};
use ember_core::proto::{
    ActorEndpoints, CheckpointSave, ClientRequest, ErrorKind, JobEvent, LeaseEndpoints, Rejoin,
    RemoteError, RunningActor, RunningLease, WorkerCommand, WorkerEvent, WorkerHello, WorkerReply,
};
use ember_core::resources::{Allocation, GpuDevice, GpuStat, NodeResources};
use ember_core::security::Fingerprint;
use ember_head_state::{CommandId, ConnId, Input};
use rand::Rng;

use super::queue::Ev;
use super::shell::Peer;
use super::Sim;

const GIB: u64 = 1 << 30;

/// The task functions and actor types a worker's executable may have.
pub(super) const TASKS: [&str; 3] = ["train", "embed", "rare"];
pub(super) const ACTORS: [&str; 2] = ["Trainer", "Shard"];

/// One worker process, from its hello to its end. A worker that loses the head either keeps
/// its executors and re-joins on a new connection, saying which node it was (in its hello),
/// or kills them and comes back as a new worker.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) conn: ConnId,
    /// The connection its executors record checkpoints on.
    pub(super) exec: ConnId,
    pub(super) hello: WorkerHello,
    /// Its node id, once welcomed.
    pub(super) node: Option<NodeId>,
    /// Its process runs.
    pub(super) up: bool,
    /// The shell's connection to it is open.
    pub(super) connected: bool,
    /// Its executors' connection is open.
    pub(super) exec_open: bool,
    /// The head let go of it (it was told the connection closed, or closed it itself).
    pub(super) forgotten: bool,
    /// It does nothing until then (a stall: swapping, a long GC, a partition).
    pub(super) frozen_until: Duration,
    /// Its answers take this many times longer than a network hop.
    pub(super) slow: u32,
    /// Actors' processes by (actor, incarnation).
    pub(super) procs: BTreeMap<(ActorId, u32), Proc>,
    /// Open task leases.
    pub(super) leases: BTreeMap<LeaseId, Allocation>,
    /// Running jobs by their command.
    pub(super) jobs: BTreeMap<CommandId, JobRun>,
    /// Jobs the head cancelled.
    pub(super) cancelled: BTreeSet<CommandId>,
    /// When its last event was sent: its events arrive in order.
    pub(super) events_at: Duration,
    /// Every incarnation it built.
    pub(super) started: BTreeSet<(ActorId, u32)>,
    /// It lost the head because the head crashed (not because the head let go of it).
    pub(super) head_crashed: bool,
}

/// An actor's process.
#[derive(Debug)]
pub(super) struct Proc {
    pub(super) allocation: Allocation,
    pub(super) checkpoints: bool,
    /// The sequence number of its next checkpoint.
    pub(super) next_seq: u64,
    /// Saving its final checkpoint for this seal command: it takes no calls.
    pub(super) sealing: Option<CommandId>,
    /// Sealed: it answers `Moved` and waits to be stopped.
    pub(super) sealed: bool,
}

/// A running job.
#[derive(Debug)]
pub(super) struct JobRun {
    pub(super) allocation: Allocation,
    outputs: u32,
    /// When its last reply was sent: its replies arrive in order.
    at: Duration,
}

impl Sim {
    /// Starts a worker that says hello at `at`.
    pub(super) fn spawn_worker(&mut self, at: Duration) {
        let w = self.workers.len();
        let hello = self.hello(w);
        self.spawn_worker_with(at, hello);
    }

    /// Starts a worker that says `hello` at `at`.
    pub(super) fn spawn_worker_with(&mut self, at: Duration, hello: WorkerHello) {
        let w = self.workers.len();
        let conn = self.new_conn(Peer::Worker(w));
        let exec = self.new_conn(Peer::Exec(w));
        let slow = if self.chance(0.05) {
            self.rng.gen_range(20..200)
        } else {
            1
        };
        self.workers.push(Worker {
            conn,
            exec,
            hello,
            node: None,
            up: true,
            connected: true,
            exec_open: true,
            forgotten: false,
            frozen_until: Duration::ZERO,
            slow,
            procs: BTreeMap::new(),
            leases: BTreeMap::new(),
            jobs: BTreeMap::new(),
            cancelled: BTreeSet::new(),
            events_at: Duration::ZERO,
            started: BTreeSet::new(),
            head_crashed: false,
        });
        self.queue.push(at, Ev::Join(w));
    }

    fn hello(&mut self, w: usize) -> WorkerHello {
        let large = self.scenario.workers > 100;
        let (count, accel, memory) = match self.rng.gen_range(0..if large { 2 } else { 4 }) {
            0 => (8, "H100", 80 * GIB),
            1 => (4, "A100", 40 * GIB),
            2 => (1, "L4", 24 * GIB),
            _ => (0, "", 0),
        };
        let resources = NodeResources {
            cpu_millis: self.rng.gen_range(16..=64) * 1000,
            gpus: (0..count)
                .map(|i| GpuDevice {
                    index: i,
                    uuid: format!("GPU-{w}-{i}"),
                    name: format!("NVIDIA {accel}"),
                    memory,
                    accelerator: accel.to_string(),
                    logical: true,
                })
                .collect(),
            custom: Vec::new(),
            labels: Vec::new(),
        };
        let task_types = TASKS
            .iter()
            .filter(|t| **t != "rare" || self.rng.gen_bool(0.2))
            .map(|t| t.to_string())
            .collect();
        let actor_types = ACTORS
            .iter()
            .filter(|a| **a != "Shard" || self.rng.gen_bool(0.9))
            .map(|a| a.to_string())
            .collect();
        WorkerHello {
            name: format!("worker-{w}"),
            resources,
            task_types,
            actor_types,
            address: format!("10.0.{}.{}:7100", w / 250, w % 250),
            rejoin: None,
            launch: None,
        }
    }

    /// A hop from or to worker `w`, slowed as it is (to 3 s at most).
    pub(super) fn worker_hop(&mut self, w: usize) -> Duration {
        let hop = self.hop();
        (hop * self.workers[w].slow).min(Duration::from_secs(3))
    }

    /// Worker `w` is stalled now: its event is put off until the stall ends.
    fn stalled(&mut self, w: usize, ev: Ev) -> Option<Ev> {
        let until = self.workers[w].frozen_until;
        if self.now < until {
            self.queue.push(until, ev);
            None
        } else {
            Some(ev)
        }
    }

    pub(super) fn join(&mut self, w: usize) -> Result<(), String> {
        let worker = &self.workers[w];
        if !worker.up || !worker.connected {
            return Ok(());
        }
        let input = Input::WorkerJoined {
            conn: worker.conn,
            hello: Box::new(worker.hello.clone()),
        };
        self.deliver(input)
    }

    pub(super) fn heartbeat(&mut self, w: usize) -> Result<(), String> {
        let worker = &self.workers[w];
        if !worker.up || !worker.connected {
            return Ok(());
        }
        if self.stalled(w, Ev::Heartbeat(w)).is_none() {
            return Ok(());
        }
        let gpus = self.workers[w]
            .hello
            .resources
            .gpus
            .iter()
            .map(|g| GpuStat {
                index: g.index,
                memory_free: g.memory,
                utilization: 0,
            })
            .collect();
        self.send_event(w, WorkerEvent::Heartbeat { gpus });
        let every = self.scenario.heartbeat_timeout / 4;
        let at = self.now + every.mul_f64(self.rng.gen_range(0.8..1.2));
        self.queue.push(at, Ev::Heartbeat(w));
        Ok(())
    }

    /// Sends an event on worker `w`'s event stream, after those before it (and once its
    /// agent runs again, if it stalls).
    pub(super) fn send_event(&mut self, w: usize, event: WorkerEvent) {
        let from = self.now.max(self.workers[w].frozen_until);
        let at = (from + self.worker_hop(w)).max(self.workers[w].events_at);
        self.workers[w].events_at = at;
        self.queue.push(at, Ev::Event { w, event });
    }

    /// An event of worker `w` arrives, if its connection is still open.
    pub(super) fn worker_event(&mut self, w: usize, event: WorkerEvent) -> Result<(), String> {
        let worker = &self.workers[w];
        match worker.node {
            Some(node) if worker.connected => self.deliver(Input::Event { node, event }),
            _ => Ok(()),
        }
    }

    /// Worker `w` answers `command` after a hop (not before `after`).
    fn reply(&mut self, w: usize, command: CommandId, reply: WorkerReply, after: Duration) {
        let at = (self.now + self.worker_hop(w)).max(after);
        let from = Some(self.workers[w].conn);
        self.queue.push(
            at,
            Ev::Answer {
                command,
                reply: Ok(reply),
                from,
            },
        );
    }

    /// A command arrives at worker `w`.
    pub(super) fn exec(
        &mut self,
        w: usize,
        conn: ConnId,
        command: CommandId,
        body: WorkerCommand,
    ) -> Result<(), String> {
        let worker = &self.workers[w];
        if !worker.up || !worker.connected || worker.conn != conn {
            // Lost with the worker, or with the connection it was sent on (the worker
            // re-joined since); the shell answered it when the connection closed.
            return Ok(());
        }
        let stalled = self.stalled(
            w,
            Ev::Exec {
                w,
                conn,
                command,
                body,
            },
        );
        let Some(Ev::Exec { body, .. }) = stalled else {
            return Ok(());
        };
        let node = self.workers[w]
            .node
            .expect("a connected worker was welcomed");
        let reply = match body {
            WorkerCommand::OpenLease { lease, allocation } => {
                if self.chance(0.03) {
                    WorkerReply::Error(RemoteError::new(
                        ErrorKind::Internal,
                        "the task executor could not be started",
                    ))
                } else {
                    self.workers[w].leases.insert(lease, allocation);
                    WorkerReply::LeaseOpened(LeaseEndpoints {
                        peer_addr: self.workers[w].hello.address.clone(),
                        peer_fingerprint: Fingerprint([7; 32]),
                        host: format!("host-{w}"),
                        local_socket: format!("/run/ember/{w}/{lease}.sock"),
                    })
                }
            }
            WorkerCommand::CloseLease { lease } => {
                self.workers[w].leases.remove(&lease);
                WorkerReply::LeaseClosed
            }
            WorkerCommand::CreateActor {
                actor,
                allocation,
                incarnation,
                checkpoint,
                restore,
                ..
            } => {
                if self.chance(0.03) {
                    WorkerReply::Error(RemoteError::new(
                        ErrorKind::User,
                        format!("the constructor of {actor} panicked"),
                    ))
                } else {
                    self.check_one_process(actor, incarnation, w)?;
                    let next_seq = restore.as_deref().map_or(1, |i| image_seq(i) + 1);
                    self.workers[w].procs.insert(
                        (actor, incarnation),
                        Proc {
                            allocation,
                            checkpoints: checkpoint.enabled,
                            next_seq,
                            sealing: None,
                            sealed: false,
                        },
                    );
                    self.workers[w].started.insert((actor, incarnation));
                    self.procs_of
                        .entry(actor)
                        .or_default()
                        .insert((w, incarnation));
                    if self.chance(0.03) {
                        // It dies right after it was built: its exit may overtake its answer.
                        let at = self.now + self.jitter(Duration::from_millis(30));
                        self.queue.push(
                            at,
                            Ev::Exit {
                                w,
                                actor,
                                inc: incarnation,
                            },
                        );
                    }
                    if checkpoint.enabled {
                        let mean = self.scenario.save_interval.as_secs_f64();
                        let at = self.now + self.exp(mean);
                        self.queue.push(
                            at,
                            Ev::Save {
                                w,
                                actor,
                                inc: incarnation,
                            },
                        );
                    }
                    WorkerReply::ActorReady(self.actor_endpoints(w, actor, incarnation))
                }
            }
            WorkerCommand::KillActor { actor, incarnation } => {
                if self.workers[w].procs.contains_key(&(actor, incarnation)) {
                    self.end_proc(w, actor, incarnation);
                    self.killed.insert((actor, incarnation, node));
                }
                WorkerReply::ActorKilled
            }
            WorkerCommand::Probe { actor, incarnation } => WorkerReply::Probed {
                alive: self.workers[w].procs.contains_key(&(actor, incarnation)),
            },
            WorkerCommand::SealActor { actor } => {
                let found = self.workers[w]
                    .procs
                    .range((actor, 0)..=(actor, u32::MAX))
                    .find(|(_, p)| !p.sealed && p.sealing.is_none())
                    .map(|((_, inc), p)| (*inc, p.checkpoints));
                match found {
                    None => WorkerReply::Error(RemoteError::new(
                        ErrorKind::Unknown,
                        format!("{actor} does not run here"),
                    )),
                    Some((inc, false)) => {
                        if let Some(p) = self.workers[w].procs.get_mut(&(actor, inc)) {
                            p.sealed = true;
                        }
                        WorkerReply::Sealed { seq: None }
                    }
                    Some((inc, true)) => {
                        // Its final checkpoint first: answered once the head recorded it.
                        let p = self.workers[w]
                            .procs
                            .get_mut(&(actor, inc))
                            .expect("just found");
                        p.sealing = Some(command);
                        let seq = p.next_seq;
                        p.next_seq += 1;
                        if !self.workers[w].exec_open {
                            self.seal_failed(w, command, "its connection is closed");
                            return Ok(());
                        }
                        let save = CheckpointSave {
                            actor,
                            incarnation: inc,
                            seq,
                            image: image(actor, inc, seq),
                        };
                        let exec = self.workers[w].exec;
                        self.send(
                            exec,
                            ClientRequest::SaveCheckpoint(save),
                            Some((w, command)),
                        );
                        return Ok(());
                    }
                }
            }
            WorkerCommand::RunJob {
                job, allocation, ..
            } => {
                let outputs = self.rng.gen_range(0..4);
                let started = JobEvent::Started {
                    job,
                    node,
                    allocation: allocation.clone(),
                };
                let at = self.now + self.worker_hop(w);
                self.workers[w].jobs.insert(
                    command,
                    JobRun {
                        allocation,
                        outputs,
                        at,
                    },
                );
                let from = Some(self.workers[w].conn);
                self.queue.push(
                    at,
                    Ev::Answer {
                        command,
                        reply: Ok(WorkerReply::Job(started)),
                        from,
                    },
                );
                let run = self.between(Duration::from_millis(5), Duration::from_millis(1500));
                self.queue.push(self.now + run, Ev::JobStep { w, command });
                return Ok(());
            }
        };
        self.reply(w, command, reply, Duration::ZERO);
        Ok(())
    }

    /// A job on worker `w` writes some output, or ends (when it ran its course or the head
    /// cancelled it).
    pub(super) fn job_step(&mut self, w: usize, command: CommandId) -> Result<(), String> {
        if !self.workers[w].up || !self.workers[w].jobs.contains_key(&command) {
            return Ok(());
        }
        if self.stalled(w, Ev::JobStep { w, command }).is_none() {
            return Ok(());
        }
        let cancelled = self.workers[w].cancelled.remove(&command);
        let job = self.workers[w].jobs.get_mut(&command).expect("checked");
        if cancelled || job.outputs == 0 {
            let after = job.at;
            self.workers[w].jobs.remove(&command);
            let code = if cancelled { 143 } else { 0 };
            self.reply(w, command, WorkerReply::Job(JobEvent::Exited(code)), after);
        } else {
            job.outputs -= 1;
            let after = job.at;
            let at = (self.now + self.worker_hop(w)).max(after);
            if let Some(job) = self.workers[w].jobs.get_mut(&command) {
                job.at = at;
            }
            let from = Some(self.workers[w].conn);
            self.queue.push(
                at,
                Ev::Answer {
                    command,
                    reply: Ok(WorkerReply::Job(JobEvent::Stdout(b"step\n".to_vec()))),
                    from,
                },
            );
            let next = self.between(Duration::from_millis(5), Duration::from_millis(800));
            self.queue.push(self.now + next, Ev::JobStep { w, command });
        }
        Ok(())
    }

    /// The final checkpoint of a seal was recorded: the actor is sealed.
    pub(super) fn sealed(&mut self, w: usize, command: CommandId, seq: u64) {
        if let Some(p) = self.sealing(w, command) {
            p.sealing = None;
            p.sealed = true;
            self.reply(
                w,
                command,
                WorkerReply::Sealed { seq: Some(seq) },
                Duration::ZERO,
            );
        }
    }

    /// The final checkpoint of a seal was refused: the actor goes on taking calls.
    pub(super) fn seal_failed(&mut self, w: usize, command: CommandId, why: &str) {
        if let Some(p) = self.sealing(w, command) {
            p.sealing = None;
            let e = RemoteError::new(
                ErrorKind::Internal,
                format!("the final checkpoint failed: {why}"),
            );
            self.reply(w, command, WorkerReply::Error(e), Duration::ZERO);
        }
    }

    fn sealing(&mut self, w: usize, command: CommandId) -> Option<&mut Proc> {
        let worker = &mut self.workers[w];
        if !worker.up || !worker.connected {
            return None;
        }
        worker
            .procs
            .values_mut()
            .find(|p| p.sealing == Some(command))
    }

    /// An actor's process on worker `w` saves a checkpoint, now and then.
    /// The process is not the worker's agent: it goes on while the agent stalls, and until
    /// the agent notices it lost the head and kills it (the head must refuse its saves once
    /// it replaced it).
    pub(super) fn save(&mut self, w: usize, actor: ActorId, inc: u32) -> Result<(), String> {
        let worker = &self.workers[w];
        if !worker.up || !worker.exec_open || !worker.procs.contains_key(&(actor, inc)) {
            return Ok(());
        }
        let exec = self.workers[w].exec;
        let p = self.workers[w]
            .procs
            .get_mut(&(actor, inc))
            .expect("checked");
        if p.sealing.is_none() && !p.sealed {
            let seq = p.next_seq;
            p.next_seq += 1;
            let save = CheckpointSave {
                actor,
                incarnation: inc,
                seq,
                image: image(actor, inc, seq),
            };
            self.send(exec, ClientRequest::SaveCheckpoint(save), None);
        }
        let mean = self.scenario.save_interval.as_secs_f64();
        let at = self.now + self.exp(mean);
        self.queue.push(at, Ev::Save { w, actor, inc });
        Ok(())
    }

    /// An actor's process on worker `w` ends.
    pub(super) fn end_proc(&mut self, w: usize, actor: ActorId, inc: u32) -> Option<Proc> {
        let p = self.workers[w].procs.remove(&(actor, inc))?;
        if let Some(set) = self.procs_of.get_mut(&actor) {
            set.remove(&(w, inc));
            if set.is_empty() {
                self.procs_of.remove(&actor);
            }
        }
        Some(p)
    }

    /// Everything worker `w` runs ends (its process died, or it killed its executors).
    pub(super) fn end_all(&mut self, w: usize) {
        let procs: Vec<(ActorId, u32)> = self.workers[w].procs.keys().copied().collect();
        for (actor, inc) in procs {
            self.end_proc(w, actor, inc);
        }
        let worker = &mut self.workers[w];
        worker.leases.clear();
        worker.jobs.clear();
        worker.up = false;
        if worker.exec_open {
            worker.exec_open = false;
            let exec = worker.exec;
            let at = self.now + self.between(Duration::from_micros(100), Duration::from_millis(50));
            self.queue.push(at, Ev::Input(Input::Closed { conn: exec }));
        }
    }

    /// The process of `actor`'s incarnation `inc` on worker `w` exits on its own; the
    /// worker tells the head.
    pub(super) fn exit(&mut self, w: usize, actor: ActorId, inc: u32) {
        if !self.workers[w].up || self.end_proc(w, actor, inc).is_none() {
            return;
        }
        self.trace
            .note(&format!("{actor} incarnation {inc} exits on worker {w}"));
        self.caller_suspects(actor, inc);
        self.send_event(
            w,
            WorkerEvent::ActorExited {
                actor,
                incarnation: inc,
                reason: "killed by signal 9".into(),
            },
        );
    }

    /// Worker `w` died: callers of what ran there notice, some of them soon.
    pub(super) fn callers_notice(&mut self, w: usize) {
        let leases: Vec<LeaseId> = self.workers[w].leases.keys().copied().collect();
        for lease in leases {
            self.lease_lost(lease);
        }
        let procs: Vec<(ActorId, u32)> = self.workers[w].procs.keys().copied().collect();
        for (actor, inc) in procs {
            self.caller_suspects(actor, inc);
        }
    }

    /// Where worker `w` hosts incarnation `inc` of `actor`.
    fn actor_endpoints(&self, w: usize, actor: ActorId, inc: u32) -> ActorEndpoints {
        ActorEndpoints {
            peer_addr: self.workers[w].hello.address.clone(),
            peer_fingerprint: Fingerprint([9; 32]),
            host: format!("host-{w}"),
            local_socket: format!("/run/ember/{w}/{actor}-{inc}.sock"),
            mesh_socket: format!("/run/ember/{w}/{actor}-{inc}.mesh"),
        }
    }

    /// Worker `w` lost the head. After a head crash it mostly keeps its executors and re-joins
    /// as the node it was within the window; otherwise (too late, or let go of by the head) it
    /// kills its executors and comes back as a new worker.
    pub(super) fn lost_head(&mut self, w: usize) -> Result<(), String> {
        if !self.workers[w].up || self.stalled(w, Ev::LostHead(w)).is_none() {
            return Ok(());
        }
        // Only a head that went away (a crash) is waited for: a worker the head let go of on
        // purpose (declared dead) stops its executors at once, as a real one does.
        let head_crashed = std::mem::take(&mut self.workers[w].head_crashed);
        let window = self.scenario.rejoin_window();
        let welcomed = self.workers[w].node.is_some();
        let wait = match self.rng.gen_range(0..10) {
            0..=6 if welcomed && head_crashed => {
                Some(self.between(Duration::from_millis(20), window * 4 / 5))
            }
            // Too late (the head unreachable all its window): it gave up, below.
            _ => None,
        };
        if let Some(wait) = wait {
            self.trace.note(&format!(
                "worker {w} keeps its executors and re-joins in {wait:?}"
            ));
            let at = self.now + wait;
            self.queue.push(at, Ev::Rejoin(w));
            return Ok(());
        }
        self.end_all(w);
        if self.active() {
            let at = self.now + self.between(Duration::from_millis(50), Duration::from_secs(1));
            self.queue.push(at, Ev::Spawn);
        }
        Ok(())
    }

    /// Worker `w` joins again on a new connection as the node it was, saying what it still
    /// runs; its executors' link to the head connects again too.
    pub(super) fn rejoin(&mut self, w: usize) -> Result<(), String> {
        if !self.workers[w].up || self.stalled(w, Ev::Rejoin(w)).is_none() {
            return Ok(());
        }
        let Some(node) = self.workers[w].node.take() else {
            return Ok(());
        };
        self.counts.rejoins += 1;
        let actors = self.workers[w]
            .procs
            .iter()
            .map(|(&(actor, incarnation), p)| RunningActor {
                actor,
                incarnation,
                allocation: p.allocation.clone(),
                endpoints: self.actor_endpoints(w, actor, incarnation),
                sealed: p.sealed || p.sealing.is_some(),
            })
            .collect();
        let leases = self.workers[w]
            .leases
            .iter()
            .map(|(&lease, allocation)| RunningLease {
                lease,
                allocation: allocation.clone(),
            })
            .collect();
        let conn = self.new_conn(Peer::Worker(w));
        let exec = self.new_conn(Peer::Exec(w));
        let worker = &mut self.workers[w];
        worker.hello.rejoin = Some(Rejoin {
            node,
            epoch: 0,
            actors,
            leases,
        });
        worker.conn = conn;
        worker.exec = exec;
        worker.exec_open = true;
        worker.connected = true;
        worker.forgotten = false;
        worker.jobs.clear();
        // What the journal has running on this node (or being started), as this worker runs
        // it, must be adopted as it runs if the head takes the worker back.
        let journaled = self
            .journal
            .read()
            .map_err(|e| format!("the journal cannot be read back: {e}"))?;
        let expected: Vec<(ActorId, u32)> = self.workers[w]
            .procs
            .iter()
            .filter(|(_, p)| !p.sealed && p.sealing.is_none())
            .map(|(&key, _)| key)
            .filter(|(actor, inc)| {
                journaled.actors.get(actor).is_some_and(|r| {
                    r.incarnation == *inc && r.dead.is_none() && r.node.is_none_or(|n| n == node)
                })
            })
            .collect();
        let restored_at = self.head.expected_nodes().contains(&node);
        self.join(w)?;
        if !restored_at || self.workers[w].node != Some(node) {
            return Ok(());
        }
        let live = self.head.live_incarnations();
        for (actor, inc) in expected {
            if !live.contains(&(actor, inc, node)) {
                return Err(format!(
                    "worker {w} re-joined as {node} running {actor} incarnation {inc}, as the \
                     journal has it, but the head did not adopt it"
                ));
            }
            self.counts.adopted += 1;
        }
        Ok(())
    }

    /// Something goes wrong somewhere; the next fault is scheduled.
    pub(super) fn fault(&mut self) -> Result<(), String> {
        if !self.active() {
            return Ok(());
        }
        let next = self.exp(1.0 / self.scenario.fault_rate);
        self.queue.push(self.now + next, Ev::Fault);
        if self.chance(self.scenario.head_crash) {
            return self.head_crash();
        }
        if self.scenario.autoscale {
            return self.autoscaled_fault();
        }
        let live: Vec<usize> = (0..self.workers.len())
            .filter(|&w| {
                let wk = &self.workers[w];
                wk.up && wk.connected && wk.node.is_some()
            })
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let w = live[self.rng.gen_range(0..live.len())];
        match self.rng.gen_range(0..20) {
            // A crash (SIGKILL, power): its connection closes later, or never and the head's
            // heartbeat window finds it.
            0..=3 => {
                self.counts.crashes += 1;
                self.trace.note(&format!("worker {w} crashes"));
                self.callers_notice(w);
                self.end_all(w);
                if self.chance(0.7) {
                    let at = self.now
                        + self.between(Duration::from_millis(1), Duration::from_millis(800));
                    self.queue.push(at, Ev::ShellClose(w));
                }
                let at =
                    self.now + self.between(Duration::from_millis(300), Duration::from_secs(3));
                self.queue.push(at, Ev::Spawn);
            }
            // A stall: nothing from it for a while, maybe longer than the heartbeat window.
            4..=6 => {
                let stall = self.between(Duration::from_millis(100), Duration::from_secs(4));
                self.trace.note(&format!("worker {w} stalls for {stall:?}"));
                self.workers[w].frozen_until = self.now + stall;
            }
            // It turns slow (or recovers).
            7 => {
                let slow = if self.workers[w].slow > 1 {
                    1
                } else {
                    self.rng.gen_range(20..300)
                };
                self.trace
                    .note(&format!("worker {w} answers {slow}x slower"));
                self.workers[w].slow = slow;
            }
            // An actor's process exits.
            8..=14 => {
                let procs: Vec<(ActorId, u32)> = self.workers[w].procs.keys().copied().collect();
                if !procs.is_empty() {
                    let (actor, inc) = procs[self.rng.gen_range(0..procs.len())];
                    self.exit(w, actor, inc);
                }
            }
            // A task lease's executor dies with the lease (its client will say so).
            15 => {
                if let Some(&lease) = self.workers[w].leases.keys().next() {
                    self.trace
                        .note(&format!("the executor of {lease} dies on worker {w}"));
                    self.workers[w].leases.remove(&lease);
                    self.lost_leases.insert(lease);
                    self.lease_lost(lease);
                }
            }
            // It leaves on purpose.
            16 => {
                let grace = self.rng.gen_range(50..3000);
                self.trace.note(&format!("worker {w} leaves"));
                self.send_event(w, WorkerEvent::Leaving { grace_ms: grace });
            }
            // Another one joins.
            _ => {
                let at = self.now + self.hop();
                self.spawn_worker(at);
            }
        }
        Ok(())
    }
}

/// A checkpoint image that names what it holds.
pub(super) fn image(actor: ActorId, inc: u32, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&actor.0.to_le_bytes());
    v.extend_from_slice(&inc.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v
}

/// The incarnation that made an image.
pub(super) fn image_inc(image: &[u8]) -> u32 {
    image
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The sequence number an image holds.
pub(super) fn image_seq(image: &[u8]) -> u64 {
    image
        .get(12..20)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}
