//! `ember.put` of a value with large buffers (numpy arrays' data): the package pickles it
//! with protocol 5, its large contiguous buffers out of band, and this module lays the
//! envelope out with those buffers after it, copying each once, straight from the exporting
//! object into memory held here. Pickled in band, the same value was copied into the
//! pickle's bytes and again into Rust's, both into fresh pages.
//!
//! Fresh pages cost more than the copy: the kernel faults each in and zeroes it. So the
//! memory of a large envelope is advised for transparent huge pages (a 512th of the faults),
//! and when a large envelope is dropped its memory is kept for [`SPARE_KEEP`], one at a
//! time, for the next put of about its size, which then only copies (as Ray's object store
//! reuses its memory).
//!
//! The layout (`ember._serialize` reads it back; all integers little-endian u64):
//!
//! ```text
//! MAGIC | header length | buffer count N | N buffer lengths | header (the pickle)
//! | padding to 64 bytes | buffer 0 | padding to 64 bytes | buffer 1 | ...
//! ```
//!
//! Offsets count from the envelope's start, so each buffer starts 64-byte aligned there.

use std::mem::MaybeUninit;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::Duration;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;

use crate::pending::Pending;

/// The first bytes of an envelope laid out by this module (a plain pickle starts `0x80`).
pub(crate) const MAGIC: &[u8; 8] = b"EMBOOB01";

/// Where each buffer starts: a multiple of this from the envelope's start.
const ALIGN: usize = 64;

/// Allocations this large are advised for huge pages.
const HUGE_PAGE_MIN: usize = 4 << 20;

/// Envelopes at least this large keep their memory for the next put when dropped.
const SPARE_MIN: usize = 64 << 20;

/// How long a dropped envelope's memory waits for the next put before it is freed.
const SPARE_KEEP: Duration = Duration::from_secs(1);

/// A call's result or a put value's bytes. Dropped, a large one's memory is kept a moment
/// for the next put ([`SPARE_KEEP`]).
#[derive(Debug)]
pub(crate) struct Envelope(Vec<u8>);

impl From<Vec<u8>> for Envelope {
    fn from(bytes: Vec<u8>) -> Self {
        Envelope(bytes)
    }
}

impl Deref for Envelope {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        if self.0.capacity() >= SPARE_MIN {
            keep_spare(std::mem::take(&mut self.0));
        }
    }
}

/// The memory kept from the last large envelope dropped, and how many were kept so far
/// (the reaper frees one only if no other came after it).
struct Spare {
    memory: Option<Vec<u8>>,
    kept: u64,
}

static SPARE: (Mutex<Spare>, Condvar) = (
    Mutex::new(Spare {
        memory: None,
        kept: 0,
    }),
    Condvar::new(),
);

/// The process whose thread frees kept memory (a forked child has no such thread).
static REAPER_PID: AtomicU32 = AtomicU32::new(0);
static REAPER: Once = Once::new();

fn spare() -> MutexGuard<'static, Spare> {
    SPARE.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps `memory` for the next put, freeing what was kept before; frees it at once where
/// no thread of this process would free it later.
fn keep_spare(memory: Vec<u8>) {
    REAPER.call_once(|| {
        let started = std::thread::Builder::new()
            .name("ember-spare".into())
            .spawn(reap);
        if started.is_ok() {
            REAPER_PID.store(std::process::id(), Ordering::Release);
        }
    });
    if REAPER_PID.load(Ordering::Acquire) != std::process::id() {
        return;
    }
    let before = {
        let mut s = spare();
        s.kept += 1;
        s.memory.replace(memory)
    };
    SPARE.1.notify_one();
    drop(before);
}

/// Memory for an envelope of `len` bytes, empty: the kept memory when it fits without
/// wasting more than half, else new memory advised for huge pages.
fn memory_for(len: usize) -> Vec<u8> {
    let kept = {
        let mut s = spare();
        match &s.memory {
            Some(m) if m.capacity() >= len && m.capacity() / 2 <= len => s.memory.take(),
            _ => None,
        }
    };
    match kept {
        Some(mut m) => {
            m.clear();
            m
        }
        None => {
            let mut m = Vec::with_capacity(len);
            advise_huge_pages(&mut m);
            m
        }
    }
}

/// The reaper thread: frees kept memory that no put took within [`SPARE_KEEP`].
fn reap() {
    let (lock, cv) = &SPARE;
    let mut s = spare();
    loop {
        if s.memory.is_none() {
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        let kept = s.kept;
        let (guard, waited) = cv
            .wait_timeout_while(s, SPARE_KEEP, |s| s.kept == kept && s.memory.is_some())
            .unwrap_or_else(|p| p.into_inner());
        s = guard;
        if waited.timed_out() {
            let memory = s.memory.take();
            drop(s);
            drop(memory);
            s = lock.lock().unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Whether `bytes` is an envelope laid out by this module.
pub(crate) fn is_out_of_band(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Asks the kernel for transparent huge pages under `v`'s spare capacity, before anything
/// touches it. Only advice: where they are not available, small pages serve as before.
fn advise_huge_pages(v: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    if v.capacity() < HUGE_PAGE_MIN {
        return;
    }
    let start = v.as_ptr() as usize;
    let end = start + v.capacity();
    let (from, to) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if to > from {
        // SAFETY: [from, to) lies inside `v`'s allocation; MADV_HUGEPAGE changes how its
        // pages are backed, never their contents.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
        }
    }
}

/// A call already ended with the value whose protocol-5 pickle is `header` and whose
/// out-of-band buffers are `buffers` (contiguous, in the order the pickle names them): what
/// `ember.put` makes of a value with large buffers. The copy runs with the GIL released.
#[pyfunction]
fn completed_out_of_band(
    py: Python<'_>,
    header: &[u8],
    buffers: Vec<PyBuffer<u8>>,
) -> PyResult<Pending> {
    if let Some(b) = buffers
        .iter()
        .find(|b| !b.is_c_contiguous() && !b.is_fortran_contiguous())
    {
        return Err(pyo3::exceptions::PyBufferError::new_err(format!(
            "a buffer of {} bytes is not contiguous",
            b.len_bytes()
        )));
    }
    let lengths: Vec<usize> = buffers.iter().map(|b| b.len_bytes()).collect();
    let mut prefix = Vec::with_capacity(24 + 8 * lengths.len() + header.len());
    prefix.extend_from_slice(MAGIC);
    prefix.extend_from_slice(&(header.len() as u64).to_le_bytes());
    prefix.extend_from_slice(&(lengths.len() as u64).to_le_bytes());
    for n in &lengths {
        prefix.extend_from_slice(&(*n as u64).to_le_bytes());
    }
    prefix.extend_from_slice(header);
    let total = align_up(prefix.len()) + lengths.iter().map(|&n| align_up(n)).sum::<usize>();

    let envelope = py.detach(|| {
        let mut out = memory_for(total);
        out.extend_from_slice(&prefix);
        for buffer in &buffers {
            out.resize(align_up(out.len()), 0);
            let spare = &mut out.spare_capacity_mut()[..buffer.len_bytes()];
            // SAFETY: the buffer is contiguous (checked above) and `len_bytes` long, and its
            // exporter stays alive while `buffers` holds it; it is only read here.
            let src = unsafe {
                std::slice::from_raw_parts(
                    buffer.buf_ptr() as *const MaybeUninit<u8>,
                    buffer.len_bytes(),
                )
            };
            spare.copy_from_slice(src);
            // SAFETY: the bytes up to here were just written.
            unsafe { out.set_len(out.len() + buffer.len_bytes()) };
        }
        out.resize(total, 0);
        out
    });
    Ok(Pending::ended_with(envelope))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(completed_out_of_band, m)?)?;
    Ok(())
}
