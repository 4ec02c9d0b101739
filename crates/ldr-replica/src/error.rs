//! Errors of the replication layer.

use ldr_types::RangeId;

use crate::RaftNodeId;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("storage: {0}")]
    Storage(#[from] ldr_storage::StorageError),
    /// This replica cannot serve the request: it is not the leaseholder. `hint` names the
    /// node believed to be the leader, if known.
    #[error("range {range_id}: not the leaseholder (leader hint: {hint:?})")]
    NotLeaseholder {
        range_id: RangeId,
        hint: Option<RaftNodeId>,
    },
    #[error("range {range_id} has no replica on this node")]
    RangeNotFound { range_id: RangeId },
    #[error("range {range_id} already has a replica on this node")]
    ReplicaExists { range_id: RangeId },
    /// The proposal may or may not have been committed (leadership changed after it was
    /// appended, the node is shutting down).
    #[error("range {range_id}: result is ambiguous: {detail}")]
    Ambiguous { range_id: RangeId, detail: String },
    #[error("range {range_id}: raft: {detail}")]
    Raft { range_id: RangeId, detail: String },
    /// Bytes that do not decode (a corrupted log entry, snapshot or message).
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A consistency checksum that could not be had (not applied here in time, forgotten,
    /// or failed).
    #[error("range {range_id}: checksum: {detail}")]
    Checksum { range_id: RangeId, detail: String },
    #[error("the replica store is shut down")]
    ShutDown,
}

impl ReplicaError {
    /// Whether the same request may succeed later, possibly on another replica.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ReplicaError::NotLeaseholder { .. }
                | ReplicaError::Ambiguous { .. }
                | ReplicaError::RangeNotFound { .. }
        )
    }
}

/// An openraft storage error from one of ours (openraft's traits return its own type).
pub(crate) fn io_error(
    subject: openraft::ErrorSubject<RaftNodeId>,
    verb: openraft::ErrorVerb,
    e: impl ToString,
) -> openraft::StorageError<RaftNodeId> {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}
