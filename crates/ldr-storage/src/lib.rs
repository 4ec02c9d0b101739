//! MVCC on RocksDB: versions with origin headers, LWW conditional writes, tombstones, GC under
//! protected timestamps, scans, atomic write batches and the commit hook rangefeeds listen to.
//!
//! This file is the crate's contract with the layers above (`ldr-rangefeed`, `ldr-kv`); the
//! implementation lives in the private modules. Only this crate names `rocksdb`.
//!
//! Jargon: a *version* is one `(key, timestamp) -> value` entry; a *tombstone* is a version with
//! no value; the *header* of a version carries `origin_id` (0 = local foreground write),
//! `origin_ts` (the source MVCC timestamp of a replicated write) and `omit_in_rangefeeds`. The
//! *logical timestamp* of a version is its `origin_ts` when set, else its MVCC timestamp.
//!
//! Invariants:
//! - every version's value is checksummed on write and verified on read; a mismatch is
//!   [`StorageError::Corruption`] naming the key, never data;
//! - the engine assigns commit timestamps from its [`ldr_types::Clock`], strictly above every
//!   existing version of the keys written and above [`Engine::closed_timestamp`];
//! - [`CommitObserver::on_commit`] is called for every committed batch, in commit order per key,
//!   before the latches of its keys are released, and before the closed timestamp can pass it.
//!
//! Durability: writes go through the RocksDB WAL. With `EngineOptions::sync_wal = false` (the
//! default) an acknowledged write survives a killed process but not an OS crash.
//!
//! ```
//! use std::sync::Arc;
//! use ldr_storage::{Condition, Engine, EngineOptions, RowOutcome, RowWrite, ValueHeader};
//! use ldr_types::{Clock, Timestamp};
//! let dir = tempfile::tempdir().unwrap();
//! let engine = Engine::open(dir.path(), Arc::new(Clock::default()), EngineOptions::default()).unwrap();
//! let row = RowWrite {
//!     key: b"k".to_vec(),
//!     value: Some(b"v".to_vec()),
//!     condition: Condition::Expect(None), // insert: no live value expected
//!     header: ValueHeader::default(),
//!     dependents: vec![],
//! };
//! let res = engine.apply(&[row.clone()], true, None).unwrap();
//! assert_eq!(res.outcomes, vec![RowOutcome::Written { prev: None }]);
//! assert_eq!(engine.get(b"k", Timestamp::MAX).unwrap().unwrap().value, Some(b"v".to_vec()));
//! let again = engine.apply(&[row], true, None).unwrap();
//! assert!(matches!(again.outcomes[0], RowOutcome::ConditionFailed { .. }));
//! ```

pub mod bench;
mod closed_ts;
mod decide;
mod encoding;
mod engine;
pub mod intent;
mod latch;
mod replicated;

#[cfg(test)]
mod engine_tests;

use std::time::Duration;

use ldr_types::{OriginId, Timestamp};

pub use engine::{Engine, EngineSnapshot};
pub use intent::{INTENT_TS, Intent, IntentConflict, Resolution, TxnId, TxnMeta};
pub use replicated::{Evaluation, InFlightWrite, LocalOp, SpanChecksum, VersionWrite};

/// Errors from the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocksdb(String),
    #[error("corruption at key {key}: {detail}")]
    Corruption { key: String, detail: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("history scan from {requested} is below the GC threshold {threshold}")]
    BelowGcThreshold {
        requested: Timestamp,
        threshold: Timestamp,
    },
    #[error("write at {ts} is at or below the closed timestamp {closed}")]
    BelowClosedTimestamp { ts: Timestamp, closed: Timestamp },
    /// A read or write met another transaction's intent (see [`intent`]).
    #[error("{0}")]
    WriteIntent(Box<IntentConflict>),
}

impl StorageError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::BelowClosedTimestamp { .. })
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Per-version metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ValueHeader {
    /// 0 = local foreground write; non-zero = written by replication from that origin.
    pub origin_id: OriginId,
    /// The source MVCC timestamp of a replicated write; `Timestamp::ZERO` when local.
    pub origin_ts: Timestamp,
    /// Rangefeeds with filtering on drop this version (e.g. TTL deletes).
    pub omit_in_rangefeeds: bool,
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The MVCC (commit) timestamp.
    pub ts: Timestamp,
    pub header: ValueHeader,
    /// `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

impl Version {
    /// `origin_ts` if set, else the MVCC timestamp.
    pub fn logical_ts(&self) -> Timestamp {
        if self.header.origin_ts.is_zero() {
            self.ts
        } else {
            self.header.origin_ts
        }
    }
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// A version with its key, as returned by scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub key: Vec<u8>,
    pub version: Version,
}

/// A version from a history scan, with the version before it (if any, and not GC'd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub key: Vec<u8>,
    pub version: Version,
    /// The value of the next older version (`None` if absent or a tombstone).
    pub prev_value: Option<Vec<u8>>,
}

/// What must hold for a row write to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Always write.
    None,
    /// The key's latest live value must equal this (`None`: no live value, i.e. absent or a
    /// tombstone). A mismatch is [`RowOutcome::ConditionFailed`].
    Expect(Option<Vec<u8>>),
    /// Last-write-wins by logical timestamp, using the row's header `origin_id`/`origin_ts` as
    /// the incoming write's identity:
    /// - incoming logical ts older than the existing version's → [`RowOutcome::LwwLost`];
    /// - equal → tie-break: the larger origin id wins, where an existing version with
    ///   `origin_id == 0` counts as `local_origin_id`; equal ids → the smaller value bytes win
    ///   (a tombstone is smaller than any value); fully equal → lost (nothing to do);
    /// - newer, but `expected_prev` is `Some(p)` and the live value differs from `p` →
    ///   [`RowOutcome::LwwUnexpected`] with the actual version;
    /// - otherwise write. Tombstones take part: a delete is remembered with its origin ts.
    Lww {
        expected_prev: Option<Option<Vec<u8>>>,
        local_origin_id: OriginId,
    },
}

/// One row write: a primary key whose condition decides, plus dependent keys (secondary index
/// entries) written in the same batch, at the same timestamp with the same header, if and only
/// if the primary is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowWrite {
    pub key: Vec<u8>,
    /// `None` writes a tombstone.
    pub value: Option<Vec<u8>>,
    pub condition: Condition,
    pub header: ValueHeader,
    /// `(key, value)`; a `None` value writes a tombstone.
    pub dependents: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl RowWrite {
    /// Every key the write touches: the primary key, then its dependents'.
    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        std::iter::once(&self.key).chain(self.dependents.iter().map(|(k, _)| k))
    }
}

/// What happened to one [`RowWrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// Written. `prev` is the version it replaced (tombstones included), if any.
    Written { prev: Option<Version> },
    /// [`Condition::Expect`] did not hold; `actual` is the latest version (if any).
    ConditionFailed { actual: Option<Version> },
    /// The incoming write lost LWW against `existing` (the logical ts it lost to).
    LwwLost { existing: Timestamp },
    /// Newer than the existing version, but the existing value was not the expected one.
    LwwUnexpected { actual: Option<Version> },
    /// Not attempted: an atomic batch in which another row's condition failed.
    NotAttempted,
}

/// The result of [`Engine::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyResult {
    /// The commit timestamp of the written rows (meaningful if any row was written).
    pub ts: Timestamp,
    pub outcomes: Vec<RowOutcome>,
}

/// One committed version, as seen by the commit observer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEvent {
    pub key: Vec<u8>,
    pub version: Version,
    /// The value the key had before this write (`None` if absent or a tombstone).
    pub prev_value: Option<Vec<u8>>,
}

/// Told about every committed batch (the rangefeed hook). Must not block: it runs on the
/// write path while the batch's latches are held.
pub trait CommitObserver: Send + Sync {
    fn on_commit(&self, events: &[CommitEvent]);
}

/// Engine tuning.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub block_cache_bytes: usize,
    pub bloom_filter_bits: f64,
    pub write_buffer_bytes: usize,
    /// fsync the WAL on every write (off: the WAL is written, not synced, as CockroachDB's
    /// default without `--store` sync; SIGKILL of the process still loses nothing acknowledged).
    pub sync_wal: bool,
    /// How far behind now the closed timestamp trails (`kv.closed_timestamp.target_duration`).
    pub closed_timestamp_target: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            block_cache_bytes: 256 << 20,
            bloom_filter_bits: 10.0,
            write_buffer_bytes: 64 << 20,
            sync_wal: false,
            closed_timestamp_target: Duration::from_millis(200),
        }
    }
}

/// Statistics of one GC pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub versions_removed: u64,
    pub keys_visited: u64,
}
