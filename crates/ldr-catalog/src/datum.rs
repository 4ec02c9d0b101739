//! Runtime values (`Datum`): comparison (NULLs first, numerics across types), PostgreSQL text
//! output, text input per type with 22P02 on bad input, and assignment casts that enforce a
//! column's width, precision and integer range.

use std::cmp::Ordering;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};

use crate::error::{Result, SqlError, sqlstate};
use crate::interval::{Interval, MICROS_PER_DAY, MICROS_PER_SECOND};
use crate::types::{SqlType, TypeFamily};

/// One SQL value.
#[derive(Debug, Clone)]
pub enum Datum {
    Null,
    Bool(bool),
    /// INT2, INT4 and INT8 (the column type bounds the range).
    Int(i64),
    /// FLOAT4 and FLOAT8.
    Float(f64),
    Decimal(Decimal),
    /// STRING, VARCHAR, CHAR.
    String(String),
    Bytes(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01 00:00:00, no zone.
    Timestamp(i64),
    /// Microseconds since the Unix epoch (UTC).
    TimestampTz(i64),
    Interval(Interval),
    Uuid([u8; 16]),
    Json(serde_json::Value),
}

impl PartialEq for Datum {
    fn eq(&self, other: &Datum) -> bool {
        match (self, other) {
            (Datum::Null, Datum::Null) => true,
            (Datum::Json(a), Datum::Json(b)) => a == b,
            _ => self.compare(other) == Some(Ordering::Equal),
        }
    }
}

/// The earliest and latest timestamps we accept (chrono's range, narrowed to 4713 BC..294276 AD
/// where chrono allows).
const MIN_TS_MICROS: i64 = -210_835_267_200_000_000; // 4713-11-24 BC
const MAX_TS_MICROS: i64 = 8_210_266_876_799_999_999; // 262142-12-31 23:59:59.999999

impl Datum {
    pub fn is_null(&self) -> bool {
        matches!(self, Datum::Null)
    }

    /// The natural type of a value (integers are INT8, strings STRING).
    pub fn natural_type(&self) -> SqlType {
        match self {
            Datum::Null => SqlType::Unknown,
            Datum::Bool(_) => SqlType::Bool,
            Datum::Int(_) => SqlType::Int8,
            Datum::Float(_) => SqlType::Float8,
            Datum::Decimal(_) => SqlType::DECIMAL,
            Datum::String(_) => SqlType::String,
            Datum::Bytes(_) => SqlType::Bytes,
            Datum::Date(_) => SqlType::Date,
            Datum::Timestamp(_) => SqlType::Timestamp,
            Datum::TimestampTz(_) => SqlType::TimestampTz,
            Datum::Interval(_) => SqlType::Interval,
            Datum::Uuid(_) => SqlType::Uuid,
            Datum::Json(_) => SqlType::Jsonb,
        }
    }

    /// SQL comparison of two non-NULL values; `None` if either is NULL or the types do not
    /// compare.
    pub fn compare(&self, other: &Datum) -> Option<Ordering> {
        use Datum::*;
        Some(match (self, other) {
            (Null, _) | (_, Null) => return None,
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => cmp_f64(*a, *b),
            (Decimal(a), Decimal(b)) => a.cmp(b),
            (Int(a), Float(b)) => cmp_f64(*a as f64, *b),
            (Float(a), Int(b)) => cmp_f64(*a, *b as f64),
            (Int(a), Decimal(b)) => rust_decimal::Decimal::from(*a).cmp(b),
            (Decimal(a), Int(b)) => a.cmp(&rust_decimal::Decimal::from(*b)),
            (Float(a), Decimal(b)) => cmp_f64(*a, b.to_f64().unwrap_or(f64::NAN)),
            (Decimal(a), Float(b)) => cmp_f64(a.to_f64().unwrap_or(f64::NAN), *b),
            (String(a), String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Bytes(a), Bytes(b)) => a.cmp(b),
            (Date(a), Date(b)) => a.cmp(b),
            (Timestamp(a) | TimestampTz(a), Timestamp(b) | TimestampTz(b)) => a.cmp(b),
            (Date(a), Timestamp(b) | TimestampTz(b)) => (i64::from(*a) * MICROS_PER_DAY).cmp(b),
            (Timestamp(a) | TimestampTz(a), Date(b)) => a.cmp(&(i64::from(*b) * MICROS_PER_DAY)),
            (Interval(a), Interval(b)) => a.compare(b),
            (Uuid(a), Uuid(b)) => a.cmp(b),
            (Json(a), Json(b)) => json_cmp(a, b),
            _ => return None,
        })
    }

    /// A total order for sorting: NULLs first, then [`Datum::compare`]; incomparable values
    /// fall back to their type order.
    pub fn sort_cmp(&self, other: &Datum) -> Ordering {
        match (self.is_null(), other.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            _ => self
                .compare(other)
                .unwrap_or_else(|| self.rank().cmp(&other.rank())),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Datum::Null => 0,
            Datum::Bool(_) => 1,
            Datum::Int(_) | Datum::Float(_) | Datum::Decimal(_) => 2,
            Datum::String(_) => 3,
            Datum::Bytes(_) => 4,
            Datum::Date(_) | Datum::Timestamp(_) | Datum::TimestampTz(_) => 5,
            Datum::Interval(_) => 6,
            Datum::Uuid(_) => 7,
            Datum::Json(_) => 8,
        }
    }

    /// PostgreSQL text output (what psql prints). `tz_offset_secs` is the session time zone's
    /// offset east of UTC, used for TIMESTAMPTZ.
    pub fn to_text(&self, tz_offset_secs: i32) -> Option<String> {
        Some(match self {
            Datum::Null => return None,
            Datum::Bool(b) => if *b { "t" } else { "f" }.to_string(),
            Datum::Int(i) => i.to_string(),
            Datum::Float(f) => format_float(*f),
            Datum::Decimal(d) => d.to_string(),
            Datum::String(s) => s.clone(),
            Datum::Bytes(b) => format!("\\x{}", hex::encode(b)),
            Datum::Date(d) => format_date(*d),
            Datum::Timestamp(t) => format_timestamp(*t, None),
            Datum::TimestampTz(t) => format_timestamp(*t, Some(tz_offset_secs)),
            Datum::Interval(i) => i.to_pg_string(),
            Datum::Uuid(u) => uuid::Uuid::from_bytes(*u).hyphenated().to_string(),
            Datum::Json(j) => format_json(j),
        })
    }

    /// Text as CockroachDB renders a constant in SQL (`SHOW CREATE TABLE` defaults, error
    /// details): strings quoted, numbers bare.
    pub fn to_sql_literal(&self) -> String {
        match self {
            Datum::Null => "NULL".to_string(),
            Datum::Bool(b) => if *b { "true" } else { "false" }.to_string(),
            Datum::Int(_) | Datum::Float(_) | Datum::Decimal(_) => {
                self.to_text(0).unwrap_or_default()
            }
            other => quote_literal(&other.to_text(0).unwrap_or_default()),
        }
    }

    /// The value as JSON (`incoming_row` in the DLQ): numbers stay numbers, everything else
    /// is its text form.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Datum::Null => Value::Null,
            Datum::Bool(b) => Value::Bool(*b),
            Datum::Int(i) => Value::from(*i),
            Datum::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(format_float(*f))),
            Datum::Decimal(d) => serde_json::Number::from_str(&d.to_string())
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(d.to_string())),
            Datum::Json(j) => j.clone(),
            Datum::TimestampTz(t) => Value::String(format_timestamp_iso(*t, true)),
            Datum::Timestamp(t) => Value::String(format_timestamp_iso(*t, false)),
            other => Value::String(other.to_text(0).unwrap_or_default()),
        }
    }

    /// Parses text input as a value of `ty` (22P02 / 22007 / 22003 on bad input).
    pub fn parse_text(s: &str, ty: &SqlType) -> Result<Datum> {
        let d = match ty.family() {
            TypeFamily::Unknown | TypeFamily::String => Datum::String(s.to_string()),
            TypeFamily::Bool => {
                Datum::Bool(parse_bool(s).ok_or_else(|| SqlError::invalid_text(s, "bool"))?)
            }
            TypeFamily::Int => {
                let t = s.trim();
                let t = t.strip_prefix('+').unwrap_or(t);
                match t.parse::<i64>() {
                    Ok(v) => Datum::Int(v),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::num::IntErrorKind::PosOverflow
                                | std::num::IntErrorKind::NegOverflow
                        ) =>
                    {
                        return Err(SqlError::out_of_range(format!(
                            "could not parse \"{s}\" as type int: value out of range"
                        )));
                    }
                    Err(_) => return Err(SqlError::invalid_text(s, "int")),
                }
            }
            TypeFamily::Float => {
                Datum::Float(parse_float(s).ok_or_else(|| SqlError::invalid_text(s, "float"))?)
            }
            TypeFamily::Decimal => Datum::Decimal(
                parse_decimal(s).ok_or_else(|| SqlError::invalid_text(s, "decimal"))?,
            ),
            TypeFamily::Bytes => {
                Datum::Bytes(parse_bytes(s).ok_or_else(|| SqlError::invalid_text(s, "bytes"))?)
            }
            TypeFamily::Date => Datum::Date(parse_date(s)?),
            TypeFamily::Timestamp => Datum::Timestamp(parse_timestamp(s, false)?),
            TypeFamily::TimestampTz => Datum::TimestampTz(parse_timestamp(s, true)?),
            TypeFamily::Interval => Datum::Interval(Interval::parse(s)?),
            TypeFamily::Uuid => Datum::Uuid(
                *uuid::Uuid::parse_str(s.trim())
                    .map_err(|_| SqlError::invalid_text(s, "uuid"))?
                    .as_bytes(),
            ),
            TypeFamily::Jsonb => Datum::Json(serde_json::from_str(s).map_err(|e| {
                SqlError::new(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    format!("could not parse JSON: {e}"),
                )
            })?),
        };
        d.assign_to(ty)
    }

    /// Converts to `ty` as an explicit CAST does (`x::INT4`, `CAST(x AS STRING)`).
    pub fn cast(&self, ty: &SqlType) -> Result<Datum> {
        use Datum::*;
        let target = ty.family();
        let v = match (self, target) {
            (Null, _) => return Ok(Null),
            (_, TypeFamily::Unknown) => self.clone(),
            (String(s), _) => return Datum::parse_text(s, ty),
            (_, TypeFamily::String) => String(self.to_text(0).unwrap_or_default()),
            (Int(i), TypeFamily::Int) => Int(*i),
            (Int(i), TypeFamily::Float) => Float(*i as f64),
            (Int(i), TypeFamily::Decimal) => Decimal(rust_decimal::Decimal::from(*i)),
            (Int(i), TypeFamily::Bool) => Bool(*i != 0),
            (Int(i), TypeFamily::Interval) => Interval(crate::interval::Interval::new(
                0,
                0,
                i.saturating_mul(MICROS_PER_SECOND),
            )),
            (Int(i), TypeFamily::TimestampTz) => TimestampTz(i.saturating_mul(MICROS_PER_SECOND)),
            (Int(i), TypeFamily::Timestamp) => Timestamp(i.saturating_mul(MICROS_PER_SECOND)),
            (Float(f), TypeFamily::Float) => Float(*f),
            (Float(f), TypeFamily::Int) => {
                if !f.is_finite() || f.round() > i64::MAX as f64 || f.round() < i64::MIN as f64 {
                    return Err(SqlError::out_of_range("integer out of range"));
                }
                Int(round_half_even_f64(*f) as i64)
            }
            (Float(f), TypeFamily::Decimal) => Decimal(
                rust_decimal::Decimal::from_f64(*f)
                    .ok_or_else(|| SqlError::invalid_text(&format_float(*f), "decimal"))?,
            ),
            (Decimal(d), TypeFamily::Decimal) => Decimal(*d),
            (Decimal(d), TypeFamily::Int) => {
                let r = d.round_dp_with_strategy(
                    0,
                    rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                );
                Int(r
                    .to_i64()
                    .ok_or_else(|| SqlError::out_of_range("integer out of range"))?)
            }
            (Decimal(d), TypeFamily::Float) => Float(d.to_f64().unwrap_or(f64::NAN)),
            (Bool(b), TypeFamily::Bool) => Bool(*b),
            (Bool(b), TypeFamily::Int) => Int(i64::from(*b)),
            (Bytes(b), TypeFamily::Bytes) => Bytes(b.clone()),
            (Date(d), TypeFamily::Date) => Date(*d),
            (Date(d), TypeFamily::Timestamp) => Timestamp(i64::from(*d) * MICROS_PER_DAY),
            (Date(d), TypeFamily::TimestampTz) => TimestampTz(i64::from(*d) * MICROS_PER_DAY),
            (Timestamp(t) | TimestampTz(t), TypeFamily::Date) => {
                Date(t.div_euclid(MICROS_PER_DAY) as i32)
            }
            (Timestamp(t), TypeFamily::Timestamp) | (TimestampTz(t), TypeFamily::Timestamp) => {
                Timestamp(*t)
            }
            (Timestamp(t) | TimestampTz(t), TypeFamily::TimestampTz) => TimestampTz(*t),
            (TimestampTz(t), TypeFamily::Int) => Int(t.div_euclid(MICROS_PER_SECOND)),
            (Interval(i), TypeFamily::Interval) => Interval(*i),
            (Uuid(u), TypeFamily::Uuid) => Uuid(*u),
            (Uuid(u), TypeFamily::Bytes) => Bytes(u.to_vec()),
            (Bytes(b), TypeFamily::Uuid) if b.len() == 16 => {
                let mut u = [0u8; 16];
                u.copy_from_slice(b);
                Uuid(u)
            }
            (Json(j), TypeFamily::Jsonb) => Json(j.clone()),
            (Json(serde_json::Value::Number(n)), TypeFamily::Int) => Int(n
                .as_i64()
                .ok_or_else(|| SqlError::invalid_text(&n.to_string(), "int"))?),
            (Json(serde_json::Value::Number(n)), TypeFamily::Float) => {
                Float(n.as_f64().unwrap_or(f64::NAN))
            }
            (Json(serde_json::Value::Number(n)), TypeFamily::Decimal) => Decimal(
                parse_decimal(&n.to_string())
                    .ok_or_else(|| SqlError::invalid_text(&n.to_string(), "decimal"))?,
            ),
            (Json(serde_json::Value::Bool(b)), TypeFamily::Bool) => Bool(*b),
            _ => {
                return Err(SqlError::new(
                    sqlstate::CANNOT_COERCE,
                    format!(
                        "invalid cast: {} -> {}",
                        self.natural_type().sql_name(),
                        ty.sql_name()
                    ),
                ));
            }
        };
        v.assign_to(ty)
    }

    /// Enforces a column type on a value of the right family: integer width, float4
    /// rounding, decimal precision/scale, string width.
    pub fn assign_to(self, ty: &SqlType) -> Result<Datum> {
        Ok(match (self, ty) {
            (Datum::Int(i), SqlType::Int4) => {
                if i32::try_from(i).is_err() {
                    return Err(SqlError::out_of_range("integer out of range for type int4"));
                }
                Datum::Int(i)
            }
            (Datum::Int(i), SqlType::Int2) => {
                if i16::try_from(i).is_err() {
                    return Err(SqlError::out_of_range("integer out of range for type int2"));
                }
                Datum::Int(i)
            }
            (Datum::Float(f), SqlType::Float4) => Datum::Float(f64::from(f as f32)),
            (Datum::Decimal(d), SqlType::Decimal { precision, scale }) => {
                Datum::Decimal(fit_decimal(d, *precision, *scale)?)
            }
            (Datum::String(s), SqlType::Varchar { width: Some(w) })
            | (Datum::String(s), SqlType::Char { width: w }) => {
                let n = s.chars().count();
                if n > *w as usize {
                    let trimmed = s.trim_end_matches(' ');
                    if trimmed.chars().count() > *w as usize {
                        return Err(SqlError::new(
                            sqlstate::STRING_DATA_RIGHT_TRUNCATION,
                            format!("value too long for type {}", ty.sql_name()),
                        ));
                    }
                    Datum::String(trimmed.to_string())
                } else {
                    Datum::String(s)
                }
            }
            (d, _) => d,
        })
    }

    /// Converts a value for storage in a column of type `ty` (INSERT/UPDATE): same-family
    /// values are narrowed with [`Datum::assign_to`]; strings parse; numerics convert.
    pub fn coerce_for_column(self, ty: &SqlType, column: &str) -> Result<Datum> {
        if self.is_null() {
            return Ok(Datum::Null);
        }
        let fam = ty.family();
        let own = self.natural_type().family();
        if own == fam {
            return self.assign_to(ty);
        }
        let ok = matches!(
            (own, fam),
            (TypeFamily::String, _)
                | (TypeFamily::Int, TypeFamily::Float | TypeFamily::Decimal)
                | (TypeFamily::Decimal, TypeFamily::Float | TypeFamily::Int)
                | (TypeFamily::Float, TypeFamily::Decimal)
                | (
                    TypeFamily::Date,
                    TypeFamily::Timestamp | TypeFamily::TimestampTz
                )
                | (
                    TypeFamily::Timestamp,
                    TypeFamily::TimestampTz | TypeFamily::Date
                )
                | (
                    TypeFamily::TimestampTz,
                    TypeFamily::Timestamp | TypeFamily::Date
                )
                | (TypeFamily::Jsonb, _)
        );
        if !ok {
            return Err(SqlError::datatype_mismatch(format!(
                "value type {} doesn't match type {} of column \"{}\"",
                self.natural_type().family_name(),
                ty.family_name(),
                column
            )));
        }
        if own == TypeFamily::Decimal && fam == TypeFamily::Int {
            // PostgreSQL rounds numerics assigned to integer columns.
            return self.cast(ty);
        }
        self.cast(ty)
    }
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    // NaN sorts before every other float (CockroachDB), -0 equals 0.
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

fn round_half_even_f64(f: f64) -> f64 {
    let r = f.round();
    if (f - f.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - f.signum()
    } else {
        r
    }
}

fn json_rank(v: &serde_json::Value) -> u8 {
    use serde_json::Value;
    match v {
        Value::Null => 0,
        Value::String(_) => 1,
        Value::Number(_) => 2,
        Value::Bool(false) => 3,
        Value::Bool(true) => 4,
        Value::Array(_) => 5,
        Value::Object(_) => 6,
    }
}

/// CockroachDB's JSON ordering (null < strings < numbers < false < true < arrays < objects).
pub fn json_cmp(a: &serde_json::Value, b: &serde_json::Value) -> Ordering {
    use serde_json::Value;
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => {
            let dx = parse_decimal(&x.to_string());
            let dy = parse_decimal(&y.to_string());
            match (dx, dy) {
                (Some(dx), Some(dy)) => dx.cmp(&dy),
                _ => cmp_f64(x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0)),
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len().cmp(&y.len()).then_with(|| {
            x.iter()
                .zip(y)
                .map(|(p, q)| json_cmp(p, q))
                .find(|o| *o != Ordering::Equal)
                .unwrap_or(Ordering::Equal)
        }),
        (Value::Object(x), Value::Object(y)) => x.len().cmp(&y.len()).then_with(|| {
            for ((ka, va), (kb, vb)) in x.iter().zip(y) {
                let o = ka.cmp(kb).then_with(|| json_cmp(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        }),
        _ => json_rank(a).cmp(&json_rank(b)),
    }
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quotes an identifier when it needs it (upper case, other characters, a reserved word), as
/// PostgreSQL's `quote_ident` does.
pub fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !matches!(
            name,
            "select"
                | "from"
                | "where"
                | "table"
                | "index"
                | "order"
                | "group"
                | "user"
                | "default"
                | "primary"
                | "key"
                | "check"
                | "unique"
                | "references"
                | "constraint"
        );
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "yes" | "y" | "on" | "1" => Some(true),
        "f" | "false" | "no" | "n" | "off" | "0" => Some(false),
        _ => None,
    }
}

pub fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "inf" | "infinity" | "+inf" | "+infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        _ => t.parse::<f64>().ok(),
    }
}

pub fn parse_decimal(s: &str) -> Option<Decimal> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    if t.contains(['e', 'E']) {
        return Decimal::from_scientific(t).ok();
    }
    Decimal::from_str_exact(t)
        .or_else(|_| Decimal::from_str(t))
        .ok()
}

/// Rounds to `scale` and checks the integer digits against `precision`.
fn fit_decimal(d: Decimal, precision: Option<u32>, scale: Option<u32>) -> Result<Decimal> {
    let mut v = d;
    let s = scale.unwrap_or(0);
    if let Some(p) = precision {
        v = v.round_dp_with_strategy(s, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        if scale.is_some() || precision.is_some() {
            v.rescale(s);
        }
        let int_digits = p.saturating_sub(s);
        let limit = Decimal::from_i128_with_scale(10i128.pow(int_digits.min(28)), 0);
        if v.abs() >= limit {
            return Err(SqlError::out_of_range(format!(
                "value with precision {p}, scale {s} must round to an absolute value less than 10^{int_digits}"
            )));
        }
    }
    Ok(v)
}

/// `\x` hex, PostgreSQL escape format (`\\`, `\ooo`), or the raw UTF-8 bytes.
pub fn parse_bytes(s: &str) -> Option<Vec<u8>> {
    if let Some(h) = s.strip_prefix("\\x").or_else(|| s.strip_prefix("\\X")) {
        return hex::decode(h).ok();
    }
    if !s.contains('\\') {
        return Some(s.as_bytes().to_vec());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if i + 1 < b.len() && b[i + 1] == b'\\' {
                out.push(b'\\');
                i += 2;
            } else if i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(b[i + 1] - b'0') * 64
                    + u32::from(b[i + 2] - b'0') * 8
                    + u32::from(b[i + 3] - b'0');
                out.push(u8::try_from(v).ok()?);
                i += 4;
            } else {
                return None;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn datetime_error(s: &str, ty: &str) -> SqlError {
    SqlError::new(
        sqlstate::INVALID_DATETIME_FORMAT,
        format!("could not parse \"{s}\" as type {ty}"),
    )
}

/// Days since the epoch of `YYYY-MM-DD` (a timestamp string is truncated to its date).
pub fn parse_date(s: &str) -> Result<i32> {
    let t = s.trim();
    let date_part = t.split([' ', 'T']).next().unwrap_or(t);
    let d = NaiveDate::parse_from_str(date_part, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(date_part, "%Y%m%d"))
        .or_else(|_| NaiveDate::parse_from_str(date_part, "%m/%d/%Y"))
        .map_err(|_| datetime_error(s, "date"))?;
    Ok(days_from_date(d))
}

fn days_from_date(d: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a valid date");
    (d - epoch).num_days() as i32
}

/// Splits a trailing zone (`Z`, `UTC`, `+hh`, `+hh:mm`, `-hhmm`) off a timestamp string.
fn split_zone(s: &str) -> (String, Option<i64>) {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    for suffix in [" UTC", "UTC", " GMT", "Z"] {
        if upper.ends_with(suffix) && t.len() > 10 {
            return (t[..t.len() - suffix.len()].trim().to_string(), Some(0));
        }
    }
    // Search for a sign after the date part (the date itself contains '-'). A date part that
    // is not ten ASCII bytes has no zone to split off (and fails to parse as a date later).
    if let Some(tail) = t.get(10..).filter(|tail| !tail.is_empty())
        && let Some(pos) = tail.rfind(['+', '-'])
    {
        let zone = &tail[pos..];
        let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
        if !digits.is_empty() && digits.len() <= 6 && digits.chars().all(|c| c.is_ascii_digit()) {
            let (h, m, sec) = match digits.len() {
                1 | 2 => (digits.parse::<i64>().unwrap_or(0), 0, 0),
                3 => (
                    digits[..1].parse().unwrap_or(0),
                    digits[1..].parse().unwrap_or(0),
                    0,
                ),
                4 => (
                    digits[..2].parse().unwrap_or(0),
                    digits[2..].parse().unwrap_or(0),
                    0,
                ),
                _ => (
                    digits[..2].parse().unwrap_or(0),
                    digits[2..4].parse().unwrap_or(0),
                    digits[4..].parse().unwrap_or(0),
                ),
            };
            let mut off = h * 3600 + m * 60 + sec;
            if zone.starts_with('-') {
                off = -off;
            }
            return (t[..10 + pos].trim().to_string(), Some(off));
        }
    }
    (t.to_string(), None)
}

/// Microseconds since the epoch. With `with_zone`, an explicit offset is honoured (else UTC);
/// without, any offset is ignored (PostgreSQL TIMESTAMP semantics).
pub fn parse_timestamp(s: &str, with_zone: bool) -> Result<i64> {
    let ty = if with_zone {
        "timestamptz"
    } else {
        "timestamp"
    };
    match s.trim().to_ascii_lowercase().as_str() {
        "epoch" => return Ok(0),
        "now" => return Ok(chrono::Utc::now().timestamp_micros()),
        "today" => {
            let now = chrono::Utc::now().timestamp_micros();
            return Ok(now - now.rem_euclid(MICROS_PER_DAY));
        }
        _ => {}
    }
    let (body, zone) = split_zone(s);
    let body = body.replace('T', " ");
    let formats = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ];
    let mut parsed: Option<NaiveDateTime> = None;
    for f in formats {
        if let Ok(v) = NaiveDateTime::parse_from_str(&body, f) {
            parsed = Some(v);
            break;
        }
    }
    let naive = match parsed {
        Some(v) => v,
        None => {
            let d = NaiveDate::parse_from_str(body.trim(), "%Y-%m-%d")
                .map_err(|_| datetime_error(s, ty))?;
            d.and_time(NaiveTime::MIN)
        }
    };
    let micros = naive.and_utc().timestamp_micros();
    let micros = if with_zone {
        micros - zone.unwrap_or(0) * MICROS_PER_SECOND
    } else {
        micros
    };
    if !(MIN_TS_MICROS..=MAX_TS_MICROS).contains(&micros) {
        return Err(SqlError::new(
            sqlstate::DATETIME_FIELD_OVERFLOW,
            format!("timestamp \"{s}\" exceeds supported timestamp bounds"),
        ));
    }
    Ok(micros)
}

pub fn format_date(days: i32) -> String {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a valid date");
    match epoch.checked_add_signed(chrono::Duration::days(i64::from(days))) {
        Some(d) if d.year() > 0 => d.format("%Y-%m-%d").to_string(),
        Some(d) => format!("{:04}-{:02}-{:02} BC", 1 - d.year(), d.month(), d.day()),
        None => days.to_string(),
    }
}

/// `2024-10-24 17:50:05.123456[+00]`; `offset_secs` present for TIMESTAMPTZ.
pub fn format_timestamp(micros: i64, offset_secs: Option<i32>) -> String {
    let shifted = micros + i64::from(offset_secs.unwrap_or(0)) * MICROS_PER_SECOND;
    let Some(dt) = DateTime::from_timestamp_micros(shifted) else {
        return micros.to_string();
    };
    let naive = dt.naive_utc();
    let mut s = naive.format("%Y-%m-%d %H:%M:%S").to_string();
    let frac = naive.nanosecond() / 1000;
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    if let Some(off) = offset_secs {
        let sign = if off < 0 { '-' } else { '+' };
        let a = off.unsigned_abs();
        s.push(sign);
        s.push_str(&format!("{:02}", a / 3600));
        if a % 3600 != 0 {
            s.push_str(&format!(":{:02}", (a % 3600) / 60));
        }
    }
    s
}

fn format_timestamp_iso(micros: i64, zone: bool) -> String {
    match DateTime::from_timestamp_micros(micros) {
        Some(dt) => {
            let base = dt.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string();
            if zone { format!("{base}+00:00") } else { base }
        }
        None => micros.to_string(),
    }
}

/// PostgreSQL float output (shortest round-trip digits, exponent outside 1e-4..1e15).
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let exp = f.abs().log10().floor() as i32;
    if (-5..15).contains(&exp) {
        let s = format!("{f}");
        return s;
    }
    let e = format!("{f:e}");
    match e.split_once('e') {
        Some((m, x)) => {
            let xv: i32 = x.parse().unwrap_or(0);
            format!("{m}e{}{:02}", if xv < 0 { '-' } else { '+' }, xv.abs())
        }
        None => e,
    }
}

/// JSONB text output with PostgreSQL's spacing (`{"a": 1, "b": [1, 2]}`).
pub fn format_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(": ");
                write_json(item, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Wall-clock microseconds of a timestamp value's date part, for date arithmetic.
pub fn date_to_micros(days: i32) -> i64 {
    i64::from(days) * MICROS_PER_DAY
}

/// Adds an interval to a timestamp (months by calendar, days as 24h in UTC).
pub fn add_interval_to_micros(micros: i64, iv: &Interval) -> Option<i64> {
    let mut t = micros;
    if iv.months != 0 {
        let dt = DateTime::from_timestamp_micros(t)?.naive_utc();
        let shifted = if iv.months > 0 {
            dt.checked_add_months(chrono::Months::new(iv.months.unsigned_abs()))?
        } else {
            dt.checked_sub_months(chrono::Months::new(iv.months.unsigned_abs()))?
        };
        t = shifted.and_utc().timestamp_micros();
    }
    t = t.checked_add(i64::from(iv.days).checked_mul(MICROS_PER_DAY)?)?;
    t = t.checked_add(iv.micros)?;
    if !(MIN_TS_MICROS..=MAX_TS_MICROS).contains(&t) {
        return None;
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_across_numeric_types_and_nulls_first() {
        assert_eq!(
            Datum::Int(1).compare(&Datum::Float(1.5)),
            Some(Ordering::Less)
        );
        assert_eq!(
            Datum::Decimal(Decimal::new(15, 1)).compare(&Datum::Int(1)),
            Some(Ordering::Greater)
        );
        assert_eq!(Datum::Int(1).compare(&Datum::Null), None);
        assert_eq!(Datum::Null.sort_cmp(&Datum::Int(-5)), Ordering::Less);
        assert_eq!(
            Datum::Float(f64::NAN).sort_cmp(&Datum::Float(f64::NEG_INFINITY)),
            Ordering::Less
        );
        assert_eq!(Datum::Float(-0.0), Datum::Float(0.0));
        assert_eq!(
            Datum::Decimal(Decimal::new(10, 1)),
            Datum::Decimal(Decimal::new(100, 2))
        );
        assert_eq!(Datum::String("a".into()).compare(&Datum::Int(1)), None);
    }

    #[test]
    fn text_round_trips_per_type() {
        let cases: Vec<(SqlType, &str)> = vec![
            (SqlType::Int8, "-42"),
            (SqlType::Bool, "t"),
            (SqlType::Float8, "1.5"),
            (SqlType::Float8, "1e+21"),
            (SqlType::Float8, "1e-07"),
            (SqlType::DECIMAL, "123.450"),
            (SqlType::String, "hello"),
            (SqlType::Bytes, "\\x00ff"),
            (SqlType::Date, "2024-10-24"),
            (SqlType::Timestamp, "2024-10-24 17:50:05.123456"),
            (SqlType::TimestampTz, "2024-10-24 17:50:05+00"),
            (SqlType::Interval, "1 day 02:00:00"),
            (SqlType::Uuid, "3fa85f64-5717-4562-b3fc-2c963f66afa6"),
            (SqlType::Jsonb, "{\"a\": 1, \"b\": [true, null]}"),
        ];
        for (ty, text) in cases {
            let d = Datum::parse_text(text, &ty).unwrap_or_else(|e| panic!("{ty} {text}: {e}"));
            assert_eq!(d.to_text(0).as_deref(), Some(text), "{ty}");
        }
    }

    #[test]
    fn bad_input_is_22p02_and_ranges_are_22003() {
        assert_eq!(
            Datum::parse_text("abc", &SqlType::Int8)
                .expect_err("not an int")
                .code(),
            "22P02"
        );
        assert_eq!(
            Datum::parse_text("xyz", &SqlType::Uuid)
                .expect_err("not a uuid")
                .code(),
            "22P02"
        );
        assert_eq!(
            Datum::parse_text("{", &SqlType::Jsonb)
                .expect_err("not json")
                .code(),
            "22P02"
        );
        assert_eq!(
            Datum::parse_text("99999999999", &SqlType::Int4)
                .expect_err("too big")
                .code(),
            "22003"
        );
        assert_eq!(
            Datum::parse_text("99999999999999999999", &SqlType::Int8)
                .expect_err("too big")
                .code(),
            "22003"
        );
        assert_eq!(
            Datum::Int(40000)
                .assign_to(&SqlType::Int2)
                .expect_err("int2")
                .code(),
            "22003"
        );
        let d = Datum::parse_text(
            "12.345",
            &SqlType::Decimal {
                precision: Some(5),
                scale: Some(2),
            },
        )
        .expect("fits");
        assert_eq!(d.to_text(0).as_deref(), Some("12.35"));
        let e = Datum::parse_text(
            "12345.6",
            &SqlType::Decimal {
                precision: Some(5),
                scale: Some(2),
            },
        )
        .expect_err("too wide");
        assert_eq!(e.code(), "22003");
        let e = Datum::String("abcd".into())
            .assign_to(&SqlType::Varchar { width: Some(3) })
            .expect_err("too long");
        assert_eq!(e.code(), "22001");
        assert_eq!(
            Datum::parse_text("2024-13-01", &SqlType::Date)
                .expect_err("bad month")
                .code(),
            "22007"
        );
    }

    #[test]
    fn timestamps_with_zones() {
        let a = parse_timestamp("2024-01-01 10:00:00+02", true).expect("with offset");
        let b = parse_timestamp("2024-01-01T08:00:00Z", true).expect("zulu");
        assert_eq!(a, b);
        let c = parse_timestamp("2024-01-01 10:00:00+02", false).expect("offset ignored");
        assert_eq!(c - a, 2 * 3600 * MICROS_PER_SECOND);
        assert_eq!(format_timestamp(b, Some(3600)), "2024-01-01 09:00:00+01");
        assert_eq!(format_date(-1), "1969-12-31");
        let next = add_interval_to_micros(b, &Interval::new(1, 1, 0)).expect("in range");
        assert_eq!(format_timestamp(next, Some(0)), "2024-02-02 08:00:00+00");
    }

    #[test]
    fn casts() {
        assert_eq!(
            Datum::Float(2.5).cast(&SqlType::Int8).expect("cast"),
            Datum::Int(2)
        );
        assert_eq!(
            Datum::Float(3.5).cast(&SqlType::Int8).expect("cast"),
            Datum::Int(4)
        );
        assert_eq!(
            Datum::Int(7).cast(&SqlType::String).expect("cast"),
            Datum::String("7".into())
        );
        assert_eq!(
            Datum::String("12".into())
                .cast(&SqlType::Int4)
                .expect("cast"),
            Datum::Int(12)
        );
        assert!(Datum::Bool(true).cast(&SqlType::Uuid).is_err());
        assert_eq!(
            format_json(&serde_json::json!({"b": 1, "a": [1, "x"]})),
            "{\"a\": [1, \"x\"], \"b\": 1}"
        );
        assert_eq!(
            Datum::Int(5)
                .coerce_for_column(&SqlType::DECIMAL, "d")
                .expect("int→decimal"),
            Datum::Decimal(Decimal::from(5))
        );
        assert_eq!(
            Datum::Bool(true)
                .coerce_for_column(&SqlType::Int8, "i")
                .expect_err("bool→int")
                .code(),
            "42804"
        );
    }
}
