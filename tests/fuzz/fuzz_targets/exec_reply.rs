//! `ExecReply`: an executor's answer to its worker, read by the worker
//! (`worker/src/executor/pool.rs`), and its payload as the worker agent reads it
//! (`worker/src/agent.rs`: a lease's endpoints, an actor's endpoints, a seal's sequence).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    ember_worker::fuzzing::exec_reply(data);
});
