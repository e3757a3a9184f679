//! The head's table of collective groups, without I/O: who is in each group, in rank order,
//! at which generation, and who is waiting to join the next one.
//!
//! A group is formed by the driver from a list of actors (ranks follow the list) or by actors
//! joining it by name with a world size (ranks follow the actors' ids, which grow in creation
//! order, so the ranks do not depend on who joined first). Every formation is a new
//! **generation**; data from one generation is never mixed with another's. A head started
//! again brings each group's newest generation back from its journal ([`Groups::restore`]), so
//! the next generation is numbered past every one handed out.

use std::collections::{BTreeMap, BTreeSet};

use ember_core::ids::ActorId;

/// One generation of a group: its members in rank order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Counts formations of this group's name, from 1.
    pub generation: u64,
    /// The members; a member's rank is its index.
    pub members: Vec<ActorId>,
}

/// Why a group could not be formed or joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// A group needs at least one member.
    #[error("group `{0}` needs at least one member")]
    Empty(String),
    /// An actor was listed twice.
    #[error("{actor} is listed twice in group `{group}`")]
    Duplicate {
        /// The group.
        group: String,
        /// The actor.
        actor: ActorId,
    },
    /// Joiners disagree on the group's size.
    #[error("group `{group}` is being joined with world size {pending}, not {asked}")]
    WorldSizeMismatch {
        /// The group.
        group: String,
        /// The size the first joiner gave.
        pending: u32,
        /// The size this joiner gave.
        asked: u32,
    },
    /// A world size of zero.
    #[error("group `{0}` cannot have a world size of 0")]
    ZeroWorld(String),
    /// No group by that name.
    #[error("no group named `{0}`")]
    Unknown(String),
}

/// What a join led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// Waiting for `world - waiting` more actors.
    Waiting {
        /// How many have joined so far.
        waiting: u32,
    },
    /// The last one needed: this generation is formed.
    Formed(Membership),
}

#[derive(Debug, Default)]
struct Group {
    current: Option<Membership>,
    /// Why the current generation can no longer complete an operation, once a member said.
    broken: Option<String>,
    generations: u64,
    /// Actors waiting to join the next generation, with its world size.
    rendezvous: Option<(u32, BTreeSet<ActorId>)>,
}

impl Group {
    fn form(&mut self, members: Vec<ActorId>) -> Membership {
        self.generations += 1;
        self.rendezvous = None;
        self.broken = None;
        let m = Membership {
            generation: self.generations,
            members,
        };
        self.current = Some(m.clone());
        m
    }
}

/// Every group the head knows, by name.
#[derive(Debug, Default)]
pub struct Groups {
    groups: BTreeMap<String, Group>,
}

impl Groups {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forms a new generation of `name` with `members` in rank order. Actors waiting to join
    /// are dropped from the rendezvous: the new generation replaces it.
    pub fn form(&mut self, name: &str, members: Vec<ActorId>) -> Result<Membership, GroupError> {
        if members.is_empty() {
            return Err(GroupError::Empty(name.to_string()));
        }
        let mut seen = BTreeSet::new();
        for &actor in &members {
            if !seen.insert(actor) {
                return Err(GroupError::Duplicate {
                    group: name.to_string(),
                    actor,
                });
            }
        }
        Ok(self
            .groups
            .entry(name.to_string())
            .or_default()
            .form(members))
    }

    /// `actor` joins the next generation of `name`, which forms once `world` actors have
    /// joined; ranks follow actor ids. Joining twice counts once.
    pub fn join(&mut self, name: &str, actor: ActorId, world: u32) -> Result<Joined, GroupError> {
        if world == 0 {
            return Err(GroupError::ZeroWorld(name.to_string()));
        }
        let group = self.groups.entry(name.to_string()).or_default();
        let (pending, joined) = group
            .rendezvous
            .get_or_insert_with(|| (world, BTreeSet::new()));
        if *pending != world {
            return Err(GroupError::WorldSizeMismatch {
                group: name.to_string(),
                pending: *pending,
                asked: world,
            });
        }
        joined.insert(actor);
        if joined.len() < world as usize {
            return Ok(Joined::Waiting {
                waiting: joined.len() as u32,
            });
        }
        let members = joined.iter().copied().collect();
        Ok(Joined::Formed(group.form(members)))
    }

    /// `actor` stops waiting to join `name` (its join timed out or its caller left).
    pub fn leave_rendezvous(&mut self, name: &str, actor: ActorId) {
        if let Some(group) = self.groups.get_mut(name) {
            if let Some((_, joined)) = &mut group.rendezvous {
                joined.remove(&actor);
                if joined.is_empty() {
                    group.rendezvous = None;
                }
            }
        }
    }

    /// Brings back generation `membership` of `name` as a head's last life left it (`broken`:
    /// why it can no longer complete an operation, if a member said): the next formation of
    /// `name` is generation `membership.generation + 1`.
    pub fn restore(&mut self, name: &str, membership: Membership, broken: Option<String>) {
        let group = self.groups.entry(name.to_string()).or_default();
        if group.generations >= membership.generation {
            return;
        }
        group.generations = membership.generation;
        group.current = Some(membership);
        group.broken = broken;
    }

    /// The newest generation of `name`, if it was ever formed.
    pub fn current(&self, name: &str) -> Option<&Membership> {
        self.groups.get(name).and_then(|g| g.current.as_ref())
    }

    /// A member's operation in `generation` of `name` failed: the generation is broken for
    /// every member. Reports about older generations change nothing. Returns whether this
    /// report broke it.
    pub fn fail(&mut self, name: &str, generation: u64, reason: &str) -> bool {
        match self.groups.get_mut(name) {
            Some(g)
                if g.broken.is_none()
                    && g.current
                        .as_ref()
                        .is_some_and(|m| m.generation == generation) =>
            {
                g.broken = Some(reason.to_string());
                true
            }
            _ => false,
        }
    }

    /// Why the newest generation of `name` is broken, if a member said it is.
    pub fn broken(&self, name: &str) -> Option<&str> {
        self.groups.get(name).and_then(|g| g.broken.as_deref())
    }

    /// Forgets `name`.
    pub fn remove(&mut self, name: &str) -> Result<(), GroupError> {
        self.groups
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| GroupError::Unknown(name.to_string()))
    }

    /// The names of every group, sorted.
    pub fn names(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<ActorId> {
        v.iter().map(|&i| ActorId(i)).collect()
    }

    #[test]
    fn forming_keeps_the_given_order_and_counts_generations() {
        let mut g = Groups::new();
        let m = g.form("dp", ids(&[5, 2, 9])).unwrap();
        assert_eq!(m.generation, 1);
        assert_eq!(m.members, ids(&[5, 2, 9]));
        let m = g.form("dp", ids(&[2, 9])).unwrap();
        assert_eq!(m.generation, 2);
        assert_eq!(g.current("dp"), Some(&m));
        assert_eq!(g.form("other", ids(&[1])).unwrap().generation, 1);
    }

    #[test]
    fn bad_formations_are_refused() {
        let mut g = Groups::new();
        assert_eq!(g.form("dp", vec![]), Err(GroupError::Empty("dp".into())));
        assert!(matches!(
            g.form("dp", ids(&[1, 2, 1])),
            Err(GroupError::Duplicate {
                actor: ActorId(1),
                ..
            })
        ));
        assert!(g.current("dp").is_none());
    }

    #[test]
    fn joins_form_a_generation_ranked_by_actor_id_whatever_the_arrival_order() {
        let mut g = Groups::new();
        assert_eq!(
            g.join("dp", ActorId(7), 3),
            Ok(Joined::Waiting { waiting: 1 })
        );
        assert_eq!(
            g.join("dp", ActorId(7), 3),
            Ok(Joined::Waiting { waiting: 1 })
        );
        assert_eq!(
            g.join("dp", ActorId(3), 3),
            Ok(Joined::Waiting { waiting: 2 })
        );
        assert!(matches!(
            g.join("dp", ActorId(4), 4),
            Err(GroupError::WorldSizeMismatch {
                pending: 3,
                asked: 4,
                ..
            })
        ));
        let Ok(Joined::Formed(m)) = g.join("dp", ActorId(5), 3) else {
            panic!("the third join forms the group");
        };
        assert_eq!(m.members, ids(&[3, 5, 7]));
        assert_eq!(m.generation, 1);
        // The next rendezvous starts afresh, with a new size if need be.
        assert_eq!(
            g.join("dp", ActorId(3), 2),
            Ok(Joined::Waiting { waiting: 1 })
        );
        assert_eq!(
            g.join("dp", ActorId(0), 0),
            Err(GroupError::ZeroWorld("dp".into()))
        );
    }

    #[test]
    fn a_failure_breaks_only_the_current_generation_until_it_is_formed_again() {
        let mut g = Groups::new();
        g.form("dp", ids(&[1, 2])).unwrap();
        g.form("dp", ids(&[1, 2])).unwrap();
        assert!(!g.fail("dp", 1, "old news"), "an older generation");
        assert_eq!(g.broken("dp"), None);
        assert!(g.fail("dp", 2, "rank 1 left"));
        assert!(!g.fail("dp", 2, "again"), "the first reason stays");
        assert_eq!(g.broken("dp"), Some("rank 1 left"));
        g.form("dp", ids(&[1])).unwrap();
        assert_eq!(g.broken("dp"), None);
        assert!(!g.fail("nobody", 1, "x"));
    }

    #[test]
    fn a_restored_group_goes_on_at_its_generation_and_numbers_the_next_past_it() {
        let mut g = Groups::new();
        let m = Membership {
            generation: 7,
            members: ids(&[4, 2]),
        };
        g.restore("dp", m.clone(), Some("rank 0 left".into()));
        assert_eq!(g.current("dp"), Some(&m));
        assert_eq!(g.broken("dp"), Some("rank 0 left"));
        assert!(!g.fail("dp", 7, "again"), "already broken");
        // An older generation read back later changes nothing.
        g.restore(
            "dp",
            Membership {
                generation: 3,
                members: ids(&[1]),
            },
            None,
        );
        assert_eq!(g.current("dp"), Some(&m));
        assert_eq!(g.form("dp", ids(&[2, 4])).unwrap().generation, 8);
        assert_eq!(g.broken("dp"), None);
        let Ok(Joined::Formed(joined)) = g.join("dp", ActorId(4), 1) else {
            panic!("a world of one forms at once");
        };
        assert_eq!(joined.generation, 9);
    }

    #[test]
    fn leaving_a_rendezvous_and_forming_over_it() {
        let mut g = Groups::new();
        g.join("dp", ActorId(1), 2).unwrap();
        g.leave_rendezvous("dp", ActorId(1));
        assert_eq!(
            g.join("dp", ActorId(2), 3),
            Ok(Joined::Waiting { waiting: 1 })
        );
        g.form("dp", ids(&[4])).unwrap();
        assert_eq!(
            g.join("dp", ActorId(2), 2),
            Ok(Joined::Waiting { waiting: 1 })
        );
        assert_eq!(g.names(), vec!["dp".to_string()]);
        g.remove("dp").unwrap();
        assert_eq!(g.remove("dp"), Err(GroupError::Unknown("dp".into())));
    }
}
