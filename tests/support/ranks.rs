//! The members of the collective-group tests: an actor that runs each operation on inputs
//! that depend on its rank and returns the result's raw bytes, so that tests compare bits.
//! Inputs mix magnitudes, so that the order of floating-point additions changes the result.

use std::time::Duration;

use ember::collective::{self, Element, ReduceOp};
use half::{bf16, f16};

/// A value type the tests run collectives on, with its inputs and its sequential reference.
pub trait Sample: Element {
    /// The input of `rank` at element `i` for `op`.
    fn sample(rank: usize, i: usize, op: ReduceOp) -> Self;
    /// As f64, for references.
    fn to_f64(self) -> f64;
    /// The machine epsilon (0 for integers, whose results are exact).
    const EPSILON: f64;
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A float input: near 1 for products, otherwise a signed mantissa times 2^e with `e` in
/// `-spread..=spread`.
fn float_sample(rank: usize, i: usize, op: ReduceOp, spread: i32) -> f64 {
    let h = mix(((rank as u64) << 40) ^ i as u64);
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    if op == ReduceOp::Product {
        return 1.0 + (unit - 0.5) / 8.0;
    }
    let e = (h % (2 * spread as u64 + 1)) as i32 - spread;
    (2.0 * unit - 1.0) * 2f64.powi(e)
}

macro_rules! float_sample {
    ($t:ty, $spread:expr, $from:expr, $to:expr, $eps:expr) => {
        impl Sample for $t {
            fn sample(rank: usize, i: usize, op: ReduceOp) -> Self {
                let from: fn(f64) -> $t = $from;
                from(float_sample(rank, i, op, $spread))
            }
            fn to_f64(self) -> f64 {
                let to: fn($t) -> f64 = $to;
                to(self)
            }
            const EPSILON: f64 = $eps;
        }
    };
}

float_sample!(f32, 20, |x| x as f32, |x| x as f64, f32::EPSILON as f64);
float_sample!(f64, 40, |x| x, |x| x, f64::EPSILON);
float_sample!(f16, 5, f16::from_f64, f16::to_f64, 0.000_976_562_5);
float_sample!(bf16, 10, bf16::from_f64, bf16::to_f64, 0.007_812_5);

macro_rules! int_sample {
    ($t:ty) => {
        impl Sample for $t {
            fn sample(rank: usize, i: usize, op: ReduceOp) -> Self {
                let h = mix(((rank as u64) << 40) ^ i as u64);
                match op {
                    ReduceOp::Product => (h % 7) as $t - 3,
                    _ => h as $t,
                }
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            const EPSILON: f64 = 0.0;
        }
    };
}

int_sample!(i32);
int_sample!(i64);

/// The inputs of `rank`.
pub fn inputs<T: Sample>(rank: usize, len: usize, op: ReduceOp) -> Vec<T> {
    (0..len).map(|i| T::sample(rank, i, op)).collect()
}

/// Parses an operation's name.
pub fn reduce_op(name: &str) -> Result<ReduceOp, String> {
    Ok(match name {
        "sum" => ReduceOp::Sum,
        "mean" => ReduceOp::Mean,
        "min" => ReduceOp::Min,
        "max" => ReduceOp::Max,
        "product" => ReduceOp::Product,
        other => return Err(format!("no reduce op `{other}`")),
    })
}

/// Calls `$f::<T>($args)` for the element type named `$dtype`.
#[macro_export]
macro_rules! with_dtype {
    ($dtype:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            "f16" => $f::<half::f16>($($arg),*),
            "bf16" => $f::<half::bf16>($($arg),*),
            "f32" => $f::<f32>($($arg),*),
            "f64" => $f::<f64>($($arg),*),
            "i32" => $f::<i32>($($arg),*),
            "i64" => $f::<i64>($($arg),*),
            other => Err(format!("no dtype `{other}`")),
        }
    };
}

fn bytes<T: Element>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

fn group(name: &str) -> Result<collective::Group, String> {
    collective::group(name).map_err(|e| e.to_string())
}

fn allreduce_as<T: Sample>(name: &str, op: ReduceOp, len: usize) -> Result<Vec<u8>, String> {
    let g = group(name)?;
    let mut buf = inputs::<T>(g.rank(), len, op);
    g.allreduce(&mut buf, op).map_err(|e| e.to_string())?;
    Ok(bytes(&buf))
}

fn allreduce_on_device_as<T: Sample + ember::kernels::Element>(
    name: &str,
    op: ReduceOp,
    len: usize,
) -> Result<Vec<u8>, String> {
    let g = group(name)?;
    let device = ember::device().ok_or("no device handle")?;
    let buffer = device
        .upload(&inputs::<T>(g.rank(), len, op))
        .map_err(|e| e.to_string())?;
    g.allreduce_device::<T>(&device, &buffer, op)
        .map_err(|e| e.to_string())?;
    let out = device.download::<T>(&buffer).map_err(|e| e.to_string())?;
    Ok(bytes(&out))
}

fn broadcast_as<T: Sample>(name: &str, root: usize, len: usize) -> Result<Vec<u8>, String> {
    let g = group(name)?;
    let mut buf = inputs::<T>(g.rank(), len, ReduceOp::Sum);
    g.broadcast(&mut buf, root).map_err(|e| e.to_string())?;
    Ok(bytes(&buf))
}

fn allgather_as<T: Sample>(name: &str, len: usize) -> Result<Vec<u8>, String> {
    let g = group(name)?;
    let out = g
        .allgather(&inputs::<T>(g.rank(), len, ReduceOp::Sum))
        .map_err(|e| e.to_string())?;
    Ok(bytes(&out))
}

fn reduce_scatter_as<T: Sample>(
    name: &str,
    op: ReduceOp,
    len: usize,
) -> Result<(u64, u64, Vec<u8>), String> {
    let g = group(name)?;
    let mut buf = inputs::<T>(g.rank(), len, op);
    let mine = g.reduce_scatter(&mut buf, op).map_err(|e| e.to_string())?;
    Ok((mine.start as u64, mine.end as u64, bytes(&buf[mine])))
}

/// A member of the tests' groups. It checkpoints when asked and always comes back, so that a
/// group can be formed again with its restarted self.
pub struct Member {
    /// Operations completed.
    done: u64,
}

impl Default for Member {
    fn default() -> Self {
        Member::new()
    }
}

impl ember::Checkpoint for Member {
    type State = u64;

    fn save(&self) -> u64 {
        self.done
    }

    fn restore(done: u64) -> Self {
        Member { done }
    }
}

#[ember::actor(gpus = 1, checkpoint, max_restarts = -1)]
impl Member {
    /// A member that has done nothing yet.
    pub fn new() -> Self {
        Member { done: 0 }
    }

    /// Its rank, the group's size and generation, as the head has them now.
    pub fn lookup(&mut self, name: String) -> Result<(u64, u64, u64), String> {
        let g = group(&name)?;
        Ok((g.rank() as u64, g.size() as u64, g.generation()))
    }

    /// Joins group `name` of `world`, waiting up to `timeout_ms` for the others; returns its
    /// rank and the generation.
    pub fn join(
        &mut self,
        name: String,
        world: u32,
        timeout_ms: u64,
    ) -> Result<(u64, u64), String> {
        let timeout = Duration::from_millis(timeout_ms);
        let g = collective::join(&name, world, timeout).map_err(|e| e.to_string())?;
        Ok((g.rank() as u64, g.generation()))
    }

    /// All-reduces this rank's inputs of `len` elements of `dtype` with `op`; the result's
    /// bytes.
    pub fn allreduce(
        &mut self,
        name: String,
        dtype: String,
        op: String,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        let op = reduce_op(&op)?;
        let out = with_dtype!(dtype.as_str(), allreduce_as(&name, op, len as usize))?;
        self.done += 1;
        Ok(out)
    }

    /// All-reduces this rank's inputs (f32, f16 or bf16) from a buffer on its device,
    /// reduced on the device; the result's bytes.
    pub fn allreduce_on_device(
        &mut self,
        name: String,
        dtype: String,
        op: String,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        let op = reduce_op(&op)?;
        let (name, len) = (name.as_str(), len as usize);
        match dtype.as_str() {
            "f32" => allreduce_on_device_as::<f32>(name, op, len),
            "f16" => allreduce_on_device_as::<half::f16>(name, op, len),
            "bf16" => allreduce_on_device_as::<half::bf16>(name, op, len),
            other => Err(format!("no device buffers of `{other}`")),
        }
    }

    /// Sleeps `ms` milliseconds, then all-reduces like [`Member::allreduce`] (f32 sum): a
    /// member late to an operation its peers already wait in.
    pub fn late_allreduce(&mut self, name: String, ms: u64, len: u64) -> Result<Vec<u8>, String> {
        std::thread::sleep(Duration::from_millis(ms));
        self.allreduce(name, "f32".into(), "sum".into(), len)
    }

    /// Broadcasts `root`'s inputs; the bytes received.
    pub fn broadcast(
        &mut self,
        name: String,
        dtype: String,
        root: u64,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        with_dtype!(
            dtype.as_str(),
            broadcast_as(&name, root as usize, len as usize)
        )
    }

    /// Gathers every rank's `len` inputs; the bytes.
    pub fn allgather(&mut self, name: String, dtype: String, len: u64) -> Result<Vec<u8>, String> {
        with_dtype!(dtype.as_str(), allgather_as(&name, len as usize))
    }

    /// Reduce-scatters; this rank's range and its bytes.
    pub fn reduce_scatter(
        &mut self,
        name: String,
        dtype: String,
        op: String,
        len: u64,
    ) -> Result<(u64, u64, Vec<u8>), String> {
        let op = reduce_op(&op)?;
        with_dtype!(dtype.as_str(), reduce_scatter_as(&name, op, len as usize))
    }

    /// Waits at a barrier.
    pub fn barrier(&mut self, name: String) -> Result<(), String> {
        group(&name)?.barrier().map_err(|e| e.to_string())
    }

    /// Operations completed, over all incarnations.
    pub fn done(&self) -> u64 {
        self.done
    }
}
