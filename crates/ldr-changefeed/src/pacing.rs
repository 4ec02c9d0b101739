//! When a changefeed flushes its sink, emits a resolved message and checkpoints its
//! high-water mark. Pure (the caller passes the time), unit-tested below.
//!
//! - flush when the frontier moved above the high-water mark and `flush_interval` (the
//!   `min_checkpoint_frequency`, or the `resolved` interval when that is shorter) passed
//!   since the last flush; the flushed frontier becomes the high-water mark (it never moves
//!   backwards);
//! - after a flush, a resolved message when `resolved` is set and its interval passed;
//! - after a flush, a checkpoint (job record, protected timestamp) when
//!   `min_checkpoint_frequency` passed, or at once after an error was shown, so the next
//!   healthy flush clears it.

use std::time::{Duration, Instant};

use ldr_types::Timestamp;

use crate::options::ChangefeedOptions;

/// What to do after a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterFlush {
    pub emit_resolved: bool,
    pub checkpoint: bool,
}

/// The pacing state of one changefeed on one node (kept across its runs).
#[derive(Debug, Clone)]
pub struct Pacing {
    flush_interval: Duration,
    resolved_interval: Option<Duration>,
    checkpoint_interval: Duration,
    high_water: Timestamp,
    last_flush: Option<Instant>,
    last_resolved: Option<Instant>,
    last_checkpoint: Option<Instant>,
    error_shown: bool,
}

impl Pacing {
    /// `high_water`: the checkpointed mark the job resumes from (zero: none yet).
    pub fn new(options: &ChangefeedOptions, high_water: Timestamp) -> Pacing {
        let checkpoint_interval = options.min_checkpoint_frequency();
        let resolved_interval = options.resolved_interval();
        let flush_interval = match resolved_interval {
            Some(r) if !r.is_zero() => r.min(checkpoint_interval),
            _ => checkpoint_interval,
        };
        Pacing {
            flush_interval,
            resolved_interval,
            checkpoint_interval,
            high_water,
            last_flush: None,
            last_resolved: None,
            last_checkpoint: None,
            error_shown: false,
        }
    }

    /// Every change at or below it reached the sink.
    pub fn high_water(&self) -> Timestamp {
        self.high_water
    }

    /// A run started at `now` (its first flush waits a full interval, so the sink sees a
    /// batch, not one file per checkpoint).
    pub fn run_started(&mut self, now: Instant) {
        self.last_flush = Some(now);
    }

    /// A run ended with an error the job now shows.
    pub fn error_shown(&mut self) {
        self.error_shown = true;
    }

    /// Whether to flush now that the frontier is at `resolved`.
    pub fn should_flush(&self, resolved: Timestamp, now: Instant) -> bool {
        resolved > self.high_water
            && self
                .last_flush
                .is_none_or(|t| now.duration_since(t) >= self.flush_interval)
    }

    /// The sink flushed everything up to `resolved` at `now`: the new high-water mark.
    pub fn flushed(&mut self, resolved: Timestamp, now: Instant) -> AfterFlush {
        assert!(
            resolved >= self.high_water,
            "the high-water mark never moves backwards ({} < {})",
            resolved,
            self.high_water
        );
        self.high_water = resolved;
        self.last_flush = Some(now);
        let emit_resolved = self.resolved_interval.is_some_and(|interval| {
            self.last_resolved
                .is_none_or(|t| now.duration_since(t) >= interval)
        });
        if emit_resolved {
            self.last_resolved = Some(now);
        }
        let checkpoint = self.error_shown
            || self
                .last_checkpoint
                .is_none_or(|t| now.duration_since(t) >= self.checkpoint_interval);
        if checkpoint {
            self.last_checkpoint = Some(now);
            self.error_shown = false;
        }
        AfterFlush {
            emit_resolved,
            checkpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(n: u64) -> Timestamp {
        Timestamp::new(n, 0)
    }

    fn options(resolved_ms: Option<u64>, checkpoint_ms: u64) -> ChangefeedOptions {
        ChangefeedOptions {
            resolved_ms,
            min_checkpoint_frequency_ms: checkpoint_ms,
            ..Default::default()
        }
    }

    #[test]
    fn flushes_when_the_frontier_advanced_and_the_interval_passed() {
        let t0 = Instant::now();
        let mut p = Pacing::new(&options(None, 1000), Timestamp::ZERO);
        p.run_started(t0);
        assert!(!p.should_flush(ts(5), t0), "interval not passed");
        let t1 = t0 + Duration::from_millis(1000);
        assert!(
            !p.should_flush(Timestamp::ZERO, t1),
            "frontier did not advance"
        );
        assert!(p.should_flush(ts(5), t1));
        let after = p.flushed(ts(5), t1);
        assert_eq!(
            after,
            AfterFlush {
                emit_resolved: false,
                checkpoint: true
            }
        );
        assert_eq!(p.high_water(), ts(5));
        let t2 = t1 + Duration::from_millis(1000);
        assert!(!p.should_flush(ts(5), t2), "no advance since the flush");
        assert!(p.should_flush(ts(6), t2));
    }

    #[test]
    fn resolved_interval_shortens_flushes_and_paces_resolved_messages() {
        let t0 = Instant::now();
        let mut p = Pacing::new(&options(Some(200), 30_000), Timestamp::ZERO);
        p.run_started(t0);
        let t1 = t0 + Duration::from_millis(200);
        assert!(
            p.should_flush(ts(1), t1),
            "the resolved interval paces flushes"
        );
        assert_eq!(
            p.flushed(ts(1), t1),
            AfterFlush {
                emit_resolved: true,
                checkpoint: true
            }
        );
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!(
            p.flushed(ts(2), t2),
            AfterFlush {
                emit_resolved: true,
                checkpoint: false
            },
            "checkpoints keep min_checkpoint_frequency"
        );
        // An error shown: the next flush checkpoints at once (clearing it).
        p.error_shown();
        let t3 = t2 + Duration::from_millis(200);
        assert!(p.flushed(ts(3), t3).checkpoint);
        assert!(!p.flushed(ts(4), t3 + Duration::from_millis(200)).checkpoint);
    }

    #[test]
    fn bare_resolved_emits_at_every_flush() {
        let t0 = Instant::now();
        let mut p = Pacing::new(&options(Some(0), 100), Timestamp::ZERO);
        p.run_started(t0);
        for i in 1..5u64 {
            let now = t0 + Duration::from_millis(100 * i);
            assert!(p.should_flush(ts(i), now));
            assert!(p.flushed(ts(i), now).emit_resolved);
        }
    }

    #[test]
    #[should_panic(expected = "never moves backwards")]
    fn high_water_never_moves_backwards() {
        let mut p = Pacing::new(&options(None, 1), ts(10));
        p.flushed(ts(9), Instant::now());
    }
}
