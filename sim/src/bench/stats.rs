//! Exact percentiles over every sample (no histogram buckets, no sampling), and the small
//! series helpers the report and the plot use. Pure: no I/O.

use serde::{Deserialize, Serialize};

/// Percentiles of a set of samples, in the unit of the samples (milliseconds in the report).
/// Every field is `None` when there were no samples, so the JSON says `null`, not `0`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Percentiles {
    /// Nearest-rank percentiles (the value at rank `ceil(q * n)`), so every reported value is
    /// a real sample. NaN and infinite samples are ignored.
    pub fn of(samples: &[f64]) -> Percentiles {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return Percentiles::default();
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let rank = |q: f64| -> f64 {
            let r = ((q * n as f64).ceil() as usize).clamp(1, n);
            sorted[r - 1]
        };
        Percentiles {
            count: n as u64,
            p50: Some(rank(0.50)),
            p90: Some(rank(0.90)),
            p99: Some(rank(0.99)),
            max: Some(sorted[n - 1]),
            mean: Some(sorted.iter().sum::<f64>() / n as f64),
        }
    }

    /// `p50/p99/max` for the terminal table, or `-`.
    pub fn short(&self) -> String {
        match (self.p50, self.p99, self.max) {
            (Some(a), Some(b), Some(c)) => format!("{}/{}/{}", fmt_ms(a), fmt_ms(b), fmt_ms(c)),
            _ => "-".into(),
        }
    }
}

/// Milliseconds with precision that suits their size.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// `a / b` when both exist and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// Turns cumulative `(seconds, total)` samples into `(bucket end seconds, rate per second)`
/// over buckets of `bucket_s` seconds: the rate of a bucket is the increase of the total
/// between the last samples at or before its start and its end, linearly interpolated. Samples
/// must be in time order; a decreasing total (a restarted counter) counts as no progress.
pub fn rates_from_cumulative(samples: &[(f64, f64)], bucket_s: f64) -> Vec<(f64, f64)> {
    if samples.len() < 2 || bucket_s.is_nan() || bucket_s <= 0.0 {
        return Vec::new();
    }
    // Make the total non-decreasing first.
    let mut clean = Vec::with_capacity(samples.len());
    let mut high = f64::NEG_INFINITY;
    for &(t, v) in samples {
        if !t.is_finite() || !v.is_finite() {
            continue;
        }
        high = high.max(v);
        clean.push((t, high));
    }
    if clean.len() < 2 {
        return Vec::new();
    }
    let at = |t: f64| -> f64 {
        match clean.iter().position(|&(ts, _)| ts >= t) {
            Some(0) => clean[0].1,
            Some(i) => {
                let (t0, v0) = clean[i - 1];
                let (t1, v1) = clean[i];
                if t1 <= t0 {
                    v1
                } else {
                    v0 + (v1 - v0) * (t - t0) / (t1 - t0)
                }
            }
            None => clean[clean.len() - 1].1,
        }
    };
    let start = clean[0].0;
    let end = clean[clean.len() - 1].0;
    let buckets = (((end - start) / bucket_s).ceil() as usize).min(100_000);
    (0..buckets)
        .map(|i| {
            let a = start + i as f64 * bucket_s;
            let b = (a + bucket_s).min(end);
            let rate = if b > a {
                (at(b) - at(a)) / (b - a)
            } else {
                0.0
            };
            (b, rate)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_are_real_samples() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&samples);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, Some(50.0));
        assert_eq!(p.p90, Some(90.0));
        assert_eq!(p.p99, Some(99.0));
        assert_eq!(p.max, Some(100.0));
        assert_eq!(p.mean, Some(50.5));
        // Unsorted input, one sample, and the 99th of 10 samples is the largest.
        let p = Percentiles::of(&[5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 9.0, 8.0, 7.0, 6.0]);
        assert_eq!((p.p50, p.p99, p.max), (Some(5.0), Some(10.0), Some(10.0)));
        let one = Percentiles::of(&[7.5]);
        assert_eq!(
            (one.p50, one.p99, one.max),
            (Some(7.5), Some(7.5), Some(7.5))
        );
    }

    #[test]
    fn no_samples_means_null_not_zero() {
        let p = Percentiles::of(&[f64::NAN, f64::INFINITY]);
        assert_eq!(p, Percentiles::default());
        let json = serde_json::to_value(p).expect("serialize");
        assert!(json["p99"].is_null());
        assert_eq!(p.short(), "-");
    }

    #[test]
    fn short_form_and_ratio() {
        let p = Percentiles::of(&[0.5, 12.0, 150.0]);
        assert_eq!(p.short(), "12.0/150/150");
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn rates_from_cumulative_samples() {
        // 100 rows/s for 2 s, then idle for 1 s.
        let samples = vec![
            (0.0, 0.0),
            (0.5, 50.0),
            (1.0, 100.0),
            (2.0, 200.0),
            (3.0, 200.0),
        ];
        let rates = rates_from_cumulative(&samples, 1.0);
        assert_eq!(rates, vec![(1.0, 100.0), (2.0, 100.0), (3.0, 0.0)]);
        // Interpolation inside a bucket, and a counter reset counts as no progress.
        let rates = rates_from_cumulative(&[(0.0, 0.0), (2.0, 100.0), (3.0, 10.0)], 1.0);
        assert_eq!(rates, vec![(1.0, 50.0), (2.0, 50.0), (3.0, 0.0)]);
        assert!(rates_from_cumulative(&[(0.0, 1.0)], 1.0).is_empty());
        assert!(rates_from_cumulative(&samples, 0.0).is_empty());
    }
}
