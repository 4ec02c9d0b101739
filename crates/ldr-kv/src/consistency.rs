//! Consistency checks of ranges, as CockroachDB's `crdb_internal.check_consistency`.
//!
//! For each replicated range, the gateway asks the leaseholder (`Kv.CheckConsistency`). The
//! leaseholder proposes a checksum request through Raft, so every replica takes its checksum
//! at the same applied index (see `ldr_replica`'s `checksum.rs`), then asks every member of
//! the group for its result (`Kv.CollectChecksum`, itself in-process) with a deadline and
//! compares them with its own:
//! - `RANGE_CONSISTENT`: every replica answered with the leaseholder's checksum (with
//!   `stats_only`, the same counts of versions, keys and bytes);
//! - `RANGE_INCONSISTENT`: some replica answered with another; the detail names it;
//! - `RANGE_INDETERMINATE`: some replica (or the leaseholder) did not answer in time and the
//!   others agree, or no leaseholder was found.
//!
//! A single-owner range has one copy: it is consistent trivially (the detail says so).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ldr_proto::pb;
use ldr_replica::ReplicaChecksum;
use ldr_types::{NodeId, RangeId};

use crate::client::KvClient;
use crate::node::NodeInner;
use crate::replication::kv_error;
use crate::{KvError, RangeDescriptor, Result, system};

/// How long the leaseholder waits for each replica's checksum (and for its proposal).
const COLLECT_WAIT: Duration = Duration::from_secs(4);
/// The gateway's deadline for one range's check at its leaseholder.
const CHECK_TIMEOUT: Duration = Duration::from_millis(9_500);
/// Ranges checked at once by one statement.
const RANGES_IN_PARALLEL: usize = 8;

/// The outcome of checking one range (CockroachDB's status names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsistencyStatus {
    Consistent,
    Inconsistent,
    /// Some replica did not answer (or no leaseholder was found): nothing could be decided.
    Indeterminate,
}

impl ConsistencyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsistencyStatus::Consistent => "RANGE_CONSISTENT",
            ConsistencyStatus::Inconsistent => "RANGE_INCONSISTENT",
            ConsistencyStatus::Indeterminate => "RANGE_INDETERMINATE",
        }
    }

    fn parse(s: &str) -> ConsistencyStatus {
        match s {
            "RANGE_CONSISTENT" => ConsistencyStatus::Consistent,
            "RANGE_INCONSISTENT" => ConsistencyStatus::Inconsistent,
            _ => ConsistencyStatus::Indeterminate,
        }
    }
}

impl std::fmt::Display for ConsistencyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `crdb_internal.check_consistency`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeConsistency {
    pub range_id: RangeId,
    pub start_key: Vec<u8>,
    pub status: ConsistencyStatus,
    pub detail: String,
    pub duration: Duration,
    /// The replicas whose checksum differs from the leaseholder's.
    pub inconsistent_replicas: Vec<NodeId>,
}

fn to_pb(
    node_id: NodeId,
    result: std::result::Result<ReplicaChecksum, String>,
) -> pb::KvReplicaChecksum {
    match result {
        Ok(c) => pb::KvReplicaChecksum {
            node_id,
            error: String::new(),
            applied_index: c.applied_index,
            digest: c.digest.to_vec(),
            versions: c.stats.versions,
            keys: c.stats.keys,
            live_keys: c.stats.live_keys,
            key_bytes: c.stats.key_bytes,
            value_bytes: c.stats.value_bytes,
        },
        Err(error) => pb::KvReplicaChecksum {
            node_id,
            error: if error.is_empty() {
                "no checksum".to_string()
            } else {
                error
            },
            ..pb::KvReplicaChecksum::default()
        },
    }
}

fn stats(c: &pb::KvReplicaChecksum) -> String {
    format!(
        "versions={} keys={} live_keys={} key_bytes={} value_bytes={}",
        c.versions, c.keys, c.live_keys, c.key_bytes, c.value_bytes
    )
}

fn short_digest(c: &pb::KvReplicaChecksum) -> String {
    c.digest
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares the replicas' checksums, the leaseholder's first: status, detail and the
/// replicas that differ from the leaseholder.
pub(crate) fn compare(
    stats_only: bool,
    replicas: &[pb::KvReplicaChecksum],
) -> (ConsistencyStatus, String, Vec<NodeId>) {
    let Some(reference) = replicas.first() else {
        return (
            ConsistencyStatus::Indeterminate,
            "no replica answered".to_string(),
            vec![],
        );
    };
    if !reference.error.is_empty() {
        return (
            ConsistencyStatus::Indeterminate,
            format!(
                "the leaseholder n{} has no checksum: {}",
                reference.node_id, reference.error
            ),
            vec![],
        );
    }
    let same = |c: &pb::KvReplicaChecksum| {
        c.applied_index == reference.applied_index
            && stats(c) == stats(reference)
            && (stats_only || c.digest == reference.digest)
    };
    let mut differing = Vec::new();
    let mut notes = Vec::new();
    let mut silent = Vec::new();
    for c in &replicas[1..] {
        if !c.error.is_empty() {
            silent.push(format!(
                "replica n{} did not answer: {}",
                c.node_id, c.error
            ));
        } else if !same(c) {
            differing.push(c.node_id);
            notes.push(format!(
                "replica n{} differs from the leaseholder n{} at applied index {}: \
                 checksum {} ({}) vs {} ({})",
                c.node_id,
                reference.node_id,
                reference.applied_index,
                short_digest(c),
                stats(c),
                short_digest(reference),
                stats(reference),
            ));
        }
    }
    let agree = replicas.len() - differing.len() - silent.len();
    if !differing.is_empty() {
        notes.extend(silent);
        return (ConsistencyStatus::Inconsistent, notes.join("; "), differing);
    }
    if !silent.is_empty() {
        silent.push(format!(
            "{agree} replica(s) agree at applied index {}",
            reference.applied_index
        ));
        return (ConsistencyStatus::Indeterminate, silent.join("; "), vec![]);
    }
    let what = if stats_only { "stats" } else { "checksum" };
    (
        ConsistencyStatus::Consistent,
        format!(
            "stats: {}; {agree} replica(s) agree on the {what} at applied index {} ({})",
            stats(reference),
            reference.applied_index,
            short_digest(reference)
        ),
        vec![],
    )
}

impl NodeInner {
    /// `Kv.CheckConsistency` at the leaseholder of `range_id` (see the module doc).
    pub(crate) async fn serve_check_consistency(
        self: &Arc<Self>,
        range_id: RangeId,
        stats_only: bool,
    ) -> Result<pb::KvCheckConsistencyResponse> {
        let me = self.require_identity()?.node_id;
        let replica = self
            .replicas()?
            .replica(range_id)
            .ok_or(KvError::RangeNotFound { range_id })?;
        replica.check_lease().map_err(|e| kv_error(e, me))?;
        let id = uuid::Uuid::new_v4().into_bytes();
        match tokio::time::timeout(COLLECT_WAIT, replica.propose_checksum(id)).await {
            Ok(result) => {
                result.map_err(|e| kv_error(e, me))?;
            }
            Err(_) => {
                return Err(KvError::Internal(format!(
                    "range {range_id}: the checksum request was not applied within {COLLECT_WAIT:?}"
                )));
            }
        }
        let mut members: Vec<NodeId> = replica
            .members()
            .into_iter()
            .filter_map(|m| NodeId::try_from(m).ok())
            .filter(|m| *m != me)
            .collect();
        members.sort_unstable();
        members.insert(0, me);
        let collect = members.iter().map(|node_id| {
            let node_id = *node_id;
            let replica = replica.clone();
            async move {
                let result = if node_id == me {
                    replica
                        .checksum(id, COLLECT_WAIT)
                        .await
                        .map(|c| to_pb(node_id, Ok(c)))
                        .map_err(|e| e.to_string())
                } else {
                    self.collect_checksum_on(node_id, range_id, id)
                        .await
                        .map_err(|e| e.to_string())
                };
                result.unwrap_or_else(|e| to_pb(node_id, Err(e)))
            }
        });
        let replicas = futures::future::join_all(collect).await;
        let (status, detail, _) = compare(stats_only, &replicas);
        Ok(pb::KvCheckConsistencyResponse {
            status: status.as_str().to_string(),
            detail,
            replicas,
        })
    }

    async fn collect_checksum_on(
        self: &Arc<Self>,
        node_id: NodeId,
        range_id: RangeId,
        id: [u8; 16],
    ) -> Result<pb::KvReplicaChecksum> {
        let cluster_id = self.require_identity()?.cluster_id.clone();
        let address = self.address_of(node_id).await?;
        let request = pb::KvCollectChecksumRequest {
            range_id,
            checksum_id: id.to_vec(),
            wait_ms: COLLECT_WAIT.as_millis() as u64,
        };
        let response = self
            .transport
            .call(
                node_id,
                &address,
                Some(&cluster_id),
                Some(COLLECT_WAIT + Duration::from_millis(500)),
                request,
                |mut c, r| async move { c.collect_checksum(r).await },
            )
            .await?;
        let mut checksum = response
            .checksum
            .ok_or_else(|| KvError::Rpc("collect checksum answered without a checksum".into()))?;
        checksum.node_id = node_id;
        Ok(checksum)
    }

    /// `Kv.CollectChecksum`: this node's replica's checksum under `id`.
    pub(crate) async fn serve_collect_checksum(
        self: &Arc<Self>,
        range_id: RangeId,
        checksum_id: &[u8],
        wait: Duration,
    ) -> Result<pb::KvCollectChecksumResponse> {
        let me = self.require_identity()?.node_id;
        let id: [u8; 16] = checksum_id.try_into().map_err(|_| {
            KvError::Rpc(format!(
                "a checksum id has 16 bytes, not {}",
                checksum_id.len()
            ))
        })?;
        let replica = self
            .replicas()?
            .replica(range_id)
            .ok_or(KvError::RangeNotFound { range_id })?;
        let result = replica
            .checksum(id, wait.min(COLLECT_WAIT))
            .await
            .map_err(|e| e.to_string());
        Ok(pb::KvCollectChecksumResponse {
            checksum: Some(to_pb(me, result)),
        })
    }
}

/// Whether `span` overlaps `[start, end)`; an empty bound is unbounded.
fn overlaps(span: &ldr_types::Span, start: &[u8], end: &[u8]) -> bool {
    (end.is_empty() || span.start.as_slice() < end)
        && (start.is_empty() || span.end.as_slice() > start)
}

impl KvClient {
    /// `crdb_internal.check_consistency(stats_only, start_key, end_key)`: checks every range
    /// overlapping `[start_key, end_key)` (empty keys: unbounded), in key order. A range that
    /// cannot be checked is `RANGE_INDETERMINATE`, not an error.
    pub async fn check_consistency(
        &self,
        stats_only: bool,
        start_key: &[u8],
        end_key: &[u8],
    ) -> Result<Vec<RangeConsistency>> {
        let inner = self.inner().clone();
        inner.require_identity()?;
        let mut ranges: Vec<RangeDescriptor> = self
            .cluster_ranges()
            .await?
            .into_iter()
            .map(|r| {
                if r.range_id == system::SYSTEM_RANGE_ID {
                    inner.system_range()
                } else {
                    r
                }
            })
            .filter(|r| overlaps(&r.span, start_key, end_key))
            .collect();
        ranges.sort_by(|a, b| a.span.start.cmp(&b.span.start));
        let results: Vec<RangeConsistency> = futures::stream::iter(ranges)
            .map(|range| async move { self.check_range(&range, stats_only).await })
            .buffered(RANGES_IN_PARALLEL)
            .collect()
            .await;
        Ok(results)
    }

    async fn check_range(&self, range: &RangeDescriptor, stats_only: bool) -> RangeConsistency {
        let started = Instant::now();
        let row = |status, detail, inconsistent_replicas| RangeConsistency {
            range_id: range.range_id,
            start_key: range.span.start.clone(),
            status,
            detail,
            duration: started.elapsed(),
            inconsistent_replicas,
        };
        if !range.is_replicated() {
            return row(
                ConsistencyStatus::Consistent,
                format!(
                    "single-owner range on n{}: one copy, nothing to compare",
                    range.node_id
                ),
                vec![],
            );
        }
        let checked = self
            .on_leaseholder(range, |node_id| self.check_on(node_id, range, stats_only))
            .await;
        match checked {
            Ok(response) => {
                let (_, _, differing) = compare(stats_only, &response.replicas);
                row(
                    ConsistencyStatus::parse(&response.status),
                    response.detail,
                    differing,
                )
            }
            Err(e) => row(
                ConsistencyStatus::Indeterminate,
                format!("could not check the range at its leaseholder: {e}"),
                vec![],
            ),
        }
    }

    async fn check_on(
        &self,
        node_id: NodeId,
        range: &RangeDescriptor,
        stats_only: bool,
    ) -> Result<pb::KvCheckConsistencyResponse> {
        let inner = self.inner();
        if node_id == inner.node_id() {
            return inner
                .serve_check_consistency(range.range_id, stats_only)
                .await;
        }
        let cluster_id = inner.require_identity()?.cluster_id.clone();
        let address = inner.address_of(node_id).await?;
        let request = pb::KvCheckConsistencyRequest {
            range_id: range.range_id,
            stats_only,
        };
        inner
            .transport
            .call(
                node_id,
                &address,
                Some(&cluster_id),
                Some(CHECK_TIMEOUT),
                request,
                |mut c, r| async move { c.check_consistency(r).await },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(node_id: NodeId, digest: u8, versions: u64) -> pb::KvReplicaChecksum {
        pb::KvReplicaChecksum {
            node_id,
            applied_index: 10,
            digest: vec![digest; 32],
            versions,
            keys: versions,
            ..Default::default()
        }
    }

    fn silent(node_id: NodeId) -> pb::KvReplicaChecksum {
        to_pb(node_id, Err("connection refused".into()))
    }

    #[test]
    fn the_leaseholder_is_the_reference_and_differing_replicas_are_named() {
        let (s, d, bad) = compare(false, &[sum(1, 7, 3), sum(2, 7, 3), sum(3, 7, 3)]);
        assert_eq!(s, ConsistencyStatus::Consistent, "{d}");
        assert!(bad.is_empty());
        assert!(d.contains("3 replica(s) agree"), "{d}");

        let (s, d, bad) = compare(false, &[sum(2, 7, 3), sum(1, 7, 3), sum(3, 9, 3)]);
        assert_eq!(s, ConsistencyStatus::Inconsistent);
        assert_eq!(bad, vec![3]);
        assert!(
            d.contains("replica n3 differs from the leaseholder n2"),
            "{d}"
        );

        // Same counts, other bytes: only a full check sees it.
        let (s, _, _) = compare(true, &[sum(1, 7, 3), sum(2, 8, 3)]);
        assert_eq!(s, ConsistencyStatus::Consistent);
        let (s, _, bad) = compare(true, &[sum(1, 7, 3), sum(2, 7, 4)]);
        assert_eq!((s, bad), (ConsistencyStatus::Inconsistent, vec![2]));
    }

    #[test]
    fn a_replica_that_does_not_answer_makes_the_range_indeterminate() {
        let (s, d, _) = compare(false, &[sum(1, 7, 3), silent(2), sum(3, 7, 3)]);
        assert_eq!(s, ConsistencyStatus::Indeterminate);
        assert!(d.contains("replica n2 did not answer"), "{d}");
        // ...unless another one differs.
        let (s, _, bad) = compare(false, &[sum(1, 7, 3), silent(2), sum(3, 6, 3)]);
        assert_eq!((s, bad), (ConsistencyStatus::Inconsistent, vec![3]));
        let (s, d, _) = compare(false, &[silent(1), sum(2, 7, 3)]);
        assert_eq!(s, ConsistencyStatus::Indeterminate);
        assert!(d.contains("leaseholder n1"), "{d}");
        assert_eq!(compare(false, &[]).0, ConsistencyStatus::Indeterminate);
        // A replica at another index (it cannot be: the request is one log entry) differs.
        let mut other = sum(2, 7, 3);
        other.applied_index = 11;
        assert_eq!(
            compare(false, &[sum(1, 7, 3), other]).0,
            ConsistencyStatus::Inconsistent
        );
    }

    #[test]
    fn key_bounds_select_overlapping_ranges() {
        let span = ldr_types::Span::new(b"b".to_vec(), b"d".to_vec());
        assert!(overlaps(&span, b"", b""));
        assert!(overlaps(&span, b"c", b""));
        assert!(overlaps(&span, b"", b"c"));
        assert!(!overlaps(&span, b"d", b""));
        assert!(!overlaps(&span, b"", b"b"));
        assert!(overlaps(&span, b"a", b"bb"));
    }
}
