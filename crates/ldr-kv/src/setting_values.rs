//! Parsing and printing of cluster setting values as SQL text: booleans, integers,
//! durations (`200ms`, `1m`, `1h30m`, `00:00:05`, `5 seconds`, or bare seconds) and byte sizes
//! (`16MiB`, `16 MiB`, `64KB`, or bare bytes).
//!
//! Printing is the canonical form that the system keyspace stores and `SHOW CLUSTER SETTING`
//! shows: durations as Go's `time.Duration` prints them (CockroachDB's form: `200ms`, `1m0s`),
//! byte sizes in the largest binary unit that divides them exactly (`16 MiB`). Every printed
//! value parses back to itself.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a boolean the way CockroachDB's `SET CLUSTER SETTING` accepts it.
pub(crate) fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "t" | "1" => Ok(true),
        "false" | "off" | "no" | "f" | "0" => Ok(false),
        other => Err(format!("could not parse {other:?} as type bool")),
    }
}

pub(crate) fn parse_int(text: &str) -> Result<i64, String> {
    text.trim()
        .parse::<i64>()
        .map_err(|_| format!("could not parse {:?} as type int", text.trim()))
}

/// Parses a duration: Go syntax (`1h30m`, `1.5s`, `200ms`, `10us`), PostgreSQL interval
/// syntax (`00:00:05`, `1 minute 30 seconds`), or a bare number of seconds (`5`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let bad = |why: &str| format!("could not parse {s:?} as a duration: {why}");
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.starts_with('-') {
        return Err(bad("negative durations are not allowed"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    // A bare number: seconds, as PostgreSQL's '5'::INTERVAL.
    if let Ok(n) = parse_decimal_nanos(s, NANOS_PER_SEC) {
        return to_duration(n).ok_or_else(|| bad("too large"));
    }
    if s.contains(':') {
        return parse_clock_form(s).ok_or_else(|| bad("expected HH:MM:SS[.fraction]"));
    }
    if s.contains(char::is_whitespace) {
        return parse_words_form(s)
            .ok_or_else(|| bad("expected e.g. '5 seconds' or '1 hour 30 minutes'"));
    }
    parse_go_form(s).ok_or_else(|| bad("expected e.g. '200ms', '1m', '1h30m'"))
}

fn to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

/// `number * unit_nanos` for a non-negative decimal `number` (`1`, `1.5`, `.5`), exact to the
/// nanosecond (further digits are truncated).
fn parse_decimal_nanos(number: &str, unit_nanos: u128) -> Result<u128, ()> {
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(());
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(());
    }
    let int_value: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| ())?
    };
    let mut total = int_value.checked_mul(unit_nanos).ok_or(())?;
    let mut scale = unit_nanos;
    for digit in frac_part.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        total = total
            .checked_add(u128::from(digit - b'0') * scale)
            .ok_or(())?;
    }
    Ok(total)
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" | "nanosecond" | "nanoseconds" => 1,
        "us" | "µs" | "μs" | "microsecond" | "microseconds" => 1_000,
        "ms" | "millisecond" | "milliseconds" | "msec" | "msecs" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => NANOS_PER_SEC,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * NANOS_PER_SEC,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600 * NANOS_PER_SEC,
        "d" | "day" | "days" => 86_400 * NANOS_PER_SEC,
        _ => return None,
    })
}

/// `1h30m`, `1.5s`, `200ms`.
fn parse_go_form(s: &str) -> Option<Duration> {
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if number_len == 0 {
            return None;
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit = unit_nanos(&unit.to_ascii_lowercase())?;
        total = total.checked_add(parse_decimal_nanos(number, unit).ok()?)?;
        rest = next;
    }
    to_duration(total)
}

/// `HH:MM:SS[.fraction]` or `MM:SS`.
fn parse_clock_form(s: &str) -> Option<Duration> {
    let parts: Vec<&str> = s.split(':').collect();
    let (h, m, sec) = match parts.as_slice() {
        [h, m, s] => (*h, *m, *s),
        [m, s] => ("0", *m, *s),
        _ => return None,
    };
    let hours = parse_decimal_nanos(h, 3600 * NANOS_PER_SEC).ok()?;
    let minutes = parse_decimal_nanos(m, 60 * NANOS_PER_SEC).ok()?;
    let seconds = parse_decimal_nanos(sec, NANOS_PER_SEC).ok()?;
    to_duration(hours.checked_add(minutes)?.checked_add(seconds)?)
}

/// `1 hour 30 minutes`, `5 seconds`, `200 milliseconds`.
fn parse_words_form(s: &str) -> Option<Duration> {
    let words: Vec<&str> = s.split_whitespace().collect();
    if !words.len().is_multiple_of(2) {
        return None;
    }
    let mut total: u128 = 0;
    for pair in words.chunks(2) {
        let unit = unit_nanos(&pair[1].to_ascii_lowercase())?;
        total = total.checked_add(parse_decimal_nanos(pair[0], unit).ok()?)?;
    }
    to_duration(total)
}

/// Go's `time.Duration.String()`: `0s`, `1.5µs`, `200ms`, `5s`, `1m0s`, `1h30m0s`.
pub(crate) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", format_fraction(nanos, 1_000));
    }
    if nanos < NANOS_PER_SEC {
        return format!("{}ms", format_fraction(nanos, 1_000_000));
    }
    let hours = nanos / (3600 * NANOS_PER_SEC);
    let minutes = (nanos / (60 * NANOS_PER_SEC)) % 60;
    let second_nanos = nanos % (60 * NANOS_PER_SEC);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!(
        "{}s",
        format_fraction(second_nanos, NANOS_PER_SEC)
    ));
    out
}

/// `value / unit` with the exact decimal fraction, trailing zeros trimmed.
fn format_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let rem = value % unit;
    if rem == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let frac = format!("{rem:0width$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

const BINARY_UNITS: [(&str, u64); 6] = [
    ("EiB", 1 << 60),
    ("PiB", 1 << 50),
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

/// Parses a byte size: `16MiB`, `16 MiB`, `1.5GiB`, `64KB` (SI: 1000), `64K`, `1024`, `1024B`.
pub(crate) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let bad = |why: &str| format!("could not parse {s:?} as a byte size: {why}");
    if s.starts_with('-') {
        return Err(bad("negative sizes are not allowed"));
    }
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(number_len);
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier: u128 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "p" | "pb" => 1_000_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        "pi" | "pib" => 1 << 50,
        "ei" | "eib" => 1 << 60,
        other => return Err(bad(&format!("unknown unit {other:?}"))),
    };
    // Fractions: scale by 10^9 to keep nine decimal digits exact, then divide.
    const SCALE: u128 = 1_000_000_000;
    let scaled = parse_decimal_nanos(number, SCALE)
        .map_err(|_| bad("expected a number and a unit such as MiB"))?;
    let bytes = scaled
        .checked_mul(multiplier)
        .ok_or_else(|| bad("too large"))?
        / SCALE;
    u64::try_from(bytes).map_err(|_| bad("too large"))
}

/// The largest binary unit dividing `bytes` exactly: `16 MiB`, `1536 KiB`, `100 B`.
pub(crate) fn format_byte_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0 B".to_string();
    }
    for (name, size) in BINARY_UNITS {
        if bytes.is_multiple_of(size) {
            return format!("{} {name}", bytes / size);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations_parse_in_every_form_users_type() {
        let cases: &[(&str, Duration)] = &[
            ("200ms", ms(200)),
            ("1m", Duration::from_secs(60)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h30m0s", Duration::from_secs(5400)),
            ("1.5s", ms(1500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("5ns", Duration::from_nanos(5)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("5", Duration::from_secs(5)),
            ("2.5", ms(2500)),
            ("00:00:05", Duration::from_secs(5)),
            ("01:30:00", Duration::from_secs(5400)),
            ("00:00:00.2", ms(200)),
            ("5 seconds", Duration::from_secs(5)),
            ("1 hour 30 minutes", Duration::from_secs(5400)),
            ("200 milliseconds", ms(200)),
            ("  3s ", Duration::from_secs(3)),
            ("1H", Duration::from_secs(3600)),
            ("2d", Duration::from_secs(172_800)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).as_ref(), Ok(want), "parsing {text:?}");
        }
    }

    #[test]
    fn bad_durations_are_refused_with_the_input_in_the_message() {
        for text in [
            "",
            "-1s",
            "abc",
            "1x",
            "ms",
            "1 hour 30",
            "1:2:3:4",
            "1..5s",
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains("duration"), "{text:?}: {err}");
        }
    }

    #[test]
    fn durations_print_like_go_and_round_trip() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(5), "5ns"),
            (Duration::from_nanos(1500), "1.5µs"),
            (ms(200), "200ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_secs(5), "5s"),
            (ms(1500), "1.5s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_secs(14_400), "4h0m0s"),
            (Duration::new(3661, 5), "1h1m1.000000005s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(*d), *want);
            assert_eq!(parse_duration(want), Ok(*d), "round trip of {want}");
        }
    }

    #[test]
    fn byte_sizes_parse_and_print() {
        let cases: &[(&str, u64)] = &[
            ("16MiB", 16 << 20),
            ("16 MiB", 16 << 20),
            ("16mib", 16 << 20),
            ("1.5GiB", 3 << 29),
            ("64KB", 64_000),
            ("64K", 64_000),
            ("1024", 1024),
            ("1024B", 1024),
            ("0", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_byte_size(text).as_ref(), Ok(want), "parsing {text:?}");
        }
        for text in ["-1", "MiB", "16 XB", "1.2.3MiB"] {
            assert!(parse_byte_size(text).is_err(), "{text:?} should be refused");
        }
        for (bytes, want) in [
            (16u64 << 20, "16 MiB"),
            (1536 << 10, "1536 KiB"),
            (100, "100 B"),
            (0, "0 B"),
        ] {
            assert_eq!(format_byte_size(bytes), want);
            assert_eq!(parse_byte_size(want), Ok(bytes));
        }
    }

    #[test]
    fn bools_and_ints() {
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert_eq!(parse_bool("off"), Ok(false));
        assert!(parse_bool("maybe").is_err());
        assert_eq!(parse_int(" 42 "), Ok(42));
        assert!(parse_int("4.2").is_err());
    }
}
