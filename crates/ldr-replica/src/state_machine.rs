//! A range's state machine: the range's MVCC data in the node's engine plus its applied
//! state (last applied log id, membership, closed timestamp), which is written in the same
//! RocksDB batch as the data of each command, so a restart resumes exactly where it stopped.
//!
//! Snapshots carry every version of the range's span (history included: rangefeed catch-up
//! scans and `AS OF SYSTEM TIME` reads need it) and the applied state.

use std::io::Cursor;
use std::sync::Arc;

use ldr_storage::{Engine, LocalOp, VersionWrite};
use ldr_types::{RangeId, Span, Timestamp};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::checksum::{self, Checksums};
use crate::command::{WireVersion, decode, encode};
use crate::error::io_error;
use crate::keys;
use crate::{CommandResponse, RaftNodeId, ReplicaNode, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<RaftNodeId>>;

/// What a replica has applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub(crate) last_applied: Option<LogId<RaftNodeId>>,
    pub(crate) membership: StoredMembership<RaftNodeId, ReplicaNode>,
    /// The highest closed timestamp of any applied command.
    pub(crate) closed_ts: Timestamp,
}

impl AppliedState {
    pub(crate) fn applied_index(&self) -> u64 {
        self.last_applied.map_or(0, |l| l.index)
    }
}

/// The payload of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotPayload {
    range_id: RangeId,
    span: Span,
    closed_ts: Timestamp,
    versions: Vec<WireVersion>,
}

/// A state machine with the shared view of its applied state and applied index.
pub(crate) type Opened = (
    RangeStateMachine,
    Arc<Mutex<AppliedState>>,
    watch::Receiver<u64>,
);

/// One range's state machine.
pub(crate) struct RangeStateMachine {
    range_id: RangeId,
    span: Span,
    engine: Arc<Engine>,
    state: Arc<Mutex<AppliedState>>,
    /// The applied index, for waiters.
    applied_tx: watch::Sender<u64>,
    snapshot_seq: u64,
    /// Consistency checksums taken at checksum requests (shared with the replica).
    checksums: Arc<Checksums>,
}

impl RangeStateMachine {
    /// Loads the applied state persisted for `range_id` (default when new).
    pub(crate) fn open(
        range_id: RangeId,
        span: Span,
        engine: Arc<Engine>,
        checksums: Arc<Checksums>,
    ) -> Result<Opened, crate::ReplicaError> {
        let state = match engine.get_local(&keys::meta_key(range_id, keys::APPLIED))? {
            Some(raw) => decode::<AppliedState>("applied state", &raw)?,
            None => AppliedState::default(),
        };
        let (applied_tx, applied_rx) = watch::channel(state.applied_index());
        let state = Arc::new(Mutex::new(state));
        Ok((
            RangeStateMachine {
                range_id,
                span,
                engine,
                state: state.clone(),
                applied_tx,
                snapshot_seq: 0,
                checksums,
            },
            state,
            applied_rx,
        ))
    }

    fn applied_op(&self, state: &AppliedState) -> StorageResult<LocalOp> {
        Ok(LocalOp::Put {
            key: keys::meta_key(self.range_id, keys::APPLIED),
            value: encode("applied state", state)
                .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))?,
        })
    }

    /// Every version of the span and the applied state, read without applies in between (the
    /// state machine task is the only writer of the span).
    fn export(&self) -> StorageResult<(AppliedState, Vec<u8>)> {
        let state = self.state.lock().clone();
        let mut versions = Vec::new();
        self.engine
            .scan_versions(&self.span, &mut |w| {
                versions.push(WireVersion::from(&w));
                true
            })
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let payload = SnapshotPayload {
            range_id: self.range_id,
            span: self.span.clone(),
            closed_ts: state.closed_ts,
            versions,
        };
        let bytes = encode("snapshot", &payload)
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        Ok((state, bytes))
    }

    fn snapshot_of(&mut self, state: AppliedState, bytes: Vec<u8>) -> Snapshot<TypeConfig> {
        self.snapshot_seq += 1;
        let snapshot_id = match state.last_applied {
            Some(l) => format!(
                "{}-{}-{}-{}",
                self.range_id, l.leader_id, l.index, self.snapshot_seq
            ),
            None => format!("{}--{}", self.range_id, self.snapshot_seq),
        };
        Snapshot {
            meta: SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership,
                snapshot_id,
            },
            snapshot: Box::new(Cursor::new(bytes)),
        }
    }
}

/// Builds a snapshot from an export taken when the builder was made.
pub(crate) struct SnapshotBuilder {
    snapshot: Option<Snapshot<TypeConfig>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        self.snapshot.take().ok_or_else(|| {
            io_error(
                ErrorSubject::StateMachine,
                ErrorVerb::Read,
                "snapshot builder used twice",
            )
        })
    }
}

impl RaftStateMachine<TypeConfig> for RangeStateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<RaftNodeId>>,
        StoredMembership<RaftNodeId, ReplicaNode>,
    )> {
        let state = self.state.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            let mut next = self.state.lock().clone();
            next.last_applied = Some(entry.log_id);
            let mut writes: Vec<VersionWrite> = Vec::new();
            let mut checksum = None;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(command) => {
                    next.closed_ts = next.closed_ts.max(command.closed_ts);
                    checksum = command.checksum;
                    if let Some(threshold) = command.gc_threshold {
                        // Idempotent: replayed after a crash, it removes nothing more.
                        self.engine
                            .gc_replicated(&self.span, threshold)
                            .map_err(|e| {
                                io_error(ErrorSubject::Apply(entry.log_id), ErrorVerb::Write, e)
                            })?;
                    }
                    writes = command.writes.into_iter().map(VersionWrite::from).collect();
                    if let Some(w) = writes.iter().find(|w| !self.span.contains_key(&w.key)) {
                        return Err(io_error(
                            ErrorSubject::Apply(entry.log_id),
                            ErrorVerb::Write,
                            format!(
                                "range {}: command writes key {} outside the range's span {}",
                                self.range_id,
                                ldr_types::keys::pretty_key(&w.key),
                                self.span
                            ),
                        ));
                    }
                }
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            let applied = self.applied_op(&next)?;
            self.engine
                .commit_versions(&writes, &[applied])
                .map_err(|e| io_error(ErrorSubject::Apply(entry.log_id), ErrorVerb::Write, e))?;
            let index = next.applied_index();
            if let Some(request) = checksum {
                // After this entry's batch, before the next: exactly this applied index.
                checksum::start(
                    &self.checksums,
                    &self.engine,
                    self.range_id,
                    &self.span,
                    &next,
                    request.id,
                )
                .await;
            }
            *self.state.lock() = next;
            self.applied_tx.send_replace(index);
            responses.push(CommandResponse { index });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let snapshot = match self.export() {
            Ok((state, bytes)) => Some(self.snapshot_of(state, bytes)),
            Err(e) => {
                tracing::error!(range_id = self.range_id, error = %e, "cannot export a snapshot");
                None
            }
        };
        SnapshotBuilder { snapshot }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftNodeId, ReplicaNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let signature = Some(meta.signature());
        let payload: SnapshotPayload = decode("snapshot", snapshot.get_ref()).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                signature.clone(),
                AnyError::error(e.to_string()),
            ))
        })?;
        if payload.range_id != self.range_id || payload.span != self.span {
            return Err(StorageIOError::read_snapshot(
                signature,
                AnyError::error(format!(
                    "snapshot of range {} {} offered to range {} {}",
                    payload.range_id, payload.span, self.range_id, self.span
                )),
            )
            .into());
        }
        let next = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            closed_ts: payload.closed_ts.max(self.state.lock().closed_ts),
        };
        let applied = self.applied_op(&next)?;
        let versions: Vec<VersionWrite> = payload
            .versions
            .into_iter()
            .map(VersionWrite::from)
            .collect();
        self.engine
            .replace_span(&self.span, &versions, &[applied])
            .map_err(|e| {
                StorageError::from(StorageIOError::write_snapshot(
                    signature,
                    AnyError::error(e.to_string()),
                ))
            })?;
        let index = next.applied_index();
        *self.state.lock() = next;
        self.applied_tx.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        if self.state.lock().last_applied.is_none() {
            return Ok(None);
        }
        let (state, bytes) = self.export()?;
        Ok(Some(self.snapshot_of(state, bytes)))
    }
}
