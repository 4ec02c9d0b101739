//! The one error type of `ldr-sim`: what went wrong in the harness, a workload or a checker.
//!
//! Checker failures (`Invariant`) carry a full, human-readable report: the point of a checker
//! is to say what was expected, what was seen and how to reproduce.

use std::path::PathBuf;

/// Everything that can go wrong in the testbed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An operating-system call (spawn, file, socket) failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A SQL statement or connection failed. `detail` is the server's message and SQLSTATE
    /// (tokio-postgres's own `Display` says only "db error").
    #[error("{context}: {detail}")]
    Sql {
        context: String,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The `ldr` binary was not found where we looked.
    #[error(
        "ldr binary not found (looked at: {looked_at:?}); build it with `cargo build -p ldr-cli` or set LDR_BIN"
    )]
    BinaryNotFound { looked_at: Vec<PathBuf> },
    /// A condition did not hold before its deadline.
    #[error("timed out after {waited_ms}ms waiting for {what}{details}")]
    Timeout {
        what: String,
        waited_ms: u128,
        details: String,
    },
    /// A node or server process exited or misbehaved.
    #[error("{0}")]
    Process(String),
    /// A caller passed something that cannot work (unknown node, bad config).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An answer from a server could not be understood.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// A checker found a broken invariant; the string is the full report.
    #[error("invariant violated: {0}")]
    Invariant(String),
    /// (De)serialization of a scenario or summary failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl SimError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> SimError {
        SimError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn sql(context: impl Into<String>, source: tokio_postgres::Error) -> SimError {
        SimError::Sql {
            context: context.into(),
            detail: describe_sql_error(&source),
            source,
        }
    }

    /// The SQLSTATE code of a SQL error, if the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SimError::Sql { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// A tokio-postgres error with everything useful in it: the server's severity, message,
/// SQLSTATE and detail, or the underlying I/O cause.
pub fn describe_sql_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; detail: {detail}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

/// Result alias for this crate.
pub type Result<T, E = SimError> = std::result::Result<T, E>;
