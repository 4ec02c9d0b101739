//! The MVCC engine over one RocksDB store: opening and tuning RocksDB, node-local state, MVCC
//! reads, the write path (latches, conditions, commit timestamps, the commit observer) and GC.
//!
//! Write path of [`Engine::apply`], in order:
//! 1. latch every key of every row (sorted stripes, so no deadlock);
//! 2. register an in-flight commit with the closed-timestamp tracker (provisional timestamp);
//! 3. read each primary key's newest version and decide each row ([`crate::decide`]);
//! 4. read the written dependents' newest versions, pick the commit timestamp above all of
//!    them, the provisional timestamp and the GC threshold, and forward the clock to it;
//! 5. under the commit gate (shared), write one RocksDB batch and tell the observer;
//! 6. deregister the in-flight commit, release the latches.
//!
//! The commit gate lets [`Engine::snapshot_after`] take a RocksDB snapshot that holds exactly
//! the commits the observer has already seen, which rangefeeds use to hand over from a scan
//! to live events without gaps or reordering.
//!
//! Durability: every write goes through the RocksDB WAL. With `sync_wal = false` the WAL is
//! written to the OS (a `write(2)` per batch) but not fsynced: a killed process loses nothing
//! it acknowledged, an OS crash or power loss may lose the last writes. `put_local` always
//! syncs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ldr_types::keys::pretty_key;
use ldr_types::{Clock, Span, TIMESTAMP_BYTES, Timestamp};
use parking_lot::{Mutex, RwLock};
use rocksdb::{
    BlockBasedOptions, Cache, DB, DBRawIterator, Options, ReadOptions, SliceTransform, WriteBatch,
    WriteOptions,
};
use tracing::{debug, info};

use crate::closed_ts::{ClosedTsTracker, InFlight};
use crate::decide::decide;
use crate::encoding::{self, DecodeError};
use crate::intent::{INTENT_TS, Intent, TxnMeta};
use crate::latch::LatchManager;
use crate::replicated::{LocalOp, PlannedWrite, WritePlan};
use crate::{
    ApplyResult, CommitEvent, CommitObserver, EngineOptions, GcStats, HistoryEntry, KeyVersion,
    Result, RowOutcome, RowWrite, StorageError, ValueHeader, Version, VersionWrite,
};

const GC_THRESHOLD_KEY: &str = "gc-threshold";
/// Deletes per GC write batch.
const GC_BATCH_DELETES_MAX: usize = 1000;
/// `next()` calls tried before a `seek()` when skipping the older versions of a key.
const NEXT_BEFORE_SEEK: usize = 4;

/// The MVCC engine over one RocksDB store.
pub struct Engine {
    pub(crate) db: DB,
    clock: Arc<Clock>,
    pub(crate) write_opts: WriteOptions,
    pub(crate) latches: LatchManager,
    pub(crate) tracker: ClosedTsTracker,
    /// Every unresolved intent in this store, by key, registered with the tracker at its
    /// write timestamp: the closed timestamp (and so every rangefeed's resolved timestamp, on
    /// leaseholders and followers alike) stays below an intent until it is resolved, whoever
    /// holds the lease and however the intent arrived (write, Raft, snapshot, restart).
    pub(crate) intents: Mutex<std::collections::HashMap<Vec<u8>, InFlight>>,
    pub(crate) observer: RwLock<Option<Arc<dyn CommitObserver>>>,
    /// Shared by commits around "write + observer"; exclusive for consistent snapshots.
    pub(crate) commit_gate: RwLock<()>,
    gc_threshold: Mutex<Timestamp>,
    /// Serialises GC passes (raise-then-delete ordering of the threshold).
    gc_lock: Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.db.path())
            .finish_non_exhaustive()
    }
}

pub(crate) fn rocks(e: rocksdb::Error) -> StorageError {
    StorageError::Rocksdb(e.into_string())
}

pub(crate) fn corruption(user_key: &[u8], e: DecodeError) -> StorageError {
    StorageError::Corruption {
        key: pretty_key(user_key),
        detail: e.0,
    }
}

pub(crate) fn corruption_raw(raw_key: &[u8], e: DecodeError) -> StorageError {
    corruption(&encoding::user_key_for_error(raw_key), e)
}

/// Drops an in-flight registration however `apply` exits.
struct InFlightGuard<'a> {
    tracker: &'a ClosedTsTracker,
    in_flight: Option<InFlight>,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.in_flight.take() {
            self.tracker.deregister(f);
        }
    }
}

impl Engine {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, clock: Arc<Clock>, options: EngineOptions) -> Result<Arc<Engine>> {
        if !options.bloom_filter_bits.is_finite() || options.bloom_filter_bits < 0.0 {
            return Err(StorageError::InvalidArgument(format!(
                "bloom_filter_bits must be a finite non-negative number, got {}",
                options.bloom_filter_bits
            )));
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.increase_parallelism(2);
        opts.set_write_buffer_size(options.write_buffer_bytes.max(1 << 20));
        opts.set_keep_log_file_num(4);
        opts.set_prefix_extractor(SliceTransform::create(
            "ldr.mvcc_prefix.v1",
            encoding::prefix_extractor,
            Some(encoding::prefix_in_domain),
        ));
        opts.set_memtable_prefix_bloom_ratio(0.1);
        let mut table = BlockBasedOptions::default();
        if options.bloom_filter_bits > 0.0 {
            table.set_bloom_filter(options.bloom_filter_bits, false);
            table.set_whole_key_filtering(true);
        }
        if options.block_cache_bytes > 0 {
            let cache = Cache::new_lru_cache(options.block_cache_bytes);
            table.set_block_cache(&cache);
        }
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, dir).map_err(rocks)?;

        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(options.sync_wal);
        write_opts.disable_wal(false);

        let engine = Engine {
            db,
            clock,
            write_opts,
            latches: LatchManager::new(),
            tracker: ClosedTsTracker::new(options.closed_timestamp_target),
            intents: Mutex::new(std::collections::HashMap::new()),
            observer: RwLock::new(None),
            commit_gate: RwLock::new(()),
            gc_threshold: Mutex::new(Timestamp::ZERO),
            gc_lock: Mutex::new(()),
        };
        let threshold = engine.load_gc_threshold()?;
        *engine.gc_threshold.lock() = threshold;
        let mut unresolved = Vec::new();
        crate::replicated::scan_versions_impl(
            range_iterator(&engine.db, None, &Span::new(vec![], vec![0xff; 8])),
            &mut |w| {
                if w.version.ts == INTENT_TS {
                    unresolved.push(w);
                }
                true
            },
        )?;
        for w in &unresolved {
            engine.track_intent(&w.key, Some(&w.version));
        }
        info!(path = %dir.display(), gc_threshold = %threshold, "storage engine opened");
        Ok(Arc::new(engine))
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// Registers the commit observer (one; a later call replaces it).
    pub fn set_observer(&self, observer: Arc<dyn CommitObserver>) {
        *self.observer.write() = Some(observer);
    }

    // ---- node-local, non-MVCC state ----

    pub fn get_local(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_local_raw(&encoding::local_user_key(key), key)
    }

    /// Durable (synced) write of node-local state.
    pub fn put_local(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_local_raw(&encoding::local_user_key(key), value)
    }

    fn get_local_raw(&self, stored_key: &[u8], key_for_errors: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.db.get_pinned(stored_key).map_err(rocks)? {
            None => Ok(None),
            Some(raw) => {
                encoding::decode_local_value(&raw)
                    .map(Some)
                    .map_err(|e| StorageError::Corruption {
                        key: format!("/Local/{}", pretty_key(key_for_errors)),
                        detail: e.0,
                    })
            }
        }
    }

    fn put_local_raw(&self, stored_key: &[u8], value: &[u8]) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .put_opt(stored_key, encoding::encode_local_value(value), &opts)
            .map_err(rocks)
    }

    fn load_gc_threshold(&self) -> Result<Timestamp> {
        let key = encoding::local_internal_key(GC_THRESHOLD_KEY);
        match self.get_local_raw(&key, GC_THRESHOLD_KEY.as_bytes())? {
            None => Ok(Timestamp::ZERO),
            Some(bytes) => Timestamp::from_bytes(&bytes).map_err(|e| StorageError::Corruption {
                key: format!("/Local/{GC_THRESHOLD_KEY}"),
                detail: e.to_string(),
            }),
        }
    }

    // ---- MVCC reads ----

    /// The newest version of `key` at or below `read_ts` (tombstones included). Reads below
    /// the GC threshold may see a GC'd history (no error).
    pub fn get(&self, key: &[u8], read_ts: Timestamp) -> Result<Option<Version>> {
        let mut it = self.point_iterator(None);
        let prefix = encoding::mvcc_prefix(key);
        read_visible(&mut it, &prefix, key, read_ts)
    }

    /// [`Engine::get`] of each of `keys` (in order), through one RocksDB iterator: a batch of
    /// point reads pays for one iterator set-up instead of one per key, and reads one view.
    pub fn get_many<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
        read_ts: Timestamp,
    ) -> Result<Vec<Option<Version>>> {
        let mut it = self.point_iterator(None);
        keys.into_iter()
            .map(|key| {
                let key = key.as_ref();
                read_visible(&mut it, &encoding::mvcc_prefix(key), key, read_ts)
            })
            .collect()
    }

    /// The newest live version at or below `read_ts` of every key in `span`, in key order,
    /// at most `limit` keys (0 = no limit). Tombstoned keys are skipped. An intent written at
    /// or below `read_ts` fails the scan with [`StorageError::WriteIntent`].
    pub fn scan(&self, span: &Span, read_ts: Timestamp, limit: usize) -> Result<Vec<KeyVersion>> {
        scan_impl(&self.db, None, span, read_ts, limit, OnIntent::Fail)
    }

    /// [`Engine::scan`] of committed versions only: intents are passed over (clearing a
    /// dropped table's rows, internal maintenance).
    pub fn scan_committed(
        &self,
        span: &Span,
        read_ts: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeyVersion>> {
        scan_impl(&self.db, None, span, read_ts, limit, OnIntent::Skip)
    }

    /// Calls `f` for every version in `span` with `after < ts <= up_to`, in key order and,
    /// per key, oldest first, each with the value before it. Stops early when `f` returns
    /// `false`. Fails with [`StorageError::BelowGcThreshold`] if `after` is below the GC
    /// threshold (history there may be gone).
    pub fn scan_history(
        &self,
        span: &Span,
        after: Timestamp,
        up_to: Timestamp,
        f: &mut dyn FnMut(HistoryEntry) -> bool,
    ) -> Result<()> {
        // The iterator pins its view first; a threshold read afterwards covers every GC
        // deletion that view can miss (GC raises the threshold before deleting).
        let it = range_iterator(&self.db, None, span);
        let threshold = self.gc_threshold();
        if after < threshold {
            return Err(StorageError::BelowGcThreshold {
                requested: after,
                threshold,
            });
        }
        let Some(it) = it else { return Ok(()) };
        scan_history_impl(it, after, up_to, f)
    }

    /// Runs `f` and takes a RocksDB snapshot while no commit is between its write and its
    /// observer call: the snapshot holds exactly the commits the observer was told about
    /// before `f` returned, and every later commit reaches the observer after `f`. Commits wait
    /// while `f` runs, so `f` must be short and must not write to this engine.
    pub fn snapshot_after<R>(&self, f: impl FnOnce() -> R) -> (EngineSnapshot<'_>, R) {
        let gate = self.commit_gate.write();
        let result = f();
        let snapshot = self.db.snapshot();
        drop(gate);
        let gc_threshold = self.gc_threshold();
        (
            EngineSnapshot {
                engine: self,
                snapshot,
                gc_threshold,
            },
            result,
        )
    }

    /// A consistent point-in-time view of the store.
    pub fn snapshot(&self) -> EngineSnapshot<'_> {
        self.snapshot_after(|| ()).0
    }

    pub(crate) fn point_iterator(
        &self,
        snapshot: Option<&rocksdb::Snapshot<'_>>,
    ) -> DBRawIterator<'_> {
        let mut ro = ReadOptions::default();
        ro.set_prefix_same_as_start(true);
        if let Some(s) = snapshot {
            ro.set_snapshot(s);
        }
        self.db.raw_iterator_opt(ro)
    }

    // ---- writes ----

    /// Applies `rows` in one RocksDB write batch at one commit timestamp, holding per-key
    /// latches for all their keys. With `atomic`, nothing is written unless every row's
    /// outcome is `Written` (a failed condition or an LWW loss stops the batch; the rows that
    /// would have been written report [`RowOutcome::NotAttempted`]). `ts`: `None` takes the
    /// commit timestamp from the clock; `Some(t)` writes at exactly `t` (tests and internal
    /// use; must be above the closed timestamp, above existing versions of the written keys
    /// and above the GC threshold, and at most the clock's maximum offset ahead of the
    /// physical clock). A key may appear only once among all rows' keys.
    pub fn apply(
        &self,
        rows: &[RowWrite],
        atomic: bool,
        ts: Option<Timestamp>,
    ) -> Result<ApplyResult> {
        self.apply_txn(rows, atomic, ts, None)
    }

    /// [`Engine::apply`], writing intents of `txn` when given (see [`crate::intent`]); the
    /// result's `ts` is then the intents' write timestamp.
    pub fn apply_txn(
        &self,
        rows: &[RowWrite],
        atomic: bool,
        ts: Option<Timestamp>,
        txn: Option<&TxnMeta>,
    ) -> Result<ApplyResult> {
        if rows.is_empty() {
            return Ok(ApplyResult {
                ts: ts.unwrap_or_else(|| self.clock.now()),
                outcomes: Vec::new(),
            });
        }
        let mut all_keys: Vec<&[u8]> = rows
            .iter()
            .flat_map(|r| {
                std::iter::once(r.key.as_slice())
                    .chain(r.dependents.iter().map(|(k, _)| k.as_slice()))
            })
            .collect();
        all_keys.sort_unstable();
        if let Some(pair) = all_keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(StorageError::InvalidArgument(format!(
                "key {} is written twice in one apply",
                pretty_key(pair[0])
            )));
        }

        // Latches first, then the in-flight registration: its guard drops (deregisters)
        // before the latches are released.
        let _latches = self.latches.acquire(all_keys.iter().copied());
        if let Some(t) = ts {
            let max_offset_ns = self.clock.max_offset().as_nanos() as u64;
            let limit = self.clock.physical_now_ns().saturating_add(max_offset_ns);
            if max_offset_ns > 0 && t.wall_time_ns > limit {
                return Err(StorageError::InvalidArgument(format!(
                    "write at {t} is more than the maximum clock offset ahead of the local clock"
                )));
            }
        }
        let in_flight = self.tracker.register(&self.clock, ts).map_err(|closed| {
            StorageError::BelowClosedTimestamp {
                ts: ts.unwrap_or(Timestamp::ZERO),
                closed,
            }
        })?;
        let provisional = in_flight.provisional;
        let _in_flight = InFlightGuard {
            tracker: &self.tracker,
            in_flight: Some(in_flight),
        };

        let plan = self.plan_writes(rows, atomic, provisional, ts, txn)?;
        let Some(commit_ts) = plan.commit_ts else {
            return Ok(ApplyResult {
                ts: provisional,
                outcomes: plan.outcomes,
            });
        };
        self.clock.forward_to(commit_ts);
        self.write_versions(plan.writes, &[])?;
        Ok(ApplyResult {
            ts: commit_ts,
            outcomes: plan.outcomes,
        })
    }

    /// Decides `rows` against the newest versions of their keys and picks the commit
    /// timestamp: `explicit` if given (checked), else the smallest timestamp at or above
    /// `provisional` that is above every existing version of the written keys and the GC
    /// threshold. The caller excludes concurrent writers of these keys (latches) and keeps the
    /// closed timestamp below `provisional` until the plan is written.
    pub(crate) fn plan_writes(
        &self,
        rows: &[RowWrite],
        atomic: bool,
        provisional: Timestamp,
        explicit: Option<Timestamp>,
        txn: Option<&TxnMeta>,
    ) -> Result<WritePlan> {
        // Another transaction's intent on any key written stops the write; the writing
        // transaction's own intent is the key's newest value for it (read your writes).
        let newest = |it: &mut DBRawIterator<'_>, prefix: &[u8], key: &[u8]| {
            let (version, intent) = read_key(it, prefix, key, INTENT_TS)?;
            match intent {
                Some(i) if txn.is_none_or(|t| t.txn_id != i.txn.txn_id) => {
                    Err(StorageError::WriteIntent(Box::new(i.conflict(key))))
                }
                Some(own) => Ok(Some(Version {
                    ts: own
                        .write_ts
                        .max(version.as_ref().map_or(Timestamp::ZERO, |v| v.ts)),
                    header: own.header,
                    value: own.value,
                })),
                None => Ok(version),
            }
        };
        // Decide every row against its primary key's newest version.
        let mut it = self.point_iterator(None);
        let mut prefix = Vec::new();
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            prefix.clear();
            encoding::encode_prefix_into(&row.key, &mut prefix);
            let existing = newest(&mut it, &prefix, &row.key)?;
            outcomes.push(decide(row, existing.as_ref(), provisional));
        }
        let all_written = outcomes
            .iter()
            .all(|o| matches!(o, RowOutcome::Written { .. }));
        if atomic && !all_written {
            for o in outcomes.iter_mut() {
                if matches!(o, RowOutcome::Written { .. }) {
                    *o = RowOutcome::NotAttempted;
                }
            }
            return Ok(WritePlan::nothing(outcomes));
        }

        // Dependents' newest versions bound the commit timestamp and give their prev values.
        let mut max_existing = Timestamp::ZERO;
        let mut dependent_prevs: Vec<Vec<Option<Version>>> = Vec::with_capacity(rows.len());
        for (row, outcome) in rows.iter().zip(&outcomes) {
            let RowOutcome::Written { prev } = outcome else {
                dependent_prevs.push(Vec::new());
                continue;
            };
            if let Some(p) = prev {
                max_existing = max_existing.max(p.ts);
            }
            let mut prevs = Vec::with_capacity(row.dependents.len());
            for (key, _) in &row.dependents {
                prefix.clear();
                encoding::encode_prefix_into(key, &mut prefix);
                let existing = newest(&mut it, &prefix, key)?;
                if let Some(e) = &existing {
                    max_existing = max_existing.max(e.ts);
                }
                prevs.push(existing);
            }
            dependent_prevs.push(prevs);
        }
        drop(it);
        if !outcomes
            .iter()
            .any(|o| matches!(o, RowOutcome::Written { .. }))
        {
            return Ok(WritePlan::nothing(outcomes));
        }

        // Read after the versions: GC raises the threshold before deleting anything.
        let gc_threshold = self.gc_threshold();
        let commit_ts = match explicit {
            Some(t) => {
                if t <= max_existing {
                    return Err(StorageError::InvalidArgument(format!(
                        "write at {t} is not above an existing version at {max_existing}"
                    )));
                }
                if t <= gc_threshold {
                    return Err(StorageError::InvalidArgument(format!(
                        "write at {t} is at or below the GC threshold {gc_threshold}"
                    )));
                }
                t
            }
            None => provisional
                .max(max_existing.next())
                .max(gc_threshold.next()),
        };

        // A transaction's rows become intents written at `commit_ts` (its write timestamp).
        let version = |header: ValueHeader, value: &Option<Vec<u8>>| match txn {
            None => Version {
                ts: commit_ts,
                header,
                value: value.clone(),
            },
            Some(txn) => Version {
                ts: INTENT_TS,
                header,
                value: Some(
                    Intent {
                        txn: txn.clone(),
                        write_ts: commit_ts,
                        header,
                        value: value.clone(),
                    }
                    .encode(),
                ),
            },
        };
        let mut writes = Vec::new();
        for ((row, outcome), dep_prevs) in rows.iter().zip(&outcomes).zip(&dependent_prevs) {
            let RowOutcome::Written { prev } = outcome else {
                continue;
            };
            writes.push(PlannedWrite {
                write: VersionWrite {
                    key: row.key.clone(),
                    version: version(row.header, &row.value),
                },
                prev_value: prev.as_ref().and_then(|p| p.value.clone()),
            });
            for ((key, dep_value), dep_prev) in row.dependents.iter().zip(dep_prevs) {
                writes.push(PlannedWrite {
                    write: VersionWrite {
                        key: key.clone(),
                        version: version(row.header, dep_value),
                    },
                    prev_value: dep_prev.as_ref().and_then(|p| p.value.clone()),
                });
            }
        }
        Ok(WritePlan {
            outcomes,
            commit_ts: Some(commit_ts),
            writes,
        })
    }

    /// Writes planned versions (and node-local operations) in one RocksDB batch under the
    /// commit gate, and tells the observer.
    pub(crate) fn write_versions(
        &self,
        writes: Vec<PlannedWrite>,
        local: &[LocalOp],
    ) -> Result<()> {
        let observer = self.observer.read().clone();
        let mut batch = WriteBatch::default();
        let mut key_buf = Vec::new();
        let mut intent_puts: Vec<(Vec<u8>, Version)> = Vec::new();
        let mut intent_removals: Vec<Vec<u8>> = Vec::new();
        for w in &writes {
            key_buf.clear();
            encoding::encode_prefix_into(&w.write.key, &mut key_buf);
            encoding::push_ts(&mut key_buf, w.write.version.ts);
            if w.write.version.ts == INTENT_TS {
                if w.write.version.value.is_none() {
                    // The removal of an intent (see `intent`).
                    batch.delete(&key_buf);
                    intent_removals.push(w.write.key.clone());
                    continue;
                }
                intent_puts.push((w.write.key.clone(), w.write.version.clone()));
            }
            batch.put(
                &key_buf,
                encoding::encode_value(&w.write.version.header, w.write.version.value.as_deref()),
            );
        }
        crate::replicated::add_local_ops(&mut batch, local);
        // The versions move into the observer's events (no second copy of keys and values).
        let events: Vec<CommitEvent> = match &observer {
            Some(_) => writes
                .into_iter()
                // Intents are not commits: their values reach rangefeeds when resolved.
                .filter(|w| w.write.version.ts != INTENT_TS)
                .map(|w| CommitEvent {
                    key: w.write.key,
                    version: w.write.version,
                    prev_value: w.prev_value,
                })
                .collect(),
            None => Vec::new(),
        };
        let _gate = self.commit_gate.read();
        // Intents written are tracked before they are visible; removed ones after their
        // commit events went out.
        for (key, version) in &intent_puts {
            self.track_intent(key, Some(version));
        }
        self.db.write_opt(batch, &self.write_opts).map_err(rocks)?;
        if let Some(observer) = &observer
            && !events.is_empty()
        {
            observer.on_commit(&events);
        }
        for key in &intent_removals {
            self.track_intent(key, None);
        }
        Ok(())
    }

    /// Tracks (`Some`: written) or forgets (`None`: removed) the intent on `key`.
    pub(crate) fn track_intent(&self, key: &[u8], intent: Option<&Version>) {
        let mut intents = self.intents.lock();
        if let Some(old) = intents.remove(key) {
            self.tracker.deregister(old);
        }
        let Some(version) = intent else { return };
        let Ok(intent) = Intent::from_version(key, version) else {
            return;
        };
        intents.insert(key.to_vec(), self.tracker.hold(intent.write_ts));
    }

    /// Forgets every tracked intent in `span` (its contents were replaced).
    pub(crate) fn forget_intents_in(&self, span: &Span) {
        let mut intents = self.intents.lock();
        let gone: Vec<Vec<u8>> = intents
            .keys()
            .filter(|k| span.contains_key(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(f) = intents.remove(&k) {
                self.tracker.deregister(f);
            }
        }
    }

    /// Everything at or below this timestamp is committed and has been given to the
    /// observer; no later write will be at or below it. Never moves backwards.
    pub fn closed_timestamp(&self) -> Timestamp {
        self.tracker.closed_timestamp(&self.clock)
    }

    pub fn set_closed_timestamp_target(&self, target: Duration) {
        self.tracker.set_target(target);
    }

    // ---- GC ----

    /// Removes, in `span`, versions shadowed by a newer version at or below `threshold`, and
    /// tombstones at or below `threshold` with nothing older left. The caller computes
    /// `threshold = min(now - gc.ttlseconds, oldest protected timestamp)`. Raises the GC
    /// threshold (persisted) before deleting anything, so a reader that sees a deletion also
    /// sees the raised threshold.
    ///
    /// `threshold` is capped at the closed timestamp: a commit in flight (or any later one)
    /// lands above it, so reads at or above the threshold never change afterwards.
    pub fn gc(&self, span: &Span, threshold: Timestamp) -> Result<GcStats> {
        self.gc_at(span, threshold.min(self.closed_timestamp()))
    }

    /// [`Engine::gc`] of a replicated range's span at exactly `threshold`, which the range's
    /// leaseholder chose at or below its closed timestamp and proposed: every replica applies
    /// it to the same versions and so removes the same ones (this node's own closed
    /// timestamp is not involved).
    pub fn gc_replicated(&self, span: &Span, threshold: Timestamp) -> Result<GcStats> {
        self.gc_at(span, threshold)
    }

    fn gc_at(&self, span: &Span, threshold: Timestamp) -> Result<GcStats> {
        let _gc = self.gc_lock.lock();
        let current = self.gc_threshold();
        if threshold > current {
            self.put_local_raw(
                &encoding::local_internal_key(GC_THRESHOLD_KEY),
                &threshold.to_bytes(),
            )?;
            *self.gc_threshold.lock() = threshold;
        }
        let mut stats = GcStats::default();
        let Some(mut it) = range_iterator(&self.db, None, span) else {
            return Ok(stats);
        };
        let mut batch = WriteBatch::default();
        let mut current_prefix: Vec<u8> = Vec::new();
        // Whether the current key already has its newest version at or below the threshold.
        let mut found_visible = false;
        while it.valid() {
            let Some((raw_key, raw_value)) = it.item() else {
                break;
            };
            let (prefix, ts) =
                encoding::split_mvcc_key(raw_key).map_err(|e| corruption_raw(raw_key, e))?;
            if prefix != current_prefix.as_slice() {
                current_prefix.clear();
                current_prefix.extend_from_slice(prefix);
                found_visible = false;
                stats.keys_visited += 1;
            }
            if ts <= threshold {
                if found_visible {
                    batch.delete(raw_key);
                    stats.versions_removed += 1;
                } else {
                    found_visible = true;
                    let version = encoding::decode_value(ts, raw_value)
                        .map_err(|e| corruption_raw(raw_key, e))?;
                    if version.is_tombstone() {
                        // Everything older goes too, so nothing is left under it.
                        batch.delete(raw_key);
                        stats.versions_removed += 1;
                    }
                }
            }
            if batch.len() >= GC_BATCH_DELETES_MAX {
                self.db
                    .write_opt(std::mem::take(&mut batch), &self.write_opts)
                    .map_err(rocks)?;
            }
            it.next();
        }
        it.status().map_err(rocks)?;
        if !batch.is_empty() {
            self.db.write_opt(batch, &self.write_opts).map_err(rocks)?;
        }
        debug!(%span, %threshold, removed = stats.versions_removed, keys = stats.keys_visited, "gc pass done");
        Ok(stats)
    }

    pub fn gc_threshold(&self) -> Timestamp {
        *self.gc_threshold.lock()
    }

    // ---- maintenance ----

    /// Flushes the memtable to an SST file (tests, benchmarks, orderly shutdown; the WAL
    /// already makes writes durable).
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(rocks)
    }

    /// Compacts the whole store (reclaims GC'd versions' space; tests and maintenance).
    pub fn compact(&self) -> Result<()> {
        self.db.compact_range::<&[u8], &[u8]>(None, None);
        Ok(())
    }

    /// Test hook: the raw RocksDB handle (for corrupting stored bytes in tests).
    #[cfg(test)]
    pub(crate) fn raw_db(&self) -> &DB {
        &self.db
    }
}

/// A consistent point-in-time view of the engine (see [`Engine::snapshot_after`]).
pub struct EngineSnapshot<'a> {
    engine: &'a Engine,
    snapshot: rocksdb::Snapshot<'a>,
    gc_threshold: Timestamp,
}

impl EngineSnapshot<'_> {
    /// [`Engine::get`] on the snapshot.
    pub fn get(&self, key: &[u8], read_ts: Timestamp) -> Result<Option<Version>> {
        let mut it = self.engine.point_iterator(Some(&self.snapshot));
        read_version_at(&mut it, &encoding::mvcc_prefix(key), key, read_ts)
    }

    /// [`Engine::scan`] on the snapshot.
    pub fn scan(&self, span: &Span, read_ts: Timestamp, limit: usize) -> Result<Vec<KeyVersion>> {
        scan_impl(
            &self.engine.db,
            Some(&self.snapshot),
            span,
            read_ts,
            limit,
            OnIntent::Skip,
        )
    }

    /// Calls `f` for every live version at or below `read_ts` in `span`, in key order, without
    /// collecting them (for large initial scans). Stops early when `f` returns `false`.
    pub fn scan_each(
        &self,
        span: &Span,
        read_ts: Timestamp,
        f: &mut dyn FnMut(KeyVersion) -> bool,
    ) -> Result<()> {
        scan_each_impl(
            &self.engine.db,
            Some(&self.snapshot),
            span,
            read_ts,
            OnIntent::Skip,
            f,
        )
    }

    /// [`Engine::scan_history`] on the snapshot (the GC threshold is the one when the
    /// snapshot was taken, or later).
    pub fn scan_history(
        &self,
        span: &Span,
        after: Timestamp,
        up_to: Timestamp,
        f: &mut dyn FnMut(HistoryEntry) -> bool,
    ) -> Result<()> {
        if after < self.gc_threshold {
            return Err(StorageError::BelowGcThreshold {
                requested: after,
                threshold: self.gc_threshold,
            });
        }
        let Some(it) = range_iterator(&self.engine.db, Some(&self.snapshot), span) else {
            return Ok(());
        };
        scan_history_impl(it, after, up_to, f)
    }

    pub fn gc_threshold(&self) -> Timestamp {
        self.gc_threshold
    }

    /// [`Engine::scan_versions`] on the snapshot: every version in `span` (tombstones and
    /// shadowed versions included), in key order and, per key, newest first (consistency
    /// checksums of a replica at one applied index).
    pub fn scan_versions(
        &self,
        span: &Span,
        f: &mut dyn FnMut(crate::VersionWrite) -> bool,
    ) -> Result<()> {
        crate::replicated::scan_versions_impl(
            range_iterator(&self.engine.db, Some(&self.snapshot), span),
            f,
        )
    }
}

/// The newest version of the key with MVCC `prefix` at or below `read_ts`, using a prefix-mode
/// iterator (bloom filters skip files without the key).
pub(crate) fn read_version_at(
    it: &mut DBRawIterator<'_>,
    prefix: &[u8],
    user_key: &[u8],
    read_ts: Timestamp,
) -> Result<Option<Version>> {
    Ok(read_key(it, prefix, user_key, read_ts)?.0)
}

/// The newest committed version of the key with MVCC `prefix` at or below `read_ts` (never an
/// intent, even at `Timestamp::MAX`), and the key's intent if it has one.
pub(crate) fn read_key(
    it: &mut DBRawIterator<'_>,
    prefix: &[u8],
    user_key: &[u8],
    read_ts: Timestamp,
) -> Result<(Option<Version>, Option<Intent>)> {
    let mut seek_key = Vec::with_capacity(prefix.len() + TIMESTAMP_BYTES);
    seek_key.extend_from_slice(prefix);
    encoding::push_ts(&mut seek_key, INTENT_TS);
    it.seek(&seek_key);
    let mut intent = None;
    loop {
        let Some((raw_key, raw_value)) = it.item() else {
            it.status().map_err(rocks)?;
            return Ok((None, intent));
        };
        let (found_prefix, ts) =
            encoding::split_mvcc_key(raw_key).map_err(|e| corruption(user_key, e))?;
        if found_prefix != prefix {
            return Ok((None, intent));
        }
        if ts == INTENT_TS {
            let version =
                encoding::decode_value(ts, raw_value).map_err(|e| corruption(user_key, e))?;
            intent = Some(Intent::from_version(user_key, &version)?);
            it.next();
            continue;
        }
        if ts > read_ts {
            seek_key.truncate(prefix.len());
            encoding::push_ts(&mut seek_key, read_ts);
            it.seek(&seek_key);
            let Some((raw_key, raw_value)) = it.item() else {
                it.status().map_err(rocks)?;
                return Ok((None, intent));
            };
            let (found_prefix, ts) =
                encoding::split_mvcc_key(raw_key).map_err(|e| corruption(user_key, e))?;
            if found_prefix != prefix {
                return Ok((None, intent));
            }
            let version =
                encoding::decode_value(ts, raw_value).map_err(|e| corruption(user_key, e))?;
            return Ok((Some(version), intent));
        }
        let version = encoding::decode_value(ts, raw_value).map_err(|e| corruption(user_key, e))?;
        return Ok((Some(version), intent));
    }
}

/// [`read_key`] for a reader: an intent written at or below `read_ts` is a conflict.
fn read_visible(
    it: &mut DBRawIterator<'_>,
    prefix: &[u8],
    user_key: &[u8],
    read_ts: Timestamp,
) -> Result<Option<Version>> {
    let (version, intent) = read_key(it, prefix, user_key, read_ts)?;
    match intent {
        Some(intent) if intent.write_ts <= read_ts => Err(StorageError::WriteIntent(Box::new(
            intent.conflict(user_key),
        ))),
        _ => Ok(version),
    }
}

/// A total-order iterator bounded to `span`'s MVCC keys, positioned at its start; `None` for
/// an empty span.
pub(crate) fn range_iterator<'a>(
    db: &'a DB,
    snapshot: Option<&rocksdb::Snapshot<'a>>,
    span: &Span,
) -> Option<DBRawIterator<'a>> {
    if span.is_empty() {
        return None;
    }
    let lower = encoding::mvcc_prefix(&span.start);
    let upper = encoding::mvcc_prefix(&span.end);
    let mut ro = ReadOptions::default();
    ro.set_total_order_seek(true);
    ro.set_iterate_lower_bound(lower.clone());
    ro.set_iterate_upper_bound(upper);
    if let Some(s) = snapshot {
        ro.set_snapshot(s);
    }
    let mut it = db.raw_iterator_opt(ro);
    it.seek(&lower);
    Some(it)
}

/// Moves `it` past every remaining version of the key with `prefix`: a few `next()`s (cheap
/// when a key has few versions), then one `seek()`.
fn skip_key(it: &mut DBRawIterator<'_>, prefix: &[u8]) {
    for _ in 0..NEXT_BEFORE_SEEK {
        it.next();
        match it.key() {
            None => return,
            Some(k) => {
                if encoding::prefix_extractor(k) != prefix {
                    return;
                }
            }
        }
    }
    it.seek(encoding::prefix_successor(prefix));
}

/// What a scan does when it meets an intent written at or below its read timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnIntent {
    /// Fail with [`StorageError::WriteIntent`] (a reader that must not miss a commit).
    Fail,
    /// Pass over it (reads at or below a closed timestamp, which every unresolved intent's
    /// write timestamp is above, and internal maintenance).
    Skip,
}

fn scan_impl(
    db: &DB,
    snapshot: Option<&rocksdb::Snapshot<'_>>,
    span: &Span,
    read_ts: Timestamp,
    limit: usize,
    on_intent: OnIntent,
) -> Result<Vec<KeyVersion>> {
    let mut out = Vec::new();
    scan_each_impl(db, snapshot, span, read_ts, on_intent, &mut |kv| {
        out.push(kv);
        limit == 0 || out.len() < limit
    })?;
    Ok(out)
}

fn scan_each_impl(
    db: &DB,
    snapshot: Option<&rocksdb::Snapshot<'_>>,
    span: &Span,
    read_ts: Timestamp,
    on_intent: OnIntent,
    f: &mut dyn FnMut(KeyVersion) -> bool,
) -> Result<()> {
    let Some(mut it) = range_iterator(db, snapshot, span) else {
        return Ok(());
    };
    let mut prefix = Vec::new();
    while let Some((raw_key, raw_value)) = it.item() {
        let (found_prefix, ts) =
            encoding::split_mvcc_key(raw_key).map_err(|e| corruption_raw(raw_key, e))?;
        prefix.clear();
        prefix.extend_from_slice(found_prefix);
        if ts == INTENT_TS && on_intent == OnIntent::Fail {
            let user_key =
                encoding::decode_prefix(&prefix).map_err(|e| corruption_raw(raw_key, e))?;
            let version =
                encoding::decode_value(ts, raw_value).map_err(|e| corruption(&user_key, e))?;
            let intent = Intent::from_version(&user_key, &version)?;
            if intent.write_ts <= read_ts {
                return Err(StorageError::WriteIntent(Box::new(
                    intent.conflict(&user_key),
                )));
            }
        }
        if ts == INTENT_TS {
            it.next();
            continue;
        }
        if ts > read_ts {
            // Jump to the newest version at or below read_ts (or the next key).
            let mut seek_key = prefix.clone();
            encoding::push_ts(&mut seek_key, read_ts);
            // The landing key may belong to the next user key; the loop re-examines it.
            it.seek(&seek_key);
            continue;
        }
        let user_key = encoding::decode_prefix(&prefix).map_err(|e| corruption_raw(raw_key, e))?;
        let version =
            encoding::decode_value(ts, raw_value).map_err(|e| corruption(&user_key, e))?;
        if !version.is_tombstone()
            && !f(KeyVersion {
                key: user_key,
                version,
            })
        {
            return Ok(());
        }
        skip_key(&mut it, &prefix);
    }
    it.status().map_err(rocks)
}

fn scan_history_impl(
    mut it: DBRawIterator<'_>,
    after: Timestamp,
    up_to: Timestamp,
    f: &mut dyn FnMut(HistoryEntry) -> bool,
) -> Result<()> {
    // Versions of the current key in (after, up_to], newest first, and the newest at or below
    // `after` (the prev of the oldest one).
    let mut prefix: Vec<u8> = Vec::new();
    let mut user_key: Vec<u8> = Vec::new();
    let mut versions: Vec<Version> = Vec::new();
    let mut below: Option<Version> = None;
    let mut in_key = false;
    let flush = |user_key: &[u8],
                 versions: &mut Vec<Version>,
                 below: &mut Option<Version>,
                 f: &mut dyn FnMut(HistoryEntry) -> bool|
     -> bool {
        let mut prev_value = below.take().and_then(|v| v.value);
        while let Some(version) = versions.pop() {
            let next_prev = version.value.clone();
            if !f(HistoryEntry {
                key: user_key.to_vec(),
                version,
                prev_value,
            }) {
                versions.clear();
                return false;
            }
            prev_value = next_prev;
        }
        true
    };
    while let Some((raw_key, raw_value)) = it.item() {
        let (found_prefix, ts) =
            encoding::split_mvcc_key(raw_key).map_err(|e| corruption_raw(raw_key, e))?;
        if !in_key || found_prefix != prefix.as_slice() {
            if in_key && !flush(&user_key, &mut versions, &mut below, f) {
                return Ok(());
            }
            prefix.clear();
            prefix.extend_from_slice(found_prefix);
            user_key = encoding::decode_prefix(&prefix).map_err(|e| corruption_raw(raw_key, e))?;
            in_key = true;
        }
        if ts > up_to || ts == INTENT_TS {
            // Intents are not history: their commit appears when they are resolved.
            it.next();
            continue;
        }
        let version =
            encoding::decode_value(ts, raw_value).map_err(|e| corruption(&user_key, e))?;
        if ts > after {
            versions.push(version);
            it.next();
        } else {
            below = Some(version);
            skip_key(&mut it, &prefix);
        }
    }
    it.status().map_err(rocks)?;
    if in_key {
        flush(&user_key, &mut versions, &mut below, f);
    }
    Ok(())
}
