//! The replication crates' views of this node's SQL catalog: the source side's
//! [`SourceCatalog`] (name resolution, REPLICATIONSOURCE checks, descriptors, schema locks) and
//! the destination side's [`DestinationTables`] (releasing schema locks).

use std::sync::Arc;

use async_trait::async_trait;
use ldr_ingest::DestinationTables;
use ldr_sql::catalog::{Catalog, TableDescriptor};
use ldr_stream::{SourceCatalog, SourceTable, StreamError};
use ldr_types::{JobId, TableId};

/// [`SourceCatalog`] over the node's catalog.
pub struct SqlSourceCatalog {
    pub catalog: Arc<Catalog>,
    /// A secure node checks the password of every stream request.
    pub secure: bool,
}

fn sql_to_stream(e: ldr_sql::SqlError) -> StreamError {
    match e {
        ldr_sql::SqlError::Kv(k) => StreamError::Kv(k),
        other => StreamError::Internal(other.to_string()),
    }
}

fn source_table(t: &TableDescriptor) -> Result<SourceTable, StreamError> {
    Ok(SourceTable {
        table_id: t.id,
        name: t.qualified_name(),
        descriptor: serde_json::to_vec(t)
            .map_err(|e| StreamError::Internal(format!("cannot encode descriptor: {e}")))?,
    })
}

/// Splits `db.schema.t` / `db.t` / `t` (a name as the destination user wrote it).
pub fn split_name(name: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

impl SqlSourceCatalog {
    async fn resolve(&self, name: &str) -> Result<Arc<TableDescriptor>, StreamError> {
        let parts = split_name(name);
        let not_found = || StreamError::NotFound(format!("relation \"{name}\" does not exist"));
        let (db, schema, table) = match parts.as_slice() {
            [t] => ("defaultdb".to_string(), "public".to_string(), t.clone()),
            [d, t] => (d.clone(), "public".to_string(), t.clone()),
            [d, s, t] => (d.clone(), s.clone(), t.clone()),
            _ => return Err(not_found()),
        };
        let database = self
            .catalog
            .database(&db)
            .await
            .map_err(sql_to_stream)?
            .ok_or_else(not_found)?;
        self.catalog
            .table(database.id, &schema, &table)
            .await
            .map_err(sql_to_stream)?
            .ok_or_else(not_found)
    }
}

#[async_trait]
impl SourceCatalog for SqlSourceCatalog {
    async fn authenticate(&self, user: &str, password: &str) -> Result<(), StreamError> {
        if !self.secure {
            return Ok(());
        }
        let failed = || {
            StreamError::Unauthenticated(format!(
                "password authentication failed for user \"{user}\""
            ))
        };
        let record = self
            .catalog
            .user(user)
            .await
            .map_err(sql_to_stream)?
            .ok_or_else(failed)?;
        if record.login && record.check_password(password) {
            Ok(())
        } else {
            Err(failed())
        }
    }

    async fn resolve_for_replication(
        &self,
        user: &str,
        names: &[String],
    ) -> Result<Vec<SourceTable>, StreamError> {
        let record = self
            .catalog
            .user(user)
            .await
            .map_err(sql_to_stream)?
            .ok_or_else(|| {
                StreamError::Unauthenticated(format!(
                    "password authentication failed for user {user}"
                ))
            })?;
        let system = record.is_admin()
            || ["REPLICATIONSOURCE", "REPLICATION", "ALL"]
                .iter()
                .any(|p| record.system_privileges.contains(*p));
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let t = self.resolve(name).await?;
            let on_table = t.owner == user
                || t.privileges
                    .get(user)
                    .is_some_and(|p| p.contains("REPLICATIONSOURCE") || p.contains("ALL"));
            if !system && !on_table {
                return Err(StreamError::PermissionDenied(format!(
                    "failed privilege check: table or system level REPLICATIONSOURCE privilege required: user {user} does not have REPLICATIONSOURCE privilege on relation {}",
                    t.name
                )));
            }
            out.push(source_table(&t)?);
        }
        Ok(out)
    }

    async fn tables(&self, ids: &[TableId]) -> Result<Vec<SourceTable>, StreamError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let t = self
                .catalog
                .table_by_id(*id)
                .await
                .map_err(sql_to_stream)?
                .ok_or_else(|| StreamError::NotFound(format!("source table {id} was dropped")))?;
            out.push(source_table(&t)?);
        }
        Ok(out)
    }

    async fn lock_tables(&self, ids: &[TableId], job_id: JobId) -> Result<(), StreamError> {
        lock(&self.catalog, ids, job_id, true)
            .await
            .map_err(sql_to_stream)
    }

    async fn unlock_tables(&self, ids: &[TableId], job_id: JobId) -> Result<(), StreamError> {
        lock(&self.catalog, ids, job_id, false)
            .await
            .map_err(sql_to_stream)
    }
}

/// Adds or removes `job_id` in the tables' schema locks (dropped tables are skipped).
async fn lock(
    catalog: &Catalog,
    ids: &[TableId],
    job_id: JobId,
    add: bool,
) -> Result<(), ldr_sql::SqlError> {
    for id in ids {
        if add {
            ldr_sql::validation::lock(catalog, *id, job_id).await?;
        } else {
            ldr_sql::validation::unlock(catalog, *id, job_id).await?;
        }
    }
    Ok(())
}

/// [`DestinationTables`] over the node's catalog.
pub struct SqlDestinationTables {
    pub catalog: Arc<Catalog>,
}

#[async_trait]
impl DestinationTables for SqlDestinationTables {
    async fn unlock_tables(&self, table_ids: &[TableId], job_id: JobId) -> Result<(), String> {
        lock(&self.catalog, table_ids, job_id, false)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::split_name;

    #[test]
    fn names_split_on_unquoted_dots() {
        assert_eq!(split_name("db.public.t"), vec!["db", "public", "t"]);
        assert_eq!(split_name("t"), vec!["t"]);
        assert_eq!(split_name("\"my.db\".t"), vec!["my.db", "t"]);
        assert_eq!(split_name("\"a\"\"b\".t"), vec!["a\"b", "t"]);
    }
}
