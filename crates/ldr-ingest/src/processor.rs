//! A writer processor: one per source partition. It dials its source node directly, receives
//! event batches and checkpoints, and applies every batch before reading on:
//!
//! 1. sort the batch by (key, timestamp) and cut it into chunks that never split a key;
//! 2. collapse each key's versions to the newest (with the oldest version's previous value);
//! 3. wait until the local clock has passed the newest event (the clock guard);
//! 4. apply the chunks on a bounded worker pool;
//! 5. rows that failed go to the purgatory (retried with backoff) or the DLQ, per the DLQ
//!    policy; errors that cannot be dead-lettered fail the processor (the job retries).
//!
//! A checkpoint is forwarded to the coordinator only when no earlier row is still waiting in
//! the purgatory; otherwise it is held there and released when the rows ahead of it are done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ldr_kv::KvClient;
use ldr_proto::pb;
use ldr_stream::{SourceUri, StreamClient};
use ldr_types::{Clock, ResolvedSpan, Span, SpanFrontier, Timestamp};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::applier::{Applier, EventOutcome, SourceEvent};
use crate::chunker::{ChunkSettings, KeyedEvent, plan_flush};
use crate::dlq_policy::{RetryEligibility, RowFailure, RowFailureAction, on_row_failure};
use crate::error::{IngestError, Result};
use crate::metrics::{FlushStats, LabelMetrics, Metrics};
use crate::purgatory::{Purgatory, PurgatoryConfig};

impl KeyedEvent for SourceEvent {
    fn row_key(&self) -> &[u8] {
        &self.key
    }
    fn timestamp(&self) -> Timestamp {
        self.ts
    }
}

/// The checkpoint a purgatory holds: resolved spans plus the source's scan stats.
type HeldCheckpoint = (Vec<pb::ResolvedSpan>, Option<pb::RangeStats>);

/// One writer processor.
pub struct Processor {
    kv: KvClient,
    spec: pb::ProcessorSpec,
    applier: Arc<dyn Applier>,
    metrics: Arc<Metrics>,
    label: Option<Arc<LabelMetrics>>,
}

impl Processor {
    pub fn new(
        kv: KvClient,
        spec: pb::ProcessorSpec,
        applier: Arc<dyn Applier>,
        metrics: Arc<Metrics>,
    ) -> Processor {
        let label = (!spec.label.is_empty()).then(|| metrics.label(&spec.label));
        Processor {
            kv,
            spec,
            applier,
            metrics,
            label,
        }
    }

    fn purgatory_config(&self) -> PurgatoryConfig {
        let s = self.kv.settings();
        PurgatoryConfig {
            backoff: s.duration("logical_replication.consumer.retry_queue_backoff"),
            age_limit: s.duration("logical_replication.consumer.retry_queue_duration"),
            byte_limit: s.bytes("logical_replication.consumer.retry_queue_partition_size_limit"),
        }
    }

    /// Runs until the source stream fails (an error: the coordinator restarts the flow) or
    /// `updates` is closed (the coordinator went away: `Ok`).
    pub async fn run(&self, updates: mpsc::Sender<pb::ProcessorUpdate>) -> Result<()> {
        let spec = &self.spec;
        let spans: Vec<Span> = spec.spans.iter().cloned().map(Span::from).collect();
        let mut frontier = SpanFrontier::new(spans, Timestamp::ZERO);
        for r in &spec.progress {
            let r = ResolvedSpan::from(r.clone());
            frontier.forward(&r.span, r.ts);
        }
        let mut client = if spec.source_uri.is_empty() {
            StreamClient::connect(
                &spec.source_address,
                &spec.source_user,
                &spec.source_password,
            )
            .await?
        } else {
            // The URI's TLS parameters say how to dial and verify the source node.
            let uri = SourceUri::parse(&spec.source_uri)?;
            StreamClient::connect_to(&spec.source_address, &uri).await?
        };
        let mut stream = client
            .stream_partition(pb::StreamPartitionRequest {
                stream_id: spec.stream_id,
                spans: spec.spans.clone(),
                initial_scan_ts: spec.initial_scan_ts,
                progress: spec.progress.clone(),
                with_filtering: spec.with_filtering,
                batch_bytes_max: 0,
                consumer_node_id: self.kv.node_id(),
            })
            .await?;
        info!(
            job_id = spec.job_id,
            processor = spec.processor_id,
            source_node = spec.source_node_id,
            source = %spec.source_address,
            "processor subscribed to its source partition"
        );
        let mut purgatory: Purgatory<SourceEvent, HeldCheckpoint> = Purgatory::new(
            self.purgatory_config(),
            self.metrics.retry_queue_bytes.clone(),
            self.metrics.retry_queue_events.clone(),
        );
        let mut retry_tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                message = stream.message() => {
                    let event = match message {
                        Ok(Some(event)) => event,
                        Ok(None) => return Err(IngestError::Retryable("the source ended the partition stream".into())),
                        Err(status) => return Err(IngestError::Retryable(format!(
                            "partition stream from node {} failed: {}", spec.source_node_id, status.message()
                        ))),
                    };
                    match event.event {
                        Some(pb::stream_event::Event::Batch(batch)) => {
                            purgatory.set_config(self.purgatory_config());
                            let (rest, rest_bytes) = self.handle_batch(batch.kvs, &purgatory).await?;
                            if !rest.is_empty() {
                                // A full queue drains first (its oldest rows go to the DLQ).
                                if purgatory.needs_drain_before_store()
                                    && !self.drain(&mut purgatory, &mut frontier, &updates).await?
                                {
                                    return Ok(());
                                }
                                debug!(processor = spec.processor_id, rows = rest.len(), "rows wait in the retry queue");
                                purgatory.store(rest, rest_bytes, Instant::now());
                            }
                        }
                        Some(pb::stream_event::Event::Checkpoint(checkpoint)) => {
                            self.metrics.checkpoint_events_ingested.inc(1);
                            let held = (checkpoint.resolved_spans, checkpoint.range_stats);
                            if purgatory.is_empty() {
                                if !self.emit(&mut frontier, held, &updates).await {
                                    return Ok(());
                                }
                            } else {
                                purgatory.checkpoint(held, Instant::now());
                                if !self.drain(&mut purgatory, &mut frontier, &updates).await? {
                                    return Ok(());
                                }
                            }
                        }
                        None => {}
                    }
                }
                _ = retry_tick.tick(), if !purgatory.is_empty() => {
                    purgatory.set_config(self.purgatory_config());
                    if !self.drain(&mut purgatory, &mut frontier, &updates).await? {
                        return Ok(());
                    }
                }
                _ = updates.closed() => return Ok(()),
            }
        }
    }

    /// Forwards a checkpoint's resolved spans to the coordinator; false if it went away.
    async fn emit(
        &self,
        frontier: &mut SpanFrontier,
        held: HeldCheckpoint,
        updates: &mpsc::Sender<pb::ProcessorUpdate>,
    ) -> bool {
        let (resolved_spans, stats) = held;
        for r in &resolved_spans {
            let r = ResolvedSpan::from(r.clone());
            frontier.forward(&r.span, r.ts);
        }
        let stats = stats.unwrap_or_default();
        if let Some(label) = &self.label {
            label.scanning_ranges.set(i64::from(stats.scanning_ranges));
        }
        updates
            .send(pb::ProcessorUpdate {
                resolved_spans,
                scanning_ranges: stats.scanning_ranges,
                total_ranges: stats.total_ranges,
            })
            .await
            .is_ok()
    }

    /// Applies a received batch; returns the rows left for the purgatory.
    async fn handle_batch(
        &self,
        kvs: Vec<pb::KvEvent>,
        purgatory: &Purgatory<SourceEvent, HeldCheckpoint>,
    ) -> Result<(Vec<SourceEvent>, u64)> {
        let events = match source_events(kvs, self.spec.discard_all_deletes) {
            Ok(events) => events,
            Err(refused) => {
                self.metrics.events_refused.inc(refused.events);
                warn!(
                    job_id = self.spec.job_id,
                    processor = self.spec.processor_id,
                    source_node = self.spec.source_node_id,
                    events = refused.events,
                    "refusing a batch with events without an origin timestamp"
                );
                return Err(refused.into_error(self.spec.source_node_id));
            }
        };
        if events.is_empty() {
            return Ok((Vec::new(), 0));
        }
        self.flush(events, false, purgatory.enabled()).await
    }

    /// Retries the purgatory's due levels; releases checkpoints behind emptied levels.
    /// Returns false if the coordinator went away.
    async fn drain(
        &self,
        purgatory: &mut Purgatory<SourceEvent, HeldCheckpoint>,
        frontier: &mut SpanFrontier,
        updates: &mpsc::Sender<pb::ProcessorUpdate>,
    ) -> Result<bool> {
        let mut released = Vec::new();
        {
            let mut drain = purgatory.drain();
            while let Some(level) = drain.next_level(Instant::now()) {
                let (rest, rest_bytes) = self.flush(level.events, true, level.eligibility).await?;
                if let Some(checkpoint) = drain.level_done(rest, rest_bytes) {
                    released.push(checkpoint);
                }
            }
        }
        for checkpoint in released {
            if !self.emit(frontier, checkpoint, updates).await {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Applies `events`; returns the rows left for the purgatory (and their bytes).
    async fn flush(
        &self,
        events: Vec<SourceEvent>,
        is_retry: bool,
        eligibility: RetryEligibility,
    ) -> Result<(Vec<SourceEvent>, u64)> {
        let flush_started = Instant::now();
        let first_ts = events.first().map(|e| e.ts).unwrap_or_default();
        let newest = events.iter().map(|e| e.ts).max().unwrap_or_default();
        let workers = self
            .kv
            .settings()
            .int("logical_replication.consumer.flush_worker_per_proc")
            .clamp(1, 1024) as usize;
        let plan = plan_flush(events, workers, ChunkSettings::default());
        let chunks: Vec<Vec<SourceEvent>> =
            plan.chunks.into_iter().map(collapse_versions).collect();
        wait_for_clock(self.kv.clock(), newest).await?;

        let applier = &self.applier;
        let metrics = &self.metrics;
        let mut results = futures::stream::iter(chunks.into_iter().map(|chunk| async move {
            let started = Instant::now();
            let outcomes = applier.apply(&chunk).await;
            let per_row = started.elapsed().as_nanos() as u64 / chunk.len().max(1) as u64;
            metrics.batch_hist_nanos.record(per_row);
            (chunk, outcomes)
        }))
        .buffer_unordered(plan.workers);

        let mut stats = FlushStats::default();
        let mut rest = Vec::new();
        let mut rest_bytes = 0;
        while let Some((chunk, outcomes)) = results.next().await {
            if outcomes.len() != chunk.len() {
                return Err(IngestError::Retryable(format!(
                    "applier returned {} outcomes for {} rows",
                    outcomes.len(),
                    chunk.len()
                )));
            }
            for (event, outcome) in chunk.into_iter().zip(outcomes) {
                let versions = u64::from(event.versions.max(1));
                match outcome {
                    EventOutcome::Applied | EventOutcome::Discarded => {
                        stats.success += versions;
                        stats.processed_bytes += event.logical_bytes();
                    }
                    EventOutcome::LwwLost => {
                        stats.success += versions;
                        stats.kv_update_too_old += versions;
                        stats.processed_bytes += event.logical_bytes();
                    }
                    EventOutcome::Failed(error) => {
                        let failure = RowFailure {
                            message: &error.message,
                            pgcode: error.pgcode.as_deref(),
                            injected: false,
                        };
                        match on_row_failure(&failure, eligibility) {
                            RowFailureAction::Retry => {
                                stats.not_processed += 1;
                                stats.not_processed_bytes += event.logical_bytes();
                                rest_bytes += event.logical_bytes();
                                rest.push(event);
                            }
                            RowFailureAction::Dlq {
                                eligibility,
                                reason,
                            } => {
                                self.applier
                                    .dead_letter(&event, &reason)
                                    .await
                                    .map_err(|e| {
                                        IngestError::Retryable(format!(
                                            "cannot write to the dead letter queue: {e}"
                                        ))
                                    })?;
                                warn!(job_id = self.spec.job_id, %reason, "row sent to the dead letter queue");
                                self.metrics.record_dlq_cause(eligibility);
                                stats.dlq += versions;
                                stats.processed_bytes += event.logical_bytes();
                            }
                            RowFailureAction::FailFlow(message) => {
                                return Err(if error.retryable {
                                    IngestError::Retryable(message)
                                } else {
                                    IngestError::NotRetryable(message)
                                });
                            }
                        }
                    }
                }
            }
        }
        let latency_ns = Timestamp::new(self.kv.clock().physical_now_ns(), 0)
            .wall_time_ns
            .saturating_sub(first_ts.wall_time_ns);
        self.metrics
            .record_flush(&stats, is_retry, latency_ns, self.label.as_deref());
        debug!(
            processor = self.spec.processor_id,
            applied = stats.success,
            dlq = stats.dlq,
            retry_later = stats.not_processed,
            elapsed_ms = flush_started.elapsed().as_millis() as u64,
            "flushed batch"
        );
        Ok((rest, rest_bytes))
    }
}

/// Collapses each key's run of versions (sorted by key, then timestamp) to its newest
/// version carrying the oldest version's previous value.
pub fn collapse_versions(chunk: Vec<SourceEvent>) -> Vec<SourceEvent> {
    let mut out: Vec<SourceEvent> = Vec::with_capacity(chunk.len());
    for event in chunk {
        match out.last_mut() {
            Some(last) if last.key == event.key => {
                debug_assert!(last.ts <= event.ts, "chunks are sorted by (key, ts)");
                let prev = last.prev_value.take();
                let versions = last.versions + event.versions;
                *last = SourceEvent {
                    prev_value: prev,
                    versions,
                    ..event
                };
            }
            _ => out.push(event),
        }
    }
    out
}

/// The events of a batch that broke the protocol.
#[derive(Debug, PartialEq, Eq)]
struct RefusedBatch {
    /// How many events had no origin timestamp.
    events: u64,
    /// The first such event's key, for the error.
    first_key: Vec<u8>,
}

impl RefusedBatch {
    fn into_error(self, source_node_id: u32) -> IngestError {
        IngestError::Protocol(format!(
            "source node {source_node_id} sent {} events without an origin timestamp (first key {:?}); the batch was not applied",
            self.events,
            self.first_key.escape_ascii().to_string(),
        ))
    }
}

/// A received batch as events to apply. An event without an origin timestamp (a missing
/// field, or zero) is refused, and the whole batch with it: LWW would read a zero origin
/// timestamp as "use the local commit timestamp", so the event would win against every row.
fn source_events(
    kvs: Vec<pb::KvEvent>,
    discard_all_deletes: bool,
) -> std::result::Result<Vec<SourceEvent>, RefusedBatch> {
    let mut events = Vec::with_capacity(kvs.len());
    let mut refused: Option<RefusedBatch> = None;
    for kv in kvs {
        let ts = kv
            .ts
            .map(Timestamp::from)
            .filter(|ts| *ts != Timestamp::ZERO);
        let Some(ts) = ts else {
            match &mut refused {
                Some(r) => r.events += 1,
                None => {
                    refused = Some(RefusedBatch {
                        events: 1,
                        first_key: kv.key,
                    })
                }
            }
            continue;
        };
        if discard_all_deletes && kv.value.is_none() {
            continue;
        }
        events.push(SourceEvent {
            key: kv.key,
            ts,
            value: kv.value,
            prev_value: kv.prev_value,
            versions: 1,
        });
    }
    match refused {
        Some(r) => Err(r),
        None => Ok(events),
    }
}

/// How far past the maximum clock offset the clock guard waits before giving up.
const CLOCK_WAIT_MARGIN: Duration = Duration::from_secs(1);

/// The clock guard: waits until the local clock has passed `ts`, so a row's origin
/// timestamp is never in this cluster's future. Clocks of healthy clusters are within the
/// maximum clock offset of each other, so it waits at most that plus [`CLOCK_WAIT_MARGIN`];
/// an event further ahead fails the flow (retryable: by the time the job retries, the local
/// clock may have caught up).
async fn wait_for_clock(clock: &Arc<Clock>, ts: Timestamp) -> Result<()> {
    let bound = clock.max_offset() + CLOCK_WAIT_MARGIN;
    let deadline = tokio::time::Instant::now() + bound;
    let mut warned = false;
    loop {
        let now = clock.now();
        if now >= ts {
            return Ok(());
        }
        let ahead_ns = ts.wall_time_ns.saturating_sub(now.wall_time_ns);
        let ahead = Duration::from_nanos(ahead_ns);
        if tokio::time::Instant::now() + ahead > deadline {
            return Err(IngestError::Retryable(format!(
                "event timestamp {ts} is {}ms ahead of the local clock ({now}), more than the maximum clock offset of {}ms plus {}ms",
                ahead.as_millis(),
                clock.max_offset().as_millis(),
                CLOCK_WAIT_MARGIN.as_millis(),
            )));
        }
        if !warned && ahead_ns > 10_000_000 {
            warn!(event_ts = %ts, local = %now, "event timestamp is ahead of local clock; delaying batch");
            warned = true;
        }
        tokio::time::sleep(Duration::from_nanos(ahead_ns.clamp(100_000, 100_000_000))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, ts: u64, value: Option<&str>, prev: Option<&str>) -> SourceEvent {
        SourceEvent {
            key: key.as_bytes().to_vec(),
            ts: Timestamp::new(ts, 0),
            value: value.map(|v| v.as_bytes().to_vec()),
            prev_value: prev.map(|v| v.as_bytes().to_vec()),
            versions: 1,
        }
    }

    #[test]
    fn collapse_keeps_newest_value_and_oldest_prev() {
        let chunk = vec![
            ev("a", 1, Some("a1"), None),
            ev("a", 2, Some("a2"), Some("a1")),
            ev("a", 3, None, Some("a2")),
            ev("b", 5, Some("b1"), Some("b0")),
        ];
        let out = collapse_versions(chunk);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].ts, Timestamp::new(3, 0));
        assert_eq!(out[0].value, None, "the newest version is a delete");
        assert_eq!(
            out[0].prev_value, None,
            "the oldest version's prev: the row did not exist"
        );
        assert_eq!(out[0].versions, 3);
        assert_eq!(out[1], ev("b", 5, Some("b1"), Some("b0")));
    }

    #[tokio::test]
    async fn clock_guard_waits_for_future_timestamps() {
        let clock = Arc::new(Clock::default());
        let ahead = clock.now().add_nanos(30_000_000);
        let started = Instant::now();
        wait_for_clock(&clock, ahead)
            .await
            .expect("30ms ahead is within the maximum clock offset");
        assert!(clock.now() >= ahead);
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "it waited for the clock"
        );
    }

    #[tokio::test]
    async fn clock_guard_refuses_timestamps_beyond_the_offset_bound() {
        // An hour ahead can never be reached within the bound: fail at once, retryably.
        let clock = Arc::new(Clock::new(Duration::from_millis(500)));
        let started = Instant::now();
        let err = wait_for_clock(&clock, clock.now().add_nanos(3_600_000_000_000))
            .await
            .expect_err("an hour ahead is refused");
        assert!(matches!(err, IngestError::Retryable(_)), "{err:?}");
        assert!(
            err.to_string().contains("ahead of the local clock"),
            "{err}"
        );
        assert!(
            started.elapsed() < CLOCK_WAIT_MARGIN,
            "it did not wait for a timestamp it could never reach: {:?}",
            started.elapsed()
        );
        // The largest timestamp a hostile source can send: refused, not an endless wait.
        let err = wait_for_clock(&clock, Timestamp::new(u64::MAX, u32::MAX))
            .await
            .expect_err("the end of time is refused");
        assert!(matches!(err, IngestError::Retryable(_)), "{err:?}");
    }

    fn kv(key: &str, ts: Option<(u64, u32)>) -> pb::KvEvent {
        pb::KvEvent {
            key: key.as_bytes().to_vec(),
            ts: ts.map(|(wall_time_ns, logical)| pb::Timestamp {
                wall_time_ns,
                logical,
            }),
            value: Some(b"v".to_vec()),
            ..Default::default()
        }
    }

    #[test]
    fn events_without_origin_timestamps_refuse_the_batch() {
        // A well-formed batch becomes events with their timestamps.
        let ok = source_events(vec![kv("a", Some((5, 1))), kv("b", Some((6, 0)))], false)
            .expect("timestamps present");
        assert_eq!(
            ok.iter().map(|e| e.ts).collect::<Vec<_>>(),
            vec![Timestamp::new(5, 1), Timestamp::new(6, 0)]
        );
        // A missing timestamp or a zero one (which LWW would read as "now") refuses it all.
        let refused = source_events(
            vec![kv("a", Some((5, 1))), kv("b", None), kv("c", Some((0, 0)))],
            false,
        )
        .expect_err("an event without a timestamp");
        assert_eq!(
            refused,
            RefusedBatch {
                events: 2,
                first_key: b"b".to_vec()
            }
        );
        let err = refused.into_error(7);
        assert!(matches!(err, IngestError::Protocol(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("source node 7 sent 2 events without an origin timestamp"),
            "{err}"
        );
        // Refused even when the event is a delete the job discards.
        let mut delete = kv("d", None);
        delete.value = None;
        assert!(source_events(vec![delete], true).is_err());
    }
}
