//! Byte encodings of values.
//!
//! *Key encoding* is order-preserving: for two values of one type, the byte order of their
//! encodings equals [`Datum::sort_cmp`] (NULL first), and a sequence of encoded values is
//! self-delimiting, so composite keys compare column by column. Equal values (`1.0` and
//! `1.00`) encode identically, which also makes key bytes usable for hashing and grouping.
//! JSONB is encoded (canonical text) but not order-preserving; it is rejected as an index
//! column.
//!
//! *Value encoding* is the row body stored under the primary key: a version byte, then
//! `(column id, type tag, payload)` for every column (NULL has a tag of its own). Column ids instead of
//! positions let ADD/DROP COLUMN work without rewriting rows: unknown ids are skipped and
//! missing ids read as the column's absent value (its ADD COLUMN default, or NULL).

use rust_decimal::Decimal;

use crate::datum::Datum;
use crate::error::{Result, SqlError};
use crate::interval::Interval;
use crate::types::{SqlType, TypeFamily};

const KEY_NULL: u8 = 0x00;
const KEY_PRESENT: u8 = 0x02;
const ESCAPE: u8 = 0x00;
const ESCAPED_00: u8 = 0xff;
const TERMINATOR: u8 = 0x01;

fn corrupt(what: &str) -> SqlError {
    SqlError::internal(format!("corrupt encoding: {what}"))
}

/// Appends the order-preserving encoding of `d` (of type `ty`).
pub fn encode_key(out: &mut Vec<u8>, d: &Datum) {
    match d {
        Datum::Null => out.push(KEY_NULL),
        _ => {
            out.push(KEY_PRESENT);
            encode_key_payload(out, d);
        }
    }
}

fn encode_key_payload(out: &mut Vec<u8>, d: &Datum) {
    match d {
        Datum::Null => {}
        Datum::Bool(b) => out.push(u8::from(*b)),
        Datum::Int(i) => out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes()),
        Datum::Float(f) => out.extend_from_slice(&float_key(*f).to_be_bytes()),
        Datum::Decimal(v) => encode_decimal_key(out, v),
        Datum::String(s) => encode_bytes_key(out, s.as_bytes()),
        Datum::Bytes(b) => encode_bytes_key(out, b),
        Datum::Date(v) => {
            out.extend_from_slice(&((i64::from(*v) as u64) ^ (1 << 63)).to_be_bytes())
        }
        Datum::Timestamp(v) | Datum::TimestampTz(v) => {
            out.extend_from_slice(&((*v as u64) ^ (1 << 63)).to_be_bytes())
        }
        Datum::Interval(iv) => {
            out.extend_from_slice(&((iv.total_micros() as u128) ^ (1 << 127)).to_be_bytes())
        }
        Datum::Uuid(u) => out.extend_from_slice(u),
        Datum::Json(j) => encode_bytes_key(out, crate::datum::format_json(j).as_bytes()),
    }
}

fn float_key(f: f64) -> u64 {
    if f.is_nan() {
        return 0;
    }
    let f = if f == 0.0 { 0.0 } else { f };
    let bits = f.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

fn float_from_key(k: u64) -> f64 {
    if k == 0 {
        return f64::NAN;
    }
    if k >> 63 == 1 {
        f64::from_bits(k & !(1 << 63))
    } else {
        f64::from_bits(!k)
    }
}

fn encode_bytes_key(out: &mut Vec<u8>, b: &[u8]) {
    for &c in b {
        if c == ESCAPE {
            out.push(ESCAPE);
            out.push(ESCAPED_00);
        } else {
            out.push(c);
        }
    }
    out.push(ESCAPE);
    out.push(TERMINATOR);
}

fn decode_bytes_key(buf: &[u8]) -> Result<(Vec<u8>, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == ESCAPE {
            match buf.get(i + 1) {
                Some(&ESCAPED_00) => {
                    out.push(0);
                    i += 2;
                }
                Some(&TERMINATOR) => return Ok((out, &buf[i + 2..])),
                _ => return Err(corrupt("bad escape in key bytes")),
            }
        } else {
            out.push(buf[i]);
            i += 1;
        }
    }
    Err(corrupt("unterminated key bytes"))
}

/// Sign class, then for nonzero values the exponent `e` (value = 0.d1d2… × 10^e) and the
/// significant digits (1..=10 per byte, terminated by 0); negatives are the complement.
fn encode_decimal_key(out: &mut Vec<u8>, v: &Decimal) {
    let v = v.normalize();
    if v.is_zero() {
        out.push(0x02);
        return;
    }
    let negative = v.is_sign_negative();
    let mantissa = v.mantissa().unsigned_abs();
    let digits = mantissa.to_string();
    let exponent = digits.len() as i32 - v.scale() as i32;
    let mut body = Vec::with_capacity(digits.len() + 5);
    body.extend_from_slice(&((exponent as u32) ^ (1 << 31)).to_be_bytes());
    for c in digits.bytes() {
        body.push(c - b'0' + 1);
    }
    body.push(0);
    if negative {
        out.push(0x01);
        out.extend(body.iter().map(|b| !b));
    } else {
        out.push(0x03);
        out.extend_from_slice(&body);
    }
}

fn decode_decimal_key(buf: &[u8]) -> Result<(Decimal, &[u8])> {
    let (&class, rest) = buf.split_first().ok_or_else(|| corrupt("empty decimal"))?;
    if class == 0x02 {
        return Ok((Decimal::ZERO, rest));
    }
    let negative = match class {
        0x01 => true,
        0x03 => false,
        _ => return Err(corrupt("bad decimal class")),
    };
    let flip = |b: u8| if negative { !b } else { b };
    if rest.len() < 5 {
        return Err(corrupt("short decimal"));
    }
    let mut eb = [0u8; 4];
    for (i, b) in rest[..4].iter().enumerate() {
        eb[i] = flip(*b);
    }
    let exponent = (u32::from_be_bytes(eb) ^ (1 << 31)) as i32;
    let mut digits = String::new();
    let mut i = 4;
    loop {
        let b = flip(*rest.get(i).ok_or_else(|| corrupt("unterminated decimal"))?);
        i += 1;
        if b == 0 {
            break;
        }
        if !(1..=10).contains(&b) {
            return Err(corrupt("bad decimal digit"));
        }
        digits.push(char::from(b'0' + b - 1));
    }
    let mut mantissa: i128 = digits.parse().map_err(|_| corrupt("decimal digits"))?;
    let mut scale = digits.len() as i32 - exponent;
    while scale < 0 {
        mantissa = mantissa
            .checked_mul(10)
            .ok_or_else(|| corrupt("decimal overflow"))?;
        scale += 1;
    }
    if negative {
        mantissa = -mantissa;
    }
    let v = Decimal::try_from_i128_with_scale(mantissa, scale as u32)
        .map_err(|_| corrupt("decimal range"))?;
    Ok((v, &rest[i..]))
}

fn take<const N: usize>(buf: &[u8]) -> Result<([u8; N], &[u8])> {
    if buf.len() < N {
        return Err(corrupt("short key"));
    }
    let mut a = [0u8; N];
    a.copy_from_slice(&buf[..N]);
    Ok((a, &buf[N..]))
}

/// Decodes one key-encoded value of type `ty`, returning the rest of the buffer.
pub fn decode_key<'a>(buf: &'a [u8], ty: &SqlType) -> Result<(Datum, &'a [u8])> {
    let (&marker, rest) = buf.split_first().ok_or_else(|| corrupt("empty key"))?;
    if marker == KEY_NULL {
        return Ok((Datum::Null, rest));
    }
    if marker != KEY_PRESENT {
        return Err(corrupt("bad key marker"));
    }
    Ok(match ty.family() {
        TypeFamily::Bool => {
            let (b, r) = take::<1>(rest)?;
            (Datum::Bool(b[0] != 0), r)
        }
        TypeFamily::Int => {
            let (b, r) = take::<8>(rest)?;
            (Datum::Int((u64::from_be_bytes(b) ^ (1 << 63)) as i64), r)
        }
        TypeFamily::Float => {
            let (b, r) = take::<8>(rest)?;
            (Datum::Float(float_from_key(u64::from_be_bytes(b))), r)
        }
        TypeFamily::Decimal => {
            let (d, r) = decode_decimal_key(rest)?;
            (Datum::Decimal(d), r)
        }
        TypeFamily::String | TypeFamily::Unknown => {
            let (b, r) = decode_bytes_key(rest)?;
            (
                Datum::String(String::from_utf8(b).map_err(|_| corrupt("utf8"))?),
                r,
            )
        }
        TypeFamily::Bytes => {
            let (b, r) = decode_bytes_key(rest)?;
            (Datum::Bytes(b), r)
        }
        TypeFamily::Date => {
            let (b, r) = take::<8>(rest)?;
            (
                Datum::Date((u64::from_be_bytes(b) ^ (1 << 63)) as i64 as i32),
                r,
            )
        }
        TypeFamily::Timestamp => {
            let (b, r) = take::<8>(rest)?;
            (
                Datum::Timestamp((u64::from_be_bytes(b) ^ (1 << 63)) as i64),
                r,
            )
        }
        TypeFamily::TimestampTz => {
            let (b, r) = take::<8>(rest)?;
            (
                Datum::TimestampTz((u64::from_be_bytes(b) ^ (1 << 63)) as i64),
                r,
            )
        }
        TypeFamily::Interval => {
            let (b, r) = take::<16>(rest)?;
            let total = (u128::from_be_bytes(b) ^ (1 << 127)) as i128;
            let micros = i64::try_from(total).map_err(|_| corrupt("interval"))?;
            (Datum::Interval(Interval::new(0, 0, micros)), r)
        }
        TypeFamily::Uuid => {
            let (b, r) = take::<16>(rest)?;
            (Datum::Uuid(b), r)
        }
        TypeFamily::Jsonb => {
            let (b, r) = decode_bytes_key(rest)?;
            (
                Datum::Json(serde_json::from_slice(&b).map_err(|_| corrupt("json"))?),
                r,
            )
        }
    })
}

/// Encodes several values as one key suffix.
pub fn encode_key_tuple<'a>(values: impl IntoIterator<Item = &'a Datum>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        encode_key(&mut out, v);
    }
    out
}

// ---- value encoding ----

const VALUE_VERSION: u8 = 1;
const TAG_NULL: u8 = 0;
const TAG_BOOL: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_FLOAT: u8 = 3;
const TAG_DECIMAL: u8 = 4;
const TAG_STRING: u8 = 5;
const TAG_BYTES: u8 = 6;
const TAG_DATE: u8 = 7;
const TAG_TIMESTAMP: u8 = 8;
const TAG_TIMESTAMPTZ: u8 = 9;
const TAG_INTERVAL: u8 = 10;
const TAG_UUID: u8 = 11;
const TAG_JSON: u8 = 12;

pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn get_uvarint(buf: &[u8]) -> Result<(u64, &[u8])> {
    let mut v: u64 = 0;
    for (i, b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, &buf[i + 1..]));
        }
    }
    Err(corrupt("varint"))
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn get_varint(buf: &[u8]) -> Result<(i64, &[u8])> {
    let (u, r) = get_uvarint(buf)?;
    Ok((((u >> 1) as i64) ^ -((u & 1) as i64), r))
}

fn put_len_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn get_len_bytes(buf: &[u8]) -> Result<(&[u8], &[u8])> {
    let (n, r) = get_uvarint(buf)?;
    let n = usize::try_from(n).map_err(|_| corrupt("length"))?;
    if r.len() < n {
        return Err(corrupt("short value"));
    }
    Ok((&r[..n], &r[n..]))
}

/// Encodes a row body from `(column id, value)` pairs. NULLs are stored explicitly, so a
/// NULL written after an ADD COLUMN is distinguishable from a row that predates the column.
pub fn encode_value<'a>(columns: impl IntoIterator<Item = (u32, &'a Datum)>) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    for (id, d) in columns {
        put_uvarint(&mut out, u64::from(id));
        match d {
            Datum::Null => out.push(TAG_NULL),
            Datum::Bool(b) => {
                out.push(TAG_BOOL);
                out.push(u8::from(*b));
            }
            Datum::Int(i) => {
                out.push(TAG_INT);
                put_varint(&mut out, *i);
            }
            Datum::Float(f) => {
                out.push(TAG_FLOAT);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            Datum::Decimal(v) => {
                out.push(TAG_DECIMAL);
                out.extend_from_slice(&v.serialize());
            }
            Datum::String(s) => {
                out.push(TAG_STRING);
                put_len_bytes(&mut out, s.as_bytes());
            }
            Datum::Bytes(b) => {
                out.push(TAG_BYTES);
                put_len_bytes(&mut out, b);
            }
            Datum::Date(v) => {
                out.push(TAG_DATE);
                put_varint(&mut out, i64::from(*v));
            }
            Datum::Timestamp(v) => {
                out.push(TAG_TIMESTAMP);
                put_varint(&mut out, *v);
            }
            Datum::TimestampTz(v) => {
                out.push(TAG_TIMESTAMPTZ);
                put_varint(&mut out, *v);
            }
            Datum::Interval(iv) => {
                out.push(TAG_INTERVAL);
                put_varint(&mut out, i64::from(iv.months));
                put_varint(&mut out, i64::from(iv.days));
                put_varint(&mut out, iv.micros);
            }
            Datum::Uuid(u) => {
                out.push(TAG_UUID);
                out.extend_from_slice(u);
            }
            Datum::Json(j) => {
                out.push(TAG_JSON);
                put_len_bytes(
                    &mut out,
                    serde_json::to_string(j).unwrap_or_default().as_bytes(),
                );
            }
        }
    }
    out
}

/// Decodes a row body into `(column id, value)` pairs in stored order.
pub fn decode_value(buf: &[u8]) -> Result<Vec<(u32, Datum)>> {
    let (&version, mut rest) = buf
        .split_first()
        .ok_or_else(|| corrupt("empty row value"))?;
    if version != VALUE_VERSION {
        return Err(corrupt("unknown row value version"));
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (id, r) = get_uvarint(rest)?;
        let (&tag, r) = r.split_first().ok_or_else(|| corrupt("missing tag"))?;
        let (d, r) = match tag {
            TAG_NULL => (Datum::Null, r),
            TAG_BOOL => {
                let (b, r) = take::<1>(r)?;
                (Datum::Bool(b[0] != 0), r)
            }
            TAG_INT => {
                let (v, r) = get_varint(r)?;
                (Datum::Int(v), r)
            }
            TAG_FLOAT => {
                let (b, r) = take::<8>(r)?;
                (Datum::Float(f64::from_bits(u64::from_be_bytes(b))), r)
            }
            TAG_DECIMAL => {
                let (b, r) = take::<16>(r)?;
                (Datum::Decimal(Decimal::deserialize(b)), r)
            }
            TAG_STRING => {
                let (b, r) = get_len_bytes(r)?;
                (
                    Datum::String(String::from_utf8(b.to_vec()).map_err(|_| corrupt("utf8"))?),
                    r,
                )
            }
            TAG_BYTES => {
                let (b, r) = get_len_bytes(r)?;
                (Datum::Bytes(b.to_vec()), r)
            }
            TAG_DATE => {
                let (v, r) = get_varint(r)?;
                (
                    Datum::Date(i32::try_from(v).map_err(|_| corrupt("date"))?),
                    r,
                )
            }
            TAG_TIMESTAMP => {
                let (v, r) = get_varint(r)?;
                (Datum::Timestamp(v), r)
            }
            TAG_TIMESTAMPTZ => {
                let (v, r) = get_varint(r)?;
                (Datum::TimestampTz(v), r)
            }
            TAG_INTERVAL => {
                let (m, r) = get_varint(r)?;
                let (d, r) = get_varint(r)?;
                let (u, r) = get_varint(r)?;
                let iv = Interval::new(
                    i32::try_from(m).map_err(|_| corrupt("interval"))?,
                    i32::try_from(d).map_err(|_| corrupt("interval"))?,
                    u,
                );
                (Datum::Interval(iv), r)
            }
            TAG_UUID => {
                let (b, r) = take::<16>(r)?;
                (Datum::Uuid(b), r)
            }
            TAG_JSON => {
                let (b, r) = get_len_bytes(r)?;
                (
                    Datum::Json(serde_json::from_slice(b).map_err(|_| corrupt("json"))?),
                    r,
                )
            }
            _ => return Err(corrupt("unknown value tag")),
        };
        out.push((u32::try_from(id).map_err(|_| corrupt("column id"))?, d));
        rest = r;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_datum(ty: u8) -> BoxedStrategy<Datum> {
        let non_null: BoxedStrategy<Datum> = match ty {
            0 => any::<bool>().prop_map(Datum::Bool).boxed(),
            1 => any::<i64>().prop_map(Datum::Int).boxed(),
            2 => prop_oneof![
                any::<f64>().prop_map(Datum::Float),
                Just(Datum::Float(f64::NAN)),
                Just(Datum::Float(-0.0)),
                Just(Datum::Float(f64::INFINITY)),
                Just(Datum::Float(f64::NEG_INFINITY)),
            ]
            .boxed(),
            3 => (any::<i64>(), 0u32..12)
                .prop_map(|(m, s)| Datum::Decimal(Decimal::new(m, s)))
                .boxed(),
            4 => ".{0,8}".prop_map(Datum::String).boxed(),
            5 => proptest::collection::vec(
                prop_oneof![Just(0u8), Just(1u8), Just(255u8), any::<u8>()],
                0..8,
            )
            .prop_map(Datum::Bytes)
            .boxed(),
            6 => (-1_000_000i32..1_000_000).prop_map(Datum::Date).boxed(),
            7 => any::<i64>().prop_map(Datum::Timestamp).boxed(),
            8 => any::<i64>().prop_map(Datum::TimestampTz).boxed(),
            9 => (-1000i64..1000i64)
                .prop_map(|d| Datum::Interval(Interval::new(0, 0, d * 7919)))
                .boxed(),
            _ => any::<[u8; 16]>().prop_map(Datum::Uuid).boxed(),
        };
        prop_oneof![1 => Just(Datum::Null), 9 => non_null].boxed()
    }

    fn ty_of(ty: u8) -> SqlType {
        match ty {
            0 => SqlType::Bool,
            1 => SqlType::Int8,
            2 => SqlType::Float8,
            3 => SqlType::DECIMAL,
            4 => SqlType::String,
            5 => SqlType::Bytes,
            6 => SqlType::Date,
            7 => SqlType::Timestamp,
            8 => SqlType::TimestampTz,
            9 => SqlType::Interval,
            _ => SqlType::Uuid,
        }
    }

    fn pair() -> impl Strategy<Value = (u8, Datum, Datum, Datum)> {
        (0u8..11).prop_flat_map(|t| (Just(t), arb_datum(t), arb_datum(t), arb_datum(t)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Key order equals datum order, for every type, also as the first of two columns.
        #[test]
        fn key_order_matches_datum_order((t, a, b, c) in pair()) {
            let ea = encode_key_tuple([&a]);
            let eb = encode_key_tuple([&b]);
            prop_assert_eq!(ea.cmp(&eb), a.sort_cmp(&b), "{:?} vs {:?}", a, b);
            // Self-delimiting: a trailing column never changes the order of distinct values.
            let eac = encode_key_tuple([&a, &c]);
            let ebc = encode_key_tuple([&b, &c]);
            if a.sort_cmp(&b) != std::cmp::Ordering::Equal {
                prop_assert_eq!(eac.cmp(&ebc), a.sort_cmp(&b));
            }
            // Round trip (decimals and intervals come back normalized but equal).
            let ty = ty_of(t);
            let (back, rest) = decode_key(&eac, &ty).expect("decodes");
            prop_assert_eq!(back.sort_cmp(&a), std::cmp::Ordering::Equal);
            let (back_c, rest) = decode_key(rest, &ty).expect("decodes second");
            prop_assert_eq!(back_c.sort_cmp(&c), std::cmp::Ordering::Equal);
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn values_round_trip_exactly((_t, a, b, c) in pair()) {
            let enc = encode_value([(1, &a), (7, &b), (300, &c)]);
            let dec = decode_value(&enc).expect("decodes");
            let want: Vec<(u32, &Datum)> = vec![(1, &a), (7, &b), (300, &c)];
            prop_assert_eq!(dec.len(), want.len());
            for ((id, d), (wid, wd)) in dec.iter().zip(want) {
                prop_assert_eq!(*id, wid);
                // Exact: same text (keeps decimal scale).
                prop_assert_eq!(d.to_text(0), wd.to_text(0));
            }
        }
    }

    #[test]
    fn decimals_keep_scale_in_values_and_normalize_in_keys() {
        let a = Datum::Decimal(Decimal::new(150, 2));
        let b = Datum::Decimal(Decimal::new(15, 1));
        assert_eq!(encode_key_tuple([&a]), encode_key_tuple([&b]));
        let dec = decode_value(&encode_value([(1, &a)])).expect("decodes");
        assert_eq!(dec[0].1.to_text(0).as_deref(), Some("1.50"));
        let j = Datum::Json(serde_json::json!({"k": [1, 2]}));
        let dec = decode_value(&encode_value([(2, &j)])).expect("json");
        assert_eq!(dec[0].1, j);
        assert!(decode_value(&[9, 9]).is_err());
        assert!(decode_key(&[7], &SqlType::Int8).is_err());
    }
}
