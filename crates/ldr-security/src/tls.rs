//! TLS configurations built from a certificates directory, all on rustls with the ring
//! provider (no process-wide provider is installed or needed).
//!
//! A secure node uses:
//! - [`NodeTls::grpc_server`]: gRPC on the shared port (ALPN `h2`); a client certificate is
//!   optional at the TLS layer, because another cluster's destination dials the replication
//!   service without one (it logs in with a password); the cluster-internal services require
//!   a node certificate ([`crate::conn::require_node_certificate`]).
//! - [`NodeTls::sql_server`]: pgwire after SSLRequest; a client certificate is optional
//!   (certificate or password login).
//! - [`NodeTls::node_client`]: dialing other nodes of its cluster, presenting `node.crt` and
//!   trusting `ca.crt`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::{CA_CERT, NODE_CERT, NODE_KEY};
use crate::{Result, SecurityError};

/// ALPN of gRPC (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of PostgreSQL (direct SSL, PostgreSQL 17 clients send it after SSLRequest too).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The crypto provider every configuration here uses.
// ring, not aws-lc-rs: no large C build (see build notes); rustls deprecates it only for
// lacking post-quantum key exchange, which our threat model does not need yet.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| SecurityError::io(path, e))?;
    certificates_from_pem(&pem).map_err(|e| match e {
        SecurityError::InvalidArgument(m) => {
            SecurityError::InvalidArgument(format!("{}: {m}", path.display()))
        }
        other => other,
    })
}

/// Every certificate of a PEM text (at least one).
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| SecurityError::InvalidArgument(format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(SecurityError::InvalidArgument(
            "no certificate found in PEM".into(),
        ));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1 PEM).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    check_key_mode(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        SecurityError::InvalidArgument(format!("{}: invalid private key: {e}", path.display()))
    })
}

/// Keys readable by others are refused, as CockroachDB and libpq refuse them.
fn check_key_mode(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| SecurityError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecurityError::InvalidArgument(format!(
            "{} has permissions {mode:04o}: private keys must not be readable by group or others (chmod 0600)",
            path.display()
        )));
    }
    Ok(())
}

/// A root store holding the certificates of a CA file.
pub fn roots_from(ca: &[CertificateDer<'static>]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| SecurityError::InvalidArgument(format!("invalid CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A client configuration that trusts `ca` and verifies the server's name
/// (`sslmode=verify-full`), optionally presenting a client certificate.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let roots = Arc::new(roots_from(ca)?);
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(SecurityError::tls)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SecurityError::tls)?
        .with_webpki_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(SecurityError::tls)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A node's TLS configurations, from `--certs-dir`.
#[derive(Clone)]
pub struct NodeTls {
    pub certs_dir: PathBuf,
    pub grpc_server: Arc<rustls::ServerConfig>,
    pub sql_server: Arc<rustls::ServerConfig>,
    pub node_client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("certs_dir", &self.certs_dir)
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Loads `ca.crt`, `node.crt` and `node.key` from `certs_dir`.
    pub fn load(certs_dir: &Path) -> Result<NodeTls> {
        let ca = read_certificates(&certs_dir.join(CA_CERT))?;
        let chain = read_certificates(&certs_dir.join(NODE_CERT))?;
        let key = read_private_key(&certs_dir.join(NODE_KEY))?;
        let server = |alpn: &[u8]| -> Result<Arc<rustls::ServerConfig>> {
            let provider = provider();
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots_from(&ca)?),
                provider.clone(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(SecurityError::tls)?;
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(SecurityError::tls)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    SecurityError::InvalidArgument(format!(
                        "{} does not match {}: {e}",
                        certs_dir.join(NODE_CERT).display(),
                        certs_dir.join(NODE_KEY).display()
                    ))
                })?;
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(NodeTls {
            certs_dir: certs_dir.to_path_buf(),
            grpc_server: server(ALPN_H2)?,
            sql_server: server(ALPN_POSTGRESQL)?,
            node_client: Arc::new(client_config(
                &ca,
                Some((chain.clone(), key.clone_key())),
                &[ALPN_H2],
            )?),
        })
    }
}

/// The TLS client identity a CLI command (`ldr init`, `ldr node …`) uses from `--certs-dir`:
/// `client.root.crt` if present, else the node certificate (as CockroachDB accepts either).
pub fn cli_client(certs_dir: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let ca = read_certificates(&certs_dir.join(CA_CERT))?;
    let root_cert = certs_dir.join(crate::certs::client_cert_file("root"));
    let (cert, key) = if root_cert.exists() {
        (
            root_cert,
            certs_dir.join(crate::certs::client_key_file("root")),
        )
    } else {
        (certs_dir.join(NODE_CERT), certs_dir.join(NODE_KEY))
    };
    let identity = (read_certificates(&cert)?, read_private_key(&key)?);
    Ok(Arc::new(client_config(&ca, Some(identity), &[ALPN_H2])?))
}
