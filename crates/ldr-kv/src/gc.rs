//! The GC threshold decision: versions may be collected up to `now - gc.ttlseconds`, but never
//! above the oldest protected timestamp (a reader at a protected timestamp still needs the
//! version visible there, and a catch-up scan from it needs the previous values). The GC loop
//! that applies it lives in `node.rs`.

use std::time::Duration;

use ldr_types::Timestamp;

/// How often each node collects its own ranges: an eighth of the GC TTL, between 5 seconds
/// and 5 minutes. A pass scans every range the node owns, so with the default TTL (4h) it runs
/// every 5 minutes instead of stalling writes every few seconds; a short TTL (tests, demos)
/// still collects promptly.
pub(crate) fn gc_interval(ttl_seconds: i64) -> Duration {
    let eighth = Duration::from_secs(u64::try_from(ttl_seconds).unwrap_or(0) / 8);
    eighth.clamp(Duration::from_secs(5), Duration::from_secs(300))
}

/// The threshold passed to `Engine::gc`.
pub(crate) fn gc_threshold(now: Timestamp, ttl_seconds: i64, protected: &[Timestamp]) -> Timestamp {
    let ttl_nanos = u64::try_from(ttl_seconds)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000);
    let by_ttl = Timestamp::new(now.wall_time_ns.saturating_sub(ttl_nanos), 0);
    protected.iter().copied().fold(by_ttl, std::cmp::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn interval_follows_the_ttl() {
        assert_eq!(gc_interval(14_400), Duration::from_secs(300));
        assert_eq!(gc_interval(80), Duration::from_secs(10));
        assert_eq!(gc_interval(1), Duration::from_secs(5));
        assert_eq!(gc_interval(-3), Duration::from_secs(5));
    }

    #[test]
    fn ttl_bounds_the_threshold() {
        let now = Timestamp::new(1000 * SEC, 7);
        assert_eq!(gc_threshold(now, 100, &[]), Timestamp::new(900 * SEC, 0));
        assert_eq!(gc_threshold(now, 0, &[]), Timestamp::new(1000 * SEC, 0));
        assert_eq!(
            gc_threshold(now, 5000, &[]),
            Timestamp::ZERO,
            "saturates at zero"
        );
        assert_eq!(
            gc_threshold(now, -5, &[]),
            Timestamp::new(1000 * SEC, 0),
            "negative ttl counts as zero"
        );
    }

    #[test]
    fn the_oldest_protection_holds_the_threshold_back() {
        let now = Timestamp::new(1000 * SEC, 0);
        let p1 = Timestamp::new(950 * SEC, 3);
        let p2 = Timestamp::new(800 * SEC, 1);
        assert_eq!(
            gc_threshold(now, 100, &[p1]),
            Timestamp::new(900 * SEC, 0),
            "a newer protection does not matter"
        );
        assert_eq!(gc_threshold(now, 100, &[p1, p2]), p2);
        assert_eq!(gc_threshold(now, 0, &[p1]), p1);
    }
}
