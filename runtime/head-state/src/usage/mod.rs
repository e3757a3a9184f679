//! Usage accounting, as a pure ledger: who held what, on which node, for how long, and at
//! what price. No I/O and no clock: the head passes the time in, as to everything else.
//!
//! **Records.** The head opens a [`UsageRecord`] when a batch job, an actor incarnation or a
//! task lease starts holding resources on a node (its lease is granted, or adopted from a
//! worker that re-joined after a head restart) and closes it when they go back (the lease is
//! released, or its node is lost). A record keeps what it holds ([`Holding`]: hundredths of a
//! GPU and bytes of GPU memory summed over its GPUs, milli-CPUs), which never changes during
//! its life, so every amount is the holding times the seconds held:
//! - GPU-share-seconds: the share of each GPU held (1 for a whole GPU) × seconds, summed over
//!   its GPUs;
//! - GPU-memory-GiB-seconds: GiB reserved × seconds, summed over its GPUs;
//! - CPU-seconds: CPUs held × seconds (milli-CPUs × seconds / 1000).
//!
//! Its `job` key (what `ember usage --by job` groups by) is the batch job's own id for a job.
//! For an actor or a task lease it is the client connection that owns it, `client-E.C`
//! (connection C of head life E): the head knows no more of who asked. Work a batch job's
//! own program asks for on its own connection is that connection's, not the job's.
//!
//! **Price.** A node's price is its type's `price_micros_per_hour` (0 for a node the
//! autoscaler did not launch). A record pays the part of its node's price that is its share
//! of the node: the GPU units it holds over the node's GPU units on a node with GPUs (work
//! holding no GPU there pays nothing: the GPUs are what the node is priced for), or the
//! milli-CPUs it holds over the node's on a node without GPUs. Placement never over-commits,
//! so the shares of what a node holds at once never pass one, and the records on a node never
//! cost more than its allocated time (below).
//!
//! **Node time.** A node's life, from its join to its leaving, is split into three modes
//! ([`NodeMode`]): *allocated* while at least one record on it is open, *warm* while it holds
//! none and the autoscaler keeps it ready in its warm pool ([`Ledger::node_warm`]), *idle*
//! otherwise. The ledger derives allocated and idle from the records it holds, so no call
//! site can forget to say so; a gang bundle's reservation, or something a re-joined worker
//! still ran that the head is stopping, does not make a node allocated until work runs in it.
//! Times are kept in integer nanoseconds, cumulatively at every change of mode, so
//! allocated + idle + warm equals the node's life exactly, over its whole life or any window
//! of it. The node's price is split the same way; the warm pool's share is reported apart.
//! Nodes the autoscaler did not launch are accounted under the type `static:MODEL`, MODEL
//! being their GPUs' accelerator model (`static:H100`; models joined with `+` when mixed), or
//! `static:cpu` without GPUs, at price 0.
//!
//! **Windows.** A report over a window (`--since`) counts each record and each node over the
//! part of its life within the window.
//!
//! **Memory.** The ledger is bounded ([`LedgerLimits`]). Open records and live nodes are
//! always kept. Of closed records, the newest `records` are kept one by one; older ones are
//! summed exactly per (job, node type, node), and beyond `summaries` of those the oldest are
//! summed again per node type alone (job and node then read [`EARLIER`]). Nodes that left are
//! kept one by one up to `gone_nodes`, then summed per node type. Each node keeps its newest
//! `marks_per_node` changes of mode. A summary cannot be cut at a window's start: one whose
//! records all ended before the window is left out, one that all began within it is counted
//! whole, and one that straddles the start is counted whole and the report says so
//! (`partial`). So does a node whose dropped history the window reaches into: its figures
//! then start at its oldest change kept.
//!
//! **What a head restart loses.** The ledger lives in the head's memory and is not journaled:
//! a head that restarts begins a new ledger, and usage before its start is gone (a report
//! says when the head started). Nodes that re-join are counted from their re-join, and work
//! adopted from them from its adoption.
//!
//! [`EARLIER`]: ember_core::proto::EARLIER

mod earlier;
mod ledger;
mod node_time;
mod record;
#[cfg(test)]
mod tests;

pub use ledger::{Ledger, LedgerError, LedgerLimits, Opening};
pub use node_time::{ModeTimes, NodeMode};
pub use record::{Amounts, Holding, NodeClass, UsageRecord, UsageSubject};
