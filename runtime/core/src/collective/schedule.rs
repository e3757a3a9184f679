//! The schedule of every collective operation: for one rank of a group of `n`, the ordered
//! list of exchanges with its peers. Plans are plain data, made without I/O or clocks, and
//! the engine in `ember-worker` carries them out.
//!
//! **Why the bits agree.** Each element of a reduction is combined in an order fixed by the
//! plan, and the plan depends only on the group size, the rank, the buffer's length in
//! elements and its element size. A message is always awaited from one named peer at one
//! step, so the arrival order of messages never changes what is added to what:
//!
//! - *Ring* (large buffers): the buffer is cut into `n` chunks (chunk `c` is elements
//!   `c·len/n .. (c+1)·len/n`). Chunk `c` is summed along the ring starting at rank `c+1`:
//!   `((x[c+1] + x[c+2]) + …) + x[c]` (ranks modulo `n`), ending at rank `c`, which then sends
//!   the finished chunk around the ring; every rank copies the same bits.
//! - *Recursive doubling* (small buffers): partners exchange whole buffers and both compute
//!   `lower rank's value ⊕ higher rank's value`, so both hold the same bits after every round.
//!   With `n` not a power of two, rank `p + i` first folds into rank `i` and gets the result
//!   back at the end.
//!
//! The choice between the two depends only on the buffer's size in bytes and `n`.

use std::ops::Range;

/// Buffers of at most this many bytes are all-reduced by recursive doubling; larger ones by the
/// ring. Broadcasts of at most this many bytes go from the root to every rank at once; larger
/// ones along a pipelined chain.
pub const SMALL_BYTES: usize = 64 << 10;

/// How one operation is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Nothing to exchange (a group of one).
    Local,
    /// Reduce-scatter then all-gather around a ring.
    Ring,
    /// Pairwise exchanges in `log2 n` rounds.
    RecursiveDoubling,
    /// The root sends to every rank.
    Star,
    /// The data flows root → root+1 → …, each rank passing on what it receives.
    Chain,
}

/// Elements sent to, or received from, one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The peer's rank.
    pub peer: usize,
    /// Which elements of the buffer.
    pub range: Range<usize>,
}

/// The order of the two operands when a received value is combined with the local one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `received ⊕ local`.
    IncomingFirst,
    /// `local ⊕ received`.
    LocalFirst,
}

/// What becomes of received elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// They replace the local ones.
    Copy,
    /// They are combined with the local ones, in this order.
    Reduce(Order),
}

/// A receive within an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receive {
    /// From whom and into which elements.
    pub transfer: Transfer,
    /// What to do with them.
    pub arrival: Arrival,
}

/// One step of a plan. Steps run in order; within an [`Action::Exchange`] the sends and the
/// receive run at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these ranges and receive one. Sends carry the buffer as it was when the step
    /// began: where the received range overlaps a sent one, the engine applies the received
    /// data only once the sends are done.
    Exchange {
        /// Ranges to send, each to its peer.
        sends: Vec<Transfer>,
        /// The range to receive, if any.
        recv: Option<Receive>,
    },
    /// Receive `range` from `from`, store it, and pass each piece on to `to` as it arrives.
    Relay {
        /// The previous rank in the chain.
        from: usize,
        /// The next rank in the chain.
        to: usize,
        /// Which elements.
        range: Range<usize>,
    },
    /// Divide these elements by the group size (the last step of a mean).
    Scale {
        /// Which elements.
        range: Range<usize>,
    },
}

/// One rank's plan for one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The algorithm chosen.
    pub algorithm: Algorithm,
    /// The steps, in order.
    pub actions: Vec<Action>,
}

/// The elements of chunk `c` when `len` elements are cut into `n` nearly equal chunks.
pub fn chunk(len: usize, n: usize, c: usize) -> Range<usize> {
    let at = |i: usize| ((i as u128 * len as u128) / n as u128) as usize;
    at(c)..at(c + 1)
}

fn exchange(send: Option<Transfer>, recv: Option<Receive>) -> Action {
    Action::Exchange {
        sends: send.into_iter().collect(),
        recv,
    }
}

/// All-reduce `len` elements of `elem_size` bytes each; `mean` ends with a [`Action::Scale`].
pub fn allreduce(n: usize, rank: usize, len: usize, elem_size: usize, mean: bool) -> Plan {
    assert!(rank < n, "rank {rank} outside a group of {n}");
    if n == 1 {
        return Plan {
            algorithm: Algorithm::Local,
            actions: Vec::new(),
        };
    }
    if len.saturating_mul(elem_size) <= SMALL_BYTES || len < n {
        recursive_doubling(n, rank, len, mean)
    } else {
        let mut actions = reduce_scatter_steps(n, rank, len);
        if mean {
            actions.push(Action::Scale {
                range: chunk(len, n, rank),
            });
        }
        actions.extend(allgather_steps(n, rank, |c| chunk(len, n, c)));
        Plan {
            algorithm: Algorithm::Ring,
            actions,
        }
    }
}

/// Reduce-scatter `len` elements: rank `r` ends holding the reduced [`chunk`] `r` (the rest
/// of its buffer holds partial sums).
pub fn reduce_scatter(n: usize, rank: usize, len: usize, mean: bool) -> Plan {
    assert!(rank < n, "rank {rank} outside a group of {n}");
    if n == 1 {
        return Plan {
            algorithm: Algorithm::Local,
            actions: Vec::new(),
        };
    }
    let mut actions = reduce_scatter_steps(n, rank, len);
    if mean {
        actions.push(Action::Scale {
            range: chunk(len, n, rank),
        });
    }
    Plan {
        algorithm: Algorithm::Ring,
        actions,
    }
}

/// All-gather blocks of `block` elements into a buffer of `n · block`: rank `r` starts with
/// its block at `r · block` and ends with every rank's block.
pub fn allgather(n: usize, rank: usize, block: usize) -> Plan {
    assert!(rank < n, "rank {rank} outside a group of {n}");
    if n == 1 {
        return Plan {
            algorithm: Algorithm::Local,
            actions: Vec::new(),
        };
    }
    Plan {
        algorithm: Algorithm::Ring,
        actions: allgather_steps(n, rank, |c| c * block..(c + 1) * block),
    }
}

/// Broadcast `len` elements of `elem_size` bytes from `root` to every rank.
pub fn broadcast(n: usize, rank: usize, root: usize, len: usize, elem_size: usize) -> Plan {
    assert!(
        rank < n && root < n,
        "rank {rank} or root {root} outside a group of {n}"
    );
    if n == 1 {
        return Plan {
            algorithm: Algorithm::Local,
            actions: Vec::new(),
        };
    }
    let whole = 0..len;
    if len.saturating_mul(elem_size) <= SMALL_BYTES {
        let action = if rank == root {
            Action::Exchange {
                sends: (0..n)
                    .filter(|&p| p != root)
                    .map(|peer| Transfer {
                        peer,
                        range: whole.clone(),
                    })
                    .collect(),
                recv: None,
            }
        } else {
            exchange(
                None,
                Some(Receive {
                    transfer: Transfer {
                        peer: root,
                        range: whole,
                    },
                    arrival: Arrival::Copy,
                }),
            )
        };
        return Plan {
            algorithm: Algorithm::Star,
            actions: vec![action],
        };
    }
    // Positions along the chain: the root is 0.
    let position = (rank + n - root) % n;
    let prev = (rank + n - 1) % n;
    let next = (rank + 1) % n;
    let action = if position == 0 {
        exchange(
            Some(Transfer {
                peer: next,
                range: whole,
            }),
            None,
        )
    } else if position == n - 1 {
        exchange(
            None,
            Some(Receive {
                transfer: Transfer {
                    peer: prev,
                    range: whole,
                },
                arrival: Arrival::Copy,
            }),
        )
    } else {
        Action::Relay {
            from: prev,
            to: next,
            range: whole,
        }
    };
    Plan {
        algorithm: Algorithm::Chain,
        actions: vec![action],
    }
}

/// A barrier: no rank leaves before every rank has entered (recursive doubling on nothing).
pub fn barrier(n: usize, rank: usize) -> Plan {
    allreduce(n, rank, 0, 1, false)
}

/// The ring's reduce-scatter: at step `s`, rank `r` sends chunk `r-s-1` to `r+1` and adds
/// chunk `r-s-2` from `r-1` to its own, so it ends with chunk `r` complete.
fn reduce_scatter_steps(n: usize, rank: usize, len: usize) -> Vec<Action> {
    let next = (rank + 1) % n;
    let prev = (rank + n - 1) % n;
    (0..n - 1)
        .map(|s| {
            let sent = (rank + 2 * n - s - 1) % n;
            let got = (rank + 2 * n - s - 2) % n;
            exchange(
                Some(Transfer {
                    peer: next,
                    range: chunk(len, n, sent),
                }),
                Some(Receive {
                    transfer: Transfer {
                        peer: prev,
                        range: chunk(len, n, got),
                    },
                    arrival: Arrival::Reduce(Order::IncomingFirst),
                }),
            )
        })
        .collect()
}

/// The ring's all-gather: rank `r` starts owning block `r`; at step `s` it sends block `r-s`
/// to `r+1` and stores block `r-s-1` from `r-1`.
fn allgather_steps(n: usize, rank: usize, block: impl Fn(usize) -> Range<usize>) -> Vec<Action> {
    let next = (rank + 1) % n;
    let prev = (rank + n - 1) % n;
    (0..n - 1)
        .map(|s| {
            let sent = (rank + n - s) % n;
            let got = (rank + 2 * n - s - 1) % n;
            exchange(
                Some(Transfer {
                    peer: next,
                    range: block(sent),
                }),
                Some(Receive {
                    transfer: Transfer {
                        peer: prev,
                        range: block(got),
                    },
                    arrival: Arrival::Copy,
                }),
            )
        })
        .collect()
}

fn recursive_doubling(n: usize, rank: usize, len: usize, mean: bool) -> Plan {
    let whole = 0..len;
    let p = 1usize << (usize::BITS - 1 - n.leading_zeros());
    let extras = n - p;
    let send = |peer: usize| Transfer {
        peer,
        range: whole.clone(),
    };
    let recv = |peer: usize, arrival: Arrival| Receive {
        transfer: Transfer {
            peer,
            range: whole.clone(),
        },
        arrival,
    };
    let mut actions = Vec::new();
    if rank >= p {
        // Fold into rank - p, then wait for the result.
        actions.push(exchange(Some(send(rank - p)), None));
        actions.push(exchange(None, Some(recv(rank - p, Arrival::Copy))));
        return Plan {
            algorithm: Algorithm::RecursiveDoubling,
            actions,
        };
    }
    if rank < extras {
        actions.push(exchange(
            None,
            Some(recv(rank + p, Arrival::Reduce(Order::LocalFirst))),
        ));
    }
    let mut mask = 1;
    while mask < p {
        let partner = rank ^ mask;
        let order = if partner < rank {
            Order::IncomingFirst
        } else {
            Order::LocalFirst
        };
        actions.push(exchange(
            Some(send(partner)),
            Some(recv(partner, Arrival::Reduce(order))),
        ));
        mask <<= 1;
    }
    if mean {
        actions.push(Action::Scale {
            range: whole.clone(),
        });
    }
    if rank < extras {
        actions.push(exchange(Some(send(rank + p)), None));
    }
    Plan {
        algorithm: Algorithm::RecursiveDoubling,
        actions,
    }
}

#[cfg(test)]
mod tests;
