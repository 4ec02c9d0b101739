//! Rangefeeds: per-span streams of committed versions (with the previous value) and resolved
//! timestamps, fed by the storage engine's commit hook.
//!
//! A [`RangefeedManager`] per node is the engine's [`ldr_storage::CommitObserver`]. A consumer
//! [`RangefeedManager::register`]s spans and a start point:
//! - [`StartFrom::InitialScan`]: every live row as of `at`, each with its real MVCC timestamp,
//!   then live events;
//! - [`StartFrom::CatchUp`]: every version above each span's resolved timestamp (a history scan,
//!   which fails below the GC threshold), then live events;
//! - [`StartFrom::Now`]: live events only.
//!
//! The hand-over from scan to live loses nothing (events may repeat: delivery is at least
//! once). Per key, events arrive in timestamp order. A [`RangefeedEvent::Checkpoint`] for a span
//! at `T` promises every version at or below `T` in that span was already delivered; its
//! timestamps never move backwards. Writers never block on a consumer: a registration whose
//! buffer is full is failed with [`RangefeedError::Overflow`], and the consumer re-registers
//! from its checkpoint.
//!
//! Details of this implementation (beyond the contract):
//! - `InitialScan { at }` delivers the live rows as of `at` (key order) and then, per span,
//!   every version above `at` that was already committed when the scan's snapshot was taken;
//!   `CatchUp` parts of `spans` not covered by any `from` entry are scanned from
//!   `Timestamp::ZERO` (which fails if anything was GC'd); with `CatchUp` and empty `spans`,
//!   the `from` spans are the registration's spans;
//! - the scan's snapshot is taken under the engine's commit gate
//!   ([`ldr_storage::Engine::snapshot_after`]), so in practice each version arrives once;
//! - `ScanDone` is sent only by registrations that scan (not by `Now`);
//! - checkpoints carry the registration's spans and the engine's closed timestamp, and are
//!   sent only after `ScanDone`; undelivered consecutive checkpoints are merged.
//!
//! ```
//! use std::sync::Arc;
//! use ldr_rangefeed::{Filter, ManagerOptions, RangefeedEvent, RangefeedManager, RegisterRequest, StartFrom};
//! use ldr_storage::{Condition, Engine, EngineOptions, RowWrite, ValueHeader};
//! use ldr_types::{Clock, Span};
//! # let rt = tokio::runtime::Runtime::new().unwrap();
//! # rt.block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let engine = Engine::open(dir.path(), Arc::new(Clock::default()), EngineOptions::default()).unwrap();
//! let manager = RangefeedManager::start(engine.clone(), ManagerOptions::default());
//! let mut reg = manager
//!     .register(RegisterRequest {
//!         spans: vec![Span::prefix(b"t")],
//!         start: StartFrom::Now,
//!         filter: Filter::default(),
//!         with_diff: true,
//!         buffer_bytes_max: 1 << 20,
//!     })
//!     .unwrap();
//! let row = RowWrite {
//!     key: b"t1".to_vec(),
//!     value: Some(b"v".to_vec()),
//!     condition: Condition::None,
//!     header: ValueHeader::default(),
//!     dependents: vec![],
//! };
//! let ts = engine.apply(&[row], false, None).unwrap().ts;
//! loop {
//!     match reg.next().await.unwrap() {
//!         RangefeedEvent::Value(v) => {
//!             assert_eq!((v.key.as_slice(), v.ts), (&b"t1"[..], ts));
//!             break;
//!         }
//!         RangefeedEvent::Checkpoint { .. } | RangefeedEvent::ScanDone => {}
//!     }
//! }
//! # });
//! ```

mod manager;
mod registration;

use std::time::Duration;

use ldr_storage::ValueHeader;
use ldr_types::{ResolvedSpan, Span, Timestamp};

pub use manager::RangefeedManager;
pub use registration::Registration;

/// Errors delivered to a registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangefeedError {
    #[error("rangefeed consumer fell behind: buffer of {limit_bytes} bytes overflowed")]
    Overflow { limit_bytes: usize },
    #[error("catch-up scan failed: {0}")]
    ScanFailed(String),
    #[error("rangefeed manager shut down")]
    Shutdown,
}

/// Where a registration starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    InitialScan { at: Timestamp },
    CatchUp { from: Vec<ResolvedSpan> },
    Now,
}

/// Which events a registration receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Filter {
    /// Only versions with `origin_id == 0` (LDR loop prevention).
    pub only_local_origin: bool,
    /// Drop versions with `omit_in_rangefeeds` (e.g. TTL deletes).
    pub drop_omitted: bool,
}

/// A registration request.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    pub spans: Vec<Span>,
    pub start: StartFrom,
    pub filter: Filter,
    /// Whether value events carry the previous value.
    pub with_diff: bool,
    /// Bytes of buffered live events before the registration overflows.
    pub buffer_bytes_max: usize,
}

/// One committed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueEvent {
    pub key: Vec<u8>,
    pub ts: Timestamp,
    pub header: ValueHeader,
    /// `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// With diff: the value before this version (`None` if absent or deleted).
    pub prev_value: Option<Vec<u8>>,
}

/// What a registration delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangefeedEvent {
    Value(ValueEvent),
    /// Every version at or below `resolved` in `spans` has been delivered.
    Checkpoint {
        spans: Vec<Span>,
        resolved: Timestamp,
    },
    /// The initial or catch-up scan finished (live events follow).
    ScanDone,
}

/// Options of the manager.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// How often resolved timestamps are published.
    pub resolve_interval: Duration,
}

/// Lowers the resolved timestamps published for spans whose writes this node does not
/// evaluate itself: a replicated range's follower learns closed timestamps only from the
/// commands it applies, not from its own engine's in-flight writes.
pub trait ClosedTimestampSource: Send + Sync {
    /// The closed timestamp to publish for `spans`, at most `engine_closed`.
    fn closed_timestamp(&self, spans: &[Span], engine_closed: Timestamp) -> Timestamp;
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            resolve_interval: Duration::from_millis(50),
        }
    }
}
