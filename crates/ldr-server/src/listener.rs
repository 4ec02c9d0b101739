//! One listen port for SQL and gRPC, like CockroachDB: the first bytes of a connection tell
//! which protocol it speaks. HTTP/2 (gRPC) connections open with the preface `PRI * HTTP/2.0`;
//! PostgreSQL connections open with a length-prefixed startup or SSL request, whose first byte
//! is 0 for any message shorter than 16 MiB.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// What a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Postgres,
}

/// How long a client may take to send its first bytes before we give up on it.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Classifies a connection by its first (up to four) bytes; `None` if undecidable yet.
pub fn classify(prefix: &[u8]) -> Option<Protocol> {
    const PREFACE: &[u8] = b"PRI ";
    if prefix.is_empty() {
        return None;
    }
    if prefix.len() >= PREFACE.len() {
        return Some(if &prefix[..4] == PREFACE {
            Protocol::Grpc
        } else {
            Protocol::Postgres
        });
    }
    if PREFACE.starts_with(prefix) {
        None
    } else {
        Some(Protocol::Postgres)
    }
}

/// Waits for enough bytes to classify `stream`, without consuming them.
pub async fn sniff(stream: &TcpStream) -> io::Result<Protocol> {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0u8; 4];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client sent nothing"))??;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before first bytes",
            ));
        }
        if let Some(p) = classify(&buf[..n]) {
            return Ok(p);
        }
        // Fewer than four bytes of a possible preface: wait for more.
        stream.readable().await?;
        tokio::time::sleep_until(std::cmp::min(
            deadline,
            tokio::time::Instant::now() + Duration::from_millis(2),
        ))
        .await;
    }
}

/// Serves PostgreSQL connections.
pub type PgHandler = Arc<dyn Fn(TcpStream, SocketAddr) -> BoxFuture<'static, ()> + Send + Sync>;

/// Accepts connections forever: gRPC ones go to `grpc_tx` (feeding tonic's incoming stream),
/// PostgreSQL ones to `pg`, each on its own task.
pub async fn accept_loop(
    listener: TcpListener,
    grpc_tx: mpsc::Sender<io::Result<TcpStream>>,
    pg: PgHandler,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let grpc_tx = grpc_tx.clone();
        let pg = pg.clone();
        tokio::spawn(async move {
            match sniff(&stream).await {
                Ok(Protocol::Grpc) => {
                    if grpc_tx.send(Ok(stream)).await.is_err() {
                        debug!(%peer, "grpc server gone; dropping connection");
                    }
                }
                Ok(Protocol::Postgres) => pg(stream, peer).await,
                Err(e) => {
                    debug!(%peer, error = %e, "dropping connection before protocol detection")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classify_prefixes() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(b"PRI"), None);
        assert_eq!(classify(b"PRI "), Some(Protocol::Grpc));
        assert_eq!(classify(b"PRX "), Some(Protocol::Postgres));
        assert_eq!(classify(&[0, 0, 0, 8]), Some(Protocol::Postgres));
        assert_eq!(classify(&[0]), Some(Protocol::Postgres));
    }

    #[tokio::test]
    async fn routes_connections_by_first_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let (grpc_tx, mut grpc_rx) = mpsc::channel(4);
        let (pg_tx, mut pg_rx) = mpsc::channel::<SocketAddr>(4);
        let pg: PgHandler = Arc::new(move |_stream, peer| {
            let pg_tx = pg_tx.clone();
            Box::pin(async move {
                let _ = pg_tx.send(peer).await;
            })
        });
        tokio::spawn(accept_loop(listener, grpc_tx, pg));

        // A gRPC client sends the HTTP/2 preface, possibly in pieces.
        let mut c1 = TcpStream::connect(addr).await.expect("connect");
        c1.write_all(b"PR").await.expect("write");
        tokio::task::yield_now().await;
        c1.write_all(b"I * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let got = tokio::time::timeout(Duration::from_secs(10), grpc_rx.recv())
            .await
            .expect("routed in time");
        assert!(got.expect("channel open").is_ok());

        // A PostgreSQL client starts with an SSLRequest.
        let mut c2 = TcpStream::connect(addr).await.expect("connect");
        c2.write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
            .await
            .expect("write");
        let peer = tokio::time::timeout(Duration::from_secs(10), pg_rx.recv())
            .await
            .expect("routed in time");
        assert!(peer.is_some());
    }
}
