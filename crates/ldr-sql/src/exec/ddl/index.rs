//! CREATE INDEX and DROP INDEX: an index is published write-only, backfilled, then made
//! readable; dropping one clears its entries.

use super::*;

pub(super) fn new_index(desc: &TableDescriptor, def: &IndexDef) -> Result<IndexDescriptor> {
    let columns = index_columns(&desc.columns, &def.columns)?;
    let names: Vec<String> = def.columns.iter().map(|c| c.name.clone()).collect();
    let name = match &def.name {
        Some(n) => n.clone(),
        None => desc.new_index_name(&names, def.unique),
    };
    let storing = def
        .storing
        .iter()
        .map(|c| desc.require_column(c).map(|d| d.id))
        .collect::<Result<_>>()?;
    Ok(IndexDescriptor {
        id: desc.next_index_id,
        name,
        unique: def.unique,
        columns,
        storing,
        write_only: false,
    })
}

/// Publishes a new index write-only, backfills it, then makes it readable. A duplicate
/// found while backfilling a unique index removes the index again.
pub(super) async fn add_index(
    s: &mut Session,
    desc: &Arc<TableDescriptor>,
    mut idx: IndexDescriptor,
) -> Result<()> {
    idx.write_only = true;
    let idx_id = idx.id;
    let pending = idx.clone();
    let published = s
        .server
        .catalog
        .update_table(desc.id, &move |d| {
            if d.index_by_name(&pending.name).is_some() {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_TABLE,
                    format!("index with name \"{}\" already exists", pending.name),
                ));
            }
            let mut i = pending.clone();
            i.id = d.next_index_id;
            d.next_index_id += 1;
            d.indexes.push(i);
            Ok(())
        })
        .await?;
    let idx = published
        .indexes
        .iter()
        .find(|i| i.name == idx.name)
        .cloned()
        .ok_or_else(|| SqlError::internal("published index missing"))?;
    let _ = idx_id;
    let result = backfill_index(s, &published, &idx).await;
    match result {
        Ok(()) => {
            let name = idx.name.clone();
            s.server
                .catalog
                .update_table(desc.id, &move |d| {
                    if let Some(i) = d.indexes.iter_mut().find(|i| i.name == name) {
                        i.write_only = false;
                    }
                    Ok(())
                })
                .await?;
            Ok(())
        }
        Err(e) => {
            let id = idx.id;
            let _ = s
                .server
                .catalog
                .update_table(desc.id, &move |d| {
                    d.indexes.retain(|i| i.id != id);
                    Ok(())
                })
                .await;
            let _ = clear_index(s, &published, id).await;
            Err(e)
        }
    }
}

pub(super) async fn backfill_index(
    s: &mut Session,
    desc: &Arc<TableDescriptor>,
    idx: &IndexDescriptor,
) -> Result<()> {
    let kv = s.server.kv.clone();
    let ts = kv.clock().now();
    let rows = scan::read(&kv, desc, &scan::Access::Full, ts, None).await?;
    if idx.unique {
        // Claim every value; a value held by another row that still has it is a duplicate.
        for r in &rows {
            let Some(vals) = rowcodec::unique_values(desc, idx, &r.values) else {
                continue;
            };
            let pk = rowcodec::pk_bytes(desc, &r.values);
            let key = rowcodec::unique_key(desc, idx, &vals);
            let w = RowWrite {
                key: key.clone(),
                value: Some(pk.clone()),
                condition: Condition::Expect(None),
                header: ValueHeader::default(),
                dependents: vec![],
            };
            let out = kv.write(vec![w], true).await?;
            if let Some((_, ldr_kv::RowOutcome::ConditionFailed { actual: Some(v) })) = out.first()
                && v.value.as_deref() != Some(&pk[..])
            {
                let owner = v.value.clone().unwrap_or_default();
                let owner_row = kv
                    .get(&rowcodec::primary_key_from_pk(desc, &owner), None)
                    .await?;
                let holds = match owner_row.and_then(|o| o.value) {
                    Some(raw) => {
                        rowcodec::unique_values(desc, idx, &rowcodec::decode_row_value(desc, &raw)?)
                            .as_deref()
                            == Some(&vals[..])
                    }
                    None => false,
                };
                if holds {
                    return Err(write::unique_violation(desc, idx, &r.values));
                }
                let w = RowWrite {
                    key,
                    value: Some(pk),
                    condition: Condition::Expect(Some(owner)),
                    header: ValueHeader::default(),
                    dependents: vec![],
                };
                kv.write(vec![w], true).await?;
            }
        }
    } else {
        let entries: Vec<RowWrite> = rows
            .iter()
            .map(|r| {
                let pk = rowcodec::pk_bytes(desc, &r.values);
                RowWrite {
                    key: rowcodec::secondary_key(desc, idx, &r.values, &pk),
                    value: Some(Vec::new()),
                    condition: Condition::None,
                    header: ValueHeader::default(),
                    dependents: vec![],
                }
            })
            .collect();
        for chunk in entries.chunks(500) {
            kv.write(chunk.to_vec(), false).await?;
        }
    }
    Ok(())
}

/// Deletes every entry of an index (all shards).
pub(super) async fn clear_index(s: &Session, desc: &TableDescriptor, index_id: u32) -> Result<()> {
    let kv = &s.server.kv;
    let ts = kv.clock().now();
    for shard in 0..desc.shard_count.max(1) {
        let span: Span = keys::index_span(desc.id, shard, index_id);
        let entries = scan::scan_all(kv, &span, ts).await?;
        let deletes: Vec<RowWrite> = entries
            .into_iter()
            .map(|e| RowWrite {
                key: e.key,
                value: None,
                condition: Condition::None,
                header: ValueHeader::default(),
                dependents: vec![],
            })
            .collect();
        for chunk in deletes.chunks(500) {
            kv.write(chunk.to_vec(), false).await?;
        }
    }
    Ok(())
}

pub(super) async fn create_index(s: &mut Session, ci: &CreateIndex) -> Result<QueryResult> {
    let desc = resolve::resolve_table(&s.server.catalog, s.database(), &ci.table).await?;
    require_alter(s, &desc).await?;
    validation::check_schema_change_allowed(
        &desc,
        &SchemaChange::CreateIndex {
            unique: ci.index.unique,
        },
    )?;
    if let Some(n) = &ci.index.name
        && desc.index_by_name(n).is_some()
    {
        if ci.if_not_exists {
            return Ok(QueryResult::command("CREATE INDEX"));
        }
        return Err(SqlError::new(
            sqlstate::DUPLICATE_TABLE,
            format!("index with name \"{n}\" already exists"),
        ));
    }
    let idx = new_index(&desc, &ci.index)?;
    add_index(s, &desc, idx).await?;
    Ok(QueryResult::command("CREATE INDEX"))
}

pub(super) async fn drop_indexes(
    s: &mut Session,
    names: &[crate::parser::IndexName],
    if_exists: bool,
) -> Result<QueryResult> {
    for n in names {
        let (desc, index_name) = match &n.table {
            Some(t) => {
                let desc = resolve::resolve_table(&s.server.catalog, s.database(), t).await?;
                (Some(desc), n.index.last().cloned().unwrap_or_default())
            }
            None => {
                let index_name = n.index.last().cloned().unwrap_or_default();
                let db = match n.index.len() {
                    3 => n.index[0].clone(),
                    _ => s.database().to_string(),
                };
                let db = s.server.catalog.require_database(&db).await?;
                let tables = s.server.catalog.tables_in(db.id).await?;
                let found: Vec<_> = tables
                    .into_iter()
                    .filter(|t| {
                        t.indexes.iter().any(|i| i.name == index_name)
                            || t.primary_index.name == index_name
                    })
                    .collect();
                if found.len() > 1 {
                    return Err(SqlError::new(
                        sqlstate::AMBIGUOUS_PARAMETER,
                        format!(
                            "index name \"{index_name}\" is ambiguous (found in {} tables)",
                            found.len()
                        ),
                    ));
                }
                (found.into_iter().next(), index_name)
            }
        };
        let Some(desc) = desc.filter(|d| d.index_by_name(&index_name).is_some()) else {
            if if_exists {
                continue;
            }
            return Err(SqlError::new(
                sqlstate::UNDEFINED_OBJECT,
                format!("index \"{index_name}\" does not exist"),
            ));
        };
        if desc.primary_index.name == index_name {
            return Err(SqlError::unsupported(format!(
                "cannot drop the primary index of table \"{}\"",
                desc.name
            )));
        }
        require_alter(s, &desc).await?;
        validation::check_schema_change_allowed(&desc, &SchemaChange::DropIndex)?;
        let idx = desc
            .index_by_name(&index_name)
            .cloned()
            .ok_or_else(|| SqlError::internal("index vanished"))?;
        if idx.unique {
            let mut cols: Vec<u32> = idx.columns.iter().map(|c| c.column_id).collect();
            cols.sort_unstable();
            for (child, fk) in write::referencing_tables(&s.server.catalog, &desc).await? {
                let mut r = fk.ref_columns.clone();
                r.sort_unstable();
                if r == cols {
                    return Err(SqlError::new(
                        sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                        format!("index \"{index_name}\" is in use as unique constraint"),
                    )
                    .with_detail(format!(
                        "foreign key \"{}\" of table \"{}\" depends on it",
                        fk.name, child.name
                    )));
                }
            }
        }
        let id = idx.id;
        let updated = s
            .server
            .catalog
            .update_table(desc.id, &move |d| {
                d.indexes.retain(|i| i.id != id);
                Ok(())
            })
            .await?;
        clear_index(s, &updated, id).await?;
    }
    Ok(QueryResult::command("DROP INDEX"))
}
