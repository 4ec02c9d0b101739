//! Session state: variables (`SET`/`SHOW`/`RESET`) and the explicit transaction.

use std::collections::BTreeMap;

use crate::error::{Result, SqlError, sqlstate};

/// Variables a client may SET and SHOW, with CockroachDB-like defaults.
pub const DEFAULT_VARS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
    ("client_min_messages", "notice"),
    ("database", "defaultdb"),
    ("datestyle", "ISO, MDY"),
    ("default_transaction_isolation", "serializable"),
    ("default_transaction_read_only", "off"),
    ("distsql", "auto"),
    ("extra_float_digits", "0"),
    ("idle_in_transaction_session_timeout", "0"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("is_superuser", "off"),
    ("lock_timeout", "0"),
    ("max_identifier_length", "128"),
    ("search_path", "\"$user\", public"),
    ("server_encoding", "UTF8"),
    ("server_version", "13.0.0"),
    ("server_version_num", "130000"),
    ("session_user", ""),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
    ("transaction_isolation", "serializable"),
    ("transaction_read_only", "off"),
    ("transaction_status", "NoTxn"),
    ("vectorize", "on"),
    ("sql_safe_updates", "off"),
    ("row_security", "off"),
    ("synchronous_commit", "on"),
    ("enable_seqscan", "on"),
    ("geqo", "on"),
    ("jit", "off"),
    ("lc_messages", "C.UTF-8"),
    ("lc_monetary", "C.UTF-8"),
    ("lc_numeric", "C.UTF-8"),
    ("lc_time", "C.UTF-8"),
    ("escape_string_warning", "on"),
    ("node_id", "1"),
    ("crdb_version", "CockroachDB CCL v24.3.0"),
];

/// Variables that can be SHOWn but not SET.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_version_num",
    "server_encoding",
    "session_user",
    "is_superuser",
    "node_id",
    "crdb_version",
    "transaction_status",
    "max_identifier_length",
    "integer_datetimes",
];

/// Canonical name of a variable (case-insensitive, a few aliases).
pub fn canonical_var(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "time zone" | "time_zone" => "timezone".into(),
        "transaction isolation level" => "transaction_isolation".into(),
        "names" => "client_encoding".into(),
        "schema" => "search_path".into(),
        _ => lower,
    }
}

#[derive(Debug, Clone)]
pub struct SessionVars {
    values: BTreeMap<String, String>,
    /// The session time zone's offset east of UTC, in seconds.
    pub tz_offset_secs: i32,
}

impl SessionVars {
    pub fn new(user: &str, database: &str, is_admin: bool, node_id: u32) -> SessionVars {
        let mut values: BTreeMap<String, String> = DEFAULT_VARS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        values.insert("database".into(), database.into());
        values.insert("session_user".into(), user.into());
        values.insert(
            "is_superuser".into(),
            if is_admin { "on" } else { "off" }.into(),
        );
        values.insert("node_id".into(), node_id.to_string());
        SessionVars {
            values,
            tz_offset_secs: 0,
        }
    }

    pub fn get(&self, name: &str) -> Result<String> {
        self.values
            .get(&canonical_var(name))
            .cloned()
            .ok_or_else(|| unrecognized(name))
    }

    pub fn database(&self) -> &str {
        self.values
            .get("database")
            .map(String::as_str)
            .unwrap_or("defaultdb")
    }

    pub fn all(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// Sets a variable (validated); `database` is checked by the caller.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let name = canonical_var(name);
        if READ_ONLY.contains(&name.as_str()) {
            return Err(SqlError::new(
                sqlstate::CANT_CHANGE_RUNTIME_PARAM,
                format!("parameter \"{name}\" cannot be changed"),
            ));
        }
        if !self.values.contains_key(&name) {
            return Err(unrecognized(&name));
        }
        let value = match name.as_str() {
            "timezone" => {
                self.tz_offset_secs = parse_time_zone(value)?;
                value.to_string()
            }
            "client_encoding" => {
                let v = value.to_ascii_uppercase().replace(['-', '_'], "");
                if v != "UTF8" && v != "UNICODE" {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("unimplemented client encoding: \"{value}\""),
                    ));
                }
                "UTF8".into()
            }
            "extra_float_digits" => {
                let n: i32 = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid_value(&name, value))?;
                if !(-15..=3).contains(&n) {
                    return Err(invalid_value(&name, value));
                }
                n.to_string()
            }
            "statement_timeout" => {
                parse_statement_timeout(value)?;
                value.trim().to_string()
            }
            "transaction_isolation" | "default_transaction_isolation" => {
                // Every transaction is serializable; READ COMMITTED is accepted as CockroachDB does
                // when it is disabled.
                "serializable".into()
            }
            _ => value.to_string(),
        };
        self.values.insert(name, value);
        Ok(())
    }

    pub fn reset(&mut self, name: &str) -> Result<()> {
        let name = canonical_var(name);
        let default = DEFAULT_VARS
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .ok_or_else(|| unrecognized(&name))?;
        if name == "database" {
            return Ok(());
        }
        if name == "timezone" {
            self.tz_offset_secs = 0;
        }
        self.values.insert(name, default);
        Ok(())
    }

    pub fn set_database(&mut self, db: &str) {
        self.values.insert("database".into(), db.into());
    }

    pub fn set_internal(&mut self, name: &str, value: &str) {
        self.values.insert(name.into(), value.into());
    }
}

/// `statement_timeout` as PostgreSQL reads it: a number of milliseconds, a number with a unit
/// (`us`, `ms`, `s`, `min`, `h`, `d`), or an interval (`'1 minute'`); 0 means none.
pub fn parse_statement_timeout(value: &str) -> Result<Option<std::time::Duration>> {
    let v = value.trim().trim_matches('\'').trim();
    let invalid = || invalid_value("statement_timeout", value);
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let micros = match (number.parse::<f64>(), unit.trim()) {
        (Ok(n), unit) if n >= 0.0 => {
            let scale = match unit.to_ascii_lowercase().as_str() {
                "" | "ms" => 1e3,
                "us" => 1.0,
                "s" => 1e6,
                "min" => 60e6,
                "h" => 3600e6,
                "d" => 86400e6,
                _ => {
                    return crate::interval::Interval::parse(v)
                        .ok()
                        .filter(|i| i.total_micros() >= 0)
                        .map(|i| micros_to_timeout(i.total_micros() as f64))
                        .ok_or_else(invalid);
                }
            };
            n * scale
        }
        _ => {
            let i = crate::interval::Interval::parse(v).map_err(|_| invalid())?;
            if i.total_micros() < 0 {
                return Err(invalid());
            }
            i.total_micros() as f64
        }
    };
    Ok(micros_to_timeout(micros))
}

fn micros_to_timeout(micros: f64) -> Option<std::time::Duration> {
    (micros >= 1.0).then(|| std::time::Duration::from_micros(micros.min(1e15) as u64))
}

fn unrecognized(name: &str) -> SqlError {
    SqlError::new(
        sqlstate::UNDEFINED_OBJECT,
        format!("unrecognized configuration parameter \"{name}\""),
    )
}

fn invalid_value(name: &str, value: &str) -> SqlError {
    SqlError::new(
        sqlstate::INVALID_PARAMETER_VALUE,
        format!("invalid value for parameter \"{name}\": \"{value}\""),
    )
}

/// UTC, GMT, Z, `+05:30`, `-8`, `UTC+2` (POSIX sign inverted as in PostgreSQL is not
/// replicated: `UTC+2` means two hours east, like an ISO offset). Named zones other than UTC
/// are not supported (no time zone database).
pub fn parse_time_zone(value: &str) -> Result<i32> {
    let v = value.trim();
    let upper = v.to_ascii_uppercase();
    if matches!(
        upper.as_str(),
        "UTC"
            | "GMT"
            | "Z"
            | "ETC/UTC"
            | "ETC/GMT"
            | "UCT"
            | "ZULU"
            | "UNIVERSAL"
            | "LOCAL"
            | "DEFAULT"
            | ""
    ) {
        return Ok(0);
    }
    let body = upper
        .strip_prefix("UTC")
        .or_else(|| upper.strip_prefix("GMT"))
        .unwrap_or(&upper);
    let (sign, rest) = match body.chars().next() {
        Some('+') => (1, &body[1..]),
        Some('-') => (-1, &body[1..]),
        Some(c) if c.is_ascii_digit() => (1, body),
        _ => {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid value for parameter \"timezone\": \"{value}\""),
            )
            .with_hint("only UTC and fixed offsets such as '+05:30' or '-8' are supported"));
        }
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        // `hhmm`; `split_at_checked` refuses a split inside a multi-byte character.
        None if rest.len() == 4 => rest
            .split_at_checked(2)
            .ok_or_else(|| invalid_value("timezone", value))?,
        None => (rest, "0"),
    };
    let h: i32 = h.parse().map_err(|_| invalid_value("timezone", value))?;
    let m: i32 = m.parse().map_err(|_| invalid_value("timezone", value))?;
    if h > 15 || m > 59 {
        return Err(invalid_value("timezone", value));
    }
    Ok(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars() {
        let mut v = SessionVars::new("root", "defaultdb", true, 1);
        assert_eq!(v.get("DateStyle").expect("known"), "ISO, MDY");
        v.set("application_name", "app").expect("settable");
        assert_eq!(v.get("application_name").expect("set"), "app");
        v.reset("application_name").expect("resettable");
        assert_eq!(v.get("application_name").expect("reset"), "");
        assert_eq!(v.get("nosuch").expect_err("unknown").code(), "42704");
        assert_eq!(
            v.set("server_version", "1").expect_err("read-only").code(),
            "55P02"
        );
        v.set("timezone", "+05:30").expect("offset");
        assert_eq!(v.tz_offset_secs, 19800);
        assert!(v.set("timezone", "America/New_York").is_err());
        v.set("TimeZone", "UTC").expect("utc");
        assert_eq!(v.tz_offset_secs, 0);
        assert_eq!(parse_time_zone("-8").expect("hours"), -28800);
    }
}
