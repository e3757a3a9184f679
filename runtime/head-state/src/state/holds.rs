//! Who holds each actor: the client connections that keep it alive.
//!
//! An actor is held by the connection that created it, from its creation, and by every
//! connection of this head life that asks to hold it ([`ClientRequest::HoldActor`]). It stops
//! once its last holder releases it or closes, whoever created it; an explicit kill stops it
//! whoever holds it. Holders are connections, which do not outlive a head life, so they are
//! kept in memory only: an actor read back from the journal has none until a connection of the
//! new life claims it (by holding or locating it, see `restore.rs`), and those nobody claims
//! within the re-join window are stopped.
//!
//! [`ClientRequest::HoldActor`]: ember_core::proto::ClientRequest::HoldActor

use std::time::Instant;

use ember_core::ids::ActorId;
use ember_core::proto::ClientReply;

use super::{no_actor, HeadState};
use crate::io::{ConnId, RequestId};

impl HeadState {
    /// Connection `conn` holds `actor` from now on; one of an earlier head life is claimed.
    pub(super) fn hold_request(&mut self, conn: ConnId, request: RequestId, actor: ActorId) {
        let Some(a) = self.actors.get(&actor) else {
            self.fail(request, no_actor(actor));
            return;
        };
        if a.owner.epoch < self.epoch {
            self.claim(request, actor);
        } else if let Some(a) = self.actors.get_mut(&actor) {
            a.holders.insert(conn);
        }
        self.reply(request, ClientReply::ActorHeld);
    }

    /// Connection `conn` lets go of `actor`, which stops if nobody else holds it.
    pub(super) fn release_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: RequestId,
        actor: ActorId,
    ) {
        self.let_go(now, conn, actor);
        self.reply(request, ClientReply::ActorReleased);
    }

    /// Connection `conn` closed: it holds nothing any more.
    pub(super) fn release_all(&mut self, now: Instant, conn: ConnId) {
        let held: Vec<ActorId> = self
            .actors
            .iter()
            .filter(|(_, a)| a.holders.contains(&conn))
            .map(|(id, _)| *id)
            .collect();
        for actor in held {
            self.let_go(now, conn, actor);
        }
    }

    /// `conn` no longer holds `actor`; the last holder's going stops it. An actor of an
    /// earlier head life that nobody claimed has no holders and is left to the re-join
    /// window's end.
    fn let_go(&mut self, now: Instant, conn: ConnId, actor: ActorId) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        if !a.holders.remove(&conn) || !a.holders.is_empty() {
            return;
        }
        tracing::info!(%actor, "its last holder let go of the actor: stopping it");
        self.kill_actor(now, actor, None);
    }

    /// The connections that hold `actor`, in id order (none for an actor unknown, or of an
    /// earlier head life not claimed yet).
    pub fn holders(&self, actor: ActorId) -> Vec<ConnId> {
        self.actors
            .get(&actor)
            .map(|a| a.holders.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every actor of this head life (or claimed in it) has a holder, and one of an earlier
    /// life not claimed yet has none.
    pub(super) fn check_holders(&self) -> Result<(), String> {
        for (id, a) in &self.actors {
            let claimed = a.owner.epoch == self.epoch;
            if claimed == a.holders.is_empty() {
                return Err(format!(
                    "{id} (owner {:?}, this life {}) has holders {:?}",
                    a.owner, self.epoch, a.holders
                ));
            }
        }
        Ok(())
    }
}
