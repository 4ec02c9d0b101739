//! Changefeed metrics of one node, with CockroachDB's names (`changefeed.emitted_messages`,
//! …, as Prometheus text with underscores): what the changefeeds running here emitted and
//! flushed, how often they restarted after a retryable error, how many run, and how far the
//! slowest one's high-water mark is behind.
//!
//! ```
//! use ldr_changefeed::metrics::ChangefeedMetrics;
//! let m = ChangefeedMetrics::default();
//! m.emitted(2, 120);
//! let mut text = String::new();
//! m.render(&mut text, 0);
//! assert!(text.contains("changefeed_emitted_messages 2\n"));
//! assert!(text.contains("changefeed_emitted_bytes 120\n"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use ldr_types::Timestamp;
use parking_lot::Mutex;

/// Every changefeed metric of one node.
#[derive(Debug, Default)]
pub struct ChangefeedMetrics {
    emitted_messages: AtomicU64,
    emitted_bytes: AtomicU64,
    flushes: AtomicU64,
    error_retries: AtomicU64,
    /// The high-water mark of each changefeed running here (job id; a sinkless changefeed
    /// has a negative id of its own, see [`ChangefeedMetrics::sinkless_started`]; zero: no
    /// high-water mark yet).
    high_water: Mutex<BTreeMap<i64, Timestamp>>,
    /// The last id given to a sinkless changefeed (counting down from -1).
    sinkless_ids: std::sync::atomic::AtomicI64,
}

impl ChangefeedMetrics {
    /// Messages (rows and resolved messages) of `bytes` bytes handed to a sink.
    pub fn emitted(&self, messages: u64, bytes: u64) {
        self.emitted_messages.fetch_add(messages, Ordering::Relaxed);
        self.emitted_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn flushed(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// A run ended with a retryable error and restarts from the high-water mark.
    pub fn retried(&self) {
        self.error_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A changefeed job runs here from `high_water`, or advanced to it.
    pub fn set_high_water(&self, job_id: i64, high_water: Timestamp) {
        self.high_water.lock().insert(job_id, high_water);
    }

    /// A sinkless changefeed starts running here: its id in these metrics (negative, so it
    /// never meets a job id), to pass to [`Self::stopped`] when it ends.
    pub fn sinkless_started(&self) -> i64 {
        let id = -1 - self.sinkless_ids.fetch_add(1, Ordering::Relaxed);
        self.set_high_water(id, Timestamp::ZERO);
        id
    }

    /// The job (or sinkless changefeed) stopped running here.
    pub fn stopped(&self, job_id: i64) {
        self.high_water.lock().remove(&job_id);
    }

    pub fn running(&self) -> usize {
        self.high_water.lock().len()
    }

    /// Prometheus text; `now_nanos` is the wall time the lag is measured against.
    pub fn render(&self, out: &mut String, now_nanos: u64) {
        let counters = [
            (
                "changefeed_emitted_messages",
                "Messages emitted by all feeds",
                &self.emitted_messages,
            ),
            (
                "changefeed_emitted_bytes",
                "Bytes emitted by all feeds",
                &self.emitted_bytes,
            ),
            (
                "changefeed_flushes",
                "Total flushes across all feeds",
                &self.flushes,
            ),
            (
                "changefeed_error_retries",
                "Total retryable errors encountered by all changefeeds",
                &self.error_retries,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let (running, behind) = {
            let hw = self.high_water.lock();
            let oldest = hw.values().filter(|t| !t.is_zero()).min().copied();
            let behind = oldest.map_or(0, |t| now_nanos.saturating_sub(t.wall_time_ns));
            (hw.len(), behind)
        };
        for (name, help, value) in [
            (
                "changefeed_running",
                "Number of currently running changefeeds, including sinkless",
                running as u64,
            ),
            (
                "changefeed_max_behind_nanos",
                "The most any changefeed's persisted checkpoint is behind the present",
                behind,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_exact_text() {
        let m = ChangefeedMetrics::default();
        m.emitted(3, 300);
        m.emitted(1, 20);
        m.flushed();
        m.retried();
        m.set_high_water(7, Timestamp::new(1_000, 0));
        m.set_high_water(8, Timestamp::new(4_000, 0));
        let mut text = String::new();
        m.render(&mut text, 5_000);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "changefeed_emitted_messages 4",
                "changefeed_emitted_bytes 320",
                "changefeed_flushes 1",
                "changefeed_error_retries 1",
                "changefeed_running 2",
                "changefeed_max_behind_nanos 4000",
            ]
        );
        m.stopped(7);
        let mut text = String::new();
        m.render(&mut text, 5_000);
        assert!(text.contains("changefeed_running 1\n"));
        assert!(text.contains("changefeed_max_behind_nanos 1000\n"));
        // Sinkless changefeeds count as running (distinct ids), and stop counting.
        let (a, b) = (m.sinkless_started(), m.sinkless_started());
        assert!(a < 0 && b < 0 && a != b, "{a} {b}");
        assert_eq!(m.running(), 3);
        m.stopped(a);
        m.stopped(b);
        assert_eq!(m.running(), 1);
    }
}
