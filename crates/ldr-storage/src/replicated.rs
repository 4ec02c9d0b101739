//! The storage side of replicated ranges: evaluating a write without applying it, applying
//! already-evaluated versions (what every replica of a range does with a Raft command),
//! node-local batches for Raft logs and hard state, and whole-span export, replacement and
//! checksums for snapshots and consistency checks.
//!
//! A range's leaseholder calls [`Engine::evaluate`] while it holds the latches of the keys
//! (the caller's) and keeps its closed timestamp below the evaluation's timestamp; it proposes
//! the resulting [`VersionWrite`]s through Raft, and every replica, the leaseholder included,
//! applies them with [`Engine::commit_versions`], so replicas never decide differently.

use ldr_types::keys::pretty_key;
use ldr_types::{Span, Timestamp};
use rocksdb::{ReadOptions, WriteBatch, WriteOptions};

use crate::encoding;
use crate::engine::{corruption, corruption_raw, range_iterator, read_version_at, rocks};
use crate::{Engine, Result, RowOutcome, RowWrite, StorageError, Version};

/// One version at an explicit timestamp: the evaluated form of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionWrite {
    pub key: Vec<u8>,
    pub version: Version,
}

/// A node-local (non-MVCC) operation; keys are the caller's local keys (the same keyspace as
/// [`Engine::put_local`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Deletes every local key in `[start, end)`.
    DeleteRange {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// The result of [`Engine::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The commit timestamp of `writes` (the provisional timestamp when nothing is written).
    pub ts: Timestamp,
    pub outcomes: Vec<crate::RowOutcome>,
    /// The versions to write, primary keys and dependents, all at `ts`.
    pub writes: Vec<VersionWrite>,
}

/// A planned version with the value it replaces (for the commit observer).
#[derive(Debug, Clone)]
pub(crate) struct PlannedWrite {
    pub(crate) write: VersionWrite,
    pub(crate) prev_value: Option<Vec<u8>>,
}

/// The decisions of one write and the versions it would write.
#[derive(Debug)]
pub(crate) struct WritePlan {
    pub(crate) outcomes: Vec<RowOutcome>,
    /// `None` when nothing is written.
    pub(crate) commit_ts: Option<Timestamp>,
    pub(crate) writes: Vec<PlannedWrite>,
}

impl WritePlan {
    pub(crate) fn nothing(outcomes: Vec<RowOutcome>) -> WritePlan {
        WritePlan {
            outcomes,
            commit_ts: None,
            writes: Vec::new(),
        }
    }
}

pub(crate) fn add_local_ops(batch: &mut WriteBatch, ops: &[LocalOp]) {
    for op in ops {
        match op {
            LocalOp::Put { key, value } => batch.put(
                encoding::local_user_key(key),
                encoding::encode_local_value(value),
            ),
            LocalOp::Delete { key } => batch.delete(encoding::local_user_key(key)),
            LocalOp::DeleteRange { start, end } => batch.delete_range(
                encoding::local_user_key(start),
                encoding::local_user_key(end),
            ),
        }
    }
}

pub(crate) fn duplicate_key_check<'a>(keys: impl Iterator<Item = &'a [u8]>) -> Result<()> {
    let mut all: Vec<&[u8]> = keys.collect();
    all.sort_unstable();
    match all.windows(2).find(|w| w[0] == w[1]) {
        Some(pair) => Err(StorageError::InvalidArgument(format!(
            "key {} is written twice in one batch",
            pretty_key(pair[0])
        ))),
        None => Ok(()),
    }
}

impl Engine {
    /// Decides `rows` as [`Engine::apply`] would, at a commit timestamp at or above
    /// `provisional`, without writing anything. The caller must hold the keys' latches until
    /// the returned versions are committed (or abandoned), and must keep every closed
    /// timestamp it publishes below `provisional` until then.
    pub fn evaluate(
        &self,
        rows: &[RowWrite],
        atomic: bool,
        provisional: Timestamp,
    ) -> Result<Evaluation> {
        duplicate_key_check(rows.iter().flat_map(|r| {
            std::iter::once(r.key.as_slice()).chain(r.dependents.iter().map(|(k, _)| k.as_slice()))
        }))?;
        let plan = self.plan_writes(rows, atomic, provisional, None, None)?;
        Ok(Evaluation {
            ts: plan.commit_ts.unwrap_or(provisional),
            outcomes: plan.outcomes,
            writes: plan.writes.into_iter().map(|w| w.write).collect(),
        })
    }

    /// Writes already-evaluated versions and node-local operations in one RocksDB batch (a
    /// replica applying a Raft command), telling the commit observer. The clock is forwarded
    /// to the newest version written.
    pub fn commit_versions(&self, writes: &[VersionWrite], local: &[LocalOp]) -> Result<()> {
        // A key may appear twice only as an intent's removal beside its committed version.
        duplicate_key_check(
            writes
                .iter()
                .filter(|w| w.version.ts != crate::INTENT_TS || w.version.value.is_some())
                .map(|w| w.key.as_slice()),
        )?;
        let wants_prev = self.observer.read().is_some();
        let mut it = wants_prev.then(|| self.point_iterator(None));
        let mut planned = Vec::with_capacity(writes.len());
        let mut newest = Timestamp::ZERO;
        for w in writes {
            if w.version.ts != crate::INTENT_TS {
                newest = newest.max(w.version.ts);
            }
            let prev_value = match it.as_mut() {
                Some(it) => read_version_at(
                    it,
                    &encoding::mvcc_prefix(&w.key),
                    &w.key,
                    w.version.ts.prev(),
                )?
                .and_then(|v| v.value),
                None => None,
            };
            planned.push(PlannedWrite {
                write: w.clone(),
                prev_value,
            });
        }
        drop(it);
        if !newest.is_zero() {
            self.clock().forward_to(newest);
        }
        self.write_versions(planned, local)
    }

    /// Applies node-local operations in one RocksDB batch; `sync` fsyncs the WAL (Raft log
    /// appends that must be durable before they are acknowledged).
    pub fn write_local_batch(&self, ops: &[LocalOp], sync: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        add_local_ops(&mut batch, ops);
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts).map_err(rocks)
    }

    /// Local keys in `[start, end)` with their values, in key order, at most `limit` (0 = no
    /// limit). Values are checksum-verified.
    pub fn scan_local(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.scan_local_each(start, end, false, &mut |k, v| {
            out.push((k, v));
            limit == 0 || out.len() < limit
        })?;
        Ok(out)
    }

    /// The last local key in `[start, end)` with its value.
    pub fn last_local(&self, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut last = None;
        self.scan_local_each(start, end, true, &mut |k, v| {
            last = Some((k, v));
            false
        })?;
        Ok(last)
    }

    fn scan_local_each(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        f: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> bool,
    ) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let lower = encoding::local_user_key(start);
        let upper = encoding::local_user_key(end);
        let prefix_len = lower.len() - start.len();
        let mut ro = ReadOptions::default();
        ro.set_total_order_seek(true);
        ro.set_iterate_lower_bound(lower.clone());
        ro.set_iterate_upper_bound(upper.clone());
        let mut it = self.db.raw_iterator_opt(ro);
        if reverse {
            it.seek_for_prev(&upper);
        } else {
            it.seek(&lower);
        }
        while let Some((raw_key, raw_value)) = it.item() {
            let key = raw_key[prefix_len..].to_vec();
            let value =
                encoding::decode_local_value(raw_value).map_err(|e| StorageError::Corruption {
                    key: format!("/Local/{}", pretty_key(&key)),
                    detail: e.0,
                })?;
            if !f(key, value) {
                return Ok(());
            }
            if reverse {
                it.prev();
            } else {
                it.next();
            }
        }
        it.status().map_err(rocks)
    }

    /// Calls `f` for every version in `span` (tombstones and shadowed versions included), in
    /// key order and, per key, newest first. Stops early when `f` returns `false`.
    pub fn scan_versions(
        &self,
        span: &Span,
        f: &mut dyn FnMut(VersionWrite) -> bool,
    ) -> Result<()> {
        scan_versions_impl(range_iterator(&self.db, None, span), f)
    }

    /// Replaces every version in `span` with `writes` (which must lie inside it) and applies
    /// `local`, in one RocksDB batch: installing a Raft snapshot. The commit observer is not
    /// told (rangefeeds on a replica that installs a snapshot must restart).
    pub fn replace_span(
        &self,
        span: &Span,
        writes: &[VersionWrite],
        local: &[LocalOp],
    ) -> Result<()> {
        if let Some(w) = writes.iter().find(|w| !span.contains_key(&w.key)) {
            return Err(StorageError::InvalidArgument(format!(
                "snapshot key {} is outside its span {span}",
                pretty_key(&w.key)
            )));
        }
        let mut batch = WriteBatch::default();
        if !span.is_empty() {
            batch.delete_range(
                encoding::mvcc_prefix(&span.start),
                encoding::mvcc_prefix(&span.end),
            );
        }
        let mut key_buf = Vec::new();
        let mut newest = Timestamp::ZERO;
        for w in writes {
            key_buf.clear();
            encoding::encode_prefix_into(&w.key, &mut key_buf);
            encoding::push_ts(&mut key_buf, w.version.ts);
            batch.put(
                &key_buf,
                encoding::encode_value(&w.version.header, w.version.value.as_deref()),
            );
            if w.version.ts != crate::INTENT_TS {
                newest = newest.max(w.version.ts);
            }
        }
        add_local_ops(&mut batch, local);
        if !newest.is_zero() {
            self.clock().forward_to(newest);
        }
        let _gate = self.commit_gate.write();
        self.forget_intents_in(span);
        for w in writes.iter().filter(|w| w.version.ts == crate::INTENT_TS) {
            self.track_intent(&w.key, Some(&w.version));
        }
        self.db.write_opt(batch, &self.write_opts).map_err(rocks)
    }

    /// A checksum over every version in `span` (keys, timestamps, headers, values) and the
    /// number of versions: equal on replicas that applied the same commands.
    pub fn span_checksum(&self, span: &Span) -> Result<SpanChecksum> {
        let mut crc = 0u32;
        let mut versions = 0u64;
        self.scan_versions(span, &mut |w| {
            versions += 1;
            crc = crc32c::crc32c_append(crc, &(w.key.len() as u64).to_be_bytes());
            crc = crc32c::crc32c_append(crc, &w.key);
            crc = crc32c::crc32c_append(
                crc,
                &encoding::encode_value(&w.version.header, w.version.value.as_deref()),
            );
            crc = crc32c::crc32c_append(crc, &w.version.ts.to_bytes());
            true
        })?;
        Ok(SpanChecksum { versions, crc })
    }
}

/// An evaluated write in flight (from evaluation until every version is committed): the
/// engine's closed timestamp stays below its provisional timestamp while it lives, so
/// rangefeeds on this node never resolve past a write that is still being replicated.
pub struct InFlightWrite {
    engine: std::sync::Arc<Engine>,
    in_flight: Option<crate::closed_ts::InFlight>,
}

impl InFlightWrite {
    /// The timestamp the write must evaluate at or above.
    pub fn provisional(&self) -> Timestamp {
        self.in_flight
            .as_ref()
            .map(|f| f.provisional)
            .unwrap_or(Timestamp::ZERO)
    }
}

impl Drop for InFlightWrite {
    fn drop(&mut self) {
        if let Some(f) = self.in_flight.take() {
            self.engine.tracker.deregister(f);
        }
    }
}

impl Engine {
    /// Registers a write that will be evaluated now and committed later (through Raft), at a
    /// fresh clock timestamp at or above `floor`.
    pub fn begin_write(self: &std::sync::Arc<Self>, floor: Timestamp) -> Result<InFlightWrite> {
        let now = self.clock().now();
        let explicit = (floor > now).then_some(floor);
        let in_flight = self
            .tracker
            .register(self.clock(), explicit)
            .map_err(|closed| StorageError::BelowClosedTimestamp { ts: floor, closed })?;
        Ok(InFlightWrite {
            engine: self.clone(),
            in_flight: Some(in_flight),
        })
    }
}

/// [`Engine::scan_versions`] over an iterator bounded to a span (`None`: an empty span).
pub(crate) fn scan_versions_impl(
    it: Option<rocksdb::DBRawIterator<'_>>,
    f: &mut dyn FnMut(VersionWrite) -> bool,
) -> Result<()> {
    let Some(mut it) = it else {
        return Ok(());
    };
    let mut prefix: Vec<u8> = Vec::new();
    let mut user_key: Vec<u8> = Vec::new();
    while let Some((raw_key, raw_value)) = it.item() {
        let (found_prefix, ts) =
            encoding::split_mvcc_key(raw_key).map_err(|e| corruption_raw(raw_key, e))?;
        if found_prefix != prefix.as_slice() {
            prefix.clear();
            prefix.extend_from_slice(found_prefix);
            user_key = encoding::decode_prefix(&prefix).map_err(|e| corruption_raw(raw_key, e))?;
        }
        let version =
            encoding::decode_value(ts, raw_value).map_err(|e| corruption(&user_key, e))?;
        if !f(VersionWrite {
            key: user_key.clone(),
            version,
        }) {
            return Ok(());
        }
        it.next();
    }
    it.status().map_err(rocks)
}

/// See [`Engine::span_checksum`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanChecksum {
    pub versions: u64,
    pub crc: u32,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ldr_types::Clock;

    use super::*;
    use crate::{Condition, EngineOptions, ValueHeader};

    fn open() -> (tempfile::TempDir, Arc<Engine>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(
            dir.path(),
            Arc::new(Clock::default()),
            EngineOptions::default(),
        )
        .expect("open");
        (dir, engine)
    }

    fn insert(key: &[u8], value: &[u8]) -> RowWrite {
        RowWrite {
            key: key.to_vec(),
            value: Some(value.to_vec()),
            condition: Condition::Expect(None),
            header: ValueHeader::default(),
            dependents: vec![(vec![b'i', key[0]], Some(b"pk".to_vec()))],
        }
    }

    #[test]
    fn evaluation_writes_nothing_and_its_versions_apply_identically_elsewhere() {
        let (_a_dir, leader) = open();
        let (_b_dir, follower) = open();
        let provisional = leader.clock().now();
        let eval = leader
            .evaluate(&[insert(b"a", b"1"), insert(b"b", b"2")], true, provisional)
            .expect("evaluate");
        assert!(eval.ts >= provisional);
        assert_eq!(eval.writes.len(), 4, "two rows and their index entries");
        assert!(leader.get(b"a", Timestamp::MAX).expect("get").is_none());
        for engine in [&leader, &follower] {
            engine.commit_versions(&eval.writes, &[]).expect("commit");
        }
        let all = Span::new(vec![0u8, 0, 1], vec![0xffu8]);
        assert_eq!(
            leader.span_checksum(&all).expect("checksum"),
            follower.span_checksum(&all).expect("checksum")
        );
        // The same insert again fails its condition against the applied state.
        let again = leader
            .evaluate(&[insert(b"a", b"1")], true, leader.clock().now())
            .expect("evaluate");
        assert!(matches!(
            again.outcomes[0],
            RowOutcome::ConditionFailed { .. }
        ));
        assert!(again.writes.is_empty());
        let dup = leader.evaluate(&[insert(b"a", b"1"), insert(b"a", b"2")], true, provisional);
        assert!(dup.is_err(), "a key twice is refused");
    }

    #[test]
    fn a_snapshot_scans_the_versions_it_was_taken_at() {
        let (_dir, engine) = open();
        let version = |ts: u64, value: Option<&[u8]>| Version {
            ts: Timestamp::new(ts, 0),
            header: ValueHeader::default(),
            value: value.map(<[u8]>::to_vec),
        };
        let write = |key: &[u8], v: Version| VersionWrite {
            key: key.to_vec(),
            version: v,
        };
        for batch in [
            vec![
                write(b"a", version(10, Some(b"1"))),
                write(b"b", version(15, Some(b"2"))),
            ],
            vec![write(b"a", version(20, None))],
        ] {
            engine.commit_versions(&batch, &[]).expect("commit");
        }
        let snapshot = engine.snapshot();
        engine
            .commit_versions(&[write(b"c", version(30, Some(b"3")))], &[])
            .expect("later commit");
        let span = Span::new(b"a".to_vec(), b"z".to_vec());
        let mut seen = Vec::new();
        snapshot
            .scan_versions(&span, &mut |w| {
                seen.push((w.key, w.version.ts.wall_time_ns, w.version.value));
                true
            })
            .expect("scan");
        assert_eq!(
            seen,
            vec![
                (b"a".to_vec(), 20, None),
                (b"a".to_vec(), 10, Some(b"1".to_vec())),
                (b"b".to_vec(), 15, Some(b"2".to_vec())),
            ],
            "key order, newest first, without the later commit"
        );
        let mut now = 0;
        engine
            .scan_versions(&span, &mut |_| {
                now += 1;
                true
            })
            .expect("scan");
        assert_eq!(now, 4);
    }

    #[test]
    fn local_batches_scan_in_order_and_delete_ranges() {
        let (_dir, engine) = open();
        let key = |i: u64| [b"log/".as_slice(), &i.to_be_bytes()].concat();
        let ops: Vec<LocalOp> = (1..=10u64)
            .map(|i| LocalOp::Put {
                key: key(i),
                value: i.to_string().into_bytes(),
            })
            .collect();
        engine.write_local_batch(&ops, true).expect("write");
        let got = engine.scan_local(&key(3), &key(6), 0).expect("scan");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].1, b"3");
        let last = engine.last_local(&key(0), &key(100)).expect("last");
        assert_eq!(last.map(|(_, v)| v), Some(b"10".to_vec()));
        engine
            .write_local_batch(
                &[LocalOp::DeleteRange {
                    start: key(8),
                    end: key(100),
                }],
                false,
            )
            .expect("truncate");
        let last = engine.last_local(&key(0), &key(100)).expect("last");
        assert_eq!(last.map(|(_, v)| v), Some(b"7".to_vec()));
        assert_eq!(
            engine
                .scan_local(&key(0), &key(100), 2)
                .expect("scan")
                .len(),
            2
        );
    }

    #[test]
    fn a_span_is_replaced_whole_with_its_history() {
        let (_a_dir, source) = open();
        let (_b_dir, target) = open();
        for v in [b"1", b"2", b"3"] {
            source
                .apply(
                    &[RowWrite {
                        key: b"k".to_vec(),
                        value: Some(v.to_vec()),
                        condition: Condition::None,
                        header: ValueHeader::default(),
                        dependents: vec![],
                    }],
                    true,
                    None,
                )
                .expect("apply");
        }
        target
            .commit_versions(
                &[VersionWrite {
                    key: b"stale".to_vec(),
                    version: Version {
                        ts: Timestamp::new(5, 0),
                        header: ValueHeader::default(),
                        value: Some(b"x".to_vec()),
                    },
                }],
                &[],
            )
            .expect("stale write");
        let span = Span::new(b"a".to_vec(), b"z".to_vec());
        let mut versions = Vec::new();
        source
            .scan_versions(&span, &mut |w| {
                versions.push(w);
                true
            })
            .expect("export");
        assert_eq!(versions.len(), 3, "every version, newest first");
        assert!(versions[0].version.ts > versions[2].version.ts);
        target
            .replace_span(
                &span,
                &versions,
                &[LocalOp::Put {
                    key: b"applied".to_vec(),
                    value: b"7".to_vec(),
                }],
            )
            .expect("install");
        assert_eq!(
            source.span_checksum(&span).expect("checksum"),
            target.span_checksum(&span).expect("checksum")
        );
        assert!(target.get(b"stale", Timestamp::MAX).expect("get").is_none());
        assert_eq!(
            target.get_local(b"applied").expect("local"),
            Some(b"7".to_vec())
        );
        let outside = [VersionWrite {
            key: b"zz".to_vec(),
            version: versions[0].version.clone(),
        }];
        assert!(target.replace_span(&span, &outside, &[]).is_err());
    }
}
