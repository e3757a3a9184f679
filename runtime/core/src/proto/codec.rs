//! Encoding values as checked `rkyv` archives.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::de::Pool;
use rkyv::rancor::{self, Strategy};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use super::FrameError;

/// A type that travels on the wire: archived by `rkyv`, validated with `bytecheck` on arrival.
///
/// Implemented for every type that meets `rkyv`'s bounds; nothing to implement by hand.
pub trait Wire:
    Archive<
        Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
                      + Deserialize<Self, Strategy<Pool, rancor::Error>>,
    > + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
    + Sized
{
}

impl<T> Wire for T where
    T: Archive<
            Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
                          + Deserialize<T, Strategy<Pool, rancor::Error>>,
        > + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

/// Archives a value.
pub fn encode<T: Wire>(value: &T) -> Result<AlignedVec, FrameError> {
    rkyv::to_bytes::<rancor::Error>(value).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Checks and reads an archive. Bytes that are not a valid archive of `T` are an error, never
/// undefined behaviour; unaligned input is copied once into aligned memory.
pub fn decode<T: Wire>(bytes: &[u8]) -> Result<T, FrameError> {
    let result = if (bytes.as_ptr() as usize) % 16 == 0 {
        rkyv::from_bytes::<T, rancor::Error>(bytes)
    } else {
        let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<T, rancor::Error>(&aligned)
    };
    result.map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_is_an_error() {
        let v = (7u32, String::from("hello"), vec![1u8, 2, 3]);
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u32, String, Vec<u8>)>(&bytes).unwrap(), v);
        // Shifted by one byte: still decodes (copied into alignment).
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(decode::<(u32, String, Vec<u8>)>(&shifted[1..]).unwrap(), v);
        assert!(decode::<(u32, String, Vec<u8>)>(&[0xff; 7]).is_err());
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use crate::proto::{
        decode_hello, encode_hello, ActorCall, ClientRequest, Hello, WorkerCommand, WorkerEvent,
        WorkerReply,
    };
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes arrive, decoding any message either succeeds or is an error: never a
        /// panic, never undefined behaviour.
        #[test]
        fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_hello(&bytes);
            let _ = decode::<ClientRequest>(&bytes);
            let _ = decode::<WorkerCommand>(&bytes);
            let _ = decode::<WorkerReply>(&bytes);
            let _ = decode::<WorkerEvent>(&bytes);
            let _ = decode::<ActorCall>(&bytes);
        }

        /// A valid message with bytes flipped is rejected or read, never a panic.
        #[test]
        fn corrupted_messages_never_panic(flip in 0usize..4096, bit in 0u8..8) {
            let msg = ClientRequest::Status;
            let mut bytes = encode(&msg).unwrap().to_vec();
            let hello = Hello::client("t".repeat(40));
            bytes.extend_from_slice(&encode_hello(&hello).unwrap());
            let i = flip % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = decode::<ClientRequest>(&bytes);
            let _ = decode_hello(&bytes);
            // A hello of this version with a bit flipped after its version.
            let mut hello = encode_hello(&hello).unwrap();
            let j = 4 + flip % (hello.len() - 4);
            hello[j] ^= 1 << bit;
            let _ = decode_hello(&hello);
        }
    }
}
