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
