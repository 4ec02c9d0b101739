//! PostgreSQL wire formats of values: text (what psql shows) and binary (what
//! tokio-postgres asks for), for result columns and for bound parameters.

use rust_decimal::Decimal;
use std::str::FromStr;

use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::interval::Interval;
use crate::types::{SqlType, TypeFamily};

/// Days between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_DAYS: i64 = 10_957;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400_000_000;

fn bad_binary(ty: &SqlType) -> SqlError {
    SqlError::new(
        sqlstate::PROTOCOL_VIOLATION,
        format!("invalid binary value for type {}", ty.sql_name()),
    )
}

/// Encodes a non-NULL value of a column of type `ty` (text or binary). `None` for NULL.
pub fn encode(
    d: &Datum,
    ty: &SqlType,
    binary: bool,
    tz_offset_secs: i32,
) -> Result<Option<Vec<u8>>> {
    if d.is_null() {
        return Ok(None);
    }
    if !binary {
        return Ok(d.to_text(tz_offset_secs).map(String::into_bytes));
    }
    // Values normally have their column's family; convert if an expression did not.
    let own = d.natural_type().family();
    let converted;
    let d = if own != ty.family() && ty.family() != TypeFamily::Unknown {
        converted = d.cast(ty)?;
        &converted
    } else {
        d
    };
    Ok(Some(match (ty, d) {
        (SqlType::Bool, Datum::Bool(b)) => vec![u8::from(*b)],
        (SqlType::Int2, Datum::Int(i)) => (*i as i16).to_be_bytes().to_vec(),
        (SqlType::Int4, Datum::Int(i)) => (*i as i32).to_be_bytes().to_vec(),
        (_, Datum::Int(i)) => i.to_be_bytes().to_vec(),
        (SqlType::Float4, Datum::Float(f)) => (*f as f32).to_be_bytes().to_vec(),
        (_, Datum::Float(f)) => f.to_be_bytes().to_vec(),
        (_, Datum::Decimal(v)) => encode_numeric(v),
        (_, Datum::String(s)) => s.as_bytes().to_vec(),
        (_, Datum::Bytes(b)) => b.clone(),
        (_, Datum::Date(days)) => ((i64::from(*days) - PG_EPOCH_DAYS) as i32)
            .to_be_bytes()
            .to_vec(),
        (_, Datum::Timestamp(t)) | (_, Datum::TimestampTz(t)) => {
            (t - PG_EPOCH_MICROS).to_be_bytes().to_vec()
        }
        (_, Datum::Interval(iv)) => {
            let mut out = Vec::with_capacity(16);
            out.extend_from_slice(&iv.micros.to_be_bytes());
            out.extend_from_slice(&iv.days.to_be_bytes());
            out.extend_from_slice(&iv.months.to_be_bytes());
            out
        }
        (_, Datum::Uuid(u)) => u.to_vec(),
        (_, Datum::Json(j)) => {
            let mut out = vec![1u8];
            out.extend_from_slice(serde_json::to_string(j).unwrap_or_default().as_bytes());
            out
        }
        (_, Datum::Bool(b)) => vec![u8::from(*b)],
        (_, Datum::Null) => return Ok(None),
    }))
}

/// PostgreSQL's binary NUMERIC: ndigits, weight, sign, dscale, base-10000 digits.
pub fn encode_numeric(v: &Decimal) -> Vec<u8> {
    let scale = v.scale() as u16;
    let negative = v.is_sign_negative() && !v.is_zero();
    let text = v.abs().to_string();
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i.to_string(), f.to_string()),
        None => (text.clone(), String::new()),
    };
    let int_part = int_part.trim_start_matches('0').to_string();
    let mut int_padded = "0".repeat((4 - int_part.len() % 4) % 4);
    int_padded.push_str(&int_part);
    let mut frac_padded = frac_part.clone();
    while frac_padded.len() % 4 != 0 {
        frac_padded.push('0');
    }
    let mut groups: Vec<i16> = Vec::new();
    for chunk in int_padded.as_bytes().chunks(4) {
        groups.push(
            std::str::from_utf8(chunk)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        );
    }
    let int_groups = groups.len() as i16;
    for chunk in frac_padded.as_bytes().chunks(4) {
        groups.push(
            std::str::from_utf8(chunk)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        );
    }
    let mut weight = int_groups - 1;
    // Strip leading zero groups (adjusting the weight) and trailing zero groups.
    let mut start = 0;
    while start < groups.len() && groups[start] == 0 {
        start += 1;
        weight -= 1;
    }
    let mut end = groups.len();
    while end > start && groups[end - 1] == 0 {
        end -= 1;
    }
    let digits = &groups[start..end];
    let mut out = Vec::with_capacity(8 + digits.len() * 2);
    if digits.is_empty() {
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&scale.to_be_bytes());
        return out;
    }
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&scale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

pub fn decode_numeric(b: &[u8]) -> Option<Decimal> {
    if b.len() < 8 {
        return None;
    }
    let rd = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
    // Outside input (a client's binary parameter): a count is unsigned, digits are base
    // 10000, the sign is one of two values; anything else is not a numeric.
    let ndigits = usize::from(u16::from_be_bytes([b[0], b[1]]));
    let weight = rd(2) as i32;
    let sign = u16::from_be_bytes([b[4], b[5]]);
    let dscale = u16::from_be_bytes([b[6], b[7]]) as usize;
    if sign != 0 && sign != 0x4000 {
        return None; // NaN (0xC000) or garbage
    }
    if b.len() < 8 + ndigits * 2 {
        return None;
    }
    let digits: Vec<i16> = (0..ndigits).map(|i| rd(8 + i * 2)).collect();
    if digits.iter().any(|d| !(0..10_000).contains(d)) {
        return None;
    }
    let mut int_part = String::new();
    let mut frac_part = String::new();
    for (i, d) in digits.iter().enumerate() {
        let pos = weight - i as i32;
        let s = format!("{:04}", d);
        if pos >= 0 {
            int_part.push_str(&s);
        } else {
            frac_part.push_str(&s);
        }
    }
    // Missing integer groups after the last digit (weight beyond ndigits).
    let last_pos = weight - ndigits as i32 + 1;
    if last_pos > 0 {
        for _ in 0..last_pos {
            int_part.push_str("0000");
        }
    }
    // Leading fractional zero groups.
    if weight < -1 {
        let zeros = "0000".repeat((-weight - 1) as usize);
        frac_part = zeros + &frac_part;
    }
    let int_part = int_part.trim_start_matches('0');
    let int_part = if int_part.is_empty() { "0" } else { int_part };
    let mut frac = frac_part;
    if frac.len() > dscale {
        frac.truncate(dscale);
    } else {
        while frac.len() < dscale {
            frac.push('0');
        }
    }
    let text = if frac.is_empty() {
        int_part.to_string()
    } else {
        format!("{int_part}.{frac}")
    };
    let v = Decimal::from_str(&text).ok()?;
    Some(if sign == 0x4000 { -v } else { v })
}

/// Decodes a bound parameter of type `ty`.
pub fn decode_param(bytes: &[u8], ty: &SqlType, binary: bool) -> Result<Datum> {
    if !binary {
        let s = std::str::from_utf8(bytes).map_err(|_| {
            SqlError::new(sqlstate::PROTOCOL_VIOLATION, "invalid UTF-8 in parameter")
        })?;
        return Datum::parse_text(s, ty);
    }
    let fixed = |n: usize| -> Result<&[u8]> {
        if bytes.len() == n {
            Ok(bytes)
        } else {
            Err(bad_binary(ty))
        }
    };
    match ty.family() {
        TypeFamily::Bool => Datum::Bool(fixed(1)?[0] != 0),
        TypeFamily::Int => match bytes.len() {
            2 => Datum::Int(i64::from(i16::from_be_bytes([bytes[0], bytes[1]]))),
            4 => Datum::Int(i64::from(i32::from_be_bytes([
                bytes[0], bytes[1], bytes[2], bytes[3],
            ]))),
            8 => Datum::Int(i64::from_be_bytes(
                bytes.try_into().map_err(|_| bad_binary(ty))?,
            )),
            _ => return Err(bad_binary(ty)),
        },
        TypeFamily::Float => match bytes.len() {
            4 => Datum::Float(f64::from(f32::from_be_bytes(
                bytes.try_into().map_err(|_| bad_binary(ty))?,
            ))),
            8 => Datum::Float(f64::from_be_bytes(
                bytes.try_into().map_err(|_| bad_binary(ty))?,
            )),
            _ => return Err(bad_binary(ty)),
        },
        TypeFamily::Decimal => Datum::Decimal(decode_numeric(bytes).ok_or_else(|| bad_binary(ty))?),
        TypeFamily::String | TypeFamily::Unknown => {
            Datum::String(String::from_utf8(bytes.to_vec()).map_err(|_| {
                SqlError::new(sqlstate::PROTOCOL_VIOLATION, "invalid UTF-8 in parameter")
            })?)
        }
        TypeFamily::Bytes => Datum::Bytes(bytes.to_vec()),
        TypeFamily::Date => Datum::Date(
            (i64::from(i32::from_be_bytes(
                fixed(4)?.try_into().map_err(|_| bad_binary(ty))?,
            )) + PG_EPOCH_DAYS) as i32,
        ),
        TypeFamily::Timestamp => Datum::Timestamp(
            i64::from_be_bytes(fixed(8)?.try_into().map_err(|_| bad_binary(ty))?) + PG_EPOCH_MICROS,
        ),
        TypeFamily::TimestampTz => Datum::TimestampTz(
            i64::from_be_bytes(fixed(8)?.try_into().map_err(|_| bad_binary(ty))?) + PG_EPOCH_MICROS,
        ),
        TypeFamily::Interval => {
            let b = fixed(16)?;
            let micros = i64::from_be_bytes(b[..8].try_into().map_err(|_| bad_binary(ty))?);
            let days = i32::from_be_bytes(b[8..12].try_into().map_err(|_| bad_binary(ty))?);
            let months = i32::from_be_bytes(b[12..16].try_into().map_err(|_| bad_binary(ty))?);
            Datum::Interval(Interval::new(months, days, micros))
        }
        TypeFamily::Uuid => {
            let mut u = [0u8; 16];
            u.copy_from_slice(fixed(16)?);
            Datum::Uuid(u)
        }
        TypeFamily::Jsonb => {
            let body = match bytes.first() {
                Some(1) => &bytes[1..],
                _ => bytes,
            };
            Datum::Json(serde_json::from_slice(body).map_err(|e| {
                SqlError::new(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    format!("could not parse JSON: {e}"),
                )
            })?)
        }
    }
    .assign_to(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_round_trips() {
        for s in [
            "0",
            "1",
            "-1",
            "10000",
            "12345.6789",
            "0.0001",
            "0.00012",
            "1.50",
            "-99999999.99",
            "123456789012345678.123",
            "0.000",
            "100000000",
        ] {
            let d = Decimal::from_str(s).expect("decimal");
            let enc = encode_numeric(&d);
            let back = decode_numeric(&enc).unwrap_or_else(|| panic!("decode {s}"));
            assert_eq!(back.to_string(), d.to_string(), "{s}");
        }
        // 12345.6789: two groups before the point, one after.
        let enc = encode_numeric(&Decimal::from_str("12345.6789").expect("decimal"));
        assert_eq!(&enc[..8], &[0, 3, 0, 1, 0, 0, 0, 4]);
    }

    #[test]
    fn binary_params_and_results_round_trip() {
        let cases = vec![
            (SqlType::Int8, Datum::Int(-5)),
            (SqlType::Int4, Datum::Int(7)),
            (SqlType::Int2, Datum::Int(3)),
            (SqlType::Float8, Datum::Float(1.25)),
            (SqlType::Float4, Datum::Float(0.5)),
            (SqlType::Bool, Datum::Bool(true)),
            (SqlType::String, Datum::String("héllo".into())),
            (SqlType::Bytes, Datum::Bytes(vec![0, 1, 255])),
            (SqlType::Date, Datum::Date(19_000)),
            (SqlType::Timestamp, Datum::Timestamp(1_700_000_000_123_456)),
            (SqlType::TimestampTz, Datum::TimestampTz(-5)),
            (SqlType::Interval, Datum::Interval(Interval::new(1, 2, 3))),
            (SqlType::Uuid, Datum::Uuid([7; 16])),
            (SqlType::Jsonb, Datum::Json(serde_json::json!({"a": [1]}))),
            (
                SqlType::DECIMAL,
                Datum::Decimal(Decimal::from_str("-12.340").expect("decimal")),
            ),
        ];
        for (ty, d) in cases {
            let bin = encode(&d, &ty, true, 0)
                .expect("encodes")
                .expect("not null");
            let back = decode_param(&bin, &ty, true).expect("decodes");
            assert_eq!(back.to_text(0), d.to_text(0), "{ty}");
            let text = encode(&d, &ty, false, 0)
                .expect("encodes")
                .expect("not null");
            let back = decode_param(&text, &ty, false).expect("decodes text");
            assert_eq!(back.to_text(0), d.to_text(0), "{ty} text");
        }
        assert_eq!(
            encode(&Datum::Null, &SqlType::Int8, true, 0).expect("null"),
            None
        );
        assert!(decode_param(&[1, 2, 3], &SqlType::Int8, true).is_err());
    }
}
