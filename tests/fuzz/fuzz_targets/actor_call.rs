//! `ActorCall`: a call sent straight to an actor's process over QUIC, read by the
//! executor (`worker/src/executor/quic_call.rs`).
#![no_main]

use ember_core::proto::ActorCall;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    if let Some(value) = round_trip::<ActorCall>(data) {
        std::hint::black_box(format!("{value:?}"));
    }
});
