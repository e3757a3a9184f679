//! The hello: the first frame on every connection, saying who connects (a worker, a client, a
//! member of a collective group), with the cluster's token and the protocol version the
//! sender speaks; and its answer, the [`Welcome`].
//!
//! A hello frame's body is the sender's protocol version, a little-endian `u32`, followed by
//! the archive of the rest. The version comes first, outside the archive, so that a receiver
//! of any version can read it, and refuse a sender of another version naming both versions,
//! whatever layout the rest has in the sender's version. For the same reason the [`Welcome`]
//! keeps its layout in every version: a refused sender can always read why.
//!
//! Senders write hellos with [`write_hello`] (through `security::say_hello`); receivers read
//! them with [`read_hello`] (through `security::accept_hello`). A `Hello` is not a [`Wire`]
//! type, so it cannot be sent as a plain frame without its version by mistake.
//!
//! [`Wire`]: super::Wire

use rkyv::{Archive, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ids::{ActorId, LeaseId, NodeId};
use crate::resources::{Allocation, NodeResources};

use super::frame::{read_frame_bytes, write_frame_bytes};
use super::{decode, encode, FrameError, PeerHello};

/// The version of Ember's wire protocol, carried by every hello. A head, worker, executor or
/// client of another version is refused at its hello, with both versions named.
///
/// Bump it whenever a message any two processes exchange changes its layout or its meaning:
/// a field or variant added, removed, reordered or retyped in any type of [`super`] (hellos,
/// requests, replies, commands, events, calls, leases, group messages), a changed frame
/// limit or framing, or an exchange that now expects another answer. Two processes of one
/// version must understand every frame the other sends; nothing else is checked.
pub const PROTOCOL_VERSION: u32 = 6;

/// The largest hello accepted, and the largest welcome: a worker's hello, with its resources
/// and the names of all its task and actor types, fits easily.
pub const HELLO_LIMIT: usize = 1 << 20;

/// The first message on a connection, on its first stream: the protocol version the sender
/// speaks, the cluster's token, and who is connecting. Answered with a [`Welcome`].
#[derive(Clone)]
pub struct Hello {
    /// The sender's protocol version: [`PROTOCOL_VERSION`] when built with [`Hello::new`].
    pub version: u32,
    /// The cluster's join token.
    pub token: String,
    /// Who is connecting.
    pub role: HelloRole,
}

impl Hello {
    /// A hello of this protocol version, with the cluster's `token`, as `role`.
    pub fn new(token: impl Into<String>, role: HelloRole) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            token: token.into(),
            role,
        }
    }

    /// A client's hello of this protocol version, with the cluster's `token`.
    pub fn client(token: impl Into<String>) -> Hello {
        Hello::new(token, HelloRole::Client)
    }
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token: hellos end up in logs.
        f.debug_struct("Hello")
            .field("version", &self.version)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Who says a [`Hello`].
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub enum HelloRole {
    /// A worker joining the cluster.
    Worker(Box<WorkerHello>),
    /// A client (the command line, a program, an executor) of the head, or a caller of an
    /// actor or a task lease.
    Client,
    /// A member of a collective group opening a link to another member.
    Peer(PeerHello),
}

impl HelloRole {
    /// Who this is, for refusals: "a worker", "a client", "a group peer".
    pub fn describe(&self) -> &'static str {
        match self {
            HelloRole::Worker(_) => "a worker",
            HelloRole::Client => "a client",
            HelloRole::Peer(_) => "a group peer",
        }
    }
}

/// What a worker tells the head about itself when it joins.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct WorkerHello {
    /// A name for humans (host name and process id by default).
    pub name: String,
    /// Everything the worker offers.
    pub resources: NodeResources,
    /// Task functions this worker's executable can run, by registered name.
    pub task_types: Vec<String>,
    /// Actor types this worker's executable can host, by registered name.
    pub actor_types: Vec<String>,
    /// The worker's own address, for humans and logs.
    pub address: String,
    /// Set when the worker lost the head and joins again as the node it was, with what it
    /// still runs; `None` for a worker joining as a new node.
    pub rejoin: Option<Rejoin>,
    /// Set when the autoscaler launched this worker: the launch it answers and its node type.
    pub launch: Option<LaunchTicket>,
}

/// Which autoscaler launch a worker answers.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct LaunchTicket {
    /// The launch's number, as the head asked for it.
    pub launch: u64,
    /// The node type launched.
    pub node_type: String,
}

/// What a worker that lost the head says when it joins again as the same node: which node it
/// was, under which head life it last joined, and what it still runs.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub struct Rejoin {
    /// The node it was.
    pub node: NodeId,
    /// The head life ([`WorkerTerms::epoch`]) it last joined under.
    pub epoch: u64,
    /// The actors it still hosts, one live incarnation each.
    pub actors: Vec<RunningActor>,
    /// The task leases it still holds open.
    pub leases: Vec<RunningLease>,
}

/// A task lease a re-joining worker still holds open.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RunningLease {
    /// The lease.
    pub lease: LeaseId,
    /// What it holds on this worker, as the head granted it.
    pub allocation: Allocation,
}

/// An actor incarnation a re-joining worker still hosts.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RunningActor {
    /// The actor.
    pub actor: ActorId,
    /// Its incarnation running here.
    pub incarnation: u32,
    /// What it holds on this worker, as the head granted it.
    pub allocation: Allocation,
    /// Where it takes calls.
    pub endpoints: super::ActorEndpoints,
    /// It was sealed for a move (its final checkpoint taken; it answers `Moved`): it is never
    /// adopted, only stopped.
    pub sealed: bool,
}

/// What the head tells an accepted worker right after the [`Welcome`], on the same stream:
/// the head life it joined. The worker refuses commands of an older life from then on, and a
/// head of an older life than one it already joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WorkerTerms {
    /// The head's life number (its epoch), one more at every head start.
    pub epoch: u64,
}

/// The answer to a [`Hello`]. Its layout is the same in every protocol version.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub enum Welcome {
    /// Accepted; a worker learns its node id.
    Accepted {
        /// The id given to a joining worker; `None` for anyone else.
        node: Option<NodeId>,
    },
    /// Refused, with the reason (another protocol version, a wrong token, a role not accepted
    /// there, a malformed hello).
    Refused {
        /// Why, for the log of the party refused.
        reason: String,
    },
}

/// What follows the version in a hello frame.
#[derive(Archive, Serialize, Deserialize)]
struct HelloBody {
    token: String,
    role: HelloRole,
}

/// A hello's frame body: its version, then the archive of the rest.
pub fn encode_hello(hello: &Hello) -> Result<Vec<u8>, FrameError> {
    let body = encode(&HelloBody {
        token: hello.token.clone(),
        role: hello.role.clone(),
    })?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&hello.version.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads a hello's frame body. A sender of another protocol version is
/// [`FrameError::Version`], found before anything else of the frame is read; bytes that are
/// not a hello are [`FrameError::Malformed`].
pub fn decode_hello(bytes: &[u8]) -> Result<Hello, FrameError> {
    let Some((version, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(FrameError::Malformed(format!(
            "a hello of {} bytes has no protocol version",
            bytes.len()
        )));
    };
    let version = u32::from_le_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version {
            theirs: version,
            ours: PROTOCOL_VERSION,
        });
    }
    let HelloBody { token, role } = decode(rest)?;
    Ok(Hello {
        version,
        token,
        role,
    })
}

/// Writes `hello` as one frame, with its version first.
pub async fn write_hello<W: AsyncWrite + Unpin>(
    w: &mut W,
    hello: &Hello,
) -> Result<(), FrameError> {
    write_frame_bytes(w, &encode_hello(hello)?).await
}

/// Reads one hello frame of at most [`HELLO_LIMIT`] bytes. `Ok(None)` is a stream that ended
/// before any byte of it; a sender of another protocol version is [`FrameError::Version`].
pub async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Hello>, FrameError> {
    match read_frame_bytes(r, HELLO_LIMIT).await? {
        Some(bytes) => decode_hello(&bytes).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerHello {
        PeerHello {
            group: "g".into(),
            generation: 3,
            from: 1,
            to: 0,
        }
    }

    #[test]
    fn hellos_round_trip_with_their_version_first() {
        let hello = Hello::new("tok", HelloRole::Peer(peer()));
        let bytes = encode_hello(&hello).unwrap();
        assert_eq!(bytes[..4], PROTOCOL_VERSION.to_le_bytes());
        let back = decode_hello(&bytes).unwrap();
        assert_eq!(
            (back.version, back.token.as_str()),
            (PROTOCOL_VERSION, "tok")
        );
        assert!(matches!(back.role, HelloRole::Peer(p) if p == peer()));
    }

    #[test]
    fn another_version_is_named_before_the_rest_is_read() {
        for role in [HelloRole::Client, HelloRole::Peer(peer())] {
            let mut hello = Hello::new("tok", role);
            hello.version = PROTOCOL_VERSION + 1;
            let mut bytes = encode_hello(&hello).unwrap();
            // Whatever follows the version in another version, it is not read.
            bytes.truncate(4);
            bytes.extend_from_slice(&[0xAB; 9]);
            match decode_hello(&bytes) {
                Err(FrameError::Version { theirs, ours }) => {
                    assert_eq!((theirs, ours), (PROTOCOL_VERSION + 1, PROTOCOL_VERSION));
                }
                other => panic!("expected a version error, got {other:?}"),
            }
        }
        assert!(matches!(
            decode_hello(&[1, 0]),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn the_token_stays_out_of_debug_output() {
        let shown = format!("{:?}", Hello::client("secret-token"));
        assert!(!shown.contains("secret-token"), "{shown}");
        assert!(shown.contains("Client"), "{shown}");
    }
}
