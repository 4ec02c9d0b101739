//! Shared vocabulary for every ldr crate: hybrid-logical-clock timestamps, the clock itself,
//! keys and spans, the key layout, span frontiers and ids.
//!
//! ```
//! use ldr_types::{Clock, Span, SpanFrontier, Timestamp};
//! let clock = Clock::default();
//! let t1 = clock.now();
//! assert!(clock.now() > t1);
//! let mut f = SpanFrontier::new([Span::new(b"a".to_vec(), b"z".to_vec())], Timestamp::ZERO);
//! f.forward(&Span::new(b"a".to_vec(), b"z".to_vec()), t1);
//! assert_eq!(f.frontier(), t1);
//! ```

mod clock;
mod frontier;
pub mod keys;
mod span;
mod timestamp;

pub use clock::{Clock, ClockError, DEFAULT_MAX_OFFSET};
pub use frontier::{ResolvedSpan, SpanFrontier};
pub use span::{Span, prefix_end};
pub use timestamp::{TIMESTAMP_BYTES, Timestamp, TimestampError};

/// A node's id inside its cluster (1-based; node 1 bootstraps the cluster).
pub type NodeId = u32;
/// A table descriptor id.
pub type TableId = u32;
/// An index id inside a table (the primary index is 1).
pub type IndexId = u32;
/// A range id, unique inside a cluster.
pub type RangeId = u64;
/// A job id (CockroachDB-style INT8, see [`unique_id`]).
pub type JobId = i64;
/// A replication origin id stored in value headers: 0 = a local foreground write.
pub type OriginId = u32;

/// The primary index id of every table.
pub const PRIMARY_INDEX_ID: IndexId = 1;

/// A CockroachDB-style `unique_rowid()`: 10-microsecond units since the epoch in the high
/// bits and the node id in the low 15 bits; increasing on one node.
pub fn unique_id(clock: &Clock, node_id: NodeId) -> i64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_UNITS: AtomicU64 = AtomicU64::new(0);
    let wall_units = clock.now().wall_time_ns / 10_000;
    let mut last = LAST_UNITS.load(Ordering::Relaxed);
    let units = loop {
        let candidate = std::cmp::max(wall_units, last + 1);
        match LAST_UNITS.compare_exchange_weak(
            last,
            candidate,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => break candidate,
            Err(actual) => last = actual,
        }
    };
    (((units << 15) | u64::from(node_id & 0x7fff)) & (i64::MAX as u64)) as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn unique_ids_increase() {
        let clock = super::Clock::default();
        let mut last = 0;
        for _ in 0..100_000 {
            let id = super::unique_id(&clock, 3);
            assert!(id > last);
            assert_eq!(id & 0x7fff, 3);
            last = id;
        }
    }
}
