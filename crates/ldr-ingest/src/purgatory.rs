//! The retry queue ("purgatory") of one writer processor: rows that failed to apply, retried
//! with backoff until they apply, age out, or run out of space (then they go to the DLQ), and
//! the checkpoints held back behind them (CockroachDB's `logical/purgatory.go`).
//!
//! The queue is an ordered list of *levels*. Each failed flush stores its leftover rows as a
//! new level; an incoming checkpoint closes the newest level (or opens an empty one) and
//! becomes that level's `will_resolve`. A checkpoint is released only once its level and every
//! earlier level are empty, so replicated time never passes a row that is still neither applied
//! nor dead-lettered.
//!
//! No I/O and no clock: the caller passes `now` and re-flushes the rows itself.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ldr_ingest::dlq_policy::RetryEligibility;
//! use ldr_ingest::metrics::Gauge;
//! use ldr_ingest::purgatory::{Purgatory, PurgatoryConfig};
//!
//! let (bytes, events) = (Gauge::default(), Gauge::default());
//! let mut p: Purgatory<&str, u64> = Purgatory::new(PurgatoryConfig::default(), bytes.clone(), events);
//! let t0 = Instant::now();
//! p.store(vec!["row"], 3, t0);
//! p.checkpoint(100, t0);                       // held behind the failed row
//! let mut drain = p.drain();
//! let level = drain.next_level(t0).expect("never attempted, so due");
//! assert_eq!(level.eligibility, RetryEligibility::Allowed);
//! // ... re-flush level.events; suppose it applied now:
//! assert_eq!(drain.level_done(vec![], 0), Some(100)); // the checkpoint is released
//! drop(drain);
//! assert!(p.is_empty());
//! assert_eq!(bytes.get(), 0);
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::dlq_policy::RetryEligibility;
use crate::metrics::Gauge;

/// `logical_replication.consumer.retry_queue_duration` default.
pub const RETRY_QUEUE_DURATION: Duration = Duration::from_secs(60);
/// `logical_replication.consumer.retry_queue_backoff` default.
pub const RETRY_QUEUE_BACKOFF: Duration = Duration::from_secs(3);
/// `logical_replication.consumer.retry_queue_partition_size_limit` default.
pub const RETRY_QUEUE_SIZE_LIMIT: u64 = 16 << 20;

/// The three settings (re-read by the caller and passed with [`Purgatory::set_config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgatoryConfig {
    /// Minimum gap between retries of one level.
    pub backoff: Duration,
    /// Age after which a level must be drained (its failures go to the DLQ, "age limit").
    pub age_limit: Duration,
    /// Node-wide byte limit of all retry queues; 0 disables retrying ("size limit").
    pub byte_limit: u64,
}

impl Default for PurgatoryConfig {
    fn default() -> Self {
        PurgatoryConfig {
            backoff: RETRY_QUEUE_BACKOFF,
            age_limit: RETRY_QUEUE_DURATION,
            byte_limit: RETRY_QUEUE_SIZE_LIMIT,
        }
    }
}

#[derive(Debug)]
struct Level<E, C> {
    events: Vec<E>,
    bytes: u64,
    will_resolve: Option<C>,
    closed_at: Instant,
    last_attempted: Option<Instant>,
}

/// One processor's retry queue. `E` is the event type, `C` the checkpoint (resolved spans).
#[derive(Debug)]
pub struct Purgatory<E, C> {
    levels: VecDeque<Level<E, C>>,
    bytes: u64,
    events: u64,
    config: PurgatoryConfig,
    /// Node-wide `retry_queue_bytes`, shared by every purgatory on the node.
    node_bytes: Gauge,
    /// Node-wide `retry_queue_events`.
    node_events: Gauge,
}

impl<E, C> Purgatory<E, C> {
    pub fn new(config: PurgatoryConfig, node_bytes: Gauge, node_events: Gauge) -> Purgatory<E, C> {
        Purgatory {
            levels: VecDeque::new(),
            bytes: 0,
            events: 0,
            config,
            node_bytes,
            node_events,
        }
    }

    pub fn set_config(&mut self, config: PurgatoryConfig) {
        self.config = config;
    }

    pub fn config(&self) -> PurgatoryConfig {
        self.config
    }

    /// No level, hence no held checkpoint: incoming checkpoints pass straight through.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    pub fn level_count(&self) -> usize {
        self.levels.len()
    }

    /// Bytes of rows held by this purgatory.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Rows held by this purgatory.
    pub fn event_count(&self) -> u64 {
        self.events
    }

    /// Checkpoints held back, oldest first.
    pub fn held_checkpoints(&self) -> impl Iterator<Item = &C> {
        self.levels.iter().filter_map(|l| l.will_resolve.as_ref())
    }

    /// Whether the node-wide retry queues are at their limit (always, when the limit is 0).
    pub fn is_full(&self) -> bool {
        self.node_bytes.get() >= i64::try_from(self.config.byte_limit).unwrap_or(i64::MAX)
    }

    /// The eligibility of a first-attempt flush: `Allowed` unless retrying is disabled
    /// (limit 0), in which case every failure goes straight to the DLQ ("size limit").
    pub fn enabled(&self) -> RetryEligibility {
        if self.config.byte_limit != 0 {
            RetryEligibility::Allowed
        } else {
            RetryEligibility::SizeLimit
        }
    }

    /// Whether [`Purgatory::store`] must be preceded by a drain (the queue is full).
    pub fn needs_drain_before_store(&self) -> bool {
        self.is_full()
    }

    /// Appends the rows a flush could not process as a new level. Drain first when
    /// [`Purgatory::needs_drain_before_store`] says so.
    pub fn store(&mut self, events: Vec<E>, bytes: u64, now: Instant) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        self.levels.push_back(Level {
            events,
            bytes,
            will_resolve: None,
            closed_at: now,
            last_attempted: None,
        });
        self.account(bytes as i64, n as i64);
    }

    /// Holds `checkpoint` behind every row stored so far: it closes the newest level (or opens
    /// an empty one when the newest already holds a checkpoint). Only call while non-empty;
    /// an empty purgatory's checkpoints go straight to the frontier.
    pub fn checkpoint(&mut self, checkpoint: C, now: Instant) {
        if self.levels.back().is_none_or(|l| l.will_resolve.is_some()) {
            self.levels.push_back(Level {
                events: Vec::new(),
                bytes: 0,
                will_resolve: None,
                closed_at: now,
                last_attempted: None,
            });
        }
        let last = self.levels.back_mut().expect("a level was just ensured");
        last.will_resolve = Some(checkpoint);
        last.closed_at = now;
    }

    /// Starts a drain (on every incoming checkpoint while non-empty, or before a store into a
    /// full queue). Resolved levels are removed when the [`Drain`] is dropped.
    pub fn drain(&mut self) -> Drain<'_, E, C> {
        Drain {
            purgatory: self,
            next: 0,
            resolved: 0,
            in_flight: None,
        }
    }

    fn account(&mut self, bytes: i64, events: i64) {
        self.bytes = (self.bytes as i64 + bytes) as u64;
        self.events = (self.events as i64 + events) as u64;
        self.node_bytes.add(bytes);
        self.node_events.add(events);
    }
}

impl<E, C> Drop for Purgatory<E, C> {
    /// A processor going away takes its rows out of the node-wide gauges.
    fn drop(&mut self) {
        self.node_bytes.add(-(self.bytes as i64));
        self.node_events.add(-(self.events as i64));
    }
}

/// One level handed to the caller to re-flush.
#[derive(Debug)]
pub struct DrainLevel<E> {
    /// Position of the level in the queue at drain start.
    pub index: usize,
    /// Its rows, to flush with `is_retry = true`.
    pub events: Vec<E>,
    /// `Allowed`: failures may stay; otherwise every row must be processed (applied or DLQ'd
    /// with this eligibility).
    pub eligibility: RetryEligibility,
}

/// An ongoing drain: call [`Drain::next_level`], flush its rows, report the leftovers with
/// [`Drain::level_done`], repeat until `next_level` returns `None`.
pub struct Drain<'a, E, C> {
    purgatory: &'a mut Purgatory<E, C>,
    next: usize,
    resolved: usize,
    /// The level handed out and how many rows it had.
    in_flight: Option<(usize, u64)>,
}

impl<E, C> Drain<'_, E, C> {
    /// The next level to retry, or `None` when every level was visited or a level that may
    /// still wait was tried less than `backoff` ago (the drain stops there, as CockroachDB's).
    pub fn next_level(&mut self, now: Instant) -> Option<DrainLevel<E>> {
        assert!(
            self.in_flight.is_none(),
            "level_done must be called before the next level"
        );
        let i = self.next;
        let p = &mut *self.purgatory;
        if i >= p.levels.len() {
            return None;
        }
        let eligibility = if p.is_full() {
            RetryEligibility::SizeLimit
        } else if now.saturating_duration_since(p.levels[i].closed_at) > p.config.age_limit {
            RetryEligibility::AgeLimit
        } else {
            RetryEligibility::Allowed
        };
        let level = &mut p.levels[i];
        if eligibility == RetryEligibility::Allowed
            && level
                .last_attempted
                .is_some_and(|t| now.saturating_duration_since(t) < p.config.backoff)
        {
            return None;
        }
        level.last_attempted = Some(now);
        self.in_flight = Some((i, level.events.len() as u64));
        self.next += 1;
        Some(DrainLevel {
            index: i,
            events: std::mem::take(&mut level.events),
            eligibility,
        })
    }

    /// Reports what is left of the level after the re-flush. Returns the level's checkpoint
    /// when it and every earlier level are now empty: emit it (forward the frontier).
    pub fn level_done(&mut self, remaining: Vec<E>, remaining_bytes: u64) -> Option<C> {
        let (i, taken) = self
            .in_flight
            .take()
            .expect("level_done without next_level");
        let p = &mut *self.purgatory;
        let level = &mut p.levels[i];
        let old_bytes = level.bytes;
        let remaining_count = remaining.len() as u64;
        level.events = remaining;
        level.bytes = if remaining_count == 0 {
            0
        } else {
            remaining_bytes
        };
        let new_bytes = level.bytes;
        let checkpoint = if self.resolved == i && remaining_count == 0 {
            self.resolved += 1;
            level.will_resolve.take()
        } else {
            None
        };
        p.account(
            new_bytes as i64 - old_bytes as i64,
            remaining_count as i64 - taken as i64,
        );
        checkpoint
    }
}

impl<E, C> Drop for Drain<'_, E, C> {
    fn drop(&mut self) {
        // A level handed out but never reported (the flush failed): the processor is failing
        // anyway; keep it unresolved.
        let resolved = self.resolved.min(self.purgatory.levels.len());
        self.purgatory.levels.drain(..resolved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::TestRng;

    type P = Purgatory<u32, u32>;

    fn purgatory(limit: u64) -> (P, Gauge, Gauge) {
        let (b, e) = (Gauge::default(), Gauge::default());
        let cfg = PurgatoryConfig {
            backoff: Duration::from_secs(3),
            age_limit: Duration::from_secs(60),
            byte_limit: limit,
        };
        (Purgatory::new(cfg, b.clone(), e.clone()), b, e)
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn checkpoint_closes_the_newest_level_or_opens_one() {
        let (mut p, _, _) = purgatory(1000);
        let t0 = Instant::now();
        p.store(vec![1], 10, t0);
        p.checkpoint(100, t0);
        assert_eq!(p.level_count(), 1, "attached to the failed rows' level");
        p.checkpoint(101, t0);
        assert_eq!(p.level_count(), 2, "a closed level gets an empty successor");
        p.store(vec![2], 10, t0);
        p.store(vec![3], 10, t0);
        assert_eq!(p.level_count(), 4, "each failed flush is its own level");
        p.checkpoint(102, t0);
        assert_eq!(p.level_count(), 4);
        assert_eq!(
            p.held_checkpoints().copied().collect::<Vec<_>>(),
            vec![100, 101, 102]
        );
    }

    #[test]
    fn checkpoints_wait_for_every_earlier_level() {
        let (mut p, bytes, events) = purgatory(1000);
        let t0 = Instant::now();
        p.store(vec![1, 2], 20, t0);
        p.checkpoint(100, t0);
        p.store(vec![3], 10, t0);
        p.checkpoint(101, t0);
        assert_eq!((bytes.get(), events.get()), (30, 3));

        // First drain: level 0 keeps row 2, level 1 applies: nothing may be released.
        {
            let mut d = p.drain();
            let l0 = d.next_level(t0).expect("due");
            assert_eq!(l0.events, vec![1, 2]);
            assert_eq!(d.level_done(vec![2], 10), None);
            let l1 = d.next_level(t0).expect("due");
            assert_eq!(l1.events, vec![3]);
            assert_eq!(d.level_done(vec![], 0), None, "level 0 still holds row 2");
            assert!(d.next_level(t0).is_none());
        }
        assert_eq!(p.level_count(), 2);
        assert_eq!((bytes.get(), events.get()), (10, 1));

        // Too soon: the backoff stops the drain at level 0.
        assert!(p.drain().next_level(secs(t0, 2)).is_none());

        // After the backoff, row 2 applies: both checkpoints come out, in order.
        {
            let mut d = p.drain();
            let l0 = d.next_level(secs(t0, 4)).expect("backoff passed");
            assert_eq!(l0.events, vec![2]);
            assert_eq!(d.level_done(vec![], 0), Some(100));
            let l1 = d
                .next_level(secs(t0, 4))
                .expect("empty level, never retried since");
            assert!(l1.events.is_empty());
            // Level 1 was attempted at t0; its backoff has passed too.
            assert_eq!(d.level_done(vec![], 0), Some(101));
        }
        assert!(p.is_empty());
        assert_eq!((bytes.get(), events.get()), (0, 0));
    }

    #[test]
    fn old_levels_must_be_processed_with_age_limit() {
        let (mut p, _, _) = purgatory(1000);
        let t0 = Instant::now();
        p.store(vec![1], 10, t0);
        p.checkpoint(100, secs(t0, 5));
        // closed_at moved to the checkpoint's arrival: 61s after t0 is only 56s after closing.
        let mut d = p.drain();
        assert_eq!(
            d.next_level(secs(t0, 61)).expect("due").eligibility,
            RetryEligibility::Allowed
        );
        d.level_done(vec![1], 10);
        drop(d);
        let mut d = p.drain();
        let l = d.next_level(secs(t0, 66)).expect("too old: no backoff");
        assert_eq!(l.eligibility, RetryEligibility::AgeLimit);
        assert_eq!(d.level_done(vec![], 0), Some(100));
    }

    #[test]
    fn full_queues_force_size_limit_and_zero_disables_retrying() {
        let (mut p, bytes, _) = purgatory(25);
        let t0 = Instant::now();
        assert_eq!(p.enabled(), RetryEligibility::Allowed);
        p.store(vec![1], 20, t0);
        assert!(!p.needs_drain_before_store());
        // Another processor on the node fills the shared gauge.
        let mut other = Purgatory::<u32, u32>::new(p.config(), bytes.clone(), Gauge::default());
        other.store(vec![9], 10, t0);
        assert!(
            p.is_full() && p.needs_drain_before_store(),
            "node-wide bytes 30 >= 25"
        );
        let mut d = p.drain();
        let l = d
            .next_level(t0)
            .expect("full queues drain regardless of backoff");
        assert_eq!(l.eligibility, RetryEligibility::SizeLimit);
        assert_eq!(d.level_done(vec![], 0), None, "no checkpoint held");
        drop(d);
        assert_eq!(bytes.get(), 10);
        drop(other);
        assert_eq!(bytes.get(), 0, "dropping a purgatory releases its share");

        let (p0, _, _) = purgatory(0);
        assert_eq!(p0.enabled(), RetryEligibility::SizeLimit);
        assert!(p0.is_full());
    }

    /// Random operations against a model: checkpoints come out in order, exactly once, and
    /// only after every row stored before them was processed; the gauges always equal the
    /// rows held; draining with everything aged out empties the queue.
    #[test]
    fn randomized_against_a_model() {
        let mut rng = TestRng::from_env("purgatory");
        for round in 0..200 {
            let (mut p, bytes, events) = purgatory(if rng.chance(20) {
                0
            } else {
                50 + rng.below(500)
            });
            let t0 = Instant::now();
            let mut now_s = 0u64;
            let mut next_row = 0u32;
            let mut next_cp = 0u32;
            // Model: checkpoints held, each with the rows stored before it (row ids).
            let mut unprocessed: std::collections::BTreeSet<u32> = Default::default();
            let mut held: Vec<(u32, std::collections::BTreeSet<u32>)> = Vec::new();
            let mut released: Vec<u32> = Vec::new();
            let ctx = format!("round {round} {}", rng.seed_note());
            for _ in 0..60 {
                now_s += rng.below(5);
                let now = secs(t0, now_s);
                match rng.below(3) {
                    0 => {
                        let n = 1 + rng.below(4) as u32;
                        let rows: Vec<u32> = (next_row..next_row + n).collect();
                        next_row += n;
                        if p.needs_drain_before_store() {
                            drain_all(&mut p, now, &mut rng, &mut unprocessed, &mut released);
                        }
                        unprocessed.extend(rows.iter().copied());
                        p.store(rows, u64::from(n) * 10, now);
                    }
                    1 => {
                        let cp = next_cp;
                        next_cp += 1;
                        if p.is_empty() {
                            released.push(cp);
                        } else {
                            p.checkpoint(cp, now);
                            held.push((cp, unprocessed.clone()));
                            drain_all(&mut p, now, &mut rng, &mut unprocessed, &mut released);
                        }
                    }
                    _ => drain_all(&mut p, now, &mut rng, &mut unprocessed, &mut released),
                }
                // Invariants after every step.
                let expected_order: Vec<u32> =
                    (0..next_cp).filter(|c| released.contains(c)).collect();
                assert_eq!(
                    released, expected_order,
                    "{ctx}: released out of order or twice"
                );
                for (cp, before) in &held {
                    if released.contains(cp) {
                        assert!(
                            before.is_disjoint(&unprocessed),
                            "{ctx}: checkpoint {cp} released before its rows"
                        );
                    }
                }
                assert_eq!(
                    events.get() as usize,
                    unprocessed.len(),
                    "{ctx}: event gauge"
                );
                assert_eq!(
                    bytes.get() as usize,
                    unprocessed.len() * 10,
                    "{ctx}: byte gauge"
                );
                assert_eq!(p.event_count() as usize, unprocessed.len(), "{ctx}");
            }
            // Everything ages out: one drain far in the future processes all and releases all.
            now_s += 3600;
            drain_all(
                &mut p,
                secs(t0, now_s),
                &mut rng,
                &mut unprocessed,
                &mut released,
            );
            assert!(p.is_empty(), "{ctx}: aged-out drain empties the queue");
            assert!(unprocessed.is_empty(), "{ctx}");
            assert_eq!(
                released,
                (0..next_cp).collect::<Vec<_>>(),
                "{ctx}: every checkpoint released"
            );
        }
    }

    /// A drain with a fake flush: `Allowed` rows apply with 50% chance; other eligibilities
    /// process every row (apply or DLQ), as the real flush must.
    fn drain_all(
        p: &mut P,
        now: Instant,
        rng: &mut TestRng,
        unprocessed: &mut std::collections::BTreeSet<u32>,
        released: &mut Vec<u32>,
    ) {
        let mut d = p.drain();
        while let Some(level) = d.next_level(now) {
            let remaining: Vec<u32> = if level.eligibility == RetryEligibility::Allowed {
                level
                    .events
                    .iter()
                    .copied()
                    .filter(|_| rng.chance(50))
                    .collect()
            } else {
                Vec::new()
            };
            for r in &level.events {
                if !remaining.contains(r) {
                    unprocessed.remove(r);
                }
            }
            let b = remaining.len() as u64 * 10;
            if let Some(cp) = d.level_done(remaining, b) {
                released.push(cp);
            }
        }
    }
}
