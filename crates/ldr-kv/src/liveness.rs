//! Node liveness: each node renews a record `liveness/<node_id>` with an expiration
//! `LIVENESS_TTL` after its clock's now, every `HEARTBEAT_INTERVAL`. A node is live to a reader
//! if its record has not expired by the reader's clock. Pure decisions only; the heartbeat
//! loop lives in `node.rs`.

use std::time::Duration;

use ldr_types::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{NodeDescriptor, NodeStatus};

/// How often a node renews its liveness record.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a renewal keeps a node live.
pub(crate) const LIVENESS_TTL: Duration = Duration::from_millis(4500);

/// The persisted liveness record of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LivenessRecord {
    pub(crate) node_id: NodeId,
    pub(crate) expiration: Timestamp,
}

impl LivenessRecord {
    /// The record a heartbeat at `now` writes.
    pub(crate) fn renewed(node_id: NodeId, now: Timestamp) -> LivenessRecord {
        LivenessRecord {
            node_id,
            expiration: now.add_nanos(LIVENESS_TTL.as_nanos() as u64),
        }
    }

    /// Whether the node counts as live to a reader whose clock reads `now`.
    pub(crate) fn is_live_at(&self, now: Timestamp) -> bool {
        self.expiration > now
    }
}

/// Joins descriptors with liveness records into statuses, sorted by node id. Nodes without a
/// record are not live; records without a descriptor are ignored.
pub(crate) fn statuses(
    nodes: Vec<NodeDescriptor>,
    records: &[LivenessRecord],
    now: Timestamp,
) -> Vec<NodeStatus> {
    let mut out: Vec<NodeStatus> = nodes
        .into_iter()
        .map(|node| {
            let record = records.iter().find(|r| r.node_id == node.node_id);
            NodeStatus {
                is_live: record.is_some_and(|r| r.is_live_at(now)),
                liveness_expiration: record.map(|r| r.expiration).unwrap_or(Timestamp::ZERO),
                node,
            }
        })
        .collect();
    out.sort_by_key(|s| s.node.node_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn node(id: NodeId) -> NodeDescriptor {
        NodeDescriptor {
            node_id: id,
            address: format!("127.0.0.1:{id}"),
            sql_address: format!("127.0.0.1:{id}"),
            http_address: String::new(),
            started_at: Timestamp::ZERO,
        }
    }

    #[test]
    fn a_renewed_record_is_live_until_it_expires() {
        let now = Timestamp::new(100 * SEC, 3);
        let r = LivenessRecord::renewed(2, now);
        assert_eq!(r.expiration, Timestamp::new(100 * SEC + 4_500_000_000, 0));
        assert!(r.is_live_at(now));
        assert!(r.is_live_at(now.add_nanos(4 * SEC)));
        assert!(r.is_live_at(r.expiration.prev()));
        assert!(
            !r.is_live_at(r.expiration),
            "expired exactly at the expiration"
        );
        assert!(!r.is_live_at(now.add_nanos(10 * SEC)));
    }

    #[test]
    fn a_missed_heartbeat_or_two_keeps_a_node_live() {
        // Three heartbeats may be missed before the record expires.
        assert!(LIVENESS_TTL > HEARTBEAT_INTERVAL * 4);
    }

    #[test]
    fn statuses_join_descriptors_and_records() {
        let now = Timestamp::new(100 * SEC, 0);
        let records = vec![
            LivenessRecord::renewed(1, now.sub_nanos(SEC)),
            LivenessRecord::renewed(3, now.sub_nanos(10 * SEC)),
            LivenessRecord::renewed(9, now),
        ];
        let s = statuses(vec![node(3), node(1), node(2)], &records, now);
        let view: Vec<(NodeId, bool)> = s.iter().map(|s| (s.node.node_id, s.is_live)).collect();
        assert_eq!(view, vec![(1, true), (2, false), (3, false)]);
        assert_eq!(s[1].liveness_expiration, Timestamp::ZERO);
        assert_eq!(s[0].liveness_expiration, records[0].expiration);
    }
}
