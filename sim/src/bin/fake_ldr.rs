//! `fake-ldr`: a stand-in for the `ldr` binary, used only by `ldr-sim`'s own tests of the
//! cluster harness (process management, readiness, restarts, pauses, clock-offset plumbing)
//! so they run without the real database.
//!
//! It accepts the same command line as `ldr start` / `ldr init`:
//! - `start`: forwards every connection on `--listen-addr` to the PostgreSQL server named by
//!   `FAKE_LDR_BACKEND` (host:port), so `SELECT 1` works; serves `GET /health` (200) and
//!   `GET /metrics` on `--http-addr`, exposing `LDR_CLOCK_OFFSET_NS` and a start counter kept
//!   in the store directory (to prove restarts reuse the store). `FAKE_LDR_FAIL=msg` makes it
//!   print `msg` and exit 1 (to test failure reports).
//! - `init`: succeeds once `--host` accepts TCP connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("start") => runtime.block_on(start(&args)),
        Some("init") => runtime.block_on(init(&args)),
        other => bail!("fake-ldr: unsupported command {other:?}"),
    }
}

async fn init(args: &[String]) -> anyhow::Result<()> {
    let host: SocketAddr = flag(args, "host").context("--host is required")?.parse()?;
    tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await
        .context("connect timed out")?
        .with_context(|| format!("cannot reach {host}"))?;
    println!("Cluster successfully initialized");
    Ok(())
}

async fn start(args: &[String]) -> anyhow::Result<()> {
    if let Ok(message) = std::env::var("FAKE_LDR_FAIL") {
        eprintln!("fake-ldr: {message}");
        std::process::exit(1);
    }
    let store = PathBuf::from(flag(args, "store").context("--store is required")?);
    let listen: SocketAddr = flag(args, "listen-addr")
        .context("--listen-addr is required")?
        .parse()?;
    let http: SocketAddr = flag(args, "http-addr")
        .context("--http-addr is required")?
        .parse()?;
    let backend: SocketAddr = std::env::var("FAKE_LDR_BACKEND")
        .context("FAKE_LDR_BACKEND is required")?
        .parse()?;
    let offset = std::env::var("LDR_CLOCK_OFFSET_NS").unwrap_or_else(|_| "0".into());
    std::fs::create_dir_all(&store)?;
    let starts_file = store.join("starts");
    let starts: u64 = std::fs::read_to_string(&starts_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(&starts_file, starts.to_string())?;

    let _proxy = ldr_sim::FaultProxy::bind(listen, backend).await?;
    let http_listener = TcpListener::bind(http).await?;
    println!(
        "fake-ldr: node listening on {listen} (backend {backend}), http on {http}, start #{starts}, clock offset {offset} ns"
    );
    loop {
        let (mut socket, _) = http_listener.accept().await?;
        let metrics = format!(
            "# TYPE ldr_fake_clock_offset_ns gauge\nldr_fake_clock_offset_ns {offset}\nldr_fake_starts_total {starts}\n"
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let Ok(n) = socket.read(&mut buf).await else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/health" => ("200 OK", "ok\n".to_string()),
                "/metrics" => ("200 OK", metrics),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}
