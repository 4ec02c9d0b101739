//! Rangefeed behaviour through the public API on a real engine: catch-up and initial scans
//! handed over to live events under concurrent writers (nothing lost, per-key order,
//! checkpoints only forward and never past an undelivered version), filters, overflow of a
//! slow consumer while writers keep going, GC-threshold failures and unregistration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ldr_rangefeed::{
    Filter, ManagerOptions, RangefeedError, RangefeedEvent, RangefeedManager, RegisterRequest,
    Registration, StartFrom,
};
use ldr_storage::{Condition, Engine, EngineOptions, RowWrite, ValueHeader};
use ldr_types::{Clock, ResolvedSpan, Span, Timestamp};
use rand::{Rng, SeedableRng};

const DEADLINE: Duration = Duration::from_secs(60);

fn seed(name: &str) -> u64 {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{name}: SEED={seed}");
    seed
}

fn open(dir: &std::path::Path) -> Arc<Engine> {
    let options = EngineOptions {
        closed_timestamp_target: Duration::from_millis(20),
        ..EngineOptions::default()
    };
    Engine::open(dir, Arc::new(Clock::default()), options).expect("open engine")
}

fn start(engine: &Arc<Engine>) -> Arc<RangefeedManager> {
    RangefeedManager::start(
        engine.clone(),
        ManagerOptions {
            resolve_interval: Duration::from_millis(10),
        },
    )
}

fn put(key: &[u8], value: Option<&[u8]>, header: ValueHeader) -> RowWrite {
    RowWrite {
        key: key.to_vec(),
        value: value.map(|v| v.to_vec()),
        condition: Condition::None,
        header,
        dependents: vec![],
    }
}

fn request(span: &Span, start: StartFrom) -> RegisterRequest {
    RegisterRequest {
        spans: vec![span.clone()],
        start,
        filter: Filter::default(),
        with_diff: true,
        buffer_bytes_max: 64 << 20,
    }
}

async fn next(reg: &mut Registration) -> Result<RangefeedEvent, RangefeedError> {
    tokio::time::timeout(DEADLINE, reg.next())
        .await
        .expect("rangefeed event within the deadline")
}

/// (key, ts) -> (value, prev_value) of every version in `span` above `after`, from storage.
type VersionId = (Vec<u8>, Timestamp);
type Versions = BTreeMap<VersionId, (Option<Vec<u8>>, Option<Vec<u8>>)>;

fn history(engine: &Engine, span: &Span, after: Timestamp) -> Versions {
    let mut out = BTreeMap::new();
    engine
        .scan_history(span, after, Timestamp::MAX, &mut |e| {
            out.insert((e.key, e.version.ts), (e.version.value, e.prev_value));
            true
        })
        .expect("history scan");
    out
}

/// Everything a consumer saw, with the checks that must hold at every event.
#[derive(Default)]
struct Seen {
    delivered: Versions,
    last_ts_per_key: BTreeMap<Vec<u8>, Timestamp>,
    /// (checkpoint ts, versions delivered before it)
    checkpoints: Vec<(Timestamp, BTreeSet<VersionId>)>,
    duplicates: usize,
    scan_done: bool,
    last_resolved: Timestamp,
}

impl Seen {
    fn record(&mut self, event: RangefeedEvent, keep_checkpoint_sets: bool) {
        match event {
            RangefeedEvent::Value(v) => {
                let last = self
                    .last_ts_per_key
                    .entry(v.key.clone())
                    .or_insert(Timestamp::ZERO);
                assert!(
                    v.ts >= *last,
                    "key {:?}: event at {} after {}",
                    v.key,
                    v.ts,
                    last
                );
                *last = v.ts;
                if self
                    .delivered
                    .insert((v.key, v.ts), (v.value, v.prev_value))
                    .is_some()
                {
                    self.duplicates += 1;
                }
            }
            RangefeedEvent::Checkpoint { resolved, .. } => {
                assert!(self.scan_done, "checkpoint before the scan finished");
                assert!(
                    resolved > self.last_resolved,
                    "checkpoint moved backwards or repeated"
                );
                self.last_resolved = resolved;
                let set = if keep_checkpoint_sets {
                    self.delivered.keys().cloned().collect()
                } else {
                    BTreeSet::new()
                };
                self.checkpoints.push((resolved, set));
            }
            RangefeedEvent::ScanDone => {
                assert!(!self.scan_done, "two ScanDone events");
                self.scan_done = true;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_and_live_under_concurrent_writers_lose_nothing() {
    let seed = seed("catch_up_and_live_under_concurrent_writers_lose_nothing");
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let manager = start(&engine);
    let span = Span::new(b"k".to_vec(), b"l".to_vec());

    // Phase 1: history before the registration's start point and after it.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let key = |i: u32| format!("k{i:03}").into_bytes();
    for i in 0..200u32 {
        let k = key(rng.random_range(0..50));
        engine
            .apply(
                &[put(&k, Some(&i.to_be_bytes()), ValueHeader::default())],
                false,
                None,
            )
            .expect("apply");
    }
    let from = engine.clock().now();
    for i in 0..200u32 {
        let k = key(rng.random_range(0..50));
        let v = if i.is_multiple_of(7) {
            None
        } else {
            Some(i.to_be_bytes().to_vec())
        };
        engine
            .apply(
                &[put(&k, v.as_deref(), ValueHeader::default())],
                false,
                None,
            )
            .expect("apply");
    }
    // Outside the span: never delivered.
    engine
        .apply(
            &[put(b"z", Some(b"outside"), ValueHeader::default())],
            false,
            None,
        )
        .expect("apply");

    // Phase 2: writers run while the registration scans and goes live.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (t + 1));
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) && n < 3000 {
                    let k = format!("k{:03}", rng.random_range(0..50)).into_bytes();
                    let dep = [k.as_slice(), b"/idx"].concat();
                    let mut row = put(&k, Some(&n.to_be_bytes()), ValueHeader::default());
                    row.dependents.push((dep, Some(vec![])));
                    engine.apply(&[row], false, None).expect("apply");
                    n += 1;
                }
            })
        })
        .collect();
    let mut reg = manager
        .register(request(
            &span,
            StartFrom::CatchUp {
                from: vec![ResolvedSpan {
                    span: span.clone(),
                    ts: from,
                }],
            },
        ))
        .expect("register");
    let mut seen = Seen::default();
    let begin = Instant::now();
    // Consume for a while during the writes, then stop the writers.
    while begin.elapsed() < Duration::from_millis(500) {
        let event = next(&mut reg).await.expect("no error");
        seen.record(event, true);
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer panicked");
    }
    // Phase 3: drain until a checkpoint covers the last write.
    let last_write = engine.clock().now();
    while seen.last_resolved < last_write {
        let event = next(&mut reg).await.expect("no error");
        seen.record(event, true);
    }

    // Every version above `from` was delivered, with the right value and prev value.
    let expected = history(&engine, &span, from);
    assert!(
        expected.len() > 400,
        "the test should produce plenty of versions"
    );
    for (kt, (value, prev)) in &expected {
        let got = seen
            .delivered
            .get(kt)
            .unwrap_or_else(|| panic!("lost version {kt:?} (SEED={seed})"));
        assert_eq!(got, &(value.clone(), prev.clone()), "version {kt:?}");
    }
    for kt in seen.delivered.keys() {
        assert!(
            expected.contains_key(kt),
            "delivered a version that is not in storage: {kt:?}"
        );
    }
    // No checkpoint passed an undelivered version.
    assert!(!seen.checkpoints.is_empty());
    for (resolved, delivered_before) in &seen.checkpoints {
        for kt in expected.keys().filter(|(_, ts)| ts <= resolved) {
            assert!(
                delivered_before.contains(kt),
                "checkpoint {resolved} before version {kt:?} (SEED={seed})"
            );
        }
    }
    println!(
        "versions {}, duplicates {}, checkpoints {}",
        expected.len(),
        seen.duplicates,
        seen.checkpoints.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_scan_emits_live_rows_with_their_mvcc_timestamps_then_live_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let manager = start(&engine);
    let span = Span::prefix(b"t");
    let a1 = engine
        .apply(
            &[put(b"ta", Some(b"1"), ValueHeader::default())],
            false,
            None,
        )
        .expect("apply")
        .ts;
    let b1 = engine
        .apply(
            &[put(b"tb", Some(b"1"), ValueHeader::default())],
            false,
            None,
        )
        .expect("apply")
        .ts;
    engine
        .apply(
            &[put(b"tc", Some(b"1"), ValueHeader::default())],
            false,
            None,
        )
        .expect("apply");
    let c2 = engine
        .apply(&[put(b"tc", None, ValueHeader::default())], false, None)
        .expect("apply")
        .ts;
    let at = engine.clock().now();
    let a2 = engine
        .apply(
            &[put(b"ta", Some(b"2"), ValueHeader::default())],
            false,
            None,
        )
        .expect("apply")
        .ts;

    let mut reg = manager
        .register(request(&span, StartFrom::InitialScan { at }))
        .expect("register");
    let mut events = Vec::new();
    loop {
        match next(&mut reg).await.expect("no error") {
            RangefeedEvent::ScanDone => break,
            RangefeedEvent::Value(v) => events.push((v.key, v.ts, v.value)),
            RangefeedEvent::Checkpoint { .. } => panic!("checkpoint before ScanDone"),
        }
    }
    // Live rows as of `at` (tc is deleted) in key order, then the versions above `at`.
    assert_eq!(
        events,
        vec![
            (b"ta".to_vec(), a1, Some(b"1".to_vec())),
            (b"tb".to_vec(), b1, Some(b"1".to_vec())),
            (b"ta".to_vec(), a2, Some(b"2".to_vec())),
        ]
    );
    assert!(c2 < at);
    // Live: a new write arrives with its prev value.
    let b2 = engine
        .apply(
            &[put(b"tb", Some(b"2"), ValueHeader::default())],
            false,
            None,
        )
        .expect("apply")
        .ts;
    loop {
        match next(&mut reg).await.expect("no error") {
            RangefeedEvent::Value(v) => {
                assert_eq!(
                    (v.key.as_slice(), v.ts, v.prev_value.as_deref()),
                    (&b"tb"[..], b2, Some(&b"1"[..]))
                );
                break;
            }
            RangefeedEvent::Checkpoint { resolved, .. } => assert!(resolved < b2),
            RangefeedEvent::ScanDone => panic!("second ScanDone"),
        }
    }
}

/// The keys of value events until a checkpoint reaches `last`.
async fn keys_until(reg: &mut Registration, last: Timestamp) -> Vec<String> {
    let mut keys = Vec::new();
    let mut resolved = Timestamp::ZERO;
    while resolved < last {
        match next(reg).await.expect("no error") {
            RangefeedEvent::Value(v) => keys.push(String::from_utf8(v.key).expect("utf8 key")),
            RangefeedEvent::Checkpoint { resolved: r, .. } => resolved = r,
            RangefeedEvent::ScanDone => {}
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_drop_remote_and_omitted_versions_in_scans_and_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let manager = start(&engine);
    let span = Span::prefix(b"f");
    let local = ValueHeader::default();
    let remote = ValueHeader {
        origin_id: 9,
        origin_ts: Timestamp::new(5, 0),
        omit_in_rangefeeds: false,
    };
    let omitted = ValueHeader {
        omit_in_rangefeeds: true,
        ..ValueHeader::default()
    };
    let from = engine.clock().now();
    engine
        .apply(&[put(b"f1", Some(b"local"), local)], false, None)
        .expect("apply");
    engine
        .apply(&[put(b"f2", Some(b"remote"), remote)], false, None)
        .expect("apply");
    engine
        .apply(&[put(b"f3", None, omitted)], false, None)
        .expect("apply");

    let mut req = request(
        &span,
        StartFrom::CatchUp {
            from: vec![ResolvedSpan {
                span: span.clone(),
                ts: from,
            }],
        },
    );
    req.filter = Filter {
        only_local_origin: true,
        drop_omitted: true,
    };
    let mut filtered = manager.register(req).expect("register");
    let mut unfiltered = manager
        .register(request(
            &span,
            StartFrom::CatchUp {
                from: vec![ResolvedSpan {
                    span: span.clone(),
                    ts: from,
                }],
            },
        ))
        .expect("register");
    engine
        .apply(&[put(b"f4", Some(b"remote"), remote)], false, None)
        .expect("apply");
    engine
        .apply(&[put(b"f5", None, omitted)], false, None)
        .expect("apply");
    let last = engine
        .apply(&[put(b"f6", Some(b"local"), local)], false, None)
        .expect("apply")
        .ts;

    assert_eq!(keys_until(&mut filtered, last).await, vec!["f1", "f6"]);
    assert_eq!(
        keys_until(&mut unfiltered, last).await,
        vec!["f1", "f2", "f3", "f4", "f5", "f6"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_consumer_fails_while_writers_never_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let manager = start(&engine);
    let span = Span::prefix(b"o");
    let mut req = request(&span, StartFrom::Now);
    req.buffer_bytes_max = 16 << 10;
    let mut slow = manager.register(req).expect("register");
    let mut healthy = manager
        .register(request(&span, StartFrom::Now))
        .expect("register");
    assert_eq!(manager.registration_count(), 2);

    // Writers write far more than the slow consumer's buffer without it reading; each write
    // must finish promptly (the observer never waits on a consumer).
    let engine2 = engine.clone();
    let writer = std::thread::spawn(move || {
        let value = vec![7u8; 200];
        let mut slowest = Duration::ZERO;
        for i in 0..2000u32 {
            let begin = Instant::now();
            engine2
                .apply(
                    &[put(
                        format!("o{i:05}").as_bytes(),
                        Some(&value),
                        ValueHeader::default(),
                    )],
                    false,
                    None,
                )
                .expect("apply");
            slowest = slowest.max(begin.elapsed());
        }
        slowest
    });
    let slowest = tokio::task::spawn_blocking(move || writer.join().expect("writer panicked"))
        .await
        .expect("join");
    assert!(slowest < Duration::from_secs(5), "a write took {slowest:?}");

    // The slow consumer learns about the overflow on its next call, before any queued event.
    assert_eq!(
        next(&mut slow).await,
        Err(RangefeedError::Overflow {
            limit_bytes: 16 << 10
        })
    );
    assert_eq!(
        next(&mut slow).await,
        Err(RangefeedError::Overflow {
            limit_bytes: 16 << 10
        })
    );
    assert_eq!(manager.registration_count(), 1);
    // The healthy one got everything.
    let mut values = 0;
    while values < 2000 {
        if let RangefeedEvent::Value(_) = next(&mut healthy).await.expect("no error") {
            values += 1;
        }
    }
    drop(slow);
    drop(healthy);
    assert_eq!(manager.registration_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_below_the_gc_threshold_fails_and_idle_spans_resolve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let manager = start(&engine);
    let span = Span::prefix(b"g");
    let old = engine.clock().now();
    engine
        .apply(
            &[put(b"g1", Some(b"1"), ValueHeader::default())],
            false,
            None,
        )
        .expect("apply");
    engine
        .apply(
            &[put(b"g1", Some(b"2"), ValueHeader::default())],
            false,
            None,
        )
        .expect("apply");
    // GC is capped at the closed timestamp (20ms behind now): wait until it passes the writes.
    let threshold = engine.clock().now();
    let deadline = Instant::now() + DEADLINE;
    while engine.closed_timestamp() < threshold {
        assert!(Instant::now() < deadline, "closed timestamp stuck");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.gc(&span, threshold).expect("gc");
    assert_eq!(engine.gc_threshold(), threshold);

    let mut reg = manager
        .register(request(
            &span,
            StartFrom::CatchUp {
                from: vec![ResolvedSpan {
                    span: span.clone(),
                    ts: old,
                }],
            },
        ))
        .expect("register");
    match next(&mut reg).await {
        Err(RangefeedError::ScanFailed(msg)) => assert!(msg.contains("GC threshold"), "{msg}"),
        other => panic!("expected a scan failure, got {other:?}"),
    }

    // An idle span resolves: checkpoints keep coming without writes.
    let mut idle = manager
        .register(request(&Span::prefix(b"idle"), StartFrom::Now))
        .expect("register");
    let mut last = Timestamp::ZERO;
    for _ in 0..3 {
        match next(&mut idle).await.expect("no error") {
            RangefeedEvent::Checkpoint { resolved, spans } => {
                assert!(resolved > last);
                assert_eq!(spans, vec![Span::prefix(b"idle")]);
                last = resolved;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(manager);
    assert_eq!(
        next(&mut idle).await.map(|_| ()),
        Err(RangefeedError::Shutdown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_scan_under_concurrent_writers_hands_over_without_gaps() {
    let seed = seed("initial_scan_under_concurrent_writers_hands_over_without_gaps");
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let manager = start(&engine);
    let span = Span::prefix(b"w");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for i in 0..300u32 {
        let k = format!("w{:03}", rng.random_range(0..40)).into_bytes();
        let v = if i.is_multiple_of(5) {
            None
        } else {
            Some(i.to_be_bytes().to_vec())
        };
        engine
            .apply(
                &[put(&k, v.as_deref(), ValueHeader::default())],
                false,
                None,
            )
            .expect("apply");
    }
    let at = engine.clock().now();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let engine = engine.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xabc);
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                let k = format!("w{:03}", rng.random_range(0..40)).into_bytes();
                let v = if n.is_multiple_of(9) {
                    None
                } else {
                    Some(n.to_be_bytes().to_vec())
                };
                engine
                    .apply(
                        &[put(&k, v.as_deref(), ValueHeader::default())],
                        false,
                        None,
                    )
                    .expect("apply");
                n += 1;
            }
        })
    };
    let mut req = request(&span, StartFrom::InitialScan { at });
    req.with_diff = false;
    let mut reg = manager.register(req).expect("register");
    let mut seen = Seen::default();
    let begin = Instant::now();
    while begin.elapsed() < Duration::from_millis(300) {
        seen.record(next(&mut reg).await.expect("no error"), false);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer panicked");
    let last_write = engine.clock().now();
    while seen.last_resolved < last_write {
        seen.record(next(&mut reg).await.expect("no error"), false);
    }

    // Expected: the live row of each key as of `at`, then every version above `at`.
    let mut expected: BTreeSet<VersionId> = engine
        .scan(&span, at, 0)
        .expect("scan")
        .into_iter()
        .map(|kv| (kv.key, kv.version.ts))
        .collect();
    expected.extend(history(&engine, &span, at).into_keys());
    let delivered: BTreeSet<VersionId> = seen.delivered.keys().cloned().collect();
    assert_eq!(delivered, expected, "initial scan + live (SEED={seed})");
    assert!(
        seen.delivered.values().all(|(_, prev)| prev.is_none()),
        "no prev values without diff"
    );
    assert_eq!(seen.duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_is_cancel_safe_inside_select() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let manager = start(&engine);
    let span = Span::prefix(b"c");
    for i in 0..1500u32 {
        engine
            .apply(
                &[put(
                    format!("c{i:05}").as_bytes(),
                    Some(b"v"),
                    ValueHeader::default(),
                )],
                false,
                None,
            )
            .expect("apply");
    }
    let mut reg = manager
        .register(request(
            &span,
            StartFrom::InitialScan {
                at: engine.clock().now(),
            },
        ))
        .expect("register");
    let writer = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            for i in 1500..3000u32 {
                engine
                    .apply(
                        &[put(
                            format!("c{i:05}").as_bytes(),
                            Some(b"v"),
                            ValueHeader::default(),
                        )],
                        false,
                        None,
                    )
                    .expect("apply");
            }
        })
    };
    let mut keys = BTreeSet::new();
    let mut cancelled = 0u32;
    let deadline = Instant::now() + DEADLINE;
    while keys.len() < 3000 {
        assert!(
            Instant::now() < deadline,
            "only {} of 3000 keys arrived",
            keys.len()
        );
        // A competing branch that often wins: next() is dropped mid-wait many times.
        tokio::select! {
            event = reg.next() => {
                if let RangefeedEvent::Value(v) = event.expect("no error") {
                    keys.insert(v.key);
                }
            }
            _ = tokio::task::yield_now() => cancelled += 1,
        }
    }
    writer.join().expect("writer panicked");
    println!("next() cancelled {cancelled} times");
}

/// A follower's spans resolve no further than the closed timestamp its source allows.
struct HeldAt(parking_lot::Mutex<Timestamp>, Span);

impl ldr_rangefeed::ClosedTimestampSource for HeldAt {
    fn closed_timestamp(&self, spans: &[Span], engine_closed: Timestamp) -> Timestamp {
        if spans.iter().any(|s| s.overlaps(&self.1)) {
            (*self.0.lock()).min(engine_closed)
        } else {
            engine_closed
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_timestamp_source_holds_resolved_timestamps_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let manager = start(&engine);
    let held = engine.clock().now();
    let source = Arc::new(HeldAt(parking_lot::Mutex::new(held), Span::prefix(b"f")));
    manager.set_closed_timestamp_source(source.clone());
    let register = |prefix: &[u8]| {
        manager
            .register(RegisterRequest {
                spans: vec![Span::prefix(prefix)],
                start: StartFrom::Now,
                filter: Filter::default(),
                with_diff: false,
                buffer_bytes_max: 1 << 20,
            })
            .expect("register")
    };
    let mut follower = register(b"f");
    let mut leader = register(b"l");
    // The leader's span resolves past `held`; the follower's stops at it.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match next(&mut leader).await.expect("leader event") {
            RangefeedEvent::Checkpoint { resolved, .. }
                if resolved > held.add_nanos(50_000_000) =>
            {
                break;
            }
            _ => assert!(
                Instant::now() < deadline,
                "the leader's span never resolved"
            ),
        }
    }
    let mut last = Timestamp::ZERO;
    while let Ok(Ok(event)) =
        tokio::time::timeout(Duration::from_millis(200), next(&mut follower)).await
    {
        if let RangefeedEvent::Checkpoint { resolved, .. } = event {
            last = resolved;
        }
    }
    assert!(
        last <= held,
        "the follower's span resolved to {last}, past {held}"
    );
    // Raising the source's timestamp lets it move on.
    *source.0.lock() = Timestamp::MAX;
    loop {
        match next(&mut follower).await.expect("follower event") {
            RangefeedEvent::Checkpoint { resolved, .. } if resolved > held => break,
            _ => assert!(
                Instant::now() < deadline,
                "the follower's span never moved on"
            ),
        }
    }
}
