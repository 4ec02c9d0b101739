//! What a Raft entry carries, and the checksummed, size-bounded binary encoding used for log
//! entries, snapshots and messages.

use bincode::Options;
use ldr_storage::{ValueHeader, Version, VersionWrite};
use ldr_types::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{RaftNodeId, ReplicaError, ReplicaNode, TypeConfig};

/// Largest encoded entry, message or snapshot accepted (a frame over it is refused).
pub(crate) const ENCODED_BYTES_MAX: u64 = 512 << 20;

/// One version of an evaluated write, as it travels in a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireVersion {
    /// Keys and values are encoded as byte strings: bincode writes them as one length and one
    /// copy, the same bytes as a sequence of `u8` element by element (so entries written
    /// before read the same), but a multi-MB value encodes and decodes in milliseconds instead
    /// of the better part of a second in a debug build, which was longer than an append's
    /// timeout.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub ts: Timestamp,
    pub origin_id: u32,
    pub origin_ts: Timestamp,
    pub omit_in_rangefeeds: bool,
    /// `None` for a tombstone.
    #[serde(with = "serde_bytes")]
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
    /// Compute a checksum of the range's replicated state at this command's index and keep it
    /// under this id (a consistency check: every replica computes it at the same index).
    /// Added after the first release: entries written without it still decode
    /// ([`decode_entry`]).
    pub checksum: Option<ChecksumRequest>,
}

/// A consistency check's request to every replica (see [`crate::ReplicaChecksum`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChecksumRequest {
    /// Chosen by the proposer (a random UUID); replicas keep their result under it.
    pub id: [u8; 16],
}

impl Command {
    pub fn new(writes: &[VersionWrite], closed_ts: Timestamp) -> Command {
        Command {
            writes: writes.iter().map(WireVersion::from).collect(),
            closed_ts,
            gc_threshold: None,
            checksum: None,
        }
    }

    /// A command that collects the range's old versions up to `threshold`.
    pub fn gc(threshold: Timestamp, closed_ts: Timestamp) -> Command {
        Command {
            writes: Vec::new(),
            closed_ts,
            gc_threshold: Some(threshold.min(closed_ts)),
            checksum: None,
        }
    }

    /// A command that writes nothing and has every replica compute a checksum of the range
    /// at the index it is applied at, kept under `id`.
    pub fn checksum(id: [u8; 16]) -> Command {
        Command {
            checksum: Some(ChecksumRequest { id }),
            ..Command::default()
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

/// The command as it was before `checksum` existed: bincode is not self-describing, so an
/// entry written then lacks the last field and decodes only as this shape.
#[derive(Debug, Serialize, Deserialize)]
struct CommandV1 {
    writes: Vec<WireVersion>,
    closed_ts: Timestamp,
    gc_threshold: Option<Timestamp>,
}

/// `openraft::EntryPayload` with [`CommandV1`] (same variants in the same order).
#[derive(Debug, Serialize, Deserialize)]
enum EntryPayloadV1 {
    Blank,
    Normal(CommandV1),
    Membership(openraft::Membership<RaftNodeId, ReplicaNode>),
}

/// `openraft::Entry` with [`CommandV1`].
#[derive(Debug, Serialize, Deserialize)]
struct EntryV1 {
    log_id: openraft::LogId<RaftNodeId>,
    payload: EntryPayloadV1,
}

impl From<EntryV1> for openraft::Entry<TypeConfig> {
    fn from(e: EntryV1) -> Self {
        let payload = match e.payload {
            EntryPayloadV1::Blank => openraft::EntryPayload::Blank,
            EntryPayloadV1::Normal(c) => openraft::EntryPayload::Normal(Command {
                writes: c.writes,
                closed_ts: c.closed_ts,
                gc_threshold: c.gc_threshold,
                checksum: None,
            }),
            EntryPayloadV1::Membership(m) => openraft::EntryPayload::Membership(m),
        };
        openraft::Entry {
            log_id: e.log_id,
            payload,
        }
    }
}

/// Decodes a stored log entry, also one written before [`Command::checksum`] existed.
pub(crate) fn decode_entry(raw: &[u8]) -> Result<openraft::Entry<TypeConfig>, ReplicaError> {
    match decode::<openraft::Entry<TypeConfig>>("raft log entry", raw) {
        Ok(entry) => Ok(entry),
        Err(current) => decode::<EntryV1>("raft log entry", raw)
            .map(Into::into)
            .map_err(|_| current),
    }
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

    /// The layout of `WireVersion` before its byte fields were marked as byte strings.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct ElementWise {
        key: Vec<u8>,
        ts: Timestamp,
        origin_id: u32,
        origin_ts: Timestamp,
        omit_in_rangefeeds: bool,
        value: Option<Vec<u8>>,
    }

    #[test]
    fn byte_strings_encode_as_the_element_wise_layout_did() {
        for value in [
            None,
            Some(Vec::new()),
            Some((0..=255u8).cycle().take(70_000).collect()),
        ] {
            let now = WireVersion {
                key: vec![1, 2, 3, 250],
                ts: Timestamp::new(9, 2),
                origin_id: 7,
                origin_ts: Timestamp::new(8, 0),
                omit_in_rangefeeds: false,
                value: value.clone(),
            };
            let before = ElementWise {
                key: now.key.clone(),
                ts: now.ts,
                origin_id: now.origin_id,
                origin_ts: now.origin_ts,
                omit_in_rangefeeds: now.omit_in_rangefeeds,
                value,
            };
            let raw = encode("version", &before).expect("encode");
            assert_eq!(encode("version", &now).expect("encode"), raw);
            assert_eq!(decode::<WireVersion>("version", &raw).expect("decode"), now);
            assert_eq!(
                decode::<ElementWise>("version", &raw).expect("decode"),
                before
            );
        }
    }

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
            checksum: Some(ChecksumRequest { id: [7; 16] }),
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

    #[test]
    fn entries_written_before_checksum_requests_still_decode() {
        let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 9);
        let old = EntryV1 {
            log_id,
            payload: EntryPayloadV1::Normal(CommandV1 {
                writes: vec![WireVersion {
                    key: b"k".to_vec(),
                    ts: Timestamp::new(5, 1),
                    origin_id: 0,
                    origin_ts: Timestamp::ZERO,
                    omit_in_rangefeeds: false,
                    value: None,
                }],
                closed_ts: Timestamp::new(2, 0),
                gc_threshold: None,
            }),
        };
        let raw = encode("raft log entry", &old).expect("encode");
        // The current shape alone refuses it (the field is missing)...
        assert!(decode::<openraft::Entry<TypeConfig>>("raft log entry", &raw).is_err());
        // ...and the entry decoder reads it as a command without a checksum request.
        let entry = decode_entry(&raw).expect("decodes as the old shape");
        assert_eq!(entry.log_id, log_id);
        let openraft::EntryPayload::Normal(cmd) = entry.payload else {
            panic!("a normal entry");
        };
        assert_eq!(cmd.checksum, None);
        assert_eq!(cmd.closed_ts, Timestamp::new(2, 0));
        assert_eq!(cmd.writes.len(), 1);
        // Current entries (with and without a checksum request) decode as themselves.
        for cmd in [
            Command::checksum([1; 16]),
            Command::gc(Timestamp::new(1, 0), Timestamp::new(2, 0)),
        ] {
            let new = openraft::Entry::<TypeConfig> {
                log_id,
                payload: openraft::EntryPayload::Normal(cmd.clone()),
            };
            let raw = encode("raft log entry", &new).expect("encode");
            let back = decode_entry(&raw).expect("decode");
            assert_eq!(back.payload, openraft::EntryPayload::Normal(cmd));
        }
        // A corrupted entry is still refused.
        let mut bad = raw.clone();
        bad[0] ^= 1;
        assert!(decode_entry(&bad).is_err());
    }
}
