//! One node's cluster machinery: opening the store, identity (bootstrap as node 1, or join
//! through `--join` addresses), and the background loops that run once the node belongs to a
//! cluster (re-registration, liveness heartbeats, settings refresh, catalog generation polling,
//! GC of the node's own ranges).
//!
//! [`NodeInner`] is shared by the node handle, every [`KvClient`], the gRPC service (weakly)
//! and the background tasks; stopping the node aborts the tasks, and dropping every handle
//! closes the store.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use ldr_proto::pb;
use ldr_rangefeed::{ManagerOptions, RangefeedManager};
use ldr_storage::{Engine, EngineOptions, GcStats};
use ldr_types::{Clock, NodeId, OriginId};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::replication::ReplicaCreation;

use crate::client::KvClient;
use crate::gc::{gc_interval, gc_threshold};
use crate::liveness::{HEARTBEAT_INTERVAL, LivenessRecord};
use crate::routing::RangeCache;
use crate::service::{KvGrpcServer, KvService};
use crate::settings::{self, Settings};
use crate::system::{self, PersistedIdentity, SYSTEM_NODE_ID};
use crate::transport::Transport;
use crate::wire;
use crate::{KvError, NodeConfig, NodeDescriptor, RangeDescriptor, Result};

/// How long a restarting node waits for each `--join` address to say which cluster it is of.
const JOIN_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node re-reads the catalog generation.
const CATALOG_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often a node re-reads the cluster settings (besides change notifications).
const SETTINGS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Joining: first and largest pause between rounds over the `--join` addresses.
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a best-effort notification may take.
pub(crate) const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);
/// Node descriptors are re-read every this many heartbeats (address changes of peers).
const ADDRESS_REFRESH_HEARTBEATS: u64 = 10;

const CLOSED_TS_SETTING: &str = "kv.closed_timestamp.target_duration";

/// A node's identity in its cluster.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) cluster_id: String,
    pub(crate) node_id: NodeId,
    pub(crate) origin_id: OriginId,
}

#[derive(Default)]
struct Tasks {
    stopped: bool,
    handles: Vec<JoinHandle<()>>,
}

/// Everything one node shares between its handle, clients, service and loops.
pub(crate) struct NodeInner {
    pub(crate) config: NodeConfig,
    pub(crate) clock: Arc<Clock>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) rangefeeds: Arc<RangefeedManager>,
    pub(crate) settings: Settings,
    identity: OnceLock<Identity>,
    initialized: watch::Sender<bool>,
    /// This node's descriptor (node id 0 until it has one).
    self_desc: RwLock<NodeDescriptor>,
    /// Where each known peer listens (persisted at `PEERS_LOCAL_KEY`).
    addresses: RwLock<HashMap<NodeId, String>>,
    pub(crate) ranges: RwLock<RangeCache>,
    pub(crate) transport: Transport,
    catalog_generation: watch::Sender<u64>,
    settings_changed: Notify,
    init_lock: tokio::sync::Mutex<()>,
    tasks: Mutex<Tasks>,
    stopped: AtomicBool,
    /// This node's replicas of replicated ranges (open once the node has an identity).
    pub(crate) replica_store: OnceLock<Arc<ldr_replica::ReplicaStore>>,
    /// Serialises opening the replica store.
    pub(crate) replicas_opening: tokio::sync::Mutex<()>,
    /// The same store for the Raft gRPC service.
    pub(crate) raft_slot: ldr_replica::grpc::ServiceSlot,
    /// Per-range write latches of replicated ranges this node leads.
    pub(crate) range_latches: Mutex<HashMap<ldr_types::RangeId, Arc<tokio::sync::Mutex<()>>>>,
    /// Closed timestamps leaseholders published for ranges this node follows.
    pub(crate) side_closed: Arc<crate::replication::SideClosed>,
    /// Replicas whose range stopped listing this node, since when (see `reconcile_replicas`).
    pub(crate) unlisted_replicas: Mutex<HashMap<ldr_types::RangeId, std::time::Instant>>,
    /// Replicas of ranges as created that are not initialized yet, since when (see
    /// `reconcile_replicas`).
    pub(crate) pristine_replicas: Mutex<HashMap<ldr_types::RangeId, std::time::Instant>>,
    /// Where each replicated range's lease was last found.
    pub(crate) leaseholders: RwLock<HashMap<ldr_types::RangeId, NodeId>>,
    /// The node is draining (see `drain.rs`).
    pub(crate) draining: AtomicBool,
    /// What the server releases when the node drains (job claims).
    pub(crate) drain_hook: RwLock<Option<Arc<dyn crate::drain::DrainHook>>>,
    /// Set when a drain with `shutdown` finished: the process should stop.
    pub(crate) shutdown_requested: watch::Sender<bool>,
    /// Unresolved intents this node wrote as leaseholder (see `intents.rs`).
    pub(crate) intent_holds: crate::intents::IntentHolds,
    /// Writes this node applies to a single-copy range without Raft hold it shared from
    /// before their owner check until they are applied; making such a range a Raft group
    /// holds it exclusively while the descriptor changes, so no such write lands after
    /// (see `replication::up_replicate`).
    pub(crate) promotion_gate: tokio::sync::RwLock<()>,
}

impl NodeInner {
    pub(crate) fn identity(&self) -> Option<&Identity> {
        self.identity.get()
    }

    pub(crate) fn require_identity(&self) -> Result<&Identity> {
        self.identity.get().ok_or(KvError::NotInitialized)
    }

    /// This node's id (0 before it has one).
    pub(crate) fn node_id(&self) -> NodeId {
        self.identity.get().map(|i| i.node_id).unwrap_or(0)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    pub(crate) fn self_descriptor(&self) -> NodeDescriptor {
        self.self_desc.read().clone()
    }

    pub(crate) fn client(self: &Arc<Self>) -> KvClient {
        KvClient::from_inner(self.clone())
    }

    /// Runs `fut` until the node stops.
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock();
        if tasks.stopped {
            return;
        }
        tasks.handles.retain(|h| !h.is_finished());
        tasks.handles.push(tokio::spawn(fut));
    }

    /// Runs `f` on the engine off the async threads.
    /// Runs a small storage operation (a point read, a write of a few rows) on the calling
    /// task: it takes microseconds, and handing it to the blocking pool costs more than the
    /// work (thread wake-ups dominated the write path's profile). Large ones go to the pool.
    pub(crate) async fn storage<T: Send + 'static>(
        &self,
        small: bool,
        f: impl FnOnce(&Engine) -> ldr_storage::Result<T> + Send + 'static,
    ) -> Result<T> {
        if small {
            f(&self.engine).map_err(KvError::from)
        } else {
            self.blocking(f).await
        }
    }

    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> ldr_storage::Result<T> + Send + 'static,
    ) -> Result<T> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| KvError::Internal(format!("storage task failed: {e}")))?
            .map_err(KvError::from)
    }

    // ---- addresses ----

    /// Where `node_id` listens; unknown nodes are looked up in the system keyspace.
    pub(crate) async fn address_of(self: &Arc<Self>, node_id: NodeId) -> Result<String> {
        if let Some(a) = self.known_address(node_id) {
            return Ok(a);
        }
        self.refresh_addresses().await?;
        self.known_address(node_id)
            .ok_or_else(|| KvError::NodeUnavailable {
                node_id,
                address: String::new(),
                detail: "no address is known for this node".to_string(),
            })
    }

    /// Where `node_id` listens, if this node knows without asking anyone.
    pub(crate) fn known_address(&self, node_id: NodeId) -> Option<String> {
        if node_id == self.node_id() && node_id != 0 {
            return Some(self.self_desc.read().address.clone());
        }
        self.addresses.read().get(&node_id).cloned()
    }

    /// The system range as this node knows it: its voters when this node holds a replica,
    /// then every other node it knows of (a node without a replica answers "range not
    /// found", one with a replica names the leaseholder).
    pub(crate) fn system_range(&self) -> RangeDescriptor {
        let mut replicas: Vec<NodeId> = Vec::new();
        if let Some(replica) = self
            .replica_store
            .get()
            .and_then(|s| s.replica(system::SYSTEM_RANGE_ID))
        {
            replicas.extend(
                replica
                    .voters()
                    .into_iter()
                    .filter_map(|v| NodeId::try_from(v).ok()),
            );
        }
        let mut known: Vec<NodeId> = self.addresses.read().keys().copied().collect();
        let me = self.node_id();
        if me != 0 {
            known.push(me);
        }
        known.sort_unstable();
        for node in known {
            if !replicas.contains(&node) {
                replicas.push(node);
            }
        }
        system::system_range_descriptor(replicas)
    }

    /// Remembers where a peer listens (persisted, so a restart finds its peers again).
    pub(crate) fn set_address(&self, node_id: NodeId, address: &str) {
        if node_id == 0 || node_id == self.node_id() || address.is_empty() {
            return;
        }
        let snapshot = {
            let mut addresses = self.addresses.write();
            if addresses.get(&node_id).map(String::as_str) == Some(address) {
                return;
            }
            addresses.insert(node_id, address.to_string());
            addresses.clone()
        };
        if let Err(e) = self.persist_peers(&snapshot) {
            warn!(error = %e, "could not persist the addresses of peers");
        }
    }

    fn persist_peers(&self, peers: &HashMap<NodeId, String>) -> Result<()> {
        let sorted: BTreeMap<NodeId, &String> = peers.iter().map(|(k, v)| (*k, v)).collect();
        self.engine
            .put_local(system::PEERS_LOCAL_KEY, &system::encode_json(&sorted))?;
        Ok(())
    }

    /// Re-reads every node descriptor.
    /// (Boxed: RPCs look up addresses, so the call graph is recursive.)
    fn refresh_addresses(self: &Arc<Self>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let rows = self.client().sys_scan(system::NODES).await?;
            for (_, value) in rows {
                let desc: NodeDescriptor = system::decode_json("node descriptor", &value)?;
                self.set_address(desc.node_id, &desc.address);
            }
            Ok(())
        })
    }

    /// A peer announced (possibly new) addresses.
    pub(crate) fn learn_address(&self, node: &NodeDescriptor) -> Result<()> {
        self.set_address(node.node_id, &node.address);
        Ok(())
    }

    // ---- identity ----

    fn persist_identity(&self, identity: &PersistedIdentity) -> Result<()> {
        self.engine
            .put_local(system::IDENTITY_LOCAL_KEY, &system::encode_json(identity))?;
        Ok(())
    }

    /// Takes `identity` as this node's (in memory; callers persist it); false if it already
    /// had one.
    fn set_identity(&self, identity: &PersistedIdentity) -> bool {
        if self.identity.get().is_some() {
            return false;
        }
        let origin_id = system::origin_id_for(&identity.cluster_id);
        self.self_desc.write().node_id = identity.node_id;
        if identity.node_id != SYSTEM_NODE_ID {
            self.set_address(SYSTEM_NODE_ID, &identity.node1_address);
        }
        self.identity
            .set(Identity {
                cluster_id: identity.cluster_id.clone(),
                node_id: identity.node_id,
                origin_id,
            })
            .is_ok()
    }

    /// Takes `identity` as this node's (persisted first when `persist`), opens its replicas
    /// and starts the cluster loops; false if it already had one.
    fn adopt_identity(
        self: &Arc<Self>,
        identity: PersistedIdentity,
        persist: bool,
    ) -> Result<bool> {
        if self.identity.get().is_some() {
            return Ok(false);
        }
        if persist {
            self.persist_identity(&identity)?;
        }
        let adopted = self.set_identity(&identity);
        debug_assert!(
            adopted,
            "identity is only set under the init lock or at start"
        );
        info!(node_id = identity.node_id, cluster_id = %identity.cluster_id, "node has its identity");
        self.initialized.send_replace(true);
        self.start_cluster_loops();
        let inner = self.clone();
        self.spawn(async move {
            if let Err(e) = inner.start_replication().await {
                warn!(error = %e, "cannot open this node's replicas");
            }
        });
        Ok(true)
    }

    /// Makes this node node 1 of a new cluster; returns the cluster id. The system range
    /// starts as a Raft group of this node alone; the nodes that join become its replicas.
    pub(crate) async fn bootstrap(self: &Arc<Self>) -> Result<String> {
        let _guard = self.init_lock.lock().await;
        if self.identity.get().is_some() {
            return Err(KvError::AlreadyInitialized);
        }
        let cluster_id = uuid::Uuid::new_v4().to_string();
        let mut node1 = self.self_descriptor();
        node1.node_id = SYSTEM_NODE_ID;
        node1.started_at = self.clock.now();
        let identity = PersistedIdentity {
            cluster_id: cluster_id.clone(),
            node_id: SYSTEM_NODE_ID,
            node1_address: node1.address.clone(),
        };
        // The identity is persisted last: a bootstrap that fails before can be run again.
        self.set_identity(&identity);
        self.start_replication().await?;
        let system_range = system::system_range_descriptor(vec![SYSTEM_NODE_ID]);
        self.serve_create_replica(system_range.clone(), ReplicaCreation::Original)
            .await?;
        self.wait_for_lease(&system_range).await?;
        self.replicated_write(&system_range, system::bootstrap_rows(&node1), true, None)
            .await?;
        self.persist_identity(&identity)?;
        info!(node_id = SYSTEM_NODE_ID, %cluster_id, "node has its identity");
        self.initialized.send_replace(true);
        self.start_cluster_loops();
        info!(%cluster_id, "bootstrapped a new cluster");
        Ok(cluster_id)
    }

    /// Asks `--join` addresses for a node id until one answers (or the node gets an identity
    /// another way).
    /// A store of one cluster started with `--join` addresses of another: refused, as
    /// CockroachDB refuses a node whose store belongs to another cluster than the one it
    /// joins. Every `--join` address but this node's own is asked (briefly, at once) which
    /// cluster it belongs to; those that do not answer are not held against the node.
    async fn check_join_cluster(&self, cluster_id: &str) -> Result<()> {
        let own = self.self_descriptor().address;
        let listen = system::dialable_address(&self.config.listen_addr);
        let others: Vec<String> = self
            .join_addresses()
            .into_iter()
            .filter(|a| system::dialable_address(a) != own && system::dialable_address(a) != listen)
            .collect();
        let answers = futures::future::join_all(others.iter().map(|address| async move {
            tokio::time::timeout(JOIN_CHECK_TIMEOUT, crate::remote::remote_node_info(address))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|info| (address.clone(), info))
        }))
        .await;
        for (address, info) in answers.into_iter().flatten() {
            if info.initialized && info.cluster_id != cluster_id {
                return Err(KvError::InvalidRequest(format!(
                    "this node's store belongs to cluster {cluster_id}, but the --join address \
                     {address} is a node of cluster {}; start it with its own cluster's \
                     addresses or an empty store",
                    info.cluster_id
                )));
            }
        }
        Ok(())
    }

    async fn join_loop(self: Arc<Self>) {
        let peers = self.join_addresses();
        if peers.is_empty() {
            info!("no other --join address: waiting for `ldr init`");
            return;
        }
        let mut backoff = JOIN_BACKOFF_MIN;
        let mut round: u64 = 0;
        while self.identity.get().is_none() {
            for address in &peers {
                match self.try_join(address).await {
                    Ok(()) => return,
                    Err(e) if round.is_multiple_of(20) => {
                        info!(%address, error = %e, "waiting to join the cluster")
                    }
                    Err(e) => debug!(%address, error = %e, "join attempt failed"),
                }
                if self.identity.get().is_some() {
                    return;
                }
            }
            round += 1;
            tokio::time::sleep(backoff).await;
            backoff = std::cmp::min(backoff * 2, JOIN_BACKOFF_MAX);
        }
    }

    /// The `--join` addresses other than this node's own.
    fn join_addresses(&self) -> Vec<String> {
        let own = self.self_desc.read().address.clone();
        self.config
            .join
            .iter()
            .map(|a| system::dialable_address(a))
            .filter(|a| *a != own)
            .collect()
    }

    async fn try_join(self: &Arc<Self>, address: &str) -> Result<()> {
        let request = pb::KvJoinRequest {
            node: Some(wire::node_to_pb(&self.self_descriptor())),
            cluster_name: self.config.cluster_name.clone().unwrap_or_default(),
        };
        let response = self
            .transport
            .call(0, address, None, None, request, |mut c, r| async move {
                c.join(r).await
            })
            .await?;
        let node1_address = response.node1.map(|n| n.address).unwrap_or_default();
        let responder = response.responder.map(wire::node_from_pb);
        if response.node_id == 0 || response.cluster_id.is_empty() {
            return Err(KvError::Rpc(format!(
                "malformed join answer from {address}"
            )));
        }
        let _guard = self.init_lock.lock().await;
        if let Some(responder) = responder {
            // Where the system range can be asked for first, whoever node 1 is.
            self.set_address(responder.node_id, address);
        }
        let identity = PersistedIdentity {
            cluster_id: response.cluster_id,
            node_id: response.node_id,
            node1_address,
        };
        if !self.adopt_identity(identity, true)? {
            warn!(%address, node_id = response.node_id, "got a node id after already having one; ignoring it");
        }
        Ok(())
    }

    /// Answers a joiner: allocates its node id and records its descriptor. Returns the
    /// cluster id, the new node id and node 1's address if known.
    pub(crate) async fn serve_join(
        self: &Arc<Self>,
        joiner: NodeDescriptor,
        cluster_name: &str,
    ) -> Result<(String, NodeId, Option<String>)> {
        let identity = self.require_identity()?.clone();
        if !*self.initialized.borrow() {
            // Still bootstrapping: the id counters are not written yet.
            return Err(KvError::NotInitialized);
        }
        let ours = self.config.cluster_name.as_deref().unwrap_or("");
        if !ours.is_empty() && !cluster_name.is_empty() && ours != cluster_name {
            return Err(KvError::Internal(format!(
                "cluster name {cluster_name:?} does not match this cluster's name {ours:?}"
            )));
        }
        let client = self.client();
        let node_id = client.sys_increment(system::COUNTER_NODE_ID, 1).await?;
        let node_id = NodeId::try_from(node_id)
            .map_err(|_| KvError::Internal(format!("node id {node_id} out of range")))?;
        let desc = NodeDescriptor { node_id, ..joiner };
        client
            .sys_put(
                system::NODES,
                &system::node_key(node_id),
                &system::encode_json(&desc),
            )
            .await?;
        self.set_address(node_id, &desc.address);
        let node1_address = self.known_address(SYSTEM_NODE_ID);
        info!(node_id, address = %desc.address, "node joined the cluster");
        Ok((identity.cluster_id, node_id, node1_address))
    }

    // ---- background loops ----

    fn start_cluster_loops(self: &Arc<Self>) {
        self.spawn(self.clone().liveness_loop());
        self.spawn(self.clone().settings_loop());
        self.spawn(self.clone().catalog_loop());
        self.spawn(self.clone().gc_loop());
        self.spawn(self.clone().intent_recovery_loop());
    }

    /// Registers this node's current descriptor and tells the other nodes about it.
    async fn register(self: &Arc<Self>) -> Result<()> {
        let desc = self.self_descriptor();
        let client = self.client();
        client
            .sys_put(
                system::NODES,
                &system::node_key(desc.node_id),
                &system::encode_json(&desc),
            )
            .await?;
        let others: Vec<NodeDescriptor> = client
            .sys_scan(system::NODES)
            .await?
            .into_iter()
            .filter_map(|(_, v)| system::decode_json::<NodeDescriptor>("node descriptor", &v).ok())
            .filter(|n| n.node_id != desc.node_id)
            .collect();
        for n in &others {
            self.set_address(n.node_id, &n.address);
        }
        let cluster_id = self.require_identity()?.cluster_id.clone();
        let announcements = others.into_iter().map(|n| {
            let request = pb::KvAnnounceRequest { node: Some(wire::node_to_pb(&desc)) };
            let cluster_id = cluster_id.clone();
            async move {
                let r = self
                    .transport
                    .call(n.node_id, &n.address, Some(&cluster_id), Some(NOTIFY_TIMEOUT), request, |mut c, r| async move {
                        c.announce(r).await
                    })
                    .await;
                if let Err(e) = r {
                    debug!(node_id = n.node_id, error = %e, "could not announce this node's addresses");
                }
            }
        });
        futures::future::join_all(announcements).await;
        info!(node_id = desc.node_id, address = %desc.address, "node registered");
        Ok(())
    }

    /// Renews this node's liveness record (with what it reports of itself).
    pub(crate) async fn heartbeat_liveness(self: &Arc<Self>) -> Result<()> {
        let me = self.node_id();
        let mut record = LivenessRecord::renewed(me, self.clock.now());
        record.draining = self.is_draining();
        if let Some(store) = self.replica_store.get() {
            let replicas = store.replicas();
            record.replicas = replicas.len() as u32;
            record.leases = replicas.iter().filter(|r| r.is_leader()).count() as u32;
        }
        self.client()
            .sys_put(
                system::LIVENESS,
                &system::node_key(me),
                &system::encode_json(&record),
            )
            .await
    }

    async fn liveness_loop(self: Arc<Self>) {
        let mut registered = false;
        let mut failing = false;
        let mut beat: u64 = 0;
        loop {
            let result = async {
                if !registered {
                    self.register().await?;
                    registered = true;
                }
                self.heartbeat_liveness().await?;
                if beat.is_multiple_of(ADDRESS_REFRESH_HEARTBEATS) {
                    self.refresh_addresses().await?;
                }
                Ok::<(), KvError>(())
            }
            .await;
            if result.is_err() {
                self.rediscover_peers().await;
            }
            match result {
                Ok(()) if failing => {
                    info!("liveness heartbeats succeed again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    warn!(error = %e, "liveness heartbeat failed");
                    failing = true;
                }
                Err(e) => debug!(error = %e, "liveness heartbeat failed"),
            }
            beat += 1;
            tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        }
    }

    /// The system range did not answer: ask the `--join` addresses who and where they are
    /// now (peers may have restarted on other addresses while this node was down and missed
    /// their announcements).
    async fn rediscover_peers(self: &Arc<Self>) {
        let Some(identity) = self.identity().cloned() else {
            return;
        };
        for address in self.join_addresses() {
            let info = self
                .transport
                .call(
                    0,
                    &address,
                    None,
                    Some(NOTIFY_TIMEOUT),
                    pb::KvNodeInfoRequest {},
                    |mut c, r| async move { c.node_info(r).await },
                )
                .await;
            let Ok(info) = info else { continue };
            if !info.initialized || info.cluster_id != identity.cluster_id {
                continue;
            }
            if info.node_id != 0 {
                self.set_address(info.node_id, &address);
            }
            if let Some(node1) = info.node1 {
                self.set_address(SYSTEM_NODE_ID, &node1.address);
            }
        }
    }

    /// Re-reads the persisted settings into the cache and applies changed ones.
    pub(crate) async fn refresh_settings(self: &Arc<Self>) -> Result<()> {
        let local_changes = self.settings.local_changes();
        let rows = self.client().sys_scan(system::SETTINGS).await?;
        let persisted: BTreeMap<String, String> = rows
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        // Skipped when this node changed a setting meanwhile; the next refresh catches up.
        if let Some(changed) = self
            .settings
            .replace_from_persisted(&persisted, local_changes)
        {
            self.apply_settings(&changed);
        }
        Ok(())
    }

    /// Side effects of changed settings on this node.
    pub(crate) fn apply_settings(&self, changed: &[&str]) {
        for name in changed {
            debug!(setting = name, "cluster setting changed");
            if *name == CLOSED_TS_SETTING {
                let target = self.settings.duration(CLOSED_TS_SETTING);
                info!(
                    target_ms = target.as_millis() as u64,
                    "applying closed timestamp target"
                );
                self.engine.set_closed_timestamp_target(target);
            }
            if *name == crate::replication::RAFT_LOG_SYNC_SETTING
                && let Some(store) = self.replica_store.get()
            {
                store.set_sync_log(!self.settings.bool(name));
            }
        }
    }

    async fn settings_loop(self: Arc<Self>) {
        let mut failing = false;
        loop {
            match self.refresh_settings().await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    warn!(error = %e, "could not refresh cluster settings");
                    failing = true;
                }
                Err(e) => debug!(error = %e, "could not refresh cluster settings"),
            }
            let _ =
                tokio::time::timeout(SETTINGS_REFRESH_INTERVAL, self.settings_changed.notified())
                    .await;
        }
    }

    /// A peer told us settings changed.
    pub(crate) fn settings_changed(&self) {
        self.settings_changed.notify_one();
    }

    pub(crate) fn catalog_generation(&self) -> u64 {
        *self.catalog_generation.borrow()
    }

    pub(crate) fn subscribe_catalog_generation(&self) -> watch::Receiver<u64> {
        self.catalog_generation.subscribe()
    }

    /// Records a catalog generation seen anywhere; a newer one drops cached range descriptors
    /// (tables may have been dropped).
    pub(crate) fn observe_catalog_generation(&self, generation: u64) {
        let advanced = self.catalog_generation.send_if_modified(|g| {
            if generation > *g {
                *g = generation;
                true
            } else {
                false
            }
        });
        if advanced {
            *self.ranges.write() = RangeCache::default();
        }
    }

    async fn catalog_loop(self: Arc<Self>) {
        let client = self.client();
        loop {
            match client
                .sys_get(
                    system::COUNTERS,
                    system::COUNTER_CATALOG_GENERATION.as_bytes(),
                )
                .await
            {
                Ok(Some(v)) => match system::decode_counter(system::COUNTER_CATALOG_GENERATION, &v)
                {
                    Ok(g) => self.observe_catalog_generation(u64::try_from(g).unwrap_or(0)),
                    Err(e) => warn!(error = %e, "bad catalog generation"),
                },
                Ok(None) => {}
                Err(e) => debug!(error = %e, "could not read the catalog generation"),
            }
            tokio::time::sleep(CATALOG_POLL_INTERVAL).await;
        }
    }

    /// Collects this node's ranges up to `min(now - gc.ttlseconds, oldest protected ts)`.
    pub(crate) async fn run_gc(self: &Arc<Self>) -> Result<GcStats> {
        let me = self.require_identity()?.node_id;
        let client = self.client();
        let protected: Vec<_> = client
            .protections()
            .await?
            .into_iter()
            .map(|p| p.ts)
            .collect();
        let threshold = gc_threshold(
            self.clock.now(),
            self.settings.int("gc.ttlseconds"),
            &protected,
        );
        let mut spans = Vec::new();
        let mut replicated = Vec::new();
        for (_, value) in client.sys_scan(system::RANGES).await? {
            let range: RangeDescriptor = system::decode_json("range descriptor", &value)?;
            if range.range_id == system::SYSTEM_RANGE_ID {
                replicated.push(self.system_range());
            } else if range.is_replicated() {
                replicated.push(range);
            } else if range.node_id == me && range.table_id.is_some() {
                spans.push((range.range_id, range.span));
            }
        }
        let mut total = GcStats::default();
        // Replicated ranges: their leaseholder proposes the collection, every replica runs it.
        for range in replicated {
            if self.leaseholder_replica(&range).is_ok() {
                self.replicated_gc(&range, threshold).await?;
            }
        }
        for (range_id, span) in spans {
            // A range made a Raft group since the scan is collected through Raft (next pass).
            let _gate = self.promotion_gate.read().await;
            if self.holds_replica(range_id) {
                continue;
            }
            let stats = self.blocking(move |e| e.gc(&span, threshold)).await?;
            total.versions_removed += stats.versions_removed;
            total.keys_visited += stats.keys_visited;
        }
        debug!(%threshold, removed = total.versions_removed, "gc pass done");
        Ok(total)
    }

    async fn gc_loop(self: Arc<Self>) {
        // Re-read the TTL every few seconds, so lowering gc.ttlseconds takes effect promptly.
        let mut last_pass = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if last_pass.elapsed() < gc_interval(self.settings.int("gc.ttlseconds")) {
                continue;
            }
            last_pass = std::time::Instant::now();
            if let Err(e) = self.run_gc().await {
                debug!(error = %e, "gc pass skipped");
            }
        }
    }
}

/// One node's cluster machinery.
pub struct KvNode {
    inner: Arc<NodeInner>,
}

impl KvNode {
    /// Opens the store and starts the node's background work (liveness heartbeats, settings
    /// refresh, GC, joining). Serving RPCs is the server's job: see [`KvNode::grpc_service`].
    ///
    /// A store that already belongs to a cluster resumes with its identity and data; a new
    /// one waits for [`KvNode::bootstrap`] (`ldr init`) or joins through `config.join`.
    pub async fn start(config: NodeConfig) -> Result<Arc<KvNode>> {
        let clock = Arc::new(Clock::new(config.max_clock_offset));
        let closed_ts_target = settings::lookup(CLOSED_TS_SETTING)?.default_value();
        let options = EngineOptions {
            closed_timestamp_target: match closed_ts_target {
                crate::SettingValue::Duration(d) => d,
                _ => Duration::from_millis(200),
            },
            ..EngineOptions::default()
        };
        let dir = config.store_dir.clone();
        let engine_clock = clock.clone();
        let engine = tokio::task::spawn_blocking(move || Engine::open(&dir, engine_clock, options))
            .await
            .map_err(|e| KvError::Internal(format!("opening the store failed: {e}")))??;
        let rangefeeds = RangefeedManager::start(engine.clone(), ManagerOptions::default());
        let persisted = match engine.get_local(system::IDENTITY_LOCAL_KEY)? {
            Some(bytes) => Some(system::decode_json::<PersistedIdentity>(
                "node identity",
                &bytes,
            )?),
            None => None,
        };
        let peers: HashMap<NodeId, String> = match engine.get_local(system::PEERS_LOCAL_KEY)? {
            Some(bytes) => system::decode_json("peer addresses", &bytes)?,
            None => HashMap::new(),
        };
        let address = system::dialable_address(
            config
                .advertise_addr
                .as_deref()
                .unwrap_or(&config.listen_addr),
        );
        let sql_address = config
            .advertise_sql_addr
            .as_deref()
            .map(system::dialable_address)
            .unwrap_or_else(|| address.clone());
        let self_desc = NodeDescriptor {
            node_id: 0,
            address,
            sql_address,
            http_address: system::dialable_address(&config.http_addr),
            started_at: clock.now(),
        };
        let inner = Arc::new(NodeInner {
            config,
            clock: clock.clone(),
            transport: Transport::new(clock.clone()),
            engine,
            rangefeeds,
            settings: Settings::default(),
            identity: OnceLock::new(),
            initialized: watch::Sender::new(false),
            self_desc: RwLock::new(self_desc),
            addresses: RwLock::new(peers),
            ranges: RwLock::new(RangeCache::default()),
            catalog_generation: watch::Sender::new(0),
            settings_changed: Notify::new(),
            init_lock: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Tasks::default()),
            stopped: AtomicBool::new(false),
            replica_store: OnceLock::new(),
            replicas_opening: tokio::sync::Mutex::new(()),
            raft_slot: Arc::new(OnceLock::new()),
            range_latches: Mutex::new(HashMap::new()),
            intent_holds: Default::default(),
            promotion_gate: tokio::sync::RwLock::new(()),
            leaseholders: RwLock::new(HashMap::new()),
            unlisted_replicas: Mutex::new(HashMap::new()),
            pristine_replicas: Mutex::new(HashMap::new()),
            side_closed: Arc::default(),
            draining: AtomicBool::new(false),
            drain_hook: RwLock::new(None),
            shutdown_requested: watch::Sender::new(false),
        });
        match persisted {
            Some(identity) => {
                info!(
                    node_id = identity.node_id,
                    "resuming with the identity in the store"
                );
                inner.check_join_cluster(&identity.cluster_id).await?;
                inner.adopt_identity(identity, false)?;
            }
            None => inner.spawn(inner.clone().join_loop()),
        }
        Ok(Arc::new(KvNode { inner }))
    }

    /// A client routed through this node.
    pub fn client(&self) -> KvClient {
        self.inner.client()
    }

    /// What to release when this node drains (the server's job claims).
    pub fn set_drain_hook(&self, hook: Arc<dyn crate::drain::DrainHook>) {
        *self.inner.drain_hook.write() = Some(hook);
    }

    /// Drains this node (see `drain.rs`) until nothing is left or `deadline` passes.
    pub async fn drain(&self, deadline: Duration) -> Result<crate::drain::DrainProgress> {
        self.inner.drain(deadline).await
    }

    /// Returns once an `ldr node drain` asked this node to stop.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.inner.shutdown_requested.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Bootstraps a new cluster with this node as node 1 (`ldr init`).
    pub async fn bootstrap(&self) -> Result<()> {
        self.inner.bootstrap().await.map(|_| ())
    }

    /// Resolves once the node has an id in an initialized cluster.
    pub async fn wait_initialized(&self) -> Result<()> {
        let mut rx = self.inner.initialized.subscribe();
        rx.wait_for(|initialized| *initialized)
            .await
            .map_err(|_| KvError::Internal("node shut down".into()))?;
        Ok(())
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }

    pub fn rangefeeds(&self) -> &Arc<RangefeedManager> {
        &self.inner.rangefeeds
    }

    /// The internal KV gRPC service, for the server to mount on its listener:
    /// `tonic::transport::Server::builder().add_service(node.grpc_service())`.
    pub fn grpc_service(&self) -> KvGrpcServer {
        KvService::server(Arc::downgrade(&self.inner))
    }

    /// The Raft transport gRPC service (replicated ranges), for the server to mount beside
    /// [`KvNode::grpc_service`].
    pub fn raft_service(
        &self,
    ) -> ldr_proto::pb::raft_transport_server::RaftTransportServer<ldr_replica::grpc::RaftService>
    {
        ldr_replica::grpc::RaftService::new(self.inner.raft_service_slot())
    }

    /// This node's descriptor (node id 0 before it has one).
    pub fn descriptor(&self) -> NodeDescriptor {
        self.inner.self_descriptor()
    }

    /// Runs one GC pass over this node's ranges now (tests; the node also does it every few
    /// seconds).
    pub async fn run_gc(&self) -> Result<GcStats> {
        self.inner.run_gc().await
    }

    /// Stops the background work and refuses further RPCs. The store closes when the last
    /// handle (node, clients) is dropped.
    pub async fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        let handles = {
            let mut tasks = self.inner.tasks.lock();
            tasks.stopped = true;
            std::mem::take(&mut tasks.handles)
        };
        for h in handles {
            h.abort();
            let _ = h.await;
        }
        if let Some(store) = self.inner.replica_store.get() {
            store.shutdown().await;
        }
        info!(node_id = self.inner.node_id(), "node stopped");
    }
}

impl Drop for KvNode {
    fn drop(&mut self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        let mut tasks = self.inner.tasks.lock();
        tasks.stopped = true;
        for h in tasks.handles.drain(..) {
            h.abort();
        }
    }
}
