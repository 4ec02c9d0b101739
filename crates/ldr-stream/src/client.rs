//! The destination's side of the stream protocol: parses a source connection URI and calls a
//! source node's `ReplicationStream` service with the URI's credentials.

use std::time::Duration;

use ldr_proto::pb;
use ldr_proto::pb::replication_stream_client::ReplicationStreamClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use ldr_security::SecurityError;
use ldr_security::uri::{ConnectionUri, SslMode, TlsParams};

use crate::error::{Result, StreamError};

/// The default port of a `postgresql://` URI without one (CockroachDB's).
pub const DEFAULT_PORT: u16 = 26257;

/// A source cluster connection URI: `postgresql://user[:password]@host[:port][/db][?options]`.
/// With `sslmode=verify-full` (or `verify-ca`, `require`) and `sslrootcert` (a file, or the
/// PEM itself with `sslinline=true`, as `ldr encode-uri --inline` writes it) the destination
/// dials every source node over TLS and verifies its certificate against that CA and its
/// address; without TLS parameters it dials in plain text (an insecure source).
/// `options=-ccluster=…` is accepted and ignored.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceUri {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    /// The TLS parameters (certificates resolved); `None`: plain text.
    pub tls: Option<TlsParams>,
}

impl std::fmt::Debug for SourceUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

impl SourceUri {
    /// Parses `uri` with [`ConnectionUri`] and checks its certificates now (a bad CA is an
    /// error of the statement, not of a job); every error reads `invalid source URI: …`.
    pub fn parse(uri: &str) -> Result<SourceUri> {
        let bad =
            |e: SecurityError| StreamError::InvalidArgument(format!("invalid source URI: {e}"));
        let parsed = ConnectionUri::parse(uri).map_err(bad)?;
        let tls = parsed.tls_params(SslMode::Disable).map_err(bad)?;
        tls.client_config(&[ldr_security::tls::ALPN_H2])
            .map_err(bad)?;
        Ok(SourceUri {
            user: parsed.user,
            password: parsed.password.unwrap_or_default(),
            host: parsed.host,
            port: parsed.port.unwrap_or(DEFAULT_PORT),
            tls: (tls.mode != SslMode::Disable && tls.root_cert.is_some()).then_some(tls),
        })
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URI with its password replaced, for job descriptions and logs.
    pub fn redacted(&self) -> String {
        let password = if self.password.is_empty() {
            String::new()
        } else {
            ":redacted".to_string()
        };
        format!("postgresql://{}{}@{}", self.user, password, self.address())
    }
}

/// An error with its sources (a TLS failure is several levels below tonic's "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A connection to one source node.
#[derive(Clone)]
pub struct StreamClient {
    inner: ReplicationStreamClient<Channel>,
    user: String,
    password: String,
    address: String,
}

/// How long connecting to a source node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unary call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl StreamClient {
    /// Connects to `address` (`host:port`, a source node's sql address) as the URI's user,
    /// in plain text.
    pub async fn connect(address: &str, user: &str, password: &str) -> Result<StreamClient> {
        StreamClient::connect_with(address, user, password, None).await
    }

    /// Connects to `address` as the URI's user, over TLS if the URI asks for it.
    pub async fn connect_to(address: &str, uri: &SourceUri) -> Result<StreamClient> {
        StreamClient::connect_with(address, &uri.user, &uri.password, uri.tls.as_ref()).await
    }

    async fn connect_with(
        address: &str,
        user: &str,
        password: &str,
        tls: Option<&TlsParams>,
    ) -> Result<StreamClient> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| {
                StreamError::InvalidArgument(format!("invalid source address {address:?}: {e}"))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let config = match tls {
            None => None,
            Some(tls) => tls
                .client_config(&[ldr_security::tls::ALPN_H2])
                .map_err(|e| StreamError::InvalidArgument(format!("invalid source URI: {e}")))?,
        };
        let connected = match config {
            None => endpoint.connect().await,
            Some(config) => ldr_security::dial::tls_channel(endpoint, config, None).await,
        };
        let channel = connected.map_err(|e| {
            StreamError::Unavailable(format!(
                "cannot connect to source node {address}: {}",
                error_chain(&e)
            ))
        })?;
        let inner = ReplicationStreamClient::new(channel).max_decoding_message_size(256 << 20);
        Ok(StreamClient {
            inner,
            user: user.to_string(),
            password: password.to_string(),
            address: address.to_string(),
        })
    }

    /// Connects to the node a URI names.
    pub async fn connect_uri(uri: &SourceUri) -> Result<StreamClient> {
        StreamClient::connect_to(&uri.address(), uri).await
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        let md = request.metadata_mut();
        if let Ok(v) = MetadataValue::try_from(self.user.as_str()) {
            md.insert(ldr_proto::metadata::USER, v);
        }
        if let Ok(v) = MetadataValue::try_from(self.password.as_str()) {
            md.insert(ldr_proto::metadata::PASSWORD, v);
        }
        request
    }

    pub async fn start_stream(
        &mut self,
        request: pb::StartStreamRequest,
    ) -> Result<pb::StartStreamResponse> {
        let request = self.request(request, Some(CALL_TIMEOUT));
        Ok(self.inner.start_stream(request).await?.into_inner())
    }

    pub async fn plan_stream(&mut self, stream_id: i64) -> Result<pb::PlanStreamResponse> {
        let request = self.request(pb::PlanStreamRequest { stream_id }, Some(CALL_TIMEOUT));
        Ok(self.inner.plan_stream(request).await?.into_inner())
    }

    pub async fn heartbeat(
        &mut self,
        request: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse> {
        let request = self.request(request, Some(CALL_TIMEOUT));
        Ok(self.inner.heartbeat(request).await?.into_inner())
    }

    pub async fn complete_stream(
        &mut self,
        stream_id: i64,
        successful_ingestion: bool,
    ) -> Result<()> {
        let request = self.request(
            pb::CompleteStreamRequest {
                stream_id,
                successful_ingestion,
            },
            Some(CALL_TIMEOUT),
        );
        self.inner.complete_stream(request).await?;
        Ok(())
    }

    /// Opens a partition stream (no overall timeout: it runs until cancelled).
    pub async fn stream_partition(
        &mut self,
        request: pb::StreamPartitionRequest,
    ) -> Result<tonic::Streaming<pb::StreamEvent>> {
        let request = self.request(request, None);
        Ok(self.inner.stream_partition(request).await?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tutorial_uris() {
        let u = SourceUri::parse("postgresql://ldr_user:s3cr%40t@127.0.0.1:26257?sslmode=disable")
            .expect("valid");
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_str(),
                u.host.as_str(),
                u.port
            ),
            ("ldr_user", "s3cr@t", "127.0.0.1", 26257)
        );
        assert_eq!(
            u.redacted(),
            "postgresql://ldr_user:redacted@127.0.0.1:26257"
        );
        // A CA that is not a certificate is an error of the URI, said at once.
        let e = SourceUri::parse(
            "postgresql://u:p@10.0.0.1:26257?options=-ccluster%3Dsystem&sslinline=true&sslmode=verify-full&sslrootcert=-----BEGIN+CERTIFICATE-----abc",
        )
        .expect_err("not a certificate");
        assert!(e.to_string().contains("certificate"), "{e}");
        // `ldr encode-uri --inline`'s form: TLS with the inline CA.
        let dir = tempfile::tempdir().expect("tempdir");
        ldr_security::certs::create_ca(dir.path(), &dir.path().join("ca.key"), false).expect("ca");
        let pem = std::fs::read_to_string(dir.path().join("ca.crt")).expect("ca.crt");
        let uri = ldr_security::uri::encode_uri(&ldr_security::uri::EncodeUri {
            target: "u:p@10.0.0.1:26257".into(),
            ca_cert: Some(("ca.crt".into(), pem.clone())),
            inline: true,
            cluster: "system".into(),
            ..Default::default()
        })
        .expect("uri");
        let u = SourceUri::parse(&uri).expect("TLS options are accepted");
        assert_eq!(u.address(), "10.0.0.1:26257");
        let tls = u.tls.as_ref().expect("tls");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some(pem.as_str()));
        assert!(!format!("{u:?}").contains(":p@"), "redacted: {u:?}");
        assert!(
            SourceUri::parse("postgresql://u:p@h:1?sslmode=verify-full").is_err(),
            "verify-full needs a CA"
        );
        let u = SourceUri::parse("postgres://root@localhost/defaultdb").expect("valid");
        assert_eq!((u.port, u.password.as_str()), (DEFAULT_PORT, ""));
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "mysql://u@h:1",
            "postgresql://h:1",
            "not a uri",
            "postgresql://u@:1",
        ] {
            let e = SourceUri::parse(bad).expect_err(bad);
            assert!(
                e.to_string().starts_with("invalid source URI"),
                "{bad}: {e}"
            );
        }
    }
}
