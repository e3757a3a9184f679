//! Entry points for the fuzz targets in `tests/fuzz/`; not part of Ember's API.
//!
//! Each function feeds arbitrary bytes to a decoder that a worker or executor process runs on
//! bytes from another process, the very function the process calls, then does what the
//! process does next with a value that decoded, where that is cheap. Decoders that are
//! private to this crate are reached only through here. No input may make any of them
//! panic; the checks they make on decoded values panic, so that the fuzzer reports them.

use ember_core::proto::{decode, encode, ActorEndpoints, LeaseEndpoints, Wire};
use ember_kernels::Device;

use crate::collective::link::{recv_segment, send_segment, Rx, Tag, Tx, HEADER};
use crate::executor::checkpoint::{CheckpointImage, ReplyLog, REPLIES_KEPT};
use crate::executor::protocol::{ExecReply, ExecRequest};
use crate::gpu_actor::actor::GpuActor;
use crate::gpu_actor::methods::{
    Alloc, CompileUser, Free, Get, GpuMethod, Info, Launch, LaunchUser, Put,
};
use crate::gpu_actor::GpuActorError;
use crate::registry::ActorInstance;

/// Decodes `bytes` as a `T` with [`decode`], the decoder of every message, both from aligned
/// memory and from memory one byte off (which `decode` copies first); the two must agree.
/// When the bytes decode, the value is archived again, and that archive must decode and
/// archive to the same bytes: a value a process accepts is one it can pass on. Returns the
/// value, or `None` when the bytes are not a valid archive of `T`.
pub fn round_trip<T: Wire>(bytes: &[u8]) -> Option<T> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let mut shifted = Vec::with_capacity(bytes.len() + 1);
    shifted.push(0u8);
    shifted.extend_from_slice(bytes);
    let value = decode::<T>(&aligned);
    let unaligned = decode::<T>(&shifted[1..]);
    let value = match (value, unaligned) {
        (Ok(value), Ok(other)) => {
            let (a, b) = (archive(&value), archive(&other));
            assert!(
                a == b,
                "aligned and unaligned bytes decoded to different values"
            );
            value
        }
        (Err(_), Err(_)) => return None,
        (a, b) => panic!(
            "aligned and unaligned bytes disagree: {:?} and {:?}",
            a.err(),
            b.err()
        ),
    };
    let first = archive(&value);
    let again = decode::<T>(&first)
        .unwrap_or_else(|e| panic!("a decoded value archived again does not decode: {e}"));
    assert!(
        archive(&again) == first,
        "a decoded value archived twice gives different bytes"
    );
    Some(value)
}

fn archive<T: Wire>(value: &T) -> Vec<u8> {
    encode(value)
        .unwrap_or_else(|e| panic!("a decoded value cannot be archived again: {e}"))
        .to_vec()
}

/// An executor reads a request from its worker (`executor/process.rs`): decodes it as an
/// `ExecRequest` and takes its id. Returns whether the bytes decoded.
pub fn exec_request(bytes: &[u8]) -> bool {
    match round_trip::<ExecRequest>(bytes) {
        Some(request) => {
            std::hint::black_box(request.id());
            true
        }
        None => false,
    }
}

/// A worker reads its executor's reply (`executor/pool.rs`): decodes it as an `ExecReply`,
/// then decodes a successful reply's payload as each of the answers the worker agent reads
/// there (`agent.rs`: a lease's endpoints, an actor's endpoints, a seal's sequence number).
/// Returns whether the reply decoded.
pub fn exec_reply(bytes: &[u8]) -> bool {
    let Some(reply) = round_trip::<ExecReply>(bytes) else {
        return false;
    };
    std::hint::black_box(reply.id);
    if let Ok(payload) = &reply.result {
        round_trip::<LeaseEndpoints>(payload);
        round_trip::<ActorEndpoints>(payload);
        round_trip::<Option<u64>>(payload);
    }
    true
}

/// An actor's process resumes from a checkpoint image the head sent it
/// (`executor/actor_host.rs`): decodes it as a `CheckpointImage` and rebuilds the log of
/// recorded replies from it, which must answer every call it kept and carry them again
/// unchanged in the next checkpoint. Returns whether the image decoded.
pub fn checkpoint_image(bytes: &[u8]) -> bool {
    let Some(image) = round_trip::<CheckpointImage>(bytes) else {
        return false;
    };
    std::hint::black_box((image.seq, image.state.len()));
    let log = ReplyLog::from_image(image.replies);
    let kept = log.to_image();
    assert!(kept.len() <= REPLIES_KEPT, "the reply log kept too many");
    for (caller, seq, reply) in &kept {
        assert_eq!(
            log.get(*caller, *seq),
            Some(reply),
            "a kept reply is not answered"
        );
    }
    assert_eq!(
        ReplyLog::from_image(kept.clone()).to_image(),
        kept,
        "the kept replies change when carried again"
    );
    true
}

/// A rank reads segments from a peer's link (`collective/link.rs`). The first 14 bytes say
/// what this rank expects: the operation (8 bytes), its signature (4) and the segment's
/// length (2, little-endian); the rest is what the peer sent. Segments are read until one
/// is refused or the bytes end; each one received is sent back through a link and must
/// arrive unchanged. Returns how many segments were received.
pub fn link_segments(bytes: &[u8]) -> usize {
    let Some((expect, stream)) = bytes.split_first_chunk::<14>() else {
        return 0;
    };
    let (op, rest) = expect.split_first_chunk::<8>().expect("14 bytes hold 8");
    let (signature, len) = rest.split_first_chunk::<4>().expect("6 bytes hold 4");
    let tag = Tag {
        op: u64::from_le_bytes(*op),
        signature: u32::from_le_bytes(*signature),
    };
    let mut into = vec![0u8; usize::from(u16::from_le_bytes([len[0], len[1]]))];
    let mut rx: Rx = Box::pin(std::io::Cursor::new(stream.to_vec()));
    futures::executor::block_on(async {
        let mut received = 0;
        while recv_segment(&mut rx, tag, &mut into).await.is_ok() {
            received += 1;
            let (a, b) = tokio::io::duplex(HEADER + into.len());
            let (mut tx, mut back): (Tx, Rx) = (Box::pin(a), Box::pin(b));
            send_segment(&mut tx, tag, &into)
                .await
                .expect("a segment fits its link's buffer");
            let mut echoed = vec![0u8; into.len()];
            assert!(
                recv_segment(&mut back, tag, &mut echoed).await.is_ok(),
                "a segment sent back is refused"
            );
            assert_eq!(echoed, into, "a segment sent back changed");
        }
        received
    })
}

/// The most bytes of buffers the GPU actor of [`gpu_actor_calls`] may hold (it runs on the
/// CPU, as on a worker without GPUs, with a `gpu_memory` share of this size).
pub const GPU_ACTOR_MEMORY: u64 = 1 << 20;

/// The method names [`gpu_actor_calls`] picks from: every method, and one that is not.
const GPU_METHODS: [&str; 9] = [
    Put::NAME,
    Alloc::NAME,
    Get::NAME,
    Free::NAME,
    Launch::NAME,
    CompileUser::NAME,
    LaunchUser::NAME,
    Info::NAME,
    "no_such_method",
];

/// The built-in GPU actor takes calls (`gpu_actor/actor.rs`): one actor on a CPU device
/// holding at most [`GPU_ACTOR_MEMORY`] bytes takes a sequence of calls, each one byte that
/// picks the method, two bytes of length (little-endian) and that many bytes of archived
/// arguments. Each answer must decode as its method's result, as the caller decodes it
/// (`client/src/gpu_actor.rs`). Returns how many calls were answered.
pub fn gpu_actor_calls(bytes: &[u8]) -> usize {
    let mut actor = GpuActor::new(Device::cpu().with_memory_limit(GPU_ACTOR_MEMORY));
    let mut rest = bytes;
    let mut answered = 0;
    while let Some((&which, tail)) = rest.split_first() {
        let (len, tail) = match tail.split_first_chunk::<2>() {
            Some((len, tail)) => (usize::from(u16::from_le_bytes(*len)), tail),
            None => (tail.len(), tail),
        };
        let (args, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        let method = GPU_METHODS[usize::from(which) % GPU_METHODS.len()];
        let Ok(reply) = actor.call(method, args) else {
            continue;
        };
        answered += 1;
        match method {
            Put::NAME => answer_decodes::<Put>(&reply),
            Alloc::NAME => answer_decodes::<Alloc>(&reply),
            Get::NAME => answer_decodes::<Get>(&reply),
            Free::NAME => answer_decodes::<Free>(&reply),
            Launch::NAME => answer_decodes::<Launch>(&reply),
            CompileUser::NAME => answer_decodes::<CompileUser>(&reply),
            LaunchUser::NAME => answer_decodes::<LaunchUser>(&reply),
            Info::NAME => answer_decodes::<Info>(&reply),
            other => panic!("the GPU actor answered the unknown method {other:?}"),
        }
    }
    answered
}

fn answer_decodes<M: GpuMethod>(reply: &[u8])
where
    Result<M::Output, GpuActorError>: Wire,
{
    assert!(
        round_trip::<Result<M::Output, GpuActorError>>(reply).is_some(),
        "the GPU actor's answer to {} does not decode as its result",
        M::NAME
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::proto::Hello;

    #[test]
    fn each_entry_point_reads_what_its_process_sends() {
        let hello = Hello::Client { token: "t".into() };
        let bytes = encode(&hello).unwrap();
        assert!(round_trip::<Hello>(&bytes).is_some());
        assert!(round_trip::<Hello>(&[0xff; 9]).is_none());

        let request = ExecRequest::Seal { id: 7 };
        assert!(exec_request(&encode(&request).unwrap()));
        let reply = ExecReply {
            id: 7,
            result: Ok(encode(&Some(3u64)).unwrap().to_vec()),
        };
        assert!(exec_reply(&encode(&reply).unwrap()));

        let image = CheckpointImage {
            seq: 2,
            state: vec![1, 2, 3],
            replies: vec![
                (1, 1, Ok(vec![9])),
                (1, 1, Ok(vec![8])),
                (
                    2,
                    5,
                    Err(ember_core::proto::RemoteError::new(
                        ember_core::proto::ErrorKind::User,
                        "no",
                    )),
                ),
            ],
        };
        assert!(checkpoint_image(&encode(&image).unwrap()));
        assert!(!checkpoint_image(b"not an image"));

        // Expect operation 3, signature 4, 2 bytes; then two such segments and a third
        // of another operation.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        for op in [3u64, 3, 5] {
            bytes.extend_from_slice(&op.to_le_bytes());
            bytes.extend_from_slice(&4u32.to_le_bytes());
            bytes.extend_from_slice(&2u32.to_le_bytes());
            bytes.extend_from_slice(&[0xAA, 0xBB]);
        }
        assert_eq!(bytes.len(), 14 + 3 * (HEADER + 2));
        assert_eq!(link_segments(&bytes), 2);

        let mut calls = Vec::new();
        let alloc = encode(&(
            String::from("x"),
            crate::gpu_actor::BufferElement::F32,
            4u64,
        ))
        .unwrap();
        calls.push(1u8);
        calls.extend_from_slice(&(alloc.len() as u16).to_le_bytes());
        calls.extend_from_slice(&alloc);
        let info = encode(&()).unwrap();
        calls.push(7u8);
        calls.extend_from_slice(&(info.len() as u16).to_le_bytes());
        calls.extend_from_slice(&info);
        calls.push(8u8);
        calls.extend_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            gpu_actor_calls(&calls),
            2,
            "alloc and info answered, the unknown not"
        );
    }
}
