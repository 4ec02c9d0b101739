//! Evaluation of bound expressions over a row: operators, casts, LIKE.

use super::*;

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

pub(super) fn truthy(d: &Datum) -> Option<bool> {
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
            ScalarExpr::Func { func, args, ty } => {
                // coalesce evaluates lazily.
                if *func == Builtin::Coalesce {
                    for a in args {
                        let v = a.eval(row, ctx)?;
                        if !v.is_null() {
                            return v.coerce_for_column(ty, func.name());
                        }
                    }
                    return Ok(Datum::Null);
                }
                let vals: Vec<Datum> = args
                    .iter()
                    .map(|a| a.eval(row, ctx))
                    .collect::<Result<_>>()?;
                eval_function(*func, vals, ty, ctx)
            }
        }
    }

    /// Evaluates as a filter: only TRUE passes.
    pub fn eval_predicate(&self, row: &[Datum], ctx: &EvalCtx) -> Result<bool> {
        Ok(matches!(self.eval(row, ctx)?, Datum::Bool(true)))
    }
}

pub(super) fn negate(d: &Datum) -> Result<Datum> {
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

pub(super) fn int_overflow() -> SqlError {
    SqlError::out_of_range("integer out of range")
}

pub(super) fn div_zero() -> SqlError {
    SqlError::new(sqlstate::DIVISION_BY_ZERO, "division by zero")
}

pub(super) fn to_decimal(d: &Datum) -> Option<Decimal> {
    match d {
        Datum::Int(i) => Some(Decimal::from(*i)),
        Datum::Decimal(v) => Some(*v),
        Datum::Float(f) => Decimal::from_f64(*f),
        _ => None,
    }
}

pub(super) fn to_f64(d: &Datum) -> Option<f64> {
    match d {
        Datum::Int(i) => Some(*i as f64),
        Datum::Decimal(v) => v.to_f64(),
        Datum::Float(f) => Some(*f),
        _ => None,
    }
}

pub(super) fn decimal_overflow() -> SqlError {
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

pub(super) fn arith(op: BinOp, a: Datum, b: Datum) -> Result<Datum> {
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

pub(super) fn decimal_div(x: Decimal, y: Decimal) -> Result<Decimal> {
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

pub(super) fn text_arg(d: &Datum) -> Option<String> {
    match d {
        Datum::Null => None,
        Datum::String(s) => Some(s.clone()),
        other => other.to_text(0),
    }
}

pub(super) fn int_arg(d: &Datum) -> Option<i64> {
    match d {
        Datum::Int(i) => Some(*i),
        Datum::Decimal(v) => v.to_i64(),
        Datum::Float(f) => Some(*f as i64),
        _ => None,
    }
}
