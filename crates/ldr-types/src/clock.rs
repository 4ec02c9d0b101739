//! The hybrid logical clock (HLC) every node runs.
//!
//! `now()` never goes backwards and never returns the same value twice. `update(remote)`
//! moves the clock forward to a timestamp received from another node, so causally later
//! events get later timestamps across nodes. A remote timestamp further ahead of our physical
//! clock than `max_offset` is refused: the sender's clock is broken, and accepting it would
//! drag every node's timestamps into the future.
//!
//! For clock-skew experiments a node's physical clock can be shifted with
//! [`Clock::set_physical_offset_ns`]; the HLC still never moves backwards.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::timestamp::Timestamp;

/// Default maximum tolerated clock offset between nodes (CockroachDB's default is 500ms).
pub const DEFAULT_MAX_OFFSET: Duration = Duration::from_millis(500);

/// Errors from [`Clock::update`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error(
        "remote timestamp {remote} is {ahead_ms}ms ahead of the local physical clock, more than the maximum clock offset of {max_offset_ms}ms"
    )]
    RemoteTooFarAhead {
        remote: Timestamp,
        ahead_ms: u64,
        max_offset_ms: u64,
    },
}

/// A hybrid logical clock.
#[derive(Debug)]
pub struct Clock {
    state: Mutex<Timestamp>,
    max_offset: Duration,
    physical_offset_ns: AtomicI64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new(DEFAULT_MAX_OFFSET)
    }
}

impl Clock {
    pub fn new(max_offset: Duration) -> Clock {
        Clock {
            state: Mutex::new(Timestamp::ZERO),
            max_offset,
            physical_offset_ns: AtomicI64::new(0),
        }
    }

    pub fn max_offset(&self) -> Duration {
        self.max_offset
    }

    /// Shifts this node's physical clock by `offset_ns` (test knob for clock skew).
    pub fn set_physical_offset_ns(&self, offset_ns: i64) {
        self.physical_offset_ns.store(offset_ns, Ordering::Relaxed);
    }

    pub fn physical_offset_ns(&self) -> i64 {
        self.physical_offset_ns.load(Ordering::Relaxed)
    }

    /// The physical clock, including the test offset, in nanoseconds since the epoch.
    pub fn physical_now_ns(&self) -> u64 {
        let raw = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let offset = self.physical_offset_ns.load(Ordering::Relaxed);
        if offset >= 0 {
            raw.saturating_add(offset as u64)
        } else {
            raw.saturating_sub(offset.unsigned_abs())
        }
    }

    /// A new timestamp, greater than every timestamp this clock returned or received before.
    pub fn now(&self) -> Timestamp {
        let physical = self.physical_now_ns();
        let mut state = self.state.lock();
        if physical > state.wall_time_ns {
            *state = Timestamp::new(physical, 0);
        } else {
            *state = state.next();
        }
        *state
    }

    /// The latest timestamp handed out or received, without advancing the clock.
    pub fn peek(&self) -> Timestamp {
        let physical = self.physical_now_ns();
        let state = self.state.lock();
        if physical > state.wall_time_ns {
            Timestamp::new(physical, 0)
        } else {
            *state
        }
    }

    /// Moves the clock forward to at least `remote`.
    pub fn update(&self, remote: Timestamp) -> Result<(), ClockError> {
        let physical = self.physical_now_ns();
        let max_offset_ns = self.max_offset.as_nanos() as u64;
        if max_offset_ns > 0 && remote.wall_time_ns > physical.saturating_add(max_offset_ns) {
            return Err(ClockError::RemoteTooFarAhead {
                remote,
                ahead_ms: (remote.wall_time_ns - physical) / 1_000_000,
                max_offset_ms: max_offset_ns / 1_000_000,
            });
        }
        let mut state = self.state.lock();
        if remote > *state {
            *state = remote;
        }
        Ok(())
    }

    /// Moves the clock forward to `remote` without the offset check: for timestamps that
    /// already passed the check elsewhere (e.g. replicated origin timestamps after the
    /// clock guard waited for them).
    pub fn forward_to(&self, remote: Timestamp) {
        let mut state = self.state.lock();
        if remote > *state {
            *state = remote;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_strictly_increasing() {
        let clock = Clock::default();
        let mut last = clock.now();
        for _ in 0..10_000 {
            let t = clock.now();
            assert!(t > last, "{t:?} <= {last:?}");
            last = t;
        }
    }

    #[test]
    fn update_moves_forward_and_refuses_far_future() {
        let clock = Clock::new(Duration::from_millis(500));
        let now = clock.now();
        let ahead = now.add_nanos(100_000_000);
        clock
            .update(ahead)
            .expect("100ms ahead is within the offset");
        assert!(clock.now() > ahead);
        let too_far = now.add_nanos(10_000_000_000);
        let err = clock
            .update(too_far)
            .expect_err("10s ahead exceeds the 500ms offset");
        assert!(
            err.to_string().contains("maximum clock offset of 500ms"),
            "{err}"
        );
        assert!(
            clock.now() < too_far,
            "a refused timestamp must not move the clock"
        );
    }

    #[test]
    fn physical_offset_shifts_but_never_rewinds() {
        let clock = Clock::default();
        let before = clock.now();
        clock.set_physical_offset_ns(-5_000_000_000);
        let after = clock.now();
        assert!(
            after > before,
            "a negative skew must not move the HLC backwards"
        );
        clock.set_physical_offset_ns(5_000_000_000);
        assert!(clock.now().wall_time_ns >= before.wall_time_ns + 4_000_000_000);
    }
}
