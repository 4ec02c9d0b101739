//! The producer side of logical replication: what a source cluster serves to destinations.
//!
//! A destination calls `StartStream` on any source node: the node checks
//! `kv.rangefeed.enabled` and the user's REPLICATIONSOURCE privilege, creates the history
//! retention job (`REPLICATION STREAM PRODUCER`) whose id is the stream id, protects history
//! from the start time with a protected timestamp, locks the tables' schemas, and returns one
//! partition per source node. The destination then dials every partition's node directly
//! (`StreamPartition`: initial or catch-up scan, then live changes and checkpoints), sends
//! heartbeats that advance the protected timestamp, and completes the stream when its job ends.
//!
//! The client half (`StreamClient`, `SourceUri`) is what the destination uses.

mod catalog;
mod client;
mod error;
pub mod event_batcher;
mod partition;
mod producer_job;
mod service;

pub use catalog::{SourceCatalog, SourceTable};
pub use client::{DEFAULT_PORT, SourceUri, StreamClient};
pub use error::{Result, StreamError};
pub use partition::{PartitionOptions, run_partition};
pub use producer_job::{
    EXPIRATION_WINDOW, LivenessDecision, ProducerPayload, ProducerProgress, ProducerResumer,
    StreamState, liveness_decision, pts_id, stream_status,
};
pub use service::{Producer, ReplicationStreamService};
