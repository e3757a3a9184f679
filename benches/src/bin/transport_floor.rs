//! The floor under a synchronous call on this machine: one small request and its reply between
//! two processes, with nothing of Ember on the path but its transport settings, so that
//! `microbench`'s sync rows can be read against what the transport alone costs.
//!
//! Rows (each `NAME per second MEAN +- STDDEV`, like `microbench`):
//! - `quic_round_trips_stream_per_call`: a QUIC stream per request, as Ember's QUIC calls use,
//!   with Ember's TLS and transport configuration.
//! - `quic_round_trips_one_stream`: requests and replies on one long-lived QUIC stream.
//! - `unix_round_trips`: requests and replies on one Unix socket stream.
//!
//! Both processes run a current-thread Tokio runtime, as Ember's do. A request and a reply
//! are 64 bytes each.
//!
//! Build and run: `cargo build --release -p ember-benches --bin transport_floor` then
//! `target/release/transport_floor [--duration-secs S] [--trials N]`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ember_core::security::{client_config, server_config, Fingerprint, Identity, SERVER_NAME};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MESSAGE: usize = 64;
const ROWS: [&str; 3] = [
    "quic_round_trips_stream_per_call",
    "quic_round_trips_one_stream",
    "unix_round_trips",
];

/// Round trips between two processes over QUIC and a Unix socket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Length of one trial, in seconds.
    #[arg(long, default_value_t = 2.0)]
    duration_secs: f64,
    /// Trials per row (after one warm-up second).
    #[arg(long, default_value_t = 4)]
    trials: usize,
    /// Internal: serve one row's echo (the benchmark starts itself with it).
    #[arg(long, hide = true)]
    serve: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Some(row) = args.serve {
        return rt.block_on(serve(&row));
    }
    for row in ROWS {
        let (mut child, line) = start_server(row)?;
        let result = rt.block_on(measure(row, &line, &args));
        let _ = child.kill();
        let _ = child.wait();
        let (mean, sd) = result?;
        println!(
            "{row} per second {mean:.2} +- {sd:.2} ({:.1} µs per round trip)",
            1e6 / mean
        );
    }
    Ok(())
}

/// Starts this executable as the server of `row` and reads the line saying where it listens.
fn start_server(row: &str) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve", row])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the server process")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    Ok((child, line.trim().to_string()))
}

fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!("ember-floor-{}.sock", std::process::id()))
}

async fn serve(row: &str) -> anyhow::Result<()> {
    if row == "unix_round_trips" {
        let path = socket_path();
        let listener = tokio::net::UnixListener::bind(&path)?;
        println!("{}", path.display());
        let (stream, _) = listener.accept().await?;
        let _ = std::fs::remove_file(&path);
        let (mut rd, mut wr) = stream.into_split();
        return echo_frames(&mut rd, &mut wr).await;
    }
    let identity = Identity::ephemeral()?;
    let endpoint = quinn::Endpoint::server(
        server_config(&identity)?,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )?;
    println!("{} {}", endpoint.local_addr()?, identity.fingerprint);
    let conn = endpoint.accept().await.context("no caller")?.await?;
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        if row == "quic_round_trips_one_stream" {
            tokio::spawn(async move { echo_frames(&mut recv, &mut send).await });
        } else {
            tokio::spawn(async move {
                let request = recv.read_to_end(MESSAGE).await?;
                send.write_all(&request).await?;
                let _ = send.finish();
                Ok::<_, anyhow::Error>(())
            });
        }
    }
    Ok(())
}

/// Answers each fixed-size request with the same bytes until the caller goes.
async fn echo_frames(
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
) -> anyhow::Result<()> {
    let mut buf = [0u8; MESSAGE];
    while rd.read_exact(&mut buf).await.is_ok() {
        wr.write_all(&buf).await?;
    }
    Ok(())
}

/// One way of making a round trip.
enum Caller {
    StreamPerCall(quinn::Connection),
    OneStream(quinn::SendStream, quinn::RecvStream),
    Unix(tokio::net::UnixStream),
}

impl Caller {
    async fn round_trip(&mut self, request: &[u8; MESSAGE]) -> anyhow::Result<()> {
        let mut reply = [0u8; MESSAGE];
        match self {
            Caller::StreamPerCall(conn) => {
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(request).await?;
                let _ = send.finish();
                let got = recv.read_to_end(MESSAGE).await?;
                anyhow::ensure!(got.len() == MESSAGE, "short reply");
                return Ok(());
            }
            Caller::OneStream(send, recv) => {
                send.write_all(request).await?;
                recv.read_exact(&mut reply).await?;
            }
            Caller::Unix(stream) => {
                stream.write_all(request).await?;
                stream.read_exact(&mut reply).await?;
            }
        }
        Ok(())
    }
}

async fn connect(row: &str, line: &str) -> anyhow::Result<Caller> {
    if row == "unix_round_trips" {
        return Ok(Caller::Unix(tokio::net::UnixStream::connect(line).await?));
    }
    let (addr, fingerprint) = line.split_once(' ').context("bad server line")?;
    let fingerprint: Fingerprint = fingerprint.parse()?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    endpoint.set_default_client_config(client_config(fingerprint)?);
    let conn = endpoint.connect(addr.parse()?, SERVER_NAME)?.await?;
    if row == "quic_round_trips_one_stream" {
        let (send, recv) = conn.open_bi().await?;
        return Ok(Caller::OneStream(send, recv));
    }
    Ok(Caller::StreamPerCall(conn))
}

/// A warm-up second, then `trials` trials: the mean and standard deviation of their rates.
async fn measure(row: &str, line: &str, args: &Args) -> anyhow::Result<(f64, f64)> {
    let mut caller = connect(row, line).await?;
    let request = [7u8; MESSAGE];
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        caller.round_trip(&request).await?;
    }
    let duration = Duration::from_secs_f64(args.duration_secs);
    let mut rates = Vec::new();
    for _ in 0..args.trials.max(1) {
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < duration {
            caller.round_trip(&request).await?;
            count += 1;
        }
        rates.push(count as f64 / start.elapsed().as_secs_f64());
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
    Ok((mean, var.sqrt()))
}
