//! LWW conditional writes through `Engine::apply`: the outcome table (older, equal with each
//! tie-break side, newer, newer with an unexpected prev, over a tombstone, phantom delete) and
//! a race of many threads on few keys whose final state must be the LWW maximum per key.

use std::sync::Arc;

use ldr_storage::{Condition, Engine, EngineOptions, RowOutcome, RowWrite, ValueHeader, Version};
use ldr_types::{Clock, OriginId, Timestamp};
use rand::{Rng, SeedableRng};

const LOCAL: OriginId = 10;

fn open(dir: &std::path::Path) -> Arc<Engine> {
    Engine::open(dir, Arc::new(Clock::default()), EngineOptions::default()).expect("open engine")
}

fn ts(w: u64) -> Timestamp {
    Timestamp::new(w, 0)
}

fn lww(
    key: &[u8],
    origin_id: OriginId,
    origin_ts: Timestamp,
    value: Option<&[u8]>,
    expected: Option<Option<&[u8]>>,
) -> RowWrite {
    RowWrite {
        key: key.to_vec(),
        value: value.map(|v| v.to_vec()),
        condition: Condition::Lww {
            expected_prev: expected.map(|e| e.map(|v| v.to_vec())),
            local_origin_id: LOCAL,
        },
        header: ValueHeader {
            origin_id,
            origin_ts,
            omit_in_rangefeeds: false,
        },
        dependents: vec![],
    }
}

fn local_put(key: &[u8], value: Option<&[u8]>) -> RowWrite {
    RowWrite {
        key: key.to_vec(),
        value: value.map(|v| v.to_vec()),
        condition: Condition::None,
        header: ValueHeader::default(),
        dependents: vec![],
    }
}

fn latest(engine: &Engine, key: &[u8]) -> Option<Version> {
    engine.get(key, Timestamp::MAX).expect("get")
}

/// One row of the table: the existing state is set up by `setup`, then `incoming` is applied.
struct Case {
    name: &'static str,
    setup: Vec<RowWrite>,
    incoming: RowWrite,
    expect_written: bool,
}

#[test]
fn lww_outcome_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    // A local write: its logical ts is its MVCC ts, its origin counts as LOCAL.
    let local_ts = engine
        .apply(&[local_put(b"local", Some(b"m"))], false, None)
        .expect("local put")
        .ts;

    let cases = vec![
        Case {
            name: "older loses",
            setup: vec![lww(b"a", 7, ts(100), Some(b"v"), None)],
            incoming: lww(b"a", 7, ts(99), Some(b"w"), None),
            expect_written: false,
        },
        Case {
            name: "newer wins",
            setup: vec![lww(b"b", 7, ts(100), Some(b"v"), None)],
            incoming: lww(b"b", 7, ts(101), Some(b"w"), None),
            expect_written: true,
        },
        Case {
            name: "equal ts, larger origin id wins",
            setup: vec![lww(b"c", 7, ts(100), Some(b"v"), None)],
            incoming: lww(b"c", 8, ts(100), Some(b"z"), None),
            expect_written: true,
        },
        Case {
            name: "equal ts, smaller origin id loses",
            setup: vec![lww(b"d", 7, ts(100), Some(b"v"), None)],
            incoming: lww(b"d", 6, ts(100), Some(b"a"), None),
            expect_written: false,
        },
        Case {
            name: "equal ts and id, smaller value wins",
            setup: vec![lww(b"e", 7, ts(100), Some(b"v"), None)],
            incoming: lww(b"e", 7, ts(100), Some(b"a"), None),
            expect_written: true,
        },
        Case {
            name: "equal ts and id, larger value loses",
            setup: vec![lww(b"f", 7, ts(100), Some(b"v"), None)],
            incoming: lww(b"f", 7, ts(100), Some(b"z"), None),
            expect_written: false,
        },
        Case {
            name: "equal ts and id, tombstone beats a value",
            setup: vec![lww(b"g", 7, ts(100), Some(b""), None)],
            incoming: lww(b"g", 7, ts(100), None, None),
            expect_written: true,
        },
        Case {
            name: "fully equal loses",
            setup: vec![lww(b"h", 7, ts(100), Some(b"v"), None)],
            incoming: lww(b"h", 7, ts(100), Some(b"v"), None),
            expect_written: false,
        },
        Case {
            name: "local version counts as LOCAL: larger remote id wins the tie",
            setup: vec![],
            incoming: lww(b"local", LOCAL + 1, local_ts, Some(b"z"), None),
            expect_written: true,
        },
        Case {
            name: "newer over a tombstone wins",
            setup: vec![
                lww(b"j", 7, ts(100), Some(b"v"), None),
                lww(b"j", 7, ts(110), None, None),
            ],
            incoming: lww(b"j", 7, ts(120), Some(b"w"), Some(None)),
            expect_written: true,
        },
        Case {
            name: "older than a tombstone loses (deletes are remembered)",
            setup: vec![
                lww(b"k", 7, ts(100), Some(b"v"), None),
                lww(b"k", 7, ts(110), None, None),
            ],
            incoming: lww(b"k", 7, ts(105), Some(b"w"), None),
            expect_written: false,
        },
        Case {
            name: "phantom delete then older insert loses",
            setup: vec![lww(b"l", 7, ts(100), None, None)],
            incoming: lww(b"l", 7, ts(90), Some(b"w"), None),
            expect_written: false,
        },
    ];
    for case in cases {
        for row in &case.setup {
            let r = engine
                .apply(std::slice::from_ref(row), false, None)
                .expect("setup apply");
            assert!(
                matches!(r.outcomes[0], RowOutcome::Written { .. }),
                "{}: setup not written: {r:?}",
                case.name
            );
        }
        let before = latest(&engine, &case.incoming.key);
        let r = engine
            .apply(std::slice::from_ref(&case.incoming), false, None)
            .expect("apply");
        let after = latest(&engine, &case.incoming.key);
        if case.expect_written {
            assert_eq!(
                r.outcomes[0],
                RowOutcome::Written {
                    prev: before.clone()
                },
                "{}",
                case.name
            );
            let after = after.expect("written version");
            assert_eq!(after.value, case.incoming.value, "{}", case.name);
            assert_eq!(after.header, case.incoming.header, "{}", case.name);
            assert_eq!(after.ts, r.ts, "{}", case.name);
        } else {
            let existing = before
                .as_ref()
                .expect("a loss needs an existing version")
                .logical_ts();
            assert_eq!(
                r.outcomes[0],
                RowOutcome::LwwLost { existing },
                "{}",
                case.name
            );
            assert_eq!(after, before, "{}: a loss must not write", case.name);
        }
    }

    // The local side of the tie with a smaller remote id: local wins.
    let local2 = engine
        .apply(&[local_put(b"local2", Some(b"m"))], false, None)
        .expect("local put")
        .ts;
    let r = engine
        .apply(
            &[lww(b"local2", LOCAL - 1, local2, Some(b"a"), None)],
            false,
            None,
        )
        .expect("apply");
    assert_eq!(r.outcomes[0], RowOutcome::LwwLost { existing: local2 });
    // Equal id (the remote is the local cluster's id): the value decides.
    let r = engine
        .apply(
            &[lww(b"local2", LOCAL, local2, Some(b"a"), None)],
            false,
            None,
        )
        .expect("apply");
    assert!(matches!(r.outcomes[0], RowOutcome::Written { .. }), "{r:?}");

    // Newer with an unexpected prev reports the actual version and writes nothing.
    engine
        .apply(&[lww(b"u", 7, ts(100), Some(b"v"), None)], false, None)
        .expect("setup");
    let actual = latest(&engine, b"u");
    let r = engine
        .apply(
            &[lww(b"u", 7, ts(200), Some(b"w"), Some(Some(b"other")))],
            false,
            None,
        )
        .expect("apply");
    assert_eq!(
        r.outcomes[0],
        RowOutcome::LwwUnexpected {
            actual: actual.clone()
        }
    );
    assert_eq!(latest(&engine, b"u"), actual);
    let r = engine
        .apply(
            &[lww(b"u", 7, ts(200), Some(b"w"), Some(Some(b"v")))],
            false,
            None,
        )
        .expect("apply");
    assert!(matches!(r.outcomes[0], RowOutcome::Written { .. }));

    // Non-atomic batches apply winners and skip losers; atomic ones apply nothing.
    let mixed = [
        lww(b"m1", 7, ts(500), Some(b"x"), None),
        lww(b"u", 7, ts(1), Some(b"old"), None),
    ];
    let r = engine.apply(&mixed, true, None).expect("atomic apply");
    assert_eq!(r.outcomes[0], RowOutcome::NotAttempted);
    assert!(matches!(r.outcomes[1], RowOutcome::LwwLost { .. }));
    assert_eq!(latest(&engine, b"m1"), None);
    let r = engine.apply(&mixed, false, None).expect("non-atomic apply");
    assert!(matches!(r.outcomes[0], RowOutcome::Written { .. }));
    assert!(matches!(r.outcomes[1], RowOutcome::LwwLost { .. }));
}

/// The LWW order of an incoming write as a sortable tuple: (logical ts, effective origin id,
/// reversed value rank). Larger wins.
fn rank(
    origin_ts: Timestamp,
    origin_id: OriginId,
    value: &Option<Vec<u8>>,
) -> (Timestamp, OriginId, std::cmp::Reverse<Option<Vec<u8>>>) {
    (
        origin_ts,
        if origin_id == 0 { LOCAL } else { origin_id },
        std::cmp::Reverse(value.clone()),
    )
}

#[test]
fn concurrent_lww_writers_converge_to_the_maximum() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("concurrent_lww_writers_converge_to_the_maximum: SEED={seed}");
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let keys: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'k', i]).collect();
    let threads = 6;
    let writes_per_thread = 400;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            let keys = keys.clone();
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(t));
                let mut applied = Vec::new();
                for _ in 0..writes_per_thread {
                    let key = &keys[rng.random_range(0..keys.len())];
                    // Few distinct timestamps, ids (0 = local, counting as LOCAL) and values so every
                    // tie-break is exercised.
                    let origin_ts = ts(rng.random_range(1..20));
                    let origin_id = [0, LOCAL - 1, LOCAL + 1][rng.random_range(0..3)];
                    let value = match rng.random_range(0..4) {
                        0 => None,
                        n => Some(vec![n as u8]),
                    };
                    let row = lww(key, origin_id, origin_ts, value.as_deref(), None);
                    let r = engine
                        .apply(std::slice::from_ref(&row), false, None)
                        .expect("apply");
                    applied.push((row, r.outcomes[0].clone()));
                }
                applied
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().expect("writer thread panicked"));
    }
    for key in &keys {
        let best = all
            .iter()
            .filter(|(row, _)| &row.key == key)
            .map(|(row, _)| {
                (
                    rank(row.header.origin_ts, row.header.origin_id, &row.value),
                    row,
                )
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .expect("every key was written")
            .1;
        let stored = latest(&engine, key).expect("stored version");
        assert_eq!(
            (
                stored.header.origin_ts,
                stored.header.origin_id,
                &stored.value
            ),
            (best.header.origin_ts, best.header.origin_id, &best.value),
            "key {key:?}: final state is not the LWW maximum (SEED={seed})"
        );
    }
    // Every written version's MVCC ts is strictly above the one it replaced, per key.
    for key in &keys {
        let mut last = Timestamp::ZERO;
        let span = ldr_types::Span::new(key.clone(), [key.as_slice(), &[0]].concat());
        engine
            .scan_history(&span, Timestamp::ZERO, Timestamp::MAX, &mut |e| {
                assert!(e.version.ts > last);
                last = e.version.ts;
                true
            })
            .expect("history");
    }
}
