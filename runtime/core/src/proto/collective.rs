//! The messages of collective groups: forming and joining them at the head, and the hello
//! that opens a link between two members.

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::ActorId;

use super::ActorEndpoints;

/// One generation of a group as its members see it: who holds each rank and where to reach
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct GroupView {
    /// The group's name.
    pub name: String,
    /// Which formation of the group this is, from 1.
    pub generation: u64,
    /// The members in rank order.
    pub members: Vec<GroupMember>,
}

impl GroupView {
    /// The rank of `actor`, if it is a member.
    pub fn rank_of(&self, actor: ActorId) -> Option<usize> {
        self.members.iter().position(|m| m.actor == actor)
    }
}

/// One member of a group generation.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct GroupMember {
    /// The actor.
    pub actor: ActorId,
    /// The incarnation that took part when the generation was looked up.
    pub incarnation: u32,
    /// Where its process listens, for its peers too.
    pub endpoints: ActorEndpoints,
}

/// What a member of a group says in its hello ([`super::HelloRole::Peer`]) when it opens a
/// link to another member, on a Unix socket or the first QUIC stream; answered with a
/// [`super::Welcome`].
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PeerHello {
    /// The group.
    pub group: String,
    /// Its generation.
    pub generation: u64,
    /// The rank of the member opening the link.
    pub from: u32,
    /// The rank it expects to reach.
    pub to: u32,
}
