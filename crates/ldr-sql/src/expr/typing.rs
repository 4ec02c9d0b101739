//! Type rules of binding: comparability, arithmetic result types, PostgreSQL's type names
//! and signature errors.

use super::*;

pub(super) fn pg_type_name(t: &SqlType) -> String {
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

pub(super) fn unknown_signature(name: &str, types: &[SqlType]) -> SqlError {
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

pub(super) fn op_symbol(op: BinOp) -> &'static str {
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
pub(super) fn arithmetic_type(op: BinOp, a: &SqlType, b: &SqlType) -> Result<SqlType> {
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
