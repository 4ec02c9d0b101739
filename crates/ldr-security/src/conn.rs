//! Incoming gRPC connections on the shared port: plain TCP on an insecure node, TLS (ALPN
//! `h2`) on a secure one, with what the TLS handshake proved about the peer, so services can
//! require a node certificate.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::certs::common_name;

/// How long a TLS client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gRPC connection, plain or TLS.
pub enum GrpcConn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a gRPC request's connection proved (in the request's extensions).
#[derive(Debug, Clone)]
pub struct GrpcConnInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The connection is TLS.
    pub secure: bool,
    /// The common name of the verified client certificate, if the client sent one.
    pub peer_common_name: Option<String>,
}

impl GrpcConn {
    /// Completes a TLS handshake on `stream` (its first bytes were a ClientHello), within
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn accept_tls(
        stream: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<GrpcConn> {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out"))??;
        Ok(GrpcConn::Tls(Box::new(tls)))
    }
}

impl Connected for GrpcConn {
    type ConnectInfo = GrpcConnInfo;

    fn connect_info(&self) -> GrpcConnInfo {
        match self {
            GrpcConn::Plain(s) => GrpcConnInfo {
                remote_addr: s.peer_addr().ok(),
                secure: false,
                peer_common_name: None,
            },
            GrpcConn::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                GrpcConnInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    secure: true,
                    peer_common_name: session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| common_name(c.as_ref())),
                }
            }
        }
    }
}

macro_rules! delegate {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match $self.get_mut() {
            GrpcConn::Plain(s) => Pin::new(s).$method($($arg),*),
            GrpcConn::Tls(s) => Pin::new(s.as_mut()).$method($($arg),*),
        }
    };
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_shutdown(cx))
    }
}

/// Certificate common names allowed to call a cluster's internal services (KV, Raft, remote
/// processors): its nodes, and `root` (CLI commands such as `ldr init`).
const INTERNAL_NAMES: [&str; 2] = ["node", "root"];

/// Decides whether a request may use a cluster-internal service: on a TLS connection the
/// client must have shown a certificate of this cluster's CA for `node` or `root` (rustls
/// verified the chain during the handshake); plain connections only exist on insecure nodes.
pub fn check_internal_peer(info: Option<&GrpcConnInfo>) -> Result<(), tonic::Status> {
    match info {
        Some(info) if info.secure => match info.peer_common_name.as_deref() {
            Some(name) if INTERNAL_NAMES.contains(&name) => Ok(()),
            Some(name) => Err(tonic::Status::permission_denied(format!(
                "a certificate for {name:?} cannot call node-internal services: a node certificate of this cluster is required"
            ))),
            None => Err(tonic::Status::unauthenticated(
                "node-internal services require a node certificate of this cluster (none was presented)",
            )),
        },
        _ => Ok(()),
    }
}

/// A tonic interceptor applying [`check_internal_peer`].
pub fn require_node_certificate(
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    check_internal_peer(request.extensions().get::<GrpcConnInfo>())?;
    Ok(request)
}

/// The error every plaintext gRPC request to a secure node receives.
pub const PLAINTEXT_REFUSED: &str = "this node runs in secure mode (--certs-dir): it refuses plaintext connections; an --insecure node cannot join or call a secure cluster";

/// Serves a plaintext HTTP/2 connection to a secure node by answering each request with
/// UNAUTHENTICATED and [`PLAINTEXT_REFUSED`], so the caller (an `--insecure` node trying to
/// join, an old CLI) gets a clear error instead of a reset connection. At most
/// `requests_max` requests, within `deadline`.
pub async fn refuse_plaintext_grpc(stream: TcpStream, deadline: Duration) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let service = hyper::service::service_fn(|_request| async {
        Ok::<_, std::convert::Infallible>(
            tonic::Status::unauthenticated(PLAINTEXT_REFUSED).into_http::<tonic::body::Body>(),
        )
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(deadline, connection).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(secure: bool, cn: Option<&str>) -> GrpcConnInfo {
        GrpcConnInfo {
            remote_addr: None,
            secure,
            peer_common_name: cn.map(String::from),
        }
    }

    #[test]
    fn internal_services_need_a_node_certificate_on_tls() {
        assert!(check_internal_peer(Some(&info(true, Some("node")))).is_ok());
        assert!(check_internal_peer(Some(&info(true, Some("root")))).is_ok());
        let e = check_internal_peer(Some(&info(true, Some("alice")))).expect_err("alice");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let e = check_internal_peer(Some(&info(true, None))).expect_err("no cert");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // Insecure nodes serve plain connections only.
        assert!(check_internal_peer(Some(&info(false, None))).is_ok());
        assert!(check_internal_peer(None).is_ok());
    }
}
