//! Errors of the ingestion side, classified by what the job does about them: a permanent
//! error fails the job, an error that cannot resolve by waiting (stored data is corrupt)
//! pauses it at once, anything else is retried with backoff and pauses the job only after
//! enough attempts without progress (see [`crate::retry`]). Errors from the cluster, the
//! stream client and the job registry keep their kind ([`IngestError::Kv`],
//! [`IngestError::Stream`], [`IngestError::Jobs`]), so that decision is made by what actually
//! failed, not by a string.

use ldr_jobs::JobError;
use ldr_kv::{KvError, StorageError};
use ldr_stream::StreamError;

/// The gRPC metadata key a processor on another node sets on its failure status when the
/// cause cannot resolve by waiting (the status code alone does not say it).
const NOT_RETRYABLE_METADATA: &str = "ldr-ingest-not-retryable";

/// An ingestion error.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The job cannot continue (e.g. the source's history retention job is gone): it fails.
    #[error("{0}")]
    Permanent(String),
    /// The flow stops and the job retries with backoff; after enough attempts without
    /// progress it pauses with this error.
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help (a processor, possibly on another node, met corrupt data): the job
    /// pauses at once with this error, for an operator to look at before resuming it.
    #[error("{0}")]
    NotRetryable(String),
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
    /// A cluster (KV) error, as it came.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A stream client error (talking to the source), as it came.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A job registry error, as it came.
    #[error(transparent)]
    Jobs(#[from] JobError),
}

impl IngestError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, IngestError::Permanent(_))
    }

    /// Whether running the flow again may succeed. Everything is retried (the job pauses
    /// after enough attempts without progress) except a permanent error and broken data: a
    /// corrupt stored value or job record, or a request from another cluster, stays as it is
    /// however long the job waits.
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Permanent(_) | IngestError::NotRetryable(_) => false,
            IngestError::Retryable(_) | IngestError::Protocol(_) | IngestError::Sql { .. } => true,
            IngestError::Kv(e) => !kv_is_broken(e),
            IngestError::Jobs(e) => !jobs_is_broken(e),
            IngestError::Stream(StreamError::Kv(e)) => !kv_is_broken(e),
            IngestError::Stream(StreamError::Jobs(e)) => !jobs_is_broken(e),
            IngestError::Stream(_) => true,
        }
    }

    pub fn sql(code: &'static str, message: impl Into<String>) -> IngestError {
        IngestError::Sql {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// A SQL-layer error: statement errors keep their SQLSTATE; cluster and job errors keep
    /// their kind.
    pub fn from_sql(e: ldr_catalog::SqlError) -> IngestError {
        match e {
            ldr_catalog::SqlError::Pg(p) => IngestError::Sql {
                code: p.code,
                message: p.message,
                detail: p.detail,
                hint: p.hint,
            },
            ldr_catalog::SqlError::Kv(e) => IngestError::Kv(e),
            ldr_catalog::SqlError::Jobs(e) => IngestError::Jobs(e),
        }
    }

    /// The error with `context` before its message (`"processor 3: …"`), of the same kind as
    /// far as the job's decision goes (permanent, not retryable, protocol, retryable).
    pub fn context(self, context: impl std::fmt::Display) -> IngestError {
        match self {
            IngestError::Permanent(m) => IngestError::Permanent(format!("{context}: {m}")),
            IngestError::Protocol(m) => IngestError::Protocol(format!("{context}: {m}")),
            e if !e.is_retryable() => IngestError::NotRetryable(format!("{context}: {e}")),
            e => IngestError::Retryable(format!("{context}: {e}")),
        }
    }

    /// The error a coordinator sees when a processor on another node failed with `status`.
    pub fn from_remote(status: &tonic::Status) -> IngestError {
        let message = status.message().to_string();
        match status.code() {
            tonic::Code::FailedPrecondition => IngestError::Permanent(message),
            tonic::Code::DataLoss => IngestError::Protocol(message),
            _ if status.metadata().get(NOT_RETRYABLE_METADATA).is_some() => {
                IngestError::NotRetryable(message)
            }
            _ => IngestError::Retryable(message),
        }
    }
}

/// A KV error that says stored data is broken (or that the request came from another
/// cluster): waiting does not change it. Everything else a KV call returns (a node down, a
/// lease moving, a transaction pushed, replicas still opening) may pass.
pub(crate) fn kv_is_broken(e: &KvError) -> bool {
    matches!(
        e,
        KvError::Storage(StorageError::Corruption { .. }) | KvError::WrongCluster { .. }
    )
}

fn jobs_is_broken(e: &JobError) -> bool {
    match e {
        JobError::Corrupt(_) => true,
        JobError::Kv(e) => kv_is_broken(e),
        _ => false,
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
            IngestError::Protocol(m) => tonic::Status::data_loss(m),
            IngestError::Sql { message, .. } => tonic::Status::invalid_argument(message),
            e if !e.is_retryable() => {
                let mut status = tonic::Status::internal(e.to_string());
                status.metadata_mut().insert(
                    NOT_RETRYABLE_METADATA,
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                status
            }
            e => tonic::Status::unavailable(e.to_string()),
        }
    }
}

pub type Result<T, E = IngestError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn corruption() -> KvError {
        KvError::Storage(StorageError::Corruption {
            key: "/Table/104/1/1".into(),
            detail: "checksum mismatch".into(),
        })
    }

    #[test]
    fn upstream_errors_keep_their_kind() {
        // Broken data: waiting does not help, wherever it surfaced.
        assert!(!IngestError::from(corruption()).is_retryable());
        assert!(!IngestError::from(StreamError::Kv(corruption())).is_retryable());
        assert!(!IngestError::from(JobError::Kv(corruption())).is_retryable());
        assert!(!IngestError::from(JobError::Corrupt("bad json".into())).is_retryable());
        assert!(!IngestError::from_sql(ldr_catalog::SqlError::Kv(corruption())).is_retryable());
        // Transient trouble is retried, as before.
        let down = KvError::Rpc("connection reset".into());
        assert!(IngestError::from(down).is_retryable());
        assert!(IngestError::from(StreamError::Unavailable("source down".into())).is_retryable());
        assert!(IngestError::from(JobError::Contention(7)).is_retryable());
        assert!(IngestError::from(KvError::Internal("node shut down".into())).is_retryable());
        // The message is the cause's own.
        assert_eq!(
            IngestError::from(corruption()).to_string(),
            corruption().to_string()
        );
    }

    #[test]
    fn context_keeps_the_kind() {
        let e = IngestError::from(corruption()).context("processor 2");
        assert!(matches!(e, IngestError::NotRetryable(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("processor 2: storage: corruption at key"),
            "{e}"
        );
        let e = IngestError::Retryable("x".into()).context("processor 2");
        assert!(matches!(e, IngestError::Retryable(_)), "{e:?}");
        let e = IngestError::Permanent("gone".into()).context("processor 2");
        assert!(e.is_permanent(), "{e:?}");
        let e = IngestError::Protocol("no ts".into()).context("processor 2");
        assert!(matches!(e, IngestError::Protocol(_)), "{e:?}");
    }

    #[test]
    fn a_remote_processor_reports_the_kind_through_grpc() {
        for (error, retryable, permanent) in [
            (IngestError::from(corruption()), false, false),
            (IngestError::Retryable("down".into()), true, false),
            (IngestError::Permanent("gone".into()), false, true),
            (IngestError::Protocol("no ts".into()), true, false),
        ] {
            let text = error.to_string();
            let back = IngestError::from_remote(&tonic::Status::from(error));
            assert_eq!(back.is_retryable(), retryable, "{text}: {back:?}");
            assert_eq!(back.is_permanent(), permanent, "{text}: {back:?}");
        }
        // A status without the marker (a transport failure) stays retryable.
        assert!(
            IngestError::from_remote(&tonic::Status::internal("h2 protocol error")).is_retryable()
        );
    }
}
