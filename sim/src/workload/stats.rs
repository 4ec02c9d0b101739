//! Workload statistics: an HDR histogram of operation latencies (per interval and in total),
//! counters, the per-second progress line and the final summary.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, 1 µs to 1 h, 3 significant digits.
const LATENCY_MAX_US: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// One line per second while a workload runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressLine {
    pub workload: String,
    /// Seconds since the start, at the end of this interval.
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    pub errors: u64,
    pub latency: LatencySummary,
}

impl fmt::Display for ProgressLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency;
        write!(
            f,
            "{:>7.1}s {:>6} {:>10.1} ops/s  p50 {:>8.2}ms  p95 {:>8.2}ms  p99 {:>8.2}ms  max {:>8.2}ms  errors {}",
            self.elapsed_s,
            self.workload,
            self.ops_per_s,
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.max_ms,
            self.errors
        )
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Duration,
    MaxOps,
    Cancelled,
}

/// The final report of a run (serializable to JSON for `ldr bench` and CI logs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSummary {
    pub workload: String,
    pub seed: u64,
    pub concurrency: usize,
    pub elapsed_s: f64,
    pub stopped_by: StopReason,
    /// Successful operations (statements or transactions).
    pub ops: u64,
    pub errors: u64,
    pub ops_per_s: f64,
    pub rows_written: u64,
    pub rows_read: u64,
    pub rows_deleted: u64,
    pub rows_written_per_s: f64,
    pub latency: LatencySummary,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// One entry per second (at most one hour's worth).
    pub per_second: Vec<ProgressLine>,
}

impl fmt::Display for WorkloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency;
        write!(
            f,
            "{}: {} ops in {:.1}s ({:.1} ops/s, {:.1} rows written/s), {} errors, p50 {:.2}ms p95 {:.2}ms p99 {:.2}ms max {:.2}ms (seed {}, stopped by {:?})",
            self.workload,
            self.ops,
            self.elapsed_s,
            self.ops_per_s,
            self.rows_written_per_s,
            self.errors,
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.max_ms,
            self.seed,
            self.stopped_by
        )?;
        if !self.errors_by_kind.is_empty() {
            write!(f, "; errors by kind: {:?}", self.errors_by_kind)?;
        }
        Ok(())
    }
}

/// Shared counters of a running workload.
pub(crate) struct Stats {
    workload: String,
    interval: Mutex<Histogram<u64>>,
    total: Mutex<Histogram<u64>>,
    ops: AtomicU64,
    errors: AtomicU64,
    interval_ops: AtomicU64,
    interval_errors: AtomicU64,
    pub(crate) rows_written: AtomicU64,
    pub(crate) rows_read: AtomicU64,
    pub(crate) rows_deleted: AtomicU64,
    errors_by_kind: Mutex<BTreeMap<String, u64>>,
    per_second: Mutex<Vec<ProgressLine>>,
}

const PER_SECOND_MAX: usize = 3600;

impl Stats {
    pub(crate) fn new(workload: &str) -> Stats {
        Stats {
            workload: workload.to_string(),
            interval: Mutex::new(new_histogram()),
            total: Mutex::new(new_histogram()),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            interval_ops: AtomicU64::new(0),
            interval_errors: AtomicU64::new(0),
            rows_written: AtomicU64::new(0),
            rows_read: AtomicU64::new(0),
            rows_deleted: AtomicU64::new(0),
            errors_by_kind: Mutex::new(BTreeMap::new()),
            per_second: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn record_ok(&self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
        lock(&self.interval).saturating_record(us);
        lock(&self.total).saturating_record(us);
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.interval_ops.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_error(&self, kind: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.interval_errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.errors_by_kind)
            .entry(kind.to_string())
            .or_insert(0) += 1;
    }

    /// Closes the current interval and returns its line.
    pub(crate) fn take_interval(&self, elapsed: Duration, interval: Duration) -> ProgressLine {
        let histogram = std::mem::replace(&mut *lock(&self.interval), new_histogram());
        let ops = self.interval_ops.swap(0, Ordering::Relaxed);
        let errors = self.interval_errors.swap(0, Ordering::Relaxed);
        let seconds = interval.as_secs_f64().max(1e-9);
        let line = ProgressLine {
            workload: self.workload.clone(),
            elapsed_s: elapsed.as_secs_f64(),
            ops_per_s: ops as f64 / seconds,
            errors,
            latency: LatencySummary::of(&histogram),
        };
        let mut per_second = lock(&self.per_second);
        if per_second.len() < PER_SECOND_MAX {
            per_second.push(line.clone());
        }
        line
    }

    pub(crate) fn summary(
        &self,
        seed: u64,
        concurrency: usize,
        elapsed: Duration,
        stopped_by: StopReason,
    ) -> WorkloadSummary {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let ops = self.ops.load(Ordering::Relaxed);
        let rows_written = self.rows_written.load(Ordering::Relaxed);
        WorkloadSummary {
            workload: self.workload.clone(),
            seed,
            concurrency,
            elapsed_s: elapsed.as_secs_f64(),
            stopped_by,
            ops,
            errors: self.errors.load(Ordering::Relaxed),
            ops_per_s: ops as f64 / seconds,
            rows_written,
            rows_read: self.rows_read.load(Ordering::Relaxed),
            rows_deleted: self.rows_deleted.load(Ordering::Relaxed),
            rows_written_per_s: rows_written as f64 / seconds,
            latency: LatencySummary::of(&lock(&self.total)),
            errors_by_kind: lock(&self.errors_by_kind).clone(),
            per_second: lock(&self.per_second).clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_percentiles_and_rates() {
        let stats = Stats::new("kv");
        for ms in 1..=100u64 {
            stats.record_ok(Duration::from_millis(ms));
        }
        stats.record_error("40001");
        stats.rows_written.fetch_add(200, Ordering::Relaxed);
        let line = stats.take_interval(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(line.ops_per_s, 100.0);
        assert_eq!(line.errors, 1);
        assert!((line.latency.p50_ms - 50.0).abs() < 0.1, "{line}");
        assert!((line.latency.p99_ms - 99.0).abs() < 0.1, "{line}");
        // The next interval starts empty.
        assert_eq!(
            stats
                .take_interval(Duration::from_secs(2), Duration::from_secs(1))
                .ops_per_s,
            0.0
        );
        let summary = stats.summary(7, 2, Duration::from_secs(2), StopReason::MaxOps);
        assert_eq!(summary.ops, 100);
        assert_eq!(summary.errors, 1);
        assert_eq!(summary.rows_written_per_s, 100.0);
        assert_eq!(summary.errors_by_kind.get("40001"), Some(&1));
        assert_eq!(summary.per_second.len(), 2);
        assert!((summary.latency.max_ms - 100.0).abs() < 0.1);
        let json = serde_json::to_string(&summary).expect("serialize");
        let back: WorkloadSummary = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, summary);
    }
}
