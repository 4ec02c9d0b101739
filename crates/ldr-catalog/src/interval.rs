//! The INTERVAL value: months, days and microseconds kept apart as in PostgreSQL (a month is
//! not a fixed number of days), with the text forms users type (`'1 day'`, `'02:30:00'`,
//! `'1h30m'`, `'P1DT2H'`) and PostgreSQL's output style (`1 year 2 mons 3 days 04:05:06`).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SqlError, sqlstate};

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
pub const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;
/// A month counts as 30 days when intervals are compared (as in PostgreSQL).
pub const DAYS_PER_MONTH: i64 = 30;

/// An interval: `months`, `days` and `micros` (sign per field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

impl Interval {
    pub const fn new(months: i32, days: i32, micros: i64) -> Interval {
        Interval {
            months,
            days,
            micros,
        }
    }

    /// The length used for ordering: months as 30 days, days as 24 hours.
    pub fn total_micros(&self) -> i128 {
        i128::from(self.months) * i128::from(DAYS_PER_MONTH * MICROS_PER_DAY)
            + i128::from(self.days) * i128::from(MICROS_PER_DAY)
            + i128::from(self.micros)
    }

    pub fn compare(&self, other: &Interval) -> Ordering {
        self.total_micros().cmp(&other.total_micros())
    }

    /// The interval as a fixed duration (months as 30 days), for storage parameters such as
    /// `ttl_expire_after`. `None` if negative.
    pub fn as_std_duration(&self) -> Option<std::time::Duration> {
        let total = self.total_micros();
        if total < 0 {
            return None;
        }
        let micros = u64::try_from(total).ok()?;
        Some(std::time::Duration::from_micros(micros))
    }

    pub fn checked_add(&self, other: &Interval) -> Option<Interval> {
        Some(Interval {
            months: self.months.checked_add(other.months)?,
            days: self.days.checked_add(other.days)?,
            micros: self.micros.checked_add(other.micros)?,
        })
    }

    pub fn checked_neg(&self) -> Option<Interval> {
        Some(Interval {
            months: self.months.checked_neg()?,
            days: self.days.checked_neg()?,
            micros: self.micros.checked_neg()?,
        })
    }

    /// Multiplies by a float, cascading fractions down (months → days → micros) as PostgreSQL.
    pub fn mul_f64(&self, factor: f64) -> Option<Interval> {
        let months_f = f64::from(self.months) * factor;
        let months = months_f.trunc();
        let days_f = f64::from(self.days) * factor + (months_f - months) * DAYS_PER_MONTH as f64;
        let days = days_f.trunc();
        let micros_f = self.micros as f64 * factor + (days_f - days) * MICROS_PER_DAY as f64;
        if !months.is_finite() || !days.is_finite() || !micros_f.is_finite() {
            return None;
        }
        if months.abs() > f64::from(i32::MAX)
            || days.abs() > f64::from(i32::MAX)
            || micros_f.abs() > i64::MAX as f64
        {
            return None;
        }
        Some(Interval {
            months: months as i32,
            days: days as i32,
            micros: micros_f.round() as i64,
        })
    }

    /// Parses the forms users write. Errors are 22P02 / 22015-style invalid input.
    pub fn parse(input: &str) -> Result<Interval> {
        let bad = || {
            SqlError::new(
                sqlstate::INVALID_DATETIME_FORMAT,
                format!("could not parse \"{input}\" as type interval"),
            )
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(bad());
        }
        let lower = s.to_ascii_lowercase();
        let lower = lower
            .strip_prefix('@')
            .map(str::trim)
            .unwrap_or(&lower)
            .to_string();
        if let Some(iso) = lower.strip_prefix('p') {
            return parse_iso(iso).ok_or_else(bad);
        }
        if let Some(v) = parse_go_duration(&lower) {
            return Ok(v);
        }
        let (body, ago) = match lower.strip_suffix("ago") {
            Some(b) => (b.trim().to_string(), true),
            None => (lower.clone(), false),
        };
        let mut acc = Accumulator::default();
        let tokens = tokenize(&body);
        if tokens.is_empty() {
            return Err(bad());
        }
        let mut i = 0;
        while i < tokens.len() {
            let tok = &tokens[i];
            if tok.contains(':') {
                acc.add_time(tok).ok_or_else(bad)?;
                i += 1;
                continue;
            }
            let number: f64 = tok.parse().map_err(|_| bad())?;
            if !number.is_finite() {
                return Err(bad());
            }
            let unit = tokens.get(i + 1).map(String::as_str);
            match unit.and_then(unit_of) {
                Some(u) => {
                    acc.add(number, u);
                    i += 2;
                }
                None => {
                    // A bare number: seconds (only as the last token).
                    if i + 1 != tokens.len() {
                        return Err(bad());
                    }
                    acc.add(number, Unit::Second);
                    i += 1;
                }
            }
        }
        let mut v = acc.finish().ok_or_else(bad)?;
        if ago {
            v = v.checked_neg().ok_or_else(bad)?;
        }
        Ok(v)
    }

    /// PostgreSQL's default output style.
    pub fn to_pg_string(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let years = self.months / 12;
        let months = self.months % 12;
        let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n != 1 { "s" } else { "" });
        if years != 0 {
            parts.push(plural(i64::from(years), "year"));
        }
        if months != 0 {
            parts.push(plural(i64::from(months), "mon"));
        }
        if self.days != 0 {
            parts.push(plural(i64::from(self.days), "day"));
        }
        if self.micros != 0 || parts.is_empty() {
            let neg = self.micros < 0;
            let abs = self.micros.unsigned_abs();
            let hours = abs / MICROS_PER_HOUR as u64;
            let minutes = (abs / MICROS_PER_MINUTE as u64) % 60;
            let seconds = (abs / MICROS_PER_SECOND as u64) % 60;
            let frac = abs % MICROS_PER_SECOND as u64;
            let mut t = format!(
                "{}{:02}:{:02}:{:02}",
                if neg { "-" } else { "" },
                hours,
                minutes,
                seconds
            );
            if frac != 0 {
                let f = format!("{frac:06}");
                t.push('.');
                t.push_str(f.trim_end_matches('0'));
            }
            parts.push(t);
        }
        parts.join(" ")
    }
}

#[derive(Debug, Clone, Copy)]
enum Unit {
    Year,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
    Microsecond,
}

fn unit_of(word: &str) -> Option<Unit> {
    Some(match word {
        "y" | "yr" | "yrs" | "year" | "years" => Unit::Year,
        "mon" | "mons" | "month" | "months" => Unit::Month,
        "w" | "week" | "weeks" => Unit::Week,
        "d" | "day" | "days" => Unit::Day,
        "h" | "hr" | "hrs" | "hour" | "hours" => Unit::Hour,
        "m" | "min" | "mins" | "minute" | "minutes" => Unit::Minute,
        "s" | "sec" | "secs" | "second" | "seconds" => Unit::Second,
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => Unit::Millisecond,
        "us" | "usec" | "usecs" | "microsecond" | "microseconds" | "µs" => Unit::Microsecond,
        _ => return None,
    })
}

/// Splits `1day 2 hours,3:00` into numbers, unit words and time tokens.
fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_is_num: Option<bool> = None;
    for c in s.chars() {
        if c.is_whitespace() || c == ',' {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur_is_num = None;
            continue;
        }
        let is_num = c.is_ascii_digit()
            || c == '.'
            || c == ':'
            || ((c == '-' || c == '+') && cur.is_empty());
        if let Some(prev) = cur_is_num
            && prev != is_num
            && !cur.is_empty()
        {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
        cur_is_num = Some(is_num);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[derive(Default)]
struct Accumulator {
    months: f64,
    days: f64,
    micros: f64,
}

impl Accumulator {
    fn add(&mut self, n: f64, unit: Unit) {
        match unit {
            Unit::Year => self.months += n * 12.0,
            Unit::Month => self.months += n,
            Unit::Week => self.days += n * 7.0,
            Unit::Day => self.days += n,
            Unit::Hour => self.micros += n * MICROS_PER_HOUR as f64,
            Unit::Minute => self.micros += n * MICROS_PER_MINUTE as f64,
            Unit::Second => self.micros += n * MICROS_PER_SECOND as f64,
            Unit::Millisecond => self.micros += n * 1000.0,
            Unit::Microsecond => self.micros += n,
        }
    }

    /// `[-]hh:mm[:ss[.ffffff]]`
    fn add_time(&mut self, tok: &str) -> Option<()> {
        let (neg, body) = match tok.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, tok.strip_prefix('+').unwrap_or(tok)),
        };
        let parts: Vec<&str> = body.split(':').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return None;
        }
        let h: f64 = parts[0].parse().ok()?;
        let m: f64 = parts[1].parse().ok()?;
        let s: f64 = if parts.len() == 3 {
            parts[2].parse().ok()?
        } else {
            0.0
        };
        let total = h * MICROS_PER_HOUR as f64
            + m * MICROS_PER_MINUTE as f64
            + s * MICROS_PER_SECOND as f64;
        self.micros += if neg { -total } else { total };
        Some(())
    }

    fn finish(self) -> Option<Interval> {
        let months = self.months.trunc();
        let days_f = self.days + (self.months - months) * DAYS_PER_MONTH as f64;
        let days = days_f.trunc();
        let micros = self.micros + (days_f - days) * MICROS_PER_DAY as f64;
        if months.abs() > f64::from(i32::MAX)
            || days.abs() > f64::from(i32::MAX)
            || micros.abs() > i64::MAX as f64
        {
            return None;
        }
        Some(Interval {
            months: months as i32,
            days: days as i32,
            micros: micros.round() as i64,
        })
    }
}

/// Go-style durations: `1h30m`, `10s`, `500ms`, `-2h`.
fn parse_go_duration(s: &str) -> Option<Interval> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    if rest.is_empty() || !rest.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let mut acc = Accumulator::default();
    let mut any = false;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => Unit::Hour,
            "m" => Unit::Minute,
            "s" => Unit::Second,
            "ms" => Unit::Millisecond,
            "us" | "µs" => Unit::Microsecond,
            "d" => Unit::Day,
            _ => return None,
        };
        rest = &rest[unit_len..];
        acc.add(n, unit);
        any = true;
    }
    if !any {
        return None;
    }
    let v = acc.finish()?;
    if neg { v.checked_neg() } else { Some(v) }
}

/// ISO 8601 durations after the `P`: `1Y2M3DT4H5M6.5S`, `T1H`, `2W`.
fn parse_iso(s: &str) -> Option<Interval> {
    let mut acc = Accumulator::default();
    let mut in_time = false;
    let mut num = String::new();
    let mut any = false;
    for c in s.chars() {
        match c {
            't' => in_time = true,
            '0'..='9' | '.' | '-' => num.push(c),
            'y' | 'm' | 'w' | 'd' | 'h' | 's' => {
                let n: f64 = num.parse().ok()?;
                num.clear();
                let unit = match (c, in_time) {
                    ('y', false) => Unit::Year,
                    ('m', false) => Unit::Month,
                    ('w', false) => Unit::Week,
                    ('d', false) => Unit::Day,
                    ('h', true) => Unit::Hour,
                    ('m', true) => Unit::Minute,
                    ('s', true) => Unit::Second,
                    _ => return None,
                };
                acc.add(n, unit);
                any = true;
            }
            _ => return None,
        }
    }
    if !num.is_empty() || !any {
        return None;
    }
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(s: &str) -> Interval {
        Interval::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(iv("1 day"), Interval::new(0, 1, 0));
        assert_eq!(iv("3 days"), Interval::new(0, 3, 0));
        assert_eq!(iv("1 hour"), Interval::new(0, 0, MICROS_PER_HOUR));
        assert_eq!(
            iv("2 hours 30 minutes"),
            Interval::new(0, 0, 150 * MICROS_PER_MINUTE)
        );
        assert_eq!(iv("00:05:00"), Interval::new(0, 0, 5 * MICROS_PER_MINUTE));
        assert_eq!(
            iv("1 day 02:00:00"),
            Interval::new(0, 1, 2 * MICROS_PER_HOUR)
        );
        assert_eq!(iv("1h30m"), Interval::new(0, 0, 90 * MICROS_PER_MINUTE));
        assert_eq!(iv("500ms"), Interval::new(0, 0, 500_000));
        assert_eq!(iv("10"), Interval::new(0, 0, 10 * MICROS_PER_SECOND));
        assert_eq!(iv("1 year 2 months"), Interval::new(14, 0, 0));
        assert_eq!(iv("1.5 days"), Interval::new(0, 1, 12 * MICROS_PER_HOUR));
        assert_eq!(iv("-1 day"), Interval::new(0, -1, 0));
        assert_eq!(iv("P1DT2H"), Interval::new(0, 1, 2 * MICROS_PER_HOUR));
        assert_eq!(iv("2 weeks"), Interval::new(0, 14, 0));
        assert_eq!(iv("1 day ago"), Interval::new(0, -1, 0));
        assert_eq!(
            iv("10 minutes"),
            Interval::new(0, 0, 10 * MICROS_PER_MINUTE)
        );
        for bad in ["", "abc", "1 fortnight", "1 day x"] {
            assert!(Interval::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn formats_like_postgres() {
        assert_eq!(iv("1 day").to_pg_string(), "1 day");
        assert_eq!(iv("-1 day").to_pg_string(), "-1 days");
        assert_eq!(iv("25 hours").to_pg_string(), "25:00:00");
        assert_eq!(
            iv("1 year 2 mons 3 days 04:05:06.5").to_pg_string(),
            "1 year 2 mons 3 days 04:05:06.5"
        );
        assert_eq!(Interval::default().to_pg_string(), "00:00:00");
        assert_eq!(iv("-1h").to_pg_string(), "-01:00:00");
    }

    #[test]
    fn compares_by_length() {
        assert_eq!(iv("1 mon").compare(&iv("30 days")), Ordering::Equal);
        assert_eq!(iv("1 day").compare(&iv("23 hours")), Ordering::Greater);
        assert_eq!(
            iv("1 day").as_std_duration(),
            Some(std::time::Duration::from_secs(86400))
        );
    }
}
