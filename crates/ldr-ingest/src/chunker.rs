//! Flush chunking: how a writer processor splits one received batch of KV events into chunks
//! for its worker pool (CockroachDB's `flushBuffer`).
//!
//! The batch is sorted by (row key, timestamp) and cut into chunks of about
//! `clamp(len / (workers * 4), 64, 1000)` events; a chunk is extended past its nominal end
//! until the key changes, so every version of a key lands in one chunk and is applied by one
//! worker in timestamp order. That is how per-key ordering is kept while different keys apply
//! in parallel. Aiming at four chunks per worker lets idle workers steal the rest.
//!
//! ```
//! use ldr_ingest::chunker::{ChunkSettings, KeyedEvent, plan_flush};
//! use ldr_types::Timestamp;
//! struct Ev(Vec<u8>, u64);
//! impl KeyedEvent for Ev {
//!     fn row_key(&self) -> &[u8] { &self.0 }
//!     fn timestamp(&self) -> Timestamp { Timestamp::new(self.1, 0) }
//! }
//! let events = vec![Ev(b"b".to_vec(), 2), Ev(b"a".to_vec(), 1), Ev(b"b".to_vec(), 1)];
//! let plan = plan_flush(events, 128, ChunkSettings::default());
//! assert_eq!(plan.workers, 1);
//! assert_eq!(plan.chunks.len(), 1);
//! assert_eq!(plan.chunks[0][1].1, 1, "b@1 before b@2");
//! ```

use ldr_types::Timestamp;

/// `logical_replication.consumer.flush_chunk_min_size` default.
pub const FLUSH_CHUNK_MIN_SIZE: usize = 64;
/// `logical_replication.consumer.flush_chunk_max_size` default.
pub const FLUSH_CHUNK_MAX_SIZE: usize = 1000;
/// `logical_replication.consumer.flush_worker_per_proc` default.
pub const FLUSH_WORKERS_PER_PROCESSOR: usize = 128;

/// An event the chunker can order: its row key and its (origin) MVCC timestamp.
pub trait KeyedEvent {
    /// The row key: all events of one row must return equal keys.
    fn row_key(&self) -> &[u8];
    fn timestamp(&self) -> Timestamp;
}

/// Chunk size bounds (the two cluster settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSettings {
    pub chunk_min: usize,
    pub chunk_max: usize,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        ChunkSettings {
            chunk_min: FLUSH_CHUNK_MIN_SIZE,
            chunk_max: FLUSH_CHUNK_MAX_SIZE,
        }
    }
}

/// The chunks of one flush and how many workers to use for them.
#[derive(Debug)]
pub struct FlushPlan<E> {
    /// In key order; no key appears in two chunks; each chunk's events are in (key, ts) order.
    pub chunks: Vec<Vec<E>>,
    /// `max(1, min(len / chunk_size, workers))`.
    pub workers: usize,
    pub chunk_size: usize,
}

/// `clamp(len / (workers * 4), min, max)` (never 0).
pub fn chunk_size(len: usize, workers: usize, settings: ChunkSettings) -> usize {
    let target = len / (workers.max(1) * 4);
    // CockroachDB's min(max(target, min), max): the max setting wins if they cross.
    target
        .max(settings.chunk_min)
        .min(settings.chunk_max)
        .max(1)
}

/// `max(1, min(len / chunk_size, workers))`.
pub fn required_workers(len: usize, chunk_size: usize, workers: usize) -> usize {
    (len / chunk_size.max(1)).min(workers).max(1)
}

/// Sorts by (row key, timestamp); stable, so duplicates keep their arrival order.
pub fn sort_events<E: KeyedEvent>(events: &mut [E]) {
    events.sort_by(|a, b| {
        a.row_key()
            .cmp(b.row_key())
            .then(a.timestamp().cmp(&b.timestamp()))
    });
}

/// Cuts sorted events into chunks of `chunk_size`, each extended until the row key changes.
pub fn cut_chunks<E: KeyedEvent>(events: Vec<E>, chunk_size: usize) -> Vec<Vec<E>> {
    let chunk_size = chunk_size.max(1);
    // Find the cut points first (borrowing), then move the events into their chunks.
    let mut ends = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = (start + chunk_size).min(events.len());
        while end < events.len() && events[end - 1].row_key() == events[end].row_key() {
            end += 1;
        }
        ends.push(end);
        start = end;
    }
    let mut chunks = Vec::with_capacity(ends.len());
    let mut rest = events.into_iter();
    let mut taken = 0;
    for end in ends {
        chunks.push(rest.by_ref().take(end - taken).collect());
        taken = end;
    }
    chunks
}

/// Sorts a received batch and plans its flush over a pool of `workers`.
pub fn plan_flush<E: KeyedEvent>(
    mut events: Vec<E>,
    workers: usize,
    settings: ChunkSettings,
) -> FlushPlan<E> {
    sort_events(&mut events);
    let len = events.len();
    let chunk_size = chunk_size(len, workers, settings);
    let workers = required_workers(len, chunk_size, workers);
    FlushPlan {
        chunks: cut_chunks(events, chunk_size),
        workers,
        chunk_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::TestRng;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Ev {
        key: Vec<u8>,
        ts: u64,
        /// Arrival position: identifies the event.
        id: usize,
    }

    impl KeyedEvent for Ev {
        fn row_key(&self) -> &[u8] {
            &self.key
        }
        fn timestamp(&self) -> Timestamp {
            Timestamp::new(self.ts, 0)
        }
    }

    fn ev(key: &str, ts: u64, id: usize) -> Ev {
        Ev {
            key: key.as_bytes().to_vec(),
            ts,
            id,
        }
    }

    #[test]
    fn chunk_size_clamps() {
        let s = ChunkSettings::default();
        assert_eq!(chunk_size(0, 128, s), 64);
        assert_eq!(chunk_size(100_000, 128, s), 195);
        assert_eq!(chunk_size(10_000_000, 128, s), 1000);
        assert_eq!(chunk_size(1000, 1, s), 250);
        assert_eq!(chunk_size(1000, 0, s), 250, "zero workers counts as one");
        let crossed = ChunkSettings {
            chunk_min: 500,
            chunk_max: 100,
        };
        assert_eq!(
            chunk_size(10, 1, crossed),
            100,
            "max wins, as in CockroachDB"
        );
        assert_eq!(
            chunk_size(
                10,
                1,
                ChunkSettings {
                    chunk_min: 0,
                    chunk_max: 0
                }
            ),
            1
        );
    }

    #[test]
    fn required_workers_bounds() {
        assert_eq!(required_workers(0, 64, 128), 1);
        assert_eq!(required_workers(63, 64, 128), 1);
        assert_eq!(required_workers(640, 64, 128), 10);
        assert_eq!(required_workers(1_000_000, 1000, 128), 128);
        assert_eq!(required_workers(10, 1, 4), 4);
    }

    #[test]
    fn chunks_extend_to_the_key_boundary() {
        // Nominal size 2: the first chunk runs to the end of key a, the second to the end of c.
        let events = vec![
            ev("a", 1, 0),
            ev("a", 2, 1),
            ev("a", 3, 2),
            ev("b", 1, 3),
            ev("c", 1, 4),
            ev("c", 2, 5),
        ];
        let chunks = cut_chunks(events, 2);
        let keys: Vec<Vec<&str>> = chunks
            .iter()
            .map(|c| {
                c.iter()
                    .map(|e| std::str::from_utf8(&e.key).expect("ascii"))
                    .collect()
            })
            .collect();
        assert_eq!(keys, vec![vec!["a", "a", "a"], vec!["b", "c", "c"]]);
    }

    #[test]
    fn sorting_is_by_key_then_timestamp_and_stable() {
        let mut events = vec![
            ev("b", 2, 0),
            ev("a", 5, 1),
            ev("b", 1, 2),
            ev("a", 5, 3),
            ev("a", 1, 4),
        ];
        sort_events(&mut events);
        let order: Vec<usize> = events.iter().map(|e| e.id).collect();
        assert_eq!(order, vec![4, 1, 3, 2, 0]);
    }

    /// Random batches: every event appears exactly once, chunks are in (key, ts) order, no key
    /// spans two chunks, and chunks are never shorter than the nominal size except the last.
    #[test]
    fn randomized_plans_keep_every_invariant() {
        let mut rng = TestRng::from_env("chunker");
        for round in 0..300 {
            let len = rng.below(3000) as usize;
            let key_space = 1 + rng.below(if round % 3 == 0 { 5 } else { 2000 });
            let events: Vec<Ev> = (0..len)
                .map(|id| Ev {
                    key: format!("k{:05}", rng.below(key_space)).into_bytes(),
                    ts: rng.below(50),
                    id,
                })
                .collect();
            let workers = 1 + rng.below(200) as usize;
            let settings = ChunkSettings {
                chunk_min: 1 + rng.below(100) as usize,
                chunk_max: 1 + rng.below(2000) as usize,
            };
            let plan = plan_flush(events.clone(), workers, settings);
            let ctx = format!(
                "{} round {round} len {len} workers {workers} {settings:?}",
                rng.seed_note()
            );

            assert_eq!(plan.chunk_size, chunk_size(len, workers, settings), "{ctx}");
            assert_eq!(
                plan.workers,
                required_workers(len, plan.chunk_size, workers),
                "{ctx}"
            );
            assert!(plan.workers >= 1 && plan.workers <= workers.max(1), "{ctx}");

            let mut seen = vec![false; len];
            let mut owner: std::collections::HashMap<Vec<u8>, usize> =
                std::collections::HashMap::new();
            let mut previous: Option<&Ev> = None;
            for (i, chunk) in plan.chunks.iter().enumerate() {
                assert!(!chunk.is_empty(), "{ctx}: empty chunk {i}");
                if i + 1 < plan.chunks.len() {
                    assert!(
                        chunk.len() >= plan.chunk_size,
                        "{ctx}: chunk {i} shorter than nominal"
                    );
                }
                for e in chunk {
                    assert!(!seen[e.id], "{ctx}: event {} twice", e.id);
                    seen[e.id] = true;
                    if let Some(&c) = owner.get(&e.key) {
                        assert_eq!(c, i, "{ctx}: key {:?} in chunks {c} and {i}", e.key);
                    }
                    owner.insert(e.key.clone(), i);
                    if let Some(p) = previous {
                        assert!(
                            (&p.key, p.ts) <= (&e.key, e.ts),
                            "{ctx}: out of order {p:?} then {e:?}"
                        );
                        if p.key == e.key && p.ts == e.ts {
                            assert!(p.id < e.id, "{ctx}: equal events keep arrival order");
                        }
                    }
                    previous = Some(e);
                }
                // A chunk grows past the nominal size only to finish its last key.
                if chunk.len() > plan.chunk_size {
                    let nominal_last = &chunk[plan.chunk_size - 1].key;
                    assert!(
                        chunk[plan.chunk_size..]
                            .iter()
                            .all(|e| &e.key == nominal_last),
                        "{ctx}: overlong chunk {i}"
                    );
                }
            }
            assert!(seen.iter().all(|s| *s), "{ctx}: an event is missing");
        }
    }
}
