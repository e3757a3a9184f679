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

/// Sleeps `ms` milliseconds on one CPU and says which node ran it: a task long enough to lose
/// its worker.
#[ember::task(cpus = 1)]
pub fn nap(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    ember::context()
        .expect("runs inside Ember")
        .node
        .to_string()
}

/// Fails the first time it runs with `marker` (a file it creates), succeeds after.
#[ember::task]
pub fn fails_once(marker: String) -> Result<String, String> {
    if std::fs::metadata(&marker).is_ok() {
        Ok("succeeded on a retry".to_string())
    } else {
        std::fs::write(&marker, b"ran").map_err(|e| e.to_string())?;
        Err("the first run fails on purpose".to_string())
    }
}

/// Keeps one CPU busy for `ms` milliseconds; returns the payload's length (bulk data on the
/// way in).
#[ember::task(cpus = 1)]
pub fn spin(ms: u64, payload: Vec<u8>) -> u64 {
    let until = std::time::Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while std::time::Instant::now() < until {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    payload.len() as u64
}

/// Squares `n` on one CPU after `ms` milliseconds: a task with a checkable result.
#[ember::task(cpus = 1)]
pub fn slow_square(n: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    n * n
}

/// A running total that saves a checkpoint after every call and always comes back: every
/// answered `add` survives the loss of its worker.
pub struct Ledger {
    total: u64,
    adds: u64,
}

impl ember::Checkpoint for Ledger {
    type State = (u64, u64);

    fn save(&self) -> (u64, u64) {
        (self.total, self.adds)
    }

    fn restore((total, adds): (u64, u64)) -> Self {
        Ledger { total, adds }
    }
}

#[ember::actor(gpus = 0.5, checkpoint_every = 1, max_restarts = -1, max_task_retries = -1)]
impl Ledger {
    /// A ledger opening with `total`.
    pub fn new(total: u64) -> Self {
        Ledger { total, adds: 0 }
    }

    /// Adds `n`; returns the new total.
    pub fn add(&mut self, n: u64) -> u64 {
        self.total += n;
        self.adds += 1;
        self.total
    }

    /// The total and how many adds made it.
    pub fn totals(&self) -> (u64, u64) {
        (self.total, self.adds)
    }

    /// The process id of the executor hosting it.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Creates the file `started`, sleeps `ms` milliseconds, then adds `n`: a call long
    /// enough to be cut short, which says when it runs.
    pub fn slow_add(&mut self, started: String, ms: u64, n: u64) -> u64 {
        let _ = std::fs::write(&started, b"running");
        std::thread::sleep(Duration::from_millis(ms));
        self.add(n)
    }
}

/// A running total saved every 100 ms while it changes.
pub struct Meter {
    total: u64,
}

impl ember::Checkpoint for Meter {
    type State = u64;

    fn save(&self) -> u64 {
        self.total
    }

    fn restore(total: u64) -> Self {
        Meter { total }
    }
}

#[ember::actor(
    gpus = 0.5,
    checkpoint_interval_ms = 100,
    max_restarts = 1,
    max_task_retries = 1
)]
impl Meter {
    /// A meter reading `total`.
    pub fn new(total: u64) -> Self {
        Meter { total }
    }

    /// Adds `n`; returns the new total.
    pub fn add(&mut self, n: u64) -> u64 {
        self.total += n;
        self.total
    }
}

/// A running total saved only on demand and when a drain moves it.
pub struct Tally {
    total: u64,
}

impl ember::Checkpoint for Tally {
    type State = u64;

    fn save(&self) -> u64 {
        self.total
    }

    fn restore(total: u64) -> Self {
        Tally { total }
    }
}

#[ember::actor(gpus = 0.5, checkpoint)]
impl Tally {
    /// A tally starting at `total`.
    pub fn new(total: u64) -> Self {
        Tally { total }
    }

    /// Adds `n`; returns the new total.
    pub fn add(&mut self, n: u64) -> u64 {
        self.total += n;
        self.total
    }

    /// Where it runs.
    pub fn placed(&self) -> Placed {
        here()
    }
}

/// What the device handles of a task or actor are: one handle's backend and memory limit,
/// and how many handles there are.
pub type DeviceReport = (String, Option<u64>, u32);

fn device_report(device: &ember::Device) -> DeviceReport {
    let devices = ember::devices().expect("runs inside Ember");
    (
        device.backend().to_string(),
        device.memory_limit(),
        devices.len() as u32,
    )
}

/// `a * x + y` by the `axpy` kernel on `device`, or the kernel layer's refusal.
fn axpy_on(device: &ember::Device, a: f32, x: &[f32], y: &[f32]) -> Result<Vec<f32>, String> {
    let run = || -> Result<Vec<f32>, ember::KernelError> {
        let x = device.upload(x)?;
        let y = device.upload(y)?;
        device.launch("axpy", &[a.into(), (&x).into(), (&y).into()])?;
        device.download(&y)
    };
    run().map_err(|e| e.to_string())
}

/// Half a GPU with 1 MiB of its memory: runs `axpy` through its device handle and says what
/// that handle is.
#[ember::task(gpus = 0.5, gpu_memory = "1MiB")]
pub fn axpy_task(a: f32, x: Vec<f32>, y: Vec<f32>) -> Result<(DeviceReport, Vec<f32>), String> {
    let device = ember::device().expect("runs inside Ember");
    let out = axpy_on(&device, a, &x, &y)?;
    Ok((device_report(&device), out))
}

/// Runs kernels through its device handle (one GPU, 1 MiB of its memory) and keeps buffers
/// between calls.
pub struct Kernels {
    device: ember::Device,
    held: Vec<ember::Buffer>,
}

#[ember::actor(gpus = 1, gpu_memory = "1MiB")]
impl Kernels {
    /// An actor holding no buffer, using the handle of its GPU number `gpu` (from 0).
    pub fn new(gpu: u32) -> Self {
        let devices = ember::devices().expect("runs inside Ember");
        Kernels {
            device: devices[gpu as usize].clone(),
            held: Vec::new(),
        }
    }

    /// The handle it uses, and how many it has.
    pub fn report(&self) -> DeviceReport {
        device_report(&self.device)
    }

    /// Allocates `len` f32s and keeps them; returns the bytes now in use, or the refusal.
    pub fn hold(&mut self, len: u64) -> Result<u64, String> {
        let buffer = self
            .device
            .alloc::<f32>(len as usize)
            .map_err(|e| e.to_string())?;
        self.held.push(buffer);
        Ok(self.device.memory_in_use())
    }

    /// Frees what it holds; returns the bytes still in use.
    pub fn release(&mut self) -> u64 {
        self.held.clear();
        self.device.memory_in_use()
    }

    /// `a * x + y` by the `axpy` kernel.
    pub fn axpy(&self, a: f32, x: Vec<f32>, y: Vec<f32>) -> Result<Vec<f32>, String> {
        axpy_on(&self.device, a, &x, &y)
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
        nap::remote as fn(u64) -> ember::TaskCall<String>,
        spin::remote as fn(u64, Vec<u8>) -> ember::TaskCall<u64>,
        slow_square::remote as fn(u64, u64) -> ember::TaskCall<u64>,
        fails_once::remote as fn(String) -> ember::TaskCall<String>,
        Ledger::remote as fn(u64) -> ember::ActorSpawn<LedgerHandle>,
        Tally::remote as fn(u64) -> ember::ActorSpawn<TallyHandle>,
        Meter::remote as fn(u64) -> ember::ActorSpawn<MeterHandle>,
        crate::ranks::Member::remote as fn() -> ember::ActorSpawn<crate::ranks::MemberHandle>,
        axpy_task::remote
            as fn(f32, Vec<f32>, Vec<f32>) -> ember::TaskCall<(DeviceReport, Vec<f32>)>,
        Kernels::remote as fn(u32) -> ember::ActorSpawn<KernelsHandle>,
    ));
}

/// Where this task ran: the node, the name of the thread that ran it (each task lease runs
/// its tasks on a thread named after it) and the executor's process id.
#[ember::task]
pub fn runner() -> (String, String, u32) {
    let node = ember::context()
        .expect("runs inside Ember")
        .node
        .to_string();
    let thread = std::thread::current().name().unwrap_or("").to_string();
    (node, thread, std::process::id())
}

/// [`runner`], spread: each runs on a lease of its own.
#[ember::task(strategy = "spread")]
pub fn spread_runner() -> (String, String, u32) {
    runner()
}

/// Creates the file `marker` (so a test sees it started), then sleeps `ms` milliseconds on
/// two GPUs.
#[ember::task(gpus = 2)]
pub fn mark_then_sleep(marker: String, ms: u64) -> Placed {
    std::fs::write(&marker, b"started").expect("write the marker");
    std::thread::sleep(Duration::from_millis(ms));
    here()
}

/// Creates the file `path`, which must not exist yet (so a task run twice fails), then
/// sleeps `micros` microseconds on one CPU; returns the node it ran on. Never run again after
/// a loss: a task told its worker died when it did not run fails the test that uses it.
#[ember::task(cpus = 1, max_retries = 0)]
pub fn claim(path: String, micros: u64) -> Result<String, String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("cannot claim {path}: {e}"))?;
    std::thread::sleep(Duration::from_micros(micros));
    Ok(ember::context()
        .expect("runs inside Ember")
        .node
        .to_string())
}
