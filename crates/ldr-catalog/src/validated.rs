//! The validated-mode write interface: one replicated row, to be written through the SQL
//! write path with every constraint (NOT NULL, CHECK, FOREIGN KEY, UNIQUE) checked and the
//! last-write-wins condition. `ldr-sql`'s executor implements [`ValidatedWriter`];
//! `ldr-ingest`'s validated applier calls it, so the replication side needs neither the
//! executor nor the parser to write a checked row.

use std::sync::Arc;

use ldr_kv::ValueHeader;
use ldr_types::{OriginId, Timestamp};

use crate::catalog::TableDescriptor;
use crate::datum::Datum;
use crate::error::Result;

/// One replicated row for validated mode.
#[derive(Debug, Clone)]
pub struct ValidatedWrite {
    pub table: Arc<TableDescriptor>,
    /// The primary key columns (in primary key order) of the row.
    pub pk: Vec<Datum>,
    /// The new row in `table`'s column order; `None` deletes.
    pub new: Option<Vec<Datum>>,
    /// `origin_id` / `origin_ts` of the source write.
    pub header: ValueHeader,
    /// This cluster's origin id for LWW tie-breaks against local rows.
    pub local_origin_id: OriginId,
}

/// What a validated write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidatedOutcome {
    Applied(Timestamp),
    /// The destination already held a newer version (logical timestamp).
    LwwLost(Timestamp),
}

/// Writes replicated rows through the SQL write path (implemented by `ldr-sql`'s
/// `SqlServer`). A row that fails a constraint comes back as an error with its SQLSTATE
/// (23502, 23503, 23505, 23514); nothing of it was written.
#[async_trait::async_trait]
pub trait ValidatedWriter: Send + Sync {
    async fn apply_validated(&self, write: ValidatedWrite) -> Result<ValidatedOutcome>;
}
