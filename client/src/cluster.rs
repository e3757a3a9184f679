//! A connection to a cluster: submitting tasks, spawning actors, running jobs, reading status.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ember_core::ids::{ActorId, JobId, NodeId};
use ember_core::proto::{
    decode, read_frame, write_frame, ActorSpec, CallReply, ClientReply, ClientRequest, ErrorKind,
    FrameError, JobEvent, JobSpec, RemoteError, WaitReason, Wire, MAX_FRAME,
};
use ember_core::proto::{ClusterStatus, UsageReport};
use ember_core::resources::Allocation;
use ember_core::security::{connect_client, ClusterFile, Fingerprint};

use crate::actor::MAX_CALL_ARGS;
use crate::actor::{ActorRef, Caller, Hold, RemoteActor};
use crate::call::{ActorSpawn, TaskCall, TaskRef};
use crate::head_link::{connect_error, ConnectOptions, HeadLink, HeadLinkStatus};
use crate::holds::HeldActors;
use crate::leases::{TaskLeases, TaskRun};
#[cfg(feature = "local")]
use crate::local::LocalCluster;
use crate::unix_caller::UnixCaller;
#[cfg(feature = "local")]
use crate::LocalOptions;
use crate::{CallArgs, Error, Options};
use ember_core::host::host_id;
use ember_core::proto::ActorLocation;

/// A connected cluster. Cheap to clone; every clone shares one connection.
///
/// The connection to the head is opened again when it is lost (the head restarted), for
/// [`ConnectOptions::head_wait`]: requests wait for it, actor handles keep working, and the
/// actors this client holds are held again (claimed) in the head's next life.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

/// A [`Cluster`] that does not keep it alive.
#[derive(Clone)]
pub(crate) struct WeakCluster(std::sync::Weak<Inner>);

impl WeakCluster {
    /// The cluster, while a clone of it lives.
    pub(crate) fn upgrade(&self) -> Option<Cluster> {
        self.0.upgrade().map(|inner| Cluster { inner })
    }
}

struct Inner {
    link: Arc<HeadLink>,
    file: ClusterFile,
    held: HeldActors,
    peers: tokio::sync::Mutex<HashMap<String, quinn::Connection>>,
    #[cfg(feature = "local")]
    local: std::sync::Mutex<Option<LocalCluster>>,
    same_host_calls: AtomicBool,
    leases: Arc<TaskLeases>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.link.close();
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("head", &self.inner.file.address)
            .finish()
    }
}

/// Output of a running job, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutput {
    /// Bytes written to standard output.
    Stdout(Vec<u8>),
    /// Bytes written to standard error.
    Stderr(Vec<u8>),
    /// The exit code; the last event.
    Exited(i32),
}

/// A job that was placed and started. Read its output with [`Job::next`].
#[derive(Debug)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// Where it runs.
    pub node: NodeId,
    /// What it was given (`CUDA_VISIBLE_DEVICES` lists `allocation.gpus`).
    pub allocation: Allocation,
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Job {
    /// The next piece of output, `Exited` last, then `None`.
    pub async fn next(&mut self) -> Result<Option<JobOutput>, Error> {
        match read_frame::<_, ClientReply>(&mut self.recv, MAX_FRAME).await? {
            None => Ok(None),
            Some(ClientReply::Job(JobEvent::Stdout(b))) => Ok(Some(JobOutput::Stdout(b))),
            Some(ClientReply::Job(JobEvent::Stderr(b))) => Ok(Some(JobOutput::Stderr(b))),
            Some(ClientReply::Job(JobEvent::Exited(c))) => Ok(Some(JobOutput::Exited(c))),
            Some(ClientReply::Error(e)) => Err(e.into()),
            Some(other) => Err(unexpected(other)),
        }
    }
}

impl Cluster {
    /// Connects to the cluster a cluster file describes, riding through a restart of its head
    /// for 60 s (see [`Cluster::connect_with`]).
    pub async fn connect(file: ClusterFile) -> Result<Self, Error> {
        Cluster::connect_with(file, ConnectOptions::default()).await
    }

    /// Connects to the cluster a cluster file describes, waiting for its head and riding
    /// through its restarts as `options` say.
    pub async fn connect_with(file: ClusterFile, options: ConnectOptions) -> Result<Self, Error> {
        let bind: SocketAddr = if file.address.is_ipv6() {
            "[::]:0".parse().expect("a valid address")
        } else {
            "0.0.0.0:0".parse().expect("a valid address")
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| Error::Connect {
            addr: file.address.to_string(),
            reason: e.to_string(),
        })?;
        let link = Arc::new(HeadLink::connect(endpoint, file.clone(), options).await?);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                link: link.clone(),
                file,
                held: HeldActors::default(),
                peers: tokio::sync::Mutex::new(HashMap::new()),
                #[cfg(feature = "local")]
                local: std::sync::Mutex::new(None),
                same_host_calls: AtomicBool::new(true),
                leases: Arc::default(),
            }),
        };
        let weak = WeakCluster(Arc::downgrade(&cluster.inner));
        tokio::spawn(crate::holds::keep(link, weak));
        Ok(cluster)
    }

    /// Connects to the cluster found at `path` (a state directory or cluster file), else through
    /// `EMBER_CLUSTER`, else in the default state directory.
    pub async fn discover(path: Option<&Path>) -> Result<Self, Error> {
        Cluster::connect(ClusterFile::discover(path)?).await
    }

    /// Starts a cluster on this machine, a head in this process and workers running this
    /// executable, and connects to it once every worker has joined. It stops when the last
    /// clone of the returned `Cluster` is dropped, or on [`Cluster::shutdown`]. Needs the
    /// `local` feature (on by default).
    #[cfg(feature = "local")]
    pub async fn local(options: LocalOptions) -> Result<Self, Error> {
        let workers = options.workers;
        let local = LocalCluster::start(options).await?;
        let cluster = Cluster::connect(local.cluster_file().clone()).await?;
        *cluster
            .inner
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(local);
        cluster
            .wait_for_nodes(workers, Duration::from_secs(60))
            .await?;
        Ok(cluster)
    }

    /// What a client or worker needs to join this cluster.
    pub fn cluster_file(&self) -> &ClusterFile {
        &self.inner.file
    }

    /// Submits a task; it runs whether or not the returned reference is awaited.
    pub fn submit<T: Wire + Send + 'static>(&self, call: TaskCall<T>) -> TaskRef<T> {
        let cluster = self.clone();
        TaskRef {
            handle: tokio::spawn(async move { cluster.run(call).await }),
        }
    }

    /// Runs a task and waits for its result. The task runs on a lease this client holds on
    /// a worker (granted by the head on first use, then reused by the next task of the same
    /// kind until it sits idle), sent straight to the executor holding it.
    ///
    /// Arguments too large to travel in one frame fail at once with
    /// [`FrameError::TooLarge`](ember_core::proto::FrameError), before anything is sent.
    pub async fn run<T: Wire>(&self, call: TaskCall<T>) -> Result<T, Error> {
        let args = call.args.map_err(bad_args)?;
        let bytes = self.run_bytes(call.name, args, &call.options).await?;
        Ok(decode(&bytes)?)
    }

    /// Runs the task registered as `name` with its arguments as its executor takes them and
    /// returns its result's bytes as they came: what [`Cluster::run`] does after encoding and
    /// before decoding, for bindings whose tasks take bytes of their own making (Python's
    /// pickles), with the same leases, placement and retries.
    pub async fn run_bytes(
        &self,
        name: &str,
        args: Vec<u8>,
        options: &Options,
    ) -> Result<Vec<u8>, Error> {
        too_large(args.len())?;
        self.run_args(name, Arc::new(args), options).await
    }

    /// Runs the task registered as `name` as [`Cluster::run_bytes`] does, with arguments
    /// made for each attempt's destination: every attempt (the first, and each retry or move
    /// to another lease) asks `args` for its bytes, saying whether the executor it goes to
    /// runs on this machine. Bytes too large to travel fail the call with
    /// [`FrameError::TooLarge`], and bytes that cannot be made with [`Error::Args`], before
    /// they are sent.
    pub async fn run_args(
        &self,
        name: &str,
        args: Arc<dyn CallArgs>,
        options: &Options,
    ) -> Result<Vec<u8>, Error> {
        let task = TaskRun {
            name: name.to_string(),
            args,
            placement: options.placement()?,
            retry: options.retry,
        };
        self.inner.leases.run(self, task).await
    }

    /// Creates an actor and returns its typed handle once it is constructed.
    pub async fn spawn<H: RemoteActor>(&self, spawn: ActorSpawn<H>) -> Result<H, Error> {
        let args = spawn.args.map_err(bad_args)?;
        let actor = self.spawn_bytes(spawn.name, args, &spawn.options).await?;
        Ok(H::from_ref(actor))
    }

    /// Creates an actor of the type registered as `type_name` from constructor arguments as
    /// its executor takes them, and returns its untyped handle once it is constructed: for
    /// bindings whose actors take bytes of their own making (Python's pickles).
    ///
    /// This client holds the actor from its creation: it lives until this client releases
    /// it ([`ActorRef::release`]) or disconnects and no other client holds it, or until it
    /// is killed. Dropping the handle does not release it.
    pub async fn spawn_bytes(
        &self,
        type_name: &str,
        args: Vec<u8>,
        options: &Options,
    ) -> Result<ActorRef, Error> {
        let spec = ActorSpec {
            type_name: type_name.to_string(),
            args,
            placement: options.placement()?,
            restart: options.restart,
            checkpoint: options.checkpoint,
        };
        let location = match self.request(&ClientRequest::CreateActor(spec)).await? {
            ClientReply::ActorCreated(loc) => loc,
            ClientReply::Error(e) => return Err(e.into()),
            other => return Err(unexpected(other)),
        };
        self.inner.held.created(location.actor).await;
        let caller = self.caller(&location).await?;
        Ok(ActorRef::new(
            self.clone(),
            location,
            caller,
            Hold::UntilReleased,
        ))
    }

    /// An untyped handle to an actor that already exists, by its id, which holds the actor
    /// while the handle lives: the actor does not stop while any client holds it, even when
    /// its creator lets go. The hold ends when the handle's last clone is dropped (or on
    /// [`ActorRef::release`], or when this client disconnects). What user code running in
    /// the cluster uses for an actor whose handle it was passed. Fails if the head does not
    /// know the actor (never created, or stopped).
    pub async fn lookup_actor(&self, id: ActorId) -> Result<ActorRef, Error> {
        self.held_actor(id, Hold::WhileHandled).await
    }

    /// A handle to the existing actor `id`, held as `hold` says; the hold is let go again if
    /// the actor cannot be found.
    async fn held_actor(&self, id: ActorId, hold: Hold) -> Result<ActorRef, Error> {
        self.inner.held.hold(self, id).await?;
        let found = async {
            let location = self.locate_actor(id, 0, false, crate::RESTART_WAIT).await?;
            let caller = self.caller(&location).await?;
            Ok(ActorRef::new(self.clone(), location, caller, hold))
        };
        let found = found.await;
        if found.is_err() {
            let _ = self.inner.held.release(self, id).await;
        }
        found
    }

    /// A typed handle to an actor that already exists, by its id, which this client holds
    /// as its creator does: until [`ActorRef::release`] or until it disconnects (dropping
    /// the handle does not release it). The head says where it takes calls (waiting up to
    /// [`crate::RESTART_WAIT`] while it restarts). After the head restarted, this is how a
    /// client of its new life takes over an actor created before the restart; actors of an
    /// earlier head life that no client holds within the head's re-join window are stopped.
    pub async fn actor<H: RemoteActor>(&self, id: ActorId) -> Result<H, Error> {
        self.held_actor(id, Hold::UntilReleased)
            .await
            .map(H::from_ref)
    }

    /// Runs a command as a batch job on a worker chosen by placement. Returns once it started;
    /// while it waits for a node, see [`Cluster::submit_job_watching`] to learn why.
    pub async fn submit_job(
        &self,
        command: Vec<String>,
        env: Vec<(String, String)>,
        options: Options,
    ) -> Result<Job, Error> {
        self.submit_job_watching(command, env, options, |_| {})
            .await
    }

    /// Like [`Cluster::submit_job`], calling `waiting` with the reason each time the job
    /// starts waiting or its reason changes: waiting for capacity, or infeasible (no live node
    /// could ever hold it, naming what is missing, with the time left before it fails).
    pub async fn submit_job_watching(
        &self,
        command: Vec<String>,
        env: Vec<(String, String)>,
        options: Options,
        mut waiting: impl FnMut(&WaitReason),
    ) -> Result<Job, Error> {
        let spec = JobSpec {
            command,
            env,
            placement: options.placement()?,
        };
        let req = ClientRequest::SubmitJob(spec);
        let (mut send, mut recv, generation) = self.open_head_stream().await?;
        if let Err(e) = write_frame(&mut send, &req).await {
            return Err(if self.head_lost(generation) {
                self.inner.link.lost_during(&req)
            } else {
                e.into()
            });
        }
        loop {
            let reply = match read_frame::<_, ClientReply>(&mut recv, MAX_FRAME).await {
                Err(_) | Ok(None) if self.head_lost(generation) => {
                    return Err(self.inner.link.lost_during(&req))
                }
                other => other?,
            };
            return match reply {
                Some(ClientReply::Job(JobEvent::Waiting(why))) => {
                    waiting(&why);
                    continue;
                }
                Some(ClientReply::Job(JobEvent::Started {
                    job,
                    node,
                    allocation,
                })) => Ok(Job {
                    id: job,
                    node,
                    allocation,
                    _send: send,
                    recv,
                }),
                Some(ClientReply::Error(e)) => Err(e.into()),
                Some(other) => Err(unexpected(other)),
                None => Err(Error::ConnectionLost(
                    "the head closed the job's stream".into(),
                )),
            };
        }
    }

    /// The cluster's nodes, GPUs, actors, task leases, jobs and queue.
    pub async fn status(&self) -> Result<ClusterStatus, Error> {
        match self.request(&ClientRequest::Status).await? {
            ClientReply::Status(status) => Ok(*status),
            ClientReply::Error(e) => Err(e.into()),
            other => Err(unexpected(other)),
        }
    }

    /// The usage ledger: every job, actor incarnation and task lease that held resources
    /// since `since` ago (everything the head has when `None`), with its GPU-share-seconds,
    /// GPU-memory-GiB-seconds, CPU-seconds and cost, and each node's time split into
    /// allocated, idle and warm. Times in it are ages, in milliseconds before the head
    /// answered.
    pub async fn usage(&self, since: Option<Duration>) -> Result<UsageReport, Error> {
        let req = ClientRequest::Usage {
            since_ms_ago: since.map(|d| d.as_millis() as u64),
        };
        match self.request(&req).await? {
            ClientReply::Usage(report) => Ok(*report),
            ClientReply::Error(e) => Err(e.into()),
            other => Err(unexpected(other)),
        }
    }

    /// Waits until at least `count` workers have joined.
    pub async fn wait_for_nodes(&self, count: u32, timeout: Duration) -> Result<u32, Error> {
        let req = ClientRequest::WaitForNodes {
            count,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.request(&req).await? {
            ClientReply::NodesReady { count } => Ok(count),
            ClientReply::Error(e) => Err(e.into()),
            other => Err(unexpected(other)),
        }
    }

    /// Stops a local cluster started by [`Cluster::local`]: workers leave cleanly, then the head
    /// stops. Does nothing more than disconnect for a cluster it did not start.
    pub async fn shutdown(self) {
        #[cfg(feature = "local")]
        let local = self
            .inner
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.inner.link.close();
        #[cfg(feature = "local")]
        if let Some(local) = local {
            local.shutdown().await;
        }
    }

    pub(crate) async fn kill_actor(&self, actor: ActorId) -> Result<(), Error> {
        match self.request(&ClientRequest::KillActor { actor }).await? {
            ClientReply::ActorKilled => {
                self.inner.held.forget(actor).await;
                Ok(())
            }
            ClientReply::Error(e) => Err(e.into()),
            other => Err(unexpected(other)),
        }
    }

    /// Where an actor takes calls now: an incarnation newer than `known`, waiting up to
    /// `timeout` while it restarts. `suspect`: the caller lost its connection to `known`.
    pub(crate) async fn locate_actor(
        &self,
        actor: ActorId,
        known: u32,
        suspect: bool,
        timeout: Duration,
    ) -> Result<ActorLocation, Error> {
        let req = ClientRequest::LocateActor {
            actor,
            known,
            suspect,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.request(&req).await? {
            ClientReply::ActorLocated(location) => Ok(location),
            ClientReply::Error(e) => Err(e.into()),
            other => Err(unexpected(other)),
        }
    }

    /// Drains a node: no new work goes there, its actors move to other nodes with their
    /// state, and its tasks get `grace` to finish before the worker leaves. Returns how many
    /// actors moved.
    pub async fn drain(&self, node: NodeId, grace: Duration) -> Result<u32, Error> {
        self.drain_node(node, grace, false).await
    }

    /// Drains a node that is going away within `notice` whatever happens (a spot
    /// interruption): as [`Cluster::drain`] with `notice` as the grace, and an autoscaled
    /// cluster launches a node of its type at once to replace it. Returns how many actors
    /// moved.
    pub async fn drain_on_notice(&self, node: NodeId, notice: Duration) -> Result<u32, Error> {
        self.drain_node(node, notice, true).await
    }

    async fn drain_node(&self, node: NodeId, grace: Duration, notice: bool) -> Result<u32, Error> {
        let req = ClientRequest::DrainNode {
            node,
            grace_ms: grace.as_millis() as u64,
            notice,
        };
        match self.request(&req).await? {
            ClientReply::Drained { moved } => Ok(moved),
            ClientReply::Error(e) => Err(e.into()),
            other => Err(unexpected(other)),
        }
    }

    /// Forms a new generation of collective group `name` from `members`, in rank order, and
    /// returns its generation number. The members then find it with
    /// [`crate::collective::group`]. Forming it again (after a member failed, or to add
    /// members) starts a new generation; operations of the old one fail.
    pub async fn form_group(&self, name: &str, members: &[&ActorRef]) -> Result<u64, Error> {
        let req = ClientRequest::FormGroup {
            name: name.to_string(),
            members: members.iter().map(|m| m.id()).collect(),
        };
        match self.request(&req).await? {
            ClientReply::Group(view) => Ok(view.generation),
            ClientReply::Error(e) => Err(e.into()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends one message to an actor's or a lease's QUIC endpoint, on a stream of its own, and
    /// reads its reply. `what` names who answers, in errors. A stream that cannot be opened
    /// (the message was not sent) is [`Error::ConnectionLost`].
    pub(crate) async fn call_direct<M: Wire>(
        &self,
        peer: &quinn::Connection,
        msg: &M,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        let (mut send, mut recv) = peer
            .open_bi()
            .await
            .map_err(|e| Error::ConnectionLost(format!("{what}: {e}")))?;
        write_frame(&mut send, msg).await?;
        let _ = send.finish();
        match read_frame::<_, CallReply>(&mut recv, MAX_FRAME).await {
            Ok(Some(reply)) => reply.map_err(Error::from),
            Ok(None) | Err(_) => Err(Error::Remote(RemoteError::new(
                ErrorKind::WorkerDied,
                format!("{what} went away during the call"),
            ))),
        }
    }

    /// A stream to the head (waiting for it to come back when it was lost), and the
    /// generation of the connection it is on, for [`Cluster::head_lost`].
    pub(crate) async fn open_head_stream(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, u64), Error> {
        self.inner.link.open_stream().await
    }

    /// True when connection `generation` to the head is known to be gone: a stream on it
    /// ended because the head went away.
    pub(crate) fn head_lost(&self, generation: u64) -> bool {
        self.inner.link.lost_connection(generation)
    }

    /// One request to the head and its one reply, through the link that rides through the
    /// head's restarts.
    pub(crate) async fn request(&self, req: &ClientRequest) -> Result<ClientReply, Error> {
        self.inner.link.request(req).await
    }

    /// What this client knows of its connection to the head: since when it is lost, when it
    /// came back.
    pub fn head_link(&self) -> HeadLinkStatus {
        self.inner.link.status()
    }

    /// The actors this client holds, to be held again in the head's next life.
    pub(crate) fn held(&self) -> &HeldActors {
        &self.inner.held
    }

    /// The actors this client holds now (through any handle), in id order.
    pub async fn held_actors(&self) -> Vec<ActorId> {
        self.inner.held.list().await
    }

    /// Holds `actor` without a handle, as a handle from [`Cluster::lookup_actor`] would,
    /// until [`Cluster::release_actor`]: for a binding that keeps a value naming the actor (a
    /// pickled handle in a result) before anything calls it. Fails if the head does not know
    /// the actor (never created, or stopped).
    pub async fn hold_actor(&self, actor: ActorId) -> Result<(), Error> {
        self.inner.held.hold(self, actor).await
    }

    /// Lets go of one hold taken with [`Cluster::hold_actor`]: the actor stops once nothing
    /// holds it, here or in another client.
    pub async fn release_actor(&self, actor: ActorId) -> Result<(), Error> {
        self.inner.held.release(self, actor).await
    }

    /// Calls to actors on this machine go through their Unix sockets (the default) or, when
    /// `false`, over QUIC like calls from any other machine.
    pub fn set_same_host_calls(&self, enabled: bool) {
        self.inner.same_host_calls.store(enabled, Ordering::Relaxed);
    }

    /// How to reach an actor: its Unix socket when it runs on this machine, its QUIC
    /// endpoint otherwise. A socket that does not answer means the actor's process is gone.
    pub(crate) async fn caller(&self, location: &ActorLocation) -> Result<Caller, Error> {
        let ep = &location.endpoints;
        if self.inner.same_host_calls.load(Ordering::Relaxed) && ep.host == host_id() {
            let what = format!("{}'s process", location.actor);
            let unix = UnixCaller::connect(&ep.local_socket, &self.inner.file.token, what).await?;
            return Ok(Caller::Unix(Arc::new(unix)));
        }
        Ok(Caller::Quic(
            self.peer(&ep.peer_addr, ep.peer_fingerprint).await?,
        ))
    }

    /// True when calls to a process on machine `host` go through its Unix sockets.
    pub(crate) fn same_host(&self, host: &str) -> bool {
        self.inner.same_host_calls.load(Ordering::Relaxed) && host == host_id()
    }

    /// The cluster's token, which every endpoint asks for.
    pub(crate) fn token(&self) -> &str {
        &self.inner.file.token
    }

    /// The QUIC connection to an actor's or an executor's endpoint, opened on first use.
    pub(crate) async fn peer(
        &self,
        addr: &str,
        fingerprint: Fingerprint,
    ) -> Result<quinn::Connection, Error> {
        let mut peers = self.inner.peers.lock().await;
        if let Some(c) = peers.get(addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let sock: SocketAddr = addr.parse().map_err(|_| Error::Connect {
            addr: addr.to_string(),
            reason: "not a socket address".into(),
        })?;
        let conn = connect_client(
            self.inner.link.endpoint(),
            sock,
            fingerprint,
            &self.inner.file.token,
        )
        .await
        .map_err(connect_error)?;
        peers.insert(addr.to_string(), conn.clone());
        Ok(conn)
    }
}

fn bad_args(reason: String) -> Error {
    Error::Remote(RemoteError::new(
        ErrorKind::BadRequest,
        format!("cannot encode the arguments: {reason}"),
    ))
}

pub(crate) fn unexpected(reply: ClientReply) -> Error {
    Error::Remote(RemoteError::new(
        ErrorKind::Internal,
        format!("unexpected reply from the cluster: {reply:?}"),
    ))
}

/// Refuses arguments of `len` bytes, too large to travel in one frame with the call around
/// them.
pub(crate) fn too_large(len: usize) -> Result<(), Error> {
    if len > MAX_CALL_ARGS {
        return Err(Error::Protocol(FrameError::TooLarge {
            len,
            max: MAX_CALL_ARGS,
        }));
    }
    Ok(())
}
