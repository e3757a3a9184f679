//! `ClientReply`: the head's answer to a client, read by clients
//! (`client/src/cluster.rs`, `client/src/leases.rs`) and by executors asking the head
//! (`worker/src/executor/head_link.rs`).
#![no_main]

use ember_core::proto::ClientReply;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    if let Some(value) = round_trip::<ClientReply>(data) {
        std::hint::black_box(format!("{value:?}"));
    }
});
