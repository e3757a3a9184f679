//! Is CUDA here? Checks for the shared libraries before cudarc touches them.
//!
//! cudarc loads `libcuda`, `libnvrtc` and `libcublas` on first use and panics when one is
//! missing. Every CUDA path in this crate first asks [`require`] (a `dlopen` probe, cached),
//! and runs the cudarc calls themselves inside [`guarded`], which turns a panic that slips
//! through (a driver too old for a symbol, say) into a [`KernelError`].

use crate::KernelError;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

/// A CUDA shared library this crate loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CudaLibrary {
    /// `libcuda`, the driver.
    Driver,
    /// `libnvrtc`, the run-time compiler.
    Nvrtc,
    /// `libcublas`.
    Cublas,
}

impl CudaLibrary {
    fn file_stem(self) -> &'static str {
        match self {
            CudaLibrary::Driver => "libcuda",
            CudaLibrary::Nvrtc => "libnvrtc",
            CudaLibrary::Cublas => "libcublas",
        }
    }

    fn probe(self) -> bool {
        let probe = || match self {
            // SAFETY: each probe only tries `dlopen` on the library's candidate names and
            // drops what it opened; no symbol is called.
            CudaLibrary::Driver => unsafe { cudarc::driver::sys::is_culib_present() },
            // SAFETY: as above.
            CudaLibrary::Nvrtc => unsafe { cudarc::nvrtc::sys::is_culib_present() },
            // SAFETY: as above.
            CudaLibrary::Cublas => unsafe { cudarc::cublas::sys::is_culib_present() },
        };
        catch_unwind(probe).unwrap_or(false)
    }

    fn present(self) -> bool {
        static DRIVER: OnceLock<bool> = OnceLock::new();
        static NVRTC: OnceLock<bool> = OnceLock::new();
        static CUBLAS: OnceLock<bool> = OnceLock::new();
        let cell = match self {
            CudaLibrary::Driver => &DRIVER,
            CudaLibrary::Nvrtc => &NVRTC,
            CudaLibrary::Cublas => &CUBLAS,
        };
        *cell.get_or_init(|| self.probe())
    }
}

/// `Ok` when `library` can be loaded, else [`KernelError::NoCuda`] naming it.
pub(crate) fn require(library: CudaLibrary) -> Result<(), KernelError> {
    if library.present() {
        Ok(())
    } else {
        Err(KernelError::NoCuda {
            reason: format!(
                "{} (CUDA 12.x) could not be loaded; is the NVIDIA driver / CUDA toolkit installed \
                 and on the library path?",
                library.file_stem()
            ),
        })
    }
}

/// Runs `call` (cudarc calls), turning a panic inside it into [`KernelError::Cuda`].
pub(crate) fn guarded<T>(
    operation: &'static str,
    call: impl FnOnce() -> Result<T, KernelError>,
) -> Result<T, KernelError> {
    catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        Err(KernelError::Cuda {
            operation,
            message: format!("cudarc panicked: {message}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_guarded_is_an_error() {
        let result: Result<(), KernelError> = guarded("test call", || panic!("symbol not found"));
        assert_eq!(
            result,
            Err(KernelError::Cuda {
                operation: "test call",
                message: "cudarc panicked: symbol not found".to_owned(),
            })
        );
        assert_eq!(guarded("ok call", || Ok(3)), Ok(3));
    }

    #[test]
    fn require_never_panics_and_names_the_library() {
        for library in [CudaLibrary::Driver, CudaLibrary::Nvrtc, CudaLibrary::Cublas] {
            match require(library) {
                Ok(()) => assert!(library.present()),
                Err(KernelError::NoCuda { reason }) => {
                    assert!(reason.contains(library.file_stem()), "{reason}")
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
}
