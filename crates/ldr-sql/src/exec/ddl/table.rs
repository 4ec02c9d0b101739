//! CREATE TABLE (columns, keys, checks, foreign keys, storage parameters) and DROP TABLE.

use super::*;

/// Storage parameters accepted by `WITH (…)` / `ALTER TABLE … SET (…)`.
pub const STORAGE_PARAMS: &[&str] = &[
    "ttl",
    "ttl_expire_after",
    "ttl_expiration_expression",
    "ttl_job_cron",
    "ttl_select_batch_size",
    "ttl_delete_batch_size",
    "ttl_select_rate_limit",
    "ttl_delete_rate_limit",
    "ttl_row_stats_poll_interval",
    "ttl_pause",
    "ttl_label_metrics",
    "ttl_disable_changefeed_replication",
    "fillfactor",
    "autovacuum_enabled",
    "exclude_data_from_backup",
    "schema_locked",
    "sql_stats_automatic_collection_enabled",
    "sql_stats_forecasts_enabled",
];

pub(super) fn storage_value(e: &crate::parser::Expr) -> Result<String> {
    use sqlparser::ast as sql;
    Ok(match e {
        sql::Expr::Value(v) => match &v.value {
            sql::Value::SingleQuotedString(s)
            | sql::Value::DollarQuotedString(sql::DollarQuotedString { value: s, .. }) => s.clone(),
            sql::Value::Number(n, _) => n.clone(),
            sql::Value::Boolean(b) => b.to_string(),
            other => other.to_string(),
        },
        sql::Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    })
}

/// Validates `(key, value)` storage parameters; returns them normalized.
pub(super) fn storage_params(
    params: &[(String, crate::parser::Expr)],
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, e) in params {
        let key = k.to_ascii_lowercase();
        if !STORAGE_PARAMS.contains(&key.as_str()) {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid storage parameter \"{key}\""),
            ));
        }
        let v = storage_value(e)?;
        match key.as_str() {
            "ttl_expire_after" => {
                let iv = crate::interval::Interval::parse(&v).map_err(|_| {
                    SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("value of \"ttl_expire_after\" must be an interval: \"{v}\""),
                    )
                })?;
                if iv.total_micros() <= 0 {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "value of \"ttl_expire_after\" must be at least zero",
                    ));
                }
            }
            "ttl"
            | "ttl_pause"
            | "ttl_label_metrics"
            | "ttl_disable_changefeed_replication"
            | "autovacuum_enabled"
            | "exclude_data_from_backup"
            | "schema_locked" => {
                let b = crate::datum::parse_bool(&v).ok_or_else(|| {
                    SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("parameter \"{key}\" requires a Boolean value"),
                    )
                })?;
                out.push((key, b.to_string()));
                continue;
            }
            "ttl_job_cron" => {
                crate::cron::Cron::parse(&v)
                    .map_err(|e| SqlError::new(sqlstate::INVALID_PARAMETER_VALUE, e))?;
            }
            "ttl_expiration_expression" => {
                crate::parser::parse_expr(&v).map_err(|e| {
                    SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("ttl_expiration_expression \"{v}\" does not parse: {e}"),
                    )
                })?;
            }
            "ttl_select_batch_size"
            | "ttl_delete_batch_size"
            | "ttl_select_rate_limit"
            | "ttl_delete_rate_limit"
            | "fillfactor" => {
                v.parse::<i64>().map_err(|_| {
                    SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("parameter \"{key}\" requires an integer value"),
                    )
                })?;
            }
            _ => {}
        }
        out.push((key, v));
    }
    Ok(out)
}

pub(super) fn apply_storage(map: &mut BTreeMap<String, String>, params: Vec<(String, String)>) {
    let setting_expire = params
        .iter()
        .any(|(k, _)| k == "ttl_expire_after" || k == "ttl_expiration_expression");
    for (k, v) in params {
        map.insert(k, v);
    }
    if setting_expire && !map.contains_key("ttl") {
        map.insert("ttl".into(), "true".into());
    }
}

pub(super) async fn create_table(s: &mut Session, ct: &CreateTable) -> Result<QueryResult> {
    // The DLQ schema is created on demand.
    let dlq_db = match ct.name.as_slice() {
        [sch, _] if sch == "crdb_replication" => Some(s.database().to_string()),
        [db, sch, _] if sch == "crdb_replication" => Some(db.clone()),
        _ => None,
    };
    if let Some(db) = dlq_db
        && let Some(d) = s.server.catalog.database(&db).await?
        && !d.has_schema("crdb_replication")
    {
        s.server
            .catalog
            .update_database(&db, &|d| {
                if !d.has_schema("crdb_replication") {
                    d.schemas.push("crdb_replication".into());
                }
                Ok(())
            })
            .await?;
    }
    let target = resolve::target(&s.server.catalog, s.database(), &ct.name).await?;
    privilege::require_database_create(s, &target.database).await?;
    if matches!(target.database.name.as_str(), "system") {
        return Err(SqlError::insufficient_privilege(
            "user does not have CREATE privilege on database system",
        ));
    }
    if let Some(existing) = s
        .server
        .catalog
        .table(target.database.id, &target.schema, &target.name)
        .await?
    {
        let _ = existing;
        if ct.if_not_exists {
            return Ok(QueryResult::command("CREATE TABLE"));
        }
        return Err(SqlError::new(
            sqlstate::DUPLICATE_TABLE,
            format!("relation \"{}\" already exists", target.display()),
        ));
    }
    let id = s.server.catalog.allocate_id().await?;
    let mut desc = TableDescriptor {
        id,
        version: 1,
        database_id: target.database.id,
        database: target.database.name.clone(),
        schema: target.schema.clone(),
        name: target.name.clone(),
        columns: vec![],
        next_column_id: 1,
        primary_index: IndexDescriptor {
            id: 1,
            name: format!("{}_pkey", target.name),
            unique: true,
            columns: vec![],
            storing: vec![],
            write_only: false,
        },
        indexes: vec![],
        next_index_id: 2,
        foreign_keys: vec![],
        checks: vec![],
        storage_params: BTreeMap::new(),
        ldr_job_ids: vec![],
        shard_count: 1,
        owner: s.user.clone(),
        privileges: BTreeMap::new(),
    };
    // Columns first (constraints may refer to any of them).
    let mut pk: Option<(Option<String>, Vec<IndexColumnDef>)> = None;
    let mut index_defs: Vec<IndexDef> = Vec::new();
    let mut check_defs: Vec<(Option<String>, String)> = Vec::new();
    let mut fk_defs: Vec<ForeignKeyDef> = Vec::new();
    let mut families = 0;
    for el in &ct.elements {
        if let TableElement::Column(def) = el {
            let col = column_from_def(def, desc.next_column_id)?;
            desc.next_column_id += 1;
            if def.primary_key {
                if pk.is_some() {
                    return Err(multiple_pks(&desc.name));
                }
                pk = Some((
                    None,
                    vec![IndexColumnDef {
                        name: def.name.clone(),
                        descending: false,
                    }],
                ));
            }
            if let Some(name) = &def.unique {
                index_defs.push(IndexDef {
                    name: name.clone(),
                    unique: true,
                    columns: vec![IndexColumnDef {
                        name: def.name.clone(),
                        descending: false,
                    }],
                    storing: vec![],
                });
            }
            for (name, e) in &def.checks {
                check_defs.push((name.clone(), e.to_string()));
            }
            if let Some(fk) = &def.references {
                fk_defs.push(fk.clone());
            }
            desc.columns.push(col);
        }
    }
    for el in &ct.elements {
        match el {
            TableElement::Column(_) => {}
            TableElement::PrimaryKey { name, columns } => {
                if pk.is_some() {
                    return Err(multiple_pks(&desc.name));
                }
                pk = Some((name.clone(), columns.clone()));
            }
            TableElement::Index(def) => index_defs.push(def.clone()),
            TableElement::Check { name, expr } => check_defs.push((name.clone(), expr.to_string())),
            TableElement::ForeignKey(fk) => fk_defs.push(fk.clone()),
            TableElement::Family => families += 1,
        }
    }
    if families > 1 {
        return Err(SqlError::unsupported(
            "multiple column families are not supported",
        ));
    }
    match pk {
        Some((name, cols)) => {
            desc.primary_index.columns = index_columns(&desc.columns, &cols)?;
            if let Some(n) = name {
                desc.primary_index.name = n;
            }
            for c in &desc.primary_index.columns {
                let col = desc
                    .columns
                    .iter_mut()
                    .find(|d| d.id == c.column_id)
                    .expect("pk columns were resolved");
                col.nullable = false;
            }
        }
        None => {
            if desc.column(ROWID_COLUMN).is_some() {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_COLUMN,
                    "column \"rowid\" specified more than once",
                ));
            }
            let id = desc.next_column_id;
            desc.next_column_id += 1;
            desc.columns.push(ColumnDescriptor {
                id,
                name: ROWID_COLUMN.into(),
                ty: SqlType::Int8,
                nullable: false,
                default_expr: Some("unique_rowid()".into()),
                hidden: true,
                absent_value: None,
            });
            desc.primary_index.columns = vec![IndexColumn {
                column_id: id,
                descending: false,
            }];
        }
    }
    for def in &index_defs {
        let idx = new_index(&desc, def)?;
        desc.next_index_id += 1;
        desc.indexes.push(idx);
    }
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for (name, text) in check_defs {
        check_expr(&desc.columns, &desc.name, &text, None, true)?;
        let name = name.unwrap_or_else(|| generated_check_name(&taken, &text, &desc.columns));
        taken.insert(name.clone());
        desc.checks.push(CheckDescriptor { name, expr: text });
    }
    for def in &fk_defs {
        let fk = build_fk(s, &desc, def, &taken).await?;
        taken.insert(fk.name.clone());
        desc.foreign_keys.push(fk);
    }
    let params = storage_params(&ct.storage_params)?;
    apply_storage(&mut desc.storage_params, params);
    desc.validate()?;
    let table_name = target.display();
    match s.server.catalog.create_table(desc).await? {
        Some(_) => Ok(QueryResult::command("CREATE TABLE")),
        None if ct.if_not_exists => Ok(QueryResult::command("CREATE TABLE")),
        None => Err(SqlError::new(
            sqlstate::DUPLICATE_TABLE,
            format!("relation \"{table_name}\" already exists"),
        )),
    }
}

pub(super) fn multiple_pks(table: &str) -> SqlError {
    SqlError::new(
        sqlstate::INVALID_TABLE_DEFINITION,
        format!("multiple primary keys for table \"{table}\" are not allowed"),
    )
}

pub(super) async fn drop_tables(
    s: &mut Session,
    names: &[Vec<String>],
    if_exists: bool,
    cascade: bool,
) -> Result<QueryResult> {
    for name in names {
        let Some(desc) = resolve::lookup_table(&s.server.catalog, s.database(), name).await? else {
            if if_exists {
                continue;
            }
            return Err(SqlError::undefined_table(name.join(".")));
        };
        privilege::require_table(s, &desc, "DROP").await?;
        validation::check_schema_change_allowed(&desc, &SchemaChange::Other)?;
        let children = write::referencing_tables(&s.server.catalog, &desc).await?;
        let others: Vec<_> = children.iter().filter(|(c, _)| c.id != desc.id).collect();
        if let Some((child, fk)) = others.first() {
            if !cascade {
                return Err(SqlError::new(
                    sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                    format!(
                        "\"{}\" is referenced by foreign key from table \"{}\"",
                        desc.name, child.name
                    ),
                )
                .with_hint(format!(
                    "drop the constraint \"{}\" first, or use CASCADE",
                    fk.name
                )));
            }
            for (child, fk) in others {
                validation::check_schema_change_allowed(child, &SchemaChange::Other)?;
                let fk_name = fk.name.clone();
                s.server
                    .catalog
                    .update_table(child.id, &move |d| {
                        d.foreign_keys.retain(|f| f.name != fk_name);
                        Ok(())
                    })
                    .await?;
            }
        }
        s.server.catalog.drop_table(&desc).await?;
    }
    Ok(QueryResult::command("DROP TABLE"))
}
