//! `ember-head-state`: everything the head knows about its cluster, as one pure state machine.
//!
//! [`HeadState::handle`] takes what arrived ([`Input`]) at a time passed in and returns what to
//! do ([`Effect`]); [`HeadState::poll_timeout`] says when time next matters. No I/O, no clock,
//! no async, and every pass over the state is in id order, so the same inputs give the same
//! effects. The async shell in `ember-head` feeds it what arrives over QUIC and carries out its
//! effects; the simulation in `tests/` drives it with a thousand simulated workers.
//!
//! Its parts: [`placement`] (the scheduler), [`autoscale`] (the autoscaler's decisions), [`groups`] (the table of collective groups),
//! [`actor_life`] (one actor's restarts), [`journal`] (what the head makes durable, and how it
//! is read back), [`usage`] (the usage ledger: per-second usage and cost of every job, actor
//! and task lease, and every node's time), and the state machine itself.

pub mod actor_life;
pub mod autoscale;
pub mod groups;
mod io;
pub mod journal;
pub mod placement;
mod state;
pub mod usage;

pub use io::{died, CommandId, ConnId, Effect, Input, LoadedCheckpoint, RequestId, Ticket};
pub use state::{Config, HeadState};
