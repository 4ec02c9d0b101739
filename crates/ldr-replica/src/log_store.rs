//! A range's Raft log and hard state in the node's RocksDB store, appended with group commit.
//!
//! Every range's appends go to one [`LogWriter`] thread per node, which writes whatever has
//! queued up in one RocksDB batch (synced when the log must be durable) and then answers each
//! request: one fsync covers the appends of many ranges. An append returns after its batch is
//! written, so the entries are readable as soon as openraft asks.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use ldr_storage::{Engine, LocalOp};
use ldr_types::RangeId;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use tokio::sync::oneshot;
use tracing::error;

use crate::command::{decode, encode};
use crate::error::io_error;
use crate::keys;
use crate::{RaftNodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<RaftNodeId>>;

/// Requests drained into one RocksDB batch at most.
const GROUP_REQUESTS_MAX: usize = 256;

struct WriteRequest {
    ops: Vec<LocalOp>,
    /// Must be synced before it is acknowledged (votes always; log appends when the node
    /// syncs its logs).
    sync: bool,
    done: oneshot::Sender<Result<(), String>>,
}

/// The node's log writer (cheap to clone).
#[derive(Clone)]
pub(crate) struct LogWriter {
    tx: std::sync::mpsc::Sender<WriteRequest>,
    sync_log: Arc<AtomicBool>,
}

impl LogWriter {
    /// Starts the writer thread; it ends when every clone is dropped. It holds the engine only
    /// while it writes: a detached thread that kept RocksDB open would still own it when the
    /// process exits, and RocksDB's background threads crash against its static destructors.
    pub(crate) fn start(engine: Weak<Engine>, sync_log: Arc<AtomicBool>) -> LogWriter {
        let (tx, rx) = std::sync::mpsc::channel::<WriteRequest>();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while group.len() < GROUP_REQUESTS_MAX {
                        match rx.try_recv() {
                            Ok(r) => group.push(r),
                            Err(_) => break,
                        }
                    }
                    let sync = group.iter().any(|r| r.sync);
                    let ops: Vec<LocalOp> = group
                        .iter_mut()
                        .flat_map(|r| std::mem::take(&mut r.ops))
                        .collect();
                    let result = match engine.upgrade() {
                        Some(engine) => engine
                            .write_local_batch(&ops, sync)
                            .map_err(|e| e.to_string()),
                        None => Err("the store is closed".to_string()),
                    };
                    if let Err(e) = &result {
                        error!(error = %e, "raft log write failed");
                    }
                    for r in group {
                        let _ = r.done.send(result.clone());
                    }
                }
            })
            .expect("spawning the raft log writer thread");
        LogWriter { tx, sync_log }
    }

    /// Writes `ops` in the next group; `durable` forces a sync (votes).
    async fn write(&self, ops: Vec<LocalOp>, durable: bool) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        let sync = durable || self.sync_log.load(Ordering::Relaxed);
        self.tx
            .send(WriteRequest { ops, sync, done })
            .map_err(|_| "the raft log writer stopped".to_string())?;
        rx.await
            .map_err(|_| "the raft log writer stopped".to_string())?
    }
}

/// One range's log storage.
#[derive(Clone)]
pub(crate) struct LogStore {
    range_id: RangeId,
    engine: Arc<Engine>,
    writer: LogWriter,
}

impl LogStore {
    pub(crate) fn new(range_id: RangeId, engine: Arc<Engine>, writer: LogWriter) -> LogStore {
        LogStore {
            range_id,
            engine,
            writer,
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        tag: u8,
        subject: ErrorSubject<RaftNodeId>,
    ) -> StorageResult<Option<T>> {
        let raw = self
            .engine
            .get_local(&keys::meta_key(self.range_id, tag))
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?;
        raw.map(|r| decode("raft hard state", &r))
            .transpose()
            .map_err(|e| io_error(subject, ErrorVerb::Read, e))
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        tag: u8,
        value: &T,
        durable: bool,
        subject: ErrorSubject<RaftNodeId>,
    ) -> StorageResult<()> {
        let value = encode("raft hard state", value)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        self.writer
            .write(
                vec![LocalOp::Put {
                    key: keys::meta_key(self.range_id, tag),
                    value,
                }],
                durable,
            )
            .await
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }

    fn entry_of(&self, key: &[u8], raw: &[u8]) -> StorageResult<Entry> {
        let entry: Entry = crate::command::decode_entry(raw)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let index = keys::index_of_log_key(self.range_id, key);
        if index != Some(entry.log_id.index) {
            return Err(io_error(
                ErrorSubject::Logs,
                ErrorVerb::Read,
                format!(
                    "range {}: log entry {} stored under index {index:?}",
                    self.range_id, entry.log_id.index
                ),
            ));
        }
        Ok(entry)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let (_, log_end) = keys::log_span(self.range_id);
        let end_key = match range.end_bound() {
            Bound::Included(&i) => match i.checked_add(1) {
                Some(e) => keys::log_key(self.range_id, e),
                None => log_end,
            },
            Bound::Excluded(&i) => keys::log_key(self.range_id, i),
            Bound::Unbounded => log_end,
        };
        let raw = self
            .engine
            .scan_local(&keys::log_key(self.range_id, start), &end_key, 0)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        raw.iter().map(|(k, v)| self.entry_of(k, v)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<RaftNodeId>> =
            self.read_meta(keys::PURGED, ErrorSubject::Store)?;
        let (start, end) = keys::log_span(self.range_id);
        let last = self
            .engine
            .last_local(&start, &end)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?
            .map(|(k, v)| self.entry_of(&k, &v))
            .transpose()?
            .map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> StorageResult<()> {
        self.write_meta(keys::VOTE, vote, true, ErrorSubject::Vote)
            .await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<RaftNodeId>>> {
        self.read_meta(keys::VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftNodeId>>) -> StorageResult<()> {
        self.write_meta(keys::COMMITTED, &committed, false, ErrorSubject::Store)
            .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<RaftNodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<RaftNodeId>>>(keys::COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        for entry in entries {
            let value = encode("raft log entry", &entry)
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            ops.push(LocalOp::Put {
                key: keys::log_key(self.range_id, entry.log_id.index),
                value,
            });
        }
        let result = self.writer.write(ops, false).await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<RaftNodeId>) -> StorageResult<()> {
        let (_, end) = keys::log_span(self.range_id);
        self.writer
            .write(
                vec![LocalOp::DeleteRange {
                    start: keys::log_key(self.range_id, log_id.index),
                    end,
                }],
                false,
            )
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> StorageResult<()> {
        let value = encode("raft hard state", &log_id)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let (start, _) = keys::log_span(self.range_id);
        let end = keys::log_key(self.range_id, log_id.index.saturating_add(1));
        self.writer
            .write(
                vec![
                    LocalOp::Put {
                        key: keys::meta_key(self.range_id, keys::PURGED),
                        value,
                    },
                    LocalOp::DeleteRange { start, end },
                ],
                false,
            )
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
