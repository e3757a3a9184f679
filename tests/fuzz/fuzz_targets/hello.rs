//! `Hello`: the first frame of every connection, read before any token is checked, by the
//! head (`runtime/head/src/conn.rs`), an actor's or a lease's executor
//! (`worker/src/executor/actor_host.rs`) and a collective group's mesh
//! (`worker/src/collective/mesh.rs`). Each then checks the token it carries.
#![no_main]

use ember_core::proto::Hello;
use ember_core::security::token_matches;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    let Some(hello) = round_trip::<Hello>(data) else {
        return;
    };
    let token = match &hello {
        Hello::Worker(worker) => &worker.token,
        Hello::Client { token } => token,
        Hello::Peer(peer) => &peer.token,
    };
    std::hint::black_box(token_matches("the cluster's token", token));
});
