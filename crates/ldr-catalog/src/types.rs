//! SQL column types: parsing of type names as users write them (`INT`, `DOUBLE PRECISION`,
//! `VARCHAR(10)`, `TIMESTAMP WITH TIME ZONE`, ...), CockroachDB's canonical names for
//! `SHOW CREATE TABLE`, and PostgreSQL OIDs for the wire protocol.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SqlError, sqlstate};

/// A column or expression type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SqlType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Decimal {
        precision: Option<u32>,
        scale: Option<u32>,
    },
    /// `STRING` / `TEXT`.
    String,
    Varchar {
        width: Option<u32>,
    },
    Char {
        width: u32,
    },
    Bytes,
    Date,
    Timestamp,
    TimestampTz,
    Interval,
    Uuid,
    Jsonb,
    /// The type of an untyped `NULL` or of a parameter nothing constrains.
    Unknown,
}

/// Broad groups of types that compare with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeFamily {
    Bool,
    Int,
    Float,
    Decimal,
    String,
    Bytes,
    Date,
    Timestamp,
    TimestampTz,
    Interval,
    Uuid,
    Jsonb,
    Unknown,
}

impl SqlType {
    pub const DECIMAL: SqlType = SqlType::Decimal {
        precision: None,
        scale: None,
    };

    pub fn family(&self) -> TypeFamily {
        match self {
            SqlType::Bool => TypeFamily::Bool,
            SqlType::Int2 | SqlType::Int4 | SqlType::Int8 => TypeFamily::Int,
            SqlType::Float4 | SqlType::Float8 => TypeFamily::Float,
            SqlType::Decimal { .. } => TypeFamily::Decimal,
            SqlType::String | SqlType::Varchar { .. } | SqlType::Char { .. } => TypeFamily::String,
            SqlType::Bytes => TypeFamily::Bytes,
            SqlType::Date => TypeFamily::Date,
            SqlType::Timestamp => TypeFamily::Timestamp,
            SqlType::TimestampTz => TypeFamily::TimestampTz,
            SqlType::Interval => TypeFamily::Interval,
            SqlType::Uuid => TypeFamily::Uuid,
            SqlType::Jsonb => TypeFamily::Jsonb,
            SqlType::Unknown => TypeFamily::Unknown,
        }
    }

    pub fn is_numeric(&self) -> bool {
        matches!(
            self.family(),
            TypeFamily::Int | TypeFamily::Float | TypeFamily::Decimal
        )
    }

    /// Types whose key encoding loses information (CockroachDB's "composite" types): equal
    /// keys may hold distinguishable values (`1.0` vs `1.00`, `-0` vs `0`).
    pub fn is_composite(&self) -> bool {
        matches!(self.family(), TypeFamily::Decimal | TypeFamily::Float)
    }

    /// Whether a column of this type may be part of an index key.
    pub fn is_indexable(&self) -> bool {
        !matches!(self, SqlType::Jsonb | SqlType::Unknown)
    }

    /// CockroachDB's canonical name (`SHOW CREATE TABLE`, `SHOW COLUMNS`).
    pub fn sql_name(&self) -> String {
        match self {
            SqlType::Bool => "BOOL".into(),
            SqlType::Int2 => "INT2".into(),
            SqlType::Int4 => "INT4".into(),
            SqlType::Int8 => "INT8".into(),
            SqlType::Float4 => "FLOAT4".into(),
            SqlType::Float8 => "FLOAT8".into(),
            SqlType::Decimal {
                precision: Some(p),
                scale: Some(s),
            } => format!("DECIMAL({p},{s})"),
            SqlType::Decimal {
                precision: Some(p),
                scale: None,
            } => format!("DECIMAL({p})"),
            SqlType::Decimal { .. } => "DECIMAL".into(),
            SqlType::String => "STRING".into(),
            SqlType::Varchar { width: Some(w) } => format!("VARCHAR({w})"),
            SqlType::Varchar { width: None } => "VARCHAR".into(),
            SqlType::Char { width } => format!("CHAR({width})"),
            SqlType::Bytes => "BYTES".into(),
            SqlType::Date => "DATE".into(),
            SqlType::Timestamp => "TIMESTAMP".into(),
            SqlType::TimestampTz => "TIMESTAMPTZ".into(),
            SqlType::Interval => "INTERVAL".into(),
            SqlType::Uuid => "UUID".into(),
            SqlType::Jsonb => "JSONB".into(),
            SqlType::Unknown => "UNKNOWN".into(),
        }
    }

    /// The lowercase name used in error messages (`int`, `string`, `decimal`, ...).
    pub fn family_name(&self) -> &'static str {
        match self.family() {
            TypeFamily::Bool => "bool",
            TypeFamily::Int => "int",
            TypeFamily::Float => "float",
            TypeFamily::Decimal => "decimal",
            TypeFamily::String => "string",
            TypeFamily::Bytes => "bytes",
            TypeFamily::Date => "date",
            TypeFamily::Timestamp => "timestamp",
            TypeFamily::TimestampTz => "timestamptz",
            TypeFamily::Interval => "interval",
            TypeFamily::Uuid => "uuid",
            TypeFamily::Jsonb => "jsonb",
            TypeFamily::Unknown => "unknown",
        }
    }

    /// PostgreSQL type OID.
    pub fn oid(&self) -> u32 {
        match self {
            SqlType::Bool => 16,
            SqlType::Int2 => 21,
            SqlType::Int4 => 23,
            SqlType::Int8 => 20,
            SqlType::Float4 => 700,
            SqlType::Float8 => 701,
            SqlType::Decimal { .. } => 1700,
            SqlType::String => 25,
            SqlType::Varchar { .. } => 1043,
            SqlType::Char { .. } => 1042,
            SqlType::Bytes => 17,
            SqlType::Date => 1082,
            SqlType::Timestamp => 1114,
            SqlType::TimestampTz => 1184,
            SqlType::Interval => 1186,
            SqlType::Uuid => 2950,
            SqlType::Jsonb => 3802,
            SqlType::Unknown => 25,
        }
    }

    /// The type a parameter OID from a client names (`None` for 0 / unknown).
    pub fn from_oid(oid: u32) -> Option<SqlType> {
        Some(match oid {
            16 => SqlType::Bool,
            21 => SqlType::Int2,
            23 => SqlType::Int4,
            20 => SqlType::Int8,
            700 => SqlType::Float4,
            701 => SqlType::Float8,
            1700 => SqlType::DECIMAL,
            25 | 19 => SqlType::String,
            1043 => SqlType::Varchar { width: None },
            1042 => SqlType::Char { width: 1 },
            17 => SqlType::Bytes,
            1082 => SqlType::Date,
            1114 => SqlType::Timestamp,
            1184 => SqlType::TimestampTz,
            1186 => SqlType::Interval,
            2950 => SqlType::Uuid,
            3802 | 114 => SqlType::Jsonb,
            _ => return None,
        })
    }

    /// `pg_type.typlen` for the row description.
    pub fn type_size(&self) -> i16 {
        match self {
            SqlType::Bool => 1,
            SqlType::Int2 => 2,
            SqlType::Int4 | SqlType::Float4 | SqlType::Date => 4,
            SqlType::Int8 | SqlType::Float8 | SqlType::Timestamp | SqlType::TimestampTz => 8,
            SqlType::Interval | SqlType::Uuid => 16,
            _ => -1,
        }
    }

    /// `atttypmod` for the row description.
    pub fn type_modifier(&self) -> i32 {
        match self {
            SqlType::Decimal {
                precision: Some(p),
                scale,
            } => ((*p as i32) << 16 | scale.unwrap_or(0) as i32) + 4,
            SqlType::Varchar { width: Some(w) } => *w as i32 + 4,
            SqlType::Char { width } => *width as i32 + 4,
            _ => -1,
        }
    }

    /// Parses a type name as written in SQL (case-insensitive, extra whitespace allowed):
    /// `INT`, `BIGINT`, `DOUBLE PRECISION`, `CHARACTER VARYING(20)`, `NUMERIC(10, 2)`,
    /// `TIMESTAMP(6) WITH TIME ZONE`, ...
    pub fn parse(name: &str) -> Result<SqlType> {
        let upper = name.trim().to_ascii_uppercase();
        // Split "BASE WORDS (args) TRAILING WORDS".
        let (head, args, tail) = match upper.find('(') {
            Some(open) => {
                let close = upper[open..]
                    .find(')')
                    .map(|c| open + c)
                    .ok_or_else(|| undefined_type(name))?;
                (
                    upper[..open].trim().to_string(),
                    Some(upper[open + 1..close].to_string()),
                    upper[close + 1..].trim().to_string(),
                )
            }
            None => (upper.clone(), None, String::new()),
        };
        let words: Vec<&str> = head
            .split_whitespace()
            .chain(tail.split_whitespace())
            .collect();
        let joined = words.join(" ");
        let nums: Vec<u32> = match &args {
            Some(a) if !a.trim().is_empty() => a
                .split(',')
                .map(|x| x.trim().parse::<u32>().map_err(|_| undefined_type(name)))
                .collect::<Result<_>>()?,
            _ => vec![],
        };
        let ty = match joined.as_str() {
            "BOOL" | "BOOLEAN" => SqlType::Bool,
            "INT2" | "SMALLINT" | "INT16" => SqlType::Int2,
            "INT4" | "INT32" => SqlType::Int4,
            "INT" | "INTEGER" | "INT8" | "BIGINT" | "INT64" | "SERIAL" | "SERIAL8"
            | "BIGSERIAL" => SqlType::Int8,
            "SERIAL4" => SqlType::Int4,
            "SERIAL2" | "SMALLSERIAL" => SqlType::Int2,
            "FLOAT4" | "REAL" => SqlType::Float4,
            "FLOAT8" | "DOUBLE PRECISION" | "DOUBLE" => SqlType::Float8,
            "FLOAT" => match nums.first() {
                Some(p) if *p >= 1 && *p <= 24 => SqlType::Float4,
                _ => SqlType::Float8,
            },
            "DECIMAL" | "NUMERIC" | "DEC" => {
                let precision = nums.first().copied();
                let scale = nums.get(1).copied();
                if let (Some(p), Some(s)) = (precision, scale)
                    && s > p
                {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("scale ({s}) must be between 0 and precision ({p})"),
                    ));
                }
                if precision == Some(0) {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "precision for type decimal must be at least 1",
                    ));
                }
                SqlType::Decimal { precision, scale }
            }
            "STRING" | "TEXT" if nums.is_empty() => SqlType::String,
            "STRING" | "VARCHAR" | "CHARACTER VARYING" | "CHAR VARYING" => SqlType::Varchar {
                width: nums.first().copied(),
            },
            "CHAR" | "CHARACTER" | "BPCHAR" => SqlType::Char {
                width: nums.first().copied().unwrap_or(1),
            },
            "NAME" | "CITEXT" => SqlType::String,
            "BYTES" | "BYTEA" | "BLOB" => SqlType::Bytes,
            "DATE" => SqlType::Date,
            "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => SqlType::Timestamp,
            "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => SqlType::TimestampTz,
            "INTERVAL" => SqlType::Interval,
            "UUID" => SqlType::Uuid,
            "JSONB" | "JSON" => SqlType::Jsonb,
            _ => return Err(undefined_type(name)),
        };
        Ok(ty)
    }
}

fn undefined_type(name: &str) -> SqlError {
    SqlError::new(
        sqlstate::UNDEFINED_OBJECT,
        format!("type \"{}\" does not exist", name.trim().to_lowercase()),
    )
}

impl std::fmt::Display for SqlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.sql_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_type() {
        let cases = [
            ("INT", SqlType::Int8),
            ("integer", SqlType::Int8),
            ("BIGINT", SqlType::Int8),
            ("int4", SqlType::Int4),
            ("SMALLINT", SqlType::Int2),
            ("STRING", SqlType::String),
            ("text", SqlType::String),
            ("VARCHAR(10)", SqlType::Varchar { width: Some(10) }),
            (
                "character varying (20)",
                SqlType::Varchar { width: Some(20) },
            ),
            ("CHAR(3)", SqlType::Char { width: 3 }),
            ("double precision", SqlType::Float8),
            ("FLOAT", SqlType::Float8),
            ("REAL", SqlType::Float4),
            (
                "DECIMAL(10,2)",
                SqlType::Decimal {
                    precision: Some(10),
                    scale: Some(2),
                },
            ),
            ("numeric", SqlType::DECIMAL),
            ("timestamp with time zone", SqlType::TimestampTz),
            ("TIMESTAMPTZ", SqlType::TimestampTz),
            ("timestamp", SqlType::Timestamp),
            ("BYTEA", SqlType::Bytes),
            ("bytes", SqlType::Bytes),
            ("JSON", SqlType::Jsonb),
            ("uuid", SqlType::Uuid),
            ("interval", SqlType::Interval),
            ("date", SqlType::Date),
            ("bool", SqlType::Bool),
        ];
        for (name, want) in cases {
            assert_eq!(SqlType::parse(name).expect(name), want, "{name}");
        }
        let e = SqlType::parse("blob2").expect_err("unknown type");
        assert_eq!(e.code(), "42704");
        assert_eq!(e.message(), "type \"blob2\" does not exist");
        assert_eq!(
            SqlType::parse("DECIMAL(2,5)")
                .expect_err("bad scale")
                .code(),
            "22023"
        );
    }

    #[test]
    fn canonical_names_round_trip() {
        for ty in [
            SqlType::Bool,
            SqlType::Int2,
            SqlType::Int4,
            SqlType::Int8,
            SqlType::Float4,
            SqlType::Float8,
            SqlType::Decimal {
                precision: Some(10),
                scale: Some(2),
            },
            SqlType::DECIMAL,
            SqlType::String,
            SqlType::Varchar { width: Some(5) },
            SqlType::Char { width: 2 },
            SqlType::Bytes,
            SqlType::Date,
            SqlType::Timestamp,
            SqlType::TimestampTz,
            SqlType::Interval,
            SqlType::Uuid,
            SqlType::Jsonb,
        ] {
            assert_eq!(
                SqlType::parse(&ty.sql_name()).expect("canonical name parses"),
                ty
            );
            assert_eq!(
                SqlType::from_oid(ty.oid()).map(|t| t.family()),
                Some(ty.family())
            );
        }
    }
}
