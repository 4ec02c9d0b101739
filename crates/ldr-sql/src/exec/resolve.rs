//! Name resolution: `t`, `schema.t`, `db.t`, `db.schema.t` against the session's database,
//! as CockroachDB resolves them (a two-part name is tried as schema.table first, then as
//! database.table in `public`).

use std::sync::Arc;

use crate::catalog::{Catalog, DatabaseDescriptor, TableDescriptor};
use crate::error::{Result, SqlError, sqlstate};

/// Where a (possibly new) table name points.
#[derive(Debug, Clone)]
pub(crate) struct TableTarget {
    pub database: Arc<DatabaseDescriptor>,
    pub schema: String,
    pub name: String,
}

impl TableTarget {
    pub fn display(&self) -> String {
        format!("{}.{}.{}", self.database.name, self.schema, self.name)
    }
}

/// Resolves the parts of a table name to its database, schema and name (the table itself
/// may not exist).
pub(crate) async fn target(
    catalog: &Catalog,
    current_db: &str,
    name: &[String],
) -> Result<TableTarget> {
    match name {
        [t] => {
            let database = catalog.require_database(current_db).await?;
            Ok(TableTarget {
                database,
                schema: "public".into(),
                name: t.clone(),
            })
        }
        [a, t] => {
            if let Some(db) = catalog.database(current_db).await?
                && db.has_schema(a)
            {
                return Ok(TableTarget {
                    database: db,
                    schema: a.clone(),
                    name: t.clone(),
                });
            }
            match catalog.database(a).await? {
                Some(database) => Ok(TableTarget { database, schema: "public".into(), name: t.clone() }),
                None => Err(SqlError::new(sqlstate::INVALID_SCHEMA_NAME, format!("cannot create \"{a}.{t}\" because the target database or schema does not exist"))
                    .with_hint("verify that the current database and search_path are valid and/or the target database exists")),
            }
        }
        [d, s, t] => {
            let database = catalog.require_database(d).await?;
            if !database.has_schema(s) {
                return Err(SqlError::new(
                    sqlstate::INVALID_SCHEMA_NAME,
                    format!("schema \"{s}\" does not exist"),
                ));
            }
            Ok(TableTarget {
                database,
                schema: s.clone(),
                name: t.clone(),
            })
        }
        _ => Err(SqlError::new(
            sqlstate::SYNTAX_ERROR,
            format!(
                "improper qualified name (too many dotted names): {}",
                name.join(".")
            ),
        )),
    }
}

fn display(name: &[String]) -> String {
    name.join(".")
}

/// Resolves an existing table (42P01 if missing).
pub(crate) async fn resolve_table(
    catalog: &Catalog,
    current_db: &str,
    name: &[String],
) -> Result<Arc<TableDescriptor>> {
    match lookup_table(catalog, current_db, name).await? {
        Some(t) => Ok(t),
        None => Err(SqlError::undefined_table(display(name))),
    }
}

/// Resolves a table, `None` if it does not exist (errors for a missing database).
pub(crate) async fn lookup_table(
    catalog: &Catalog,
    current_db: &str,
    name: &[String],
) -> Result<Option<Arc<TableDescriptor>>> {
    match name {
        [t] => {
            let Some(db) = catalog.database(current_db).await? else {
                return Err(SqlError::undefined_database(current_db));
            };
            catalog.table(db.id, "public", t).await
        }
        [a, t] => {
            if let Some(db) = catalog.database(current_db).await?
                && db.has_schema(a)
                && let Some(found) = catalog.table(db.id, a, t).await?
            {
                return Ok(Some(found));
            }
            match catalog.database(a).await? {
                Some(db) => catalog.table(db.id, "public", t).await,
                None => Ok(None),
            }
        }
        [d, s, t] => match catalog.database(d).await? {
            Some(db) => catalog.table(db.id, s, t).await,
            None => Err(SqlError::undefined_database(d)),
        },
        _ => Err(SqlError::new(
            sqlstate::SYNTAX_ERROR,
            format!(
                "improper qualified name (too many dotted names): {}",
                display(name)
            ),
        )),
    }
}
