//! What a workload remembers about its writes, for oracles: one record per key written by
//! an acknowledged (or ambiguous) statement.

use ldr_types::Timestamp;
use serde::{Deserialize, Serialize};

/// Whether the client knows the write happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteStatus {
    /// The statement returned success.
    Acknowledged,
    /// The connection failed before an answer: the write may or may not have committed.
    Ambiguous,
}

/// One key written by one statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    /// Which cluster (or server) took the write: a label chosen by the caller.
    pub origin: String,
    pub key: i64,
    /// The value written (text, or lowercase hex for BYTES); `None` for a delete.
    pub value: Option<String>,
    /// The commit timestamp, when the statement returned `crdb_internal_mvcc_timestamp`.
    pub timestamp: Option<Timestamp>,
    pub status: WriteStatus,
    /// Worker that issued it and its per-worker sequence number.
    pub worker: usize,
    pub seq: u64,
    /// Nanoseconds since the workload started: statement sent / answer received.
    pub sent_ns: u64,
    pub answered_ns: u64,
}

/// Where recording is switched on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordOptions {
    /// Label stored in [`WriteRecord::origin`].
    pub origin: String,
    /// Append `RETURNING k, crdb_internal_mvcc_timestamp` to writes (ldr/CockroachDB only).
    pub mvcc_timestamp: bool,
    /// Upper bound on records kept; beyond it recording stops and the run says so.
    pub max_records: usize,
}

impl RecordOptions {
    pub fn new(origin: impl Into<String>) -> RecordOptions {
        RecordOptions {
            origin: origin.into(),
            mvcc_timestamp: true,
            max_records: 1_000_000,
        }
    }
}
