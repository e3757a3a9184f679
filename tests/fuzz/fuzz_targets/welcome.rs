//! `Welcome`: the answer to a hello, read by every party that connects
//! (`runtime/core/src/security/connect.rs`, `worker/src/agent.rs`).
#![no_main]

use ember_core::proto::Welcome;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    if let Some(value) = round_trip::<Welcome>(data) {
        std::hint::black_box(format!("{value:?}"));
    }
});
