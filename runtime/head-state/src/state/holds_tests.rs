//! Who keeps an actor alive: its creator and every connection that holds it; the last one to
//! let go (release or disconnect) stops it, and a kill stops it whoever holds it.

use std::time::Duration;

use ember_core::ids::ActorId;
use ember_core::proto::{ClientReply, ClientRequest, ErrorKind, WorkerCommand, WorkerReply};

use super::restore_tests::{rejoin, running_actor_of};
use super::{command, error_of, reply_to, share_used, spec, Scene};
use crate::io::{ConnId, Effect, Input};

/// `conn` holds `actor`; the head says so.
fn hold(s: &mut Scene, conn: ConnId, actor: ActorId) {
    let (request, effects) = s.ask(conn, ClientRequest::HoldActor { actor });
    assert!(
        matches!(reply_to(&effects, request), ClientReply::ActorHeld),
        "{effects:?}"
    );
}

/// `conn` releases `actor`; returns the effects after the answer, which always comes.
fn release(s: &mut Scene, conn: ConnId, actor: ActorId) -> Vec<Effect> {
    let (request, effects) = s.ask(conn, ClientRequest::ReleaseActor { actor });
    assert!(
        matches!(reply_to(&effects, request), ClientReply::ActorReleased),
        "{effects:?}"
    );
    effects
}

/// The worker commands among `effects`.
fn commands(effects: &[Effect]) -> Vec<WorkerCommand> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Command { body, .. } => Some(body.clone()),
            _ => None,
        })
        .collect()
}

/// Whether `effects` stop `actor`'s process.
fn stops(effects: &[Effect], actor: ActorId) -> bool {
    commands(effects)
        .iter()
        .any(|c| matches!(c, WorkerCommand::KillActor { actor: a, .. } if *a == actor))
}

#[test]
fn an_actor_another_client_holds_outlives_its_creators_disconnect_until_that_one_goes() {
    let mut s = Scene::new();
    let (_, node) = s.join();
    let creator = s.conn();
    let (actor, _) = s.actor(creator, false);
    let holder = s.conn();
    hold(&mut s, holder, actor);
    assert_eq!(s.head.holders(actor), vec![creator, holder]);
    let status = s.status();
    let life = status.actors[0].actor.as_ref().expect("an actor's life");
    assert_eq!(life.holders, 2, "`ember status` counts its holders");

    let effects = s.handle(Input::Closed { conn: creator });
    assert!(!stops(&effects, actor), "{effects:?}");
    assert_eq!(s.head.holders(actor), vec![holder]);
    assert_eq!(s.head.live_incarnations().len(), 1, "it still runs");

    let effects = s.handle(Input::Closed { conn: holder });
    let (to, kill, body) = command(&effects);
    assert_eq!(to, node);
    assert!(matches!(body, WorkerCommand::KillActor { actor: a, incarnation: 1 } if a == actor));
    assert!(!s.head.knows_actor(actor));
    s.reply(kill, WorkerReply::ActorKilled);
    assert_eq!(share_used(&s.head, node), 0, "its resources are back");
}

#[test]
fn the_creators_release_stops_an_actor_nobody_else_holds() {
    let mut s = Scene::new();
    s.join();
    let creator = s.conn();
    let (actor, _) = s.actor(creator, true);
    let effects = release(&mut s, creator, actor);
    assert!(stops(&effects, actor), "{effects:?}");
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::ForgetCheckpoints { actor: a } if *a == actor)),
        "{effects:?}"
    );
    assert!(!s.head.knows_actor(actor));
    // Releasing it again, or an actor never known, is answered all the same.
    let effects = release(&mut s, creator, actor);
    assert!(commands(&effects).is_empty(), "{effects:?}");
}

#[test]
fn the_last_release_stops_the_actor_and_holding_twice_is_holding_once() {
    let mut s = Scene::new();
    s.join();
    let creator = s.conn();
    let (actor, _) = s.actor(creator, false);
    let holder = s.conn();
    hold(&mut s, holder, actor);
    hold(&mut s, holder, actor);

    let effects = release(&mut s, creator, actor);
    assert!(!stops(&effects, actor), "{effects:?}");
    // A release by a connection that does not hold it changes nothing.
    let stranger = s.conn();
    let effects = release(&mut s, stranger, actor);
    assert!(!stops(&effects, actor), "{effects:?}");
    assert_eq!(s.head.holders(actor), vec![holder]);

    let effects = release(&mut s, holder, actor);
    assert!(stops(&effects, actor), "{effects:?}");
    assert!(!s.head.knows_actor(actor));
}

#[test]
fn a_kill_stops_an_actor_whoever_holds_it() {
    let mut s = Scene::new();
    s.join();
    let creator = s.conn();
    let (actor, _) = s.actor(creator, false);
    let holder = s.conn();
    hold(&mut s, holder, actor);

    let (request, effects) = s.ask(holder, ClientRequest::KillActor { actor });
    let (_, kill, body) = command(&effects);
    assert!(matches!(body, WorkerCommand::KillActor { actor: a, .. } if a == actor));
    let effects = s.reply(kill, WorkerReply::ActorKilled);
    assert!(matches!(
        reply_to(&effects, request),
        ClientReply::ActorKilled
    ));
    assert!(!s.head.knows_actor(actor));
    // Its holders going away afterwards stops nothing more.
    let effects = s.handle(Input::Closed { conn: creator });
    assert!(commands(&effects).is_empty(), "{effects:?}");
}

#[test]
fn holding_an_actor_the_head_does_not_know_fails_naming_it() {
    let mut s = Scene::new();
    s.join();
    let client = s.conn();
    let (request, effects) = s.ask(
        client,
        ClientRequest::HoldActor {
            actor: ActorId(999),
        },
    );
    let e = error_of(reply_to(&effects, request));
    assert_eq!(e.kind, ErrorKind::Unknown);
    assert!(e.message.contains(&ActorId(999).to_string()), "{e}");
}

#[test]
fn after_a_restart_holding_an_actor_claims_it_and_its_holders_keep_it_past_the_window() {
    let mut s = Scene::new();
    s.join();
    let creator = s.conn();
    let (actor, node, running) = running_actor_of(&mut s, creator, spec(false));
    let (other, _, other_running) = running_actor_of(&mut s, creator, spec(false));
    s.restart();
    assert_eq!(
        s.head.holders(actor),
        vec![],
        "holders do not outlive a head life"
    );
    s.join_as(rejoin(node, vec![running, other_running], vec![]));

    // Two clients of the new life hold the first actor (its creator re-holding it, and a
    // client it was passed to); nobody holds the second.
    let again = s.conn();
    hold(&mut s, again, actor);
    let passed_to = s.conn();
    hold(&mut s, passed_to, actor);
    assert_eq!(s.head.holders(actor), vec![again, passed_to]);

    // The window ends: the one nobody claimed stops, the held one runs on.
    s.later(Duration::from_millis(1_500));
    s.handle(Input::Heard { node, after: s.now });
    s.later(Duration::from_millis(1_000));
    let effects = s.handle(Input::Tick);
    assert!(stops(&effects, other), "{effects:?}");
    assert!(!stops(&effects, actor), "{effects:?}");

    // Its creator's new connection goes; the client it was passed to keeps it.
    let effects = s.handle(Input::Closed { conn: again });
    assert!(!stops(&effects, actor), "{effects:?}");
    let effects = s.handle(Input::Closed { conn: passed_to });
    assert!(stops(&effects, actor), "{effects:?}");
    assert!(!s.head.knows_actor(actor));
}
