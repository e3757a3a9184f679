//! Collective groups in the journal, and a head restarted on it: the same generation with the
//! same members while they are adopted, a failed generation where one is not, and never a
//! generation number handed out twice.

use std::time::Duration;

use ember_core::ids::{ActorId, NodeId};
use ember_core::proto::{ClientReply, ClientRequest, GroupView};

use super::restore_tests::{rejoin, running_actor_of};
use super::{reply_to, spec, Scene};
use crate::io::{Effect, Input};
use crate::journal::{Change, GroupRecord};

/// A client of the new life claims `actor` (its locate may wait for the actor to come back).
fn claim(s: &mut Scene, actor: ActorId) {
    let client = s.conn();
    s.ask(
        client,
        ClientRequest::LocateActor {
            actor,
            known: 0,
            suspect: false,
            timeout_ms: 60_000,
        },
    );
}

fn form(s: &mut Scene, name: &str, members: &[ActorId]) -> GroupView {
    let client = s.conn();
    let body = ClientRequest::FormGroup {
        name: name.into(),
        members: members.to_vec(),
    };
    let (request, effects) = s.ask(client, body);
    match reply_to(&effects, request) {
        ClientReply::Group(view) => view,
        other => panic!("{other:?}"),
    }
}

/// What the head answers about `generation` of `name` whose members had `incarnations`.
fn health(s: &mut Scene, name: &str, generation: u64, incarnations: &[u32]) -> Option<String> {
    let client = s.conn();
    let body = ClientRequest::GroupHealth {
        name: name.into(),
        generation,
        incarnations: incarnations.to_vec(),
    };
    let (request, effects) = s.ask(client, body);
    match reply_to(&effects, request) {
        ClientReply::GroupHealth { broken } => broken,
        other => panic!("{other:?}"),
    }
}

/// The re-join window ends, the nodes `alive` heard from meanwhile.
fn window_ends(s: &mut Scene, alive: &[NodeId]) -> Vec<Effect> {
    s.later(Duration::from_millis(1_500));
    for &node in alive {
        s.handle(Input::Heard { node, after: s.now });
    }
    s.later(Duration::from_millis(1_000));
    s.handle(Input::Tick)
}

fn journaled_group(s: &Scene, name: &str) -> Option<GroupRecord> {
    let journaled = s.journal.read().expect("the journal reads back");
    journaled.groups.into_values().find(|g| g.name == name)
}

#[test]
fn a_generation_formed_or_broken_is_journaled_before_anyone_hears_of_it() {
    let mut s = Scene::new();
    s.join();
    let owner = s.conn();
    let (a, _, _) = running_actor_of(&mut s, owner, spec(true));
    let (b, _, _) = running_actor_of(&mut s, owner, spec(true));
    let client = s.conn();
    let body = ClientRequest::FormGroup {
        name: "dp".into(),
        members: vec![b, a],
    };
    let (request, effects) = s.ask(client, body);
    assert!(matches!(reply_to(&effects, request), ClientReply::Group(v) if v.generation == 1));
    let journaled = s
        .batch
        .iter()
        .position(|e| matches!(e, Effect::Journal(Change::Group { record, .. }) if record.generation == 1 && record.members == [b, a] && record.broken.is_none()))
        .unwrap_or_else(|| panic!("the generation is journaled: {:?}", s.batch));
    let answered = s
        .batch
        .iter()
        .position(|e| matches!(e, Effect::Reply { request: r, .. } if *r == request))
        .expect("answered");
    assert!(journaled < answered, "{:?}", s.batch);

    let body = ClientRequest::GroupFailed {
        name: "dp".into(),
        generation: 1,
        reason: "a link broke".into(),
        suspect: None,
    };
    let (request, effects) = s.ask(client, body);
    assert!(matches!(
        reply_to(&effects, request),
        ClientReply::GroupHealth { broken: Some(_) }
    ));
    let journaled = s
        .batch
        .iter()
        .position(|e| matches!(e, Effect::Journal(Change::Group { record, .. }) if record.broken.as_deref() == Some("a link broke")))
        .unwrap_or_else(|| panic!("the break is journaled: {:?}", s.batch));
    let answered = s
        .batch
        .iter()
        .position(|e| matches!(e, Effect::Reply { request: r, .. } if *r == request))
        .expect("answered");
    assert!(journaled < answered, "{:?}", s.batch);
    // A second report changes nothing, and journals nothing.
    let again = ClientRequest::GroupFailed {
        name: "dp".into(),
        generation: 1,
        reason: "again".into(),
        suspect: None,
    };
    s.ask(client, again);
    assert!(
        !s.batch.iter().any(|e| matches!(e, Effect::Journal(_))),
        "{:?}",
        s.batch
    );
    // Forming again journals the next generation in the same row.
    form(&mut s, "dp", &[a]);
    let record = journaled_group(&s, "dp").expect("journaled");
    assert_eq!(
        (record.generation, record.members, record.broken),
        (2, vec![a], None)
    );
    assert_eq!(s.journal.read().unwrap().groups.len(), 1);

    // A generation formed by joins is journaled before the joiners hear of it, in a row of its
    // own; one still waiting for joiners is not.
    let join = |actor, world| ClientRequest::JoinGroup {
        name: "tp".into(),
        actor,
        world,
        timeout_ms: 5_000,
    };
    s.ask(client, join(a, 2));
    assert!(journaled_group(&s, "tp").is_none(), "{:?}", s.batch);
    let (request, effects) = s.ask(client, join(b, 2));
    assert!(matches!(reply_to(&effects, request), ClientReply::Group(v) if v.generation == 1));
    let journaled = s
        .batch
        .iter()
        .position(|e| matches!(e, Effect::Journal(Change::Group { record, .. }) if record.name == "tp" && record.members == [a, b]))
        .unwrap_or_else(|| panic!("the joined generation is journaled: {:?}", s.batch));
    let answered = s
        .batch
        .iter()
        .position(|e| matches!(e, Effect::Reply { .. }))
        .expect("answered");
    assert!(journaled < answered, "{:?}", s.batch);
    assert_eq!(s.journal.read().unwrap().groups.len(), 2);
}

#[test]
fn a_restarted_head_goes_on_with_the_generation_of_its_adopted_members() {
    let mut s = Scene::new();
    s.join();
    let owner = s.conn();
    let (a, node, ra) = running_actor_of(&mut s, owner, spec(true));
    let (b, same, rb) = running_actor_of(&mut s, owner, spec(true));
    assert_eq!(node, same);
    let view = form(&mut s, "dp", &[b, a]);
    assert_eq!(view.generation, 1);

    s.restart();
    // While its members are expected back, the generation is not broken and a view waits.
    assert_eq!(health(&mut s, "dp", 1, &[1, 1]), None);
    let client = s.conn();
    let get = ClientRequest::GetGroup {
        name: "dp".into(),
        timeout_ms: 10_000,
    };
    let (waiting, effects) = s.ask(client, get);
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Reply { request, .. } if *request == waiting)),
        "{effects:?}"
    );
    // Their worker re-joins with both: the view is the same generation, the same ranks.
    let (_, back, effects) = s.join_as(rejoin(node, vec![ra, rb], vec![]));
    assert_eq!(back, node);
    let ClientReply::Group(after) = reply_to(&effects, waiting) else {
        panic!("{effects:?}");
    };
    assert_eq!(after.generation, 1);
    assert_eq!(after.members, view.members);
    claim(&mut s, a);
    claim(&mut s, b);
    window_ends(&mut s, &[node]);
    assert_eq!(health(&mut s, "dp", 1, &[1, 1]), None);
    // The next generation is numbered past it.
    assert_eq!(form(&mut s, "dp", &[a, b]).generation, 2);
}

#[test]
fn a_generation_with_a_member_not_adopted_fails_and_no_generation_is_handed_out_twice() {
    let mut s = Scene::new();
    s.join();
    let owner = s.conn();
    let (a, first, ra) = running_actor_of(&mut s, owner, spec(true));
    let (filler, _, rf) = running_actor_of(&mut s, owner, spec(true));
    s.join();
    let (b, second, _) = running_actor_of(&mut s, owner, spec(true));
    assert_ne!(first, second);
    form(&mut s, "dp", &[a, b]);
    form(&mut s, "dp", &[a, b]);
    form(&mut s, "solo", &[filler]);

    s.restart();
    assert_eq!(
        s.head
            .group_records()
            .iter()
            .map(|g| (g.name.as_str(), g.generation))
            .collect::<Vec<_>>(),
        [("dp", 2), ("solo", 1)]
    );
    // The first worker re-joins; the second never does.
    s.join_as(rejoin(first, vec![ra, rf], vec![]));
    for actor in [a, b, filler] {
        claim(&mut s, actor);
    }
    assert_eq!(
        health(&mut s, "dp", 2, &[1, 1]),
        None,
        "b is still expected"
    );
    let (_, fresh) = s.join();
    let effects = window_ends(&mut s, &[first, fresh]);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::LoadCheckpoint { actor, .. } if *actor == b)),
        "b restarts from its checkpoint: {effects:?}"
    );
    let broken = health(&mut s, "dp", 2, &[1, 1]).expect("the generation is broken");
    assert!(broken.contains("rank 1"), "{broken}");
    assert_eq!(health(&mut s, "solo", 1, &[1]), None);

    // A new formation is generation 3, in this life and after another restart.
    assert_eq!(form(&mut s, "dp", &[a]).generation, 3);
    s.restart();
    assert_eq!(journaled_group(&s, "dp").map(|g| g.generation), Some(3));
    // Formed again while its member is still expected: the view waits for it, and the
    // generation journaled is the next one.
    let client = s.conn();
    let body = ClientRequest::FormGroup {
        name: "dp".into(),
        members: vec![filler],
    };
    s.ask(client, body);
    assert_eq!(journaled_group(&s, "dp").map(|g| g.generation), Some(4));
}

#[test]
fn a_broken_generation_stays_broken_after_a_restart() {
    let mut s = Scene::new();
    s.join();
    let owner = s.conn();
    let (a, node, ra) = running_actor_of(&mut s, owner, spec(true));
    form(&mut s, "dp", &[a]);
    let client = s.conn();
    let failed = ClientRequest::GroupFailed {
        name: "dp".into(),
        generation: 1,
        reason: "rank 0 saw a NaN".into(),
        suspect: None,
    };
    s.ask(client, failed);
    s.restart();
    s.join_as(rejoin(node, vec![ra], vec![]));
    claim(&mut s, a);
    assert_eq!(
        health(&mut s, "dp", 1, &[1]).as_deref(),
        Some("a member failed: rank 0 saw a NaN")
    );
    assert_eq!(form(&mut s, "dp", &[a]).generation, 2);
    assert_eq!(health(&mut s, "dp", 2, &[1]), None);
}
