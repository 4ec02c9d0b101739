//! Security of an ldr cluster: certificates, TLS on the shared port, and connection URIs.
//!
//! A secure cluster (`ldr start --certs-dir=DIR`, CockroachDB's model) has one CA; every node
//! holds `node.crt` signed by it, and clients trust `ca.crt` and log in with a client
//! certificate (`client.<user>.crt`, CN = user) or a password. Everything travels over TLS
//! on the node's one port: PostgreSQL clients after an SSLRequest, gRPC (nodes, and the
//! destination of another cluster) with a TLS ClientHello and ALPN `h2`.
//!
//! - [`certs`]: `ldr cert create-ca | create-node | create-client | list`.
//! - [`tls`]: rustls configurations from a certificates directory ([`NodeTls`]).
//! - [`conn`]: incoming gRPC connections ([`GrpcConn`]) and the node-certificate check of the
//!   cluster-internal services.
//! - [`dial`]: outgoing gRPC channels, TLS when the process runs secure.
//! - [`uri`]: `ldr encode-uri`, the parser of `postgresql://` connection URIs and their TLS
//!   parameters.
//!
//! ```no_run
//! # fn main() -> Result<(), ldr_security::SecurityError> {
//! use std::path::Path;
//! ldr_security::certs::create_ca(Path::new("certs"), Path::new("safe/ca.key"), false)?;
//! ldr_security::certs::create_node(Path::new("certs"), Path::new("safe/ca.key"), &["localhost".into()], false)?;
//! let tls = ldr_security::NodeTls::load(Path::new("certs"))?;
//! # let _ = tls; Ok(()) }
//! ```

pub mod certs;
pub mod conn;
pub mod dial;
pub mod tls;
pub mod uri;

pub use conn::{GrpcConn, GrpcConnInfo};
/// The TLS library, for callers that hold its configurations.
pub use rustls;
pub use tls::NodeTls;

use std::path::Path;

/// Errors of certificate handling and TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create certificate: {0}")]
    Certificate(String),
    #[error("tls configuration: {0}")]
    Tls(String),
}

impl SecurityError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> SecurityError {
        SecurityError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn certificate(e: rcgen::Error) -> SecurityError {
        SecurityError::Certificate(e.to_string())
    }

    pub(crate) fn tls(e: impl std::fmt::Display) -> SecurityError {
        SecurityError::Tls(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, SecurityError>;
