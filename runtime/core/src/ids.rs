//! Identifiers handed out by the head. Each is a plain number, unique for the life of a head.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
            serde::Serialize, serde::Deserialize,
        )]
        #[rkyv(derive(Debug, PartialEq, Eq, Hash))]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "-{}"), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.strip_prefix(concat!($prefix, "-")).unwrap_or(s).parse().map($name)
            }
        }
    };
}

id_type!(
    /// A node (worker) of the cluster. A worker that rejoins gets a new one.
    NodeId, "node"
);
id_type!(
    /// One task submission.
    TaskId, "task"
);
id_type!(
    /// One actor, for its whole life.
    ActorId, "actor"
);
id_type!(
    /// One batch job.
    JobId, "job"
);
id_type!(
    /// One request for resources held by the scheduler: a task, an actor or a job.
    LeaseId, "lease"
);
id_type!(
    /// One gang (placement group): bundles of resources placed all or nothing.
    GangId, "gang"
);
