//! Gangs through the head: created whole or waiting, work placed in their bundles, removal,
//! a node's death placing only its bundles again, a client that leaves, and a waiting gang
//! that no live node set can hold any more.

use std::time::Duration;

use ember_core::ids::GangId;
use ember_core::proto::{
    BundleRef, ClientReply, ClientRequest, ErrorKind, GangSpec, GangStrategy, WorkerCommand,
    WorkerReply,
};
use ember_core::resources::{GpuShare, ResourceDemand};

use super::{actor_endpoints, command, error_of, placement, reply_to, share_used, spec, Scene};
use crate::io::{Effect, Input};

fn one_gpu() -> ResourceDemand {
    ResourceDemand {
        cpu_millis: 1000,
        gpus: GpuShare::ONE,
        ..ResourceDemand::default()
    }
}

fn gang(strategy: GangStrategy, bundles: usize, timeout_ms: Option<u64>) -> ClientRequest {
    ClientRequest::CreateGang(GangSpec {
        bundles: vec![one_gpu(); bundles],
        strategy,
        priority: 0,
        pending_timeout_ms: timeout_ms,
    })
}

fn created(reply: ClientReply) -> (GangId, Vec<ember_core::ids::NodeId>) {
    match reply {
        ClientReply::GangCreated { gang, nodes } => (gang, nodes),
        other => panic!("expected the gang, got {other:?}"),
    }
}

/// Starts an actor in `bundle`, returning it and the node it was built on.
fn actor_in(
    s: &mut Scene,
    owner: super::ConnId,
    bundle: BundleRef,
) -> (ember_core::ids::ActorId, ember_core::ids::NodeId) {
    let mut spec = spec(false);
    spec.placement.bundle = Some(bundle);
    let (request, effects) = s.ask(owner, ClientRequest::CreateActor(spec));
    let (node, command, body) = command(&effects);
    let WorkerCommand::CreateActor { actor, .. } = body else {
        panic!("expected the actor to be built, got {body:?}");
    };
    let effects = s.reply(command, WorkerReply::ActorReady(actor_endpoints()));
    assert!(matches!(
        reply_to(&effects, request),
        ClientReply::ActorCreated(_)
    ));
    (actor, node)
}

#[test]
fn a_gang_is_created_whole_and_its_removal_stops_the_work_in_it() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let (_, b) = s.join();
    let client = s.conn();
    let (request, effects) = s.ask(client, gang(GangStrategy::StrictSpread, 2, None));
    let (gang, nodes) = created(reply_to(&effects, request));
    assert_eq!(nodes, vec![a, b]);
    assert_eq!((share_used(&s.head, a), share_used(&s.head, b)), (100, 100));

    // An actor in bundle 1 runs on bundle 1's node, inside what the bundle holds.
    let (actor, on) = actor_in(&mut s, client, BundleRef { gang, index: 1 });
    assert_eq!(on, b);
    assert_eq!(
        share_used(&s.head, b),
        100,
        "the actor uses the bundle's GPU"
    );
    // Work that does not fit the bundle is refused at once, naming the bundle.
    let mut too_big = spec(false);
    too_big.placement = placement(200);
    too_big.placement.bundle = Some(BundleRef { gang, index: 0 });
    let (request, effects) = s.ask(client, ClientRequest::CreateActor(too_big));
    let e = error_of(reply_to(&effects, request));
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(
        e.message
            .contains(&format!("bundle 0 of {gang} can never hold")),
        "{e}"
    );

    // Removing the gang stops the actor; bundle 0 returns at once, bundle 1 once it stopped.
    let (request, effects) = s.ask(client, ClientRequest::RemoveGang { gang });
    assert!(matches!(
        reply_to(&effects, request),
        ClientReply::GangRemoved
    ));
    let (to, kill, body) = command(&effects);
    assert_eq!(to, b);
    assert!(matches!(body, WorkerCommand::KillActor { actor: x, .. } if x == actor));
    assert_eq!((share_used(&s.head, a), share_used(&s.head, b)), (0, 100));
    s.reply(kill, WorkerReply::ActorKilled);
    assert_eq!(share_used(&s.head, b), 0, "all of it is released");

    // Unknown now.
    let (request, effects) = s.ask(client, ClientRequest::RemoveGang { gang });
    let e = error_of(reply_to(&effects, request));
    assert!(e.message.contains("is not in the cluster"), "{e}");
}

#[test]
fn a_gang_that_does_not_fit_whole_waits_with_its_reason_then_is_placed() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let (_, _b) = s.join();
    let client = s.conn();
    // A task lease holds node a's GPU.
    let lease_request = s.held_lease(client, 100);
    let (request, effects) = s.ask(client, gang(GangStrategy::StrictSpread, 2, None));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Reply { request: r, .. } if *r == request)),
        "it waits: {effects:?}"
    );
    let status = s.status();
    let g = &status.gangs[0];
    assert_eq!(
        (g.state.as_str(), g.strategy.as_str()),
        ("waiting", "strict_spread")
    );
    assert!(
        g.waiting
            .as_deref()
            .unwrap()
            .starts_with("waiting for capacity"),
        "{g:?}"
    );
    assert!(
        g.bundles.iter().all(|b| b.node.is_none()),
        "it holds nothing"
    );
    assert_eq!(share_used(&s.head, a), 100);

    // The lease ends: the gang is placed whole and its creation answered.
    let effects = s.handle(Input::LeaseReturned {
        request: lease_request,
        lost: false,
    });
    let (_, close, _) = command(&effects);
    let effects = s.reply(close, WorkerReply::LeaseClosed);
    let (_, nodes) = created(reply_to(&effects, request));
    assert_eq!(nodes.len(), 2);
}

#[test]
fn a_dead_node_places_only_its_bundles_again_and_their_actors_follow() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let (conn_b, b) = s.join();
    let client = s.conn();
    let (request, effects) = s.ask(client, gang(GangStrategy::StrictSpread, 2, None));
    let (gang, nodes) = created(reply_to(&effects, request));
    assert_eq!(nodes, vec![a, b]);
    let (actor, on) = actor_in(&mut s, client, BundleRef { gang, index: 1 });
    assert_eq!(on, b);

    // Node b dies: its bundle waits to be placed again, and the actor with it.
    s.handle(Input::Closed { conn: conn_b });
    let status = s.status();
    assert_eq!(status.gangs[0].state, "replacing");
    assert_eq!(
        status.gangs[0].bundles[0].node,
        Some(a.to_string()),
        "untouched"
    );
    let waiting = status
        .actors
        .iter()
        .find(|x| x.id == actor.to_string())
        .unwrap();
    assert!(
        waiting
            .waiting
            .as_deref()
            .unwrap()
            .contains("is not placed now"),
        "{waiting:?}"
    );
    // A new node joins: bundle 1 is placed there, and the actor restarts in it.
    let (_, c, effects) = s.join_as(None);
    let (to, _, body) = command(&effects);
    assert_eq!(to, c);
    assert!(
        matches!(body, WorkerCommand::CreateActor { actor: x, incarnation: 2, .. } if x == actor)
    );
    let view = s.head.scheduler().gang(gang).unwrap();
    assert_eq!(view.bundles[0].node, Some(a));
    assert_eq!(view.bundles[1].node, Some(c));
}

#[test]
fn a_client_that_leaves_takes_its_gangs_placed_or_waiting() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let client = s.conn();
    let (request, effects) = s.ask(client, gang(GangStrategy::Pack, 1, None));
    created(reply_to(&effects, request));
    assert_eq!(share_used(&s.head, a), 100);
    // Another client's waits for the GPU; that client leaves.
    let other = s.conn();
    s.ask(other, gang(GangStrategy::Pack, 1, None));
    assert_eq!(s.head.scheduler().gangs().count(), 2);
    s.handle(Input::Closed { conn: other });
    assert_eq!(s.head.scheduler().gangs().count(), 1);
    s.handle(Input::Closed { conn: client });
    assert_eq!(share_used(&s.head, a), 0);
    assert_eq!(s.head.scheduler().gangs().count(), 0);
}

#[test]
fn a_waiting_gang_no_live_nodes_can_hold_fails_at_its_pending_timeout() {
    let mut s = Scene::new();
    let (_, _a) = s.join();
    let (_, _b) = s.join();
    let (conn_c, _c) = s.join();
    let client = s.conn();
    // Three bundles on distinct nodes: all three nodes needed; a lease holds one GPU.
    s.held_lease(client, 100);
    let (request, _) = s.ask(client, gang(GangStrategy::StrictSpread, 3, Some(1000)));
    // A node leaves: two nodes can never hold three bundles on distinct nodes.
    s.handle(Input::Closed { conn: conn_c });
    let status = s.status();
    let g = &status.gangs[0];
    assert!(
        g.waiting
            .as_deref()
            .unwrap()
            .starts_with("infeasible: a strict_spread gang of 3"),
        "{g:?}"
    );
    assert_eq!(g.fails_in_ms, Some(1000));
    s.later(Duration::from_millis(1000));
    let effects = s.handle(Input::Tick);
    let e = error_of(reply_to(&effects, request));
    assert_eq!(e.kind, ErrorKind::Infeasible);
    assert!(e.message.contains("waited too long"), "{e}");
    assert_eq!(s.head.scheduler().gangs().count(), 0);
}

#[test]
fn a_drain_moves_a_bundle_and_its_actor_to_another_node_without_waiting_out_the_grace() {
    let mut s = Scene::new();
    let (_, a) = s.join();
    let (_, b) = s.join();
    let client = s.conn();
    let (request, effects) = s.ask(client, gang(GangStrategy::StrictSpread, 2, None));
    let (gang, nodes) = created(reply_to(&effects, request));
    assert_eq!(nodes, vec![a, b]);
    let mut checkpointing = spec(true);
    checkpointing.placement.bundle = Some(BundleRef { gang, index: 0 });
    let (request, effects) = s.ask(client, ClientRequest::CreateActor(checkpointing));
    let (_, create, body) = command(&effects);
    let WorkerCommand::CreateActor { actor, .. } = body else {
        panic!("expected the actor to be built, got {body:?}");
    };
    let effects = s.reply(create, WorkerReply::ActorReady(actor_endpoints()));
    assert!(matches!(
        reply_to(&effects, request),
        ClientReply::ActorCreated(_)
    ));
    let (_, c) = s.join();

    let (drain, effects) = s.ask(
        client,
        ClientRequest::DrainNode {
            node: a,
            grace_ms: 600_000,
            notice: false,
        },
    );
    let (_, seal, _) = command(&effects);
    // The bundle is placed again on the one node the gang does not use.
    let view = s.head.scheduler().gang(gang).unwrap();
    assert_eq!(
        (view.bundles[0].node, view.bundles[1].node),
        (Some(c), Some(b))
    );
    let (_, ticket) = s.save(actor, 1, 3);
    s.stored(ticket);
    let effects = s.reply(seal, WorkerReply::Sealed { seq: Some(3) });
    assert_eq!(
        share_used(&s.head, a),
        0,
        "the bundle's old holding went with its actor"
    );
    let load = effects
        .iter()
        .find_map(|e| match e {
            Effect::LoadCheckpoint { ticket, .. } => Some(*ticket),
            _ => None,
        })
        .expect("the moved actor reads its final checkpoint");
    let effects = s.handle(Input::CheckpointLoaded {
        ticket: load,
        result: Ok(Some(crate::io::LoadedCheckpoint {
            seq: 3,
            image: super::image(3),
        })),
    });
    let (to, create, _) = command(&effects);
    assert_eq!(to, c, "the actor follows its bundle");
    let effects = s.reply(create, WorkerReply::ActorReady(actor_endpoints()));
    assert!(matches!(
        reply_to(&effects, drain),
        ClientReply::Drained { moved: 1 }
    ));
    assert_eq!(share_used(&s.head, c), 100);
}
