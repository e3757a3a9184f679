//! `ExecRequest`: what a worker asks of its executor process on their Unix socket, read by
//! the executor (`worker/src/executor/process.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    ember_worker::fuzzing::exec_request(data);
});
