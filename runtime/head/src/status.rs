//! The cluster's state as `ember status` shows it.

use serde::{Deserialize, Serialize};

use ember_core::resources::{GpuGrant, GpuStat};
use ember_head_state::placement::NodeUsage;

use crate::registry::{Head, Work};
use ember_head_state::actor_life::Phase;

/// The whole cluster at one moment: the JSON object of `ember status --json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every joined node with its capacity and what is free.
    pub nodes: Vec<NodeStatus>,
    /// Every actor: alive, restarting, or dead with its reason.
    pub actors: Vec<WorkStatus>,
    /// Every running task and job.
    pub tasks: Vec<WorkStatus>,
    /// Requests waiting for capacity, first to be placed first.
    pub queue: Vec<WorkStatus>,
}

/// One node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id, e.g. `node-3`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The worker's address.
    pub address: String,
    /// Capacity and what is in use.
    pub usage: NodeUsage,
    /// Live GPU figures from the last heartbeat.
    pub gpu_stats: Vec<GpuStat>,
    /// Milliseconds since the last heartbeat.
    pub heartbeat_age_ms: u64,
    /// How many task functions and actor types its executable has.
    pub types: usize,
}

/// One task, job or actor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkStatus {
    /// Its id, e.g. `task-12`.
    pub id: String,
    /// `task`, `actor` or `job`.
    pub kind: String,
    /// The function, actor type or command.
    pub name: String,
    /// What it asked for, e.g. `gpus=0.5, gpu_memory=8GiB`.
    pub demand: String,
    /// Where it runs; absent while it waits.
    pub node: Option<String>,
    /// The GPUs it was given.
    pub gpus: Vec<GpuGrant>,
    /// Its priority while waiting.
    pub priority: i32,
    /// For an actor: its life and checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<ActorLifeStatus>,
}

/// Where an actor is in its life.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActorLifeStatus {
    /// `alive`, `restarting` or `dead`.
    pub state: String,
    /// Which life this is: 1 when created, one more at each restart or move.
    pub incarnation: u32,
    /// How many times it was restarted after losing its process.
    pub restarts: u32,
    /// The sequence number of its newest recorded checkpoint.
    pub checkpoint_seq: Option<u64>,
    /// Milliseconds since that checkpoint was recorded.
    pub checkpoint_age_ms: Option<u64>,
    /// Why it is dead.
    pub reason: Option<String>,
}

impl ClusterStatus {
    /// The JSON text, as `ember status --json` prints it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// Reads the head's state.
pub(crate) fn collect(head: &Head) -> ClusterStatus {
    let mut status = ClusterStatus::default();
    let mut nodes: Vec<_> = head.nodes.iter().map(|n| *n.key()).collect();
    nodes.sort();
    for id in nodes {
        let Some(usage) = head.with_scheduler(|s| s.usage(id)) else {
            continue;
        };
        let Some(n) = head.nodes.get(&id) else {
            continue;
        };
        status.nodes.push(NodeStatus {
            id: id.to_string(),
            name: n.hello.name.clone(),
            address: n.hello.address.clone(),
            usage,
            gpu_stats: n.gpu_stats.clone(),
            heartbeat_age_ms: n.last_heartbeat.elapsed().as_millis() as u64,
            types: n.hello.task_types.len() + n.hello.actor_types.len(),
        });
    }
    let queued: Vec<_> = head.with_scheduler(|s| s.queued().map(|r| r.lease).collect());
    let mut running = Vec::new();
    for w in head.work.iter() {
        let (id, kind, name) = describe(&w.work);
        let entry = WorkStatus {
            id,
            kind: kind.to_string(),
            name,
            demand: w.placement.demand.to_string(),
            node: w.running.as_ref().map(|(n, _)| n.to_string()),
            gpus: w
                .running
                .as_ref()
                .map(|(_, a)| a.gpus.clone())
                .unwrap_or_default(),
            priority: w.placement.priority,
            actor: None,
        };
        if w.running.is_some() && kind != "actor" {
            running.push((*w.key(), entry));
        }
    }
    running.sort_by_key(|(lease, _)| *lease);
    status.tasks = running.into_iter().map(|(_, e)| e).collect();
    let mut actors: Vec<_> = head.actors.iter().map(|a| *a.key()).collect();
    actors.sort();
    for id in actors {
        let Some(a) = head.actors.get(&id) else {
            continue;
        };
        let (state, reason) = match a.life.phase() {
            Phase::Alive(_) => ("alive", None),
            Phase::Restarting => ("restarting", None),
            Phase::Dead(why) => ("dead", Some(why.clone())),
        };
        let location = a.life.location();
        status.actors.push(WorkStatus {
            id: id.to_string(),
            kind: "actor".to_string(),
            name: a.spec.type_name.clone(),
            demand: a.spec.placement.demand.to_string(),
            node: location.map(|l| l.node.to_string()),
            gpus: location
                .map(|l| l.allocation.gpus.clone())
                .unwrap_or_default(),
            priority: a.spec.placement.priority,
            actor: Some(ActorLifeStatus {
                state: state.to_string(),
                incarnation: a.life.incarnation(),
                restarts: a.life.restarts(),
                checkpoint_seq: a.last_checkpoint.map(|(seq, _)| seq),
                checkpoint_age_ms: a
                    .last_checkpoint
                    .map(|(_, at)| at.elapsed().as_millis() as u64),
                reason,
            }),
        });
    }
    for lease in queued {
        if let Some(w) = head.work.get(&lease) {
            let (id, kind, name) = describe(&w.work);
            status.queue.push(WorkStatus {
                id,
                kind: kind.to_string(),
                name,
                demand: w.placement.demand.to_string(),
                node: None,
                gpus: Vec::new(),
                priority: w.placement.priority,
                actor: None,
            });
        }
    }
    status
}

/// Id, kind and name of a piece of work, for display.
fn describe(work: &Work) -> (String, &'static str, String) {
    match work {
        Work::Task { id, name } => (id.to_string(), "task", name.clone()),
        Work::Actor { id, type_name } => (id.to_string(), "actor", type_name.clone()),
        Work::Job { id, command } => (id.to_string(), "job", command.clone()),
    }
}
