//! The cluster layer: node identity and membership, ranges and routing, the internal KV RPC,
//! the system keyspace, cluster settings, protected timestamps and node liveness.
//!
//! Every node runs one [`KvNode`]. Layers above talk to the cluster through a [`KvClient`]
//! (cheap to clone), which routes each request to the node that owns the key's range, by
//! gRPC or in-process when that is this node. The system keyspace is one range owned by
//! node 1; table ranges are the shards of each table (see `ldr_types::keys`).
//!
//! This file is the crate's contract with `ldr-sql`, `ldr-jobs`, `ldr-stream`, `ldr-ingest` and
//! `ldr-server`; it may grow, but signatures change only with all callers. It holds the public
//! types; the implementation lives in the private modules listed below.
//!
//! Starting a node (what `ldr-server` does):
//!
//! ```no_run
//! # async fn run(config: ldr_kv::NodeConfig, incoming: tokio_stream::wrappers::TcpListenerStream)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! let node = ldr_kv::KvNode::start(config).await?; // opens the store, starts joining
//! let grpc = tonic::transport::Server::builder().add_service(node.grpc_service());
//! tokio::spawn(grpc.serve_with_incoming(incoming)); // other nodes and `ldr init` reach it
//! node.wait_initialized().await?; // after `ldr init` (Kv.Bootstrap) or a successful join
//! let kv = node.client();
//! kv.sys_put("jobs", b"1", b"{}").await?;
//! # Ok(()) }
//! ```
//!
//! Invariants:
//! - every range has exactly one owner, which checks it still owns a range before serving it;
//! - the system keyspace is range 1, owned by node 1;
//! - every RPC carries the sender's HLC and every answer the receiver's; a clock further ahead
//!   than the maximum offset is refused ([`KvError::Clock`]);
//! - KV RPCs carry the cluster id and are refused by nodes of another cluster.

mod client;
mod consistency;
mod drain;
mod gc;
mod intents;
mod liveness;
mod node;
mod owner;
mod remote;
mod replication;
mod routing;
mod service;
mod setting_values;
mod settings;
mod system;
mod transport;
mod txn;
mod txnwait;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{DEFAULT_NUM_REPLICAS, KvClient, NUM_REPLICAS_MAX};
pub use consistency::{ConsistencyStatus, RangeConsistency};
pub use drain::{DrainHook, DrainProgress};
pub use ldr_storage::{
    Condition, GcStats, KeyVersion, RowOutcome, RowWrite, StorageError, ValueHeader, Version,
};
use ldr_types::{NodeId, RangeId, Span, TableId, Timestamp};
pub use node::KvNode;
pub use remote::{
    RemoteNodeInfo, bootstrap_remote, drain_remote, remote_node_info, set_remote_clock_offset,
    set_remote_membership, set_remote_partition,
};
use serde::{Deserialize, Serialize};
pub use service::{KvGrpcServer, KvService};
pub use settings::Settings;
pub use txn::{CommitAttempt, KvTxn, TxnRecord, TxnStatus, WaitingFor};
pub use txnwait::{Deadlock, WaitNode, find_deadlock};

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("storage: {0}")]
    Storage(#[from] ldr_storage::StorageError),
    /// The owner of a range could not be reached (down, partitioned). Retryable.
    #[error("node {node_id} ({address}) is unavailable: {detail}")]
    NodeUnavailable {
        node_id: NodeId,
        address: String,
        detail: String,
    },
    /// A write was sent to the owner of its range, which stopped answering before it replied
    /// (crashed, partitioned, timed out): it may or may not have committed. Retryable, but the
    /// caller cannot report failure as if nothing happened (SQL: 40003).
    #[error(
        "result is ambiguous: node {node_id} ({address}) did not answer a write it may have applied: {detail}"
    )]
    AmbiguousResult {
        node_id: NodeId,
        address: String,
        detail: String,
    },
    #[error("range {range_id} not found")]
    RangeNotFound { range_id: RangeId },
    /// The replica asked is not the range's leaseholder; `hint` is the leader it knows of.
    #[error("range {range_id}: not the leaseholder (leader hint: {hint:?})")]
    NotLeaseholder {
        range_id: RangeId,
        hint: Option<NodeId>,
    },
    #[error("no ranges for table {table_id}")]
    NoRanges { table_id: TableId },
    #[error("the cluster is not initialized")]
    NotInitialized,
    #[error("the cluster has already been initialized")]
    AlreadyInitialized,
    #[error("unknown cluster setting {0:?}")]
    UnknownSetting(String),
    #[error("invalid value {value:?} for setting {name}: {detail}")]
    InvalidSetting {
        name: String,
        value: String,
        detail: String,
    },
    #[error("clock: {0}")]
    Clock(#[from] ldr_types::ClockError),
    /// A KV RPC from another cluster (a node joined to the wrong `--join` list).
    #[error("request from cluster {got} refused by a node of cluster {expected}")]
    WrongCluster { expected: String, got: String },
    /// `update_protection` of a record that does not exist (released, or never created).
    #[error("protected timestamp record {0:?} not found")]
    PtsNotFound(String),
    #[error("rpc: {0}")]
    Rpc(String),
    /// A request that cannot be carried out as asked (a decommission that would leave ranges
    /// under-replicated, an unknown node).
    #[error("{0}")]
    InvalidRequest(String),
    /// The transaction was aborted (by a pusher, or because its coordinator stopped
    /// heartbeating): nothing of it is applied. SQL: 40001.
    /// `conflicting` names the transaction whose push aborted it, when known.
    #[error(
        "restart transaction: TransactionRetryWithProtoRefreshError: TransactionAbortedError({reason}): transaction {txn_id}{}",
        .conflicting.as_deref().map(|c| format!(" (conflicting transaction {c})")).unwrap_or_default()
    )]
    TxnAborted {
        txn_id: String,
        reason: String,
        conflicting: Option<String>,
    },
    /// Another transaction's intent stayed in the way (it is alive, and older). SQL: 40001.
    #[error("restart transaction: TransactionRetryWithProtoRefreshError: WriteIntentError: {0}")]
    TxnConflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl KvError {
    /// Whether the same request may succeed later (node down, network cut, clock wait).
    pub fn is_retryable(&self) -> bool {
        match self {
            KvError::NodeUnavailable { .. }
            | KvError::AmbiguousResult { .. }
            | KvError::Rpc(_)
            | KvError::RangeNotFound { .. }
            | KvError::NotLeaseholder { .. } => true,
            KvError::Storage(e) => e.is_retryable(),
            _ => false,
        }
    }
}

impl KvError {
    /// Whether a write may or may not have been applied.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, KvError::AmbiguousResult { .. })
    }

    /// Turns the failure of a write call into [`KvError::AmbiguousResult`] unless it is clear
    /// the request never reached the owner (the connection could not be made).
    pub(crate) fn for_sent_write(self) -> KvError {
        match self {
            KvError::NodeUnavailable {
                node_id,
                address,
                detail,
            } if !is_connect_failure(&detail) => KvError::AmbiguousResult {
                node_id,
                address,
                detail,
            },
            other => other,
        }
    }
}

/// Whether a transport error text says the connection was never established (or the node
/// refused the request before serving it).
fn is_connect_failure(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "the request was not served",
        "tcp connect error",
        "error trying to connect",
        "connection refused",
        "dns error",
        "invalid address",
    ]
    .iter()
    .any(|p| d.contains(p))
}

pub type Result<T, E = KvError> = std::result::Result<T, E>;

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn only_unsent_writes_are_plain_unavailable() {
        let unavailable = |detail: &str| KvError::NodeUnavailable {
            node_id: 2,
            address: "a".into(),
            detail: detail.into(),
        };
        assert!(matches!(
            unavailable(
                "error trying to connect: tcp connect error: Connection refused (os error 111)"
            )
            .for_sent_write(),
            KvError::NodeUnavailable { .. }
        ));
        assert!(matches!(
            unavailable("node is shutting down: the request was not served").for_sent_write(),
            KvError::NodeUnavailable { .. }
        ));
        for detail in [
            "no answer within 10000ms",
            "transport error",
            "h2 protocol error: connection reset",
        ] {
            let e = unavailable(detail).for_sent_write();
            assert!(matches!(e, KvError::AmbiguousResult { .. }), "{detail}");
            assert!(e.is_retryable());
        }
        assert!(matches!(
            KvError::RangeNotFound { range_id: 1 }.for_sent_write(),
            KvError::RangeNotFound { .. }
        ));
    }
}

/// A range: one shard of a table (or the system keyspace), owned by one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDescriptor {
    pub range_id: RangeId,
    /// `None` for the system range.
    pub table_id: Option<TableId>,
    pub shard: u16,
    pub span: Span,
    /// Single-owner ranges: the owner. Replicated ranges: the replica expected to hold the
    /// lease (the one that bootstrapped the group); requests go to the current leaseholder.
    pub node_id: NodeId,
    /// The nodes holding a replica (a Raft group with these voters); empty for a range owned
    /// by `node_id` alone (created while `num_replicas` was 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<NodeId>,
    /// How many times `replicas` changed since the range was created (0: the group may
    /// still need bootstrapping by its first replica; later, only membership changes of the
    /// running group change it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RangeDescriptor {
    /// Whether the range is a Raft group rather than a single owner.
    pub fn is_replicated(&self) -> bool {
        !self.replicas.is_empty()
    }
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
    /// The node is draining (it takes no leases).
    pub is_draining: bool,
    /// Replicas and leases it held at its last heartbeat.
    pub replicas: u32,
    pub leases: u32,
    pub membership: Membership,
}

/// Whether a node belongs to the cluster for placement (CockroachDB's node membership).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// Receives replicas and leases.
    #[default]
    Active,
    /// Its replicas are moved to other nodes (`ldr node decommission`).
    Decommissioning,
    /// It holds no replicas and receives none.
    Decommissioned,
}

impl Membership {
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Active => "active",
            Membership::Decommissioning => "decommissioning",
            Membership::Decommissioned => "decommissioned",
        }
    }

    pub fn parse(s: &str) -> Option<Membership> {
        [
            Membership::Active,
            Membership::Decommissioning,
            Membership::Decommissioned,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
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
