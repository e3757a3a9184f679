//! Carries out one rank's [`Plan`] on its buffer over its links: the sends and the receive of a
//! step run at the same time, each transfer cut into segments so that the network and the
//! combining overlap. Nothing here chooses what is combined with what: the plan does.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use ember_core::collective::schedule::{Action, Arrival, Plan, Receive, Transfer};
use ember_core::collective::ReduceOp;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use rand::Rng;

use super::combiner::Combine;
use super::element::Element;
use super::link::{recv_segment, send_segment, Link, RecvError, Tag, Tx, SEGMENT_BYTES};

/// Why an operation stopped on this rank.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// The link to this rank broke or closed.
    #[error("the link to rank {peer} broke: {reason}")]
    Link {
        /// The peer.
        peer: u32,
        /// What happened.
        reason: String,
    },
    /// The peer sent something this rank did not expect.
    #[error("rank {peer} disagrees: {reason}")]
    Mismatch {
        /// The peer.
        peer: u32,
        /// What differed.
        reason: String,
    },
    /// The peer's part of a shared-memory operation failed.
    #[error("rank {peer} failed its part of the operation")]
    PeerFailed {
        /// The peer.
        peer: u32,
    },
    /// The head says the generation is broken (it already knows why).
    #[error("{0}")]
    Head(String),
    /// The device combining this rank's buffer refused.
    #[error("the device failed: {0}")]
    Device(String),
    /// Shared memory could not be set up.
    #[error("shared memory between the ranks on this machine failed: {0}")]
    SharedMemory(String),
    /// The other ranks did not come within the operation's timeout.
    #[error("timed out after {0:?} waiting for the other ranks")]
    Timeout(Duration),
}

impl Failure {
    /// The rank whose link broke, for the head to check.
    pub(crate) fn suspect(&self) -> Option<u32> {
        match self {
            Failure::Link { peer, .. } => Some(*peer),
            _ => None,
        }
    }
}

/// What an operation needs besides its plan and buffer.
pub(crate) struct Run<'a> {
    /// The operation's number and signature.
    pub(crate) op: u64,
    pub(crate) signature: u32,
    /// How received values are combined.
    pub(crate) reduce: ReduceOp,
    /// The group's size (for means).
    pub(crate) size: usize,
    /// A random pause of up to this long before each segment is sent (tests only).
    pub(crate) jitter: Option<Duration>,
    /// Makes timers on the runtime that drives the links.
    pub(crate) sleep: &'a (dyn Fn(Duration) -> tokio::time::Sleep + Sync),
}

impl Run<'_> {
    /// The operation's number and signature in one word (as shared memory holds them).
    pub(crate) fn tag(&self) -> u64 {
        (self.op << 32) | u64::from(self.signature)
    }
}

/// Elements per segment.
fn segment_len<T>() -> usize {
    (SEGMENT_BYTES / std::mem::size_of::<T>()).max(1)
}

/// The pieces a transfer of `len` elements is cut into (one, possibly empty, at least).
fn segments(len: usize, seg: usize) -> impl Iterator<Item = Range<usize>> {
    let count = len.div_ceil(seg).max(1);
    (0..count).map(move |i| (i * seg).min(len)..((i + 1) * seg).min(len))
}

/// Runs `plan` on `buf`, combining with `combiner`. `links` holds a link to every peer the
/// plan names.
pub(crate) async fn execute<T: Element>(
    plan: &Plan,
    buf: &mut [T],
    links: &mut HashMap<u32, Link>,
    run: &Run<'_>,
    combiner: &mut dyn Combine<T>,
) -> Result<(), Failure> {
    let mut scratch: Vec<T> = Vec::new();
    let tag = Tag {
        op: run.op,
        signature: run.signature,
    };
    for action in &plan.actions {
        match action {
            Action::Exchange { sends, recv } => {
                let step = Step {
                    links: &mut *links,
                    tag,
                    run,
                    scratch: &mut scratch,
                    combiner: &mut *combiner,
                };
                exchange(buf, sends, recv.as_ref(), step).await?
            }
            Action::Relay { from, to, range } => {
                relay(
                    &mut buf[range.clone()],
                    *from as u32,
                    *to as u32,
                    links,
                    tag,
                    run,
                )
                .await?
            }
            Action::Scale { range } => combiner.divide(&mut buf[range.clone()], run.size)?,
        }
    }
    Ok(())
}

/// What a step of the plan works with besides the buffer.
struct Step<'s, 'r, T> {
    links: &'s mut HashMap<u32, Link>,
    tag: Tag,
    run: &'s Run<'r>,
    scratch: &'s mut Vec<T>,
    combiner: &'s mut dyn Combine<T>,
}

/// The sends (from the buffer as it is) and the receive of one step, at once.
async fn exchange<T: Element>(
    buf: &mut [T],
    sends: &[Transfer],
    recv: Option<&Receive>,
    step: Step<'_, '_, T>,
) -> Result<(), Failure> {
    let Step {
        links,
        tag,
        run,
        scratch,
        combiner,
    } = step;
    let recv_peer = recv.map(|r| r.transfer.peer as u32);
    let mut txs: Vec<(u32, &mut Tx)> = Vec::new();
    let mut rx = None;
    for link in links.values_mut() {
        let Link {
            peer, tx, rx: r, ..
        } = link;
        if sends.iter().any(|s| s.peer as u32 == *peer) {
            txs.push((*peer, tx));
        }
        if recv_peer == Some(*peer) {
            rx = Some(r);
        }
    }
    let Some(recv) = recv else {
        send_all(buf, sends, &mut txs, tag, run).await?;
        return Ok(());
    };
    let rx = rx.expect("a link to every peer of the plan");
    let target = recv.transfer.range.clone();
    match split(buf, &target, sends) {
        Some((into, views)) => {
            let sending = send_views(&views, sends, &mut txs, tag, run);
            let receiving = receive(rx, into, recv, tag, run, scratch, combiner);
            let (sent, received) = futures::join!(sending, receiving);
            sent?;
            received
        }
        None => {
            // The receive overlaps what is sent: receive aside, combine after the sends.
            let mut incoming = vec![T::zeroed(); target.len()];
            let copy = Receive {
                transfer: recv.transfer.clone(),
                arrival: Arrival::Copy,
            };
            {
                let sending = send_all(buf, sends, &mut txs, tag, run);
                let receiving = receive(rx, &mut incoming, &copy, tag, run, scratch, combiner);
                let (sent, received) = futures::join!(sending, receiving);
                sent?;
                received?;
            }
            match recv.arrival {
                Arrival::Copy => buf[target].copy_from_slice(&incoming),
                Arrival::Reduce(order) => {
                    combiner.combine(run.reduce, order, &mut buf[target], &incoming)?
                }
            }
            Ok(())
        }
    }
}

/// The receive target and the send ranges as separate borrows, when they do not overlap.
fn split<'a, T>(
    buf: &'a mut [T],
    target: &Range<usize>,
    sends: &[Transfer],
) -> Option<(&'a mut [T], Vec<&'a [T]>)> {
    let (before, rest) = buf.split_at_mut(target.start);
    let (into, after) = rest.split_at_mut(target.len());
    let (before, after): (&'a [T], &'a [T]) = (before, after);
    let mut views = Vec::with_capacity(sends.len());
    for s in sends {
        let r = &s.range;
        if r.end <= target.start {
            views.push(&before[r.clone()]);
        } else if r.start >= target.end {
            views.push(&after[r.start - target.end..r.end - target.end]);
        } else {
            return None;
        }
    }
    Some((into, views))
}

async fn send_all<T: Element>(
    buf: &[T],
    sends: &[Transfer],
    txs: &mut [(u32, &mut Tx)],
    tag: Tag,
    run: &Run<'_>,
) -> Result<(), Failure> {
    let views: Vec<&[T]> = sends.iter().map(|s| &buf[s.range.clone()]).collect();
    send_views(&views, sends, txs, tag, run).await
}

/// Sends each view to its peer, all at once.
async fn send_views<T: Element>(
    views: &[&[T]],
    sends: &[Transfer],
    txs: &mut [(u32, &mut Tx)],
    tag: Tag,
    run: &Run<'_>,
) -> Result<(), Failure> {
    let mut jobs = Vec::with_capacity(sends.len());
    for (peer, tx) in txs.iter_mut() {
        let Some(i) = sends.iter().position(|s| s.peer as u32 == *peer) else {
            continue;
        };
        let data = views[i];
        let peer = *peer;
        jobs.push(async move {
            for seg in segments(data.len(), segment_len::<T>()) {
                pause(run).await;
                send_segment(tx, tag, bytemuck::cast_slice(&data[seg]))
                    .await
                    .map_err(|e| Failure::Link {
                        peer,
                        reason: e.to_string(),
                    })?;
            }
            Ok::<(), Failure>(())
        });
    }
    for r in futures::future::join_all(jobs).await {
        r?;
    }
    Ok(())
}

/// Receives into `into`, segment by segment, copying or combining each as it arrives.
async fn receive<T: Element>(
    rx: &mut super::link::Rx,
    into: &mut [T],
    recv: &Receive,
    tag: Tag,
    run: &Run<'_>,
    scratch: &mut Vec<T>,
    combiner: &mut dyn Combine<T>,
) -> Result<(), Failure> {
    let peer = recv.transfer.peer as u32;
    let seg = segment_len::<T>();
    for r in segments(into.len(), seg) {
        let target = &mut into[r];
        match recv.arrival {
            Arrival::Copy => recv_segment(rx, tag, bytemuck::cast_slice_mut(target))
                .await
                .map_err(|e| failure(peer, e))?,
            Arrival::Reduce(order) => {
                scratch.resize(target.len(), T::zeroed());
                recv_segment(rx, tag, bytemuck::cast_slice_mut(scratch))
                    .await
                    .map_err(|e| failure(peer, e))?;
                combiner.combine(run.reduce, order, target, scratch)?;
            }
        }
    }
    Ok(())
}

/// Receives `range` from `from` and passes each segment on to `to` as soon as it is in.
async fn relay<T: Element>(
    buf: &mut [T],
    from: u32,
    to: u32,
    links: &mut HashMap<u32, Link>,
    tag: Tag,
    run: &Run<'_>,
) -> Result<(), Failure> {
    let mut rx = None;
    let mut tx = None;
    for link in links.values_mut() {
        let Link {
            peer, tx: t, rx: r, ..
        } = link;
        if *peer == from {
            rx = Some(r);
        }
        if *peer == to {
            tx = Some(t);
        }
    }
    let (Some(rx), Some(tx)) = (rx, tx) else {
        unreachable!("a link to every peer of the plan");
    };
    let seg = segment_len::<T>();
    let (mut ready, mut arrived) = mpsc::unbounded::<&[T]>();
    let receiving = async move {
        let mut rest = buf;
        let len = rest.len();
        for r in segments(len, seg) {
            let (piece, tail) = rest.split_at_mut(r.len());
            rest = tail;
            recv_segment(rx, tag, bytemuck::cast_slice_mut(piece))
                .await
                .map_err(|e| failure(from, e))?;
            let _ = ready.send(piece).await;
        }
        Ok::<(), Failure>(())
    };
    let sending = async move {
        while let Some(piece) = arrived.next().await {
            pause(run).await;
            send_segment(tx, tag, bytemuck::cast_slice(piece))
                .await
                .map_err(|e| Failure::Link {
                    peer: to,
                    reason: e.to_string(),
                })?;
        }
        Ok::<(), Failure>(())
    };
    let (received, sent) = futures::join!(receiving, sending);
    received?;
    sent
}

fn failure(peer: u32, e: RecvError) -> Failure {
    match e {
        RecvError::Io(e) => Failure::Link {
            peer,
            reason: if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "it closed the link (it failed, or left the operation)".into()
            } else {
                e.to_string()
            },
        },
        RecvError::Mismatch(reason) => Failure::Mismatch { peer, reason },
    }
}

/// The injected pause before a segment, when testing with jitter.
async fn pause(run: &Run<'_>) {
    if let Some(max) = run.jitter {
        (run.sleep)(jitter_pause(max)).await;
    }
}

/// A random pause of up to `max` (whole microseconds), for tests that inject jitter.
pub(crate) fn jitter_pause(max: Duration) -> Duration {
    Duration::from_micros(rand::thread_rng().gen_range(0..=max.as_micros() as u64))
}
