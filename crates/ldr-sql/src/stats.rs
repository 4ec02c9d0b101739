//! Statement counts and service latency of one SQL gateway (CockroachDB's `sql.query.count`
//! and `sql.service.latency`), for the node's `/metrics` and the DB Console's Overview
//! dashboard. Statements of the internal user `node` (DLQ writes, jobs) are not counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (nanoseconds) of the latency buckets: 10 µs to ~42 s, doubling.
fn bounds() -> Vec<u64> {
    (0..23).map(|i| 10_000u64 << i).collect()
}

/// Counters of one gateway.
#[derive(Debug)]
pub struct SqlStats {
    statements: AtomicU64,
    bounds: Vec<u64>,
    /// One counter per bound, then the overflow (+Inf) bucket; not cumulative.
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Default for SqlStats {
    fn default() -> Self {
        let bounds = bounds();
        SqlStats {
            statements: AtomicU64::new(0),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds,
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl SqlStats {
    /// Records one statement that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        let i = self.bounds.partition_point(|b| *b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Statements executed.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Total latency in nanoseconds.
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns.load(Ordering::Relaxed)
    }

    /// Cumulative buckets: `(upper bound, count)`, `None` = +Inf.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, c)| {
                total += c.load(Ordering::Relaxed);
                (self.bounds.get(i).copied(), total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_buckets() {
        let s = SqlStats::default();
        s.record(Duration::from_micros(5));
        s.record(Duration::from_micros(15));
        s.record(Duration::from_secs(100));
        assert_eq!(s.statements(), 3);
        let c = s.cumulative();
        assert_eq!(c[0], (Some(10_000), 1));
        assert_eq!(c[1], (Some(20_000), 2));
        assert_eq!(c.last(), Some(&(None, 3)));
    }
}
