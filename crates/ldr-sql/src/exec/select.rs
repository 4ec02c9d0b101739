//! SELECT: one table, several tables joined by nested loops (INNER, LEFT, CROSS), or none;
//! WHERE, GROUP BY with aggregates, HAVING, DISTINCT, ORDER BY, LIMIT/OFFSET, VALUES.
//! Single-table queries read through the access path the filter allows (primary key points
//! and ranges, index lookups); everything else is evaluated in memory.

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use sqlparser::ast as sql;

use super::rows::StoredRow;
use super::scan;
use super::{ColumnInfo, QueryResult, Session, resolve};
use crate::catalog::TableDescriptor;
use crate::datum::Datum;
use crate::encoding;
use crate::error::{Result, SqlError, sqlstate};
use crate::expr::{
    AggBinding, AggFunc, AggSpec, Binder, EvalCtx, ScalarExpr, Scope, contains_aggregate,
    normalize_ident,
};
use crate::parser::object_name;
use crate::types::{SqlType, TypeFamily};

/// A table in FROM.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub desc: Arc<TableDescriptor>,
    pub alias: Option<String>,
    /// A `[SHOW …]` source: rows come from running it, `desc` only names its columns.
    pub show: Option<crate::parser::Statement>,
}

/// A descriptor naming the columns of a virtual source.
fn virtual_descriptor(name: &str, columns: &[ColumnInfo]) -> TableDescriptor {
    TableDescriptor {
        id: 0,
        version: 0,
        database_id: 0,
        database: String::new(),
        schema: String::new(),
        name: name.to_string(),
        columns: columns
            .iter()
            .enumerate()
            .map(|(i, c)| crate::catalog::ColumnDescriptor {
                id: i as u32 + 1,
                name: c.name.clone(),
                ty: c.ty.clone(),
                nullable: true,
                default_expr: None,
                hidden: false,
                absent_value: None,
            })
            .collect(),
        next_column_id: columns.len() as u32 + 1,
        primary_index: crate::catalog::IndexDescriptor {
            id: 1,
            name: String::new(),
            unique: true,
            columns: vec![],
            storing: vec![],
            write_only: false,
        },
        indexes: vec![],
        next_index_id: 2,
        foreign_keys: vec![],
        checks: vec![],
        storage_params: Default::default(),
        ldr_job_ids: vec![],
        shard_count: 0,
        owner: String::new(),
        privileges: Default::default(),
    }
}

/// A select list item: an expression or a column expanded from `*`.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Item {
    Expr(sql::Expr),
    Column(usize),
}

#[derive(Debug, Clone)]
enum JoinKind {
    Inner,
    Left,
}

#[derive(Debug, Clone)]
struct JoinStep {
    kind: JoinKind,
    /// Bound over the joined scope up to and including this table.
    on: Option<ScalarExpr>,
}

#[derive(Debug, Clone)]
enum SortKey {
    Output(usize),
    Expr(ScalarExpr),
}

#[derive(Debug, Clone)]
struct OrderItem {
    key: SortKey,
    desc: bool,
    nulls_first: bool,
}

/// A planned SELECT.
#[derive(Debug, Clone)]
pub(crate) struct SelectPlan {
    sources: Vec<Source>,
    joins: Vec<JoinStep>,
    /// VALUES rows instead of a table.
    values: Option<Vec<Vec<ScalarExpr>>>,
    filter: Option<ScalarExpr>,
    agg: Option<(Vec<ScalarExpr>, Vec<AggSpec>, Option<ScalarExpr>)>,
    pub columns: Vec<ColumnInfo>,
    outputs: Vec<ScalarExpr>,
    order: Vec<OrderItem>,
    distinct: bool,
    limit: Option<ScalarExpr>,
    offset: Option<ScalarExpr>,
}

fn derived_name(e: &sql::Expr) -> String {
    match e {
        sql::Expr::Identifier(i) => normalize_ident(i),
        sql::Expr::CompoundIdentifier(parts) => parts
            .last()
            .map(normalize_ident)
            .unwrap_or_else(|| "?column?".into()),
        sql::Expr::Function(f) => f
            .name
            .0
            .last()
            .map(|p| match p {
                sql::ObjectNamePart::Identifier(i) => i.value.to_lowercase(),
                other => other.to_string().to_lowercase(),
            })
            .unwrap_or_else(|| "?column?".into()),
        sql::Expr::Cast {
            expr, data_type, ..
        } => match expr.as_ref() {
            sql::Expr::Identifier(_)
            | sql::Expr::CompoundIdentifier(_)
            | sql::Expr::Function(_) => derived_name(expr),
            _ => SqlType::parse(&data_type.to_string())
                .map(|t| t.sql_name().to_lowercase())
                .unwrap_or_else(|_| "?column?".into()),
        },
        sql::Expr::Nested(x) => derived_name(x),
        sql::Expr::Case { .. } => "case".into(),
        sql::Expr::Extract { .. } => "extract".into(),
        sql::Expr::Substring { .. } => "substring".into(),
        sql::Expr::Trim { .. } => "btrim".into(),
        sql::Expr::Exists { .. } => "exists".into(),
        _ => "?column?".into(),
    }
}

fn literal_ordinal(e: &sql::Expr) -> Option<usize> {
    if let sql::Expr::Value(v) = e
        && let sql::Value::Number(n, _) = &v.value
    {
        return n.parse::<usize>().ok();
    }
    None
}

/// Plans a query (binding everything; no data is read).
pub(crate) async fn plan_query(
    s: &Session,
    q: &sql::Query,
    params: &mut Vec<Option<SqlType>>,
) -> Result<SelectPlan> {
    if q.with.is_some() {
        return Err(SqlError::unsupported("WITH clauses"));
    }
    if q.fetch.is_some() {
        return Err(SqlError::unsupported("FETCH"));
    }
    let mut plan = match q.body.as_ref() {
        sql::SetExpr::Select(sel) => plan_select(s, sel, params).await?,
        sql::SetExpr::Values(v) => plan_values(v, params)?,
        sql::SetExpr::Query(inner) => {
            if q.order_by.is_none() && q.limit_clause.is_none() {
                return Box::pin(plan_query(s, inner, params)).await;
            }
            return Err(SqlError::unsupported("nested query with ORDER BY/LIMIT"));
        }
        sql::SetExpr::SetOperation { .. } => {
            return Err(SqlError::unsupported("UNION/INTERSECT/EXCEPT"));
        }
        _ => return Err(SqlError::unsupported("this query form")),
    };
    // ORDER BY
    if let Some(ob) = &q.order_by {
        let exprs = match &ob.kind {
            sql::OrderByKind::Expressions(e) => e,
            sql::OrderByKind::All(_) => return Err(SqlError::unsupported("ORDER BY ALL")),
        };
        let scope = plan_scope(&plan);
        let (sources_scope, agg_state) = (scope, plan.agg.take());
        let mut agg_binding = agg_state.as_ref().map(|(g, a, _)| AggBinding {
            group_exprs: g.clone(),
            aggs: a.clone(),
        });
        for o in exprs {
            let desc = matches!(o.options.sort, Some(sql::OrderBySort::Desc));
            let nulls_first = o.options.nulls_first.unwrap_or(!desc);
            let key = if let Some(n) = literal_ordinal(&o.expr) {
                if n == 0 || n > plan.columns.len() {
                    return Err(SqlError::new(
                        sqlstate::INVALID_COLUMN_REFERENCE,
                        format!("ORDER BY position {n} is not in select list"),
                    ));
                }
                SortKey::Output(n - 1)
            } else if let Some(i) = match &o.expr {
                sql::Expr::Identifier(id) => {
                    let name = normalize_ident(id);
                    let matches: Vec<usize> = plan
                        .columns
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.name == name)
                        .map(|(i, _)| i)
                        .collect();
                    // Prefer an output column; fall back to the input scope.
                    if matches.len() == 1 {
                        Some(matches[0])
                    } else {
                        None
                    }
                }
                _ => None,
            } {
                SortKey::Output(i)
            } else {
                let mut b = Binder {
                    scope: &sources_scope,
                    params,
                    agg: agg_binding.as_mut(),
                };
                let (x, _) = b.bind(&o.expr)?;
                if plan.distinct {
                    // With DISTINCT the key must be an output.
                    match plan.outputs.iter().position(|out| *out == x) {
                        Some(i) => SortKey::Output(i),
                        None => {
                            return Err(SqlError::new(
                                sqlstate::INVALID_COLUMN_REFERENCE,
                                "for SELECT DISTINCT, ORDER BY expressions must appear in select list",
                            ));
                        }
                    }
                } else {
                    SortKey::Expr(x)
                }
            };
            plan.order.push(OrderItem {
                key,
                desc,
                nulls_first,
            });
        }
        if let (Some((g, _, h)), Some(ab)) = (agg_state, agg_binding) {
            plan.agg = Some((g, ab.aggs, h));
        }
    }
    // LIMIT / OFFSET
    if let Some(lc) = &q.limit_clause {
        let empty = Scope::default();
        let mut b = Binder::new(&empty, params);
        match lc {
            sql::LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            } => {
                if !limit_by.is_empty() {
                    return Err(SqlError::unsupported("LIMIT BY"));
                }
                if let Some(l) = limit {
                    plan.limit = Some(b.bind_typed(l, &SqlType::Int8)?.0);
                }
                if let Some(o) = offset {
                    plan.offset = Some(b.bind_typed(&o.value, &SqlType::Int8)?.0);
                }
            }
            sql::LimitClause::OffsetCommaLimit { offset, limit } => {
                plan.limit = Some(b.bind_typed(limit, &SqlType::Int8)?.0);
                plan.offset = Some(b.bind_typed(offset, &SqlType::Int8)?.0);
            }
        }
    }
    Ok(plan)
}

/// The scope the plan's rows are evaluated in (joined table columns).
fn plan_scope(plan: &SelectPlan) -> Scope {
    let mut scope = Scope::default();
    for src in &plan.sources {
        scope
            .columns
            .extend(scan::table_scope(&src.desc, src.alias.as_deref()).columns);
    }
    scope
}

fn plan_values(v: &sql::Values, params: &mut Vec<Option<SqlType>>) -> Result<SelectPlan> {
    let empty = Scope::default();
    let mut rows = Vec::new();
    let mut types: Vec<SqlType> = Vec::new();
    for r in &v.rows {
        if let Some(first) = v.rows.first()
            && r.content.len() != first.content.len()
        {
            return Err(SqlError::new(
                sqlstate::SYNTAX_ERROR,
                "VALUES lists must all be the same length",
            ));
        }
        let mut b = Binder::new(&empty, params);
        let mut row = Vec::new();
        for (i, e) in r.content.iter().enumerate() {
            let (x, ty) = b.bind(e)?;
            if types.len() <= i {
                types.push(ty);
            } else if types[i] == SqlType::Unknown {
                types[i] = ty;
            }
            row.push(x);
        }
        rows.push(row);
    }
    let columns = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            ColumnInfo::new(
                &format!("column{}", i + 1),
                if *t == SqlType::Unknown {
                    SqlType::String
                } else {
                    t.clone()
                },
            )
        })
        .collect();
    let outputs = (0..types.len()).map(ScalarExpr::Column).collect();
    Ok(SelectPlan {
        sources: vec![],
        joins: vec![],
        values: Some(rows),
        filter: None,
        agg: None,
        columns,
        outputs,
        order: vec![],
        distinct: false,
        limit: None,
        offset: None,
    })
}

async fn add_source(
    s: &Session,
    factor: &sql::TableFactor,
    sources: &mut Vec<Source>,
    offset: &mut usize,
) -> Result<()> {
    match factor {
        sql::TableFactor::Table {
            name, alias, args, ..
        } => {
            let parts = object_name(name)?;
            if let Some(args) = args {
                if !super::consistency::is_function(&parts) {
                    return Err(SqlError::unsupported("table functions"));
                }
                let stmt = super::consistency::source_statement(s, &args.args)?;
                let columns = super::consistency::columns();
                let desc = Arc::new(virtual_descriptor(super::consistency::FUNCTION, &columns));
                let alias = alias.as_ref().map(|a| normalize_ident(&a.name));
                sources.push(Source {
                    desc,
                    alias,
                    show: Some(stmt),
                });
                return Ok(());
            }
            if let [single] = parts.as_slice()
                && let Some(i) = single
                    .strip_prefix(crate::parser::SHOW_SOURCE_PREFIX)
                    .and_then(|n| n.parse::<usize>().ok())
            {
                let stmt = s
                    .show_sources
                    .get(i)
                    .cloned()
                    .ok_or_else(|| SqlError::internal("missing SHOW source"))?;
                let columns = super::show::describe(s, &stmt).await;
                if columns.is_empty() {
                    return Err(SqlError::new(
                        sqlstate::SYNTAX_ERROR,
                        "statement source must return rows",
                    ));
                }
                let desc = Arc::new(virtual_descriptor(single, &columns));
                let alias = alias.as_ref().map(|a| normalize_ident(&a.name));
                sources.push(Source {
                    desc,
                    alias,
                    show: Some(stmt),
                });
                return Ok(());
            }
            if let [database @ .., schema, name] = parts.as_slice()
                && database.len() <= 1
                && let Some(table) = crate::parser::VirtualTable::lookup(schema, name)
            {
                let stmt = crate::parser::Statement::VirtualTable {
                    table,
                    database: database.first().cloned(),
                };
                let columns = super::show::describe(s, &stmt).await;
                let desc = Arc::new(virtual_descriptor(name, &columns));
                let alias = alias.as_ref().map(|a| normalize_ident(&a.name));
                sources.push(Source {
                    desc,
                    alias,
                    show: Some(stmt),
                });
                return Ok(());
            }
            if parts.len() >= 2
                && matches!(
                    parts[parts.len() - 2].as_str(),
                    "information_schema" | "pg_catalog" | "crdb_internal" | "system"
                )
            {
                return Err(SqlError::unsupported(format!(
                    "virtual table {}",
                    parts.join(".")
                )));
            }
            let desc = resolve::resolve_table(&s.server.catalog, s.database(), &parts).await?;
            super::privilege::require_table(s, &desc, "SELECT").await?;
            let alias = alias.as_ref().map(|a| normalize_ident(&a.name));
            let n = desc.columns.len() + 2;
            sources.push(Source {
                desc,
                alias,
                show: None,
            });
            *offset += n;
            Ok(())
        }
        sql::TableFactor::Derived { .. } => Err(SqlError::unsupported("subqueries in FROM")),
        _ => Err(SqlError::unsupported("this FROM clause")),
    }
}

async fn plan_select(
    s: &Session,
    sel: &sql::Select,
    params: &mut Vec<Option<SqlType>>,
) -> Result<SelectPlan> {
    if sel.into.is_some() {
        return Err(SqlError::unsupported("SELECT INTO"));
    }
    let mut sources = Vec::new();
    let mut joins = Vec::new();
    let mut offset = 0;
    let mut pending_on: Vec<(usize, JoinKind, Option<sql::Expr>)> = Vec::new();
    for (ti, twj) in sel.from.iter().enumerate() {
        add_source(s, &twj.relation, &mut sources, &mut offset).await?;
        if ti > 0 {
            pending_on.push((sources.len() - 1, JoinKind::Inner, None));
        }
        for j in &twj.joins {
            add_source(s, &j.relation, &mut sources, &mut offset).await?;
            let (kind, constraint) = match &j.join_operator {
                sql::JoinOperator::Join(c) | sql::JoinOperator::Inner(c) => {
                    (JoinKind::Inner, Some(c))
                }
                sql::JoinOperator::Left(c) | sql::JoinOperator::LeftOuter(c) => {
                    (JoinKind::Left, Some(c))
                }
                sql::JoinOperator::CrossJoin(c) => (JoinKind::Inner, Some(c)),
                _ => return Err(SqlError::unsupported("this kind of join")),
            };
            let on = match constraint {
                Some(sql::JoinConstraint::On(e)) => Some(e.clone()),
                Some(sql::JoinConstraint::Using(cols)) => {
                    let left = &sources[sources.len() - 2];
                    let right = &sources[sources.len() - 1];
                    let mut expr: Option<sql::Expr> = None;
                    for c in cols {
                        let name = object_name(c)?.last().cloned().unwrap_or_default();
                        let l = sql::Expr::CompoundIdentifier(vec![
                            sql::Ident::with_quote(
                                '"',
                                left.alias.clone().unwrap_or(left.desc.name.clone()),
                            ),
                            sql::Ident::with_quote('"', name.clone()),
                        ]);
                        let r = sql::Expr::CompoundIdentifier(vec![
                            sql::Ident::with_quote(
                                '"',
                                right.alias.clone().unwrap_or(right.desc.name.clone()),
                            ),
                            sql::Ident::with_quote('"', name),
                        ]);
                        let eq = sql::Expr::BinaryOp {
                            left: Box::new(l),
                            op: sql::BinaryOperator::Eq,
                            right: Box::new(r),
                        };
                        expr = Some(match expr {
                            None => eq,
                            Some(prev) => sql::Expr::BinaryOp {
                                left: Box::new(prev),
                                op: sql::BinaryOperator::And,
                                right: Box::new(eq),
                            },
                        });
                    }
                    expr
                }
                Some(sql::JoinConstraint::Natural) => {
                    return Err(SqlError::unsupported("NATURAL JOIN"));
                }
                _ => None,
            };
            pending_on.push((sources.len() - 1, kind, on));
        }
    }
    let mut plan = SelectPlan {
        sources,
        joins: vec![],
        values: None,
        filter: None,
        agg: None,
        columns: vec![],
        outputs: vec![],
        order: vec![],
        distinct: false,
        limit: None,
        offset: None,
    };
    let scope = plan_scope(&plan);
    for (_, kind, on) in pending_on {
        let on = match on {
            Some(e) => {
                let mut b = Binder::new(&scope, params);
                let (x, ty) = b.bind(&e)?;
                if ty != SqlType::Bool && ty != SqlType::Unknown {
                    return Err(SqlError::datatype_mismatch(format!(
                        "argument of ON must be type bool, not type {}",
                        ty.family_name()
                    )));
                }
                Some(x)
            }
            None => None,
        };
        joins.push(JoinStep { kind, on });
    }
    plan.joins = joins;
    if let Some(w) = &sel.selection {
        if contains_aggregate(w) {
            return Err(SqlError::new(
                sqlstate::GROUPING_ERROR,
                "aggregate functions are not allowed in WHERE",
            ));
        }
        let mut b = Binder::new(&scope, params);
        let (x, ty) = b.bind(w)?;
        let (x, ty) = if ty == SqlType::Unknown {
            b.coerce_unknown(x, &SqlType::Bool)?
        } else {
            (x, ty)
        };
        if ty != SqlType::Bool {
            return Err(SqlError::datatype_mismatch(format!(
                "argument of WHERE must be type bool, not type {}",
                ty.family_name()
            )));
        }
        plan.filter = Some(x);
    }
    plan.distinct = match &sel.distinct {
        None | Some(sql::Distinct::All) => false,
        Some(sql::Distinct::Distinct) => true,
        Some(sql::Distinct::On(_)) => return Err(SqlError::unsupported("DISTINCT ON")),
    };
    // Expand the projection.
    let mut items: Vec<(String, Item)> = Vec::new();
    for item in &sel.projection {
        match item {
            sql::SelectItem::UnnamedExpr(e) => items.push((derived_name(e), Item::Expr(e.clone()))),
            sql::SelectItem::ExprWithAlias { expr, alias } => {
                items.push((normalize_ident(alias), Item::Expr(expr.clone())))
            }
            sql::SelectItem::Wildcard(_) => {
                if plan.sources.is_empty() {
                    return Err(SqlError::new(
                        sqlstate::SYNTAX_ERROR,
                        "SELECT * with no tables specified is not valid",
                    ));
                }
                for (i, c) in scope.columns.iter().enumerate() {
                    if !c.hidden {
                        items.push((c.name.clone(), Item::Column(i)));
                    }
                }
            }
            sql::SelectItem::QualifiedWildcard(kind, _) => {
                let qualifier = match kind {
                    sql::SelectItemQualifiedWildcardKind::ObjectName(n) => {
                        object_name(n)?.last().cloned().unwrap_or_default()
                    }
                    sql::SelectItemQualifiedWildcardKind::Expr(_) => {
                        return Err(SqlError::unsupported("this wildcard"));
                    }
                };
                let mut any = false;
                for (i, c) in scope.columns.iter().enumerate() {
                    if !c.hidden && c.table.as_deref() == Some(qualifier.as_str()) {
                        any = true;
                        items.push((c.name.clone(), Item::Column(i)));
                    }
                }
                if !any {
                    return Err(SqlError::new(
                        sqlstate::UNDEFINED_TABLE,
                        format!("no data source matches pattern: {qualifier}.*"),
                    ));
                }
            }
            _ => return Err(SqlError::unsupported("this select item")),
        }
    }
    let is_agg = !matches!(&sel.group_by, sql::GroupByExpr::Expressions(v, _) if v.is_empty())
        || items
            .iter()
            .any(|(_, e)| matches!(e, Item::Expr(x) if contains_aggregate(x)))
        || sel.having.is_some();
    if is_agg {
        let group_items: Vec<sql::Expr> = match &sel.group_by {
            sql::GroupByExpr::Expressions(v, mods) => {
                if !mods.is_empty() {
                    return Err(SqlError::unsupported("GROUP BY modifiers"));
                }
                v.clone()
            }
            sql::GroupByExpr::All(_) => return Err(SqlError::unsupported("GROUP BY ALL")),
        };
        let mut group_exprs = Vec::new();
        for g in &group_items {
            let target = if let Some(n) = literal_ordinal(g) {
                if n == 0 || n > items.len() {
                    return Err(SqlError::new(
                        sqlstate::INVALID_COLUMN_REFERENCE,
                        format!("GROUP BY position {n} is not in select list"),
                    ));
                }
                items[n - 1].1.clone()
            } else if let sql::Expr::Identifier(id) = g {
                let name = normalize_ident(id);
                match (
                    scope.resolve(None, &name),
                    items.iter().find(|(n, _)| *n == name),
                ) {
                    (Err(_), Some((_, e))) => e.clone(),
                    _ => Item::Expr(g.clone()),
                }
            } else {
                Item::Expr(g.clone())
            };
            let x = match target {
                Item::Column(i) => ScalarExpr::Column(i),
                Item::Expr(e) => {
                    if contains_aggregate(&e) {
                        return Err(SqlError::new(
                            sqlstate::GROUPING_ERROR,
                            "aggregate functions are not allowed in GROUP BY",
                        ));
                    }
                    Binder::new(&scope, params).bind(&e)?.0
                }
            };
            group_exprs.push(x);
        }
        let mut agg = AggBinding {
            group_exprs: group_exprs.clone(),
            aggs: vec![],
        };
        for (name, item) in &items {
            let (x, ty) = match item {
                Item::Column(i) => match group_exprs
                    .iter()
                    .position(|g| *g == ScalarExpr::Column(*i))
                {
                    Some(pos) => (ScalarExpr::Column(pos), scope.columns[*i].ty.clone()),
                    None => {
                        return Err(SqlError::new(
                            sqlstate::GROUPING_ERROR,
                            format!(
                                "column \"{name}\" must appear in the GROUP BY clause or be used in an aggregate function"
                            ),
                        ));
                    }
                },
                Item::Expr(e) => {
                    let mut b = Binder {
                        scope: &scope,
                        params,
                        agg: Some(&mut agg),
                    };
                    let (x, ty) = b.bind(e)?;
                    if ty == SqlType::Unknown {
                        b.coerce_unknown(x, &SqlType::String)?
                    } else {
                        (x, ty)
                    }
                }
            };
            plan.columns.push(ColumnInfo::new(name, ty));
            plan.outputs.push(x);
        }
        let having = match &sel.having {
            Some(h) => {
                let mut b = Binder {
                    scope: &scope,
                    params,
                    agg: Some(&mut agg),
                };
                Some(b.bind(h)?.0)
            }
            None => None,
        };
        plan.agg = Some((group_exprs, agg.aggs, having));
    } else {
        for (name, item) in &items {
            let (x, ty) = match item {
                Item::Column(i) => (ScalarExpr::Column(*i), scope.columns[*i].ty.clone()),
                Item::Expr(e) => {
                    let mut b = Binder::new(&scope, params);
                    let (x, ty) = b.bind(e)?;
                    if ty == SqlType::Unknown {
                        b.coerce_unknown(x, &SqlType::String)?
                    } else {
                        (x, ty)
                    }
                }
            };
            plan.columns.push(ColumnInfo::new(name, ty));
            plan.outputs.push(x);
        }
    }
    Ok(plan)
}

/// Reads and joins the source rows, applying the filter. With `stop_after` (a `LIMIT`
/// without order, grouping or DISTINCT), stops once that many rows passed the filter. Every
/// row kept is charged to the statement's memory budget, and the loops check its deadline.
async fn source_rows(
    s: &mut Session,
    plan: &SelectPlan,
    ctx: &EvalCtx,
    stop_after: Option<usize>,
) -> Result<Vec<Vec<Datum>>> {
    if let Some(values) = &plan.values {
        return values
            .iter()
            .map(|r| {
                r.iter()
                    .map(|x| x.eval(&[], ctx))
                    .collect::<Result<Vec<_>>>()
            })
            .collect();
    }
    if plan.sources.is_empty() {
        let row: Vec<Datum> = vec![];
        if let Some(f) = &plan.filter
            && !f.eval_predicate(&row, ctx)?
        {
            return Ok(vec![]);
        }
        return Ok(vec![row]);
    }
    let ts = s.stmt_ts();
    let mut tables: Vec<Vec<StoredRow>> = Vec::new();
    for (i, src) in plan.sources.iter().enumerate() {
        if let Some(stmt) = &src.show {
            let result = Box::pin(s.dispatch(stmt, vec![], false)).await?;
            tables.push(
                result
                    .rows
                    .into_iter()
                    .map(|values| StoredRow {
                        key: vec![],
                        values,
                        raw: vec![],
                        ts: ldr_types::Timestamp::ZERO,
                        origin_ts: ldr_types::Timestamp::ZERO,
                        buffered: true,
                    })
                    .collect(),
            );
            continue;
        }
        let single = plan.sources.len() == 1 && i == 0;
        let txn = s.txn_ref();
        let rows = match stop_after {
            // The first rows of the table are the answer.
            Some(n) if single && plan.filter.is_none() && txn.is_none() => {
                scan::read_first(&s.server.kv, &src.desc, ts, n).await?
            }
            _ => {
                let access = if single {
                    scan::plan_access(&src.desc, plan.filter.as_ref(), ctx)
                } else {
                    scan::Access::Full
                };
                scan::read(&s.server.kv, &src.desc, &access, ts, txn).await?
            }
        };
        if let Some(l) = &ctx.limits {
            for r in &rows {
                l.grow_row_streamed(&r.values)?;
            }
        }
        tables.push(rows);
    }
    let wanted = stop_after.unwrap_or(usize::MAX);
    // Nested-loop join, depth first: only rows that passed every join and the filter are
    // kept, so memory holds the result, not the intermediate steps.
    let mut join = NestedLoop {
        tables: &tables,
        plan,
        ctx,
        wanted,
        out: Vec::new(),
    };
    for left in &tables[0] {
        if join.extend(0, left.scope_values())? {
            break;
        }
    }
    Ok(join.out)
}

/// A nested-loop join of a plan's source rows (see [`source_rows`]).
struct NestedLoop<'a> {
    tables: &'a [Vec<StoredRow>],
    plan: &'a SelectPlan,
    ctx: &'a EvalCtx,
    wanted: usize,
    out: Vec<Vec<Datum>>,
}

impl NestedLoop<'_> {
    /// Joins `row` (the sources up to `step`) with the rest; true once `wanted` rows are out.
    fn extend(&mut self, step: usize, row: Vec<Datum>) -> Result<bool> {
        let (plan, ctx) = (self.plan, self.ctx);
        if let Some(l) = &ctx.limits {
            l.tick()?;
        }
        let Some(join) = plan.joins.get(step) else {
            if let Some(f) = &plan.filter
                && !f.eval_predicate(&row, ctx)?
            {
                return Ok(false);
            }
            if let Some(l) = &ctx.limits {
                // A join's rows are built here (the statement's budget); a single table's
                // are the scanned rows passing through.
                if plan.joins.is_empty() {
                    l.grow_row_streamed(&row)?;
                } else {
                    l.grow_row(&row)?;
                }
            }
            self.out.push(row);
            return Ok(self.out.len() >= self.wanted);
        };
        let mut matched = false;
        for r in &self.tables[step + 1] {
            let mut joined = row.clone();
            joined.extend(r.scope_values());
            let pass = match &join.on {
                Some(on) => on.eval_predicate(&pad(&joined, plan), ctx)?,
                None => true,
            };
            if pass {
                matched = true;
                if self.extend(step + 1, joined)? {
                    return Ok(true);
                }
            } else if let Some(l) = &ctx.limits {
                l.tick()?;
            }
        }
        if !matched && matches!(join.kind, JoinKind::Left) {
            let width = plan.sources[step + 1].desc.columns.len() + 2;
            let mut joined = row;
            joined.extend(std::iter::repeat_n(Datum::Null, width));
            return self.extend(step + 1, joined);
        }
        Ok(false)
    }
}

/// Pads a partially joined row with NULLs to the full scope width (ON conditions are bound
/// over the whole scope).
fn pad(row: &[Datum], plan: &SelectPlan) -> Vec<Datum> {
    let width: usize = plan.sources.iter().map(|s| s.desc.columns.len() + 2).sum();
    let mut v = row.to_vec();
    v.resize(width, Datum::Null);
    v
}

#[derive(Debug)]
enum AggState {
    Count(i64),
    SumInt(Option<Decimal>),
    SumFloat(Option<f64>),
    SumInterval(Option<crate::interval::Interval>),
    Extreme(Option<Datum>),
    Avg {
        sum: Decimal,
        fsum: f64,
        n: i64,
        float: bool,
    },
    Bool(Option<bool>),
    StringAgg(Option<String>),
}

fn new_state(spec: &AggSpec, arg_ty: Option<TypeFamily>) -> AggState {
    match spec.func {
        AggFunc::CountStar | AggFunc::Count => AggState::Count(0),
        AggFunc::Sum => match spec.ty.family() {
            TypeFamily::Float => AggState::SumFloat(None),
            TypeFamily::Interval => AggState::SumInterval(None),
            _ => AggState::SumInt(None),
        },
        AggFunc::Min | AggFunc::Max => AggState::Extreme(None),
        AggFunc::Avg => AggState::Avg {
            sum: Decimal::ZERO,
            fsum: 0.0,
            n: 0,
            float: arg_ty == Some(TypeFamily::Float) || spec.ty.family() == TypeFamily::Float,
        },
        AggFunc::BoolAnd | AggFunc::BoolOr => AggState::Bool(None),
        AggFunc::StringAgg => AggState::StringAgg(None),
    }
}

fn accumulate(state: &mut AggState, spec: &AggSpec, v: Datum, sep: Option<Datum>) -> Result<()> {
    if spec.func == AggFunc::CountStar {
        if let AggState::Count(n) = state {
            *n += 1;
        }
        return Ok(());
    }
    if v.is_null() {
        return Ok(());
    }
    let overflow = || SqlError::out_of_range("decimal value out of range");
    match state {
        AggState::Count(n) => *n += 1,
        AggState::SumInt(acc) => {
            let d = match &v {
                Datum::Int(i) => Decimal::from(*i),
                Datum::Decimal(d) => *d,
                _ => return Ok(()),
            };
            *acc = Some(match acc {
                Some(a) => a.checked_add(d).ok_or_else(overflow)?,
                None => d,
            });
        }
        AggState::SumFloat(acc) => {
            let f = match &v {
                Datum::Float(f) => *f,
                Datum::Int(i) => *i as f64,
                Datum::Decimal(d) => d.to_f64().unwrap_or(f64::NAN),
                _ => return Ok(()),
            };
            *acc = Some(acc.unwrap_or(0.0) + f);
        }
        AggState::SumInterval(acc) => {
            if let Datum::Interval(iv) = v {
                *acc = Some(match acc {
                    Some(a) => a
                        .checked_add(&iv)
                        .ok_or_else(|| SqlError::out_of_range("interval out of range"))?,
                    None => iv,
                });
            }
        }
        AggState::Extreme(cur) => {
            let replace = match cur {
                None => true,
                Some(c) => {
                    let o = v.sort_cmp(c);
                    if spec.func == AggFunc::Min {
                        o == std::cmp::Ordering::Less
                    } else {
                        o == std::cmp::Ordering::Greater
                    }
                }
            };
            if replace {
                *cur = Some(v);
            }
        }
        AggState::Avg {
            sum,
            fsum,
            n,
            float,
        } => {
            *n += 1;
            if *float {
                *fsum += match &v {
                    Datum::Float(f) => *f,
                    Datum::Int(i) => *i as f64,
                    Datum::Decimal(d) => d.to_f64().unwrap_or(f64::NAN),
                    _ => 0.0,
                };
            } else {
                let d = match &v {
                    Datum::Int(i) => Decimal::from(*i),
                    Datum::Decimal(d) => *d,
                    _ => Decimal::ZERO,
                };
                *sum = sum.checked_add(d).ok_or_else(overflow)?;
            }
        }
        AggState::Bool(acc) => {
            if let Datum::Bool(b) = v {
                *acc = Some(match (*acc, spec.func) {
                    (None, _) => b,
                    (Some(a), AggFunc::BoolAnd) => a && b,
                    (Some(a), _) => a || b,
                });
            }
        }
        AggState::StringAgg(acc) => {
            let text = v.to_text(0).unwrap_or_default();
            *acc = Some(match acc.take() {
                None => text,
                Some(mut a) => {
                    if let Some(s) = sep.and_then(|s| s.to_text(0)) {
                        a.push_str(&s);
                    }
                    a.push_str(&text);
                    a
                }
            });
        }
    }
    Ok(())
}

fn finish(state: AggState) -> Datum {
    match state {
        AggState::Count(n) => Datum::Int(n),
        AggState::SumInt(v) => v.map(Datum::Decimal).unwrap_or(Datum::Null),
        AggState::SumFloat(v) => v.map(Datum::Float).unwrap_or(Datum::Null),
        AggState::SumInterval(v) => v.map(Datum::Interval).unwrap_or(Datum::Null),
        AggState::Extreme(v) => v.unwrap_or(Datum::Null),
        AggState::Avg {
            sum,
            fsum,
            n,
            float,
        } => {
            if n == 0 {
                Datum::Null
            } else if float {
                Datum::Float(fsum / n as f64)
            } else {
                let q = sum.checked_div(Decimal::from(n)).unwrap_or(Decimal::ZERO);
                Datum::Decimal(q.round_dp(16).normalize())
            }
        }
        AggState::Bool(v) => v.map(Datum::Bool).unwrap_or(Datum::Null),
        AggState::StringAgg(v) => v.map(Datum::String).unwrap_or(Datum::Null),
    }
}

fn key_of(values: &[Datum]) -> Vec<u8> {
    encoding::encode_key_tuple(values.iter())
}

/// Groups rows and computes aggregates: returns group rows `[keys…, aggs…]`.
fn aggregate(
    rows: Vec<Vec<Datum>>,
    group_exprs: &[ScalarExpr],
    aggs: &[AggSpec],
    ctx: &EvalCtx,
) -> Result<Vec<Vec<Datum>>> {
    struct Group {
        keys: Vec<Datum>,
        states: Vec<AggState>,
        seen: Vec<std::collections::HashSet<Vec<u8>>>,
    }
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut groups: HashMap<Vec<u8>, Group> = HashMap::new();
    let new_group = |keys: Vec<Datum>| Group {
        keys,
        states: aggs.iter().map(|a| new_state(a, None)).collect(),
        seen: aggs.iter().map(|_| Default::default()).collect(),
    };
    if group_exprs.is_empty() {
        order.push(Vec::new());
        groups.insert(Vec::new(), new_group(vec![]));
    }
    for row in rows {
        let keys: Vec<Datum> = group_exprs
            .iter()
            .map(|g| g.eval(&row, ctx))
            .collect::<Result<_>>()?;
        let k = key_of(&keys);
        if !groups.contains_key(&k) {
            order.push(k.clone());
            groups.insert(k.clone(), new_group(keys));
        }
        let g = groups.get_mut(&k).expect("inserted above");
        for (i, spec) in aggs.iter().enumerate() {
            let v = match &spec.arg {
                Some(a) => a.eval(&row, ctx)?,
                None => Datum::Null,
            };
            if spec.distinct && !v.is_null() && !g.seen[i].insert(key_of(std::slice::from_ref(&v)))
            {
                continue;
            }
            let sep = match &spec.arg2 {
                Some(a) => Some(a.eval(&row, ctx)?),
                None => None,
            };
            accumulate(&mut g.states[i], spec, v, sep)?;
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for k in order {
        let g = groups.remove(&k).expect("every ordered key has a group");
        let mut row = g.keys;
        row.extend(g.states.into_iter().map(finish));
        out.push(row);
    }
    Ok(out)
}

fn limit_value(e: &Option<ScalarExpr>, ctx: &EvalCtx, what: &str) -> Result<Option<usize>> {
    match e {
        None => Ok(None),
        Some(x) => match x.eval(&[], ctx)? {
            Datum::Null => Ok(None),
            Datum::Int(n) if n >= 0 => Ok(Some(n as usize)),
            Datum::Decimal(d) if !d.is_sign_negative() => Ok(d.to_usize()),
            other => Err(SqlError::new(
                sqlstate::INVALID_ROW_COUNT,
                format!(
                    "negative value for {what}: {}",
                    other.to_text(0).unwrap_or_default()
                ),
            )),
        },
    }
}

/// Runs a planned SELECT.
pub(crate) async fn run_plan(
    s: &mut Session,
    plan: &SelectPlan,
    ctx: &EvalCtx,
) -> Result<Vec<Vec<Datum>>> {
    let offset = limit_value(&plan.offset, ctx, "OFFSET")?.unwrap_or(0);
    let limit = limit_value(&plan.limit, ctx, "LIMIT")?;
    let stop_after = match limit {
        Some(l) if plan.agg.is_none() && plan.order.is_empty() && !plan.distinct => {
            Some(l.saturating_add(offset))
        }
        _ => None,
    };
    let rows = source_rows(s, plan, ctx, stop_after).await?;
    let rows: Vec<Vec<Datum>> = match &plan.agg {
        Some((group_exprs, aggs, having)) => {
            let mut grouped = aggregate(rows, group_exprs, aggs, ctx)?;
            if let Some(h) = having {
                let mut kept = Vec::new();
                for g in grouped {
                    if h.eval_predicate(&g, ctx)? {
                        kept.push(g);
                    }
                }
                grouped = kept;
            }
            grouped
        }
        None => rows,
    };
    // Outputs and sort keys.
    let mut out: Vec<(Vec<Datum>, Vec<Datum>)> = Vec::with_capacity(rows.len());
    for r in &rows {
        let values: Vec<Datum> = plan
            .outputs
            .iter()
            .map(|o| o.eval(r, ctx))
            .collect::<Result<_>>()?;
        let keys: Vec<Datum> = plan
            .order
            .iter()
            .map(|o| match &o.key {
                SortKey::Output(i) => Ok(values[*i].clone()),
                SortKey::Expr(x) => x.eval(r, ctx),
            })
            .collect::<Result<_>>()?;
        if let Some(l) = &ctx.limits {
            l.grow_row(&values)?;
        }
        out.push((values, keys));
    }
    if !plan.order.is_empty() {
        out.sort_by(|(_, a), (_, b)| {
            for (i, o) in plan.order.iter().enumerate() {
                let (x, y) = (&a[i], &b[i]);
                let ord = match (x.is_null(), y.is_null()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => {
                        if o.nulls_first {
                            std::cmp::Ordering::Less
                        } else {
                            std::cmp::Ordering::Greater
                        }
                    }
                    (false, true) => {
                        if o.nulls_first {
                            std::cmp::Ordering::Greater
                        } else {
                            std::cmp::Ordering::Less
                        }
                    }
                    _ => {
                        let c = x.sort_cmp(y);
                        if o.desc { c.reverse() } else { c }
                    }
                };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    let mut values: Vec<Vec<Datum>> = out.into_iter().map(|(v, _)| v).collect();
    if plan.distinct {
        let mut seen = std::collections::HashSet::new();
        values.retain(|v| seen.insert(key_of(v)));
    }
    let values: Vec<Vec<Datum>> = values
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    // Output values take their column's type (e.g. INT4 columns stay ints; untyped text).
    Ok(values)
}

pub(crate) async fn execute_query(
    s: &mut Session,
    q: &sql::Query,
    params: Vec<Datum>,
) -> Result<QueryResult> {
    let mut types = Vec::new();
    let plan = plan_query(s, q, &mut types).await?;
    let ctx = s.eval_ctx(params);
    let rows = run_plan(s, &plan, &ctx).await?;
    Ok(QueryResult::rows(plan.columns.clone(), rows))
}

pub(crate) async fn describe_query(
    s: &mut Session,
    q: &sql::Query,
    params: &mut Vec<Option<SqlType>>,
) -> Result<Vec<ColumnInfo>> {
    Ok(plan_query(s, q, params).await?.columns)
}
