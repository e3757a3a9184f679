//! Workers: joining, liveness, their events and answers, probes of suspects, and losing them.

use std::time::Instant;

use ember_core::ids::NodeId;
use ember_core::proto::{RemoteError, WorkerEvent, WorkerHello, WorkerReply};
use ember_core::resources::{actor_label, task_label};

use super::{died, HeadState, Node, Probing, Purpose, Timer, Wait, Work};
use crate::io::{CommandId, ConnId, Effect};
use crate::journal::{Change, NodeRecord};

impl HeadState {
    pub(super) fn worker_joined(
        &mut self,
        now: Instant,
        conn: ConnId,
        mut hello: Box<WorkerHello>,
    ) {
        if self.conns.contains_key(&conn) {
            tracing::warn!(
                ?conn,
                "a worker said hello twice on one connection; ignored"
            );
            return;
        }
        let rejoin = hello.rejoin.take();
        let old = rejoin.as_ref().map(|r| r.node);
        let matched = old.filter(|n| self.expected.remove(n).is_some());
        let node = match matched {
            Some(node) => {
                tracing::info!(%node, "worker {} re-joined as the node it was", hello.name);
                node
            }
            None => {
                if let Some(old) = old {
                    tracing::warn!(
                        %old,
                        "worker {} claims a node this head does not expect: it joins as a new node",
                        hello.name
                    );
                }
                NodeId(self.next_id())
            }
        };
        let mut resources = hello.resources.clone();
        resources.labels = hello
            .task_types
            .iter()
            .map(|t| task_label(t))
            .chain(hello.actor_types.iter().map(|a| actor_label(a)))
            .collect();
        resources.labels.sort();
        let labels = resources.labels.clone();
        tracing::info!(%node, "worker {} joined from {}", hello.name, hello.address);
        self.sched.add_node(node, resources);
        self.conns.insert(conn, node);
        self.nodes.insert(
            node,
            Node {
                conn,
                hello,
                last_heartbeat: now,
                last_heard: now,
                alive_at: now,
                gpu_stats: Vec::new(),
            },
        );
        self.liveness
            .insert((now + self.config.heartbeat_timeout, node));
        self.usage_node_joined(now, node);
        let record = NodeRecord {
            hello: (*self.nodes[&node].hello).clone(),
        };
        self.journal(Change::Node { node, record });
        self.out.push(Effect::Welcome { conn, node });
        if let Some(rejoin) = rejoin {
            self.reconcile(now, node, matched.is_some(), rejoin);
        }
        let ticket = self.nodes[&node].hello.launch.clone();
        self.autoscaled_join(now, node, ticket, &labels);
        self.place_queued(now);
        self.unstrand(now, node);
        self.unstrand_gangs();
        let count = self.nodes.len() as u32;
        let ready: Vec<_> = self
            .node_waits
            .iter()
            .copied()
            .filter(|r| {
                matches!(self.requests.get(r).map(|o| &o.wait), Some(Wait::Nodes { count: c, .. }) if *c <= count)
            })
            .collect();
        for request in ready {
            self.node_waits.remove(&request);
            self.reply(
                request,
                ember_core::proto::ClientReply::NodesReady { count },
            );
        }
    }

    /// Anything from a worker shows it alive.
    pub(super) fn heard(&mut self, now: Instant, node: NodeId) {
        self.heard_packets(now, now, node);
    }

    /// Something came from `node` after `after` and by `now`: its heartbeat deadline runs
    /// from `now`, and it is known alive at `after`.
    pub(super) fn heard_packets(&mut self, now: Instant, after: Instant, node: NodeId) {
        let timeout = self.config.heartbeat_timeout;
        if let Some(n) = self.nodes.get_mut(&node) {
            n.alive_at = n.alive_at.max(after.min(now));
            if now > n.last_heard {
                self.liveness.remove(&(n.last_heard + timeout, node));
                n.last_heard = now;
                self.liveness.insert((now + timeout, node));
            }
        }
    }

    pub(super) fn event(&mut self, now: Instant, node: NodeId, event: WorkerEvent) {
        if !self.nodes.contains_key(&node) {
            return;
        }
        self.heard(now, node);
        match event {
            WorkerEvent::Heartbeat { gpus } => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.last_heartbeat = now;
                    n.gpu_stats = gpus;
                }
            }
            WorkerEvent::ActorExited {
                actor,
                incarnation,
                reason,
            } => {
                tracing::warn!(%actor, %node, incarnation, "actor's process ended: {reason}");
                self.actor_lost(now, actor, incarnation, &reason);
            }
            WorkerEvent::Leaving { grace_ms } => {
                // A worker told to stop (SIGTERM: a spot interruption, a pod evicted) is going
                // within its grace: a notice.
                self.drain(now, node, super::ms(grace_ms), None, true);
            }
        }
    }

    /// A worker answered a command (or the shell could not deliver it).
    pub(super) fn replied(
        &mut self,
        now: Instant,
        command: CommandId,
        reply: Result<WorkerReply, RemoteError>,
    ) {
        let Some(pending) = self.commands.get(&command).cloned() else {
            return;
        };
        if reply.is_ok() {
            self.heard(now, pending.node);
        }
        let last = reply.as_ref().map_or(true, WorkerReply::is_final);
        if last {
            self.commands.remove(&command);
            self.probes.remove(&command);
        }
        match pending.purpose {
            Purpose::OpenLease(lease) => self.lease_opened(now, lease, reply),
            Purpose::CloseLease(lease) => self.lease_closed(now, lease),
            Purpose::CreateActor {
                actor,
                incarnation,
                lease,
            } => self.actor_created(now, pending.node, actor, incarnation, lease, reply),
            Purpose::KillActor { lease, request } => {
                if let Some(lease) = lease {
                    self.release(now, lease);
                }
                if let Some(request) = request {
                    self.reply(request, ember_core::proto::ClientReply::ActorKilled);
                }
            }
            Purpose::Probe {
                actor,
                incarnation,
                request,
            } => self.probed(now, pending.node, actor, incarnation, request, reply),
            Purpose::Seal { actor } => self.sealed(now, pending.node, actor, reply),
            Purpose::RunJob(lease) => self.job_replied(now, lease, reply, last),
            Purpose::StopStray { held } => {
                if let Some(held) = held {
                    self.release(now, held);
                }
            }
        }
    }

    /// Sends a command whose answer also tells whether the worker lives: unanswered within
    /// the probe window, by a worker heard from in none of it, the worker is declared dead.
    pub(super) fn probe(
        &mut self,
        now: Instant,
        node: NodeId,
        body: ember_core::proto::WorkerCommand,
        purpose: Purpose,
    ) -> CommandId {
        let command = self.command(node, body, purpose);
        self.probes.insert(command, Probing { node, since: now });
        self.arm(now + self.config.probe_window(), Timer::Probe(command));
        command
    }

    /// A probe's window ended: its worker is dead unless anything came from it meanwhile (a
    /// busy worker, slow to answer but not silent).
    pub(super) fn probe_window_ended(&mut self, now: Instant, command: CommandId) {
        let Some(Probing { node, since }) = self.probes.remove(&command) else {
            return;
        };
        let heard = self.nodes.get(&node).is_some_and(|n| n.alive_at > since);
        if heard {
            tracing::info!(%node, "slow to answer a probe, but alive");
            // A caller waiting on an actor's probe waits for its next incarnation instead.
            if let Some(Purpose::Probe {
                request: Some(request),
                ..
            }) = self.commands.get(&command).map(|p| p.purpose.clone())
            {
                self.probe_inconclusive(now, request);
            }
            return;
        }
        let window = self.config.probe_window();
        tracing::warn!(%node, "no answer to a probe within {window:?}: declaring the worker dead");
        self.declare_dead(now, node, "did not answer a probe");
    }

    /// The state gives up on a worker: it is forgotten now and its connection closed.
    pub(super) fn declare_dead(&mut self, now: Instant, node: NodeId, why: &str) {
        if self.nodes.contains_key(&node) {
            self.node_lost(now, node, &format!("died ({why})"));
            self.out.push(Effect::CloseNode {
                node,
                reason: why.to_string(),
            });
        }
    }

    /// A node is gone for good: what ran there is lost; its actors restart elsewhere, its
    /// task leases and jobs fail, its unanswered commands fail. Returns how many leases it
    /// held.
    pub(super) fn node_lost(&mut self, now: Instant, node: NodeId, why: &str) -> usize {
        let Some(n) = self.nodes.remove(&node) else {
            return 0;
        };
        self.journal(Change::NodeGone { node });
        self.conns.remove(&n.conn);
        self.liveness
            .remove(&(n.last_heard + self.config.heartbeat_timeout, node));
        let may_strand = self.could_strand(node);
        let lost = self.sched.remove_node(node);
        self.usage_node_gone(now, node);
        self.strand(now, may_strand);
        self.strand_gangs(now);
        if why == "left" {
            tracing::info!(%node, "worker left");
        } else {
            tracing::warn!(%node, leases = lost.len(), "worker {why}");
        }
        for lease in &lost {
            match self.work.remove(&lease.id) {
                Some(Work::Lease(l)) => self.lease_lost(l, node),
                Some(Work::Job(job)) => {
                    if let Some(request) = job.request {
                        self.fail(request, died(node));
                    }
                }
                Some(Work::Actor { actor, incarnation }) => {
                    if let Some(a) = self.actors.get_mut(&actor) {
                        // The lease went with the node: nothing to give back.
                        if a.start.is_some_and(|s| s.lease == lease.id) {
                            a.start = None;
                        }
                    }
                    self.actor_lost(now, actor, incarnation, &format!("its worker {node} {why}"));
                }
                Some(Work::Stray) | None => {}
            }
        }
        let unanswered: Vec<CommandId> = self
            .commands
            .iter()
            .filter(|(_, p)| p.node == node)
            .map(|(c, _)| *c)
            .collect();
        for command in unanswered {
            self.replied(now, command, Err(died(node)));
        }
        if self.drains.contains_key(&node) {
            self.finish_drain(now, node);
        }
        // Gangs place the bundles lost with it again.
        self.place_queued(now);
        self.autoscaled_gone(now, node);
        lost.len()
    }
}
