//! A deterministic simulation of the head: the real state machine (`ember-head-state`) driven
//! by simulated workers, clients, a checkpoint store and the shell between them, on a virtual
//! clock, all from one seed (after quinn-proto's `Pair` and TigerBeetle's VOPR).
//!
//! Time is one base [`Instant`] plus a virtual offset. Each step is the earliest of the next
//! scheduled event (a message arriving, a worker's heartbeat, a fault, a client's next move)
//! and the head's own [`HeadState::poll_timeout`]; nothing ever sleeps. Workers answer the
//! head's commands after seeded latencies, run actors (which save checkpoints), task leases
//! and jobs, send heartbeats, and fail: they crash (their connection closes later, or never
//! and the heartbeat window finds them), freeze, turn slow, lose actors' processes, leave,
//! and new ones join. Clients take and give back task leases, create actors with restart and
//! checkpoint policies, locate (and suspect) them, kill them, drain nodes, form, join and
//! check collective groups, submit jobs, wait for nodes, ask for the status, and disconnect.
//!
//! After every step the simulation checks what the head promises (see `checks.rs`). After
//! the active phase, faults and new operations stop for 10 s of virtual time, and every actor
//! that can come back must be back (or wait for capacity). Then clients give back their
//! leases, kill some actors and disconnect, and once the cluster is quiescent the simulation
//! checks that every node's capacity is back to its total, every request was answered once,
//! and every checkpoint was forgotten with its actor. A failure names the seed, the step, the
//! last 50 steps, and the command that replays it.
//!
//! Run by `tests/simulation.rs`; [`run`] is the way in.

mod checks;
mod clients;
mod head_crash;
mod provider;
mod queue;
mod shell;
mod trace;
mod workers;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ember_core::ids::{ActorId, LeaseId, NodeId};
use ember_head_state::journal::{Change, Journaled, MemoryTables};
use ember_head_state::placement::PlacementRequest;
use ember_head_state::{CommandId, Config, Effect, HeadState, Input, RequestId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use clients::Client;
pub use provider::AutoscaleCounts;
use provider::FakeProvider;
use queue::{Ev, Queue};
use shell::{Conn, Open};
use trace::Trace;
use workers::Worker;

/// The size and temper of one simulated cluster.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name, as `EMBER_SIM_SCENARIO` gives it.
    pub name: &'static str,
    /// Workers at the start (more join as others die).
    pub workers: usize,
    /// Clients at the start (one replaces each that disconnects).
    pub clients: usize,
    /// Actors each client creates in its opening burst.
    pub actors_per_client: usize,
    /// Head inputs while clients act and faults happen; then the cluster calms down, is
    /// checked for progress, and winds down.
    pub steps: u64,
    /// Faults per virtual second, across the cluster.
    pub fault_rate: f64,
    /// The mean time between two operations of one client.
    pub op_interval: Duration,
    /// The mean time between two checkpoints of one actor.
    pub save_interval: Duration,
    /// The whole state (the head's invariants, every node's capacity, every live
    /// incarnation) is checked every this many steps; cheaper checks run at every step.
    pub check_every: u64,
    /// The head's heartbeat window.
    pub heartbeat_timeout: Duration,
    /// The chance that a fault is a crash of the head (rebuilt from its journal).
    pub head_crash: f64,
    /// How long a request no live node could hold any more (stranded) waits for a node that
    /// fits before it fails: the head's `Config::pending_timeout`.
    pub pending_timeout: Duration,
    /// The head has an autoscaler and the shell a fake node provider (`provider.rs`): no
    /// workers but launched ones, clients that make peaks of work, spot notices for faults.
    pub autoscale: bool,
    /// In the autoscaled scenario, the chance that a peak's task lease names a task no
    /// worker's executable has.
    pub unknown_tasks: f64,
}

impl Scenario {
    /// How long a restarted head waits for the workers of its last life (and how long those
    /// keep their executors): twice the heartbeat window, short to keep runs short.
    pub fn rejoin_window(&self) -> Duration {
        self.heartbeat_timeout * 2
    }

    /// A small cluster (12 workers, 4 clients) with many faults, checked whole at every step.
    pub fn small() -> Self {
        Scenario {
            name: "small",
            workers: 12,
            clients: 4,
            actors_per_client: 6,
            steps: 30_000,
            fault_rate: 3.0,
            op_interval: Duration::from_millis(40),
            save_interval: Duration::from_millis(400),
            check_every: 1,
            heartbeat_timeout: Duration::from_secs(2),
            head_crash: 0.02,
            // The head's default: a shorter one changes the runs the recorded seeds replay.
            pending_timeout: Config::default().pending_timeout,
            autoscale: false,
            unknown_tasks: 0.0,
        }
    }

    /// An autoscaled cluster (`provider.rs`): no workers at the start but those its min
    /// launches, three clients making peaks of work with quiet spells between them, a fake
    /// provider (latency, refusals, instances that never join), and spot notices and crashes
    /// for faults; no head crashes.
    pub fn autoscaled() -> Self {
        Scenario {
            name: "autoscaled",
            workers: 0,
            clients: 3,
            actors_per_client: 0,
            steps: 8_000,
            fault_rate: 0.3,
            head_crash: 0.0,
            autoscale: true,
            ..Self::small()
        }
    }

    /// The autoscaled scenario where 2% of the peaks' task leases name a task no worker has.
    /// Node types that list no labels carry what their first worker carries
    /// (`Autoscaler::learn_labels`): such a lease is refused, or stranded, not launched for.
    pub fn autoscaled_unknown_tasks() -> Self {
        Scenario {
            name: "autoscaled-unknown-tasks",
            unknown_tasks: 0.02,
            ..Self::autoscaled()
        }
    }

    /// How long the calm spell after the active phase lasts: in the autoscaled scenario,
    /// longer than any launch's back-off is likely to be, and than every idle timeout.
    pub fn calm(&self) -> Duration {
        if self.autoscale {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(10)
        }
    }

    /// A small cluster (6 workers, 4 clients) with many faults and a 2 s pending timeout:
    /// with few workers, the only nodes that could hold some requests (an accelerator type, a
    /// rare task type, a node named by a hard affinity) often all leave or drain, and the
    /// requests they strand fail at their timeout unless a node that fits joins first.
    pub fn stranded() -> Self {
        Scenario {
            name: "stranded",
            workers: 6,
            pending_timeout: Duration::from_secs(2),
            ..Self::small()
        }
    }

    /// 1,000 workers and 10,000 actors, with faults at a cluster's pace.
    pub fn large() -> Self {
        Scenario {
            name: "large",
            workers: 1_000,
            clients: 20,
            actors_per_client: 500,
            steps: 150_000,
            fault_rate: 8.0,
            op_interval: Duration::from_millis(50),
            save_interval: Duration::from_secs(4),
            check_every: 1_000,
            heartbeat_timeout: Duration::from_secs(2),
            head_crash: 0.0005,
            pending_timeout: Config::default().pending_timeout,
            autoscale: false,
            unknown_tasks: 0.0,
        }
    }

    /// The scenario named `name` (`small`, `large`, `stranded`, `autoscaled` or
    /// `autoscaled-unknown-tasks`).
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "small" => Some(Self::small()),
            "large" => Some(Self::large()),
            "stranded" => Some(Self::stranded()),
            "autoscaled" => Some(Self::autoscaled()),
            "autoscaled-unknown-tasks" => Some(Self::autoscaled_unknown_tasks()),
            _ => None,
        }
    }

    /// This scenario with the number of steps from `EMBER_SIM_STEPS` and the whole check's
    /// cadence from `EMBER_SIM_CHECK_EVERY`, where set.
    pub fn with_env(mut self) -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse().ok());
        if let Some(steps) = var("EMBER_SIM_STEPS") {
            self.steps = steps;
        }
        if let Some(every) = var("EMBER_SIM_CHECK_EVERY") {
            self.check_every = every.max(1);
        }
        self
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Head inputs handled.
    pub steps: u64,
    /// Virtual time simulated.
    pub virtual_time: Duration,
    /// Virtual time when clients stopped acting and faults stopped.
    pub active_until: Duration,
    /// Virtual time when the cluster had settled (every client gone, nothing held).
    pub settled_at: Duration,
    /// Wall time taken.
    pub wall: Duration,
    /// CPU time its thread took (where the system says), a steadier measure than wall time
    /// on a busy machine.
    pub cpu: Option<Duration>,
    /// A hash of every step's input and effects: equal for two runs of one seed.
    pub trace_hash: u64,
    /// Counts of what happened.
    pub counts: Counts,
}

impl Report {
    /// Steps per second of the thread's CPU time (of wall time where that is unknown).
    pub fn steps_per_second(&self) -> f64 {
        let spent = self.cpu.unwrap_or(self.wall);
        self.steps as f64 / spent.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} steps, {:.1} s virtual (active until {:.1} s, settled at {:.1} s), \
             {:.2} s wall, {} ({:.0} steps/s); {:?}",
            self.seed,
            self.steps,
            self.virtual_time.as_secs_f64(),
            self.active_until.as_secs_f64(),
            self.settled_at.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.cpu.map_or("CPU time unknown".into(), |c| format!(
                "{:.2} s CPU",
                c.as_secs_f64()
            )),
            self.steps_per_second(),
            self.counts
        )
    }
}

/// Counts of what happened in a run, to see that a scenario exercises what it should.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Workers that joined.
    pub workers: u64,
    /// Workers that crashed.
    pub crashes: u64,
    /// Workers declared dead by the head (missed heartbeats or a probe).
    pub declared_dead: u64,
    /// Actors whose first incarnation came up.
    pub actors: u64,
    /// Incarnations after the first that came up (restarts and moves).
    pub restarts: u64,
    /// Restarts restored from a checkpoint.
    pub restores: u64,
    /// Checkpoints recorded.
    pub checkpoints: u64,
    /// Task leases granted.
    pub leases: u64,
    /// Jobs that ran to their end.
    pub jobs: u64,
    /// Drains answered.
    pub drains: u64,
    /// Group views answered.
    pub groups: u64,
    /// What the autoscaler and the fake provider did (autoscaled scenario).
    pub autoscale: AutoscaleCounts,
    /// Gangs placed whole and answered.
    pub gangs: u64,
    /// Holds of actors answered (mostly of another client's actors).
    pub holds: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Requests that ran out of time.
    pub timeouts: u64,
    /// Requests that failed at their pending timeout, stranded (no live node could hold them).
    pub stranded_timeouts: u64,
    /// Head crashes, each followed by a head rebuilt from its journal.
    pub head_crashes: u64,
    /// Workers that lost the head, kept their executors and asked to re-join as their node.
    pub rejoins: u64,
    /// Of those, the ones given their node back (the others joined as new nodes).
    pub rejoined: u64,
    /// Actor incarnations adopted as they ran by a restarted head.
    pub adopted: u64,
    /// Collective groups a restarted head brought back from its journal.
    pub groups_restored: u64,
}

/// Runs `scenario` from `seed` and checks it; `Err` is the failure's report (with the seed,
/// the step, the last steps and the command that replays it).
pub fn run(seed: u64, scenario: &Scenario) -> Result<Report, String> {
    let wall = Instant::now();
    let cpu = thread_cpu();
    let mut sim = Sim::new(seed, scenario.clone());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(violation)) => Some(violation),
        Err(panic) => Some(format!(
            "the state machine or the simulation panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    };
    match failure {
        None => Ok(Report {
            seed,
            steps: sim.step,
            virtual_time: sim.now,
            active_until: sim.active_until,
            settled_at: sim.settled_at,
            wall: wall.elapsed(),
            cpu: cpu.zip(thread_cpu()).map(|(a, b)| b.saturating_sub(a)),
            trace_hash: sim.trace.hash(),
            counts: sim.counts.clone(),
        }),
        Some(violation) => Err(format!(
            "simulation seed {seed} (scenario `{name}`) failed at step {step}, t = {t:.6} s:\n  \
             {violation}\n\nthe last steps:\n{tail}\nreplay it with:\n  \
             EMBER_SIM_SEED={seed} EMBER_SIM_SCENARIO={name}{steps} cargo test -p ember-tests \
             --test simulation -- --exact replay --nocapture\n",
            name = scenario.name,
            step = sim.step,
            t = sim.now.as_secs_f64(),
            tail = sim.trace.tail(),
            steps = env_differences(scenario),
        )),
    }
}

/// The environment that sets `scenario` apart from the scenario of its name, for the replay
/// command.
fn env_differences(scenario: &Scenario) -> String {
    let mut env = String::new();
    if let Some(named) = Scenario::by_name(scenario.name) {
        if scenario.steps != named.steps {
            env += &format!(" EMBER_SIM_STEPS={}", scenario.steps);
        }
        if scenario.check_every != named.check_every {
            env += &format!(" EMBER_SIM_CHECK_EVERY={}", scenario.check_every);
        }
    }
    env
}

/// The change of a `Journal` effect.
fn journal_change(effect: &Effect) -> Option<&Change> {
    match effect {
        Effect::Journal(change) => Some(change),
        _ => None,
    }
}

/// The CPU time of the calling thread so far (Linux: `/proc/thread-self/schedstat`).
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Clients act and faults happen.
    Active,
    /// No new faults or operations: what is under way finishes, and every actor that can
    /// come back does (checked at the end).
    Calm { until: Duration },
    /// Clients give their leases back and kill their actors, then disconnect.
    Winding { until: Duration },
    /// Waiting for everything to settle.
    Settling { deadline: Duration },
}

/// What the simulation knows of an actor, beside the head.
#[derive(Debug, Default)]
struct ActorTruth {
    /// The client that created it, once its creation was answered.
    owner: Option<usize>,
    /// Its checkpoint policy allows checkpoints.
    checkpoints: bool,
    /// A kill was asked for, or its owner went away: the head may forget it.
    gone: bool,
    /// The gang it was created in: removing that gang stops it.
    gang: Option<ember_core::ids::GangId>,
    /// The newest incarnation the head asked a worker to start.
    created: u32,
    /// The newest incarnation the head told anyone about.
    told: u32,
    /// The newest checkpoint the head recorded, as last seen.
    recorded: Option<u64>,
}

/// The checkpoint store: what was written, and what is being written.
#[derive(Debug, Default)]
struct Store {
    images: BTreeMap<ActorId, BTreeMap<u64, Vec<u8>>>,
    writing: BTreeMap<ActorId, u32>,
    forgotten: BTreeSet<ActorId>,
}

impl Store {
    fn newest(&self, actor: ActorId) -> Option<(u64, &Vec<u8>)> {
        self.images
            .get(&actor)
            .and_then(|m| m.last_key_value())
            .map(|(s, i)| (*s, i))
    }
}

/// The simulated cluster around one head.
struct Sim {
    scenario: Scenario,
    head: HeadState,
    /// What the head committed: the journal's tables, as the shell commits them.
    journal: MemoryTables,
    /// Actors whose owner connected to an earlier head life: the simulation stops them as
    /// the run winds down.
    orphans: BTreeSet<ActorId>,
    /// Every actor whose owner connected to an earlier head life: the head stops those no
    /// client of its new life claims (by locating them) when its re-join window ends.
    unowned: BTreeSet<ActorId>,
    base: Instant,
    now: Duration,
    rng: StdRng,
    queue: Queue,
    step: u64,
    phase: Phase,
    active_until: Duration,
    settled_at: Duration,
    trace: Trace,
    counts: Counts,
    next_conn: u64,
    next_request: u64,
    conns: BTreeMap<ember_head_state::ConnId, Conn>,
    workers: Vec<Worker>,
    nodes: BTreeMap<NodeId, usize>,
    clients: Vec<Client>,
    /// Commands sent and not answered yet, and the worker each went to.
    commands: BTreeMap<CommandId, usize>,
    /// Requests the head has and has not answered for the last time.
    ledger: BTreeMap<RequestId, Open>,
    actors: BTreeMap<ActorId, ActorTruth>,
    store: Store,
    /// Actors whose checkpoints the head forgot in this step (checked once it is over).
    forgets: Vec<ActorId>,
    /// Actors whose checkpoints changed in this step.
    touched: BTreeSet<ActorId>,
    /// Incarnations a worker stopped because the head said so.
    killed: BTreeSet<(ActorId, u32, NodeId)>,
    /// Leases seen granted at the last whole check, and those seen released since.
    granted: BTreeSet<LeaseId>,
    released: BTreeSet<LeaseId>,
    /// Where each actor's processes run: (worker, incarnation).
    procs_of: BTreeMap<ActorId, BTreeSet<(usize, u32)>>,
    /// Final checkpoints of seals on their way: the worker and the seal command.
    seals: BTreeMap<RequestId, (usize, CommandId)>,
    /// Checkpoint I/O in flight, by ticket.
    tickets: BTreeMap<ember_head_state::Ticket, ActorId>,
    /// Task leases whose executor died on its worker.
    lost_leases: BTreeSet<LeaseId>,
    /// The lease granted on each task lease request still open.
    granted_leases: BTreeMap<RequestId, LeaseId>,
    /// What each open request for a placement (task lease, job, actor creation) asks the
    /// scheduler for, as the head files it.
    asked: BTreeMap<RequestId, PlacementRequest>,
    /// The status request that checks progress after the calm spell.
    progress: Option<RequestId>,
    /// Every generation of each group the head told anyone of, with its members, in every
    /// head life: a generation is never handed out twice.
    generations: BTreeMap<String, BTreeMap<u64, Vec<ActorId>>>,
    /// The fake node provider (autoscaled scenario).
    provider: FakeProvider,
}

impl Sim {
    fn new(seed: u64, scenario: Scenario) -> Self {
        let mut config = Config {
            heartbeat_timeout: scenario.heartbeat_timeout,
            form_wait: Duration::from_secs(5),
            rejoin_window: scenario.rejoin_window(),
            pending_timeout: scenario.pending_timeout,
            ..Config::default()
        };
        if scenario.autoscale {
            config.autoscaler = Some(provider::autoscaler());
            config.autoscale_interval = provider::AUTOSCALE_INTERVAL;
        }
        let base = Instant::now();
        let (head, first) = HeadState::restore(config, base, Journaled::default());
        let mut journal = MemoryTables::new();
        journal
            .commit(first.iter().filter_map(journal_change))
            .expect("records archive");
        Sim {
            head,
            journal,
            orphans: BTreeSet::new(),
            unowned: BTreeSet::new(),
            base,
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            queue: Queue::default(),
            step: 0,
            phase: Phase::Active,
            active_until: Duration::ZERO,
            settled_at: Duration::ZERO,
            trace: Trace::default(),
            counts: Counts::default(),
            next_conn: 1,
            next_request: 1,
            conns: BTreeMap::new(),
            workers: Vec::new(),
            nodes: BTreeMap::new(),
            clients: Vec::new(),
            commands: BTreeMap::new(),
            ledger: BTreeMap::new(),
            actors: BTreeMap::new(),
            store: Store::default(),
            forgets: Vec::new(),
            touched: BTreeSet::new(),
            killed: BTreeSet::new(),
            granted: BTreeSet::new(),
            released: BTreeSet::new(),
            procs_of: BTreeMap::new(),
            seals: BTreeMap::new(),
            tickets: BTreeMap::new(),
            lost_leases: BTreeSet::new(),
            granted_leases: BTreeMap::new(),
            asked: BTreeMap::new(),
            progress: None,
            generations: BTreeMap::new(),
            provider: FakeProvider::default(),
            scenario,
        }
    }

    /// Runs to the end: active, winding down, settled, checked.
    fn run(&mut self) -> Result<(), String> {
        for _ in 0..self.scenario.workers {
            let at = self.jitter(Duration::from_millis(200));
            self.spawn_worker(at);
        }
        for _ in 0..self.scenario.clients {
            self.spawn_client();
        }
        let first = self.exp(1.0 / self.scenario.fault_rate.max(1e-9));
        self.queue
            .push(Duration::from_millis(500) + first, Ev::Fault);
        if self.scenario.autoscale {
            self.queue.push(Duration::from_millis(500), Ev::Peak);
        }
        loop {
            self.advance_phase()?;
            if let Phase::Settling { .. } = self.phase {
                if self.settled() {
                    self.settled_at = self.now;
                    break;
                }
            }
            if !self.step_once()? {
                break;
            }
        }
        // Let the head's last timers (probe windows, drains, launches given up) fire with
        // nothing to do.
        let mut end = self.now + self.scenario.heartbeat_timeout;
        if self.scenario.autoscale {
            end += provider::LAUNCH_TIMEOUT;
        }
        while self.now < end && self.step_once()? {}
        self.check_whole()?;
        self.check_autoscaled_end()?;
        self.check_quiescent()
    }

    /// Takes the next step: the earliest of the next event and the head's timer (events
    /// first at the same instant). False when nothing is left to happen.
    fn step_once(&mut self) -> Result<bool, String> {
        let event = self.queue.next_at();
        let timer = self
            .head
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.base));
        match (event, timer) {
            (Some(e), Some(t)) if t < e => self.tick(t)?,
            (None, Some(t)) => self.tick(t)?,
            (Some(_), _) => {
                let (at, ev) = self.queue.pop().expect("an event is due");
                self.now = self.now.max(at);
                self.event(ev)?;
            }
            (None, None) => return Ok(false),
        }
        Ok(true)
    }

    /// Moves from one phase to the next when its time comes.
    fn advance_phase(&mut self) -> Result<(), String> {
        match self.phase {
            Phase::Active if self.step >= self.scenario.steps => {
                self.active_until = self.now;
                for worker in &mut self.workers {
                    worker.slow = 1;
                }
                self.phase = Phase::Calm {
                    until: self.now + self.scenario.calm(),
                };
            }
            Phase::Calm { until } if self.now >= until => {
                self.check_progress()?;
                self.check_autoscaled_calm()?;
                self.phase = Phase::Winding {
                    until: self.now + Duration::from_secs(3),
                };
                self.wind_down();
            }
            Phase::Winding { until } if self.now >= until => {
                for c in 0..self.clients.len() {
                    self.disconnect(c);
                }
                self.phase = Phase::Settling {
                    deadline: self.now + Duration::from_secs(120),
                };
            }
            Phase::Settling { deadline } if self.now > deadline => {
                let pending: Vec<String> = self
                    .queue
                    .pending()
                    .take(10)
                    .map(|(at, ev)| format!("{:.3}s {ev:?}", at.as_secs_f64()))
                    .collect();
                return Err(format!(
                    "the cluster did not settle within 120 s of virtual time: {} requests open \
                     ({:?}), {} commands unanswered, {} actors, events pending: {pending:#?}",
                    self.ledger.len(),
                    self.ledger.iter().take(5).collect::<Vec<_>>(),
                    self.commands.len(),
                    self.head.actor_count(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// True when nothing but heartbeats is left to happen and the head holds nothing.
    fn settled(&self) -> bool {
        self.queue.busy() == 0
            && self.ledger.is_empty()
            && self.commands.is_empty()
            && self.head.open_requests() == 0
            && self.head.actor_count() == 0
            && self.head.scheduler().queued_len() == 0
    }

    /// The head's timer is due at `t`.
    fn tick(&mut self, t: Duration) -> Result<(), String> {
        self.now = self.now.max(t);
        let before = self.head.poll_timeout();
        self.deliver(Input::Tick)?;
        if let Some(after) = self.head.poll_timeout() {
            if Some(after) == before && after <= self.base + self.now {
                return Err(format!(
                    "poll_timeout stays at {:?} after a tick at that time",
                    after.saturating_duration_since(self.base)
                ));
            }
        }
        Ok(())
    }

    /// Hands one input to the head, carries out its effects and checks the result.
    fn deliver(&mut self, input: Input) -> Result<(), String> {
        self.step += 1;
        match &input {
            // An instant is written as the virtual time it stands for, which replays.
            Input::Heard { node, after } => self.trace.input(
                self.step,
                self.now,
                &format_args!("Heard {{ node: {node}, after: {:?} }}", *after - self.base),
            ),
            _ => self.trace.input(self.step, self.now, &input),
        }
        self.before_input(&input)?;
        let before = self
            .scenario
            .autoscale
            .then(|| self.autoscaled_before(&input));
        let effects = self.head.handle(self.base + self.now, input);
        // The shell commits the batch's journal changes before anything else goes out.
        self.journal
            .commit(effects.iter().filter_map(journal_change))
            .map_err(|e| format!("a journal change cannot be written: {e}"))?;
        for effect in effects {
            self.trace.effect(&effect);
            self.effect(effect)?;
        }
        self.check_step()?;
        if let Some(before) = before {
            self.check_autoscaled_step(before)?;
        }
        if self.step % self.scenario.check_every == 0 {
            self.check_whole()?;
        }
        Ok(())
    }

    /// Something scheduled happens.
    fn event(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Input(input) => self.deliver(input),
            Ev::Join(w) => self.join(w),
            Ev::Heartbeat(w) => self.heartbeat(w),
            Ev::Exec {
                w,
                conn,
                command,
                body,
            } => self.exec(w, conn, command, body),
            Ev::Answer {
                command,
                reply,
                from,
            } => self.answer(command, reply, from),
            Ev::Event { w, event } => self.worker_event(w, event),
            Ev::ShellClose(w) => {
                self.close_worker(w);
                Ok(())
            }
            Ev::LostHead(w) => self.lost_head(w),
            Ev::Rejoin(w) => self.rejoin(w),
            Ev::Send {
                conn,
                request,
                body,
            } => self.arrive(conn, request, body),
            Ev::Return { request, lost } => self.give_back(request, lost),
            Ev::Stored {
                ticket,
                actor,
                seq,
                image,
                ok,
            } => self.stored(ticket, actor, seq, image, ok),
            Ev::Loaded { ticket, actor, ok } => self.loaded(ticket, actor, ok),
            Ev::Save { w, actor, inc } => self.save(w, actor, inc),
            Ev::JobStep { w, command } => self.job_step(w, command),
            Ev::Exit { w, actor, inc } => {
                self.exit(w, actor, inc);
                Ok(())
            }
            Ev::Act(c) => self.act(c),
            Ev::Create(c) => self.create_burst(c),
            Ev::Fault => self.fault(),
            Ev::Launched { launch, ok } => self.provider_launched(launch, ok),
            Ev::Boot { launch } => {
                self.provider_boot(launch);
                Ok(())
            }
            Ev::Reclaim { launch } => {
                self.provider_reclaim(launch);
                Ok(())
            }
            Ev::Peak => self.peak(),
            // In the autoscaled scenario only the provider starts workers.
            Ev::Spawn => {
                if self.active() && !self.scenario.autoscale {
                    self.spawn_worker(self.now);
                }
                Ok(())
            }
        }
    }

    // ---- randomness ----

    /// A uniform duration in `[0, max]`.
    fn jitter(&mut self, max: Duration) -> Duration {
        Duration::from_nanos(self.rng.gen_range(0..=max.as_nanos() as u64))
    }

    /// A uniform duration in `[lo, hi]`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + self.jitter(hi - lo)
    }

    /// An exponentially distributed duration with mean `mean` seconds.
    fn exp(&mut self, mean: f64) -> Duration {
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        Duration::from_secs_f64(-u.ln() * mean)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p.clamp(0.0, 1.0))
    }

    /// One network hop between two processes.
    fn hop(&mut self) -> Duration {
        if self.chance(0.01) {
            // Stuck behind bulk data, or a lost packet's retransmission.
            self.between(Duration::from_millis(50), Duration::from_millis(500))
        } else if self.chance(0.02) {
            self.between(Duration::from_millis(5), Duration::from_millis(60))
        } else {
            self.between(Duration::from_micros(50), Duration::from_millis(2))
        }
    }

    fn active(&self) -> bool {
        self.phase == Phase::Active
    }
}
