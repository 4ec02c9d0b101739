//! ALTER TABLE: columns, constraints, keys, storage parameters and renames, each checked
//! against the locks of logical replication jobs (`validation`).

use super::*;

pub(super) fn lock_class(ops: &[AlterTableOp]) -> SchemaChange {
    if ops.len() != 1 {
        return SchemaChange::Other;
    }
    match &ops[0] {
        AlterTableOp::SetStorage(kv) => {
            SchemaChange::SetStorageParams(kv.iter().map(|(k, _)| k.to_ascii_lowercase()).collect())
        }
        AlterTableOp::ResetStorage(k) => {
            SchemaChange::ResetStorageParams(k.iter().map(|k| k.to_ascii_lowercase()).collect())
        }
        AlterTableOp::ConfigureZone(_) => SchemaChange::ConfigureZone,
        _ => SchemaChange::Other,
    }
}

pub(super) async fn alter_table(
    s: &mut Session,
    table: &[String],
    if_exists: bool,
    ops: &[AlterTableOp],
) -> Result<QueryResult> {
    let Some(desc) = resolve::lookup_table(&s.server.catalog, s.database(), table).await? else {
        if if_exists {
            return Ok(QueryResult::command("ALTER TABLE"));
        }
        return Err(SqlError::undefined_table(table.join(".")));
    };
    require_alter(s, &desc).await?;
    validation::check_schema_change_allowed(&desc, &lock_class(ops))?;
    for op in ops {
        // Re-read: earlier ops of the statement changed the descriptor.
        let desc = s
            .server
            .catalog
            .table_by_id(desc.id)
            .await?
            .ok_or_else(|| SqlError::undefined_table(table.join(".")))?;
        alter_op(s, &desc, op).await?;
    }
    Ok(QueryResult::command("ALTER TABLE"))
}

pub(super) async fn alter_op(
    s: &mut Session,
    desc: &Arc<TableDescriptor>,
    op: &AlterTableOp,
) -> Result<()> {
    let server = s.server.clone();
    let catalog = &server.catalog;
    match op {
        AlterTableOp::AddColumn {
            column,
            if_not_exists,
        } => {
            if desc.column(&column.name).is_some() {
                if *if_not_exists {
                    return Ok(());
                }
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_COLUMN,
                    format!(
                        "column \"{}\" of relation \"{}\" already exists",
                        column.name, desc.name
                    ),
                ));
            }
            if column.primary_key {
                return Err(SqlError::unsupported("adding a primary key column"));
            }
            let mut col = column_from_def(column, desc.next_column_id)?;
            // Rows that exist read the default (evaluated once) or NULL.
            let mut backfill_volatile = false;
            if let Some(text) = &col.default_expr {
                let e = crate::parser::parse_expr(text)?;
                let mut params = Vec::new();
                let (x, _) = Binder::new(&Scope::default(), &mut params).bind_typed(&e, &col.ty)?;
                if x.is_volatile() {
                    backfill_volatile = true;
                } else {
                    let ctx = s.eval_ctx(vec![]);
                    let v = x.eval(&[], &ctx)?.coerce_for_column(&col.ty, &col.name)?;
                    col.absent_value = v.to_text(0);
                }
            }
            if !col.nullable
                && col.absent_value.is_none()
                && !backfill_volatile
                && table_has_rows(s, desc).await?
            {
                return Err(SqlError::new(
                    sqlstate::NOT_NULL_VIOLATION,
                    format!(
                        "null value in column \"{}\" violates not-null constraint",
                        col.name
                    ),
                ));
            }
            for (name, e) in &column.checks {
                let mut cols = desc.columns.clone();
                cols.push(col.clone());
                check_expr(&cols, &desc.name, &e.to_string(), None, true)?;
                let _ = name;
            }
            let new_col = col.clone();
            let checks: Vec<(Option<String>, String)> = column
                .checks
                .iter()
                .map(|(n, e)| (n.clone(), e.to_string()))
                .collect();
            let updated = catalog
                .update_table(desc.id, &move |d| {
                    if d.column(&new_col.name).is_some() {
                        return Err(SqlError::new(
                            sqlstate::DUPLICATE_COLUMN,
                            format!(
                                "column \"{}\" of relation \"{}\" already exists",
                                new_col.name, d.name
                            ),
                        ));
                    }
                    let mut c = new_col.clone();
                    c.id = d.next_column_id;
                    d.next_column_id += 1;
                    d.columns.push(c);
                    let mut taken: BTreeSet<String> =
                        d.checks.iter().map(|c| c.name.clone()).collect();
                    for (name, text) in &checks {
                        let n = name
                            .clone()
                            .unwrap_or_else(|| generated_check_name(&taken, text, &d.columns));
                        taken.insert(n.clone());
                        d.checks.push(CheckDescriptor {
                            name: n,
                            expr: text.clone(),
                        });
                    }
                    Ok(())
                })
                .await?;
            if backfill_volatile {
                backfill_column(s, &updated, &col.name).await?;
            }
            if let Some(name) = &column.unique {
                let def = IndexDef {
                    name: name.clone(),
                    unique: true,
                    columns: vec![IndexColumnDef {
                        name: column.name.clone(),
                        descending: false,
                    }],
                    storing: vec![],
                };
                let idx = new_index(&updated, &def)?;
                add_index(s, &updated, idx).await?;
            }
            if let Some(fk) = &column.references {
                let current = catalog
                    .table_by_id(desc.id)
                    .await?
                    .ok_or_else(|| SqlError::internal("table vanished"))?;
                let taken: BTreeSet<String> = current
                    .foreign_keys
                    .iter()
                    .map(|f| f.name.clone())
                    .collect();
                let fkd = build_fk(s, &current, fk, &taken).await?;
                validate_fk_rows(s, &current, &fkd).await?;
                s.server
                    .catalog
                    .update_table(desc.id, &move |d| {
                        d.foreign_keys.push(fkd.clone());
                        Ok(())
                    })
                    .await?;
            }
            Ok(())
        }
        AlterTableOp::DropColumn { name, if_exists } => {
            let Some(col) = desc.column(name).cloned() else {
                if *if_exists {
                    return Ok(());
                }
                return Err(SqlError::undefined_column(name));
            };
            if desc
                .primary_index
                .columns
                .iter()
                .any(|c| c.column_id == col.id)
            {
                return Err(SqlError::unsupported(format!(
                    "column \"{name}\" is referenced by the primary key"
                )));
            }
            if desc
                .foreign_keys
                .iter()
                .any(|f| f.columns.contains(&col.id))
            {
                return Err(SqlError::new(
                    sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                    format!("column \"{name}\" is referenced by a foreign key"),
                ));
            }
            for (child, fk) in write::referencing_tables(catalog, desc).await? {
                if fk.ref_columns.contains(&col.id) {
                    return Err(SqlError::new(
                        sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                        format!(
                            "column \"{name}\" is referenced by foreign key \"{}\" from table \"{}\"",
                            fk.name, child.name
                        ),
                    ));
                }
            }
            for c in &desc.checks {
                if c.expr
                    .split(|ch: char| !ch.is_alphanumeric() && ch != '_')
                    .any(|w| w == name)
                {
                    return Err(SqlError::new(
                        sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                        format!(
                            "column \"{name}\" is referenced by check constraint \"{}\"",
                            c.name
                        ),
                    ));
                }
            }
            let dropped: Vec<u32> = desc
                .indexes
                .iter()
                .filter(|i| i.columns.iter().any(|c| c.column_id == col.id))
                .map(|i| i.id)
                .collect();
            let id = col.id;
            let gone = dropped.clone();
            let updated = catalog
                .update_table(desc.id, &move |d| {
                    d.columns.retain(|c| c.id != id);
                    d.indexes.retain(|i| !gone.contains(&i.id));
                    for i in d.indexes.iter_mut() {
                        i.storing.retain(|c| *c != id);
                    }
                    Ok(())
                })
                .await?;
            for i in dropped {
                clear_index(s, &updated, i).await?;
            }
            Ok(())
        }
        AlterTableOp::SetStorage(params) => {
            let params = storage_params(params)?;
            catalog
                .update_table(desc.id, &move |d| {
                    apply_storage(&mut d.storage_params, params.clone());
                    Ok(())
                })
                .await?;
            Ok(())
        }
        AlterTableOp::ResetStorage(keys) => {
            let keys: Vec<String> = keys.iter().map(|k| k.to_ascii_lowercase()).collect();
            for k in &keys {
                if !STORAGE_PARAMS.contains(&k.as_str()) {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("invalid storage parameter \"{k}\""),
                    ));
                }
            }
            catalog
                .update_table(desc.id, &move |d| {
                    for k in &keys {
                        d.storage_params.remove(k);
                        if k == "ttl" {
                            d.storage_params.retain(|p, _| !p.starts_with("ttl"));
                        }
                    }
                    if !d.storage_params.contains_key("ttl_expire_after")
                        && !d.storage_params.contains_key("ttl_expiration_expression")
                    {
                        d.storage_params.remove("ttl");
                    }
                    Ok(())
                })
                .await?;
            Ok(())
        }
        AlterTableOp::SetDefault { column, default } => {
            let col = desc.require_column(column)?.clone();
            let text = default.as_ref().map(|e| e.to_string());
            if let Some(t) = &text {
                check_expr(&[], "", t, Some(&col.ty), false)?;
            }
            let id = col.id;
            catalog
                .update_table(desc.id, &move |d| {
                    if let Some(c) = d.columns.iter_mut().find(|c| c.id == id) {
                        c.default_expr = text.clone();
                    }
                    Ok(())
                })
                .await?;
            Ok(())
        }
        AlterTableOp::SetNotNull { column, not_null } => {
            let col = desc.require_column(column)?.clone();
            if !*not_null
                && desc
                    .primary_index
                    .columns
                    .iter()
                    .any(|c| c.column_id == col.id)
            {
                return Err(SqlError::new(
                    sqlstate::INVALID_TABLE_DEFINITION,
                    format!("column \"{column}\" is in a primary index"),
                ));
            }
            if *not_null {
                let i = desc.column_index(column).expect("column exists");
                for r in all_rows(s, desc).await? {
                    if r.values[i].is_null() {
                        return Err(SqlError::new(
                            sqlstate::NOT_NULL_VIOLATION,
                            format!(
                                "validation of column \"{column}\" NOT NULL failed on row: {}",
                                r.values
                                    .iter()
                                    .map(|v| v.to_sql_literal())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
            }
            let id = col.id;
            let nullable = !*not_null;
            catalog
                .update_table(desc.id, &move |d| {
                    if let Some(c) = d.columns.iter_mut().find(|c| c.id == id) {
                        c.nullable = nullable;
                    }
                    Ok(())
                })
                .await?;
            Ok(())
        }
        AlterTableOp::AddConstraint(el) => match el {
            TableElement::Check { name, expr } => {
                let text = expr.to_string();
                check_expr(&desc.columns, &desc.name, &text, None, true)?;
                let taken: BTreeSet<String> = desc.checks.iter().map(|c| c.name.clone()).collect();
                let name = name
                    .clone()
                    .unwrap_or_else(|| generated_check_name(&taken, &text, &desc.columns));
                if taken.contains(&name) {
                    return Err(SqlError::new(
                        sqlstate::DUPLICATE_OBJECT,
                        format!("duplicate constraint name: \"{name}\""),
                    ));
                }
                let mut probe = (**desc).clone();
                probe.checks = vec![CheckDescriptor {
                    name: name.clone(),
                    expr: text.clone(),
                }];
                let ctx = EvalCtx::default();
                for r in all_rows(s, desc).await? {
                    write::check_row(&probe, &r.values, &ctx).map_err(|_| {
                        SqlError::new(
                            sqlstate::CHECK_VIOLATION,
                            format!(
                                "validation of CHECK \"{text}\" failed on row: {}",
                                r.values
                                    .iter()
                                    .map(|v| v.to_sql_literal())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?;
                }
                catalog
                    .update_table(desc.id, &move |d| {
                        d.checks.push(CheckDescriptor {
                            name: name.clone(),
                            expr: text.clone(),
                        });
                        Ok(())
                    })
                    .await?;
                Ok(())
            }
            TableElement::Index(def) if def.unique => {
                let idx = new_index(desc, def)?;
                add_index(s, desc, idx).await
            }
            TableElement::ForeignKey(fk) => {
                let taken: BTreeSet<String> =
                    desc.foreign_keys.iter().map(|f| f.name.clone()).collect();
                let fkd = build_fk(s, desc, fk, &taken).await?;
                validate_fk_rows(s, desc, &fkd).await?;
                catalog
                    .update_table(desc.id, &move |d| {
                        d.foreign_keys.push(fkd.clone());
                        Ok(())
                    })
                    .await?;
                Ok(())
            }
            _ => Err(SqlError::unsupported("this constraint in ALTER TABLE")),
        },
        AlterTableOp::DropConstraint { name, if_exists } => {
            if desc.checks.iter().any(|c| &c.name == name) {
                let n = name.clone();
                catalog
                    .update_table(desc.id, &move |d| {
                        d.checks.retain(|c| c.name != n);
                        Ok(())
                    })
                    .await?;
                return Ok(());
            }
            if desc.foreign_keys.iter().any(|f| &f.name == name) {
                let n = name.clone();
                catalog
                    .update_table(desc.id, &move |d| {
                        d.foreign_keys.retain(|f| f.name != n);
                        Ok(())
                    })
                    .await?;
                return Ok(());
            }
            if desc.indexes.iter().any(|i| &i.name == name && i.unique) {
                return Box::pin(drop_indexes(
                    s,
                    &[crate::parser::IndexName {
                        table: Some(vec![
                            desc.database.clone(),
                            desc.schema.clone(),
                            desc.name.clone(),
                        ]),
                        index: vec![name.clone()],
                    }],
                    false,
                ))
                .await
                .map(|_| ());
            }
            if desc.primary_index.name == *name {
                return Err(SqlError::unsupported("dropping a primary key constraint"));
            }
            if *if_exists {
                return Ok(());
            }
            Err(SqlError::new(
                sqlstate::UNDEFINED_OBJECT,
                format!(
                    "constraint \"{name}\" of relation \"{}\" does not exist",
                    desc.name
                ),
            ))
        }
        AlterTableOp::ConfigureZone(options) => {
            privilege::require_admin(s, "configure zones").await?;
            let mut num_replicas = None;
            for (key, value) in options {
                if let Some(n) = check_zone_option(key, value)? {
                    num_replicas = Some(n);
                }
            }
            if options.is_empty() {
                // DISCARD: the table follows the default zone again.
                server.kv.set_table_num_replicas(desc.id, None).await?;
            } else if let Some(n) = num_replicas {
                server
                    .kv
                    .set_table_num_replicas(desc.id, Some(n))
                    .await
                    .map_err(|e| match e {
                        ldr_kv::KvError::InvalidRequest(m) => SqlError::unsupported(format!(
                            "num_replicas of table {}: {m}",
                            desc.name
                        )),
                        e => e.into(),
                    })?;
            }
            Ok(())
        }
    }
}

/// Gives existing rows a volatile default (`gen_random_uuid()`, `unique_rowid()`), one
/// evaluation per row.
pub(super) async fn backfill_column(
    s: &mut Session,
    desc: &Arc<TableDescriptor>,
    column: &str,
) -> Result<()> {
    let i = desc
        .column_index(column)
        .ok_or_else(|| SqlError::undefined_column(column))?;
    let defaults = super::super::dml::bind_defaults(desc)?;
    let Some(default) = &defaults[i] else {
        return Ok(());
    };
    let ctx = s.eval_ctx(vec![]);
    let mut pending = all_rows(s, desc).await?;
    for _ in 0..50 {
        if pending.is_empty() {
            return Ok(());
        }
        let mut changes = Vec::new();
        for r in std::mem::take(&mut pending) {
            if !r.values[i].is_null() {
                continue;
            }
            let mut new = r.values.clone();
            new[i] = default
                .eval(&[], &ctx)?
                .coerce_for_column(&desc.columns[i].ty, column)?;
            changes.push(Change {
                table: desc.clone(),
                key: r.key.clone(),
                old: Some(r),
                new: Some(new),
            });
        }
        let applied = write::apply(&s.server, &changes).await?;
        for (ch, a) in changes.into_iter().zip(applied) {
            if let Applied::Conflict(_) = a {
                let ts = s.server.kv.clock().now();
                if let Some(r) = scan::get_row(&s.server.kv, desc, &ch.key, ts, None).await? {
                    pending.push(r);
                }
            }
        }
    }
    Err(SqlError::new(
        sqlstate::SERIALIZATION_FAILURE,
        "restart transaction: rows kept changing during the column backfill",
    ))
}

pub(super) async fn validate_fk_rows(
    s: &mut Session,
    desc: &Arc<TableDescriptor>,
    fk: &ForeignKeyDescriptor,
) -> Result<()> {
    let mut probe = (**desc).clone();
    probe.foreign_keys = vec![fk.clone()];
    let ts = s.server.kv.clock().now();
    for r in all_rows(s, desc).await? {
        write::check_fk_parents(
            &s.server.catalog,
            &probe,
            &r.values,
            None,
            "insert",
            ts,
            None,
        )
        .await?;
    }
    Ok(())
}
