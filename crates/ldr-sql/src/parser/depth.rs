//! The depth limit on parsed statements.
//!
//! sqlparser builds some trees in loops rather than by recursion — an operator chain
//! `1 + 1 + … + 1`, a cast chain `x::INT::INT…`, a set operation chain `SELECT 1 UNION SELECT 1
//! UNION …` — so its own recursion limit does not bound how deep they get: 50,000 terms make a
//! tree 50,000 levels deep. Everything that walks such a tree later recurses once per level —
//! binding, evaluation, and the compiler's `Clone` and `Drop` — and would overflow a worker
//! thread's stack, killing the node. So [`super::parse`] measures every statement here, with an
//! explicit stack instead of recursion, and refuses one deeper than [`MAX_EXPR_DEPTH`] with
//! PostgreSQL's `54001 stack depth limit exceeded`.
//!
//! The walk covers our [`Statement`] exhaustively and every sqlparser node the PostgreSQL
//! dialect produces that can hold an expression; nodes of other dialects count as leaves.

use sqlparser::ast as sql;

use super::ast::*;
use crate::error::Result;
use crate::stack::stack_depth_error;

/// The deepest tree a statement may hold, counted in expression, query and table nodes.
///
/// What bounds it is the code we do not control: the derived `Clone` and `Drop` of sqlparser's
/// `Expr` recurse once per level, and a debug build's `Clone` takes about 4 KiB of stack per
/// level, so 256 levels fit a 2 MiB worker stack with room for the caller. Real statements
/// stay below it (a long `IN` list is flat; an `a = 1 OR a = 2 OR …` filter is one level per
/// term). Binding and evaluation check the stack left on top of it
/// ([`crate::stack::check_stack_depth`]), so within the limit a deep statement gets 54001 or
/// an answer, never an overflow.
pub const MAX_EXPR_DEPTH: usize = 256;

/// A tree node the walk visits.
#[derive(Clone, Copy)]
enum Node<'a> {
    Expr(&'a sql::Expr),
    Query(&'a sql::Query),
    SetExpr(&'a sql::SetExpr),
    Select(&'a sql::Select),
    Table(&'a sql::TableWithJoins),
    Factor(&'a sql::TableFactor),
    Function(&'a sql::Function),
    Arguments(&'a sql::FunctionArguments),
    Argument(&'a sql::FunctionArg),
    Window(&'a sql::WindowSpec),
    Statement(&'a Statement),
    /// sqlparser's own statements inside a query (`WITH x AS (INSERT …)`).
    SqlStatement(&'a sql::Statement),
}

/// Fails with 54001 when `stmt` holds a tree deeper than [`MAX_EXPR_DEPTH`].
pub fn check_statement(stmt: &Statement) -> Result<()> {
    check(Node::Statement(stmt))
}

/// Fails with 54001 when `e` is deeper than [`MAX_EXPR_DEPTH`].
pub fn check_expr(e: &sql::Expr) -> Result<()> {
    check(Node::Expr(e))
}

fn check(root: Node<'_>) -> Result<()> {
    let mut stack = vec![(root, 1usize)];
    let mut children = Vec::new();
    while let Some((node, depth)) = stack.pop() {
        if depth > MAX_EXPR_DEPTH {
            return Err(stack_depth_error().with_detail(format!(
                "the statement nests more than {MAX_EXPR_DEPTH} levels deep"
            )));
        }
        node.children(&mut children);
        stack.extend(children.drain(..).map(|c| (c, depth + 1)));
    }
    Ok(())
}

impl<'a> Node<'a> {
    fn children(self, out: &mut Vec<Node<'a>>) {
        match self {
            Node::Expr(e) => expr_children(e, out),
            Node::Query(q) => query_children(q, out),
            Node::SetExpr(s) => match s {
                sql::SetExpr::Select(s) => out.push(Node::Select(s)),
                sql::SetExpr::Query(q) => out.push(Node::Query(q)),
                sql::SetExpr::SetOperation { left, right, .. } => {
                    out.push(Node::SetExpr(left));
                    out.push(Node::SetExpr(right));
                }
                sql::SetExpr::Values(v) => {
                    for row in &v.rows {
                        exprs(&row.content, out);
                    }
                }
                sql::SetExpr::Insert(st)
                | sql::SetExpr::Update(st)
                | sql::SetExpr::Delete(st)
                | sql::SetExpr::Merge(st) => out.push(Node::SqlStatement(st)),
                sql::SetExpr::Table(_) => {}
            },
            Node::Select(s) => select_children(s, out),
            Node::Table(t) => {
                out.push(Node::Factor(&t.relation));
                for j in &t.joins {
                    out.push(Node::Factor(&j.relation));
                    join_children(&j.join_operator, out);
                }
            }
            Node::Factor(f) => factor_children(f, out),
            Node::Function(f) => {
                out.push(Node::Arguments(&f.parameters));
                out.push(Node::Arguments(&f.args));
                order_by_exprs(&f.within_group, out);
                opt(f.filter.as_deref(), out);
                if let Some(sql::WindowType::WindowSpec(w)) = &f.over {
                    out.push(Node::Window(w));
                }
            }
            Node::Arguments(a) => match a {
                sql::FunctionArguments::None => {}
                sql::FunctionArguments::Subquery(q) => out.push(Node::Query(q)),
                sql::FunctionArguments::List(l) => {
                    out.extend(l.args.iter().map(Node::Argument));
                    for c in &l.clauses {
                        match c {
                            sql::FunctionArgumentClause::Where(e)
                            | sql::FunctionArgumentClause::Limit(e) => out.push(Node::Expr(e)),
                            sql::FunctionArgumentClause::OrderBy(o) => order_by_exprs(o, out),
                            _ => {}
                        }
                    }
                }
            },
            Node::Argument(a) => {
                let arg = match a {
                    sql::FunctionArg::Named { arg, .. } => arg,
                    sql::FunctionArg::ExprNamed { name, arg, .. } => {
                        out.push(Node::Expr(name));
                        arg
                    }
                    sql::FunctionArg::Unnamed(arg) => arg,
                };
                if let sql::FunctionArgExpr::Expr(e) = arg {
                    out.push(Node::Expr(e));
                }
            }
            Node::Window(w) => {
                exprs(&w.partition_by, out);
                order_by_exprs(&w.order_by, out);
                if let Some(frame) = &w.window_frame {
                    for bound in std::iter::once(&frame.start_bound).chain(&frame.end_bound) {
                        if let sql::WindowFrameBound::Preceding(e)
                        | sql::WindowFrameBound::Following(e) = bound
                        {
                            opt(e.as_deref(), out);
                        }
                    }
                }
            }
            Node::Statement(s) => statement_children(s, out),
            Node::SqlStatement(s) => sql_statement_children(s, out),
        }
    }
}

fn exprs<'a>(list: &'a [sql::Expr], out: &mut Vec<Node<'a>>) {
    out.extend(list.iter().map(Node::Expr));
}

fn opt<'a>(e: Option<&'a sql::Expr>, out: &mut Vec<Node<'a>>) {
    if let Some(e) = e {
        out.push(Node::Expr(e));
    }
}

fn order_by_exprs<'a>(list: &'a [sql::OrderByExpr], out: &mut Vec<Node<'a>>) {
    out.extend(list.iter().map(|o| Node::Expr(&o.expr)));
}

fn select_items<'a>(items: &'a [sql::SelectItem], out: &mut Vec<Node<'a>>) {
    for item in items {
        match item {
            sql::SelectItem::UnnamedExpr(e)
            | sql::SelectItem::ExprWithAlias { expr: e, .. }
            | sql::SelectItem::ExprWithAliases { expr: e, .. } => out.push(Node::Expr(e)),
            sql::SelectItem::QualifiedWildcard(..) | sql::SelectItem::Wildcard(_) => {}
        }
    }
}

fn assignments<'a>(list: &'a [(String, sql::Expr)], out: &mut Vec<Node<'a>>) {
    out.extend(list.iter().map(|(_, e)| Node::Expr(e)));
}

fn expr_children<'a>(e: &'a sql::Expr, out: &mut Vec<Node<'a>>) {
    use sql::Expr as E;
    match e {
        E::Identifier(_)
        | E::CompoundIdentifier(_)
        | E::Value(_)
        | E::TypedString(_)
        | E::MatchAgainst { .. }
        | E::Wildcard(_)
        | E::QualifiedWildcard(..) => {}
        E::CompoundFieldAccess { root, access_chain } => {
            out.push(Node::Expr(root));
            for access in access_chain {
                match access {
                    sql::AccessExpr::Dot(e) => out.push(Node::Expr(e)),
                    sql::AccessExpr::Subscript(sql::Subscript::Index { index }) => {
                        out.push(Node::Expr(index))
                    }
                    sql::AccessExpr::Subscript(sql::Subscript::Slice {
                        lower_bound,
                        upper_bound,
                        stride,
                    }) => {
                        opt(lower_bound.as_ref(), out);
                        opt(upper_bound.as_ref(), out);
                        opt(stride.as_ref(), out);
                    }
                }
            }
        }
        E::JsonAccess { value, path } => {
            out.push(Node::Expr(value));
            for elem in &path.path {
                match elem {
                    sql::JsonPathElem::Bracket { key }
                    | sql::JsonPathElem::ColonBracket { key } => out.push(Node::Expr(key)),
                    sql::JsonPathElem::Dot { .. } => {}
                }
            }
        }
        E::IsFalse(x)
        | E::IsNotFalse(x)
        | E::IsTrue(x)
        | E::IsNotTrue(x)
        | E::IsNull(x)
        | E::IsNotNull(x)
        | E::IsUnknown(x)
        | E::IsNotUnknown(x)
        | E::Nested(x)
        | E::OuterJoin(x)
        | E::Prior(x)
        | E::IsJson { expr: x, .. }
        | E::IsNormalized { expr: x, .. }
        | E::UnaryOp { expr: x, .. }
        | E::Cast { expr: x, .. }
        | E::Extract { expr: x, .. }
        | E::Ceil { expr: x, .. }
        | E::Floor { expr: x, .. }
        | E::Collate { expr: x, .. }
        | E::Prefixed { value: x, .. }
        | E::Named { expr: x, .. } => out.push(Node::Expr(x)),
        E::IsDistinctFrom(a, b)
        | E::IsNotDistinctFrom(a, b)
        | E::InUnnest {
            expr: a,
            array_expr: b,
            ..
        }
        | E::BinaryOp {
            left: a, right: b, ..
        }
        | E::RLike {
            expr: a,
            pattern: b,
            ..
        }
        | E::AnyOp {
            left: a, right: b, ..
        }
        | E::AllOp {
            left: a, right: b, ..
        }
        | E::AtTimeZone {
            timestamp: a,
            time_zone: b,
        }
        | E::Position { expr: a, r#in: b }
        | E::MemberOf(sql::MemberOf { value: a, array: b }) => {
            out.push(Node::Expr(a));
            out.push(Node::Expr(b));
        }
        E::InList { expr, list, .. } => {
            out.push(Node::Expr(expr));
            exprs(list, out);
        }
        E::InSubquery { expr, subquery, .. } => {
            out.push(Node::Expr(expr));
            out.push(Node::Query(subquery));
        }
        E::Between {
            expr, low, high, ..
        } => {
            out.push(Node::Expr(expr));
            out.push(Node::Expr(low));
            out.push(Node::Expr(high));
        }
        E::Like {
            expr,
            pattern,
            escape_char,
            ..
        }
        | E::ILike {
            expr,
            pattern,
            escape_char,
            ..
        }
        | E::SimilarTo {
            expr,
            pattern,
            escape_char,
            ..
        } => {
            out.push(Node::Expr(expr));
            out.push(Node::Expr(pattern));
            opt(escape_char.as_deref(), out);
        }
        E::Convert { expr, styles, .. } => {
            out.push(Node::Expr(expr));
            exprs(styles, out);
        }
        E::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            out.push(Node::Expr(expr));
            opt(substring_from.as_deref(), out);
            opt(substring_for.as_deref(), out);
        }
        E::Trim {
            expr,
            trim_what,
            trim_characters,
            ..
        } => {
            out.push(Node::Expr(expr));
            opt(trim_what.as_deref(), out);
            if let Some(chars) = trim_characters {
                exprs(chars, out);
            }
        }
        E::Overlay {
            expr,
            overlay_what,
            overlay_from,
            overlay_for,
        } => {
            out.push(Node::Expr(expr));
            out.push(Node::Expr(overlay_what));
            out.push(Node::Expr(overlay_from));
            opt(overlay_for.as_deref(), out);
        }
        E::Function(f) => out.push(Node::Function(f)),
        E::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            opt(operand.as_deref(), out);
            for c in conditions {
                out.push(Node::Expr(&c.condition));
                out.push(Node::Expr(&c.result));
            }
            opt(else_result.as_deref(), out);
        }
        E::Exists { subquery, .. } | E::Subquery(subquery) => out.push(Node::Query(subquery)),
        E::GroupingSets(sets) | E::Cube(sets) | E::Rollup(sets) => {
            for set in sets {
                exprs(set, out);
            }
        }
        E::Tuple(items) | E::Struct { values: items, .. } => exprs(items, out),
        E::Dictionary(fields) => out.extend(fields.iter().map(|f| Node::Expr(&f.value))),
        E::Map(map) => {
            for entry in &map.entries {
                out.push(Node::Expr(&entry.key));
                out.push(Node::Expr(&entry.value));
            }
        }
        E::Array(array) => exprs(&array.elem, out),
        E::Interval(interval) => out.push(Node::Expr(&interval.value)),
        E::Lambda(lambda) => out.push(Node::Expr(&lambda.body)),
    }
}

fn query_children<'a>(q: &'a sql::Query, out: &mut Vec<Node<'a>>) {
    if let Some(with) = &q.with {
        out.extend(with.cte_tables.iter().map(|cte| Node::Query(&cte.query)));
    }
    out.push(Node::SetExpr(&q.body));
    if let Some(sql::OrderBy {
        kind: sql::OrderByKind::Expressions(list),
        ..
    }) = &q.order_by
    {
        order_by_exprs(list, out);
    }
    match &q.limit_clause {
        Some(sql::LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            opt(limit.as_ref(), out);
            opt(offset.as_ref().map(|o| &o.value), out);
            exprs(limit_by, out);
        }
        Some(sql::LimitClause::OffsetCommaLimit { offset, limit }) => {
            out.push(Node::Expr(offset));
            out.push(Node::Expr(limit));
        }
        None => {}
    }
    if let Some(fetch) = &q.fetch {
        opt(fetch.quantity.as_ref(), out);
    }
}

fn select_children<'a>(s: &'a sql::Select, out: &mut Vec<Node<'a>>) {
    if let Some(sql::Distinct::On(list)) = &s.distinct {
        exprs(list, out);
    }
    select_items(&s.projection, out);
    out.extend(s.from.iter().map(Node::Table));
    opt(s.prewhere.as_ref(), out);
    opt(s.selection.as_ref(), out);
    if let sql::GroupByExpr::Expressions(list, _) = &s.group_by {
        exprs(list, out);
    }
    exprs(&s.cluster_by, out);
    exprs(&s.distribute_by, out);
    order_by_exprs(&s.sort_by, out);
    opt(s.having.as_ref(), out);
    opt(s.qualify.as_ref(), out);
}

fn join_children<'a>(op: &'a sql::JoinOperator, out: &mut Vec<Node<'a>>) {
    use sql::JoinOperator as J;
    let constraint = match op {
        J::Join(c)
        | J::Inner(c)
        | J::Left(c)
        | J::LeftOuter(c)
        | J::Right(c)
        | J::RightOuter(c)
        | J::FullOuter(c)
        | J::CrossJoin(c)
        | J::Semi(c)
        | J::LeftSemi(c)
        | J::RightSemi(c)
        | J::Anti(c)
        | J::LeftAnti(c)
        | J::RightAnti(c)
        | J::StraightJoin(c) => c,
        J::AsOf {
            match_condition,
            constraint,
        } => {
            out.push(Node::Expr(match_condition));
            constraint
        }
        J::CrossApply | J::OuterApply | J::ArrayJoin | J::LeftArrayJoin | J::InnerArrayJoin => {
            return;
        }
    };
    if let sql::JoinConstraint::On(e) = constraint {
        out.push(Node::Expr(e));
    }
}

fn factor_children<'a>(f: &'a sql::TableFactor, out: &mut Vec<Node<'a>>) {
    use sql::TableFactor as F;
    match f {
        F::Table {
            args, with_hints, ..
        } => {
            if let Some(args) = args {
                out.extend(args.args.iter().map(Node::Argument));
            }
            exprs(with_hints, out);
        }
        F::Derived { subquery, .. } => out.push(Node::Query(subquery)),
        F::TableFunction { expr, .. } => out.push(Node::Expr(expr)),
        F::Function { args, .. } => out.extend(args.iter().map(Node::Argument)),
        F::UNNEST { array_exprs, .. } => exprs(array_exprs, out),
        F::JsonTable { json_expr, .. } | F::OpenJsonTable { json_expr, .. } => {
            out.push(Node::Expr(json_expr))
        }
        F::NestedJoin {
            table_with_joins, ..
        } => out.push(Node::Table(table_with_joins)),
        F::Pivot { table, .. } | F::Unpivot { table, .. } | F::MatchRecognize { table, .. } => {
            out.push(Node::Factor(table))
        }
        // Other dialects' table sources: leaves.
        _ => {}
    }
}

fn sql_statement_children<'a>(s: &'a sql::Statement, out: &mut Vec<Node<'a>>) {
    match s {
        sql::Statement::Query(q) => out.push(Node::Query(q)),
        sql::Statement::Insert(ins) => {
            if let Some(q) = &ins.source {
                out.push(Node::Query(q));
            }
            out.extend(ins.assignments.iter().map(|a| Node::Expr(&a.value)));
            if let Some(sql::OnInsert::OnConflict(sql::OnConflict {
                action: sql::OnConflictAction::DoUpdate(du),
                ..
            })) = &ins.on
            {
                out.extend(du.assignments.iter().map(|a| Node::Expr(&a.value)));
                opt(du.selection.as_ref(), out);
            }
            if let Some(r) = &ins.returning {
                select_items(r, out);
            }
        }
        sql::Statement::Update(up) => {
            out.push(Node::Table(&up.table));
            out.extend(up.assignments.iter().map(|a| Node::Expr(&a.value)));
            opt(up.selection.as_ref(), out);
            if let Some(r) = &up.returning {
                select_items(r, out);
            }
        }
        sql::Statement::Delete(del) => {
            opt(del.selection.as_ref(), out);
            if let Some(r) = &del.returning {
                select_items(r, out);
            }
        }
        // Statements a query cannot contain in the PostgreSQL dialect: leaves.
        _ => {}
    }
}

fn column_children<'a>(c: &'a ColumnDef, out: &mut Vec<Node<'a>>) {
    opt(c.default.as_ref(), out);
    out.extend(c.checks.iter().map(|(_, e)| Node::Expr(e)));
}

fn element_children<'a>(e: &'a TableElement, out: &mut Vec<Node<'a>>) {
    match e {
        TableElement::Column(c) => column_children(c, out),
        TableElement::Check { expr, .. } => out.push(Node::Expr(expr)),
        TableElement::PrimaryKey { .. }
        | TableElement::Index(_)
        | TableElement::ForeignKey(_)
        | TableElement::Family => {}
    }
}

/// Every tree a statement holds. Exhaustive on purpose: a new statement kind must say here
/// whether it holds expressions.
fn statement_children<'a>(s: &'a Statement, out: &mut Vec<Node<'a>>) {
    use Statement as S;
    match s {
        S::Select(q) | S::SelectAsOf { query: q, .. } => out.push(Node::Query(q)),
        S::SelectFromShow { query, shows } => {
            out.push(Node::Query(query));
            out.extend(shows.iter().map(Node::Statement));
        }
        S::Insert(ins) => {
            match &ins.source {
                InsertSource::Values(rows) => {
                    for row in rows {
                        exprs(row, out);
                    }
                }
                InsertSource::Query(q) => out.push(Node::Query(q)),
                InsertSource::DefaultValues => {}
            }
            if let Some(OnConflict::DoUpdate {
                assignments: list,
                selection,
                ..
            }) = &ins.on_conflict
            {
                assignments(list, out);
                opt(selection.as_ref(), out);
            }
            if let Some(r) = &ins.returning {
                select_items(r, out);
            }
        }
        S::Update(up) => {
            assignments(&up.assignments, out);
            opt(up.selection.as_ref(), out);
            if let Some(r) = &up.returning {
                select_items(r, out);
            }
        }
        S::Delete(del) => {
            opt(del.selection.as_ref(), out);
            if let Some(r) = &del.returning {
                select_items(r, out);
            }
        }
        S::CreateTable(t) => {
            for e in &t.elements {
                element_children(e, out);
            }
            assignments(&t.storage_params, out);
        }
        S::AlterTable { ops, .. } => {
            for op in ops {
                match op {
                    AlterTableOp::AddColumn { column, .. } => column_children(column, out),
                    AlterTableOp::SetStorage(params) => assignments(params, out),
                    AlterTableOp::SetDefault { default, .. } => opt(default.as_ref(), out),
                    AlterTableOp::AddConstraint(e) => element_children(e, out),
                    AlterTableOp::DropColumn { .. }
                    | AlterTableOp::ResetStorage(_)
                    | AlterTableOp::SetNotNull { .. }
                    | AlterTableOp::DropConstraint { .. }
                    | AlterTableOp::ConfigureZone(_) => {}
                }
            }
        }
        S::SetVar { value, .. } => {
            if let Some(values) = value {
                exprs(values, out);
            }
        }
        S::SetClusterSetting { value, .. } => opt(value.as_ref(), out),
        S::ShowJob(e)
        | S::PauseJob(e)
        | S::ResumeJob(e)
        | S::CancelJob(e)
        | S::ShowChangefeedJobs(Some(e)) => out.push(Node::Expr(e)),
        S::CreateExternalConnection { uri, .. } => out.push(Node::Expr(uri)),
        S::Truncate { .. }
        | S::CreateDatabase { .. }
        | S::CreateSchema { .. }
        | S::CreateIndex(_)
        | S::DropDatabase { .. }
        | S::DropTable { .. }
        | S::DropIndex { .. }
        | S::Begin
        | S::Commit
        | S::Rollback
        | S::Savepoint(_)
        | S::ReleaseSavepoint(_)
        | S::RollbackToSavepoint(_)
        | S::SetTransaction
        | S::ResetVar(_)
        | S::ResetAll
        | S::ShowVar(_)
        | S::ShowAllVars
        | S::Use(_)
        | S::ShowClusterSetting(_)
        | S::ShowClusterSettings
        | S::ShowDatabases
        | S::ShowSchemas { .. }
        | S::ShowTables { .. }
        | S::ShowCreateTable(_)
        | S::ShowColumns(_)
        | S::ShowIndexes(_)
        | S::ShowConstraints(_)
        | S::ShowRanges(_)
        | S::ShowFingerprints(_)
        | S::ShowJobs
        | S::ShowTransactions
        | S::ShowLogicalReplicationJobs { .. }
        | S::ShowUsers
        | S::ShowGrants { .. }
        | S::ShowSystemGrants { .. }
        | S::ShowExternalConnections { .. }
        | S::VirtualTable { .. }
        | S::CheckConsistency { .. }
        | S::CreateUser(_)
        | S::AlterUser(_)
        | S::DropUser { .. }
        | S::GrantSystem { .. }
        | S::RevokeSystem { .. }
        | S::GrantTable { .. }
        | S::RevokeTable { .. }
        | S::GrantDatabase { .. }
        | S::RevokeDatabase { .. }
        | S::GrantRole { .. }
        | S::RevokeRole { .. }
        | S::DropExternalConnection { .. }
        | S::CreateLogicalReplicationStream(_)
        | S::CreateChangefeed(_)
        | S::ShowChangefeedJobs(None)
        | S::Backup(_)
        | S::Restore(_)
        | S::ShowBackups { .. }
        | S::ShowBackup { .. }
        | S::NoOp { .. }
        | S::ConfigureRangeZone { .. } => {}
    }
}
