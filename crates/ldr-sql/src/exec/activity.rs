//! The open explicit transactions of this node's sessions, for `SHOW [LOCAL] TRANSACTIONS`
//! and `crdb_internal.node_transactions` (CockroachDB's columns).
//!
//! A session registers its transaction at BEGIN ([`OpenTxns::register`]) and holds the
//! returned [`OpenTxnGuard`] while the block is open: the guard's drop (COMMIT, ROLLBACK, a
//! failed COMMIT, or the session's end) removes it. The session counts its statements and
//! client-side retries (`ROLLBACK TO SAVEPOINT cockroach_restart`) on the shared entry.
//!
//! Limits: explicit transactions only (an implicit statement's transaction is not listed),
//! and this node's sessions only (`SHOW CLUSTER TRANSACTIONS` and
//! `crdb_internal.cluster_transactions` need a node-to-node status call we do not have).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ldr_types::Timestamp;
use parking_lot::Mutex;

use crate::datum::Datum;
use crate::types::SqlType;

use super::ColumnInfo;

/// What SHOW TRANSACTIONS says about one open transaction.
#[derive(Debug, Clone)]
pub(crate) struct TxnActivity {
    /// A UUID, as CockroachDB prints transaction ids.
    pub id: String,
    pub session_id: String,
    /// Who runs it (only admins see other users' transactions).
    pub user: String,
    /// Wall clock at BEGIN, microseconds since the epoch.
    pub start_us: i64,
    pub application_name: String,
    pub num_stmts: i64,
    /// Client-side restarts (`ROLLBACK TO SAVEPOINT cockroach_restart`).
    pub num_retries: i64,
    /// The snapshot its reads use, once it has read.
    pub read_ts: Option<Timestamp>,
}

impl TxnActivity {
    /// CockroachDB's `txn_string` (`"sql txn" meta={id=… iso=Serializable …} stat=PENDING`).
    fn txn_string(&self) -> String {
        let short: String = self.id.chars().take(8).collect();
        let ts = self
            .read_ts
            .map(|t| {
                format!(
                    "{}.{:09},{}",
                    t.wall_time_ns / 1_000_000_000,
                    t.wall_time_ns % 1_000_000_000,
                    t.logical
                )
            })
            .unwrap_or_else(|| "0,0".into());
        format!(
            "\"sql txn\" meta={{id={short} iso=Serializable pri=0.00000000 epo={} ts={ts}}} lock=false stat=PENDING rts={ts}",
            self.num_retries
        )
    }
}

/// This node's open transactions.
#[derive(Default)]
pub(crate) struct OpenTxns {
    next_key: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Mutex<TxnActivity>>>>,
}

/// An open transaction's registration; dropping it ends the registration.
pub(crate) struct OpenTxnGuard {
    registry: Arc<OpenTxns>,
    key: u64,
    pub(crate) activity: Arc<Mutex<TxnActivity>>,
}

impl Drop for OpenTxnGuard {
    fn drop(&mut self) {
        self.registry.open.lock().remove(&self.key);
    }
}

impl OpenTxns {
    pub(crate) fn register(self: &Arc<Self>, activity: TxnActivity) -> OpenTxnGuard {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Mutex::new(activity));
        self.open.lock().insert(key, activity.clone());
        OpenTxnGuard {
            registry: self.clone(),
            key,
            activity,
        }
    }

    /// Every open transaction, oldest first.
    pub(crate) fn list(&self) -> Vec<TxnActivity> {
        let mut out: Vec<TxnActivity> = self
            .open
            .lock()
            .values()
            .map(|a| a.lock().clone())
            .collect();
        out.sort_by(|a, b| (a.start_us, &a.id).cmp(&(b.start_us, &b.id)));
        out
    }
}

fn col(name: &str, ty: SqlType) -> ColumnInfo {
    ColumnInfo {
        name: name.to_string(),
        ty,
    }
}

fn text(s: &str) -> Datum {
    Datum::String(s.to_string())
}

/// `SHOW TRANSACTIONS` columns (CockroachDB's).
pub(crate) fn show_columns() -> Vec<ColumnInfo> {
    vec![
        col("node_id", SqlType::Int8),
        col("id", SqlType::Uuid),
        col("application_name", SqlType::String),
        col("num_stmts", SqlType::Int8),
        col("num_retries", SqlType::Int8),
        col("num_auto_retries", SqlType::Int8),
        col("last_auto_retry_reason", SqlType::String),
        col("isolation_level", SqlType::String),
        col("priority", SqlType::String),
        col("quality_of_service", SqlType::String),
    ]
}

pub(crate) fn show_rows(node_id: i64, txns: &[TxnActivity]) -> Vec<Vec<Datum>> {
    txns.iter()
        .map(|t| {
            vec![
                Datum::Int(node_id),
                uuid(&t.id),
                text(&t.application_name),
                Datum::Int(t.num_stmts),
                Datum::Int(t.num_retries),
                Datum::Int(0),
                Datum::Null,
                text("SERIALIZABLE"),
                text("NORMAL"),
                text("regular"),
            ]
        })
        .collect()
}

/// `crdb_internal.node_transactions` columns (CockroachDB's).
pub(crate) fn table_columns() -> Vec<ColumnInfo> {
    vec![
        col("id", SqlType::Uuid),
        col("node_id", SqlType::Int8),
        col("session_id", SqlType::String),
        col("start", SqlType::Timestamp),
        col("txn_string", SqlType::String),
        col("application_name", SqlType::String),
        col("num_stmts", SqlType::Int8),
        col("num_retries", SqlType::Int8),
        col("num_auto_retries", SqlType::Int8),
        col("last_auto_retry_reason", SqlType::String),
        col("isolation_level", SqlType::String),
        col("priority", SqlType::String),
        col("quality_of_service", SqlType::String),
    ]
}

pub(crate) fn table_rows(node_id: i64, txns: &[TxnActivity]) -> Vec<Vec<Datum>> {
    txns.iter()
        .map(|t| {
            vec![
                uuid(&t.id),
                Datum::Int(node_id),
                text(&t.session_id),
                Datum::Timestamp(t.start_us),
                text(&t.txn_string()),
                text(&t.application_name),
                Datum::Int(t.num_stmts),
                Datum::Int(t.num_retries),
                Datum::Int(0),
                Datum::Null,
                text("SERIALIZABLE"),
                text("NORMAL"),
                text("regular"),
            ]
        })
        .collect()
}

fn uuid(id: &str) -> Datum {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => Datum::Uuid(*u.as_bytes()),
        Err(_) => Datum::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(id: &str, start_us: i64) -> TxnActivity {
        TxnActivity {
            id: id.to_string(),
            session_id: "s".into(),
            user: "root".into(),
            start_us,
            application_name: "app".into(),
            num_stmts: 2,
            num_retries: 1,
            read_ts: Some(Timestamp::new(1_700_000_000_123_456_789, 3)),
        }
    }

    #[test]
    fn registrations_end_with_their_guards_and_list_oldest_first() {
        let r = Arc::new(OpenTxns::default());
        let a = r.register(activity("00000000-0000-0000-0000-00000000000b", 20));
        let b = r.register(activity("00000000-0000-0000-0000-00000000000a", 10));
        let ids: Vec<String> = r.list().into_iter().map(|t| t.id).collect();
        assert_eq!(
            ids,
            vec![
                "00000000-0000-0000-0000-00000000000a",
                "00000000-0000-0000-0000-00000000000b"
            ]
        );
        b.activity.lock().num_stmts += 1;
        assert_eq!(r.list()[0].num_stmts, 3, "counts are shared");
        drop(b);
        assert_eq!(r.list().len(), 1);
        drop(a);
        assert!(r.list().is_empty());
    }

    #[test]
    fn rows_have_one_value_per_column() {
        let t = [activity("00000000-0000-0000-0000-00000000000a", 10)];
        assert_eq!(show_rows(1, &t)[0].len(), show_columns().len());
        assert_eq!(table_rows(1, &t)[0].len(), table_columns().len());
        let s = t[0].txn_string();
        assert!(
            s.starts_with("\"sql txn\" meta={id=00000000 iso=Serializable")
                && s.contains("epo=1 ts=1700000000.123456789,3")
                && s.ends_with("stat=PENDING rts=1700000000.123456789,3"),
            "{s}"
        );
    }
}
