//! Model-based test: random sequences of puts, deletes, `Expect` conditions, LWW writes (every
//! outcome), atomic and non-atomic batches with dependents, reads at random timestamps, scans,
//! history scans, GC and reopening, run against a plain in-memory model and the RocksDB
//! engine; every answer is compared.
//!
//! Reproduce a failure with `SEED=<seed> cargo test -p ldr-storage --test model`; scale with
//! `MODEL_OPS` (operations per run, default 1500) and `MODEL_RUNS` (default 3).

use std::collections::BTreeMap;
use std::sync::Arc;

use ldr_storage::{
    Condition, Engine, EngineOptions, HistoryEntry, KeyVersion, RowOutcome, RowWrite, StorageError,
    ValueHeader, Version,
};
use ldr_types::{Clock, OriginId, Span, Timestamp};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const LOCAL: OriginId = 4;

/// The model: per key, versions oldest first; and the GC threshold.
#[derive(Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    gc_threshold: Timestamp,
}

impl Model {
    fn latest(&self, key: &[u8]) -> Option<&Version> {
        self.keys.get(key).and_then(|vs| vs.last())
    }

    fn get(&self, key: &[u8], read_ts: Timestamp) -> Option<Version> {
        self.keys
            .get(key)
            .and_then(|vs| vs.iter().rev().find(|v| v.ts <= read_ts).cloned())
    }

    fn scan(&self, span: &Span, read_ts: Timestamp, limit: usize) -> Vec<KeyVersion> {
        let mut out = Vec::new();
        for key in self.keys.keys().filter(|k| span.contains_key(k)) {
            if let Some(v) = self.get(key, read_ts)
                && !v.is_tombstone()
            {
                out.push(KeyVersion {
                    key: key.clone(),
                    version: v,
                });
                if limit != 0 && out.len() == limit {
                    break;
                }
            }
        }
        out
    }

    fn history(
        &self,
        span: &Span,
        after: Timestamp,
        up_to: Timestamp,
    ) -> Result<Vec<HistoryEntry>, Timestamp> {
        if after < self.gc_threshold {
            return Err(self.gc_threshold);
        }
        let mut out = Vec::new();
        for (key, versions) in self.keys.iter().filter(|(k, _)| span.contains_key(k)) {
            for (i, v) in versions.iter().enumerate() {
                if v.ts > after && v.ts <= up_to {
                    let prev_value = if i > 0 {
                        versions[i - 1].value.clone()
                    } else {
                        None
                    };
                    out.push(HistoryEntry {
                        key: key.clone(),
                        version: v.clone(),
                        prev_value,
                    });
                }
            }
        }
        Ok(out)
    }

    fn gc(&mut self, span: &Span, threshold: Timestamp) -> u64 {
        let mut removed = 0;
        for (key, versions) in self.keys.iter_mut() {
            if !span.contains_key(key) {
                continue;
            }
            if let Some(i) = versions.iter().rposition(|v| v.ts <= threshold) {
                let drop_visible = versions[i].is_tombstone();
                let cut = if drop_visible { i + 1 } else { i };
                removed += cut as u64;
                versions.drain(..cut);
            }
        }
        self.keys.retain(|_, vs| !vs.is_empty());
        self.gc_threshold = self.gc_threshold.max(threshold);
        removed
    }

    /// The expected outcome of one row, written independently of the engine's code.
    fn outcome(&self, row: &RowWrite) -> RowOutcome {
        let existing = self.latest(&row.key).cloned();
        let live = existing.as_ref().and_then(|v| v.value.clone());
        match &row.condition {
            Condition::None => RowOutcome::Written { prev: existing },
            Condition::Expect(expected) => {
                if &live == expected {
                    RowOutcome::Written { prev: existing }
                } else {
                    RowOutcome::ConditionFailed { actual: existing }
                }
            }
            Condition::Lww {
                expected_prev,
                local_origin_id,
            } => {
                assert!(
                    !row.header.origin_ts.is_zero(),
                    "the model only generates LWW writes with origin ts"
                );
                if let Some(e) = &existing {
                    let e_ts = if e.header.origin_ts.is_zero() {
                        e.ts
                    } else {
                        e.header.origin_ts
                    };
                    let id = |i: OriginId| if i == 0 { *local_origin_id } else { i };
                    let in_ts = row.header.origin_ts;
                    let wins = if in_ts != e_ts {
                        in_ts > e_ts
                    } else if id(row.header.origin_id) != id(e.header.origin_id) {
                        id(row.header.origin_id) > id(e.header.origin_id)
                    } else {
                        match (&row.value, &e.value) {
                            (None, None) => false,
                            (None, Some(_)) => true,
                            (Some(_), None) => false,
                            (Some(a), Some(b)) => a < b,
                        }
                    };
                    if !wins {
                        return RowOutcome::LwwLost { existing: e_ts };
                    }
                }
                match expected_prev {
                    Some(p) if p != &live => RowOutcome::LwwUnexpected { actual: existing },
                    _ => RowOutcome::Written { prev: existing },
                }
            }
        }
    }

    fn write(&mut self, key: &[u8], ts: Timestamp, header: ValueHeader, value: Option<Vec<u8>>) {
        let versions = self.keys.entry(key.to_vec()).or_default();
        assert!(
            versions.last().is_none_or(|v| v.ts < ts),
            "model: write below an existing version"
        );
        versions.push(Version { ts, header, value });
    }
}

struct Harness {
    seed: u64,
    rng: ChaCha8Rng,
    dir: tempfile::TempDir,
    engine: Option<Arc<Engine>>,
    model: Model,
    /// Every commit timestamp seen (for read and GC timestamps).
    timestamps: Vec<Timestamp>,
    op: usize,
    /// How often each outcome kind / operation happened (printed, to show coverage).
    counts: BTreeMap<&'static str, usize>,
}

const KEYS: &[&[u8]] = &[
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x00\x01",
    b"\x00\xff",
    b"\x01",
    b"\x01\x00",
    b"a",
    b"a\x00",
    b"ab",
    b"b",
    b"\xff",
    b"\xff\xff",
];
const DEP_KEYS: &[&[u8]] = &[b"i\x00", b"i\x01", b"i1", b"i2", b"i\xff"];

impl Harness {
    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine is open")
    }

    fn ctx(&self) -> String {
        format!(
            "seed {} op {} (reproduce with SEED={})",
            self.seed, self.op, self.seed
        )
    }

    fn key(&mut self) -> Vec<u8> {
        KEYS.choose(&mut self.rng).expect("non-empty").to_vec()
    }

    fn value(&mut self) -> Option<Vec<u8>> {
        match self.rng.random_range(0..5) {
            0 => None,
            1 => Some(vec![]),
            _ => {
                let len = self.rng.random_range(1..4);
                Some((0..len).map(|_| self.rng.random_range(0..3u8)).collect())
            }
        }
    }

    fn some_ts(&mut self) -> Timestamp {
        match self.rng.random_range(0..10) {
            0 => Timestamp::ZERO,
            1 => Timestamp::MAX,
            _ if self.timestamps.is_empty() => Timestamp::new(1, 0),
            n => {
                let t = *self.timestamps.choose(&mut self.rng).expect("non-empty");
                match n % 3 {
                    0 => t.prev(),
                    1 => t,
                    _ => t.next(),
                }
            }
        }
    }

    fn span(&mut self) -> Span {
        let mut a = self.key();
        let mut b = if self.rng.random_bool(0.2) {
            vec![0xff; 8]
        } else {
            self.key()
        };
        if a > b {
            std::mem::swap(&mut a, &mut b);
        }
        Span::new(a, b)
    }

    fn header(&mut self) -> ValueHeader {
        if self.rng.random_bool(0.6) {
            return ValueHeader::default();
        }
        let origin_ts = self.some_ts();
        ValueHeader {
            origin_id: [0, 1, LOCAL, 9][self.rng.random_range(0..4)],
            origin_ts: if origin_ts == Timestamp::MAX {
                Timestamp::new(5, 0)
            } else {
                origin_ts
            },
            omit_in_rangefeeds: self.rng.random_bool(0.2),
        }
    }

    fn row(&mut self, key: Vec<u8>) -> RowWrite {
        let value = self.value();
        let live = self.model.latest(&key).and_then(|v| v.value.clone());
        let condition = match self.rng.random_range(0..3) {
            0 => Condition::None,
            1 => Condition::Expect(if self.rng.random_bool(0.6) {
                live
            } else {
                self.value()
            }),
            _ => {
                let expected_prev = match self.rng.random_range(0..3) {
                    0 => None,
                    1 => Some(live),
                    _ => Some(self.value()),
                };
                Condition::Lww {
                    expected_prev,
                    local_origin_id: LOCAL,
                }
            }
        };
        let mut header = self.header();
        if matches!(condition, Condition::Lww { .. }) {
            // Origin ts around the existing logical ts so older, equal and newer all happen.
            let existing = self.model.latest(&key).map(|v| v.logical_ts());
            let base = existing.unwrap_or_else(|| self.some_ts());
            let base = if base.is_zero() || base == Timestamp::MAX {
                Timestamp::new(7, 0)
            } else {
                base
            };
            header.origin_ts = match self.rng.random_range(0..4) {
                0 => base.prev(),
                1 | 2 => base,
                _ => base.next(),
            };
            if header.origin_ts.is_zero() {
                header.origin_ts = Timestamp::new(1, 0);
            }
        }
        RowWrite {
            key,
            value,
            condition,
            header,
            dependents: Vec::new(),
        }
    }

    fn apply(&mut self) {
        let n = self.rng.random_range(1..4);
        let mut keys: Vec<Vec<u8>> = (0..n).map(|_| self.key()).collect();
        keys.sort();
        keys.dedup();
        let mut rows: Vec<RowWrite> = keys.into_iter().map(|k| self.row(k)).collect();
        // Dependents from a separate pool, each used once per batch.
        let mut deps: Vec<&[u8]> = DEP_KEYS.to_vec();
        for row in rows.iter_mut() {
            if self.rng.random_bool(0.3) && !deps.is_empty() {
                let i = self.rng.random_range(0..deps.len());
                let key = deps.swap_remove(i).to_vec();
                let value = self.value();
                row.dependents.push((key, value));
            }
        }
        let atomic = self.rng.random_bool(0.5);
        let expected: Vec<RowOutcome> = rows.iter().map(|r| self.model.outcome(r)).collect();
        let all_written = expected
            .iter()
            .all(|o| matches!(o, RowOutcome::Written { .. }));
        let expected: Vec<RowOutcome> = expected
            .into_iter()
            .map(|o| match o {
                RowOutcome::Written { .. } if atomic && !all_written => RowOutcome::NotAttempted,
                o => o,
            })
            .collect();
        let res = self
            .engine()
            .apply(&rows, atomic, None)
            .unwrap_or_else(|e| panic!("apply failed: {e} ({})", self.ctx()));
        assert_eq!(
            res.outcomes,
            expected,
            "apply outcomes of {rows:?} ({})",
            self.ctx()
        );
        for o in &res.outcomes {
            let kind = match o {
                RowOutcome::Written { .. } => "written",
                RowOutcome::ConditionFailed { .. } => "condition_failed",
                RowOutcome::LwwLost { .. } => "lww_lost",
                RowOutcome::LwwUnexpected { .. } => "lww_unexpected",
                RowOutcome::NotAttempted => "not_attempted",
            };
            *self.counts.entry(kind).or_default() += 1;
        }
        let written: Vec<&RowWrite> = rows
            .iter()
            .zip(&res.outcomes)
            .filter(|(_, o)| matches!(o, RowOutcome::Written { .. }))
            .map(|(r, _)| r)
            .collect();
        if written.is_empty() {
            return;
        }
        assert!(
            res.ts > self.model.gc_threshold,
            "commit at or below the GC threshold ({})",
            self.ctx()
        );
        for row in written {
            for (key, value) in std::iter::once((&row.key, &row.value))
                .chain(row.dependents.iter().map(|(k, v)| (k, v)))
            {
                if let Some(latest) = self.model.latest(key) {
                    assert!(
                        res.ts > latest.ts,
                        "commit ts not above an existing version ({})",
                        self.ctx()
                    );
                }
                self.model.write(key, res.ts, row.header, value.clone());
            }
        }
        self.timestamps.push(res.ts);
    }

    fn step(&mut self) {
        match self.rng.random_range(0..100) {
            0..45 => self.apply(),
            45..57 => {
                let key = if self.rng.random_bool(0.8) {
                    self.key()
                } else {
                    DEP_KEYS[0].to_vec()
                };
                let ts = self.some_ts();
                let got = self
                    .engine()
                    .get(&key, ts)
                    .unwrap_or_else(|e| panic!("get: {e} ({})", self.ctx()));
                assert_eq!(
                    got,
                    self.model.get(&key, ts),
                    "get {key:?} at {ts} ({})",
                    self.ctx()
                );
            }
            57..60 => {
                // Several keys (repeats too) through one iterator, as one GetMany.
                let keys: Vec<Vec<u8>> = (0..self.rng.random_range(1..6))
                    .map(|_| self.key())
                    .collect();
                let ts = self.some_ts();
                let got = self
                    .engine()
                    .get_many(&keys, ts)
                    .unwrap_or_else(|e| panic!("get_many: {e} ({})", self.ctx()));
                let want: Vec<_> = keys.iter().map(|k| self.model.get(k, ts)).collect();
                assert_eq!(got, want, "get_many {keys:?} at {ts} ({})", self.ctx());
            }
            60..72 => {
                let span = self.span();
                let ts = self.some_ts();
                let limit = self.rng.random_range(0..4);
                let got = self
                    .engine()
                    .scan(&span, ts, limit)
                    .unwrap_or_else(|e| panic!("scan: {e} ({})", self.ctx()));
                assert_eq!(
                    got,
                    self.model.scan(&span, ts, limit),
                    "scan {span} at {ts} limit {limit} ({})",
                    self.ctx()
                );
            }
            72..86 => {
                let span = self.span();
                let (mut after, mut up_to) = (self.some_ts(), self.some_ts());
                if after > up_to {
                    std::mem::swap(&mut after, &mut up_to);
                }
                let stop_after = if self.rng.random_bool(0.2) {
                    self.rng.random_range(1..4)
                } else {
                    usize::MAX
                };
                let mut got = Vec::new();
                let res = self.engine().scan_history(&span, after, up_to, &mut |e| {
                    got.push(e);
                    got.len() < stop_after
                });
                match (res, self.model.history(&span, after, up_to)) {
                    (Ok(()), Ok(mut expected)) => {
                        expected.truncate(stop_after);
                        assert_eq!(
                            got,
                            expected,
                            "history {span} ({after}, {up_to}] ({})",
                            self.ctx()
                        );
                    }
                    (
                        Err(StorageError::BelowGcThreshold {
                            requested,
                            threshold,
                        }),
                        Err(model_threshold),
                    ) => {
                        *self.counts.entry("history_below_gc").or_default() += 1;
                        assert_eq!(
                            (requested, threshold),
                            (after, model_threshold),
                            "({})",
                            self.ctx()
                        );
                    }
                    (res, expected) => panic!(
                        "history: engine {res:?}, model {expected:?} ({})",
                        self.ctx()
                    ),
                }
            }
            86..94 => {
                let span = self.span();
                // Thresholds at, between and around commit timestamps, never far ahead.
                let threshold = match self.some_ts() {
                    Timestamp::MAX => self.timestamps.last().copied().unwrap_or(Timestamp::ZERO),
                    t => t,
                };
                let stats = self
                    .engine()
                    .gc(&span, threshold)
                    .unwrap_or_else(|e| panic!("gc: {e} ({})", self.ctx()));
                let removed = self.model.gc(&span, threshold);
                *self.counts.entry("gc_versions_removed").or_default() += removed as usize;
                assert_eq!(
                    stats.versions_removed,
                    removed,
                    "gc {span} at {threshold} ({})",
                    self.ctx()
                );
                assert_eq!(
                    self.engine().gc_threshold(),
                    self.model.gc_threshold,
                    "({})",
                    self.ctx()
                );
            }
            94..96 => {
                // Move the data into SST files so reads go through bloom filters and prefix
                // seeks on disk, not only the memtable.
                if self.rng.random_bool(0.5) {
                    self.engine().flush().expect("flush");
                } else {
                    self.engine().compact().expect("compact");
                }
            }
            96..98 => {
                // Reopen with a fresh clock: state, GC threshold and write ordering survive.
                self.engine = None;
                let engine = Engine::open(self.dir.path(), Arc::new(Clock::default()), options())
                    .unwrap_or_else(|e| panic!("reopen: {e} ({})", self.ctx()));
                assert_eq!(
                    engine.gc_threshold(),
                    self.model.gc_threshold,
                    "threshold after reopen ({})",
                    self.ctx()
                );
                self.engine = Some(engine);
            }
            _ => {
                // A full comparison of everything.
                let all = Span::new(Vec::new(), vec![0xff; 8]);
                let got = self
                    .engine()
                    .scan(&all, Timestamp::MAX, 0)
                    .expect("scan all");
                assert_eq!(
                    got,
                    self.model.scan(&all, Timestamp::MAX, 0),
                    "({})",
                    self.ctx()
                );
            }
        }
    }
}

/// A closed timestamp that follows now closely, so GC thresholds at recent commit
/// timestamps are not capped by it (the engine caps GC at the closed timestamp).
fn options() -> EngineOptions {
    EngineOptions {
        closed_timestamp_target: std::time::Duration::ZERO,
        ..EngineOptions::default()
    }
}

fn run(seed: u64, ops: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), Arc::new(Clock::default()), options()).expect("open");
    let mut h = Harness {
        seed,
        rng: ChaCha8Rng::seed_from_u64(seed),
        dir,
        engine: Some(engine),
        model: Model::default(),
        timestamps: Vec::new(),
        op: 0,
        counts: BTreeMap::new(),
    };
    for op in 0..ops {
        h.op = op;
        h.step();
    }
    // Final check: the whole history is identical.
    let all = Span::new(Vec::new(), vec![0xff; 8]);
    let after = h.model.gc_threshold;
    let mut got = Vec::new();
    h.engine()
        .scan_history(&all, after, Timestamp::MAX, &mut |e| {
            got.push(e);
            true
        })
        .expect("final history");
    assert_eq!(
        got,
        h.model
            .history(&all, after, Timestamp::MAX)
            .expect("model history"),
        "final ({})",
        h.ctx()
    );
    println!("  coverage: {:?}", h.counts);
}

#[test]
fn engine_matches_the_model() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let ops = env("MODEL_OPS", 1500) as usize;
    match std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(seed) => {
            println!("engine_matches_the_model: SEED={seed}");
            run(seed, ops);
        }
        None => {
            for _ in 0..env("MODEL_RUNS", 3) {
                let seed: u64 = rand::random();
                println!("engine_matches_the_model: SEED={seed}");
                run(seed, ops);
            }
        }
    }
}
