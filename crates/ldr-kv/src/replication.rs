//! Replicated ranges on this node: the node's [`ReplicaStore`] (one Raft group per range,
//! see `ldr-replica`), creating replicas of new ranges, evaluating writes at the leaseholder
//! and proposing them, the lease check every read and write of a replicated range passes,
//! and a reconcile loop that creates replicas this node should hold and removes those of
//! dropped ranges.
//!
//! A replicated write, at the leaseholder:
//! 1. take the range's write latch (one evaluation at a time per range, so each evaluates
//!    against everything before it), then check the lease;
//! 2. register the write in flight with the engine (the node's closed timestamp stays below
//!    it) at or above the range's closed timestamp;
//! 3. evaluate (conditions, LWW) into exact versions and propose them with the closed
//!    timestamp; the call returns once a quorum logged the command and this replica applied
//!    it; every replica applies the same versions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ldr_replica::grpc::{GrpcTransport, ServiceSlot};
use ldr_replica::{
    Command, Envelope, RaftTransport, Replica, ReplicaError, ReplicaNode, ReplicaStore,
    StoreOptions, TransportError,
};
use ldr_storage::{ApplyResult, RowWrite};
use ldr_types::{NodeId, RangeId};
use tracing::{debug, info, warn};

use crate::node::NodeInner;
use crate::system;
use crate::{KvError, RangeDescriptor, Result};

/// How often a node reconciles its replicas with the range descriptors.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);
/// `kv.raft_log.disable_synchronization_unsafe`.
pub(crate) const RAFT_LOG_SYNC_SETTING: &str = "kv.raft_log.disable_synchronization_unsafe";

/// Raft messages to peers of this cluster, addressed by node id (addresses are looked up
/// when sent, so a peer restarted on another address is still reached).
struct KvRaftTransport {
    grpc: Arc<GrpcTransport>,
    inner: Weak<NodeInner>,
}

#[async_trait::async_trait]
impl RaftTransport for KvRaftTransport {
    async fn send(
        &self,
        to: u64,
        address: &str,
        envelope: Envelope,
        timeout: Duration,
    ) -> std::result::Result<Vec<u8>, TransportError> {
        let resolved = match (self.inner.upgrade(), NodeId::try_from(to)) {
            (Some(inner), Ok(node_id)) => inner.address_of(node_id).await.ok(),
            _ => None,
        };
        let address = resolved.as_deref().unwrap_or(address);
        self.grpc.send(to, address, envelope, timeout).await
    }
}

/// Rangefeeds over replicated ranges: spans of a range this node leads resolve at the
/// engine's closed timestamp (every write in flight is evaluated here and registered with the
/// engine); spans of a range it follows resolve at most at the closed timestamp of the
/// commands it applied.
struct ReplicaClosedTimestamps {
    store: Weak<ReplicaStore>,
}

impl ldr_rangefeed::ClosedTimestampSource for ReplicaClosedTimestamps {
    fn closed_timestamp(
        &self,
        spans: &[ldr_types::Span],
        engine_closed: ldr_types::Timestamp,
    ) -> ldr_types::Timestamp {
        let Some(store) = self.store.upgrade() else {
            return engine_closed;
        };
        let mut closed = engine_closed;
        for replica in store.replicas() {
            if !spans.iter().any(|s| s.overlaps(replica.span())) {
                continue;
            }
            if replica.lease_status() != ldr_replica::LeaseStatus::Valid {
                closed = closed.min(replica.closed_ts());
            }
        }
        closed
    }
}

/// A replica-layer error as the cluster layer reports it.
pub(crate) fn kv_error(e: ReplicaError, node_id: NodeId) -> KvError {
    match e {
        ReplicaError::NotLeaseholder { range_id, hint } => KvError::NotLeaseholder {
            range_id,
            hint: hint.and_then(|h| NodeId::try_from(h).ok()),
        },
        ReplicaError::RangeNotFound { range_id } => KvError::RangeNotFound { range_id },
        ReplicaError::Ambiguous { detail, .. } => KvError::AmbiguousResult {
            node_id,
            address: String::new(),
            detail,
        },
        ReplicaError::Storage(s) => KvError::Storage(s),
        other => KvError::Internal(other.to_string()),
    }
}

impl NodeInner {
    /// Opens this node's replica store (once it has an identity) and starts the reconcile
    /// loop.
    pub(crate) async fn start_replication(self: Arc<Self>) {
        let Some(identity) = self.identity().cloned() else {
            return;
        };
        let node_id = u64::from(identity.node_id);
        let grpc = GrpcTransport::new(node_id, identity.cluster_id.clone());
        let transport = Arc::new(KvRaftTransport {
            grpc,
            inner: Arc::downgrade(&self),
        });
        let options = StoreOptions {
            sync_log: !self.settings.bool(RAFT_LOG_SYNC_SETTING),
            ..StoreOptions::default()
        };
        match ReplicaStore::open(node_id, self.engine.clone(), transport, options).await {
            Ok(store) => {
                let _ = self
                    .raft_slot
                    .set((store.clone(), identity.cluster_id.clone()));
                self.rangefeeds
                    .set_closed_timestamp_source(Arc::new(ReplicaClosedTimestamps {
                        store: Arc::downgrade(&store),
                    }));
                let _ = self.replica_store.set(store);
                info!(node_id, "replicas open");
                self.spawn(self.clone().reconcile_loop());
            }
            Err(e) => warn!(error = %e, "cannot open this node's replicas"),
        }
    }

    pub(crate) fn replicas(&self) -> Result<&Arc<ReplicaStore>> {
        self.replica_store
            .get()
            .ok_or_else(|| KvError::Internal("this node's replicas are not open yet".into()))
    }

    /// This node's replica of `range`, if it holds the lease.
    pub(crate) fn leaseholder_replica(&self, range: &RangeDescriptor) -> Result<Arc<Replica>> {
        let me = self.node_id();
        let replica = self
            .replicas()?
            .replica(range.range_id)
            .ok_or(KvError::RangeNotFound {
                range_id: range.range_id,
            })?;
        replica.check_lease().map_err(|e| kv_error(e, me))?;
        Ok(replica)
    }

    /// Creates this node's replica of `range` (idempotent); the range's first replica also
    /// bootstraps the group with every replica as a voter.
    pub(crate) async fn serve_create_replica(
        self: &Arc<Self>,
        range: RangeDescriptor,
    ) -> Result<()> {
        let me = self.require_identity()?.node_id;
        if !range.replicas.contains(&me) {
            return Err(KvError::Internal(format!(
                "range {} has no replica on node {me}",
                range.range_id
            )));
        }
        let store = self.replicas()?.clone();
        store
            .create_replica(range.range_id, range.span.clone())
            .await
            .map_err(|e| kv_error(e, me))?;
        if range.replicas.first() == Some(&me) {
            let mut members = BTreeMap::new();
            for node in &range.replicas {
                let address = self.address_of(*node).await.unwrap_or_default();
                members.insert(u64::from(*node), ReplicaNode::new(address));
            }
            store
                .bootstrap(range.range_id, members)
                .await
                .map_err(|e| kv_error(e, me))?;
        }
        Ok(())
    }

    /// The per-range write latch.
    fn range_latch(&self, range_id: RangeId) -> Arc<tokio::sync::Mutex<()>> {
        self.range_latches
            .lock()
            .entry(range_id)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// Evaluates `rows` at this leaseholder and replicates the result (see the module doc).
    pub(crate) async fn replicated_write(
        self: &Arc<Self>,
        range: &RangeDescriptor,
        rows: Vec<RowWrite>,
        atomic: bool,
    ) -> Result<ApplyResult> {
        let me = self.node_id();
        let latch = self.range_latch(range.range_id);
        let _latch = latch.lock().await;
        // Checked after the latch: the lease may have moved while this write waited.
        let replica = self.leaseholder_replica(range)?;
        let in_flight = self.engine.begin_write(replica.closed_ts().next())?;
        let provisional = in_flight.provisional();
        let evaluation = self
            .storage(rows.len() <= 64, move |e| {
                e.evaluate(&rows, atomic, provisional)
            })
            .await?;
        if evaluation.writes.is_empty() {
            return Ok(ApplyResult {
                ts: evaluation.ts,
                outcomes: evaluation.outcomes,
            });
        }
        let closed = self.engine.closed_timestamp();
        debug_assert!(
            closed < evaluation.ts,
            "closed {closed} ≥ write {}",
            evaluation.ts
        );
        replica
            .propose(Command::new(&evaluation.writes, closed))
            .await
            .map_err(|e| kv_error(e, me))?;
        drop(in_flight);
        Ok(ApplyResult {
            ts: evaluation.ts,
            outcomes: evaluation.outcomes,
        })
    }

    /// Creates missing replicas of ranges that list this node and removes replicas of ranges
    /// that no longer exist or no longer list it.
    async fn reconcile_replicas(self: &Arc<Self>) -> Result<()> {
        let me = self.require_identity()?.node_id;
        let store = self.replicas()?.clone();
        let mut wanted: HashMap<RangeId, RangeDescriptor> = HashMap::new();
        for (_, value) in self.client().sys_scan(system::RANGES).await? {
            let range: RangeDescriptor = system::decode_json("range descriptor", &value)?;
            if range.replicas.contains(&me) {
                wanted.insert(range.range_id, range);
            }
        }
        let held: HashSet<RangeId> = store.replicas().iter().map(|r| r.range_id()).collect();
        for (range_id, range) in &wanted {
            if !held.contains(range_id)
                && let Err(e) = self.serve_create_replica(range.clone()).await
            {
                debug!(range_id, error = %e, "could not create a replica");
            }
        }
        for range_id in held.difference(&wanted.keys().copied().collect()) {
            info!(
                range_id,
                "removing the replica of a range this node no longer holds"
            );
            store
                .remove_replica(*range_id)
                .await
                .map_err(|e| kv_error(e, me))?;
        }
        Ok(())
    }

    async fn reconcile_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RECONCILE_INTERVAL).await;
            if let Err(e) = self.reconcile_replicas().await {
                debug!(error = %e, "replica reconciliation skipped");
            }
        }
    }

    /// Shared with the gRPC server (see `KvNode::raft_service`).
    pub(crate) fn raft_service_slot(&self) -> ServiceSlot {
        self.raft_slot.clone()
    }
}
