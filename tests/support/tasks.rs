//! The tasks and actors the integration tests run. This module is linked into both the
//! `ember-testbed` worker executable and the tests, so the registered names match.

use std::time::Duration;

/// Where a task or actor ran: node id, GPU indices, GPU shares (in units) and
/// `CUDA_VISIBLE_DEVICES`.
pub type Placed = (String, Vec<u32>, String);

/// This process's Ember context, as a [`Placed`].
pub fn here() -> Placed {
    let ctx = ember::context().expect("runs inside Ember");
    (
        ctx.node.to_string(),
        ctx.gpu_indices(),
        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default(),
    )
}

/// A quarter of a GPU.
#[ember::task(gpus = 0.25)]
pub fn quarter_gpu() -> Placed {
    here()
}

/// One whole GPU.
#[ember::task(gpus = 1)]
pub fn whole_gpu() -> Placed {
    here()
}

/// One L4 GPU.
#[ember::task(gpus = 1, accelerator = "L4")]
pub fn needs_l4() -> Placed {
    here()
}

/// Half a GPU with 60 GiB of its memory.
#[ember::task(gpus = 0.5, gpu_memory = "60GiB")]
pub fn big_memory() -> Placed {
    here()
}

/// No GPU at all.
#[ember::task]
pub fn cpu_only() -> Placed {
    here()
}

/// Holds two GPUs for `ms` milliseconds.
#[ember::task(gpus = 2)]
pub fn sleep_ms(ms: u64) -> Placed {
    std::thread::sleep(Duration::from_millis(ms));
    here()
}

/// Fails with a user error.
#[ember::task]
pub fn fails() -> Result<String, String> {
    Err("the task failed on purpose".to_string())
}

/// Panics.
#[ember::task]
pub fn panics() -> String {
    panic!("the task panicked on purpose")
}

/// A counter holding a share of a GPU.
pub struct Counter {
    count: u64,
}

#[ember::actor(gpus = 0.5)]
impl Counter {
    /// A counter starting at `start`.
    pub fn new(start: u64) -> Self {
        Counter { count: start }
    }

    /// Adds `n` and returns the new count.
    pub fn add(&mut self, n: u64) -> u64 {
        self.count += n;
        self.count
    }

    /// Where this actor runs.
    pub fn placed(&self) -> Placed {
        here()
    }

    /// The process id of the executor hosting this actor.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Sleeps `ms` milliseconds, then adds `n`: a call long enough to be interrupted.
    pub fn slow_add(&mut self, ms: u64, n: u64) -> u64 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        self.add(n)
    }
}

/// Keeps the registrations of this module in any executable that calls it.
pub fn link() {
    std::hint::black_box((
        quarter_gpu::remote as fn() -> ember::TaskCall<Placed>,
        whole_gpu::remote as fn() -> ember::TaskCall<Placed>,
        needs_l4::remote as fn() -> ember::TaskCall<Placed>,
        big_memory::remote as fn() -> ember::TaskCall<Placed>,
        cpu_only::remote as fn() -> ember::TaskCall<Placed>,
        sleep_ms::remote as fn(u64) -> ember::TaskCall<Placed>,
        fails::remote as fn() -> ember::TaskCall<String>,
        panics::remote as fn() -> ember::TaskCall<String>,
        Counter::remote as fn(u64) -> ember::ActorSpawn<CounterHandle>,
    ));
}
