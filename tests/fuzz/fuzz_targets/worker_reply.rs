//! `WorkerReply`: a worker's answer to a command, read by the head
//! (`runtime/head/src/work.rs`).
#![no_main]

use ember_core::proto::WorkerReply;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    if let Some(value) = round_trip::<WorkerReply>(data) {
        std::hint::black_box(format!("{value:?}"));
    }
});
