//! `EpochCommand`: what the head asks of a worker, with the head's epoch, read by the worker
//! agent (`worker/src/agent.rs`), which checks the epoch and gives an executor the GPUs of the
//! command's allocation.
#![no_main]

use ember_core::proto::{EpochCommand, WorkerCommand};
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    let Some(EpochCommand { epoch, command }) = round_trip::<EpochCommand>(data) else {
        return;
    };
    std::hint::black_box(epoch);
    match &command {
        WorkerCommand::OpenLease { allocation, .. }
        | WorkerCommand::CreateActor { allocation, .. }
        | WorkerCommand::RunJob { allocation, .. } => {
            std::hint::black_box(allocation.cuda_visible_devices());
        }
        _ => {}
    }
    std::hint::black_box(format!("{command:?}"));
});
