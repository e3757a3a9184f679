//! The one error type of the client API.

use ember_core::proto::{ErrorKind, FrameError, RemoteError};
use ember_core::resources::ResourceError;
use ember_core::security::SecurityError;
use ember_worker::gpu_actor::GpuActorError;

/// Why a call, a spawn or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster said no: the request was infeasible, unknown, failed in user code, or its
    /// worker died. [`Error::kind`] says which.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The cluster could not be reached, or refused this client (wrong token or certificate).
    #[error("cannot connect to the cluster at {addr}: {reason}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The connection broke during a request.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The head could not be reached for the whole time this client waits for it
    /// ([`ConnectOptions`](crate::ConnectOptions)).
    #[error("the head at {addr} has been unreachable since {}", crate::head_link::since_text(*since, std::time::SystemTime::now()))]
    HeadUnreachable {
        /// The head's address.
        addr: String,
        /// Since when (wall-clock time): when the connection was lost, or when this client
        /// began trying to connect.
        since: std::time::SystemTime,
    },
    /// The head went away after a request that must not run twice was sent (creating an
    /// actor, a job, a kill, a drain, ...): it may or may not have been carried out.
    #[error(
        "the head at {addr} went away during the request ({request}); it may or may not have \
         been carried out"
    )]
    HeadLost {
        /// The head's address.
        addr: String,
        /// What was asked.
        request: String,
    },
    /// A message could not be read or written.
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    /// A gang's bundles were given something other than resources.
    #[error("invalid gang: {0}")]
    Gang(String),
    /// A declared resource was invalid (e.g. `gpus = 1.5`).
    #[error("invalid options: {0}")]
    Options(#[from] ResourceError),
    /// The cluster file or TLS set-up failed.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The local cluster could not start.
    #[error("cannot start the local cluster: {0}")]
    Local(String),
    /// A GPU actor refused the call (its memory share is full, a kernel's arguments do not
    /// fit, a user kernel does not compile, ...); the actor goes on serving.
    #[error(transparent)]
    Gpu(#[from] GpuActorError),
    /// The call's arguments could not be made for its destination
    /// ([`CallArgs::bytes_for`](crate::CallArgs::bytes_for) failed); nothing was sent.
    #[error("cannot make the call's arguments: {0}")]
    Args(#[from] crate::ArgsError),
}

impl Error {
    /// The kind of a failure reported by the cluster, if it was one.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Remote(e) => Some(e.kind),
            _ => None,
        }
    }
}
