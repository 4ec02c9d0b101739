//! A rate limiter as a pure schedule (GCRA): given "now", it says when the next operation
//! may start. No clock inside, so it is tested with made-up instants.

use std::time::{Duration, Instant};

/// At most `rate` operations per second on average, with up to `burst` operations allowed
/// back to back after an idle period.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    /// Theoretical arrival time of the next operation.
    next: Option<Instant>,
}

impl RateLimiter {
    /// `rate_per_s` > 0; `burst` >= 1.
    pub fn new(rate_per_s: f64, burst: u32) -> RateLimiter {
        let rate = if rate_per_s.is_finite() && rate_per_s > 0.0 {
            rate_per_s
        } else {
            f64::MIN_POSITIVE
        };
        let interval = Duration::from_secs_f64((1.0 / rate).min(86_400.0));
        let tolerance = interval * burst.max(1).saturating_sub(1);
        RateLimiter {
            interval,
            tolerance,
            next: None,
        }
    }

    /// The average spacing between operations.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Reserves the next slot and returns when it starts (`now` or later).
    pub fn reserve(&mut self, now: Instant) -> Instant {
        let earliest = now.checked_sub(self.tolerance).unwrap_or(now);
        let slot = match self.next {
            Some(next) => next.max(earliest),
            None => now,
        };
        self.next = Some(slot + self.interval);
        slot.max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_operations_evenly() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10.0, 1);
        let slots: Vec<Duration> = (0..4).map(|_| limiter.reserve(t0) - t0).collect();
        assert_eq!(
            slots,
            vec![
                Duration::ZERO,
                Duration::from_millis(100),
                Duration::from_millis(200),
                Duration::from_millis(300)
            ]
        );
    }

    #[test]
    fn idle_time_allows_a_bounded_burst() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10.0, 3);
        assert_eq!(limiter.reserve(t0), t0);
        // Idle for 10 s: three operations may go at once, the fourth waits one interval.
        let later = t0 + Duration::from_secs(10);
        let slots: Vec<Duration> = (0..4).map(|_| limiter.reserve(later) - later).collect();
        assert_eq!(
            slots,
            vec![
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_millis(100)
            ]
        );
    }

    #[test]
    fn average_rate_holds_over_many_reservations() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1000.0, 10);
        let mut last = t0;
        for _ in 0..5000 {
            last = limiter.reserve(t0);
        }
        let span = last - t0;
        // 5000 operations at 1000/s, the first 10 free: just under 5 s.
        assert!(
            span >= Duration::from_millis(4980) && span <= Duration::from_millis(5000),
            "{span:?}"
        );
    }

    #[test]
    fn nonsense_rates_do_not_panic() {
        let t0 = Instant::now();
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut limiter = RateLimiter::new(rate, 0);
            let _ = limiter.reserve(t0);
            let _ = limiter.reserve(t0);
        }
    }
}
