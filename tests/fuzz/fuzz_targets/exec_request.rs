//! `ExecRequest`: what a worker asks of its executor process on their Unix socket, read by
//! the executor (`worker/src/executor/process.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ember_worker::fuzzing::exec_request(data);
});
