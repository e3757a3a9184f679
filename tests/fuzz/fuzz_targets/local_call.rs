//! `LocalCall`: a call on an actor's same-machine Unix socket, read by the executor
//! (`worker/src/executor/local_socket.rs`).
#![no_main]

use ember_core::proto::LocalCall;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    if let Some(value) = round_trip::<LocalCall>(data) {
        std::hint::black_box(format!("{value:?}"));
    }
});
