//! Errors of the ingestion side, classified by what the job does about them.

/// An ingestion error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The job cannot continue (e.g. the source's history retention job is gone): it fails.
    #[error("{0}")]
    Permanent(String),
    /// The flow stops and the job retries with backoff; after enough attempts without
    /// progress it pauses with this error.
    #[error("{0}")]
    Retryable(String),
    /// The source broke the stream protocol (an event without an origin timestamp, a
    /// descriptor that does not validate): nothing of it was applied. The flow stops and the
    /// job retries like [`IngestError::Retryable`], so it pauses with this error if the source
    /// keeps sending it.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A statement-level error for `CREATE LOGICAL REPLICATION STREAM` (SQLSTATE, message).
    #[error("{message}")]
    Sql {
        code: &'static str,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
}

impl IngestError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, IngestError::Permanent(_))
    }

    pub fn sql(code: &'static str, message: impl Into<String>) -> IngestError {
        IngestError::Sql {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// A SQL-layer error: statement errors keep their SQLSTATE; anything else (KV trouble)
    /// is retryable.
    pub fn from_sql(e: ldr_catalog::SqlError) -> IngestError {
        match e {
            ldr_catalog::SqlError::Pg(p) => IngestError::Sql {
                code: p.code,
                message: p.message,
                detail: p.detail,
                hint: p.hint,
            },
            other => IngestError::Retryable(other.to_string()),
        }
    }
}

impl From<ldr_stream::StreamError> for IngestError {
    fn from(e: ldr_stream::StreamError) -> Self {
        IngestError::Retryable(e.to_string())
    }
}

impl From<ldr_kv::KvError> for IngestError {
    fn from(e: ldr_kv::KvError) -> Self {
        IngestError::Retryable(e.to_string())
    }
}

impl From<ldr_jobs::JobError> for IngestError {
    fn from(e: ldr_jobs::JobError) -> Self {
        IngestError::Retryable(e.to_string())
    }
}

impl From<tonic::Status> for IngestError {
    fn from(s: tonic::Status) -> Self {
        IngestError::Retryable(s.message().to_string())
    }
}

impl From<IngestError> for tonic::Status {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Permanent(m) => tonic::Status::failed_precondition(m),
            IngestError::Retryable(m) => tonic::Status::unavailable(m),
            IngestError::Protocol(m) => tonic::Status::data_loss(m),
            IngestError::Sql { message, .. } => tonic::Status::invalid_argument(message),
        }
    }
}

pub type Result<T, E = IngestError> = std::result::Result<T, E>;
