//! The layout of the system keyspace this crate owns (subspaces, record keys and encodings),
//! the node-local identity record, and the rows that bootstrap a new cluster.
//!
//! Subspaces (`0x01 <subspace> 0x00 <key>`):
//! - `ranges`: `t <table_id u32 BE> <shard u16 BE>` -> JSON [`RangeDescriptor`]; `system` -> the
//!   system range's descriptor;
//! - `nodes`: `<node_id decimal>` -> JSON [`NodeDescriptor`];
//! - `liveness`: `<node_id decimal>` -> JSON [`crate::liveness::LivenessRecord`];
//! - `settings`: `<name>` -> canonical SQL text (absent = default);
//! - `pts`: `<record id>` -> JSON [`crate::PtsRecord`];
//! - `counters`: `<name>` -> decimal i64 (`node_id`, `range_id`, `catalog_generation`, and any
//!   counter the layers above allocate from with `sys_increment`).

use ldr_storage::{Condition, RowWrite, ValueHeader};
use ldr_types::{NodeId, RangeId, TableId, keys};
use serde::{Deserialize, Serialize};

use crate::{KvError, NodeDescriptor, RangeDescriptor, Result};

pub(crate) const RANGES: &str = "ranges";
pub(crate) const NODES: &str = "nodes";
pub(crate) const LIVENESS: &str = "liveness";
/// Node memberships set by operators (`ldr node decommission`), by node id.
pub(crate) const MEMBERSHIP: &str = "membership";
pub(crate) const SETTINGS: &str = "settings";
pub(crate) const PTS: &str = "pts";
pub(crate) const COUNTERS: &str = "counters";
/// Zone configurations: `default` holds the default `num_replicas`.
pub(crate) const ZONES: &str = "zones";

pub(crate) const COUNTER_NODE_ID: &str = "node_id";
pub(crate) const COUNTER_RANGE_ID: &str = "range_id";
pub(crate) const COUNTER_CATALOG_GENERATION: &str = "catalog_generation";

/// The system range: the whole system keyspace, a Raft group like any replicated range
/// (bootstrapped on node 1, replicated to the nodes that join).
pub(crate) const SYSTEM_RANGE_ID: RangeId = 1;
/// The node that bootstraps a cluster.
pub(crate) const SYSTEM_NODE_ID: NodeId = 1;
pub(crate) const SYSTEM_RANGE_KEY: &[u8] = b"system";

/// Node-local (non-MVCC) key of this node's identity.
pub(crate) const IDENTITY_LOCAL_KEY: &[u8] = b"ldr-kv/identity";
/// Node-local key of the peer addresses this node knows (JSON `{node_id: address}`), so a
/// restarted node finds the system range even when node 1 is gone.
pub(crate) const PEERS_LOCAL_KEY: &[u8] = b"ldr-kv/peers";

/// The system range with `replicas` (the nodes to ask for it, voters first).
pub(crate) fn system_range_descriptor(replicas: Vec<NodeId>) -> RangeDescriptor {
    RangeDescriptor {
        range_id: SYSTEM_RANGE_ID,
        table_id: None,
        shard: 0,
        span: keys::system_span(),
        node_id: replicas.first().copied().unwrap_or(SYSTEM_NODE_ID),
        replicas,
        generation: 0,
    }
}

/// `t <table_id> <shard>`: the key of a table range's descriptor inside `ranges`.
pub(crate) fn range_key(table_id: TableId, shard: u16) -> Vec<u8> {
    let mut k = table_ranges_prefix(table_id);
    k.extend_from_slice(&shard.to_be_bytes());
    k
}

/// `t <table_id>`: the prefix of every range descriptor of one table inside `ranges`.
pub(crate) fn table_ranges_prefix(table_id: TableId) -> Vec<u8> {
    let mut k = Vec::with_capacity(7);
    k.push(b't');
    k.extend_from_slice(&table_id.to_be_bytes());
    k
}

pub(crate) fn node_key(node_id: NodeId) -> Vec<u8> {
    node_id.to_string().into_bytes()
}

/// The node id of a [`node_key`].
pub(crate) fn node_id_of_key(key: &[u8]) -> Result<NodeId> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| KvError::Internal(format!("malformed node key {key:?}")))
}

pub(crate) fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("plain data structs always serialize")
}

pub(crate) fn decode_json<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| KvError::Internal(format!("corrupt {what} record: {e}")))
}

pub(crate) fn encode_counter(value: i64) -> Vec<u8> {
    value.to_string().into_bytes()
}

pub(crate) fn decode_counter(name: &str, bytes: &[u8]) -> Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            KvError::Internal(format!(
                "corrupt counter {name:?}: {:?}",
                String::from_utf8_lossy(bytes)
            ))
        })
}

/// What a node persists about itself once it belongs to a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PersistedIdentity {
    pub(crate) cluster_id: String,
    pub(crate) node_id: NodeId,
    /// Where node 1 was last known to be.
    pub(crate) node1_address: String,
}

/// A plain unconditional put of a system key.
pub(crate) fn put_row(subspace: &str, key: &[u8], value: Vec<u8>) -> RowWrite {
    RowWrite {
        key: keys::system_key(subspace, key),
        value: Some(value),
        condition: Condition::None,
        header: ValueHeader::default(),
        dependents: Vec::new(),
    }
}

/// The first rows of a new cluster's system range: its descriptor, node 1's descriptor and
/// the id counters.
pub(crate) fn bootstrap_rows(node1: &NodeDescriptor) -> Vec<RowWrite> {
    vec![
        put_row(
            RANGES,
            SYSTEM_RANGE_KEY,
            encode_json(&system_range_descriptor(vec![node1.node_id])),
        ),
        put_row(NODES, &node_key(node1.node_id), encode_json(node1)),
        put_row(
            COUNTERS,
            COUNTER_NODE_ID.as_bytes(),
            encode_counter(i64::from(node1.node_id)),
        ),
        put_row(
            COUNTERS,
            COUNTER_RANGE_ID.as_bytes(),
            encode_counter(SYSTEM_RANGE_ID as i64),
        ),
        put_row(
            COUNTERS,
            COUNTER_CATALOG_GENERATION.as_bytes(),
            encode_counter(0),
        ),
    ]
}

/// The LWW identity of a cluster: a stable non-zero 32-bit hash of its id.
pub(crate) fn origin_id_for(cluster_id: &str) -> u32 {
    let h = keys::fnv1a64(cluster_id.as_bytes());
    let folded = (h ^ (h >> 32)) as u32;
    if folded == 0 { 1 } else { folded }
}

/// A usable address from a listen/advertise address: a wildcard or missing host becomes
/// 127.0.0.1 (ldr clusters run on one machine; other nodes cannot dial `0.0.0.0`).
pub(crate) fn dialable_address(addr: &str) -> String {
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => return addr.to_string(),
    };
    match host {
        "" | "0.0.0.0" | "[::]" | "::" => format!("127.0.0.1:{port}"),
        _ => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_keys_sort_by_table_then_shard() {
        let mut ks = vec![
            range_key(7, 2),
            range_key(7, 10),
            range_key(300, 0),
            range_key(7, 0),
        ];
        ks.sort();
        assert_eq!(
            ks,
            vec![
                range_key(7, 0),
                range_key(7, 2),
                range_key(7, 10),
                range_key(300, 0)
            ]
        );
        assert!(range_key(7, 3).starts_with(&table_ranges_prefix(7)));
        assert!(!range_key(70, 3).starts_with(&table_ranges_prefix(7)));
        assert!(!SYSTEM_RANGE_KEY.starts_with(b"t"));
    }

    #[test]
    fn counters_round_trip_and_reject_garbage() {
        assert_eq!(
            decode_counter("c", &encode_counter(-42)).expect("valid"),
            -42
        );
        assert!(decode_counter("c", b"4x").is_err());
    }

    #[test]
    fn origin_ids_are_stable_and_non_zero() {
        let a = origin_id_for("6a1b3c6e-8e5b-4d3a-9f1e-1c2d3e4f5a6b");
        assert_eq!(a, origin_id_for("6a1b3c6e-8e5b-4d3a-9f1e-1c2d3e4f5a6b"));
        assert_ne!(a, origin_id_for("7a1b3c6e-8e5b-4d3a-9f1e-1c2d3e4f5a6b"));
        for i in 0..10_000 {
            assert_ne!(origin_id_for(&format!("cluster-{i}")), 0);
        }
    }

    #[test]
    fn wildcard_hosts_become_loopback() {
        assert_eq!(dialable_address("0.0.0.0:26257"), "127.0.0.1:26257");
        assert_eq!(dialable_address(":26257"), "127.0.0.1:26257");
        assert_eq!(dialable_address("[::]:1"), "127.0.0.1:1");
        assert_eq!(dialable_address("localhost:26257"), "localhost:26257");
        assert_eq!(dialable_address("10.1.2.3:5"), "10.1.2.3:5");
    }

    #[test]
    fn bootstrap_rows_live_in_the_system_range() {
        let n1 = NodeDescriptor {
            node_id: 1,
            address: "127.0.0.1:1".into(),
            sql_address: "127.0.0.1:1".into(),
            http_address: "127.0.0.1:2".into(),
            started_at: ldr_types::Timestamp::new(5, 0),
        };
        let rows = bootstrap_rows(&n1);
        assert!(
            rows.iter()
                .all(|r| keys::system_span().contains_key(&r.key))
        );
        let desc: RangeDescriptor =
            decode_json("range", rows[0].value.as_deref().expect("a put")).expect("valid json");
        assert_eq!(desc, system_range_descriptor(vec![1]));
        assert!(desc.is_replicated());
    }
}
