//! Logical replication schema rules: the compatibility check of a source and destination
//! table at stream creation (CockroachDB's `CheckLogicalReplicationCompatibility`, same
//! texts), the schema lock (`ldr_job_ids` on the descriptor), and which schema changes a
//! locked table still allows.

use std::sync::Arc;

use ldr_types::{JobId, TableId};

use crate::catalog::{Catalog, TableDescriptor};
use crate::error::{Result, SqlError, sqlstate};

const CANNOT_LDR: &str = "cannot create logical replication stream";

fn incompatible(msg: String) -> SqlError {
    SqlError::new(
        sqlstate::INVALID_TABLE_DEFINITION,
        format!("{CANNOT_LDR}: {msg}"),
    )
}

/// Checks that `dst` can receive logical replication from `src`. With `skip_equivalence`
/// (`SKIP SCHEMA CHECK`), only the destination's own restrictions are checked.
pub fn check_compatibility(
    src: &TableDescriptor,
    dst: &TableDescriptor,
    skip_equivalence: bool,
) -> Result<()> {
    if !skip_equivalence {
        check_columns_match(src, dst).map_err(incompatible)?;
    }
    // One column family only (we never create more, the check is kept for completeness).
    for c in &dst.primary_index.columns {
        let col = dst
            .column_by_id(c.column_id)
            .ok_or_else(|| SqlError::internal("primary key column missing"))?;
        if col.ty.is_composite() {
            return Err(incompatible(format!(
                "table {} has a primary key column ({}) with composite encoding",
                dst.name, col.name
            )));
        }
    }
    if !skip_equivalence {
        check_unique_indexes_match(src, dst).map_err(incompatible)?;
        check_checks_match(src, dst).map_err(incompatible)?;
        check_foreign_keys_match(src, dst).map_err(incompatible)?;
    }
    Ok(())
}

fn check_columns_match(
    src: &TableDescriptor,
    dst: &TableDescriptor,
) -> std::result::Result<(), String> {
    if src.columns.len() != dst.columns.len() {
        return Err(format!(
            "destination table {} has {} columns, but the source table {} has {} columns",
            dst.name,
            dst.columns.len(),
            src.name,
            src.columns.len()
        ));
    }
    for (i, (s, d)) in src.columns.iter().zip(&dst.columns).enumerate() {
        if s.name != d.name {
            return Err(format!(
                "destination table {} column {} at position {} does not match source table {} column {}",
                dst.name, d.name, i, src.name, s.name
            ));
        }
        if s.nullable != d.nullable {
            return Err(format!(
                "destination table {} column {} has nullable={}, but the source table {} has nullable={}",
                dst.name, d.name, d.nullable, src.name, s.nullable
            ));
        }
        if s.ty != d.ty {
            return Err(format!(
                "destination table {} column {} has type {}, but the source table {} has type {}: destination type {} does not match source type {}",
                dst.name,
                d.name,
                d.ty.sql_name(),
                src.name,
                s.ty.sql_name(),
                d.ty.sql_name(),
                s.ty.sql_name()
            ));
        }
    }
    Ok(())
}

fn unique_column_sets(t: &TableDescriptor) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = t
        .indexes
        .iter()
        .filter(|i| i.unique)
        .map(|i| t.index_column_names(i))
        .collect();
    v.sort();
    v
}

fn check_unique_indexes_match(
    src: &TableDescriptor,
    dst: &TableDescriptor,
) -> std::result::Result<(), String> {
    let s = unique_column_sets(src);
    let d = unique_column_sets(dst);
    if s.len() != d.len() {
        return Err(format!(
            "destination table {} has {} UNIQUE indexes, but the source table {} has {} UNIQUE indexes",
            dst.name,
            d.len(),
            src.name,
            s.len()
        ));
    }
    if s != d {
        return Err(format!(
            "destination table {} UNIQUE indexes do not match source table {}",
            dst.name, src.name
        ));
    }
    Ok(())
}

fn check_checks_match(
    src: &TableDescriptor,
    dst: &TableDescriptor,
) -> std::result::Result<(), String> {
    if src.checks.len() != dst.checks.len() {
        return Err(format!(
            "destination table {} has {} CHECK constraints, but the source table {} has {} CHECK constraints",
            dst.name,
            dst.checks.len(),
            src.name,
            src.checks.len()
        ));
    }
    let mut s: Vec<&str> = src.checks.iter().map(|c| c.expr.as_str()).collect();
    let mut d: Vec<&str> = dst.checks.iter().map(|c| c.expr.as_str()).collect();
    s.sort_unstable();
    d.sort_unstable();
    if s != d {
        return Err(format!(
            "destination table {} CHECK constraints do not match source table {}",
            dst.name, src.name
        ));
    }
    Ok(())
}

/// The foreign keys of both tables, compared by name, local columns (by name) and actions
/// (the referenced tables are in different clusters: their ids differ).
fn check_foreign_keys_match(
    src: &TableDescriptor,
    dst: &TableDescriptor,
) -> std::result::Result<(), String> {
    let shape = |t: &TableDescriptor| {
        let mut fks: Vec<(String, Vec<String>, String, String)> = t
            .foreign_keys
            .iter()
            .map(|fk| {
                let columns = fk
                    .columns
                    .iter()
                    .map(|id| t.column_by_id(*id).map_or("?".into(), |c| c.name.clone()))
                    .collect();
                (
                    fk.name.clone(),
                    columns,
                    fk.on_delete.to_ascii_uppercase(),
                    fk.on_update.to_ascii_uppercase(),
                )
            })
            .collect();
        fks.sort();
        fks
    };
    let (s, d) = (shape(src), shape(dst));
    if s.len() != d.len() {
        return Err(format!(
            "destination table {} has {} foreign key constraints, but the source table {} has {} foreign key constraints",
            dst.name,
            d.len(),
            src.name,
            s.len()
        ));
    }
    if let Some((sf, df)) = s.iter().zip(&d).find(|(a, b)| a != b) {
        return Err(format!(
            "destination table {} foreign key constraint {} ({}) does not match source table {} foreign key constraint {} ({})",
            dst.name,
            df.0,
            df.1.join(", "),
            src.name,
            sf.0,
            sf.1.join(", ")
        ));
    }
    Ok(())
}

/// Foreign keys need validated mode (the immediate applier does not check them).
pub fn check_foreign_keys_allowed(dst: &TableDescriptor, mode_validated: bool) -> Result<()> {
    if !mode_validated && !dst.foreign_keys.is_empty() {
        return Err(SqlError::new(
            sqlstate::INVALID_TABLE_DEFINITION,
            "foreign keys are only supported with MODE = 'validated'",
        ));
    }
    Ok(())
}

/// Adds an LDR job to a table's schema lock (idempotent).
pub async fn lock(
    catalog: &Catalog,
    table_id: TableId,
    job_id: JobId,
) -> Result<Arc<TableDescriptor>> {
    if let Some(t) = catalog.table_by_id(table_id).await?
        && t.ldr_job_ids.contains(&job_id)
    {
        return Ok(t);
    }
    catalog
        .update_table(table_id, &move |d: &mut TableDescriptor| {
            if !d.ldr_job_ids.contains(&job_id) {
                d.ldr_job_ids.push(job_id);
            }
            Ok(())
        })
        .await
}

/// Removes an LDR job from a table's schema lock (idempotent; a dropped table is fine).
pub async fn unlock(catalog: &Catalog, table_id: TableId, job_id: JobId) -> Result<()> {
    match catalog.table_by_id(table_id).await? {
        None => return Ok(()),
        Some(t) if !t.ldr_job_ids.contains(&job_id) => return Ok(()),
        Some(_) => {}
    }
    match catalog
        .update_table(table_id, &move |d: &mut TableDescriptor| {
            d.ldr_job_ids.retain(|j| *j != job_id);
            Ok(())
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == sqlstate::UNDEFINED_TABLE => Ok(()),
        Err(e) => Err(e),
    }
}

/// A schema change, classified for the lock check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaChange {
    CreateIndex {
        unique: bool,
    },
    DropIndex,
    /// `ALTER TABLE … SET (k = v, …)` as the only change.
    SetStorageParams(Vec<String>),
    /// `ALTER TABLE … RESET (k, …)` as the only change.
    ResetStorageParams(Vec<String>),
    ConfigureZone,
    /// Anything else (ADD/DROP COLUMN, DROP TABLE, constraints, combined ALTERs, …).
    Other,
}

/// Storage parameters whose change adds or removes a column (a backfill): blocked.
const BACKFILLING_PARAMS: &[&str] = &["ttl", "ttl_expire_after"];

/// Refuses schema changes a locked table does not allow, with CockroachDB's message.
pub fn check_schema_change_allowed(desc: &TableDescriptor, change: &SchemaChange) -> Result<()> {
    if !desc.is_schema_locked() {
        return Ok(());
    }
    let allowed = match change {
        SchemaChange::CreateIndex { unique } => !unique,
        SchemaChange::DropIndex | SchemaChange::ConfigureZone => true,
        SchemaChange::SetStorageParams(keys) | SchemaChange::ResetStorageParams(keys) => !keys
            .iter()
            .any(|k| BACKFILLING_PARAMS.contains(&k.as_str())),
        SchemaChange::Other => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "this schema change is disallowed on table {} because it is referenced by one or more logical replication jobs",
                desc.name
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CheckDescriptor, ColumnDescriptor, IndexColumn, IndexDescriptor};
    use crate::types::SqlType;

    fn table(name: &str) -> TableDescriptor {
        let col = |id, n: &str, ty| ColumnDescriptor {
            id,
            name: n.into(),
            ty,
            nullable: id != 1,
            default_expr: None,
            hidden: false,
            absent_value: None,
        };
        TableDescriptor {
            id: 104,
            version: 1,
            database_id: 100,
            database: "a".into(),
            schema: "public".into(),
            name: name.into(),
            columns: vec![
                col(1, "pk", SqlType::Int8),
                col(2, "payload", SqlType::String),
            ],
            next_column_id: 3,
            primary_index: IndexDescriptor {
                id: 1,
                name: format!("{name}_pkey"),
                unique: true,
                columns: vec![IndexColumn {
                    column_id: 1,
                    descending: false,
                }],
                storing: vec![],
                write_only: false,
            },
            indexes: vec![],
            next_index_id: 2,
            foreign_keys: vec![],
            checks: vec![],
            storage_params: Default::default(),
            ldr_job_ids: vec![],
            shard_count: 3,
            owner: "root".into(),
            privileges: Default::default(),
        }
    }

    #[test]
    fn compatibility_texts() {
        let src = table("tab");
        let mut dst = table("tab");
        check_compatibility(&src, &dst, false).expect("identical tables are compatible");
        // Different column ids are fine: names and types matter.
        dst.columns[1].id = 7;
        check_compatibility(&src, &dst, false).expect("ids may differ");

        let mut extra = src.clone();
        extra.columns.push(ColumnDescriptor {
            id: 3,
            name: "new_col".into(),
            ty: SqlType::Int8,
            nullable: false,
            default_expr: None,
            hidden: false,
            absent_value: None,
        });
        let e = check_compatibility(&extra, &dst, false).expect_err("column count");
        assert_eq!(e.code(), "42P16");
        assert_eq!(
            e.message(),
            "cannot create logical replication stream: destination table tab has 2 columns, but the source table tab has 3 columns"
        );

        let mut typed = dst.clone();
        typed.columns[1].ty = SqlType::Int8;
        let e = check_compatibility(&src, &typed, false).expect_err("type");
        assert!(e.message().starts_with("cannot create logical replication stream: destination table tab column payload has type INT8, but the source table tab has type STRING"), "{}", e.message());

        let mut composite = dst.clone();
        composite.columns[0].ty = SqlType::DECIMAL;
        let e = check_compatibility(&composite, &composite, true).expect_err("composite pk");
        assert_eq!(
            e.message(),
            "cannot create logical replication stream: table tab has a primary key column (pk) with composite encoding"
        );

        let mut uniq = dst.clone();
        uniq.indexes.push(IndexDescriptor {
            id: 2,
            name: "payload_idx".into(),
            unique: true,
            columns: vec![IndexColumn {
                column_id: 7,
                descending: false,
            }],
            storing: vec![],
            write_only: false,
        });
        let mut uniq_src = src.clone();
        uniq_src.indexes.push(IndexDescriptor {
            id: 2,
            name: "multi_idx".into(),
            unique: true,
            columns: vec![IndexColumn {
                column_id: 1,
                descending: false,
            }],
            storing: vec![],
            write_only: false,
        });
        let e = check_compatibility(&uniq_src, &uniq, false).expect_err("unique mismatch");
        assert_eq!(
            e.message(),
            "cannot create logical replication stream: destination table tab UNIQUE indexes do not match source table tab"
        );
        check_compatibility(&uniq_src, &uniq, true).expect("skip schema check");

        let mut checks = dst.clone();
        checks.checks.push(CheckDescriptor {
            name: "c".into(),
            expr: "pk > 0".into(),
        });
        let mut checks_src = src.clone();
        checks_src.checks.push(CheckDescriptor {
            name: "c".into(),
            expr: "length(payload) > 1".into(),
        });
        let e = check_compatibility(&checks_src, &checks, false).expect_err("check mismatch");
        assert_eq!(
            e.message(),
            "cannot create logical replication stream: destination table tab CHECK constraints do not match source table tab"
        );
    }

    #[test]
    fn lock_allows_only_listed_changes() {
        let mut t = table("tab");
        for c in [
            SchemaChange::Other,
            SchemaChange::CreateIndex { unique: true },
        ] {
            check_schema_change_allowed(&t, &c).expect("unlocked table allows everything");
        }
        t.ldr_job_ids.push(7);
        let allowed = [
            SchemaChange::CreateIndex { unique: false },
            SchemaChange::DropIndex,
            SchemaChange::ConfigureZone,
            SchemaChange::SetStorageParams(vec!["ttl_job_cron".into()]),
            SchemaChange::SetStorageParams(vec!["ttl_disable_changefeed_replication".into()]),
            SchemaChange::SetStorageParams(vec!["fillfactor".into()]),
            SchemaChange::ResetStorageParams(vec!["ttl_job_cron".into()]),
        ];
        for c in allowed {
            check_schema_change_allowed(&t, &c)
                .unwrap_or_else(|e| panic!("{c:?}: {}", e.message()));
        }
        let blocked = [
            SchemaChange::CreateIndex { unique: true },
            SchemaChange::Other,
            SchemaChange::SetStorageParams(vec!["ttl".into(), "ttl_expire_after".into()]),
            SchemaChange::SetStorageParams(vec!["ttl_expire_after".into()]),
            SchemaChange::ResetStorageParams(vec!["ttl".into()]),
            SchemaChange::ResetStorageParams(vec!["ttl_expire_after".into()]),
        ];
        for c in blocked {
            let e = check_schema_change_allowed(&t, &c).expect_err("blocked");
            assert_eq!(
                e.message(),
                "this schema change is disallowed on table tab because it is referenced by one or more logical replication jobs"
            );
        }
        let mut fk = t.clone();
        fk.foreign_keys.push(crate::catalog::ForeignKeyDescriptor {
            name: "f".into(),
            columns: vec![1],
            ref_table_id: 9,
            ref_columns: vec![1],
            on_delete: "NO ACTION".into(),
            on_update: "NO ACTION".into(),
        });
        assert_eq!(
            check_foreign_keys_allowed(&fk, false)
                .expect_err("immediate")
                .message(),
            "foreign keys are only supported with MODE = 'validated'"
        );
        check_foreign_keys_allowed(&fk, true).expect("validated");
    }
}
