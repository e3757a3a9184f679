//! The one hello exchange, on QUIC streams and Unix sockets alike: [`say_hello`] on the side
//! that connects, [`accept_hello`] on every side that listens (the head, an actor's and a task
//! lease's endpoints, a group's link sockets).

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::ids::NodeId;
use crate::proto::{
    read_frame, read_hello, write_frame, write_hello, FrameError, Hello, HelloRole, Welcome,
    HELLO_LIMIT,
};

use super::token_matches;

/// Why a hello was not welcomed, on the side that said it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The stream failed, or carried something other than a welcome.
    #[error("{0}")]
    Io(String),
    /// The other side refused, with its reason: another protocol version (both named), a
    /// wrong token, a role not accepted there, a malformed hello.
    #[error("refused: {0}")]
    Refused(String),
    /// The stream ended before the welcome.
    #[error("closed before its welcome")]
    Closed,
}

/// Says `hello` on a stream and reads the welcome: the one way every party opens a
/// connection, on QUIC or a Unix socket. Returns the node id the welcome gives (a worker's;
/// `None` for anyone else).
pub async fn say_hello<R, W>(
    hello: &Hello,
    rd: &mut R,
    wr: &mut W,
) -> Result<Option<NodeId>, HelloError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = |e: &dyn std::fmt::Display| HelloError::Io(e.to_string());
    write_hello(wr, hello).await.map_err(|e| io(&e))?;
    wr.flush().await.map_err(|e| io(&e))?;
    match read_frame::<_, Welcome>(rd, HELLO_LIMIT).await {
        Ok(Some(Welcome::Accepted { node })) => Ok(node),
        Ok(Some(Welcome::Refused { reason })) => Err(HelloError::Refused(reason)),
        Ok(None) => Err(HelloError::Closed),
        Err(e) => Err(io(&e)),
    }
}

/// Where a hello arrives, which decides whose hellos are accepted there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloListener {
    /// The head: workers joining, and clients.
    Head,
    /// An actor's QUIC endpoint: its callers, and the members of its groups.
    ActorEndpoint,
    /// A task lease's QUIC endpoint, or an actor's or a task lease's Unix socket: callers.
    Calls,
    /// An actor's Unix socket for the members of its groups on its machine.
    GroupLinks,
}

impl HelloListener {
    /// Whether `role` may connect here.
    pub fn accepts(self, role: &HelloRole) -> bool {
        matches!(
            (self, role),
            (
                HelloListener::Head,
                HelloRole::Worker(_) | HelloRole::Client
            ) | (
                HelloListener::ActorEndpoint,
                HelloRole::Client | HelloRole::Peer(_)
            ) | (HelloListener::Calls, HelloRole::Client)
                | (HelloListener::GroupLinks, HelloRole::Peer(_))
        )
    }

    /// What this is, for refusals: "the head", "an actor's endpoint", ...
    pub fn describe(self) -> &'static str {
        match self {
            HelloListener::Head => "the head",
            HelloListener::ActorEndpoint => "an actor's endpoint",
            HelloListener::Calls => "an actor's or a task lease's endpoint for calls",
            HelloListener::GroupLinks => "a group's link socket",
        }
    }
}

/// A hello refused by [`accept_hello`], which has told the sender why already.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct HelloRefused {
    /// Why, as the sender was told.
    pub reason: String,
}

/// Reads the hello on a stream just accepted by `listener`, with one size limit
/// ([`HELLO_LIMIT`]), and checks, in this order, that it is of this protocol version, that it
/// carries `token` (compared in constant time), and that its role may connect to `listener`.
///
/// A refused hello is answered here with a [`Welcome::Refused`] naming why: another version
/// (both named), a wrong token, a role not accepted here ("a group peer cannot connect to the
/// head"), a malformed, oversized or missing hello. An accepted one returns its role,
/// unanswered: the caller writes the [`Welcome::Accepted`] (a worker's carries its node id,
/// given once the head has recorded it). Ending the stream or the connection after a refusal
/// is the caller's too.
pub async fn accept_hello<R, W>(
    rd: &mut R,
    wr: &mut W,
    token: &str,
    listener: HelloListener,
) -> Result<HelloRole, HelloRefused>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let refused = match read_hello(rd).await {
        Ok(Some(hello)) if !token_matches(token, &hello.token) => "wrong cluster token".into(),
        Ok(Some(hello)) if !listener.accepts(&hello.role) => format!(
            "{} cannot connect to {}",
            hello.role.describe(),
            listener.describe()
        ),
        Ok(Some(hello)) => return Ok(hello.role),
        Ok(None) => "the connection sent no hello".into(),
        Err(e @ FrameError::Version { .. }) => e.to_string(),
        Err(e) => format!("malformed hello: {e}"),
    };
    let welcome = Welcome::Refused {
        reason: refused.clone(),
    };
    if write_frame(wr, &welcome).await.is_ok() {
        let _ = wr.flush().await;
    }
    Err(HelloRefused { reason: refused })
}
