//! A call's arguments made for each attempt's destination. A binding whose arguments can
//! travel two ways (Python's large buffers: named as files in `/dev/shm` for an executor on
//! this machine, or inline for one elsewhere) hands the call a [`CallArgs`], and every
//! attempt asks it for the bytes that suit where that attempt goes: a retry on another
//! machine, or a call to an actor that moved, gets bytes that machine can read.

/// Why a call's arguments could not be made for its destination (a buffer's shared-memory
/// file was gone, or could not be read back). The call fails with it as
/// [`Error::Args`](crate::Error::Args); nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ArgsError {
    message: String,
}

impl ArgsError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        ArgsError {
            message: message.into(),
        }
    }
}

/// A call's arguments, as the executor takes them, made for one attempt.
pub trait CallArgs: Send + Sync + 'static {
    /// The arguments' bytes for a destination on this machine (`same_host`: it shares this
    /// process's host id and same-machine calls are on, see
    /// [`Cluster::set_same_host_calls`](crate::Cluster::set_same_host_calls)) or elsewhere.
    /// Asked again on every attempt of the call.
    fn bytes_for(&self, same_host: bool) -> Result<Vec<u8>, ArgsError>;
}

/// Bytes that read the same everywhere: every attempt sends them as they are.
impl CallArgs for Vec<u8> {
    fn bytes_for(&self, _same_host: bool) -> Result<Vec<u8>, ArgsError> {
        Ok(self.clone())
    }
}
