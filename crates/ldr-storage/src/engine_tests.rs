//! Engine unit tests that need the crate's internals (raw RocksDB access for corruption,
//! closed timestamps with explicit commit timestamps). Behavioural tests through the public
//! API live in `tests/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ldr_types::{Clock, Span, Timestamp};
use parking_lot::Mutex;

use crate::encoding;
use crate::{
    CommitEvent, CommitObserver, Condition, Engine, EngineOptions, RowOutcome, RowWrite,
    StorageError, ValueHeader,
};

fn open(dir: &std::path::Path) -> Arc<Engine> {
    Engine::open(dir, Arc::new(Clock::default()), EngineOptions::default()).expect("open engine")
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
fn flipped_byte_in_a_stored_value_is_corruption_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let key = ldr_types::keys::system_key("jobs", b"7");
    let res = engine
        .apply(&[put(&key, Some(b"payload"))], true, None)
        .expect("apply");
    // Flip one byte of the stored value through raw RocksDB access.
    let raw_key = encoding::mvcc_key(&key, res.ts);
    let db = engine.raw_db();
    let mut raw = db.get(&raw_key).expect("raw get").expect("value stored");
    raw[8] ^= 0x01;
    db.put(&raw_key, &raw).expect("raw put");

    let pretty = ldr_types::keys::pretty_key(&key);
    let check = |err: StorageError| match err {
        StorageError::Corruption { key, detail } => {
            assert_eq!(key, pretty);
            assert!(detail.contains("checksum"), "{detail}");
        }
        other => panic!("expected corruption, got {other:?}"),
    };
    check(engine.get(&key, Timestamp::MAX).expect_err("get must fail"));
    check(
        engine
            .scan(&Span::prefix(&[1]), Timestamp::MAX, 0)
            .expect_err("scan must fail"),
    );
    check(
        engine
            .scan_history(
                &Span::prefix(&[1]),
                Timestamp::ZERO,
                Timestamp::MAX,
                &mut |_| true,
            )
            .expect_err("history"),
    );
    check(
        engine
            .apply(&[put(&key, Some(b"x"))], true, None)
            .expect_err("apply reads the version"),
    );
    // A truncated value too.
    db.put(&raw_key, [1u8, 2, 3]).expect("raw put");
    assert!(matches!(
        engine.get(&key, Timestamp::MAX),
        Err(StorageError::Corruption { .. })
    ));
}

#[test]
fn corrupt_local_state_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine.put_local(b"node-id", b"3").expect("put_local");
    assert_eq!(
        engine.get_local(b"node-id").expect("get_local"),
        Some(b"3".to_vec())
    );
    let raw_key = encoding::local_user_key(b"node-id");
    engine
        .raw_db()
        .put(&raw_key, b"3\0\0\0\0")
        .expect("raw put");
    assert!(matches!(
        engine.get_local(b"node-id"),
        Err(StorageError::Corruption { .. })
    ));
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<CommitEvent>>,
    calls: AtomicUsize,
}

impl CommitObserver for Recorder {
    fn on_commit(&self, events: &[CommitEvent]) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.events.lock().extend_from_slice(events);
    }
}

#[test]
fn observer_sees_primary_and_dependents_with_prev_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let rec = Arc::new(Recorder::default());
    engine.set_observer(rec.clone());
    let mut row = put(b"a", Some(b"1"));
    row.dependents = vec![(b"a-idx".to_vec(), Some(vec![])), (b"a-old".to_vec(), None)];
    let r1 = engine.apply(&[row.clone()], true, None).expect("apply");
    row.value = Some(b"2".to_vec());
    let r2 = engine.apply(&[row], true, None).expect("apply");
    assert!(r2.ts > r1.ts);
    let events = rec.events.lock().clone();
    assert_eq!(events.len(), 6);
    assert_eq!(rec.calls.load(Ordering::SeqCst), 2);
    assert_eq!(events[0].key, b"a");
    assert_eq!(events[0].prev_value, None);
    assert_eq!(events[3].prev_value, Some(b"1".to_vec()));
    assert_eq!(events[4].prev_value, Some(vec![]));
    assert_eq!(events[5].version.value, None);
    assert!(events.iter().skip(3).all(|e| e.version.ts == r2.ts));
    // A failed condition calls nobody.
    let mut failing = put(b"a", Some(b"3"));
    failing.condition = Condition::Expect(None);
    let r3 = engine.apply(&[failing], true, None).expect("apply");
    assert!(matches!(r3.outcomes[0], RowOutcome::ConditionFailed { .. }));
    assert_eq!(rec.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn explicit_timestamps_respect_closed_and_existing_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine.set_closed_timestamp_target(Duration::from_millis(50));
    let closed = engine.closed_timestamp();
    let err = engine
        .apply(&[put(b"k", Some(b"v"))], false, Some(closed))
        .expect_err("at closed");
    assert!(matches!(err, StorageError::BelowClosedTimestamp { .. }) && err.is_retryable());
    let t = engine.clock().now().add_nanos(1_000_000);
    let res = engine
        .apply(&[put(b"k", Some(b"v"))], false, Some(t))
        .expect("above closed");
    assert_eq!(res.ts, t);
    let err = engine
        .apply(&[put(b"k", Some(b"w"))], false, Some(t))
        .expect_err("equal to existing");
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    // The clock moved past the explicit write: the next clock write is above it.
    let res2 = engine
        .apply(&[put(b"k", Some(b"w"))], false, None)
        .expect("clock write");
    assert!(res2.ts > t);
    // Duplicate keys are a caller bug.
    let mut dup = put(b"x", Some(b"1"));
    dup.dependents.push((b"x".to_vec(), None));
    assert!(matches!(
        engine.apply(&[dup], false, None),
        Err(StorageError::InvalidArgument(_))
    ));
    // The closed timestamp trails now by the target and never moves backwards.
    let mut last = engine.closed_timestamp();
    for _ in 0..1000 {
        let c = engine.closed_timestamp();
        assert!(c >= last);
        last = c;
    }
    assert!(last < engine.clock().now());
}

#[test]
fn snapshot_after_splits_commits_exactly_at_the_observer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let rec = Arc::new(Recorder::default());
    engine.set_observer(rec.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3u8)
        .map(|t| {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) && i < 20_000 {
                    let key = [b'w', t, (i % 16) as u8];
                    engine
                        .apply(&[put(&key, Some(&i.to_be_bytes()))], false, None)
                        .expect("apply");
                    i += 1;
                }
            })
        })
        .collect();
    // Let the writers get going (bounded wait on a condition).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rec.calls.load(Ordering::SeqCst) < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "writers made no progress"
        );
        std::thread::yield_now();
    }
    for _ in 0..5 {
        let (snapshot, observed) = engine.snapshot_after(|| rec.events.lock().len());
        // Let more commits happen after the snapshot.
        let target = rec.calls.load(Ordering::SeqCst) + 200;
        while rec.calls.load(Ordering::SeqCst) < target && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let events = rec.events.lock().clone();
        for (i, e) in events.iter().enumerate() {
            let found = snapshot.get(&e.key, e.version.ts).expect("snapshot get");
            let present = found.as_ref().is_some_and(|v| v.ts == e.version.ts);
            assert_eq!(
                present,
                i < observed,
                "event {i} of {} (observed before the snapshot: {observed})",
                events.len()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer panicked");
    }
}
