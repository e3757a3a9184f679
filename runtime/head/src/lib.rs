//! `ember-head`: the head node's async shell.
//!
//! Everything the head knows is one pure state machine, [`ember_head_state::HeadState`]. This
//! crate runs it: one task owns it (`shell.rs`) and carries out its effects, each connection
//! (`conn.rs`) turns what arrives over QUIC into its inputs, what the state promises is
//! committed to a journal in the state directory first (`journal/`), and checkpoints are kept
//! on disk or in S3-compatible object storage (`checkpoints.rs`), and an autoscaled cluster's
//! launches go to a node provider (`provider.rs`).

mod checkpoints;
mod conn;
pub mod journal;
pub mod provider;
mod shell;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use ember_core::security::{server_config, ClusterFile, ClusterSecrets, SecurityError};
use ember_head_state::journal::Change;
use ember_head_state::{Effect, HeadState};

use checkpoints::CheckpointStore;
use journal::Journal;

pub use checkpoints::CheckpointError;
pub use ember_head_state::autoscale;
pub use journal::JournalError;
pub use provider::{LaunchRequest, NodeProvider, ProviderError};

/// How a head is started.
#[derive(Debug, Clone)]
pub struct HeadConfig {
    /// Where to listen, `127.0.0.1:7700` by default.
    pub listen: SocketAddr,
    /// Where the certificate, key, token, cluster file and journal live (and checkpoints, on
    /// disk).
    pub state_dir: PathBuf,
    /// A worker silent for this long is declared dead.
    pub heartbeat_timeout: Duration,
    /// How many checkpoints of each actor are kept (the newest ones).
    pub keep_checkpoints: usize,
    /// Where checkpoints go: `None` for `<state_dir>/checkpoints`, or an S3-compatible store
    /// as `s3://bucket/prefix` (configured from the `AWS_*` variables).
    pub checkpoint_store: Option<String>,
    /// After a restart, how long the workers of the last head life are waited for before their
    /// actors restart elsewhere; at least the workers' `--rejoin-window`.
    pub rejoin_window: Duration,
    /// How long a queued request waits once no live node could ever hold it (its only fitting
    /// node left or drains) before it fails naming what is missing; 60 s by default.
    pub pending_timeout: Duration,
    /// Scale the cluster itself: the autoscaler and the provider that carries out its
    /// launches and releases. `None` (the default): the nodes are whatever workers join.
    pub autoscale: Option<Autoscale>,
}

/// An autoscaled cluster's autoscaler and node provider.
#[derive(Clone)]
pub struct Autoscale {
    /// The node types and policy.
    pub autoscaler: ember_head_state::autoscale::Autoscaler,
    /// How often it decides.
    pub interval: Duration,
    /// Where its launches go.
    pub provider: std::sync::Arc<dyn NodeProvider>,
}

impl std::fmt::Debug for Autoscale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscale")
            .field("autoscaler", &self.autoscaler)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl HeadConfig {
    /// The defaults: `127.0.0.1:7700`, the default state directory, 2 s heartbeat timeout,
    /// three checkpoints kept per actor, 60 s for workers to re-join after a restart, 60 s
    /// for a request no live node can hold any more.
    pub fn new(state_dir: PathBuf) -> Self {
        HeadConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            state_dir,
            heartbeat_timeout: Duration::from_secs(2),
            keep_checkpoints: 3,
            checkpoint_store: None,
            rejoin_window: Duration::from_secs(60),
            pending_timeout: Duration::from_secs(60),
            autoscale: None,
        }
    }
}

/// Why a head could not start.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The state directory, certificate or cluster file could not be made or read.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The journal could not be opened (another head has it, or it is damaged or of another
    /// version), or the new head life could not be committed.
    #[error("cannot open the head's journal: {0}")]
    Journal(#[from] JournalError),
    /// The checkpoint store could not be prepared.
    #[error("cannot prepare the checkpoint store: {0}")]
    Checkpoints(#[from] CheckpointError),
    /// The address could not be bound (in use, not local).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A head that is serving.
pub struct RunningHead {
    /// The address it listens on (the port resolved when 0 was asked for).
    pub addr: SocketAddr,
    /// What clients and workers need to join, as written to the state directory.
    pub cluster: ClusterFile,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningHead {
    /// Stops serving: closes every connection and waits for the endpoint to go idle.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The least time between two stateless resets: none. A restarted head must reset every
/// worker's connection of its last life, and their packets come in bursts (heartbeats of
/// workers started together): with quinn's default (20 ms) every packet of a burst but one is
/// dropped unanswered, and with 100 workers the last re-joined seconds later. A reset is sent
/// only for a packet whose connection id carries this head's signature (under a secret key),
/// and is smaller than that packet, so resets cannot loop or amplify.
const MIN_RESET_INTERVAL: Duration = Duration::ZERO;

/// A secret of the head's that is the same in every life: SHA-256 of `label` and the
/// cluster's private key.
fn derived_key(secrets: &ClusterSecrets, label: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut derived = sha2::Sha256::new();
    derived.update(label);
    derived.update(secrets.identity.key.secret_der());
    derived.finalize().into()
}

/// The head's QUIC endpoint on `listen`. Its stateless-reset key, and the key that signs its
/// connection ids, are derived from the cluster's private key, so they are the same in every
/// life of the head: a head started again recognizes a packet of a connection of its last life
/// and answers it with a reset the worker accepts, and the worker re-joins at once instead of
/// after its idle timeout (10 s). Neither key leaves the head.
fn endpoint(secrets: &ClusterSecrets, listen: SocketAddr) -> Result<quinn::Endpoint, HeadError> {
    let bind = |source| HeadError::Bind {
        addr: listen,
        source,
    };
    let reset = derived_key(secrets, b"ember head stateless reset key\0");
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset);
    let cids = derived_key(secrets, b"ember head connection id key\0");
    let cid_key = u64::from_le_bytes(cids[..8].try_into().expect("8 bytes"));
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    endpoint_config
        .min_reset_interval(MIN_RESET_INTERVAL)
        .cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
    let socket = std::net::UdpSocket::bind(listen).map_err(bind)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind(std::io::Error::other("no async runtime for the endpoint")))?;
    quinn::Endpoint::new(
        endpoint_config,
        Some(server_config(&secrets.identity)?),
        socket,
        runtime,
    )
    .map_err(bind)
}

/// Starts a head: loads or creates the cluster's secrets, opens the journal and restores what
/// it holds (a new head life), binds, writes the cluster file, and collects the checkpoints of
/// actors the journal no longer has.
pub async fn start(config: HeadConfig) -> Result<RunningHead, HeadError> {
    let secrets = ClusterSecrets::load_or_create(&config.state_dir)?;
    let opened = Instant::now();
    let (journal, journaled) = Journal::open(&config.state_dir.join(journal::FILE_NAME))?;
    let read = opened.elapsed();
    let (nodes, actors) = (journaled.nodes.len(), journaled.actors.len());
    let (state, effects) = HeadState::restore(
        ember_head_state::Config {
            heartbeat_timeout: config.heartbeat_timeout,
            rejoin_window: config.rejoin_window,
            pending_timeout: config.pending_timeout,
            autoscaler: config.autoscale.as_ref().map(|a| a.autoscaler.clone()),
            autoscale_interval: config
                .autoscale
                .as_ref()
                .map_or(Duration::from_secs(1), |a| a.interval),
            ..Default::default()
        },
        Instant::now(),
        journaled,
    );
    let changes: Vec<Change> = effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Journal(change) => Some(change),
            _ => None,
        })
        .collect();
    journal.commit(&changes)?;
    // How long a restart spends on the journal: read back, restored, the new life committed.
    tracing::info!(
        nodes,
        actors,
        read_ms = read.as_secs_f64() * 1e3,
        restored_ms = opened.elapsed().as_secs_f64() * 1e3,
        "journal read"
    );
    let endpoint = endpoint(&secrets, config.listen)?;
    let addr = endpoint.local_addr().map_err(|source| HeadError::Bind {
        addr: config.listen,
        source,
    })?;
    let cluster = ClusterFile {
        address: addr,
        token: secrets.token.clone(),
        fingerprint: secrets.identity.fingerprint,
    };
    cluster.write(&config.state_dir)?;
    tracing::info!(%addr, state_dir = %config.state_dir.display(), "head listening");

    let keep = config.keep_checkpoints;
    let checkpoints = match &config.checkpoint_store {
        None => CheckpointStore::on_disk(config.state_dir.join("checkpoints"), keep)?,
        Some(url) => CheckpointStore::in_s3(url, keep).await?,
    };
    for actor in checkpoints.actors().await? {
        if !state.knows_actor(actor) {
            tracing::info!(%actor, "collecting the checkpoints of an actor that is gone");
            checkpoints.remove(actor).await;
        }
    }
    tracing::info!(epoch = state.epoch(), journal = %journal.path().display(), "head state ready");
    let (stop_tx, stop_rx) = watch::channel(false);
    let provider = config
        .autoscale
        .as_ref()
        .map(|a| (a.provider.clone(), cluster.clone()));
    let (shell, owner) = shell::spawn(state, journal, checkpoints, provider, stop_rx.clone());
    let token = secrets.token;
    let mut stop_rx = stop_rx;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => {
                        tokio::spawn(conn::serve(shell.clone(), token.clone(), incoming));
                    }
                    None => break,
                },
                _ = stop_rx.changed() => break,
            }
        }
        endpoint.close(0u32.into(), b"head stopping");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        let _ = owner.await;
    });
    Ok(RunningHead {
        addr,
        cluster,
        stop: stop_tx,
        task,
    })
}
