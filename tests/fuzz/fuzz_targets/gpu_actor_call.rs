//! Calls to the built-in GPU actor (`worker/src/gpu_actor/actor.rs`): each call's arguments
//! decoded as its method's, and run, on an actor on the CPU with a 1 MiB memory share; each
//! answer decoded as the caller decodes it. The input is a sequence of calls: one byte that
//! picks the method, two bytes of length, the archived arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    ember_worker::fuzzing::gpu_actor_calls(data);
});
