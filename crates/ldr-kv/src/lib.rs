//! The cluster layer: node identity and membership, ranges and routing, the internal KV RPC,
//! the system keyspace, cluster settings, protected timestamps and node liveness.
//!
//! Every node runs one [`KvNode`]. Layers above talk to the cluster through a [`KvClient`]
//! (cheap to clone), which routes each request to the node that owns the key's range, by
//! gRPC or in-process when that is this node. The system keyspace is one range owned by
//! node 1; table ranges are the shards of each table (see `ldr_types::keys`).
//!
//! This file is the crate's contract with `ldr-sql`, `ldr-jobs`, `ldr-stream`, `ldr-ingest` and
//! `ldr-server`; it may grow, but signatures change only with all callers.

// Placeholder: the implementation is being written against this surface.
#![allow(unused_variables, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use ldr_storage::{Condition, KeyVersion, RowOutcome, RowWrite, ValueHeader, Version};
use ldr_types::{Clock, NodeId, OriginId, RangeId, Span, TableId, Timestamp};
use serde::{Deserialize, Serialize};

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("storage: {0}")]
    Storage(#[from] ldr_storage::StorageError),
    /// The owner of a range could not be reached (down, partitioned). Retryable.
    #[error("node {node_id} ({address}) is unavailable: {detail}")]
    NodeUnavailable { node_id: NodeId, address: String, detail: String },
    #[error("range {range_id} not found")]
    RangeNotFound { range_id: RangeId },
    #[error("no ranges for table {table_id}")]
    NoRanges { table_id: TableId },
    #[error("the cluster is not initialized")]
    NotInitialized,
    #[error("the cluster has already been initialized")]
    AlreadyInitialized,
    #[error("unknown cluster setting {0:?}")]
    UnknownSetting(String),
    #[error("invalid value {value:?} for setting {name}: {detail}")]
    InvalidSetting { name: String, value: String, detail: String },
    #[error("clock: {0}")]
    Clock(#[from] ldr_types::ClockError),
    #[error("rpc: {0}")]
    Rpc(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl KvError {
    /// Whether the same request may succeed later (node down, network cut, clock wait).
    pub fn is_retryable(&self) -> bool {
        match self {
            KvError::NodeUnavailable { .. } | KvError::Rpc(_) | KvError::RangeNotFound { .. } => true,
            KvError::Storage(e) => e.is_retryable(),
            _ => false,
        }
    }
}

pub type Result<T, E = KvError> = std::result::Result<T, E>;

/// A range: one shard of a table (or the system keyspace), owned by one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDescriptor {
    pub range_id: RangeId,
    /// `None` for the system range.
    pub table_id: Option<TableId>,
    pub shard: u16,
    pub span: Span,
    pub node_id: NodeId,
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescriptor {
    pub node_id: NodeId,
    /// Address other nodes of this cluster dial (`--advertise-addr`, else `--listen-addr`).
    pub address: String,
    /// Address other clusters dial for SQL and replication streams (`--advertise-sql-addr`,
    /// else `address`).
    pub sql_address: String,
    pub http_address: String,
    pub started_at: Timestamp,
}

/// A node's liveness as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: NodeDescriptor,
    pub is_live: bool,
    /// When its liveness record expires (wall time).
    pub liveness_expiration: Timestamp,
}

/// A protected timestamp record: GC keeps every version needed to read at or above `ts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtsRecord {
    pub id: String,
    pub ts: Timestamp,
    /// What holds it, e.g. `job 1012877040439033857`.
    pub owner: String,
}

/// How a node starts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub store_dir: PathBuf,
    pub listen_addr: String,
    pub advertise_addr: Option<String>,
    pub advertise_sql_addr: Option<String>,
    pub http_addr: String,
    pub join: Vec<String>,
    pub cluster_name: Option<String>,
    pub max_clock_offset: Duration,
}

/// The value of a cluster setting.
#[derive(Debug, Clone, PartialEq)]
pub enum SettingValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Duration(Duration),
    Bytes(u64),
    String(String),
}

/// The cluster settings as last seen by this node (refreshed on change and periodically).
#[derive(Debug, Default)]
pub struct Settings {
    _private: (),
}

impl Settings {
    pub fn get(&self, name: &str) -> Result<SettingValue> {
        unimplemented!()
    }
    pub fn bool(&self, name: &str) -> bool {
        unimplemented!()
    }
    pub fn int(&self, name: &str) -> i64 {
        unimplemented!()
    }
    pub fn duration(&self, name: &str) -> Duration {
        unimplemented!()
    }
    pub fn bytes(&self, name: &str) -> u64 {
        unimplemented!()
    }
    /// `(name, value as SQL text, type, description)` of every setting, sorted by name.
    pub fn all(&self) -> Vec<(String, String, String, String)> {
        unimplemented!()
    }
}

/// One node's cluster machinery.
pub struct KvNode {
    _private: (),
}

impl KvNode {
    /// Opens the store and starts the node's background work (liveness heartbeats, settings
    /// refresh, GC, joining). Serving RPCs is the server's job: see [`KvNode::grpc_service`].
    pub async fn start(config: NodeConfig) -> Result<Arc<KvNode>> {
        unimplemented!()
    }

    /// A client routed through this node.
    pub fn client(&self) -> KvClient {
        unimplemented!()
    }

    /// Bootstraps a new cluster with this node as node 1 (`ldr init`).
    pub async fn bootstrap(&self) -> Result<()> {
        unimplemented!()
    }

    /// Resolves once the node has an id in an initialized cluster.
    pub async fn wait_initialized(&self) -> Result<()> {
        unimplemented!()
    }

    pub fn engine(&self) -> &Arc<ldr_storage::Engine> {
        unimplemented!()
    }

    pub fn rangefeeds(&self) -> &Arc<ldr_rangefeed::RangefeedManager> {
        unimplemented!()
    }
}

/// The cluster as seen from one node.
#[derive(Clone)]
pub struct KvClient {
    _private: Arc<()>,
}

impl KvClient {
    pub fn node_id(&self) -> NodeId {
        unimplemented!()
    }
    /// The cluster's UUID, as text.
    pub fn cluster_id(&self) -> String {
        unimplemented!()
    }
    /// This cluster's identity in LWW tie-breaks and in the origin ids stamped by the
    /// clusters it replicates into: a stable non-zero hash of the cluster id.
    pub fn origin_id(&self) -> OriginId {
        unimplemented!()
    }
    pub fn clock(&self) -> &Arc<Clock> {
        unimplemented!()
    }
    pub fn settings(&self) -> &Settings {
        unimplemented!()
    }

    // ---- data ----

    /// The newest version at or below `read_ts` (default: now), tombstones included.
    pub async fn get(&self, key: &[u8], read_ts: Option<Timestamp>) -> Result<Option<Version>> {
        unimplemented!()
    }

    /// Live rows in `span` (may cross ranges) at `read_ts` (default: now), key order.
    pub async fn scan(&self, span: &Span, read_ts: Option<Timestamp>, limit: usize) -> Result<Vec<KeyVersion>> {
        unimplemented!()
    }

    /// Routes each row (with its dependents, which must live in the same range) to its range
    /// owner; rows of one range go in one request. `atomic` applies per range. Outcomes come
    /// back in input order with the commit timestamp of the row's range batch.
    pub async fn write(&self, rows: Vec<RowWrite>, atomic: bool) -> Result<Vec<(Timestamp, RowOutcome)>> {
        unimplemented!()
    }

    // ---- ranges ----

    pub async fn range_for_key(&self, key: &[u8]) -> Result<RangeDescriptor> {
        unimplemented!()
    }
    pub async fn table_ranges(&self, table_id: TableId) -> Result<Vec<RangeDescriptor>> {
        unimplemented!()
    }
    /// Creates `shard_count` ranges (default: 3 per live node) spread round-robin over live nodes.
    pub async fn create_table_ranges(&self, table_id: TableId, shard_count: Option<u16>) -> Result<Vec<RangeDescriptor>> {
        unimplemented!()
    }
    /// Deletes every version of the table's keys and its range descriptors.
    pub async fn drop_table_ranges(&self, table_id: TableId) -> Result<()> {
        unimplemented!()
    }

    // ---- membership ----

    pub async fn nodes(&self) -> Result<Vec<NodeStatus>> {
        unimplemented!()
    }
    pub async fn is_node_live(&self, node_id: NodeId) -> Result<bool> {
        unimplemented!()
    }

    // ---- system keyspace (JSON or raw bytes under `0x01 <subspace> 0x00 <key>`) ----

    pub async fn sys_get(&self, subspace: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        unimplemented!()
    }
    pub async fn sys_put(&self, subspace: &str, key: &[u8], value: &[u8]) -> Result<()> {
        unimplemented!()
    }
    /// Compare-and-put: writes iff the current value equals `expected` (`None`: absent).
    /// Returns the actual value on mismatch.
    pub async fn sys_cput(&self, subspace: &str, key: &[u8], value: Option<&[u8]>, expected: Option<&[u8]>) -> Result<Result<(), Option<Vec<u8>>>> {
        unimplemented!()
    }
    pub async fn sys_delete(&self, subspace: &str, key: &[u8]) -> Result<()> {
        unimplemented!()
    }
    /// Every `(key, value)` of a subspace, in key order (keys without the subspace prefix).
    pub async fn sys_scan(&self, subspace: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        unimplemented!()
    }
    /// Atomically increments a counter and returns the new value (id allocation).
    pub async fn sys_increment(&self, counter: &str, by: i64) -> Result<i64> {
        unimplemented!()
    }

    // ---- settings ----

    /// Validates, persists, and broadcasts a cluster setting (`SET CLUSTER SETTING`).
    pub async fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        unimplemented!()
    }
    pub async fn reset_setting(&self, name: &str) -> Result<()> {
        unimplemented!()
    }

    // ---- protected timestamps ----

    pub async fn protect(&self, record: PtsRecord) -> Result<()> {
        unimplemented!()
    }
    /// Moves a record forward (never backwards).
    pub async fn update_protection(&self, id: &str, ts: Timestamp) -> Result<()> {
        unimplemented!()
    }
    pub async fn release_protection(&self, id: &str) -> Result<()> {
        unimplemented!()
    }
    pub async fn protections(&self) -> Result<Vec<PtsRecord>> {
        unimplemented!()
    }

    // ---- catalog change notification ----

    /// Tells every live node that descriptors changed (they drop cached descriptors); returns
    /// the new catalog generation.
    pub async fn bump_catalog_generation(&self) -> Result<u64> {
        unimplemented!()
    }
    /// The latest catalog generation this node has seen.
    pub fn catalog_generation(&self) -> u64 {
        unimplemented!()
    }
}
