//! The links of this process's actor to the other members of its groups: opened on first use
//! in each group generation (the lower rank dials, the higher one accepts), authenticated with
//! the cluster token, and dropped together when an operation of that generation fails.
//!
//! Everything that opens a socket or a timer runs on the executor's main runtime, which is
//! always running; the actor's thread only polls the links while an operation runs.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ember_core::host::host_id;
use ember_core::ids::ActorId;
use ember_core::proto::{
    write_frame, ClientReply, ClientRequest, ErrorKind, GroupView, Hello, HelloRole, PeerHello,
    RemoteError, Welcome,
};
use ember_core::security::{accept_hello, connect_with_hello, say_hello, HelloListener};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Handle;
use tokio::sync::Notify;

use super::link::{Link, Via};
use super::shm::{fnv, Segments};
use crate::executor::HeadLink;

/// How long opening a link to a peer may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Links are kept per group, generation and peer rank.
pub(crate) type LinkKey = (String, u64, u32);

/// This process's side of every group its actor is in.
pub(crate) struct Mesh {
    /// The executor's main runtime, which drives every link.
    pub(crate) main: Handle,
    /// The actor hosted here.
    pub(crate) actor: ActorId,
    token: String,
    /// The actor's QUIC endpoint, which dials peers too.
    endpoint: quinn::Endpoint,
    head: HeadLink,
    /// Use QUIC even to peers on this machine (`EMBER_COLLECTIVE_TRANSPORT=quic`).
    force_quic: bool,
    /// Links peers opened to this process, not yet taken by an operation.
    parked: Mutex<HashMap<LinkKey, Link>>,
    arrived: Notify,
    /// Links between operations.
    idle: Mutex<HashMap<LinkKey, Link>>,
    /// Generations in which an operation failed here, and why: later operations in them fail
    /// at once, until the group is formed again.
    failed: Mutex<HashMap<(String, u64), String>>,
    /// Operations begun in each generation.
    ops: Mutex<HashMap<(String, u64), u64>>,
    /// Shared-memory segments between operations, per generation.
    segments: Mutex<HashMap<(String, u64), Segments>>,
}

static MESH: OnceLock<Arc<Mesh>> = OnceLock::new();

/// The mesh of this executor's actor; `None` outside an actor's process.
pub(crate) fn current() -> Option<Arc<Mesh>> {
    MESH.get().cloned()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Unix socket where peers on this machine reach the actor served at `actor_socket`.
pub(crate) fn socket_path(actor_socket: &str) -> String {
    Path::new(actor_socket)
        .with_extension("mesh")
        .to_string_lossy()
        .into_owned()
}

/// Sets up this process's mesh and starts accepting peers on `socket`. Called once, on the
/// main runtime, when the actor starts.
pub(crate) fn install(
    actor: ActorId,
    token: String,
    endpoint: quinn::Endpoint,
    head: HeadLink,
    socket: &str,
) -> std::io::Result<()> {
    let listener = UnixListener::bind(socket)?;
    let mesh = Arc::new(Mesh {
        main: Handle::current(),
        actor,
        token,
        endpoint,
        head,
        force_quic: std::env::var("EMBER_COLLECTIVE_TRANSPORT").is_ok_and(|v| v == "quic"),
        parked: Mutex::default(),
        arrived: Notify::new(),
        idle: Mutex::default(),
        failed: Mutex::default(),
        ops: Mutex::default(),
        segments: Mutex::default(),
    });
    if MESH.set(mesh.clone()).is_err() {
        return Err(std::io::Error::other("this process already hosts an actor"));
    }
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mesh = mesh.clone();
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                let token = &mesh.token;
                let hello =
                    match accept_hello(&mut rd, &mut wr, token, HelloListener::GroupLinks).await {
                        Ok(HelloRole::Peer(h)) => h,
                        Ok(_) => return,
                        Err(refused) => {
                            tracing::warn!("refused a group peer: {refused}");
                            return;
                        }
                    };
                let fd = rd.as_ref().as_raw_fd();
                mesh.accept(hello, Box::pin(rd), Box::pin(wr), Via::Unix(fd))
                    .await;
            });
        }
    });
    Ok(())
}

impl Mesh {
    /// A peer's hello arrived and was accepted (on the Unix socket, or on the actor's QUIC
    /// endpoint): welcome it and park the link until an operation takes it.
    pub(crate) async fn accept(
        &self,
        hello: PeerHello,
        rd: super::link::Rx,
        mut wr: super::link::Tx,
        via: Via,
    ) {
        let welcome = Welcome::Accepted { node: None };
        if write_frame(&mut wr, &welcome).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        let key = (hello.group, hello.generation, hello.from);
        let link = Link {
            peer: hello.from,
            tx: wr,
            rx: rd,
            via,
        };
        lock(&self.parked).insert(key, link);
        self.arrived.notify_waiters();
    }

    /// Asks the head, from any thread.
    pub(crate) async fn ask_head(
        &self,
        request: ClientRequest,
    ) -> Result<ClientReply, RemoteError> {
        let head = self.head.clone();
        self.main
            .spawn(async move { head.request(&request).await })
            .await
            .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?
    }

    /// A timer on the main runtime, usable from any thread.
    pub(crate) fn sleep(&self, d: Duration) -> tokio::time::Sleep {
        let _main = self.main.enter();
        tokio::time::sleep(d)
    }

    /// Why `generation` of `group` failed here, if it did.
    pub(crate) fn failure(&self, group: &str, generation: u64) -> Option<String> {
        lock(&self.failed)
            .get(&(group.to_string(), generation))
            .cloned()
    }

    /// Marks `generation` of `group` failed and drops its links, which closes them: peers
    /// still waiting on this rank fail at once instead of at their timeout.
    pub(crate) fn fail(&self, group: &str, generation: u64, reason: &str) {
        lock(&self.failed).insert((group.to_string(), generation), reason.to_string());
        self.drop_links(group, |n| n == generation);
    }

    /// Drops the links and shared-memory segments of the generations of `group` that
    /// `dropped` picks.
    fn drop_links(&self, group: &str, dropped: impl Fn(u64) -> bool) {
        let keep = |g: &String, n: u64| !(g == group && dropped(n));
        lock(&self.idle).retain(|(g, n, _), _| keep(g, *n));
        lock(&self.parked).retain(|(g, n, _), _| keep(g, *n));
        lock(&self.segments).retain(|(g, n), _| keep(g, *n));
    }

    /// Whether every member of `view` runs on this machine and may use shared memory.
    pub(crate) fn all_local(&self, view: &GroupView) -> bool {
        let here = host_id();
        !self.force_quic && view.members.iter().all(|m| m.endpoints.host == here)
    }

    /// A tag of this cluster, for names in shared memory.
    pub(crate) fn cluster_tag(&self) -> u64 {
        fnv(self.token.as_bytes())
    }

    /// The shared-memory segments of `generation` of `group`, if made.
    pub(crate) fn take_segments(&self, group: &str, generation: u64) -> Option<Segments> {
        lock(&self.segments).remove(&(group.to_string(), generation))
    }

    /// Tells the peers, through this generation's shared memory if it has any, which
    /// operation this rank is in.
    pub(crate) fn announce(&self, group: &str, generation: u64, tag: u64) {
        if let Some(segments) = lock(&self.segments).get(&(group.to_string(), generation)) {
            segments.announce(tag);
        }
    }

    /// Keeps segments for the next operation of their generation.
    pub(crate) fn keep_segments(&self, group: &str, generation: u64, segments: Segments) {
        lock(&self.segments).insert((group.to_string(), generation), segments);
    }

    /// The next operation's number in `generation` of `group`. Links and failures of older
    /// generations are forgotten once a newer one is used.
    pub(crate) fn next_op(&self, group: &str, generation: u64) -> u64 {
        self.drop_links(group, |n| n < generation);
        let older = |g: &String, n: u64| g == group && n < generation;
        lock(&self.failed).retain(|(g, n), _| !older(g, *n));
        let mut ops = lock(&self.ops);
        ops.retain(|(g, n), _| !older(g, *n));
        let next = ops.entry((group.to_string(), generation)).or_insert(0);
        *next += 1;
        *next
    }

    /// The links to `peers` in this generation: kept from earlier operations, or opened now.
    pub(crate) async fn links(
        &self,
        view: &GroupView,
        rank: u32,
        peers: &HashSet<u32>,
    ) -> Result<HashMap<u32, Link>, (u32, String)> {
        let mut links = HashMap::new();
        let mut missing = Vec::new();
        {
            let mut idle = lock(&self.idle);
            for &peer in peers {
                match idle.remove(&(view.name.clone(), view.generation, peer)) {
                    Some(link) => {
                        links.insert(peer, link);
                    }
                    None => missing.push(peer),
                }
            }
        }
        let opened = futures::future::join_all(missing.into_iter().map(|peer| async move {
            let link = if rank < peer {
                self.dial(view, rank, peer).await
            } else {
                Ok(self.parked_link(view, peer).await)
            };
            link.map_err(|e| (peer, e))
        }))
        .await;
        for link in opened {
            let link = link?;
            links.insert(link.peer, link);
        }
        Ok(links)
    }

    /// Puts links back for the next operation of their generation.
    pub(crate) fn keep(&self, view: &GroupView, links: HashMap<u32, Link>) {
        let mut idle = lock(&self.idle);
        for (peer, link) in links {
            idle.insert((view.name.clone(), view.generation, peer), link);
        }
    }

    /// Waits for `peer` to open its link to this rank.
    async fn parked_link(&self, view: &GroupView, peer: u32) -> Link {
        let key = (view.name.clone(), view.generation, peer);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(link) = lock(&self.parked).remove(&key) {
                return link;
            }
            arrived.await;
        }
    }

    /// Opens a link to `peer`: its Unix socket on this machine, its QUIC endpoint elsewhere.
    async fn dial(&self, view: &GroupView, rank: u32, peer: u32) -> Result<Link, String> {
        let member = &view.members[peer as usize];
        let hello = Hello::new(
            self.token.clone(),
            HelloRole::Peer(PeerHello {
                group: view.name.clone(),
                generation: view.generation,
                from: rank,
                to: peer,
            }),
        );
        let endpoints = member.endpoints.clone();
        let same_host = !self.force_quic && endpoints.host == host_id();
        let endpoint = self.endpoint.clone();
        let opening = self.main.spawn(async move {
            tokio::time::timeout(DIAL_TIMEOUT, async move {
                if same_host {
                    let stream = UnixStream::connect(&endpoints.mesh_socket)
                        .await
                        .map_err(|e| format!("cannot reach {}: {e}", endpoints.mesh_socket))?;
                    let (mut rd, mut wr) = stream.into_split();
                    say_hello(&hello, &mut rd, &mut wr)
                        .await
                        .map_err(|e| e.to_string())?;
                    let fd = rd.as_ref().as_raw_fd();
                    Ok(Link {
                        peer,
                        tx: Box::pin(wr),
                        rx: Box::pin(rd),
                        via: Via::Unix(fd),
                    })
                } else {
                    let addr: SocketAddr = endpoints
                        .peer_addr
                        .parse()
                        .map_err(|e| format!("bad address {}: {e}", endpoints.peer_addr))?;
                    let (conn, wr, rd) =
                        connect_with_hello(&endpoint, addr, endpoints.peer_fingerprint, &hello)
                            .await
                            .map_err(|e| e.to_string())?;
                    Ok(Link {
                        peer,
                        tx: Box::pin(wr),
                        rx: Box::pin(rd),
                        via: Via::Quic(conn),
                    })
                }
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {DIAL_TIMEOUT:?}")))
        });
        opening.await.map_err(|e| e.to_string())?
    }
}
