//! The actors this client holds, held again when it connects to the head anew.
//!
//! An actor lives while some client connection holds it: the one that created it, from its
//! creation, and every one that asked to hold it (`ClientRequest::HoldActor`). Holders are
//! connections, which do not outlive a head life, and a head started again on its journal
//! stops, at the end of its re-join window, every actor of its last life that no connection of
//! its new life claimed. So the client counts the handles that hold each actor
//! ([`HeldActors`]: spawned, taken with [`Cluster::actor`] or looked up with
//! [`Cluster::lookup_actor`]; forgotten once released or killed), tells the head when the
//! first one holds it and when the last one lets go, and its keeper task holds every one of
//! them again as soon as the link to the head is open again, which claims them in a new head
//! life. After a reconnect to the same head life the old connection's holds were let go of
//! when it closed, and an actor nobody else held was stopped: holding it again fails, and
//! that is logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use ember_core::ids::ActorId;
use ember_core::proto::{ClientReply, ClientRequest, ErrorKind};

use crate::cluster::{unexpected, Cluster, WeakCluster};
use crate::head_link::HeadLink;
use crate::Error;

/// The actors this client holds, with how many of its handles hold each. The lock is held
/// across the requests that change what the head has, so the head sees holds and releases of
/// one actor in the order the counts changed.
#[derive(Debug, Default)]
pub(crate) struct HeldActors(tokio::sync::Mutex<BTreeMap<ActorId, u32>>);

impl HeldActors {
    /// One more handle holds `actor`: the head is asked to hold it if none did.
    pub(crate) async fn hold(&self, cluster: &Cluster, actor: ActorId) -> Result<(), Error> {
        let mut held = self.0.lock().await;
        if let Some(count) = held.get_mut(&actor) {
            *count += 1;
            return Ok(());
        }
        ask_hold(cluster, actor).await?;
        held.insert(actor, 1);
        Ok(())
    }

    /// A handle to `actor` the head already holds for this connection (it created the actor).
    pub(crate) async fn created(&self, actor: ActorId) {
        *self.0.lock().await.entry(actor).or_default() += 1;
    }

    /// One handle lets go of `actor`: the head is told once none holds it, and the actor
    /// stops if no other client holds it.
    pub(crate) async fn release(&self, cluster: &Cluster, actor: ActorId) -> Result<(), Error> {
        let mut held = self.0.lock().await;
        match held.get_mut(&actor) {
            Some(count) if *count > 1 => {
                *count -= 1;
                return Ok(());
            }
            Some(_) => {
                held.remove(&actor);
            }
            None => return Ok(()),
        }
        match cluster
            .request(&ClientRequest::ReleaseActor { actor })
            .await?
        {
            ClientReply::ActorReleased => Ok(()),
            ClientReply::Error(e) => Err(e.into()),
            other => Err(unexpected(other)),
        }
    }

    /// `actor` was killed: nothing holds it any more.
    pub(crate) async fn forget(&self, actor: ActorId) {
        self.0.lock().await.remove(&actor);
    }

    /// Every actor held now, in id order.
    pub(crate) async fn list(&self) -> Vec<ActorId> {
        self.0.lock().await.keys().copied().collect()
    }

    /// Holds every actor held here again on the current connection, which claims them in a
    /// new head life. Those the head no longer knows (stopped while this client was away)
    /// are forgotten.
    async fn hold_again(&self, cluster: &Cluster) {
        let mut held = self.0.lock().await;
        if held.is_empty() {
            return;
        }
        tracing::info!(actors = held.len(), "holding this client's actors again");
        let asks = held.keys().map(|&actor| async move {
            let outcome = ask_hold(cluster, actor).await;
            (actor, outcome)
        });
        for (actor, outcome) in futures::future::join_all(asks).await {
            match outcome {
                Ok(()) => tracing::debug!(%actor, "held again"),
                Err(e) if e.kind() == Some(ErrorKind::Unknown) => {
                    tracing::warn!(%actor, "the actor stopped while this client was away: {e}");
                    held.remove(&actor);
                }
                Err(e) => tracing::warn!(%actor, "cannot hold the actor again: {e}"),
            }
        }
    }
}

/// Asks the head to hold `actor` for this connection.
async fn ask_hold(cluster: &Cluster, actor: ActorId) -> Result<(), Error> {
    match cluster.request(&ClientRequest::HoldActor { actor }).await? {
        ClientReply::ActorHeld => Ok(()),
        ClientReply::Error(e) => Err(e.into()),
        other => Err(unexpected(other)),
    }
}

/// Watches the link to the head while the client lives: when its connection is lost, connects
/// again at once (for the link's window, so that the actors are claimed well inside the
/// head's), and holds the held actors again on every new connection, whoever opened it.
pub(crate) async fn keep(link: Arc<HeadLink>, cluster: WeakCluster) {
    let mut held_on = link.current().1;
    loop {
        let (conn, generation) = link.current();
        if generation != held_on {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            cluster.held().hold_again(&cluster).await;
            held_on = generation;
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
            // held on.
            tracing::warn!("{e}");
            link.changed(generation).await;
            if link.is_closed() {
                return;
            }
        }
    }
}
