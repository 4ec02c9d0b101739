//! Explicit transactions: the transaction block's states as PostgreSQL reports them,
//! CockroachDB's client-side retry protocol, optimistic concurrency control, and the COMMIT
//! protocol.
//!
//! The block ([`Txn`]) is `Idle` (ReadyForQuery status `I`), `Open` (`T`), `Failed` (`E`) or
//! `CommitWait` (`T`); the wire protocol reports [`Session::txn_status`] in every
//! ReadyForQuery, so the session is the one truth about it:
//! - an error inside an open block aborts it (`Failed`): every statement but ROLLBACK,
//!   COMMIT and ROLLBACK TO SAVEPOINT gets 25P02 until one of those; COMMIT of an aborted
//!   block rolls back and answers `ROLLBACK`, as PostgreSQL does;
//! - a failed COMMIT ends the block (`Idle`): nothing of the transaction was applied (or, for
//!   40003, the error says what was), and the client starts over with BEGIN;
//! - COMMIT or ROLLBACK outside a block succeed with PostgreSQL's warning (25P01 there is no
//!   transaction in progress);
//! - general savepoints nest: ROLLBACK TO SAVEPOINT undoes the writes made after the
//!   savepoint (reads made since stay in the read set: they happened) and reopens an
//!   aborted block;
//! - CockroachDB's retry protocol: `SAVEPOINT cockroach_restart` as the first statement after
//!   BEGIN; after a 40001, `ROLLBACK TO SAVEPOINT cockroach_restart` restarts the transaction
//!   (its writes and reads discarded, the block open, status `T`); `RELEASE SAVEPOINT
//!   cockroach_restart` commits, after which only COMMIT (ending the block) is accepted. A
//!   RELEASE that fails leaves the block aborted (`E`), so that the client can restart with
//!   ROLLBACK TO SAVEPOINT cockroach_restart or give up with ROLLBACK, as in CockroachDB.
//!
//! An explicit transaction buffers its writes (`write::TxnBuffer`) and remembers, in a
//! [`ReadSet`], the value of every key it read from the KV layer the first time it read it
//! (`None`: absent). A later read of the same key that finds another value means a concurrent
//! transaction changed it: the statement fails at once with 40001.
//!
//! COMMIT of a transaction that wrote something ([`commit`]):
//! 1. takes this gateway's [`RowLocks`] exclusively for every key it read or writes (autocommit
//!    writes through this gateway take them shared, so they cannot land between steps 2
//!    and 4), then the cluster-wide commit locks of those keys ([`CommitLocks`]: lock keys
//!    beside the rows, see [`lock_key`]), so two commits touching a common row run one after
//!    the other whichever gateways they use;
//! 2. validates: re-reads every key of the read set and every written row and compares it
//!    with what the transaction saw; any difference is 40001 and nothing is written;
//! 3. writes range by range, in a fixed order; each range's rows are one atomic batch, every
//!    row conditional on the value the transaction read (`Condition::Expect`), so a writer
//!    that slipped in after step 2 (through another gateway, or replication) fails that
//!    range's batch as a whole;
//! 4. if a range fails after earlier ranges were written, those ranges are undone (each row
//!    written back to its old value, conditional on the value the commit wrote) and the
//!    COMMIT fails with 40001, nothing applied. Only if undoing fails too (a third writer
//!    changed one of those rows in between) is the COMMIT left partly applied: that is
//!    reported as 40003, never as a retryable error;
//! 5. releases the commit locks, then the gateway's row locks.
//!
//! A range owner that does not answer a write it may have applied (40003 from the KV layer)
//! makes the COMMIT's result ambiguous: the ranges written before it are left as they are
//! and the COMMIT fails with 40003.
//!
//! Limits (documented departures from CockroachDB's serializable isolation):
//! - phantoms: a scan records the rows it found, not the absence of others, so a row inserted
//!   concurrently into a range the transaction scanned is not detected (point lookups by
//!   primary key or unique index do record absence);
//! - read-only transactions are not validated (each statement reads committed data);
//! - the read set holds at most [`READ_SET_MAX`] keys; reads beyond are not validated;
//! - statements outside transactions do not take commit locks: one through another gateway
//!   (or a replicated write) can still change a row between a COMMIT's validation and its
//!   write; the conditional write catches it, and the undo of step 4 fixes the other ranges
//!   unless a further write races with it (40003);
//! - readers are not blocked: a reader may see the ranges a COMMIT already wrote and not the
//!   rest (or rows of a commit that is then undone); a later COMMIT of a reader's transaction
//!   that wrote something fails validation in that case (the rows changed under it);
//! - a gateway that dies mid-commit leaves its commit locks for [`LOCK_STALE`], after which
//!   the next commit takes them over; a client that disconnects during COMMIT likewise.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::future::join_all;
use ldr_kv::{Condition, KvClient, RowOutcome, RowWrite, ValueHeader};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::scan::StoredRow;
use super::write::{self, Applied, Change, TxnBuffer};
use super::{QueryResult, Session, SqlServer, Txn, TxnEffect};
use crate::error::{PgError, Result, SqlError, sqlstate};
use crate::parser::Statement;
use crate::rowcodec;

/// Keys a transaction's read set holds at most.
pub(crate) const READ_SET_MAX: usize = 100_000;
/// Number of lock stripes per gateway.
const STRIPES: usize = 4096;
/// How long a writer waits for this gateway's row locks.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Validation reads in flight at once.
const VALIDATION_CONCURRENCY: usize = 32;
/// The index id under which commit locks live, inside the shard of the key they lock (never
/// a real index: ids are allocated upwards from 1). Not in any primary index span, so
/// neither SQL scans nor replication streams see them.
pub(crate) const LOCK_INDEX_ID: ldr_types::IndexId = ldr_types::IndexId::MAX;
/// A commit lock older than this was left by a gateway that died mid-commit: take it over.
const LOCK_STALE: Duration = Duration::from_secs(10);
/// How long a COMMIT waits for other gateways' commit locks (longer than [`LOCK_STALE`]).
const KV_LOCK_WAIT: Duration = Duration::from_secs(15);

/// The 40001 a transaction gets when a row it read changed under it.
pub(crate) fn read_conflict() -> SqlError {
    SqlError::new(
        sqlstate::SERIALIZATION_FAILURE,
        "restart transaction: TransactionRetryWithProtoRefreshError: a row this transaction read was changed by a concurrent write",
    )
    .with_hint("retry the transaction")
}

/// The first value a transaction saw for each key it read.
#[derive(Debug, Default)]
pub(crate) struct ReadSet {
    rows: HashMap<Vec<u8>, Option<Vec<u8>>>,
    overflowed: bool,
}

impl ReadSet {
    /// Records that the transaction read `value` at `key` (`None`: absent). A key read before
    /// with another value is a conflict (40001).
    pub fn observe(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        match self.rows.get(key) {
            Some(seen) if seen.as_deref() == value => Ok(()),
            Some(_) => Err(read_conflict()),
            None if self.rows.len() >= READ_SET_MAX => {
                if !self.overflowed {
                    tracing::warn!(
                        max = READ_SET_MAX,
                        "transaction read set is full; further reads are not validated"
                    );
                    self.overflowed = true;
                }
                Ok(())
            }
            None => {
                self.rows.insert(key.to_vec(), value.map(<[u8]>::to_vec));
                Ok(())
            }
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn into_rows(self) -> HashMap<Vec<u8>, Option<Vec<u8>>> {
        self.rows
    }
}

/// What a COMMIT must find before it writes: every key's expected latest value. Fails with
/// 40001 if the transaction's own view is inconsistent (a written row's old value differs
/// from what it read).
pub(crate) fn expectations(
    reads: HashMap<Vec<u8>, Option<Vec<u8>>>,
    changes: &[Change],
) -> Result<BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
    let mut out: BTreeMap<Vec<u8>, Option<Vec<u8>>> = reads.into_iter().collect();
    for ch in changes {
        let old = ch.old.as_ref().map(|o| o.raw.clone());
        match out.get(&ch.key) {
            Some(seen) if *seen != old => return Err(read_conflict()),
            Some(_) => {}
            None => {
                out.insert(ch.key.clone(), old);
            }
        }
    }
    Ok(out)
}

/// Groups changes by range (table and shard), in key order; keys that are not table keys go
/// in one group of their own.
pub(crate) fn group_by_range(changes: Vec<Change>) -> Vec<Vec<Change>> {
    let mut groups: BTreeMap<Option<(ldr_types::TableId, u16)>, Vec<Change>> = BTreeMap::new();
    for ch in changes {
        let range = ldr_types::keys::decode_table_key(&ch.key).map(|k| (k.table_id, k.shard));
        groups.entry(range).or_default().push(ch);
    }
    groups.into_values().collect()
}

/// The change that undoes an applied one: back to the old row, conditional on the new.
pub(crate) fn undo(ch: &Change) -> Change {
    Change {
        table: ch.table.clone(),
        key: ch.key.clone(),
        old: ch.new.as_ref().map(|values| StoredRow {
            key: ch.key.clone(),
            values: values.clone(),
            raw: rowcodec::encode_row(&ch.table, values),
            ts: ldr_types::Timestamp::ZERO,
            origin_ts: ldr_types::Timestamp::ZERO,
            buffered: false,
        }),
        new: ch.old.as_ref().map(|o| o.values.clone()),
    }
}

/// Striped per-gateway row locks: commits take their rows' stripes exclusively, autocommit
/// writes shared. Stripes are always taken in ascending order, so waiting cannot deadlock.
pub(crate) struct RowLocks {
    stripes: Box<[RwLock<()>]>,
}

/// Held row locks; released on drop.
pub(crate) enum RowLockGuard<'a> {
    Shared(#[allow(dead_code)] Vec<RwLockReadGuard<'a, ()>>),
    Exclusive(#[allow(dead_code)] Vec<RwLockWriteGuard<'a, ()>>),
}

impl Default for RowLocks {
    fn default() -> Self {
        RowLocks {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }
}

impl RowLocks {
    /// The stripes of some keys, ascending and without duplicates.
    pub fn stripes<'k>(keys: impl IntoIterator<Item = &'k [u8]>) -> BTreeSet<usize> {
        keys.into_iter()
            .map(|k| (ldr_types::keys::fnv1a64(k) % STRIPES as u64) as usize)
            .collect()
    }

    /// Takes the stripes of `keys` (exclusively or shared), waiting at most [`LOCK_WAIT`].
    pub async fn lock<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
        exclusive: bool,
    ) -> Result<RowLockGuard<'_>> {
        let stripes = Self::stripes(keys);
        let take = async {
            if exclusive {
                let mut guards = Vec::with_capacity(stripes.len());
                for i in stripes {
                    guards.push(self.stripes[i].write().await);
                }
                RowLockGuard::Exclusive(guards)
            } else {
                let mut guards = Vec::with_capacity(stripes.len());
                for i in stripes {
                    guards.push(self.stripes[i].read().await);
                }
                RowLockGuard::Shared(guards)
            }
        };
        tokio::time::timeout(LOCK_WAIT, take).await.map_err(|_| {
            SqlError::new(
                sqlstate::SERIALIZATION_FAILURE,
                "restart transaction: timed out waiting for concurrent commits of the same rows",
            )
        })
    }
}

/// The commit lock key of a table key: `0x02 <table> <shard> <LOCK_INDEX_ID> <rest of key>`,
/// in the same range as the key. `None` for keys that are not table keys.
pub(crate) fn lock_key(key: &[u8]) -> Option<Vec<u8>> {
    let parts = ldr_types::keys::decode_table_key(key)?;
    let mut k = ldr_types::keys::index_prefix(parts.table_id, parts.shard, LOCK_INDEX_ID);
    k.extend_from_slice(&key[ldr_types::keys::shard_prefix(0, 0).len()..]);
    Some(k)
}

/// A lock value: the holder (random per commit) and when it took the lock (wall ns).
fn lock_value(holder: u64, wall_ns: u64) -> Vec<u8> {
    let mut v = holder.to_be_bytes().to_vec();
    v.extend_from_slice(&wall_ns.to_be_bytes());
    v
}

/// Whether a lock value is older than [`LOCK_STALE`] at `now_ns` (garbage counts as stale).
fn lock_is_stale(value: &[u8], now_ns: u64) -> bool {
    let taken = value
        .get(8..16)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    match taken {
        Some(t) => now_ns.saturating_sub(t) >= LOCK_STALE.as_nanos() as u64,
        None => true,
    }
}

/// The cluster-wide commit locks a COMMIT holds on every key it read or writes, so that two
/// commits through different gateways touching a common row run one after the other. Each is
/// a conditional put of the lock key (absent → ours); the ranges are locked one at a time in
/// key order, each range's locks atomically, so waiting cannot deadlock.
struct CommitLocks {
    value: Vec<u8>,
    /// The lock keys held, one group per range.
    held: Vec<Vec<Vec<u8>>>,
}

impl CommitLocks {
    async fn acquire<'k>(
        kv: &KvClient,
        keys: impl IntoIterator<Item = &'k Vec<u8>>,
    ) -> Result<CommitLocks> {
        let mut by_range: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        for k in keys {
            if let Some(lk) = lock_key(k) {
                let range = lk[..ldr_types::keys::shard_prefix(0, 0).len()].to_vec();
                by_range.entry(range).or_default().push(lk);
            }
        }
        let mut locks = CommitLocks {
            value: lock_value(rand::random(), kv.clock().now().wall_time_ns),
            held: Vec::with_capacity(by_range.len()),
        };
        let deadline = std::time::Instant::now() + KV_LOCK_WAIT;
        for (_, group) in by_range {
            if let Err(e) = locks.acquire_range(kv, group, deadline).await {
                locks.release(kv).await;
                if e.code() == sqlstate::STATEMENT_COMPLETION_UNKNOWN {
                    // Only a lock may have been taken (it goes stale); no row was written.
                    return Err(SqlError::new(
                        sqlstate::RANGE_UNAVAILABLE,
                        format!(
                            "the transaction was not committed: its commit locks could not be taken: {}",
                            e.message()
                        ),
                    ));
                }
                return Err(e);
            }
        }
        Ok(locks)
    }

    /// Locks the keys of one range atomically, waiting for other holders.
    async fn acquire_range(
        &mut self,
        kv: &KvClient,
        group: Vec<Vec<u8>>,
        deadline: std::time::Instant,
    ) -> Result<()> {
        let mut expect: Vec<Option<Vec<u8>>> = vec![None; group.len()];
        let mut backoff = Duration::from_millis(1);
        loop {
            let rows: Vec<RowWrite> = group
                .iter()
                .zip(&expect)
                .map(|(k, e)| RowWrite {
                    key: k.clone(),
                    value: Some(self.value.clone()),
                    condition: Condition::Expect(e.clone()),
                    header: ValueHeader::default(),
                    dependents: vec![],
                })
                .collect();
            let outcomes = kv.write(rows, true).await?;
            if outcomes
                .iter()
                .all(|(_, o)| matches!(o, RowOutcome::Written { .. }))
            {
                self.held.push(group);
                return Ok(());
            }
            let now_ns = kv.clock().now().wall_time_ns;
            let mut wait = false;
            for (i, (_, o)) in outcomes.iter().enumerate() {
                if let RowOutcome::ConditionFailed { actual } = o {
                    match actual.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(v) if lock_is_stale(v, now_ns) => {
                            tracing::warn!("taking over a stale commit lock");
                            expect[i] = Some(v.clone());
                        }
                        Some(_) => {
                            expect[i] = None;
                            wait = true;
                        }
                        None => expect[i] = None,
                    }
                }
            }
            if !wait {
                continue;
            }
            if std::time::Instant::now() + backoff > deadline {
                return Err(SqlError::new(
                    sqlstate::SERIALIZATION_FAILURE,
                    "restart transaction: timed out waiting for a concurrent commit of the same rows",
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Releases every held lock (conditional on still holding it). A failed release leaves a
    /// lock that others take over once stale.
    async fn release(self, kv: &KvClient) {
        let value = &self.value;
        let releases = self.held.into_iter().map(|group| async move {
            let rows: Vec<RowWrite> = group
                .into_iter()
                .map(|k| RowWrite {
                    key: k,
                    value: None,
                    condition: Condition::Expect(Some(value.clone())),
                    header: ValueHeader::default(),
                    dependents: vec![],
                })
                .collect();
            if let Err(e) = kv.write(rows, false).await {
                tracing::warn!(error = %e, "releasing commit locks failed");
            }
        });
        join_all(releases).await;
    }
}

/// Whether `key`'s latest value is `want`.
async fn unchanged(kv: &KvClient, key: &[u8], want: &Option<Vec<u8>>) -> Result<bool> {
    Ok(kv.get(key, None).await?.and_then(|v| v.value) == *want)
}

/// Re-reads every expected key, a bounded number at a time; 40001 at the first that changed.
async fn validate(kv: &KvClient, expected: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<()> {
    let all: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = expected.iter().collect();
    for chunk in all.chunks(VALIDATION_CONCURRENCY) {
        let checks = join_all(chunk.iter().map(|(k, want)| unchanged(kv, k, want))).await;
        for c in checks {
            if !c? {
                return Err(read_conflict());
            }
        }
    }
    Ok(())
}

/// Applies a transaction's buffered writes at COMMIT (see the module doc).
pub(crate) async fn commit(server: &SqlServer, buf: TxnBuffer) -> Result<()> {
    let (changes, reads) = buf.into_parts();
    if changes.is_empty() {
        return Ok(());
    }
    tracing::debug!(
        writes = changes.len(),
        reads = reads.len(),
        reads_overflowed = reads.overflowed(),
        "committing a transaction"
    );
    let expected = expectations(reads.into_rows(), &changes)?;
    let _locks = server
        .row_locks
        .lock(expected.keys().map(Vec::as_slice), true)
        .await?;
    let kv = &server.kv;
    let locks = CommitLocks::acquire(kv, expected.keys()).await?;
    let result = async {
        validate(kv, &expected).await?;
        write_ranges(kv, group_by_range(changes)).await
    }
    .await;
    locks.release(kv).await;
    result
}

/// Writes groups of one range each, in order; if one fails, undoes the groups written before
/// it (steps 3 and 4 of the module doc).
async fn write_ranges(kv: &KvClient, groups: Vec<Vec<Change>>) -> Result<()> {
    let mut written: Vec<Vec<Change>> = Vec::new();
    for group in groups {
        let failure = match write::apply_unlocked(kv, &group).await {
            Ok(applied) if applied.iter().all(|a| matches!(a, Applied::Written(_))) => {
                written.push(group);
                continue;
            }
            Ok(_) => read_conflict(),
            Err(e) => e,
        };
        if written.is_empty() {
            return Err(failure);
        }
        if failure.code() == sqlstate::STATEMENT_COMPLETION_UNKNOWN {
            // The failed range may have been written: undoing the others could just as well
            // make the commit partial. Leave them and say so.
            return Err(SqlError::new(
                sqlstate::STATEMENT_COMPLETION_UNKNOWN,
                format!(
                    "result is ambiguous: the commit wrote {} range(s), then the owner of another range did not answer a write it may have applied",
                    written.len()
                ),
            )
            .with_detail(format!("cause: {}", failure.message())));
        }
        return Err(undo_written(kv, written, failure).await);
    }
    Ok(())
}

/// Undoes the ranges a failed commit wrote, newest first. Returns the error for the client:
/// the original failure if everything was undone, else a 40003 saying what stayed.
async fn undo_written(kv: &KvClient, written: Vec<Vec<Change>>, failure: SqlError) -> SqlError {
    let ranges = written.len();
    let mut stuck = 0usize;
    for group in written.into_iter().rev() {
        let undo: Vec<Change> = group.iter().map(undo).collect();
        match write::apply_unlocked(kv, &undo).await {
            Ok(applied) if applied.iter().all(|a| matches!(a, Applied::Written(_))) => {}
            Ok(_) => stuck += undo.len(),
            Err(e) => {
                tracing::warn!(error = %e.message(), "undoing a failed commit's range failed");
                stuck += undo.len();
            }
        }
    }
    if stuck == 0 {
        tracing::debug!(ranges, "undid the written ranges of a failed commit");
        return failure;
    }
    tracing::warn!(rows = stuck, "a failed commit stayed partly applied");
    SqlError::new(
        sqlstate::STATEMENT_COMPLETION_UNKNOWN,
        format!(
            "transaction commit partly applied: {stuck} row(s) written before a conflict in another range could not be undone because they changed concurrently"
        ),
    )
    .with_detail(format!("cause: {}", failure.message()))
    .with_hint("a commit that writes several ranges is atomic per range only; check the rows the transaction wrote before retrying it")
}

// ---- the transaction block ----

/// The savepoint of CockroachDB's client-side retry protocol.
pub(crate) const RESTART_SAVEPOINT: &str = "cockroach_restart";

fn no_transaction(what: &str) -> SqlError {
    SqlError::new(
        sqlstate::NO_ACTIVE_SQL_TRANSACTION,
        format!("{what} can only be used in transaction blocks"),
    )
}

/// PostgreSQL's warning for COMMIT or ROLLBACK outside a block.
fn no_transaction_warning() -> PgError {
    PgError {
        code: sqlstate::NO_ACTIVE_SQL_TRANSACTION,
        message: "there is no transaction in progress".into(),
        detail: None,
        hint: None,
    }
}

/// A statement that ends the block (`TxnEffect::Ended`) with this tag.
fn ended(tag: &str) -> QueryResult {
    QueryResult {
        txn: TxnEffect::Ended,
        ..QueryResult::command(tag)
    }
}

/// A fresh transaction after BEGIN; with the retry protocol's savepoint when `restart`.
fn fresh_buffer(restart: bool) -> TxnBuffer {
    let mut buf = TxnBuffer::default();
    if restart {
        buf.savepoint(RESTART_SAVEPOINT);
    }
    buf
}

impl Session {
    /// Refuses a statement that the block's state does not accept: 25P02 in an aborted block
    /// (except ROLLBACK, COMMIT, ROLLBACK TO SAVEPOINT), 25000 once RELEASE SAVEPOINT
    /// cockroach_restart committed (except COMMIT, ROLLBACK).
    pub(super) fn check_txn_state(&self, stmt: &Statement) -> Result<()> {
        use Statement as S;
        match self.txn {
            Txn::Failed(_)
                if !matches!(stmt, S::Rollback | S::Commit | S::RollbackToSavepoint(_)) =>
            {
                Err(SqlError::new(
                    sqlstate::IN_FAILED_SQL_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction block",
                ))
            }
            Txn::CommitWait if !matches!(stmt, S::Rollback | S::Commit) => Err(SqlError::new(
                sqlstate::INVALID_TRANSACTION_STATE,
                "current transaction is committed, commands ignored until end of transaction block",
            )
            .with_hint("send COMMIT to end the transaction block")),
            _ => Ok(()),
        }
    }

    /// An error inside an open block aborts it, as in PostgreSQL: status `E` until ROLLBACK
    /// (or ROLLBACK TO SAVEPOINT). Other states are left as they are (a failed COMMIT has
    /// already ended the block). The wire protocol calls this for every error it reports,
    /// also those that never reach the executor (a bad parameter, a failed COPY).
    pub(crate) fn abort_txn(&mut self) {
        if let Txn::Open(_) = self.txn {
            let Txn::Open(buf) = std::mem::replace(&mut self.txn, Txn::Idle) else {
                unreachable!("matched Open just above")
            };
            self.txn = Txn::Failed(buf);
        }
    }

    pub(super) fn begin(&mut self) -> Result<QueryResult> {
        match self.txn {
            Txn::Idle => {
                self.txn = Txn::Open(fresh_buffer(false));
                self.vars.set_internal("transaction_status", "Open");
                Ok(QueryResult {
                    txn: TxnEffect::Began,
                    ..QueryResult::command("BEGIN")
                })
            }
            _ => Err(SqlError::new(
                sqlstate::ACTIVE_SQL_TRANSACTION,
                "there is already a transaction in progress",
            )),
        }
    }

    /// COMMIT ends the block whatever happens: an open transaction commits (or fails, and is
    /// over: nothing was applied); an aborted one rolls back (`ROLLBACK`); outside a block it
    /// is a warning.
    pub(super) async fn commit(&mut self) -> Result<QueryResult> {
        let state = std::mem::replace(&mut self.txn, Txn::Idle);
        self.vars.set_internal("transaction_status", "NoTxn");
        match state {
            Txn::Idle => Ok(QueryResult {
                notices: vec![no_transaction_warning()],
                ..ended("COMMIT")
            }),
            Txn::Failed(_) => Ok(ended("ROLLBACK")),
            Txn::CommitWait => Ok(ended("COMMIT")),
            Txn::Open(buf) => {
                commit(&self.server, buf).await?;
                Ok(ended("COMMIT"))
            }
        }
    }

    pub(super) fn rollback(&mut self) -> QueryResult {
        let state = std::mem::replace(&mut self.txn, Txn::Idle);
        self.vars.set_internal("transaction_status", "NoTxn");
        match state {
            Txn::Idle => QueryResult {
                notices: vec![no_transaction_warning()],
                ..ended("ROLLBACK")
            },
            _ => ended("ROLLBACK"),
        }
    }

    /// SAVEPOINT: `cockroach_restart` must come first in the transaction (CockroachDB's rule:
    /// restarting discards everything before it); any other name nests.
    pub(super) fn savepoint(&mut self, name: &str) -> Result<QueryResult> {
        let Txn::Open(buf) = &mut self.txn else {
            return Err(no_transaction("SAVEPOINT"));
        };
        if name == RESTART_SAVEPOINT {
            if buf.has_savepoints() {
                return Err(SqlError::new(
                    sqlstate::SYNTAX_ERROR,
                    format!("SAVEPOINT \"{RESTART_SAVEPOINT}\" cannot be nested"),
                ));
            }
            if !buf.is_untouched() {
                return Err(SqlError::new(
                    sqlstate::SYNTAX_ERROR,
                    format!(
                        "SAVEPOINT \"{RESTART_SAVEPOINT}\" needs to be the first statement in a transaction"
                    ),
                ));
            }
        }
        buf.savepoint(name);
        Ok(QueryResult::command("SAVEPOINT"))
    }

    /// RELEASE SAVEPOINT: of `cockroach_restart`, commits the transaction (the block stays
    /// until COMMIT; a failure aborts the block so that the client can restart it); of any
    /// other savepoint, forgets it and those after it.
    pub(super) async fn release_savepoint(&mut self, name: &str) -> Result<QueryResult> {
        let Txn::Open(buf) = &mut self.txn else {
            return Err(no_transaction("RELEASE SAVEPOINT"));
        };
        if !(name == RESTART_SAVEPOINT && buf.first_savepoint_is(RESTART_SAVEPOINT)) {
            buf.release(name)?;
            return Ok(QueryResult::command("RELEASE"));
        }
        let Txn::Open(buf) = std::mem::replace(&mut self.txn, Txn::CommitWait) else {
            unreachable!("matched Open just above")
        };
        if let Err(e) = commit(&self.server, buf).await {
            self.txn = Txn::Failed(fresh_buffer(true));
            return Err(e);
        }
        Ok(QueryResult::command("RELEASE"))
    }

    /// ROLLBACK TO SAVEPOINT: of `cockroach_restart`, restarts the transaction (writes and
    /// reads discarded, the savepoint kept for the next attempt); of any other savepoint,
    /// undoes the writes made after it. Either reopens an aborted block.
    pub(super) fn rollback_to_savepoint(&mut self, name: &str) -> Result<QueryResult> {
        let state = std::mem::replace(&mut self.txn, Txn::Idle);
        let mut buf = match state {
            Txn::Open(buf) | Txn::Failed(buf) => buf,
            Txn::Idle => return Err(no_transaction("ROLLBACK TO SAVEPOINT")),
            Txn::CommitWait => {
                // Not reached: `check_txn_state` refuses it first.
                self.txn = Txn::CommitWait;
                return Err(SqlError::new(
                    sqlstate::INVALID_TRANSACTION_STATE,
                    "current transaction is committed, commands ignored until end of transaction block",
                ));
            }
        };
        if name == RESTART_SAVEPOINT && buf.first_savepoint_is(RESTART_SAVEPOINT) {
            tracing::debug!("restarting a transaction (ROLLBACK TO SAVEPOINT cockroach_restart)");
            self.txn = Txn::Open(fresh_buffer(true));
            return Ok(QueryResult::command("ROLLBACK"));
        }
        let r = buf.rollback_to(name);
        self.txn = if r.is_ok() {
            Txn::Open(buf)
        } else {
            Txn::Failed(buf)
        };
        r.map(|_| QueryResult::command("ROLLBACK"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_set_keeps_the_first_value_and_flags_a_different_one() {
        let mut r = ReadSet::default();
        r.observe(b"a", Some(b"1")).expect("first read");
        r.observe(b"b", None).expect("absent");
        r.observe(b"a", Some(b"1")).expect("same value again");
        r.observe(b"b", None).expect("still absent");
        assert_eq!(
            r.observe(b"a", Some(b"2")).expect_err("changed").code(),
            "40001"
        );
        assert_eq!(r.observe(b"a", None).expect_err("deleted").code(), "40001");
        assert_eq!(
            r.observe(b"b", Some(b"x")).expect_err("inserted").code(),
            "40001"
        );
        assert_eq!(r.len(), 2);
        assert!(!r.overflowed());
    }

    #[test]
    fn a_full_read_set_stops_recording() {
        let mut r = ReadSet::default();
        for i in 0..READ_SET_MAX {
            r.observe(&(i as u64).to_be_bytes(), None).expect("fits");
        }
        assert!(!r.overflowed());
        r.observe(b"one more", Some(b"v")).expect("not an error");
        assert!(r.overflowed());
        assert_eq!(r.len(), READ_SET_MAX);
        // Keys already recorded are still checked.
        assert!(r.observe(&0u64.to_be_bytes(), Some(b"v")).is_err());
    }

    #[test]
    fn stripes_are_sorted_and_deduplicated() {
        let keys: Vec<Vec<u8>> = (0..50u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut twice = keys.clone();
        twice.extend(keys.iter().cloned());
        let a = RowLocks::stripes(keys.iter().map(Vec::as_slice));
        let b = RowLocks::stripes(twice.iter().map(Vec::as_slice));
        assert_eq!(a, b);
        assert!(a.iter().all(|s| *s < STRIPES));
    }

    #[test]
    fn lock_keys_live_beside_their_key_outside_every_real_index() {
        let mut row = ldr_types::keys::index_prefix(104, 3, ldr_types::PRIMARY_INDEX_ID);
        row.extend_from_slice(b"pk");
        let lk = lock_key(&row).expect("a table key");
        let parts = ldr_types::keys::decode_table_key(&lk).expect("a table key too");
        assert_eq!((parts.table_id, parts.shard), (104, 3), "same range");
        assert_eq!(parts.index_id, LOCK_INDEX_ID);
        assert!(
            !ldr_types::keys::index_span(104, 3, ldr_types::PRIMARY_INDEX_ID).contains_key(&lk)
        );
        // Distinct keys (also of other indexes) get distinct locks.
        let mut other = ldr_types::keys::index_prefix(104, 3, 2);
        other.extend_from_slice(b"pk");
        assert_ne!(lock_key(&other), Some(lk));
        assert_eq!(lock_key(b"\x01sys"), None);
    }

    #[test]
    fn locks_go_stale_after_the_limit() {
        let ten = LOCK_STALE.as_nanos() as u64;
        let v = lock_value(7, 1_000);
        assert!(!lock_is_stale(&v, 1_000));
        assert!(!lock_is_stale(&v, 1_000 + ten - 1));
        assert!(lock_is_stale(&v, 1_000 + ten));
        assert!(
            !lock_is_stale(&v, 0),
            "a clock behind the holder's is not stale"
        );
        assert!(lock_is_stale(b"garbage", 0));
    }

    /// A single-node cluster with an SQL server, in this process.
    async fn start_server() -> (std::sync::Arc<SqlServer>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let node = ldr_kv::KvNode::start(ldr_kv::NodeConfig {
            store_dir: dir.path().to_path_buf(),
            listen_addr: listener.local_addr().expect("bound").to_string(),
            advertise_addr: None,
            advertise_sql_addr: None,
            http_addr: "127.0.0.1:0".into(),
            join: vec![],
            cluster_name: None,
            max_clock_offset: Duration::from_millis(500),
        })
        .await
        .expect("node starts");
        let service = node.grpc_service();
        let raft = node.raft_service();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(raft)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        node.bootstrap().await.expect("bootstrap");
        node.wait_initialized().await.expect("initialized");
        let kv = node.client();
        let jobs = ldr_jobs::Registry::start(kv.clone());
        let server = SqlServer::start(kv, jobs, crate::exec::SqlConfig::default())
            .await
            .expect("sql server starts");
        (server, dir)
    }

    /// `(id, balance)` of every row.
    async fn balances(server: &std::sync::Arc<SqlServer>) -> Vec<(i64, i64)> {
        let r = server
            .execute_as(
                "root",
                "defaultdb",
                "SELECT id, balance FROM bank ORDER BY id",
            )
            .await
            .expect("select");
        r[0].rows
            .iter()
            .map(|row| match (&row[0], &row[1]) {
                (crate::Datum::Int(a), crate::Datum::Int(b)) => (*a, *b),
                other => panic!("unexpected row {other:?}"),
            })
            .collect()
    }

    /// Changes adding `delta` to each row, expecting the row as read; `stale` rows expect a
    /// value they do not hold.
    fn increments(rows: &[StoredRow], delta: i64, stale: bool, c: &Change) -> Vec<Change> {
        rows.iter()
            .map(|r| {
                let mut new = r.values.clone();
                let mut old = r.clone();
                if let crate::Datum::Int(b) = new[1] {
                    new[1] = crate::Datum::Int(b + delta);
                    if stale {
                        old.values[1] = crate::Datum::Int(b - 1);
                        old.raw = rowcodec::encode_row(&c.table, &old.values);
                    }
                }
                Change {
                    table: c.table.clone(),
                    key: r.key.clone(),
                    old: Some(old),
                    new: Some(new),
                }
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_that_fails_after_others_were_written_undoes_them() {
        let (server, _dir) = start_server().await;
        let values: Vec<String> = (0..12).map(|i| format!("({i}, 100)")).collect();
        server
            .execute_as(
                "root",
                "defaultdb",
                &format!(
                    "CREATE TABLE bank (id INT8 PRIMARY KEY, balance INT8 NOT NULL); \
                     INSERT INTO bank VALUES {}",
                    values.join(", ")
                ),
            )
            .await
            .expect("setup");
        let desc = server
            .resolve_table("defaultdb", &["bank".to_string()])
            .await
            .expect("table");
        let kv = &server.kv;
        let rows = super::super::scan::read(
            kv,
            &desc,
            &super::super::scan::Access::Full,
            kv.clock().now(),
            None,
        )
        .await
        .expect("read");
        let template = Change {
            table: desc.clone(),
            key: vec![],
            old: None,
            new: None,
        };
        let by_range = group_by_range(increments(&rows, 0, false, &template));
        assert!(by_range.len() >= 2, "rows in several ranges");
        let range_rows = |g: &Vec<Change>| -> Vec<StoredRow> {
            g.iter()
                .filter_map(|c| c.old.clone())
                .collect::<Vec<StoredRow>>()
        };
        let first = range_rows(&by_range[0]);
        let last = range_rows(by_range.last().expect("several"));

        // The first range writes, the last fails its condition: the first is undone, 40001.
        let groups = vec![
            increments(&first, 5, false, &template),
            increments(&last, 5, true, &template),
        ];
        let e = write_ranges(kv, groups)
            .await
            .expect_err("the last range fails");
        assert_eq!(e.code(), "40001", "{}", e.message());
        assert!(balances(&server).await.iter().all(|(_, b)| *b == 100));

        // Nothing stale: every range writes.
        let groups = vec![
            increments(&first, 5, false, &template),
            increments(&last, 5, false, &template),
        ];
        write_ranges(kv, groups).await.expect("commits");
        let want: i64 = 100 * 12 + 5 * (first.len() + last.len()) as i64;
        assert_eq!(
            balances(&server).await.iter().map(|(_, b)| b).sum::<i64>(),
            want
        );

        // A written range that changed again before the undo stays: 40003, not retryable.
        let now = super::super::scan::read(
            kv,
            &desc,
            &super::super::scan::Access::Keys(first.iter().map(|r| r.key.clone()).collect()),
            kv.clock().now(),
            None,
        )
        .await
        .expect("read");
        let written = increments(&now, 1, false, &template);
        write_ranges(kv, vec![written.clone()])
            .await
            .expect("writes");
        let id = match now[0].values[0] {
            crate::Datum::Int(id) => id,
            ref other => panic!("id {other:?}"),
        };
        server
            .execute_as(
                "root",
                "defaultdb",
                &format!("UPDATE bank SET balance = balance + 1000 WHERE id = {id}"),
            )
            .await
            .expect("third writer");
        let e = undo_written(kv, vec![written], read_conflict()).await;
        assert_eq!(e.code(), "40003", "{}", e.message());

        // Commit locks: a second commit on a common key waits until the first releases.
        let keys: Vec<Vec<u8>> = rows.iter().map(|r| r.key.clone()).collect();
        let first_locks = CommitLocks::acquire(kv, keys.iter()).await.expect("free");
        let second = CommitLocks::acquire(kv, keys[..1].iter());
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut second)
                .await
                .is_err(),
            "waits for the holder"
        );
        first_locks.release(kv).await;
        let second_locks = tokio::time::timeout(Duration::from_secs(30), second)
            .await
            .expect("acquired after the release")
            .expect("no error");
        second_locks.release(kv).await;
        // Released locks are tombstones: free again, and not rows of the table.
        CommitLocks::acquire(kv, keys.iter())
            .await
            .expect("free again")
            .release(kv)
            .await;
        assert_eq!(balances(&server).await.len(), 12);
    }

    #[tokio::test]
    async fn exclusive_stripes_exclude_shared_ones() {
        let locks = RowLocks::default();
        let key: &[u8] = b"row";
        let held = locks.lock([key], true).await.expect("free");
        let blocked = tokio::time::timeout(Duration::from_millis(50), locks.lock([key], false));
        assert!(blocked.await.is_err(), "a shared lock waits for the commit");
        drop(held);
        let a = locks.lock([key], false).await.expect("shared");
        let b = locks.lock([key], false).await.expect("shared twice");
        drop((a, b));
    }
}
