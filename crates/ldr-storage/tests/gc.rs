//! GC under a protected timestamp: a GC at `min(now - ttl, protected)` never changes what a
//! read at or above the protected timestamp returns, removes shadowed versions and old
//! tombstones below it, persists its threshold, and makes history scans from below the
//! threshold fail with `BelowGcThreshold`.

use std::sync::Arc;

use ldr_storage::{Condition, Engine, EngineOptions, RowWrite, StorageError, ValueHeader, Version};
use ldr_types::{Clock, Span, Timestamp};
use rand::{Rng, SeedableRng};

/// The closed timestamp follows now closely: GC is capped at it.
fn open(dir: &std::path::Path) -> Arc<Engine> {
    let options = EngineOptions {
        closed_timestamp_target: std::time::Duration::ZERO,
        ..EngineOptions::default()
    };
    Engine::open(dir, Arc::new(Clock::default()), options).expect("open engine")
}

fn put(key: &[u8], value: Option<&[u8]>) -> RowWrite {
    RowWrite {
        key: key.to_vec(),
        value: value.map(|v| v.to_vec()),
        condition: Condition::None,
        header: ValueHeader::default(),
        dependents: vec![],
    }
}

#[test]
fn gc_keeps_everything_a_protected_timestamp_covers() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("gc_keeps_everything_a_protected_timestamp_covers: SEED={seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let span = Span::prefix(b"g");

    // Random histories with values and tombstones on a few keys.
    let mut commit_ts = Vec::new();
    for i in 0..400u32 {
        let key = format!("g{}", rng.random_range(0..20)).into_bytes();
        let value = if rng.random_bool(0.25) {
            None
        } else {
            Some(i.to_be_bytes().to_vec())
        };
        commit_ts.push(
            engine
                .apply(&[put(&key, value.as_deref())], false, None)
                .expect("apply")
                .ts,
        );
        if i % 100 == 99 {
            engine.flush().expect("flush");
        }
    }
    // The GC job: ttl says "everything before the 300th write", a protected timestamp says
    // "keep history from the 150th": the threshold is the minimum.
    let ttl_threshold = commit_ts[300];
    let protected = commit_ts[150];
    let threshold = ttl_threshold.min(protected);

    // Everything readable at or above the protected timestamp, before GC.
    let read_points: Vec<Timestamp> = commit_ts[150..]
        .iter()
        .flat_map(|t| [*t, t.next()])
        .chain([Timestamp::MAX])
        .collect();
    let snapshot = |engine: &Engine| -> Vec<Vec<(Vec<u8>, Version)>> {
        read_points
            .iter()
            .map(|ts| {
                engine
                    .scan(&span, *ts, 0)
                    .expect("scan")
                    .into_iter()
                    .map(|kv| (kv.key, kv.version))
                    .collect()
            })
            .collect()
    };
    let before = snapshot(&engine);
    let mut history_before = Vec::new();
    engine
        .scan_history(&span, protected, Timestamp::MAX, &mut |e| {
            history_before.push(e);
            true
        })
        .expect("history");

    let stats = engine.gc(&span, threshold).expect("gc");
    assert!(
        stats.versions_removed > 0,
        "this history has shadowed versions to remove"
    );
    assert_eq!(stats.keys_visited, 20);
    assert_eq!(engine.gc_threshold(), protected);

    // Reads at and above the protected timestamp are unchanged, as is history above it.
    assert_eq!(
        snapshot(&engine),
        before,
        "GC changed a read at or above the protected timestamp (SEED={seed})"
    );
    let mut history_after = Vec::new();
    engine
        .scan_history(&span, protected, Timestamp::MAX, &mut |e| {
            history_after.push(e);
            true
        })
        .expect("history at the threshold");
    assert_eq!(history_after, history_before);

    // Below the threshold: history scans fail clearly.
    let err = engine
        .scan_history(&span, commit_ts[100], Timestamp::MAX, &mut |_| true)
        .expect_err("below threshold");
    match &err {
        StorageError::BelowGcThreshold {
            requested,
            threshold,
        } => {
            assert_eq!((*requested, *threshold), (commit_ts[100], protected));
            assert!(err.to_string().contains("below the GC threshold"), "{err}");
        }
        other => panic!("expected BelowGcThreshold, got {other:?}"),
    }

    // Per key, what remains at or below the threshold is live (old tombstones are gone), and
    // a history scan exactly from the threshold is allowed.
    engine
        .scan_history(&span, threshold, Timestamp::MAX, &mut |_| true)
        .expect("history from the threshold");
    for i in 0..20 {
        let key = format!("g{i}").into_bytes();
        if let Some(v) = engine.get(&key, threshold).expect("get") {
            assert!(
                !v.is_tombstone(),
                "a tombstone at or below the threshold survived GC"
            );
        }
    }

    // The threshold survives a restart and never moves back.
    engine
        .gc(&span, commit_ts[10])
        .expect("gc with a lower threshold");
    assert_eq!(engine.gc_threshold(), protected);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine.gc_threshold(), protected);
    assert_eq!(snapshot(&engine), before);
    // Writes land above the threshold even with a fresh clock.
    let ts = engine
        .apply(&[put(b"g0", Some(b"new"))], false, None)
        .expect("apply")
        .ts;
    assert!(ts > protected);
}

#[test]
fn gc_is_capped_at_the_closed_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(
        dir.path(),
        Arc::new(Clock::default()),
        EngineOptions::default(),
    )
    .expect("open engine");
    engine
        .apply(&[put(b"a", Some(b"1"))], false, None)
        .expect("apply");
    let t2 = engine
        .apply(&[put(b"a", Some(b"2"))], false, None)
        .expect("apply")
        .ts;
    // A threshold in the future is capped at the closed timestamp (200ms behind now): the
    // recent versions stay, and a write right after still lands above the threshold.
    engine.gc(&Span::prefix(b"a"), Timestamp::MAX).expect("gc");
    assert!(engine.gc_threshold() < t2);
    assert!(engine.gc_threshold() <= engine.closed_timestamp());
    let mut n = 0;
    engine
        .scan_history(
            &Span::prefix(b"a"),
            engine.gc_threshold(),
            Timestamp::MAX,
            &mut |_| {
                n += 1;
                true
            },
        )
        .expect("history");
    assert_eq!(n, 2);
    let t3 = engine
        .apply(&[put(b"a", Some(b"3"))], false, None)
        .expect("apply")
        .ts;
    assert!(t3 > t2 && t3 > engine.gc_threshold());
    // Explicit timestamps far in the future are refused (they would drag the clock along).
    let far = engine.clock().now().add_nanos(3_600_000_000_000);
    let err = engine
        .apply(&[put(b"a", Some(b"4"))], false, Some(far))
        .expect_err("far future");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
}

#[test]
fn gc_removes_old_tombstones_and_keeps_newer_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let t1 = engine
        .apply(&[put(b"a", Some(b"1"))], false, None)
        .expect("apply")
        .ts;
    let t2 = engine
        .apply(&[put(b"a", None)], false, None)
        .expect("apply")
        .ts;
    let t3 = engine
        .apply(&[put(b"b", Some(b"1"))], false, None)
        .expect("apply")
        .ts;
    let t4 = engine
        .apply(&[put(b"b", None)], false, None)
        .expect("apply")
        .ts;
    let t5 = engine
        .apply(&[put(b"b", Some(b"2"))], false, None)
        .expect("apply")
        .ts;
    let all = Span::new(b"a".to_vec(), b"c".to_vec());
    let stats = engine.gc(&all, t4).expect("gc");
    // a: tombstone at t2 and value at t1 both go. b: value at t3 and tombstone at t4 go,
    // t5 (above the threshold) stays.
    assert_eq!(stats.versions_removed, 4);
    assert_eq!(engine.get(b"a", Timestamp::MAX).expect("get"), None);
    assert_eq!(engine.get(b"b", t4).expect("get"), None);
    assert_eq!(
        engine.get(b"b", t5).expect("get").map(|v| v.value),
        Some(Some(b"2".to_vec()))
    );
    let mut history = Vec::new();
    engine
        .scan_history(&all, t4, Timestamp::MAX, &mut |e| {
            history.push((e.key, e.version.ts, e.prev_value));
            true
        })
        .expect("history");
    assert_eq!(history, vec![(b"b".to_vec(), t5, None)]);
    assert!(t1 < t2 && t2 < t3);
}
