//! What the producer needs from the source cluster's SQL catalog, as a trait the server
//! implements with `ldr-sql` (name resolution, privileges, descriptors, schema locks).

use async_trait::async_trait;
use ldr_types::{JobId, TableId};

use crate::error::Result;

/// A source table as the stream exposes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    pub table_id: TableId,
    /// Fully qualified: `db.public.t`.
    pub name: String,
    /// The JSON-encoded table descriptor (decoded by the destination with `ldr-sql`).
    pub descriptor: Vec<u8>,
}

#[async_trait]
pub trait SourceCatalog: Send + Sync {
    /// Checks the credentials of a stream request: a secure source requires the user's
    /// password (sent over TLS); the default, for insecure sources, accepts the name.
    async fn authenticate(&self, _user: &str, _password: &str) -> Result<()> {
        Ok(())
    }

    /// Resolves `names` (as the user wrote them; `db.public.t`, `db.t`, `t` in defaultdb) and
    /// checks that `user` may replicate from each (REPLICATIONSOURCE or the deprecated
    /// REPLICATION, system-wide or on the table). Errors name the first failing table.
    async fn resolve_for_replication(
        &self,
        user: &str,
        names: &[String],
    ) -> Result<Vec<SourceTable>>;

    /// The current descriptors of `ids`.
    async fn tables(&self, ids: &[TableId]) -> Result<Vec<SourceTable>>;

    /// Records `job_id` on the tables (schema lock).
    async fn lock_tables(&self, ids: &[TableId], job_id: JobId) -> Result<()>;

    /// Removes `job_id` from the tables' locks (missing tables are fine).
    async fn unlock_tables(&self, ids: &[TableId], job_id: JobId) -> Result<()>;
}
