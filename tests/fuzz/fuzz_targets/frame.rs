//! Length-prefixed frames: `ember_core::proto::read_frame`, which every process runs on every
//! stream it reads, over arbitrary bytes arriving in pieces of arbitrary sizes. The first byte
//! picks the size limit (1 MiB as for hellos and welcomes, 64 KiB, or a tiny one); the second
//! seeds the sizes of the pieces. Frames are read until the stream ends or one is refused, as
//! a same-machine socket is served; each is decoded as a `Welcome`, the answer to every
//! hello, and must travel again in a frame of its own.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use ember_core::proto::{
    encode, read_frame, write_frame, FrameError, Welcome, HELLO_LIMIT, MAX_FRAME,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// A stream that hands out its bytes in pieces of 1 to 64 bytes, sizes picked by a seed.
struct Pieces<'a> {
    bytes: &'a [u8],
    seed: u32,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.seed = this
            .seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let piece = 1 + (this.seed >> 26) as usize;
        let n = piece.min(buf.remaining()).min(this.bytes.len());
        let (now, later) = this.bytes.split_at(n);
        buf.put_slice(now);
        this.bytes = later;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    let Some((&[limit, seed], stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = match limit % 3 {
        0 => HELLO_LIMIT,
        1 => 1 << 16,
        _ => usize::from(limit),
    };
    let mut rd = Pieces {
        bytes: stream,
        seed: u32::from(seed),
    };
    futures::executor::block_on(async {
        loop {
            match read_frame::<_, Welcome>(&mut rd, max).await {
                Ok(Some(hello)) => {
                    let mut again = Vec::new();
                    write_frame(&mut again, &hello)
                        .await
                        .expect("a welcome read is one that can be written");
                    let mut back = &again[..];
                    let echoed = read_frame::<_, Welcome>(&mut back, MAX_FRAME)
                        .await
                        .expect("a welcome written reads back")
                        .expect("a welcome written is there");
                    assert_eq!(
                        encode(&echoed).unwrap().as_slice(),
                        encode(&hello).unwrap().as_slice()
                    );
                }
                Ok(None) => {
                    assert!(rd.bytes.is_empty(), "a clean end before the stream's end");
                    break;
                }
                Err(FrameError::TooLarge { len, max: refused }) => {
                    assert!(
                        len > max && refused == max,
                        "refused {len} bytes under {max}"
                    );
                    break;
                }
                Err(_) => break,
            }
        }
    });
});
