//! A link between two members of a group: a byte stream each way (a Unix socket on one
//! machine, a QUIC stream between machines) carrying segments in the order the plans send
//! them, each behind a header that says which operation it belongs to and how long it is, so
//! ranks that disagree are caught, not mixed up.

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of a segment header: the operation (8), its signature (4), the length (4).
pub(crate) const HEADER: usize = 16;

/// The pieces a transfer is cut into, so that receiving, combining and sending overlap.
pub(crate) const SEGMENT_BYTES: usize = 512 << 10;

/// The writing half of a link.
pub(crate) type Tx = Pin<Box<dyn AsyncWrite + Send>>;
/// The reading half of a link.
pub(crate) type Rx = Pin<Box<dyn AsyncRead + Send>>;

/// One link to one peer rank.
pub(crate) struct Link {
    /// The peer's rank.
    pub(crate) peer: u32,
    pub(crate) tx: Tx,
    pub(crate) rx: Rx,
    pub(crate) via: Via,
}

/// What a link runs over.
pub(crate) enum Via {
    /// A Unix socket on this machine; its descriptor (open as long as the link's `rx`), to
    /// look at without reading.
    Unix(RawFd),
    /// A QUIC connection, closed when the link is dropped so that the peer's reads fail at
    /// once.
    Quic(quinn::Connection),
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Via::Quic(conn) = &self.via {
            conn.close(0u32.into(), b"collective link closed");
        }
    }
}

/// What a segment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// The operation's number within its group generation.
    pub(crate) op: u64,
    /// A digest of the operation's kind, element type and length: ranks that call different
    /// operations disagree here.
    pub(crate) signature: u32,
}

/// Why a segment could not be received.
#[derive(Debug)]
pub(crate) enum RecvError {
    /// The link broke or closed.
    Io(io::Error),
    /// The peer sent something other than what this rank expected.
    Mismatch(String),
}

impl From<io::Error> for RecvError {
    fn from(e: io::Error) -> Self {
        RecvError::Io(e)
    }
}

impl Link {
    /// Why this link is closed, if it is, without reading from it or waiting: for an
    /// operation that does not use its links (the shared-memory allreduce), so that a peer's
    /// death shows at once. Only Unix links are looked at (shared memory is used only
    /// between ranks on one machine); data waiting to be read means the link is open.
    pub(crate) fn closed(&self) -> Option<String> {
        let Via::Unix(fd) = self.via else {
            return None;
        };
        let mut byte = 0u8;
        // SAFETY: `fd` is open while `rx` lives (it is its socket); MSG_PEEK leaves the byte
        // in the socket and MSG_DONTWAIT never blocks.
        let got = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match got {
            0 => Some("the peer closed it".into()),
            n if n > 0 => None,
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                    _ => Some(e.to_string()),
                }
            }
        }
    }
}

/// Writes one segment.
pub(crate) async fn send_segment(tx: &mut Tx, tag: Tag, bytes: &[u8]) -> io::Result<()> {
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(&tag.op.to_le_bytes());
    header[8..12].copy_from_slice(&tag.signature.to_le_bytes());
    header[12..].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    tx.write_all(&header).await?;
    tx.write_all(bytes).await
}

/// Reads one segment's header, checks it against what this rank expects, then reads its
/// payload into `into`.
pub(crate) async fn recv_segment(rx: &mut Rx, tag: Tag, into: &mut [u8]) -> Result<(), RecvError> {
    let mut header = [0u8; HEADER];
    rx.read_exact(&mut header).await?;
    let field = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&header[r]);
        u64::from_le_bytes(b)
    };
    let (op, signature, len) = (field(0..8), field(8..12), field(12..16));
    if signature != u64::from(tag.signature) || op != tag.op {
        return Err(RecvError::Mismatch(format!(
            "it runs operation {op} (signature {signature:08x}) while this rank runs operation {} \
             (signature {:08x}): ranks must call the same operations, in the same order, on \
             buffers of the same type and length",
            tag.op, tag.signature
        )));
    }
    if len != into.len() as u64 {
        return Err(RecvError::Mismatch(format!(
            "it sent a segment of {len} bytes where this rank expected {}: ranks must pass \
             buffers of the same length",
            into.len()
        )));
    }
    rx.read_exact(into).await?;
    Ok(())
}
