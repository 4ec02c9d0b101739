//! The node's own time series, kept in its RocksDB store in node-local keys (never
//! replicated: each node records and keeps its own metrics, as CockroachDB's nodes do).
//!
//! Layout (local keys under `ldr-ts/`):
//! - `ldr-ts/n/<series name>` → the series' id (`u32` little endian): a dictionary, so a row
//!   stores 12 bytes per series instead of its name;
//! - `ldr-ts/d/<resolution byte><seconds u64 big endian>` → one row per sample time: repeated
//!   `(id u32 LE, value f64 LE)`. Resolution 0 is the raw 10 s samples, resolution 1 the
//!   30-minute rollups (the average of the raw points of each series in the window).
//!
//! Rows are time-ordered, so retention and pruning are range deletes of the oldest rows, and a
//! query reads one contiguous range. [`TsStore::maintain`] rolls complete 30-minute windows up,
//! drops raw rows past their retention (24 h by default) and rollups past theirs (10 days),
//! then deletes the oldest rows (raw first) while the store is above its byte limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ldr_storage::{Engine, LocalOp};
use parking_lot::Mutex;

const NAME_PREFIX: &[u8] = b"ldr-ts/n/";
const DATA_PREFIX: &[u8] = b"ldr-ts/d/";
/// Rows deleted per batch while pruning to the byte limit.
const PRUNE_BATCH_ROWS: usize = 256;
/// Longest series name stored (longer ones are skipped: label values come from users).
pub const SERIES_NAME_BYTES_MAX: usize = 512;
/// Most distinct series a node records (a bound on label cardinality).
pub const SERIES_MAX: usize = 4096;

/// The two resolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    Raw = 0,
    Rollup = 1,
}

/// Retention and limits of the store.
#[derive(Debug, Clone)]
pub struct TsConfig {
    /// How often the node samples (10 s; tests shorten it through `LDR_TS_INTERVAL_MS`).
    pub interval_secs: f64,
    pub raw_retention_secs: u64,
    pub rollup_window_secs: u64,
    pub rollup_retention_secs: u64,
    /// Bytes (keys + values) of rows kept at most; the oldest rows go first.
    pub bytes_max: u64,
}

impl Default for TsConfig {
    fn default() -> Self {
        TsConfig {
            interval_secs: 10.0,
            raw_retention_secs: 24 * 3600,
            rollup_window_secs: 30 * 60,
            rollup_retention_secs: 10 * 24 * 3600,
            bytes_max: 64 << 20,
        }
    }
}

/// Errors of the series store.
#[derive(Debug, thiserror::Error)]
pub enum TsError {
    #[error("storage: {0}")]
    Storage(#[from] ldr_storage::StorageError),
    #[error("{0}")]
    BadRequest(String),
}

fn data_key(res: Resolution, ts_secs: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(DATA_PREFIX.len() + 9);
    k.extend_from_slice(DATA_PREFIX);
    k.push(res as u8);
    k.extend_from_slice(&ts_secs.to_be_bytes());
    k
}

fn decode_data_key(key: &[u8]) -> Option<(Resolution, u64)> {
    let rest = key.strip_prefix(DATA_PREFIX)?;
    let (&res, ts) = rest.split_first()?;
    let res = match res {
        0 => Resolution::Raw,
        1 => Resolution::Rollup,
        _ => return None,
    };
    Some((res, u64::from_be_bytes(ts.try_into().ok()?)))
}

fn encode_row(points: &[(u32, f64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(points.len() * 12);
    for (id, value) in points {
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&value.to_le_bytes());
    }
    v
}

fn decode_row(value: &[u8]) -> impl Iterator<Item = (u32, f64)> + '_ {
    value.chunks_exact(12).map(|c| {
        let (id, v) = c.split_at(4);
        (
            u32::from_le_bytes(id.try_into().expect("4 bytes")),
            f64::from_le_bytes(v.try_into().expect("8 bytes")),
        )
    })
}

#[derive(Debug, Default)]
struct State {
    ids: HashMap<String, u32>,
    names: Vec<String>,
    /// Bytes of stored rows per resolution.
    bytes: [u64; 2],
}

/// Points of one series: `(seconds, value)` in time order.
pub type Points = Vec<(u64, f64)>;

/// The series store of one node.
pub struct TsStore {
    engine: Arc<Engine>,
    config: TsConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for TsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TsStore {
    /// Opens the store: loads the name dictionary and counts the stored bytes.
    pub fn open(engine: Arc<Engine>, config: TsConfig) -> Result<TsStore, TsError> {
        let mut state = State::default();
        let mut end = NAME_PREFIX.to_vec();
        end.push(0xff);
        let mut pairs = Vec::new();
        for (k, v) in engine.scan_local(NAME_PREFIX, &end, 0)? {
            let (Some(name), Ok(id)) = (
                k.strip_prefix(NAME_PREFIX)
                    .and_then(|n| String::from_utf8(n.to_vec()).ok()),
                <[u8; 4]>::try_from(v.as_slice()),
            ) else {
                continue;
            };
            pairs.push((u32::from_le_bytes(id), name));
        }
        pairs.sort();
        for (id, name) in pairs {
            let id_usize = id as usize;
            if state.names.len() <= id_usize {
                state.names.resize(id_usize + 1, String::new());
            }
            state.names[id_usize] = name.clone();
            state.ids.insert(name, id);
        }
        for res in [Resolution::Raw, Resolution::Rollup] {
            for (k, v) in engine.scan_local(&data_key(res, 0), &data_key(res, u64::MAX), 0)? {
                state.bytes[res as usize] += (k.len() + v.len()) as u64;
            }
        }
        Ok(TsStore {
            engine,
            config,
            state: Mutex::new(state),
        })
    }

    pub fn config(&self) -> &TsConfig {
        &self.config
    }

    /// Bytes stored (both resolutions).
    pub fn bytes(&self) -> u64 {
        let s = self.state.lock();
        s.bytes[0] + s.bytes[1]
    }

    /// Every series name this node has recorded.
    pub fn names(&self) -> Vec<String> {
        let s = self.state.lock();
        s.names.iter().filter(|n| !n.is_empty()).cloned().collect()
    }

    /// Records one sample time's values (raw resolution).
    pub fn record(&self, ts_secs: u64, samples: &[(String, f64)]) -> Result<(), TsError> {
        let mut ops = Vec::new();
        let mut row = Vec::with_capacity(samples.len());
        {
            let mut s = self.state.lock();
            for (name, value) in samples {
                let id = match s.ids.get(name) {
                    Some(id) => *id,
                    None if name.len() <= SERIES_NAME_BYTES_MAX && s.names.len() < SERIES_MAX => {
                        let id = s.names.len() as u32;
                        s.names.push(name.clone());
                        s.ids.insert(name.clone(), id);
                        let mut key = NAME_PREFIX.to_vec();
                        key.extend_from_slice(name.as_bytes());
                        ops.push(LocalOp::Put {
                            key,
                            value: id.to_le_bytes().to_vec(),
                        });
                        id
                    }
                    None => continue,
                };
                row.push((id, *value));
            }
        }
        let key = data_key(Resolution::Raw, ts_secs);
        let value = encode_row(&row);
        let added = (key.len() + value.len()) as u64;
        let replaced = self.row_bytes(&key)?;
        ops.push(LocalOp::Put { key, value });
        self.engine.write_local_batch(&ops, false)?;
        let mut s = self.state.lock();
        s.bytes[0] = s.bytes[0] + added - replaced.min(s.bytes[0]);
        Ok(())
    }

    fn row_bytes(&self, key: &[u8]) -> Result<u64, TsError> {
        Ok(self
            .engine
            .get_local(key)?
            .map(|v| (key.len() + v.len()) as u64)
            .unwrap_or(0))
    }

    /// Rows of one resolution in `[start, end)` seconds, at most `limit` (0 = all).
    fn rows(
        &self,
        res: Resolution,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, TsError> {
        Ok(self
            .engine
            .scan_local(&data_key(res, start), &data_key(res, end), limit)?
            .into_iter()
            .filter_map(|(k, v)| decode_data_key(&k).map(|(_, ts)| (ts, v)))
            .collect())
    }

    /// The points of `names` in `[start, end)` seconds: raw rows where they exist, rollups
    /// before the oldest raw row. Every name is an exact series name.
    pub fn read(
        &self,
        names: &[String],
        start: u64,
        end: u64,
    ) -> Result<BTreeMap<String, Points>, TsError> {
        // Slot of each wanted id (ids are dense, below SERIES_MAX).
        let mut slot_of: Vec<Option<usize>> = Vec::new();
        let mut slots: Vec<&String> = Vec::new();
        {
            let s = self.state.lock();
            for n in names {
                if let Some(id) = s.ids.get(n) {
                    let id = *id as usize;
                    if slot_of.len() <= id {
                        slot_of.resize(id + 1, None);
                    }
                    if slot_of[id].is_none() {
                        slot_of[id] = Some(slots.len());
                        slots.push(n);
                    }
                }
            }
        }
        let mut out: BTreeMap<String, Points> = BTreeMap::new();
        if slots.is_empty() {
            return Ok(out);
        }
        let oldest_raw = self
            .rows(Resolution::Raw, 0, u64::MAX, 1)?
            .first()
            .map(|r| r.0)
            .unwrap_or(u64::MAX);
        let mut rows = Vec::new();
        if start < oldest_raw {
            rows.extend(self.rows(Resolution::Rollup, start, end.min(oldest_raw), 0)?);
        }
        rows.extend(self.rows(Resolution::Raw, start.max(oldest_raw), end, 0)?);
        let mut points: Vec<Points> = vec![Vec::with_capacity(rows.len()); slots.len()];
        for (ts, value) in &rows {
            for (id, v) in decode_row(value) {
                if let Some(Some(slot)) = slot_of.get(id as usize) {
                    points[*slot].push((*ts, v));
                }
            }
        }
        for (name, p) in slots.into_iter().zip(points) {
            if !p.is_empty() {
                out.insert(name.clone(), p);
            }
        }
        Ok(out)
    }

    /// Rollups, retention and the byte limit, as of `now_secs`.
    pub fn maintain(&self, now_secs: u64) -> Result<(), TsError> {
        let window = self.config.rollup_window_secs.max(1);
        // 1. Roll up every complete window after the last rollup.
        let last_rollup = self
            .engine
            .last_local(
                &data_key(Resolution::Rollup, 0),
                &data_key(Resolution::Rollup, u64::MAX),
            )?
            .and_then(|(k, _)| decode_data_key(&k))
            .map(|(_, ts)| ts + window);
        let first_raw = self
            .rows(Resolution::Raw, 0, u64::MAX, 1)?
            .first()
            .map(|r| r.0);
        if let Some(first_raw) = first_raw {
            let mut from = last_rollup.unwrap_or(0).max(first_raw / window * window);
            let complete_until = now_secs / window * window;
            while from + window <= complete_until {
                // Jump over windows without raw rows (a node that was down for days).
                let Some((next, _)) = self
                    .rows(Resolution::Raw, from, complete_until, 1)?
                    .into_iter()
                    .next()
                else {
                    break;
                };
                from = next / window * window;
                if from + window > complete_until {
                    break;
                }
                self.roll_up(from, from + window)?;
                from += window;
            }
        }
        // 2. Retention.
        let raw_cutoff = now_secs.saturating_sub(self.config.raw_retention_secs);
        self.delete_before(Resolution::Raw, raw_cutoff)?;
        let rollup_cutoff = now_secs.saturating_sub(self.config.rollup_retention_secs);
        self.delete_before(Resolution::Rollup, rollup_cutoff)?;
        // 3. The byte limit: oldest raw rows first (already rolled up), then oldest rollups.
        while self.bytes() > self.config.bytes_max {
            let res = if self.state.lock().bytes[0] > 0 {
                Resolution::Raw
            } else {
                Resolution::Rollup
            };
            let oldest = self.rows(res, 0, u64::MAX, PRUNE_BATCH_ROWS)?;
            let Some(last) = oldest.last() else {
                break;
            };
            // Delete only as many rows as needed (at least one) to get under the limit.
            let over = self.bytes() - self.config.bytes_max;
            let mut freed = 0u64;
            let mut until = last.0 + 1;
            for (ts, v) in &oldest {
                freed += (data_key(res, *ts).len() + v.len()) as u64;
                if freed >= over {
                    until = ts + 1;
                    break;
                }
            }
            self.delete_before(res, until)?;
        }
        Ok(())
    }

    fn roll_up(&self, start: u64, end: u64) -> Result<(), TsError> {
        let rows = self.rows(Resolution::Raw, start, end, 0)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut sums: BTreeMap<u32, (f64, u32)> = BTreeMap::new();
        for (_, value) in &rows {
            for (id, v) in decode_row(value) {
                let e = sums.entry(id).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
        let row: Vec<(u32, f64)> = sums
            .into_iter()
            .map(|(id, (sum, n))| (id, sum / f64::from(n)))
            .collect();
        let key = data_key(Resolution::Rollup, start);
        let value = encode_row(&row);
        let added = (key.len() + value.len()) as u64;
        let replaced = self.row_bytes(&key)?;
        self.engine
            .write_local_batch(&[LocalOp::Put { key, value }], false)?;
        let mut s = self.state.lock();
        s.bytes[1] = s.bytes[1] + added - replaced.min(s.bytes[1]);
        Ok(())
    }

    /// Deletes the rows of `res` older than `cutoff` seconds.
    fn delete_before(&self, res: Resolution, cutoff: u64) -> Result<(), TsError> {
        let doomed = self.rows(res, 0, cutoff, 0)?;
        if doomed.is_empty() {
            return Ok(());
        }
        let freed: u64 = doomed
            .iter()
            .map(|(ts, v)| (data_key(res, *ts).len() + v.len()) as u64)
            .sum();
        self.engine.write_local_batch(
            &[LocalOp::DeleteRange {
                start: data_key(res, 0),
                end: data_key(res, cutoff),
            }],
            false,
        )?;
        let mut s = self.state.lock();
        s.bytes[res as usize] = s.bytes[res as usize].saturating_sub(freed);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn engine(dir: &std::path::Path) -> Arc<Engine> {
        Engine::open(
            dir,
            Arc::new(ldr_types::Clock::new(std::time::Duration::from_millis(500))),
            ldr_storage::EngineOptions {
                block_cache_bytes: 1 << 20,
                ..Default::default()
            },
        )
        .expect("open engine")
    }

    fn samples(v: f64) -> Vec<(String, f64)> {
        vec![("a".to_string(), v), ("b{x=\"1\"}".to_string(), 2.0 * v)]
    }

    #[test]
    fn records_reads_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TsStore::open(engine(dir.path()), TsConfig::default()).expect("open");
        for i in 0..10u64 {
            store
                .record(1000 + 10 * i, &samples(i as f64))
                .expect("record");
        }
        let got = store
            .read(&["a".into(), "b{x=\"1\"}".into(), "zzz".into()], 1020, 1050)
            .expect("read");
        assert_eq!(got["a"], vec![(1020, 2.0), (1030, 3.0), (1040, 4.0)]);
        assert_eq!(got["b{x=\"1\"}"].len(), 3);
        assert!(!got.contains_key("zzz"));
        let bytes = store.bytes();
        assert!(bytes > 0);
        drop(store);
        // Reopened: the dictionary and the byte count come back from the store.
        let store = TsStore::open(engine(dir.path()), TsConfig::default()).expect("reopen");
        assert_eq!(store.bytes(), bytes);
        assert_eq!(store.names(), vec!["a", "b{x=\"1\"}"]);
        assert_eq!(
            store.read(&["a".into()], 0, u64::MAX).expect("read")["a"].len(),
            10
        );
    }

    #[test]
    fn rolls_up_old_windows_and_applies_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TsConfig {
            raw_retention_secs: 100,
            rollup_window_secs: 50,
            rollup_retention_secs: 1000,
            ..TsConfig::default()
        };
        let store = TsStore::open(engine(dir.path()), config).expect("open");
        // Raw points every 10 s from 0 to 290.
        for i in 0..30u64 {
            store.record(10 * i, &samples(i as f64)).expect("record");
        }
        store.maintain(300).expect("maintain");
        // Raw rows older than 200 are gone; windows [0,50), [50,100), ... were rolled up.
        let got = store.read(&["a".into()], 0, 400).expect("read")["a"].clone();
        assert_eq!(got[0], (0, 2.0), "rollup of 0..4 averages to 2: {got:?}");
        assert_eq!(got[1], (50, 7.0));
        assert!(got.contains(&(290, 29.0)));
        assert!(
            !got.iter()
                .any(|(ts, _)| *ts > 0 && *ts < 200 && ts % 50 != 0)
        );
        // Later, rollups past their retention go too.
        store.maintain(1120).expect("maintain");
        let got = store.read(&["a".into()], 0, 2000).expect("read")["a"].clone();
        assert!(got.iter().all(|(ts, _)| *ts >= 120), "{got:?}");
    }

    #[test]
    fn rollups_skip_a_long_gap_without_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TsConfig {
            raw_retention_secs: 3 * 24 * 3600,
            ..TsConfig::default()
        };
        let store = TsStore::open(engine(dir.path()), config).expect("open");
        // A node down for two days between two bursts of samples.
        let day = 24 * 3600;
        for i in 0..6u64 {
            store.record(10 * i, &samples(1.0)).expect("record");
            store
                .record(2 * day + 10 * i, &samples(3.0))
                .expect("record");
        }
        store.maintain(2 * day + 3600).expect("maintain");
        let rollups = store
            .rows(Resolution::Rollup, 0, u64::MAX, 0)
            .expect("rows");
        let times: Vec<u64> = rollups.iter().map(|r| r.0).collect();
        assert_eq!(times, vec![0, 2 * day], "one rollup per window with rows");
    }

    #[test]
    fn byte_limit_prunes_oldest_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TsConfig {
            bytes_max: 2000,
            ..TsConfig::default()
        };
        let store = TsStore::open(engine(dir.path()), config).expect("open");
        for i in 0..500u64 {
            store.record(10 * i, &samples(i as f64)).expect("record");
            if i % 50 == 0 {
                store.maintain(10 * i).expect("maintain");
            }
        }
        store.maintain(5000).expect("maintain");
        assert!(store.bytes() <= 2000, "bytes {}", store.bytes());
        // The newest point survives.
        let got = store.read(&["a".into()], 4900, 5000).expect("read");
        assert_eq!(got["a"].last(), Some(&(4990, 499.0)));
        // The byte count agrees with what is stored.
        let reopened = TsStore::open(store.engine.clone(), TsConfig::default()).expect("reopen");
        assert_eq!(reopened.bytes(), store.bytes());
    }

    #[test]
    fn series_names_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TsStore::open(engine(dir.path()), TsConfig::default()).expect("open");
        let long = "x".repeat(SERIES_NAME_BYTES_MAX + 1);
        store.record(10, &[(long.clone(), 1.0)]).expect("record");
        assert!(store.names().is_empty());
    }
}
