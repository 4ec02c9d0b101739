//! Turns the node's Prometheus text (what `GET /metrics` renders) into time series samples.
//!
//! Counters and gauges become one series each, named exactly as `/metrics` prints them
//! (`logical_replication_events_ingested`, `logical_replication_replicated_time_seconds{job_id="12"}`),
//! so a series' last point can be compared with `/metrics` directly. A histogram becomes
//! `<name>_p50` and `<name>_p99` (plus its `_count` and `_sum`): quantiles of the observations
//! made since the previous sample (a window, as CockroachDB's time series record), not since
//! the process started. A window without observations records no quantile point (a gap).
//!
//! Sampling the rendered text rather than each metric struct keeps one truth: whatever
//! `/metrics` exposes is recorded, including metrics added later.

use std::collections::{BTreeMap, HashMap};

/// The quantiles recorded for every histogram, with their series suffixes.
pub const QUANTILES: [(&str, f64); 2] = [("p50", 0.50), ("p99", 0.99)];

/// One parsed sample line: metric name, label text (`{...}` or empty) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct PromLine<'a> {
    pub name: &'a str,
    pub labels: &'a str,
    pub value: f64,
}

/// Parses one non-comment line of Prometheus text; `None` for anything else.
pub fn parse_line(line: &str) -> Option<PromLine<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.find('{') {
        Some(i) if series.ends_with('}') => (&series[..i], &series[i..]),
        Some(_) => return None,
        None => (series, ""),
    };
    Some(PromLine {
        name,
        labels,
        value,
    })
}

/// The metric families a Prometheus text declares (`# TYPE name kind`), histograms expanded
/// to the series the sampler records for them.
pub fn families(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        if kind == "histogram" {
            for (suffix, _) in QUANTILES {
                out.push(format!("{name}_{suffix}"));
            }
            out.push(format!("{name}_count"));
            out.push(format!("{name}_sum"));
        } else {
            out.push(name.to_string());
        }
    }
    out
}

/// Removes the `le` label from a bucket's label text: `{le="10"}` → ``, `{a="x",le="1"}` → `{a="x"}`.
fn split_le(labels: &str) -> Option<(String, f64)> {
    let inner = labels.strip_prefix('{')?.strip_suffix('}')?;
    let mut rest = Vec::new();
    let mut le = None;
    for part in inner.split(',') {
        match part.strip_prefix("le=") {
            Some(v) => {
                let v = v.trim_matches('"');
                le = Some(if v == "+Inf" {
                    f64::INFINITY
                } else {
                    v.parse().ok()?
                });
            }
            None if !part.is_empty() => rest.push(part),
            None => {}
        }
    }
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", rest.join(","))
    };
    Some((rest, le?))
}

/// The `q` quantile of cumulative buckets (`(upper bound, count)`, ascending), interpolated
/// linearly inside the bucket as Prometheus' `histogram_quantile` does. `None` without
/// observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_bound = 0.0;
    let mut prev_count = 0.0;
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                // Above the highest finite bound: report that bound, as Prometheus does.
                return Some(prev_bound);
            }
            let in_bucket = count - prev_count;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            return Some(prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket);
        }
        prev_bound = bound;
        prev_count = count;
    }
    Some(prev_bound)
}

/// Samples successive renders; keeps the previous histogram buckets to compute windows.
#[derive(Debug, Default)]
pub struct Sampler {
    previous: HashMap<String, Vec<(f64, f64)>>,
}

impl Sampler {
    /// The samples of one render: `(series name, value)`, sorted by name.
    pub fn sample(&mut self, text: &str) -> Vec<(String, f64)> {
        let mut out = BTreeMap::new();
        let mut histograms: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
        for line in text.lines() {
            let Some(l) = parse_line(line) else {
                continue;
            };
            if let Some((base, (rest, le))) = l
                .name
                .strip_suffix("_bucket")
                .and_then(|base| split_le(l.labels).map(|x| (base, x)))
            {
                histograms
                    .entry((base.to_string(), rest))
                    .or_default()
                    .push((le, l.value));
                continue;
            }
            if l.value.is_finite() {
                out.insert(format!("{}{}", l.name, l.labels), l.value);
            }
        }
        let mut seen = HashMap::new();
        for ((base, labels), mut buckets) in histograms {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let key = format!("{base}{labels}");
            let window: Vec<(f64, f64)> = match self.previous.get(&key) {
                // The same buckets as last time: the window is the difference (a counter
                // reset, e.g. after a restart, shows as a decrease: use the new counts).
                Some(prev)
                    if prev.len() == buckets.len()
                        && prev
                            .iter()
                            .zip(&buckets)
                            .all(|(p, b)| p.0 == b.0 && p.1 <= b.1) =>
                {
                    buckets
                        .iter()
                        .zip(prev)
                        .map(|(b, p)| (b.0, b.1 - p.1))
                        .collect()
                }
                _ => buckets.clone(),
            };
            for (suffix, q) in QUANTILES {
                if let Some(v) = quantile(&window, q) {
                    out.insert(format!("{base}_{suffix}{labels}"), v);
                }
            }
            seen.insert(key, buckets);
        }
        self.previous = seen;
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP a_total things
# TYPE a_total counter
a_total 7
# TYPE g gauge
g{job_id=\"12\"} 1.5
# TYPE h histogram
h_bucket{le=\"10\"} 5
h_bucket{le=\"100\"} 9
h_bucket{le=\"+Inf\"} 10
h_sum 300
h_count 10
";

    #[test]
    fn parses_lines_and_families() {
        assert_eq!(
            parse_line("g{job_id=\"12\"} 1.5"),
            Some(PromLine {
                name: "g",
                labels: "{job_id=\"12\"}",
                value: 1.5
            })
        );
        assert_eq!(parse_line("# TYPE g gauge"), None);
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line("x{a=\"1\" 3"), None);
        assert_eq!(
            families(TEXT),
            ["a_total", "g", "h_p50", "h_p99", "h_count", "h_sum"]
        );
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(10.0, 5.0), (100.0, 9.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&b, 0.5), Some(10.0 + 90.0 * (0.0 / 4.0)));
        assert_eq!(quantile(&b, 0.25), Some(5.0));
        // The 99th percentile lands in +Inf: the highest finite bound.
        assert_eq!(quantile(&b, 0.99), Some(100.0));
        assert_eq!(quantile(&[(10.0, 0.0)], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn samples_counters_gauges_and_windowed_histograms() {
        let mut s = Sampler::default();
        let first = s.sample(TEXT);
        let get = |v: &[(String, f64)], n: &str| v.iter().find(|(k, _)| k == n).map(|x| x.1);
        assert_eq!(get(&first, "a_total"), Some(7.0));
        assert_eq!(get(&first, "g{job_id=\"12\"}"), Some(1.5));
        assert_eq!(get(&first, "h_count"), Some(10.0));
        assert_eq!(get(&first, "h_p99"), Some(100.0));
        // No new observations: no quantile points in this window.
        let second = s.sample(TEXT);
        assert_eq!(get(&second, "h_p99"), None);
        assert_eq!(get(&second, "h_count"), Some(10.0));
        // Four new observations, all at most 10: the window's p99 is within the first bucket.
        let third = s.sample(
            &TEXT
                .replace("h_bucket{le=\"10\"} 5", "h_bucket{le=\"10\"} 9")
                .replace("h_bucket{le=\"100\"} 9", "h_bucket{le=\"100\"} 13")
                .replace("h_bucket{le=\"+Inf\"} 10", "h_bucket{le=\"+Inf\"} 14"),
        );
        let p99 = get(&third, "h_p99").expect("a p99 for the window");
        assert!(p99 <= 10.0, "{p99}");
    }
}
