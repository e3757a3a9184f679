//! `WorkerTerms`: the head life a worker joined, read by the worker agent
//! (`worker/src/agent.rs`) right after the head's welcome.
#![no_main]

use ember_core::proto::WorkerTerms;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    if let Some(terms) = round_trip::<WorkerTerms>(data) {
        std::hint::black_box(terms.epoch);
    }
});
