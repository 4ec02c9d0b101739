//! Scalar expressions: binding sqlparser expressions against a scope of columns (name
//! resolution, type inference for literals and `$n` parameters, aggregate extraction) and
//! evaluating the bound tree over a row.
//!
//! Binding is where types are decided, as in PostgreSQL: an untyped string literal or a
//! parameter takes the type its context wants (`ts > '2024-01-01'`, `id = $1`), numeric
//! types compare across each other, and mismatches fail with 42804/42883 before any row is
//! read.
//!
//! - this module: the bound tree ([`ScalarExpr`]), scopes, aggregates, literal helpers;
//! - [`bind`]: the [`Binder`], sqlparser expressions to bound trees;
//! - [`typing`]: the type rules binding applies (comparability, arithmetic result types);
//! - [`eval`]: evaluation over a row ([`EvalCtx`], operators, casts, LIKE);
//! - [`functions`]: the built-in scalar functions: one table binding resolves names against,
//!   and their evaluation.

use std::sync::Arc;

use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use sqlparser::ast as sql;

use crate::datum::{self, Datum};
use crate::error::{Result, SqlError, sqlstate};
use crate::interval::{Interval, MICROS_PER_DAY, MICROS_PER_SECOND};
use crate::types::{SqlType, TypeFamily};

mod bind;
mod eval;
mod functions;
mod typing;

pub use bind::*;
pub use eval::*;
pub use functions::*;
pub use typing::*;

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
        func: Builtin,
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
            if let ScalarExpr::Func { func, .. } = e
                && func.def().volatile
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

#[cfg(test)]
mod tests;
