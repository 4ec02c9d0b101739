//! Consistency checks, as CockroachDB's `crdb_internal.check_consistency`: the leaseholder
//! proposes a checksum request ([`Command::checksum`]) through Raft; every replica that
//! applies it takes a RocksDB snapshot of the range at exactly that applied index (the apply
//! loop waits for the snapshot, not for the checksum) and computes, off the apply loop, a
//! SHA-256 over the range's replicated state: every MVCC version of its span in key order
//! (key, timestamp, origin header, tombstone flag, value) and its replicated applied state
//! (applied log id, closed timestamp, membership). The result is kept in memory under the
//! request's id (the last [`CHECKSUMS_KEPT`] only); the leaseholder then collects every
//! replica's result and compares them.
//!
//! Not covered: the node-wide GC threshold (node-local, not per range) and the Raft log
//! (not applied state).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ldr_storage::{EngineSnapshot, StorageError};
use ldr_types::{RangeId, Span};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::command::encode;
use crate::state_machine::AppliedState;
use crate::{Command, Replica, ReplicaError};

/// How many checksum results a replica keeps (older ones are forgotten).
pub const CHECKSUMS_KEPT: usize = 8;

/// Counts over the versions of a range, compared alone by a `stats_only` check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChecksumStats {
    /// Every stored version, shadowed versions and tombstones included.
    pub versions: u64,
    /// Distinct keys.
    pub keys: u64,
    /// Keys whose newest version is not a tombstone.
    pub live_keys: u64,
    /// Bytes of every version's key.
    pub key_bytes: u64,
    /// Bytes of every version's value.
    pub value_bytes: u64,
}

impl std::fmt::Display for ChecksumStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "versions={} keys={} live_keys={} key_bytes={} value_bytes={}",
            self.versions, self.keys, self.live_keys, self.key_bytes, self.value_bytes
        )
    }
}

/// One replica's checksum of its range at one applied index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaChecksum {
    pub range_id: RangeId,
    /// The index of the checksum request, at which the checksum was taken.
    pub applied_index: u64,
    /// SHA-256 over the versions and the applied state (see the module doc).
    pub digest: [u8; 32],
    pub stats: ChecksumStats,
}

impl ReplicaChecksum {
    /// The digest in hex.
    pub fn digest_hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

type Slot = ([u8; 16], Option<Result<ReplicaChecksum, String>>);

/// The checksums a replica computed recently, by request id.
#[derive(Debug)]
pub(crate) struct Checksums {
    results: Mutex<VecDeque<Slot>>,
    /// Bumped whenever a checksum starts or finishes (waiters re-look).
    changed: watch::Sender<u64>,
}

impl Default for Checksums {
    fn default() -> Self {
        Checksums {
            results: Mutex::new(VecDeque::new()),
            changed: watch::Sender::new(0),
        }
    }
}

impl Checksums {
    /// A checksum under `id` is being computed.
    pub(crate) fn started(&self, id: [u8; 16]) {
        {
            let mut results = self.results.lock();
            results.retain(|(i, _)| *i != id);
            results.push_back((id, None));
            while results.len() > CHECKSUMS_KEPT {
                results.pop_front();
            }
        }
        self.changed.send_modify(|g| *g += 1);
    }

    /// The checksum under `id` is done (or failed).
    pub(crate) fn finished(&self, id: [u8; 16], result: Result<ReplicaChecksum, String>) {
        {
            let mut results = self.results.lock();
            if let Some(slot) = results.iter_mut().find(|(i, _)| *i == id) {
                slot.1 = Some(result);
            }
        }
        self.changed.send_modify(|g| *g += 1);
    }

    fn lookup(&self, id: &[u8; 16]) -> Option<Result<ReplicaChecksum, String>> {
        self.results
            .lock()
            .iter()
            .find(|(i, _)| i == id)
            .and_then(|(_, r)| r.clone())
    }

    /// Waits up to `wait` for the result under `id` (the request may not be applied here
    /// yet, or still be computing).
    async fn wait(
        &self,
        range_id: RangeId,
        id: [u8; 16],
        wait: Duration,
    ) -> Result<ReplicaChecksum, ReplicaError> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            match self.lookup(&id) {
                Some(Ok(c)) => return Ok(c),
                Some(Err(detail)) => {
                    return Err(ReplicaError::Checksum { range_id, detail });
                }
                None => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    let known = self.results.lock().iter().any(|(i, _)| *i == id);
                    return Err(ReplicaError::Checksum {
                        range_id,
                        detail: if known {
                            format!("checksum still computing after {wait:?}")
                        } else {
                            format!(
                                "checksum request not applied here within {wait:?} (or forgotten)"
                            )
                        },
                    });
                }
            }
        }
    }
}

/// The checksum of `span` in `snapshot`, with the applied state it was taken at.
pub(crate) fn compute(
    range_id: RangeId,
    span: &Span,
    state: &AppliedState,
    snapshot: &EngineSnapshot<'_>,
) -> Result<ReplicaChecksum, StorageError> {
    let mut hasher = Sha256::new();
    hasher.update(b"ldr range checksum v1");
    hasher.update(range_id.to_be_bytes());
    let mut stats = ChecksumStats::default();
    let mut last_key: Option<Vec<u8>> = None;
    snapshot.scan_versions(span, &mut |w| {
        stats.versions += 1;
        stats.key_bytes += w.key.len() as u64;
        let new_key = last_key.as_deref() != Some(w.key.as_slice());
        if new_key {
            // Newest first per key: the first version seen decides liveness.
            stats.keys += 1;
            if !w.version.is_tombstone() {
                stats.live_keys += 1;
            }
            last_key = Some(w.key.clone());
        }
        hasher.update((w.key.len() as u64).to_be_bytes());
        hasher.update(&w.key);
        hasher.update(w.version.ts.to_bytes());
        hasher.update(w.version.header.origin_id.to_be_bytes());
        hasher.update(w.version.header.origin_ts.to_bytes());
        hasher.update([u8::from(w.version.header.omit_in_rangefeeds)]);
        match &w.version.value {
            None => hasher.update([0u8]),
            Some(v) => {
                stats.value_bytes += v.len() as u64;
                hasher.update([1u8]);
                hasher.update((v.len() as u64).to_be_bytes());
                hasher.update(v);
            }
        }
        true
    })?;
    hasher.update(b"applied state");
    hasher.update(state.applied_index().to_be_bytes());
    hasher.update(state.closed_ts.to_bytes());
    // The membership as stored (bincode is deterministic: ordered maps and sets).
    let membership = encode("membership", &state.membership)
        .map_err(|e| StorageError::InvalidArgument(e.to_string()))?;
    hasher.update(&membership);
    Ok(ReplicaChecksum {
        range_id,
        applied_index: state.applied_index(),
        digest: hasher.finalize().into(),
        stats,
    })
}

impl Replica {
    /// Proposes a checksum request under `id` (leaseholder only) and returns the index every
    /// replica takes its checksum at; collect the results with [`Replica::checksum`] here and
    /// on the other replicas.
    pub async fn propose_checksum(&self, id: [u8; 16]) -> Result<u64, ReplicaError> {
        self.check_lease()?;
        self.propose(Command::checksum(id)).await
    }

    /// This replica's checksum under `id`, waiting up to `wait` for it to be applied and
    /// computed. Only the last [`CHECKSUMS_KEPT`] are kept, in memory.
    pub async fn checksum(
        &self,
        id: [u8; 16],
        wait: Duration,
    ) -> Result<ReplicaChecksum, ReplicaError> {
        self.checksums.wait(self.range_id, id, wait).await
    }
}

/// Starts the checksum under `id` of a state machine that just applied the request: takes the
/// snapshot now (returns once taken) and computes the checksum on the blocking pool.
pub(crate) async fn start(
    checksums: &Arc<Checksums>,
    engine: &Arc<ldr_storage::Engine>,
    range_id: RangeId,
    span: &Span,
    state: &AppliedState,
    id: [u8; 16],
) {
    checksums.started(id);
    let (taken_tx, taken_rx) = tokio::sync::oneshot::channel::<()>();
    let checksums = checksums.clone();
    let engine = engine.clone();
    let span = span.clone();
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let snapshot = engine.snapshot();
        let _ = taken_tx.send(());
        let result = compute(range_id, &span, &state, &snapshot).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::warn!(range_id, error = %e, "consistency checksum failed");
        }
        checksums.finished(id, result);
    });
    // The apply loop goes on only once the snapshot holds exactly this index.
    let _ = taken_rx.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(index: u64) -> Result<ReplicaChecksum, String> {
        Ok(ReplicaChecksum {
            range_id: 7,
            applied_index: index,
            digest: [index as u8; 32],
            stats: ChecksumStats::default(),
        })
    }

    #[tokio::test]
    async fn only_the_last_checksums_are_kept_and_waiters_see_late_results() {
        let checksums = Arc::new(Checksums::default());
        for i in 0..(CHECKSUMS_KEPT as u8 + 2) {
            checksums.started([i; 16]);
            checksums.finished([i; 16], result(u64::from(i)));
        }
        let wait = Duration::from_millis(50);
        // The two oldest are forgotten; the others answer at once.
        for i in 0..2u8 {
            let e = checksums
                .wait(7, [i; 16], wait)
                .await
                .expect_err("no checksum");
            assert!(e.to_string().contains("not applied here"), "{e}");
        }
        for i in 2..(CHECKSUMS_KEPT as u8 + 2) {
            let c = checksums.wait(7, [i; 16], wait).await.expect("kept");
            assert_eq!(c.applied_index, u64::from(i));
        }
        // A waiter that asks before the request is applied gets the result when it is done.
        let waiter = {
            let checksums = checksums.clone();
            tokio::spawn(async move { checksums.wait(7, [99; 16], Duration::from_secs(30)).await })
        };
        checksums.started([99; 16]);
        checksums.finished([99; 16], result(99));
        let c = waiter.await.expect("joined").expect("result");
        assert_eq!(c.applied_index, 99);
        assert_eq!(c.digest_hex().len(), 64);
        // A failed checksum is an error, not a hang; a pending one times out saying so.
        checksums.started([100; 16]);
        checksums.finished([100; 16], Err("disk on fire".into()));
        let e = checksums
            .wait(7, [100; 16], wait)
            .await
            .expect_err("no checksum");
        assert!(e.to_string().contains("disk on fire"), "{e}");
        checksums.started([101; 16]);
        let e = checksums
            .wait(7, [101; 16], wait)
            .await
            .expect_err("no checksum");
        assert!(e.to_string().contains("still computing"), "{e}");
    }
}
