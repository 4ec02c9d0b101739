//! Hybrid logical clock timestamps: `(wall_time_ns, logical)`, totally ordered.
//!
//! The SQL-visible form is CockroachDB's decimal `wall.logical`, with the logical part
//! zero-padded to ten digits (`1732250000123456789.0000000002`). The storage form is twelve
//! big-endian bytes, so byte order equals timestamp order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A hybrid logical clock value.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Nanoseconds since the Unix epoch, from the physical clock.
    pub wall_time_ns: u64,
    /// Orders events that share a wall time.
    pub logical: u32,
}

/// Length in bytes of [`Timestamp::to_bytes`].
pub const TIMESTAMP_BYTES: usize = 12;

impl Timestamp {
    /// The zero timestamp: "unset" wherever an `Option` would be awkward.
    pub const ZERO: Timestamp = Timestamp {
        wall_time_ns: 0,
        logical: 0,
    };
    /// The largest timestamp.
    pub const MAX: Timestamp = Timestamp {
        wall_time_ns: u64::MAX,
        logical: u32::MAX,
    };

    pub const fn new(wall_time_ns: u64, logical: u32) -> Self {
        Timestamp {
            wall_time_ns,
            logical,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// The smallest timestamp greater than `self`.
    pub fn next(&self) -> Timestamp {
        if self.logical == u32::MAX {
            Timestamp::new(self.wall_time_ns.saturating_add(1), 0)
        } else {
            Timestamp::new(self.wall_time_ns, self.logical + 1)
        }
    }

    /// The largest timestamp smaller than `self` (saturating at zero).
    pub fn prev(&self) -> Timestamp {
        if self.logical > 0 {
            Timestamp::new(self.wall_time_ns, self.logical - 1)
        } else if self.wall_time_ns > 0 {
            Timestamp::new(self.wall_time_ns - 1, u32::MAX)
        } else {
            Timestamp::ZERO
        }
    }

    /// `self` moved forward by `nanos` of wall time (logical reset to zero).
    pub fn add_nanos(&self, nanos: u64) -> Timestamp {
        Timestamp::new(self.wall_time_ns.saturating_add(nanos), 0)
    }

    /// `self` moved back by `nanos` of wall time, saturating at zero.
    pub fn sub_nanos(&self, nanos: u64) -> Timestamp {
        Timestamp::new(self.wall_time_ns.saturating_sub(nanos), self.logical)
    }

    /// Order-preserving fixed-width encoding.
    pub fn to_bytes(&self) -> [u8; TIMESTAMP_BYTES] {
        let mut out = [0u8; TIMESTAMP_BYTES];
        out[..8].copy_from_slice(&self.wall_time_ns.to_be_bytes());
        out[8..].copy_from_slice(&self.logical.to_be_bytes());
        out
    }

    /// Inverse of [`Timestamp::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Timestamp, TimestampError> {
        if bytes.len() != TIMESTAMP_BYTES {
            return Err(TimestampError::BadLength(bytes.len()));
        }
        let mut wall = [0u8; 8];
        wall.copy_from_slice(&bytes[..8]);
        let mut logical = [0u8; 4];
        logical.copy_from_slice(&bytes[8..]);
        Ok(Timestamp::new(
            u64::from_be_bytes(wall),
            u32::from_be_bytes(logical),
        ))
    }

    /// CockroachDB's decimal form: `wall.logical` with ten logical digits.
    pub fn to_decimal_string(&self) -> String {
        format!("{}.{:010}", self.wall_time_ns, self.logical)
    }

    /// Seconds since the epoch as a float (for gauges such as `replicated_time_seconds`).
    pub fn as_secs_f64(&self) -> f64 {
        self.wall_time_ns as f64 / 1e9
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:010}", self.wall_time_ns, self.logical)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:010}", self.wall_time_ns, self.logical)
    }
}

/// Why a timestamp could not be decoded or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("timestamp encoding has {0} bytes, expected 12")]
    BadLength(usize),
    #[error(
        "invalid timestamp {0:?}: expected a decimal wall.logical value such as 1732250000123456789.0000000000"
    )]
    BadDecimal(String),
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    /// Parses `wall`, `wall.logical` (CockroachDB's decimal form; the logical part is the
    /// digits after the point read as an integer when ten digits or fewer are given, padded
    /// on the right to ten digits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TimestampError::BadDecimal(s.to_string());
        let s = s.trim();
        let (wall, frac) = match s.split_once('.') {
            Some((w, f)) => (w, f),
            None => (s, ""),
        };
        if wall.is_empty() || !wall.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 10 {
            return Err(bad());
        }
        let wall_time_ns: u64 = wall.parse().map_err(|_| bad())?;
        let logical = if frac.is_empty() {
            0
        } else {
            let padded = format!("{frac:0<10}");
            let value: u64 = padded.parse().map_err(|_| bad())?;
            u32::try_from(value).map_err(|_| bad())?
        };
        Ok(Timestamp::new(wall_time_ns, logical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_matches_timestamp_order() {
        let ts = [
            Timestamp::new(0, 0),
            Timestamp::new(0, 1),
            Timestamp::new(1, 0),
            Timestamp::new(255, u32::MAX),
            Timestamp::new(256, 0),
            Timestamp::new(u64::MAX, 0),
        ];
        for pair in ts.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(
                pair[0].to_bytes() < pair[1].to_bytes(),
                "{:?} vs {:?}",
                pair[0],
                pair[1]
            );
            assert_eq!(Timestamp::from_bytes(&pair[1].to_bytes()), Ok(pair[1]));
        }
        assert_eq!(
            Timestamp::from_bytes(&[1, 2]),
            Err(TimestampError::BadLength(2))
        );
    }

    #[test]
    fn decimal_round_trip() {
        let t = Timestamp::new(1732250000123456789, 2);
        assert_eq!(t.to_decimal_string(), "1732250000123456789.0000000002");
        assert_eq!("1732250000123456789.0000000002".parse::<Timestamp>(), Ok(t));
        assert_eq!("17".parse::<Timestamp>(), Ok(Timestamp::new(17, 0)));
        assert!("abc".parse::<Timestamp>().is_err());
        assert!("1.2.3".parse::<Timestamp>().is_err());
        assert!("1.99999999999".parse::<Timestamp>().is_err());
    }

    #[test]
    fn next_and_prev_are_inverse() {
        for t in [
            Timestamp::new(5, 0),
            Timestamp::new(5, u32::MAX),
            Timestamp::new(9, 3),
        ] {
            assert!(t.next() > t);
            assert_eq!(t.next().prev(), t);
        }
        assert_eq!(Timestamp::ZERO.prev(), Timestamp::ZERO);
    }
}
