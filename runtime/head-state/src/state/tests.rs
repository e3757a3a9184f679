//! The head's logic through its one way in, [`HeadState::handle`]: no sockets, no clock. Each
//! test builds a scene (workers that joined, actors that run), acts as the shell would, and
//! checks what a user would see: the effects, and where things run.

use std::time::{Duration, Instant};

use ember_core::ids::{ActorId, NodeId};
use ember_core::proto::{
    ActorEndpoints, ActorSpec, CheckpointPolicy, CheckpointSave, ClientReply, ClientRequest,
    ErrorKind, LeaseEndpoints, LeaseSpec, Placement, RemoteError, RestartPolicy, WorkerCommand,
    WorkerEvent, WorkerHello, WorkerReply,
};
use ember_core::resources::{GpuDevice, GpuShare, ResourceDemand};
use ember_core::security::Fingerprint;

use super::{Config, HeadState};
use crate::io::{CommandId, ConnId, Effect, Input, LoadedCheckpoint, RequestId, Ticket};
use crate::journal::{Journaled, MemoryTables};

/// The head and the shell's numbering, at a time the test moves on, and the journal the
/// shell commits to.
struct Scene {
    head: HeadState,
    now: Instant,
    next_conn: u64,
    next_request: u64,
    journal: MemoryTables,
    /// Every effect of the last input, `Journal` effects included, in order.
    batch: Vec<Effect>,
}

impl Scene {
    /// An empty cluster with a 2 s heartbeat window (a 500 ms probe window) and a 2 s window
    /// for re-joins after a restart.
    fn new() -> Self {
        Scene::with_config(Config {
            rejoin_window: Duration::from_secs(2),
            ..Config::default()
        })
    }

    /// An empty cluster with this configuration.
    fn with_config(config: Config) -> Self {
        let (head, effects) = HeadState::restore(config, Instant::now(), Journaled::default());
        let mut scene = Scene {
            head,
            now: Instant::now(),
            next_conn: 1,
            next_request: 1,
            journal: MemoryTables::new(),
            batch: Vec::new(),
        };
        scene.commit(&effects);
        scene
    }

    fn later(&mut self, by: Duration) {
        self.now += by;
    }

    /// Hands the head an input as the shell does: commits the batch's `Journal` effects, and
    /// returns the others. After every input, the state a head restarted now would read back
    /// from the journal agrees with itself too.
    fn handle(&mut self, input: Input) -> Vec<Effect> {
        let effects = self.head.handle(self.now, input);
        if let Err(e) = self.head.check_invariants() {
            panic!("the state disagrees with itself: {e}");
        }
        self.commit(&effects);
        self.batch = effects.clone();
        let (restored, _) = HeadState::restore(
            self.head.config().clone(),
            self.now,
            self.journal.read().expect("the journal reads back"),
        );
        if let Err(e) = restored.check_invariants() {
            panic!("a head restored now would disagree with itself: {e}");
        }
        effects
            .into_iter()
            .filter(|e| !matches!(e, Effect::Journal(_)))
            .collect()
    }

    fn commit(&mut self, effects: &[Effect]) {
        let changes = effects.iter().filter_map(|e| match e {
            Effect::Journal(change) => Some(change),
            _ => None,
        });
        self.journal.commit(changes).expect("records archive");
    }

    /// The head crashes and starts again on what its journal committed.
    fn restart(&mut self) -> Vec<Effect> {
        let journaled = self.journal.read().expect("the journal reads back");
        let (head, effects) = HeadState::restore(self.head.config().clone(), self.now, journaled);
        self.head = head;
        if let Err(e) = self.head.check_invariants() {
            panic!("the restored state disagrees with itself: {e}");
        }
        self.commit(&effects);
        effects
    }

    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    /// A worker with one 80 GiB H100 that can run `train` and host `Trainer` joins.
    fn join(&mut self) -> (ConnId, NodeId) {
        let (conn, node, _) = self.join_as(None);
        (conn, node)
    }

    /// Such a worker joins, as a node it was if `rejoin` says so; returns its connection, its
    /// node and the effects after the welcome.
    fn join_as(
        &mut self,
        rejoin: Option<ember_core::proto::Rejoin>,
    ) -> (ConnId, NodeId, Vec<Effect>) {
        self.join_with(rejoin, None)
    }

    /// Such a worker joins, as a node it was if `rejoin` says so, answering an autoscaler's
    /// `launch` if given.
    fn join_with(
        &mut self,
        rejoin: Option<ember_core::proto::Rejoin>,
        launch: Option<ember_core::proto::LaunchTicket>,
    ) -> (ConnId, NodeId, Vec<Effect>) {
        let conn = self.conn();
        let hello = WorkerHello {
            name: format!("worker-{}", conn.0),
            resources: one_h100(),
            task_types: vec!["train".into()],
            actor_types: vec!["Trainer".into()],
            address: "10.0.0.1:7100".into(),
            rejoin,
            launch,
        };
        let effects = self.handle(Input::WorkerJoined {
            conn,
            hello: Box::new(hello),
        });
        match effects.as_slice() {
            [Effect::Welcome { conn: c, node }, rest @ ..] if *c == conn => {
                (conn, *node, rest.to_vec())
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    fn ask(&mut self, conn: ConnId, body: ClientRequest) -> (RequestId, Vec<Effect>) {
        self.next_request += 1;
        let request = RequestId(self.next_request);
        let effects = self.handle(Input::Request {
            conn,
            request,
            body,
        });
        (request, effects)
    }

    /// `owner` lost incarnation 1 of `actor` and asks where it is now, suspecting its worker.
    fn suspect(&mut self, owner: ConnId, actor: ActorId) -> (RequestId, Vec<Effect>) {
        self.ask(
            owner,
            ClientRequest::LocateActor {
                actor,
                known: 1,
                suspect: true,
                timeout_ms: 5000,
            },
        )
    }

    /// The cluster as `ember status` shows it, asked on a connection of its own.
    fn status(&mut self) -> ember_core::proto::ClusterStatus {
        let observer = self.conn();
        let (request, effects) = self.ask(observer, ClientRequest::Status);
        match reply_to(&effects, request) {
            ClientReply::Status(status) => *status,
            other => panic!("expected the status, got {other:?}"),
        }
    }

    /// `client` leases `gpus` hundredths of a GPU for `train`, and the worker the head picks
    /// opens it; returns the lease's request.
    fn held_lease(&mut self, client: ConnId, gpus: u32) -> RequestId {
        let spec = LeaseSpec {
            name: "train".into(),
            placement: placement(gpus),
        };
        let (request, effects) = self.ask(client, ClientRequest::LeaseTask(spec));
        let (_, open, _) = command(&effects);
        self.reply(open, WorkerReply::LeaseOpened(lease_endpoints()));
        request
    }

    fn reply(&mut self, command: CommandId, reply: WorkerReply) -> Vec<Effect> {
        self.handle(Input::Replied {
            command,
            reply: Ok(reply),
        })
    }

    /// Creates an actor owned by `owner` and brings its first incarnation up on the one
    /// node that takes it.
    fn actor(&mut self, owner: ConnId, checkpoints: bool) -> (ActorId, NodeId) {
        let (request, effects) = self.ask(owner, ClientRequest::CreateActor(spec(checkpoints)));
        let (node, command, body) = command(&effects);
        let WorkerCommand::CreateActor {
            actor,
            incarnation: 1,
            restore: None,
            ..
        } = body
        else {
            panic!("expected the first incarnation to be built, got {body:?}");
        };
        let effects = self.reply(command, WorkerReply::ActorReady(actor_endpoints()));
        assert!(
            matches!(reply_to(&effects, request), ClientReply::ActorCreated(l) if l.actor == actor && l.incarnation == 1),
            "{effects:?}"
        );
        (actor, node)
    }

    /// The actor's process saves checkpoint `seq`; returns the store's ticket.
    fn save(&mut self, actor: ActorId, incarnation: u32, seq: u64) -> (RequestId, Ticket) {
        let exec = self.conn();
        let save = CheckpointSave {
            actor,
            incarnation,
            seq,
            image: image(seq),
        };
        let (request, effects) = self.ask(exec, ClientRequest::SaveCheckpoint(save));
        match effects.as_slice() {
            [Effect::StoreCheckpoint { ticket, seq: s, .. }] if *s == seq => (request, *ticket),
            other => panic!("expected a checkpoint write, got {other:?}"),
        }
    }

    fn stored(&mut self, ticket: Ticket) -> Vec<Effect> {
        self.handle(Input::CheckpointStored {
            ticket,
            result: Ok(()),
        })
    }
}

#[path = "restore_tests.rs"]
mod restore_tests;

#[path = "restore_groups_tests.rs"]
mod restore_groups_tests;

#[path = "holds_tests.rs"]
mod holds_tests;

fn placement(gpus: u32) -> Placement {
    Placement {
        demand: ResourceDemand {
            gpus: GpuShare::from_units(gpus),
            ..ResourceDemand::default()
        },
        ..Placement::default()
    }
}

fn spec(checkpoints: bool) -> ActorSpec {
    ActorSpec {
        type_name: "Trainer".into(),
        args: Vec::new(),
        placement: placement(50),
        restart: RestartPolicy {
            max_restarts: -1,
            max_task_retries: 0,
        },
        checkpoint: CheckpointPolicy {
            enabled: checkpoints,
            every_calls: 0,
            every_ms: 0,
        },
    }
}

fn image(seq: u64) -> Vec<u8> {
    format!("state after {seq}").into_bytes()
}

fn actor_endpoints() -> ActorEndpoints {
    ActorEndpoints {
        peer_addr: "10.0.0.1:7200".into(),
        peer_fingerprint: Fingerprint([1; 32]),
        host: "h".into(),
        local_socket: "/tmp/a.sock".into(),
        mesh_socket: "/tmp/a.mesh".into(),
    }
}

/// What the scene's workers offer: 8 CPUs and one logical 80 GiB H100.
fn one_h100() -> ember_core::resources::NodeResources {
    ember_core::resources::NodeResources {
        cpu_millis: 8000,
        gpus: vec![GpuDevice {
            index: 0,
            uuid: "GPU-0".into(),
            name: "NVIDIA H100".into(),
            memory: 80 << 30,
            accelerator: "H100".into(),
            logical: true,
        }],
        custom: Vec::new(),
        labels: Vec::new(),
    }
}

/// The endpoints a worker answers a lease's opening with.
fn lease_endpoints() -> ember_core::proto::LeaseEndpoints {
    ember_core::proto::LeaseEndpoints {
        peer_addr: "10.0.0.1:7300".into(),
        peer_fingerprint: ember_core::security::Fingerprint([2; 32]),
        host: "h".into(),
        local_socket: "/tmp/l.sock".into(),
    }
}

/// The one command among `effects`.
fn command(effects: &[Effect]) -> (NodeId, CommandId, WorkerCommand) {
    let mut commands = effects.iter().filter_map(|e| match e {
        Effect::Command {
            node,
            command,
            body,
        } => Some((*node, *command, body.clone())),
        _ => None,
    });
    let one = commands
        .next()
        .unwrap_or_else(|| panic!("no command in {effects:?}"));
    assert!(
        commands.next().is_none(),
        "more than one command: {effects:?}"
    );
    one
}

/// The final answer to `request` among `effects`.
fn reply_to(effects: &[Effect], request: RequestId) -> ClientReply {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Reply { request: r, reply } if *r == request => Some(reply.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{request:?} is not answered in {effects:?}"))
}

fn error_of(reply: ClientReply) -> RemoteError {
    match reply {
        ClientReply::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn share_used(head: &HeadState, node: NodeId) -> u32 {
    let usage = head.scheduler().usage(node).expect("the node is there");
    usage.gpus.iter().map(|g| g.share_used.units()).sum()
}

#[test]
fn a_worker_that_joins_is_welcomed_with_a_node_id() {
    let mut s = Scene::new();
    let (conn, node) = s.join();
    assert_eq!(s.head.node_count(), 1);
    let (_, node2) = s.join();
    assert_ne!(node, node2, "each worker gets its own node id");
    let client = s.conn();
    let (request, effects) = s.ask(client, ClientRequest::Status);
    let ClientReply::Status(status) = reply_to(&effects, request) else {
        panic!("expected the status");
    };
    assert_eq!(status.nodes.len(), 2);
    assert_eq!(status.nodes[0].id, node.to_string());
    let again = s.handle(Input::WorkerJoined {
        conn,
        hello: Box::new(WorkerHello {
            name: "again".into(),
            resources: Default::default(),
            task_types: Vec::new(),
            actor_types: Vec::new(),
            address: String::new(),
            rejoin: None,
            launch: None,
        }),
    });
    assert!(
        again.is_empty(),
        "a second hello on one connection is ignored"
    );
}

#[test]
fn a_task_lease_is_granted_once_open_and_ends_once_closed() {
    let mut s = Scene::new();
    let (_, node) = s.join();
    let client = s.conn();
    let spec = LeaseSpec {
        name: "train".into(),
        placement: placement(50),
    };
    let (request, effects) = s.ask(client, ClientRequest::LeaseTask(spec));
    let (to, open, body) = command(&effects);
    let WorkerCommand::OpenLease { lease, allocation } = body else {
        panic!("expected the lease to be opened, got {body:?}");
    };
    assert_eq!(to, node);
    assert_eq!(allocation.gpus[0].share, GpuShare::from_units(50));
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Stream { .. })),
        "nothing is granted before the worker opened it"
    );

    let endpoints = LeaseEndpoints {
        peer_addr: "10.0.0.1:7300".into(),
        peer_fingerprint: Fingerprint([2; 32]),
        host: "h".into(),
        local_socket: "/tmp/l.sock".into(),
    };
    let effects = s.reply(open, WorkerReply::LeaseOpened(endpoints.clone()));
    match effects.as_slice() {
        [Effect::Stream {
            request: r,
            reply: ClientReply::TaskLeased(granted),
        }] => {
            assert_eq!(*r, request);
            assert_eq!((granted.lease, granted.node), (lease, node));
            assert_eq!(granted.endpoints, endpoints);
        }
        other => panic!("expected the grant on the lease's stream, got {other:?}"),
    }

    let effects = s.handle(Input::LeaseReturned {
        request,
        lost: false,
    });
    let (_, close, body) = command(&effects);
    assert!(matches!(body, WorkerCommand::CloseLease { lease: l } if l == lease));
    assert_eq!(
        share_used(&s.head, node),
        50,
        "held until the worker closed it"
    );

    let effects = s.reply(close, WorkerReply::LeaseClosed);
    assert!(
        matches!(effects.as_slice(), [Effect::End { request: r }] if *r == request),
        "{effects:?}"
    );
    assert_eq!(share_used(&s.head, node), 0, "the capacity is back");
    assert_eq!(s.head.open_requests(), 0);
}

#[test]
fn an_actor_whose_worker_dies_restarts_from_its_newest_checkpoint_once_writes_end() {
    let mut s = Scene::new();
    let (a_conn, a) = s.join();
    let owner = s.conn();
    let (actor, on) = s.actor(owner, true);
    assert_eq!(on, a);
    let (_, b) = s.join();

    let (first, ticket) = s.save(actor, 1, 1);
    let effects = s.stored(ticket);
    assert!(matches!(
        reply_to(&effects, first),
        ClientReply::CheckpointSaved { seq: 1 }
    ));
    assert_eq!(s.head.recorded_checkpoint(actor), Some(1));
    // The second write is still on its way when the worker dies.
    let (second, ticket) = s.save(actor, 1, 2);

    let effects = s.handle(Input::Closed { conn: a_conn });
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::LoadCheckpoint { .. } | Effect::Command { .. })),
        "nothing is read while a write is in flight: {effects:?}"
    );
    assert!(s.head.live_incarnations().is_empty());

    let effects = s.stored(ticket);
    assert!(matches!(
        reply_to(&effects, second),
        ClientReply::CheckpointSaved { seq: 2 }
    ));
    let load = effects
        .iter()
        .find_map(|e| match e {
            Effect::LoadCheckpoint { ticket, actor: x } if *x == actor => Some(*ticket),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the newest checkpoint is read once written: {effects:?}"));

    let effects = s.handle(Input::CheckpointLoaded {
        ticket: load,
        result: Ok(Some(LoadedCheckpoint {
            seq: 2,
            image: image(2),
        })),
    });
    let (to, create, body) = command(&effects);
    assert_eq!(to, b);
    match body {
        WorkerCommand::CreateActor {
            incarnation,
            restore,
            ..
        } => {
            assert_eq!(incarnation, 2);
            assert_eq!(
                restore,
                Some(image(2)),
                "restored from the newest checkpoint"
            );
        }
        other => panic!("expected the actor to be built, got {other:?}"),
    }
    s.reply(create, WorkerReply::ActorReady(actor_endpoints()));
    assert_eq!(s.head.live_incarnations(), vec![(actor, 2, b)]);

    let (request, effects) = s.ask(
        owner,
        ClientRequest::LocateActor {
            actor,
            known: 1,
            suspect: false,
            timeout_ms: 1000,
        },
    );
    assert!(matches!(
        reply_to(&effects, request),
        ClientReply::ActorLocated(l) if l.incarnation == 2 && l.node == b
    ));
}

#[test]
fn a_suspect_locate_probes_and_a_silent_worker_is_declared_dead_after_the_probe_window() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, false);
    let (_, b) = s.join();
    let window = s.head.config().probe_window();
    assert_eq!(window, Duration::from_millis(500));

    let (request, effects) = s.suspect(owner, actor);
    let (to, probe, body) = command(&effects);
    assert_eq!(to, a);
    assert!(matches!(body, WorkerCommand::Probe { incarnation: 1, .. }));
    let asked = s.now;
    assert_eq!(s.head.poll_timeout(), Some(asked + window));

    s.later(window - Duration::from_millis(1));
    assert!(s.handle(Input::Tick).is_empty(), "still within the window");

    s.later(Duration::from_millis(1));
    let effects = s.handle(Input::Tick);
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::CloseNode { node, reason } if *node == a && reason == "did not answer a probe"
        )),
        "{effects:?}"
    );
    assert_eq!(s.head.node_count(), 1);
    let (to, create, body) = command(&effects);
    assert_eq!(to, b);
    assert!(matches!(
        body,
        WorkerCommand::CreateActor { incarnation: 2, .. }
    ));

    let effects = s.reply(create, WorkerReply::ActorReady(actor_endpoints()));
    assert!(matches!(
        reply_to(&effects, request),
        ClientReply::ActorLocated(l) if l.incarnation == 2 && l.node == b
    ));
    // The shell answers the probe of the closed connection: nothing more happens.
    let effects = s.handle(Input::Replied {
        command: probe,
        reply: Err(RemoteError::new(ErrorKind::WorkerDied, "closed")),
    });
    assert!(effects.is_empty(), "{effects:?}");
}

#[test]
fn packets_that_came_before_a_probe_do_not_answer_it() {
    // A worker is killed just after sending its last packets; a caller notices at once and
    // the head probes it; the shell, looking every 100 ms, reports those packets only after
    // the probe went out. They say nothing of the worker since: it is dead at the window's end.
    let mut s = Scene::new();
    let (_, a) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, false);
    let (_, b) = s.join();
    let window = s.head.config().probe_window();
    let last_packets = s.now;
    s.later(Duration::from_millis(30));
    let (_, effects) = s.suspect(owner, actor);
    let (to, _, _) = command(&effects);
    assert_eq!(to, a);
    s.later(Duration::from_millis(70));
    assert!(s
        .handle(Input::Heard {
            node: a,
            after: last_packets - Duration::from_millis(70),
        })
        .is_empty());
    s.later(window - Duration::from_millis(70));
    let effects = s.handle(Input::Tick);
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::CloseNode { node, reason } if *node == a && reason == "did not answer a probe"
        )),
        "{effects:?}"
    );
    let (to, _, body) = command(&effects);
    assert_eq!(to, b);
    assert!(matches!(
        body,
        WorkerCommand::CreateActor { incarnation: 2, .. }
    ));
}

#[test]
fn packets_that_came_after_a_probe_show_a_busy_worker_alive() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, false);
    let window = s.head.config().probe_window();
    let (_, effects) = s.suspect(owner, actor);
    let (to, _, _) = command(&effects);
    assert_eq!(to, a);
    let probed = s.now;
    s.later(Duration::from_millis(100));
    s.handle(Input::Heard {
        node: a,
        after: probed + Duration::from_millis(1),
    });
    s.later(window);
    let effects = s.handle(Input::Tick);
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::CloseNode { .. })),
        "{effects:?}"
    );
    assert_eq!(s.head.node_count(), 1);
}

#[test]
fn a_drain_seals_moves_and_answers_drained() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, true);
    let (_, b) = s.join();

    let (drain, effects) = s.ask(
        owner,
        ClientRequest::DrainNode {
            node: a,
            grace_ms: 10_000,
            notice: false,
        },
    );
    let (to, seal, body) = command(&effects);
    assert_eq!(to, a);
    assert!(matches!(body, WorkerCommand::SealActor { actor: x } if x == actor));

    // The actor's final checkpoint is recorded before it answers.
    let (_, ticket) = s.save(actor, 1, 5);
    s.stored(ticket);
    let effects = s.reply(seal, WorkerReply::Sealed { seq: Some(5) });
    let load = effects
        .iter()
        .find_map(|e| match e {
            Effect::LoadCheckpoint { ticket, .. } => Some(*ticket),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the moved actor reads its final checkpoint: {effects:?}"));
    assert_eq!(share_used(&s.head, a), 0, "a sealed actor holds nothing");

    let effects = s.handle(Input::CheckpointLoaded {
        ticket: load,
        result: Ok(Some(LoadedCheckpoint {
            seq: 5,
            image: image(5),
        })),
    });
    let (to, create, body) = command(&effects);
    assert_eq!(to, b);
    assert!(
        matches!(body, WorkerCommand::CreateActor { incarnation: 2, restore: Some(ref r), .. } if *r == image(5))
    );

    let effects = s.reply(create, WorkerReply::ActorReady(actor_endpoints()));
    let (to, _, body) = command(&effects);
    assert_eq!(to, a, "the sealed process left behind is stopped");
    assert!(matches!(body, WorkerCommand::KillActor { .. }));
    assert!(effects.iter().any(
        |e| matches!(e, Effect::CloseNode { node, reason } if *node == a && reason == "drained")
    ));
    assert!(matches!(
        reply_to(&effects, drain),
        ClientReply::Drained { moved: 1 }
    ));
    assert_eq!(s.head.live_incarnations(), vec![(actor, 2, b)]);
    assert_eq!(s.head.node_count(), 1);
}

#[test]
fn a_drain_does_not_start_an_actor_elsewhere_while_it_still_takes_calls() {
    // Its final checkpoint failed: it was not sealed and still takes calls on the node.
    let mut s = Scene::new();
    let (_, a) = s.join();
    let owner = s.conn();
    let (_, _) = s.actor(owner, true);
    let (_, b) = s.join();
    let (drain, effects) = s.ask(
        owner,
        ClientRequest::DrainNode {
            node: a,
            grace_ms: 10_000,
            notice: false,
        },
    );
    let (_, seal, _) = command(&effects);
    let failed = RemoteError::new(ErrorKind::Internal, "the final checkpoint failed");
    let effects = s.reply(seal, WorkerReply::Error(failed));
    // The node goes, and the actor with it: only then does it start elsewhere.
    let closed = effects
        .iter()
        .position(|e| matches!(e, Effect::CloseNode { node, .. } if *node == a))
        .unwrap_or_else(|| panic!("the drain ends: {effects:?}"));
    assert!(matches!(
        reply_to(&effects, drain),
        ClientReply::Drained { moved: 0 }
    ));
    assert!(
        !effects[..closed]
            .iter()
            .any(|e| matches!(e, Effect::Command { node, .. } if *node == b)),
        "nothing starts on {b} before {a} is let go: {effects:?}"
    );
    assert_eq!(s.head.node_count(), 1);
    assert!(s.head.live_incarnations().is_empty(), "it restarts");
}

#[test]
fn a_drain_does_not_move_an_actor_that_already_restarted_elsewhere() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, false);
    let (_, b) = s.join();
    let (_, effects) = s.ask(
        owner,
        ClientRequest::DrainNode {
            node: a,
            grace_ms: 10_000,
            notice: false,
        },
    );
    let (_, seal, _) = command(&effects);
    // Its process exits before the seal reaches it, and it restarts on the other node.
    let effects = s.handle(Input::Event {
        node: a,
        event: WorkerEvent::ActorExited {
            actor,
            incarnation: 1,
            reason: "signal 9".into(),
        },
    });
    let (to, create, _) = command(&effects);
    assert_eq!(to, b);
    s.reply(create, WorkerReply::ActorReady(actor_endpoints()));
    assert_eq!(s.head.live_incarnations(), vec![(actor, 2, b)]);

    let gone = RemoteError::new(ErrorKind::Unknown, format!("{actor} does not run here"));
    let effects = s.reply(seal, WorkerReply::Error(gone));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Command { node, .. } if *node == b)),
        "the live incarnation on {b} is left alone: {effects:?}"
    );
    assert_eq!(s.head.live_incarnations(), vec![(actor, 2, b)]);
    assert_eq!(share_used(&s.head, b), 50, "and keeps its GPU");
}

#[test]
fn a_late_answer_for_a_replaced_incarnation_does_not_stop_its_successor() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, false);
    let exited = |incarnation| Input::Event {
        node: a,
        event: WorkerEvent::ActorExited {
            actor,
            incarnation,
            reason: "signal 9".into(),
        },
    };
    let (_, second, _) = command(&s.handle(exited(1)));
    // Incarnation 2 is built, and its process exits at once: the exit overtakes the answer.
    let (_, third, _) = command(&s.handle(exited(2)));
    s.reply(third, WorkerReply::ActorReady(actor_endpoints()));
    assert_eq!(s.head.live_incarnations(), vec![(actor, 3, a)]);

    let effects = s.reply(second, WorkerReply::ActorReady(actor_endpoints()));
    assert!(
        effects.iter().all(|e| !matches!(
            e,
            Effect::Command {
                body: WorkerCommand::KillActor { incarnation, .. },
                ..
            } if *incarnation != 2
        )),
        "only incarnation 2's process may be stopped, never incarnation 3: {effects:?}"
    );
    assert_eq!(s.head.live_incarnations(), vec![(actor, 3, a)]);
    assert_eq!(
        share_used(&s.head, a),
        50,
        "only incarnation 3 holds its GPU"
    );
}

#[test]
fn a_client_that_disconnects_takes_its_actors_with_it() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, true);
    let other = s.conn();
    let (kept, _) = s.actor(other, false);
    assert_eq!(share_used(&s.head, a), 100);

    let effects = s.handle(Input::Closed { conn: owner });
    let (to, kill, body) = command(&effects);
    assert_eq!(to, a);
    assert!(matches!(body, WorkerCommand::KillActor { actor: x, .. } if x == actor));
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::ForgetCheckpoints { actor: x } if *x == actor)));
    assert_eq!(s.head.actor_count(), 1);
    assert_eq!(
        share_used(&s.head, a),
        100,
        "held until its process is stopped"
    );

    s.reply(kill, WorkerReply::ActorKilled);
    assert_eq!(share_used(&s.head, a), 50);
    assert_eq!(
        s.head
            .live_incarnations()
            .into_iter()
            .map(|(x, _, _)| x)
            .collect::<Vec<_>>(),
        vec![kept],
        "another client's actor stays"
    );
}

#[test]
fn missed_heartbeats_declare_a_worker_dead_at_exactly_the_deadline() {
    let mut s = Scene::new();
    let (_, node) = s.join();
    s.later(Duration::from_secs(1));
    let effects = s.handle(Input::Event {
        node,
        event: WorkerEvent::Heartbeat { gpus: Vec::new() },
    });
    assert!(effects.is_empty());
    let deadline = s.now + Duration::from_secs(2);
    assert_eq!(s.head.poll_timeout(), Some(deadline));

    s.now = deadline - Duration::from_nanos(1);
    assert!(s.handle(Input::Tick).is_empty(), "not a nanosecond early");
    assert_eq!(s.head.node_count(), 1);

    s.now = deadline;
    let effects = s.handle(Input::Tick);
    assert!(
        matches!(effects.as_slice(), [Effect::CloseNode { node: n, reason }] if *n == node && reason == "missed heartbeats"),
        "{effects:?}"
    );
    assert_eq!(s.head.node_count(), 0);
    assert_eq!(s.head.poll_timeout(), None);
}

#[test]
fn packets_move_the_heartbeat_deadline_to_when_they_were_reported() {
    // Packets reported now may have come up to one look earlier; a worker is not declared
    // dead for silence before its silence could have begun.
    let mut s = Scene::new();
    let (_, node) = s.join();
    s.later(Duration::from_secs(1));
    let looked = s.now - Duration::from_millis(100);
    assert!(s
        .handle(Input::Heard {
            node,
            after: looked
        })
        .is_empty());
    assert_eq!(s.head.poll_timeout(), Some(s.now + Duration::from_secs(2)));
}

#[test]
fn a_request_with_a_deadline_times_out_with_the_right_message() {
    let mut s = Scene::new();
    let (a_conn, _) = s.join();
    let owner = s.conn();
    let (request, effects) = s.ask(
        owner,
        ClientRequest::WaitForNodes {
            count: 3,
            timeout_ms: 1500,
        },
    );
    assert!(effects.is_empty());
    s.later(Duration::from_millis(1500));
    let e = error_of(reply_to(&s.handle(Input::Tick), request));
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert_eq!(e.message, "1 of 3 workers joined within 1500 ms");

    // An actor whose worker died waits for capacity (the other node is full): its caller
    // waits 500 ms for it.
    let (_, b) = s.join();
    let mut on_a = None;
    for _ in 0..4 {
        let (actor, node) = s.actor(owner, false);
        if node != b {
            on_a = Some(actor);
        }
    }
    let actor = on_a.expect("an actor went to the first node");
    s.handle(Input::Closed { conn: a_conn });
    assert!(s
        .head
        .live_incarnations()
        .iter()
        .all(|(x, _, _)| *x != actor));
    let (request, effects) = s.ask(
        owner,
        ClientRequest::LocateActor {
            actor,
            known: 1,
            suspect: false,
            timeout_ms: 500,
        },
    );
    assert!(effects.is_empty(), "{effects:?}");
    s.later(Duration::from_millis(499));
    assert!(s.handle(Input::Tick).is_empty());
    s.later(Duration::from_millis(1));
    let e = error_of(reply_to(&s.handle(Input::Tick), request));
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert_eq!(
        e.message,
        format!("{actor} did not come back within 500 ms")
    );
}

#[path = "pending_tests.rs"]
mod pending_tests;

#[path = "gang_tests.rs"]
mod gang_tests;

#[path = "autoscaling_tests.rs"]
mod autoscaling_tests;

#[path = "usage_tests.rs"]
mod usage_tests;
