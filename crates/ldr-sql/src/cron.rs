//! Cron expressions as `ttl_job_cron` takes them: five fields (minute, hour, day of month,
//! month, day of week; `*`, `*/n`, `a-b`, `a-b/n`, lists, day-of-week 0–7 with 0 and 7 both
//! Sunday) or `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
//! `@hourly`. Times are UTC, to the minute. As in cron, when both day fields are restricted a
//! day matches if either does.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

/// The furthest [`Cron::next_after`] looks (a valid expression fires at least every year,
/// except `0 0 30 2 *`-like ones that never do).
const HORIZON_DAYS: i64 = 5 * 366;

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let t = text.trim();
        let expanded = match t.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            _ => t.to_string(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "invalid cron expression \"{text}\": expected 5 fields, got {}",
                fields.len()
            ));
        }
        let field = |i: usize, lo: u32, hi: u32| {
            parse_field(fields[i], lo, hi)
                .map_err(|e| format!("invalid cron expression \"{text}\": {e}"))
        };
        let mut weekdays = field(4, 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            minutes: field(0, 0, 59)?,
            hours: field(1, 0, 23)?,
            days: field(2, 1, 31)?,
            months: field(3, 1, 12)?,
            weekdays,
            days_any: fields[2] == "*",
            weekdays_any: fields[4] == "*",
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// Whether the expression fires at `t` (seconds ignored).
    pub fn matches(&self, t: &DateTime<Utc>) -> bool {
        self.minutes & (1 << t.minute()) != 0
            && self.hours & (1 << t.hour()) != 0
            && self.months & (1 << t.month()) != 0
            && self.day_matches(t)
    }

    /// The first firing time strictly after `after`, if any within five years.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = Utc
            .with_ymd_and_hms(
                after.year(),
                after.month(),
                after.day(),
                after.hour(),
                after.minute(),
                0,
            )
            .single()?
            + Duration::minutes(1);
        let horizon = start + Duration::days(HORIZON_DAYS);
        let mut t = start;
        while t < horizon {
            if self.months & (1 << t.month()) == 0 || !self.day_matches(&t) {
                // Skip to the next day's midnight.
                t = Utc
                    .with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
                    .single()?
                    + Duration::days(1);
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = Utc
                    .with_ymd_and_hms(t.year(), t.month(), t.day(), t.hour(), 0, 0)
                    .single()?
                    + Duration::hours(1);
                continue;
            }
            if self.minutes & (1 << t.minute()) != 0 {
                return Some(t);
            }
            t += Duration::minutes(1);
        }
        None
    }
}

/// One field as a bit set over `lo..=hi`.
fn parse_field(text: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("invalid step \"{s}\""))?;
                if step == 0 {
                    return Err("a step must be positive".into());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let number = |s: &str| -> Result<u32, String> {
            let n: u32 = s.parse().map_err(|_| format!("invalid value \"{s}\""))?;
            if n < lo || n > hi {
                return Err(format!("value {n} out of range {lo}-{hi}"));
            }
            Ok(n)
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(format!("invalid range \"{range}\""));
            }
            (a, b)
        } else {
            let n = number(range)?;
            // `n/step` means from n to the end, as in Vixie cron.
            (n, if step > 1 { hi } else { n })
        };
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn next_firing_times() {
        let cases = [
            ("* * * * *", "2026-12-07T07:30:15Z", "2026-12-07T07:31:00Z"),
            ("@hourly", "2026-12-07T07:30:00Z", "2026-12-07T08:00:00Z"),
            ("@daily", "2026-12-07T07:30:00Z", "2026-12-08T00:00:00Z"),
            (
                "*/15 * * * *",
                "2026-12-07T07:30:00Z",
                "2026-12-07T07:45:00Z",
            ),
            ("5 4 * * *", "2026-12-07T04:05:00Z", "2026-12-08T04:05:00Z"),
            (
                "0 9-17/4 * * 1-5",
                "2026-12-05T10:00:00Z",
                "2026-12-07T09:00:00Z",
            ),
            ("0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("0 0 * * 7", "2026-12-07T00:00:00Z", "2026-12-13T00:00:00Z"),
            ("@yearly", "2026-12-07T00:00:00Z", "2027-01-01T00:00:00Z"),
            // Both day fields restricted: either matches (the 1st, or a Monday).
            ("0 0 1 * 1", "2026-12-08T00:00:00Z", "2026-12-14T00:00:00Z"),
        ];
        for (expr, after, want) in cases {
            let cron = Cron::parse(expr).expect(expr);
            assert_eq!(
                cron.next_after(at(after)),
                Some(at(want)),
                "{expr} after {after}"
            );
            assert!(cron.matches(&at(want)), "{expr} matches {want}");
        }
        assert_eq!(
            Cron::parse("0 0 31 2 *")
                .expect("valid")
                .next_after(at("2026-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "@sometimes",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
