//! [`KvClient`]: the cluster as seen from one node. Each operation finds the owning range(s)
//! of its keys, then calls the owner in-process (when it is this node) or over gRPC, and
//! merges the answers. System keyspace, settings, protected timestamps, membership and the
//! catalog generation are built on the same primitives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use ldr_proto::pb;
use ldr_storage::{ApplyResult, Condition, KeyVersion, RowOutcome, RowWrite, ValueHeader, Version};
use ldr_types::{Clock, NodeId, OriginId, RangeId, Span, TableId, Timestamp, keys};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::liveness::{self, LivenessRecord};
use crate::node::{NOTIFY_TIMEOUT, NodeInner};
use crate::routing::{self, KeyRoute, SpanTarget};
use crate::settings::{self, Settings};
use crate::system::{self, SYSTEM_RANGE_ID};
use crate::wire;
use crate::{KvError, NodeDescriptor, NodeStatus, PtsRecord, RangeDescriptor, Result};

/// A range and the indexes (into a request's keys) of the keys it holds.
type KeyGroup = (RangeDescriptor, Vec<usize>);

/// Compare-and-swap rounds of a protected timestamp update before giving up.
const PTS_UPDATE_ATTEMPTS_MAX: usize = 100;
/// Compare-and-swap rounds of one counter increment before giving up.
const INCREMENT_ATTEMPTS_MAX: usize = 1000;
/// How long a request looks for a replicated range's leaseholder (elections take 2–4 s).
const LEASE_SEARCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const LEASE_SEARCH_PAUSE_MIN: std::time::Duration = std::time::Duration::from_millis(25);
const LEASE_SEARCH_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(500);
/// The key of the default zone configuration in `zones`.
const DEFAULT_ZONE: &[u8] = b"default";
/// Zone keys of tables: `table/<id>`.
const TABLE_ZONE_PREFIX: &[u8] = b"table/";

fn table_zone_key(table_id: TableId) -> Vec<u8> {
    let mut key = TABLE_ZONE_PREFIX.to_vec();
    key.extend_from_slice(table_id.to_string().as_bytes());
    key
}
/// The largest replication factor accepted.
pub const NUM_REPLICAS_MAX: u32 = 7;
/// `num_replicas` of the default zone until it is configured.
pub const DEFAULT_NUM_REPLICAS: u32 = 3;

/// The cluster as seen from one node (cheap to clone).
#[derive(Clone)]
pub struct KvClient {
    pub(crate) inner: Arc<NodeInner>,
    /// Set for a transaction's client ([`crate::KvTxn::client`]): writes are its intents.
    pub(crate) txn: Option<Arc<crate::txn::TxnState>>,
}

impl KvClient {
    pub(crate) fn from_inner(inner: Arc<NodeInner>) -> KvClient {
        KvClient { inner, txn: None }
    }

    /// Who this client is when it meets an intent: a transaction, a reader at `read_ts`
    /// (pushes the holder's timestamp above it), or a writer.
    fn pusher(&self, read_ts: Option<Timestamp>) -> crate::txn::Pusher {
        match (&self.txn, read_ts) {
            (Some(_), _) => crate::txn::Pusher::Txn,
            (None, Some(read_ts)) => crate::txn::Pusher::Reader { read_ts },
            (None, None) => crate::txn::Pusher::NonTxn,
        }
    }

    /// Runs `op` until it meets no other transaction's intent: each intent met is pushed out
    /// of the way first (see `txn.rs`; `read_ts` is the timestamp of a read, `None` for a
    /// write or a read at the owner's now). An intent of this client's own transaction is
    /// answered by `own` (a read of its own write), or is an internal error where that cannot
    /// happen.
    async fn past_intents<T, F, Fut>(
        &self,
        read_ts: Option<Timestamp>,
        own: impl Fn(&ldr_storage::IntentConflict) -> Option<T>,
        op: F,
    ) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        loop {
            match op().await {
                Err(KvError::Storage(ldr_storage::StorageError::WriteIntent(c))) => {
                    if let Some(t) = &self.txn
                        && t.meta.txn_id == c.txn.txn_id
                    {
                        return own(&c).ok_or_else(|| {
                            KvError::Internal(format!("a transaction met its own intent: {c}"))
                        });
                    }
                    self.push_intent(&c, &self.pusher(read_ts)).await?;
                }
                other => return other,
            }
        }
    }

    pub(crate) fn inner(&self) -> &Arc<NodeInner> {
        &self.inner
    }

    /// This node's id (0 before the node belongs to a cluster).
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id()
    }

    /// The cluster's UUID, as text ("" before the node belongs to a cluster).
    pub fn cluster_id(&self) -> String {
        self.inner
            .identity()
            .map(|i| i.cluster_id.clone())
            .unwrap_or_default()
    }

    /// This cluster's identity in LWW tie-breaks and in the origin ids stamped by the
    /// clusters it replicates into: a stable non-zero hash of the cluster id (0 before the
    /// node belongs to a cluster).
    pub fn origin_id(&self) -> OriginId {
        self.inner.identity().map(|i| i.origin_id).unwrap_or(0)
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.inner.clock
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// This node's descriptor (addresses; node id 0 before it has one).
    pub fn local_node(&self) -> NodeDescriptor {
        self.inner.self_descriptor()
    }

    // ---- data ----

    /// The newest version at or below `read_ts` (default: the owner's now), tombstones
    /// included.
    pub async fn get(&self, key: &[u8], read_ts: Option<Timestamp>) -> Result<Option<Version>> {
        self.inner.require_identity()?;
        self.past_intents(
            read_ts,
            |c| {
                Some(Some(Version {
                    ts: c.write_ts,
                    header: ValueHeader::default(),
                    value: c.value.clone(),
                }))
            },
            || self.get_once(key, read_ts),
        )
        .await
    }

    /// Whether this is a transaction's client (its writes are intents).
    pub fn in_txn(&self) -> bool {
        self.txn.is_some()
    }

    /// A client outside any transaction, on the same node.
    pub(crate) fn plain(&self) -> KvClient {
        KvClient::from_inner(self.inner.clone())
    }

    /// A write of one transaction record (never an intent, and records never hold intents).
    pub(crate) async fn write_record(&self, row: RowWrite) -> Result<RowOutcome> {
        let plain = self.plain();
        let range = plain.range_for_key(&row.key).await?;
        let applied = match plain
            .write_to_range_once(&range, vec![row.clone()], true)
            .await
        {
            Err(KvError::RangeNotFound { .. }) => {
                let fresh = plain.refreshed_range(&range).await?;
                plain.write_to_range_once(&fresh, vec![row], true).await?
            }
            other => other?,
        };
        applied
            .outcomes
            .into_iter()
            .next()
            .ok_or_else(|| KvError::Internal("a record write without an outcome".into()))
    }

    pub(crate) async fn get_once(
        &self,
        key: &[u8],
        read_ts: Option<Timestamp>,
    ) -> Result<Option<Version>> {
        let range = self.range_for_key(key).await?;
        match self.get_in_range(&range, key, read_ts).await {
            Err(KvError::RangeNotFound { .. }) if range.table_id.is_some() => {
                let fresh = self.refreshed_range(&range).await?;
                self.get_in_range(&fresh, key, read_ts).await
            }
            other => other,
        }
    }

    /// Point reads of many keys, in input order (tombstones included, as [`KvClient::get`]):
    /// keys are grouped by range and ranges by owner, each owner answers in one request, and
    /// owners are read concurrently. `read_ts` `None` reads at each owner's now. If any read
    /// fails, the error is returned.
    pub async fn get_many(
        &self,
        keys: &[Vec<u8>],
        read_ts: Option<Timestamp>,
    ) -> Result<Vec<Option<Version>>> {
        self.inner.require_identity()?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match self
            .past_intents(read_ts, |_| None, || self.get_many_once(keys, read_ts))
            .await
        {
            // A transaction reading keys it wrote: one at a time, its own intents included.
            Err(KvError::Internal(m)) if self.txn.is_some() && m.contains("its own intent") => {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    out.push(self.get(key, read_ts).await?);
                }
                Ok(out)
            }
            other => other,
        }
    }

    async fn get_many_once(
        &self,
        keys: &[Vec<u8>],
        read_ts: Option<Timestamp>,
    ) -> Result<Vec<Option<Version>>> {
        let mut tables: HashMap<TableId, Arc<[RangeDescriptor]>> = HashMap::new();
        for key in keys {
            if let KeyRoute::Table { table_id, .. } = routing::route_key(key)?
                && let std::collections::hash_map::Entry::Vacant(e) = tables.entry(table_id)
            {
                e.insert(self.table_ranges_cached(table_id).await?);
            }
        }
        let groups = routing::group_keys(keys, |key| locate(&self.inner, &tables, key))?;
        let mut by_node: Vec<(NodeId, Vec<KeyGroup>)> = Vec::new();
        let mut replicated: Vec<KeyGroup> = Vec::new();
        for (range, indexes) in groups {
            if range.is_replicated() {
                replicated.push((range, indexes));
                continue;
            }
            match by_node.iter_mut().find(|(n, _)| *n == range.node_id) {
                Some((_, g)) => g.push((range, indexes)),
                None => by_node.push((range.node_id, vec![(range, indexes)])),
            }
        }
        let reads = by_node
            .into_iter()
            .map(|(node_id, groups)| self.get_many_on_node(node_id, groups, keys, read_ts));
        // A replicated range is read at its leaseholder, wherever that is now.
        let replicated_reads = replicated.into_iter().map(|(range, indexes)| async move {
            let group = vec![(range.clone(), indexes.clone())];
            let versions = self
                .on_leaseholder(&range, |node_id| {
                    self.read_on_node(node_id, &group, keys, read_ts)
                })
                .await?;
            Ok::<_, KvError>(indexes.into_iter().zip(versions).collect::<Vec<_>>())
        });
        let mut out: Vec<Option<Version>> = vec![None; keys.len()];
        let (parts, replicated_parts) =
            futures::future::join(join_all(reads), join_all(replicated_reads)).await;
        for part in parts.into_iter().chain(replicated_parts) {
            for (i, v) in part? {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Live rows in `span` (may cross ranges) at `read_ts` (default: each owner's now), key
    /// order, at most `limit` rows (0 = no limit).
    pub async fn scan(
        &self,
        span: &Span,
        read_ts: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<KeyVersion>> {
        self.inner.require_identity()?;
        let pieces = match routing::span_target(span) {
            SpanTarget::Empty => return Ok(Vec::new()),
            SpanTarget::System => vec![(self.inner.system_range(), span.clone())],
            SpanTarget::Table(table_id) => {
                routing::split_span(span, &self.table_ranges_cached(table_id).await?)
            }
            SpanTarget::Many => routing::split_span(span, &self.all_ranges().await?),
        };
        let scans = pieces
            .iter()
            .map(|(range, piece)| self.scan_piece(range, piece, read_ts, limit));
        let parts = join_all(scans)
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        Ok(routing::merge_scans(parts, limit))
    }

    /// Scans one range's piece of a span past other transactions' intents (pushed out of
    /// the way). A transaction's client reads its own intents as their provisional values:
    /// the scan stops at one, so the piece is read in parts around it.
    async fn scan_piece(
        &self,
        range: &RangeDescriptor,
        piece: &Span,
        read_ts: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<KeyVersion>> {
        // `limit` 0: no limit (as the storage engine takes it).
        let room = |n: usize| limit == 0 || n < limit;
        let mut out: Vec<KeyVersion> = Vec::new();
        let mut start = piece.start.clone();
        while room(out.len()) {
            let sub = Span::new(start.clone(), piece.end.clone());
            let want = if limit == 0 { 0 } else { limit - out.len() };
            let got = self
                .past_intents(
                    read_ts,
                    |own| Some(Err(own.clone())),
                    || async {
                        match self.scan_in_range(range, &sub, read_ts, want).await {
                            Err(KvError::RangeNotFound { .. }) if range.table_id.is_some() => {
                                let fresh = self.refreshed_range(range).await?;
                                self.scan_in_range(&fresh, &sub, read_ts, want).await
                            }
                            other => other,
                        }
                        .map(Ok)
                    },
                )
                .await?;
            let own = match got {
                Ok(rows) => {
                    out.extend(rows);
                    break;
                }
                Err(own) => own,
            };
            // Our own intent at `own.key`: what lies before it, then the intent itself.
            let before = Span::new(start.clone(), own.key.clone());
            if !before.is_empty() {
                let rows = Box::pin(self.scan_piece(range, &before, read_ts, want)).await?;
                out.extend(rows);
            }
            if room(out.len()) {
                out.push(KeyVersion {
                    key: own.key.clone(),
                    version: Version {
                        ts: own.write_ts,
                        header: ValueHeader::default(),
                        value: own.value.clone(),
                    },
                });
            }
            start = own.key;
            start.push(0);
            if !piece.end.is_empty() && start >= piece.end {
                break;
            }
        }
        Ok(out)
    }

    /// Routes each row (with its dependents, which must live in the same range) to its range
    /// owner; rows of one range go in one request, ranges are written concurrently. `atomic`
    /// applies per range. Outcomes come back in input order with the commit timestamp of the
    /// row's range batch. If any range fails, the error is returned (other ranges may have
    /// been written).
    pub async fn write(
        &self,
        rows: Vec<RowWrite>,
        atomic: bool,
    ) -> Result<Vec<(Timestamp, RowOutcome)>> {
        self.inner.require_identity()?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut tables: HashMap<TableId, Arc<[RangeDescriptor]>> = HashMap::new();
        for row in &rows {
            if let KeyRoute::Table { table_id, .. } = routing::route_key(&row.key)?
                && let std::collections::hash_map::Entry::Vacant(e) = tables.entry(table_id)
            {
                e.insert(self.table_ranges_cached(table_id).await?);
            }
        }
        let groups = routing::group_rows(&rows, |key| locate(&self.inner, &tables, key))?;
        let count = rows.len();
        let mut slots: Vec<Option<RowWrite>> = rows.into_iter().map(Some).collect();
        let sends = groups.into_iter().map(|(range, indexes)| {
            let batch: Vec<RowWrite> = indexes
                .iter()
                .map(|i| slots[*i].take().expect("each row belongs to one group"))
                .collect();
            async move { (self.write_to_range(&range, batch, atomic).await, indexes) }
        });
        let results = join_all(sends.collect::<Vec<_>>()).await;
        let mut outcomes: Vec<Option<(Timestamp, RowOutcome)>> = vec![None; count];
        for (result, indexes) in results {
            let applied = result?;
            if applied.outcomes.len() != indexes.len() {
                return Err(KvError::Internal(format!(
                    "range answered {} outcomes for {} rows",
                    applied.outcomes.len(),
                    indexes.len()
                )));
            }
            for (i, outcome) in indexes.into_iter().zip(applied.outcomes) {
                outcomes[i] = Some((applied.ts, outcome));
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every row got an outcome"))
            .collect())
    }

    // ---- ranges ----

    pub async fn range_for_key(&self, key: &[u8]) -> Result<RangeDescriptor> {
        match routing::route_key(key)? {
            KeyRoute::System => Ok(self.inner.system_range()),
            KeyRoute::Table { table_id, .. } => locate(
                &self.inner,
                &HashMap::from([(table_id, self.table_ranges_cached(table_id).await?)]),
                key,
            ),
        }
    }

    pub async fn table_ranges(&self, table_id: TableId) -> Result<Vec<RangeDescriptor>> {
        Ok(self.table_ranges_cached(table_id).await?.to_vec())
    }

    /// The table's range descriptors as stored now (`SHOW RANGES`: this node's cache may
    /// predate replica changes another node's replicate queue made).
    pub async fn table_ranges_fresh(&self, table_id: TableId) -> Result<Vec<RangeDescriptor>> {
        self.inner.ranges.write().remove(table_id);
        self.table_ranges(table_id).await
    }

    /// Creates `shard_count` ranges (default: 3 per live node) spread round-robin over live
    /// nodes. Creating the ranges of a table that already has them returns the existing ones.
    pub async fn create_table_ranges(
        &self,
        table_id: TableId,
        shard_count: Option<u16>,
    ) -> Result<Vec<RangeDescriptor>> {
        let me = self.inner.require_identity()?.node_id;
        match self.load_table_ranges(table_id).await {
            Ok(existing) => return Ok(existing.to_vec()),
            Err(KvError::NoRanges { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut live: Vec<NodeId> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|s| s.is_live)
            .map(|s| s.node.node_id)
            .collect();
        if !live.contains(&me) {
            live.push(me);
        }
        let count = shard_count.unwrap_or_else(|| routing::default_shard_count(live.len()));
        if count == 0 {
            return Err(KvError::Internal("a table needs at least one shard".into()));
        }
        let last = self
            .sys_increment(system::COUNTER_RANGE_ID, i64::from(count))
            .await?;
        let first = u64::try_from(last - i64::from(count) + 1)
            .map_err(|_| KvError::Internal(format!("range id counter is corrupt ({last})")))?;
        let num_replicas = self.default_num_replicas().await? as usize;
        let ranges = routing::assign_shards(table_id, count, &live, first, num_replicas);
        let rows: Vec<RowWrite> = ranges
            .iter()
            .map(|r| RowWrite {
                condition: Condition::Expect(None),
                ..system::put_row(
                    system::RANGES,
                    &system::range_key(table_id, r.shard),
                    system::encode_json(r),
                )
            })
            .collect();
        let applied = self
            .write_to_range(&self.inner.system_range(), rows, true)
            .await?;
        if applied
            .outcomes
            .iter()
            .any(|o| !matches!(o, RowOutcome::Written { .. }))
        {
            // Another node created them concurrently: theirs stand.
            debug!(table_id, "table ranges were created concurrently");
            return Ok(self.load_table_ranges(table_id).await?.to_vec());
        }
        self.inner.ranges.write().insert(table_id, ranges.clone());
        self.create_replicas(&ranges).await?;
        Ok(ranges)
    }

    /// Creates the replicas of new replicated ranges on their nodes (each node's reconcile
    /// loop would too, within seconds) and waits until every range has a leaseholder.
    async fn create_replicas(&self, ranges: &[RangeDescriptor]) -> Result<()> {
        let request = |range: &RangeDescriptor, bootstrap: bool| pb::KvCreateReplicaRequest {
            range_descriptor: system::encode_json(range),
            new_member: false,
            bootstrap,
        };
        let creations = ranges
            .iter()
            .filter(|r| r.is_replicated())
            .flat_map(|r| r.replicas.iter().map(move |n| (r, *n)))
            .map(|(range, node_id)| async move {
                let result = self.create_replica_on(node_id, request(range, false)).await;
                if let Err(e) = &result {
                    // A node that is down gets its replica from its reconcile loop later.
                    debug!(range_id = range.range_id, node_id, error = %e, "replica not created now");
                }
                (range, node_id, result.is_ok())
            });
        let created = join_all(creations).await;
        // A range whose first replica (its bootstrapper) was not created is bootstrapped by
        // the first one that was: a node that died moments ago may still count as live.
        let bootstraps = ranges
            .iter()
            .filter(|r| r.is_replicated())
            .filter_map(|range| {
                // `created` lists each range's replicas in order.
                let first_created = created
                    .iter()
                    .find(|(c, _, ok)| c.range_id == range.range_id && *ok)
                    .map(|(_, n, _)| *n)?;
                (range.replicas.first() != Some(&first_created)).then_some((range, first_created))
            })
            .map(|(range, node_id)| async move {
                info!(
                    range_id = range.range_id,
                    node_id, "the range's first replica was not created; another bootstraps it"
                );
                if let Err(e) = self.create_replica_on(node_id, request(range, true)).await {
                    debug!(range_id = range.range_id, node_id, error = %e, "could not bootstrap");
                }
            });
        join_all(bootstraps).await;
        let ready = ranges.iter().filter(|r| r.is_replicated()).map(|range| {
            self.on_leaseholder(range, |node_id| {
                self.scan_on(node_id, range, &range.span, None, 1)
            })
        });
        for result in join_all(ready).await {
            result?;
        }
        Ok(())
    }

    /// Asks `node_id` to create its replica of the range in `request` (in-process for this
    /// node).
    pub(crate) async fn create_replica_on(
        &self,
        node_id: NodeId,
        request: pb::KvCreateReplicaRequest,
    ) -> Result<()> {
        if node_id == self.node_id() {
            let range = system::decode_json("range descriptor", &request.range_descriptor)?;
            let creation = crate::replication::ReplicaCreation::from_request(&request);
            return self.inner.serve_create_replica(range, creation).await;
        }
        self.call_owner(node_id, request, |mut c, r| async move {
            c.create_replica(r).await
        })
        .await
        .map(|_| ())
    }

    /// Asks `node_id`'s replica of `range_id` to campaign (a lease transfer's target).
    pub(crate) async fn campaign_on(&self, node_id: NodeId, range_id: RangeId) -> Result<bool> {
        self.call_owner(
            node_id,
            pb::KvCampaignRequest { range_id },
            |mut c, r| async move { c.campaign(r).await },
        )
        .await
        .map(|r| r.leader)
    }

    /// Sends closed timestamps to `node_id` (the side transport), with a short timeout.
    pub(crate) async fn close_timestamps_on(
        &self,
        node_id: NodeId,
        request: pb::KvCloseTimestampsRequest,
    ) -> Result<()> {
        let cluster_id = self.inner.require_identity()?.cluster_id.clone();
        let address = self
            .inner
            .known_address(node_id)
            .ok_or(KvError::NodeUnavailable {
                node_id,
                address: String::new(),
                detail: "no address is known for this node".into(),
            })?;
        self.inner
            .transport
            .call(
                node_id,
                &address,
                Some(&cluster_id),
                Some(NOTIFY_TIMEOUT),
                request,
                |mut c, r| async move { c.close_timestamps(r).await },
            )
            .await
            .map(|_| ())
    }

    /// The replication factor of every range (`ALTER RANGE default CONFIGURE ZONE USING
    /// num_replicas = N`; 3 until set, as in CockroachDB; capped by the nodes there are).
    pub async fn default_num_replicas(&self) -> Result<u32> {
        match self.sys_get(system::ZONES, DEFAULT_ZONE).await? {
            None => Ok(DEFAULT_NUM_REPLICAS),
            Some(bytes) => {
                let n = system::decode_counter("num_replicas", &bytes)?;
                u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=NUM_REPLICAS_MAX).contains(n))
                    .ok_or_else(|| KvError::Internal(format!("stored num_replicas {n} is invalid")))
            }
        }
    }

    /// `ALTER TABLE t CONFIGURE ZONE USING num_replicas = N` (`None`: `DISCARD`, back to the
    /// default zone's). The replicate queue changes the table's ranges one replica at a time
    /// (single-copy ranges first become Raft groups on their owner).
    pub async fn set_table_num_replicas(&self, table_id: TableId, n: Option<u32>) -> Result<()> {
        let key = table_zone_key(table_id);
        let Some(n) = n else {
            return self.sys_delete(system::ZONES, &key).await;
        };
        if !(1..=NUM_REPLICAS_MAX).contains(&n) {
            return Err(KvError::InvalidSetting {
                name: "num_replicas".into(),
                value: n.to_string(),
                detail: format!("must be between 1 and {NUM_REPLICAS_MAX}"),
            });
        }
        self.sys_put(system::ZONES, &key, &system::encode_counter(i64::from(n)))
            .await
    }

    /// The zone configs: the default zone's `num_replicas` and every table's own.
    pub async fn zone_num_replicas(&self) -> Result<(u32, HashMap<TableId, u32>)> {
        let default = self.default_num_replicas().await?;
        let mut tables = HashMap::new();
        for (key, value) in self.sys_scan(system::ZONES).await? {
            let Some(id) = key
                .strip_prefix(TABLE_ZONE_PREFIX)
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| k.parse::<TableId>().ok())
            else {
                continue;
            };
            let n = system::decode_counter("num_replicas", &value)?;
            if let Ok(n) = u32::try_from(n)
                && (1..=NUM_REPLICAS_MAX).contains(&n)
            {
                tables.insert(id, n);
            }
        }
        Ok((default, tables))
    }

    /// Sets the replication factor of ranges created from now on.
    pub async fn set_default_num_replicas(&self, n: u32) -> Result<()> {
        if !(1..=NUM_REPLICAS_MAX).contains(&n) {
            return Err(KvError::InvalidSetting {
                name: "num_replicas".into(),
                value: n.to_string(),
                detail: format!("must be between 1 and {NUM_REPLICAS_MAX}"),
            });
        }
        self.sys_put(
            system::ZONES,
            DEFAULT_ZONE,
            &system::encode_counter(i64::from(n)),
        )
        .await
    }

    /// The node serving `range` now: its owner, or a replicated range's leaseholder (found as
    /// requests find it).
    pub async fn range_leaseholder(&self, range: &RangeDescriptor) -> Result<NodeId> {
        if !range.is_replicated() {
            return Ok(range.node_id);
        }
        self.on_leaseholder(range, |node_id| async move {
            match self.scan_on(node_id, range, &range.span, None, 1).await {
                // An intent in the way: the node served the read, so it holds the lease.
                Ok(_) | Err(KvError::Storage(ldr_storage::StorageError::WriteIntent(_))) => {
                    Ok(node_id)
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Every range descriptor as stored (the system range's lists the voters its
    /// leaseholder last recorded), for `SHOW CLUSTER RANGES`.
    pub async fn cluster_ranges(&self) -> Result<Vec<RangeDescriptor>> {
        self.sys_scan(system::RANGES)
            .await?
            .into_iter()
            .map(|(_, v)| system::decode_json::<RangeDescriptor>("range descriptor", &v))
            .collect()
    }

    /// The replicas of `range` as this node's replica of it sees them (leaseholder, voters,
    /// applied index), when this node holds one.
    pub fn local_replica_status(&self, range_id: RangeId) -> Option<ldr_replica::ReplicaStatus> {
        self.inner
            .replica_store
            .get()
            .and_then(|s| s.replica(range_id))
            .map(|r| r.status())
    }

    /// Deletes every key of the table and its range descriptors. Needs every owner up (a
    /// retryable error otherwise; run it again). Dropping a table without ranges is a no-op.
    pub async fn drop_table_ranges(&self, table_id: TableId) -> Result<()> {
        self.inner.require_identity()?;
        let ranges = match self.load_table_ranges(table_id).await {
            Ok(r) => r,
            Err(KvError::NoRanges { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let clears = ranges.iter().map(|r| self.clear_range(r));
        for result in join_all(clears).await {
            result?;
        }
        let rows: Vec<RowWrite> = ranges
            .iter()
            .map(|r| RowWrite {
                value: None,
                ..system::put_row(
                    system::RANGES,
                    &system::range_key(table_id, r.shard),
                    Vec::new(),
                )
            })
            .collect();
        self.write_to_range(&self.inner.system_range(), rows, true)
            .await?;
        self.inner.ranges.write().remove(table_id);
        Ok(())
    }

    // ---- membership ----

    /// Every node that ever joined, with its liveness as seen by this node's clock.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>> {
        let descriptors = self
            .sys_scan(system::NODES)
            .await?
            .into_iter()
            .map(|(_, v)| system::decode_json::<NodeDescriptor>("node descriptor", &v))
            .collect::<Result<Vec<_>>>()?;
        let records = self
            .sys_scan(system::LIVENESS)
            .await?
            .into_iter()
            .map(|(_, v)| system::decode_json::<LivenessRecord>("liveness", &v))
            .collect::<Result<Vec<_>>>()?;
        let memberships = self.memberships().await?;
        Ok(liveness::statuses(
            descriptors,
            &records,
            &memberships,
            self.inner.clock.now(),
        ))
    }

    /// Memberships set by operators (nodes without one are active).
    async fn memberships(&self) -> Result<Vec<(NodeId, crate::Membership)>> {
        self.sys_scan(system::MEMBERSHIP)
            .await?
            .into_iter()
            .map(|(k, v)| {
                let id = system::node_id_of_key(&k)?;
                Ok((id, system::decode_json("node membership", &v)?))
            })
            .collect()
    }

    /// Sets the membership of `node_ids` (`ldr node decommission` / `recommission`). A
    /// decommissioned node stays decommissioned. Decommissioning is refused when the nodes
    /// left could not hold every range's replicas (CockroachDB's pre-check), or when a node
    /// holds a single-copy range (it has nowhere to go).
    pub async fn change_membership(
        &self,
        node_ids: &[NodeId],
        membership: crate::Membership,
    ) -> Result<()> {
        use crate::Membership;
        let nodes = self.nodes().await?;
        for id in node_ids {
            let Some(status) = nodes.iter().find(|n| n.node.node_id == *id) else {
                return Err(KvError::InvalidRequest(format!("node {id} does not exist")));
            };
            if status.membership == Membership::Decommissioned && membership != status.membership {
                return Err(KvError::InvalidRequest(format!(
                    "node {id} is decommissioned and cannot become {}",
                    membership.as_str()
                )));
            }
        }
        if membership != Membership::Active {
            let staying = nodes
                .iter()
                .filter(|n| {
                    n.membership == Membership::Active && !node_ids.contains(&n.node.node_id)
                })
                .count();
            let (default, tables) = self.zone_num_replicas().await?;
            let factor = tables.values().copied().fold(default, u32::max) as usize;
            let ranges = self.cluster_ranges().await?;
            let widest = ranges.iter().map(|r| r.replicas.len()).max().unwrap_or(0);
            let needed = factor.min(widest.max(1));
            if staying < needed {
                return Err(KvError::InvalidRequest(format!(
                    "cannot decommission {}: {staying} active node(s) would remain, fewer than \
                     the {needed} replicas ranges keep (num_replicas = {factor}); add nodes or \
                     lower num_replicas first",
                    node_list(node_ids)
                )));
            }
            if let Some(r) = ranges
                .iter()
                .find(|r| r.replicas.is_empty() && node_ids.contains(&r.node_id))
            {
                return Err(KvError::InvalidRequest(format!(
                    "cannot decommission node {}: it holds range {}, which has a single copy \
                     (num_replicas = 1); raise num_replicas first",
                    r.node_id, r.range_id
                )));
            }
        }
        for id in node_ids {
            let current = nodes
                .iter()
                .find(|n| n.node.node_id == *id)
                .map(|n| n.membership);
            if current == Some(membership) {
                continue;
            }
            let key = system::node_key(*id);
            match membership {
                Membership::Active => self.sys_delete(system::MEMBERSHIP, &key).await?,
                _ => {
                    self.sys_put(system::MEMBERSHIP, &key, &system::encode_json(&membership))
                        .await?
                }
            }
        }
        Ok(())
    }

    /// Replicas per node, from the range descriptors (the system range included).
    pub async fn replica_counts(&self) -> Result<HashMap<NodeId, usize>> {
        let mut counts = HashMap::new();
        for range in self.cluster_ranges().await? {
            if range.replicas.is_empty() {
                *counts.entry(range.node_id).or_default() += 1;
            }
            for node in range.replicas {
                *counts.entry(node).or_default() += 1;
            }
        }
        Ok(counts)
    }

    pub async fn is_node_live(&self, node_id: NodeId) -> Result<bool> {
        match self
            .sys_get(system::LIVENESS, &system::node_key(node_id))
            .await?
        {
            Some(v) => Ok(system::decode_json::<LivenessRecord>("liveness", &v)?
                .is_live_at(self.inner.clock.now())),
            None => Ok(false),
        }
    }

    // ---- system keyspace (JSON or raw bytes under `0x01 <subspace> 0x00 <key>`) ----

    pub async fn sys_get(&self, subspace: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let version = self.get(&keys::system_key(subspace, key), None).await?;
        Ok(version.and_then(|v| v.value))
    }

    pub async fn sys_put(&self, subspace: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.sys_write_one(system::put_row(subspace, key, value.to_vec()))
            .await
            .map(|_| ())
    }

    /// Compare-and-put: writes iff the current value equals `expected` (`None`: absent).
    /// `value: None` deletes. Returns the actual value on mismatch.
    pub async fn sys_cput(
        &self,
        subspace: &str,
        key: &[u8],
        value: Option<&[u8]>,
        expected: Option<&[u8]>,
    ) -> Result<Result<(), Option<Vec<u8>>>> {
        let row = RowWrite {
            key: keys::system_key(subspace, key),
            value: value.map(<[u8]>::to_vec),
            condition: Condition::Expect(expected.map(<[u8]>::to_vec)),
            header: ValueHeader::default(),
            dependents: Vec::new(),
        };
        match self.sys_write_one(row).await? {
            RowOutcome::Written { .. } => Ok(Ok(())),
            RowOutcome::ConditionFailed { actual } => Ok(Err(actual.and_then(|v| v.value))),
            other => Err(KvError::Internal(format!(
                "unexpected outcome of a conditional put: {other:?}"
            ))),
        }
    }

    pub async fn sys_delete(&self, subspace: &str, key: &[u8]) -> Result<()> {
        let row = RowWrite {
            value: None,
            ..system::put_row(subspace, key, Vec::new())
        };
        self.sys_write_one(row).await.map(|_| ())
    }

    /// Every `(key, value)` of a subspace, in key order (keys without the subspace prefix).
    pub async fn sys_scan(&self, subspace: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.sys_scan_prefix(subspace, b"").await
    }

    /// Every `(key, value)` of a subspace whose key starts with `prefix`, in key order (keys
    /// without the subspace prefix).
    pub async fn sys_scan_prefix(
        &self,
        subspace: &str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let strip = keys::system_key(subspace, b"").len();
        let span = Span::prefix(&keys::system_key(subspace, prefix));
        let rows = self.scan(&span, None, 0).await?;
        Ok(rows
            .into_iter()
            .filter_map(|kv| kv.version.value.map(|v| (kv.key[strip..].to_vec(), v)))
            .collect())
    }

    /// Atomically increments a counter and returns the new value (id allocation). A missing
    /// counter counts as 0. A compare-and-swap at the system range's leaseholder, retried
    /// while other nodes increment concurrently; an ambiguous write is the caller's error
    /// (the counter may have moved: ids have gaps, never duplicates).
    pub async fn sys_increment(&self, counter: &str, by: i64) -> Result<i64> {
        self.inner.require_identity()?;
        for attempt in 0..INCREMENT_ATTEMPTS_MAX {
            let current = self.sys_get(system::COUNTERS, counter.as_bytes()).await?;
            let value = match &current {
                Some(bytes) => system::decode_counter(counter, bytes)?,
                None => 0,
            };
            let next = value
                .checked_add(by)
                .ok_or_else(|| KvError::Internal(format!("counter {counter:?} would overflow")))?;
            let swapped = self
                .sys_cput(
                    system::COUNTERS,
                    counter.as_bytes(),
                    Some(&system::encode_counter(next)),
                    current.as_deref(),
                )
                .await?;
            if swapped.is_ok() {
                return Ok(next);
            }
            let pause = rand::random::<u64>() % (1 + 2 * attempt.min(10) as u64);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Err(KvError::Internal(format!(
            "counter {counter:?} stayed contended"
        )))
    }

    // ---- settings ----

    /// Validates, persists, and broadcasts a cluster setting (`SET CLUSTER SETTING`).
    pub async fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        let def = settings::lookup(name)?;
        let parsed = def.parse(value)?;
        if parsed == def.default_value() {
            self.sys_delete(system::SETTINGS, name.as_bytes()).await?;
        } else {
            self.sys_put(
                system::SETTINGS,
                name.as_bytes(),
                parsed.to_string().as_bytes(),
            )
            .await?;
        }
        if self.inner.settings.set_cached(def, parsed) {
            self.inner.apply_settings(&[def.name]);
        }
        self.notify_peers(pb::KvNotifyRequest {
            catalog_generation: 0,
            settings_changed: true,
        });
        Ok(())
    }

    pub async fn reset_setting(&self, name: &str) -> Result<()> {
        let def = settings::lookup(name)?;
        self.sys_delete(system::SETTINGS, name.as_bytes()).await?;
        if self.inner.settings.set_cached(def, def.default_value()) {
            self.inner.apply_settings(&[def.name]);
        }
        self.notify_peers(pb::KvNotifyRequest {
            catalog_generation: 0,
            settings_changed: true,
        });
        Ok(())
    }

    // ---- protected timestamps ----

    /// Creates (or replaces) a protected timestamp record.
    pub async fn protect(&self, record: PtsRecord) -> Result<()> {
        self.sys_put(
            system::PTS,
            record.id.as_bytes(),
            &system::encode_json(&record),
        )
        .await
    }

    /// Moves a record forward (never backwards).
    pub async fn update_protection(&self, id: &str, ts: Timestamp) -> Result<()> {
        for _ in 0..PTS_UPDATE_ATTEMPTS_MAX {
            let Some(current) = self.sys_get(system::PTS, id.as_bytes()).await? else {
                return Err(KvError::PtsNotFound(id.to_string()));
            };
            let mut record: PtsRecord = system::decode_json("protected timestamp", &current)?;
            if ts <= record.ts {
                return Ok(());
            }
            record.ts = ts;
            let next = system::encode_json(&record);
            if self
                .sys_cput(system::PTS, id.as_bytes(), Some(&next), Some(&current))
                .await?
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(KvError::Internal(format!(
            "protected timestamp record {id:?} stayed contended"
        )))
    }

    /// Removes a record (no-op if it does not exist).
    pub async fn release_protection(&self, id: &str) -> Result<()> {
        self.sys_delete(system::PTS, id.as_bytes()).await
    }

    pub async fn protections(&self) -> Result<Vec<PtsRecord>> {
        self.sys_scan(system::PTS)
            .await?
            .into_iter()
            .map(|(_, v)| system::decode_json("protected timestamp", &v))
            .collect()
    }

    // ---- catalog change notification ----

    /// Tells every live node that descriptors changed (they drop cached descriptors); returns
    /// the new catalog generation.
    pub async fn bump_catalog_generation(&self) -> Result<u64> {
        let generation = self
            .sys_increment(system::COUNTER_CATALOG_GENERATION, 1)
            .await?;
        let generation = u64::try_from(generation).map_err(|_| {
            KvError::Internal(format!("catalog generation is negative ({generation})"))
        })?;
        self.inner.observe_catalog_generation(generation);
        self.notify_peers(pb::KvNotifyRequest {
            catalog_generation: generation,
            settings_changed: false,
        });
        Ok(generation)
    }

    /// The latest catalog generation this node has seen.
    pub fn catalog_generation(&self) -> u64 {
        self.inner.catalog_generation()
    }

    /// Follows the catalog generation this node has seen (changes on bumps anywhere).
    pub fn watch_catalog_generation(&self) -> watch::Receiver<u64> {
        self.inner.subscribe_catalog_generation()
    }

    // ---- internals ----

    /// The table's ranges, from this node's cache or the system keyspace.
    async fn table_ranges_cached(&self, table_id: TableId) -> Result<Arc<[RangeDescriptor]>> {
        if let Some(r) = self.inner.ranges.read().get(table_id) {
            return Ok(r);
        }
        self.load_table_ranges(table_id).await
    }

    /// Reads the table's ranges from the system keyspace and caches them.
    /// (Boxed: owners call it while serving, so the call graph is recursive.)
    pub(crate) fn load_table_ranges(
        &self,
        table_id: TableId,
    ) -> BoxFuture<'_, Result<Arc<[RangeDescriptor]>>> {
        Box::pin(async move {
            let ranges = self
                .sys_scan_prefix(system::RANGES, &system::table_ranges_prefix(table_id))
                .await?
                .into_iter()
                .map(|(_, v)| system::decode_json::<RangeDescriptor>("range descriptor", &v))
                .collect::<Result<Vec<_>>>()?;
            let ranges = self.inner.ranges.write().insert(table_id, ranges);
            if ranges.is_empty() {
                return Err(KvError::NoRanges { table_id });
            }
            Ok(ranges)
        })
    }

    /// Every range descriptor in the cluster (the system range included).
    /// (Boxed: it scans, and scans call it.)
    fn all_ranges(&self) -> BoxFuture<'_, Result<Vec<RangeDescriptor>>> {
        Box::pin(async move {
            // The stored system descriptor may list old voters: this node's view replaces it.
            self.sys_scan(system::RANGES)
                .await?
                .into_iter()
                .map(|(_, v)| system::decode_json::<RangeDescriptor>("range descriptor", &v))
                .map(|r| {
                    r.map(|r| match r.range_id {
                        SYSTEM_RANGE_ID => self.inner.system_range(),
                        _ => r,
                    })
                })
                .collect()
        })
    }

    /// After an owner said it does not have `range`: the range's current descriptor.
    pub(crate) async fn refreshed_range(&self, range: &RangeDescriptor) -> Result<RangeDescriptor> {
        let table_id = range.table_id.expect("only table ranges are refreshed");
        self.inner.ranges.write().remove(table_id);
        let ranges = self.load_table_ranges(table_id).await?;
        match routing::find_shard(&ranges, range.shard) {
            Some(fresh) if fresh != range => Ok(fresh.clone()),
            _ => Err(KvError::RangeNotFound {
                range_id: range.range_id,
            }),
        }
    }

    /// Calls the owner of `range` over gRPC.
    pub(crate) async fn call_owner<Req, Resp, F, Fut>(
        &self,
        node_id: NodeId,
        request: Req,
        f: F,
    ) -> Result<Resp>
    where
        F: FnOnce(crate::transport::PbClient, tonic::Request<Req>) -> Fut,
        Fut:
            std::future::Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let cluster_id = self.inner.require_identity()?.cluster_id.clone();
        let address = self.inner.address_of(node_id).await?;
        self.inner
            .transport
            .call(node_id, &address, Some(&cluster_id), None, request, f)
            .await
    }

    async fn get_in_range(
        &self,
        range: &RangeDescriptor,
        key: &[u8],
        read_ts: Option<Timestamp>,
    ) -> Result<Option<Version>> {
        self.on_leaseholder(range, |node_id| self.get_on(node_id, range, key, read_ts))
            .await
    }

    async fn get_on(
        &self,
        node_id: NodeId,
        range: &RangeDescriptor,
        key: &[u8],
        read_ts: Option<Timestamp>,
    ) -> Result<Option<Version>> {
        if node_id == self.node_id() {
            return self
                .inner
                .serve_get(range.range_id, key.to_vec(), read_ts)
                .await;
        }
        let request = pb::KvGetRequest {
            range_id: range.range_id,
            key: key.to_vec(),
            read_ts: read_ts.map(Into::into),
        };
        let response = self
            .call_owner(node_id, request, |mut c, r| async move { c.get(r).await })
            .await?;
        Ok(response.version.map(wire::version_from_pb))
    }

    /// Reads `groups` (ranges of `node_id`, with indexes into `keys`) in one request; after
    /// "range not found", each range is read alone, and one the node no longer owns is looked
    /// up again and read from its current owner. Answers are `(index, version)`.
    async fn get_many_on_node(
        &self,
        node_id: NodeId,
        groups: Vec<KeyGroup>,
        keys: &[Vec<u8>],
        read_ts: Option<Timestamp>,
    ) -> Result<Vec<(usize, Option<Version>)>> {
        let zip = |groups: Vec<KeyGroup>, versions: Vec<Option<Version>>| {
            groups
                .into_iter()
                .flat_map(|(_, indexes)| indexes)
                .zip(versions)
                .collect::<Vec<_>>()
        };
        let read = self.read_on_node(node_id, &groups, keys, read_ts).await;
        // The groups are single-copy ranges (replicated ones are read through their leases).
        match read.map_err(|e| match groups.first() {
            Some((range, _)) => stale_single_copy(range, e),
            None => e,
        }) {
            Ok(versions) => return Ok(zip(groups, versions)),
            Err(KvError::RangeNotFound { .. })
                if groups.iter().all(|(r, _)| r.table_id.is_some()) => {}
            Err(e) => return Err(e),
        }
        // Which range was it? Ask each alone (unless there was only one), then refresh.
        let single = groups.len() == 1;
        let mut out = Vec::new();
        for group in groups {
            let group = vec![group];
            let alone = if single {
                None
            } else {
                Some(self.read_on_node(node_id, &group, keys, read_ts).await)
            };
            match alone.map(|r| r.map_err(|e| stale_single_copy(&group[0].0, e))) {
                Some(Ok(versions)) => out.extend(zip(group, versions)),
                Some(Err(e)) if !matches!(e, KvError::RangeNotFound { .. }) => return Err(e),
                _ => {
                    let (range, indexes) = group.into_iter().next().expect("one group");
                    let range = self.refreshed_range(&range).await?;
                    let fresh = vec![(range.clone(), indexes)];
                    let versions = self
                        .on_leaseholder(&range, |node| {
                            self.read_on_node(node, &fresh, keys, read_ts)
                        })
                        .await?;
                    out.extend(zip(fresh, versions));
                }
            }
        }
        Ok(out)
    }

    /// One `GetMany` request (in-process for this node): every key of `groups`, flattened.
    async fn read_on_node(
        &self,
        node_id: NodeId,
        groups: &[KeyGroup],
        keys: &[Vec<u8>],
        read_ts: Option<Timestamp>,
    ) -> Result<Vec<Option<Version>>> {
        let count: usize = groups.iter().map(|(_, i)| i.len()).sum();
        let request: Vec<(RangeId, Vec<Vec<u8>>)> = groups
            .iter()
            .map(|(range, indexes)| {
                (
                    range.range_id,
                    indexes.iter().map(|i| keys[*i].clone()).collect(),
                )
            })
            .collect();
        let versions = if node_id == self.node_id() {
            self.inner.serve_get_many(request, read_ts).await?
        } else {
            let request = pb::KvGetManyRequest {
                ranges: request
                    .into_iter()
                    .map(|(range_id, keys)| pb::KvRangeKeys { range_id, keys })
                    .collect(),
                read_ts: read_ts.map(Into::into),
            };
            self.call_owner(
                node_id,
                request,
                |mut c, r| async move { c.get_many(r).await },
            )
            .await?
            .versions
            .into_iter()
            .map(|v| v.version.map(wire::version_from_pb))
            .collect()
        };
        if versions.len() != count {
            return Err(KvError::Internal(format!(
                "node {node_id} answered {} of {count} keys",
                versions.len()
            )));
        }
        Ok(versions)
    }

    async fn scan_in_range(
        &self,
        range: &RangeDescriptor,
        span: &Span,
        read_ts: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<KeyVersion>> {
        self.on_leaseholder(range, |node_id| {
            self.scan_on(node_id, range, span, read_ts, limit)
        })
        .await
    }

    async fn scan_on(
        &self,
        node_id: NodeId,
        range: &RangeDescriptor,
        span: &Span,
        read_ts: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<KeyVersion>> {
        if node_id == self.node_id() {
            return self
                .inner
                .serve_scan(range.range_id, span.clone(), read_ts, limit)
                .await;
        }
        let request = pb::KvScanRequest {
            range_id: range.range_id,
            span: Some(span.into()),
            read_ts: read_ts.map(Into::into),
            limit: limit as u64,
        };
        let response = self
            .call_owner(node_id, request, |mut c, r| async move { c.scan(r).await })
            .await?;
        response
            .rows
            .into_iter()
            .map(wire::key_version_from_pb)
            .collect()
    }

    /// Writes one range's rows, following a stale cached descriptor once.
    async fn write_to_range(
        &self,
        range: &RangeDescriptor,
        rows: Vec<RowWrite>,
        atomic: bool,
    ) -> Result<ApplyResult> {
        let keys: Vec<Vec<u8>> = match &self.txn {
            Some(_) => rows.iter().flat_map(RowWrite::keys).cloned().collect(),
            None => Vec::new(),
        };
        let applied = self
            .past_intents(
                None,
                |_| None,
                || self.write_to_range_once(range, rows.clone(), atomic),
            )
            .await;
        if let (Some(txn), Ok(a)) = (&self.txn, &applied) {
            txn.note_written(range, keys, a.ts);
        } else if let (Some(txn), Err(e)) = (&self.txn, &applied)
            && e.is_ambiguous()
        {
            // The intents may be there: resolve them with the rest.
            txn.note_written(range, keys, Timestamp::ZERO);
        }
        applied
    }

    async fn write_to_range_once(
        &self,
        range: &RangeDescriptor,
        rows: Vec<RowWrite>,
        atomic: bool,
    ) -> Result<ApplyResult> {
        if range.table_id.is_none() {
            return self.send_write(range, rows, atomic).await;
        }
        match self.send_write(range, rows.clone(), atomic).await {
            Err(KvError::RangeNotFound { .. }) => {
                let fresh = self.refreshed_range(range).await?;
                self.send_write(&fresh, rows, atomic).await
            }
            other => other,
        }
    }

    async fn send_write(
        &self,
        range: &RangeDescriptor,
        rows: Vec<RowWrite>,
        atomic: bool,
    ) -> Result<ApplyResult> {
        if !range.is_replicated() {
            return self
                .write_on(range.node_id, range, rows, atomic)
                .await
                .map_err(|e| stale_single_copy(range, e));
        }
        self.on_leaseholder(range, |node_id| {
            self.write_on(node_id, range, rows.clone(), atomic)
        })
        .await
    }

    async fn write_on(
        &self,
        node_id: NodeId,
        range: &RangeDescriptor,
        rows: Vec<RowWrite>,
        atomic: bool,
    ) -> Result<ApplyResult> {
        let txn = self.txn.as_ref().map(|t| t.meta.clone());
        if node_id == self.node_id() {
            return self
                .inner
                .serve_write(range.range_id, rows, atomic, txn)
                .await;
        }
        let request = pb::KvWriteRequest {
            range_id: range.range_id,
            rows: rows.into_iter().map(wire::row_to_pb).collect(),
            atomic,
            txn: txn.map(|t| pb::KvTxnMeta {
                txn_id: t.txn_id.to_vec(),
                record_key: t.record_key,
            }),
        };
        let response = self
            .call_owner(node_id, request, |mut c, r| async move { c.write(r).await })
            .await
            .map_err(KvError::for_sent_write)?;
        Ok(ApplyResult {
            ts: ldr_proto::ts_or_zero(response.ts),
            outcomes: response
                .outcomes
                .into_iter()
                .map(wire::outcome_from_pb)
                .collect::<Result<_>>()?,
        })
    }

    async fn sys_write_one(&self, row: RowWrite) -> Result<RowOutcome> {
        self.inner.require_identity()?;
        let applied = self
            .write_to_range(&self.inner.system_range(), vec![row], true)
            .await?;
        applied
            .outcomes
            .into_iter()
            .next()
            .ok_or_else(|| KvError::Internal("a write returned no outcome".into()))
    }

    async fn clear_range(&self, range: &RangeDescriptor) -> Result<u64> {
        self.on_leaseholder(range, |node_id| self.clear_on(node_id, range))
            .await
    }

    async fn clear_on(&self, node_id: NodeId, range: &RangeDescriptor) -> Result<u64> {
        if node_id == self.node_id() {
            return self
                .inner
                .serve_clear_range(range.range_id, range.span.clone())
                .await;
        }
        let request = pb::KvClearRangeRequest {
            range_id: range.range_id,
            span: Some((&range.span).into()),
        };
        let response = self
            .call_owner(node_id, request, |mut c, r| async move {
                c.clear_range(r).await
            })
            .await?;
        Ok(response.keys_cleared)
    }

    /// Runs `f` against the node that serves `range`: its owner, or for a replicated range
    /// its leaseholder, found through the cached leaseholder, the hints of replicas that are
    /// not it, and the other replicas when one is down, until `LEASE_SEARCH_TIMEOUT`.
    pub(crate) async fn on_leaseholder<T, F, Fut>(&self, range: &RangeDescriptor, f: F) -> Result<T>
    where
        F: Fn(NodeId) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        if !range.is_replicated() {
            return f(range.node_id)
                .await
                .map_err(|e| stale_single_copy(range, e));
        }
        let deadline = std::time::Instant::now() + LEASE_SEARCH_TIMEOUT;
        let mut target = self
            .inner
            .leaseholders
            .read()
            .get(&range.range_id)
            .copied()
            .filter(|n| range.replicas.contains(n))
            .unwrap_or(range.node_id);
        let mut misses = 0u32;
        // Replicas that did not answer in this round: a stale hint must not lead back to them.
        let mut unreachable: Vec<NodeId> = Vec::new();
        loop {
            let error = match f(target).await {
                Ok(v) => {
                    self.inner
                        .leaseholders
                        .write()
                        .insert(range.range_id, target);
                    return Ok(v);
                }
                Err(e) => e,
            };
            if matches!(error, KvError::NodeUnavailable { .. }) && !unreachable.contains(&target) {
                unreachable.push(target);
            }
            let next = match &error {
                // A replica's hint is newer than this node's descriptor cache: another node's
                // replicate queue may have moved the range to a node the cache does not list.
                KvError::NotLeaseholder { hint: Some(h), .. }
                    if *h != target && !unreachable.contains(h) =>
                {
                    *h
                }
                KvError::NotLeaseholder { .. }
                | KvError::NodeUnavailable { .. }
                | KvError::RangeNotFound { .. } => {
                    // Round-robin, skipping replicas that did not answer this round.
                    let mut next = routing::next_replica(range, target);
                    for _ in 0..range.replicas.len() {
                        if !unreachable.contains(&next) {
                            break;
                        }
                        next = routing::next_replica(range, next);
                    }
                    next
                }
                KvError::AmbiguousResult { .. } => {
                    // The outcome is the caller's to resolve; the next request tries another.
                    self.inner
                        .leaseholders
                        .write()
                        .insert(range.range_id, routing::next_replica(range, target));
                    return Err(error);
                }
                _ => return Err(error),
            };
            misses += 1;
            if std::time::Instant::now() >= deadline {
                return Err(error);
            }
            // A full round without a leaseholder: an election is probably under way, or the
            // cached descriptor is stale (the next request reloads it).
            if (misses as usize).is_multiple_of(range.replicas.len().max(1)) {
                unreachable.clear();
                if let Some(table_id) = range.table_id {
                    self.inner.ranges.write().remove(table_id);
                }
                let pause = LEASE_SEARCH_PAUSE_MIN.saturating_mul(misses.min(16));
                tokio::time::sleep(pause.min(LEASE_SEARCH_PAUSE_MAX)).await;
            }
            debug!(range_id = range.range_id, from = target, to = next, error = %error, "looking for the leaseholder");
            // Later requests start where this one goes next, not at a replica that failed.
            self.inner.leaseholders.write().insert(range.range_id, next);
            target = next;
        }
    }

    /// Tells every other live node about a change, in the background (they also poll).
    fn notify_peers(&self, request: pb::KvNotifyRequest) {
        let client = self.clone();
        self.inner.spawn(async move {
            let Ok(nodes) = client.nodes().await else { return };
            let Ok(identity) = client.inner.require_identity().cloned() else { return };
            let calls = nodes.into_iter().filter(|n| n.is_live && n.node.node_id != identity.node_id).map(|n| {
                let client = &client;
                let cluster_id = identity.cluster_id.clone();
                async move {
                    let r = client
                        .inner
                        .transport
                        .call(n.node.node_id, &n.node.address, Some(&cluster_id), Some(NOTIFY_TIMEOUT), request, |mut c, r| async move {
                            c.notify(r).await
                        })
                        .await;
                    if let Err(e) = r {
                        debug!(node_id = n.node.node_id, error = %e, "change notification not delivered");
                    }
                }
            });
            join_all(calls).await;
        });
    }
}

/// The range of `key` among cached tables.
fn locate(
    inner: &NodeInner,
    tables: &HashMap<TableId, Arc<[RangeDescriptor]>>,
    key: &[u8],
) -> Result<RangeDescriptor> {
    match routing::route_key(key)? {
        KeyRoute::System => Ok(inner.system_range()),
        KeyRoute::Table { table_id, shard } => {
            let ranges = tables
                .get(&table_id)
                .ok_or(KvError::NoRanges { table_id })?;
            routing::find_shard(ranges, shard).cloned().ok_or_else(|| {
                KvError::Internal(format!(
                    "key {} is in shard {shard}, but table {table_id} has {} shards",
                    keys::pretty_key(key),
                    ranges.len()
                ))
            })
        }
    }
}

/// "node 3" or "nodes 3, 4".
/// An error from the node a single-copy descriptor names as the range's owner. A
/// `NotLeaseholder` there means the range became a Raft group whose lease moved on (see
/// `replication::up_replicate`): the descriptor is stale, which callers learn from
/// `RangeNotFound` (they then reload it).
fn stale_single_copy(range: &RangeDescriptor, error: KvError) -> KvError {
    match error {
        KvError::NotLeaseholder { .. } if !range.is_replicated() => KvError::RangeNotFound {
            range_id: range.range_id,
        },
        e => e,
    }
}

fn node_list(ids: &[NodeId]) -> String {
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    match ids.len() {
        1 => format!("node {}", list[0]),
        _ => format!("nodes {}", list.join(", ")),
    }
}
