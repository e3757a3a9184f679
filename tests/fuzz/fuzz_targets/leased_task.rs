//! `LeasedTask`: a task sent straight to a task lease over QUIC, read by the executor
//! (`worker/src/executor/quic_call.rs`).
#![no_main]

use ember_core::proto::LeasedTask;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    if let Some(value) = round_trip::<LeasedTask>(data) {
        std::hint::black_box(format!("{value:?}"));
    }
});
