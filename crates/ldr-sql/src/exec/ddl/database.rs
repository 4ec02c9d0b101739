//! CREATE DATABASE, CREATE SCHEMA and DROP DATABASE.

use super::*;

pub(super) async fn create_database(
    s: &mut Session,
    name: &str,
    if_not_exists: bool,
) -> Result<QueryResult> {
    if !privilege::has_system_privilege(&s.server.catalog, &s.user, "CREATEDB").await? {
        return Err(SqlError::insufficient_privilege(format!(
            "user {} does not have CREATEDB privilege",
            s.user
        )));
    }
    if !s.server.catalog.create_database(name, &s.user).await? && !if_not_exists {
        return Err(SqlError::new(
            sqlstate::DUPLICATE_DATABASE,
            format!("database \"{name}\" already exists"),
        ));
    }
    Ok(QueryResult::command("CREATE DATABASE"))
}

pub(super) async fn create_schema(
    s: &mut Session,
    name: &[String],
    if_not_exists: bool,
) -> Result<QueryResult> {
    let (db, schema) = match name {
        [sch] => (s.database().to_string(), sch.clone()),
        [d, sch] => (d.clone(), sch.clone()),
        _ => {
            return Err(SqlError::new(
                sqlstate::SYNTAX_ERROR,
                "improper qualified name",
            ));
        }
    };
    let desc = s.server.catalog.require_database(&db).await?;
    privilege::require_database_create(s, &desc).await?;
    if desc.has_schema(&schema)
        || matches!(
            schema.as_str(),
            "pg_catalog" | "information_schema" | "crdb_internal"
        )
    {
        if if_not_exists {
            return Ok(QueryResult::command("CREATE SCHEMA"));
        }
        return Err(SqlError::new(
            sqlstate::DUPLICATE_SCHEMA,
            format!("schema \"{schema}\" already exists"),
        ));
    }
    let sch = schema.clone();
    s.server
        .catalog
        .update_database(&db, &move |d| {
            if !d.has_schema(&sch) {
                d.schemas.push(sch.clone());
            }
            Ok(())
        })
        .await?;
    Ok(QueryResult::command("CREATE SCHEMA"))
}

pub(super) async fn drop_database(
    s: &mut Session,
    name: &str,
    if_exists: bool,
) -> Result<QueryResult> {
    let Some(db) = s.server.catalog.database(name).await? else {
        if if_exists {
            return Ok(QueryResult::command("DROP DATABASE"));
        }
        return Err(SqlError::undefined_database(name));
    };
    if name == "system" {
        return Err(SqlError::insufficient_privilege(
            "cannot drop the system database",
        ));
    }
    if db.owner != s.user {
        privilege::require_admin(s, "drop databases they do not own").await?;
    }
    let tables = s.server.catalog.tables_in(db.id).await?;
    for t in &tables {
        validation::check_schema_change_allowed(t, &SchemaChange::Other)?;
    }
    for t in &tables {
        s.server.catalog.drop_table(t).await?;
    }
    s.server.catalog.drop_database_record(name).await?;
    Ok(QueryResult::command("DROP DATABASE"))
}
