//! Raw RocksDB limits on this machine, for `ldr bench`: how fast plain RocksDB takes batched
//! blind puts, and how fast it does a read-check-write (a point `get` before every `put`, the
//! shape of an LWW apply that must read the existing version first). The benchmark reports
//! replication throughput as a fraction of these, measured in the same run.
//!
//! Method (as `../shared/reference/build-notes.md` §5, scaled by `keys`):
//! - 24-byte keys `t001` + 20 digits, values of `value_bytes` bytes, `WriteBatch`es of `batch`
//!   keys, WAL on, no sync, no compression;
//! - the same table options as our [`crate::Engine`] (bloom filter, LRU block cache, index and
//!   filter blocks in the cache, L0 pinned), from [`EngineOptions`];
//! - phase *put*: every key of `0..keys` once, in a pseudo-random order;
//! - phase *read-check-write*: `keys` operations on keys drawn from `0..keys * 4 / 3` (about
//!   75 % hit an existing key): `get`, compare, then `put` into the batch.
//!
//! This is the only place outside the engine that opens RocksDB directly, so that only this
//! crate links it.

use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{EngineOptions, Result, StorageError};

/// What to measure.
#[derive(Debug, Clone)]
pub struct RawLimitsConfig {
    /// Keys written by the put phase and operations of the read-check-write phase.
    pub keys: usize,
    /// Keys per `WriteBatch`.
    pub batch: usize,
    pub value_bytes: usize,
    /// Orders the keys (same seed, same order).
    pub seed: u64,
    /// Block cache, bloom filter and write buffer as the engine uses them.
    pub options: EngineOptions,
}

impl Default for RawLimitsConfig {
    fn default() -> Self {
        RawLimitsConfig {
            keys: 1_000_000,
            batch: 1000,
            value_bytes: 100,
            seed: 7,
            options: EngineOptions::default(),
        }
    }
}

/// Which phase a progress callback reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawPhase {
    Put,
    ReadCheckWrite,
}

/// The measured limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RawLimits {
    pub keys: usize,
    pub batch: usize,
    pub value_bytes: usize,
    pub put_secs: f64,
    pub put_per_s: f64,
    pub read_check_write_secs: f64,
    pub read_check_write_per_s: f64,
    /// A forward scan of every key after the put phase (what a backup reads).
    pub scan_secs: f64,
    pub scan_per_s: f64,
    /// Fraction of read-check-write `get`s that found a value.
    pub read_hit_fraction: f64,
}

/// SplitMix64's finaliser, used as a bijection on `u64` (not as a random generator): distinct
/// ids map to distinct, well-spread keys. The random streams below use `rand_chacha`.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The key of id `id`: `t001` + 20 digits. SplitMix64 is a bijection on `u64`, so distinct
/// ids give distinct keys, spread over the key space (random placement, as replicated rows of a
/// hashed table are).
fn key_of(id: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..4].copy_from_slice(b"t001");
    key[4..].copy_from_slice(format!("{:020}", splitmix64(id)).as_bytes());
    key
}

/// A pseudo-random permutation of `0..n`, the same for the same seed.
fn permutation(n: usize, seed: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n as u64).collect();
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    ids
}

fn raw_options(opts: &EngineOptions) -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(true);
    o.increase_parallelism(2);
    o.set_write_buffer_size(opts.write_buffer_bytes.max(1 << 20));
    let mut table = rocksdb::BlockBasedOptions::default();
    if opts.bloom_filter_bits > 0.0 {
        table.set_bloom_filter(opts.bloom_filter_bits, false);
    }
    if opts.block_cache_bytes > 0 {
        let cache = rocksdb::Cache::new_lru_cache(opts.block_cache_bytes);
        table.set_block_cache(&cache);
    }
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    o.set_block_based_table_factory(&table);
    o
}

fn rocks(context: &str, e: rocksdb::Error) -> StorageError {
    StorageError::Rocksdb(format!("{context}: {e}"))
}

/// Measures both phases in a fresh database under `dir` (which must be empty or absent; it is
/// left behind for the caller to remove). `progress(phase, done, total)` is called after every
/// batch.
pub fn measure_raw_limits(
    dir: &Path,
    config: &RawLimitsConfig,
    progress: &mut dyn FnMut(RawPhase, usize, usize),
) -> Result<RawLimits> {
    if config.keys == 0 || config.batch == 0 {
        return Err(StorageError::InvalidArgument(
            "raw limits need at least one key and a batch of at least one".into(),
        ));
    }
    let db = rocksdb::DB::open(&raw_options(&config.options), dir)
        .map_err(|e| rocks("opening the raw rocksdb", e))?;
    let mut write_options = rocksdb::WriteOptions::default();
    write_options.set_sync(false);
    let value = vec![0x5au8; config.value_bytes.max(8)];

    // Phase 1: blind batched puts of every key once.
    let order = permutation(config.keys, config.seed);
    let begin = Instant::now();
    for (n, chunk) in order.chunks(config.batch).enumerate() {
        let mut batch = rocksdb::WriteBatch::default();
        for &id in chunk {
            batch.put(key_of(id), &value);
        }
        db.write_opt(batch, &write_options)
            .map_err(|e| rocks("raw put", e))?;
        progress(
            RawPhase::Put,
            ((n + 1) * config.batch).min(config.keys),
            config.keys,
        );
    }
    let put_secs = begin.elapsed().as_secs_f64();

    // Phase 1b: a forward scan of every key (the rate a backup's read cannot beat).
    let begin = Instant::now();
    let mut scanned = 0usize;
    let mut it = db.raw_iterator();
    it.seek_to_first();
    while it.valid() {
        scanned += 1;
        it.next();
    }
    it.status().map_err(|e| rocks("raw scan", e))?;
    let scan_secs = begin.elapsed().as_secs_f64();
    drop(it);

    // Phase 2: get, compare the stored "timestamp" (first 8 bytes), put a newer one.
    let space = (config.keys as u64 * 4 / 3).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0xabcd);
    let mut hits = 0usize;
    let mut incoming = value.clone();
    let begin = Instant::now();
    let mut done = 0usize;
    let mut stamp = 1u64;
    while done < config.keys {
        let n = config.batch.min(config.keys - done);
        let mut batch = rocksdb::WriteBatch::default();
        for _ in 0..n {
            let key = key_of(rng.random_range(0..space));
            let existing = db.get(key).map_err(|e| rocks("raw get", e))?;
            let newer = match &existing {
                Some(old) => {
                    hits += 1;
                    let stored = old
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    stored < stamp
                }
                None => true,
            };
            if newer {
                incoming[..8].copy_from_slice(&stamp.to_be_bytes());
                batch.put(key, &incoming);
            }
            stamp += 1;
        }
        db.write_opt(batch, &write_options)
            .map_err(|e| rocks("raw read-check-write", e))?;
        done += n;
        progress(RawPhase::ReadCheckWrite, done, config.keys);
    }
    let read_check_write_secs = begin.elapsed().as_secs_f64();
    let per_s = |n: usize, secs: f64| n as f64 / secs.max(1e-9);
    Ok(RawLimits {
        keys: config.keys,
        batch: config.batch,
        value_bytes: value.len(),
        put_secs,
        put_per_s: per_s(config.keys, put_secs),
        read_check_write_secs,
        read_check_write_per_s: per_s(config.keys, read_check_write_secs),
        scan_secs,
        scan_per_s: per_s(scanned, scan_secs),
        read_hit_fraction: hits as f64 / config.keys as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_24_bytes_distinct_and_shaped() {
        let keys: std::collections::BTreeSet<[u8; 24]> = (0..10_000).map(key_of).collect();
        assert_eq!(keys.len(), 10_000);
        for k in keys.iter().take(10) {
            assert!(k.starts_with(b"t001"));
            assert!(k[4..].iter().all(u8::is_ascii_digit));
        }
    }

    #[test]
    fn permutation_covers_every_id_once() {
        let mut p = permutation(1000, 3);
        assert_ne!(p[..10], (0..10).collect::<Vec<u64>>()[..]);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<u64>>());
    }

    #[test]
    fn measures_both_phases_on_a_small_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = RawLimitsConfig {
            keys: 5000,
            batch: 500,
            ..RawLimitsConfig::default()
        };
        let mut calls = Vec::new();
        let limits = measure_raw_limits(
            &dir.path().join("db"),
            &config,
            &mut |phase, done, total| calls.push((phase, done, total)),
        )
        .expect("measure");
        assert!(limits.put_per_s > 0.0 && limits.read_check_write_per_s > 0.0);
        assert!(
            limits.scan_per_s > 0.0 && limits.scan_secs > 0.0,
            "{limits:?}"
        );
        // About three quarters of the reads find a key (the space is 4/3 of the keys).
        assert!((0.6..0.9).contains(&limits.read_hit_fraction), "{limits:?}");
        assert_eq!(calls.first(), Some(&(RawPhase::Put, 500, 5000)));
        assert_eq!(calls.last(), Some(&(RawPhase::ReadCheckWrite, 5000, 5000)));
        assert_eq!(calls.len(), 20);
        assert!(
            measure_raw_limits(
                &dir.path().join("other"),
                &RawLimitsConfig { keys: 0, ..config },
                &mut |_, _, _| {}
            )
            .is_err()
        );
    }
}
