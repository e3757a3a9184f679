//! `WorkerCommand`: what the head asks of a worker, read by the worker agent
//! (`worker/src/agent.rs`), which gives an executor the GPUs of the command's allocation.
#![no_main]

use ember_core::proto::WorkerCommand;
use ember_worker::fuzzing::round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    let Some(command) = round_trip::<WorkerCommand>(data) else {
        return;
    };
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
