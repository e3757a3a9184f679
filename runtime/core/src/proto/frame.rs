//! Length-prefixed frames on any byte stream (QUIC streams, Unix sockets).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{decode, encode, Wire};

/// The largest frame accepted unless a caller asks for another limit: 256 MiB.
pub const MAX_FRAME: usize = 256 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than the limit; the stream should be dropped.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The bytes were not a valid message; the peer sent garbage or speaks another version.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A hello of another protocol version: its sender runs another Ember release.
    #[error(
        "protocol version {theirs} is not this cluster's version {ours}: run one Ember \
         release on the head, the workers and the clients"
    )]
    Version {
        /// The version the sender speaks.
        theirs: u32,
        /// This process's version ([`super::PROTOCOL_VERSION`]).
        ours: u32,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The stream failed underneath (connection lost, reset by the peer).
    #[error("stream failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one message as a frame, in a single write.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Wire,
{
    write_frame_bytes(w, &encode(msg)?).await
}

/// Writes `body` as one frame, in a single write.
pub(crate) async fn write_frame_bytes<W>(w: &mut W, body: &[u8]) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
{
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_FRAME,
        });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` is a clean end of stream before any byte of a frame.
pub async fn read_frame<R, T>(r: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: Wire,
{
    match read_frame_bytes(r, max).await? {
        Some(body) => decode(&body).map(Some),
        None => Ok(None),
    }
}

/// The first part of a frame's body read before the rest is given room.
const FIRST_CHUNK: usize = 64 << 10;

/// Reads one frame's body, of at most `max` bytes. `Ok(None)` is a clean end of stream before
/// any byte of a frame.
pub(crate) async fn read_frame_bytes<R>(
    r: &mut R,
    max: usize,
) -> Result<Option<rkyv::util::AlignedVec<16>>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // Memory follows the bytes that arrive, not the length announced: the body grows as it
    // is read, doubling from 64 KiB, so a peer announcing a large frame and sending little
    // holds little.
    let mut body = rkyv::util::AlignedVec::<16>::with_capacity(len.min(FIRST_CHUNK));
    while body.len() < len {
        let start = body.len();
        let end = len.min((2 * start).max(FIRST_CHUNK));
        body.resize(end, 0);
        r.read_exact(&mut body[start..end]).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                FrameError::Truncated
            } else {
                FrameError::Io(e)
            }
        })?;
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_larger_than_its_first_chunk_arrives_whole() {
        let big: Vec<u8> = (0..(5 * FIRST_CHUNK + 17)).map(|i| i as u8).collect();
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move { write_frame(&mut a, &big).await.map(|()| big) });
        let got: Option<Vec<u8>> = read_frame(&mut b, MAX_FRAME).await.unwrap();
        assert_eq!(got, Some(writer.await.unwrap().unwrap()));
    }

    #[tokio::test]
    async fn a_frame_cut_short_after_its_first_chunk_is_truncated() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let announced = (3 * FIRST_CHUNK) as u32;
        tokio::spawn(async move {
            a.write_all(&announced.to_le_bytes()).await.unwrap();
            a.write_all(&vec![0u8; FIRST_CHUNK + 5]).await.unwrap();
        });
        let got = read_frame::<_, Vec<u8>>(&mut b, MAX_FRAME).await;
        assert!(matches!(got, Err(FrameError::Truncated)), "{got:?}");
    }

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &String::from("ping")).await.unwrap();
        let got: Option<String> = read_frame(&mut b, MAX_FRAME).await.unwrap();
        assert_eq!(got.as_deref(), Some("ping"));

        // An oversized announcement is refused before any allocation of that size.
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let err = read_frame::<_, String>(&mut b, 1024).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");

        // Garbage of the right length is a decoding error, not a crash.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&8u32.to_le_bytes()).await.unwrap();
        a.write_all(&[0xAB; 8]).await.unwrap();
        let err = read_frame::<_, String>(&mut b, 1024).await.unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");

        // A stream cut inside a frame is reported as such.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&100u32.to_le_bytes()).await.unwrap();
        a.write_all(&[1; 10]).await.unwrap();
        drop(a);
        let err = read_frame::<_, String>(&mut b, 1024).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");
    }
}
