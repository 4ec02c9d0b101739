//! The crate's errors, each with the SQLSTATE a client sees ([`BackupError::code`]).

use ldr_sql::{SqlError, sqlstate};

/// CockroachDB's `pgcode.UndefinedFile` (a backup file that is not there).
pub const UNDEFINED_FILE: &str = "58P01";
/// PostgreSQL's `data_corrupted`: a file whose checksum does not match.
pub const DATA_CORRUPTED: &str = "XX001";
/// CockroachDB's `pgcode.Io`.
pub const IO_ERROR: &str = "58030";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    InvalidUri(String),
    #[error("local file access to paths outside of external-io-dir is not allowed: {0}")]
    OutsideExternDir(String),
    #[error("{0}")]
    Unsupported(String),
    /// No LATEST file, no manifest where one was named.
    #[error("{0}")]
    NotFound(String),
    /// A checksum mismatch or an undecodable file.
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
    /// An error of the SQL layer (catalog, KV), carried with its SQLSTATE.
    #[error("{0}")]
    Sql(SqlError),
    #[error("{0}")]
    InvalidOption(String),
    /// The job was asked to stop here (pause, cancel, shutdown): not a failure.
    #[error("job stopped")]
    Stopped,
}

impl BackupError {
    /// The SQLSTATE a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            BackupError::InvalidUri(_) | BackupError::InvalidOption(_) => {
                sqlstate::INVALID_PARAMETER_VALUE
            }
            BackupError::OutsideExternDir(_) => sqlstate::INSUFFICIENT_PRIVILEGE,
            BackupError::Unsupported(_) => sqlstate::FEATURE_NOT_SUPPORTED,
            BackupError::NotFound(_) => UNDEFINED_FILE,
            BackupError::Corrupt(_) => DATA_CORRUPTED,
            BackupError::Io(_) => IO_ERROR,
            BackupError::Stopped => sqlstate::QUERY_CANCELED,
            BackupError::Sql(e) => e.code(),
        }
    }

    /// Whether retrying may succeed (KV unavailability); files and user input never do.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackupError::Sql(e) => e.code() == sqlstate::RANGE_UNAVAILABLE,
            _ => false,
        }
    }

    pub fn into_sql(self) -> SqlError {
        match self {
            BackupError::Sql(e) => e,
            other => SqlError::new(other.code(), other.to_string()),
        }
    }
}

impl From<SqlError> for BackupError {
    fn from(e: SqlError) -> Self {
        BackupError::Sql(e)
    }
}

impl From<ldr_kv::KvError> for BackupError {
    fn from(e: ldr_kv::KvError) -> Self {
        BackupError::Sql(e.into())
    }
}
