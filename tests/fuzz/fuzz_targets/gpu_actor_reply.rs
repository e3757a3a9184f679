//! The GPU actor's answers, as its callers read them (`client/src/gpu_actor.rs`): the first
//! byte picks the method, the rest is the answer, `Result<Output, GpuActorError>`. Callers
//! then word an error, convert downloaded data to elements, and tell the backend.
#![no_main]

use ember_worker::fuzzing::round_trip;
use ember_worker::gpu_actor::methods::{
    Alloc, CompileUser, Free, Get, Info, Launch, LaunchUser, Put,
};
use ember_worker::gpu_actor::{GpuActorError, GpuMethod};
use libfuzzer_sys::fuzz_target;

/// The answer's output, when it decodes and is not an error.
fn answer<M: GpuMethod>(bytes: &[u8]) -> Option<M::Output>
where
    M::Output: std::fmt::Debug,
    Result<M::Output, GpuActorError>: ember_core::proto::Wire,
{
    match round_trip::<Result<M::Output, GpuActorError>>(bytes)? {
        Ok(output) => {
            std::hint::black_box(format!("{output:?}"));
            Some(output)
        }
        Err(error) => {
            std::hint::black_box(error.to_string());
            None
        }
    }
}

fuzz_target!(init: ember_fuzz::write_seeds(env!("CARGO_BIN_NAME")), |data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => drop(answer::<Put>(bytes)),
        1 => drop(answer::<Alloc>(bytes)),
        2 => {
            if let Some(data) = answer::<Get>(bytes) {
                let (len, element) = (data.len(), data.element());
                let f32s = data.clone().into_vec::<f32>();
                let f16s = data.clone().into_vec::<half::f16>();
                let bf16s = data.into_vec::<half::bf16>();
                let got = [f32s.is_ok(), f16s.is_ok(), bf16s.is_ok()];
                assert_eq!(got.iter().filter(|ok| **ok).count(), 1, "{element:?}");
                let converted = [
                    f32s.map_or(0, |v| v.len()),
                    f16s.map_or(0, |v| v.len()),
                    bf16s.map_or(0, |v| v.len()),
                ];
                assert_eq!(converted.iter().sum::<usize>(), len);
            }
        }
        3 => drop(answer::<Free>(bytes)),
        4 => drop(answer::<Launch>(bytes)),
        5 => drop(answer::<CompileUser>(bytes)),
        6 => drop(answer::<LaunchUser>(bytes)),
        _ => {
            if let Some(info) = answer::<Info>(bytes) {
                std::hint::black_box(info.backend());
            }
        }
    }
});
