//! `Hello`: the first frame of every connection, read before anything else by every listener
//! through `ember_core::security::accept_hello` (the head, an actor's and a task lease's
//! endpoints, a group's link sockets), which checks its version, its token and its role and
//! tells a refused sender why.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    ember_worker::fuzzing::hello(data);
});
