//! The client's link to the head: the current connection, opened again when it is lost.
//!
//! A head that restarts on its state directory comes back at the same address. Every request
//! to the head goes through the [`HeadLink`], which connects again with `ember_core::backoff` (100 ms
//! doubling to 1 s) for [`ConnectOptions::head_wait`] after the connection was lost, one
//! reconnect at a time. A request whose stream could not be opened waits for the reconnect
//! and is then sent. A request already written when the connection died is sent again only
//! when it is idempotent (status, locate, holding or releasing an actor, waiting for nodes, a
//! lease request); any other fails
//! with [`Error::HeadLost`], since the head may or may not have carried it out. Past the
//! window, requests fail with [`Error::HeadUnreachable`]: those that waited for the reconnect
//! at once, each later one after one more attempt (the head may be back by then).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use ember_core::backoff::Backoff;
use ember_core::proto::{read_frame, write_frame, ClientReply, ClientRequest, MAX_FRAME};
use ember_core::security::{connect_client, ClusterFile, ConnectError};
use tokio::sync::watch;

use crate::Error;

/// How long one attempt to reach a lost head waits for its handshake. A head that is down
/// does not answer at all (a QUIC client hears nothing of a closed UDP port), so each
/// attempt ends on this bound. QUIC sends its first packet again after about 1 s: an attempt
/// lasts a little longer, so that a head that came back meanwhile completes the handshake.
const ATTEMPT: Duration = Duration::from_millis(1500);
/// The shortest attempt, when little of the window is left.
const MIN_ATTEMPT: Duration = Duration::from_millis(200);

/// How a client connects to the head and rides through its restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// After the connection to the head is lost, how long requests wait for the head to come
    /// back (it restarts at the same address) before they fail with
    /// [`Error::HeadUnreachable`]. Default 60 s, the head's own re-join window. Zero: they
    /// fail after one attempt to connect again.
    pub head_wait: Duration,
    /// How long the first connection keeps trying a head that does not answer. Zero (the
    /// default): one attempt, failing with [`Error::Connect`]; otherwise attempts with backoff,
    /// failing with [`Error::HeadUnreachable`] once this has passed.
    pub connect_wait: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            head_wait: Duration::from_secs(60),
            connect_wait: Duration::ZERO,
        }
    }
}

/// What a client knows of its connection to the head, from
/// [`Cluster::head_link`](crate::Cluster::head_link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLinkStatus {
    /// Since when the head has been unreachable (wall-clock time), while the connection is
    /// lost; `None` while connected.
    pub lost_since: Option<SystemTime>,
    /// When the connection was last opened again after a loss.
    pub back_since: Option<SystemTime>,
    /// How many times the connection was opened again after a loss.
    pub reconnects: u64,
}

/// When the head was lost: on the wall clock (for messages) and on the monotonic one (for
/// the window).
#[derive(Debug, Clone, Copy)]
struct LostAt {
    wall: SystemTime,
    mono: Instant,
}

impl LostAt {
    fn now() -> Self {
        LostAt {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

/// How long the next attempt may take, `elapsed` into a window of `wait`; `None` once the
/// window has passed and an attempt was made (a caller that comes after the window still
/// gets one).
fn attempt_limit(elapsed: Duration, wait: Duration, attempted: bool) -> Option<Duration> {
    match wait.checked_sub(elapsed) {
        Some(left) if !left.is_zero() => Some(left.clamp(MIN_ATTEMPT, ATTEMPT)),
        _ if !attempted => Some(ATTEMPT),
        _ => None,
    }
}

struct LinkState {
    conn: quinn::Connection,
    /// Counts connections: one more at each reconnect.
    generation: u64,
    lost: Option<LostAt>,
    back_since: Option<SystemTime>,
    /// This client closed the link: nothing reconnects.
    closed: bool,
}

/// The connection to the head, opened again when lost. See the module's documentation.
pub(crate) struct HeadLink {
    endpoint: quinn::Endpoint,
    file: ClusterFile,
    head_wait: Duration,
    state: Mutex<LinkState>,
    /// One reconnect at a time; the others wait for it and use its connection.
    reconnecting: tokio::sync::Mutex<()>,
    /// How many reconnects gave up: those that waited for one that gave up fail with it
    /// rather than try again, one after the other.
    give_ups: AtomicU64,
    /// The generation of the current connection, for those waiting for a new one.
    generations: watch::Sender<u64>,
}

impl HeadLink {
    /// Connects to the head `file` names, as `options` say.
    pub(crate) async fn connect(
        endpoint: quinn::Endpoint,
        file: ClusterFile,
        options: ConnectOptions,
    ) -> Result<Self, Error> {
        let conn = if options.connect_wait.is_zero() {
            open(&endpoint, &file, None).await.map_err(connect_error)?
        } else {
            let since = LostAt::now();
            attempt(&endpoint, &file, since, options.connect_wait, || false).await?
        };
        Ok(HeadLink {
            endpoint,
            file,
            head_wait: options.head_wait,
            state: Mutex::new(LinkState {
                conn,
                generation: 0,
                lost: None,
                back_since: None,
                closed: false,
            }),
            reconnecting: tokio::sync::Mutex::new(()),
            give_ups: AtomicU64::new(0),
            generations: watch::channel(0).0,
        })
    }

    /// The endpoint the link connects from (other connections share it).
    pub(crate) fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// What the link knows of the head now.
    pub(crate) fn status(&self) -> HeadLinkStatus {
        let s = lock(&self.state);
        HeadLinkStatus {
            lost_since: s.lost.map(|l| l.wall),
            back_since: s.back_since,
            reconnects: s.generation,
        }
    }

    /// The current connection and its generation, open or not.
    pub(crate) fn current(&self) -> (quinn::Connection, u64) {
        let s = lock(&self.state);
        (s.conn.clone(), s.generation)
    }

    /// True once this client closed the link.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Waits until the connection is newer than `generation`, or the link is closed.
    pub(crate) async fn changed(&self, generation: u64) {
        let mut rx = self.generations.subscribe();
        let _ = rx.wait_for(|g| *g > generation || self.is_closed()).await;
    }

    /// Closes the connection for good: this client is done.
    pub(crate) fn close(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.conn.close(0u32.into(), b"client done");
        drop(s);
        self.generations.send_modify(|_| {});
    }

    /// Records that connection `generation` is gone, if it is still the current one.
    pub(crate) fn mark_lost(&self, generation: u64) {
        let mut s = lock(&self.state);
        if s.generation == generation && s.lost.is_none() && !s.closed {
            s.lost = Some(LostAt::now());
            let reason = s.conn.close_reason().map(|r| r.to_string());
            tracing::warn!(head = %self.file.address, ?reason, "lost the connection to the head");
        }
    }

    /// An open connection: the current one, or a new one once the head is back, within the
    /// window.
    pub(crate) async fn connection(&self) -> Result<(quinn::Connection, u64), Error> {
        {
            let s = lock(&self.state);
            if s.conn.close_reason().is_none() {
                return Ok((s.conn.clone(), s.generation));
            }
        }
        self.reconnect().await
    }

    /// Connects again, with backoff, until the head answers or the window since it was lost
    /// has passed.
    pub(crate) async fn reconnect(&self) -> Result<(quinn::Connection, u64), Error> {
        let give_ups = self.give_ups.load(Ordering::Acquire);
        let _one = self.reconnecting.lock().await;
        let waited_for_one = self.give_ups.load(Ordering::Acquire) != give_ups;
        let since = {
            let mut s = lock(&self.state);
            if s.closed {
                return Err(Error::ConnectionLost(
                    "this client closed its connection to the head".into(),
                ));
            }
            if s.conn.close_reason().is_none() {
                return Ok((s.conn.clone(), s.generation));
            }
            *s.lost.get_or_insert_with(LostAt::now)
        };
        if waited_for_one {
            return Err(unreachable(&self.file, since));
        }
        let outcome = attempt(&self.endpoint, &self.file, since, self.head_wait, || {
            self.is_closed()
        })
        .await;
        match outcome {
            Ok(conn) => Ok(self.install(conn, since)),
            Err(e) => {
                if matches!(e, Error::HeadUnreachable { .. }) {
                    self.give_ups.fetch_add(1, Ordering::AcqRel);
                }
                Err(e)
            }
        }
    }

    fn install(&self, conn: quinn::Connection, since: LostAt) -> (quinn::Connection, u64) {
        let mut s = lock(&self.state);
        if s.closed {
            conn.close(0u32.into(), b"client done");
        }
        s.conn = conn.clone();
        s.generation += 1;
        s.lost = None;
        s.back_since = Some(SystemTime::now());
        let generation = s.generation;
        drop(s);
        tracing::info!(
            head = %self.file.address,
            after_ms = since.mono.elapsed().as_millis() as u64,
            "connected to the head again"
        );
        self.generations.send_replace(generation);
        (conn, generation)
    }

    /// A stream to the head, on an open connection (waiting for the head to come back when
    /// the connection is lost), and the connection's generation.
    pub(crate) async fn open_stream(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, u64), Error> {
        loop {
            let (conn, generation) = self.connection().await?;
            match conn.open_bi().await {
                Ok((send, recv)) => return Ok((send, recv, generation)),
                Err(e) => {
                    tracing::debug!("cannot open a stream to the head: {e}");
                    self.mark_lost(generation);
                }
            }
        }
    }

    /// True when connection `generation` is known to be gone.
    pub(crate) fn lost_connection(&self, generation: u64) -> bool {
        let s = lock(&self.state);
        if s.generation != generation {
            return true;
        }
        let gone = s.conn.close_reason().is_some();
        drop(s);
        if gone {
            self.mark_lost(generation);
        }
        gone
    }

    /// One request and its one reply. See the module's documentation for what happens when
    /// the head goes away.
    pub(crate) async fn request(&self, req: &ClientRequest) -> Result<ClientReply, Error> {
        loop {
            let (mut send, mut recv, generation) = self.open_stream().await?;
            let outcome = async {
                write_frame(&mut send, req).await?;
                let _ = send.finish();
                read_frame::<_, ClientReply>(&mut recv, MAX_FRAME).await
            }
            .await;
            match outcome {
                Ok(Some(reply)) => return Ok(reply),
                _ if self.lost_connection(generation) => {
                    if idempotent(req) {
                        tracing::debug!("the head went away during a request: sending it again");
                        continue;
                    }
                    return Err(self.lost_during(req));
                }
                Ok(None) => {
                    return Err(Error::ConnectionLost(
                        "the head closed the stream without a reply".into(),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The error of a request the head went away during.
    pub(crate) fn lost_during(&self, req: &ClientRequest) -> Error {
        Error::HeadLost {
            addr: self.file.address.to_string(),
            request: what(req).to_string(),
        }
    }
}

/// Whether a request may be sent again when the head went away after it was written: asking
/// twice has the effect of asking once.
fn idempotent(req: &ClientRequest) -> bool {
    matches!(
        req,
        ClientRequest::Status
            | ClientRequest::Usage { .. }
            | ClientRequest::LocateActor { .. }
            | ClientRequest::HoldActor { .. }
            | ClientRequest::ReleaseActor { .. }
            | ClientRequest::WaitForNodes { .. }
            | ClientRequest::LeaseTask(_)
            | ClientRequest::GetGroup { .. }
            | ClientRequest::GroupHealth { .. }
    )
}

/// A request's name, in errors.
fn what(req: &ClientRequest) -> &'static str {
    match req {
        ClientRequest::LeaseTask(_) => "a task lease",
        ClientRequest::CreateActor(_) => "creating an actor",
        ClientRequest::KillActor { .. } => "killing an actor",
        ClientRequest::HoldActor { .. } => "holding an actor",
        ClientRequest::ReleaseActor { .. } => "releasing an actor",
        ClientRequest::SubmitJob(_) => "submitting a job",
        ClientRequest::Status => "the cluster's status",
        ClientRequest::Usage { .. } => "the usage ledger",
        ClientRequest::LocateActor { .. } => "locating an actor",
        ClientRequest::SaveCheckpoint(_) => "saving a checkpoint",
        ClientRequest::DrainNode { .. } => "draining a node",
        ClientRequest::FormGroup { .. } => "forming a group",
        ClientRequest::JoinGroup { .. } => "joining a group",
        ClientRequest::GetGroup { .. } => "reading a group",
        ClientRequest::GroupHealth { .. } => "a group's health",
        ClientRequest::GroupFailed { .. } => "reporting a group failure",
        ClientRequest::WaitForNodes { .. } => "waiting for nodes",
        ClientRequest::CreateGang(_) => "creating a gang",
        ClientRequest::RemoveGang { .. } => "removing a gang",
    }
}

/// Connects, pins the certificate, and says hello with the token; within `limit` when given.
async fn open(
    endpoint: &quinn::Endpoint,
    file: &ClusterFile,
    limit: Option<Duration>,
) -> Result<quinn::Connection, ConnectError> {
    let connecting = connect_client(endpoint, file.address, file.fingerprint, &file.token);
    let connected = match limit {
        None => connecting.await,
        Some(limit) => tokio::time::timeout(limit, connecting)
            .await
            .unwrap_or_else(|_| {
                Err(ConnectError::Unreachable {
                    addr: file.address.to_string(),
                    reason: format!("no answer within {} ms", limit.as_millis()),
                })
            }),
    };
    connected
}

/// The client's error for a connection that could not be opened.
pub(crate) fn connect_error(e: ConnectError) -> Error {
    match e {
        ConnectError::Unreachable { addr, reason } => Error::Connect { addr, reason },
        ConnectError::Refused { addr, reason } => Error::Connect {
            addr,
            reason: format!("refused: {reason}"),
        },
    }
}

/// Connects to the head `file` names, with backoff, until `wait` has passed since `since`
/// (one attempt at least): [`Error::HeadUnreachable`] then. Stops at once when the head
/// refuses this client, or when `stop` says so between two attempts.
async fn attempt(
    endpoint: &quinn::Endpoint,
    file: &ClusterFile,
    since: LostAt,
    wait: Duration,
    stop: impl Fn() -> bool,
) -> Result<quinn::Connection, Error> {
    let mut backoff = Backoff::new();
    let mut attempted = false;
    loop {
        let Some(limit) = attempt_limit(since.mono.elapsed(), wait, attempted) else {
            return Err(unreachable(file, since));
        };
        let first = !std::mem::replace(&mut attempted, true);
        match open(endpoint, file, Some(limit)).await {
            Ok(conn) => return Ok(conn),
            // The head answered and refused this client (another version, a wrong token):
            // trying again changes nothing.
            Err(e @ ConnectError::Refused { .. }) => return Err(connect_error(e)),
            Err(e) if first => tracing::warn!(
                "the head at {} does not answer ({}): trying again for up to {wait:?}",
                file.address,
                connect_error(e)
            ),
            Err(e) => tracing::debug!("the head is not reachable yet: {}", connect_error(e)),
        }
        if stop() {
            return Err(Error::ConnectionLost(
                "this client closed its connection to the head".into(),
            ));
        }
        pause(&mut backoff, since, wait).await;
    }
}

/// Sleeps the next pause, no further than the end of the window (the last attempt follows).
async fn pause(backoff: &mut Backoff, since: LostAt, wait: Duration) {
    let left = wait.saturating_sub(since.mono.elapsed());
    let pause = backoff.next_wait().min(left);
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
}

fn unreachable(file: &ClusterFile, since: LostAt) -> Error {
    Error::HeadUnreachable {
        addr: file.address.to_string(),
        since: since.wall,
    }
}

/// `12:03:04 UTC (41 s)`: when `since` was on the UTC clock, and how long before `now`.
pub(crate) fn since_text(since: SystemTime, now: SystemTime) -> String {
    let secs = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let day = secs % 86_400;
    let ago = now.duration_since(since).unwrap_or_default().as_secs();
    format!(
        "{:02}:{:02}:{:02} UTC ({ago} s)",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_stay_within_the_window_then_one_more() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Early in the window: a full attempt.
        assert_eq!(attempt_limit(s(0), s(60), false), Some(ATTEMPT));
        // Near its end: what is left, but never too short to connect.
        assert_eq!(attempt_limit(ms(59_300), s(60), false), Some(ms(700)));
        assert_eq!(attempt_limit(ms(59_950), s(60), false), Some(MIN_ATTEMPT));
        // Past it: one attempt, then none.
        assert_eq!(attempt_limit(s(61), s(60), false), Some(ATTEMPT));
        assert_eq!(attempt_limit(s(61), s(60), true), None);
        // A window of zero: one attempt only.
        assert_eq!(attempt_limit(s(0), s(0), false), Some(ATTEMPT));
        assert_eq!(attempt_limit(s(0), s(0), true), None);
    }

    #[test]
    fn since_reads_as_the_utc_time_and_the_seconds_since() {
        // 2026-11-30 12:03:04 UTC.
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_040_184);
        let now = since + Duration::from_millis(41_700);
        assert_eq!(since_text(since, now), "12:03:04 UTC (41 s)");
        let e = Error::HeadUnreachable {
            addr: "127.0.0.1:7700".into(),
            since: SystemTime::now() - Duration::from_secs(3),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("the head at 127.0.0.1:7700 has been unreachable since ")
                && text.ends_with(" UTC (3 s)"),
            "{text}"
        );
    }

    #[test]
    fn only_requests_that_may_run_twice_are_sent_again() {
        assert!(idempotent(&ClientRequest::Status));
        assert!(idempotent(&ClientRequest::Usage { since_ms_ago: None }));
        assert!(idempotent(&ClientRequest::WaitForNodes {
            count: 1,
            timeout_ms: 1
        }));
        let kill = ClientRequest::KillActor {
            actor: ember_core::ids::ActorId(1),
        };
        assert!(!idempotent(&kill));
        assert_eq!(what(&kill), "killing an actor");
    }
}
