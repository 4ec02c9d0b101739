//! The leaseholder's side of transactions (see `txn.rs`): writing intents while holding the
//! closed timestamp below them, resolving intents, and recovering intents whose coordinator
//! went away.
//!
//! Closed timestamps: a leaseholder that writes an intent keeps an in-flight registration
//! (`Engine::begin_write`) at or below the intent's write timestamp until the intent is
//! resolved here, or for at most [`HOLD_MAX`]: the transaction commits at or above that
//! timestamp, so its resolution lands above every closed timestamp published meanwhile and a
//! rangefeed never resolves past a commit it has not emitted yet. A lease that moves (or a
//! node that restarts) loses its holds; the recovery pass resolves what they covered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldr_replica::Command;
use ldr_storage::{InFlightWrite, IntentConflict, Resolution, TxnId, TxnMeta};
use ldr_types::Timestamp;
use tracing::{debug, info};

use crate::node::NodeInner;
use crate::replication::kv_error;
use crate::txn::{PushDecision, Pusher, TxnRecord, decide_push};
use crate::{KvClient, KvError, RangeDescriptor, Result};
use ldr_proto::pb;

/// Longest a leaseholder holds its closed timestamp for an unresolved intent.
const HOLD_MAX: Duration = Duration::from_secs(10);
/// A hold this old is checked against its transaction's record by the recovery pass.
const HOLD_RECOVER_AFTER: Duration = Duration::from_secs(3);
/// How often the recovery pass runs over holds, and over whole ranges.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(2);
const RANGE_SCAN_INTERVAL: Duration = Duration::from_secs(60);
/// Intents a range scan of the recovery pass looks at, at most.
const RANGE_SCAN_INTENTS_MAX: usize = 10_000;

/// Intents of one transaction on one range that this node wrote as leaseholder.
pub(crate) struct IntentHold {
    since: Instant,
    range: RangeDescriptor,
    keys: Vec<Vec<u8>>,
    record_key: Vec<u8>,
    /// Keeps the engine's closed timestamp below the intents' write timestamp.
    _in_flight: InFlightWrite,
}

/// A hold due for recovery: its transaction, record key, range and keys.
type DueHold = (TxnId, Vec<u8>, RangeDescriptor, Vec<Vec<u8>>);

/// Holds by transaction.
pub(crate) type IntentHolds = parking_lot::Mutex<HashMap<TxnId, Vec<IntentHold>>>;

impl NodeInner {
    /// Remembers intents just written (see the module doc).
    pub(crate) fn hold_intents(
        &self,
        txn: &TxnMeta,
        range: &RangeDescriptor,
        keys: Vec<Vec<u8>>,
        in_flight: InFlightWrite,
    ) {
        let now = Instant::now();
        let mut holds = self.intent_holds.lock();
        holds.retain(|_, h| {
            h.retain(|x| now.duration_since(x.since) < HOLD_MAX);
            !h.is_empty()
        });
        holds.entry(txn.txn_id).or_default().push(IntentHold {
            since: now,
            range: range.clone(),
            keys,
            record_key: txn.record_key.clone(),
            _in_flight: in_flight,
        });
    }

    /// Resolves `txn_id`'s intents on `keys` of `range_id` (this node must own the range or
    /// hold its lease). Returns how many intents were resolved.
    pub(crate) async fn serve_resolve(
        self: &Arc<Self>,
        range_id: ldr_types::RangeId,
        txn_id: TxnId,
        keys: Vec<Vec<u8>>,
        resolution: Resolution,
    ) -> Result<u64> {
        let Some(span) = span_of(&keys) else {
            return Ok(0);
        };
        let gate = self.single_copy_gate(range_id).await;
        let desc = self.check_owner(range_id, &span).await?;
        let resolved = if desc.is_replicated() {
            drop(gate);
            self.replicated_resolve(&desc, txn_id, keys, resolution)
                .await?
        } else {
            self.blocking(move |e| e.apply_resolve(&keys, &txn_id, resolution))
                .await? as u64
        };
        // Holds end with the transaction (a partial resolution keeps the hold until expiry);
        // a pushed transaction is still pending.
        if matches!(resolution, Resolution::Push(_)) {
            return Ok(resolved);
        }
        let mut holds = self.intent_holds.lock();
        if let Some(h) = holds.get_mut(&txn_id) {
            h.retain(|x| x.range.range_id != range_id);
            if h.is_empty() {
                holds.remove(&txn_id);
            }
        }
        Ok(resolved)
    }

    async fn replicated_resolve(
        self: &Arc<Self>,
        range: &RangeDescriptor,
        txn_id: TxnId,
        keys: Vec<Vec<u8>>,
        resolution: Resolution,
    ) -> Result<u64> {
        let me = self.node_id();
        let latch = self.range_latch(range.range_id);
        let _latch = latch.lock().await;
        let replica = self.leaseholder_replica(range)?;
        let writes = self
            .storage(keys.len() <= 64, move |e| {
                e.evaluate_resolve(&keys, &txn_id, resolution)
            })
            .await?;
        if writes.is_empty() {
            return Ok(0);
        }
        let resolved = writes
            .iter()
            .filter(|w| w.version.ts == ldr_storage::INTENT_TS)
            .count() as u64;
        let closed = self.engine.closed_timestamp();
        if let Resolution::Commit(ts) = resolution
            && ts <= closed
        {
            // The hold was lost (lease moved, node restarted): the commit lands below what
            // this node already closed. Rangefeeds still emit it; a consumer that checkpointed
            // past it was told so by a resolved timestamp (see docs/architecture.md).
            debug!(range_id = range.range_id, %ts, %closed, "resolving below the closed timestamp");
        }
        replica
            .propose(Command::new(&writes, closed))
            .await
            .map_err(|e| kv_error(e, me))?;
        Ok(resolved)
    }

    /// One pass of intent recovery: holds older than [`HOLD_RECOVER_AFTER`] are checked
    /// against their transactions' records and resolved when those finished or expired.
    pub(crate) async fn recover_held_intents(self: &Arc<Self>) {
        let now = Instant::now();
        // Holds end after HOLD_MAX, and as soon as this node no longer leads their range
        // (the new leaseholder publishes its own closed timestamps).
        let leads = |range: &RangeDescriptor| {
            !range.is_replicated()
                || self
                    .replica_store
                    .get()
                    .and_then(|s| s.replica(range.range_id))
                    .is_some_and(|r| r.check_lease().is_ok())
        };
        self.intent_holds.lock().retain(|_, h| {
            h.retain(|x| now.duration_since(x.since) < HOLD_MAX && leads(&x.range));
            !h.is_empty()
        });
        let due: Vec<DueHold> = {
            let holds = self.intent_holds.lock();
            holds
                .iter()
                .flat_map(|(id, hs)| {
                    hs.iter()
                        .filter(|h| now.duration_since(h.since) >= HOLD_RECOVER_AFTER)
                        .map(|h| (*id, h.record_key.clone(), h.range.clone(), h.keys.clone()))
                })
                .collect()
        };
        let client = self.client();
        for (txn_id, record_key, range, keys) in due {
            let meta = TxnMeta { txn_id, record_key };
            if let Err(e) = client.recover_intents(&meta, &range, keys).await {
                debug!(error = %e, "intent recovery failed");
            }
        }
    }

    /// Scans the ranges this node serves for intents older than the expiry and recovers them
    /// (holds lost to a lease move or a restart).
    pub(crate) async fn recover_range_intents(self: &Arc<Self>) -> Result<()> {
        let client = self.client();
        let Ok(store) = self.replicas() else {
            return Ok(());
        };
        let old = self
            .clock
            .now()
            .wall_time_ns
            .saturating_sub(crate::txn::EXPIRY.as_nanos() as u64);
        for replica in store.replicas() {
            if replica.check_lease().is_err() {
                continue;
            }
            let span = replica.span().clone();
            let intents = self
                .blocking(move |e| e.scan_intents(&span, RANGE_SCAN_INTENTS_MAX))
                .await?;
            let mut by_txn: HashMap<TxnId, (TxnMeta, Vec<Vec<u8>>)> = HashMap::new();
            for (key, intent) in intents {
                if intent.write_ts.wall_time_ns > old {
                    continue;
                }
                by_txn
                    .entry(intent.txn.txn_id)
                    .or_insert_with(|| (intent.txn.clone(), Vec::new()))
                    .1
                    .push(key);
            }
            if by_txn.is_empty() {
                continue;
            }
            let Ok(range) = client.range_for_key(&replica.span().start).await else {
                continue;
            };
            for (_, (meta, keys)) in by_txn {
                info!(
                    range_id = range.range_id,
                    intents = keys.len(),
                    txn = %ldr_storage::intent::txn_id_string(&meta.txn_id),
                    "recovering old intents"
                );
                if let Err(e) = client.recover_intents(&meta, &range, keys).await {
                    debug!(error = %e, "intent recovery failed");
                }
            }
        }
        Ok(())
    }

    /// Runs the recovery passes until the node stops.
    pub(crate) async fn intent_recovery_loop(self: Arc<Self>) {
        let mut last_scan = Instant::now();
        loop {
            tokio::time::sleep(RECOVERY_INTERVAL).await;
            if self.is_stopped() {
                return;
            }
            self.recover_held_intents().await;
            if last_scan.elapsed() >= RANGE_SCAN_INTERVAL {
                last_scan = Instant::now();
                if let Err(e) = self.recover_range_intents().await {
                    debug!(error = %e, "intent scan failed");
                }
            }
        }
    }
}

/// The smallest span holding every key (`None` when there are none).
fn span_of(keys: &[Vec<u8>]) -> Option<ldr_types::Span> {
    let min = keys.iter().min()?;
    let max = keys.iter().max()?;
    let mut end = max.clone();
    end.push(0);
    Some(ldr_types::Span::new(min.clone(), end))
}

impl KvClient {
    /// Resolves `txn_id`'s intents on `keys` of `range` at its owner.
    pub(crate) async fn resolve_on_range(
        &self,
        range: &RangeDescriptor,
        txn_id: &TxnId,
        keys: Vec<Vec<u8>>,
        resolution: Resolution,
    ) -> Result<u64> {
        let first = self
            .resolve_on_range_once(range, txn_id, keys.clone(), resolution)
            .await;
        match first {
            Err(KvError::RangeNotFound { .. }) if range.table_id.is_some() => {
                let fresh = self.refreshed_range(range).await?;
                self.resolve_on_range_once(&fresh, txn_id, keys, resolution)
                    .await
            }
            other => other,
        }
    }

    async fn resolve_on_range_once(
        &self,
        range: &RangeDescriptor,
        txn_id: &TxnId,
        keys: Vec<Vec<u8>>,
        resolution: Resolution,
    ) -> Result<u64> {
        self.on_leaseholder(range, |node_id| {
            let keys = keys.clone();
            async move {
                if node_id == self.node_id() {
                    return self
                        .inner
                        .serve_resolve(range.range_id, *txn_id, keys, resolution)
                        .await;
                }
                let request = pb::KvResolveIntentsRequest {
                    range_id: range.range_id,
                    txn_id: txn_id.to_vec(),
                    keys,
                    commit_ts: match resolution {
                        Resolution::Commit(ts) | Resolution::Push(ts) => Some(ts.into()),
                        Resolution::Abort => None,
                    },
                    push: matches!(resolution, Resolution::Push(_)),
                };
                let response = self
                    .call_owner(node_id, request, |mut c, r| async move {
                        c.resolve_intents(r).await
                    })
                    .await?;
                Ok(response.resolved)
            }
        })
        .await
    }

    /// Resolves `keys` of `range` if their transaction finished or expired (aborting an
    /// expired one first); leaves them while it is alive.
    pub(crate) async fn recover_intents(
        &self,
        txn: &TxnMeta,
        range: &RangeDescriptor,
        keys: Vec<Vec<u8>>,
    ) -> Result<()> {
        let Some(first) = keys.first().cloned() else {
            return Ok(());
        };
        loop {
            let found = self.get_once(&txn.record_key, None).await?;
            let record = found
                .and_then(|v| v.value)
                .map(|b| TxnRecord::decode(&b))
                .transpose()?;
            let now_ns = self.clock().physical_now_ns();
            match decide_push(&Pusher::Recovery, record.as_ref(), now_ns, Duration::ZERO) {
                PushDecision::Resolve(resolution) => {
                    self.resolve_on_range(range, &txn.txn_id, keys, resolution)
                        .await?;
                    return Ok(());
                }
                PushDecision::Abort(_) => {
                    // push_intent aborts the record (conditionally) and resolves `first`;
                    // the next round resolves the rest.
                    let conflict = IntentConflict {
                        key: first.clone(),
                        txn: txn.clone(),
                        write_ts: Timestamp::ZERO,
                        value: None,
                    };
                    self.push_intent(&conflict, &Pusher::Recovery).await?;
                }
                PushDecision::Wait | PushDecision::PushTimestamp(_) => return Ok(()),
            }
        }
    }
}
