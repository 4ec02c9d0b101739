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
//!
//! A range created with one copy (a table created while the cluster had one node, or under
//! `num_replicas = 1`) is written without Raft by its owner. Once its zone wants more copies
//! and another live node can hold one, the owner makes it a Raft group of one voter on the
//! data it already has (`up_replicate`), and the replicate queue then adds voters as for
//! any range (snapshots carry the data), as CockroachDB up-replicates a cluster's ranges
//! when nodes join.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ldr_replica::grpc::{GrpcTransport, ServiceSlot};
use ldr_replica::{
    Command, Envelope, RaftTransport, Replica, ReplicaError, ReplicaNode, ReplicaStore,
    StoreOptions, TransportError,
};
use ldr_storage::{ApplyResult, RowWrite};
use ldr_types::{NodeId, RangeId};
use tracing::{debug, info};

use ldr_proto::pb;

use crate::node::NodeInner;

/// How a replica is being created (`serve_create_replica`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplicaCreation {
    /// One of the replicas a range was created with; the first listed bootstraps the group.
    Original,
    /// One of those, bootstrapping the group because the first listed did not answer.
    Bootstrap,
    /// A member being added to the running group (the replicate queue): a replica of the
    /// range it still holds is left from an earlier membership and is replaced.
    NewMember,
}

impl ReplicaCreation {
    pub(crate) fn from_request(request: &pb::KvCreateReplicaRequest) -> Self {
        if request.new_member {
            ReplicaCreation::NewMember
        } else if request.bootstrap {
            ReplicaCreation::Bootstrap
        } else {
            ReplicaCreation::Original
        }
    }
}
use crate::{KvError, RangeDescriptor, Result};
use crate::{routing, system};

/// How often a node reconciles its replicas with the range descriptors.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);
/// How often a node's replicate queue looks at the ranges it holds the lease of.
const REPLICATE_INTERVAL: Duration = Duration::from_secs(2);
/// How long the replica of a range as created stays uninitialized before its node
/// bootstraps the group itself (see `reconcile_replicas`).
const PRISTINE_GRACE: Duration = Duration::from_secs(4);
/// A replica whose range does not list this node is removed after this long...
const UNLISTED_GRACE: Duration = Duration::from_secs(10);
/// ...or after this long if the replica still counts itself a member (a removed voter
/// that never heard of its removal).
const UNLISTED_GRACE_MEMBER: Duration = Duration::from_secs(120);
/// How often leaseholders publish closed timestamps to followers (the closed timestamp
/// target's default).
const SIDE_TRANSPORT_INTERVAL: Duration = Duration::from_millis(200);
/// Rebalancing steps (replica moves and lease transfers to even out counts) a leaseholder
/// starts per pass; repairs are not limited.
const REBALANCES_PER_PASS: usize = 2;
/// How long one replica change (a learner catching up included) may take.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// `server.time_until_store_dead`.
pub(crate) const TIME_UNTIL_STORE_DEAD: &str = "server.time_until_store_dead";
/// How long a node that just bootstrapped a group waits for its lease.
const LEASE_WAIT: Duration = Duration::from_secs(10);
/// Single-copy ranges a node makes Raft groups per replicate-queue pass.
const UP_REPLICATIONS_PER_PASS: usize = 32;
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
        // Never a lookup that needs the system range: its own messages travel here.
        let inner = self.inner.upgrade();
        let resolved = match (&inner, NodeId::try_from(to)) {
            (Some(inner), Ok(node_id)) => inner.known_address(node_id),
            _ => None,
        };
        let address = resolved.as_deref().unwrap_or(address);
        if inner.is_some_and(|i| i.transport.is_blocked(address)) {
            return Err(TransportError::Unreachable {
                node: to,
                detail: "cut off by a network partition (testbed fault)".into(),
            });
        }
        self.grpc.send(to, address, envelope, timeout).await
    }
}

/// Closed timestamps that leaseholders published for the ranges this node follows (the side
/// transport, as CockroachDB's): `(closed, index)` means no write of the range at or below
/// `closed` is applied after log index `index`, so a follower that applied `index` may
/// resolve up to `closed` without a command of the range carrying it (idle ranges).
#[derive(Default)]
pub(crate) struct SideClosed {
    ranges: parking_lot::Mutex<HashMap<RangeId, SideEntry>>,
}

#[derive(Default, Clone, Copy)]
struct SideEntry {
    /// Usable: its index was applied.
    usable: ldr_types::Timestamp,
    /// The latest publication, usable once `index` is applied.
    pending: Option<(ldr_types::Timestamp, u64)>,
}

impl SideEntry {
    fn promote(&mut self, applied: u64) {
        if let Some((ts, index)) = self.pending
            && applied >= index
        {
            self.usable = self.usable.max(ts);
            self.pending = None;
        }
    }
}

impl SideClosed {
    pub(crate) fn record(&self, range_id: RangeId, closed: ldr_types::Timestamp, index: u64) {
        let mut ranges = self.ranges.lock();
        let entry = ranges.entry(range_id).or_default();
        match entry.pending {
            Some((ts, i)) if ts >= closed && i <= index => {}
            _ => entry.pending = Some((closed, index)),
        }
    }

    /// The closed timestamp a follower that applied `applied` may use for `range_id`.
    pub(crate) fn closed(&self, range_id: RangeId, applied: u64) -> ldr_types::Timestamp {
        let mut ranges = self.ranges.lock();
        match ranges.get_mut(&range_id) {
            Some(entry) => {
                entry.promote(applied);
                entry.usable
            }
            None => ldr_types::Timestamp::ZERO,
        }
    }

    fn forget(&self, keep: impl Fn(RangeId) -> bool) {
        self.ranges.lock().retain(|r, _| keep(*r));
    }
}

/// Rangefeeds over replicated ranges: spans of a range this node leads resolve at the
/// engine's closed timestamp (every write in flight is evaluated here and registered with the
/// engine); spans of a range it follows resolve at most at the closed timestamp of the
/// commands it applied or, when higher, the one its leaseholder published for an index it
/// applied.
struct ReplicaClosedTimestamps {
    store: Weak<ReplicaStore>,
    side: Arc<SideClosed>,
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
                let side = self
                    .side
                    .closed(replica.range_id(), replica.applied_index());
                closed = closed.min(replica.closed_ts().max(side));
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
    /// and replicate loops. Opening twice is a no-op.
    pub(crate) async fn start_replication(self: &Arc<Self>) -> Result<()> {
        let _open = self.replicas_opening.lock().await;
        if self.replica_store.get().is_some() {
            return Ok(());
        }
        let identity = self.require_identity()?.clone();
        let node_id = u64::from(identity.node_id);
        let grpc = GrpcTransport::new(node_id, identity.cluster_id.clone());
        let transport = Arc::new(KvRaftTransport {
            grpc,
            inner: Arc::downgrade(self),
        });
        let options = StoreOptions {
            sync_log: !self.settings.bool(RAFT_LOG_SYNC_SETTING),
            ..StoreOptions::default()
        };
        let store = ReplicaStore::open(node_id, self.engine.clone(), transport, options)
            .await
            .map_err(|e| kv_error(e, identity.node_id))?;
        let _ = self
            .raft_slot
            .set((store.clone(), identity.cluster_id.clone()));
        self.rangefeeds
            .set_closed_timestamp_source(Arc::new(ReplicaClosedTimestamps {
                store: Arc::downgrade(&store),
                side: self.side_closed.clone(),
            }));
        let _ = self.replica_store.set(store);
        info!(node_id, "replicas open");
        self.spawn(self.clone().reconcile_loop());
        self.spawn(self.clone().replicate_loop());
        self.spawn(self.clone().close_timestamps_loop());
        Ok(())
    }

    /// Waits until this node holds `range`'s lease (a group it just bootstrapped).
    pub(crate) async fn wait_for_lease(&self, range: &RangeDescriptor) -> Result<()> {
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        loop {
            match self.leaseholder_replica(range) {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub(crate) fn replicas(&self) -> Result<&Arc<ReplicaStore>> {
        self.replica_store
            .get()
            .ok_or_else(|| KvError::Internal("this node's replicas are not open yet".into()))
    }

    /// This node's replica of `range`, if it holds the lease. (Before the replicas are open,
    /// the range is not found here: the client tries another replica.)
    pub(crate) fn leaseholder_replica(&self, range: &RangeDescriptor) -> Result<Arc<Replica>> {
        let me = self.node_id();
        let replica = self
            .replica_store
            .get()
            .and_then(|s| s.replica(range.range_id))
            .ok_or(KvError::RangeNotFound {
                range_id: range.range_id,
            })?;
        replica.check_lease().map_err(|e| kv_error(e, me))?;
        Ok(replica)
    }

    /// Creates this node's replica of `range` (idempotent); the first replica of a range as
    /// created (generation 0), or another one told to, also bootstraps the group with every
    /// replica as a voter.
    pub(crate) async fn serve_create_replica(
        self: &Arc<Self>,
        range: RangeDescriptor,
        creation: ReplicaCreation,
    ) -> Result<()> {
        let me = self.require_identity()?.node_id;
        if !range.replicas.contains(&me) {
            return Err(KvError::Internal(format!(
                "range {} has no replica on node {me}",
                range.range_id
            )));
        }
        let store = self.replicas()?.clone();
        // A replica left from an earlier membership (removed, not yet deleted) would rejoin
        // with its stale log and term: the leader adding this node as a new member is
        // authoritative that it holds nothing the group needs, so it starts empty (as
        // CockroachDB gives a re-added replica a new replica id).
        if creation == ReplicaCreation::NewMember && store.replica(range.range_id).is_some() {
            info!(
                range_id = range.range_id,
                "replacing a replica left from an earlier membership"
            );
            store
                .remove_replica(range.range_id)
                .await
                .map_err(|e| kv_error(e, me))?;
            self.unlisted_replicas.lock().remove(&range.range_id);
        }
        store
            .create_replica(range.range_id, range.span.clone())
            .await
            .map_err(|e| kv_error(e, me))?;
        // Only a group as created is bootstrapped (by its first replica, or another when the
        // first did not answer); after a membership change, a replica created again joins the
        // running group.
        let bootstrap = match creation {
            ReplicaCreation::Original => range.replicas.first() == Some(&me),
            ReplicaCreation::Bootstrap => true,
            ReplicaCreation::NewMember => false,
        };
        if range.generation == 0 && bootstrap {
            self.bootstrap_as_created(&store, &range).await?;
        }
        Ok(())
    }

    /// Initializes this node's replica of a range as created (generation 0) with every
    /// listed replica as a voter. openraft allows several members to do this with the same
    /// membership: a group whose first replica's node is down is bootstrapped by another.
    async fn bootstrap_as_created(
        self: &Arc<Self>,
        store: &ReplicaStore,
        range: &RangeDescriptor,
    ) -> Result<()> {
        let me = self.node_id();
        let mut members = BTreeMap::new();
        for node in &range.replicas {
            let address = self.address_of(*node).await.unwrap_or_default();
            members.insert(u64::from(*node), ReplicaNode::new(address));
        }
        store
            .bootstrap(range.range_id, members)
            .await
            .map_err(|e| kv_error(e, me))
    }

    /// The per-range write latch.
    pub(crate) fn range_latch(&self, range_id: RangeId) -> Arc<tokio::sync::Mutex<()>> {
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
        txn: Option<ldr_storage::TxnMeta>,
    ) -> Result<ApplyResult> {
        let me = self.node_id();
        let latch = self.range_latch(range.range_id);
        let _latch = latch.lock().await;
        // Checked after the latch: the lease may have moved while this write waited.
        let replica = self.leaseholder_replica(range)?;
        let in_flight = self.engine.begin_write(replica.closed_ts().next())?;
        let provisional = in_flight.provisional();
        let keys: Vec<Vec<u8>> = match &txn {
            Some(_) => rows.iter().flat_map(RowWrite::keys).cloned().collect(),
            None => Vec::new(),
        };
        let meta = txn.clone();
        let evaluation = self
            .storage(rows.len() <= 64, move |e| match &meta {
                None => e.evaluate(&rows, atomic, provisional),
                Some(txn) => e.evaluate_intents(&rows, atomic, provisional, txn),
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
        match &txn {
            // Intents keep the closed timestamp below them until they are resolved.
            Some(txn) => self.hold_intents(txn, range, keys, in_flight),
            None => drop(in_flight),
        }
        Ok(ApplyResult {
            ts: evaluation.ts,
            outcomes: evaluation.outcomes,
        })
    }

    /// Proposes the collection of `range`'s versions up to `threshold` (capped at the
    /// range's closed timestamp by the command) at this leaseholder.
    pub(crate) async fn replicated_gc(
        self: &Arc<Self>,
        range: &RangeDescriptor,
        threshold: ldr_types::Timestamp,
    ) -> Result<()> {
        let me = self.node_id();
        let latch = self.range_latch(range.range_id);
        let _latch = latch.lock().await;
        let replica = self.leaseholder_replica(range)?;
        let closed = self.engine.closed_timestamp().max(replica.closed_ts());
        replica
            .propose(Command::gc(threshold, closed))
            .await
            .map_err(|e| kv_error(e, me))?;
        Ok(())
    }

    /// Creates missing replicas of ranges that list this node and removes replicas of ranges
    /// that no longer exist or no longer list it: after `UNLISTED_GRACE`, or, when the range
    /// exists and this replica is a member by its own account, after `UNLISTED_GRACE_MEMBER`
    /// (a replica being added is listed only once it became a voter).
    async fn reconcile_replicas(self: &Arc<Self>) -> Result<()> {
        let me = self.require_identity()?.node_id;
        let store = self.replicas()?.clone();
        let mut listed: HashMap<RangeId, RangeDescriptor> = HashMap::new();
        let mut existing: std::collections::HashSet<RangeId> = Default::default();
        // Single-copy ranges this node owns: a replica of one is a group being made of it
        // (see `up_replicate`) and holds the range's only copy of the data.
        let mut owned_single: std::collections::HashSet<RangeId> = Default::default();
        for (_, value) in self.client().sys_scan(system::RANGES).await? {
            let range: RangeDescriptor = system::decode_json("range descriptor", &value)?;
            existing.insert(range.range_id);
            if !range.is_replicated() && range.node_id == me {
                owned_single.insert(range.range_id);
            }
            if range.replicas.contains(&me) && range.range_id != system::SYSTEM_RANGE_ID {
                listed.insert(range.range_id, range);
            }
        }
        let held: HashMap<RangeId, Arc<Replica>> = store
            .replicas()
            .into_iter()
            .map(|r| (r.range_id(), r))
            .collect();
        for (range_id, range) in &listed {
            if !held.contains_key(range_id)
                && let Err(e) = self
                    .serve_create_replica(range.clone(), ReplicaCreation::Original)
                    .await
            {
                debug!(range_id, error = %e, "could not create a replica");
            }
        }
        // A range as created whose bootstrapping replica never ran (its node died before
        // it was created there, or the creating node died in between) gets bootstrapped by
        // the other members once their replicas stayed uninitialized for `PRISTINE_GRACE`.
        let now = std::time::Instant::now();
        let overdue: Vec<RangeDescriptor> = {
            let mut pristine = self.pristine_replicas.lock();
            pristine
                .retain(|range_id, _| held.get(range_id).is_some_and(|r| r.members().is_empty()));
            listed
                .values()
                .filter(|range| range.generation == 0)
                .filter(|range| {
                    held.get(&range.range_id)
                        .is_some_and(|r| r.members().is_empty())
                })
                .filter(|range| {
                    let since = *pristine.entry(range.range_id).or_insert(now);
                    now.duration_since(since) >= PRISTINE_GRACE
                })
                .cloned()
                .collect()
        };
        for range in overdue {
            info!(
                range_id = range.range_id,
                "bootstrapping a range whose first replica did not"
            );
            if let Err(e) = self.bootstrap_as_created(&store, &range).await {
                debug!(range_id = range.range_id, error = %e, "could not bootstrap");
            }
        }
        let removals = {
            let mut unlisted = self.unlisted_replicas.lock();
            unlisted.retain(|range_id, _| {
                held.contains_key(range_id) && !listed.contains_key(range_id)
            });
            let mut removals = Vec::new();
            for (range_id, replica) in &held {
                if *range_id == system::SYSTEM_RANGE_ID
                    || listed.contains_key(range_id)
                    || owned_single.contains(range_id)
                {
                    continue;
                }
                let since = *unlisted.entry(*range_id).or_insert(now);
                // A dropped range goes soon; a range that moved away from a replica that
                // still counts itself a member waits longer (it may be joining).
                let member =
                    existing.contains(range_id) && replica.members().contains(&u64::from(me));
                let grace = if member {
                    UNLISTED_GRACE_MEMBER
                } else {
                    UNLISTED_GRACE
                };
                if now.duration_since(since) >= grace {
                    removals.push(*range_id);
                }
            }
            removals
        };
        for range_id in removals {
            info!(
                range_id,
                "removing the replica of a range this node no longer holds"
            );
            self.unlisted_replicas.lock().remove(&range_id);
            store
                .remove_replica(range_id)
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

    /// The replicate queue (CockroachDB's name): every `REPLICATE_INTERVAL`, each range this
    /// node holds the lease of moves one step towards `num_replicas` voters on live nodes
    /// (see `routing::plan_replica_change`), and its descriptor is made to list its voters.
    async fn replicate_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REPLICATE_INTERVAL).await;
            if let Err(e) = self.replicate_once().await {
                debug!(error = %e, "replicate queue pass skipped");
            }
        }
    }

    pub(crate) async fn replicate_once(self: &Arc<Self>) -> Result<()> {
        let me = self.require_identity()?.node_id;
        let store = self.replicas()?.clone();
        let leading: Vec<Arc<Replica>> = store
            .replicas()
            .into_iter()
            .filter(|r| r.lease_status() == ldr_replica::LeaseStatus::Valid)
            .collect();
        let client = self.client();
        let (default_replicas, table_replicas) = client.zone_num_replicas().await?;
        let now = self.clock.now();
        let dead_after = self.settings.duration(TIME_UNTIL_STORE_DEAD);
        let mut placement = routing::Placement::of_nodes(&client.nodes().await?, now, dead_after);
        let mut descriptors: HashMap<RangeId, (Vec<u8>, Vec<u8>, RangeDescriptor)> = HashMap::new();
        for (key, value) in client.sys_scan(system::RANGES).await? {
            let range: RangeDescriptor = system::decode_json("range descriptor", &value)?;
            for node in &range.replicas {
                *placement.load.entry(*node).or_default() += 1;
            }
            descriptors.insert(range.range_id, (key, value, range));
        }
        let num_replicas_of = |desc: &RangeDescriptor| {
            desc.table_id
                .and_then(|t| table_replicas.get(&t))
                .copied()
                .unwrap_or(default_replicas) as usize
        };
        let single: Vec<(Vec<u8>, Vec<u8>, RangeDescriptor)> = descriptors
            .values()
            .filter(|(_, _, d)| routing::should_up_replicate(d, me, num_replicas_of(d), &placement))
            .take(UP_REPLICATIONS_PER_PASS)
            .cloned()
            .collect();
        if !single.is_empty() {
            self.up_replicate(single).await?;
        }
        let mut rebalances = 0;
        for replica in leading {
            let Some((key, stored, desc)) = descriptors.get(&replica.range_id()) else {
                continue; // dropped
            };
            if !desc.is_replicated() {
                continue; // a single-copy range being made a group (see `up_replicate`)
            }
            if replica.lease_status() != ldr_replica::LeaseStatus::Valid {
                continue; // a transfer of an earlier step moved it
            }
            // One step, or two when the first added a voter (the surplus one it replaces is
            // removed at once instead of a pass later); the descriptor follows each change at
            // once (a replica its descriptor does not list is eventually deleted).
            let num_replicas = num_replicas_of(desc);
            let mut current = Some((stored.clone(), desc.clone()));
            for _ in 0..2 {
                let Some((stored, desc)) = current.clone() else {
                    break;
                };
                let voters: Vec<NodeId> = replica
                    .voters()
                    .into_iter()
                    .filter_map(|v| NodeId::try_from(v).ok())
                    .collect();
                let mut change =
                    routing::plan_replica_change(&voters, me, num_replicas, &placement);
                if change.is_none() && rebalances < REBALANCES_PER_PASS && !self.is_draining() {
                    change = routing::plan_rebalance(&voters, me, num_replicas, &placement);
                    rebalances += usize::from(change.is_some());
                }
                let Some(change) = change else { break };
                placement.record(change, me);
                let step = async {
                    match change {
                        routing::ReplicaChange::Add(node) => {
                            self.add_voter(&replica, &desc, &voters, node).await
                        }
                        routing::ReplicaChange::Remove(node) => {
                            self.remove_voter(&replica, &voters, node).await
                        }
                        routing::ReplicaChange::TransferLease(node) => {
                            match self.transfer_lease(&replica, node).await? {
                                true => Ok(()),
                                false => Err(KvError::Internal(format!(
                                    "node {node} did not take the lease"
                                ))),
                            }
                        }
                    }
                };
                // A learner that cannot catch up (its node died meanwhile) must not stall
                // the queue: the next pass tries again.
                let result = tokio::time::timeout(CHANGE_TIMEOUT, step)
                    .await
                    .unwrap_or_else(|_| {
                        Err(KvError::Internal("the replica change timed out".into()))
                    });
                match result {
                    Err(e) => {
                        info!(range_id = desc.range_id, ?change, error = %e, "replica change failed");
                        break;
                    }
                    Ok(()) => info!(range_id = desc.range_id, ?change, "replica change done"),
                }
                if !matches!(change, routing::ReplicaChange::Add(_)) {
                    break;
                }
                current = match self.sync_descriptor(&replica, key, &stored, &desc).await {
                    Ok(c) => c,
                    Err(e) => {
                        info!(range_id = desc.range_id, error = %e, "descriptor update failed");
                        None
                    }
                };
            }
            // One range's failure (a slow system range) must not stop the others' changes.
            if replica.lease_status() == ldr_replica::LeaseStatus::Valid
                && let Some((stored, desc)) = &current
                && let Err(e) = self.sync_descriptor(&replica, key, stored, desc).await
            {
                info!(range_id = desc.range_id, error = %e, "descriptor update failed");
            }
        }
        Ok(())
    }

    /// Makes single-copy ranges this node owns (`(key, stored value, descriptor)` as read
    /// from the system keyspace) Raft groups with this node as their one voter, on the data
    /// already here: the group is created and bootstrapped, and once this node holds its
    /// lease, its log is compacted (so a voter added later gets a snapshot of the data, taken
    /// when sent, instead of the log), then the descriptor is changed to list it, under the
    /// promotion gate, so no write
    /// without Raft is applied afterwards (writes that checked the old descriptor finish
    /// first; later ones see the new one). Every node then drops its cached descriptors.
    /// A range whose change fails stays single-copy and is tried again next pass (its
    /// replica is kept: see `reconcile_replicas`). Returns how many ranges changed.
    async fn up_replicate(
        self: &Arc<Self>,
        ranges: Vec<(Vec<u8>, Vec<u8>, RangeDescriptor)>,
    ) -> Result<usize> {
        let me = self.require_identity()?.node_id;
        let store = self.replicas()?.clone();
        let address = self.address_of(me).await?;
        let bootstrapped = futures::future::join_all(ranges.iter().map(|(_, _, desc)| {
            let store = store.clone();
            let address = address.clone();
            async move {
                store
                    .create_replica(desc.range_id, desc.span.clone())
                    .await
                    .map_err(|e| kv_error(e, me))?;
                store
                    .bootstrap(
                        desc.range_id,
                        BTreeMap::from([(u64::from(me), ReplicaNode::new(address))]),
                    )
                    .await
                    .map_err(|e| kv_error(e, me))?;
                self.wait_for_lease(desc).await?;
                // Voters added later must start from a snapshot: the log holds none of the
                // data written before the group existed.
                let replica = store.replica(desc.range_id).ok_or(KvError::RangeNotFound {
                    range_id: desc.range_id,
                })?;
                replica
                    .compact_log(LEASE_WAIT)
                    .await
                    .map_err(|e| kv_error(e, me))
                    .map(|_| ())
            }
        }))
        .await;
        let client = self.client();
        let mut changed = 0;
        let gate = self.promotion_gate.write().await;
        for ((key, stored, desc), bootstrapped) in ranges.iter().zip(bootstrapped) {
            if let Err(e) = bootstrapped {
                info!(range_id = desc.range_id, error = %e, "could not make a single-copy range a raft group");
                continue;
            }
            let mut updated = desc.clone();
            updated.node_id = me;
            updated.replicas = vec![me];
            updated.generation = desc.generation + 1;
            let value = system::encode_json(&updated);
            match client
                .sys_cput(system::RANGES, key, Some(&value), Some(stored))
                .await
            {
                Ok(Ok(())) => {
                    changed += 1;
                    info!(
                        range_id = desc.range_id,
                        "single-copy range is now a raft group"
                    );
                }
                Ok(Err(_)) => {
                    debug!(
                        range_id = desc.range_id,
                        "range descriptor changed meanwhile"
                    )
                }
                Err(e) => {
                    info!(range_id = desc.range_id, error = %e, "range descriptor update failed")
                }
            }
            if let Some(table_id) = desc.table_id {
                self.ranges.write().remove(table_id);
            }
        }
        drop(gate);
        if changed > 0 {
            client.bump_catalog_generation().await?;
        }
        Ok(changed)
    }

    /// Adds `node` to the group: its (empty) replica is created, then it joins as a learner,
    /// catches up from the log or a snapshot, and becomes a voter.
    async fn add_voter(
        self: &Arc<Self>,
        replica: &Replica,
        desc: &RangeDescriptor,
        voters: &[NodeId],
        node: NodeId,
    ) -> Result<()> {
        let me = self.node_id();
        let mut target = desc.clone();
        target.replicas = voters.to_vec();
        target.replicas.push(node);
        target.generation = desc.generation + 1;
        let request = pb::KvCreateReplicaRequest {
            range_descriptor: system::encode_json(&target),
            new_member: true,
            bootstrap: false,
        };
        self.client().create_replica_on(node, request).await?;
        let address = self.address_of(node).await?;
        let mut new_voters: BTreeSet<u64> = voters.iter().map(|v| u64::from(*v)).collect();
        new_voters.insert(u64::from(node));
        replica
            .change_voters(
                BTreeMap::from([(u64::from(node), ReplicaNode::new(address))]),
                new_voters,
            )
            .await
            .map_err(|e| kv_error(e, me))
    }

    async fn remove_voter(
        self: &Arc<Self>,
        replica: &Replica,
        voters: &[NodeId],
        node: NodeId,
    ) -> Result<()> {
        let me = self.node_id();
        let new_voters: BTreeSet<u64> = voters
            .iter()
            .filter(|v| **v != node)
            .map(|v| u64::from(*v))
            .collect();
        replica
            .change_voters(BTreeMap::new(), new_voters)
            .await
            .map_err(|e| kv_error(e, me))
    }

    /// Makes the stored descriptor list the group's voters (leaseholder first).
    /// Returns the descriptor as stored afterwards (bytes and value), or `None` when another
    /// write changed it meanwhile (the next pass looks again).
    async fn sync_descriptor(
        self: &Arc<Self>,
        replica: &Replica,
        key: &[u8],
        stored: &[u8],
        desc: &RangeDescriptor,
    ) -> Result<Option<(Vec<u8>, RangeDescriptor)>> {
        let me = self.node_id();
        let mut voters: Vec<NodeId> = replica
            .voters()
            .into_iter()
            .filter_map(|v| NodeId::try_from(v).ok())
            .collect();
        voters.sort_unstable_by_key(|v| (*v != me, *v));
        let mut listed = desc.replicas.clone();
        listed.sort_unstable();
        let mut current = voters.clone();
        current.sort_unstable();
        if listed == current || voters.is_empty() {
            return Ok(Some((stored.to_vec(), desc.clone())));
        }
        let mut updated = desc.clone();
        updated.node_id = voters[0];
        updated.replicas = voters;
        updated.generation = desc.generation + 1;
        let value = system::encode_json(&updated);
        match self
            .client()
            .sys_cput(system::RANGES, key, Some(&value), Some(stored))
            .await?
        {
            Ok(()) => {
                info!(range_id = desc.range_id, replicas = ?updated.replicas, "range descriptor updated");
                if let Some(table_id) = desc.table_id {
                    self.ranges.write().remove(table_id);
                }
                Ok(Some((value, updated)))
            }
            Err(_) => Ok(None),
        }
    }

    /// The side transport: every `SIDE_TRANSPORT_INTERVAL`, the closed timestamp and applied
    /// index of every range this node holds the lease of go to the range's other voters, one
    /// request per peer. The engine's closed timestamp is a range's: a write of the range
    /// evaluated here is registered in flight until it is applied here, so every write at or
    /// below it is applied at or before this replica's applied index.
    async fn close_timestamps_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(SIDE_TRANSPORT_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(store) = self.replica_store.get() else {
                continue;
            };
            let me = u64::from(self.node_id());
            let closed = self.engine.closed_timestamp();
            let mut by_peer: BTreeMap<u64, Vec<pb::KvClosedRange>> = BTreeMap::new();
            let replicas = store.replicas();
            for replica in &replicas {
                if replica.lease_status() != ldr_replica::LeaseStatus::Valid {
                    continue;
                }
                let entry = pb::KvClosedRange {
                    range_id: replica.range_id(),
                    closed: Some(closed.into()),
                    applied_index: replica.applied_index(),
                };
                for peer in replica.voters() {
                    if peer != me {
                        by_peer.entry(peer).or_default().push(entry);
                    }
                }
            }
            let held: std::collections::HashSet<RangeId> =
                replicas.iter().map(|r| r.range_id()).collect();
            self.side_closed.forget(|r| held.contains(&r));
            let client = self.client();
            let sends = by_peer.into_iter().filter_map(|(peer, ranges)| {
                let peer = NodeId::try_from(peer).ok()?;
                let client = client.clone();
                Some(async move {
                    let request = pb::KvCloseTimestampsRequest { ranges };
                    if let Err(e) = client.close_timestamps_on(peer, request).await {
                        debug!(peer, error = %e, "closed timestamps not delivered");
                    }
                })
            });
            futures::future::join_all(sends).await;
        }
    }

    /// Shared with the gRPC server (see `KvNode::raft_service`).
    pub(crate) fn raft_service_slot(&self) -> ServiceSlot {
        self.raft_slot.clone()
    }
}
