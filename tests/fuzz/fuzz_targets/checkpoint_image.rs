//! `CheckpointImage`: the checkpoint an actor's process resumes from, sent by the head, read
//! by the executor (`worker/src/executor/actor_host.rs`), and the log of recorded replies it
//! rebuilds from it (`worker/src/executor/checkpoint.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    ember_worker::fuzzing::checkpoint_image(data);
});
