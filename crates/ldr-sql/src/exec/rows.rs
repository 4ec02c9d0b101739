//! Rows as the executor moves them between reads, writes and a transaction's buffer.

use std::sync::Arc;

use ldr_types::Timestamp;

use crate::catalog::TableDescriptor;
use crate::datum::Datum;
use crate::expr::timestamp_decimal;

/// A row as stored, with what the write path and the system columns need.
#[derive(Debug, Clone)]
pub(crate) struct StoredRow {
    pub key: Vec<u8>,
    pub values: Vec<Datum>,
    /// The stored value bytes (what a conditional write expects).
    pub raw: Vec<u8>,
    pub ts: Timestamp,
    pub origin_ts: Timestamp,
    /// Written by the open transaction (not yet committed).
    pub buffered: bool,
}

impl StoredRow {
    /// The row with the two system columns appended (see [`table_scope`]).
    pub fn scope_values(&self) -> Vec<Datum> {
        let mut v = self.values.clone();
        v.push(if self.buffered || self.ts.is_zero() {
            Datum::Null
        } else {
            Datum::Decimal(timestamp_decimal(self.ts))
        });
        v.push(if self.origin_ts.is_zero() || self.buffered {
            Datum::Null
        } else {
            Datum::Decimal(timestamp_decimal(self.origin_ts))
        });
        v
    }
}

/// One row change.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub table: Arc<TableDescriptor>,
    /// The primary key of the row.
    pub key: Vec<u8>,
    /// The committed row being replaced (`None`: the row must not exist).
    pub old: Option<StoredRow>,
    pub new: Option<Vec<Datum>>,
}
