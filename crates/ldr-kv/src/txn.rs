//! Transactions across ranges: a transaction record, write intents, pushes and resolution
//! (CockroachDB's model, smaller).
//!
//! A transaction ([`KvTxn`]) first writes its **record**, PENDING, on the range of its anchor
//! key (`keys::txn_record_key`: beside the anchor, outside every index), then writes every
//! row as an **intent** (`ldr_storage::intent`) through the range's leaseholder and Raft like
//! any write. While it runs, its coordinator (the gateway) heartbeats the record every
//! [`HEARTBEAT_INTERVAL`]. Committing is one conditional write of the record: PENDING →
//! COMMITTED at the commit timestamp, the largest write timestamp of its intents. That write
//! is the commit point: before it, nothing of the transaction is visible; after it, all of
//! it is, because anyone who meets an intent looks up the record before reading past it.
//! The intents are then **resolved** asynchronously (each becomes a version at the commit
//! timestamp, or disappears on abort) and the record is deleted.
//!
//! Anyone who meets another transaction's intent (a reader at or above the intent's write
//! timestamp, or a writer of the key) **pushes** it ([`decide_push`]): a finished
//! transaction's intent is resolved at once; a PENDING one whose coordinator stopped
//! heartbeating for [`EXPIRY`] is aborted (its record made ABORTED by a conditional write,
//! which a late COMMIT then fails against); a transactional pusher older than the holder
//! aborts it (wound-wait: a transaction only ever waits for an older one, so waits never form
//! a cycle and no deadlock can arise); everyone else waits, polling the record, at most
//! [`PUSH_WAIT_MAX`].
//!
//! While a leaseholder holds an unresolved intent it wrote, its closed timestamp stays below
//! the intent's write timestamp (`intents.rs`), so rangefeeds never resolve past a commit that
//! is still to be written, and resolution lands above the closed timestamp.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ldr_storage::{
    Condition, IntentConflict, Resolution, RowOutcome, RowWrite, TxnId, TxnMeta, ValueHeader,
};
use ldr_types::{NodeId, Timestamp};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::{KvClient, KvError, RangeDescriptor, Result};

/// How often a coordinator heartbeats its transaction's record.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A PENDING record not heartbeated for this long belongs to a dead coordinator (CockroachDB:
/// five missed heartbeats).
pub const EXPIRY: Duration = Duration::from_secs(5);
/// How long a reader or writer waits for a live transaction's intent before giving up (40001).
pub const PUSH_WAIT_MAX: Duration = Duration::from_secs(10);
/// Pause between looks at a PENDING record, first and largest.
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(100);
/// How long the coordinator keeps trying to resolve its intents after the commit.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(30);

/// The state of a transaction record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    Pending,
    Committed,
    Aborted,
}

impl std::fmt::Display for TxnStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TxnStatus::Pending => "PENDING",
            TxnStatus::Committed => "COMMITTED",
            TxnStatus::Aborted => "ABORTED",
        })
    }
}

/// A transaction record as stored (JSON) at its record key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub status: TxnStatus,
    /// The gateway that runs the transaction.
    pub coordinator: NodeId,
    /// When the transaction began: its priority (older wins).
    pub start_ts: Timestamp,
    /// The coordinator's wall clock at its last heartbeat (ns since the epoch).
    pub heartbeat_ns: u64,
    /// Set when COMMITTED.
    #[serde(default)]
    pub commit_ts: Option<Timestamp>,
    /// Set when ABORTED: CockroachDB's abort reason.
    #[serde(default)]
    pub abort_reason: Option<String>,
}

impl TxnRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<TxnRecord> {
        serde_json::from_slice(bytes)
            .map_err(|e| KvError::Internal(format!("malformed transaction record: {e}")))
    }

    fn expired(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.heartbeat_ns) > EXPIRY.as_nanos() as u64
    }
}

/// The abort reasons CockroachDB names.
pub const ABORT_REASON_PUSHER_ABORTED: &str = "ABORT_REASON_PUSHER_ABORTED";
pub const ABORT_REASON_EXPIRED: &str = "ABORT_REASON_ABORTED_RECORD_FOUND";
pub const ABORT_REASON_CLIENT_REJECT: &str = "ABORT_REASON_CLIENT_REJECT";

/// Who meets an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pusher {
    /// A reader or a non-transactional writer: holds no intents, never aborts a live holder.
    NonTxn,
    /// A transaction: older ones win.
    Txn { txn_id: TxnId, start_ts: Timestamp },
    /// Background recovery of abandoned intents: never waits.
    Recovery,
}

/// What a pusher does about an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushDecision {
    /// The holder finished: resolve the intent this way and go on.
    Resolve(Resolution),
    /// Abort the holder (conditional write of its record), then resolve.
    Abort(&'static str),
    /// Wait and look again.
    Wait,
}

/// The push rule. `record` is the holder's record (`None`: gone, which happens only after
/// every intent of a finished transaction was resolved, or for a transaction whose record
/// was never written: either way the intent is dead).
pub fn decide_push(
    pusher: &Pusher,
    holder_id: &TxnId,
    record: Option<&TxnRecord>,
    now_ns: u64,
) -> PushDecision {
    let Some(record) = record else {
        return PushDecision::Resolve(Resolution::Abort);
    };
    match record.status {
        TxnStatus::Committed => match record.commit_ts {
            Some(ts) => PushDecision::Resolve(Resolution::Commit(ts)),
            // A committed record always has its timestamp; treat garbage as live.
            None => PushDecision::Wait,
        },
        TxnStatus::Aborted => PushDecision::Resolve(Resolution::Abort),
        TxnStatus::Pending if record.expired(now_ns) => PushDecision::Abort(ABORT_REASON_EXPIRED),
        TxnStatus::Pending => match pusher {
            Pusher::Txn { txn_id, start_ts }
                if (*start_ts, *txn_id) < (record.start_ts, *holder_id) =>
            {
                PushDecision::Abort(ABORT_REASON_PUSHER_ABORTED)
            }
            _ => PushDecision::Wait,
        },
    }
}

/// A running transaction's shared state (the coordinator's).
pub(crate) struct TxnState {
    pub(crate) meta: TxnMeta,
    pub(crate) start_ts: Timestamp,
    /// The record as this coordinator last wrote it (the expected value of its next write).
    record: tokio::sync::Mutex<TxnRecord>,
    /// Keys written per range (resolved after the end).
    written: Mutex<Vec<(RangeDescriptor, Vec<Vec<u8>>)>>,
    max_write_ts: Mutex<Timestamp>,
    finished: AtomicBool,
}

impl TxnState {
    pub(crate) fn pusher(&self) -> Pusher {
        Pusher::Txn {
            txn_id: self.meta.txn_id,
            start_ts: self.start_ts,
        }
    }

    pub(crate) fn note_written(&self, range: &RangeDescriptor, keys: Vec<Vec<u8>>, ts: Timestamp) {
        {
            let mut max = self.max_write_ts.lock();
            *max = (*max).max(ts);
        }
        let mut written = self.written.lock();
        match written
            .iter_mut()
            .find(|(r, _)| r.range_id == range.range_id)
        {
            Some((_, k)) => k.extend(keys),
            None => written.push((range.clone(), keys)),
        }
    }
}

/// A transaction across ranges. Writes through [`KvTxn::client`] are its intents; reads
/// through it see them. End it with [`KvTxn::commit`] or [`KvTxn::rollback`]; one dropped
/// unfinished is rolled back in the background.
pub struct KvTxn {
    client: KvClient,
    state: Arc<TxnState>,
}

impl std::fmt::Debug for KvTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KvTxn({})",
            ldr_storage::intent::txn_id_string(&self.state.meta.txn_id)
        )
    }
}

/// The record write of a status change, conditional on the record as last seen.
fn record_write(key: &[u8], expected: &TxnRecord, new: Option<&TxnRecord>) -> RowWrite {
    RowWrite {
        key: key.to_vec(),
        value: new.map(TxnRecord::encode),
        condition: Condition::Expect(Some(expected.encode())),
        header: record_header(),
        dependents: Vec::new(),
    }
}

/// Records never reach rangefeeds that filter (and they are outside every index span).
fn record_header() -> ValueHeader {
    ValueHeader {
        omit_in_rangefeeds: true,
        ..ValueHeader::default()
    }
}

impl KvClient {
    /// Begins a transaction whose record lives in the range of `anchor` (a table key, usually
    /// its first written key): writes the PENDING record and starts the heartbeat.
    pub async fn begin_txn(&self, anchor: &[u8]) -> Result<KvTxn> {
        let txn_id: TxnId = *uuid::Uuid::new_v4().as_bytes();
        let record_key = ldr_types::keys::txn_record_key(anchor, &txn_id).ok_or_else(|| {
            KvError::InvalidRequest(format!(
                "a transaction's anchor must be a table key, not {}",
                ldr_types::keys::pretty_key(anchor)
            ))
        })?;
        let start_ts = self.clock().now();
        let record = TxnRecord {
            status: TxnStatus::Pending,
            coordinator: self.node_id(),
            start_ts,
            heartbeat_ns: self.clock().physical_now_ns(),
            commit_ts: None,
            abort_reason: None,
        };
        let outcome = self
            .write_record(RowWrite {
                key: record_key.clone(),
                value: Some(record.encode()),
                condition: Condition::Expect(None),
                header: record_header(),
                dependents: Vec::new(),
            })
            .await?;
        if !matches!(outcome, RowOutcome::Written { .. }) {
            return Err(KvError::Internal("transaction id collision".into()));
        }
        let state = Arc::new(TxnState {
            meta: TxnMeta { txn_id, record_key },
            start_ts,
            record: tokio::sync::Mutex::new(record),
            written: Mutex::new(Vec::new()),
            max_write_ts: Mutex::new(Timestamp::ZERO),
            finished: AtomicBool::new(false),
        });
        let mut client = self.clone();
        client.txn = Some(state.clone());
        self.inner
            .spawn(heartbeat_loop(self.clone(), Arc::downgrade(&state)));
        Ok(KvTxn { client, state })
    }

    /// Pushes the transaction of an intent met by this client until it is out of the way:
    /// resolves a finished one's intent, aborts an abandoned (or, for an older transactional
    /// pusher, younger) one, else waits. Returns `Ok(false)` for [`Pusher::Recovery`] when
    /// the holder is alive. Fails with [`KvError::TxnConflict`] after [`PUSH_WAIT_MAX`], and
    /// with [`KvError::TxnAborted`] if this client's own transaction was aborted meanwhile.
    pub(crate) async fn push_intent(
        &self,
        conflict: &IntentConflict,
        pusher: &Pusher,
    ) -> Result<bool> {
        let deadline = Instant::now() + PUSH_WAIT_MAX;
        let mut pause = POLL_MIN;
        loop {
            let found = self.get_once(&conflict.txn.record_key, None).await?;
            let raw = found.and_then(|v| v.value);
            let record = match &raw {
                Some(bytes) => Some(TxnRecord::decode(bytes)?),
                None => None,
            };
            let now_ns = self.clock().physical_now_ns();
            match decide_push(pusher, &conflict.txn.txn_id, record.as_ref(), now_ns) {
                PushDecision::Resolve(resolution) => {
                    self.resolve_keys(&conflict.txn.txn_id, vec![conflict.key.clone()], resolution)
                        .await?;
                    return Ok(true);
                }
                PushDecision::Abort(reason) => {
                    let record = record.expect("only a found record is aborted");
                    let aborted = TxnRecord {
                        status: TxnStatus::Aborted,
                        abort_reason: Some(reason.to_string()),
                        ..record.clone()
                    };
                    let outcome = self
                        .write_record(record_write(
                            &conflict.txn.record_key,
                            &record,
                            Some(&aborted),
                        ))
                        .await?;
                    if matches!(outcome, RowOutcome::Written { .. }) {
                        debug!(
                            txn = %ldr_storage::intent::txn_id_string(&conflict.txn.txn_id),
                            reason,
                            "aborted a conflicting transaction"
                        );
                    }
                    // Look again: resolves on the next round (or finds it committed).
                    continue;
                }
                PushDecision::Wait => {
                    if *pusher == Pusher::Recovery {
                        return Ok(false);
                    }
                    if let Some(own) = &self.txn
                        && own.finished.load(Ordering::Acquire)
                    {
                        return Err(KvError::TxnAborted {
                            txn_id: ldr_storage::intent::txn_id_string(&own.meta.txn_id),
                            reason: ABORT_REASON_PUSHER_ABORTED.into(),
                        });
                    }
                    if Instant::now() >= deadline {
                        return Err(KvError::TxnConflict(format!(
                            "{conflict}: still pending after {}s",
                            PUSH_WAIT_MAX.as_secs()
                        )));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(POLL_MAX);
                }
            }
        }
    }

    /// Resolves `txn_id`'s intents on `keys` (any ranges), each range once.
    pub(crate) async fn resolve_keys(
        &self,
        txn_id: &TxnId,
        keys: Vec<Vec<u8>>,
        resolution: Resolution,
    ) -> Result<()> {
        let mut by_range: Vec<(RangeDescriptor, Vec<Vec<u8>>)> = Vec::new();
        for key in keys {
            let range = self.range_for_key(&key).await?;
            match by_range
                .iter_mut()
                .find(|(r, _)| r.range_id == range.range_id)
            {
                Some((_, k)) => k.push(key),
                None => by_range.push((range, vec![key])),
            }
        }
        for (range, keys) in by_range {
            self.resolve_on_range(&range, txn_id, keys, resolution)
                .await?;
        }
        Ok(())
    }
}

/// Heartbeats the record until the transaction finishes (or is gone).
async fn heartbeat_loop(client: KvClient, state: std::sync::Weak<TxnState>) {
    loop {
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        let Some(state) = state.upgrade() else { return };
        if state.finished.load(Ordering::Acquire) {
            return;
        }
        let mut record = state.record.lock().await;
        if state.finished.load(Ordering::Acquire) {
            return;
        }
        let next = TxnRecord {
            heartbeat_ns: client.clock().physical_now_ns(),
            ..record.clone()
        };
        match client
            .write_record(record_write(&state.meta.record_key, &record, Some(&next)))
            .await
        {
            Ok(RowOutcome::Written { .. }) => *record = next,
            Ok(_) => {
                // Pushed: aborted by someone else. The commit will find out.
                debug!(
                    txn = %ldr_storage::intent::txn_id_string(&state.meta.txn_id),
                    "transaction record changed under its coordinator"
                );
                return;
            }
            Err(e) => debug!(error = %e, "transaction heartbeat failed"),
        }
    }
}

impl KvTxn {
    /// A client whose writes are this transaction's intents.
    pub fn client(&self) -> &KvClient {
        &self.client
    }

    /// Whether this transaction wrote `key` (an intent of it may be there).
    pub fn wrote(&self, key: &[u8]) -> bool {
        self.state
            .written
            .lock()
            .iter()
            .any(|(_, keys)| keys.iter().any(|k| k == key))
    }

    pub fn id(&self) -> String {
        ldr_storage::intent::txn_id_string(&self.state.meta.txn_id)
    }

    /// Commits: the record becomes COMMITTED at the largest write timestamp of the
    /// transaction's intents, then the intents are resolved in the background. Fails with
    /// [`KvError::TxnAborted`] if the transaction was aborted by a pusher (nothing of it is
    /// applied), with [`KvError::AmbiguousResult`] if the record's leaseholder did not answer
    /// and the record could not be read back.
    pub async fn commit(self) -> Result<Timestamp> {
        let state = self.state.clone();
        let client = self.client.clone();
        let mut record = state.record.lock().await;
        let written = state.written.lock().clone();
        if written.is_empty() {
            state.finished.store(true, Ordering::Release);
            let expected = record.clone();
            drop(record);
            let _ = client
                .write_record(record_write(&state.meta.record_key, &expected, None))
                .await;
            return Ok(client.clock().now());
        }
        let commit_ts = *state.max_write_ts.lock();
        let committed = TxnRecord {
            status: TxnStatus::Committed,
            commit_ts: Some(commit_ts),
            heartbeat_ns: client.clock().physical_now_ns(),
            ..record.clone()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = loop {
            let attempt = client
                .write_record(record_write(
                    &state.meta.record_key,
                    &record,
                    Some(&committed),
                ))
                .await;
            match attempt {
                Ok(RowOutcome::Written { .. }) => break Ok(commit_ts),
                Ok(o) => {
                    let actual = match o {
                        RowOutcome::ConditionFailed { actual } => actual.and_then(|v| v.value),
                        _ => None,
                    };
                    match actual.as_deref().map(TxnRecord::decode).transpose()? {
                        Some(r) if r == committed => break Ok(commit_ts),
                        Some(r) if r.status == TxnStatus::Pending => {
                            // Our own heartbeat raced; retry against what is there.
                            *record = r;
                            continue;
                        }
                        other => {
                            let reason = other
                                .and_then(|r| r.abort_reason)
                                .unwrap_or_else(|| ABORT_REASON_EXPIRED.to_string());
                            break Err(KvError::TxnAborted {
                                txn_id: self.id(),
                                reason,
                            });
                        }
                    }
                }
                Err(e) if e.is_ambiguous() || matches!(e, KvError::NodeUnavailable { .. }) => {
                    // Find out what happened from the record itself.
                    if Instant::now() >= deadline {
                        break Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match client.get_once(&state.meta.record_key, None).await {
                        Ok(found) => {
                            let r = found
                                .and_then(|v| v.value)
                                .map(|b| TxnRecord::decode(&b))
                                .transpose()?;
                            match r {
                                Some(r) if r == committed => break Ok(commit_ts),
                                Some(r) if r.status == TxnStatus::Pending => {
                                    *record = r;
                                    continue;
                                }
                                Some(r) => {
                                    break Err(KvError::TxnAborted {
                                        txn_id: self.id(),
                                        reason: r
                                            .abort_reason
                                            .unwrap_or_else(|| ABORT_REASON_EXPIRED.into()),
                                    });
                                }
                                None => {
                                    break Err(KvError::TxnAborted {
                                        txn_id: self.id(),
                                        reason: ABORT_REASON_EXPIRED.into(),
                                    });
                                }
                            }
                        }
                        Err(_) => continue,
                    }
                }
                Err(e) => break Err(e),
            }
        };
        state.finished.store(true, Ordering::Release);
        let final_record = match &result {
            Ok(_) => Some(committed),
            Err(_) => None,
        };
        drop(record);
        let resolution = match &result {
            Ok(ts) => Some(Resolution::Commit(*ts)),
            Err(KvError::TxnAborted { .. }) => Some(Resolution::Abort),
            // Ambiguous: leave the intents to whoever meets them (they read the record).
            Err(_) => None,
        };
        if let Some(resolution) = resolution {
            client.inner.spawn(finish(
                client.clone(),
                state.clone(),
                written,
                resolution,
                final_record,
            ));
        }
        result
    }

    /// Walks away as a crashed coordinator would (fault injection and tests): stops the
    /// heartbeat and leaves the record PENDING and the intents in place, for pushers and the
    /// recovery pass to abort once the record expires.
    pub fn abandon(self) {
        self.state.finished.store(true, Ordering::Release);
    }

    /// Aborts: the record becomes ABORTED and the intents are removed in the background.
    pub async fn rollback(self) {
        abort(self.client.clone(), self.state.clone()).await;
    }
}

impl Drop for KvTxn {
    fn drop(&mut self) {
        if !self.state.finished.load(Ordering::Acquire) {
            let client = self.client.clone();
            let state = self.state.clone();
            self.client
                .inner
                .spawn(async move { abort(client, state).await });
        }
    }
}

async fn abort(client: KvClient, state: Arc<TxnState>) {
    if state.finished.swap(true, Ordering::AcqRel) {
        return;
    }
    let record = state.record.lock().await.clone();
    let aborted = TxnRecord {
        status: TxnStatus::Aborted,
        abort_reason: Some(ABORT_REASON_CLIENT_REJECT.into()),
        ..record.clone()
    };
    match client
        .write_record(record_write(
            &state.meta.record_key,
            &record,
            Some(&aborted),
        ))
        .await
    {
        Ok(_) => {}
        Err(e) => {
            // Whoever meets the intents aborts the record once it expires.
            debug!(error = %e, "could not abort a transaction record");
            return;
        }
    }
    let written = state.written.lock().clone();
    finish(client, state, written, Resolution::Abort, Some(aborted)).await;
}

/// Resolves every intent of a finished transaction, then deletes its record.
async fn finish(
    client: KvClient,
    state: Arc<TxnState>,
    written: Vec<(RangeDescriptor, Vec<Vec<u8>>)>,
    resolution: Resolution,
    record: Option<TxnRecord>,
) {
    let deadline = Instant::now() + RESOLVE_DEADLINE;
    for (range, keys) in written {
        loop {
            match client
                .resolve_on_range(&range, &state.meta.txn_id, keys.clone(), resolution)
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    debug!(range_id = range.range_id, error = %e, "intent resolution failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    // The intents stay until someone meets them (or the recovery pass).
                    warn!(range_id = range.range_id, error = %e, "gave up resolving intents");
                    return;
                }
            }
        }
    }
    // Every intent is resolved: the record can go (an aborted one unconditionally, whoever
    // wrote it; an intent met later without a record is treated as aborted).
    let delete = match (record, resolution) {
        (Some(record), _) => record_write(&state.meta.record_key, &record, None),
        (None, Resolution::Abort) => RowWrite {
            key: state.meta.record_key.clone(),
            value: None,
            condition: Condition::None,
            header: record_header(),
            dependents: Vec::new(),
        },
        (None, Resolution::Commit(_)) => return,
    };
    let _ = client.write_record(delete).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: TxnStatus, start: u64, heartbeat_ns: u64) -> TxnRecord {
        TxnRecord {
            status,
            coordinator: 1,
            start_ts: Timestamp::new(start, 0),
            heartbeat_ns,
            commit_ts: (status == TxnStatus::Committed).then(|| Timestamp::new(start + 10, 0)),
            abort_reason: None,
        }
    }

    const NOW: u64 = 100_000_000_000;
    const HOLDER: TxnId = [5; 16];

    #[test]
    fn finished_holders_are_resolved() {
        let c = record(TxnStatus::Committed, 1, NOW);
        assert_eq!(
            decide_push(&Pusher::NonTxn, &HOLDER, Some(&c), NOW),
            PushDecision::Resolve(Resolution::Commit(Timestamp::new(11, 0)))
        );
        let a = record(TxnStatus::Aborted, 1, NOW);
        assert_eq!(
            decide_push(&Pusher::NonTxn, &HOLDER, Some(&a), NOW),
            PushDecision::Resolve(Resolution::Abort)
        );
        assert_eq!(
            decide_push(&Pusher::Recovery, &HOLDER, None, NOW),
            PushDecision::Resolve(Resolution::Abort),
            "an intent without a record is dead"
        );
    }

    #[test]
    fn expired_holders_are_aborted_by_anyone() {
        let stale = NOW - EXPIRY.as_nanos() as u64 - 1;
        let p = record(TxnStatus::Pending, 1, stale);
        for pusher in [Pusher::NonTxn, Pusher::Recovery] {
            assert_eq!(
                decide_push(&pusher, &HOLDER, Some(&p), NOW),
                PushDecision::Abort(ABORT_REASON_EXPIRED)
            );
        }
        let fresh = record(TxnStatus::Pending, 1, NOW - EXPIRY.as_nanos() as u64);
        assert_eq!(
            decide_push(&Pusher::NonTxn, &HOLDER, Some(&fresh), NOW),
            PushDecision::Wait
        );
    }

    #[test]
    fn older_transactions_wound_younger_ones_and_younger_ones_wait() {
        let holder = record(TxnStatus::Pending, 50, NOW);
        let older = Pusher::Txn {
            txn_id: [9; 16],
            start_ts: Timestamp::new(40, 0),
        };
        let younger = Pusher::Txn {
            txn_id: [1; 16],
            start_ts: Timestamp::new(60, 0),
        };
        assert_eq!(
            decide_push(&older, &HOLDER, Some(&holder), NOW),
            PushDecision::Abort(ABORT_REASON_PUSHER_ABORTED)
        );
        assert_eq!(
            decide_push(&younger, &HOLDER, Some(&holder), NOW),
            PushDecision::Wait
        );
        // Same start: the id breaks the tie, so exactly one of two wins.
        let a = Pusher::Txn {
            txn_id: [1; 16],
            start_ts: Timestamp::new(50, 0),
        };
        assert_eq!(
            decide_push(&a, &HOLDER, Some(&holder), NOW),
            PushDecision::Abort(ABORT_REASON_PUSHER_ABORTED)
        );
        let b = Pusher::Txn {
            txn_id: [9; 16],
            start_ts: Timestamp::new(50, 0),
        };
        assert_eq!(
            decide_push(&b, &HOLDER, Some(&holder), NOW),
            PushDecision::Wait
        );
    }

    #[test]
    fn waits_never_form_a_cycle() {
        // Wound-wait: in any set of pending transactions, "t waits for h" implies t is
        // younger than h, so following waits strictly increases age: no cycle.
        let txns: Vec<(TxnId, u64)> = (0u8..6).map(|i| ([i; 16], u64::from(i % 3))).collect();
        for (tid, tstart) in &txns {
            for (hid, hstart) in &txns {
                if tid == hid {
                    continue;
                }
                let holder = record(TxnStatus::Pending, *hstart, NOW);
                let pusher = Pusher::Txn {
                    txn_id: *tid,
                    start_ts: Timestamp::new(*tstart, 0),
                };
                let reverse_holder = record(TxnStatus::Pending, *tstart, NOW);
                let reverse_pusher = Pusher::Txn {
                    txn_id: *hid,
                    start_ts: Timestamp::new(*hstart, 0),
                };
                let waits = decide_push(&pusher, hid, Some(&holder), NOW) == PushDecision::Wait;
                let waits_back = decide_push(&reverse_pusher, tid, Some(&reverse_holder), NOW)
                    == PushDecision::Wait;
                assert!(
                    !(waits && waits_back),
                    "{tid:?} and {hid:?} wait for each other"
                );
                assert!(waits || waits_back, "exactly one of two wounds the other");
            }
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let r = record(TxnStatus::Committed, 3, 7);
        assert_eq!(TxnRecord::decode(&r.encode()).expect("decodes"), r);
        assert!(TxnRecord::decode(b"{").is_err());
    }
}
