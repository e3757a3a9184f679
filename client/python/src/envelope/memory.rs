//! The memory of large frames. Fresh pages cost more than the copy into them: the kernel
//! faults each in and zeroes it. So the memory of a large frame is advised for transparent
//! huge pages (a 512th of the faults), and when a large [`Envelope`] is dropped its memory is
//! kept for [`SPARE_KEEP`], one at a time, for the next frame of about its size, which then
//! only copies (as Ray's object store reuses its memory). `ember.put` of an 800 MB array:
//! 0.57 GB/s pickled in band into fresh memory, 13-14 GB/s here.

use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::Duration;

/// Allocations this large are advised for huge pages.
const HUGE_PAGE_MIN: usize = 4 << 20;

/// Envelopes at least this large keep their memory for the next put when dropped.
const SPARE_MIN: usize = 64 << 20;

/// How long a dropped envelope's memory waits for the next put before it is freed.
const SPARE_KEEP: Duration = Duration::from_secs(1);

/// A call's result or a put value's bytes, shared by every `get` of it and every call it
/// is an argument of. Dropped, a large one's memory is kept a moment
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
pub(crate) fn memory_for(len: usize) -> Vec<u8> {
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
