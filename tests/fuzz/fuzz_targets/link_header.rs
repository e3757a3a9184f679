//! The segment headers of a collective link (operation, signature, length), read by each
//! rank from its peers (`worker/src/collective/link.rs`, `recv_segment`). The first 14
//! bytes are what this rank expects; the rest is what the peer sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    ember_worker::fuzzing::link_segments(data);
});
