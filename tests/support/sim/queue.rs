//! The simulation's future: everything that will happen, ordered by (virtual time, sequence).
//! Two events at the same instant happen in the order they were scheduled, so a run is a
//! function of its seed.

use std::collections::BTreeMap;
use std::time::Duration;

use ember_core::ids::ActorId;
use ember_core::proto::{ClientRequest, RemoteError, WorkerCommand, WorkerEvent, WorkerReply};
use ember_head_state::{CommandId, ConnId, Input, RequestId, Ticket};

/// Something that happens at a point of virtual time.
#[derive(Debug)]
pub(super) enum Ev {
    /// Hand this input to the head as it is (the shell's own doing: a closed connection).
    Input(Input),
    /// Worker `w` connects and says hello.
    Join(usize),
    /// Worker `w`'s heartbeat is due.
    Heartbeat(usize),
    /// A command arrives at worker `w`.
    Exec {
        w: usize,
        /// The connection it was sent on: a command dies with its connection.
        conn: ConnId,
        command: CommandId,
        body: WorkerCommand,
    },
    /// A command's answer reaches the head's shell: from the worker, or made up by the shell
    /// (`Err`) when the worker's connection closed.
    Answer {
        command: CommandId,
        reply: Result<WorkerReply, RemoteError>,
        /// The worker connection it travels on (`None`: made up by the shell). Command ids
        /// start again in each head life, so an answer on a connection that is gone is lost,
        /// never taken for another command of the same number.
        from: Option<ConnId>,
    },
    /// An event of worker `w` reaches the head's shell (in order, on the worker's own stream).
    Event { w: usize, event: WorkerEvent },
    /// The shell notices that worker `w`'s connection is gone.
    ShellClose(usize),
    /// Worker `w` notices that it lost the head: it keeps its executors and re-joins later,
    /// or kills them and comes back as a new worker.
    LostHead(usize),
    /// Worker `w`, which lost the head and kept its executors, joins again as the node it was.
    Rejoin(usize),
    /// A client (or an executor) opens a stream with a request.
    Send {
        conn: ConnId,
        request: RequestId,
        body: ClientRequest,
    },
    /// A client ends its side of a task lease's stream.
    Return { request: RequestId, lost: bool },
    /// The checkpoint store finished a write.
    Stored {
        ticket: Ticket,
        actor: ActorId,
        seq: u64,
        image: Vec<u8>,
        ok: bool,
    },
    /// The checkpoint store finished a read.
    Loaded {
        ticket: Ticket,
        actor: ActorId,
        ok: bool,
    },
    /// The process of `actor`'s incarnation `inc` on worker `w` saves a checkpoint.
    Save { w: usize, actor: ActorId, inc: u32 },
    /// The process of `actor`'s incarnation `inc` on worker `w` exits on its own.
    Exit { w: usize, actor: ActorId, inc: u32 },
    /// A job on worker `w` makes progress.
    JobStep { w: usize, command: CommandId },
    /// Client `c` does something.
    Act(usize),
    /// Client `c` asks for an actor (the opening burst).
    Create(usize),
    /// Something goes wrong somewhere.
    Fault,
    /// A new worker is started.
    Spawn,
    /// The fake provider answers a launch: started (`ok`) or refused.
    Launched { launch: u64, ok: bool },
    /// A launch's instance boots its worker.
    Boot { launch: u64 },
    /// A spot instance's notice runs out: the cloud takes it.
    Reclaim { launch: u64 },
    /// Clients make a peak of work (autoscaled scenario).
    Peak,
}

/// Events by (time, sequence).
#[derive(Debug, Default)]
pub(super) struct Queue {
    events: BTreeMap<(Duration, u64), Ev>,
    seq: u64,
    /// Heartbeats and actors' timed checkpoints: they go on as long as their worker or
    /// actor does, so they do not keep a run from settling.
    background: usize,
}

fn background(ev: &Ev) -> bool {
    matches!(
        ev,
        Ev::Heartbeat(_)
            | Ev::Save { .. }
            | Ev::Event {
                event: WorkerEvent::Heartbeat { .. },
                ..
            }
    )
}

impl Queue {
    pub(super) fn push(&mut self, at: Duration, ev: Ev) {
        if background(&ev) {
            self.background += 1;
        }
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
    }

    /// When the next event is due.
    /// Drops every event for which `keep` is false (what died with the head).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Ev) -> bool) {
        self.events.retain(|_, ev| keep(ev));
        self.background = self.events.values().filter(|ev| background(ev)).count();
    }

    pub(super) fn next_at(&self) -> Option<Duration> {
        self.events.first_key_value().map(|((at, _), _)| *at)
    }

    pub(super) fn pop(&mut self) -> Option<(Duration, Ev)> {
        let ((at, _), ev) = self.events.pop_first()?;
        if background(&ev) {
            self.background -= 1;
        }
        Some((at, ev))
    }

    /// How many events other than background ones are scheduled.
    pub(super) fn busy(&self) -> usize {
        self.events.len() - self.background
    }

    /// The events other than background ones, for a report of what would not settle.
    pub(super) fn pending(&self) -> impl Iterator<Item = (&Duration, &Ev)> {
        self.events
            .iter()
            .filter(|(_, ev)| !background(ev))
            .map(|((at, _), ev)| (at, ev))
    }
}
