//! Catalog descriptors, stored as JSON in the system keyspace.
//!
//! A table has columns with stable ids (never reused), a primary index (id 1, named
//! `<table>_pkey`), secondary indexes (`<table>_<cols>_key` when unique, else
//! `<table>_<cols>_idx`), foreign keys, CHECK constraints, storage parameters, the ids of
//! the LDR jobs that lock its schema, and its shard count. `version` increases with every
//! change.

use std::collections::{BTreeMap, BTreeSet};

use ldr_types::{IndexId, JobId, TableId};
use serde::{Deserialize, Serialize};

use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::types::SqlType;

pub type ColumnId = u32;
pub type DatabaseId = u32;

/// The names of the two system columns every table exposes.
pub const MVCC_TIMESTAMP_COLUMN: &str = "crdb_internal_mvcc_timestamp";
pub const ORIGIN_TIMESTAMP_COLUMN: &str = "crdb_internal_origin_timestamp";
/// The hidden primary key column of a table created without a primary key.
pub const ROWID_COLUMN: &str = "rowid";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDescriptor {
    pub id: ColumnId,
    pub name: String,
    #[serde(rename = "type")]
    pub ty: SqlType,
    pub nullable: bool,
    /// The DEFAULT expression as SQL text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_expr: Option<String>,
    /// `NOT VISIBLE`: left out of `SELECT *`.
    #[serde(default)]
    pub hidden: bool,
    /// What rows written before the column existed read for it (the ADD COLUMN default, as
    /// text of the column's type). `None`: NULL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent_value: Option<String>,
}

impl ColumnDescriptor {
    /// The value a row that lacks this column reads.
    pub fn absent_datum(&self) -> Datum {
        match &self.absent_value {
            Some(text) => Datum::parse_text(text, &self.ty).unwrap_or(Datum::Null),
            None => Datum::Null,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexColumn {
    pub column_id: ColumnId,
    #[serde(default)]
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDescriptor {
    pub id: IndexId,
    pub name: String,
    pub unique: bool,
    pub columns: Vec<IndexColumn>,
    /// `STORING (…)` columns (informational: rows are always read from the primary index).
    #[serde(default)]
    pub storing: Vec<ColumnId>,
    /// Being built: writes maintain it, reads do not use it yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub write_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKeyDescriptor {
    pub name: String,
    pub columns: Vec<ColumnId>,
    pub ref_table_id: TableId,
    pub ref_columns: Vec<ColumnId>,
    /// `NO ACTION` / `RESTRICT` (the only enforced behaviours).
    pub on_delete: String,
    pub on_update: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckDescriptor {
    pub name: String,
    /// The expression as SQL text.
    pub expr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDescriptor {
    pub id: TableId,
    pub version: u64,
    pub database_id: DatabaseId,
    pub database: String,
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnDescriptor>,
    pub next_column_id: ColumnId,
    pub primary_index: IndexDescriptor,
    #[serde(default)]
    pub indexes: Vec<IndexDescriptor>,
    pub next_index_id: IndexId,
    #[serde(default)]
    pub foreign_keys: Vec<ForeignKeyDescriptor>,
    #[serde(default)]
    pub checks: Vec<CheckDescriptor>,
    #[serde(default)]
    pub storage_params: BTreeMap<String, String>,
    /// LDR jobs that lock this table's schema.
    #[serde(default)]
    pub ldr_job_ids: Vec<JobId>,
    pub shard_count: u16,
    pub owner: String,
    /// user → privileges (upper-case names).
    #[serde(default)]
    pub privileges: BTreeMap<String, BTreeSet<String>>,
}

impl TableDescriptor {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}.{}", self.database, self.schema, self.name)
    }

    pub fn column(&self, name: &str) -> Option<&ColumnDescriptor> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn column_by_id(&self, id: ColumnId) -> Option<&ColumnDescriptor> {
        self.columns.iter().find(|c| c.id == id)
    }

    pub fn column_index_by_id(&self, id: ColumnId) -> Option<usize> {
        self.columns.iter().position(|c| c.id == id)
    }

    pub fn require_column(&self, name: &str) -> Result<&ColumnDescriptor> {
        self.column(name)
            .ok_or_else(|| SqlError::undefined_column(name))
    }

    /// Positions (in `columns`) of the primary key columns.
    pub fn pk_positions(&self) -> Vec<usize> {
        self.index_positions(&self.primary_index)
    }

    /// Positions (in `columns`) of `index`'s columns.
    pub fn index_positions(&self, index: &IndexDescriptor) -> Vec<usize> {
        index
            .columns
            .iter()
            .map(|c| {
                self.column_index_by_id(c.column_id).expect(
                    "index columns exist in their table: every descriptor is validated when \
                     decoded (TableDescriptor::decode) and before it is written",
                )
            })
            .collect()
    }

    pub fn index_column_names(&self, index: &IndexDescriptor) -> Vec<String> {
        index
            .columns
            .iter()
            .filter_map(|c| self.column_by_id(c.column_id).map(|d| d.name.clone()))
            .collect()
    }

    /// Every index, primary first.
    pub fn all_indexes(&self) -> impl Iterator<Item = &IndexDescriptor> {
        std::iter::once(&self.primary_index).chain(self.indexes.iter())
    }

    pub fn index_by_name(&self, name: &str) -> Option<&IndexDescriptor> {
        self.all_indexes().find(|i| i.name == name)
    }

    pub fn is_schema_locked(&self) -> bool {
        !self.ldr_job_ids.is_empty()
    }

    /// Visible (non-hidden) columns, for `SELECT *`.
    pub fn visible_columns(&self) -> impl Iterator<Item = (usize, &ColumnDescriptor)> {
        self.columns.iter().enumerate().filter(|(_, c)| !c.hidden)
    }

    /// A name for a new index on `cols`, following CockroachDB (`t_a_b_key` / `t_a_b_idx`),
    /// made unique with a numeric suffix.
    pub fn new_index_name(&self, cols: &[String], unique: bool) -> String {
        let base = format!(
            "{}_{}_{}",
            self.name,
            cols.join("_"),
            if unique { "key" } else { "idx" }
        );
        if self.index_by_name(&base).is_none() {
            return base;
        }
        (1..)
            .map(|i| format!("{base}{i}"))
            .find(|n| self.index_by_name(n).is_none())
            .expect("some suffix is free")
    }

    /// Decodes a descriptor's JSON (from the catalog, or from another cluster over the
    /// network) and validates it, so that nothing downstream meets a dangling reference.
    pub fn decode(bytes: &[u8]) -> Result<TableDescriptor> {
        let desc: TableDescriptor = serde_json::from_slice(bytes)
            .map_err(|e| SqlError::internal(format!("invalid table descriptor: {e}")))?;
        desc.validate().map_err(|e| {
            SqlError::internal(format!(
                "invalid table descriptor {} ({}): {e}",
                desc.id, desc.name
            ))
        })?;
        Ok(desc)
    }

    /// Checks the descriptor's internal references.
    pub fn validate(&self) -> Result<()> {
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for c in &self.columns {
            if !names.insert(c.name.as_str()) {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_COLUMN,
                    format!("column \"{}\" specified more than once", c.name),
                ));
            }
            if !ids.insert(c.id) {
                return Err(SqlError::internal(format!(
                    "column id {} is used more than once",
                    c.id
                )));
            }
        }
        if self.primary_index.columns.is_empty() {
            return Err(SqlError::internal(format!(
                "primary index {} has no columns",
                self.primary_index.name
            )));
        }
        for idx in self.all_indexes() {
            for c in &idx.columns {
                let col = self.column_by_id(c.column_id).ok_or_else(|| {
                    SqlError::internal(format!(
                        "index {} references missing column {}",
                        idx.name, c.column_id
                    ))
                })?;
                if !col.ty.is_indexable() {
                    return Err(SqlError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "column {} is of type {} and thus is not indexable",
                            col.name,
                            col.ty.sql_name().to_lowercase()
                        ),
                    ));
                }
            }
        }
        let mut index_names = BTreeSet::new();
        for idx in self.all_indexes() {
            if !index_names.insert(idx.name.as_str()) {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_TABLE,
                    format!("index with name \"{}\" already exists", idx.name),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseDescriptor {
    pub id: DatabaseId,
    pub name: String,
    pub owner: String,
    /// Schemas besides `public`.
    #[serde(default)]
    pub schemas: Vec<String>,
    /// user → privileges on the database (`CREATE`, `CONNECT`, `ALL`, …).
    #[serde(default)]
    pub privileges: BTreeMap<String, BTreeSet<String>>,
}

impl DatabaseDescriptor {
    pub fn has_schema(&self, name: &str) -> bool {
        name == "public" || self.schemas.iter().any(|s| s == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableDescriptor {
        TableDescriptor {
            id: 104,
            version: 1,
            database_id: 100,
            database: "defaultdb".into(),
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                ColumnDescriptor {
                    id: 1,
                    name: "id".into(),
                    ty: SqlType::Int8,
                    nullable: false,
                    default_expr: None,
                    hidden: false,
                    absent_value: None,
                },
                ColumnDescriptor {
                    id: 2,
                    name: "s".into(),
                    ty: SqlType::String,
                    nullable: true,
                    default_expr: None,
                    hidden: false,
                    absent_value: Some("x".into()),
                },
            ],
            next_column_id: 3,
            primary_index: IndexDescriptor {
                id: 1,
                name: "t_pkey".into(),
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
            storage_params: BTreeMap::new(),
            ldr_job_ids: vec![],
            shard_count: 3,
            owner: "root".into(),
            privileges: BTreeMap::new(),
        }
    }

    #[test]
    fn json_round_trip_and_helpers() {
        let t = table();
        let json = serde_json::to_string(&t).expect("serializes");
        let back: TableDescriptor = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, t);
        assert_eq!(t.pk_positions(), vec![0]);
        assert_eq!(t.new_index_name(&["s".into()], false), "t_s_idx");
        assert_eq!(t.new_index_name(&["s".into()], true), "t_s_key");
        assert_eq!(
            t.column("s").map(|c| c.absent_datum()),
            Some(Datum::String("x".into()))
        );
        assert_eq!(t.qualified_name(), "defaultdb.public.t");
        t.validate().expect("valid");
        let mut bad = t.clone();
        bad.columns.push(bad.columns[0].clone());
        assert_eq!(bad.validate().expect_err("duplicate").code(), "42701");
    }

    #[test]
    fn decode_refuses_what_does_not_validate() {
        // A descriptor from another cluster whose index names a column it does not have:
        // an error here, instead of a panic wherever the index is used.
        let t = table();
        let json = serde_json::to_vec(&t).expect("serializes");
        assert_eq!(TableDescriptor::decode(&json).expect("valid"), t);
        let mut dangling = t.clone();
        dangling.primary_index.columns[0].column_id = 99;
        let err = TableDescriptor::decode(&serde_json::to_vec(&dangling).expect("serializes"))
            .expect_err("dangling index column");
        assert_eq!(err.code(), "XX000");
        assert!(
            err.to_string().contains("references missing column 99"),
            "{err}"
        );
        let mut no_pk = t.clone();
        no_pk.primary_index.columns.clear();
        assert!(TableDescriptor::decode(&serde_json::to_vec(&no_pk).expect("serializes")).is_err());
        let mut same_id = t.clone();
        same_id.columns[1].id = 1;
        assert!(
            TableDescriptor::decode(&serde_json::to_vec(&same_id).expect("serializes")).is_err()
        );
        assert!(TableDescriptor::decode(b"{\"id\": 1}").is_err());
        assert!(TableDescriptor::decode(b"\xff").is_err());
    }
}
