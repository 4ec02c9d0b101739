//! What a statement returns: its columns, rows and command tag, and what it did to the
//! session's transaction. A leaf of the executor: every statement family builds these.

use super::RowStream;
use crate::datum::Datum;
use crate::types::SqlType;

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub ty: SqlType,
}

impl ColumnInfo {
    pub fn new(name: &str, ty: SqlType) -> ColumnInfo {
        ColumnInfo {
            name: name.to_string(),
            ty,
        }
    }
}

/// What a statement did to the session's transaction (for the wire protocol's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEffect {
    None,
    Began,
    Ended,
}

/// The session's transaction state as the wire protocol reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Idle,
    InTransaction,
    Failed,
}

/// The result of one statement.
#[derive(Debug)]
pub struct QueryResult {
    /// The command tag without the row count (`SELECT`, `INSERT`, `CREATE TABLE`, …).
    pub tag: String,
    /// Rows affected or returned, shown in the tag when set.
    pub rows_affected: Option<usize>,
    /// Result columns; empty for statements that return no rows.
    pub columns: Vec<ColumnInfo>,
    pub rows: Vec<Vec<Datum>>,
    pub returns_rows: bool,
    pub txn: TxnEffect,
    /// Warnings for the client, sent before the command completes (PostgreSQL's
    /// NoticeResponse with severity WARNING), e.g. `COMMIT` outside a transaction block.
    pub notices: Vec<crate::error::PgError>,
    /// Rows that keep coming after the statement returned (a sinkless changefeed): the wire
    /// protocol sends them as they arrive, after `rows` (empty then). `None` for every
    /// other statement.
    pub stream: Option<RowStream>,
}

impl QueryResult {
    pub fn command(tag: &str) -> QueryResult {
        QueryResult {
            tag: tag.to_string(),
            rows_affected: None,
            columns: vec![],
            rows: vec![],
            returns_rows: false,
            txn: TxnEffect::None,
            notices: vec![],
            stream: None,
        }
    }

    pub fn count(tag: &str, n: usize) -> QueryResult {
        QueryResult {
            rows_affected: Some(n),
            ..QueryResult::command(tag)
        }
    }

    pub fn rows(columns: Vec<ColumnInfo>, rows: Vec<Vec<Datum>>) -> QueryResult {
        let n = rows.len();
        QueryResult {
            tag: "SELECT".into(),
            rows_affected: Some(n),
            columns,
            rows,
            returns_rows: true,
            txn: TxnEffect::None,
            notices: vec![],
            stream: None,
        }
    }

    /// A result whose rows arrive on `stream` while the client reads them (the row count
    /// of its command tag is known only at the end).
    pub fn streamed(columns: Vec<ColumnInfo>, stream: RowStream) -> QueryResult {
        QueryResult {
            rows_affected: None,
            stream: Some(stream),
            ..QueryResult::rows(columns, vec![])
        }
    }

    /// The full command tag (`INSERT 0 3`, `SELECT 2`, `CREATE TABLE`).
    pub fn command_tag(&self) -> String {
        match (self.tag.as_str(), self.rows_affected) {
            ("INSERT", Some(n)) => format!("INSERT 0 {n}"),
            (t, Some(n)) => format!("{t} {n}"),
            (t, None) => t.to_string(),
        }
    }
}

/// A result column (shorthand for [`ColumnInfo::new`]).
pub(super) fn col(name: &str, ty: SqlType) -> ColumnInfo {
    ColumnInfo::new(name, ty)
}

/// A text value.
pub(super) fn s(v: impl Into<String>) -> Datum {
    Datum::String(v.into())
}
