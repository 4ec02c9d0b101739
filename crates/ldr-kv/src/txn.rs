//! Transactions across ranges: a transaction record, write intents, pushes and resolution
//! (CockroachDB's model, smaller).
//!
//! A transaction ([`KvTxn`]) first writes its **record**, PENDING, on the range of its anchor
//! key (`keys::txn_record_key`: beside the anchor, outside every index), then writes every
//! row as an **intent** (`ldr_storage::intent`) through the range's leaseholder and Raft like
//! any write. While it runs, its coordinator (the gateway) heartbeats the record every
//! [`HEARTBEAT_INTERVAL`]. Committing is one conditional write of the record: PENDING →
//! COMMITTED at the commit timestamp, the largest of its intents' write timestamps and of the
//! timestamp readers pushed it to. That write is the commit point: before it, nothing of the
//! transaction is visible; after it, all of it is, because anyone who meets an intent looks
//! up the record before reading past it. The intents are then **resolved** asynchronously
//! (each becomes a version at the commit timestamp, or disappears on abort) and the record is
//! deleted.
//!
//! Anyone who meets another transaction's intent (a reader at or above the intent's write
//! timestamp, or a writer of the key) **pushes** it ([`decide_push`]):
//! - a finished transaction's intent is resolved at once;
//! - a PENDING one whose coordinator stopped heartbeating for [`EXPIRY`] is aborted (its
//!   record made ABORTED by a conditional write, which a late COMMIT then fails against);
//! - a reader at `read_ts` that still finds a live transaction after [`READER_PUSH_DELAY`]
//!   pushes its **timestamp** (PUSH_TIMESTAMP): the record's `pushed_ts` becomes at least
//!   `read_ts.next()`, so the transaction commits above the read, and the intent is moved up
//!   to it (`Resolution::Push`); the reader then reads past it (the previous committed
//!   value) instead of waiting for the transaction to end;
//! - a writer waits, polling the record, at most [`PUSH_WAIT_MAX`] (then 40001 naming the
//!   holder). A waiting transaction records the edge "I wait for X" in its own record and
//!   periodically walks the waits-for graph through the records (`txnwait.rs`): a cycle is a
//!   deadlock, and its youngest member is aborted (`ABORT_REASON_PUSHER_ABORTED`, naming the
//!   transaction it conflicted with). The oldest transaction of a cycle is never aborted, so
//!   the oldest transaction of all always makes progress.
//!
//! A transaction pushed above the timestamp its reads were validated at must refresh them
//! before committing ([`KvTxn::try_commit`] answers [`CommitAttempt::Pushed`]); one whose
//! reads are all covered by its intents' conditions commits at the pushed timestamp
//! ([`KvTxn::commit`]).
//!
//! While a leaseholder holds an unresolved intent it wrote, its closed timestamp stays below
//! the intent's write timestamp (`intents.rs`; moving an intent up keeps it below the new
//! one), so rangefeeds never resolve past a commit that is still to be written, and
//! resolution lands above the closed timestamp.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ldr_storage::{
    Condition, IntentConflict, Resolution, RowOutcome, RowWrite, TxnId, TxnMeta, ValueHeader,
};
use ldr_types::{NodeId, Timestamp};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::txnwait::{WAITING_FOR_MAX, WALK_RECORDS_MAX, WaitNode, find_deadlock};
use crate::{KvClient, KvError, RangeDescriptor, Result};

/// How often a coordinator heartbeats its transaction's record.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A PENDING record not heartbeated for this long belongs to a dead coordinator (CockroachDB:
/// five missed heartbeats).
pub const EXPIRY: Duration = Duration::from_secs(5);
/// How long a writer waits for a live transaction's intent before giving up (40001).
pub const PUSH_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long a reader waits for a live transaction's intent before pushing its timestamp
/// (CockroachDB's `kv.lock_table.coordinator_liveness_push_delay`, 50 ms): most
/// transactions finish sooner, and a push costs two replicated writes (the record and the
/// intent moved) and a refresh of the pushed transaction's reads.
pub const READER_PUSH_DELAY: Duration = Duration::from_millis(50);
/// Pause between looks at a PENDING record, first and largest.
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(100);
/// A transaction that has waited this long records whom it waits for (shorter waits, the
/// common case, cost no record write).
const WAIT_EDGE_AFTER: Duration = Duration::from_millis(20);
/// How often a waiting transaction looks for a cycle of waits (CockroachDB:
/// `dependencyCyclePushDelay`, 100 ms).
const DEADLOCK_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long the coordinator keeps trying to resolve its intents after the commit.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(30);
/// Conditional rewrites of its own record a coordinator tries before giving up (each lost
/// race is a pusher's change, adopted and retried).
const RECORD_UPDATE_ATTEMPTS_MAX: usize = 50;

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

/// An edge of the waits-for graph: the transaction waited for and where its record is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingFor {
    pub txn_id: TxnId,
    pub record_key: Vec<u8>,
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
    /// Set when a pusher aborted it: the transaction it conflicted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_by: Option<String>,
    /// The transactions it waits for now (edges of the waits-for graph, `txnwait.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<WaitingFor>,
    /// The smallest timestamp it may commit at: readers pushed it above their reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_ts: Option<Timestamp>,
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

    /// The record made ABORTED for `reason`, by the transaction `by` when a pusher.
    fn aborted(&self, reason: &str, by: Option<String>) -> TxnRecord {
        TxnRecord {
            status: TxnStatus::Aborted,
            abort_reason: Some(reason.to_string()),
            aborted_by: by,
            waiting_for: Vec::new(),
            ..self.clone()
        }
    }
}

/// The abort reasons CockroachDB names.
pub const ABORT_REASON_PUSHER_ABORTED: &str = "ABORT_REASON_PUSHER_ABORTED";
pub const ABORT_REASON_EXPIRED: &str = "ABORT_REASON_ABORTED_RECORD_FOUND";
pub const ABORT_REASON_CLIENT_REJECT: &str = "ABORT_REASON_CLIENT_REJECT";

/// Who meets an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pusher {
    /// A non-transactional writer, or a reader without a fixed timestamp: holds no intents,
    /// waits.
    NonTxn,
    /// A non-transactional reader at a fixed timestamp: pushes the holder above it.
    Reader { read_ts: Timestamp },
    /// A transaction (writing, or reading through its client): waits, and looks for
    /// deadlocks while it does.
    Txn,
    /// Background recovery of abandoned intents: never waits.
    Recovery,
}

/// What a pusher does about an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushDecision {
    /// The holder finished (or was pushed above the read): resolve (or move) the intent this
    /// way and go on.
    Resolve(Resolution),
    /// Abort the holder (conditional write of its record), then resolve.
    Abort(&'static str),
    /// Push the holder's record to commit at or above this timestamp, then move the intent.
    PushTimestamp(Timestamp),
    /// Wait and look again.
    Wait,
}

/// The push rule. `record` is the holder's record (`None`: gone, which happens only after
/// every intent of a finished transaction was resolved, or for a transaction whose record
/// was never written: either way the intent is dead); `waited` is how long the pusher has
/// waited for it so far.
pub fn decide_push(
    pusher: &Pusher,
    record: Option<&TxnRecord>,
    now_ns: u64,
    waited: Duration,
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
            Pusher::Reader { read_ts } => match record.pushed_ts {
                Some(pushed) if pushed > *read_ts => {
                    PushDecision::Resolve(Resolution::Push(pushed))
                }
                _ if waited >= READER_PUSH_DELAY => PushDecision::PushTimestamp(read_ts.next()),
                _ => PushDecision::Wait,
            },
            _ => PushDecision::Wait,
        },
    }
}

/// The timestamp a transaction commits at: its largest intent write timestamp, or the
/// timestamp readers pushed it to when that is larger.
pub fn commit_timestamp(max_write_ts: Timestamp, pushed_ts: Option<Timestamp>) -> Timestamp {
    pushed_ts.map_or(max_write_ts, |p| p.max(max_write_ts))
}

/// What a coordinator does at COMMIT whose reads were validated up to `refreshed_to`:
/// commit at `commit_ts` when the reads cover it, else refresh them up to the commit
/// timestamp first.
pub fn commit_decision(
    max_write_ts: Timestamp,
    pushed_ts: Option<Timestamp>,
    refreshed_to: Timestamp,
) -> CommitAttempt {
    let ts = commit_timestamp(max_write_ts, pushed_ts);
    if ts > max_write_ts && ts > refreshed_to {
        CommitAttempt::Pushed(ts)
    } else {
        CommitAttempt::Committed(ts)
    }
}

/// The outcome of [`KvTxn::try_commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitAttempt {
    /// Committed at this timestamp.
    Committed(Timestamp),
    /// Not committed: a reader pushed the transaction to this timestamp, above the one its
    /// reads were validated at. Refresh them up to it and try again.
    Pushed(Timestamp),
}

/// A running transaction's shared state (the coordinator's).
pub(crate) struct TxnState {
    pub(crate) meta: TxnMeta,
    pub(crate) start_ts: Timestamp,
    /// The record as this coordinator last wrote (or found) it: the expected value of its
    /// next write.
    record: tokio::sync::Mutex<TxnRecord>,
    /// Keys written per range (resolved after the end).
    written: Mutex<Vec<(RangeDescriptor, Vec<Vec<u8>>)>>,
    max_write_ts: Mutex<Timestamp>,
    finished: AtomicBool,
}

impl TxnState {
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

    fn id_string(&self) -> String {
        ldr_storage::intent::txn_id_string(&self.meta.txn_id)
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

/// The record a failed conditional write found (`None`: none).
fn found_record(outcome: RowOutcome) -> Result<Option<TxnRecord>> {
    match outcome {
        RowOutcome::ConditionFailed { actual } => actual
            .and_then(|v| v.value)
            .map(|b| TxnRecord::decode(&b))
            .transpose(),
        _ => Ok(None),
    }
}

/// What a coordinator's rewrite of its own record ended with.
enum OwnUpdate {
    Written(TxnRecord),
    /// The record is no longer PENDING (a pusher aborted it) or is gone.
    Finished(Option<TxnRecord>),
}

/// The error of a transaction found aborted by someone else.
fn aborted_error(state: &TxnState, record: Option<&TxnRecord>) -> KvError {
    KvError::TxnAborted {
        txn_id: state.id_string(),
        reason: record
            .and_then(|r| r.abort_reason.clone())
            .unwrap_or_else(|| ABORT_REASON_EXPIRED.into()),
        conflicting: record.and_then(|r| r.aborted_by.clone()),
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
            aborted_by: None,
            waiting_for: Vec::new(),
            pushed_ts: None,
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

    /// Reads a transaction record (`None`: absent).
    async fn read_record(&self, key: &[u8]) -> Result<Option<TxnRecord>> {
        let found = self.get_once(key, None).await?;
        found
            .and_then(|v| v.value)
            .map(|b| TxnRecord::decode(&b))
            .transpose()
    }

    /// Rewrites the coordinator's own record as `change` makes it from the current one,
    /// adopting what pushers changed meanwhile (a pushed timestamp): a lost race against a
    /// PENDING record is retried on top of it.
    async fn update_own_record(
        &self,
        state: &TxnState,
        change: impl Fn(&TxnRecord) -> TxnRecord,
    ) -> Result<OwnUpdate> {
        let mut record = state.record.lock().await;
        for _ in 0..RECORD_UPDATE_ATTEMPTS_MAX {
            let next = change(&record);
            let outcome = self
                .write_record(record_write(&state.meta.record_key, &record, Some(&next)))
                .await?;
            if matches!(outcome, RowOutcome::Written { .. }) {
                *record = next.clone();
                return Ok(OwnUpdate::Written(next));
            }
            match found_record(outcome)? {
                Some(r) if r.status == TxnStatus::Pending => *record = r,
                other => return Ok(OwnUpdate::Finished(other)),
            }
        }
        Err(KvError::Internal(format!(
            "transaction record {} kept changing",
            state.id_string()
        )))
    }

    /// Conditionally aborts the transaction whose record is `record` (as just read) at
    /// `record_key`. Losing the race is fine: the caller looks again.
    async fn abort_record(
        &self,
        record_key: &[u8],
        record: &TxnRecord,
        reason: &'static str,
        by: Option<String>,
    ) -> Result<bool> {
        let aborted = record.aborted(reason, by);
        let outcome = self
            .write_record(record_write(record_key, record, Some(&aborted)))
            .await?;
        Ok(matches!(outcome, RowOutcome::Written { .. }))
    }

    /// Pushes the transaction of an intent met by this client until it is out of the way:
    /// resolves a finished one's intent, aborts an abandoned one, pushes a live one's
    /// timestamp above a reader's, else waits (looking for deadlocks when this client is a
    /// transaction). Returns `Ok(false)` for [`Pusher::Recovery`] when the holder is alive.
    /// Fails with [`KvError::TxnConflict`] after [`PUSH_WAIT_MAX`], and with
    /// [`KvError::TxnAborted`] if this client's own transaction was aborted meanwhile (by a
    /// deadlock, or a pusher).
    pub(crate) async fn push_intent(
        &self,
        conflict: &IntentConflict,
        pusher: &Pusher,
    ) -> Result<bool> {
        let mut edge = false;
        let result = self.push_loop(conflict, pusher, &mut edge).await;
        if edge && let Some(own) = &self.txn {
            // This wait is over: the edge goes (a record that changed status keeps it).
            let holder = conflict.txn.txn_id;
            let removed = self
                .update_own_record(own, |r| {
                    let mut next = r.clone();
                    if let Some(i) = next.waiting_for.iter().position(|w| w.txn_id == holder) {
                        next.waiting_for.remove(i);
                    }
                    next
                })
                .await;
            if let Err(e) = removed {
                debug!(error = %e, "could not remove a waits-for edge");
            }
        }
        result
    }

    async fn push_loop(
        &self,
        conflict: &IntentConflict,
        pusher: &Pusher,
        edge: &mut bool,
    ) -> Result<bool> {
        let started = Instant::now();
        let deadline = started + PUSH_WAIT_MAX;
        let mut next_check = started + WAIT_EDGE_AFTER;
        let mut pause = POLL_MIN;
        loop {
            let record = self.read_record(&conflict.txn.record_key).await?;
            let now_ns = self.clock().physical_now_ns();
            match decide_push(pusher, record.as_ref(), now_ns, started.elapsed()) {
                PushDecision::Resolve(resolution) => {
                    self.resolve_keys(&conflict.txn.txn_id, vec![conflict.key.clone()], resolution)
                        .await?;
                    return Ok(true);
                }
                PushDecision::Abort(reason) => {
                    let record = record.expect("only a found record is aborted");
                    if self
                        .abort_record(&conflict.txn.record_key, &record, reason, None)
                        .await?
                    {
                        debug!(
                            txn = %ldr_storage::intent::txn_id_string(&conflict.txn.txn_id),
                            reason,
                            "aborted a conflicting transaction"
                        );
                    }
                    // Look again: resolves on the next round (or finds it committed).
                    continue;
                }
                PushDecision::PushTimestamp(to) => {
                    let record = record.expect("only a found record is pushed");
                    let pushed = TxnRecord {
                        pushed_ts: Some(to),
                        ..record.clone()
                    };
                    let outcome = self
                        .write_record(record_write(
                            &conflict.txn.record_key,
                            &record,
                            Some(&pushed),
                        ))
                        .await?;
                    if matches!(outcome, RowOutcome::Written { .. }) {
                        debug!(
                            txn = %ldr_storage::intent::txn_id_string(&conflict.txn.txn_id),
                            %to,
                            "pushed a transaction's timestamp"
                        );
                    }
                    // Look again: moves the intent on the next round (or finds it finished).
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
                            txn_id: own.id_string(),
                            reason: ABORT_REASON_PUSHER_ABORTED.into(),
                            conflicting: Some(ldr_storage::intent::txn_id_string(
                                &conflict.txn.txn_id,
                            )),
                        });
                    }
                    if Instant::now() >= deadline {
                        return Err(KvError::TxnConflict(format!(
                            "{conflict}: still pending after {}s",
                            PUSH_WAIT_MAX.as_secs()
                        )));
                    }
                    if let Some(own) = &self.txn
                        && Instant::now() >= next_check
                    {
                        next_check = Instant::now() + DEADLOCK_CHECK_INTERVAL;
                        if !*edge {
                            *edge = true;
                            self.add_wait_edge(own, conflict).await?;
                        }
                        self.check_deadlock(own, conflict).await?;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(POLL_MAX);
                }
            }
        }
    }

    /// Records in the waiter's own record that it waits for the holder of `conflict`.
    async fn add_wait_edge(&self, own: &TxnState, conflict: &IntentConflict) -> Result<()> {
        let edge = WaitingFor {
            txn_id: conflict.txn.txn_id,
            record_key: conflict.txn.record_key.clone(),
        };
        let update = self
            .update_own_record(own, |r| {
                let mut next = r.clone();
                if next.waiting_for.len() < WAITING_FOR_MAX {
                    next.waiting_for.push(edge.clone());
                }
                next
            })
            .await?;
        match update {
            OwnUpdate::Written(_) => Ok(()),
            OwnUpdate::Finished(r) => Err(aborted_error(own, r.as_ref())),
        }
    }

    /// One look for a cycle of waits through `own` (see `txnwait.rs`): reads its own record
    /// (aborted meanwhile: the error), then the records reachable from the transactions it
    /// waits for. In a cycle, the youngest member is aborted: this transaction itself (the
    /// error), or another one (its record made ABORTED; its waiter goes on).
    async fn check_deadlock(&self, own: &TxnState, conflict: &IntentConflict) -> Result<()> {
        let me = own.meta.txn_id;
        let mine = self.read_record(&own.meta.record_key).await?;
        let mine = match mine {
            Some(r) if r.status == TxnStatus::Pending => r,
            other => return Err(aborted_error(own, other.as_ref())),
        };
        let mut graph: BTreeMap<TxnId, WaitNode> = BTreeMap::new();
        let mut records: BTreeMap<TxnId, (Vec<u8>, TxnRecord)> = BTreeMap::new();
        let mut queue: Vec<WaitingFor> = mine.waiting_for.clone();
        graph.insert(
            me,
            WaitNode {
                start_ts: mine.start_ts,
                waiting_for: mine.waiting_for.iter().map(|w| w.txn_id).collect(),
            },
        );
        let now_ns = self.clock().physical_now_ns();
        let mut reads = 0;
        while let Some(edge) = queue.pop() {
            if graph.contains_key(&edge.txn_id) || reads >= WALK_RECORDS_MAX {
                continue;
            }
            reads += 1;
            let Some(record) = self.read_record(&edge.record_key).await? else {
                continue;
            };
            if record.status != TxnStatus::Pending || record.expired(now_ns) {
                continue;
            }
            queue.extend(record.waiting_for.iter().cloned());
            graph.insert(
                edge.txn_id,
                WaitNode {
                    start_ts: record.start_ts,
                    waiting_for: record.waiting_for.iter().map(|w| w.txn_id).collect(),
                },
            );
            records.insert(edge.txn_id, (edge.record_key, record));
        }
        let Some(deadlock) = find_deadlock(&me, &graph) else {
            return Ok(());
        };
        let ids: Vec<String> = deadlock
            .members
            .iter()
            .map(ldr_storage::intent::txn_id_string)
            .collect();
        let victim = ldr_storage::intent::txn_id_string(&deadlock.victim);
        info!(members = ?ids, %victim, "deadlock detected; aborting the youngest transaction");
        if deadlock.victim == me {
            let by = ldr_storage::intent::txn_id_string(&conflict.txn.txn_id);
            let update = self
                .update_own_record(own, |r| {
                    r.aborted(ABORT_REASON_PUSHER_ABORTED, Some(by.clone()))
                })
                .await?;
            let record = match update {
                OwnUpdate::Written(r) => Some(r),
                OwnUpdate::Finished(r) => r,
            };
            return Err(aborted_error(own, record.as_ref()));
        }
        if let Some((key, record)) = records.get(&deadlock.victim) {
            self.abort_record(
                key,
                record,
                ABORT_REASON_PUSHER_ABORTED,
                Some(own.id_string()),
            )
            .await?;
        }
        Ok(())
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
        let now_ns = client.clock().physical_now_ns();
        let beat = client
            .update_own_record(&state, |r| TxnRecord {
                heartbeat_ns: now_ns,
                ..r.clone()
            })
            .await;
        match beat {
            Ok(OwnUpdate::Written(_)) => {}
            Ok(OwnUpdate::Finished(_)) => {
                // Aborted by a pusher (or committed meanwhile). The commit will find out.
                debug!(txn = %state.id_string(), "transaction record finished under its coordinator");
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
        self.state.id_string()
    }

    /// When it began (its priority: older transactions are never a deadlock's victim).
    pub fn start_ts(&self) -> Timestamp {
        self.state.start_ts
    }

    /// The largest write timestamp of its intents so far.
    pub fn max_write_ts(&self) -> Timestamp {
        *self.state.max_write_ts.lock()
    }

    /// Commits at the largest of its intents' write timestamps and the timestamp readers
    /// pushed it to: for a transaction whose reads are all covered by its writes' conditions
    /// (a pushed commit cannot make them stale). See [`KvTxn::try_commit`].
    pub async fn commit(self) -> Result<Timestamp> {
        match self.try_commit(Timestamp::MAX).await? {
            CommitAttempt::Committed(ts) => Ok(ts),
            CommitAttempt::Pushed(_) => unreachable!("reads valid up to MAX cover every push"),
        }
    }

    /// Commits if its reads, validated up to `refreshed_to`, cover the commit timestamp: the
    /// record becomes COMMITTED at [`commit_timestamp`], then the intents are resolved in
    /// the background. If a reader pushed it above both, answers [`CommitAttempt::Pushed`]
    /// and stays open (refresh the reads up to that timestamp and try again). Fails with
    /// [`KvError::TxnAborted`] if the transaction was aborted by a pusher (nothing of it is
    /// applied), with [`KvError::AmbiguousResult`] if the record's leaseholder did not answer
    /// and the record could not be read back.
    pub async fn try_commit(&self, refreshed_to: Timestamp) -> Result<CommitAttempt> {
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
            return Ok(CommitAttempt::Committed(client.clock().now()));
        }
        let max_write_ts = *state.max_write_ts.lock();
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = loop {
            let commit_ts = match commit_decision(max_write_ts, record.pushed_ts, refreshed_to) {
                CommitAttempt::Committed(ts) => ts,
                pushed @ CommitAttempt::Pushed(_) => return Ok(pushed),
            };
            let committed = TxnRecord {
                status: TxnStatus::Committed,
                commit_ts: Some(commit_ts),
                heartbeat_ns: client.clock().physical_now_ns(),
                waiting_for: Vec::new(),
                ..record.clone()
            };
            let attempt = client
                .write_record(record_write(
                    &state.meta.record_key,
                    &record,
                    Some(&committed),
                ))
                .await;
            match attempt {
                Ok(RowOutcome::Written { .. }) => break Ok((commit_ts, committed)),
                Ok(o) => match found_record(o)? {
                    Some(r) if r == committed => break Ok((commit_ts, committed)),
                    Some(r) if r.status == TxnStatus::Pending => {
                        // A heartbeat or a pusher raced: go again on top of what is there
                        // (a pushed timestamp moves the commit up).
                        *record = r;
                        continue;
                    }
                    other => break Err(aborted_error(&state, other.as_ref())),
                },
                Err(e) if e.is_ambiguous() || matches!(e, KvError::NodeUnavailable { .. }) => {
                    // Find out what happened from the record itself.
                    if Instant::now() >= deadline {
                        break Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match client.read_record(&state.meta.record_key).await {
                        Ok(Some(r)) if r == committed => break Ok((commit_ts, committed)),
                        Ok(Some(r)) if r.status == TxnStatus::Pending => {
                            *record = r;
                            continue;
                        }
                        Ok(other) => break Err(aborted_error(&state, other.as_ref())),
                        Err(_) => continue,
                    }
                }
                Err(e) => break Err(e),
            }
        };
        state.finished.store(true, Ordering::Release);
        drop(record);
        let (resolution, final_record) = match &result {
            Ok((ts, committed)) => (Some(Resolution::Commit(*ts)), Some(committed.clone())),
            Err(KvError::TxnAborted { .. }) => (Some(Resolution::Abort), None),
            // Ambiguous: leave the intents to whoever meets them (they read the record).
            Err(_) => (None, None),
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
        result.map(|(ts, _)| CommitAttempt::Committed(ts))
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
    let update = client
        .update_own_record(&state, |r| r.aborted(ABORT_REASON_CLIENT_REJECT, None))
        .await;
    let record = match update {
        Ok(OwnUpdate::Written(r)) => Some(r),
        // Aborted by a pusher already: resolve and delete it all the same.
        Ok(OwnUpdate::Finished(r)) => r,
        Err(e) => {
            // Whoever meets the intents aborts the record once it expires.
            debug!(error = %e, "could not abort a transaction record");
            return;
        }
    };
    let written = state.written.lock().clone();
    finish(client, state, written, Resolution::Abort, record).await;
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
        (None, _) => return,
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
            aborted_by: None,
            waiting_for: Vec::new(),
            pushed_ts: None,
        }
    }

    const NOW: u64 = 100_000_000_000;
    const ZERO: Duration = Duration::ZERO;
    const LONG: Duration = Duration::from_secs(60);

    fn reader(wall: u64) -> Pusher {
        Pusher::Reader {
            read_ts: Timestamp::new(wall, 0),
        }
    }

    #[test]
    fn finished_holders_are_resolved() {
        let c = record(TxnStatus::Committed, 1, NOW);
        for pusher in [Pusher::NonTxn, Pusher::Txn, reader(5), Pusher::Recovery] {
            assert_eq!(
                decide_push(&pusher, Some(&c), NOW, LONG),
                PushDecision::Resolve(Resolution::Commit(Timestamp::new(11, 0)))
            );
        }
        let a = record(TxnStatus::Aborted, 1, NOW);
        assert_eq!(
            decide_push(&Pusher::NonTxn, Some(&a), NOW, ZERO),
            PushDecision::Resolve(Resolution::Abort)
        );
        assert_eq!(
            decide_push(&Pusher::Recovery, None, NOW, ZERO),
            PushDecision::Resolve(Resolution::Abort),
            "an intent without a record is dead"
        );
    }

    #[test]
    fn expired_holders_are_aborted_by_anyone() {
        let stale = NOW - EXPIRY.as_nanos() as u64 - 1;
        let p = record(TxnStatus::Pending, 1, stale);
        for pusher in [Pusher::NonTxn, Pusher::Txn, reader(5), Pusher::Recovery] {
            assert_eq!(
                decide_push(&pusher, Some(&p), NOW, ZERO),
                PushDecision::Abort(ABORT_REASON_EXPIRED)
            );
        }
        let fresh = record(TxnStatus::Pending, 1, NOW - EXPIRY.as_nanos() as u64);
        assert_eq!(
            decide_push(&Pusher::NonTxn, Some(&fresh), NOW, LONG),
            PushDecision::Wait
        );
    }

    #[test]
    fn writers_wait_for_live_holders_whatever_their_age() {
        // No wound-wait: an older transaction waits for a younger holder too (deadlocks are
        // found and broken by `txnwait`).
        let holder = record(TxnStatus::Pending, 50, NOW);
        for pusher in [Pusher::NonTxn, Pusher::Txn] {
            assert_eq!(
                decide_push(&pusher, Some(&holder), NOW, LONG),
                PushDecision::Wait
            );
        }
        assert_eq!(
            decide_push(&Pusher::Recovery, Some(&holder), NOW, LONG),
            PushDecision::Wait,
            "recovery leaves live holders alone"
        );
    }

    #[test]
    fn readers_push_live_holders_above_their_read() {
        let mut holder = record(TxnStatus::Pending, 50, NOW);
        // Not pushed yet: wait a little (most transactions finish), then push to just above
        // the read.
        assert_eq!(
            decide_push(&reader(70), Some(&holder), NOW, ZERO),
            PushDecision::Wait
        );
        assert_eq!(
            decide_push(&reader(70), Some(&holder), NOW, READER_PUSH_DELAY),
            PushDecision::PushTimestamp(Timestamp::new(70, 1))
        );
        // Pushed above the read already: move the intent up and read past it.
        holder.pushed_ts = Some(Timestamp::new(80, 0));
        assert_eq!(
            decide_push(&reader(70), Some(&holder), NOW, ZERO),
            PushDecision::Resolve(Resolution::Push(Timestamp::new(80, 0)))
        );
        // Pushed, but not above this (later) read: push further.
        assert_eq!(
            decide_push(&reader(80), Some(&holder), NOW, LONG),
            PushDecision::PushTimestamp(Timestamp::new(80, 1))
        );
        // A committed holder is never pushed: the reader sees its commit.
        let mut c = record(TxnStatus::Committed, 50, NOW);
        c.pushed_ts = Some(Timestamp::new(90, 0));
        assert_eq!(
            decide_push(&reader(95), Some(&c), NOW, ZERO),
            PushDecision::Resolve(Resolution::Commit(Timestamp::new(60, 0)))
        );
    }

    #[test]
    fn a_pushed_transaction_commits_above_the_push_after_refreshing() {
        let w = Timestamp::new(100, 0);
        // Not pushed: commits at its write timestamp.
        assert_eq!(commit_timestamp(w, None), w);
        assert_eq!(commit_decision(w, None, w), CommitAttempt::Committed(w));
        // Pushed below its writes: no effect.
        let low = Some(Timestamp::new(90, 0));
        assert_eq!(commit_decision(w, low, w), CommitAttempt::Committed(w));
        // Pushed above its writes and above what its reads were validated at: refresh first.
        let p = Timestamp::new(120, 3);
        assert_eq!(commit_timestamp(w, Some(p)), p);
        assert_eq!(commit_decision(w, Some(p), w), CommitAttempt::Pushed(p));
        assert_eq!(
            commit_decision(w, Some(p), Timestamp::new(110, 0)),
            CommitAttempt::Pushed(p)
        );
        // Reads valid up to (or beyond) the push: commit at the pushed timestamp.
        assert_eq!(commit_decision(w, Some(p), p), CommitAttempt::Committed(p));
        assert_eq!(
            commit_decision(w, Some(p), Timestamp::MAX),
            CommitAttempt::Committed(p),
            "a transaction without reads to refresh commits at the push"
        );
        // The commit is always above every read that pushed it.
        for read in [Timestamp::new(100, 0), Timestamp::new(150, 7)] {
            let pushed = Some(read.next());
            match commit_decision(w, pushed, Timestamp::MAX) {
                CommitAttempt::Committed(ts) => assert!(ts > read),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let r = record(TxnStatus::Committed, 3, 7);
        assert_eq!(TxnRecord::decode(&r.encode()).expect("decodes"), r);
        let mut r = record(TxnStatus::Pending, 3, 7);
        r.waiting_for = vec![WaitingFor {
            txn_id: [3; 16],
            record_key: b"rk".to_vec(),
        }];
        r.pushed_ts = Some(Timestamp::new(9, 1));
        r.aborted_by = Some("x".into());
        assert_eq!(TxnRecord::decode(&r.encode()).expect("decodes"), r);
        // A record that never waited nor was pushed is encoded as before those existed.
        let plain = String::from_utf8(record(TxnStatus::Pending, 3, 7).encode()).expect("utf8");
        assert!(
            !plain.contains("waiting_for") && !plain.contains("pushed_ts"),
            "{plain}"
        );
        assert!(TxnRecord::decode(b"{").is_err());
    }
}
