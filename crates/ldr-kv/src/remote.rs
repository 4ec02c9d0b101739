//! Calls to a node by address from outside its cluster machinery: `ldr init` (bootstrap),
//! status probes, and the testbed's clock-skew knob. They carry no cluster id.

use std::sync::Arc;

use ldr_proto::pb;
use ldr_types::{Clock, NodeId, Timestamp};

use crate::transport::Transport;
use crate::{NodeDescriptor, Result, wire};

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNodeInfo {
    pub initialized: bool,
    /// Empty when not initialized.
    pub cluster_id: String,
    /// 0 when not initialized.
    pub node_id: NodeId,
    pub node: NodeDescriptor,
    /// Where the node believes node 1 is (None when not initialized).
    pub node1_address: Option<String>,
    pub cluster_name: String,
}

fn transport() -> Transport {
    // A zero max offset disables the clock check: these callers have no cluster clock.
    Transport::new(Arc::new(Clock::new(std::time::Duration::ZERO)))
}

/// `ldr init --host <address>`: makes the node at `address` node 1 of a new cluster and
/// returns the new cluster id. [`crate::KvError::AlreadyInitialized`] if it already belongs
/// to a cluster.
pub async fn bootstrap_remote(address: &str) -> Result<String> {
    let response = transport()
        .call(
            0,
            address,
            None,
            None,
            pb::KvBootstrapRequest {},
            |mut c, r| async move { c.bootstrap(r).await },
        )
        .await?;
    Ok(response.cluster_id)
}

/// The identity and addresses of the node at `address`.
pub async fn remote_node_info(address: &str) -> Result<RemoteNodeInfo> {
    let r = transport()
        .call(
            0,
            address,
            None,
            None,
            pb::KvNodeInfoRequest {},
            |mut c, r| async move { c.node_info(r).await },
        )
        .await?;
    Ok(RemoteNodeInfo {
        initialized: r.initialized,
        cluster_id: r.cluster_id,
        node_id: r.node_id,
        node: r.node.map(wire::node_from_pb).unwrap_or(NodeDescriptor {
            node_id: 0,
            address: address.to_string(),
            sql_address: address.to_string(),
            http_address: String::new(),
            started_at: Timestamp::ZERO,
        }),
        node1_address: r.node1.map(|n| n.address),
        cluster_name: r.cluster_name,
    })
}

/// `ldr node drain`: one drain pass of the node at `address` (repeat until it reports nothing
/// left); with `shutdown`, the node stops once drained.
pub async fn drain_remote(address: &str, shutdown: bool) -> Result<crate::DrainProgress> {
    let r = transport()
        .call(
            0,
            address,
            None,
            None,
            pb::KvDrainRequest { shutdown },
            |mut c, r| async move { c.drain(r).await },
        )
        .await?;
    Ok(crate::DrainProgress {
        remaining_leases: r.remaining_leases,
        remaining_jobs: r.remaining_jobs,
    })
}

/// `ldr node decommission` / `recommission`: sets the membership of `node_ids` through the
/// node at `address`.
pub async fn set_remote_membership(
    address: &str,
    node_ids: &[NodeId],
    membership: crate::Membership,
) -> Result<()> {
    transport()
        .call(
            0,
            address,
            None,
            None,
            pb::KvSetMembershipRequest {
                node_ids: node_ids.to_vec(),
                membership: membership.as_str().to_string(),
            },
            |mut c, r| async move { c.set_membership(r).await },
        )
        .await?;
    Ok(())
}

/// Shifts the physical clock of the node at `address` by `offset_ns` (testbed clock skew);
/// returns the node's HLC reading after the change.
pub async fn set_remote_clock_offset(address: &str, offset_ns: i64) -> Result<Timestamp> {
    let request = pb::KvSetClockOffsetRequest { offset_ns };
    let r = transport()
        .call(0, address, None, None, request, |mut c, r| async move {
            c.set_clock_offset(r).await
        })
        .await?;
    Ok(ldr_proto::ts_or_zero(r.now))
}

/// Cuts the node at `address` off from the nodes at `blocked` (testbed partitions; empty
/// heals). Only the receiving node's outgoing traffic is cut: a symmetric partition sets
/// every node of each side.
pub async fn set_remote_partition(address: &str, blocked: &[String]) -> Result<()> {
    let request = pb::KvSetPartitionRequest {
        blocked_addresses: blocked.to_vec(),
    };
    transport()
        .call(0, address, None, None, request, |mut c, r| async move {
            c.set_partition(r).await
        })
        .await?;
    Ok(())
}
