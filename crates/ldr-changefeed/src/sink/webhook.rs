//! The webhook sink (`webhook-https://…`, `webhook-http://…`): batches of messages POSTed as
//! CockroachDB's webhook sink does, `{"payload":[<message>, …],"length":<n>}` with
//! `Content-Type: application/json`; resolved messages are POSTed alone as
//! `{"resolved":"…"}`. A POST is retried with backoff (CockroachDB's defaults: 3 retries from
//! 500ms); after that the flush fails retryably and the changefeed restarts from its
//! high-water mark, so a receiver that comes back gets every message (at least once).
//! A non-2xx answer counts as a failure.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ldr_types::Timestamp;
use tokio::net::TcpStream;
use tracing::debug;

use super::{Sink, SinkError};
use crate::encode::Message;

/// Retries of one POST before the flush fails.
const RETRIES_MAX: u32 = 3;
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Per-request deadline (CockroachDB's `webhook_client_timeout` default is 3s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages per POST.
const BATCH_MESSAGES_MAX: usize = 1000;

/// The webhook sink of one changefeed run.
pub struct WebhookSink {
    url: url::Url,
    tls: Option<Arc<rustls::ClientConfig>>,
    batch: Vec<String>,
}

impl WebhookSink {
    /// `url` is `https://…` or `http://…`; `ca_cert` a PEM CA to trust;
    /// `insecure_tls_skip_verify` accepts any server certificate.
    pub fn new(
        url: &str,
        ca_cert: Option<&str>,
        insecure_tls_skip_verify: bool,
    ) -> Result<WebhookSink, SinkError> {
        let url = url::Url::parse(url)
            .map_err(|e| SinkError::Permanent(format!("invalid webhook URL: {e}")))?;
        let tls = if url.scheme() == "https" {
            Some(Arc::new(tls_config(ca_cert, insecure_tls_skip_verify)?))
        } else {
            None
        };
        Ok(WebhookSink {
            url,
            tls,
            batch: Vec::new(),
        })
    }

    async fn post(&self, body: String) -> Result<(), SinkError> {
        let mut backoff = BACKOFF_INITIAL;
        let mut attempt = 0;
        loop {
            let r = tokio::time::timeout(REQUEST_TIMEOUT, self.post_once(body.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "Post \"{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
                        self.url
                    ))
                });
            match r {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= RETRIES_MAX => return Err(SinkError::Retryable(e)),
                Err(e) => {
                    debug!(url = %self.url, attempt, error = %e, "webhook post failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }

    async fn post_once(&self, body: String) -> Result<(), String> {
        let host = self.url.host_str().unwrap_or_default().to_string();
        let port = self.url.port_or_known_default().unwrap_or(80);
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let fail = |e: &dyn std::fmt::Display| format!("Post \"{}\": {e}", self.url);
        let tcp = TcpStream::connect(&addr).await.map_err(|e| fail(&e))?;
        let _ = tcp.set_nodelay(true);
        let path = match self.url.query() {
            Some(q) => format!("{}?{q}", self.url.path()),
            None => self.url.path().to_string(),
        };
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, self.url.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(&e))?;
        let status = match &self.tls {
            None => send(TokioIo::new(tcp), request).await,
            Some(config) => {
                let name =
                    rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| fail(&e))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| fail(&e))?;
                send(TokioIo::new(tls), request).await
            }
        }
        .map_err(|e| fail(&e))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{status}"))
        }
    }
}

async fn send<T>(
    io: TokioIo<T>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::StatusCode, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(request).await;
    let result = match response {
        Ok(r) => {
            let status = r.status();
            // Drain the body so the server sees a complete exchange.
            let _ = r.into_body().collect().await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

fn tls_config(
    ca_cert: Option<&str>,
    insecure_tls_skip_verify: bool,
) -> Result<rustls::ClientConfig, SinkError> {
    let bad = |e: &dyn std::fmt::Display| SinkError::Permanent(format!("webhook TLS: {e}"));
    if insecure_tls_skip_verify {
        let provider = ldr_security::tls::provider();
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        return Ok(config);
    }
    let ca = match ca_cert {
        Some(pem) => {
            ldr_security::tls::certificates_from_pem(pem.as_bytes()).map_err(|e| bad(&e))?
        }
        None => Vec::new(),
    };
    ldr_security::tls::client_config(&ca, None, &[b"http/1.1"]).map_err(|e| bad(&e))
}

/// `insecure_tls_skip_verify`: any certificate is accepted (signatures are still checked).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The body of one POST: `{"payload":[…],"length":n}`.
pub fn batch_body(messages: &[String]) -> String {
    let mut body = String::from("{\"payload\":[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(m);
    }
    body.push_str(&format!("],\"length\":{}}}", messages.len()));
    body
}

#[async_trait::async_trait]
impl Sink for WebhookSink {
    async fn emit_row(
        &mut self,
        _topic: &str,
        _schema_version: u64,
        message: &Message,
        _mvcc: Timestamp,
    ) -> Result<(), SinkError> {
        self.batch
            .push(message.value.clone().unwrap_or_else(|| message.key.clone()));
        if self.batch.len() >= BATCH_MESSAGES_MAX {
            self.flush(Timestamp::ZERO).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, _frontier: Timestamp) -> Result<(), SinkError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let body = batch_body(&self.batch);
        self.post(body).await?;
        self.batch.clear();
        Ok(())
    }

    async fn emit_resolved(&mut self, payload: &str, _ts: Timestamp) -> Result<(), SinkError> {
        self.post(payload.to_string()).await
    }

    fn flush_per_batch(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_cockroachdbs_batch() {
        assert_eq!(
            batch_body(&[r#"{"after": {"a": 1}}"#.to_string(), "{}".to_string()]),
            r#"{"payload":[{"after": {"a": 1}},{}],"length":2}"#
        );
    }

    /// A one-connection-at-a-time HTTPS receiver with a certificate for 127.0.0.1 signed by
    /// a fresh CA; returns its port, the CA (PEM) and the bodies it received.
    async fn https_receiver(
        dir: &std::path::Path,
    ) -> (u16, String, Arc<parking_lot::Mutex<Vec<String>>>) {
        use ldr_security::certs;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ca_key = dir.join("ca.key");
        certs::create_ca(dir, &ca_key, false).expect("ca");
        certs::create_node(dir, &ca_key, &["127.0.0.1".to_string()], false).expect("node cert");
        let chain =
            ldr_security::tls::read_certificates(&dir.join(certs::NODE_CERT)).expect("chain");
        let key = ldr_security::tls::read_private_key(&dir.join(certs::NODE_KEY)).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(ldr_security::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let bodies = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                // Headers, then a Content-Length body.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if rest.len() >= len {
                            break Some(rest[..len].to_string());
                        }
                    }
                };
                if let Some(b) = body {
                    seen.lock().push(b);
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        let ca = std::fs::read_to_string(dir.join(certs::CA_CERT)).expect("ca pem");
        (port, ca, bodies)
    }

    #[tokio::test]
    async fn https_with_a_ca_or_skipping_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, ca, bodies) = https_receiver(dir.path()).await;
        let url = format!("https://127.0.0.1:{port}/hook");
        let message = Message {
            key: "[1]".into(),
            value: Some(r#"{"after": {"a": 1}}"#.into()),
        };
        // Trusting the receiver's CA (`ca_cert`): verified, delivered.
        let mut sink = WebhookSink::new(&url, Some(&ca), false).expect("sink");
        sink.emit_row("t", 1, &message, Timestamp::ZERO)
            .await
            .expect("emit");
        sink.flush(Timestamp::ZERO)
            .await
            .expect("delivered over TLS");
        // `insecure_tls_skip_verify`: delivered without the CA.
        let mut sink = WebhookSink::new(&url, None, true).expect("sink");
        sink.emit_resolved(r#"{"resolved":"1.0000000000"}"#, Timestamp::ZERO)
            .await
            .expect("delivered without verification");
        assert_eq!(
            bodies.lock().clone(),
            vec![
                r#"{"payload":[{"after": {"a": 1}}],"length":1}"#.to_string(),
                r#"{"resolved":"1.0000000000"}"#.to_string(),
            ]
        );
        // A CA that did not sign the receiver's certificate: refused (retryably: the job
        // keeps trying and shows the error).
        let other = tempfile::tempdir().expect("tempdir");
        ldr_security::certs::create_ca(other.path(), &other.path().join("ca.key"), false)
            .expect("other ca");
        let other_ca = std::fs::read_to_string(other.path().join(ldr_security::certs::CA_CERT))
            .expect("other ca pem");
        let mut sink = WebhookSink::new(&url, Some(&other_ca), false).expect("sink");
        let e = sink
            .emit_resolved("{}", Timestamp::ZERO)
            .await
            .expect_err("an unknown issuer");
        assert!(
            e.is_retryable() && e.to_string().contains("certificate"),
            "{e}"
        );
        assert_eq!(
            bodies.lock().len(),
            2,
            "nothing delivered without verification"
        );
        // Neither a CA nor skip-verify: no trust anchors (`CREATE CHANGEFEED` refuses it).
        assert!(WebhookSink::new(&url, None, false).is_err());
    }

    #[tokio::test]
    async fn unreachable_receiver_is_a_retryable_error() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let mut sink =
            WebhookSink::new(&format!("http://127.0.0.1:{port}/x"), None, false).expect("sink");
        sink.batch.push("{}".into());
        let e = sink
            .flush(Timestamp::ZERO)
            .await
            .expect_err("nothing listens");
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().starts_with("Post \"http://127.0.0.1"), "{e}");
    }
}
