//! Storage benchmark (plain `main`, not a timed test): raw RocksDB batched puts against our
//! MVCC batched puts, LWW conditional writes (read-check-write) on existing keys, and scans,
//! in one run on this machine, with rows/s and the ratio to raw RocksDB.
//!
//! Run: `cargo bench -p ldr-storage` (with the ROCKSDB_LIB_DIR/ROCKSDB_STATIC environment of
//! docs/helpers-preamble.md). `LDR_BENCH_KEYS` scales the key count (default 200000).

use std::sync::Arc;
use std::time::Instant;

use ldr_storage::{Condition, Engine, EngineOptions, RowOutcome, RowWrite, ValueHeader};
use ldr_types::{Clock, Span, Timestamp};
use rand::SeedableRng;
use rand::seq::SliceRandom;

const BATCH: usize = 1000;
const VALUE_BYTES: usize = 100;

/// 24-byte keys `t001` + 20 digits, unique, in random order.
fn keys(n: usize) -> Vec<Vec<u8>> {
    let mut ids: Vec<u64> = (0..n as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 100_000_000_000_000_000)
        .collect();
    ids.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
    ids.into_iter()
        .map(|i| format!("t001{i:020}").into_bytes())
        .collect()
}

struct Row {
    name: &'static str,
    rows: usize,
    secs: f64,
    baseline: Option<f64>,
}

fn rate(rows: usize, secs: f64) -> f64 {
    rows as f64 / secs.max(1e-9)
}

fn raw_options(opts: &EngineOptions) -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(true);
    o.increase_parallelism(2);
    o.set_write_buffer_size(opts.write_buffer_bytes);
    let mut t = rocksdb::BlockBasedOptions::default();
    t.set_bloom_filter(opts.bloom_filter_bits, false);
    let cache = rocksdb::Cache::new_lru_cache(opts.block_cache_bytes);
    t.set_block_cache(&cache);
    t.set_cache_index_and_filter_blocks(true);
    t.set_pin_l0_filter_and_index_blocks_in_cache(true);
    o.set_block_based_table_factory(&t);
    o
}

fn main() {
    let n: usize = std::env::var("LDR_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let n = (n / BATCH).max(1) * BATCH;
    let keys = keys(n);
    let value = vec![0x5au8; VALUE_BYTES];
    let options = EngineOptions::default();
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    println!(
        "ldr-storage bench: {n} keys, {BATCH}-row batches, 24-byte keys, {VALUE_BYTES}-byte values, WAL on, no sync"
    );

    // (1) Raw RocksDB batched puts.
    let raw_dir = dir.path().join("raw");
    let db = rocksdb::DB::open(&raw_options(&options), &raw_dir).expect("open raw rocksdb");
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(false);
    let begin = Instant::now();
    for chunk in keys.chunks(BATCH) {
        let mut batch = rocksdb::WriteBatch::default();
        for k in chunk {
            batch.put(k, &value);
        }
        db.write_opt(batch, &wo).expect("raw write");
    }
    let raw_put = begin.elapsed().as_secs_f64();
    // Raw full scan.
    let begin = Instant::now();
    let mut it = db.raw_iterator();
    it.seek_to_first();
    let mut raw_scanned = 0usize;
    while it.valid() {
        raw_scanned += 1;
        it.next();
    }
    let raw_scan = begin.elapsed().as_secs_f64();
    assert_eq!(raw_scanned, n);
    drop(it);
    drop(db);

    // (2) MVCC batched puts through apply (Condition::None).
    let engine = Engine::open(
        &dir.path().join("mvcc"),
        Arc::new(Clock::default()),
        options.clone(),
    )
    .expect("open");
    let rows_of = |chunk: &[Vec<u8>],
                   condition: &dyn Fn() -> Condition,
                   header: ValueHeader|
     -> Vec<RowWrite> {
        chunk
            .iter()
            .map(|k| RowWrite {
                key: k.clone(),
                value: Some(value.clone()),
                condition: condition(),
                header,
                dependents: vec![],
            })
            .collect()
    };
    let batches: Vec<Vec<RowWrite>> = keys
        .chunks(BATCH)
        .map(|c| rows_of(c, &|| Condition::None, ValueHeader::default()))
        .collect();
    let begin = Instant::now();
    for rows in &batches {
        engine.apply(rows, false, None).expect("apply");
    }
    let mvcc_put = begin.elapsed().as_secs_f64();
    drop(batches);

    // (3) LWW conditional writes on existing keys (read-check-write, all newer: all written).
    let origin_ts = engine.clock().now();
    let lww = || Condition::Lww {
        expected_prev: None,
        local_origin_id: 1,
    };
    let header = ValueHeader {
        origin_id: 2,
        origin_ts,
        omit_in_rangefeeds: false,
    };
    let mut lww_keys = keys.clone();
    lww_keys.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(11));
    let batches: Vec<Vec<RowWrite>> = lww_keys
        .chunks(BATCH)
        .map(|c| rows_of(c, &lww, header))
        .collect();
    let begin = Instant::now();
    for rows in &batches {
        let res = engine.apply(rows, false, None).expect("apply");
        debug_assert!(
            res.outcomes
                .iter()
                .all(|o| matches!(o, RowOutcome::Written { .. }))
        );
    }
    let lww_put = begin.elapsed().as_secs_f64();
    drop(batches);

    // (3b) The same, one row per apply call (per-call overhead: latches, tracker, iterator).
    let single_n = (n / 10).max(1);
    let header2 = ValueHeader {
        origin_id: 2,
        origin_ts: engine.clock().now(),
        omit_in_rangefeeds: false,
    };
    let singles: Vec<Vec<RowWrite>> = lww_keys[..single_n]
        .chunks(1)
        .map(|c| rows_of(c, &lww, header2))
        .collect();
    let begin = Instant::now();
    for rows in &singles {
        engine.apply(rows, false, None).expect("apply");
    }
    let lww_single = begin.elapsed().as_secs_f64();
    drop(singles);

    // (4) Scans: the whole table at the latest timestamp (skipping older versions), and
    // short scans of 100 keys from random starts.
    let span = Span::prefix(b"t001");
    let begin = Instant::now();
    let mut scanned = 0usize;
    let snapshot = engine.snapshot();
    snapshot
        .scan_each(&span, Timestamp::MAX, &mut |_| {
            scanned += 1;
            true
        })
        .expect("scan");
    drop(snapshot);
    let mvcc_scan = begin.elapsed().as_secs_f64();
    assert_eq!(scanned, n);
    let short_scans = (n / 100).clamp(1, 2000);
    let begin = Instant::now();
    let mut short_rows = 0usize;
    for k in keys.iter().take(short_scans) {
        short_rows += engine
            .scan(&Span::new(k.clone(), b"t002".to_vec()), Timestamp::MAX, 100)
            .expect("scan")
            .len();
    }
    let mvcc_short = begin.elapsed().as_secs_f64();
    engine.flush().expect("flush");
    // Full scan again from SST files after the flush.
    let begin = Instant::now();
    let full = engine.scan(&span, Timestamp::MAX, 0).expect("scan").len();
    let mvcc_scan_sst = begin.elapsed().as_secs_f64();
    assert_eq!(full, n);

    let raw_put_rate = rate(n, raw_put);
    let raw_scan_rate = rate(raw_scanned, raw_scan);
    let table = [
        Row {
            name: "raw rocksdb batched put",
            rows: n,
            secs: raw_put,
            baseline: None,
        },
        Row {
            name: "mvcc apply batched put (Condition::None)",
            rows: n,
            secs: mvcc_put,
            baseline: Some(raw_put_rate),
        },
        Row {
            name: "lww apply on existing keys, 1000/batch",
            rows: n,
            secs: lww_put,
            baseline: Some(raw_put_rate),
        },
        Row {
            name: "lww apply on existing keys, 1/apply",
            rows: single_n,
            secs: lww_single,
            baseline: Some(raw_put_rate),
        },
        Row {
            name: "raw rocksdb full scan",
            rows: raw_scanned,
            secs: raw_scan,
            baseline: None,
        },
        Row {
            name: "mvcc full scan (2 versions/key, memtable+L0)",
            rows: scanned,
            secs: mvcc_scan,
            baseline: Some(raw_scan_rate),
        },
        Row {
            name: "mvcc full scan after flush",
            rows: full,
            secs: mvcc_scan_sst,
            baseline: Some(raw_scan_rate),
        },
        Row {
            name: "mvcc short scans (limit 100)",
            rows: short_rows,
            secs: mvcc_short,
            baseline: Some(raw_scan_rate),
        },
    ];
    println!(
        "{:<48} {:>10} {:>9} {:>14} {:>9}",
        "phase", "rows", "secs", "rows/s", "vs raw"
    );
    for r in &table {
        let ratio = r
            .baseline
            .map(|b| format!("{:.2}x", rate(r.rows, r.secs) / b))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<48} {:>10} {:>9.3} {:>14.0} {:>9}",
            r.name,
            r.rows,
            r.secs,
            rate(r.rows, r.secs),
            ratio
        );
    }
}
