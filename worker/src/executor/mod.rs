//! Executor processes: where user tasks and actors run, apart from the worker agent.
//!
//! Each actor gets a process of its own, which takes calls from clients directly: on a QUIC
//! endpoint of its own, and on a Unix socket from the same machine; tasks share one process per
//! distinct GPU set. Each process sees only its GPUs (`CUDA_VISIBLE_DEVICES`), and a crash in
//! user code takes down only that process: the worker reports the failure and goes on serving.

mod actor_core;
mod actor_host;
pub(crate) mod checkpoint;
mod gro_switch;
mod guarded;
mod head_link;
mod lease_host;
mod local_socket;
mod pool;
mod process;
pub(crate) mod protocol;
mod quic_call;
pub(crate) mod socket_dir;
mod warm;

pub(crate) use head_link::HeadLink;
pub(crate) use pool::{spawn_child, Executor, ExecutorPool};
pub(crate) use process::{die_with_worker, serve};
pub(crate) use protocol::ExecRequest;
