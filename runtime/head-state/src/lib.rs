//! `ember-head-state`: everything the head knows about its cluster, as one pure state machine.
//!
//! No I/O, no clock, no async: time is passed in, and iteration is in a deterministic order.
//! The async shell in `ember-head` feeds it what arrives and carries out what it asks for.

pub mod actor_life;
pub mod groups;
pub mod placement;
