//! The stream crate's errors, and their mapping to and from gRPC statuses (the destination
//! shows the source's message to its user, so texts travel intact).

use ldr_types::JobId;

/// Errors of the producer and of the stream client.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("kv.rangefeed.enabled must be enabled on the source cluster for logical replication")]
    RangefeedDisabled,
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("replication stream {0} is not running")]
    StreamNotRunning(JobId),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The source could not be reached or the stream broke; retry later.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Kv(#[from] ldr_kv::KvError),
    #[error(transparent)]
    Jobs(#[from] ldr_jobs::JobError),
    #[error("{0}")]
    Internal(String),
}

impl StreamError {
    /// Whether retrying the operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StreamError::Unavailable(_) => true,
            StreamError::Kv(e) => e.is_retryable(),
            StreamError::Jobs(ldr_jobs::JobError::Kv(e)) => e.is_retryable(),
            _ => false,
        }
    }
}

impl From<StreamError> for tonic::Status {
    fn from(e: StreamError) -> Self {
        let message = e.to_string();
        match e {
            StreamError::RangefeedDisabled
            | StreamError::FailedPrecondition(_)
            | StreamError::StreamNotRunning(_) => tonic::Status::failed_precondition(message),
            StreamError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            StreamError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            StreamError::NotFound(_) | StreamError::Jobs(ldr_jobs::JobError::NotFound(_)) => {
                tonic::Status::not_found(message)
            }
            StreamError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            ref other if other.is_retryable() => tonic::Status::unavailable(message),
            _ => tonic::Status::internal(message),
        }
    }
}

impl From<tonic::Status> for StreamError {
    fn from(s: tonic::Status) -> Self {
        let message = s.message().to_string();
        match s.code() {
            tonic::Code::FailedPrecondition => {
                if message == StreamError::RangefeedDisabled.to_string() {
                    StreamError::RangefeedDisabled
                } else {
                    StreamError::FailedPrecondition(message)
                }
            }
            tonic::Code::PermissionDenied => StreamError::PermissionDenied(message),
            tonic::Code::Unauthenticated => StreamError::Unauthenticated(message),
            tonic::Code::NotFound => StreamError::NotFound(message),
            tonic::Code::InvalidArgument => StreamError::InvalidArgument(message),
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unknown => StreamError::Unavailable(message),
            _ => StreamError::Internal(message),
        }
    }
}

pub type Result<T, E = StreamError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_the_user_visible_errors() {
        for e in [
            StreamError::RangefeedDisabled,
            StreamError::PermissionDenied(
                "user u does not have REPLICATIONSOURCE privilege".into(),
            ),
            StreamError::NotFound("relation \"t\" does not exist".into()),
            StreamError::Unavailable("connection refused".into()),
        ] {
            let text = e.to_string();
            let back = StreamError::from(tonic::Status::from(e));
            assert_eq!(back.to_string(), text);
        }
        assert!(StreamError::from(tonic::Status::unavailable("x")).is_retryable());
        assert!(!StreamError::from(tonic::Status::failed_precondition("x")).is_retryable());
    }
}
