//! The owner's side of the KV operations: a node serving a request for one of its ranges
//! (from a peer over gRPC, or from its own client in-process) first checks that it still owns
//! the range and that every key lies inside it, then runs the storage call off the async
//! threads.

use std::sync::Arc;

use ldr_storage::{ApplyResult, Condition, KeyVersion, RowWrite, ValueHeader, Version};
use ldr_types::{RangeId, Span, Timestamp};

use crate::node::NodeInner;
use crate::routing::{KeyRoute, route_key};
use crate::system::SYSTEM_RANGE_ID;
use crate::{KvError, RangeDescriptor, Result};

/// Keys tombstoned per batch when a dropped table's range is cleared.
const CLEAR_BATCH_KEYS: usize = 1000;

/// Writes of at most this many keys run inline on the calling task (see `NodeInner::storage`).
const SMALL_WRITE_KEYS: usize = 64;
/// Multi-key reads of at most this many keys run inline.
const SMALL_GET_KEYS: usize = 64;
/// Scans limited to at most this many rows run inline.
const SMALL_SCAN_ROWS: usize = 100;

impl NodeInner {
    /// The descriptor of `range_id` if this node owns it and it contains `span`.
    pub(crate) async fn check_owner(
        self: &Arc<Self>,
        range_id: RangeId,
        span: &Span,
    ) -> Result<RangeDescriptor> {
        let me = self.require_identity()?.node_id;
        if range_id == SYSTEM_RANGE_ID {
            let desc = self.system_range();
            self.leaseholder_replica(&desc)?;
            return contains(desc, span);
        }
        let table_id = match route_key(&span.start) {
            Ok(KeyRoute::Table { table_id, .. }) => table_id,
            _ => return Err(KvError::RangeNotFound { range_id }),
        };
        let lookup =
            |ranges: &[RangeDescriptor]| ranges.iter().find(|r| r.range_id == range_id).cloned();
        let load = || async {
            match self.client().load_table_ranges(table_id).await {
                Ok(ranges) => Ok(lookup(&ranges)),
                Err(KvError::NoRanges { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let cached = self.ranges.read().get(table_id).and_then(|r| lookup(&r));
        let desc = match cached {
            // A single-copy range this node is making a Raft group, or made one: the copy of
            // its descriptor cached here may predate the change.
            Some(d) if !d.is_replicated() && d.node_id == me && self.holds_replica(range_id) => {
                self.ranges.write().remove(table_id);
                load().await?
            }
            Some(d) => Some(d),
            None => load().await?,
        };
        match desc {
            Some(d) if d.is_replicated() => {
                self.leaseholder_replica(&d)?;
                contains(d, span)
            }
            Some(d) if d.node_id == me => contains(d, span),
            _ => Err(KvError::RangeNotFound { range_id }),
        }
    }

    /// The promotion gate, shared, for a request that may write `range_id` without Raft
    /// (see `NodeInner::promotion_gate`). Not for the system range: it is always a Raft
    /// group, and the promotion itself writes it while holding the gate.
    pub(crate) async fn single_copy_gate(
        &self,
        range_id: RangeId,
    ) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        if range_id == SYSTEM_RANGE_ID {
            return None;
        }
        Some(self.promotion_gate.read().await)
    }

    /// Whether this node holds a Raft replica of `range_id`.
    pub(crate) fn holds_replica(&self, range_id: RangeId) -> bool {
        self.replica_store
            .get()
            .is_some_and(|s| s.replica(range_id).is_some())
    }

    /// The timestamp a read is served at. A read at a given timestamp moves this node's
    /// clock up to it, so every later write here (an intent above all) lands above it: a
    /// transaction that writes a key after it was read cannot commit at or below the read's
    /// timestamp, which keeps multi-range reads at one timestamp consistent.
    fn read_timestamp(&self, read_ts: Option<Timestamp>) -> Timestamp {
        match read_ts {
            Some(ts) => {
                // Beyond the maximum offset the read still runs; the clock is not moved.
                let _ = self.clock.update(ts);
                ts
            }
            None => self.clock.now(),
        }
    }

    /// Waits until no write of `range` evaluated before this point is still being replicated:
    /// a read that moved the clock (see [`NodeInner::read_timestamp`]) then sees every write
    /// at or below its timestamp, intents included.
    async fn wait_for_writes(&self, range: &RangeDescriptor) {
        if range.is_replicated() {
            drop(self.range_latch(range.range_id).lock().await);
        }
    }

    pub(crate) async fn serve_get(
        self: &Arc<Self>,
        range_id: RangeId,
        key: Vec<u8>,
        read_ts: Option<Timestamp>,
    ) -> Result<Option<Version>> {
        let desc = self.check_owner(range_id, &point_span(&key)).await?;
        let read_ts = self.read_timestamp(read_ts);
        self.wait_for_writes(&desc).await;
        self.storage(true, move |e| e.get(&key, read_ts)).await
    }

    /// Point reads of keys of several ranges this node owns, at one read timestamp, in
    /// request order.
    pub(crate) async fn serve_get_many(
        self: &Arc<Self>,
        ranges: Vec<(RangeId, Vec<Vec<u8>>)>,
        read_ts: Option<Timestamp>,
    ) -> Result<Vec<Option<Version>>> {
        let mut descs = Vec::with_capacity(ranges.len());
        for (range_id, keys) in &ranges {
            if let (Some(min), Some(max)) = (keys.iter().min(), keys.iter().max()) {
                descs.push(
                    self.check_owner(*range_id, &Span::new(min.clone(), keys_after(max)))
                        .await?,
                );
            }
        }
        let read_ts = self.read_timestamp(read_ts);
        for desc in &descs {
            self.wait_for_writes(desc).await;
        }
        let count: usize = ranges.iter().map(|(_, k)| k.len()).sum();
        self.storage(count <= SMALL_GET_KEYS, move |e| {
            e.get_many(ranges.iter().flat_map(|(_, keys)| keys.iter()), read_ts)
        })
        .await
    }

    pub(crate) async fn serve_scan(
        self: &Arc<Self>,
        range_id: RangeId,
        span: Span,
        read_ts: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<KeyVersion>> {
        if span.is_empty() {
            return Ok(Vec::new());
        }
        let desc = self.check_owner(range_id, &span).await?;
        let read_ts = self.read_timestamp(read_ts);
        self.wait_for_writes(&desc).await;
        let small = (1..=SMALL_SCAN_ROWS).contains(&limit);
        self.storage(small, move |e| e.scan(&span, read_ts, limit))
            .await
    }

    pub(crate) async fn serve_write(
        self: &Arc<Self>,
        range_id: RangeId,
        rows: Vec<RowWrite>,
        atomic: bool,
        txn: Option<ldr_storage::TxnMeta>,
    ) -> Result<ApplyResult> {
        if rows.is_empty() {
            return Ok(ApplyResult {
                ts: self.clock.now(),
                outcomes: Vec::new(),
            });
        }
        let all_keys = rows.iter().flat_map(RowWrite::keys);
        let (min, max) = all_keys.fold((None::<&Vec<u8>>, None::<&Vec<u8>>), |(lo, hi), k| {
            (
                Some(lo.map_or(k, |l| l.min(k))),
                Some(hi.map_or(k, |h| h.max(k))),
            )
        });
        let (min, max) = (
            min.expect("rows are not empty"),
            max.expect("rows are not empty"),
        );
        let span = Span::new(min.clone(), keys_after(max));
        let gate = self.single_copy_gate(range_id).await;
        let desc = self.check_owner(range_id, &span).await?;
        if desc.is_replicated() {
            drop(gate);
            return self.replicated_write(&desc, rows, atomic, txn).await;
        }
        if let Some(txn) = txn {
            // Held from before the write, so at or below the intents' write timestamp.
            let hold = self.engine.begin_write(Timestamp::ZERO)?;
            let keys: Vec<Vec<u8>> = rows.iter().flat_map(RowWrite::keys).cloned().collect();
            let meta = txn.clone();
            let applied = self
                .storage(keys.len() <= SMALL_WRITE_KEYS, move |e| {
                    e.apply_txn(&rows, atomic, None, Some(&meta))
                })
                .await?;
            self.hold_intents(&txn, &desc, keys, hold);
            return Ok(applied);
        }
        let keys: usize = rows.iter().map(|r| 1 + r.dependents.len()).sum();
        self.storage(keys <= SMALL_WRITE_KEYS, move |e| {
            e.apply(&rows, atomic, None)
        })
        .await
    }

    /// Tombstones every live key of a dropped table's range and forgets the range. The
    /// tombstones are omitted from filtering rangefeeds.
    pub(crate) async fn serve_clear_range(
        self: &Arc<Self>,
        range_id: RangeId,
        span: Span,
    ) -> Result<u64> {
        let gate = self.single_copy_gate(range_id).await;
        let desc = self.check_owner(range_id, &span).await?;
        if desc.is_replicated() {
            drop(gate);
            let mut cleared = 0u64;
            loop {
                let scan_span = span.clone();
                let live = self
                    .blocking(move |e| {
                        e.scan_committed(&scan_span, Timestamp::MAX, CLEAR_BATCH_KEYS)
                    })
                    .await?;
                if live.is_empty() {
                    break;
                }
                cleared += live.len() as u64;
                self.replicated_write(&desc, tombstones(live), false, None)
                    .await?;
            }
            if let Some(table_id) = desc.table_id {
                self.ranges.write().remove(table_id);
            }
            return Ok(cleared);
        }
        let clock = self.clock.clone();
        let cleared = self
            .blocking(move |engine| {
                let mut cleared = 0u64;
                loop {
                    let live = engine.scan_committed(&span, clock.now(), CLEAR_BATCH_KEYS)?;
                    if live.is_empty() {
                        return Ok(cleared);
                    }
                    let rows = tombstones(live);
                    cleared += rows.len() as u64;
                    engine.apply(&rows, false, None)?;
                }
            })
            .await?;
        if let Some(table_id) = desc.table_id {
            self.ranges.write().remove(table_id);
        }
        Ok(cleared)
    }
}

/// Tombstones for the live keys of a dropped table (omitted from filtering rangefeeds).
fn tombstones(live: Vec<KeyVersion>) -> Vec<RowWrite> {
    live.into_iter()
        .map(|kv| RowWrite {
            key: kv.key,
            value: None,
            condition: Condition::None,
            header: ValueHeader {
                omit_in_rangefeeds: true,
                ..ValueHeader::default()
            },
            dependents: Vec::new(),
        })
        .collect()
}

fn contains(desc: RangeDescriptor, span: &Span) -> Result<RangeDescriptor> {
    if desc.span.contains(span) {
        Ok(desc)
    } else {
        Err(KvError::Internal(format!(
            "keys {span} are outside range {} {}",
            desc.range_id, desc.span
        )))
    }
}

/// The span holding exactly `key`.
fn point_span(key: &[u8]) -> Span {
    Span::new(key.to_vec(), keys_after(key))
}

/// The smallest key after `key`.
fn keys_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}
