//! `WorkerEvent`: what a worker tells the head unasked (heartbeats, exits, leaving), read
//! by the head (`runtime/head/src/conn.rs`).
#![no_main]

use ember_core::proto::WorkerEvent;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    if let Some(value) = round_trip::<WorkerEvent>(data) {
        std::hint::black_box(format!("{value:?}"));
    }
});
