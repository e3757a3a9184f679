//! Item 2: the CUDA libraries found and loaded through the kernels crate's own path, and
//! every CUDA C source compiled for sm_90 by the NVRTC found; NVRTC's compile and
//! cache-hit times.

use crate::report::{Done, Metric, Outcome};
use ember_kernels::cache::{CompileRequest, KernelCache, PtxCompiler};
use ember_kernels::cuda_libs::{self, Library, Preparation};
use ember_kernels::sources::CudaSource;
use ember_kernels::{registered_kernel_options, KernelError, Nvrtc};
use std::path::Path;
use std::time::Instant;

/// Where cudarc's names lead now: through the alias folder (its link's target) or as is.
fn resolved(name: &str, preparation: &Preparation) -> String {
    if let Preparation::Prepared { alias_dir } = preparation {
        if let Ok(target) = std::fs::read_link(alias_dir.join(name)) {
            return format!("{name} -> {}", target.display());
        }
    }
    name.to_owned()
}

/// The driver, NVRTC and cuBLAS: loadable by cudarc's names (after [`cuda_libs::prepare`]),
/// and every symbol Ember calls resolves. Missing libraries fail the check when `required`.
pub(crate) fn check_libraries(preparation: &Preparation, required: bool) -> Outcome {
    let mut lines = vec![format!("preparation: {preparation:?}")];
    let mut missing = Vec::new();
    lines.push(format!(
        "driver (libcuda): {}",
        if cuda_libs::driver_loadable() {
            "loads"
        } else {
            "not found"
        }
    ));
    for library in Library::ALL {
        match cuda_libs::cudarc_loaded_name(library) {
            Some(name) => {
                cuda_libs::check_symbols(library, Path::new(&name))
                    .map_err(|e| format!("{}: {e}", library.stem()))?;
                lines.push(format!(
                    "{}: {} ({} symbols resolve)",
                    library.stem(),
                    resolved(&name, preparation),
                    library.symbols().len()
                ));
            }
            None => {
                missing.push(library.stem());
                lines.push(format!("{}: not found", library.stem()));
            }
        }
    }
    if let Ok((major, minor)) = Nvrtc::version() {
        lines.push(format!("NVRTC version {major}.{minor}"));
    }
    let detail = lines.join("; ");
    match (missing.is_empty(), required) {
        (true, _) => Ok(Done::pass(detail)),
        (false, true) => Err(format!("missing {missing:?}: {detail}")),
        (false, false) => Ok(Done::skip(format!(
            "missing {missing:?} (set EMBER_CUDA_LIB_DIRS or install NVIDIA's wheels): {detail}"
        ))),
    }
}

/// Every source under `kernels/cuda/` compiled for `arch` by NVRTC, each PTX holding its
/// entries; a broken source returning NVRTC's log; then the compile cache: every source
/// compiled into an empty cache, then loaded from it. Figures: cold compile and cache-hit
/// times.
pub(crate) fn check_nvrtc(arch: &str, required: bool) -> Outcome {
    let version = match Nvrtc::version() {
        Ok(version) => version,
        Err(KernelError::NoCuda { reason }) if !required => {
            return Ok(Done::skip(format!("no NVRTC here: {reason}")))
        }
        Err(error) => return Err(error.to_string()),
    };
    let options = registered_kernel_options();
    let request = |source: CudaSource| CompileRequest {
        source_name: source.file_name(),
        source: source.text(),
        options: &options,
        arch,
    };
    let mut entries = 0;
    for source in CudaSource::ALL {
        let ptx = Nvrtc
            .compile(&request(source))
            .map_err(|e| format!("{}: {e}", source.file_name()))?;
        let target = arch.replace("compute_", "sm_");
        if !ptx.contains(&format!(".target {target}")) {
            return Err(format!("{}: PTX is not for {target}", source.file_name()));
        }
        let count = ptx.matches(".visible .entry").count();
        if count == 0 {
            return Err(format!("{}: no entry in the PTX", source.file_name()));
        }
        entries += count;
    }
    let broken = "extern \"C\" __global__ void broken(float *x) { x[0] = undeclared_name; }";
    match Nvrtc.compile(&CompileRequest {
        source_name: "broken.cu",
        source: broken,
        options: &options,
        arch,
    }) {
        Err(KernelError::Compile { log, .. }) if log.contains("undeclared_name") => {}
        other => return Err(format!("a broken source gave {other:?}")),
    }

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cache = KernelCache::new(dir.path());
    let start = Instant::now();
    for source in CudaSource::ALL {
        let compiled = cache
            .get_or_compile(&Nvrtc, &request(source))
            .map_err(|e| e.to_string())?;
        if compiled.from_cache {
            return Err(format!("{} came from an empty cache", source.file_name()));
        }
    }
    let cold = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for source in CudaSource::ALL {
        let compiled = cache
            .get_or_compile(&Nvrtc, &request(source))
            .map_err(|e| e.to_string())?;
        if !compiled.from_cache {
            return Err(format!("{} was compiled again", source.file_name()));
        }
    }
    let hit = start.elapsed().as_secs_f64();
    Ok(Done::pass(format!(
        "NVRTC {}.{}: {} sources, {entries} entries for {arch}; a broken source returns the log",
        version.0,
        version.1,
        CudaSource::ALL.len()
    ))
    .with(vec![
        Metric::new(
            format!("NVRTC compile, all {} sources", CudaSource::ALL.len()),
            cold * 1e3,
            "ms",
        ),
        Metric::new("cache hit, all sources", hit * 1e3, "ms"),
    ]))
}
