//! Descriptors for unit tests of the layers that read them (the row codec here, the
//! executor's access-path planning in `ldr-sql`), so they test against one table shape
//! instead of each writing its own copy of it.
//!
//! Compiled for this crate's tests and, through the `test-fixtures` feature, for crates that
//! enable it in their dev-dependencies; never part of a release build.

use std::collections::BTreeMap;

use crate::catalog::{ColumnDescriptor, IndexColumn, IndexDescriptor, TableDescriptor};
use crate::types::SqlType;

/// `defaultdb.public.t (id INT8 PRIMARY KEY, email STRING UNIQUE, city STRING, INDEX (city))`
/// as table 104 with column ids 1, 2, 3, index ids 1 (`t_pkey`), 2 (`t_email_key`) and 3
/// (`t_city_idx`), every column nullable, spread over `shard_count` shards.
pub fn users_table(shard_count: u16) -> TableDescriptor {
    let column = |id, name: &str, ty| ColumnDescriptor {
        id,
        name: name.into(),
        ty,
        nullable: true,
        default_expr: None,
        hidden: false,
        absent_value: None,
    };
    let index = |id, name: &str, unique, column_id| IndexDescriptor {
        id,
        name: name.into(),
        unique,
        columns: vec![IndexColumn {
            column_id,
            descending: false,
        }],
        storing: vec![],
        write_only: false,
    };
    TableDescriptor {
        id: 104,
        version: 1,
        database_id: 100,
        database: "defaultdb".into(),
        schema: "public".into(),
        name: "t".into(),
        columns: vec![
            column(1, "id", SqlType::Int8),
            column(2, "email", SqlType::String),
            column(3, "city", SqlType::String),
        ],
        next_column_id: 4,
        primary_index: index(1, "t_pkey", true, 1),
        indexes: vec![
            index(2, "t_email_key", true, 2),
            index(3, "t_city_idx", false, 3),
        ],
        next_index_id: 4,
        foreign_keys: vec![],
        checks: vec![],
        storage_params: BTreeMap::new(),
        ldr_job_ids: vec![],
        shard_count,
        owner: "root".into(),
        privileges: BTreeMap::new(),
    }
}
