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
//! An explicit transaction buffers its writes (`txn_buffer::TxnBuffer`), reads one snapshot (the
//! timestamp of its first read, `Session::stmt_ts`) and remembers, in a [`ReadSet`], the
//! value of every key it read from the KV layer the first time it read it (`None`: absent).
//!
//! COMMIT of a transaction that wrote something ([`commit`]):
//! 1. takes this gateway's [`RowLocks`] exclusively for every key it read or writes;
//! 2. begins a KV transaction (`ldr_kv::KvTxn`: a PENDING record in the range of the first
//!    written key) and writes every buffered row as an intent, conditional on the value the
//!    transaction read (`Condition::Expect`); a failed condition is 40001 and the KV
//!    transaction is rolled back (its intents disappear);
//! 3. with every intent in place, re-reads the keys it read but did not write, and re-scans
//!    the spans it scanned (a primary-key range, a whole table, a secondary-index prefix):
//!    any change of a key read, or any row version in a scanned span newer than the
//!    transaction's snapshot that it did not write (a phantom), is 40001 (CockroachDB's
//!    refresh of read spans, done once at COMMIT);
//! 4. commits the record: from that instant all of the transaction is visible and none of it
//!    before. Intents are resolved in the background. A pusher that aborted the transaction
//!    makes the COMMIT fail with 40001 (`TransactionAbortedError`), nothing applied; a record
//!    write whose result cannot be learned is 40003.
//!
//! A commit of one range with no other key read writes one atomic batch instead (one-phase
//! commit, no record). See docs/architecture.md, "Transactions across ranges".
//!
//! Limits (documented departures from CockroachDB's serializable isolation):
//! - read-only transactions are not validated (they read one snapshot);
//! - the read set holds at most `txn_buffer::READ_SET_MAX` keys; keys read beyond are refreshed as
//!   spans (any newer version of them is a conflict, even one that wrote the same value).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::future::join_all;
use ldr_kv::KvClient;
use ldr_types::{Span, Timestamp};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::rows::Change;
use super::txn_buffer::{TxnBuffer, read_conflict};
use super::write::{self, Applied};
use super::{QueryResult, Session, SqlServer, Txn, TxnEffect};
use crate::error::{PgError, Result, SqlError, sqlstate};
use crate::parser::Statement;

/// Number of lock stripes per gateway.
const STRIPES: usize = 4096;
/// How long a writer waits for this gateway's row locks.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Validation reads in flight at once.
const VALIDATION_CONCURRENCY: usize = 32;
/// The 40001 a transaction gets when its COMMIT finds a row written, since its snapshot,
/// into a span it scanned (a phantom, or a scanned row changed), as CockroachDB's failed
/// refresh reads.
pub(crate) fn refresh_conflict(key: &[u8]) -> SqlError {
    SqlError::new(
        sqlstate::SERIALIZATION_FAILURE,
        format!(
            "restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: \
             retry txn (RETRY_SERIALIZABLE - failed preemptive refresh due to a conflict: \
             committed value on key {})",
            ldr_types::keys::pretty_key(key)
        ),
    )
    .with_hint("retry the transaction")
}

/// Re-scans the spans a transaction scanned, at `refresh_ts` (at or above its commit
/// timestamp) and with its intents in place: a row version newer than the transaction's snapshot `read_ts` that the transaction
/// did not write itself (an insert into a scanned range, or an update of a scanned row) is a
/// conflict (40001), as CockroachDB's refresh of read spans. Another transaction's intent in
/// a span is pushed or waited for by the scan like any read.
async fn refresh_spans(
    kv: &KvClient,
    spans: &[Span],
    read_ts: Timestamp,
    refresh_ts: Timestamp,
    wrote: impl Fn(&[u8]) -> bool,
) -> Result<()> {
    for span in spans {
        for kvv in super::scan::scan_all(kv, span, refresh_ts).await? {
            if kvv.version.ts > read_ts && !wrote(&kvv.key) {
                return Err(refresh_conflict(&kvv.key));
            }
        }
    }
    Ok(())
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

/// Whether `key`'s value at `ts` is `want`.
async fn unchanged(
    kv: &KvClient,
    key: &[u8],
    want: &Option<Vec<u8>>,
    ts: Timestamp,
) -> Result<bool> {
    Ok(kv.get(key, Some(ts)).await?.and_then(|v| v.value) == *want)
}

/// Re-reads every expected key at `ts`, a bounded number at a time: the first key that
/// changed, if any.
async fn changed_key(
    kv: &KvClient,
    expected: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ts: Timestamp,
) -> Result<Option<Vec<u8>>> {
    let all: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = expected.iter().collect();
    for chunk in all.chunks(VALIDATION_CONCURRENCY) {
        let checks = join_all(chunk.iter().map(|(k, want)| unchanged(kv, k, want, ts))).await;
        for (c, (k, _)) in checks.into_iter().zip(chunk) {
            if !c? {
                return Ok(Some((*k).clone()));
            }
        }
    }
    Ok(None)
}

/// How often a COMMIT refreshes its reads because readers pushed it, before giving up
/// (40001).
const PUSHED_REFRESHES_MAX: usize = 8;

/// Applies a transaction's buffered writes at COMMIT (see the module doc).
pub(crate) async fn commit(server: &SqlServer, buf: TxnBuffer) -> Result<()> {
    let (changes, reads, read_ts) = buf.into_parts();
    if changes.is_empty() {
        return Ok(());
    }
    tracing::debug!(
        writes = changes.len(),
        reads = reads.len(),
        reads_overflowed = reads.overflowed(),
        "committing a transaction"
    );
    let (rows, spans) = reads.into_parts();
    let mut expected = expectations(rows, &changes)?;
    let _locks = server
        .row_locks
        .lock(expected.keys().map(Vec::as_slice), true)
        .await?;
    let kv = &server.kv;
    // Written keys are checked by their writes' conditions; the others are re-read.
    for ch in &changes {
        expected.remove(&ch.key);
    }
    if expected.is_empty() && spans.is_empty() && !write::spans_ranges(&changes) {
        // One range, nothing else read: one atomic batch, no record (one-phase commit).
        let applied = write::apply_unlocked(kv, &changes).await?;
        if !applied.iter().all(|a| matches!(a, Applied::Written(_))) {
            return Err(read_conflict());
        }
        return Ok(());
    }
    let txn = kv.begin_txn(&changes[0].key).await?;
    let result = async {
        let applied = write::apply_unlocked(txn.client(), &changes).await?;
        if !applied.iter().all(|a| matches!(a, Applied::Written(_))) {
            return Err(read_conflict());
        }
        // After every intent is in place: a key read that changed since is a conflict (keys
        // the writes covered, unique index entries included, were checked by their
        // conditions). The reads are validated at a timestamp at or above every intent's
        // (the write responses moved this gateway's clock past them), so they cover the
        // commit unless a reader pushes the transaction higher.
        expected.retain(|k, _| !txn.wrote(k));
        let mut refreshed_to = kv.clock().now().max(txn.max_write_ts());
        if changed_key(txn.client(), &expected, refreshed_to)
            .await?
            .is_some()
        {
            return Err(read_conflict());
        }
        if let Some(read_ts) = read_ts {
            refresh_spans(txn.client(), &spans, read_ts, refreshed_to, |k| {
                txn.wrote(k)
            })
            .await?;
        }
        // Commit; a reader that pushed the transaction above `refreshed_to` (it met one of
        // its intents) makes it refresh its reads up to the pushed timestamp first
        // (CockroachDB's refresh at commit), or fail with 40001 if one became stale.
        for _ in 0..PUSHED_REFRESHES_MAX {
            match txn.try_commit(refreshed_to).await? {
                ldr_kv::CommitAttempt::Committed(_) => return Ok(()),
                ldr_kv::CommitAttempt::Pushed(pushed_ts) => {
                    tracing::debug!(txn = %txn.id(), %pushed_ts, "refreshing the reads of a pushed transaction");
                    if let Some(key) = changed_key(txn.client(), &expected, pushed_ts).await? {
                        return Err(refresh_conflict(&key));
                    }
                    if let Some(read_ts) = read_ts {
                        refresh_spans(txn.client(), &spans, read_ts, pushed_ts, |k| {
                            txn.wrote(k)
                        })
                        .await?;
                    }
                    refreshed_to = pushed_ts;
                }
            }
        }
        Err(SqlError::new(
            sqlstate::SERIALIZATION_FAILURE,
            "restart transaction: TransactionRetryWithProtoRefreshError: the transaction kept being pushed by readers",
        )
        .with_hint("retry the transaction"))
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            txn.rollback().await;
            Err(e)
        }
    }
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
    use ldr_kv::{Condition, RowOutcome, RowWrite, ValueHeader};

    use super::super::rows::StoredRow;
    use super::*;
    use crate::rowcodec;

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

    /// The current rows at `keys`.
    async fn read_keys(
        kv: &KvClient,
        desc: &std::sync::Arc<crate::catalog::TableDescriptor>,
        keys: Vec<Vec<u8>>,
    ) -> Vec<StoredRow> {
        super::super::scan::read(
            kv,
            desc,
            &super::super::scan::Access::Keys(keys),
            kv.clock().now(),
            None,
        )
        .await
        .expect("read")
    }

    /// The write of `row` with its balance moved by `delta`, conditional on `expect`.
    fn moved(
        desc: &crate::catalog::TableDescriptor,
        row: &StoredRow,
        delta: i64,
        expect: &[u8],
    ) -> RowWrite {
        let mut values = row.values.clone();
        if let crate::Datum::Int(b) = values[1] {
            values[1] = crate::Datum::Int(b + delta);
        }
        RowWrite {
            key: row.key.clone(),
            value: Some(rowcodec::encode_row(desc, &values)),
            condition: Condition::Expect(Some(expect.to_vec())),
            header: ValueHeader::default(),
            dependents: vec![],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_across_ranges_is_all_or_nothing() {
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
        let shard = |r: &StoredRow| ldr_types::keys::decode_table_key(&r.key).map(|k| k.shard);
        let a = rows[0].clone();
        let b = rows
            .iter()
            .find(|r| shard(r) != shard(&a))
            .expect("rows in several ranges")
            .clone();

        // Readers do not wait for a pending transaction's intents: they push its timestamp
        // above their read and read past them (the previous committed values, none of the
        // transaction); the transaction then commits above the read, all of it at once.
        let txn = kv.begin_txn(&a.key).await.expect("begin");
        let outcomes = txn
            .client()
            .write(
                vec![moved(&desc, &a, -5, &a.raw), moved(&desc, &b, 5, &b.raw)],
                true,
            )
            .await
            .expect("intents");
        assert!(
            outcomes
                .iter()
                .all(|(_, o)| matches!(o, RowOutcome::Written { .. }))
        );
        let read_at = kv.clock().now();
        let seen = tokio::time::timeout(Duration::from_secs(5), balances(&server))
            .await
            .expect("a reader does not wait for the pending transaction");
        assert!(
            seen.iter().all(|(_, b)| *b == 100),
            "none of the pending transaction: {seen:?}"
        );
        let write_ts = txn.max_write_ts();
        let commit_ts = txn.commit().await.expect("commits");
        assert!(
            commit_ts > read_at && commit_ts > write_ts,
            "pushed above the read: commit {commit_ts}, read after {read_at}, written {write_ts}"
        );
        let seen = balances(&server).await;
        assert_eq!(seen.iter().map(|(_, b)| b).sum::<i64>(), 1200);
        let moved_rows: Vec<i64> = seen
            .iter()
            .filter(|(_, b)| *b != 100)
            .map(|(_, b)| *b)
            .collect();
        assert_eq!(moved_rows.len(), 2, "both rows of the commit: {seen:?}");

        // A transaction whose last range fails is rolled back: its first range is undone.
        let rows = read_keys(kv, &desc, vec![a.key.clone(), b.key.clone()]).await;
        let (a, b) = (rows[0].clone(), rows[1].clone());
        let before = balances(&server).await;
        let txn = kv.begin_txn(&a.key).await.expect("begin");
        let first = txn
            .client()
            .write(vec![moved(&desc, &a, 7, &a.raw)], true)
            .await
            .expect("a");
        assert!(matches!(first[0].1, RowOutcome::Written { .. }));
        let stale = txn
            .client()
            .write(vec![moved(&desc, &b, 7, b"not the row")], true)
            .await
            .expect("b");
        assert!(matches!(stale[0].1, RowOutcome::ConditionFailed { .. }));
        txn.rollback().await;
        assert_eq!(
            balances(&server).await,
            before,
            "nothing of the aborted transaction"
        );

        // No wound-wait: an older transaction waits for a younger one holding a row it
        // writes; when the younger one commits, the older one's write finds the row changed.
        let old = kv.begin_txn(&a.key).await.expect("begin old");
        let young = kv.begin_txn(&a.key).await.expect("begin young");
        young
            .client()
            .write(vec![moved(&desc, &a, 1, &a.raw)], true)
            .await
            .expect("young writes");
        let old_write = {
            let client = old.client().clone();
            let w = moved(&desc, &a, 2, &a.raw);
            tokio::spawn(async move { client.write(vec![w], true).await })
        };
        tokio::pin!(old_write);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut old_write)
                .await
                .is_err(),
            "the older transaction waits for the younger holder"
        );
        young.commit().await.expect("the young one commits");
        let o = old_write.await.expect("task").expect("old writes");
        assert!(
            matches!(o[0].1, RowOutcome::ConditionFailed { .. }),
            "{o:?}"
        );
        old.rollback().await;
        let after = balances(&server).await;
        assert_eq!(after.iter().map(|(_, b)| b).sum::<i64>(), 1201);

        // A coordinator that dies: its record expires, the next reader aborts it and its
        // intents disappear (readers wait for the expiry, then see none of it).
        let rows = read_keys(kv, &desc, vec![a.key.clone(), b.key.clone()]).await;
        let (a, b) = (rows[0].clone(), rows[1].clone());
        let before = balances(&server).await;
        let dead = kv.begin_txn(&a.key).await.expect("begin");
        dead.client()
            .write(
                vec![moved(&desc, &a, 9, &a.raw), moved(&desc, &b, -9, &b.raw)],
                true,
            )
            .await
            .expect("intents");
        let abandoned_at = std::time::Instant::now();
        dead.abandon();
        assert_eq!(
            balances(&server).await,
            before,
            "nothing of the dead transaction"
        );
        // A writer waits for the record to expire, aborts it, and goes through.
        let rows = read_keys(kv, &desc, vec![a.key.clone()]).await;
        let w = kv
            .write(vec![moved(&desc, &rows[0], 0, &rows[0].raw)], true)
            .await
            .expect("write");
        assert!(matches!(w[0].1, RowOutcome::Written { .. }));
        assert!(
            abandoned_at.elapsed() >= Duration::from_secs(4),
            "the writer waited for the record to expire ({:?})",
            abandoned_at.elapsed()
        );
        assert_eq!(
            balances(&server).await,
            before,
            "the dead transaction's intents are gone"
        );

        // SQL: a transfer across ranges commits through the same path.
        server
            .execute_as(
                "root",
                "defaultdb",
                "BEGIN; UPDATE bank SET balance = balance - 50 WHERE id = 1; \
                 UPDATE bank SET balance = balance + 50 WHERE id = 2; \
                 UPDATE bank SET balance = balance + 0 WHERE id = 3; COMMIT",
            )
            .await
            .expect("transfer");
        assert_eq!(
            balances(&server).await.iter().map(|(_, b)| b).sum::<i64>(),
            1201
        );
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
