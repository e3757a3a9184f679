//! `LocalReply`: the answer to a call or task on a same-machine Unix socket, read by
//! clients (`client/src/unix_caller.rs`).
#![no_main]

use ember_core::proto::LocalReply;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    if let Some(value) = round_trip::<LocalReply>(data) {
        std::hint::black_box(format!("{value:?}"));
    }
});
