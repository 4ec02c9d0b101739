//! A TCP fault proxy: the harness puts one in front of every node's inter-cluster address
//! (`--advertise-sql-addr`), so a test can partition clusters without touching intra-cluster
//! traffic.
//!
//! Modes ([`Fault`]), switchable at run time:
//! - `Pass`: forward both directions;
//! - `Cut`: refuse new connections (accepted and reset at once) and reset existing ones;
//! - `Delay { ms }`: forward, each chunk no earlier than `ms` after it was read (pipelined, so
//!   latency grows, throughput does not collapse);
//! - `Drop`: a blackhole: connections are accepted but nothing is forwarded and nothing is
//!   read, so bytes stay queued in kernel buffers and senders eventually block, as in a real
//!   partition; switching back to `Pass` delivers them in order (as TCP would after a short
//!   partition heals), so streams are never corrupted.
//!
//! Buffering is bounded: at most [`CHUNKS_IN_FLIGHT`] chunks of [`CHUNK_BYTES`] per direction
//! per connection are held by the proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::error::{Result, SimError};

/// Bytes read from a socket at a time.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks held per direction per connection (bounds memory in `Delay` mode).
pub const CHUNKS_IN_FLIGHT: usize = 64;
/// Deadline for connecting to the proxied target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Fault {
    Pass,
    Cut,
    Delay { ms: u64 },
    Drop,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Pass => write!(f, "pass"),
            Fault::Cut => write!(f, "cut"),
            Fault::Delay { ms } => write!(f, "delay {ms}ms"),
            Fault::Drop => write!(f, "blackhole"),
        }
    }
}

/// Counters of a proxy, for tests and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// Connections accepted (including refused ones).
    pub accepted: u64,
    /// Connections reset at once because the proxy was `Cut`.
    pub refused: u64,
    /// Connections currently being served.
    pub active: u64,
    /// Bytes forwarded client → target.
    pub bytes_to_target: u64,
    /// Bytes forwarded target → client.
    pub bytes_to_client: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
    bytes_to_target: AtomicU64,
    bytes_to_client: AtomicU64,
}

/// A running proxy; stops (and drops every connection) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    control: watch::Sender<Fault>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("fault", &self.fault())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> Result<FaultProxy> {
        FaultProxy::bind(SocketAddr::from(([127, 0, 0, 1], 0)), target).await
    }

    /// Starts a proxy to `target` listening on `listen`.
    pub async fn bind(listen: SocketAddr, target: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| SimError::io(format!("binding proxy on {listen}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SimError::io("reading the proxy address", e))?;
        let (control, _) = watch::channel(Fault::Pass);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            control.clone(),
            counters.clone(),
        ));
        tracing::debug!(%addr, %target, "fault proxy started");
        Ok(FaultProxy {
            addr,
            target,
            control,
            counters,
            task,
        })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address traffic is forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Switches mode; takes effect on existing connections too.
    pub fn set(&self, fault: Fault) {
        tracing::info!(addr = %self.addr, ?fault, "fault proxy mode");
        self.control.send_replace(fault);
    }

    pub fn fault(&self) -> Fault {
        *self.control.borrow()
    }

    pub fn pass(&self) {
        self.set(Fault::Pass);
    }

    pub fn cut(&self) {
        self.set(Fault::Cut);
    }

    pub fn delay(&self, latency: Duration) {
        self.set(Fault::Delay {
            ms: latency.as_millis() as u64,
        });
    }

    pub fn blackhole(&self) {
        self.set(Fault::Drop);
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
            bytes_to_target: c.bytes_to_target.load(Ordering::Relaxed),
            bytes_to_client: c.bytes_to_client.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    control: watch::Sender<Fault>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Typically EMFILE under load: back off instead of spinning.
                tracing::warn!(error = %e, "fault proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        if *control.borrow() == Fault::Cut {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            let _ = socket.set_zero_linger();
            drop(socket);
            continue;
        }
        connections.spawn(serve_connection(
            socket,
            target,
            control.subscribe(),
            counters.clone(),
        ));
    }
}

struct ActiveGuard(Arc<Counters>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    mut client: TcpStream,
    target: SocketAddr,
    mode: watch::Receiver<Fault>,
    counters: Arc<Counters>,
) {
    counters.active.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(counters.clone());
    let mut cut_watch = mode.clone();
    let mut open_watch = mode.clone();
    // A blackholed connection is accepted but not forwarded: connect upstream only once the
    // mode lets traffic through.
    let opened = tokio::select! {
        r = open_watch.wait_for(|f| *f != Fault::Drop && *f != Fault::Cut) => r.is_ok(),
        _ = cut_watch.wait_for(|f| *f == Fault::Cut) => false,
    };
    if !opened {
        let _ = client.set_zero_linger();
        return;
    }
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%target, error = %e, "fault proxy could not reach its target");
            let _ = client.set_zero_linger();
            return;
        }
        Err(_) => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let was_cut = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let to_target = pump(
            client_read,
            upstream_write,
            mode.clone(),
            &counters.bytes_to_target,
        );
        let to_client = pump(
            upstream_read,
            client_write,
            mode.clone(),
            &counters.bytes_to_client,
        );
        tokio::select! {
            result = async { tokio::try_join!(to_target, to_client) } => {
                if let Err(e) = result {
                    tracing::trace!(error = %e, "proxied connection ended with an error");
                }
                false
            }
            _ = cut_watch.wait_for(|f| *f == Fault::Cut) => true,
        }
    };
    if was_cut {
        // Reset rather than close, as a severed network path looks to both ends.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

/// Forwards one direction until EOF (then half-closes the writer) or an error.
async fn pump(
    mut reader: ReadHalf<'_>,
    mut writer: WriteHalf<'_>,
    mode: watch::Receiver<Fault>,
    forwarded: &AtomicU64,
) -> std::io::Result<()> {
    let closed = || std::io::Error::other("fault proxy stopped");
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let mut read_mode = mode.clone();
    let read_side = async move {
        loop {
            // Blackholed: leave the bytes in the kernel.
            read_mode
                .wait_for(|f| *f != Fault::Drop)
                .await
                .map_err(|_| closed())?;
            let mut buf = vec![0u8; CHUNK_BYTES];
            let n = tokio::select! {
                r = reader.read(&mut buf) => r?,
                changed = read_mode.changed() => {
                    changed.map_err(|_| closed())?;
                    continue;
                }
            };
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            buf.truncate(n);
            let delay_ms = match *read_mode.borrow() {
                Fault::Delay { ms } => ms,
                _ => 0,
            };
            if tx
                .send((Instant::now() + Duration::from_millis(delay_ms), buf))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let mut write_mode = mode;
    let write_side = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            write_mode
                .wait_for(|f| *f != Fault::Drop)
                .await
                .map_err(|_| closed())?;
            writer.write_all(&chunk).await?;
            forwarded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        writer.shutdown().await
    };
    tokio::try_join!(read_side, write_side).map(|_| ())
}
