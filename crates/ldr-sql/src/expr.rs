//! Scalar expressions: binding sqlparser expressions against a scope of columns (name
//! resolution, type inference for literals and `$n` parameters, aggregate extraction) and
//! evaluating the bound tree over a row.
//!
//! Binding is where types are decided, as in PostgreSQL: an untyped string literal or a
//! parameter takes the type its context wants (`ts > '2024-01-01'`, `id = $1`), numeric
//! types compare across each other, and mismatches fail with 42804/42883 before any row is
//! read.

use std::sync::Arc;

use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use sqlparser::ast as sql;

use crate::datum::{self, Datum};
use crate::error::{Result, SqlError, sqlstate};
use crate::interval::{Interval, MICROS_PER_DAY, MICROS_PER_SECOND};
use crate::types::{SqlType, TypeFamily};

/// A column visible to expressions.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeColumn {
    /// The table name or alias that qualifies it (`t.a`).
    pub table: Option<String>,
    pub name: String,
    pub ty: SqlType,
    /// Left out of `*` (system and NOT VISIBLE columns).
    pub hidden: bool,
}

/// The columns of the rows an expression is evaluated over, in row order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub columns: Vec<ScopeColumn>,
}

impl Scope {
    pub fn resolve(&self, qualifier: Option<&str>, name: &str) -> Result<usize> {
        let mut found = None;
        for (i, c) in self.columns.iter().enumerate() {
            if c.name != name {
                continue;
            }
            if let Some(q) = qualifier
                && c.table.as_deref() != Some(q)
            {
                continue;
            }
            if found.is_some() {
                return Err(SqlError::new(
                    sqlstate::AMBIGUOUS_COLUMN,
                    format!("column reference \"{name}\" is ambiguous"),
                ));
            }
            found = Some(i);
        }
        found.ok_or_else(|| match qualifier {
            Some(q) if !self.columns.iter().any(|c| c.table.as_deref() == Some(q)) => {
                SqlError::new(
                    sqlstate::UNDEFINED_TABLE,
                    format!("no data source matches prefix: {q} in this context"),
                )
            }
            Some(q) => SqlError::undefined_column(format!("{q}.{name}")),
            None => SqlError::undefined_column(name),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Concat,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
    JsonGet,
    JsonGetText,
    BitAnd,
    BitOr,
    BitXor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    CountStar,
    Count,
    Sum,
    Min,
    Max,
    Avg,
    BoolAnd,
    BoolOr,
    StringAgg,
}

/// One aggregate computed per group.
#[derive(Debug, Clone, PartialEq)]
pub struct AggSpec {
    pub func: AggFunc,
    /// Bound in the input row scope; `None` for `count(*)`.
    pub arg: Option<ScalarExpr>,
    /// The separator of `string_agg`.
    pub arg2: Option<ScalarExpr>,
    pub distinct: bool,
    pub ty: SqlType,
}

/// A bound expression.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarExpr {
    Const(Datum),
    Column(usize),
    /// `$n`, zero-based.
    Param(usize),
    Neg(Box<ScalarExpr>),
    Not(Box<ScalarExpr>),
    BitNot(Box<ScalarExpr>),
    Binary(BinOp, Box<ScalarExpr>, Box<ScalarExpr>),
    IsNull(Box<ScalarExpr>, bool),
    IsBool {
        expr: Box<ScalarExpr>,
        value: bool,
        negated: bool,
    },
    IsDistinct(Box<ScalarExpr>, Box<ScalarExpr>, bool),
    InList {
        expr: Box<ScalarExpr>,
        list: Vec<ScalarExpr>,
        negated: bool,
    },
    Between {
        expr: Box<ScalarExpr>,
        low: Box<ScalarExpr>,
        high: Box<ScalarExpr>,
        negated: bool,
    },
    Like {
        expr: Box<ScalarExpr>,
        pattern: Box<ScalarExpr>,
        case_insensitive: bool,
        negated: bool,
        escape: Option<char>,
    },
    Cast(Box<ScalarExpr>, SqlType),
    Case {
        operand: Option<Box<ScalarExpr>>,
        whens: Vec<(ScalarExpr, ScalarExpr)>,
        default: Option<Box<ScalarExpr>>,
    },
    Func {
        name: String,
        args: Vec<ScalarExpr>,
        ty: SqlType,
    },
}

impl ScalarExpr {
    /// Whether the expression reads any column.
    pub fn references_columns(&self) -> bool {
        let mut found = false;
        self.walk(&mut |e| {
            if matches!(e, ScalarExpr::Column(_)) {
                found = true;
            }
        });
        found
    }

    /// Whether evaluating it twice may give different results (`now()` is stable per
    /// statement and does not count).
    pub fn is_volatile(&self) -> bool {
        let mut found = false;
        self.walk(&mut |e| {
            if let ScalarExpr::Func { name, .. } = e
                && matches!(
                    name.as_str(),
                    "gen_random_uuid"
                        | "unique_rowid"
                        | "random"
                        | "clock_timestamp"
                        | "uuid_generate_v4"
                )
            {
                found = true;
            }
        });
        found
    }

    pub fn walk(&self, f: &mut dyn FnMut(&ScalarExpr)) {
        f(self);
        match self {
            ScalarExpr::Const(_) | ScalarExpr::Column(_) | ScalarExpr::Param(_) => {}
            ScalarExpr::Neg(e)
            | ScalarExpr::Not(e)
            | ScalarExpr::BitNot(e)
            | ScalarExpr::IsNull(e, _)
            | ScalarExpr::Cast(e, _) => e.walk(f),
            ScalarExpr::IsBool { expr, .. } => expr.walk(f),
            ScalarExpr::Binary(_, a, b) | ScalarExpr::IsDistinct(a, b, _) => {
                a.walk(f);
                b.walk(f);
            }
            ScalarExpr::InList { expr, list, .. } => {
                expr.walk(f);
                list.iter().for_each(|e| e.walk(f));
            }
            ScalarExpr::Between {
                expr, low, high, ..
            } => {
                expr.walk(f);
                low.walk(f);
                high.walk(f);
            }
            ScalarExpr::Like { expr, pattern, .. } => {
                expr.walk(f);
                pattern.walk(f);
            }
            ScalarExpr::Case {
                operand,
                whens,
                default,
            } => {
                if let Some(o) = operand {
                    o.walk(f);
                }
                for (w, t) in whens {
                    w.walk(f);
                    t.walk(f);
                }
                if let Some(d) = default {
                    d.walk(f);
                }
            }
            ScalarExpr::Func { args, .. } => args.iter().for_each(|e| e.walk(f)),
        }
    }

    /// Rewrites column indexes (e.g. to evaluate a table-scope expression over another row
    /// layout).
    pub fn map_columns(&mut self, f: &dyn Fn(usize) -> usize) {
        match self {
            ScalarExpr::Column(i) => *i = f(*i),
            ScalarExpr::Const(_) | ScalarExpr::Param(_) => {}
            ScalarExpr::Neg(e)
            | ScalarExpr::Not(e)
            | ScalarExpr::BitNot(e)
            | ScalarExpr::IsNull(e, _)
            | ScalarExpr::Cast(e, _) => e.map_columns(f),
            ScalarExpr::IsBool { expr, .. } => expr.map_columns(f),
            ScalarExpr::Binary(_, a, b) | ScalarExpr::IsDistinct(a, b, _) => {
                a.map_columns(f);
                b.map_columns(f);
            }
            ScalarExpr::InList { expr, list, .. } => {
                expr.map_columns(f);
                list.iter_mut().for_each(|e| e.map_columns(f));
            }
            ScalarExpr::Between {
                expr, low, high, ..
            } => {
                expr.map_columns(f);
                low.map_columns(f);
                high.map_columns(f);
            }
            ScalarExpr::Like { expr, pattern, .. } => {
                expr.map_columns(f);
                pattern.map_columns(f);
            }
            ScalarExpr::Case {
                operand,
                whens,
                default,
            } => {
                if let Some(o) = operand {
                    o.map_columns(f);
                }
                for (w, t) in whens {
                    w.map_columns(f);
                    t.map_columns(f);
                }
                if let Some(d) = default {
                    d.map_columns(f);
                }
            }
            ScalarExpr::Func { args, .. } => args.iter_mut().for_each(|e| e.map_columns(f)),
        }
    }
}

/// Aggregation state while binding the expressions evaluated after GROUP BY: they run over a
/// "group row" `[group key values…, aggregate results…]`.
#[derive(Debug, Default)]
pub struct AggBinding {
    pub group_exprs: Vec<ScalarExpr>,
    pub aggs: Vec<AggSpec>,
}

/// Binds sqlparser expressions.
pub struct Binder<'a> {
    pub scope: &'a Scope,
    /// Inferred parameter types, indexed by `$n - 1`; grows as parameters are seen.
    pub params: &'a mut Vec<Option<SqlType>>,
    /// `Some` while binding post-aggregation expressions.
    pub agg: Option<&'a mut AggBinding>,
}

pub fn is_aggregate_name(name: &str) -> bool {
    matches!(
        name,
        "count" | "sum" | "min" | "max" | "avg" | "bool_and" | "bool_or" | "every" | "string_agg"
    )
}

/// Whether an expression contains an aggregate call.
pub fn contains_aggregate(e: &sql::Expr) -> bool {
    let mut found = false;
    visit_sql(e, &mut |x| {
        if let sql::Expr::Function(f) = x
            && is_aggregate_name(&function_name(&f.name))
        {
            found = true;
        }
    });
    found
}

fn visit_sql(e: &sql::Expr, f: &mut dyn FnMut(&sql::Expr)) {
    use sql::Expr::*;
    f(e);
    match e {
        IsNull(x) | IsNotNull(x) | IsTrue(x) | IsFalse(x) | IsNotTrue(x) | IsNotFalse(x)
        | IsUnknown(x) | IsNotUnknown(x) | Nested(x) => visit_sql(x, f),
        UnaryOp { expr, .. }
        | Cast { expr, .. }
        | Collate { expr, .. }
        | Ceil { expr, .. }
        | Floor { expr, .. }
        | Extract { expr, .. } => visit_sql(expr, f),
        BinaryOp { left, right, .. }
        | IsDistinctFrom(left, right)
        | IsNotDistinctFrom(left, right) => {
            visit_sql(left, f);
            visit_sql(right, f);
        }
        InList { expr, list, .. } => {
            visit_sql(expr, f);
            list.iter().for_each(|x| visit_sql(x, f));
        }
        Between {
            expr, low, high, ..
        } => {
            visit_sql(expr, f);
            visit_sql(low, f);
            visit_sql(high, f);
        }
        Like { expr, pattern, .. } | ILike { expr, pattern, .. } => {
            visit_sql(expr, f);
            visit_sql(pattern, f);
        }
        Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            if let Some(o) = operand {
                visit_sql(o, f);
            }
            for c in conditions {
                visit_sql(&c.condition, f);
                visit_sql(&c.result, f);
            }
            if let Some(x) = else_result {
                visit_sql(x, f);
            }
        }
        Function(func) => {
            if let sql::FunctionArguments::List(l) = &func.args {
                for a in &l.args {
                    if let sql::FunctionArg::Unnamed(sql::FunctionArgExpr::Expr(x)) = a {
                        visit_sql(x, f);
                    }
                }
            }
        }
        Tuple(items) => items.iter().for_each(|x| visit_sql(x, f)),
        Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            visit_sql(expr, f);
            if let Some(x) = substring_from {
                visit_sql(x, f);
            }
            if let Some(x) = substring_for {
                visit_sql(x, f);
            }
        }
        Trim {
            expr, trim_what, ..
        } => {
            visit_sql(expr, f);
            if let Some(x) = trim_what {
                visit_sql(x, f);
            }
        }
        Position { expr, r#in } => {
            visit_sql(expr, f);
            visit_sql(r#in, f);
        }
        _ => {}
    }
}

pub fn function_name(name: &sql::ObjectName) -> String {
    name.0
        .iter()
        .map(|p| match p {
            sql::ObjectNamePart::Identifier(i) => i.value.to_lowercase(),
            other => other.to_string().to_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
        .trim_start_matches("pg_catalog.")
        .to_string()
}

fn unsupported_expr(e: &sql::Expr) -> SqlError {
    SqlError::unsupported(format!("expression {e}"))
}

/// The bytes of a `b'…'` literal: `\xHH`, `\\`, `\n`, `\t`, `\r`, `\'` escapes.
pub fn unescape_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' | b'X' if b.len() >= i + 4 => {
                    match u8::from_str_radix(
                        std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("zz"),
                        16,
                    ) {
                        Ok(v) => {
                            out.push(v);
                            i += 4;
                            continue;
                        }
                        Err(_) => out.push(b[i]),
                    }
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                b'\\' | b'\'' => {
                    out.push(b[i + 1]);
                    i += 2;
                    continue;
                }
                _ => out.push(b[i]),
            }
            i += 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses a numeric literal: integers as INT8, everything else DECIMAL.
pub fn number_literal(s: &str) -> Result<Datum> {
    if !s.contains(['.', 'e', 'E'])
        && let Ok(i) = s.parse::<i64>()
    {
        return Ok(Datum::Int(i));
    }
    datum::parse_decimal(s)
        .map(Datum::Decimal)
        .ok_or_else(|| SqlError::invalid_text(s, "decimal"))
}

impl<'a> Binder<'a> {
    pub fn new(scope: &'a Scope, params: &'a mut Vec<Option<SqlType>>) -> Binder<'a> {
        Binder {
            scope,
            params,
            agg: None,
        }
    }

    /// Binds with a desired type: untyped literals and parameters take it; other values must
    /// be assignable (checked again at write time).
    pub fn bind_typed(&mut self, e: &sql::Expr, want: &SqlType) -> Result<(ScalarExpr, SqlType)> {
        let (x, ty) = self.bind(e)?;
        if ty == SqlType::Unknown {
            return self.coerce_unknown(x, want);
        }
        Ok((x, ty))
    }

    /// Gives an untyped expression (string literal, NULL, parameter) a type.
    pub fn coerce_unknown(
        &mut self,
        x: ScalarExpr,
        want: &SqlType,
    ) -> Result<(ScalarExpr, SqlType)> {
        if *want == SqlType::Unknown {
            return Ok((x, SqlType::Unknown));
        }
        match x {
            ScalarExpr::Const(Datum::String(s)) => Ok((
                ScalarExpr::Const(Datum::parse_text(&s, want)?),
                want.clone(),
            )),
            ScalarExpr::Const(Datum::Null) => Ok((ScalarExpr::Const(Datum::Null), want.clone())),
            ScalarExpr::Param(i) => {
                self.set_param_type(i, want.clone());
                Ok((ScalarExpr::Param(i), want.clone()))
            }
            other => Ok((
                ScalarExpr::Cast(Box::new(other), want.clone()),
                want.clone(),
            )),
        }
    }

    fn set_param_type(&mut self, i: usize, ty: SqlType) {
        if self.params.len() <= i {
            self.params.resize(i + 1, None);
        }
        if self.params[i].is_none() {
            self.params[i] = Some(ty);
        }
    }

    fn param(&mut self, p: &str) -> Result<(ScalarExpr, SqlType)> {
        let n: usize = p
            .trim_start_matches('$')
            .parse()
            .map_err(|_| SqlError::syntax(p))?;
        if n == 0 || n > 65535 {
            return Err(SqlError::new(
                sqlstate::UNDEFINED_PARAMETER,
                format!("there is no parameter {p}"),
            ));
        }
        let i = n - 1;
        if self.params.len() <= i {
            self.params.resize(i + 1, None);
        }
        let ty = self.params[i].clone().unwrap_or(SqlType::Unknown);
        Ok((ScalarExpr::Param(i), ty))
    }

    pub fn bind(&mut self, e: &sql::Expr) -> Result<(ScalarExpr, SqlType)> {
        if self.agg.is_some() {
            return self.bind_post_agg(e);
        }
        self.bind_inner(e)
    }

    /// Post-aggregation binding: aggregates become group-row slots, expressions equal to a
    /// GROUP BY expression read the group key, other column references are errors.
    fn bind_post_agg(&mut self, e: &sql::Expr) -> Result<(ScalarExpr, SqlType)> {
        if let sql::Expr::Function(f) = e {
            let name = function_name(&f.name);
            if is_aggregate_name(&name) {
                return self.bind_aggregate(&name, f);
            }
        }
        if !contains_aggregate(e) {
            let saved = self.agg.take();
            let bound = self.bind_inner(e);
            self.agg = saved;
            let (x, ty) = bound?;
            let agg = self
                .agg
                .as_ref()
                .expect("post-aggregation binding has an aggregation state");
            if let Some(i) = agg.group_exprs.iter().position(|g| *g == x) {
                return Ok((ScalarExpr::Column(i), ty));
            }
            if !x.references_columns() {
                return Ok((x, ty));
            }
            if let ScalarExpr::Column(c) = x {
                let col = &self.scope.columns[c];
                let name = match &col.table {
                    Some(t) => format!("{t}.{}", col.name),
                    None => col.name.clone(),
                };
                return Err(SqlError::new(
                    sqlstate::GROUPING_ERROR,
                    format!(
                        "column \"{name}\" must appear in the GROUP BY clause or be used in an aggregate function"
                    ),
                ));
            }
        }
        self.bind_inner(e)
    }

    fn bind_aggregate(&mut self, name: &str, f: &sql::Function) -> Result<(ScalarExpr, SqlType)> {
        let (args, distinct) = match &f.args {
            sql::FunctionArguments::List(l) => (
                &l.args,
                matches!(
                    l.duplicate_treatment,
                    Some(sql::DuplicateTreatment::Distinct)
                ),
            ),
            _ => {
                return Err(SqlError::new(
                    sqlstate::UNDEFINED_FUNCTION,
                    format!("unknown signature: {name}()"),
                ));
            }
        };
        if f.over.is_some() {
            return Err(SqlError::unsupported("window functions"));
        }
        let saved = self.agg.take();
        let result = (|| -> Result<AggSpec> {
            let star = args.len() == 1
                && matches!(
                    args[0],
                    sql::FunctionArg::Unnamed(sql::FunctionArgExpr::Wildcard)
                );
            if name == "count" && (star || args.is_empty()) {
                return Ok(AggSpec {
                    func: AggFunc::CountStar,
                    arg: None,
                    arg2: None,
                    distinct: false,
                    ty: SqlType::Int8,
                });
            }
            let exprs: Vec<&sql::Expr> = args
                .iter()
                .map(|a| match a {
                    sql::FunctionArg::Unnamed(sql::FunctionArgExpr::Expr(x)) => Ok(x),
                    _ => Err(SqlError::unsupported(format!("argument {a} to {name}"))),
                })
                .collect::<Result<_>>()?;
            let want_args = if name == "string_agg" { 2 } else { 1 };
            if exprs.len() != want_args {
                return Err(SqlError::new(
                    sqlstate::UNDEFINED_FUNCTION,
                    format!("unknown signature: {name}() with {} arguments", exprs.len()),
                ));
            }
            if contains_aggregate(exprs[0]) {
                return Err(SqlError::new(
                    sqlstate::GROUPING_ERROR,
                    "aggregate function calls cannot be nested",
                ));
            }
            let (arg, ty) = self.bind_inner(exprs[0])?;
            let (arg, ty) = if ty == SqlType::Unknown {
                self.coerce_unknown(arg, &SqlType::String)?
            } else {
                (arg, ty)
            };
            let (func, out) = match name {
                "count" => (AggFunc::Count, SqlType::Int8),
                "sum" => match ty.family() {
                    TypeFamily::Int | TypeFamily::Decimal => (AggFunc::Sum, SqlType::DECIMAL),
                    TypeFamily::Float => (AggFunc::Sum, SqlType::Float8),
                    TypeFamily::Interval => (AggFunc::Sum, SqlType::Interval),
                    _ => return Err(unknown_signature(name, &[ty])),
                },
                "avg" => match ty.family() {
                    TypeFamily::Int | TypeFamily::Decimal => (AggFunc::Avg, SqlType::DECIMAL),
                    TypeFamily::Float => (AggFunc::Avg, SqlType::Float8),
                    _ => return Err(unknown_signature(name, &[ty])),
                },
                "min" => (AggFunc::Min, ty.clone()),
                "max" => (AggFunc::Max, ty.clone()),
                "bool_and" | "every" => (AggFunc::BoolAnd, SqlType::Bool),
                "bool_or" => (AggFunc::BoolOr, SqlType::Bool),
                "string_agg" => (AggFunc::StringAgg, SqlType::String),
                _ => {
                    return Err(SqlError::new(
                        sqlstate::UNDEFINED_FUNCTION,
                        format!("unknown function: {name}()"),
                    ));
                }
            };
            let arg2 = if func == AggFunc::StringAgg {
                let (s, sty) = self.bind_inner(exprs[1])?;
                let (s, _) = if sty == SqlType::Unknown {
                    self.coerce_unknown(s, &SqlType::String)?
                } else {
                    (s, sty)
                };
                Some(s)
            } else {
                None
            };
            Ok(AggSpec {
                func,
                arg: Some(arg),
                arg2,
                distinct,
                ty: out,
            })
        })();
        self.agg = saved;
        let spec = result?;
        let agg = self.agg.as_mut().ok_or_else(|| {
            SqlError::new(
                sqlstate::GROUPING_ERROR,
                format!("aggregate functions are not allowed here ({name})"),
            )
        })?;
        let ty = spec.ty.clone();
        let slot = agg.group_exprs.len() + agg.aggs.len();
        agg.aggs.push(spec);
        Ok((ScalarExpr::Column(slot), ty))
    }

    fn bind_inner(&mut self, e: &sql::Expr) -> Result<(ScalarExpr, SqlType)> {
        use sql::Expr as E;
        // Binding recurses once per level of `e`: 54001 rather than a stack overflow.
        crate::stack::check_stack_depth()?;
        match e {
            E::Identifier(id) => self.identifier(None, id),
            E::CompoundIdentifier(parts) => {
                let names: Vec<String> = parts.iter().map(normalize_ident).collect();
                let n = names.len();
                if n < 2 {
                    return Err(unsupported_expr(e));
                }
                let col = &names[n - 1];
                let table = &names[n - 2];
                let idx = self.scope.resolve(Some(table), col)?;
                Ok((ScalarExpr::Column(idx), self.scope.columns[idx].ty.clone()))
            }
            E::Value(v) => self.value(&v.value),
            E::Nested(x) => self.bind(x),
            E::UnaryOp { op, expr } => {
                let (x, ty) = self.bind(expr)?;
                match op {
                    sql::UnaryOperator::Not => {
                        let (x, _) = self.expect_bool(x, ty, "NOT")?;
                        Ok((ScalarExpr::Not(Box::new(x)), SqlType::Bool))
                    }
                    sql::UnaryOperator::Minus => {
                        if let ScalarExpr::Const(d) = &x {
                            return Ok((ScalarExpr::Const(negate(d)?), ty));
                        }
                        let (x, ty) = if ty == SqlType::Unknown {
                            self.coerce_unknown(x, &SqlType::DECIMAL)?
                        } else {
                            (x, ty)
                        };
                        if !ty.is_numeric() && ty.family() != TypeFamily::Interval {
                            return Err(SqlError::new(
                                sqlstate::UNDEFINED_FUNCTION,
                                format!("unsupported unary operator: -<{}>", ty.family_name()),
                            ));
                        }
                        Ok((ScalarExpr::Neg(Box::new(x)), ty))
                    }
                    sql::UnaryOperator::Plus => Ok((x, ty)),
                    sql::UnaryOperator::BitwiseNot => {
                        Ok((ScalarExpr::BitNot(Box::new(x)), SqlType::Int8))
                    }
                    _ => Err(unsupported_expr(e)),
                }
            }
            E::BinaryOp { left, op, right } => self.binary(e, left, op, right),
            E::IsNull(x) => Ok((
                ScalarExpr::IsNull(Box::new(self.bind(x)?.0), false),
                SqlType::Bool,
            )),
            E::IsNotNull(x) => Ok((
                ScalarExpr::IsNull(Box::new(self.bind(x)?.0), true),
                SqlType::Bool,
            )),
            E::IsTrue(x) => self.is_bool(x, true, false),
            E::IsNotTrue(x) => self.is_bool(x, true, true),
            E::IsFalse(x) => self.is_bool(x, false, false),
            E::IsNotFalse(x) => self.is_bool(x, false, true),
            E::IsUnknown(x) => Ok((
                ScalarExpr::IsNull(Box::new(self.bind(x)?.0), false),
                SqlType::Bool,
            )),
            E::IsNotUnknown(x) => Ok((
                ScalarExpr::IsNull(Box::new(self.bind(x)?.0), true),
                SqlType::Bool,
            )),
            E::IsDistinctFrom(a, b) | E::IsNotDistinctFrom(a, b) => {
                let (a, b, _) = self.bind_pair(a, b)?;
                let negated = matches!(e, E::IsNotDistinctFrom(..));
                Ok((
                    ScalarExpr::IsDistinct(Box::new(a), Box::new(b), negated),
                    SqlType::Bool,
                ))
            }
            E::InList {
                expr,
                list,
                negated,
            } => {
                let (mut x, mut ty) = self.bind(expr)?;
                let mut items = Vec::with_capacity(list.len());
                let mut item_types = Vec::with_capacity(list.len());
                for item in list {
                    let (i, ity) = self.bind(item)?;
                    items.push(i);
                    item_types.push(ity);
                }
                if ty == SqlType::Unknown
                    && let Some(t) = item_types.iter().find(|t| **t != SqlType::Unknown).cloned()
                {
                    let (nx, nty) = self.coerce_unknown(x, &t)?;
                    x = nx;
                    ty = nty;
                }
                let mut bound = Vec::with_capacity(items.len());
                for (i, ity) in items.into_iter().zip(item_types) {
                    let (i, ity) = if ity == SqlType::Unknown {
                        self.coerce_unknown(i, &ty)?
                    } else {
                        (i, ity)
                    };
                    check_comparable(&ty, &ity, "IN")?;
                    bound.push(i);
                }
                Ok((
                    ScalarExpr::InList {
                        expr: Box::new(x),
                        list: bound,
                        negated: *negated,
                    },
                    SqlType::Bool,
                ))
            }
            E::InSubquery { .. } | E::Subquery(_) | E::Exists { .. } => Err(SqlError::unsupported(
                "subqueries are not supported in this context",
            )),
            E::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let (x, ty) = self.bind(expr)?;
                let (lo, lty) = self.bind(low)?;
                let (hi, hty) = self.bind(high)?;
                let target = [&ty, &lty, &hty]
                    .into_iter()
                    .find(|t| **t != SqlType::Unknown)
                    .cloned()
                    .unwrap_or(SqlType::String);
                let (x, ty) = self.coerce_unknown_if(x, ty, &target)?;
                let (lo, lty) = self.coerce_unknown_if(lo, lty, &target)?;
                let (hi, hty) = self.coerce_unknown_if(hi, hty, &target)?;
                check_comparable(&ty, &lty, "BETWEEN")?;
                check_comparable(&ty, &hty, "BETWEEN")?;
                Ok((
                    ScalarExpr::Between {
                        expr: Box::new(x),
                        low: Box::new(lo),
                        high: Box::new(hi),
                        negated: *negated,
                    },
                    SqlType::Bool,
                ))
            }
            E::Like {
                negated,
                expr,
                pattern,
                escape_char,
                any,
                ..
            }
            | E::ILike {
                negated,
                expr,
                pattern,
                escape_char,
                any,
                ..
            } => {
                if *any {
                    return Err(unsupported_expr(e));
                }
                let (x, ty) = self.bind_typed(expr, &SqlType::String)?;
                let (p, pty) = self.bind_typed(pattern, &SqlType::String)?;
                for t in [&ty, &pty] {
                    if t.family() != TypeFamily::String && *t != SqlType::Unknown {
                        return Err(SqlError::new(
                            sqlstate::UNDEFINED_FUNCTION,
                            format!(
                                "unsupported comparison operator: <{}> LIKE <{}>",
                                ty.family_name(),
                                pty.family_name()
                            ),
                        ));
                    }
                }
                let escape = match escape_char {
                    None => Some('\\'),
                    Some(x) => match self.bind(x)?.0 {
                        ScalarExpr::Const(Datum::String(s)) => s.chars().next(),
                        _ => return Err(unsupported_expr(e)),
                    },
                };
                let case_insensitive = matches!(e, E::ILike { .. });
                Ok((
                    ScalarExpr::Like {
                        expr: Box::new(x),
                        pattern: Box::new(p),
                        case_insensitive,
                        negated: *negated,
                        escape,
                    },
                    SqlType::Bool,
                ))
            }
            E::Cast {
                expr, data_type, ..
            } => {
                let ty = SqlType::parse(&data_type.to_string())?;
                let (x, xty) = self.bind(expr)?;
                if xty == SqlType::Unknown {
                    // `'5'::INT` and `$1::INT` type the literal or parameter directly.
                    return self.coerce_unknown(x, &ty);
                }
                if let ScalarExpr::Const(d) = &x {
                    return Ok((ScalarExpr::Const(d.cast(&ty)?), ty));
                }
                Ok((ScalarExpr::Cast(Box::new(x), ty.clone()), ty))
            }
            E::TypedString(ts) => {
                let ty = SqlType::parse(&ts.data_type.to_string())?;
                let text = match &ts.value.value {
                    sql::Value::SingleQuotedString(s)
                    | sql::Value::DoubleQuotedString(s)
                    | sql::Value::EscapedStringLiteral(s) => s.clone(),
                    other => other.to_string(),
                };
                Ok((ScalarExpr::Const(Datum::parse_text(&text, &ty)?), ty))
            }
            E::Interval(iv) => {
                let (x, _) = self.bind(&iv.value)?;
                let text = match x {
                    ScalarExpr::Const(Datum::String(s)) => s,
                    ScalarExpr::Const(Datum::Int(i)) => i.to_string(),
                    ScalarExpr::Const(Datum::Decimal(d)) => d.to_string(),
                    _ => return Err(unsupported_expr(e)),
                };
                let text = match &iv.leading_field {
                    Some(f) if !text.trim().contains(' ') && !text.contains(':') => {
                        format!("{text} {f}")
                    }
                    _ => text,
                };
                Ok((
                    ScalarExpr::Const(Datum::Interval(Interval::parse(&text)?)),
                    SqlType::Interval,
                ))
            }
            E::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let operand_b = match operand {
                    Some(o) => Some(self.bind(o)?),
                    None => None,
                };
                let mut whens = Vec::new();
                let mut result_ty = SqlType::Unknown;
                let mut results = Vec::new();
                for c in conditions {
                    let (cond, cty) = self.bind(&c.condition)?;
                    let cond = match &operand_b {
                        Some((_, oty)) => self.coerce_unknown_if(cond, cty, oty)?.0,
                        None => self.expect_bool(cond, cty, "CASE")?.0,
                    };
                    let (r, rty) = self.bind(&c.result)?;
                    if result_ty == SqlType::Unknown {
                        result_ty = rty.clone();
                    }
                    whens.push(cond);
                    results.push((r, rty));
                }
                let default = match else_result {
                    Some(x) => {
                        let (d, dty) = self.bind(x)?;
                        if result_ty == SqlType::Unknown {
                            result_ty = dty.clone();
                        }
                        Some((d, dty))
                    }
                    None => None,
                };
                let mut pairs = Vec::new();
                for (w, (r, rty)) in whens.into_iter().zip(results) {
                    let (r, _) = self.coerce_unknown_if(r, rty, &result_ty)?;
                    pairs.push((w, r));
                }
                let default = match default {
                    Some((d, dty)) => Some(Box::new(self.coerce_unknown_if(d, dty, &result_ty)?.0)),
                    None => None,
                };
                Ok((
                    ScalarExpr::Case {
                        operand: operand_b.map(|(o, _)| Box::new(o)),
                        whens: pairs,
                        default,
                    },
                    result_ty,
                ))
            }
            E::Function(f) => self.function(f),
            E::Extract { field, expr, .. } => {
                let (x, ty) = self.bind_typed(expr, &SqlType::TimestampTz)?;
                let field = ScalarExpr::Const(Datum::String(field.to_string().to_lowercase()));
                let _ = ty;
                Ok((
                    ScalarExpr::Func {
                        name: "date_part".into(),
                        args: vec![field, x],
                        ty: SqlType::Float8,
                    },
                    SqlType::Float8,
                ))
            }
            E::Ceil { expr, .. } => self.call("ceil", vec![expr.as_ref().clone()]),
            E::Floor { expr, .. } => self.call("floor", vec![expr.as_ref().clone()]),
            E::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let mut args = vec![expr.as_ref().clone()];
                args.push(
                    substring_from
                        .as_deref()
                        .cloned()
                        .unwrap_or(sql::Expr::Value(
                            sql::Value::Number("1".into(), false).into(),
                        )),
                );
                if let Some(x) = substring_for {
                    args.push(x.as_ref().clone());
                }
                self.call("substr", args)
            }
            E::Trim {
                expr,
                trim_where,
                trim_what,
                ..
            } => {
                let name = match trim_where {
                    Some(sql::TrimWhereField::Leading) => "ltrim",
                    Some(sql::TrimWhereField::Trailing) => "rtrim",
                    _ => "btrim",
                };
                let mut args = vec![expr.as_ref().clone()];
                if let Some(w) = trim_what {
                    args.push(w.as_ref().clone());
                }
                self.call(name, args)
            }
            E::Position { expr, r#in } => {
                self.call("strpos", vec![r#in.as_ref().clone(), expr.as_ref().clone()])
            }
            E::Tuple(_) => Err(SqlError::unsupported("tuples")),
            _ => Err(unsupported_expr(e)),
        }
    }

    fn identifier(
        &mut self,
        qualifier: Option<&str>,
        id: &sql::Ident,
    ) -> Result<(ScalarExpr, SqlType)> {
        let name = normalize_ident(id);
        match self.scope.resolve(qualifier, &name) {
            Ok(idx) => Ok((ScalarExpr::Column(idx), self.scope.columns[idx].ty.clone())),
            Err(err) => {
                // Niladic functions written without parentheses.
                if id.quote_style.is_none() {
                    match name.as_str() {
                        "current_user" | "session_user" | "user" | "current_database"
                        | "current_schema" => {
                            return Ok((
                                ScalarExpr::Func {
                                    name: name.clone(),
                                    args: vec![],
                                    ty: SqlType::String,
                                },
                                SqlType::String,
                            ));
                        }
                        "current_timestamp" | "localtimestamp" | "current_date" => {
                            return self.call(&name, vec![]);
                        }
                        _ => {}
                    }
                }
                Err(err)
            }
        }
    }

    fn value(&mut self, v: &sql::Value) -> Result<(ScalarExpr, SqlType)> {
        use sql::Value as V;
        Ok(match v {
            V::Number(n, _) => {
                let d = number_literal(n)?;
                let ty = d.natural_type();
                (ScalarExpr::Const(d), ty)
            }
            V::SingleQuotedString(s)
            | V::EscapedStringLiteral(s)
            | V::NationalStringLiteral(s)
            | V::UnicodeStringLiteral(s) => (
                ScalarExpr::Const(Datum::String(s.clone())),
                SqlType::Unknown,
            ),
            V::DollarQuotedString(s) => (
                ScalarExpr::Const(Datum::String(s.value.clone())),
                SqlType::Unknown,
            ),
            V::SingleQuotedByteStringLiteral(s) | V::DoubleQuotedByteStringLiteral(s) => (
                ScalarExpr::Const(Datum::Bytes(unescape_bytes(s))),
                SqlType::Bytes,
            ),
            V::HexStringLiteral(h) => (
                ScalarExpr::Const(Datum::Bytes(
                    hex::decode(h).map_err(|_| SqlError::invalid_text(h, "bytes"))?,
                )),
                SqlType::Bytes,
            ),
            V::Boolean(b) => (ScalarExpr::Const(Datum::Bool(*b)), SqlType::Bool),
            V::Null => (ScalarExpr::Const(Datum::Null), SqlType::Unknown),
            V::Placeholder(p) => return self.param(p),
            V::DoubleQuotedString(s) => return Err(SqlError::undefined_column(s)),
            other => return Err(SqlError::unsupported(format!("literal {other}"))),
        })
    }

    fn coerce_unknown_if(
        &mut self,
        x: ScalarExpr,
        ty: SqlType,
        target: &SqlType,
    ) -> Result<(ScalarExpr, SqlType)> {
        if ty == SqlType::Unknown {
            self.coerce_unknown(x, target)
        } else {
            Ok((x, ty))
        }
    }

    fn expect_bool(
        &mut self,
        x: ScalarExpr,
        ty: SqlType,
        ctx: &str,
    ) -> Result<(ScalarExpr, SqlType)> {
        let (x, ty) = self.coerce_unknown_if(x, ty, &SqlType::Bool)?;
        if ty != SqlType::Bool && ty != SqlType::Unknown {
            return Err(SqlError::datatype_mismatch(format!(
                "argument of {ctx} must be type bool, not type {}",
                ty.family_name()
            )));
        }
        Ok((x, SqlType::Bool))
    }

    fn is_bool(
        &mut self,
        x: &sql::Expr,
        value: bool,
        negated: bool,
    ) -> Result<(ScalarExpr, SqlType)> {
        let (x, ty) = self.bind(x)?;
        let (x, _) = self.expect_bool(x, ty, "IS")?;
        Ok((
            ScalarExpr::IsBool {
                expr: Box::new(x),
                value,
                negated,
            },
            SqlType::Bool,
        ))
    }

    /// Binds two operands, giving an untyped one the other's type.
    fn bind_pair(
        &mut self,
        a: &sql::Expr,
        b: &sql::Expr,
    ) -> Result<(ScalarExpr, ScalarExpr, (SqlType, SqlType))> {
        let (x, xt) = self.bind(a)?;
        let (y, yt) = self.bind(b)?;
        let (x, xt) = if xt == SqlType::Unknown && yt != SqlType::Unknown {
            self.coerce_unknown(x, &yt)?
        } else {
            (x, xt)
        };
        let (y, yt) = if yt == SqlType::Unknown && xt != SqlType::Unknown {
            self.coerce_unknown(y, &xt)?
        } else {
            (y, yt)
        };
        Ok((x, y, (xt, yt)))
    }

    fn binary(
        &mut self,
        whole: &sql::Expr,
        left: &sql::Expr,
        op: &sql::BinaryOperator,
        right: &sql::Expr,
    ) -> Result<(ScalarExpr, SqlType)> {
        use sql::BinaryOperator as O;
        let bop = match op {
            O::Plus => BinOp::Add,
            O::Minus => BinOp::Sub,
            O::Multiply => BinOp::Mul,
            O::Divide => BinOp::Div,
            O::DuckIntegerDivide | O::MyIntegerDivide => BinOp::FloorDiv,
            O::Modulo => BinOp::Mod,
            O::StringConcat => BinOp::Concat,
            O::Eq => BinOp::Eq,
            O::NotEq => BinOp::NotEq,
            O::Lt => BinOp::Lt,
            O::LtEq => BinOp::LtEq,
            O::Gt => BinOp::Gt,
            O::GtEq => BinOp::GtEq,
            O::And => BinOp::And,
            O::Or => BinOp::Or,
            O::Arrow => BinOp::JsonGet,
            O::LongArrow => BinOp::JsonGetText,
            O::BitwiseAnd => BinOp::BitAnd,
            O::BitwiseOr => BinOp::BitOr,
            O::PGBitwiseXor | O::BitwiseXor => BinOp::BitXor,
            O::PGLikeMatch | O::PGILikeMatch | O::PGNotLikeMatch | O::PGNotILikeMatch => {
                let like = sql::Expr::Like {
                    negated: matches!(op, O::PGNotLikeMatch | O::PGNotILikeMatch),
                    any: false,
                    expr: Box::new(left.clone()),
                    pattern: Box::new(right.clone()),
                    escape_char: None,
                };
                let like = if matches!(op, O::PGILikeMatch | O::PGNotILikeMatch) {
                    match like {
                        sql::Expr::Like {
                            negated,
                            any,
                            expr,
                            pattern,
                            escape_char,
                        } => sql::Expr::ILike {
                            negated,
                            any,
                            expr,
                            pattern,
                            escape_char,
                        },
                        other => other,
                    }
                } else {
                    like
                };
                return self.bind(&like);
            }
            _ => return Err(unsupported_expr(whole)),
        };
        match bop {
            BinOp::And | BinOp::Or => {
                let (x, xt) = self.bind(left)?;
                let (x, _) =
                    self.expect_bool(x, xt, if bop == BinOp::And { "AND" } else { "OR" })?;
                let (y, yt) = self.bind(right)?;
                let (y, _) =
                    self.expect_bool(y, yt, if bop == BinOp::And { "AND" } else { "OR" })?;
                Ok((
                    ScalarExpr::Binary(bop, Box::new(x), Box::new(y)),
                    SqlType::Bool,
                ))
            }
            BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq => {
                let (x, y, (xt, yt)) = self.bind_pair(left, right)?;
                let (x, xt) = if xt == SqlType::Unknown {
                    self.coerce_unknown(x, &SqlType::String)?
                } else {
                    (x, xt)
                };
                let (y, yt) = if yt == SqlType::Unknown {
                    self.coerce_unknown(y, &SqlType::String)?
                } else {
                    (y, yt)
                };
                check_comparable(&xt, &yt, op_symbol(bop))?;
                Ok((
                    ScalarExpr::Binary(bop, Box::new(x), Box::new(y)),
                    SqlType::Bool,
                ))
            }
            BinOp::Concat => {
                let (x, xt) = self.bind(left)?;
                let (y, yt) = self.bind(right)?;
                let bytes = xt == SqlType::Bytes || yt == SqlType::Bytes;
                let jsonb = xt == SqlType::Jsonb && yt == SqlType::Jsonb;
                let target = if bytes {
                    SqlType::Bytes
                } else if jsonb {
                    SqlType::Jsonb
                } else {
                    SqlType::String
                };
                let (x, _) = self.coerce_unknown_if(x, xt, &target)?;
                let (y, _) = self.coerce_unknown_if(y, yt, &target)?;
                Ok((ScalarExpr::Binary(bop, Box::new(x), Box::new(y)), target))
            }
            BinOp::JsonGet | BinOp::JsonGetText => {
                let (x, xt) = self.bind_typed(left, &SqlType::Jsonb)?;
                if xt != SqlType::Jsonb {
                    return Err(SqlError::new(
                        sqlstate::UNDEFINED_FUNCTION,
                        format!(
                            "unsupported binary operator: <{}> {} <string>",
                            xt.family_name(),
                            op_symbol(bop)
                        ),
                    ));
                }
                let (y, yt) = self.bind(right)?;
                let (y, _) = self.coerce_unknown_if(y, yt, &SqlType::String)?;
                let ty = if bop == BinOp::JsonGet {
                    SqlType::Jsonb
                } else {
                    SqlType::String
                };
                Ok((ScalarExpr::Binary(bop, Box::new(x), Box::new(y)), ty))
            }
            _ => {
                let (x, xt) = self.bind(left)?;
                let (y, yt) = self.bind(right)?;
                // Untyped operands of arithmetic: take the other side's type, numbers default
                // to DECIMAL, intervals for timestamp arithmetic.
                let default_for = |other: &SqlType| -> SqlType {
                    match other.family() {
                        TypeFamily::Timestamp | TypeFamily::TimestampTz | TypeFamily::Date => {
                            SqlType::Interval
                        }
                        TypeFamily::Unknown => SqlType::DECIMAL,
                        _ => other.clone(),
                    }
                };
                let (x, xt) = if xt == SqlType::Unknown {
                    self.coerce_unknown(x, &default_for(&yt))?
                } else {
                    (x, xt)
                };
                let (y, yt) = if yt == SqlType::Unknown {
                    self.coerce_unknown(y, &default_for(&xt))?
                } else {
                    (y, yt)
                };
                let ty = arithmetic_type(bop, &xt, &yt)?;
                if let (ScalarExpr::Const(a), ScalarExpr::Const(b)) = (&x, &y) {
                    let v = eval_binary(bop, a.clone(), b.clone())?;
                    return Ok((ScalarExpr::Const(v), ty));
                }
                Ok((ScalarExpr::Binary(bop, Box::new(x), Box::new(y)), ty))
            }
        }
    }

    fn call(&mut self, name: &str, args: Vec<sql::Expr>) -> Result<(ScalarExpr, SqlType)> {
        let mut bound = Vec::with_capacity(args.len());
        for a in &args {
            bound.push(self.bind(a)?);
        }
        self.finish_call(name, bound)
    }

    fn function(&mut self, f: &sql::Function) -> Result<(ScalarExpr, SqlType)> {
        let name = function_name(&f.name);
        if is_aggregate_name(&name) {
            if self.agg.is_none() {
                return Err(SqlError::new(
                    sqlstate::GROUPING_ERROR,
                    format!("aggregate functions are not allowed in this context ({name})"),
                ));
            }
            return self.bind_aggregate(&name, f);
        }
        if f.over.is_some() {
            return Err(SqlError::unsupported("window functions"));
        }
        let mut bound = Vec::new();
        match &f.args {
            sql::FunctionArguments::None => {}
            sql::FunctionArguments::List(l) => {
                for a in &l.args {
                    match a {
                        sql::FunctionArg::Unnamed(sql::FunctionArgExpr::Expr(x)) => {
                            bound.push(self.bind(x)?)
                        }
                        other => {
                            return Err(SqlError::unsupported(format!(
                                "function argument {other}"
                            )));
                        }
                    }
                }
            }
            sql::FunctionArguments::Subquery(_) => {
                return Err(SqlError::unsupported(
                    "subqueries are not supported in this context",
                ));
            }
        }
        self.finish_call(&name, bound)
    }

    fn finish_call(
        &mut self,
        name: &str,
        mut args: Vec<(ScalarExpr, SqlType)>,
    ) -> Result<(ScalarExpr, SqlType)> {
        let n = args.len();
        let arity = |ok: bool| -> Result<()> {
            if ok {
                Ok(())
            } else {
                Err(SqlError::new(
                    sqlstate::UNDEFINED_FUNCTION,
                    format!(
                        "unknown signature: {name}() with {n} argument{}",
                        if n == 1 { "" } else { "s" }
                    ),
                ))
            }
        };
        // Untyped arguments default to STRING (or the type of the other arguments).
        let first_typed = args
            .iter()
            .map(|(_, t)| t.clone())
            .find(|t| *t != SqlType::Unknown);
        let canonical = match name {
            "char_length" | "character_length" => "length",
            "ceiling" => "ceil",
            "pow" => "power",
            "substring" => "substr",
            "uuid_generate_v4" => "gen_random_uuid",
            "transaction_timestamp" | "statement_timestamp" | "current_timestamp" => "now",
            "session_user" | "user" => "current_user",
            "every" => "bool_and",
            "trim" => "btrim",
            "jsonb_typeof" => "json_typeof",
            "to_jsonb" => "to_json",
            "jsonb_build_object" => "json_build_object",
            other => other,
        };
        let ty = match canonical {
            "length" | "octet_length" | "strpos" => {
                arity(n == 1 || (canonical == "strpos" && n == 2))?;
                SqlType::Int8
            }
            "lower" | "upper" | "reverse" | "md5" | "sha256" | "to_hex" | "initcap"
            | "quote_ident" | "quote_literal" => {
                arity(n == 1)?;
                SqlType::String
            }
            "btrim" | "ltrim" | "rtrim" => {
                arity(n == 1 || n == 2)?;
                SqlType::String
            }
            "substr" => {
                arity(n == 2 || n == 3)?;
                for (i, a) in args.iter_mut().enumerate().skip(1) {
                    let _ = i;
                    let (x, t) =
                        std::mem::replace(a, (ScalarExpr::Const(Datum::Null), SqlType::Unknown));
                    *a = self.coerce_unknown_if(x, t, &SqlType::Int8)?;
                }
                SqlType::String
            }
            "replace" | "split_part" => {
                arity(n == 3)?;
                SqlType::String
            }
            "left" | "right" | "repeat" | "lpad" | "rpad" => {
                arity(n == 2 || (matches!(canonical, "lpad" | "rpad") && n == 3))?;
                SqlType::String
            }
            "starts_with" => {
                arity(n == 2)?;
                SqlType::Bool
            }
            "concat" | "concat_ws" => SqlType::String,
            "coalesce" | "ifnull" | "nullif" | "greatest" | "least" => {
                arity(n >= 1 && (canonical != "nullif" || n == 2))?;
                let t = first_typed.clone().unwrap_or(SqlType::String);
                for a in args.iter_mut() {
                    let (x, at) =
                        std::mem::replace(a, (ScalarExpr::Const(Datum::Null), SqlType::Unknown));
                    *a = self.coerce_unknown_if(x, at, &t)?;
                    check_comparable(&t, &a.1, canonical)?;
                }
                // Mixed numerics widen: int with decimal → decimal.
                if args
                    .iter()
                    .any(|(_, at)| at.family() == TypeFamily::Decimal)
                    && t.family() == TypeFamily::Int
                {
                    SqlType::DECIMAL
                } else if args.iter().any(|(_, at)| at.family() == TypeFamily::Float)
                    && t.family() == TypeFamily::Int
                {
                    SqlType::Float8
                } else {
                    t
                }
            }
            "abs" | "ceil" | "floor" | "round" | "trunc" | "sign" => {
                arity(n == 1 || (matches!(canonical, "round" | "trunc") && n == 2))?;
                let (x, t) = args.remove(0);
                let (x, t) = self.coerce_unknown_if(x, t, &SqlType::DECIMAL)?;
                if !t.is_numeric() {
                    return Err(unknown_signature(name, &[t]));
                }
                args.insert(0, (x, t.clone()));
                if n == 2 {
                    let (y, yt) = args.remove(1);
                    args.push(self.coerce_unknown_if(y, yt, &SqlType::Int8)?);
                }
                match (canonical, t.family()) {
                    ("abs" | "sign", _) => t,
                    (_, TypeFamily::Int) if canonical != "round" || n == 1 => SqlType::Int8,
                    (_, TypeFamily::Float) => SqlType::Float8,
                    _ => SqlType::DECIMAL,
                }
            }
            "mod" | "power" | "sqrt" | "exp" | "ln" | "log" => {
                arity(n == 1 || (matches!(canonical, "mod" | "power" | "log") && n == 2))?;
                for a in args.iter_mut() {
                    let (x, at) =
                        std::mem::replace(a, (ScalarExpr::Const(Datum::Null), SqlType::Unknown));
                    *a = self.coerce_unknown_if(x, at, &SqlType::DECIMAL)?;
                    if !a.1.is_numeric() {
                        return Err(unknown_signature(name, std::slice::from_ref(&a.1)));
                    }
                }
                if canonical == "mod" && args.iter().all(|(_, t)| t.family() == TypeFamily::Int) {
                    SqlType::Int8
                } else if args.iter().any(|(_, t)| t.family() == TypeFamily::Float) {
                    SqlType::Float8
                } else {
                    SqlType::DECIMAL
                }
            }
            "random" => {
                arity(n == 0)?;
                SqlType::Float8
            }
            "now" | "clock_timestamp" => {
                arity(n == 0)?;
                SqlType::TimestampTz
            }
            "localtimestamp" => {
                arity(n == 0)?;
                SqlType::Timestamp
            }
            "current_date" => {
                arity(n == 0)?;
                SqlType::Date
            }
            "gen_random_uuid" => {
                arity(n == 0)?;
                SqlType::Uuid
            }
            "unique_rowid" => {
                arity(n == 0)?;
                SqlType::Int8
            }
            "cluster_logical_timestamp" => {
                arity(n == 0)?;
                SqlType::DECIMAL
            }
            "version" | "current_database" | "current_user" | "current_schema" => {
                arity(n == 0)?;
                SqlType::String
            }
            "pg_typeof" => {
                arity(n == 1)?;
                let t = args[0].1.clone();
                return Ok((
                    ScalarExpr::Const(Datum::String(pg_type_name(&t))),
                    SqlType::String,
                ));
            }
            "date_part" | "extract" => {
                arity(n == 2)?;
                let (x, t) = args.remove(1);
                args.push(self.coerce_unknown_if(x, t, &SqlType::TimestampTz)?);
                SqlType::Float8
            }
            "date_trunc" => {
                arity(n == 2)?;
                let (x, t) = args.remove(1);
                let (x, t) = self.coerce_unknown_if(x, t, &SqlType::TimestampTz)?;
                let out = if t.family() == TypeFamily::Date {
                    SqlType::TimestampTz
                } else {
                    t.clone()
                };
                args.push((x, t));
                out
            }
            "to_timestamp" => {
                arity(n == 1)?;
                SqlType::TimestampTz
            }
            "json_typeof" => {
                arity(n == 1)?;
                SqlType::String
            }
            "to_json" | "json_build_object" => SqlType::Jsonb,
            "crdb_internal.node_id" | "crdb_internal.cluster_origin_id" => {
                arity(n == 0)?;
                SqlType::Int8
            }
            _ => {
                return Err(SqlError::new(
                    sqlstate::UNDEFINED_FUNCTION,
                    format!("unknown function: {name}()"),
                ));
            }
        };
        // Remaining untyped arguments are strings.
        let mut exprs = Vec::with_capacity(args.len());
        for (x, t) in args {
            exprs.push(self.coerce_unknown_if(x, t, &SqlType::String)?.0);
        }
        Ok((
            ScalarExpr::Func {
                name: canonical.to_string(),
                args: exprs,
                ty: ty.clone(),
            },
            ty,
        ))
    }
}

fn pg_type_name(t: &SqlType) -> String {
    match t {
        SqlType::Int8 => "bigint".into(),
        SqlType::Int4 => "integer".into(),
        SqlType::Int2 => "smallint".into(),
        SqlType::Float8 => "double precision".into(),
        SqlType::Float4 => "real".into(),
        SqlType::Decimal { .. } => "numeric".into(),
        SqlType::String | SqlType::Unknown => "text".into(),
        SqlType::Varchar { .. } => "character varying".into(),
        SqlType::Char { .. } => "character".into(),
        SqlType::Bool => "boolean".into(),
        SqlType::Bytes => "bytea".into(),
        SqlType::Date => "date".into(),
        SqlType::Timestamp => "timestamp without time zone".into(),
        SqlType::TimestampTz => "timestamp with time zone".into(),
        SqlType::Interval => "interval".into(),
        SqlType::Uuid => "uuid".into(),
        SqlType::Jsonb => "jsonb".into(),
    }
}

fn unknown_signature(name: &str, types: &[SqlType]) -> SqlError {
    let list: Vec<&str> = types.iter().map(|t| t.family_name()).collect();
    SqlError::new(
        sqlstate::UNDEFINED_FUNCTION,
        format!("unknown signature: {name}({})", list.join(", ")),
    )
}

pub fn normalize_ident(id: &sql::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

fn op_symbol(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::FloorDiv => "//",
        BinOp::Mod => "%",
        BinOp::Concat => "||",
        BinOp::Eq => "=",
        BinOp::NotEq => "!=",
        BinOp::Lt => "<",
        BinOp::LtEq => "<=",
        BinOp::Gt => ">",
        BinOp::GtEq => ">=",
        BinOp::And => "AND",
        BinOp::Or => "OR",
        BinOp::JsonGet => "->",
        BinOp::JsonGetText => "->>",
        BinOp::BitAnd => "&",
        BinOp::BitOr => "|",
        BinOp::BitXor => "#",
    }
}

/// Whether values of the two types compare (numerics across each other, dates with
/// timestamps, identical families otherwise).
pub fn check_comparable(a: &SqlType, b: &SqlType, op: &str) -> Result<()> {
    use TypeFamily as F;
    let (fa, fb) = (a.family(), b.family());
    let ok = fa == fb
        || fa == F::Unknown
        || fb == F::Unknown
        || (a.is_numeric() && b.is_numeric())
        || (matches!(fa, F::Date | F::Timestamp | F::TimestampTz)
            && matches!(fb, F::Date | F::Timestamp | F::TimestampTz));
    if ok {
        Ok(())
    } else {
        Err(SqlError::new(
            sqlstate::UNDEFINED_FUNCTION,
            format!(
                "unsupported comparison operator: <{}> {op} <{}>",
                a.family_name(),
                b.family_name()
            ),
        ))
    }
}

/// The result type of arithmetic, or 42883.
fn arithmetic_type(op: BinOp, a: &SqlType, b: &SqlType) -> Result<SqlType> {
    use TypeFamily as F;
    let err = || {
        SqlError::new(
            sqlstate::UNDEFINED_FUNCTION,
            format!(
                "unsupported binary operator: <{}> {} <{}>",
                a.family_name(),
                op_symbol(op),
                b.family_name()
            ),
        )
    };
    let (fa, fb) = (a.family(), b.family());
    Ok(match op {
        BinOp::BitAnd | BinOp::BitOr | BinOp::BitXor if fa == F::Int && fb == F::Int => {
            SqlType::Int8
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::FloorDiv | BinOp::Mod => {
            match (fa, fb) {
                (F::Int, F::Int) => {
                    if op == BinOp::Div {
                        SqlType::DECIMAL
                    } else {
                        SqlType::Int8
                    }
                }
                (F::Int | F::Decimal, F::Int | F::Decimal) => SqlType::DECIMAL,
                (F::Float, F::Int | F::Float | F::Decimal) | (F::Int | F::Decimal, F::Float) => {
                    SqlType::Float8
                }
                (F::Timestamp | F::TimestampTz, F::Interval)
                    if matches!(op, BinOp::Add | BinOp::Sub) =>
                {
                    a.clone()
                }
                (F::Interval, F::Timestamp | F::TimestampTz) if op == BinOp::Add => b.clone(),
                (F::Date, F::Interval) if matches!(op, BinOp::Add | BinOp::Sub) => {
                    SqlType::Timestamp
                }
                (F::Interval, F::Date) if op == BinOp::Add => SqlType::Timestamp,
                (F::Date, F::Int) if matches!(op, BinOp::Add | BinOp::Sub) => SqlType::Date,
                (F::Int, F::Date) if op == BinOp::Add => SqlType::Date,
                (F::Date, F::Date) if op == BinOp::Sub => SqlType::Int8,
                (F::Timestamp | F::TimestampTz, F::Timestamp | F::TimestampTz)
                    if op == BinOp::Sub =>
                {
                    SqlType::Interval
                }
                (F::Interval, F::Interval) if matches!(op, BinOp::Add | BinOp::Sub) => {
                    SqlType::Interval
                }
                (F::Interval, F::Int | F::Float | F::Decimal)
                    if matches!(op, BinOp::Mul | BinOp::Div) =>
                {
                    SqlType::Interval
                }
                (F::Int | F::Float | F::Decimal, F::Interval) if op == BinOp::Mul => {
                    SqlType::Interval
                }
                _ => return Err(err()),
            }
        }
        _ => return Err(err()),
    })
}

// ---- evaluation ----

/// What expressions may read besides the row: parameters, the statement time, the session.
#[derive(Clone)]
pub struct EvalCtx {
    pub params: Vec<Datum>,
    /// `now()`: fixed for a statement (microseconds since the epoch).
    pub now_micros: i64,
    pub database: String,
    pub user: String,
    pub node_id: u32,
    /// This cluster's LWW origin id (`crdb_internal.cluster_origin_id()`).
    pub origin_id: u32,
    pub tz_offset_secs: i32,
    pub clock: Option<Arc<ldr_types::Clock>>,
    /// The statement's memory budget and deadline (none for internal evaluations).
    pub limits: Option<Arc<crate::budget::StmtLimits>>,
}

impl Default for EvalCtx {
    fn default() -> Self {
        EvalCtx {
            params: vec![],
            now_micros: 0,
            database: "defaultdb".into(),
            user: "root".into(),
            node_id: 1,
            origin_id: 0,
            tz_offset_secs: 0,
            clock: None,
            limits: None,
        }
    }
}

pub const SERVER_VERSION: &str =
    "CockroachDB CCL v24.3.0 (ldr, a logical data replication testbed)";

fn truthy(d: &Datum) -> Option<bool> {
    match d {
        Datum::Bool(b) => Some(*b),
        _ => None,
    }
}

impl ScalarExpr {
    pub fn eval(&self, row: &[Datum], ctx: &EvalCtx) -> Result<Datum> {
        // Evaluation recurses once per level of the tree: 54001 rather than a stack overflow.
        crate::stack::check_stack_depth()?;
        match self {
            ScalarExpr::Const(d) => Ok(d.clone()),
            ScalarExpr::Column(i) => row
                .get(*i)
                .cloned()
                .ok_or_else(|| SqlError::internal(format!("column {i} out of range"))),
            ScalarExpr::Param(i) => ctx.params.get(*i).cloned().ok_or_else(|| {
                SqlError::new(
                    sqlstate::UNDEFINED_PARAMETER,
                    format!("no value provided for placeholder: ${}", i + 1),
                )
            }),
            ScalarExpr::Neg(x) => negate(&x.eval(row, ctx)?),
            ScalarExpr::Not(x) => Ok(match truthy(&x.eval(row, ctx)?) {
                Some(b) => Datum::Bool(!b),
                None => Datum::Null,
            }),
            ScalarExpr::BitNot(x) => Ok(match x.eval(row, ctx)? {
                Datum::Int(i) => Datum::Int(!i),
                _ => Datum::Null,
            }),
            ScalarExpr::Binary(BinOp::And, a, b) => {
                let l = truthy(&a.eval(row, ctx)?);
                if l == Some(false) {
                    return Ok(Datum::Bool(false));
                }
                let r = truthy(&b.eval(row, ctx)?);
                Ok(match (l, r) {
                    (_, Some(false)) => Datum::Bool(false),
                    (Some(true), Some(true)) => Datum::Bool(true),
                    _ => Datum::Null,
                })
            }
            ScalarExpr::Binary(BinOp::Or, a, b) => {
                let l = truthy(&a.eval(row, ctx)?);
                if l == Some(true) {
                    return Ok(Datum::Bool(true));
                }
                let r = truthy(&b.eval(row, ctx)?);
                Ok(match (l, r) {
                    (_, Some(true)) => Datum::Bool(true),
                    (Some(false), Some(false)) => Datum::Bool(false),
                    _ => Datum::Null,
                })
            }
            ScalarExpr::Binary(op, a, b) => eval_binary(*op, a.eval(row, ctx)?, b.eval(row, ctx)?),
            ScalarExpr::IsNull(x, negated) => {
                Ok(Datum::Bool(x.eval(row, ctx)?.is_null() != *negated))
            }
            ScalarExpr::IsBool {
                expr,
                value,
                negated,
            } => {
                let v = truthy(&expr.eval(row, ctx)?);
                Ok(Datum::Bool((v == Some(*value)) != *negated))
            }
            ScalarExpr::IsDistinct(a, b, negated) => {
                let (x, y) = (a.eval(row, ctx)?, b.eval(row, ctx)?);
                let distinct = match (x.is_null(), y.is_null()) {
                    (true, true) => false,
                    (true, false) | (false, true) => true,
                    _ => x.compare(&y) != Some(std::cmp::Ordering::Equal),
                };
                Ok(Datum::Bool(distinct != *negated))
            }
            ScalarExpr::InList {
                expr,
                list,
                negated,
            } => {
                let x = expr.eval(row, ctx)?;
                if x.is_null() {
                    return Ok(Datum::Null);
                }
                let mut saw_null = false;
                for item in list {
                    let v = item.eval(row, ctx)?;
                    if v.is_null() {
                        saw_null = true;
                        continue;
                    }
                    if x.compare(&v) == Some(std::cmp::Ordering::Equal) {
                        return Ok(Datum::Bool(!*negated));
                    }
                }
                Ok(if saw_null {
                    Datum::Null
                } else {
                    Datum::Bool(*negated)
                })
            }
            ScalarExpr::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let x = expr.eval(row, ctx)?;
                let lo = low.eval(row, ctx)?;
                let hi = high.eval(row, ctx)?;
                let ge = x.compare(&lo).map(|o| o != std::cmp::Ordering::Less);
                let le = x.compare(&hi).map(|o| o != std::cmp::Ordering::Greater);
                Ok(match (ge, le) {
                    (Some(a), Some(b)) => Datum::Bool((a && b) != *negated),
                    (Some(false), None) | (None, Some(false)) => Datum::Bool(*negated),
                    _ => Datum::Null,
                })
            }
            ScalarExpr::Like {
                expr,
                pattern,
                case_insensitive,
                negated,
                escape,
            } => {
                let (x, p) = (expr.eval(row, ctx)?, pattern.eval(row, ctx)?);
                match (x, p) {
                    (Datum::String(s), Datum::String(p)) => {
                        let m = if *case_insensitive {
                            like_match(&s.to_lowercase(), &p.to_lowercase(), *escape)
                        } else {
                            like_match(&s, &p, *escape)
                        };
                        Ok(Datum::Bool(m != *negated))
                    }
                    _ => Ok(Datum::Null),
                }
            }
            ScalarExpr::Cast(x, ty) => x.eval(row, ctx)?.cast(ty),
            ScalarExpr::Case {
                operand,
                whens,
                default,
            } => {
                let op = match operand {
                    Some(o) => Some(o.eval(row, ctx)?),
                    None => None,
                };
                for (w, then) in whens {
                    let v = w.eval(row, ctx)?;
                    let hit = match &op {
                        Some(o) => o.compare(&v) == Some(std::cmp::Ordering::Equal),
                        None => truthy(&v) == Some(true),
                    };
                    if hit {
                        return then.eval(row, ctx);
                    }
                }
                match default {
                    Some(d) => d.eval(row, ctx),
                    None => Ok(Datum::Null),
                }
            }
            ScalarExpr::Func { name, args, ty } => {
                // coalesce evaluates lazily.
                if name == "coalesce" || name == "ifnull" {
                    for a in args {
                        let v = a.eval(row, ctx)?;
                        if !v.is_null() {
                            return v.coerce_for_column(ty, name);
                        }
                    }
                    return Ok(Datum::Null);
                }
                let vals: Vec<Datum> = args
                    .iter()
                    .map(|a| a.eval(row, ctx))
                    .collect::<Result<_>>()?;
                eval_function(name, vals, ty, ctx)
            }
        }
    }

    /// Evaluates as a filter: only TRUE passes.
    pub fn eval_predicate(&self, row: &[Datum], ctx: &EvalCtx) -> Result<bool> {
        Ok(matches!(self.eval(row, ctx)?, Datum::Bool(true)))
    }
}

fn negate(d: &Datum) -> Result<Datum> {
    Ok(match d {
        Datum::Null => Datum::Null,
        Datum::Int(i) => Datum::Int(
            i.checked_neg()
                .ok_or_else(|| SqlError::out_of_range("integer out of range"))?,
        ),
        Datum::Float(f) => Datum::Float(-f),
        Datum::Decimal(v) => Datum::Decimal(-*v),
        Datum::Interval(iv) => Datum::Interval(
            iv.checked_neg()
                .ok_or_else(|| SqlError::out_of_range("interval out of range"))?,
        ),
        other => {
            return Err(SqlError::new(
                sqlstate::UNDEFINED_FUNCTION,
                format!(
                    "unsupported unary operator: -<{}>",
                    other.natural_type().family_name()
                ),
            ));
        }
    })
}

fn int_overflow() -> SqlError {
    SqlError::out_of_range("integer out of range")
}

fn div_zero() -> SqlError {
    SqlError::new(sqlstate::DIVISION_BY_ZERO, "division by zero")
}

fn to_decimal(d: &Datum) -> Option<Decimal> {
    match d {
        Datum::Int(i) => Some(Decimal::from(*i)),
        Datum::Decimal(v) => Some(*v),
        Datum::Float(f) => Decimal::from_f64(*f),
        _ => None,
    }
}

fn to_f64(d: &Datum) -> Option<f64> {
    match d {
        Datum::Int(i) => Some(*i as f64),
        Datum::Decimal(v) => v.to_f64(),
        Datum::Float(f) => Some(*f),
        _ => None,
    }
}

fn decimal_overflow() -> SqlError {
    SqlError::out_of_range("decimal value out of range")
}

pub fn eval_binary(op: BinOp, a: Datum, b: Datum) -> Result<Datum> {
    use Datum as D;
    if a.is_null() || b.is_null() {
        return Ok(D::Null);
    }
    let cmp = |o: std::cmp::Ordering| -> bool {
        match op {
            BinOp::Eq => o == std::cmp::Ordering::Equal,
            BinOp::NotEq => o != std::cmp::Ordering::Equal,
            BinOp::Lt => o == std::cmp::Ordering::Less,
            BinOp::LtEq => o != std::cmp::Ordering::Greater,
            BinOp::Gt => o == std::cmp::Ordering::Greater,
            _ => o != std::cmp::Ordering::Less,
        }
    };
    Ok(match op {
        BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq => {
            match a.compare(&b) {
                Some(o) => D::Bool(cmp(o)),
                None => {
                    return Err(SqlError::new(
                        sqlstate::UNDEFINED_FUNCTION,
                        format!(
                            "unsupported comparison operator: <{}> {} <{}>",
                            a.natural_type().family_name(),
                            op_symbol(op),
                            b.natural_type().family_name()
                        ),
                    ));
                }
            }
        }
        BinOp::Concat => match (a, b) {
            (D::Bytes(mut x), D::Bytes(y)) => {
                x.extend_from_slice(&y);
                D::Bytes(x)
            }
            (D::Json(serde_json::Value::Array(mut x)), D::Json(y)) => {
                match y {
                    serde_json::Value::Array(y) => x.extend(y),
                    other => x.push(other),
                }
                D::Json(serde_json::Value::Array(x))
            }
            (D::Json(serde_json::Value::Object(mut x)), D::Json(serde_json::Value::Object(y))) => {
                x.extend(y);
                D::Json(serde_json::Value::Object(x))
            }
            (x, y) => D::String(format!(
                "{}{}",
                x.to_text(0).unwrap_or_default(),
                y.to_text(0).unwrap_or_default()
            )),
        },
        BinOp::JsonGet | BinOp::JsonGetText => {
            let D::Json(j) = a else { return Ok(D::Null) };
            let got = match (&j, &b) {
                (serde_json::Value::Object(m), D::String(k)) => m.get(k).cloned(),
                (serde_json::Value::Array(v), D::Int(i)) => {
                    let idx = if *i < 0 { v.len() as i64 + i } else { *i };
                    usize::try_from(idx).ok().and_then(|i| v.get(i)).cloned()
                }
                (serde_json::Value::Array(v), D::String(s)) => {
                    s.parse::<usize>().ok().and_then(|i| v.get(i)).cloned()
                }
                _ => None,
            };
            match got {
                None => D::Null,
                Some(v) if op == BinOp::JsonGet => D::Json(v),
                Some(serde_json::Value::Null) => D::Null,
                Some(serde_json::Value::String(s)) => D::String(s),
                Some(v) => D::String(datum::format_json(&v)),
            }
        }
        BinOp::BitAnd | BinOp::BitOr | BinOp::BitXor => match (a, b) {
            (D::Int(x), D::Int(y)) => D::Int(match op {
                BinOp::BitAnd => x & y,
                BinOp::BitOr => x | y,
                _ => x ^ y,
            }),
            _ => D::Null,
        },
        BinOp::And | BinOp::Or => unreachable!("handled with three-valued logic"),
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::FloorDiv | BinOp::Mod => {
            arith(op, a, b)?
        }
    })
}

fn arith(op: BinOp, a: Datum, b: Datum) -> Result<Datum> {
    use Datum as D;
    match (&a, &b) {
        (D::Int(x), D::Int(y)) => {
            let (x, y) = (*x, *y);
            return Ok(match op {
                BinOp::Add => D::Int(x.checked_add(y).ok_or_else(int_overflow)?),
                BinOp::Sub => D::Int(x.checked_sub(y).ok_or_else(int_overflow)?),
                BinOp::Mul => D::Int(x.checked_mul(y).ok_or_else(int_overflow)?),
                BinOp::Div => {
                    if y == 0 {
                        return Err(div_zero());
                    }
                    D::Decimal(decimal_div(Decimal::from(x), Decimal::from(y))?)
                }
                BinOp::FloorDiv => {
                    if y == 0 {
                        return Err(div_zero());
                    }
                    D::Int(x.checked_div(y).ok_or_else(int_overflow)?)
                }
                _ => {
                    if y == 0 {
                        return Err(div_zero());
                    }
                    D::Int(x.checked_rem(y).unwrap_or(0))
                }
            });
        }
        (D::Float(_), _) | (_, D::Float(_))
            if a.natural_type().is_numeric() && b.natural_type().is_numeric() =>
        {
            let (x, y) = (
                to_f64(&a).unwrap_or(f64::NAN),
                to_f64(&b).unwrap_or(f64::NAN),
            );
            return Ok(D::Float(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => {
                    if y == 0.0 {
                        return Err(div_zero());
                    }
                    x / y
                }
                BinOp::FloorDiv => {
                    if y == 0.0 {
                        return Err(div_zero());
                    }
                    (x / y).trunc()
                }
                _ => {
                    if y == 0.0 {
                        return Err(div_zero());
                    }
                    x % y
                }
            }));
        }
        (D::Int(_) | D::Decimal(_), D::Int(_) | D::Decimal(_)) => {
            let (x, y) = (
                to_decimal(&a).unwrap_or_default(),
                to_decimal(&b).unwrap_or_default(),
            );
            return Ok(D::Decimal(match op {
                BinOp::Add => x.checked_add(y).ok_or_else(decimal_overflow)?,
                BinOp::Sub => x.checked_sub(y).ok_or_else(decimal_overflow)?,
                BinOp::Mul => x.checked_mul(y).ok_or_else(decimal_overflow)?,
                BinOp::Div => decimal_div(x, y)?,
                BinOp::FloorDiv => {
                    if y.is_zero() {
                        return Err(div_zero());
                    }
                    (x / y).trunc()
                }
                _ => {
                    if y.is_zero() {
                        return Err(div_zero());
                    }
                    x.checked_rem(y).ok_or_else(decimal_overflow)?
                }
            }));
        }
        _ => {}
    }
    let range = || SqlError::new(sqlstate::DATETIME_FIELD_OVERFLOW, "timestamp out of range");
    Ok(match (op, a, b) {
        (BinOp::Add, D::Timestamp(t), D::Interval(iv))
        | (BinOp::Add, D::Interval(iv), D::Timestamp(t)) => {
            D::Timestamp(datum::add_interval_to_micros(t, &iv).ok_or_else(range)?)
        }
        (BinOp::Add, D::TimestampTz(t), D::Interval(iv))
        | (BinOp::Add, D::Interval(iv), D::TimestampTz(t)) => {
            D::TimestampTz(datum::add_interval_to_micros(t, &iv).ok_or_else(range)?)
        }
        (BinOp::Sub, D::Timestamp(t), D::Interval(iv)) => D::Timestamp(
            datum::add_interval_to_micros(t, &iv.checked_neg().ok_or_else(range)?)
                .ok_or_else(range)?,
        ),
        (BinOp::Sub, D::TimestampTz(t), D::Interval(iv)) => D::TimestampTz(
            datum::add_interval_to_micros(t, &iv.checked_neg().ok_or_else(range)?)
                .ok_or_else(range)?,
        ),
        (BinOp::Add, D::Date(d), D::Interval(iv)) | (BinOp::Add, D::Interval(iv), D::Date(d)) => {
            D::Timestamp(
                datum::add_interval_to_micros(datum::date_to_micros(d), &iv).ok_or_else(range)?,
            )
        }
        (BinOp::Sub, D::Date(d), D::Interval(iv)) => D::Timestamp(
            datum::add_interval_to_micros(
                datum::date_to_micros(d),
                &iv.checked_neg().ok_or_else(range)?,
            )
            .ok_or_else(range)?,
        ),
        (BinOp::Add, D::Date(d), D::Int(n)) | (BinOp::Add, D::Int(n), D::Date(d)) => {
            D::Date(i32::try_from(i64::from(d) + n).map_err(|_| range())?)
        }
        (BinOp::Sub, D::Date(d), D::Int(n)) => {
            D::Date(i32::try_from(i64::from(d) - n).map_err(|_| range())?)
        }
        (BinOp::Sub, D::Date(a), D::Date(b)) => D::Int(i64::from(a) - i64::from(b)),
        (BinOp::Sub, D::Timestamp(x) | D::TimestampTz(x), D::Timestamp(y) | D::TimestampTz(y)) => {
            let diff = x.checked_sub(y).ok_or_else(range)?;
            let days = diff / MICROS_PER_DAY;
            D::Interval(Interval::new(
                0,
                i32::try_from(days).map_err(|_| range())?,
                diff % MICROS_PER_DAY,
            ))
        }
        (BinOp::Add, D::Interval(x), D::Interval(y)) => {
            D::Interval(x.checked_add(&y).ok_or_else(range)?)
        }
        (BinOp::Sub, D::Interval(x), D::Interval(y)) => D::Interval(
            x.checked_add(&y.checked_neg().ok_or_else(range)?)
                .ok_or_else(range)?,
        ),
        (BinOp::Mul, D::Interval(iv), n) | (BinOp::Mul, n, D::Interval(iv)) => D::Interval(
            iv.mul_f64(to_f64(&n).unwrap_or(f64::NAN))
                .ok_or_else(range)?,
        ),
        (BinOp::Div, D::Interval(iv), n) => {
            let f = to_f64(&n).unwrap_or(f64::NAN);
            if f == 0.0 {
                return Err(div_zero());
            }
            D::Interval(iv.mul_f64(1.0 / f).ok_or_else(range)?)
        }
        (op, a, b) => {
            return Err(SqlError::new(
                sqlstate::UNDEFINED_FUNCTION,
                format!(
                    "unsupported binary operator: <{}> {} <{}>",
                    a.natural_type().family_name(),
                    op_symbol(op),
                    b.natural_type().family_name()
                ),
            ));
        }
    })
}

fn decimal_div(x: Decimal, y: Decimal) -> Result<Decimal> {
    if y.is_zero() {
        return Err(div_zero());
    }
    let q = x.checked_div(y).ok_or_else(decimal_overflow)?;
    // CockroachDB shows at least 16 significant fractional digits for inexact quotients.
    Ok(q.normalize())
}

/// SQL LIKE with `%`, `_` and an escape character.
pub fn like_match(s: &str, pattern: &str, escape: Option<char>) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Any,
        One,
        Lit(char),
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            match chars.next() {
                Some(n) => toks.push(Tok::Lit(n)),
                None => toks.push(Tok::Lit(c)),
            }
        } else if c == '%' {
            if toks.last() != Some(&Tok::Any) {
                toks.push(Tok::Any);
            }
        } else if c == '_' {
            toks.push(Tok::One);
        } else {
            toks.push(Tok::Lit(c));
        }
    }
    let text: Vec<char> = s.chars().collect();
    // Iterative matching with backtracking to the last `%`.
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < text.len() {
        if pi < toks.len() {
            match toks[pi] {
                Tok::Any => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                Tok::One => {
                    ti += 1;
                    pi += 1;
                    continue;
                }
                Tok::Lit(c) if c == text[ti] => {
                    ti += 1;
                    pi += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while pi < toks.len() && toks[pi] == Tok::Any {
        pi += 1;
    }
    pi == toks.len()
}

fn text_arg(d: &Datum) -> Option<String> {
    match d {
        Datum::Null => None,
        Datum::String(s) => Some(s.clone()),
        other => other.to_text(0),
    }
}

fn int_arg(d: &Datum) -> Option<i64> {
    match d {
        Datum::Int(i) => Some(*i),
        Datum::Decimal(v) => v.to_i64(),
        Datum::Float(f) => Some(*f as i64),
        _ => None,
    }
}

fn eval_function(name: &str, args: Vec<Datum>, ty: &SqlType, ctx: &EvalCtx) -> Result<Datum> {
    use Datum as D;
    let null_if_any_null = !matches!(
        name,
        "concat"
            | "concat_ws"
            | "greatest"
            | "least"
            | "nullif"
            | "json_build_object"
            | "to_json"
            | "current_user"
            | "now"
    );
    if null_if_any_null && args.iter().any(|a| a.is_null()) {
        return Ok(D::Null);
    }
    let s0 = || args.first().and_then(text_arg).unwrap_or_default();
    Ok(match name {
        "length" => match &args[0] {
            D::Bytes(b) => D::Int(b.len() as i64),
            d => D::Int(text_arg(d).unwrap_or_default().chars().count() as i64),
        },
        "octet_length" => match &args[0] {
            D::Bytes(b) => D::Int(b.len() as i64),
            d => D::Int(text_arg(d).unwrap_or_default().len() as i64),
        },
        "lower" => D::String(s0().to_lowercase()),
        "upper" => D::String(s0().to_uppercase()),
        "initcap" => D::String(
            s0().split(' ')
                .map(|w| {
                    let mut c = w.chars();
                    match c.next() {
                        Some(f) => {
                            f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase()
                        }
                        None => String::new(),
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
        "reverse" => D::String(s0().chars().rev().collect()),
        "md5" => D::String(hex::encode(md5::compute(s0().as_bytes()).0)),
        "sha256" => {
            use sha2::Digest;
            D::String(hex::encode(sha2::Sha256::digest(s0().as_bytes())))
        }
        "to_hex" => match &args[0] {
            D::Int(i) => D::String(format!("{:x}", i)),
            D::Bytes(b) => D::String(hex::encode(b)),
            d => D::String(hex::encode(text_arg(d).unwrap_or_default())),
        },
        "quote_literal" => D::String(datum::quote_literal(&s0())),
        "quote_ident" => D::String(format!("\"{}\"", s0().replace('"', "\"\""))),
        "btrim" | "ltrim" | "rtrim" => {
            let s = s0();
            let set: Vec<char> = match args.get(1) {
                Some(d) => text_arg(d).unwrap_or_default().chars().collect(),
                None => vec![' '],
            };
            let t = match name {
                "ltrim" => s.trim_start_matches(|c| set.contains(&c)),
                "rtrim" => s.trim_end_matches(|c| set.contains(&c)),
                _ => s.trim_matches(|c| set.contains(&c)),
            };
            D::String(t.to_string())
        }
        "substr" => {
            let chars: Vec<char> = s0().chars().collect();
            let start = int_arg(&args[1]).unwrap_or(1);
            let len = args.get(2).and_then(int_arg);
            if let Some(l) = len
                && l < 0
            {
                return Err(SqlError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "negative substring length not allowed",
                ));
            }
            let begin = start.saturating_sub(1);
            let end = match len {
                Some(l) => begin.saturating_add(l),
                None => chars.len() as i64,
            };
            let b = begin.clamp(0, chars.len() as i64) as usize;
            let e = end.clamp(0, chars.len() as i64) as usize;
            D::String(if b < e {
                chars[b..e].iter().collect()
            } else {
                String::new()
            })
        }
        "strpos" => {
            let hay = s0();
            let needle = text_arg(&args[1]).unwrap_or_default();
            D::Int(match hay.find(&needle) {
                Some(byte) => hay[..byte].chars().count() as i64 + 1,
                None => 0,
            })
        }
        "replace" => D::String(s0().replace(
            &text_arg(&args[1]).unwrap_or_default(),
            &text_arg(&args[2]).unwrap_or_default(),
        )),
        "split_part" => {
            let s = s0();
            let delim = text_arg(&args[1]).unwrap_or_default();
            let n = int_arg(&args[2]).unwrap_or(0);
            if n <= 0 {
                return Err(SqlError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "field position must be greater than zero",
                ));
            }
            D::String(
                s.split(delim.as_str())
                    .nth((n - 1) as usize)
                    .unwrap_or("")
                    .to_string(),
            )
        }
        "left" | "right" => {
            let chars: Vec<char> = s0().chars().collect();
            let n = int_arg(&args[1]).unwrap_or(0);
            let len = chars.len() as i64;
            let take = if n >= 0 { n.min(len) } else { (len + n).max(0) } as usize;
            D::String(if name == "left" {
                chars[..take].iter().collect()
            } else {
                chars[chars.len() - take..].iter().collect()
            })
        }
        "repeat" => {
            let n = int_arg(&args[1]).unwrap_or(0).max(0) as usize;
            let s = s0();
            if s.len().saturating_mul(n) > 64 << 20 {
                return Err(SqlError::new(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    "requested length too large",
                ));
            }
            D::String(s.repeat(n))
        }
        "lpad" | "rpad" => {
            let s: Vec<char> = s0().chars().collect();
            let n = int_arg(&args[1]).unwrap_or(0).clamp(0, 1 << 20) as usize;
            let fill: Vec<char> = args
                .get(2)
                .and_then(text_arg)
                .unwrap_or_else(|| " ".into())
                .chars()
                .collect();
            if s.len() >= n || fill.is_empty() {
                return Ok(D::String(s[..n.min(s.len())].iter().collect()));
            }
            let pad: String = fill.iter().cycle().take(n - s.len()).collect();
            let body: String = s.iter().collect();
            D::String(if name == "lpad" {
                pad + &body
            } else {
                body + &pad
            })
        }
        "starts_with" => D::Bool(s0().starts_with(&text_arg(&args[1]).unwrap_or_default())),
        "concat" => D::String(args.iter().filter_map(text_arg).collect()),
        "concat_ws" => {
            let sep = args.first().and_then(text_arg);
            match sep {
                None => D::Null,
                Some(sep) => D::String(
                    args[1..]
                        .iter()
                        .filter_map(text_arg)
                        .collect::<Vec<_>>()
                        .join(&sep),
                ),
            }
        }
        "nullif" => {
            if !args[0].is_null() && args[0].compare(&args[1]) == Some(std::cmp::Ordering::Equal) {
                D::Null
            } else {
                args[0].clone().coerce_for_column(ty, name)?
            }
        }
        "greatest" | "least" => {
            let mut best: Option<Datum> = None;
            for a in args.into_iter().filter(|a| !a.is_null()) {
                best = Some(match best {
                    None => a,
                    Some(b) => {
                        let o = a.sort_cmp(&b);
                        if (name == "greatest" && o == std::cmp::Ordering::Greater)
                            || (name == "least" && o == std::cmp::Ordering::Less)
                        {
                            a
                        } else {
                            b
                        }
                    }
                });
            }
            match best {
                Some(b) => b.coerce_for_column(ty, name)?,
                None => D::Null,
            }
        }
        "abs" => match &args[0] {
            D::Int(i) => D::Int(i.checked_abs().ok_or_else(int_overflow)?),
            D::Float(f) => D::Float(f.abs()),
            D::Decimal(v) => D::Decimal(v.abs()),
            _ => D::Null,
        },
        "sign" => match &args[0] {
            D::Int(i) => D::Int(i.signum()),
            D::Float(f) => D::Float(if *f == 0.0 { 0.0 } else { f.signum() }),
            D::Decimal(v) => D::Decimal(if v.is_zero() {
                Decimal::ZERO
            } else if v.is_sign_negative() {
                Decimal::NEGATIVE_ONE
            } else {
                Decimal::ONE
            }),
            _ => D::Null,
        },
        "ceil" | "floor" | "round" | "trunc" => {
            let places = args.get(1).and_then(int_arg);
            match &args[0] {
                D::Int(i) if places.is_none() => D::Int(*i),
                D::Float(f) => {
                    let scale = 10f64.powi(places.unwrap_or(0) as i32);
                    let v = f * scale;
                    let r = match name {
                        "ceil" => v.ceil(),
                        "floor" => v.floor(),
                        "trunc" => v.trunc(),
                        _ => {
                            // Round half to even, as PostgreSQL does for floats.
                            let r = v.round();
                            if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
                                r - v.signum()
                            } else {
                                r
                            }
                        }
                    };
                    D::Float(r / scale)
                }
                other => {
                    let v = to_decimal(other).unwrap_or_default();
                    let dp = places.unwrap_or(0).clamp(0, 28) as u32;
                    D::Decimal(match name {
                        "ceil" => v.ceil(),
                        "floor" => v.floor(),
                        "trunc" => {
                            v.round_dp_with_strategy(dp, rust_decimal::RoundingStrategy::ToZero)
                        }
                        _ => v.round_dp_with_strategy(
                            dp,
                            rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                        ),
                    })
                    .coerce_for_column(ty, name)?
                }
            }
        }
        "mod" => {
            arith(BinOp::Mod, args[0].clone(), args[1].clone())?.coerce_for_column(ty, name)?
        }
        "power" | "sqrt" | "exp" | "ln" | "log" => {
            let x = to_f64(&args[0]).unwrap_or(f64::NAN);
            let v = match name {
                "power" => x.powf(to_f64(&args[1]).unwrap_or(f64::NAN)),
                "sqrt" => {
                    if x < 0.0 {
                        return Err(SqlError::new(
                            sqlstate::INVALID_ARGUMENT_FOR_POWER,
                            "cannot take square root of a negative number",
                        ));
                    }
                    x.sqrt()
                }
                "exp" => x.exp(),
                "ln" => x.ln(),
                _ => match args.get(1) {
                    Some(b) => to_f64(b).unwrap_or(f64::NAN).log(x),
                    None => x.log10(),
                },
            };
            D::Float(v).coerce_for_column(ty, name)?
        }
        "random" => D::Float(rand::random::<f64>()),
        "now" => D::TimestampTz(ctx.now_micros),
        "clock_timestamp" => D::TimestampTz(chrono::Utc::now().timestamp_micros()),
        "localtimestamp" => {
            D::Timestamp(ctx.now_micros + i64::from(ctx.tz_offset_secs) * MICROS_PER_SECOND)
        }
        "current_date" => D::Date(
            ((ctx.now_micros + i64::from(ctx.tz_offset_secs) * MICROS_PER_SECOND)
                .div_euclid(MICROS_PER_DAY)) as i32,
        ),
        "gen_random_uuid" => D::Uuid(*uuid::Uuid::new_v4().as_bytes()),
        "unique_rowid" => match &ctx.clock {
            Some(c) => D::Int(ldr_types::unique_id(c, ctx.node_id)),
            None => D::Int(ldr_types::unique_id(
                &ldr_types::Clock::default(),
                ctx.node_id,
            )),
        },
        "cluster_logical_timestamp" => {
            let ts = match &ctx.clock {
                Some(c) => c.now(),
                None => ldr_types::Clock::default().now(),
            };
            D::Decimal(timestamp_decimal(ts))
        }
        "version" => D::String(SERVER_VERSION.to_string()),
        "current_database" => D::String(ctx.database.clone()),
        "current_user" => D::String(ctx.user.clone()),
        "current_schema" => D::String("public".into()),
        "crdb_internal.node_id" => D::Int(i64::from(ctx.node_id)),
        "crdb_internal.cluster_origin_id" => D::Int(i64::from(ctx.origin_id)),
        "date_part" => {
            let field = s0().to_lowercase();
            let micros = match &args[1] {
                D::Timestamp(t) => *t,
                D::TimestampTz(t) => t + i64::from(ctx.tz_offset_secs) * MICROS_PER_SECOND,
                D::Date(d) => datum::date_to_micros(*d),
                D::Interval(iv) => {
                    return Ok(D::Float(match field.as_str() {
                        "epoch" => iv.total_micros() as f64 / 1e6,
                        "day" | "days" => f64::from(iv.days),
                        "month" | "months" => f64::from(iv.months % 12),
                        "year" | "years" => f64::from(iv.months / 12),
                        "hour" | "hours" => (iv.micros / 3_600_000_000) as f64,
                        "minute" | "minutes" => ((iv.micros / 60_000_000) % 60) as f64,
                        "second" | "seconds" => (iv.micros % 60_000_000) as f64 / 1e6,
                        _ => {
                            return Err(SqlError::new(
                                sqlstate::INVALID_PARAMETER_VALUE,
                                format!("unsupported timespan: {field}"),
                            ));
                        }
                    }));
                }
                _ => return Ok(D::Null),
            };
            D::Float(date_part(&field, micros)?)
        }
        "date_trunc" => {
            let field = s0().to_lowercase();
            let (micros, tz) = match &args[1] {
                D::Timestamp(t) => (*t, false),
                D::TimestampTz(t) => (*t, true),
                D::Date(d) => (datum::date_to_micros(*d), true),
                _ => return Ok(D::Null),
            };
            let t = date_trunc(&field, micros)?;
            if tz {
                D::TimestampTz(t)
            } else {
                D::Timestamp(t)
            }
        }
        "to_timestamp" => {
            let secs = to_f64(&args[0]).unwrap_or(f64::NAN);
            if !secs.is_finite() {
                return Err(SqlError::out_of_range("timestamp out of range"));
            }
            D::TimestampTz((secs * 1e6).round() as i64)
        }
        "json_typeof" => match &args[0] {
            D::Json(j) => D::String(
                match j {
                    serde_json::Value::Null => "null",
                    serde_json::Value::Bool(_) => "boolean",
                    serde_json::Value::Number(_) => "number",
                    serde_json::Value::String(_) => "string",
                    serde_json::Value::Array(_) => "array",
                    serde_json::Value::Object(_) => "object",
                }
                .into(),
            ),
            _ => D::Null,
        },
        "to_json" => D::Json(args[0].to_json()),
        "json_build_object" => {
            if !args.len().is_multiple_of(2) {
                return Err(SqlError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "argument list must have even number of elements",
                ));
            }
            let mut m = serde_json::Map::new();
            for pair in args.chunks(2) {
                let k = text_arg(&pair[0]).ok_or_else(|| {
                    SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "argument 1 cannot be null",
                    )
                })?;
                m.insert(k, pair[1].to_json());
            }
            D::Json(serde_json::Value::Object(m))
        }
        _ => {
            return Err(SqlError::new(
                sqlstate::UNDEFINED_FUNCTION,
                format!("unknown function: {name}()"),
            ));
        }
    })
}

/// `wall.logical` as a DECIMAL with ten fractional digits.
pub fn timestamp_decimal(ts: ldr_types::Timestamp) -> Decimal {
    let mantissa = i128::from(ts.wall_time_ns) * 10_000_000_000 + i128::from(ts.logical);
    Decimal::try_from_i128_with_scale(mantissa, 10).unwrap_or(Decimal::MAX)
}

fn date_part(field: &str, micros: i64) -> Result<f64> {
    use chrono::{Datelike, Timelike};
    let dt = chrono::DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| SqlError::out_of_range("timestamp out of range"))?
        .naive_utc();
    Ok(match field {
        "year" | "years" => f64::from(dt.year()),
        "month" | "months" => f64::from(dt.month()),
        "day" | "days" => f64::from(dt.day()),
        "hour" | "hours" => f64::from(dt.hour()),
        "minute" | "minutes" => f64::from(dt.minute()),
        "second" | "seconds" => f64::from(dt.second()) + f64::from(dt.nanosecond() / 1000) / 1e6,
        "millisecond" | "milliseconds" => {
            f64::from(dt.second()) * 1000.0 + f64::from(dt.nanosecond() / 1000) / 1e3
        }
        "microsecond" | "microseconds" => {
            f64::from(dt.second()) * 1e6 + f64::from(dt.nanosecond() / 1000)
        }
        "dow" | "dayofweek" => f64::from(dt.weekday().num_days_from_sunday()),
        "isodow" => f64::from(dt.weekday().number_from_monday()),
        "doy" | "dayofyear" => f64::from(dt.ordinal()),
        "week" => f64::from(dt.iso_week().week()),
        "quarter" => f64::from((dt.month() - 1) / 3 + 1),
        "epoch" => micros as f64 / 1e6,
        _ => {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("unsupported timespan: {field}"),
            ));
        }
    })
}

fn date_trunc(field: &str, micros: i64) -> Result<i64> {
    use chrono::{Datelike, NaiveDate, NaiveTime, Timelike};
    let dt = chrono::DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| SqlError::out_of_range("timestamp out of range"))?
        .naive_utc();
    let date = dt.date();
    let mk = |d: Option<NaiveDate>, t: NaiveTime| -> Result<i64> {
        d.map(|d| d.and_time(t).and_utc().timestamp_micros())
            .ok_or_else(|| SqlError::out_of_range("timestamp out of range"))
    };
    let midnight = NaiveTime::MIN;
    match field {
        "microseconds" | "microsecond" => Ok(micros),
        "milliseconds" | "millisecond" => Ok(micros - micros.rem_euclid(1000)),
        "second" | "seconds" => Ok(micros - micros.rem_euclid(MICROS_PER_SECOND)),
        "minute" | "minutes" => mk(
            Some(date),
            NaiveTime::from_hms_opt(dt.hour(), dt.minute(), 0).unwrap_or(midnight),
        ),
        "hour" | "hours" => mk(
            Some(date),
            NaiveTime::from_hms_opt(dt.hour(), 0, 0).unwrap_or(midnight),
        ),
        "day" | "days" => mk(Some(date), midnight),
        "week" => mk(
            date.checked_sub_days(chrono::Days::new(u64::from(
                date.weekday().num_days_from_monday(),
            ))),
            midnight,
        ),
        "month" | "months" => mk(
            NaiveDate::from_ymd_opt(date.year(), date.month(), 1),
            midnight,
        ),
        "quarter" => mk(
            NaiveDate::from_ymd_opt(date.year(), (date.month() - 1) / 3 * 3 + 1, 1),
            midnight,
        ),
        "year" | "years" => mk(NaiveDate::from_ymd_opt(date.year(), 1, 1), midnight),
        _ => Err(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("unsupported timespan: {field}"),
        )),
    }
}

#[cfg(test)]
mod tests;
