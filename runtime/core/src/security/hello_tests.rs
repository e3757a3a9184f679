//! Unit tests of the hello exchange: [`say_hello`] against [`accept_hello`] over in-memory
//! streams, for every role, listener and refusal.

use tokio::io::{duplex, split, AsyncWriteExt};

use super::*;
use crate::ids::NodeId;
use crate::proto::{
    read_frame, Hello, HelloRole, PeerHello, Welcome, WorkerHello, HELLO_LIMIT, PROTOCOL_VERSION,
};
use crate::resources::NodeResources;

const TOKEN: &str = "the-cluster-token";

fn worker() -> HelloRole {
    HelloRole::Worker(Box::new(WorkerHello {
        name: "w".into(),
        resources: NodeResources {
            cpu_millis: 1000,
            gpus: Vec::new(),
            custom: Vec::new(),
            labels: Vec::new(),
        },
        task_types: vec!["t".into()],
        actor_types: Vec::new(),
        address: "127.0.0.1:1".into(),
        rejoin: None,
        launch: None,
    }))
}

fn peer() -> HelloRole {
    HelloRole::Peer(PeerHello {
        group: "g".into(),
        generation: 1,
        from: 1,
        to: 0,
    })
}

fn roles() -> [HelloRole; 3] {
    [worker(), HelloRole::Client, peer()]
}

const LISTENERS: [HelloListener; 4] = [
    HelloListener::Head,
    HelloListener::ActorEndpoint,
    HelloListener::Calls,
    HelloListener::GroupLinks,
];

/// Says `hello` to a listener `listener` with the cluster's token, which welcomes an accepted
/// hello with `node`; returns what each side got.
async fn exchange(
    hello: Hello,
    listener: HelloListener,
) -> (
    Result<Option<NodeId>, HelloError>,
    Result<HelloRole, HelloRefused>,
) {
    let (a, b) = duplex(1 << 16);
    let (mut a_rd, mut a_wr) = split(a);
    let (mut b_rd, mut b_wr) = split(b);
    let sender = async { say_hello(&hello, &mut a_rd, &mut a_wr).await };
    let receiver = async {
        let got = accept_hello(&mut b_rd, &mut b_wr, TOKEN, listener).await;
        if got.is_ok() {
            let welcome = Welcome::Accepted {
                node: Some(NodeId(7)),
            };
            crate::proto::write_frame(&mut b_wr, &welcome)
                .await
                .unwrap();
            b_wr.flush().await.unwrap();
        }
        got
    };
    tokio::join!(sender, receiver)
}

#[tokio::test]
async fn each_listener_welcomes_exactly_its_roles() {
    for listener in LISTENERS {
        for role in roles() {
            let what = format!("{} to {}", role.describe(), listener.describe());
            let accepted = listener.accepts(&role);
            let (said, heard) = exchange(Hello::new(TOKEN, role), listener).await;
            if accepted {
                assert_eq!(said, Ok(Some(NodeId(7))), "{what}");
                assert!(heard.is_ok(), "{what}: {heard:?}");
            } else {
                let reason = heard.expect_err(&what).reason;
                assert!(reason.contains("cannot connect to"), "{what}: {reason}");
                assert_eq!(said, Err(HelloError::Refused(reason)), "{what}");
            }
        }
    }
    assert!(HelloListener::Head.accepts(&worker()));
    assert!(HelloListener::Head.accepts(&HelloRole::Client));
    assert!(HelloListener::ActorEndpoint.accepts(&peer()));
    assert!(!HelloListener::Calls.accepts(&peer()));
    assert!(!HelloListener::GroupLinks.accepts(&HelloRole::Client));
}

#[tokio::test]
async fn a_peer_with_the_right_token_is_refused_by_the_head_for_its_role() {
    let (said, heard) = exchange(Hello::new(TOKEN, peer()), HelloListener::Head).await;
    let reason = heard.expect_err("a peer is no head's client").reason;
    assert_eq!(reason, "a group peer cannot connect to the head");
    assert_eq!(said, Err(HelloError::Refused(reason)));
}

#[tokio::test]
async fn another_version_is_refused_naming_both_whatever_the_role() {
    for role in roles() {
        for listener in LISTENERS {
            let mut hello = Hello::new(TOKEN, role.clone());
            hello.version = PROTOCOL_VERSION + 1;
            let (said, heard) = exchange(hello, listener).await;
            let reason = heard.expect_err("another version").reason;
            let theirs = format!("protocol version {}", PROTOCOL_VERSION + 1);
            let ours = format!("version {PROTOCOL_VERSION}");
            assert!(
                reason.contains(&theirs) && reason.contains(&ours),
                "{reason}"
            );
            match said {
                Err(HelloError::Refused(r)) => assert_eq!(r, reason),
                other => panic!("the sender learns the refusal: {other:?}"),
            }
        }
    }
    // An older sender too, even with a wrong token: the version is checked first.
    let mut hello = Hello::new("not-the-token", HelloRole::Client);
    hello.version = 0;
    let (said, _) = exchange(hello, HelloListener::Head).await;
    let Err(HelloError::Refused(reason)) = said else {
        panic!("an older version is refused: {said:?}");
    };
    assert!(
        reason.starts_with(&format!(
            "protocol version 0 is not this cluster's version {PROTOCOL_VERSION}"
        )),
        "{reason}"
    );
}

#[tokio::test]
async fn a_wrong_token_is_refused_whatever_the_role() {
    for role in roles() {
        let (said, heard) = exchange(Hello::new("not-the-token", role), HelloListener::Head).await;
        assert_eq!(
            heard.expect_err("wrong token").reason,
            "wrong cluster token"
        );
        assert_eq!(said, Err(HelloError::Refused("wrong cluster token".into())));
    }
}

/// Sends `bytes` raw to a listener and returns its refusal, from both sides.
async fn refusal_of(bytes: &[u8]) -> (String, Option<Welcome>) {
    let (a, b) = duplex(1 << 16);
    let (mut a_rd, mut a_wr) = split(a);
    let (mut b_rd, mut b_wr) = split(b);
    a_wr.write_all(bytes).await.unwrap();
    a_wr.shutdown().await.unwrap();
    let heard = accept_hello(&mut b_rd, &mut b_wr, TOKEN, HelloListener::Head).await;
    let welcome = read_frame::<_, Welcome>(&mut a_rd, HELLO_LIMIT)
        .await
        .unwrap();
    (heard.expect_err("refused").reason, welcome)
}

#[tokio::test]
async fn missing_malformed_and_oversized_hellos_are_refused_with_one_limit() {
    let (reason, welcome) = refusal_of(&[]).await;
    assert_eq!(reason, "the connection sent no hello");
    assert!(matches!(welcome, Some(Welcome::Refused { .. })));

    let mut garbage = 12u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    garbage.extend_from_slice(&[0xAB; 8]);
    let (reason, _) = refusal_of(&garbage).await;
    assert!(reason.starts_with("malformed hello"), "{reason}");

    let oversized = ((HELLO_LIMIT + 1) as u32).to_le_bytes();
    let (reason, welcome) = refusal_of(&oversized).await;
    assert!(reason.contains("over the limit"), "{reason}");
    match welcome {
        Some(Welcome::Refused { reason: told }) => assert_eq!(told, reason),
        other => panic!("the sender is told: {other:?}"),
    }
}
