//! The one wire protocol: `rkyv` archives, checked before use, framed by a little-endian `u32`
//! length with a size limit, one request/response exchange per QUIC stream. Every connection
//! opens with a hello carrying the sender's [`PROTOCOL_VERSION`] (see [`Hello`]).
//!
//! The same frames travel on Unix sockets between a worker and its executor processes.

mod codec;
#[allow(missing_docs)]
mod collective;
mod frame;
// rkyv's derive makes undocumented helper types for enum variants; every item written
// here is documented.
#[allow(missing_docs)]
mod hello;
#[allow(missing_docs)]
mod lease;
// rkyv's derive makes undocumented helper types for enum variants; every item written
// here is documented.
#[allow(missing_docs)]
mod messages;
#[allow(missing_docs)]
mod placement;
#[allow(missing_docs)]
mod recovery;
#[allow(missing_docs)]
mod status;
// rkyv's derive makes undocumented archived types; every item written here is documented.
#[allow(missing_docs)]
mod usage;

pub use codec::{decode, encode, Wire};
pub use collective::{GroupMember, GroupView, PeerHello};
pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME};
pub use hello::{
    decode_hello, encode_hello, read_hello, write_hello, Hello, HelloRole, LaunchTicket, Rejoin,
    RunningActor, RunningLease, Welcome, WorkerHello, WorkerTerms, HELLO_LIMIT, PROTOCOL_VERSION,
};
pub use lease::{LeaseEndpoints, LeasedTask, LocalTask, TaskLease, LEASE_LOST};
pub use messages::*;
pub use placement::{BundleRef, GangStrategy, NodeAffinity, Placement, Strategy};
pub use recovery::{CheckpointPolicy, CheckpointSave, RestartPolicy, TaskRetry, CHECKPOINT_METHOD};
pub use status::{
    ActorLifeStatus, AutoscaledNodeStatus, AutoscalerStatus, BundleStatus, ClusterStatus,
    CustomUsage, DecisionStatus, GangStatus, GpuUsage, LaunchStatus, NodeStatus, NodeTypeStatus,
    NodeUsage, StoppedStatus, WorkStatus,
};
pub use usage::{
    EarlierNodeTime, EarlierUsage, NodeSplit, NodeTime, RecordUsage, UsageAmounts, UsageBy,
    UsageGroup, UsageGroups, UsageReport, EARLIER,
};
