//! Node liveness: each node renews a record `liveness/<node_id>` with an expiration
//! `LIVENESS_TTL` after its clock's now, every `HEARTBEAT_INTERVAL`. A node is live to a reader
//! if its record has not expired by the reader's clock. The record also carries what the node
//! reports of itself (draining, replica and lease counts, read by the replicate queue and
//! `ldr node status`). A node's membership (`active`, `decommissioning`, `decommissioned`) is
//! set by an operator (`ldr node decommission`) and lives under its own key, so heartbeats
//! never overwrite it. Pure decisions only; the heartbeat loop lives in `node.rs`.

use std::time::Duration;

use ldr_types::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{Membership, NodeDescriptor, NodeStatus};

/// How often a node renews its liveness record.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a renewal keeps a node live.
pub(crate) const LIVENESS_TTL: Duration = Duration::from_millis(4500);

/// The persisted liveness record of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LivenessRecord {
    pub(crate) node_id: NodeId,
    pub(crate) expiration: Timestamp,
    /// The node is draining: it takes no leases.
    #[serde(default)]
    pub(crate) draining: bool,
    /// Replicas and leases the node held at its last heartbeat.
    #[serde(default)]
    pub(crate) replicas: u32,
    #[serde(default)]
    pub(crate) leases: u32,
}

impl LivenessRecord {
    /// The record a heartbeat at `now` writes.
    pub(crate) fn renewed(node_id: NodeId, now: Timestamp) -> LivenessRecord {
        LivenessRecord {
            node_id,
            expiration: now.add_nanos(LIVENESS_TTL.as_nanos() as u64),
            draining: false,
            replicas: 0,
            leases: 0,
        }
    }

    /// Whether the node counts as live to a reader whose clock reads `now`.
    pub(crate) fn is_live_at(&self, now: Timestamp) -> bool {
        self.expiration > now
    }
}

/// Joins descriptors with liveness records and memberships into statuses, sorted by node id.
/// Nodes without a record are not live; records without a descriptor are ignored; nodes
/// without a membership record are active.
pub(crate) fn statuses(
    nodes: Vec<NodeDescriptor>,
    records: &[LivenessRecord],
    memberships: &[(NodeId, Membership)],
    now: Timestamp,
) -> Vec<NodeStatus> {
    let mut out: Vec<NodeStatus> = nodes
        .into_iter()
        .map(|node| {
            let record = records.iter().find(|r| r.node_id == node.node_id);
            NodeStatus {
                is_live: record.is_some_and(|r| r.is_live_at(now)),
                liveness_expiration: record.map(|r| r.expiration).unwrap_or(Timestamp::ZERO),
                is_draining: record.is_some_and(|r| r.draining),
                replicas: record.map(|r| r.replicas).unwrap_or(0),
                leases: record.map(|r| r.leases).unwrap_or(0),
                membership: memberships
                    .iter()
                    .find(|(id, _)| *id == node.node_id)
                    .map(|(_, m)| *m)
                    .unwrap_or_default(),
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
        let memberships = [(3, Membership::Decommissioning)];
        let s = statuses(vec![node(3), node(1), node(2)], &records, &memberships, now);
        let view: Vec<(NodeId, bool)> = s.iter().map(|s| (s.node.node_id, s.is_live)).collect();
        assert_eq!(view, vec![(1, true), (2, false), (3, false)]);
        assert_eq!(s[1].liveness_expiration, Timestamp::ZERO);
        assert_eq!(s[0].liveness_expiration, records[0].expiration);
        let memberships: Vec<Membership> = s.iter().map(|s| s.membership).collect();
        assert_eq!(
            memberships,
            vec![
                Membership::Active,
                Membership::Active,
                Membership::Decommissioning
            ]
        );
    }

    #[test]
    fn records_of_older_nodes_decode_with_defaults() {
        let old = br#"{"node_id":2,"expiration":{"wall_time_ns":5,"logical":0}}"#;
        let r: LivenessRecord = serde_json::from_slice(old).expect("an old record decodes");
        assert!(!r.draining);
        assert_eq!((r.replicas, r.leases), (0, 0));
    }
}
