//! What the head journals, and a head restarted on its journal: what it promised is there.

use std::time::Duration;

use ember_core::ids::{LeaseId, NodeId};
use ember_core::proto::{
    ClientReply, ClientRequest, ErrorKind, Rejoin, RunningActor, RunningLease, WorkerCommand,
    WorkerReply,
};

use super::{actor_endpoints, command, image, reply_to, spec, Scene};
use crate::io::{Effect, Input, LoadedCheckpoint};
use crate::journal::Change;

/// A client of the new head life claims an actor of the last one by asking where it is (its
/// request may wait for the actor to come back).
fn claim(s: &mut Scene, actor: ember_core::ids::ActorId) {
    let client = s.conn();
    let locate = ClientRequest::LocateActor {
        actor,
        known: 0,
        suspect: false,
        timeout_ms: 60_000,
    };
    s.ask(client, locate);
}

/// The position of the first effect of the last batch that `is`, which must be there.
fn position(s: &Scene, what: &str, is: impl Fn(&Effect) -> bool) -> usize {
    s.batch
        .iter()
        .position(is)
        .unwrap_or_else(|| panic!("no {what} in {:?}", s.batch))
}

#[test]
fn every_promise_is_preceded_by_its_journal_effect() {
    let mut s = Scene::new();
    let (_, node) = s.join();
    let journaled = position(
        &s,
        "journaled join",
        |e| matches!(e, Effect::Journal(Change::Node { node: n, .. }) if *n == node),
    );
    let welcome = position(&s, "welcome", |e| matches!(e, Effect::Welcome { .. }));
    assert!(journaled < welcome, "{:?}", s.batch);

    let owner = s.conn();
    let (request, effects) = s.ask(owner, ClientRequest::CreateActor(spec(true)));
    let (_, create, _) = command(&effects);
    let effects = s.reply(create, WorkerReply::ActorReady(actor_endpoints()));
    let ClientReply::ActorCreated(location) = reply_to(&effects, request) else {
        panic!("{effects:?}");
    };
    let actor = location.actor;
    let journaled = position(
        &s,
        "journaled actor",
        |e| matches!(e, Effect::Journal(Change::Actor { actor: a, record }) if *a == actor && record.incarnation == 1 && record.node == Some(node)),
    );
    let created = position(
        &s,
        "creation's reply",
        |e| matches!(e, Effect::Reply { request: r, .. } if *r == request),
    );
    assert!(journaled < created, "{:?}", s.batch);

    let (saved, ticket) = s.save(actor, 1, 7);
    s.stored(ticket);
    let journaled = position(
        &s,
        "journaled checkpoint",
        |e| matches!(e, Effect::Journal(Change::Checkpoint { actor: a, record }) if *a == actor && record.seq == 7),
    );
    let acknowledged = position(
        &s,
        "checkpoint's reply",
        |e| matches!(e, Effect::Reply { request: r, reply: ClientReply::CheckpointSaved { seq: 7 } } if *r == saved),
    );
    assert!(journaled < acknowledged, "{:?}", s.batch);
}

#[test]
fn a_restarted_head_has_every_acknowledged_node_actor_and_checkpoint() {
    let mut s = Scene::new();
    let (_, node) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, true);
    for seq in 1..=3 {
        let (_, ticket) = s.save(actor, 1, seq);
        s.stored(ticket);
    }

    let effects = s.restart();
    // The last life reserved ids 1 to 1024; this one takes the next block as it begins.
    assert!(
        matches!(
            effects.as_slice(),
            [
                Effect::Journal(Change::Epoch(2)),
                Effect::Journal(Change::IdsReserved(2049))
            ]
        ),
        "the new life journals its epoch and its first ids: {effects:?}"
    );
    assert_eq!(s.head.epoch(), 2);
    assert_eq!(s.head.expected_nodes(), vec![node]);
    assert!(s.head.knows_actor(actor));
    assert_eq!(s.head.recorded_checkpoint(actor), Some(3));
    claim(&mut s, actor);

    // A worker joins anew: ids continue past everything the last life gave out.
    let (_, fresh) = s.join();
    assert!(
        fresh.0 > actor.0 && fresh.0 > node.0,
        "{fresh} reuses an id"
    );

    // The old node does not re-join within the window: the actor restarts from seq 3.
    s.later(Duration::from_secs(1));
    s.handle(Input::Heard {
        node: fresh,
        after: s.now,
    });
    s.later(Duration::from_secs(1));
    let effects = s.handle(Input::Tick);
    assert!(s.head.expected_nodes().is_empty());
    let load = effects
        .iter()
        .find_map(|e| match e {
            Effect::LoadCheckpoint { ticket, actor: a } if *a == actor => Some(*ticket),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the newest checkpoint is read: {effects:?}"));
    let effects = s.handle(Input::CheckpointLoaded {
        ticket: load,
        result: Ok(Some(LoadedCheckpoint {
            seq: 3,
            image: image(3),
        })),
    });
    let (to, create, body) = command(&effects);
    assert_eq!(to, fresh);
    assert!(
        matches!(&body, WorkerCommand::CreateActor { incarnation: 2, restore: Some(r), .. } if *r == image(3)),
        "{body:?}"
    );
    s.reply(create, WorkerReply::ActorReady(actor_endpoints()));
    assert_eq!(s.head.live_incarnations(), vec![(actor, 2, fresh)]);

    // A second restart: the epoch goes on, the actor keeps its incarnation.
    s.restart();
    assert_eq!(s.head.epoch(), 3);
    assert_eq!(s.head.expected_nodes(), vec![fresh]);
    assert_eq!(s.head.recorded_checkpoint(actor), Some(3));
}

#[test]
fn a_creation_never_answered_is_not_restored() {
    let mut s = Scene::new();
    s.join();
    let owner = s.conn();
    let (_, effects) = s.ask(owner, ClientRequest::CreateActor(spec(false)));
    let (_, _, body) = command(&effects);
    let WorkerCommand::CreateActor { actor, .. } = body else {
        panic!("{body:?}");
    };
    s.restart();
    assert!(
        !s.head.knows_actor(actor),
        "its creation was never answered"
    );
}

#[test]
fn stopped_actors_and_departed_nodes_stay_gone() {
    let mut s = Scene::new();
    let (conn, node) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, true);
    let (request, effects) = s.ask(owner, ClientRequest::KillActor { actor });
    let (_, kill, _) = command(&effects);
    let effects = s.reply(kill, WorkerReply::ActorKilled);
    assert!(matches!(
        reply_to(&effects, request),
        ClientReply::ActorKilled
    ));
    s.handle(Input::Closed { conn });
    assert_eq!(s.head.node_count(), 0);

    s.restart();
    assert!(!s.head.knows_actor(actor));
    assert!(!s.head.expected_nodes().contains(&node));
    assert_eq!(s.head.poll_timeout(), None, "nothing to wait for");
}

#[test]
fn a_restored_actor_does_not_die_with_a_connection_of_the_same_number() {
    let mut s = Scene::new();
    s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, false);
    s.restart();
    // The new life numbers its connections afresh: `owner` now names someone else.
    s.handle(Input::Closed { conn: owner });
    assert!(s.head.knows_actor(actor));
}

#[test]
fn an_actor_being_restarted_when_the_head_stopped_starts_under_a_new_incarnation() {
    let mut s = Scene::new();
    let (conn, _) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, true);
    s.join();
    // Its worker dies: incarnation 2 is placed and reads its checkpoints when the head stops.
    let effects = s.handle(Input::Closed { conn });
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::LoadCheckpoint { .. })),
        "{effects:?}"
    );
    s.restart();
    assert!(s.head.knows_actor(actor));
    claim(&mut s, actor);
    let (_, fresh) = s.join();
    s.later(Duration::from_secs(1));
    s.handle(Input::Heard {
        node: fresh,
        after: s.now,
    });
    s.later(Duration::from_secs(1));
    let effects = s.handle(Input::Tick);
    let load = effects
        .iter()
        .find_map(|e| match e {
            Effect::LoadCheckpoint { ticket, .. } => Some(*ticket),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{effects:?}"));
    let effects = s.handle(Input::CheckpointLoaded {
        ticket: load,
        result: Ok(None),
    });
    let (to, _, body) = command(&effects);
    assert_eq!(to, fresh);
    assert!(
        matches!(body, WorkerCommand::CreateActor { incarnation: 3, .. }),
        "a new number, uncounted: {body:?}"
    );
}

/// An actor created on a fresh node (checkpointing); what its worker would report of it when
/// re-joining.
fn running_actor(s: &mut Scene) -> (ember_core::ids::ActorId, NodeId, RunningActor) {
    let owner = s.conn();
    running_actor_of(s, owner, spec(true))
}

/// `running_actor`, of `spec`, created by client connection `owner`.
pub(super) fn running_actor_of(
    s: &mut Scene,
    owner: crate::io::ConnId,
    spec: ember_core::proto::ActorSpec,
) -> (ember_core::ids::ActorId, NodeId, RunningActor) {
    let (request, effects) = s.ask(owner, ClientRequest::CreateActor(spec));
    let (node, create, body) = command(&effects);
    let WorkerCommand::CreateActor {
        actor,
        incarnation,
        allocation,
        ..
    } = body
    else {
        panic!("{body:?}");
    };
    let effects = s.reply(create, WorkerReply::ActorReady(actor_endpoints()));
    assert!(matches!(
        reply_to(&effects, request),
        ClientReply::ActorCreated(_)
    ));
    let running = RunningActor {
        actor,
        incarnation,
        allocation,
        endpoints: actor_endpoints(),
        sealed: false,
    };
    (actor, node, running)
}

pub(super) fn rejoin(
    node: NodeId,
    actors: Vec<RunningActor>,
    leases: Vec<RunningLease>,
) -> Option<Rejoin> {
    Some(Rejoin {
        node,
        epoch: 1,
        actors,
        leases,
    })
}

fn commands(effects: &[Effect]) -> Vec<WorkerCommand> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Command { body, .. } => Some(body.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_worker_that_re_joins_in_time_keeps_its_actor_running_as_it_was() {
    let mut s = Scene::new();
    s.join();
    let (actor, node, running) = running_actor(&mut s);
    s.restart();
    assert_eq!(s.head.live_incarnations(), vec![]);

    let (_, back, effects) = s.join_as(rejoin(node, vec![running], vec![]));
    assert_eq!(back, node, "matched to the node it was");
    claim(&mut s, actor);
    assert!(
        commands(&effects).is_empty(),
        "nothing is started or stopped: {effects:?}"
    );
    assert_eq!(s.head.live_incarnations(), vec![(actor, 1, node)]);
    assert!(s.head.expected_nodes().is_empty());

    // The window passes, the worker heard from meanwhile: nothing restarts.
    s.later(Duration::from_millis(1_500));
    s.handle(Input::Heard { node, after: s.now });
    s.later(Duration::from_millis(1_000));
    let effects = s.handle(Input::Tick);
    assert!(commands(&effects).is_empty(), "{effects:?}");
    assert_eq!(s.head.live_incarnations(), vec![(actor, 1, node)]);
    // Its checkpoints are accepted again: it is the live incarnation.
    let (saved, ticket) = s.save(actor, 1, 4);
    let effects = s.stored(ticket);
    assert!(matches!(
        reply_to(&effects, saved),
        ClientReply::CheckpointSaved { seq: 4 }
    ));
}

#[test]
fn a_checkpoint_before_its_worker_re_joins_is_not_taken_for_a_replaced_incarnation() {
    let mut s = Scene::new();
    s.join();
    let (actor, node, running) = running_actor(&mut s);
    s.restart();
    let exec = s.conn();
    let save = ember_core::proto::CheckpointSave {
        actor,
        incarnation: 1,
        seq: 5,
        image: image(5),
    };
    let (request, effects) = s.ask(exec, ClientRequest::SaveCheckpoint(save));
    match reply_to(&effects, request) {
        ClientReply::Error(e) => assert_eq!(e.kind, ErrorKind::Timeout, "{e:?}"),
        other => panic!("{other:?}"),
    }
    // Once adopted, its checkpoints are recorded.
    s.join_as(rejoin(node, vec![running], vec![]));
    let (saved, ticket) = s.save(actor, 1, 5);
    let effects = s.stored(ticket);
    assert!(matches!(
        reply_to(&effects, saved),
        ClientReply::CheckpointSaved { seq: 5 }
    ));
}

#[test]
fn what_a_re_joining_worker_runs_that_the_journal_does_not_know_is_stopped() {
    let mut s = Scene::new();
    s.join();
    let (actor, node, running) = running_actor(&mut s);
    s.restart();
    // A stray incarnation of an actor the journal never had, one of the known actor that the
    // journal does not have on record, and a task lease of the last life.
    let mut stray = running.clone();
    stray.actor = ember_core::ids::ActorId(9_999);
    stray.incarnation = 4;
    stray.allocation.gpus.clear();
    stray.allocation.cpu_millis = 0;
    let mut old = running.clone();
    old.incarnation = 7;
    let lease = LeaseId(8_888);
    let mut held = stray.allocation.clone();
    held.cpu_millis = 500;
    let open = RunningLease {
        lease,
        allocation: held,
    };
    let (_, back, effects) = s.join_as(rejoin(node, vec![stray.clone(), old], vec![open]));
    assert_eq!(back, node);
    let sent = commands(&effects);
    assert!(
        sent.iter().any(|c| matches!(c, WorkerCommand::KillActor { actor: a, incarnation: 4 } if *a == stray.actor)),
        "{sent:?}"
    );
    assert!(
        sent.iter().any(
            |c| matches!(c, WorkerCommand::KillActor { actor: a, incarnation: 7 } if *a == actor)
        ),
        "{sent:?}"
    );
    assert!(
        sent.iter()
            .any(|c| matches!(c, WorkerCommand::CloseLease { lease: l } if *l == lease)),
        "{sent:?}"
    );
    // The journal's incarnation 1 is not among what runs: it restarts from its checkpoint.
    assert!(
        s.batch
            .iter()
            .any(|e| matches!(e, Effect::LoadCheckpoint { actor: a, .. } if *a == actor)),
        "{:?}",
        s.batch
    );
}

#[test]
fn a_worker_claiming_a_node_the_journal_does_not_expect_joins_as_new_and_stops_its_work() {
    let mut s = Scene::new();
    s.join();
    let (actor, node, running) = running_actor(&mut s);
    s.restart();
    let (_, fresh, effects) = s.join_as(rejoin(NodeId(77_777), vec![running], vec![]));
    assert_ne!(fresh, NodeId(77_777));
    assert_ne!(fresh, node);
    let sent = commands(&effects);
    assert!(
        matches!(sent.as_slice(), [WorkerCommand::KillActor { actor: a, incarnation: 1 }] if *a == actor),
        "{sent:?}"
    );
    assert_eq!(
        s.head.expected_nodes(),
        vec![node],
        "the real node is still awaited"
    );
    assert_eq!(s.head.live_incarnations(), vec![]);
}

#[test]
fn a_second_worker_claiming_an_already_re_joined_node_joins_as_new() {
    let mut s = Scene::new();
    s.join();
    let (actor, node, running) = running_actor(&mut s);
    s.restart();
    let (_, back, _) = s.join_as(rejoin(node, vec![running.clone()], vec![]));
    assert_eq!(back, node);
    let (_, other, effects) = s.join_as(rejoin(node, vec![running], vec![]));
    assert_ne!(other, node);
    assert!(
        matches!(commands(&effects).as_slice(), [WorkerCommand::KillActor { actor: a, incarnation: 1 }] if *a == actor),
        "{effects:?}"
    );
    assert_eq!(
        s.head.live_incarnations(),
        vec![(actor, 1, node)],
        "one live incarnation"
    );
}

#[test]
fn actors_of_an_earlier_life_belong_to_the_client_that_claims_them_and_the_rest_stop() {
    let mut s = Scene::new();
    s.join();
    let (claimed, node, first) = running_actor(&mut s);
    let (unclaimed, _, second) = running_actor(&mut s);
    s.restart();
    s.join_as(rejoin(node, vec![first, second], vec![]));
    // A client of the new life finds one of them: it owns it from now on.
    let client = s.conn();
    let locate = ClientRequest::LocateActor {
        actor: claimed,
        known: 0,
        suspect: false,
        timeout_ms: 1_000,
    };
    let (request, effects) = s.ask(client, locate);
    assert!(
        matches!(reply_to(&effects, request), ClientReply::ActorLocated(l) if l.incarnation == 1),
        "{effects:?}"
    );
    // The window ends (the worker heard from meanwhile): the unclaimed one is stopped.
    s.later(Duration::from_millis(1_500));
    s.handle(Input::Heard { node, after: s.now });
    s.later(Duration::from_millis(1_000));
    let effects = s.handle(Input::Tick);
    let stopped: Vec<WorkerCommand> = commands(&effects);
    assert!(
        matches!(stopped.as_slice(), [WorkerCommand::KillActor { actor, incarnation: 1 }] if *actor == unclaimed),
        "{effects:?}"
    );
    assert!(s.head.knows_actor(claimed));
    assert!(!s.head.knows_actor(unclaimed));
    // The claimed one dies with its new owner's connection.
    let effects = s.handle(Input::Closed { conn: client });
    assert!(
        commands(&effects)
            .iter()
            .any(|c| matches!(c, WorkerCommand::KillActor { actor, .. } if *actor == claimed)),
        "{effects:?}"
    );
    assert!(!s.head.knows_actor(claimed));
}

#[test]
fn a_lease_asked_for_before_the_nodes_re_join_waits_for_them() {
    let mut s = Scene::new();
    s.join();
    let (_, node, running) = running_actor(&mut s);
    s.restart();
    // A client of the new life asks for a task lease before any node is back: it waits,
    // where a cluster that never had nodes refuses at once.
    let client = s.conn();
    let spec = ember_core::proto::LeaseSpec {
        name: "train".into(),
        placement: super::placement(50),
    };
    let (request, effects) = s.ask(client, ClientRequest::LeaseTask(spec.clone()));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Reply { request: r, .. } if *r == request)),
        "{effects:?}"
    );
    // The node re-joins, with its actor on half its GPU: the lease opens there.
    let (_, back, effects) = s.join_as(rejoin(node, vec![running], vec![]));
    assert_eq!(back, node);
    assert!(
        commands(&effects)
            .iter()
            .any(|c| matches!(c, WorkerCommand::OpenLease { .. })),
        "{effects:?}"
    );
    // One that no node of the cluster could ever take (two whole GPUs) waits only until
    // every node expected is back or given up.
    s.restart();
    let big = ember_core::proto::LeaseSpec {
        name: "train".into(),
        placement: super::placement(200),
    };
    let (request, effects) = s.ask(client, ClientRequest::LeaseTask(big));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Reply { request: r, .. } if *r == request)),
        "{effects:?}"
    );
    s.later(Duration::from_secs(3));
    let effects = s.handle(Input::Tick);
    assert!(
        matches!(reply_to(&effects, request), ClientReply::Error(e) if e.kind == ErrorKind::Infeasible),
        "{effects:?}"
    );
}

#[test]
fn an_actor_sealed_when_the_head_stopped_moves_from_its_final_checkpoint_uncounted() {
    let mut s = Scene::new();
    s.join();
    // No restarts allowed: a move is not one.
    let mut no_restarts = spec(true);
    no_restarts.restart.max_restarts = 0;
    let owner = s.conn();
    let (actor, node, mut running) = running_actor_of(&mut s, owner, no_restarts);
    let (_, ticket) = s.save(actor, 1, 2);
    s.stored(ticket);
    let (_, other) = s.join();
    let owner = s.conn();
    let drain = ClientRequest::DrainNode {
        node,
        grace_ms: 10_000,
        notice: false,
    };
    let (_, effects) = s.ask(owner, drain);
    assert!(
        matches!(command(&effects).2, WorkerCommand::SealActor { actor: a } if a == actor),
        "{effects:?}"
    );
    // The seal's final checkpoint is acknowledged (so journaled); the head dies before the
    // worker's `Sealed` reaches it.
    let (saved, ticket) = s.save(actor, 1, 5);
    let effects = s.stored(ticket);
    assert!(matches!(
        reply_to(&effects, saved),
        ClientReply::CheckpointSaved { seq: 5 }
    ));
    s.restart();
    claim(&mut s, actor);
    s.join_as(rejoin(other, vec![], vec![]));
    // Its worker re-joins, reporting the actor sealed: the sealed process is stopped, and the
    // actor starts again from the final checkpoint.
    running.sealed = true;
    let (_, back, effects) = s.join_as(rejoin(node, vec![running], vec![]));
    assert_eq!(back, node);
    assert!(
        commands(&effects).iter().any(
            |c| matches!(c, WorkerCommand::KillActor { actor: a, incarnation: 1 } if *a == actor)
        ),
        "{effects:?}"
    );
    assert_eq!(s.head.recorded_checkpoint(actor), Some(5));
    let load = effects
        .iter()
        .find_map(|e| match e {
            Effect::LoadCheckpoint { ticket, actor: a } if *a == actor => Some(*ticket),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the actor reads its checkpoints: {effects:?}"));
    let effects = s.handle(Input::CheckpointLoaded {
        ticket: load,
        result: Ok(Some(LoadedCheckpoint {
            seq: 5,
            image: image(5),
        })),
    });
    let (to, create, body) = command(&effects);
    assert!(
        matches!(&body, WorkerCommand::CreateActor { incarnation: 2, restore: Some(r), .. } if *r == image(5)),
        "{body:?}"
    );
    s.reply(create, WorkerReply::ActorReady(actor_endpoints()));
    assert_eq!(s.head.live_incarnations(), vec![(actor, 2, to)]);
    let record = s.journal.read().unwrap().actors[&actor].clone();
    assert_eq!((record.incarnation, record.restarts), (2, 0));
}

/// An actor on a node that then dies with its worker, with checkpoints 1 to 3 recorded; a
/// second node to restart it on. Returns the actor and the ticket of its checkpoint read.
fn lost_with_three_checkpoints(s: &mut Scene) -> (ember_core::ids::ActorId, crate::io::Ticket) {
    let (conn, _) = s.join();
    let owner = s.conn();
    let (actor, _) = s.actor(owner, true);
    for seq in 1..=3 {
        let (_, ticket) = s.save(actor, 1, seq);
        s.stored(ticket);
    }
    s.join();
    let effects = s.handle(Input::Closed { conn });
    let load = effects
        .iter()
        .find_map(|e| match e {
            Effect::LoadCheckpoint { ticket, actor: a } if *a == actor => Some(*ticket),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the actor reads its checkpoints: {effects:?}"));
    (actor, load)
}

#[test]
fn falling_back_to_an_older_checkpoint_journals_the_one_used() {
    let mut s = Scene::new();
    let (actor, load) = lost_with_three_checkpoints(&mut s);
    // Checkpoint 3 failed its hash: the store gives 2.
    let effects = s.handle(Input::CheckpointLoaded {
        ticket: load,
        result: Ok(Some(LoadedCheckpoint {
            seq: 2,
            image: image(2),
        })),
    });
    let (_, _, body) = command(&effects);
    assert!(
        matches!(&body, WorkerCommand::CreateActor { restore: Some(r), .. } if *r == image(2)),
        "{body:?}"
    );
    let journaled = position(
        &s,
        "journaled fallback",
        |e| matches!(e, Effect::Journal(Change::Checkpoint { actor: a, record }) if *a == actor && record.seq == 2),
    );
    let create = position(&s, "creation", |e| matches!(e, Effect::Command { .. }));
    assert!(journaled < create, "{:?}", s.batch);
    let record = s.journal.read().unwrap().checkpoints[&actor].clone();
    let sha256: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(image(2)).into();
    assert_eq!(
        record.sha256, sha256,
        "the store names checkpoint 2 by this hash"
    );
    assert_eq!(s.head.recorded_checkpoint(actor), Some(2));
    s.restart();
    assert_eq!(s.head.recorded_checkpoint(actor), Some(2));
}

#[test]
fn finding_every_checkpoint_damaged_journals_that_there_is_none() {
    let mut s = Scene::new();
    let (actor, load) = lost_with_three_checkpoints(&mut s);
    let effects = s.handle(Input::CheckpointLoaded {
        ticket: load,
        result: Ok(None),
    });
    let (_, _, body) = command(&effects);
    assert!(
        matches!(&body, WorkerCommand::CreateActor { restore: None, .. }),
        "{body:?}"
    );
    assert!(
        s.batch.iter().any(
            |e| matches!(e, Effect::Journal(Change::CheckpointGone { actor: a }) if *a == actor)
        ),
        "{:?}",
        s.batch
    );
    assert_eq!(s.head.recorded_checkpoint(actor), None);
    s.restart();
    assert_eq!(s.head.recorded_checkpoint(actor), None);
    assert!(s.head.knows_actor(actor));
}
