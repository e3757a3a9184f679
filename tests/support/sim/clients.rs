//! Simulated clients: what they ask of the head, and what they do with its answers.

use std::collections::BTreeMap;
use std::time::Duration;

use ember_core::ids::{ActorId, GangId, LeaseId, NodeId};
use ember_core::proto::{
    ActorSpec, BundleRef, CheckpointPolicy, ClientReply, ClientRequest, GangSpec, GangStrategy,
    JobEvent, JobSpec, LeaseSpec, NodeAffinity, Placement, RestartPolicy, Strategy,
};
use ember_core::resources::{GpuShare, ResourceDemand};
use ember_head_state::{ConnId, Input, RequestId};
use rand::Rng;

use super::queue::Ev;
use super::shell::{Kind, Peer};
use super::workers::{ACTORS, TASKS};
use super::Sim;

const GIB: u64 = 1 << 30;

/// One client connection and what it holds.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) conn: ConnId,
    /// It has not disconnected.
    pub(super) open: bool,
    /// Its actors (created, or held), with the newest incarnation it reached.
    pub(super) actors: BTreeMap<ActorId, u32>,
    /// Its task lease requests, with the lease once granted.
    pub(super) leases: BTreeMap<RequestId, Option<(LeaseId, NodeId)>>,
    /// The groups it saw, with their generation and members' incarnations.
    views: BTreeMap<String, (u64, Vec<u32>)>,
    /// Actors left to create in its opening burst.
    to_create: usize,
    /// The gangs it created (placed whole at least once).
    gangs: Vec<GangId>,
}

impl Sim {
    /// A new client connects and starts acting.
    pub(super) fn spawn_client(&mut self) {
        let c = self.clients.len();
        let conn = self.new_conn(Peer::Client(c));
        self.clients.push(Client {
            conn,
            open: true,
            actors: BTreeMap::new(),
            leases: BTreeMap::new(),
            views: BTreeMap::new(),
            to_create: self.scenario.actors_per_client,
            gangs: Vec::new(),
        });
        let at = self.now + self.jitter(self.scenario.op_interval);
        self.queue.push(at, Ev::Act(c));
        let at = self.now + self.jitter(Duration::from_millis(300));
        self.queue.push(at, Ev::Create(c));
    }

    /// Client `c` goes away: its connection closes.
    pub(super) fn disconnect(&mut self, c: usize) {
        if !self.clients[c].open {
            return;
        }
        self.trace.note(&format!("client {c} disconnects"));
        self.clients[c].open = false;
        let at = self.now + self.hop();
        let conn = self.clients[c].conn;
        self.queue.push(at, Ev::Input(Input::Closed { conn }));
    }

    /// The run winds down: clients give back their leases and kill some of their actors.
    pub(super) fn wind_down(&mut self) {
        self.stop_orphans();
        for c in 0..self.clients.len() {
            if !self.clients[c].open {
                continue;
            }
            let leases: Vec<RequestId> = self.clients[c].leases.keys().copied().collect();
            for request in leases {
                let at = self.now + self.jitter(Duration::from_millis(200));
                self.queue.push(
                    at,
                    Ev::Return {
                        request,
                        lost: false,
                    },
                );
            }
            let actors: Vec<ActorId> = self.clients[c].actors.keys().copied().collect();
            for actor in actors {
                if self.chance(0.5) && !self.orphans.contains(&actor) {
                    let conn = self.clients[c].conn;
                    self.send(conn, ClientRequest::KillActor { actor }, None);
                }
            }
        }
    }

    /// Client `c` creates the next actor of its opening burst.
    pub(super) fn create_burst(&mut self, c: usize) -> Result<(), String> {
        if !self.clients[c].open || !self.active() || self.clients[c].to_create == 0 {
            return Ok(());
        }
        self.clients[c].to_create -= 1;
        let mut spec = self.actor_spec();
        self.maybe_in_gang(c, &mut spec.placement);
        let conn = self.clients[c].conn;
        self.send(conn, ClientRequest::CreateActor(spec), None);
        let at = self.now + self.exp(self.scenario.op_interval.as_secs_f64() / 20.0);
        self.queue.push(at, Ev::Create(c));
        Ok(())
    }

    /// Client `c` does one thing, and plans its next.
    pub(super) fn act(&mut self, c: usize) -> Result<(), String> {
        // The autoscaled scenario's clients act in peaks (`provider.rs`).
        if !self.clients[c].open || !self.active() || self.scenario.autoscale {
            return Ok(());
        }
        let at = self.now + self.exp(self.scenario.op_interval.as_secs_f64());
        self.queue.push(at, Ev::Act(c));
        let conn = self.clients[c].conn;
        let actor = self.some_actor(c);
        let body = match self.rng.gen_range(0..100) {
            0..=24 => {
                let mut spec = LeaseSpec {
                    name: self.task_name(),
                    placement: self.placement(),
                };
                self.maybe_in_gang(c, &mut spec.placement);
                let request = self.send(conn, ClientRequest::LeaseTask(spec), None);
                self.clients[c].leases.insert(request, None);
                if self.chance(0.15) {
                    // It gives up waiting (or gives the lease back soon).
                    let at = self.now + self.jitter(Duration::from_millis(300));
                    self.queue.push(
                        at,
                        Ev::Return {
                            request,
                            lost: false,
                        },
                    );
                }
                return Ok(());
            }
            25..=29 => {
                let mut spec = self.actor_spec();
                self.maybe_in_gang(c, &mut spec.placement);
                ClientRequest::CreateActor(spec)
            }
            30..=33 => match actor {
                Some((actor, _)) => ClientRequest::KillActor { actor },
                None => ClientRequest::KillActor {
                    actor: ActorId(u64::MAX),
                },
            },
            34..=53 => {
                let Some((actor, known)) = actor else {
                    return Ok(());
                };
                let known = if self.chance(0.1) { 0 } else { known };
                ClientRequest::LocateActor {
                    actor,
                    known,
                    suspect: known > 0 && self.chance(0.4),
                    timeout_ms: self.rng.gen_range(100..4000),
                }
            }
            54..=55 => {
                let node = self.some_node();
                ClientRequest::DrainNode {
                    node,
                    grace_ms: self.rng.gen_range(50..3000),
                    notice: false,
                }
            }
            56..=60 => self.group_request(c),
            61..=68 => {
                let mut spec = JobSpec {
                    command: vec!["python".into(), "train.py".into()],
                    env: vec![("SEED".into(), "1".into())],
                    placement: self.placement(),
                };
                self.maybe_in_gang(c, &mut spec.placement);
                ClientRequest::SubmitJob(spec)
            }
            73..=75 => self.gang_spec(),
            76 => {
                let count = self.clients[c].gangs.len();
                let gang = if count == 0 || self.chance(0.1) {
                    GangId(u64::MAX)
                } else {
                    let i = self.rng.gen_range(0..count);
                    self.clients[c].gangs.remove(i)
                };
                ClientRequest::RemoveGang { gang }
            }
            77..=79 => {
                // It was passed another client's actor and holds it.
                let Some(actor) = self.someone_elses_actor(c) else {
                    return Ok(());
                };
                ClientRequest::HoldActor { actor }
            }
            80..=81 => {
                // It lets go of one of its actors: stopped unless someone else holds it.
                let Some((actor, _)) = actor else {
                    return Ok(());
                };
                self.clients[c].actors.remove(&actor);
                ClientRequest::ReleaseActor { actor }
            }
            69..=70 => ClientRequest::WaitForNodes {
                count: self.head.node_count() as u32 + self.rng.gen_range(0..3),
                timeout_ms: self.rng.gen_range(50..2000),
            },
            71 if self.scenario.workers <= 100 || self.chance(0.01) => ClientRequest::Status,
            72 if self.chance(0.2) => {
                self.disconnect(c);
                if self.active() {
                    self.spawn_client();
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        self.send(conn, body, None);
        Ok(())
    }

    /// A gang of one to four bundles, each a small GPU or CPU demand, with a random strategy.
    fn gang_spec(&mut self) -> ClientRequest {
        let menu = |units: u32, cpu_millis: u64| ResourceDemand {
            cpu_millis,
            gpus: GpuShare::from_units(units),
            ..ResourceDemand::default()
        };
        let count = self.rng.gen_range(1..=4);
        let bundles = (0..count)
            .map(|_| match self.rng.gen_range(0..4) {
                0 => menu(100, 500),
                1 => menu(50, 250),
                2 => menu(25, 0),
                _ => menu(0, 500),
            })
            .collect();
        let strategy = [
            GangStrategy::Pack,
            GangStrategy::Spread,
            GangStrategy::StrictPack,
            GangStrategy::StrictSpread,
        ][self.rng.gen_range(0..4)];
        ClientRequest::CreateGang(GangSpec {
            bundles,
            strategy,
            priority: self.rng.gen_range(-1..=1),
            pending_timeout_ms: self.chance(0.5).then(|| self.rng.gen_range(100..3000)),
        })
    }

    /// Sometimes runs what `placement` is for in a bundle of one of client `c`'s gangs (an
    /// index past the last bundle now and then): its strategy and affinity are dropped, and
    /// its demand is often one the bundle holds.
    fn maybe_in_gang(&mut self, c: usize, placement: &mut Placement) {
        let count = self.clients[c].gangs.len();
        if count == 0 || !self.chance(0.3) {
            return;
        }
        let gang = self.clients[c].gangs[self.rng.gen_range(0..count)];
        let index = self.rng.gen_range(0..4);
        placement.bundle = Some(BundleRef { gang, index });
        placement.affinity = None;
        if self.chance(0.7) {
            placement.demand = ResourceDemand {
                cpu_millis: 0,
                gpus: GpuShare::from_units([0, 10, 25][self.rng.gen_range(0..3)]),
                ..ResourceDemand::default()
            };
        }
    }

    /// One of client `c`'s actors and the incarnation it knows, at random.
    fn some_actor(&mut self, c: usize) -> Option<(ActorId, u32)> {
        let actors = &self.clients[c].actors;
        if actors.is_empty() {
            return None;
        }
        let i = self.rng.gen_range(0..actors.len());
        self.clients[c].actors.iter().nth(i).map(|(a, k)| (*a, *k))
    }

    /// An actor of another open client, at random.
    fn someone_elses_actor(&mut self, c: usize) -> Option<ActorId> {
        let others: Vec<usize> = (0..self.clients.len())
            .filter(|&o| o != c && self.clients[o].open && !self.clients[o].actors.is_empty())
            .collect();
        if others.is_empty() {
            return None;
        }
        let o = others[self.rng.gen_range(0..others.len())];
        self.some_actor(o).map(|(actor, _)| actor)
    }

    /// Some node, mostly a joined one.
    fn some_node(&mut self) -> NodeId {
        if self.nodes.is_empty() || self.chance(0.05) {
            return NodeId(u64::MAX);
        }
        let i = self.rng.gen_range(0..self.nodes.len());
        *self.nodes.keys().nth(i).expect("in range")
    }

    /// A request about a collective group of client `c`'s actors.
    fn group_request(&mut self, c: usize) -> ClientRequest {
        let name = format!("g{c}-{}", self.rng.gen_range(0..3));
        match self.rng.gen_range(0..5) {
            0 => {
                let n = self.rng.gen_range(1..=4);
                let mut members = Vec::new();
                for _ in 0..n {
                    if let Some((a, _)) = self.some_actor(c) {
                        members.push(a);
                    }
                }
                ClientRequest::FormGroup { name, members }
            }
            1 => {
                // Several members join by name; sometimes too few come.
                let world = self.rng.gen_range(2..=3);
                let name = format!("j{c}-{}", self.rng.gen_range(0..2));
                let come = if self.chance(0.2) { world - 1 } else { world };
                let timeout_ms = self.rng.gen_range(200..3000);
                let mut joins = Vec::new();
                for _ in 0..come {
                    if let Some((actor, _)) = self.some_actor(c) {
                        joins.push(ClientRequest::JoinGroup {
                            name: name.clone(),
                            actor,
                            world,
                            timeout_ms,
                        });
                    }
                }
                // All but the last are sent here; the last is this operation's request.
                let last = joins.pop().unwrap_or(ClientRequest::Status);
                let conn = self.clients[c].conn;
                for body in joins {
                    self.send(conn, body, None);
                }
                last
            }
            2 => ClientRequest::GetGroup {
                name,
                timeout_ms: self.rng.gen_range(100..3000),
            },
            3 => match self.clients[c].views.get(&name) {
                Some((generation, incarnations)) => ClientRequest::GroupHealth {
                    name,
                    generation: *generation,
                    incarnations: incarnations.clone(),
                },
                None => ClientRequest::GroupHealth {
                    name,
                    generation: 1,
                    incarnations: vec![1],
                },
            },
            _ => {
                let (generation, size) = self.clients[c]
                    .views
                    .get(&name)
                    .map_or((1, 1), |(g, i)| (*g, i.len() as u32));
                ClientRequest::GroupFailed {
                    name,
                    generation,
                    reason: "a link broke".into(),
                    suspect: Some(self.rng.gen_range(0..size.max(1))),
                }
            }
        }
    }

    fn task_name(&mut self) -> String {
        if self.chance(0.02) {
            return "nowhere".into();
        }
        TASKS[self.rng.gen_range(0..TASKS.len())].to_string()
    }

    /// What a task lease, job or actor needs.
    fn placement(&mut self) -> Placement {
        let large = self.scenario.workers > 100;
        let mut demand = ResourceDemand {
            cpu_millis: self.rng.gen_range(0..=4) * 250,
            ..ResourceDemand::default()
        };
        demand.gpus = match self.rng.gen_range(0..20) {
            0..=3 => GpuShare::ZERO,
            4..=8 => GpuShare::from_units(10),
            9..=13 => GpuShare::from_units(25),
            14..=16 => GpuShare::from_units(50),
            17..=18 if !large => GpuShare::ONE,
            19 if !large => GpuShare::whole(2),
            _ => GpuShare::from_units(20),
        };
        if demand.gpus.units() > 0 && self.chance(0.3) {
            demand.gpu_memory = self.rng.gen_range(1..=8) * GIB;
        }
        if demand.gpus.units() > 0 && self.chance(0.1) {
            let accel = ["H100", "A100", "L4", "TPU"][self.rng.gen_range(0..4)];
            demand.accelerator = Some(accel.to_string());
        }
        let affinity = if !large && self.chance(0.03) {
            Some(NodeAffinity {
                node: self.some_node(),
                soft: self.chance(0.5),
            })
        } else {
            None
        };
        Placement {
            demand,
            strategy: if self.chance(0.3) {
                Strategy::Spread
            } else {
                Strategy::Pack
            },
            affinity,
            priority: if self.chance(0.2) {
                self.rng.gen_range(-2..=2)
            } else {
                0
            },
            // The head's default: the simulation's draws stay as they were.
            pending_timeout_ms: None,
            bundle: None,
        }
    }

    fn actor_spec(&mut self) -> ActorSpec {
        let type_name = if self.chance(0.01) {
            "Nowhere".to_string()
        } else {
            ACTORS[self.rng.gen_range(0..ACTORS.len())].to_string()
        };
        ActorSpec {
            type_name,
            args: vec![1, 2, 3],
            placement: self.placement(),
            restart: RestartPolicy {
                max_restarts: [0, 1, 3, -1, -1][self.rng.gen_range(0..5)],
                max_task_retries: 0,
            },
            checkpoint: CheckpointPolicy {
                enabled: self.chance(0.8),
                every_calls: 0,
                every_ms: 0,
            },
        }
    }

    /// Client `c`'s request was answered: a frame, the last one, or an end with none.
    pub(super) fn client_answered(
        &mut self,
        c: usize,
        request: RequestId,
        kind: &Kind,
        reply: Option<ClientReply>,
        last: bool,
    ) {
        match (kind, reply) {
            (Kind::Lease, Some(ClientReply::TaskLeased(granted))) => {
                self.counts.leases += 1;
                self.clients[c]
                    .leases
                    .insert(request, Some((granted.lease, granted.node)));
                // It runs tasks for a while, then gives the lease back; lost when it could
                // not reach the executor.
                let worker = self.nodes.get(&granted.node).copied();
                let reachable = worker.is_some_and(|w| {
                    let wk = &self.workers[w];
                    wk.up && wk.connected && wk.leases.contains_key(&granted.lease)
                });
                let hold = self.between(Duration::from_millis(2), Duration::from_millis(1500));
                let lost = if reachable {
                    self.chance(0.05)
                } else {
                    self.chance(0.8)
                };
                self.queue
                    .push(self.now + hold, Ev::Return { request, lost });
            }
            (Kind::Lease, _) if last => {
                self.clients[c].leases.remove(&request);
            }
            (Kind::Create(gang), Some(ClientReply::ActorCreated(location))) => {
                self.counts.actors += 1;
                self.clients[c]
                    .actors
                    .insert(location.actor, location.incarnation);
                let truth = self.actors.entry(location.actor).or_default();
                truth.owner = Some(c);
                truth.gang = *gang;
                if !self.clients[c].open {
                    truth.gone = true;
                }
            }
            (Kind::Hold(actor), Some(ClientReply::ActorHeld)) => {
                self.counts.holds += 1;
                self.clients[c].actors.entry(*actor).or_insert(0);
            }
            (Kind::Locate { .. }, Some(ClientReply::ActorLocated(location))) => {
                if let Some(known) = self.clients[c].actors.get_mut(&location.actor) {
                    *known = (*known).max(location.incarnation);
                }
            }
            (Kind::Locate { actor, .. }, Some(ClientReply::Error(e)))
                if e.kind == ember_core::proto::ErrorKind::Unknown =>
            {
                // Stopped: it no longer asks after it.
                self.clients[c].actors.remove(actor);
            }
            (Kind::Group, Some(ClientReply::Group(view))) => {
                self.counts.groups += 1;
                let incarnations = view.members.iter().map(|m| m.incarnation).collect();
                self.clients[c]
                    .views
                    .insert(view.name.clone(), (view.generation, incarnations));
            }
            (Kind::Drain, Some(ClientReply::Drained { .. })) => self.counts.drains += 1,
            (Kind::Gang, Some(ClientReply::GangCreated { gang, .. })) => {
                self.counts.gangs += 1;
                self.clients[c].gangs.push(gang);
            }
            (Kind::Job, Some(ClientReply::Job(JobEvent::Exited(_)))) => self.counts.jobs += 1,
            _ => {}
        }
    }

    /// The executor of `lease` is gone: its client notices (a task fails to reach it) and
    /// gives the lease back as lost.
    pub(super) fn lease_lost(&mut self, lease: LeaseId) {
        let holder = self.clients.iter().find_map(|c| {
            c.leases
                .iter()
                .find(|(_, l)| l.is_some_and(|(x, _)| x == lease))
                .map(|(request, _)| *request)
        });
        if let Some(request) = holder {
            let at =
                self.now + self.between(Duration::from_micros(500), Duration::from_millis(300));
            self.queue.push(
                at,
                Ev::Return {
                    request,
                    lost: true,
                },
            );
        }
    }

    /// The process of `actor`'s incarnation `inc` is gone: now and then its owner's call
    /// fails on it, and the owner asks the head where it went, suspecting it.
    pub(super) fn caller_suspects(&mut self, actor: ActorId, inc: u32) {
        let Some(c) = self.actors.get(&actor).and_then(|t| t.owner) else {
            return;
        };
        if !self.clients[c].open || !self.active() || !self.chance(0.5) {
            return;
        }
        let conn = self.clients[c].conn;
        let body = ClientRequest::LocateActor {
            actor,
            known: inc,
            suspect: true,
            timeout_ms: self.rng.gen_range(500..5000),
        };
        self.send(conn, body, None);
    }

    /// A client gives a task lease back, if its stream is still open.
    pub(super) fn give_back(&mut self, request: RequestId, lost: bool) -> Result<(), String> {
        let Some(open) = self.ledger.get(&request) else {
            return Ok(());
        };
        if self.conns.get(&open.conn).is_some_and(|c| c.closed) {
            return Ok(());
        }
        self.deliver(Input::LeaseReturned { request, lost })
    }
}
