//! Where a replica's Raft state lives in the node-local keyspace:
//!
//! ```text
//! raft/r <range u64>                      the replica's span (descriptor), while it exists
//! raft/s <range u64> l <index u64>        log entry
//! raft/s <range u64> v                    vote (hard state)
//! raft/s <range u64> c                    committed log id
//! raft/s <range u64> p                    last purged log id
//! raft/s <range u64> a                    applied state (written with the data it covers)
//! ```
//!
//! Keys are big-endian so a range's log is one contiguous, ordered key span, and one range's
//! state is a prefix that can be deleted at once.

use ldr_types::RangeId;

const REPLICAS: &[u8] = b"raft/r";
const STATE: &[u8] = b"raft/s";

pub(crate) fn replica_key(range_id: RangeId) -> Vec<u8> {
    [REPLICAS, &range_id.to_be_bytes()].concat()
}

/// `[start, end)` of every replica descriptor key.
pub(crate) fn replica_keys() -> (Vec<u8>, Vec<u8>) {
    (REPLICAS.to_vec(), [REPLICAS, &[0xff; 9]].concat())
}

/// The range id of a replica descriptor key.
pub(crate) fn range_of_replica_key(key: &[u8]) -> Option<RangeId> {
    let rest = key.strip_prefix(REPLICAS)?;
    Some(RangeId::from_be_bytes(rest.try_into().ok()?))
}

fn state_prefix(range_id: RangeId) -> Vec<u8> {
    [STATE, &range_id.to_be_bytes()].concat()
}

/// `[start, end)` of all of a range's Raft state.
pub(crate) fn state_span(range_id: RangeId) -> (Vec<u8>, Vec<u8>) {
    let start = state_prefix(range_id);
    let mut end = start.clone();
    end.push(0xff);
    (start, end)
}

pub(crate) fn log_key(range_id: RangeId, index: u64) -> Vec<u8> {
    let mut k = state_prefix(range_id);
    k.push(b'l');
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The index of a log key of `range_id`.
pub(crate) fn index_of_log_key(range_id: RangeId, key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(state_prefix(range_id).as_slice())?;
    let rest = rest.strip_prefix(b"l")?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// `[start, end)` of a range's log.
pub(crate) fn log_span(range_id: RangeId) -> (Vec<u8>, Vec<u8>) {
    let mut start = state_prefix(range_id);
    start.push(b'l');
    let mut end = state_prefix(range_id);
    end.push(b'l' + 1);
    (start, end)
}

pub(crate) fn meta_key(range_id: RangeId, tag: u8) -> Vec<u8> {
    let mut k = state_prefix(range_id);
    k.push(tag);
    k
}

pub(crate) const VOTE: u8 = b'v';
pub(crate) const COMMITTED: u8 = b'c';
pub(crate) const PURGED: u8 = b'p';
pub(crate) const APPLIED: u8 = b'a';

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index_inside_their_range_only() {
        let (start, end) = log_span(7);
        for i in [0u64, 1, 255, 256, u64::MAX] {
            let k = log_key(7, i);
            assert!(start <= k && k < end, "{i}");
            assert_eq!(index_of_log_key(7, &k), Some(i));
            assert_eq!(index_of_log_key(8, &k), None);
        }
        assert!(log_key(7, 255) < log_key(7, 256));
        let (s, e) = state_span(7);
        assert!(s <= meta_key(7, VOTE) && meta_key(7, APPLIED) < e);
        assert!(!(s <= log_key(8, 0) && log_key(8, 0) < e));
        assert_eq!(range_of_replica_key(&replica_key(42)), Some(42));
        let (rs, re) = replica_keys();
        assert!(rs <= replica_key(u64::MAX) && replica_key(u64::MAX) < re);
    }
}
