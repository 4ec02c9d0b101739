//! Replicated ranges: one Raft group (openraft) per range, its log and state in the node's
//! RocksDB store, its messages batched per peer.
//!
//! Jargon: a *replica* is one node's copy of a range; the replicas of a range form a Raft
//! group. The *leaseholder* is the group's leader while its leader lease is valid (a quorum
//! acknowledged it within the lease duration); it alone serves reads and evaluates writes.
//! A *command* is an evaluated write: the exact versions (keys, timestamps, headers, values)
//! to write, plus the proposer's closed timestamp. Every replica applies the same commands in
//! log order, so replicas are byte-identical at the same applied index.
//!
//! Usage (what `ldr-kv` does on each node):
//!
//! ```no_run
//! # async fn run(engine: std::sync::Arc<ldr_storage::Engine>,
//! #              transport: std::sync::Arc<dyn ldr_replica::RaftTransport>)
//! # -> Result<(), ldr_replica::ReplicaError> {
//! use ldr_replica::{ReplicaNode, ReplicaStore, StoreOptions};
//! let store = ReplicaStore::open(1, engine, transport, StoreOptions::default()).await?;
//! let span = ldr_types::Span::new(b"a".to_vec(), b"z".to_vec());
//! store.create_replica(7, span).await?; // on every member node
//! let members = [(1, ReplicaNode::new("127.0.0.1:26257"))].into_iter().collect();
//! store.bootstrap(7, members).await?; // on one member only
//! # Ok(()) }
//! ```
//!
//! Invariants:
//! - a write is acknowledged only after a quorum appended it to its log (synced when
//!   `StoreOptions::sync_log` is on) and this replica applied it;
//! - the applied index and the data it covers are written in one RocksDB batch, so a crash
//!   never leaves them apart;
//! - log entries, hard state and snapshots are checksummed; a mismatch is an error, never data;
//! - messages for a range this node does not hold are refused.

// openraft's error types are large by design and are what its traits return.
#![allow(clippy::result_large_err)]

mod checksum;
mod command;
mod error;
pub mod grpc;
mod keys;
mod log_store;
mod network;
mod replica;
mod state_machine;
mod store;

use std::io::Cursor;

pub use checksum::{CHECKSUMS_KEPT, ChecksumStats, ReplicaChecksum};
pub use command::{ChecksumRequest, Command, CommandResponse, WireVersion};
pub use error::ReplicaError;
pub use network::{Envelope, RaftTransport, TransportError};
pub use replica::{LeaseStatus, Replica, ReplicaStatus};
pub use store::{ReplicaStore, StoreOptions};

/// A member of a range's Raft group: the node and the address its Raft messages go to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaNode {
    pub address: String,
}

impl ReplicaNode {
    pub fn new(address: impl Into<String>) -> ReplicaNode {
        ReplicaNode {
            address: address.into(),
        }
    }
}

impl std::fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.address)
    }
}

openraft::declare_raft_types!(
    /// The openraft types of a range's group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = ReplicaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node id in Raft's terms (`ldr_types::NodeId` widened).
pub type RaftNodeId = u64;
