//! ember-worker: Ember's worker agent. It joins a head, discovers the machine's GPUs,
//! reports their live figures with every heartbeat, and runs tasks, actors and jobs in
//! executor processes that see only the GPUs they were given.

pub mod agent;
pub mod collective;
pub mod context;
mod executor;
pub mod gpu;
mod job;
pub mod registry;
pub mod role;
