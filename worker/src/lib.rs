//! ember-worker: Ember's worker agent. It joins a head, discovers the machine's GPUs,
//! reports their live figures with every heartbeat, and runs tasks, actors and jobs in
//! executor processes that see only the GPUs they were given. A task or actor reaches its
//! GPUs through device handles ([`context::device`]); every worker also hosts the built-in
//! GPU actor ([`gpu_actor`]), which runs kernels for callers that cannot ship Rust code.

pub mod agent;
pub mod collective;
pub mod context;
mod device;
mod epoch;
mod executor;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
pub mod gpu_actor;
mod job;
pub mod registry;
pub mod role;
