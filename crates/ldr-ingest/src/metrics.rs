//! LDR metrics with CockroachDB's names (`logical/metrics.go`), kept in atomics and rendered
//! as Prometheus text (dots become underscores): counters, gauges, fixed-bucket histograms,
//! the per-job `replicated_time_seconds{job_id=…}` gauge, and the `*_by_label` families for
//! jobs created with `LABEL = '…'`.
//!
//! One [`Metrics`] per node, shared by every processor and job coordinator on it. The
//! retry-queue gauges are node-wide on purpose: the purgatory size limit compares against them.
//!
//! ```
//! use ldr_ingest::metrics::Metrics;
//! let m = Metrics::new();
//! m.events_ingested.inc(3);
//! let mut text = String::new();
//! m.render(&mut text);
//! assert!(text.contains("# TYPE logical_replication_events_ingested counter\nlogical_replication_events_ingested 3\n"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ldr_types::{JobId, Timestamp};
use parking_lot::RwLock;

use crate::dlq_policy::RetryEligibility;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down; cloning shares it (the purgatory holds clones of the
/// node-wide retry-queue gauges).
#[derive(Debug, Default, Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A float gauge (seconds).
#[derive(Debug, Default)]
pub struct FloatGauge(AtomicU64);

impl FloatGauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A fixed-bucket histogram of non-negative integer observations (nanoseconds here).
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (inclusive), strictly increasing.
    bounds: Vec<u64>,
    /// Per-bucket (non-cumulative) counts; the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: Vec<u64>) -> Histogram {
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must increase: {bounds:?}"
        );
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn record(&self, value: u64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// `(upper bound, cumulative count)` per bucket, `None` = `+Inf`.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            out.push((self.bounds.get(i).copied(), total));
        }
        out
    }
}

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// Buckets of `commit_latency` (source commit to destination apply): 1ms to 1h.
pub fn commit_latency_buckets() -> Vec<u64> {
    vec![
        MS,
        5 * MS / 2,
        5 * MS,
        10 * MS,
        25 * MS,
        50 * MS,
        100 * MS,
        250 * MS,
        500 * MS,
        S,
        5 * S / 2,
        5 * S,
        10 * S,
        30 * S,
        60 * S,
        300 * S,
        600 * S,
        1800 * S,
        3600 * S,
    ]
}

/// Buckets of `batch_hist_nanos` (apply time per row): 10µs to 10s.
pub fn batch_buckets() -> Vec<u64> {
    vec![
        10_000,
        25_000,
        50_000,
        100_000,
        250_000,
        500_000,
        MS,
        5 * MS / 2,
        5 * MS,
        10 * MS,
        25 * MS,
        50 * MS,
        100 * MS,
        250 * MS,
        500 * MS,
        S,
        5 * S / 2,
        5 * S,
        10 * S,
    ]
}

/// The metrics of jobs sharing one `LABEL`.
#[derive(Debug, Default)]
pub struct LabelMetrics {
    pub replicated_time: FloatGauge,
    pub events_ingested: Counter,
    pub events_dlqed: Counter,
    pub scanning_ranges: Gauge,
    pub catchup_ranges: Gauge,
}

/// Outcome counts of one flush (CockroachDB's `flushStats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    /// Rows applied (LWW losers included).
    pub success: u64,
    /// Rows sent to the DLQ.
    pub dlq: u64,
    /// Key+value bytes of the processed rows (applied or DLQ'd).
    pub processed_bytes: u64,
    /// Rows left for the purgatory.
    pub not_processed: u64,
    pub not_processed_bytes: u64,
    pub kv_update_too_old: u64,
    pub kv_value_refreshes: u64,
}

/// Every LDR metric of one node.
#[derive(Debug)]
pub struct Metrics {
    pub events_ingested: Counter,
    pub events_dlqed: Counter,
    pub logical_bytes: Counter,
    pub commit_latency: Histogram,
    pub retry_queue_bytes: Gauge,
    pub retry_queue_events: Gauge,
    pub batch_hist_nanos: Histogram,
    pub events_initial_success: Counter,
    pub events_initial_failure: Counter,
    pub events_retry_success: Counter,
    pub events_retry_failure: Counter,
    pub events_dlqed_age: Counter,
    pub events_dlqed_space: Counter,
    pub events_dlqed_errtype: Counter,
    pub checkpoint_events_ingested: Counter,
    pub replan_count: Counter,
    pub kv_update_too_old: Counter,
    pub kv_value_refreshes: Counter,
    pub scanning_ranges: Gauge,
    pub catchup_ranges: Gauge,
    /// Stream events refused as protocol errors (no origin timestamp); never applied.
    pub events_refused: Counter,
    /// Processors that panicked (caught: the flow fails and the job retries).
    pub processor_panics: Counter,
    /// Validated-mode row attempts refused by a constraint (23xxx: NOT NULL, FK, UNIQUE,
    /// CHECK); each goes to the retry queue, and the DLQ once too old.
    pub validated_constraint_failures: Counter,
    replicated_time: RwLock<BTreeMap<JobId, f64>>,
    labels: RwLock<BTreeMap<String, Arc<LabelMetrics>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_buckets(commit_latency_buckets(), batch_buckets())
    }

    /// With explicit histogram buckets (tests use small ones).
    pub fn with_buckets(commit_latency: Vec<u64>, batch: Vec<u64>) -> Metrics {
        Metrics {
            events_ingested: Counter::default(),
            events_dlqed: Counter::default(),
            logical_bytes: Counter::default(),
            commit_latency: Histogram::new(commit_latency),
            retry_queue_bytes: Gauge::default(),
            retry_queue_events: Gauge::default(),
            batch_hist_nanos: Histogram::new(batch),
            events_initial_success: Counter::default(),
            events_initial_failure: Counter::default(),
            events_retry_success: Counter::default(),
            events_retry_failure: Counter::default(),
            events_dlqed_age: Counter::default(),
            events_dlqed_space: Counter::default(),
            events_dlqed_errtype: Counter::default(),
            checkpoint_events_ingested: Counter::default(),
            replan_count: Counter::default(),
            kv_update_too_old: Counter::default(),
            kv_value_refreshes: Counter::default(),
            scanning_ranges: Gauge::default(),
            catchup_ranges: Gauge::default(),
            events_refused: Counter::default(),
            processor_panics: Counter::default(),
            validated_constraint_failures: Counter::default(),
            replicated_time: RwLock::new(BTreeMap::new()),
            labels: RwLock::new(BTreeMap::new()),
        }
    }

    /// The metrics of a label (created on first use).
    pub fn label(&self, label: &str) -> Arc<LabelMetrics> {
        if let Some(m) = self.labels.read().get(label) {
            return m.clone();
        }
        self.labels
            .write()
            .entry(label.to_string())
            .or_default()
            .clone()
    }

    /// Sets a job's replicated time (`lag = now - this`), and its label's when it has one.
    pub fn set_replicated_time(
        &self,
        job_id: JobId,
        label: Option<&str>,
        replicated_time: Timestamp,
    ) {
        let secs = replicated_time.as_secs_f64();
        self.replicated_time.write().insert(job_id, secs);
        if let Some(label) = label {
            self.label(label).replicated_time.set(secs);
        }
    }

    /// Forgets a job that stopped running on this node.
    pub fn remove_job(&self, job_id: JobId) {
        self.replicated_time.write().remove(&job_id);
    }

    pub fn replicated_time(&self, job_id: JobId) -> Option<f64> {
        self.replicated_time.read().get(&job_id).copied()
    }

    /// Counts one DLQ'd row under its cause (`events_dlqed` itself is counted per flush).
    pub fn record_dlq_cause(&self, eligibility: RetryEligibility) {
        match eligibility {
            RetryEligibility::AgeLimit => self.events_dlqed_age.inc(1),
            RetryEligibility::SizeLimit => self.events_dlqed_space.inc(1),
            RetryEligibility::NotRetryable => self.events_dlqed_errtype.inc(1),
            RetryEligibility::Allowed => {}
        }
    }

    /// The metric updates at the end of one flush, as CockroachDB's `flushBuffer` does them:
    /// first attempts count `initial_*` and `logical_bytes`; purgatory retries count `retry_*`.
    /// `commit_latency_ns` = now − MVCC timestamp of the first event of the flushed buffer.
    pub fn record_flush(
        &self,
        stats: &FlushStats,
        is_retry: bool,
        commit_latency_ns: u64,
        label: Option<&LabelMetrics>,
    ) {
        self.kv_update_too_old.inc(stats.kv_update_too_old);
        self.kv_value_refreshes.inc(stats.kv_value_refreshes);
        self.events_ingested.inc(stats.success);
        self.events_dlqed.inc(stats.dlq);
        if let Some(l) = label {
            l.events_ingested.inc(stats.success);
            l.events_dlqed.inc(stats.dlq);
        }
        self.commit_latency.record(commit_latency_ns);
        if is_retry {
            self.events_retry_success.inc(stats.success);
            self.events_retry_failure
                .inc(stats.not_processed + stats.dlq);
        } else {
            self.events_initial_success.inc(stats.success);
            self.events_initial_failure
                .inc(stats.not_processed + stats.dlq);
            self.logical_bytes
                .inc(stats.processed_bytes + stats.not_processed_bytes);
        }
    }

    /// Appends the Prometheus text exposition of every metric to `out`.
    pub fn render(&self, out: &mut String) {
        let mut w = PromWriter { out };
        w.counter(
            "logical_replication.events_ingested",
            "Events ingested by all replication jobs",
            self.events_ingested.get(),
        );
        w.counter(
            "logical_replication.events_dlqed",
            "Row update events sent to DLQ",
            self.events_dlqed.get(),
        );
        w.counter(
            "logical_replication.logical_bytes",
            "Logical bytes (sum of keys + values) received by all replication jobs",
            self.logical_bytes.get(),
        );
        w.histogram(
            "logical_replication.commit_latency",
            "Event commit latency: a difference between event MVCC timestamp and the time it was flushed into disk. If we batch events, then the difference between the oldest event in the batch and flush is recorded",
            &self.commit_latency,
        );
        w.header(
            "logical_replication.replicated_time_seconds",
            "The replicated time of the logical replication stream in seconds since the unix epoch.",
            "gauge",
        );
        for (job_id, secs) in self.replicated_time.read().iter() {
            w.sample(
                "logical_replication.replicated_time_seconds",
                &[("job_id", &job_id.to_string())],
                &fmt_f64(*secs),
            );
        }
        w.gauge(
            "logical_replication.retry_queue_bytes",
            "Logical bytes (sum of keys+values) in the retry queue",
            self.retry_queue_bytes.get(),
        );
        w.gauge(
            "logical_replication.retry_queue_events",
            "Row update events in the retry queue",
            self.retry_queue_events.get(),
        );
        w.histogram(
            "logical_replication.batch_hist_nanos",
            "Time spent per row flushing a batch",
            &self.batch_hist_nanos,
        );
        w.counter(
            "logical_replication.events_initial_success",
            "Successful applications of an incoming row update",
            self.events_initial_success.get(),
        );
        w.counter(
            "logical_replication.events_initial_failure",
            "Failed attempts to apply an incoming row update",
            self.events_initial_failure.get(),
        );
        w.counter(
            "logical_replication.events_retry_success",
            "Row update events applied after one or more retries",
            self.events_retry_success.get(),
        );
        w.counter(
            "logical_replication.events_retry_failure",
            "Failed re-attempts to apply a row update",
            self.events_retry_failure.get(),
        );
        w.counter(
            "logical_replication.events_dlqed_age",
            "Row update events sent to DLQ due to reaching the maximum time allowed in the retry queue",
            self.events_dlqed_age.get(),
        );
        w.counter(
            "logical_replication.events_dlqed_space",
            "Row update events sent to DLQ due to capacity of the retry queue",
            self.events_dlqed_space.get(),
        );
        w.counter(
            "logical_replication.events_dlqed_errtype",
            "Row update events sent to DLQ due to an error not considered retryable",
            self.events_dlqed_errtype.get(),
        );
        w.counter(
            "logical_replication.checkpoint_events_ingested",
            "Checkpoint events ingested by all replication jobs",
            self.checkpoint_events_ingested.get(),
        );
        w.counter(
            "logical_replication.replan_count",
            "Total number of dist sql replanning events",
            self.replan_count.get(),
        );
        w.counter(
            "logical_replication.kv.update_too_old",
            "Total number of updates that were not applied because they were too old",
            self.kv_update_too_old.get(),
        );
        w.counter(
            "logical_replication.kv.value_refreshes",
            "Total number of batches that refreshed the previous value",
            self.kv_value_refreshes.get(),
        );
        w.gauge(
            "logical_replication.scanning_ranges",
            "Source side ranges undergoing an initial scan (inaccurate with multiple LDR jobs)",
            self.scanning_ranges.get(),
        );
        w.gauge(
            "logical_replication.catchup_ranges",
            "Source side ranges undergoing catch up scans (inaccurate with multiple LDR jobs)",
            self.catchup_ranges.get(),
        );
        // Not CockroachDB metrics: ldr's own protocol and robustness counters.
        w.counter(
            "logical_replication.events_refused",
            "Stream events refused as protocol errors (e.g. without an origin timestamp); never applied",
            self.events_refused.get(),
        );
        w.counter(
            "logical_replication.processor_panics",
            "Writer processors that panicked; the flow failed and the job retried",
            self.processor_panics.get(),
        );
        w.counter(
            "logical_replication.validated.constraint_failures",
            "Validated-mode row attempts refused by a constraint (not null, foreign key, unique, check); retried, then dead-lettered",
            self.validated_constraint_failures.get(),
        );

        let labels = self.labels.read();
        if labels.is_empty() {
            return;
        }
        type Pick = fn(&LabelMetrics) -> String;
        let families: [(&str, &str, &str, Pick); 5] = [
            (
                "logical_replication.replicated_time_by_label",
                "Replicated time of the logical replication stream by label",
                "gauge",
                |l| fmt_f64(l.replicated_time.get()),
            ),
            (
                "logical_replication.events_ingested_by_label",
                "Events ingested by all replication jobs by label",
                "counter",
                |l| l.events_ingested.get().to_string(),
            ),
            (
                "logical_replication.events_dlqed_by_label",
                "Row update events sent to DLQ by label",
                "counter",
                |l| l.events_dlqed.get().to_string(),
            ),
            (
                "logical_replication.scanning_ranges_by_label",
                "Source side ranges undergoing an initial scan",
                "gauge",
                |l| l.scanning_ranges.get().to_string(),
            ),
            (
                "logical_replication.catchup_ranges_by_label",
                "Source side ranges undergoing catch up scans",
                "gauge",
                |l| l.catchup_ranges.get().to_string(),
            ),
        ];
        for (name, help, kind, pick) in families {
            w.header(name, help, kind);
            for (label, m) in labels.iter() {
                w.sample(name, &[("label", label)], &pick(m));
            }
        }
    }
}

/// Prometheus float formatting (`NaN`, `+Inf`, `-Inf`, otherwise Rust's shortest form).
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        v.to_string()
    }
}

/// A dotted CockroachDB metric name as a Prometheus name.
pub fn prometheus_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes Prometheus text exposition (format 0.0.4). Usable for other metric sets too.
pub struct PromWriter<'a> {
    pub out: &'a mut String,
}

impl PromWriter<'_> {
    /// `# HELP` and `# TYPE` lines.
    pub fn header(&mut self, name: &str, help: &str, kind: &str) {
        let name = prometheus_name(name);
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        let name = prometheus_name(name);
        self.out.push_str(&name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        self.sample(name, &[], &value.to_string());
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        self.header(name, help, "gauge");
        self.sample(name, &[], &value.to_string());
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        for (bound, cumulative) in h.cumulative() {
            let le = bound.map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            self.sample(&bucket, &[("le", &le)], &cumulative.to_string());
        }
        self.sample(&format!("{name}_sum"), &[], &h.sum().to_string());
        self.sample(&format!("{name}_count"), &[], &h.count().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = Histogram::new(vec![10, 100]);
        for v in [0, 10, 11, 100, 101, 5000] {
            h.record(v);
        }
        assert_eq!(
            h.cumulative(),
            vec![(Some(10), 2), (Some(100), 4), (None, 6)]
        );
        assert_eq!(h.sum(), 5222);
        assert_eq!(h.count(), 6);
    }

    #[test]
    fn names_and_escaping() {
        assert_eq!(
            prometheus_name("logical_replication.kv.update_too_old"),
            "logical_replication_kv_update_too_old"
        );
        let mut out = String::new();
        PromWriter { out: &mut out }.sample("a.b", &[("label", "x\"y\\z\nw")], "1");
        assert_eq!(out, "a_b{label=\"x\\\"y\\\\z\\nw\"} 1\n");
    }

    #[test]
    fn record_flush_follows_first_attempt_and_retry_accounting() {
        let m = Metrics::new();
        let l = m.label("east");
        let stats = FlushStats {
            success: 5,
            dlq: 1,
            processed_bytes: 600,
            not_processed: 2,
            not_processed_bytes: 200,
            kv_update_too_old: 3,
            kv_value_refreshes: 1,
        };
        m.record_flush(&stats, false, 1_000, Some(&l));
        assert_eq!(m.events_ingested.get(), 5);
        assert_eq!(m.events_dlqed.get(), 1);
        assert_eq!(m.events_initial_success.get(), 5);
        assert_eq!(m.events_initial_failure.get(), 3);
        assert_eq!(m.logical_bytes.get(), 800);
        assert_eq!(m.kv_update_too_old.get(), 3);
        assert_eq!(l.events_ingested.get(), 5);
        m.record_flush(&stats, true, 1_000, None);
        assert_eq!(m.events_retry_success.get(), 5);
        assert_eq!(m.events_retry_failure.get(), 3);
        assert_eq!(
            m.logical_bytes.get(),
            800,
            "retries do not count received bytes again"
        );
        assert_eq!(l.events_ingested.get(), 5, "no label given");
        assert_eq!(m.commit_latency.count(), 2);
        m.record_dlq_cause(RetryEligibility::AgeLimit);
        m.record_dlq_cause(RetryEligibility::SizeLimit);
        m.record_dlq_cause(RetryEligibility::NotRetryable);
        m.record_dlq_cause(RetryEligibility::Allowed);
        assert_eq!(
            (
                m.events_dlqed_age.get(),
                m.events_dlqed_space.get(),
                m.events_dlqed_errtype.get()
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn renders_exact_text() {
        let m = Metrics::with_buckets(vec![1_000_000], vec![10_000, 1_000_000]);
        m.events_ingested.inc(7);
        m.events_dlqed.inc(1);
        m.logical_bytes.inc(4096);
        m.commit_latency.record(500_000);
        m.commit_latency.record(2_000_000);
        m.batch_hist_nanos.record(10_000);
        m.retry_queue_bytes.add(300);
        m.retry_queue_events.add(2);
        m.kv_update_too_old.inc(4);
        m.set_replicated_time(
            12,
            Some("east"),
            Timestamp::new(1_700_000_000_500_000_000, 0),
        );
        m.set_replicated_time(3, None, Timestamp::new(1_700_000_001_000_000_000, 7));
        let east = m.label("east");
        east.events_ingested.inc(2);
        east.scanning_ranges.set(1);
        let mut text = String::new();
        m.render(&mut text);
        let expected = "\
# HELP logical_replication_events_ingested Events ingested by all replication jobs
# TYPE logical_replication_events_ingested counter
logical_replication_events_ingested 7
# HELP logical_replication_events_dlqed Row update events sent to DLQ
# TYPE logical_replication_events_dlqed counter
logical_replication_events_dlqed 1
# HELP logical_replication_logical_bytes Logical bytes (sum of keys + values) received by all replication jobs
# TYPE logical_replication_logical_bytes counter
logical_replication_logical_bytes 4096
# HELP logical_replication_commit_latency Event commit latency: a difference between event MVCC timestamp and the time it was flushed into disk. If we batch events, then the difference between the oldest event in the batch and flush is recorded
# TYPE logical_replication_commit_latency histogram
logical_replication_commit_latency_bucket{le=\"1000000\"} 1
logical_replication_commit_latency_bucket{le=\"+Inf\"} 2
logical_replication_commit_latency_sum 2500000
logical_replication_commit_latency_count 2
# HELP logical_replication_replicated_time_seconds The replicated time of the logical replication stream in seconds since the unix epoch.
# TYPE logical_replication_replicated_time_seconds gauge
logical_replication_replicated_time_seconds{job_id=\"3\"} 1700000001
logical_replication_replicated_time_seconds{job_id=\"12\"} 1700000000.5
# HELP logical_replication_retry_queue_bytes Logical bytes (sum of keys+values) in the retry queue
# TYPE logical_replication_retry_queue_bytes gauge
logical_replication_retry_queue_bytes 300
# HELP logical_replication_retry_queue_events Row update events in the retry queue
# TYPE logical_replication_retry_queue_events gauge
logical_replication_retry_queue_events 2
# HELP logical_replication_batch_hist_nanos Time spent per row flushing a batch
# TYPE logical_replication_batch_hist_nanos histogram
logical_replication_batch_hist_nanos_bucket{le=\"10000\"} 1
logical_replication_batch_hist_nanos_bucket{le=\"1000000\"} 1
logical_replication_batch_hist_nanos_bucket{le=\"+Inf\"} 1
logical_replication_batch_hist_nanos_sum 10000
logical_replication_batch_hist_nanos_count 1
# HELP logical_replication_events_initial_success Successful applications of an incoming row update
# TYPE logical_replication_events_initial_success counter
logical_replication_events_initial_success 0
# HELP logical_replication_events_initial_failure Failed attempts to apply an incoming row update
# TYPE logical_replication_events_initial_failure counter
logical_replication_events_initial_failure 0
# HELP logical_replication_events_retry_success Row update events applied after one or more retries
# TYPE logical_replication_events_retry_success counter
logical_replication_events_retry_success 0
# HELP logical_replication_events_retry_failure Failed re-attempts to apply a row update
# TYPE logical_replication_events_retry_failure counter
logical_replication_events_retry_failure 0
# HELP logical_replication_events_dlqed_age Row update events sent to DLQ due to reaching the maximum time allowed in the retry queue
# TYPE logical_replication_events_dlqed_age counter
logical_replication_events_dlqed_age 0
# HELP logical_replication_events_dlqed_space Row update events sent to DLQ due to capacity of the retry queue
# TYPE logical_replication_events_dlqed_space counter
logical_replication_events_dlqed_space 0
# HELP logical_replication_events_dlqed_errtype Row update events sent to DLQ due to an error not considered retryable
# TYPE logical_replication_events_dlqed_errtype counter
logical_replication_events_dlqed_errtype 0
# HELP logical_replication_checkpoint_events_ingested Checkpoint events ingested by all replication jobs
# TYPE logical_replication_checkpoint_events_ingested counter
logical_replication_checkpoint_events_ingested 0
# HELP logical_replication_replan_count Total number of dist sql replanning events
# TYPE logical_replication_replan_count counter
logical_replication_replan_count 0
# HELP logical_replication_kv_update_too_old Total number of updates that were not applied because they were too old
# TYPE logical_replication_kv_update_too_old counter
logical_replication_kv_update_too_old 4
# HELP logical_replication_kv_value_refreshes Total number of batches that refreshed the previous value
# TYPE logical_replication_kv_value_refreshes counter
logical_replication_kv_value_refreshes 0
# HELP logical_replication_scanning_ranges Source side ranges undergoing an initial scan (inaccurate with multiple LDR jobs)
# TYPE logical_replication_scanning_ranges gauge
logical_replication_scanning_ranges 0
# HELP logical_replication_catchup_ranges Source side ranges undergoing catch up scans (inaccurate with multiple LDR jobs)
# TYPE logical_replication_catchup_ranges gauge
logical_replication_catchup_ranges 0
# HELP logical_replication_events_refused Stream events refused as protocol errors (e.g. without an origin timestamp); never applied
# TYPE logical_replication_events_refused counter
logical_replication_events_refused 0
# HELP logical_replication_processor_panics Writer processors that panicked; the flow failed and the job retried
# TYPE logical_replication_processor_panics counter
logical_replication_processor_panics 0
# HELP logical_replication_validated_constraint_failures Validated-mode row attempts refused by a constraint (not null, foreign key, unique, check); retried, then dead-lettered
# TYPE logical_replication_validated_constraint_failures counter
logical_replication_validated_constraint_failures 0
# HELP logical_replication_replicated_time_by_label Replicated time of the logical replication stream by label
# TYPE logical_replication_replicated_time_by_label gauge
logical_replication_replicated_time_by_label{label=\"east\"} 1700000000.5
# HELP logical_replication_events_ingested_by_label Events ingested by all replication jobs by label
# TYPE logical_replication_events_ingested_by_label counter
logical_replication_events_ingested_by_label{label=\"east\"} 2
# HELP logical_replication_events_dlqed_by_label Row update events sent to DLQ by label
# TYPE logical_replication_events_dlqed_by_label counter
logical_replication_events_dlqed_by_label{label=\"east\"} 0
# HELP logical_replication_scanning_ranges_by_label Source side ranges undergoing an initial scan
# TYPE logical_replication_scanning_ranges_by_label gauge
logical_replication_scanning_ranges_by_label{label=\"east\"} 1
# HELP logical_replication_catchup_ranges_by_label Source side ranges undergoing catch up scans
# TYPE logical_replication_catchup_ranges_by_label gauge
logical_replication_catchup_ranges_by_label{label=\"east\"} 0
";
        if text != expected {
            for (i, (a, b)) in text.lines().zip(expected.lines()).enumerate() {
                assert_eq!(a, b, "first difference at line {}", i + 1);
            }
            assert_eq!(
                text.lines().count(),
                expected.lines().count(),
                "line counts differ"
            );
        }
        // Without labels the *_by_label families are absent.
        let plain = Metrics::new();
        let mut text = String::new();
        plain.render(&mut text);
        assert!(!text.contains("by_label"));
        assert!(text.contains("# TYPE logical_replication_replicated_time_seconds gauge\n"));
    }
}
