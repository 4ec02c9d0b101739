//! The producer's event batcher as a pure state machine (CockroachDB's `streamEventBatcher`
//! with `maybeFlushBatch` and `maybeCheckpoint`): what a partition stream sends, and when.
//!
//! - Events accumulate into a batch, flushed once it holds `batch_bytes_max` bytes ("flush
//!   full"), or earlier when the consumer is waiting and the batch holds more than
//!   `ready_flush_bytes_min` ("flush ready"), so an idle consumer always has work.
//! - A checkpoint always flushes the pending batch first: data precedes the checkpoint that
//!   covers it (a checkpoint at T promises every event at or below T was sent).
//! - Checkpoint pacing: one is due when the frontier advanced since the last one and that one is
//!   at least `min_checkpoint_frequency` old, or unconditionally once it is twice that old.
//! - Every message gets the next sequence number (1, 2, 3, …).
//!
//! No I/O, no clock: the caller passes `now` and sends what it is handed.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ldr_stream::event_batcher::{BatcherConfig, EventBatcher};
//! use ldr_types::Timestamp;
//! let mut b = EventBatcher::new(BatcherConfig {
//!     batch_bytes_max: 100,
//!     ready_flush_bytes_min: 0,
//!     min_checkpoint_frequency: Duration::from_millis(200),
//! });
//! assert!(b.push("a", 60).is_none());
//! let full = b.push("b", 60).expect("120 bytes >= 100");
//! assert_eq!((full.seq, full.events), (1, vec!["a", "b"]));
//! let t0 = Instant::now();
//! assert!(b.checkpoint_due(Timestamp::new(5, 0), t0), "the first checkpoint is always due");
//! b.push("c", 10);
//! let cp = b.checkpoint(Timestamp::new(5, 0), t0);
//! assert_eq!(cp.batch.expect("pending data goes first").events, vec!["c"]);
//! assert_eq!(cp.seq, 3);
//! ```

use std::time::{Duration, Instant};

use ldr_types::Timestamp;

/// Tunables (from the subscription request and cluster settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherConfig {
    /// A batch is flushed once it holds this many bytes.
    pub batch_bytes_max: usize,
    /// When the consumer is waiting, flush batches larger than this (CockroachDB: 1 MiB; 0
    /// flushes any non-empty batch, for the lowest latency).
    pub ready_flush_bytes_min: usize,
    /// `physical_replication.producer.min_checkpoint_frequency`.
    pub min_checkpoint_frequency: Duration,
}

/// A data batch to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<E> {
    pub seq: u64,
    pub events: Vec<E>,
    pub bytes: usize,
}

/// What to send for a checkpoint: the pending batch (if any), then the checkpoint with `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEmit<E> {
    pub batch: Option<Batch<E>>,
    pub seq: u64,
}

/// One partition stream's batcher.
#[derive(Debug)]
pub struct EventBatcher<E> {
    config: BatcherConfig,
    pending: Vec<E>,
    pending_bytes: usize,
    /// The last sequence number handed out.
    seq: u64,
    /// When the last checkpoint was emitted and the frontier it carried.
    last_checkpoint: Option<(Instant, Timestamp)>,
}

impl<E> EventBatcher<E> {
    pub fn new(config: BatcherConfig) -> EventBatcher<E> {
        EventBatcher {
            config,
            pending: Vec::new(),
            pending_bytes: 0,
            seq: 0,
            last_checkpoint: None,
        }
    }

    pub fn config(&self) -> BatcherConfig {
        self.config
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The last sequence number handed out (0 before the first message).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Adds an event of `bytes` bytes; returns the batch to send when it is now full.
    pub fn push(&mut self, event: E, bytes: usize) -> Option<Batch<E>> {
        self.pending.push(event);
        self.pending_bytes += bytes;
        if self.pending_bytes >= self.config.batch_bytes_max {
            self.flush()
        } else {
            None
        }
    }

    /// Flushes early when the consumer is waiting and the batch is large enough.
    pub fn flush_if_ready(&mut self, consumer_waiting: bool) -> Option<Batch<E>> {
        let enough = if self.config.ready_flush_bytes_min == 0 {
            !self.pending.is_empty()
        } else {
            self.pending_bytes > self.config.ready_flush_bytes_min
        };
        if consumer_waiting && enough {
            self.flush()
        } else {
            None
        }
    }

    /// Flushes whatever is pending (e.g. at the end of a scan or before an error).
    pub fn flush(&mut self) -> Option<Batch<E>> {
        if self.pending.is_empty() {
            return None;
        }
        self.seq += 1;
        let bytes = std::mem::replace(&mut self.pending_bytes, 0);
        Some(Batch {
            seq: self.seq,
            events: std::mem::take(&mut self.pending),
            bytes,
        })
    }

    /// Whether a checkpoint carrying `frontier` should be sent now.
    pub fn checkpoint_due(&self, frontier: Timestamp, now: Instant) -> bool {
        let advanced = self
            .last_checkpoint
            .is_none_or(|(_, last_frontier)| frontier > last_frontier);
        self.checkpoint_due_after(advanced, now)
    }

    /// Whether a checkpoint should be sent now, when the resolved spans `progressed` since
    /// the last one (the frontier, or any one span: a checkpoint carries every span's
    /// resolved timestamp, so a span's progress is worth sending even while the slowest
    /// span holds the frontier back).
    pub fn checkpoint_due_after(&self, progressed: bool, now: Instant) -> bool {
        match self.last_checkpoint {
            None => true,
            Some((at, _)) => {
                let age = now.saturating_duration_since(at);
                let min = self.config.min_checkpoint_frequency;
                (progressed && age >= min) || age >= min.saturating_mul(2)
            }
        }
    }

    /// Emits a checkpoint carrying `frontier`: the pending batch first, then the checkpoint's
    /// sequence number. Call when [`EventBatcher::checkpoint_due`] says so.
    pub fn checkpoint(&mut self, frontier: Timestamp, now: Instant) -> CheckpointEmit<E> {
        if let Some((_, last)) = self.last_checkpoint {
            debug_assert!(
                frontier >= last,
                "a checkpoint frontier never regresses: {last:?} -> {frontier:?}"
            );
        }
        let batch = self.flush();
        self.seq += 1;
        self.last_checkpoint = Some((now, frontier));
        CheckpointEmit {
            batch,
            seq: self.seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn config(max: usize, ready_min: usize, freq_ms: u64) -> BatcherConfig {
        BatcherConfig {
            batch_bytes_max: max,
            ready_flush_bytes_min: ready_min,
            min_checkpoint_frequency: Duration::from_millis(freq_ms),
        }
    }

    fn ts(n: u64) -> Timestamp {
        Timestamp::new(n, 0)
    }

    #[test]
    fn flush_full_and_flush_ready() {
        let mut b = EventBatcher::new(config(100, 30, 200));
        assert!(b.push(1, 20).is_none());
        assert!(
            b.flush_if_ready(true).is_none(),
            "20 bytes is not more than the ready minimum"
        );
        assert!(b.push(2, 20).is_none());
        assert!(b.flush_if_ready(false).is_none(), "the consumer is busy");
        let batch = b
            .flush_if_ready(true)
            .expect("40 > 30 and the consumer waits");
        assert_eq!(
            batch,
            Batch {
                seq: 1,
                events: vec![1, 2],
                bytes: 40
            }
        );
        assert!(b.push(3, 99).is_none());
        let full = b.push(4, 1).expect("exactly full");
        assert_eq!((full.seq, full.bytes), (2, 100));
        assert!(b.flush().is_none(), "nothing pending");
        let mut eager = EventBatcher::new(config(100, 0, 200));
        eager.push(1, 1);
        assert!(
            eager.flush_if_ready(true).is_some(),
            "with a 0 minimum any data goes to a waiting consumer"
        );
        assert!(eager.flush_if_ready(true).is_none());
    }

    /// Every pacing case: (ms since last checkpoint, frontier advanced) -> due.
    #[test]
    fn checkpoint_pacing_table() {
        let t0 = Instant::now();
        let cases = [
            (0, false, false),
            (0, true, false),
            (199, true, false),
            (200, false, false),
            (200, true, true),
            (399, false, false),
            (399, true, true),
            (400, false, true),
            (400, true, true),
            (10_000, false, true),
        ];
        for (ms, advanced, due) in cases {
            let mut b: EventBatcher<u8> = EventBatcher::new(config(100, 0, 200));
            assert!(
                b.checkpoint_due(ts(10), t0),
                "the first checkpoint is due at once"
            );
            b.checkpoint(ts(10), t0);
            let frontier = if advanced { ts(11) } else { ts(10) };
            assert_eq!(
                b.checkpoint_due(frontier, t0 + Duration::from_millis(ms)),
                due,
                "{ms}ms after the last checkpoint, advanced={advanced}"
            );
        }
    }

    #[test]
    fn checkpoints_flush_data_first_and_sequence_numbers_are_contiguous() {
        let t0 = Instant::now();
        let mut b = EventBatcher::new(config(1000, 0, 200));
        let empty = b.checkpoint(ts(1), t0);
        assert_eq!(
            empty,
            CheckpointEmit {
                batch: None,
                seq: 1
            }
        );
        b.push("x", 5);
        b.push("y", 5);
        let cp = b.checkpoint(ts(2), t0 + Duration::from_millis(300));
        assert_eq!(
            cp.batch,
            Some(Batch {
                seq: 2,
                events: vec!["x", "y"],
                bytes: 10
            })
        );
        assert_eq!(cp.seq, 3);
        assert_eq!(b.last_seq(), 3);
        assert_eq!(b.pending_len(), 0);
    }

    /// (id, bytes)
    type Ev = (u32, usize);

    /// Random pushes, ready flushes and checkpoints: every event is emitted exactly once and in
    /// order, before any checkpoint that follows it; sequence numbers run 1, 2, 3, …; a batch
    /// is only over the limit by its last event.
    #[test]
    fn randomized_stream_keeps_its_promises() {
        let seed = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        eprintln!("event_batcher: SEED={seed}");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut next = move |n: u64| rng.random_range(0..n.max(1));
        for round in 0..200 {
            let max = 1 + next(500) as usize;
            let ready_min = next(3) as usize * 50;
            let mut b = EventBatcher::new(config(max, ready_min, 200));
            let t0 = Instant::now();
            let mut now_ms = 0;
            let mut frontier = 0;
            // The wire: (seq, Some(events) | None for a checkpoint).
            let mut wire: Vec<(u64, Option<Vec<Ev>>)> = Vec::new();
            let mut pushed = Vec::new();
            let mut checkpoint_after: Vec<(u64, usize)> = Vec::new(); // (seq, events pushed before)
            for i in 0..300u32 {
                match next(10) {
                    0..=6 => {
                        let bytes = 1 + next(120) as usize;
                        pushed.push((i, bytes));
                        if let Some(batch) = b.push((i, bytes), bytes) {
                            wire.push((batch.seq, Some(batch.events)));
                        }
                    }
                    7 => {
                        if let Some(batch) = b.flush_if_ready(next(2) == 0) {
                            wire.push((batch.seq, Some(batch.events)));
                        }
                    }
                    _ => {
                        now_ms += next(300);
                        frontier += next(2);
                        let now = t0 + Duration::from_millis(now_ms);
                        if b.checkpoint_due(ts(frontier), now) {
                            let cp = b.checkpoint(ts(frontier), now);
                            if let Some(batch) = cp.batch {
                                wire.push((batch.seq, Some(batch.events)));
                            }
                            wire.push((cp.seq, None));
                            checkpoint_after.push((cp.seq, pushed.len()));
                        }
                    }
                }
            }
            if let Some(batch) = b.flush() {
                wire.push((batch.seq, Some(batch.events)));
            }
            let ctx = format!("round {round} max {max} ready_min {ready_min} (SEED={seed})");
            let seqs: Vec<u64> = wire.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                seqs,
                (1..=wire.len() as u64).collect::<Vec<_>>(),
                "{ctx}: sequence numbers"
            );
            let mut sent = Vec::new();
            for (seq, message) in &wire {
                match message {
                    Some(events) => {
                        assert!(!events.is_empty(), "{ctx}: empty batch {seq}");
                        let total: usize = events.iter().map(|e| e.1).sum();
                        let last = events.last().expect("non-empty").1;
                        assert!(
                            total - last < max,
                            "{ctx}: batch {seq} over the limit before its last event"
                        );
                        sent.extend(events.iter().copied());
                    }
                    None => {
                        let (_, before) = checkpoint_after
                            .iter()
                            .find(|(s, _)| s == seq)
                            .expect("known checkpoint");
                        assert_eq!(
                            sent.len(),
                            *before,
                            "{ctx}: checkpoint {seq} sent before its data"
                        );
                    }
                }
            }
            assert_eq!(sent, pushed, "{ctx}: every event exactly once, in order");
        }
    }

    #[test]
    fn a_span_that_progressed_makes_a_checkpoint_due_even_if_the_frontier_did_not() {
        let mut b: EventBatcher<&str> = EventBatcher::new(config(100, 0, 200));
        let t0 = Instant::now();
        assert!(
            b.checkpoint_due_after(false, t0),
            "the first one is always due"
        );
        b.checkpoint(ts(5), t0);
        let later = t0 + Duration::from_millis(250);
        assert!(!b.checkpoint_due_after(false, later));
        assert!(b.checkpoint_due_after(true, later));
        assert!(!b.checkpoint_due_after(true, t0 + Duration::from_millis(100)));
        assert!(b.checkpoint_due_after(false, t0 + Duration::from_millis(400)));
    }
}
