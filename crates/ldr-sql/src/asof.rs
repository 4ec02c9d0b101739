//! `AS OF SYSTEM TIME`: what a user may write after it, and the read timestamp it names
//! (pure; no I/O).
//!
//! CockroachDB accepts, and so do we:
//! - a decimal HLC timestamp `'1733580000000000000.0000000000'` (wall nanoseconds `.` ten
//!   logical digits), quoted or not;
//! - a negative interval relative to the statement time, `'-10s'`, `'-1m30s'`, `'-2 minutes'`;
//! - a timestamp `'2026-12-07 12:00:00'` (UTC unless it names an offset);
//! - `follower_read_timestamp()`: now minus [`FOLLOWER_READ_OFFSET_NS`].
//!
//! A timestamp in the future is refused; so is one at or below the GC threshold
//! ([`check_gc_threshold`]), with CockroachDB's `batch timestamp … must be after replica GC
//! threshold …`.
//!
//! ```
//! use ldr_sql::asof::resolve;
//! use ldr_sql::parser::AsOf;
//! use ldr_types::Timestamp;
//! let now = Timestamp::new(100_000_000_000, 0);
//! let ts = resolve(&AsOf::Text("-10s".into()), now).unwrap();
//! assert_eq!(ts, Timestamp::new(90_000_000_000, 0));
//! ```

use ldr_types::Timestamp;

use crate::error::{Result, SqlError, sqlstate};
use crate::interval::Interval;
use crate::parser::AsOf;

/// How far behind now `follower_read_timestamp()` reads (CockroachDB's default: 4.8s).
pub const FOLLOWER_READ_OFFSET_NS: u64 = 4_800_000_000;

/// CockroachDB sends errors without a code of their own as `XXUUU` (uncategorized); the GC
/// threshold error is one of them.
pub const UNCATEGORIZED: &str = "XXUUU";

fn invalid(message: impl Into<String>) -> SqlError {
    SqlError::new(sqlstate::INVALID_PARAMETER_VALUE, message)
}

/// The read timestamp `as_of` names, the statement running at `now`.
pub fn resolve(as_of: &AsOf, now: Timestamp) -> Result<Timestamp> {
    let ts = match as_of {
        AsOf::FollowerReadTimestamp => now.sub_nanos(FOLLOWER_READ_OFFSET_NS),
        AsOf::Number(text) => decimal(text)?,
        AsOf::Text(text) => from_text(text, now)?,
    };
    if ts.is_zero() {
        return Err(invalid(
            "AS OF SYSTEM TIME: zero timestamp is invalid".to_string(),
        ));
    }
    if ts > now {
        return Err(invalid(format!(
            "AS OF SYSTEM TIME: cannot specify timestamp in the future ({} > {})",
            ts.to_decimal_string(),
            now.to_decimal_string()
        )));
    }
    Ok(ts)
}

fn decimal(text: &str) -> Result<Timestamp> {
    text.trim().parse::<Timestamp>().map_err(|_| {
        invalid(format!(
            "AS OF SYSTEM TIME: value is neither timestamp, decimal, nor interval: \"{text}\""
        ))
    })
}

fn from_text(text: &str, now: Timestamp) -> Result<Timestamp> {
    let t = text.trim();
    if t.is_empty() {
        return Err(invalid(
            "AS OF SYSTEM TIME: value is neither timestamp, decimal, nor interval: \"\"",
        ));
    }
    // A decimal: only digits and at most one point.
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') && t.matches('.').count() <= 1 {
        return decimal(t);
    }
    // An interval: it starts with a sign, or parses as one and not as a timestamp.
    if t.starts_with('-') || t.starts_with('+') || !looks_like_timestamp(t) {
        let interval = Interval::parse(t).map_err(|_| {
            invalid(format!(
                "AS OF SYSTEM TIME: value is neither timestamp, decimal, nor interval: \"{t}\""
            ))
        })?;
        let micros = interval.total_micros();
        if micros >= 0 {
            return Err(invalid(format!(
                "AS OF SYSTEM TIME: interval value '{t}' too large, AS OF interval must be <= -1µs"
            )));
        }
        let back_ns = u64::try_from(micros.unsigned_abs().saturating_mul(1000)).unwrap_or(u64::MAX);
        if back_ns >= now.wall_time_ns {
            return Err(invalid(format!(
                "AS OF SYSTEM TIME: interval value '{t}' reaches before the epoch"
            )));
        }
        return Ok(Timestamp::new(now.wall_time_ns - back_ns, 0));
    }
    let micros = crate::datum::parse_timestamp(t, true).map_err(|_| {
        invalid(format!(
            "AS OF SYSTEM TIME: value is neither timestamp, decimal, nor interval: \"{t}\""
        ))
    })?;
    let nanos = u64::try_from(micros)
        .ok()
        .and_then(|m| m.checked_mul(1000))
        .ok_or_else(|| {
            invalid(format!(
                "AS OF SYSTEM TIME: timestamp \"{t}\" is before the epoch"
            ))
        })?;
    Ok(Timestamp::new(nanos, 0))
}

/// `YYYY-MM-DD…`: a date leads a timestamp.
fn looks_like_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
}

/// CockroachDB's timestamp form in KV errors: `seconds.nanoseconds,logical`.
pub fn kv_timestamp_text(ts: Timestamp) -> String {
    format!(
        "{}.{:09},{}",
        ts.wall_time_ns / 1_000_000_000,
        ts.wall_time_ns % 1_000_000_000,
        ts.logical
    )
}

/// The GC threshold the cluster's policy allows now: `now - gc.ttlseconds`, but never above
/// the oldest protected timestamp (what GC may have collected up to; the store's own threshold
/// never exceeds it).
pub fn policy_gc_threshold(now: Timestamp, ttl_seconds: i64, protected: &[Timestamp]) -> Timestamp {
    let ttl_ns = u64::try_from(ttl_seconds.max(0))
        .unwrap_or(0)
        .saturating_mul(1_000_000_000);
    let mut threshold = now.sub_nanos(ttl_ns.min(now.wall_time_ns));
    for p in protected {
        let below = p.prev();
        if below < threshold {
            threshold = below;
        }
    }
    threshold
}

/// Refuses a read at `ts` at or below `threshold` (history there may be gone), with
/// CockroachDB's text.
pub fn check_gc_threshold(ts: Timestamp, threshold: Timestamp) -> Result<()> {
    if ts <= threshold {
        return Err(SqlError::new(
            UNCATEGORIZED,
            format!(
                "batch timestamp {} must be after replica GC threshold {}",
                kv_timestamp_text(ts),
                kv_timestamp_text(threshold)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn now() -> Timestamp {
        // 2026-12-07 12:00:00 UTC
        Timestamp::new(1_796_644_800 * SEC, 3)
    }

    #[test]
    fn decimals_quoted_or_not() {
        let want = Timestamp::new(1_796_644_000 * SEC, 5);
        for a in [
            AsOf::Text("1796644000000000000.0000000005".into()),
            AsOf::Number("1796644000000000000.0000000005".into()),
        ] {
            assert_eq!(resolve(&a, now()).expect("decimal"), want, "{a:?}");
        }
        assert_eq!(
            resolve(&AsOf::Text("1796644000000000000".into()), now()).expect("integer"),
            Timestamp::new(1_796_644_000 * SEC, 0)
        );
    }

    #[test]
    fn negative_intervals_are_relative_to_now() {
        for (text, back) in [
            ("-10s", 10 * SEC),
            ("-1m30s", 90 * SEC),
            ("-2 minutes", 120 * SEC),
            ("-1h", 3600 * SEC),
        ] {
            let ts = resolve(&AsOf::Text(text.into()), now()).expect(text);
            assert_eq!(ts, Timestamp::new(now().wall_time_ns - back, 0), "{text}");
        }
    }

    #[test]
    fn timestamps_and_follower_reads() {
        let ts = resolve(&AsOf::Text("2026-12-07 11:00:00".into()), now()).expect("ts");
        assert_eq!(ts, Timestamp::new((1_796_644_800 - 3600) * SEC, 0));
        let ts = resolve(&AsOf::Text("2026-12-07 11:00:00+01:00".into()), now()).expect("tz");
        assert_eq!(ts, Timestamp::new((1_796_644_800 - 7200) * SEC, 0));
        let ts = resolve(&AsOf::FollowerReadTimestamp, now()).expect("follower");
        assert_eq!(ts, now().sub_nanos(FOLLOWER_READ_OFFSET_NS));
    }

    #[test]
    fn refuses_the_future_positive_intervals_and_garbage() {
        let cases = [
            ("10s", "too large"),
            (
                "2027-01-01 00:00:00",
                "cannot specify timestamp in the future",
            ),
            (
                "9796644000000000000.0",
                "cannot specify timestamp in the future",
            ),
            ("yesterday-ish", "neither timestamp, decimal, nor interval"),
            ("", "neither timestamp, decimal, nor interval"),
            ("1.2.3", "neither timestamp, decimal, nor interval"),
            ("0", "zero timestamp"),
        ];
        for (text, want) in cases {
            let e = resolve(&AsOf::Text(text.into()), now()).expect_err(text);
            assert_eq!(e.code(), "22023", "{text}: {e}");
            assert!(e.message().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn gc_threshold_policy_and_error_text() {
        let n = Timestamp::new(1000 * SEC, 0);
        assert_eq!(
            policy_gc_threshold(n, 100, &[]),
            Timestamp::new(900 * SEC, 0)
        );
        let p = Timestamp::new(500 * SEC, 0);
        assert_eq!(policy_gc_threshold(n, 100, &[p]), p.prev());
        assert_eq!(policy_gc_threshold(n, 5000, &[]), Timestamp::ZERO);
        let threshold = Timestamp::new(900 * SEC, 0);
        check_gc_threshold(Timestamp::new(901 * SEC, 0), threshold).expect("above");
        let e = check_gc_threshold(Timestamp::new(800 * SEC, 250), threshold).expect_err("below");
        assert_eq!(e.code(), UNCATEGORIZED);
        assert_eq!(
            e.message(),
            "batch timestamp 800.000000000,250 must be after replica GC threshold 900.000000000,0"
        );
    }
}
