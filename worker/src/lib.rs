//! ember-worker: Ember's worker agent. It joins a head, discovers the machine's GPUs,
//! reports their live figures with every heartbeat, and runs tasks, actors and jobs.

pub mod gpu;
