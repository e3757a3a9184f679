//! Gangs (placement groups): bundles of resources reserved all or nothing, for tasks and
//! actors that must run together.
//!
//! ```no_run
//! # async fn f(cluster: &ember::Cluster) -> Result<(), ember::Error> {
//! use ember::{GangOptions, GangStrategy, Options};
//! // Four GPUs, one per node, reserved together or not at all.
//! let gang = cluster
//!     .create_gang(GangOptions::new(GangStrategy::StrictSpread).bundles(4, Options::new().gpus(1.0)))
//!     .await?;
//! // A task or actor then runs in one bundle: `Options::new().gpus(1.0).in_bundle(gang.bundle(0))`.
//! gang.remove().await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use ember_core::ids::{GangId, NodeId};
use ember_core::proto::{BundleRef, ClientReply, ClientRequest, GangSpec, GangStrategy};

use crate::cluster::unexpected;
use crate::{Cluster, Error, Options};

/// A gang to create: its bundles (each the needs of what will run in it) and how they are
/// spread over nodes.
#[derive(Debug, Clone)]
pub struct GangOptions {
    strategy: GangStrategy,
    bundles: Vec<Options>,
    priority: i32,
    pending_timeout: Option<Duration>,
}

impl GangOptions {
    /// No bundles yet, placed with `strategy`.
    pub fn new(strategy: GangStrategy) -> Self {
        GangOptions {
            strategy,
            bundles: Vec::new(),
            priority: 0,
            pending_timeout: None,
        }
    }

    /// Adds a bundle reserving `needs`: only resources (GPUs, GPU memory, accelerator type,
    /// CPUs, custom resources); any other setting is refused when the gang is created.
    pub fn bundle(mut self, needs: Options) -> Self {
        self.bundles.push(needs);
        self
    }

    /// Adds `count` bundles, each reserving `needs`.
    pub fn bundles(mut self, count: usize, needs: Options) -> Self {
        self.bundles.extend(std::iter::repeat_n(needs, count));
        self
    }

    /// Higher is placed first when gangs wait for capacity.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// How long it keeps waiting once no set of live nodes could hold it any more (a node it
    /// needed left) before it fails naming why; the head's `--pending-timeout` otherwise.
    pub fn pending_timeout(mut self, timeout: Duration) -> Self {
        self.pending_timeout = Some(timeout);
        self
    }

    fn spec(&self) -> Result<GangSpec, Error> {
        let bundles = self
            .bundles
            .iter()
            .enumerate()
            .map(|(i, needs)| {
                needs
                    .bundle_demand()
                    .map_err(|why| Error::Gang(format!("bundle {i}: {why}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GangSpec {
            bundles,
            strategy: self.strategy,
            priority: self.priority,
            pending_timeout_ms: self.pending_timeout.map(|t| t.as_millis() as u64),
        })
    }
}

/// A gang placed whole: every bundle holds its resources on its node until the gang is
/// removed ([`Gang::remove`]) or the client that created it disconnects. When a node dies,
/// the gang places only that node's bundles again, and actors in them restart there.
#[derive(Clone)]
pub struct Gang {
    id: GangId,
    nodes: Vec<NodeId>,
    cluster: Cluster,
}

impl std::fmt::Debug for Gang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gang")
            .field("id", &self.id)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl Gang {
    /// Its id, as `ember status` shows it.
    pub fn id(&self) -> GangId {
        self.id
    }

    /// The node each bundle was placed on when the gang was created, in bundle order.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// How many bundles it has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it has no bundles (never: a gang needs at least one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Bundle `index`, for [`Options::in_bundle`]. An index past the last bundle is refused
    /// by the head when used.
    pub fn bundle(&self, index: u32) -> BundleRef {
        BundleRef {
            gang: self.id,
            index,
        }
    }

    /// Removes the gang: what waits in it fails, the tasks and actors running in it are
    /// stopped, and its resources return.
    pub async fn remove(self) -> Result<(), Error> {
        self.cluster.remove_gang(self.id).await
    }
}

impl Cluster {
    /// Creates a gang: returns once every bundle is placed, each where the strategy says.
    /// While it does not fit whole it waits holding nothing (`ember status` says why); it
    /// fails at once when no set of nodes could ever hold it, naming why.
    pub async fn create_gang(&self, options: GangOptions) -> Result<Gang, Error> {
        let req = ClientRequest::CreateGang(options.spec()?);
        match self.request(&req).await? {
            ClientReply::GangCreated { gang, nodes } => Ok(Gang {
                id: gang,
                nodes,
                cluster: self.clone(),
            }),
            ClientReply::Error(e) => Err(e.into()),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a gang by id (see [`Gang::remove`]).
    pub async fn remove_gang(&self, gang: GangId) -> Result<(), Error> {
        match self.request(&ClientRequest::RemoveGang { gang }).await? {
            ClientReply::GangRemoved => Ok(()),
            ClientReply::Error(e) => Err(e.into()),
            other => Err(unexpected(other)),
        }
    }
}
