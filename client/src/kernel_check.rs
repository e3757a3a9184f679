//! A smoke test of one registered kernel on a cluster GPU, as `ember kernel run` does it:
//! upload made-up inputs to a [`GpuActorHandle`], run the kernel there, download what it
//! wrote, and compare with the same kernel run here on the CPU reference.
//!
//! The comparison uses the tolerance the kernel promises on a GPU ([`Tolerance`]): the same
//! bits for the element-wise kernels, the fixed-order reductions and the tiled matmul;
//! within 4e-6 relative for softmax; within the f32 accumulation bound for cuBLAS matmul
//! (plus one output rounding in f16 or bf16). On the CPU backend every kernel gives exactly
//! the reference's bits.

use std::fmt;
use std::time::{Duration, Instant};

use ember_kernels::registry::{self, Access, KernelSpec};
use ember_kernels::{ArgKind, Buffer, Device, ElementType, ElementVec, KernelArg, KernelError};
use ember_worker::gpu_actor::{GpuActorError, GpuInfo, HostData, LaunchArg};
use half::{bf16, f16};

use crate::{Error, GpuActorHandle};

/// Which kernel to check, and at what sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCheck {
    /// The registered kernel, e.g. `axpy`.
    pub kernel: String,
    /// Elements of the element-wise kernels' and the reductions' inputs.
    pub len: usize,
    /// Rows of `softmax`'s matrix.
    pub rows: u32,
    /// Columns of `softmax`'s matrix.
    pub cols: u32,
    /// `matmul_*`: rows of `a` and `c`.
    pub m: u32,
    /// `matmul_*`: columns of `a`, rows of `b`.
    pub k: u32,
    /// `matmul_*`: columns of `b` and `c`.
    pub n: u32,
    /// Seeds the made-up inputs.
    pub seed: u64,
}

impl KernelCheck {
    /// A check of `kernel` at the default sizes: 2^20 elements, a 64 x 1000 softmax, a
    /// 256 x 256 x 256 matmul.
    pub fn new(kernel: &str) -> KernelCheck {
        KernelCheck {
            kernel: kernel.to_owned(),
            len: 1 << 20,
            rows: 64,
            cols: 1000,
            m: 256,
            k: 256,
            n: 256,
            seed: 1,
        }
    }
}

/// How close a kernel's output must be to its CPU reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// The very same bits.
    Exact,
    /// `|got - reference| <= abs + rel * |reference|`.
    Within {
        /// Absolute slack.
        abs: f64,
        /// Slack relative to the reference.
        rel: f64,
    },
}

impl Tolerance {
    /// What `spec` promises on a GPU for `check`'s sizes.
    pub fn of(spec: &KernelSpec, check: &KernelCheck) -> Tolerance {
        let accumulation = || 2.0 * (f64::from(check.k) + 2.0) * f64::from(f32::EPSILON);
        match spec.name {
            "softmax" => Tolerance::Within {
                abs: 0.0,
                rel: 4e-6,
            },
            // Inputs lie in [-1, 1), so sum |a||b| over k is at most k.
            "matmul_f32" => Tolerance::Within {
                abs: accumulation() * f64::from(check.k),
                rel: 0.0,
            },
            "matmul_f16" => Tolerance::Within {
                abs: accumulation() * f64::from(check.k),
                rel: f64::from(f16::EPSILON),
            },
            "matmul_bf16" => Tolerance::Within {
                abs: accumulation() * f64::from(check.k),
                rel: f64::from(bf16::EPSILON),
            },
            _ => Tolerance::Exact,
        }
    }

    fn accepts(self, got: f64, want: f64) -> bool {
        match self {
            Tolerance::Exact => got.to_bits() == want.to_bits(),
            Tolerance::Within { abs, rel } => {
                got.to_bits() == want.to_bits() || (got - want).abs() <= abs + rel * want.abs()
            }
        }
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tolerance::Exact => f.write_str("bit-exact"),
            Tolerance::Within { abs, rel } => write!(f, "within {abs:.1e} + {rel:.1e} x |ref|"),
        }
    }
}

/// How one buffer the kernel wrote compares with the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputCheck {
    /// The argument's name, e.g. `y`.
    pub name: &'static str,
    /// Its elements.
    pub elements: usize,
    /// The largest `|got - reference|` (0 when every element has the reference's bits).
    pub max_abs_error: f64,
    /// Elements outside the tolerance.
    pub mismatches: usize,
    /// The first of them: index, got, reference.
    pub first_mismatch: Option<(usize, f64, f64)>,
}

/// What a kernel check found.
#[derive(Debug, Clone)]
pub struct KernelCheckReport {
    /// The kernel.
    pub kernel: &'static str,
    /// The GPU actor's report, taken after the launch: backend, device, memory.
    pub info: GpuInfo,
    /// The tolerance applied.
    pub tolerance: Tolerance,
    /// Each buffer the kernel wrote.
    pub outputs: Vec<OutputCheck>,
    /// Time to upload the inputs.
    pub upload: Duration,
    /// Time of the launch call (it returns once the kernel has finished).
    pub launch: Duration,
    /// Time to download the outputs.
    pub download: Duration,
}

impl KernelCheckReport {
    /// Whether every output is within the tolerance.
    pub fn passed(&self) -> bool {
        self.outputs.iter().all(|o| o.mismatches == 0)
    }
}

/// A scalar argument of the check.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar {
    F32(f32),
    U32(u32),
}

impl Scalar {
    fn launch_arg(self) -> LaunchArg {
        match self {
            Scalar::F32(value) => LaunchArg::F32(value),
            Scalar::U32(value) => LaunchArg::U32(value),
        }
    }

    fn kernel_arg(self) -> KernelArg<'static> {
        match self {
            Scalar::F32(value) => KernelArg::F32(value),
            Scalar::U32(value) => KernelArg::U32(value),
        }
    }
}

/// One argument of the check, with its made-up value.
#[derive(Debug, Clone, PartialEq)]
enum PlannedArg {
    Scalar(Scalar),
    Buffer {
        name: &'static str,
        data: ElementVec,
        written: bool,
    },
}

/// Runs `check` on `gpu`, leaving no buffer behind on it when it succeeds.
pub async fn check_kernel(
    gpu: &GpuActorHandle,
    check: &KernelCheck,
) -> Result<KernelCheckReport, Error> {
    let spec = registry::lookup(&check.kernel).map_err(GpuActorError::from)?;
    let plan = plan(spec, check)?;
    let reference = run_reference(spec, &plan)?;

    let started = Instant::now();
    for arg in &plan {
        if let PlannedArg::Buffer { name, data, .. } = arg {
            gpu.put(name, HostData::from(data.clone())).await?;
        }
    }
    let upload = started.elapsed();
    let started = Instant::now();
    gpu.launch(spec.name, plan.iter().map(launch_arg)).await?;
    let launch = started.elapsed();
    let info = gpu.info().await?;

    let started = Instant::now();
    let mut got = Vec::new();
    for arg in &plan {
        if let PlannedArg::Buffer {
            name,
            written: true,
            ..
        } = arg
        {
            got.push((*name, ElementVec::from(gpu.get_data(name).await?)));
        }
    }
    let download = started.elapsed();
    for arg in &plan {
        if let PlannedArg::Buffer { name, .. } = arg {
            gpu.free(name).await?;
        }
    }

    let tolerance = Tolerance::of(spec, check);
    let outputs = got
        .iter()
        .zip(&reference)
        .map(|((name, got), want)| compare(name, got, want, tolerance))
        .collect();
    Ok(KernelCheckReport {
        kernel: spec.name,
        info,
        tolerance,
        outputs,
        upload,
        launch,
        download,
    })
}

fn launch_arg(arg: &PlannedArg) -> LaunchArg {
    match arg {
        PlannedArg::Scalar(scalar) => scalar.launch_arg(),
        PlannedArg::Buffer { name, .. } => LaunchArg::buffer(*name),
    }
}

/// The arguments of `spec` at `check`'s sizes, with made-up values in [-1, 1).
fn plan(spec: &KernelSpec, check: &KernelCheck) -> Result<Vec<PlannedArg>, Error> {
    let mut random = SplitMix64(check.seed);
    spec.args
        .iter()
        .map(|arg| {
            Ok(match arg.kind {
                ArgKind::F32 => PlannedArg::Scalar(Scalar::F32(0.75)),
                ArgKind::U32 => PlannedArg::Scalar(Scalar::U32(size(check, arg.name)?)),
                ArgKind::F32Buf | ArgKind::F16Buf | ArgKind::Bf16Buf => {
                    let element = match arg.kind {
                        ArgKind::F16Buf => ElementType::F16,
                        ArgKind::Bf16Buf => ElementType::Bf16,
                        _ => ElementType::F32,
                    };
                    let len = buffer_len(spec, arg.name, check)?;
                    PlannedArg::Buffer {
                        name: arg.name,
                        data: random.elements(element, len),
                        written: arg.access == Access::Write,
                    }
                }
            })
        })
        .collect()
}

/// The value of shape argument `name` (`rows`, `cols`, `m`, `k`, `n`).
fn size(check: &KernelCheck, name: &str) -> Result<u32, Error> {
    match name {
        "rows" => Ok(check.rows),
        "cols" => Ok(check.cols),
        "m" => Ok(check.m),
        "k" => Ok(check.k),
        "n" => Ok(check.n),
        other => Err(no_size(other)),
    }
}

/// Elements of buffer argument `name` of `spec` at `check`'s sizes.
fn buffer_len(spec: &KernelSpec, name: &str, check: &KernelCheck) -> Result<usize, Error> {
    let (m, k, n) = (check.m as usize, check.k as usize, check.n as usize);
    let matmul = spec.name.starts_with("matmul");
    Ok(match (spec.name, name) {
        (_, "a") if matmul => m * k,
        (_, "b") if matmul => k * n,
        (_, "c") if matmul => m * n,
        ("softmax", "x" | "y") => check.rows as usize * check.cols as usize,
        ("sum" | "mean" | "max", "out") => 1,
        (_, "x" | "y" | "out") => check.len,
        (_, other) => return Err(no_size(other)),
    })
}

fn no_size(argument: &str) -> Error {
    Error::Gpu(GpuActorError::Rejected {
        message: format!("the kernel check has no size for argument {argument:?}"),
    })
}

/// An argument of the reference run: a buffer on the CPU device (and whether the kernel
/// writes it) or a scalar.
enum ReferenceArg {
    Buffer(Buffer, bool),
    Scalar(KernelArg<'static>),
}

/// The buffers `spec` writes, run on the CPU reference with the planned arguments.
fn run_reference(spec: &KernelSpec, plan: &[PlannedArg]) -> Result<Vec<ElementVec>, Error> {
    let cpu = Device::cpu();
    let reference = || -> Result<Vec<ElementVec>, KernelError> {
        let uploaded = plan
            .iter()
            .map(|arg| {
                Ok(match arg {
                    PlannedArg::Scalar(scalar) => ReferenceArg::Scalar(scalar.kernel_arg()),
                    PlannedArg::Buffer { data, written, .. } => {
                        ReferenceArg::Buffer(cpu.upload_elements(data.as_slice())?, *written)
                    }
                })
            })
            .collect::<Result<Vec<_>, KernelError>>()?;
        let args: Vec<KernelArg<'_>> = uploaded
            .iter()
            .map(|arg| match arg {
                ReferenceArg::Buffer(buffer, _) => KernelArg::Buffer(buffer),
                ReferenceArg::Scalar(scalar) => *scalar,
            })
            .collect();
        cpu.launch(spec.name, &args)?;
        uploaded
            .iter()
            .filter_map(|arg| match arg {
                ReferenceArg::Buffer(buffer, true) => Some(cpu.download_elements(buffer)),
                _ => None,
            })
            .collect()
    };
    reference().map_err(|e| GpuActorError::from(e).into())
}

fn compare(
    name: &'static str,
    got: &ElementVec,
    want: &ElementVec,
    tolerance: Tolerance,
) -> OutputCheck {
    let (got, want) = (as_f64(got), as_f64(want));
    let mut check = OutputCheck {
        name,
        elements: want.len(),
        max_abs_error: 0.0,
        mismatches: 0,
        first_mismatch: None,
    };
    if got.len() != want.len() {
        check.mismatches = want.len().max(got.len());
        return check;
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if g.to_bits() != w.to_bits() {
            check.max_abs_error = check.max_abs_error.max((g - w).abs());
        }
        if !tolerance.accepts(*g, *w) {
            check.mismatches += 1;
            check.first_mismatch.get_or_insert((i, *g, *w));
        }
    }
    check
}

fn as_f64(elements: &ElementVec) -> Vec<f64> {
    match elements {
        ElementVec::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        ElementVec::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        ElementVec::Bf16(v) => v.iter().map(|x| x.to_f64()).collect(),
    }
}

/// Made-up inputs: SplitMix64, seeded by the check.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in [-1, 1), a multiple of 2^-23.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn elements(&mut self, element: ElementType, len: usize) -> ElementVec {
        match element {
            ElementType::F32 => ElementVec::F32((0..len).map(|_| self.unit()).collect()),
            ElementType::F16 => {
                ElementVec::F16((0..len).map(|_| f16::from_f32(self.unit())).collect())
            }
            ElementType::Bf16 => {
                ElementVec::Bf16((0..len).map(|_| bf16::from_f32(self.unit())).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_kernels::registry::KERNELS;

    fn small(kernel: &str) -> KernelCheck {
        KernelCheck {
            len: 1001,
            rows: 3,
            cols: 17,
            m: 5,
            k: 7,
            n: 3,
            ..KernelCheck::new(kernel)
        }
    }

    #[test]
    fn every_registered_kernel_has_a_plan_its_reference_accepts() {
        for spec in KERNELS {
            let check = small(spec.name);
            let plan = plan(spec, &check).unwrap();
            let outputs =
                run_reference(spec, &plan).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
            assert!(!outputs.is_empty(), "{}", spec.name);
            let written = plan
                .iter()
                .filter(|a| matches!(a, PlannedArg::Buffer { written: true, .. }))
                .count();
            assert_eq!(outputs.len(), written, "{}", spec.name);
        }
    }

    #[test]
    fn plans_are_the_same_for_the_same_seed_and_differ_for_another() {
        let spec = registry::lookup("add").unwrap();
        let check = small("add");
        assert_eq!(plan(spec, &check).unwrap(), plan(spec, &check).unwrap());
        let other = KernelCheck {
            seed: 2,
            ..small("add")
        };
        assert_ne!(plan(spec, &check).unwrap(), plan(spec, &other).unwrap());
    }

    #[test]
    fn comparisons_count_what_is_outside_the_tolerance() {
        let want = ElementVec::F32(vec![1.0, 2.0, 3.0]);
        let got = ElementVec::F32(vec![1.0, 2.0 + 1e-6, 4.0]);
        let exact = compare("y", &got, &want, Tolerance::Exact);
        assert_eq!(exact.mismatches, 2);
        assert_eq!(exact.first_mismatch.map(|m| m.0), Some(1));
        assert_eq!(exact.max_abs_error, 1.0);
        let loose = compare(
            "y",
            &got,
            &want,
            Tolerance::Within {
                abs: 1e-5,
                rel: 0.0,
            },
        );
        assert_eq!(loose.mismatches, 1);
        let same = compare("y", &want, &want, Tolerance::Exact);
        assert_eq!((same.mismatches, same.max_abs_error), (0, 0.0));
        let nan = ElementVec::F32(vec![f32::NAN]);
        assert_eq!(compare("y", &nan, &nan, Tolerance::Exact).mismatches, 0);
    }

    #[test]
    fn tolerances_follow_what_each_kernel_promises() {
        let check = small("matmul_f32");
        let tolerance = |name| Tolerance::of(registry::lookup(name).unwrap(), &check);
        assert_eq!(tolerance("axpy"), Tolerance::Exact);
        assert_eq!(tolerance("sum"), Tolerance::Exact);
        assert_eq!(tolerance("matmul_tiled_f32"), Tolerance::Exact);
        assert!(matches!(tolerance("softmax"), Tolerance::Within { rel, .. } if rel == 4e-6));
        assert!(
            matches!(tolerance("matmul_bf16"), Tolerance::Within { abs, rel }
            if abs > 0.0 && rel == f64::from(bf16::EPSILON))
        );
    }

    #[test]
    fn an_unknown_kernel_names_the_known_ones() {
        match registry::lookup("nope").map_err(GpuActorError::from) {
            Err(GpuActorError::Rejected { message }) => assert!(message.contains("axpy")),
            other => panic!("{other:?}"),
        }
    }
}
