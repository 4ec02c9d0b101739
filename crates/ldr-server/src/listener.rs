//! One listen port for SQL and gRPC, like CockroachDB: the first bytes of a connection tell
//! which protocol it speaks. HTTP/2 (gRPC) connections open with the preface `PRI * HTTP/2.0`;
//! PostgreSQL connections open with a length-prefixed startup or SSL request, whose first byte
//! is 0 for any message shorter than 16 MiB; TLS connections open with a handshake record,
//! byte 0x16: on a secure node that is gRPC over TLS (ALPN `h2`; PostgreSQL clients ask for
//! TLS with an SSLRequest first).
//!
//! A secure node answers plaintext gRPC with an UNAUTHENTICATED error naming the problem (an
//! `--insecure` node trying to join gets a clear error); an insecure node closes TLS
//! connections (a secure node dialing it says so).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ldr_security::GrpcConn;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// What a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Postgres,
    /// A TLS handshake (gRPC over TLS on a secure node).
    Tls,
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// How long a refused plaintext gRPC connection may stay open to read its error.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// How long a client may take to send its first bytes before we give up on it.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Classifies a connection by its first (up to four) bytes; `None` if undecidable yet.
pub fn classify(prefix: &[u8]) -> Option<Protocol> {
    const PREFACE: &[u8] = b"PRI ";
    if prefix.is_empty() {
        return None;
    }
    if prefix[0] == TLS_HANDSHAKE {
        return Some(Protocol::Tls);
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
/// PostgreSQL ones to `pg`, each on its own task. With `grpc_tls` (a secure node), gRPC must
/// come over TLS: the handshake completes here, and plaintext gRPC is refused.
pub async fn accept_loop(
    listener: TcpListener,
    grpc_tx: mpsc::Sender<io::Result<GrpcConn>>,
    pg: PgHandler,
    grpc_tls: Option<Arc<rustls::ServerConfig>>,
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
        let grpc_tls = grpc_tls.clone();
        tokio::spawn(async move {
            let conn = match (sniff(&stream).await, grpc_tls) {
                (Ok(Protocol::Postgres), _) => return pg(stream, peer).await,
                (Ok(Protocol::Grpc), None) => GrpcConn::Plain(stream),
                (Ok(Protocol::Grpc), Some(_)) => {
                    debug!(%peer, "refusing plaintext grpc on a secure node");
                    ldr_security::conn::refuse_plaintext_grpc(stream, REFUSAL_DEADLINE).await;
                    return;
                }
                (Ok(Protocol::Tls), Some(config)) => {
                    match GrpcConn::accept_tls(stream, config).await {
                        Ok(conn) => conn,
                        Err(e) => {
                            debug!(%peer, error = %e, "tls handshake failed");
                            return;
                        }
                    }
                }
                (Ok(Protocol::Tls), None) => {
                    warn!(%peer, "refusing a TLS connection: this node runs --insecure (is the peer a secure node?)");
                    return;
                }
                (Err(e), _) => {
                    debug!(%peer, error = %e, "dropping connection before protocol detection");
                    return;
                }
            };
            if grpc_tx.send(Ok(conn)).await.is_err() {
                debug!(%peer, "grpc server gone; dropping connection");
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
        // A TLS ClientHello record; PostgreSQL's first byte is 0 (length < 16 MiB).
        assert_eq!(classify(&[0x16, 3, 1, 0]), Some(Protocol::Tls));
        assert_eq!(classify(&[0x16]), Some(Protocol::Tls));
        assert_eq!(classify(b"GET /"), Some(Protocol::Postgres));
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
        tokio::spawn(accept_loop(listener, grpc_tx, pg, None));

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

    /// A secure listener: garbage that looks like TLS and plaintext gRPC reach nothing, and
    /// the next real TLS client (a node, ALPN h2) is served with its certificate's name.
    #[tokio::test]
    async fn secure_listener_takes_tls_grpc_only() {
        use ldr_security::GrpcConnInfo;
        use tonic::transport::server::Connected;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = dir.path().join("ca.key");
        ldr_security::certs::create_ca(dir.path(), &ca_key, false).expect("ca");
        ldr_security::certs::create_node(dir.path(), &ca_key, &["127.0.0.1".into()], false)
            .expect("node cert");
        let tls = ldr_security::NodeTls::load(dir.path()).expect("load");

        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let (grpc_tx, mut grpc_rx) = mpsc::channel(4);
        let pg: PgHandler = Arc::new(|_stream, _peer| Box::pin(async {}));
        tokio::spawn(accept_loop(
            listener,
            grpc_tx,
            pg,
            Some(tls.grpc_server.clone()),
        ));

        // A truncated ClientHello, then a ClientHello of garbage: each ends its connection.
        for bytes in [
            vec![0x16, 3, 1, 0, 200, 1],
            vec![0x16, 3, 3, 0, 4, 0xff, 0xff, 0xff, 0xff],
        ] {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(&bytes).await.expect("write");
            c.shutdown().await.expect("shutdown");
        }
        // Plaintext gRPC is answered by the refusal, never routed to the server.
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        plain
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");

        // A node dials with its certificate.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(tls.node_client.clone());
        let name = ldr_security::dial::server_name("127.0.0.1").expect("name");
        let _client = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake");
        let conn = tokio::time::timeout(Duration::from_secs(10), grpc_rx.recv())
            .await
            .expect("routed in time")
            .expect("channel open")
            .expect("a connection");
        let info: GrpcConnInfo = conn.connect_info();
        assert!(info.secure);
        assert_eq!(info.peer_common_name.as_deref(), Some("node"));
        assert!(grpc_rx.try_recv().is_err(), "nothing else was routed");
    }
}
