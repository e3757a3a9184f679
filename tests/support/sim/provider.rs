//! The autoscaled scenario: the head's autoscaler with a **fake node provider** in the shell,
//! and clients that make peaks of waiting work.
//!
//! The provider answers `Effect::LaunchNode` after a seeded latency, with an instance
//! (`fake-N`) or a refusal; an instance it started boots a worker of its type, which joins
//! with the launch's `LaunchTicket`, unless it is one that never joins. `Effect::StopNode`
//! terminates the instance: its worker dies as a killed process does. Spot notices come from
//! a client (`DrainNode { notice: true }`) or from the worker (`Leaving`), and the instance is
//! reclaimed when its notice runs out.
//!
//! What is checked (`check_autoscaled_step` after every head input, the rest at the ends of
//! the calm spell and of the run):
//! - **Bounds**: nodes of a type not on their way out plus its launches not joined yet never
//!   pass the type's max, nor all of them the cluster's.
//! - **No launch-terminate cycles**, in two rules. *Drains*: a node the autoscaler drains for
//!   idleness had been idle (holding no lease) for its type's idle timeout, and could hold
//!   none of the requests queued just before that step (a node drained while work it could
//!   take waits is a node that will be launched again); a drain is for idleness when it did
//!   not begin with a notice for the node, the scenario's only other drains. *Launches*: a
//!   launch for waiting work (or busy GPUs) is decided only when no node of its type is idle
//!   (holding no lease) and not draining, both before and after that step (the work it is for
//!   would fit that node); a launch to refill a warm pool only when no such node is idle outside
//!   the pool. Launches to keep a type's min and replacements on notice are not held to these.
//!   Idle, draining and warm are as the head's autoscaler tracks them
//!   (`HeadState::autoscaler`); a launch's kind is read from its reason.
//! - **Warm pools**: no warm node stays cordoned after a step while a queued request it could
//!   hold waits (it is handed over at once).
//! - **Floors**: after the calm spell (longer than every idle timeout) nothing waits, nothing
//!   drains, and every type has its min plus its warm pool (joined or launching; fewer only
//!   while its launches back off after failing in a row), and the provider runs exactly the
//!   instances of its joined nodes.
//! - **Instances**: every `StopNode` names an instance the provider started and was not told
//!   to stop yet; at the end every launch was answered, and every instance the provider
//!   started was stopped or is the node of a joined worker (or a launch still within its
//!   timeout).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ember_core::ids::NodeId;
use ember_core::proto::{
    ClientRequest, JobSpec, LaunchTicket, LeaseSpec, Placement, Strategy, WorkerEvent, WorkerHello,
};
use ember_core::resources::{GpuDevice, GpuShare, NodeResources, ResourceDemand};
use ember_head_state::autoscale::{Autoscaler, NodeType, Policy};
use ember_head_state::{Effect, Input};
use rand::Rng;

use super::queue::Ev;
use super::workers::{ACTORS, TASKS};
use super::Sim;

const GIB: u64 = 1 << 30;

/// How long a launch may take to join before the head gives it up.
pub(super) const LAUNCH_TIMEOUT: Duration = Duration::from_secs(6);

/// How often the autoscaler decides (it also decides as work arrives).
pub(super) const AUTOSCALE_INTERVAL: Duration = Duration::from_secs(1);

/// The cluster's max: less than the types' maxes added up, so that it binds too.
const MAX_NODES: u32 = 7;

/// The chance that the provider refuses a launch.
const REFUSED: f64 = 0.12;

/// The chance that an instance the provider started never joins.
const NEVER_JOINS: f64 = 0.08;

/// `count` GPUs of `accelerator` with `memory` each, named for `owner`.
fn gpus(owner: &str, count: u32, accelerator: &str, memory: u64) -> Vec<GpuDevice> {
    (0..count)
        .map(|i| GpuDevice {
            index: i,
            uuid: format!("GPU-{owner}-{i}"),
            name: format!("NVIDIA {accelerator}"),
            memory,
            accelerator: accelerator.to_string(),
            logical: true,
        })
        .collect()
}

/// The node types: CPU-only (min 1), one L4 (a warm pool of one) and eight H100s (min 0).
/// No type has both a min and a warm pool, so each type's floor is their sum.
pub(super) fn node_types() -> Vec<NodeType> {
    let node_type = |name: &str, cpus: u64, gpus: Vec<GpuDevice>| NodeType {
        name: name.into(),
        resources: NodeResources {
            cpu_millis: cpus * 1000,
            gpus,
            custom: Vec::new(),
            labels: Vec::new(),
        },
        min: 0,
        max: 0,
        warm: 0,
        price_micros_per_hour: 0,
        spot: true,
        idle_timeout: Duration::from_secs(2),
    };
    vec![
        NodeType {
            min: 1,
            max: 4,
            price_micros_per_hour: 500_000,
            ..node_type("cpu16", 16, Vec::new())
        },
        NodeType {
            max: 4,
            warm: 1,
            price_micros_per_hour: 800_000,
            idle_timeout: Duration::from_secs(3),
            ..node_type("l4x1", 8, gpus("l4x1", 1, "L4", 24 * GIB))
        },
        NodeType {
            max: 2,
            price_micros_per_hour: 20_000_000,
            ..node_type("h100x8", 64, gpus("h100x8", 8, "H100", 80 * GIB))
        },
    ]
}

/// The autoscaler the scenario's head starts with.
pub(super) fn autoscaler() -> Autoscaler {
    Autoscaler::new(Policy {
        types: node_types(),
        max_nodes: MAX_NODES,
        upscaling_speed: 1.0,
        launch_timeout: LAUNCH_TIMEOUT,
        utilisation: None,
    })
    .expect("a policy the autoscaler can keep")
}

/// Where one launch stands at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Asked for, not answered yet.
    Requested,
    /// Refused: there is no instance.
    Refused,
    /// Its instance runs.
    Running,
    /// Its instance was reclaimed when its spot notice ran out (the head was not asked).
    Reclaimed,
    /// The head had it stopped.
    Stopped,
}

/// One launch the head asked the provider for.
#[derive(Debug)]
pub(super) struct Instance {
    node_type: String,
    state: State,
    /// Its name, once started.
    name: Option<String>,
    /// The worker it booted, once booted.
    worker: Option<usize>,
    /// A spot notice was given for it.
    noticed: bool,
}

/// The fake provider, and what the checks keep between steps.
#[derive(Debug, Default)]
pub(super) struct FakeProvider {
    /// Every launch asked for, by number.
    launches: BTreeMap<u64, Instance>,
    /// Instances started, for their names.
    started: u64,
    /// Launches decided in this step, with their type.
    decided: Vec<(u64, String)>,
    /// Nodes whose drain ended (`CloseNode` "drained") in this step.
    drained: Vec<NodeId>,
}

/// What the autoscaler tracked just before a step.
#[derive(Debug, Default)]
pub(super) struct Before {
    /// Idle nodes not draining, with their type and whether warm.
    idle: BTreeMap<NodeId, (String, bool)>,
    /// How long each idle node not draining had been idle.
    idle_for: BTreeMap<NodeId, Duration>,
    /// Nodes draining.
    draining: BTreeSet<NodeId>,
    /// Idle nodes not draining that could hold a queued request, with one such request.
    wanted: BTreeMap<NodeId, String>,
    /// The node this step's input gives notice for (a `DrainNode` with notice or `Leaving`).
    notice: Option<NodeId>,
}

/// Counts of what the provider and the autoscaler did.
#[derive(Debug, Clone, Default)]
pub struct AutoscaleCounts {
    /// Launches asked for.
    pub launches: u64,
    /// Launches the provider refused.
    pub refused: u64,
    /// Instances that never joined.
    pub never_joined: u64,
    /// Instances stopped at the head's word.
    pub stopped: u64,
    /// Spot notices given.
    pub notices: u64,
    /// Nodes drained for idleness.
    pub idle_drains: u64,
    /// Peaks of work.
    pub peaks: u64,
}

impl Sim {
    /// The head asked the provider for something.
    pub(super) fn provider_effect(&mut self, effect: Effect) -> Result<(), String> {
        match effect {
            Effect::LaunchNode { launch, node_type } => {
                if !node_types().iter().any(|t| t.name == node_type) {
                    return Err(format!(
                        "launch {launch} asks for an unknown type {node_type}"
                    ));
                }
                if self.provider.launches.contains_key(&launch) {
                    return Err(format!("launch {launch} asked for twice"));
                }
                self.counts.autoscale.launches += 1;
                self.provider.decided.push((launch, node_type.clone()));
                self.provider.launches.insert(
                    launch,
                    Instance {
                        node_type,
                        state: State::Requested,
                        name: None,
                        worker: None,
                        noticed: false,
                    },
                );
                let ok = !self.chance(REFUSED);
                let latency = if self.chance(0.05) {
                    self.between(Duration::from_secs(3), Duration::from_secs(8))
                } else {
                    self.between(Duration::from_millis(50), Duration::from_millis(1500))
                };
                self.queue
                    .push(self.now + latency, Ev::Launched { launch, ok });
            }
            Effect::StopNode { launch, instance } => {
                let Some(i) = self.provider.launches.get_mut(&launch) else {
                    return Err(format!("StopNode for launch {launch}, never asked for"));
                };
                if i.name.as_deref() != Some(instance.as_str()) {
                    return Err(format!(
                        "StopNode names {instance} for launch {launch}, whose instance is {:?}",
                        i.name
                    ));
                }
                match i.state {
                    State::Running | State::Reclaimed => {}
                    state => {
                        return Err(format!(
                            "StopNode for {instance} (launch {launch}), which is {state:?}"
                        ))
                    }
                }
                i.state = State::Stopped;
                let worker = i.worker;
                self.counts.autoscale.stopped += 1;
                self.trace.note(&format!("{instance} is stopped"));
                if let Some(w) = worker {
                    self.kill_instance_worker(w);
                }
            }
            other => return Err(format!("not the provider's: {other:?}")),
        }
        Ok(())
    }

    /// The provider answers a launch: an instance, which boots its worker (unless it never
    /// joins), or a refusal.
    pub(super) fn provider_launched(&mut self, launch: u64, ok: bool) -> Result<(), String> {
        let joins = ok && !self.chance(NEVER_JOINS);
        let boot = if self.chance(0.05) {
            self.between(Duration::from_secs(4), Duration::from_secs(9))
        } else {
            self.between(Duration::from_millis(200), Duration::from_secs(2))
        };
        if ok {
            self.provider.started += 1;
        }
        let started = self.provider.started;
        let i = self
            .provider
            .launches
            .get_mut(&launch)
            .expect("answered launches were asked for");
        let result = if ok {
            let name = format!("fake-{started}");
            i.name = Some(name.clone());
            i.state = State::Running;
            if joins {
                self.queue.push(self.now + boot, Ev::Boot { launch });
            } else {
                self.counts.autoscale.never_joined += 1;
                self.trace.note(&format!("{name} never joins"));
            }
            Ok(name)
        } else {
            i.state = State::Refused;
            self.counts.autoscale.refused += 1;
            Err(format!("no {} capacity in the zone", i.node_type))
        };
        self.deliver(Input::Launched { launch, result })
    }

    /// An instance boots its worker, which joins with the launch's ticket; nothing if it was
    /// stopped first.
    pub(super) fn provider_boot(&mut self, launch: u64) {
        let i = &self.provider.launches[&launch];
        if i.state != State::Running {
            return;
        }
        let node_type = i.node_type.clone();
        let t = node_types()
            .into_iter()
            .find(|t| t.name == node_type)
            .expect("a known type");
        let w = self.workers.len();
        let mut resources = t.resources.clone();
        for (i, gpu) in resources.gpus.iter_mut().enumerate() {
            gpu.uuid = format!("GPU-{w}-{i}");
        }
        let hello = WorkerHello {
            name: format!("worker-{w}"),
            resources,
            task_types: TASKS.iter().map(|t| t.to_string()).collect(),
            actor_types: ACTORS.iter().map(|a| a.to_string()).collect(),
            address: format!("10.1.{}.{}:7100", w / 250, w % 250),
            rejoin: None,
            launch: Some(LaunchTicket { launch, node_type }),
        };
        if let Some(i) = self.provider.launches.get_mut(&launch) {
            i.worker = Some(w);
        }
        let at = self.now + self.hop();
        self.spawn_worker_with(at, hello);
    }

    /// A spot instance's notice ran out: the cloud takes it, whatever the head did.
    pub(super) fn provider_reclaim(&mut self, launch: u64) {
        let i = self.provider.launches.get_mut(&launch).expect("a launch");
        if i.state != State::Running {
            return;
        }
        i.state = State::Reclaimed;
        let worker = i.worker;
        self.trace.note(&format!("launch {launch} is reclaimed"));
        if let Some(w) = worker {
            self.kill_instance_worker(w);
        }
    }

    /// The instance under worker `w` is gone: the worker dies as a killed process does.
    fn kill_instance_worker(&mut self, w: usize) {
        if !self.workers[w].up {
            return;
        }
        self.callers_notice(w);
        self.end_all(w);
        let at = self.now + self.between(Duration::from_millis(1), Duration::from_millis(300));
        self.queue.push(at, Ev::ShellClose(w));
    }

    /// A fault of the autoscaled scenario: a spot notice (from a client or from the worker)
    /// or a worker's crash, on a joined node.
    pub(super) fn autoscaled_fault(&mut self) -> Result<(), String> {
        let live: Vec<(u64, usize, NodeId)> = self
            .provider
            .launches
            .iter()
            .filter(|(_, i)| i.state == State::Running && !i.noticed)
            .filter_map(|(launch, i)| {
                let w = i.worker?;
                let wk = &self.workers[w];
                (wk.up && wk.connected).then_some((*launch, w, wk.node?))
            })
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let (launch, w, node) = live[self.rng.gen_range(0..live.len())];
        match self.rng.gen_range(0..10) {
            0..=7 => {
                let grace_ms = self.rng.gen_range(300..3000);
                self.counts.autoscale.notices += 1;
                if let Some(i) = self.provider.launches.get_mut(&launch) {
                    i.noticed = true;
                }
                let open: Vec<usize> = (0..self.clients.len())
                    .filter(|&c| self.clients[c].open)
                    .collect();
                if open.is_empty() || self.chance(0.4) {
                    self.trace
                        .note(&format!("worker {w} ({node}) has a spot notice"));
                    self.send_event(w, WorkerEvent::Leaving { grace_ms });
                } else {
                    let c = open[self.rng.gen_range(0..open.len())];
                    self.trace
                        .note(&format!("client {c} gives {node} a spot notice"));
                    let conn = self.clients[c].conn;
                    let body = ClientRequest::DrainNode {
                        node,
                        grace_ms,
                        notice: true,
                    };
                    self.send(conn, body, None);
                }
                let end = self.now + Duration::from_millis(grace_ms) + self.hop();
                self.queue.push(end, Ev::Reclaim { launch });
            }
            _ => {
                self.counts.crashes += 1;
                self.trace.note(&format!("worker {w} ({node}) crashes"));
                self.callers_notice(w);
                self.end_all(w);
                if self.chance(0.7) {
                    let at = self.now
                        + self.between(Duration::from_millis(1), Duration::from_millis(800));
                    self.queue.push(at, Ev::ShellClose(w));
                }
            }
        }
        Ok(())
    }

    /// A peak: every client asks for a burst of work of the shapes the node types hold; the
    /// next peak comes after a quiet spell, sometimes shorter than the idle timeouts and
    /// sometimes longer.
    pub(super) fn peak(&mut self) -> Result<(), String> {
        if !self.active() {
            return Ok(());
        }
        self.counts.autoscale.peaks += 1;
        self.trace.note("a peak of work");
        for c in 0..self.clients.len() {
            if !self.clients[c].open {
                continue;
            }
            let n = self.rng.gen_range(2..=10);
            for _ in 0..n {
                self.peak_request(c);
            }
        }
        let quiet = self.between(Duration::from_secs(2), Duration::from_secs(12));
        self.queue.push(self.now + quiet, Ev::Peak);
        Ok(())
    }

    /// Client `c` asks for one piece of a peak's work: a task lease (sometimes given up while
    /// it waits) or a job.
    fn peak_request(&mut self, c: usize) {
        let conn = self.clients[c].conn;
        let placement = self.peak_placement();
        if self.chance(0.2) {
            let spec = JobSpec {
                command: vec!["python".into(), "train.py".into()],
                env: Vec::new(),
                placement,
            };
            self.send(conn, ClientRequest::SubmitJob(spec), None);
            return;
        }
        // Now and then a task no worker's executable has (see `Scenario::unknown_tasks`).
        let name = if self.chance(self.scenario.unknown_tasks) {
            "nowhere"
        } else {
            TASKS[self.rng.gen_range(0..TASKS.len())]
        };
        let spec = LeaseSpec {
            name: name.to_string(),
            placement,
        };
        let request = self.send(conn, ClientRequest::LeaseTask(spec), None);
        self.clients[c].leases.insert(request, None);
        if self.chance(0.1) {
            let at = self.now + self.jitter(Duration::from_secs(3));
            self.queue.push(
                at,
                Ev::Return {
                    request,
                    lost: false,
                },
            );
        }
    }

    /// What a peak's work needs: CPUs only, a share of one GPU, or several H100s.
    fn peak_placement(&mut self) -> Placement {
        let mut demand = ResourceDemand::default();
        match self.rng.gen_range(0..20) {
            0..=8 => demand.cpu_millis = self.rng.gen_range(2..=16) * 500,
            9..=16 => {
                demand.cpu_millis = self.rng.gen_range(0..=4) * 500;
                demand.gpus = GpuShare::from_units([25, 50, 100][self.rng.gen_range(0..3)]);
                if self.chance(0.3) {
                    demand.gpu_memory = self.rng.gen_range(1..=16) * GIB;
                }
                if self.chance(0.1) {
                    demand.accelerator = Some("H100".into());
                }
            }
            _ => {
                demand.cpu_millis = self.rng.gen_range(0..=16) * 1000;
                demand.gpus = GpuShare::whole([2, 4, 8][self.rng.gen_range(0..3)]);
            }
        }
        Placement {
            demand,
            strategy: if self.chance(0.3) {
                Strategy::Spread
            } else {
                Strategy::Pack
            },
            affinity: None,
            priority: 0,
            pending_timeout_ms: None,
            bundle: None,
        }
    }

    /// What the autoscaler tracks just before `input` is handled.
    pub(super) fn autoscaled_before(&self, input: &Input) -> Before {
        let Some(a) = self.head.autoscaler() else {
            return Before::default();
        };
        let sched = self.head.scheduler();
        let mut before = Before {
            notice: match input {
                Input::Request {
                    body: ClientRequest::DrainNode { node, .. },
                    ..
                } => Some(*node),
                Input::Event {
                    node,
                    event: WorkerEvent::Leaving { .. },
                } => Some(*node),
                _ => None,
            },
            ..Before::default()
        };
        for node in sched.node_ids() {
            let Some(n) = a.node(node) else { continue };
            if n.draining {
                before.draining.insert(node);
                continue;
            }
            if n.idle_since.is_none() {
                continue;
            }
            before.idle.insert(node, (n.node_type.to_string(), n.warm));
            if let Some(since) = n.idle_since {
                let idle_for = (self.base + self.now).saturating_duration_since(since);
                before.idle_for.insert(node, idle_for);
            }
            if let Some(r) = sched.queued().find(|r| sched.would_hold(node, r)) {
                before.wanted.insert(node, format!("{r:?}"));
            }
        }
        before
    }

    /// The checks after each step of the autoscaled scenario (see the module's docs).
    pub(super) fn check_autoscaled_step(&mut self, before: Before) -> Result<(), String> {
        let decided = std::mem::take(&mut self.provider.decided);
        let drained = std::mem::take(&mut self.provider.drained);
        let Some(a) = self.head.autoscaler() else {
            return Ok(());
        };
        let sched = self.head.scheduler();
        let policy = a.policy();
        // Bounds.
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        let mut idle_after: BTreeMap<NodeId, (String, bool)> = BTreeMap::new();
        // A drain that ended in this step may have begun in it.
        let mut newly_draining: Vec<NodeId> = drained
            .into_iter()
            .filter(|n| !before.draining.contains(n))
            .collect();
        for node in sched.node_ids() {
            let Some(n) = a.node(node) else { continue };
            if n.draining {
                if !before.draining.contains(&node) {
                    newly_draining.push(node);
                }
                continue;
            }
            *counts.entry(n.node_type).or_default() += 1;
            if n.warm {
                if let Some(r) = sched.queued().find(|r| sched.would_hold(node, r)) {
                    return Err(format!(
                        "warm {node} ({}) stays cordoned while work it could take waits: {r:?}",
                        n.node_type
                    ));
                }
            }
            if n.idle_since.is_some() {
                idle_after.insert(node, (n.node_type.to_string(), n.warm));
            }
        }
        for l in a.pending_launches() {
            *counts.entry(l.node_type).or_default() += 1;
        }
        for t in &policy.types {
            let count = counts.get(t.name.as_str()).copied().unwrap_or(0);
            if count > t.max {
                return Err(format!(
                    "{count} nodes of type {} (joined and not draining, or launching), above \
                     its max of {}",
                    t.name, t.max
                ));
            }
        }
        let total: u32 = counts.values().sum();
        if total > policy.max_nodes {
            return Err(format!(
                "{total} nodes (joined and not draining, or launching), above the cluster's \
                 max of {}",
                policy.max_nodes
            ));
        }
        // No node drained for idleness while work it could hold waited.
        for node in newly_draining {
            if before.notice == Some(node) {
                continue;
            }
            self.counts.autoscale.idle_drains += 1;
            let timeout = a
                .node(node)
                .and_then(|n| policy.types.iter().find(|t| t.name == n.node_type))
                .or_else(|| {
                    let (name, _) = before.idle.get(&node)?;
                    policy.types.iter().find(|t| t.name == *name)
                })
                .map(|t| t.idle_timeout);
            let idle_for = before.idle_for.get(&node).copied().unwrap_or_default();
            if timeout.is_none_or(|timeout| idle_for < timeout) {
                return Err(format!(
                    "{node} was drained for idleness after {idle_for:?} idle, under its type's \
                     idle timeout ({timeout:?})"
                ));
            }
            if let Some(request) = before.wanted.get(&node) {
                return Err(format!(
                    "{node} was drained for idleness while work it could hold waited: {request}"
                ));
            }
        }
        // No launch for work while a node of its type sits idle.
        for (launch, node_type) in decided {
            let Some(reason) = a
                .pending_launches()
                .find(|l| l.launch == launch)
                .map(|l| l.reason.to_string())
            else {
                return Err(format!("launch {launch} is not among the head's launches"));
            };
            if reason.starts_with("replacing") || reason.contains("keeps at least") {
                continue;
            }
            let for_warm = reason.contains("nodes warm");
            let idle = before.idle.iter().find(|(node, (t, warm))| {
                *t == node_type
                    && !(for_warm && *warm)
                    && idle_after.get(node).is_some_and(|(_, w)| !(for_warm && *w))
            });
            if let Some((node, (_, warm))) = idle {
                return Err(format!(
                    "launch {launch} of {node_type} ({reason}) was decided while {node} of that \
                     type was idle (warm: {warm}) and not draining"
                ));
            }
        }
        Ok(())
    }

    /// After the calm spell: nothing waits or drains, and every type is back to its floor
    /// (its min plus its warm pool), the provider running exactly those nodes' instances.
    pub(super) fn check_autoscaled_calm(&self) -> Result<(), String> {
        let Some(a) = self.head.autoscaler() else {
            return Ok(());
        };
        let sched = self.head.scheduler();
        if sched.queued_len() > 0 {
            let stuck: Vec<String> = sched.queued().take(3).map(|r| format!("{r:?}")).collect();
            return Err(format!(
                "{} requests still wait after the calm spell, e.g. {stuck:?}",
                sched.queued_len()
            ));
        }
        for t in &a.policy().types {
            let mut joined = 0;
            for node in sched.node_ids() {
                let Some(n) = a.node(node).filter(|n| n.node_type == t.name) else {
                    continue;
                };
                if n.draining {
                    return Err(format!("{node} of {} still drains after the calm", t.name));
                }
                joined += 1;
            }
            let launching = a
                .pending_launches()
                .filter(|l| l.node_type == t.name)
                .count() as u32;
            let floor = t.min + t.warm;
            // Under the floor only while its launches back off after failing in a row.
            let backing_off = a
                .failures()
                .get(&t.name)
                .is_some_and(|f| f.retry_at > self.base + self.now);
            let short = joined + launching < floor && backing_off;
            if joined > floor || (joined + launching != floor && !short) {
                return Err(format!(
                    "type {} has {joined} nodes and {launching} launching after the calm \
                     spell, not its floor of {floor} (min {}, warm {}; failures: {:?})",
                    t.name,
                    t.min,
                    t.warm,
                    a.failures().get(&t.name)
                ));
            }
            let running = self
                .provider
                .launches
                .values()
                .filter(|i| {
                    i.node_type == t.name && i.state == State::Running && i.worker.is_some()
                })
                .count() as u32;
            if running != joined {
                return Err(format!(
                    "the provider runs {running} booted instances of {} after the calm spell, \
                     for {joined} nodes",
                    t.name
                ));
            }
        }
        Ok(())
    }

    /// At the end: every launch was answered, and every instance started was stopped or is
    /// a joined node's (or a launch still within its timeout).
    pub(super) fn check_autoscaled_end(&self) -> Result<(), String> {
        let Some(a) = self.head.autoscaler() else {
            return Ok(());
        };
        for (launch, i) in &self.provider.launches {
            let pending = a
                .pending_launches()
                .find(|l| l.launch == *launch)
                .is_some_and(|l| (self.base + self.now).duration_since(l.since) < LAUNCH_TIMEOUT);
            let ok = match i.state {
                State::Refused | State::Stopped => true,
                State::Requested => pending,
                State::Reclaimed => false,
                State::Running => {
                    pending
                        || i.worker.is_some_and(|w| {
                            let wk = &self.workers[w];
                            wk.up && !wk.forgotten && wk.node.is_some_and(|n| a.node(n).is_some())
                        })
                }
            };
            if !ok {
                return Err(format!(
                    "launch {launch} of {} ({:?}, instance {:?}, worker {:?}) was neither \
                     stopped nor joined by the end",
                    i.node_type, i.state, i.name, i.worker
                ));
            }
        }
        Ok(())
    }

    /// A node's drain ended (`CloseNode` "drained"): checked after the step.
    pub(super) fn provider_closed_drained(&mut self, node: NodeId) {
        self.provider.drained.push(node);
    }
}
