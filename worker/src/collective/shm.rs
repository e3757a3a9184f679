//! The same-machine path of a large allreduce: when every rank runs on this machine, each
//! maps every rank's segment of shared memory (`/dev/shm`), so the data is copied once in,
//! reduced straight from the peers' segments and copied once out, instead of crossing sockets
//! `2(n−1)` times. The links carry only the two barriers of each operation.
//!
//! **Same bits as the ring.** Rank `c` reduces chunk `c` in the ring's order,
//! `((x[c+1] ⊕ x[c+2]) ⊕ …) ⊕ x[c]`, with the ring's chunk layout, and a mean divides at the
//! end as the ring does: a group gets the same bits whichever path it takes.
//!
//! **Layout.** Each rank's segment holds two halves of `capacity` bytes; consecutive shared-
//! memory operations alternate halves, so a rank may start writing the next operation's input
//! while a slower peer still copies the previous result out (it cannot start the one after
//! without passing the next operation's first barrier, which waits for every peer). A segment
//! grows (as a new file, an epoch later) when a larger buffer comes; its file is unlinked as
//! soon as every peer has mapped it, so nothing is left behind when a process dies.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use ember_runtime::collective::schedule::{self, Order};
use ember_runtime::collective::ReduceOp;
use ember_runtime::proto::GroupView;
use memmap2::{Mmap, MmapMut, MmapOptions};

use super::element::{divide, reduce, Element};

/// Elements reduced at a time, so that the partial result stays in cache.
const BLOCK_BYTES: usize = 64 << 10;

/// This rank's mapping of every rank's segment for one group generation.
pub(crate) struct Segments {
    /// Bytes in each half.
    capacity: usize,
    /// Counts the segment files made in this generation.
    epoch: u32,
    /// Shared-memory operations done with these segments (their parity picks the half).
    ops: u64,
    own: OwnSegment,
    /// Every rank's segment (this rank's own included, as another mapping of the same file).
    peers: Vec<Mmap>,
}

/// This rank's segment, writable; its file is removed when it is dropped (if it was not
/// already, once every peer had mapped it).
pub(crate) struct OwnSegment {
    map: MmapMut,
    path: PathBuf,
}

impl Drop for OwnSegment {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The segment file of `rank` at `epoch`: unique to the cluster (by its token), the group,
/// the generation and the rank's actor incarnation.
fn path(cluster: u64, view: &GroupView, epoch: u32, rank: usize) -> PathBuf {
    let m = &view.members[rank];
    let group = fnv(view.name.as_bytes());
    PathBuf::from(format!(
        "/dev/shm/ember-{cluster:016x}-{group:016x}-g{}-e{epoch}-{}-i{}",
        view.generation, m.actor, m.incarnation
    ))
}

/// A 64-bit FNV-1a digest, for names.
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Creates this rank's segment file for `epoch`, sized for two halves of `capacity` bytes.
pub(crate) fn create(
    cluster: u64,
    view: &GroupView,
    rank: usize,
    epoch: u32,
    capacity: usize,
) -> std::io::Result<OwnSegment> {
    let own_path = path(cluster, view, epoch, rank);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&own_path)?;
    file.set_len(2 * capacity as u64)?;
    // SAFETY: the file was just created by this process with mode 0600; peers map it only
    // to read it between barriers, and it is never truncated while mapped.
    let map = unsafe { MmapMut::map_mut(&file)? };
    Ok(OwnSegment {
        map,
        path: own_path,
    })
}

/// Maps every rank's segment of `epoch` once all of them exist.
pub(crate) fn map_all(
    cluster: u64,
    view: &GroupView,
    epoch: u32,
    capacity: usize,
    own: OwnSegment,
) -> std::io::Result<Segments> {
    let mut peers = Vec::with_capacity(view.members.len());
    for rank in 0..view.members.len() {
        let p = path(cluster, view, epoch, rank);
        let file = OpenOptions::new().read(true).open(&p)?;
        // SAFETY: as in `create`; this mapping is only read, between barriers.
        let map = unsafe { MmapOptions::new().len(2 * capacity).map(&file)? };
        peers.push(map);
    }
    Ok(Segments {
        capacity,
        epoch,
        ops: 0,
        own,
        peers,
    })
}

/// The capacity (bytes per half) for a buffer of `bytes`.
pub(crate) fn capacity_for(bytes: usize) -> usize {
    bytes.next_power_of_two().max(1 << 20)
}

impl Segments {
    /// Whether a buffer of `bytes` fits.
    pub(crate) fn fits(&self, bytes: usize) -> bool {
        bytes <= self.capacity
    }

    /// The epoch of these segments.
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Forgets the segment file (every peer has mapped it): the memory lives on while mapped.
    pub(crate) fn unlink(&self) {
        let _ = std::fs::remove_file(&self.own.path);
    }

    /// Starts an operation: the offset of its half.
    pub(crate) fn begin(&mut self) -> usize {
        let half = (self.ops % 2) as usize;
        self.ops += 1;
        half * self.capacity
    }

    /// Copies this rank's input into its segment (before the first barrier).
    pub(crate) fn put<T: Element>(&mut self, offset: usize, buf: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(buf);
        self.own.map[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Reduces this rank's chunk from every segment into `buf`, in the ring's order, and
    /// publishes it in this rank's segment (between the barriers).
    pub(crate) fn reduce_own_chunk<T: Element>(
        &mut self,
        offset: usize,
        buf: &mut [T],
        rank: usize,
        op: ReduceOp,
    ) {
        let n = self.peers.len();
        let chunk = schedule::chunk(buf.len(), n, rank);
        let size = std::mem::size_of::<T>();
        let block = (BLOCK_BYTES / size).max(1);
        let mut start = chunk.start;
        while start < chunk.end {
            let end = (start + block).min(chunk.end);
            let bytes = offset + start * size..offset + end * size;
            let dest = &mut buf[start..end];
            // Starting after this rank, around the ring, ending with this rank.
            let first = &self.peers[(rank + 1) % n][bytes.clone()];
            dest.copy_from_slice(cast(first));
            for k in 2..=n {
                let x = &self.peers[(rank + k) % n][bytes.clone()];
                reduce(op, Order::LocalFirst, dest, cast(x));
            }
            if op == ReduceOp::Mean {
                divide(dest, n);
            }
            self.own.map[bytes].copy_from_slice(bytemuck::cast_slice(dest));
            start = end;
        }
    }

    /// Copies every other rank's reduced chunk into `buf` (after the second barrier).
    pub(crate) fn gather<T: Element>(&self, offset: usize, buf: &mut [T], rank: usize) {
        let n = self.peers.len();
        let size = std::mem::size_of::<T>();
        for (j, seg) in self.peers.iter().enumerate() {
            if j == rank {
                continue;
            }
            let chunk = schedule::chunk(buf.len(), n, j);
            let bytes = &seg[offset + chunk.start * size..offset + chunk.end * size];
            buf[chunk].copy_from_slice(cast(bytes));
        }
    }
}

/// Bytes of a segment as elements. Segments are page-aligned and offsets are multiples of the
/// element size, so the cast never fails.
fn cast<T: Element>(bytes: &[u8]) -> &[T] {
    bytemuck::cast_slice(bytes)
}
