//! Collective groups at the head: forming and joining them (the table is
//! [`crate::groups::Groups`]), telling members where their peers are, and answering whether a
//! generation is still whole. The head arranges groups; their data never passes through it.
//!
//! Each group's newest generation is journaled ([`Change::Group`]) in the batch that forms it
//! or breaks it, before any member hears of it, so a head started again goes on with the same
//! generation and the same members, and numbers the next one past it. While a member read back
//! from the journal is expected to re-join (its node's re-join window), it is not lost yet: a
//! view waits for it and the generation's health does not count it against the generation.
//! Once it is lost (it restarts elsewhere from its checkpoint, or is stopped), the generation
//! fails as it does when any member's process is lost.

use std::time::{Duration, Instant};

use ember_core::ids::ActorId;
use ember_core::proto::{ClientReply, ErrorKind, GroupMember, GroupView, RemoteError};

use super::{no_actor, HeadState, Wait};
use crate::actor_life::Phase;
use crate::groups::{GroupError, Joined, Membership};
use crate::io::RequestId;
use crate::journal::{Change, GroupRecord, Journaled};

fn refused(e: GroupError) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, e.to_string())
}

impl HeadState {
    /// Forms a new generation of `name` from `members`, in rank order.
    pub(super) fn form_group(
        &mut self,
        now: Instant,
        request: RequestId,
        name: String,
        members: Vec<ActorId>,
    ) {
        for &actor in &members {
            match self.actors.get(&actor).map(|a| a.life.phase()) {
                None => return self.fail(request, no_actor(actor)),
                Some(Phase::Dead(reason)) => {
                    let e = RemoteError::new(
                        ErrorKind::WorkerDied,
                        format!("{actor} is dead: {reason}"),
                    );
                    return self.fail(request, e);
                }
                Some(_) => {}
            }
        }
        match self.groups.form(&name, members) {
            Ok(m) => {
                tracing::info!(group = %name, generation = m.generation, size = m.members.len(), "group formed");
                self.journal_group(&name);
                self.view(now, request, &name, m, self.config.form_wait);
                self.formed(now, &name);
            }
            Err(e) => self.fail(request, refused(e)),
        }
    }

    /// `actor` joins the next generation of `name`; answered when `world` actors have joined.
    pub(super) fn join_group(
        &mut self,
        now: Instant,
        request: RequestId,
        name: String,
        actor: ActorId,
        world: u32,
        timeout: Duration,
    ) {
        if !self.actors.contains_key(&actor) {
            return self.fail(request, no_actor(actor));
        }
        match self.groups.join(&name, actor, world) {
            Err(e) => self.fail(request, refused(e)),
            Ok(joined) => {
                self.set_wait(
                    request,
                    Wait::Join {
                        group: name.clone(),
                        actor,
                        world,
                        timeout,
                    },
                );
                self.joins.entry(name.clone()).or_default().insert(request);
                self.arm_request(request, now + timeout);
                if let Joined::Formed(m) = joined {
                    tracing::info!(group = %name, generation = m.generation, "group formed by joins");
                    self.journal_group(&name);
                    self.formed(now, &name);
                }
            }
        }
    }

    /// A new generation of `name` formed: every actor waiting to join it learns its view, or
    /// that it was formed without it.
    fn formed(&mut self, now: Instant, name: &str) {
        let Some(m) = self.groups.current(name).cloned() else {
            return;
        };
        let waiting = self.joins.remove(name).unwrap_or_default();
        for request in waiting {
            let Some(Wait::Join { actor, .. }) =
                self.requests.get(&request).map(|o| o.wait.clone())
            else {
                continue;
            };
            if m.members.contains(&actor) {
                self.view(now, request, name, m.clone(), self.config.form_wait);
            } else {
                let e = RemoteError::new(
                    ErrorKind::Moved,
                    format!(
                        "group `{name}` was formed as generation {} without {actor}",
                        m.generation
                    ),
                );
                self.fail(request, e);
            }
        }
    }

    /// The newest generation of `name`, once every member is alive.
    pub(super) fn get_group(
        &mut self,
        now: Instant,
        request: RequestId,
        name: String,
        timeout: Duration,
    ) {
        match self.groups.current(&name).cloned() {
            Some(m) => self.view(now, request, &name, m, timeout),
            None => self.fail(
                request,
                RemoteError::new(ErrorKind::Unknown, format!("no group named `{name}`")),
            ),
        }
    }

    /// Answers `request` with where each member of `membership` is, waiting up to `timeout`
    /// for members that are starting.
    fn view(
        &mut self,
        now: Instant,
        request: RequestId,
        name: &str,
        membership: Membership,
        timeout: Duration,
    ) {
        self.set_wait(
            request,
            Wait::View {
                group: name.to_string(),
                generation: membership.generation,
                members: membership.members,
                timeout,
            },
        );
        self.arm_request(request, now + timeout);
        self.view_now(request);
    }

    /// Answers a view request if every member is alive, or one is dead or gone; otherwise it
    /// waits for the first member still starting.
    pub(super) fn view_now(&mut self, request: RequestId) {
        let Some(Wait::View {
            group,
            generation,
            members,
            ..
        }) = self.requests.get(&request).map(|o| o.wait.clone())
        else {
            return;
        };
        let mut view = Vec::with_capacity(members.len());
        for (rank, &actor) in members.iter().enumerate() {
            let Some(a) = self.actors.get(&actor) else {
                return self.fail(request, no_actor(actor));
            };
            match a.life.phase() {
                Phase::Alive(live) => view.push(GroupMember {
                    actor,
                    incarnation: a.life.incarnation(),
                    endpoints: live.endpoints.clone(),
                }),
                Phase::Dead(reason) => {
                    let e = RemoteError::new(
                        ErrorKind::WorkerDied,
                        format!("rank {rank} of group `{group}` ({actor}) is dead: {reason}"),
                    );
                    return self.fail(request, e);
                }
                Phase::Starting => return self.watch(actor, request),
            }
        }
        self.reply(
            request,
            ClientReply::Group(GroupView {
                name: group,
                generation,
                members: view,
            }),
        );
    }

    /// Why generation `generation` of `name`, whose members had `incarnations`, can no
    /// longer complete an operation; `None` while it can.
    pub(super) fn group_health(
        &self,
        name: &str,
        generation: u64,
        incarnations: &[u32],
    ) -> Option<String> {
        let Some(m) = self.groups.current(name) else {
            return Some(format!("group `{name}` no longer exists"));
        };
        if m.generation != generation {
            return Some(format!(
                "group `{name}` generation {generation} was replaced by generation {}",
                m.generation
            ));
        }
        if let Some(said) = self.groups.broken(name) {
            return Some(format!("a member failed: {said}"));
        }
        m.members
            .iter()
            .zip(incarnations)
            .enumerate()
            .find_map(|(rank, (actor, &incarnation))| {
                let Some(a) = self.actors.get(actor) else {
                    return Some(format!("rank {rank} ({actor}) was stopped"));
                };
                if self.restoring.contains_key(actor) && a.life.incarnation() == incarnation {
                    // Expected back after the head restarted: not lost (yet).
                    return None;
                }
                match a.life.phase() {
                    Phase::Alive(_) if a.life.incarnation() == incarnation => None,
                    Phase::Alive(_) | Phase::Starting => Some(format!(
                        "rank {rank} ({actor}) lost its process (incarnation {incarnation})"
                    )),
                    Phase::Dead(reason) => Some(format!("rank {rank} ({actor}) is dead: {reason}")),
                }
            })
    }

    /// A member's operation in `generation` of `name` failed: the generation is broken for
    /// all, and the worker of a `suspect` rank is probed (a dead one is declared dead without
    /// waiting for its heartbeats), so the group can be formed again with its restarted actor.
    /// The reporter is answered at once.
    pub(super) fn group_failed(
        &mut self,
        now: Instant,
        request: RequestId,
        name: &str,
        generation: u64,
        reason: &str,
        suspect: Option<u32>,
    ) {
        if self.groups.fail(name, generation, reason) {
            tracing::info!(
                group = name,
                generation,
                "group generation broken: {reason}"
            );
            self.journal_group(name);
        }
        let suspect = self
            .groups
            .current(name)
            .filter(|m| m.generation == generation)
            .and_then(|m| suspect.and_then(|r| m.members.get(r as usize).copied()));
        if let Some(actor) = suspect {
            if let Some(location) = self.location(actor) {
                self.probe_actor(now, location.node, actor, location.incarnation, None);
            }
        }
        let broken = self.groups.broken(name).map(str::to_string);
        self.reply(request, ClientReply::GroupHealth { broken });
    }

    /// Journals the newest generation of `name` as it stands, giving the group its row the
    /// first time.
    fn journal_group(&mut self, name: &str) {
        let Some(m) = self.groups.current(name).cloned() else {
            return;
        };
        let key = match self.group_keys.get(name) {
            Some(&key) => key,
            None => {
                let key = self.next_id();
                self.group_keys.insert(name.to_string(), key);
                key
            }
        };
        let record = GroupRecord {
            name: name.to_string(),
            generation: m.generation,
            members: m.members,
            broken: self.groups.broken(name).map(str::to_string),
        };
        self.journal(Change::Group { key, record });
    }

    /// Brings back the groups a journal holds, each at its newest generation.
    pub(super) fn restore_groups(&mut self, journaled: &Journaled) {
        for (&key, record) in &journaled.groups {
            let membership = Membership {
                generation: record.generation,
                members: record.members.clone(),
            };
            self.groups
                .restore(&record.name, membership, record.broken.clone());
            self.group_keys.insert(record.name.clone(), key);
        }
    }

    /// Every formed group's newest generation as the journal should hold it, in name order.
    pub fn group_records(&self) -> Vec<GroupRecord> {
        self.groups
            .names()
            .into_iter()
            .filter_map(|name| {
                let m = self.groups.current(&name)?.clone();
                let broken = self.groups.broken(&name).map(str::to_string);
                Some(GroupRecord {
                    name,
                    generation: m.generation,
                    members: m.members,
                    broken,
                })
            })
            .collect()
    }

    /// Answered once at least `count` workers have joined, or with an error after `timeout`.
    pub(super) fn wait_for_nodes(
        &mut self,
        now: Instant,
        request: RequestId,
        count: u32,
        timeout: Duration,
    ) {
        let joined = self.nodes.len() as u32;
        if joined >= count {
            return self.reply(request, ClientReply::NodesReady { count: joined });
        }
        self.set_wait(request, Wait::Nodes { count, timeout });
        self.node_waits.insert(request);
        self.arm_request(request, now + timeout);
    }
}
