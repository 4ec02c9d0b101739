//! Schema validation at stream creation (CockroachDB's
//! `CheckLogicalReplicationCompatibility`): the destination must have the same columns (by
//! name, with the same types), the same UNIQUE indexes and CHECK constraints as the source;
//! primary keys with composite-encoded types (DECIMAL, FLOAT) are rejected, as are foreign keys
//! outside validated mode. Column DEFAULTs may differ: the source's values are sent. `SKIP
//! SCHEMA CHECK` bypasses all of it.

use std::collections::{BTreeMap, BTreeSet};

use ldr_sql::catalog::TableDescriptor;
use ldr_sql::types::SqlType;
use ldr_sql::{SqlError, sqlstate};

fn incompatible(message: String) -> SqlError {
    SqlError::new(
        sqlstate::INVALID_TABLE_DEFINITION,
        format!("cannot create logical replication stream: {message}"),
    )
}

/// Types whose key encoding is not their value encoding (CockroachDB's composite types).
fn is_composite(ty: &SqlType) -> bool {
    matches!(
        ty,
        SqlType::Decimal { .. } | SqlType::Float4 | SqlType::Float8
    )
}

/// The user-visible columns (the hidden `rowid` of a table without a primary key counts too:
/// both sides must have it).
fn columns(t: &TableDescriptor) -> BTreeMap<&str, &SqlType> {
    t.columns.iter().map(|c| (c.name.as_str(), &c.ty)).collect()
}

fn unique_indexes(t: &TableDescriptor) -> BTreeSet<Vec<String>> {
    t.indexes
        .iter()
        .filter(|i| i.unique)
        .map(|i| t.index_column_names(i))
        .collect()
}

fn checks(t: &TableDescriptor) -> BTreeSet<String> {
    t.checks
        .iter()
        .map(|c| {
            c.expr
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
        })
        .collect()
}

/// Checks that replicating `source` into `destination` is supported.
pub fn check_compatibility(
    source: &TableDescriptor,
    destination: &TableDescriptor,
    validated: bool,
) -> Result<(), SqlError> {
    let (src, dst) = (source.qualified_name(), destination.qualified_name());
    for t in [source, destination] {
        for i in t.pk_positions() {
            let c = &t.columns[i];
            if is_composite(&c.ty) {
                return Err(incompatible(format!(
                    "table {} has a primary key column ({}) with composite encoding",
                    t.qualified_name(),
                    c.name
                )));
            }
        }
    }
    if !validated && !destination.foreign_keys.is_empty() {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "foreign keys are only supported with MODE = 'validated' (table {dst} has foreign keys)"
            ),
        ));
    }
    let (src_cols, dst_cols) = (columns(source), columns(destination));
    if src_cols.len() != dst_cols.len() {
        return Err(incompatible(format!(
            "destination table {dst} has {} columns, but the source table {src} has {} columns",
            dst_cols.len(),
            src_cols.len()
        )));
    }
    for (name, dst_ty) in &dst_cols {
        match src_cols.get(name) {
            None => {
                return Err(incompatible(format!(
                    "destination table {dst} column {name} does not exist in the source table {src}"
                )));
            }
            Some(src_ty) if !same_type(src_ty, dst_ty) => {
                return Err(incompatible(format!(
                    "destination table {dst} column {name} has type {dst_ty}, but the source table {src} has type {src_ty}"
                )));
            }
            Some(_) => {}
        }
    }
    let src_pk: Vec<&str> = source
        .pk_positions()
        .iter()
        .map(|i| source.columns[*i].name.as_str())
        .collect();
    let dst_pk: Vec<&str> = destination
        .pk_positions()
        .iter()
        .map(|i| destination.columns[*i].name.as_str())
        .collect();
    if src_pk != dst_pk {
        return Err(incompatible(format!(
            "destination table {dst} primary key ({}) does not match the source table {src} primary key ({})",
            dst_pk.join(", "),
            src_pk.join(", ")
        )));
    }
    if unique_indexes(source) != unique_indexes(destination) {
        return Err(incompatible(format!(
            "destination table {dst} UNIQUE indexes do not match source table {src}"
        )));
    }
    if checks(source) != checks(destination) {
        return Err(incompatible(format!(
            "destination table {dst} CHECK constraints do not match source table {src}"
        )));
    }
    Ok(())
}

/// Types match when they are the same family and width; STRING/TEXT/VARCHAR without a width
/// are the same type, as in CockroachDB.
fn same_type(a: &SqlType, b: &SqlType) -> bool {
    let norm = |t: &SqlType| match t {
        SqlType::Varchar { width: None } => SqlType::String,
        other => other.clone(),
    };
    norm(a) == norm(b)
}
