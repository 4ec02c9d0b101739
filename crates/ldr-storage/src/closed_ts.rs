//! The closed-timestamp tracker: which timestamps no later write can use.
//!
//! Every commit registers itself with a provisional timestamp before it reads or writes and
//! deregisters after the commit observer was told about it. The closed timestamp is
//! `min(now - target, oldest in-flight provisional - 1)`, ratcheted so it never moves
//! backwards. A commit's final timestamp is never below its provisional one, and a clock
//! commit's provisional timestamp comes from the clock under the tracker's lock, so it is
//! above every closed timestamp handed out before; an explicit-timestamp commit is refused if
//! it is not above the current closed timestamp.

use std::collections::BTreeMap;
use std::time::Duration;

use ldr_types::{Clock, Timestamp};
use parking_lot::Mutex;

pub(crate) struct ClosedTsTracker {
    state: Mutex<State>,
}

struct State {
    /// provisional ts -> number of in-flight commits holding it.
    in_flight: BTreeMap<Timestamp, usize>,
    last_closed: Timestamp,
    target: Duration,
}

impl State {
    fn compute(&mut self, clock: &Clock) -> Timestamp {
        let mut candidate = clock.now().sub_nanos(self.target.as_nanos() as u64);
        if let Some((oldest, _)) = self.in_flight.first_key_value() {
            candidate = candidate.min(oldest.prev());
        }
        // A lower candidate is possible only if the physical clock jumped back (the HLC did
        // not); keeping the last value is then still true: nothing can commit at or below it.
        let closed = candidate.max(self.last_closed);
        assert!(
            closed >= self.last_closed,
            "closed timestamp moved backwards"
        );
        self.last_closed = closed;
        closed
    }
}

/// Returned by [`ClosedTsTracker::register`]; pass back to deregister.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub provisional: Timestamp,
}

impl ClosedTsTracker {
    pub(crate) fn new(target: Duration) -> ClosedTsTracker {
        ClosedTsTracker {
            state: Mutex::new(State {
                in_flight: BTreeMap::new(),
                last_closed: Timestamp::ZERO,
                target,
            }),
        }
    }

    pub(crate) fn set_target(&self, target: Duration) {
        self.state.lock().target = target;
    }

    /// Registers an in-flight commit: at exactly `explicit` (refused with the closed timestamp
    /// if that is at or below it), else at a fresh clock timestamp.
    pub(crate) fn register(
        &self,
        clock: &Clock,
        explicit: Option<Timestamp>,
    ) -> Result<InFlight, Timestamp> {
        let mut state = self.state.lock();
        let provisional = match explicit {
            Some(ts) => {
                let closed = state.compute(clock);
                if ts <= closed {
                    return Err(closed);
                }
                ts
            }
            None => clock.now(),
        };
        *state.in_flight.entry(provisional).or_insert(0) += 1;
        Ok(InFlight { provisional })
    }

    /// Holds the closed timestamp below `ts` until deregistered (an unresolved intent). A
    /// closed timestamp already at or above `ts` stays where it is (it never moves back).
    pub(crate) fn hold(&self, ts: Timestamp) -> InFlight {
        let mut state = self.state.lock();
        *state.in_flight.entry(ts).or_insert(0) += 1;
        InFlight { provisional: ts }
    }

    pub(crate) fn deregister(&self, in_flight: InFlight) {
        let mut state = self.state.lock();
        match state.in_flight.get_mut(&in_flight.provisional) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                state.in_flight.remove(&in_flight.provisional);
            }
            None => debug_assert!(false, "deregistering an unknown in-flight commit"),
        }
    }

    pub(crate) fn closed_timestamp(&self, clock: &Clock) -> Timestamp {
        self.state.lock().compute(clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_commits_hold_the_closed_timestamp_back() {
        let clock = Clock::default();
        let tracker = ClosedTsTracker::new(Duration::ZERO);
        let a = tracker.register(&clock, None).expect("clock registration");
        let closed = tracker.closed_timestamp(&clock);
        assert_eq!(closed, a.provisional.prev());
        let b = tracker.register(&clock, None).expect("clock registration");
        assert!(b.provisional > closed);
        tracker.deregister(a);
        let closed2 = tracker.closed_timestamp(&clock);
        assert_eq!(closed2, b.provisional.prev());
        tracker.deregister(b);
        let closed3 = tracker.closed_timestamp(&clock);
        assert!(closed3 > closed2);
        // Explicit timestamps at or below the closed timestamp are refused.
        assert!(tracker.register(&clock, Some(closed3)).is_err());
    }

    #[test]
    fn never_moves_backwards_under_clock_jumps() {
        let clock = Clock::default();
        let tracker = ClosedTsTracker::new(Duration::from_millis(200));
        let first = tracker.closed_timestamp(&clock);
        clock.set_physical_offset_ns(-10_000_000_000);
        let second = tracker.closed_timestamp(&clock);
        assert!(second >= first);
        let future = clock.now().add_nanos(1_000_000_000);
        let in_flight = tracker
            .register(&clock, Some(future))
            .expect("future ts is above closed");
        assert!(tracker.closed_timestamp(&clock) < future);
        tracker.deregister(in_flight);
    }
}
