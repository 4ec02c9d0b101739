//! The built-in scalar functions' evaluation, and date/time helpers.

use super::*;

pub(super) fn eval_function(
    name: &str,
    args: Vec<Datum>,
    ty: &SqlType,
    ctx: &EvalCtx,
) -> Result<Datum> {
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

pub(super) fn date_part(field: &str, micros: i64) -> Result<f64> {
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

pub(super) fn date_trunc(field: &str, micros: i64) -> Result<i64> {
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
