//! Outgoing gRPC channels: plain on an insecure node, TLS with the node certificate on a
//! secure one.
//!
//! A node's TLS identity belongs to its process (one `ldr start` is one node, with one
//! `--certs-dir`), so it is set once at start ([`set_node_client`]) and every dialer of the
//! cluster layer (KV, Raft, remote processors) picks it up through [`node_channel_lazy`] /
//! [`node_channel`] without threading it through every constructor. Dialing another cluster
//! uses [`tls_channel`] with that cluster's CA instead.

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

static NODE_CLIENT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Makes this process dial other nodes over TLS with `config` (set once, at start).
pub fn set_node_client(config: Arc<rustls::ClientConfig>) {
    let _ = NODE_CLIENT.set(config);
}

/// The process's node-to-node TLS client configuration, if it runs secure.
pub fn node_client() -> Option<Arc<rustls::ClientConfig>> {
    NODE_CLIENT.get().cloned()
}

/// A lazily connected channel to another node of this cluster.
pub fn node_channel_lazy(endpoint: Endpoint) -> Channel {
    match node_client() {
        None => endpoint.connect_lazy(),
        Some(config) => endpoint.connect_with_connector_lazy(TlsConnector::new(config, None)),
    }
}

/// A connected channel to another node of this cluster.
pub async fn node_channel(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    match node_client() {
        None => endpoint.connect().await,
        Some(config) => {
            endpoint
                .connect_with_connector(TlsConnector::new(config, None))
                .await
        }
    }
}

/// A connected channel over TLS with `config` (another cluster's CA), verifying that the
/// server's certificate names `server_name` (default: the endpoint's host).
pub async fn tls_channel(
    endpoint: Endpoint,
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
) -> Result<Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(TlsConnector::new(config, server_name))
        .await
}

/// TCP then TLS to the URI's host and port.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

/// A TLS handshake may take this long after the TCP connection is up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsConnector {
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: Option<String>) -> TlsConnector {
        TlsConnector {
            config,
            server_name,
        }
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, io::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        let name_override = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address without host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(26257);
            let address = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let tcp = TcpStream::connect(&address).await?;
            let _ = tcp.set_nodelay(true);
            let name = name_override.unwrap_or(host);
            let server_name = server_name(&name)?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(server_name, tcp))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("tls handshake with {address} timed out"),
                    )
                })?
                .map_err(|e| explain_handshake_error(&address, e))?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// The name a server certificate must carry: an IP address or a DNS name.
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid server name {host:?}: {e}"),
        )
    })
}

/// A handshake that ends with the peer closing is what an `--insecure` node does to a TLS
/// client: say so.
fn explain_handshake_error(address: &str, e: io::Error) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
            " (the peer closed the connection during the TLS handshake: is it running --insecure?)"
        }
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!("tls handshake with {address} failed: {e}{hint}"),
    )
}
