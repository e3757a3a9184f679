//! The actors a client owns, claimed again when it connects to the head anew.
//!
//! The head makes the client connection that creates an actor its owner, and owners are
//! connections, which do not outlive a head life. A head started again on its journal stops,
//! at the end of its re-join window, every actor of its last life that no connection of its
//! new life claimed, and a connection claims an actor by locating it. So the client remembers
//! the actors it owns (spawned, or taken with [`Cluster::actor`]; forgotten when killed), and
//! its keeper task locates each of them as soon as the link to the head is open again. After
//! a reconnect to the same head life the owner's connection had closed and its actors are
//! already stopped: locating them only fails, and that is logged.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_core::ids::ActorId;

use crate::cluster::{Cluster, WeakCluster};
use crate::head_link::HeadLink;

/// The ids of the actors this client owns.
#[derive(Debug, Default)]
pub(crate) struct OwnedActors(Mutex<BTreeSet<ActorId>>);

impl OwnedActors {
    /// This client owns `actor`.
    pub(crate) fn insert(&self, actor: ActorId) {
        lock(&self.0).insert(actor);
    }

    /// `actor` was killed.
    pub(crate) fn remove(&self, actor: ActorId) {
        lock(&self.0).remove(&actor);
    }

    /// Every actor owned now, in id order.
    pub(crate) fn list(&self) -> Vec<ActorId> {
        lock(&self.0).iter().copied().collect()
    }
}

/// Watches the link to the head while the client lives: when its connection is lost, connects
/// again at once (for the link's window, so that the actors are claimed well inside the
/// head's), and claims the owned actors on every new connection, whoever opened it.
pub(crate) async fn keep(link: Arc<HeadLink>, cluster: WeakCluster) {
    let mut claimed = link.current().1;
    loop {
        let (conn, generation) = link.current();
        if generation != claimed {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            claim(&cluster).await;
            claimed = generation;
            continue;
        }
        conn.closed().await;
        drop(conn);
        if link.is_closed() || cluster.upgrade().is_none() {
            return;
        }
        link.mark_lost(generation);
        if let Err(e) = link.reconnect().await {
            // Past the window: the next request connects again, and its connection is
            // claimed on.
            tracing::warn!("{e}");
            link.changed(generation).await;
            if link.is_closed() {
                return;
            }
        }
    }
}

/// Locates every owned actor on the current connection, which makes it their owner.
async fn claim(cluster: &Cluster) {
    let owned = cluster.owned_actors();
    if owned.is_empty() {
        return;
    }
    tracing::info!(
        actors = owned.len(),
        "claiming this client's actors from the head"
    );
    let claims = owned.into_iter().map(|actor| async move {
        // The head claims it on receipt; the answer (where it runs, or that it is not alive
        // yet) does not matter here, so the locate waits for nothing.
        match cluster.locate_actor(actor, 0, false, Duration::ZERO).await {
            Ok(_) => tracing::debug!(%actor, "claimed"),
            Err(e) if e.kind() == Some(ember_core::proto::ErrorKind::Timeout) => {
                tracing::debug!(%actor, "claimed; not alive yet")
            }
            Err(e) => tracing::warn!(%actor, "cannot claim the actor: {e}"),
        }
    });
    futures::future::join_all(claims).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
