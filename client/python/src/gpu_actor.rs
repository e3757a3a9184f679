//! The built-in GPU actor from Python (`ember.GpuActor`): buffers put and got as numpy
//! arrays (float32, float16, bfloat16 as their bits), registered kernels launched by name,
//! user kernels compiled with NVRTC. Each method waits for the actor's answer with the GIL
//! released; a call the actor refuses raises EmberError saying why, and the actor serves on.

use ember::kernels::LaunchGeometry;
use ember::{GpuActor, GpuActorHandle, HostData, LaunchArg};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::cluster::{current, error, options, wait};

/// One GPU actor's handle.
#[pyclass(frozen, module = "ember._ember")]
pub(crate) struct Gpu {
    handle: GpuActorHandle,
}

/// Creates a GPU actor with `opts` (one whole GPU unless `gpus` says otherwise; `gpus=0`
/// runs the kernels' CPU references on any worker).
#[pyfunction]
#[pyo3(signature = (opts=None))]
fn gpu_actor(py: Python<'_>, opts: Option<&Bound<'_, pyo3::types::PyDict>>) -> PyResult<Gpu> {
    let has_gpus = opts.is_some_and(|o| o.contains("gpus").unwrap_or(false));
    let mut options = options(opts)?;
    if !has_gpus {
        options = options.gpus(1.0);
    }
    let (runtime, cluster) = current()?;
    let handle = py
        .detach(|| {
            wait(&runtime, async move {
                cluster.spawn(GpuActor::remote().options(options)).await
            })
        })
        .map_err(error)?;
    Ok(Gpu { handle })
}

/// Waits for `f` on the runtime with the GIL released.
fn block<T: Send + 'static>(
    py: Python<'_>,
    f: impl std::future::Future<Output = Result<T, ember::Error>> + Send + 'static,
) -> PyResult<T> {
    let (runtime, _) = current()?;
    py.detach(|| wait(&runtime, f)).map_err(error)
}

/// The launch arguments from Python: `("buffer", name)`, `("f32", x)` or `("u32", n)`.
fn launch_args(args: Vec<(String, Bound<'_, PyAny>)>) -> PyResult<Vec<LaunchArg>> {
    args.into_iter()
        .map(|(kind, value)| {
            Ok(match kind.as_str() {
                "buffer" => LaunchArg::Buffer(value.extract()?),
                "f32" => LaunchArg::F32(value.extract()?),
                "u32" => LaunchArg::U32(value.extract()?),
                other => {
                    return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                        "a launch argument is a buffer, a float or an int, not {other}"
                    )))
                }
            })
        })
        .collect()
}

#[pymethods]
impl Gpu {
    /// Stores buffer `name` from raw elements `data` of `dtype` (float32, float16 or
    /// bfloat16); returns its length.
    fn put(&self, py: Python<'_>, name: String, data: &[u8], dtype: &str) -> PyResult<u64> {
        let host = match dtype {
            "float32" => HostData::F32(elements(data, f32::from_le_bytes)?),
            "float16" => HostData::F16(elements(data, u16::from_le_bytes)?),
            "bfloat16" => HostData::Bf16(elements(data, u16::from_le_bytes)?),
            other => {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "a GPU actor's buffers hold float32, float16 or bfloat16, not {other}"
                )))
            }
        };
        let handle = self.handle.clone();
        let info = block(py, async move { handle.put(&name, host).await })?;
        Ok(info.len)
    }

    /// A zeroed buffer `name` of `len` elements of `dtype`.
    fn alloc(&self, py: Python<'_>, name: String, dtype: &str, len: usize) -> PyResult<()> {
        let element = match dtype {
            "float32" => ember::kernels::ElementType::F32,
            "float16" => ember::kernels::ElementType::F16,
            "bfloat16" => ember::kernels::ElementType::Bf16,
            other => {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "a GPU actor's buffers hold float32, float16 or bfloat16, not {other}"
                )))
            }
        };
        let handle = self.handle.clone();
        block(py, async move {
            handle.alloc_elements(&name, element, len).await
        })?;
        Ok(())
    }

    /// Buffer `name`'s raw elements and their dtype.
    fn get<'py>(
        &self,
        py: Python<'py>,
        name: String,
    ) -> PyResult<(Bound<'py, PyBytes>, &'static str)> {
        let handle = self.handle.clone();
        let data = block(py, async move { handle.get_data(&name).await })?;
        Ok(match data {
            HostData::F32(v) => (PyBytes::new(py, bytemuck::cast_slice(&v)), "float32"),
            HostData::F16(v) => (PyBytes::new(py, bytemuck::cast_slice(&v)), "float16"),
            HostData::Bf16(v) => (PyBytes::new(py, bytemuck::cast_slice(&v)), "bfloat16"),
        })
    }

    /// Frees buffer `name`.
    fn free(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let handle = self.handle.clone();
        block(py, async move { handle.free(&name).await })?;
        Ok(())
    }

    /// Runs registered kernel `kernel` on `args` and returns once it finished.
    fn launch(
        &self,
        py: Python<'_>,
        kernel: String,
        args: Vec<(String, Bound<'_, PyAny>)>,
    ) -> PyResult<()> {
        let args = launch_args(args)?;
        let handle = self.handle.clone();
        block(py, async move { handle.launch(&kernel, args).await })
    }

    /// Compiles CUDA C `source` on the actor's GPU, keeping its function `entry`; returns
    /// whether its PTX came from the worker's cache.
    fn compile_user(&self, py: Python<'_>, source: String, entry: String) -> PyResult<bool> {
        let handle = self.handle.clone();
        let info = block(
            py,
            async move { handle.compile_user(&source, &entry).await },
        )?;
        Ok(info.from_cache)
    }

    /// Runs compiled user kernel `entry` over `grid` × `block` threads on `args`.
    #[pyo3(signature = (entry, grid, block_dim, args, shared_mem_bytes=0))]
    fn launch_user(
        &self,
        py: Python<'_>,
        entry: String,
        grid: (u32, u32, u32),
        block_dim: (u32, u32, u32),
        args: Vec<(String, Bound<'_, PyAny>)>,
        shared_mem_bytes: u32,
    ) -> PyResult<()> {
        let args = launch_args(args)?;
        let geometry = LaunchGeometry {
            grid,
            block: block_dim,
            shared_mem_bytes,
        };
        let handle = self.handle.clone();
        block(py, async move {
            handle.launch_user(&entry, geometry, args).await
        })
    }

    /// What it runs on and holds: `backend`, `device_name`, `cpu_fallback_reason`,
    /// `memory_in_use`, `memory_limit`, `buffers` (name → length), `user_kernels`.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let handle = self.handle.clone();
        let info = block(py, async move { handle.info().await })?;
        let d = PyDict::new(py);
        d.set_item(
            "backend",
            match info.cuda_ordinal {
                Some(o) => format!("cuda:{o}"),
                None => "cpu".to_string(),
            },
        )?;
        d.set_item("device_name", info.device_name)?;
        d.set_item("cpu_fallback_reason", info.cpu_fallback_reason)?;
        d.set_item("memory_in_use", info.memory_in_use)?;
        d.set_item("memory_limit", info.memory_limit)?;
        let buffers = PyDict::new(py);
        for b in info.buffers {
            buffers.set_item(b.name, b.len)?;
        }
        d.set_item("buffers", buffers)?;
        d.set_item("user_kernels", info.user_kernels)?;
        Ok(d)
    }

    /// Stops the actor.
    fn kill(&self, py: Python<'_>) -> PyResult<()> {
        let handle = self.handle.clone();
        block(py, async move { handle.actor().kill().await })
    }
}

/// Raw little-endian bytes as elements of `N` bytes each, built by `from`.
fn elements<T, const N: usize>(data: &[u8], from: fn([u8; N]) -> T) -> PyResult<Vec<T>> {
    if data.len() % N != 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{} bytes are not whole elements of {N} bytes",
            data.len()
        )));
    }
    Ok(data
        .chunks_exact(N)
        .map(|c| from(c.try_into().expect("chunks of N bytes")))
        .collect())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Gpu>()?;
    m.add_function(wrap_pyfunction!(gpu_actor, m)?)?;
    Ok(())
}
