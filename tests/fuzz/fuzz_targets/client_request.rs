//! `ClientRequest`: what a client (or an actor's process) asks of the head, read by the head
//! (`runtime/head/src/conn.rs`). The head words the needs of a request it cannot place.
#![no_main]

use ember_core::proto::ClientRequest;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    let Some(request) = round_trip::<ClientRequest>(data) else {
        return;
    };
    let placement = match &request {
        ClientRequest::LeaseTask(spec) => Some(&spec.placement),
        ClientRequest::CreateActor(spec) => Some(&spec.placement),
        ClientRequest::SubmitJob(spec) => Some(&spec.placement),
        _ => None,
    };
    if let Some(placement) = placement {
        std::hint::black_box(placement.demand.to_string());
    }
    std::hint::black_box(format!("{request:?}"));
});
