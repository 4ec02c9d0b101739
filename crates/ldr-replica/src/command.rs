//! What a Raft entry carries, and the checksummed, size-bounded binary encoding used for log
//! entries, snapshots and messages.

use bincode::Options;
use ldr_storage::{ValueHeader, Version, VersionWrite};
use ldr_types::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ReplicaError;

/// Largest encoded entry, message or snapshot accepted (a frame over it is refused).
pub(crate) const ENCODED_BYTES_MAX: u64 = 512 << 20;

/// One version of an evaluated write, as it travels in a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireVersion {
    pub key: Vec<u8>,
    pub ts: Timestamp,
    pub origin_id: u32,
    pub origin_ts: Timestamp,
    pub omit_in_rangefeeds: bool,
    /// `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

impl From<&VersionWrite> for WireVersion {
    fn from(w: &VersionWrite) -> Self {
        WireVersion {
            key: w.key.clone(),
            ts: w.version.ts,
            origin_id: w.version.header.origin_id,
            origin_ts: w.version.header.origin_ts,
            omit_in_rangefeeds: w.version.header.omit_in_rangefeeds,
            value: w.version.value.clone(),
        }
    }
}

impl From<WireVersion> for VersionWrite {
    fn from(w: WireVersion) -> Self {
        VersionWrite {
            key: w.key,
            version: Version {
                ts: w.ts,
                header: ValueHeader {
                    origin_id: w.origin_id,
                    origin_ts: w.origin_ts,
                    omit_in_rangefeeds: w.omit_in_rangefeeds,
                },
                value: w.value,
            },
        }
    }
}

/// An evaluated write proposed to a range's group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The versions to write; empty for a command that only carries a closed timestamp.
    pub writes: Vec<WireVersion>,
    /// The proposer's closed timestamp for the range: no later command writes at or below it.
    pub closed_ts: Timestamp,
    /// Garbage-collect the range's span at this threshold (at or below `closed_ts`): every
    /// replica removes the same versions (`Engine::gc_replicated`).
    pub gc_threshold: Option<Timestamp>,
}

impl Command {
    pub fn new(writes: &[VersionWrite], closed_ts: Timestamp) -> Command {
        Command {
            writes: writes.iter().map(WireVersion::from).collect(),
            closed_ts,
            gc_threshold: None,
        }
    }

    /// A command that collects the range's old versions up to `threshold`.
    pub fn gc(threshold: Timestamp, closed_ts: Timestamp) -> Command {
        Command {
            writes: Vec::new(),
            closed_ts,
            gc_threshold: Some(threshold.min(closed_ts)),
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command({} versions, closed {})",
            self.writes.len(),
            self.closed_ts
        )
    }
}

/// What applying a command returns to its proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The log index the command was applied at.
    pub index: u64,
}

fn options() -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_limit(ENCODED_BYTES_MAX)
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// `bincode(value) ++ crc32c` (checksummed so a flipped bit is an error, never data).
pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, ReplicaError> {
    let mut out = options()
        .serialize(value)
        .map_err(|e| ReplicaError::Malformed {
            what,
            detail: format!("cannot encode: {e}"),
        })?;
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Verifies the checksum and decodes; anything malformed is [`ReplicaError::Malformed`].
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    raw: &[u8],
) -> Result<T, ReplicaError> {
    let malformed = |detail: String| ReplicaError::Malformed { what, detail };
    if raw.len() < 4 {
        return Err(malformed(format!("{} bytes is too short", raw.len())));
    }
    let (body, crc) = raw.split_at(raw.len() - 4);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(malformed(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    options()
        .deserialize(body)
        .map_err(|e| malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_every_flipped_byte_is_refused() {
        let cmd = Command {
            writes: vec![WireVersion {
                key: b"k".to_vec(),
                ts: Timestamp::new(5, 1),
                origin_id: 3,
                origin_ts: Timestamp::new(4, 0),
                omit_in_rangefeeds: true,
                value: Some(b"v".to_vec()),
            }],
            closed_ts: Timestamp::new(2, 0),
            gc_threshold: Some(Timestamp::new(1, 0)),
        };
        let raw = encode("command", &cmd).expect("encode");
        assert_eq!(decode::<Command>("command", &raw).expect("decode"), cmd);
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x10;
            assert!(decode::<Command>("command", &bad).is_err(), "flip at {i}");
        }
        assert!(decode::<Command>("command", &[1, 2]).is_err());
        let w: VersionWrite = cmd.writes[0].clone().into();
        assert_eq!(WireVersion::from(&w), cmd.writes[0]);
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating_it() {
        // A Vec length of u64::MAX / 2 inside a valid checksum.
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        assert!(decode::<Command>("command", &body).is_err());
    }
}
