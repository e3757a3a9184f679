//! How a Python value's bytes travel: a plain pickle, or a frame of a protocol-5 pickle and
//! its out-of-band buffers (numpy arrays' data), each inline or in a shared-memory file.
//! `ember._serialize` makes the pickle and reads the frame back; the frame itself is written
//! here, once, for results and puts alike.
//!
//! - [`frame`]: the layout, read and written.
//! - [`memory`]: the memory large frames are written into (huge pages, reused).
//! - [`shared`]: the shared-memory files a frame names, owned by the process receiving it.
//! - [`by_host`]: a value's bytes for a destination on this machine or elsewhere.

mod by_host;
mod frame;
mod memory;
mod shared;

use std::sync::Mutex;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

pub(crate) use by_host::HostForms;
pub(crate) use frame::is_framed;
pub(crate) use memory::Envelope;
pub(crate) use shared::{release_all, sweep_orphans, SharedFiles};

use frame::Part;

/// A frame written for Python: what `ember._ember.frame` returns, taken once (by `completed`
/// for a put, or by the executor for a result) without another copy.
#[pyclass(frozen, module = "ember._ember")]
pub(crate) struct Frame(Mutex<Option<Vec<u8>>>);

impl Frame {
    /// The frame's bytes; an error when they were taken already.
    pub(crate) fn take(&self) -> PyResult<Vec<u8>> {
        self.0
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .ok_or_else(|| pyo3::exceptions::PyValueError::new_err("this frame was used already"))
    }
}

/// One out-of-band buffer as Python hands it: its bytes (any contiguous buffer), or a
/// shared-memory file as `(length, name)`.
enum Given {
    Inline(PyBuffer<u8>),
    Shared(u64, String),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Given {
    type Error = PyErr;

    fn extract(ob: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(t) = ob.cast::<PyTuple>() {
            let (len, name): (u64, String) = t.extract()?;
            return Ok(Given::Shared(len, name));
        }
        let buffer = PyBuffer::<u8>::get(&ob)?;
        if !buffer.is_c_contiguous() && !buffer.is_fortran_contiguous() {
            return Err(pyo3::exceptions::PyBufferError::new_err(format!(
                "a buffer of {} bytes is not contiguous",
                buffer.len_bytes()
            )));
        }
        Ok(Given::Inline(buffer))
    }
}

/// The frame of `pickle` and its out-of-band `buffers` (in the order the pickle names
/// them), written with the GIL released, each inline buffer copied once; `actors` are the
/// ids of the actors whose handles the pickle holds (whoever receives the frame holds them
/// while it has it).
#[pyfunction(name = "frame")]
#[pyo3(signature = (pickle, buffers, actors=Vec::new()))]
fn write_frame(py: Python<'_>, pickle: &[u8], buffers: Vec<Given>, actors: Vec<String>) -> Frame {
    let parts: Vec<Part<'_>> = buffers
        .iter()
        .map(|b| match b {
            Given::Inline(buffer) => {
                // SAFETY: the buffer is contiguous (checked when it was taken) and
                // `len_bytes` long, and its exporter stays alive, unchanged by this thread,
                // while `buffers` holds it; it is only read here.
                Part::Inline(unsafe {
                    std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes())
                })
            }
            Given::Shared(len, name) => Part::Shared { len: *len, name },
        })
        .collect();
    let actors: Vec<&str> = actors.iter().map(String::as_str).collect();
    let bytes = py.detach(|| frame::write(pickle, &parts, &actors));
    Frame(Mutex::new(Some(bytes)))
}

/// The bytes of what Python made of a value: a [`Frame`] (taken, not copied) or a plain
/// pickle's bytes (copied).
pub(crate) fn bytes_of(value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    match value.cast::<Frame>() {
        Ok(frame) => frame.get().take(),
        Err(_) => Ok(value.extract::<&[u8]>()?.to_vec()),
    }
}

/// The actors whose handles the pickle of `bytes` holds (none for a plain pickle); an id
/// that does not parse is left out (its handle fails, saying so, when unpickled).
pub(crate) fn actors_of(bytes: &[u8]) -> Vec<ember::ActorId> {
    frame::parse(bytes)
        .map(|parsed| {
            parsed
                .actor_ids(bytes)
                .into_iter()
                .filter_map(|id| id.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The shared-memory files `bytes` names, owned from now on (removed when dropped). A frame
/// naming a file outside the shared-memory directory owns nothing: reading it fails later,
/// saying so.
pub(crate) fn own_files(bytes: &[u8]) -> SharedFiles {
    let files = frame::parse(bytes)
        .and_then(|parsed| shared::files_of(bytes, &parsed).ok())
        .unwrap_or_default();
    SharedFiles::own(files)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Frame>()?;
    m.add_function(wrap_pyfunction!(write_frame, m)?)?;
    Ok(())
}
