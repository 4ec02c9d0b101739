//! A node's replicas: creating, reopening and removing them, routing incoming Raft messages
//! to them, and heartbeating the ranges this node leads.
//!
//! Heartbeats: openraft's own heartbeat timer is off. One task per node heartbeats every range
//! the node leads at once, every `heartbeat_interval`, so the heartbeats of all ranges to one
//! peer travel in one batch (per-range timers have different phases and would each send
//! their own). Who sends a heartbeat when decides only liveness, never the lease's safety
//! (see `replica.rs`): a lease is valid while a quorum acknowledged a message the leader sent
//! less than the lease ago, and a follower that acknowledged refuses votes for the maximum
//! election timeout, which is longer. Election timers stay per range; they tick every
//! 1.5 times half the minimum election timeout, so an election starts at most one tick later
//! than its timeout, never earlier.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ldr_storage::{Engine, LocalOp};
use ldr_types::{RangeId, Span};
use openraft::error::{InitializeError, RaftError};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use parking_lot::RwLock;
use tracing::{info, warn};

use crate::command::{decode, encode};
use crate::keys;
use crate::log_store::{LogStore, LogWriter};
use crate::network::{
    Envelope, RaftMessage, RaftReply, RaftTransport, RangeNetworkFactory, decode_message,
    encode_reply,
};
use crate::replica::Replica;
use crate::state_machine::RangeStateMachine;
use crate::{RaftNodeId, ReplicaError, ReplicaNode};

/// How long a stopping node waits for the answers to commands already proposed.
const SHUTDOWN_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// How a node runs its replicas.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Sync the Raft log before acknowledging an append
    /// (`kv.raft_log.disable_synchronization_unsafe` = false).
    pub sync_log: bool,
    /// How often the leader of a range heartbeats its followers (all ranges of a node at
    /// once).
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Leader lease; must be shorter than `election_timeout_min`.
    pub lease: Duration,
    /// Log entries after which a snapshot is built and the log purged.
    pub snapshot_logs_since_last: u64,
}

impl Default for StoreOptions {
    /// Quicker than CockroachDB (500 ms ticks, elections after 2–4 s), for a local testbed:
    /// 250 ms heartbeats, elections after 1–2 s (openraft's followers also refuse votes until
    /// the maximum has passed since they last heard the leader), an 800 ms lease.
    fn default() -> Self {
        StoreOptions {
            sync_log: true,
            heartbeat_interval: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            lease: Duration::from_millis(800),
            snapshot_logs_since_last: 10_000,
        }
    }
}

/// A node's replicas.
pub struct ReplicaStore {
    node_id: RaftNodeId,
    engine: Arc<Engine>,
    transport: Arc<dyn RaftTransport>,
    writer: LogWriter,
    sync_log: Arc<AtomicBool>,
    /// A draining node's replicas do not campaign (it takes no leases).
    draining: AtomicBool,
    config: Arc<Config>,
    lease: Duration,
    replicas: RwLock<HashMap<RangeId, Arc<Replica>>>,
    /// Serialises replica creation and removal.
    lifecycle: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ReplicaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaStore")
            .field("node_id", &self.node_id)
            .field("replicas", &self.replicas.read().len())
            .finish_non_exhaustive()
    }
}

impl ReplicaStore {
    /// Opens the node's replica store and restarts every replica persisted in `engine`.
    pub async fn open(
        node_id: RaftNodeId,
        engine: Arc<Engine>,
        transport: Arc<dyn RaftTransport>,
        options: StoreOptions,
    ) -> Result<Arc<ReplicaStore>, ReplicaError> {
        if options.lease >= options.election_timeout_min {
            return Err(ReplicaError::Raft {
                range_id: 0,
                detail: format!(
                    "the lease ({:?}) must be shorter than the minimum election timeout ({:?})",
                    options.lease, options.election_timeout_min
                ),
            });
        }
        let config = Config {
            cluster_name: "ldr".to_string(),
            // openraft's own heartbeats are off (see the module doc); what is left of its
            // heartbeat interval is the append timeout and the tick of every range's election
            // timer (1.5 times the interval). Half the minimum election timeout (750 ms ticks
            // by default) halves the ticks of idle ranges; an election starts at most one
            // tick after its timeout, never before.
            heartbeat_interval: (options.election_timeout_min / 2)
                .max(options.heartbeat_interval)
                .as_millis() as u64,
            election_timeout_min: options.election_timeout_min.as_millis() as u64,
            election_timeout_max: options.election_timeout_max.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: 100,
            snapshot_max_chunk_size: 4 << 20,
            // The store's heartbeat task heartbeats every range it leads at once.
            enable_heartbeat: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ReplicaError::Raft {
            range_id: 0,
            detail: e.to_string(),
        })?;
        let sync_log = Arc::new(AtomicBool::new(options.sync_log));
        let store = Arc::new(ReplicaStore {
            node_id,
            writer: LogWriter::start(Arc::downgrade(&engine), sync_log.clone()),
            engine,
            transport,
            sync_log,
            draining: AtomicBool::new(false),
            config: Arc::new(config),
            lease: options.lease,
            replicas: RwLock::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
        });
        let (start, end) = keys::replica_keys();
        let persisted = store.engine.scan_local(&start, &end, 0)?;
        for (key, value) in persisted {
            let Some(range_id) = keys::range_of_replica_key(&key) else {
                return Err(ReplicaError::Malformed {
                    what: "replica descriptor key",
                    detail: format!("{key:?}"),
                });
            };
            let span: Span = decode("replica descriptor", &value)?;
            let replica = store.start_replica(range_id, span).await?;
            store.replicas.write().insert(range_id, replica);
        }
        info!(
            node_id,
            replicas = store.replicas.read().len(),
            "replica store opened"
        );
        tokio::spawn(heartbeat_loop(
            Arc::downgrade(&store),
            options.heartbeat_interval,
        ));
        Ok(store)
    }

    pub fn node_id(&self) -> RaftNodeId {
        self.node_id
    }

    /// Turns log syncing on or off (`kv.raft_log.disable_synchronization_unsafe`).
    pub fn set_sync_log(&self, sync: bool) {
        self.sync_log.store(sync, Ordering::Relaxed);
    }

    /// Starts or stops draining: a draining node's replicas do not campaign, so it takes no
    /// leases (it still follows and votes).
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        for replica in self.replicas() {
            replica.set_campaigning(!draining);
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn replica(&self, range_id: RangeId) -> Option<Arc<Replica>> {
        self.replicas.read().get(&range_id).cloned()
    }

    /// Every replica on this node.
    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        let mut all: Vec<Arc<Replica>> = self.replicas.read().values().cloned().collect();
        all.sort_by_key(|r| r.range_id);
        all
    }

    async fn start_replica(
        &self,
        range_id: RangeId,
        span: Span,
    ) -> Result<Arc<Replica>, ReplicaError> {
        let log = LogStore::new(range_id, self.engine.clone(), self.writer.clone());
        let checksums = Arc::new(crate::checksum::Checksums::default());
        let (sm, state, applied_rx) = RangeStateMachine::open(
            range_id,
            span.clone(),
            self.engine.clone(),
            checksums.clone(),
        )?;
        let network = RangeNetworkFactory {
            range_id,
            from: self.node_id,
            transport: self.transport.clone(),
        };
        let raft = Raft::new(self.node_id, self.config.clone(), network, log, sm)
            .await
            .map_err(|e| ReplicaError::Raft {
                range_id,
                detail: e.to_string(),
            })?;
        if self.is_draining() {
            raft.runtime_config().elect(false);
        }
        Ok(Arc::new(Replica {
            range_id,
            span,
            node_id: self.node_id,
            raft,
            state,
            applied_rx,
            lease: self.lease,
            clock: self.engine.clock().clone(),
            lease_floor: parking_lot::Mutex::new(None),
            checksums,
            transfer: parking_lot::Mutex::new(None),
            proposals: tokio::sync::watch::Sender::new(0),
            stopping: AtomicBool::new(false),
            campaigning: std::sync::atomic::AtomicBool::new(!self.is_draining()),
        }))
    }

    /// Creates this node's (empty, uninitialized) replica of `range_id` covering `span`, or
    /// returns the existing one if it has the same span. It joins its group when the group's
    /// leader contacts it, or when [`ReplicaStore::bootstrap`] initializes it.
    pub async fn create_replica(
        &self,
        range_id: RangeId,
        span: Span,
    ) -> Result<Arc<Replica>, ReplicaError> {
        let _lifecycle = self.lifecycle.lock().await;
        if let Some(existing) = self.replica(range_id) {
            if existing.span == span {
                return Ok(existing);
            }
            return Err(ReplicaError::ReplicaExists { range_id });
        }
        let descriptor = encode("replica descriptor", &span)?;
        self.engine.write_local_batch(
            &[LocalOp::Put {
                key: keys::replica_key(range_id),
                value: descriptor,
            }],
            true,
        )?;
        let replica = self.start_replica(range_id, span).await?;
        self.replicas.write().insert(range_id, replica.clone());
        info!(node_id = self.node_id, range_id, "replica created");
        Ok(replica)
    }

    /// Initializes the group of `range_id` with `members` as its voters (once, on one member;
    /// a second call on an initialized group is a no-op).
    pub async fn bootstrap(
        &self,
        range_id: RangeId,
        members: BTreeMap<RaftNodeId, ReplicaNode>,
    ) -> Result<(), ReplicaError> {
        let replica = self
            .replica(range_id)
            .ok_or(ReplicaError::RangeNotFound { range_id })?;
        match replica.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ReplicaError::Raft {
                range_id,
                detail: e.to_string(),
            }),
        }
    }

    /// Stops and deletes this node's replica of `range_id`: its Raft state and its data.
    pub async fn remove_replica(&self, range_id: RangeId) -> Result<(), ReplicaError> {
        let _lifecycle = self.lifecycle.lock().await;
        let Some(replica) = self.replicas.write().remove(&range_id) else {
            return Err(ReplicaError::RangeNotFound { range_id });
        };
        replica.stop_proposing(SHUTDOWN_ANSWER_WAIT).await;
        if let Err(e) = replica.raft.shutdown().await {
            warn!(range_id, error = %e, "raft shutdown failed");
        }
        let (start, end) = keys::state_span(range_id);
        self.engine.replace_span(
            &replica.span,
            &[],
            &[
                LocalOp::DeleteRange { start, end },
                LocalOp::Delete {
                    key: keys::replica_key(range_id),
                },
            ],
        )?;
        info!(node_id = self.node_id, range_id, "replica removed");
        Ok(())
    }

    /// Handles one incoming Raft message and returns the encoded reply.
    pub async fn handle(&self, envelope: Envelope) -> Result<Vec<u8>, ReplicaError> {
        let range_id = envelope.range_id;
        let replica = self
            .replica(range_id)
            .ok_or(ReplicaError::RangeNotFound { range_id })?;
        let reply = match decode_message(&envelope.payload)? {
            RaftMessage::Append(r) => RaftReply::Append(replica.raft.append_entries(r).await),
            RaftMessage::Vote(r) => RaftReply::Vote(replica.raft.vote(r).await),
            RaftMessage::Snapshot(r) => RaftReply::Snapshot(replica.raft.install_snapshot(r).await),
        };
        encode_reply(&reply)
    }

    /// Stops every replica (their state stays on disk).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Replica>> = self.replicas.write().drain().map(|(_, r)| r).collect();
        // Commands already proposed get their answers first (bounded): stopping Raft under
        // them would leave their proposers unsure whether they committed.
        futures::future::join_all(all.iter().map(|r| r.stop_proposing(SHUTDOWN_ANSWER_WAIT))).await;
        for replica in all {
            if let Err(e) = replica.raft.shutdown().await {
                warn!(range_id = replica.range_id, error = %e, "raft shutdown failed");
            }
        }
    }
}

/// Heartbeats every range `store` leads, all at once, every `interval`, until the store is
/// dropped.
async fn heartbeat_loop(store: Weak<ReplicaStore>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let leaders: Vec<Arc<Replica>> = {
            let Some(store) = store.upgrade() else {
                return;
            };
            let replicas = store.replicas.read();
            replicas
                .values()
                .filter(|r| {
                    r.raft.metrics().borrow().state == ServerState::Leader && !r.transferring()
                })
                .cloned()
                .collect()
        };
        for replica in leaders {
            // Fails only once the replica's Raft stopped (removed or shutting down).
            let _ = replica.raft.trigger().heartbeat().await;
        }
    }
}
