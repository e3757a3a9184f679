//! `CallReply`: the answer to a call or task over QUIC, read by clients
//! (`client/src/cluster.rs`, `client/src/leases.rs`).
#![no_main]

use ember_core::proto::CallReply;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    if let Some(value) = round_trip::<CallReply>(data) {
        std::hint::black_box(format!("{value:?}"));
    }
});
