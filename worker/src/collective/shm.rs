//! The same-machine path of a large allreduce: when every rank runs on this machine, each
//! maps every rank's segment of shared memory (`/dev/shm`) and the buffer moves through it a
//! block at a time, instead of crossing sockets `2(n−1)` times.
//!
//! **Blocks.** For each block of up to [`SLOT_BYTES`], every rank copies its input into a slot
//! of its own segment, reduces its share of the block (the block cut in `n`) from every
//! rank's slot, writes that share back into its slot, and copies the other ranks' reduced
//! shares out. A block is small enough that every rank's slots stay in the last-level cache,
//! so the buffer crosses main memory about once in and once out. Each rank has [`SLOTS`]
//! slots: it may fill the next block while slower peers still read the last one.
//!
//! **Synchronisation.** Each segment starts with a control page of counters that only its
//! rank writes (blocks filled, reduced, consumed); a rank waits for its peers' counters by
//! spinning briefly, then sleeping on a futex. No message crosses a socket during the
//! operation; the links of the group stay open so that a peer's death or a peer running a
//! different operation shows up on them (the caller's [`Check`]).
//!
//! **Same bits as the ring.** Each element is combined in the order the ring gives its
//! chunk: element `i` of ring chunk `c` (the ring's chunk layout over the whole buffer) is
//! `((x[c+1] ⊕ x[c+2]) ⊕ …) ⊕ x[c]`, and a mean divides at the end as the ring does. Which
//! rank computes an element does not change its value, so a group gets the same bits
//! whichever path it takes.
//!
//! **Lifetime.** Segments are made once per group generation; each file is unlinked as soon
//! as every peer has mapped it, so nothing is left behind when a process dies.

use std::fs::OpenOptions;
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ember_core::collective::schedule::{self, Order};
use ember_core::collective::ReduceOp;
use ember_core::proto::GroupView;
use memmap2::{MmapMut, MmapOptions};

use super::combiner::Combine;
use super::element::Element;
use super::engine::{jitter_pause, Failure};

/// Bytes of one slot, the most of a buffer that is in flight at once per rank. With two
/// slots per rank, 4 ranks keep 4 MiB in flight: well inside a last-level cache. (From
/// 256 KiB to 4 MiB the benchmark could not tell slot sizes apart on 2 cores.)
const SLOT_BYTES: usize = 512 << 10;

/// Slots per rank.
const SLOTS: usize = 2;

/// Bytes of the control page at the start of each segment.
const CONTROL_BYTES: usize = 4096;

/// The bytes of one rank's segment.
const SEGMENT_BYTES: usize = CONTROL_BYTES + SLOTS * SLOT_BYTES;

/// How long a waiting rank sleeps at most before it checks on its peers again.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// How many times a waiting rank looks before it sleeps. Kept short: ranks often outnumber
/// cores, and a spinning rank holds the core the rank it waits for needs (10,000 spins made
/// the 4-rank benchmark 4 times slower on 2 cores).
const SPINS: u32 = 32;

/// A counter alone on its cache line.
#[repr(C, align(64))]
struct Counter(AtomicU32);

/// The control page of one rank's segment. Only that rank writes it, except `waiters`.
#[repr(C)]
struct Control {
    /// Blocks whose input the rank has put into its slot.
    filled: Counter,
    /// Blocks whose share the rank has reduced into its slot.
    reduced: Counter,
    /// Blocks the rank has copied out of every slot (its slot may then be reused).
    consumed: Counter,
    /// Ranks asleep on one of these counters.
    waiters: Counter,
    /// Non-zero once the rank's operation failed: peers stop waiting for it.
    abort: Counter,
    /// The operation the rank is in (its number and signature), whichever path it takes.
    current: AtomicU64,
    /// What each slot holds: the operation's number and signature, compared between ranks.
    tags: [AtomicU64; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Control>() <= CONTROL_BYTES);

/// The three counters a block passes through.
#[derive(Clone, Copy, Debug)]
enum Stage {
    Filled,
    Reduced,
    Consumed,
}

impl Control {
    fn counter(&self, stage: Stage) -> &AtomicU32 {
        match stage {
            Stage::Filled => &self.filled.0,
            Stage::Reduced => &self.reduced.0,
            Stage::Consumed => &self.consumed.0,
        }
    }
}

/// Elements of `T` in one block (one slot's worth).
fn block_len<T>() -> usize {
    (SLOT_BYTES / std::mem::size_of::<T>()).max(1)
}

/// Whether a counter at `value` has reached `target`, counting modulo 2³² (blocks are
/// numbered for as long as a generation lives).
fn reached(value: u32, target: u32) -> bool {
    (value.wrapping_sub(target) as i32) >= 0
}

/// Every rank's segment, as this rank maps it, for one group generation.
pub(crate) struct Segments {
    rank: usize,
    /// Every rank's segment, this rank's own included.
    maps: Vec<MmapMut>,
    own: OwnSegment,
    /// Blocks moved in this generation so far: the number of the next block.
    blocks: u32,
    /// The operation under way and the number of the block after its last.
    op: Op,
}

/// An operation: its tag (number and signature) and where its blocks end.
#[derive(Clone, Copy, Default)]
struct Op {
    tag: u64,
    end: u32,
}

/// The operation number in a tag.
fn op_number(tag: u64) -> u32 {
    (tag >> 32) as u32
}

/// This rank's segment file, removed when dropped (if it was not already, once every peer
/// had mapped it).
pub(crate) struct OwnSegment {
    path: PathBuf,
}

impl Drop for OwnSegment {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The segment file of `rank`: unique to the cluster (by its token), the group, the
/// generation and the rank's actor incarnation.
fn path(cluster: u64, view: &GroupView, rank: usize) -> PathBuf {
    let m = &view.members[rank];
    let group = fnv(view.name.as_bytes());
    PathBuf::from(format!(
        "/dev/shm/ember-{cluster:016x}-{group:016x}-g{}-{}-i{}",
        view.generation, m.actor, m.incarnation
    ))
}

/// A 64-bit FNV-1a digest, for names.
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Creates this rank's segment file (zeroed, so every counter starts at 0).
pub(crate) fn create(cluster: u64, view: &GroupView, rank: usize) -> std::io::Result<OwnSegment> {
    let path = path(cluster, view, rank);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let own = OwnSegment { path };
    file.set_len(SEGMENT_BYTES as u64)?;
    Ok(own)
}

/// Maps every rank's segment once all of them exist.
pub(crate) fn map_all(
    cluster: u64,
    view: &GroupView,
    rank: usize,
    own: OwnSegment,
) -> std::io::Result<Segments> {
    let mut maps = Vec::with_capacity(view.members.len());
    for r in 0..view.members.len() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path(cluster, view, r))?;
        // SAFETY: the files are made by this group's ranks with mode 0600 and never
        // truncated. A rank writes only its own slots and control page, and reads a peer's
        // slot only between the counters that order those writes (see `allreduce`).
        let map = unsafe { MmapOptions::new().len(SEGMENT_BYTES).map_mut(&file)? };
        maps.push(map);
    }
    Ok(Segments {
        rank,
        maps,
        own,
        blocks: 0,
        op: Op::default(),
    })
}

/// What a waiting rank checks besides its peers' counters: its deadline, the head's view of
/// the group, its links. Called at least every [`WAIT_SLICE`] while it waits.
pub(crate) type Check<'a> = dyn FnMut() -> Result<(), Failure> + 'a;

impl Segments {
    /// Forgets this rank's segment file (every peer has mapped it): the memory lives on while
    /// mapped.
    pub(crate) fn unlink(&self) {
        let _ = std::fs::remove_file(&self.own.path);
    }

    /// Tells the peers which operation this rank is in (any operation of the generation, so
    /// that a rank waiting here can tell a peer that went on from one that never came).
    pub(crate) fn announce(&self, tag: u64) {
        self.control(self.rank).current.store(tag, Ordering::SeqCst);
    }

    fn control(&self, rank: usize) -> &Control {
        // SAFETY: every map is SEGMENT_BYTES long, page-aligned, and starts with the control
        // page, whose fields are atomics (any bit pattern is valid).
        unsafe { &*(self.maps[rank].as_ptr() as *const Control) }
    }

    /// Combines `buf` with every rank's, block by block. `tag` (the operation's number and
    /// signature) must match on every rank. On failure the peers are told to stop waiting.
    pub(crate) fn allreduce<T: Element>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
        tag: u64,
        jitter: Option<Duration>,
        check: &mut Check<'_>,
        combiner: &mut dyn Combine<T>,
    ) -> Result<(), Failure> {
        let blocks = buf.len().div_ceil(block_len::<T>());
        self.op = Op {
            tag,
            end: self.blocks.wrapping_add(blocks as u32),
        };
        self.announce(tag);
        let result = self.blocks_of(buf, op, jitter, check, combiner);
        if result.is_err() {
            let own = self.control(self.rank);
            own.abort.0.store(1, Ordering::SeqCst);
            for stage in [Stage::Filled, Stage::Reduced, Stage::Consumed] {
                wake(own.counter(stage));
            }
        }
        result
    }

    fn blocks_of<T: Element>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
        jitter: Option<Duration>,
        check: &mut Check<'_>,
        combiner: &mut dyn Combine<T>,
    ) -> Result<(), Failure> {
        let tag = self.op.tag;
        let n = self.maps.len();
        let me = self.rank;
        let size = std::mem::size_of::<T>();
        let per_block = block_len::<T>();
        let len = buf.len();
        let ring: Vec<Range<usize>> = (0..n).map(|c| schedule::chunk(len, n, c)).collect();
        let mut start = 0;
        while start < len {
            let end = (start + per_block).min(len);
            let block = self.blocks;
            self.blocks = block.wrapping_add(1);
            let slot = block as usize % SLOTS;
            let base = CONTROL_BYTES + slot * SLOT_BYTES;
            let share = |r: usize| {
                let s = schedule::chunk(end - start, n, r);
                start + s.start..start + s.end
            };
            let bytes =
                |r: Range<usize>| base + (r.start - start) * size..base + (r.end - start) * size;

            // The slot is free once every rank has consumed the block that used it before.
            let before = block.wrapping_add(1).wrapping_sub(SLOTS as u32);
            self.wait_all(Stage::Consumed, before, check)?;
            if let Some(max) = jitter {
                std::thread::sleep(jitter_pause(max));
            }
            let input = bytemuck::cast_slice(&buf[start..end]);
            self.own_mut(bytes(start..end)).copy_from_slice(input);
            self.control(me).tags[slot].store(tag, Ordering::Relaxed);
            self.publish(Stage::Filled, block.wrapping_add(1));

            // This rank's share, from every slot, in each element's ring order.
            self.wait_all(Stage::Filled, block.wrapping_add(1), check)?;
            for peer in (0..n).filter(|&p| p != me) {
                let theirs = self.control(peer).tags[slot].load(Ordering::Relaxed);
                if theirs != tag {
                    return Err(mismatch(peer, theirs, tag));
                }
            }
            let mine = share(me);
            for (c, chunk) in ring.iter().enumerate() {
                let part = mine.start.max(chunk.start)..mine.end.min(chunk.end);
                if part.is_empty() {
                    continue;
                }
                let dest = &mut buf[part.clone()];
                let from = |k: usize| cast::<T>(self.bytes_of((c + k) % n, bytes(part.clone())));
                dest.copy_from_slice(from(1));
                for k in 2..=n {
                    combiner.combine(op, Order::LocalFirst, dest, from(k))?;
                }
                if op == ReduceOp::Mean {
                    combiner.divide(dest, n)?;
                }
            }
            let reduced = bytemuck::cast_slice(&buf[mine.clone()]);
            self.own_mut(bytes(mine)).copy_from_slice(reduced);
            self.publish(Stage::Reduced, block.wrapping_add(1));

            // Every other rank's share.
            self.wait_all(Stage::Reduced, block.wrapping_add(1), check)?;
            for peer in (0..n).filter(|&p| p != me) {
                let theirs = share(peer);
                let from = cast::<T>(self.bytes_of(peer, bytes(theirs.clone())));
                buf[theirs].copy_from_slice(from);
            }
            self.publish(Stage::Consumed, block.wrapping_add(1));
            start = end;
        }
        Ok(())
    }

    /// Bytes `range` of `rank`'s segment. Only the range is borrowed: other processes write
    /// the rest of the mapping meanwhile.
    fn bytes_of(&self, rank: usize, range: Range<usize>) -> &[u8] {
        assert!(range.start <= range.end && range.end <= SEGMENT_BYTES);
        // SAFETY: in bounds (checked); the owner does not write this range until every rank
        // has passed the counter that follows this read.
        unsafe {
            std::slice::from_raw_parts(self.maps[rank].as_ptr().add(range.start), range.len())
        }
    }

    /// Bytes `range` of this rank's own segment, to write.
    fn own_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        assert!(range.start <= range.end && range.end <= SEGMENT_BYTES);
        let map = &mut self.maps[self.rank];
        // SAFETY: in bounds (checked); peers do not read this range until this rank publishes
        // the counter that follows this write.
        unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().add(range.start), range.len()) }
    }

    /// Sets this rank's `stage` counter to `value`, waking peers asleep on it.
    fn publish(&self, stage: Stage, value: u32) {
        let own = self.control(self.rank);
        own.counter(stage).store(value, Ordering::SeqCst);
        if own.waiters.0.load(Ordering::SeqCst) > 0 {
            wake(own.counter(stage));
        }
    }

    /// Waits until every other rank's `stage` counter has reached `target`.
    fn wait_all(&self, stage: Stage, target: u32, check: &mut Check<'_>) -> Result<(), Failure> {
        for peer in (0..self.maps.len()).filter(|&p| p != self.rank) {
            let theirs = self.control(peer);
            let counter = theirs.counter(stage);
            let mut spins = 0;
            loop {
                let value = counter.load(Ordering::Acquire);
                if reached(value, target) {
                    break;
                }
                if theirs.abort.0.load(Ordering::Relaxed) != 0 {
                    return Err(Failure::PeerFailed { peer: peer as u32 });
                }
                self.check_peer_op(peer)?;
                if spins < SPINS {
                    spins += 1;
                    std::hint::spin_loop();
                    continue;
                }
                theirs.waiters.0.fetch_add(1, Ordering::SeqCst);
                let value = counter.load(Ordering::SeqCst);
                if !reached(value, target) {
                    sleep_on(counter, value, WAIT_SLICE);
                }
                theirs.waiters.0.fetch_sub(1, Ordering::SeqCst);
                check()?;
            }
        }
        Ok(())
    }
}

impl Segments {
    /// Fails if `peer` is in another operation than this rank's under the same number, or
    /// went on to a later one without finishing this rank's (it called something else).
    fn check_peer_op(&self, peer: usize) -> Result<(), Failure> {
        let theirs = self.control(peer);
        let now = theirs.current.load(Ordering::SeqCst);
        let (mine, tag) = (op_number(self.op.tag), self.op.tag);
        let same = op_number(now) == mine;
        let went_on = !same
            && reached(op_number(now), mine)
            && !reached(theirs.consumed.0.load(Ordering::SeqCst), self.op.end);
        if (same && now != tag) || went_on {
            return Err(mismatch(peer, now, tag));
        }
        Ok(())
    }
}

/// Ranks that called different operations.
fn mismatch(peer: usize, theirs: u64, mine: u64) -> Failure {
    Failure::Mismatch {
        peer: peer as u32,
        reason: format!(
            "it runs operation {} (signature {:08x}) while this rank runs operation {} (signature \
             {:08x}) through shared memory: ranks must call the same operations, in the same \
             order, on buffers of the same type and length",
            op_number(theirs),
            theirs as u32,
            op_number(mine),
            mine as u32
        ),
    }
}

/// Sleeps until `word` is woken or no longer holds `seen`, or `timeout` passes.
#[cfg(target_os = "linux")]
fn sleep_on(word: &AtomicU32, seen: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT only reads the word, which lives as long as the mapping (borrowed
    // here); the timespec outlives the call. Shared (not private) futexes, since the word is
    // in memory shared between processes.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every rank asleep on `word`.
#[cfg(target_os = "linux")]
fn wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE does not touch the word's memory beyond its address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Without futexes, a waiting rank naps briefly instead.
#[cfg(not(target_os = "linux"))]
fn sleep_on(_word: &AtomicU32, _seen: u32, _timeout: Duration) {
    std::thread::sleep(Duration::from_micros(50));
}

#[cfg(not(target_os = "linux"))]
fn wake(_word: &AtomicU32) {}

/// Bytes of a segment as elements. Slots are page-aligned and offsets are multiples of the
/// element size, so the cast never fails.
fn cast<T: Element>(bytes: &[u8]) -> &[T] {
    bytemuck::cast_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::reached;

    #[test]
    fn counters_compare_across_wrapping() {
        assert!(reached(5, 5));
        assert!(reached(6, 5));
        assert!(!reached(4, 5));
        assert!(reached(2, u32::MAX));
        assert!(!reached(u32::MAX, 2));
        // The first blocks wait for "block -1", which every fresh counter has passed.
        assert!(reached(0, 1u32.wrapping_sub(2)));
    }
}
