//! The built-in scalar functions: one table that binding resolves names against (canonical
//! name, aliases, arity, typing rule, NULL handling, volatility), and their evaluation by
//! [`Builtin`], matched exhaustively so every function that binds also evaluates.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::*;

/// A built-in scalar function, resolved from its name when an expression is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    Length,
    OctetLength,
    Strpos,
    Lower,
    Upper,
    Initcap,
    Reverse,
    Md5,
    Sha256,
    ToHex,
    QuoteLiteral,
    QuoteIdent,
    Btrim,
    Ltrim,
    Rtrim,
    Substr,
    Replace,
    SplitPart,
    Left,
    Right,
    Repeat,
    Lpad,
    Rpad,
    StartsWith,
    Concat,
    ConcatWs,
    Coalesce,
    Nullif,
    Greatest,
    Least,
    Abs,
    Sign,
    Ceil,
    Floor,
    Round,
    Trunc,
    Mod,
    Power,
    Sqrt,
    Exp,
    Ln,
    Log,
    Random,
    Now,
    ClockTimestamp,
    LocalTimestamp,
    CurrentDate,
    GenRandomUuid,
    UniqueRowid,
    ClusterLogicalTimestamp,
    Version,
    CurrentDatabase,
    CurrentUser,
    CurrentSchema,
    PgTypeof,
    DatePart,
    DateTrunc,
    ToTimestamp,
    JsonTypeof,
    ToJson,
    JsonBuildObject,
    NodeId,
    ClusterOriginId,
}

/// How many arguments a built-in takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    Exactly(usize),
    Between(usize, usize),
    AtLeast(usize),
}

impl Arity {
    pub fn admits(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::Between(lo, hi) => (lo..=hi).contains(&n),
            Arity::AtLeast(lo) => n >= lo,
        }
    }
}

/// How binding types a built-in's arguments and decides its result type. Arguments a rule
/// leaves untyped become strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Typing {
    /// A fixed result type.
    Returns(SqlType),
    /// A string result; the arguments after the first are integers (`substr`).
    Substring,
    /// The arguments' common type (`coalesce`, `nullif`, `greatest`, `least`).
    CommonType,
    /// One numeric argument, an optional integer precision (`abs`, `round`, ...).
    Rounding,
    /// Numeric arguments; FLOAT if any is, else DECIMAL (`mod` of integers is INT).
    Math,
    /// The argument's type name, folded at bind time (`pg_typeof`).
    TypeName,
    /// A field name and a timestamp; FLOAT (`date_part`).
    DatePart,
    /// A field name and a timestamp; the timestamp's type (`date_trunc`).
    DateTrunc,
}

/// One row of the function table.
#[derive(Debug)]
pub struct BuiltinDef {
    pub func: Builtin,
    /// The canonical name, shown in errors.
    pub name: &'static str,
    /// Other names that resolve to it.
    pub aliases: &'static [&'static str],
    pub arity: Arity,
    pub typing: Typing,
    /// A NULL argument gives NULL without evaluating (PostgreSQL's STRICT).
    pub strict: bool,
    /// Two evaluations may differ within one statement (`now()` is stable and does not count).
    pub volatile: bool,
}

const fn def(
    func: Builtin,
    name: &'static str,
    aliases: &'static [&'static str],
    arity: Arity,
    typing: Typing,
) -> BuiltinDef {
    BuiltinDef {
        func,
        name,
        aliases,
        arity,
        typing,
        strict: true,
        volatile: false,
    }
}

const fn lenient(mut d: BuiltinDef) -> BuiltinDef {
    d.strict = false;
    d
}

const fn volatile(mut d: BuiltinDef) -> BuiltinDef {
    d.volatile = true;
    d
}

use Arity::{AtLeast, Between, Exactly};
use Builtin as F;
use Typing::Returns;

const STRING: Typing = Returns(SqlType::String);
const INT: Typing = Returns(SqlType::Int8);

/// Every built-in, in the order of [`Builtin`]'s variants.
pub static BUILTINS: &[BuiltinDef] = &[
    def(
        F::Length,
        "length",
        &["char_length", "character_length"],
        Exactly(1),
        INT,
    ),
    def(F::OctetLength, "octet_length", &[], Exactly(1), INT),
    def(F::Strpos, "strpos", &[], Exactly(2), INT),
    def(F::Lower, "lower", &[], Exactly(1), STRING),
    def(F::Upper, "upper", &[], Exactly(1), STRING),
    def(F::Initcap, "initcap", &[], Exactly(1), STRING),
    def(F::Reverse, "reverse", &[], Exactly(1), STRING),
    def(F::Md5, "md5", &[], Exactly(1), STRING),
    def(F::Sha256, "sha256", &[], Exactly(1), STRING),
    def(F::ToHex, "to_hex", &[], Exactly(1), STRING),
    def(F::QuoteLiteral, "quote_literal", &[], Exactly(1), STRING),
    def(F::QuoteIdent, "quote_ident", &[], Exactly(1), STRING),
    def(F::Btrim, "btrim", &["trim"], Between(1, 2), STRING),
    def(F::Ltrim, "ltrim", &[], Between(1, 2), STRING),
    def(F::Rtrim, "rtrim", &[], Between(1, 2), STRING),
    def(
        F::Substr,
        "substr",
        &["substring"],
        Between(2, 3),
        Typing::Substring,
    ),
    def(F::Replace, "replace", &[], Exactly(3), STRING),
    def(F::SplitPart, "split_part", &[], Exactly(3), STRING),
    def(F::Left, "left", &[], Exactly(2), STRING),
    def(F::Right, "right", &[], Exactly(2), STRING),
    def(F::Repeat, "repeat", &[], Exactly(2), STRING),
    def(F::Lpad, "lpad", &[], Between(2, 3), STRING),
    def(F::Rpad, "rpad", &[], Between(2, 3), STRING),
    def(
        F::StartsWith,
        "starts_with",
        &[],
        Exactly(2),
        Returns(SqlType::Bool),
    ),
    lenient(def(F::Concat, "concat", &[], AtLeast(0), STRING)),
    lenient(def(F::ConcatWs, "concat_ws", &[], AtLeast(1), STRING)),
    lenient(def(
        F::Coalesce,
        "coalesce",
        &["ifnull"],
        AtLeast(1),
        Typing::CommonType,
    )),
    lenient(def(
        F::Nullif,
        "nullif",
        &[],
        Exactly(2),
        Typing::CommonType,
    )),
    lenient(def(
        F::Greatest,
        "greatest",
        &[],
        AtLeast(1),
        Typing::CommonType,
    )),
    lenient(def(F::Least, "least", &[], AtLeast(1), Typing::CommonType)),
    def(F::Abs, "abs", &[], Exactly(1), Typing::Rounding),
    def(F::Sign, "sign", &[], Exactly(1), Typing::Rounding),
    def(F::Ceil, "ceil", &["ceiling"], Exactly(1), Typing::Rounding),
    def(F::Floor, "floor", &[], Exactly(1), Typing::Rounding),
    def(F::Round, "round", &[], Between(1, 2), Typing::Rounding),
    def(F::Trunc, "trunc", &[], Between(1, 2), Typing::Rounding),
    def(F::Mod, "mod", &[], Exactly(2), Typing::Math),
    def(F::Power, "power", &["pow"], Exactly(2), Typing::Math),
    def(F::Sqrt, "sqrt", &[], Exactly(1), Typing::Math),
    def(F::Exp, "exp", &[], Exactly(1), Typing::Math),
    def(F::Ln, "ln", &[], Exactly(1), Typing::Math),
    def(F::Log, "log", &[], Between(1, 2), Typing::Math),
    volatile(def(
        F::Random,
        "random",
        &[],
        Exactly(0),
        Returns(SqlType::Float8),
    )),
    lenient(def(
        F::Now,
        "now",
        &[
            "transaction_timestamp",
            "statement_timestamp",
            "current_timestamp",
        ],
        Exactly(0),
        Returns(SqlType::TimestampTz),
    )),
    volatile(def(
        F::ClockTimestamp,
        "clock_timestamp",
        &[],
        Exactly(0),
        Returns(SqlType::TimestampTz),
    )),
    def(
        F::LocalTimestamp,
        "localtimestamp",
        &[],
        Exactly(0),
        Returns(SqlType::Timestamp),
    ),
    def(
        F::CurrentDate,
        "current_date",
        &[],
        Exactly(0),
        Returns(SqlType::Date),
    ),
    volatile(def(
        F::GenRandomUuid,
        "gen_random_uuid",
        &["uuid_generate_v4"],
        Exactly(0),
        Returns(SqlType::Uuid),
    )),
    volatile(def(F::UniqueRowid, "unique_rowid", &[], Exactly(0), INT)),
    def(
        F::ClusterLogicalTimestamp,
        "cluster_logical_timestamp",
        &[],
        Exactly(0),
        Returns(SqlType::DECIMAL),
    ),
    def(F::Version, "version", &[], Exactly(0), STRING),
    def(
        F::CurrentDatabase,
        "current_database",
        &[],
        Exactly(0),
        STRING,
    ),
    lenient(def(
        F::CurrentUser,
        "current_user",
        &["session_user", "user"],
        Exactly(0),
        STRING,
    )),
    def(F::CurrentSchema, "current_schema", &[], Exactly(0), STRING),
    def(F::PgTypeof, "pg_typeof", &[], Exactly(1), Typing::TypeName),
    def(
        F::DatePart,
        "date_part",
        &["extract"],
        Exactly(2),
        Typing::DatePart,
    ),
    def(
        F::DateTrunc,
        "date_trunc",
        &[],
        Exactly(2),
        Typing::DateTrunc,
    ),
    def(
        F::ToTimestamp,
        "to_timestamp",
        &[],
        Exactly(1),
        Returns(SqlType::TimestampTz),
    ),
    def(
        F::JsonTypeof,
        "json_typeof",
        &["jsonb_typeof"],
        Exactly(1),
        STRING,
    ),
    lenient(def(
        F::ToJson,
        "to_json",
        &["to_jsonb"],
        Exactly(1),
        Returns(SqlType::Jsonb),
    )),
    lenient(def(
        F::JsonBuildObject,
        "json_build_object",
        &["jsonb_build_object"],
        AtLeast(0),
        Returns(SqlType::Jsonb),
    )),
    def(F::NodeId, "crdb_internal.node_id", &[], Exactly(0), INT),
    def(
        F::ClusterOriginId,
        "crdb_internal.cluster_origin_id",
        &[],
        Exactly(0),
        INT,
    ),
];

impl Builtin {
    /// The function a name (lower-cased, qualified as written) resolves to.
    pub fn lookup(name: &str) -> Option<Builtin> {
        static BY_NAME: OnceLock<HashMap<&'static str, Builtin>> = OnceLock::new();
        BY_NAME
            .get_or_init(|| {
                BUILTINS
                    .iter()
                    .flat_map(|d| {
                        std::iter::once(d.name)
                            .chain(d.aliases.iter().copied())
                            .map(|n| (n, d.func))
                    })
                    .collect()
            })
            .get(name)
            .copied()
    }

    /// Its row of [`BUILTINS`].
    pub fn def(self) -> &'static BuiltinDef {
        &BUILTINS[self as usize]
    }

    /// Its canonical name.
    pub fn name(self) -> &'static str {
        self.def().name
    }
}

pub(super) fn eval_function(
    func: Builtin,
    args: Vec<Datum>,
    ty: &SqlType,
    ctx: &EvalCtx,
) -> Result<Datum> {
    use Datum as D;
    let name = func.name();
    if func.def().strict && args.iter().any(|a| a.is_null()) {
        return Ok(D::Null);
    }
    let s0 = || args.first().and_then(text_arg).unwrap_or_default();
    Ok(match func {
        F::Length => match &args[0] {
            D::Bytes(b) => D::Int(b.len() as i64),
            d => D::Int(text_arg(d).unwrap_or_default().chars().count() as i64),
        },
        F::OctetLength => match &args[0] {
            D::Bytes(b) => D::Int(b.len() as i64),
            d => D::Int(text_arg(d).unwrap_or_default().len() as i64),
        },
        F::Lower => D::String(s0().to_lowercase()),
        F::Upper => D::String(s0().to_uppercase()),
        F::Initcap => D::String(
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
        F::Reverse => D::String(s0().chars().rev().collect()),
        F::Md5 => D::String(hex::encode(md5::compute(s0().as_bytes()).0)),
        F::Sha256 => {
            use sha2::Digest;
            D::String(hex::encode(sha2::Sha256::digest(s0().as_bytes())))
        }
        F::ToHex => match &args[0] {
            D::Int(i) => D::String(format!("{:x}", i)),
            D::Bytes(b) => D::String(hex::encode(b)),
            d => D::String(hex::encode(text_arg(d).unwrap_or_default())),
        },
        F::QuoteLiteral => D::String(datum::quote_literal(&s0())),
        F::QuoteIdent => D::String(datum::quote_ident(&s0())),
        F::Btrim | F::Ltrim | F::Rtrim => {
            let s = s0();
            let set: Vec<char> = match args.get(1) {
                Some(d) => text_arg(d).unwrap_or_default().chars().collect(),
                None => vec![' '],
            };
            let t = match func {
                F::Ltrim => s.trim_start_matches(|c| set.contains(&c)),
                F::Rtrim => s.trim_end_matches(|c| set.contains(&c)),
                _ => s.trim_matches(|c| set.contains(&c)),
            };
            D::String(t.to_string())
        }
        F::Substr => {
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
        F::Strpos => {
            let hay = s0();
            let needle = text_arg(&args[1]).unwrap_or_default();
            D::Int(match hay.find(&needle) {
                Some(byte) => hay[..byte].chars().count() as i64 + 1,
                None => 0,
            })
        }
        F::Replace => D::String(s0().replace(
            &text_arg(&args[1]).unwrap_or_default(),
            &text_arg(&args[2]).unwrap_or_default(),
        )),
        F::SplitPart => {
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
        F::Left | F::Right => {
            let chars: Vec<char> = s0().chars().collect();
            let n = int_arg(&args[1]).unwrap_or(0);
            let len = chars.len() as i64;
            let take = if n >= 0 { n.min(len) } else { (len + n).max(0) } as usize;
            D::String(if func == F::Left {
                chars[..take].iter().collect()
            } else {
                chars[chars.len() - take..].iter().collect()
            })
        }
        F::Repeat => {
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
        F::Lpad | F::Rpad => {
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
            D::String(if func == F::Lpad {
                pad + &body
            } else {
                body + &pad
            })
        }
        F::StartsWith => D::Bool(s0().starts_with(&text_arg(&args[1]).unwrap_or_default())),
        F::Concat => D::String(args.iter().filter_map(text_arg).collect()),
        F::ConcatWs => {
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
        // Evaluated lazily by `ScalarExpr::eval`; this is the same rule over evaluated arguments.
        F::Coalesce => match args.into_iter().find(|a| !a.is_null()) {
            Some(v) => v.coerce_for_column(ty, name)?,
            None => D::Null,
        },
        F::PgTypeof => {
            return Err(SqlError::internal("pg_typeof() is folded when it is bound"));
        }
        F::Nullif => {
            if !args[0].is_null() && args[0].compare(&args[1]) == Some(std::cmp::Ordering::Equal) {
                D::Null
            } else {
                args[0].clone().coerce_for_column(ty, name)?
            }
        }
        F::Greatest | F::Least => {
            let mut best: Option<Datum> = None;
            for a in args.into_iter().filter(|a| !a.is_null()) {
                best = Some(match best {
                    None => a,
                    Some(b) => {
                        let o = a.sort_cmp(&b);
                        if (func == F::Greatest && o == std::cmp::Ordering::Greater)
                            || (func == F::Least && o == std::cmp::Ordering::Less)
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
        F::Abs => match &args[0] {
            D::Int(i) => D::Int(i.checked_abs().ok_or_else(int_overflow)?),
            D::Float(f) => D::Float(f.abs()),
            D::Decimal(v) => D::Decimal(v.abs()),
            _ => D::Null,
        },
        F::Sign => match &args[0] {
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
        F::Ceil | F::Floor | F::Round | F::Trunc => {
            let places = args.get(1).and_then(int_arg);
            match &args[0] {
                D::Int(i) if places.is_none() => D::Int(*i),
                D::Float(f) => {
                    let scale = 10f64.powi(places.unwrap_or(0) as i32);
                    let v = f * scale;
                    let r = match func {
                        F::Ceil => v.ceil(),
                        F::Floor => v.floor(),
                        F::Trunc => v.trunc(),
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
                    D::Decimal(match func {
                        F::Ceil => v.ceil(),
                        F::Floor => v.floor(),
                        F::Trunc => {
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
        F::Mod => {
            arith(BinOp::Mod, args[0].clone(), args[1].clone())?.coerce_for_column(ty, name)?
        }
        F::Power | F::Sqrt | F::Exp | F::Ln | F::Log => {
            let x = to_f64(&args[0]).unwrap_or(f64::NAN);
            let v = match func {
                F::Power => x.powf(to_f64(&args[1]).unwrap_or(f64::NAN)),
                F::Sqrt => {
                    if x < 0.0 {
                        return Err(SqlError::new(
                            sqlstate::INVALID_ARGUMENT_FOR_POWER,
                            "cannot take square root of a negative number",
                        ));
                    }
                    x.sqrt()
                }
                F::Exp => x.exp(),
                F::Ln => x.ln(),
                _ => match args.get(1) {
                    Some(b) => to_f64(b).unwrap_or(f64::NAN).log(x),
                    None => x.log10(),
                },
            };
            D::Float(v).coerce_for_column(ty, name)?
        }
        F::Random => D::Float(rand::random::<f64>()),
        F::Now => D::TimestampTz(ctx.now_micros),
        F::ClockTimestamp => D::TimestampTz(chrono::Utc::now().timestamp_micros()),
        F::LocalTimestamp => {
            D::Timestamp(ctx.now_micros + i64::from(ctx.tz_offset_secs) * MICROS_PER_SECOND)
        }
        F::CurrentDate => D::Date(
            ((ctx.now_micros + i64::from(ctx.tz_offset_secs) * MICROS_PER_SECOND)
                .div_euclid(MICROS_PER_DAY)) as i32,
        ),
        F::GenRandomUuid => D::Uuid(*uuid::Uuid::new_v4().as_bytes()),
        F::UniqueRowid => match &ctx.clock {
            Some(c) => D::Int(ldr_types::unique_id(c, ctx.node_id)),
            None => D::Int(ldr_types::unique_id(
                &ldr_types::Clock::default(),
                ctx.node_id,
            )),
        },
        F::ClusterLogicalTimestamp => {
            let ts = match &ctx.clock {
                Some(c) => c.now(),
                None => ldr_types::Clock::default().now(),
            };
            D::Decimal(timestamp_decimal(ts))
        }
        F::Version => D::String(SERVER_VERSION.to_string()),
        F::CurrentDatabase => D::String(ctx.database.clone()),
        F::CurrentUser => D::String(ctx.user.clone()),
        F::CurrentSchema => D::String("public".into()),
        F::NodeId => D::Int(i64::from(ctx.node_id)),
        F::ClusterOriginId => D::Int(i64::from(ctx.origin_id)),
        F::DatePart => {
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
        F::DateTrunc => {
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
        F::ToTimestamp => {
            let secs = to_f64(&args[0]).unwrap_or(f64::NAN);
            if !secs.is_finite() {
                return Err(SqlError::out_of_range("timestamp out of range"));
            }
            D::TimestampTz((secs * 1e6).round() as i64)
        }
        F::JsonTypeof => match &args[0] {
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
        F::ToJson => D::Json(args[0].to_json()),
        F::JsonBuildObject => {
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
