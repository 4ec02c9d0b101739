//! The LDR job coordinator: the resumer of `LOGICAL REPLICATION` jobs.
//!
//! Each attempt (CockroachDB's `ingest`): dial the source (the URI, or a node of the last
//! plan), send one heartbeat (an INACTIVE stream fails the job permanently: "history retention
//! job is no longer active"), replan (`PlanStream`: one partition per source node), start one
//! processor per partition spread round-robin over the live destination nodes, and merge the
//! processors' resolved spans into the frontier. The frontier's minimum is the replicated time;
//! it is persisted with the resolved spans every `job_checkpoint_frequency` and sent to the
//! source in heartbeats every `heartbeat_frequency`, which advances the source's protected
//! timestamp. Any flow error ends the attempt; the job retries with backoff (reset on progress)
//! and pauses with the error after too many failed attempts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ldr_jobs::{JobContext, JobRecord, ResumeOutcome, Resumer};
use ldr_kv::{KvClient, NodeStatus};
use ldr_proto::pb;
use ldr_stream::{SourceUri, StreamClient};
use ldr_types::{JobId, NodeId, ResolvedSpan, Span, SpanFrontier, Timestamp};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::error::{IngestError, Result};
use crate::flow::{FlowRunner, FlowUpdate};
use crate::job::{Discard, LdrPayload, LdrProgress};
use crate::retry::{FlowFailureAction, JobRetry};

/// How often the replicated time is persisted (the full checkpoint follows
/// `logical_replication.consumer.job_checkpoint_frequency`).
const PUBLISH_REPLICATED_TIME_EVERY: Duration = Duration::from_millis(200);

/// Cleanup hooks the destination's SQL layer provides (schema locks).
#[async_trait]
pub trait DestinationTables: Send + Sync {
    async fn unlock_tables(
        &self,
        table_ids: &[ldr_types::TableId],
        job_id: JobId,
    ) -> std::result::Result<(), String>;
}

/// Runs LDR jobs.
pub struct LdrResumer {
    pub flows: Arc<FlowRunner>,
    pub tables: Arc<dyn DestinationTables>,
}

#[async_trait]
impl Resumer for LdrResumer {
    async fn resume(&self, mut ctx: JobContext, record: JobRecord) -> ResumeOutcome {
        let job_id = record.id;
        let payload = match LdrPayload::from_record(&record) {
            Ok(p) => p,
            Err(e) => return ResumeOutcome::Failed(e),
        };
        let mut retry = JobRetry::default();
        loop {
            let before = current_replicated_time(&ctx, job_id).await;
            let attempt = Attempt {
                ctx: ctx.clone(),
                job_id,
                payload: &payload,
                flows: &self.flows,
            };
            let error = match attempt.run().await {
                Ok(()) => return ResumeOutcome::Succeeded,
                Err(e) => e,
            };
            // A stop request ends a retryable failure quietly; a permanent or non-retryable
            // one is still reported.
            let progressed = if error.is_retryable() {
                if *ctx.stop.borrow() {
                    return ResumeOutcome::Succeeded;
                }
                current_replicated_time(&ctx, job_id).await > before
            } else {
                false
            };
            let backoff = match retry.on_flow_error(&error, progressed) {
                FlowFailureAction::Fail { error } => return ResumeOutcome::Failed(error),
                FlowFailureAction::Pause { error } => {
                    warn!(job_id, %error, "logical replication flow failed; pausing the job");
                    return ResumeOutcome::PauseWithError(error);
                }
                FlowFailureAction::Retry { backoff } => backoff,
            };
            warn!(job_id, error = %error, ?backoff, "logical replication flow failed; retrying");
            let status = format!("retrying after error: {error}");
            let _ = ctx
                .registry
                .update_progress(job_id, &move |r| r.running_status = Some(status.clone()))
                .await;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = ctx.stop.changed() => return ResumeOutcome::Succeeded,
            }
        }
    }

    async fn on_fail_or_cancel(
        &self,
        ctx: JobContext,
        record: JobRecord,
    ) -> std::result::Result<(), String> {
        let payload = LdrPayload::from_record(&record)?;
        // Tell the source (best effort, bounded): its history retention job then fails and
        // releases the protected timestamp and the source schema locks.
        let complete = async {
            let uri = SourceUri::parse(&payload.source_uri)?;
            let mut client = StreamClient::connect_uri(&uri).await?;
            client.complete_stream(payload.stream_id, false).await
        };
        match tokio::time::timeout(Duration::from_secs(30), complete).await {
            Ok(Ok(())) => info!(job_id = record.id, "completed the source stream"),
            Ok(Err(e)) => {
                warn!(job_id = record.id, error = %e, "cannot complete the source stream; it will time out")
            }
            Err(_) => warn!(
                job_id = record.id,
                "timed out completing the source stream; it will time out"
            ),
        }
        let ids: Vec<_> = payload
            .pairs
            .iter()
            .map(|p| p.destination_table_id)
            .collect();
        self.tables.unlock_tables(&ids, record.id).await?;
        drop(ctx);
        Ok(())
    }
}

async fn current_replicated_time(ctx: &JobContext, job_id: JobId) -> Option<Timestamp> {
    let record = ctx.registry.get(job_id).await.ok()?;
    LdrProgress::from_record(&record).ok()?.replicated_ts()
}

/// One ingestion attempt.
struct Attempt<'a> {
    ctx: JobContext,
    job_id: JobId,
    payload: &'a LdrPayload,
    flows: &'a Arc<FlowRunner>,
}

impl Attempt<'_> {
    async fn connect(&self, progress: &LdrProgress) -> Result<StreamClient> {
        let uri = SourceUri::parse(&self.payload.source_uri)
            .map_err(|e| IngestError::Permanent(e.to_string()))?;
        let mut last_error = None;
        let mut addresses = vec![uri.address()];
        addresses.extend(
            progress
                .partition_addresses
                .iter()
                .filter(|a| **a != uri.address())
                .cloned(),
        );
        for address in addresses {
            match StreamClient::connect_to(&address, &uri).await {
                Ok(c) => return Ok(c),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .map(IngestError::from)
            .unwrap_or_else(|| IngestError::Retryable("no source address".into())))
    }

    async fn run(&self) -> Result<()> {
        let kv = self.ctx.kv.clone();
        let record = self.ctx.registry.get(self.job_id).await?;
        let progress: LdrProgress =
            LdrProgress::from_record(&record).map_err(IngestError::Permanent)?;
        let mut client = self.connect(&progress).await?;
        let start = self.payload.start_ts();
        let replicated_at_start = progress.replicated_ts();

        let hb = client
            .heartbeat(pb::HeartbeatRequest {
                stream_id: self.payload.stream_id,
                replicated_time: Some(replicated_at_start.unwrap_or(start).into()),
            })
            .await?;
        if hb.status == pb::StreamStatus::StreamInactive as i32 {
            return Err(IngestError::Permanent(
                "history retention job is no longer active".to_string(),
            ));
        }

        let plan = client.plan_stream(self.payload.stream_id).await?;
        let all_spans: Vec<Span> = plan
            .partitions
            .iter()
            .flat_map(|p| p.spans.iter().cloned().map(Span::from))
            .collect();
        // The frontier starts at the replicated time (or the start time when there is none and
        // no initial scan is needed); checkpointed spans move it further.
        let needs_initial_scan = replicated_at_start.is_none() && self.payload.initial_scan;
        let base = match replicated_at_start {
            Some(t) => t,
            None if needs_initial_scan => Timestamp::ZERO,
            None => start,
        };
        let mut frontier = SpanFrontier::new(all_spans.clone(), base);
        if !needs_initial_scan {
            for r in &progress.checkpoint {
                frontier.forward(&r.span, r.ts);
            }
        }

        let partition_addresses: Vec<String> =
            plan.partitions.iter().map(|p| p.address.clone()).collect();
        {
            let addresses = partition_addresses.clone();
            self.ctx
                .registry
                .update_progress(self.job_id, &move |r| {
                    if let Ok(mut p) = serde_json::from_value::<LdrProgress>(r.progress.clone()) {
                        p.partition_addresses = addresses.clone();
                        if let Ok(v) = serde_json::to_value(&p) {
                            r.progress = v;
                        }
                    }
                    r.running_status = Some(format!(
                        "replicating from {} source partitions",
                        addresses.len()
                    ));
                })
                .await?;
        }

        let destination_nodes = live_nodes(&kv).await?;
        let uri = SourceUri::parse(&self.payload.source_uri)
            .map_err(|e| IngestError::Permanent(e.to_string()))?;
        let (tx, mut rx) = mpsc::channel::<FlowUpdate>(64);
        let mut handles = Vec::new();
        for (i, partition) in plan.partitions.iter().enumerate() {
            let node = &destination_nodes[i % destination_nodes.len()];
            let spans: Vec<Span> = partition.spans.iter().cloned().map(Span::from).collect();
            let resume_from: Vec<ResolvedSpan> = if needs_initial_scan {
                Vec::new()
            } else {
                frontier
                    .entries()
                    .into_iter()
                    .flat_map(|r| {
                        spans.iter().filter_map(move |s| {
                            s.intersect(&r.span)
                                .map(|span| ResolvedSpan { span, ts: r.ts })
                        })
                    })
                    .collect()
            };
            let spec = pb::ProcessorSpec {
                job_id: self.job_id,
                stream_id: self.payload.stream_id,
                processor_id: i as u32,
                source_node_id: partition.node_id,
                source_address: partition.address.clone(),
                spans: partition.spans.clone(),
                source_user: uri.user.clone(),
                source_password: uri.password.clone(),
                initial_scan_ts: needs_initial_scan.then(|| start.into()),
                progress: resume_from
                    .into_iter()
                    .map(pb::ResolvedSpan::from)
                    .collect(),
                with_filtering: self.payload.discard != Discard::Nothing,
                discard_all_deletes: self.payload.discard == Discard::AllDeletes,
                source_origin_id: self.payload.source_origin_id,
                tables: table_mappings(self.payload, &plan)?,
                mode: self.payload.mode.as_str().to_string(),
                label: self.payload.label.clone().unwrap_or_default(),
                source_uri: self.payload.source_uri.clone(),
            };
            handles.push(self.flows.spawn(node.node.clone(), spec, tx.clone()));
        }
        drop(tx);
        info!(
            job_id = self.job_id,
            partitions = plan.partitions.len(),
            destination_nodes = destination_nodes.len(),
            initial_scan = needs_initial_scan,
            "logical replication flow started"
        );

        let checkpoint_every = kv
            .settings()
            .duration("logical_replication.consumer.job_checkpoint_frequency");
        let heartbeat_every = kv
            .settings()
            .duration("logical_replication.consumer.heartbeat_frequency");
        // Replicated time is published every 200ms (SHOW LOGICAL REPLICATION JOBS, heartbeats);
        // the full checkpoint (every resolved span) every job_checkpoint_frequency.
        let mut checkpoint_tick = tokio::time::interval(
            checkpoint_every
                .min(PUBLISH_REPLICATED_TIME_EVERY)
                .max(Duration::from_millis(50)),
        );
        let mut last_full_checkpoint = Instant::now();
        let mut heartbeat_tick =
            tokio::time::interval(heartbeat_every.max(Duration::from_millis(100)));
        heartbeat_tick.reset();
        let mut persisted = replicated_at_start.unwrap_or(Timestamp::ZERO);
        // (scanning, total) ranges per processor: every range counts as scanning until its
        // processor reports otherwise, so a partition that never connected holds the
        // fraction below 1.
        let mut scan_stats: Vec<(u32, u32)> = plan
            .partitions
            .iter()
            .map(|p| {
                let n = p.spans.len() as u32;
                (if needs_initial_scan { n } else { 0 }, n)
            })
            .collect();
        let mut last_persist = Instant::now();
        let mut stop = self.ctx.stop.clone();
        let result = loop {
            tokio::select! {
                update = rx.recv() => match update {
                    Some(FlowUpdate::Resolved { processor_id, update }) => {
                        for r in update.resolved_spans {
                            let r = ResolvedSpan::from(r);
                            frontier.forward(&r.span, r.ts);
                        }
                        if let Some(s) = scan_stats.get_mut(processor_id as usize) {
                            *s = (update.scanning_ranges, update.total_ranges);
                        }
                        let replicated = frontier.frontier();
                        if !replicated.is_zero() && replicated != Timestamp::MAX {
                            self.flows.metrics().set_replicated_time(self.job_id, self.payload.label.as_deref(), replicated);
                        }
                    }
                    Some(FlowUpdate::Failed { processor_id, error }) => {
                        break Err(error.context(format!("processor {processor_id}")));
                    }
                    None => break Err(IngestError::Retryable("every processor stopped".to_string())),
                },
                _ = checkpoint_tick.tick() => {
                    let replicated = frontier.frontier();
                    if replicated > persisted && replicated != Timestamp::MAX {
                        let full = last_full_checkpoint.elapsed() >= checkpoint_every || persisted.is_zero();
                        self.persist(full.then_some(&frontier), replicated).await?;
                        if full {
                            last_full_checkpoint = Instant::now();
                        }
                        persisted = replicated;
                        last_persist = Instant::now();
                    } else if needs_initial_scan && persisted.is_zero() && last_persist.elapsed() >= checkpoint_every {
                        self.persist_scan_fraction(&scan_stats).await?;
                        last_persist = Instant::now();
                    }
                }
                _ = heartbeat_tick.tick() => {
                    let hb = client.heartbeat(pb::HeartbeatRequest {
                        stream_id: self.payload.stream_id,
                        replicated_time: Some(if persisted.is_zero() { start } else { persisted }.into()),
                    }).await;
                    match hb {
                        Ok(r) if r.status == pb::StreamStatus::StreamInactive as i32 => {
                            break Err(IngestError::Retryable(format!(
                                "replication stream {} is not running, status is STREAM_INACTIVE",
                                self.payload.stream_id
                            )));
                        }
                        Ok(_) => {}
                        Err(e) => warn!(job_id = self.job_id, error = %e, "heartbeat to the source failed"),
                    }
                }
                _ = stop.changed() => break Ok(()),
            }
        };
        for h in &handles {
            h.abort();
        }
        // Persist what was reached, whatever ended the attempt.
        let replicated = frontier.frontier();
        if replicated > persisted && replicated != Timestamp::MAX {
            let _ = self.persist(Some(&frontier), replicated).await;
        }
        result
    }

    /// Persists the replicated time, and with `frontier` the full checkpoint. A replicated time
    /// newer than the stored spans is safe to resume from: every span is resolved at least
    /// that far.
    async fn persist(&self, frontier: Option<&SpanFrontier>, replicated: Timestamp) -> Result<()> {
        let checkpoint = frontier.map(SpanFrontier::entries);
        self.ctx
            .registry
            .update_progress(self.job_id, &move |r| {
                let mut p =
                    serde_json::from_value::<LdrProgress>(r.progress.clone()).unwrap_or_default();
                if p.replicated_ts().is_some_and(|old| old > replicated) {
                    return;
                }
                p.replicated_time = Some(replicated.to_decimal_string());
                if let Some(c) = &checkpoint {
                    p.checkpoint = c.clone();
                }
                if let Ok(v) = serde_json::to_value(&p) {
                    r.progress = v;
                }
                r.fraction_completed = 1.0;
                r.running_status = None;
            })
            .await?;
        Ok(())
    }

    async fn persist_scan_fraction(&self, scan: &[(u32, u32)]) -> Result<()> {
        let total: u32 = scan.iter().map(|s| s.1).sum();
        let scanning: u32 = scan.iter().map(|s| s.0).sum();
        if total == 0 {
            return Ok(());
        }
        let fraction = f64::from(total - scanning.min(total)) / f64::from(total);
        self.ctx
            .registry
            .update_progress(self.job_id, &move |r| {
                r.fraction_completed = fraction;
                r.running_status = Some("initial scan".to_string());
            })
            .await?;
        Ok(())
    }
}

/// Live destination nodes, sorted by id (at least this node).
async fn live_nodes(kv: &KvClient) -> Result<Vec<NodeStatus>> {
    let mut nodes: Vec<NodeStatus> = kv
        .nodes()
        .await?
        .into_iter()
        .filter(|n| n.is_live)
        .collect();
    nodes.sort_by_key(|n| n.node.node_id);
    if nodes.is_empty() {
        return Err(IngestError::Retryable(
            "no live destination nodes".to_string(),
        ));
    }
    Ok(nodes)
}

/// Pairs the source descriptors of the plan with the job's destination tables.
fn table_mappings(
    payload: &LdrPayload,
    plan: &pb::PlanStreamResponse,
) -> Result<Vec<pb::TableMapping>> {
    let mut out = Vec::with_capacity(payload.pairs.len());
    for pair in &payload.pairs {
        let descriptor = plan
            .table_descriptors
            .iter()
            .find(|d| descriptor_id(d) == Some(pair.source_table_id))
            .cloned()
            .ok_or_else(|| {
                IngestError::Permanent(format!(
                    "source table {} is no longer part of the stream",
                    pair.source_name
                ))
            })?;
        out.push(pb::TableMapping {
            source_table_id: pair.source_table_id,
            source_descriptor: descriptor,
            destination_table_id: pair.destination_table_id,
        });
    }
    Ok(out)
}

/// The `id` field of a JSON table descriptor.
fn descriptor_id(descriptor: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(descriptor).ok()?;
    v.get("id")?.as_u64().and_then(|id| u32::try_from(id).ok())
}

/// Which destination node runs partition `i` of `n` (round-robin over live nodes).
pub fn assign(partition_index: usize, nodes: &[NodeId]) -> NodeId {
    nodes[partition_index % nodes.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_round_robin() {
        let nodes = [1, 2, 3];
        let assigned: Vec<_> = (0..5).map(|i| assign(i, &nodes)).collect();
        assert_eq!(assigned, vec![1, 2, 3, 1, 2]);
    }

    #[test]
    fn descriptor_ids_come_from_json() {
        assert_eq!(descriptor_id(br#"{"id": 104, "name": "t"}"#), Some(104));
        assert_eq!(descriptor_id(b"not json"), None);
    }
}
