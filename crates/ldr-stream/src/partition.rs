//! One partition stream: a rangefeed over spans this node serves, turned into byte-bounded
//! event batches and checkpoints.
//!
//! Loop prevention: only versions written locally (`origin_id == 0`) are emitted, so rows that
//! replication wrote here never travel back (changefeeds, which reuse this loop, ask for every
//! origin with [`PartitionOptions::only_local_origin`] off). Data always precedes the checkpoint that covers
//! it: a checkpoint flushes the pending batch first. A batch is flushed when it reaches
//! `batch_bytes_max`, or as soon as the consumer is waiting (the outgoing channel is empty), so
//! a light load sees low latency and a heavy one large batches. Checkpoints are sent when a
//! span's resolved timestamp advanced and the last one is older than
//! `min_checkpoint_frequency`, or at the latest after twice that. Those decisions and the
//! sequence numbers are the unit-tested [`crate::event_batcher::EventBatcher`]'s.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ldr_kv::KvClient;
use ldr_proto::pb;
use ldr_rangefeed::{Filter, RangefeedEvent, RangefeedManager, RegisterRequest, StartFrom};
use ldr_types::{ResolvedSpan, Span, SpanFrontier, Timestamp};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::error::{Result, StreamError};
use crate::event_batcher::{Batch, BatcherConfig, EventBatcher};

/// Bytes of live events a registration may buffer before it overflows.
const RANGEFEED_BUFFER_BYTES: usize = 64 << 20;

/// What to stream, decoded from the request.
#[derive(Debug, Clone)]
pub struct PartitionOptions {
    pub stream_id: i64,
    pub spans: Vec<Span>,
    pub start: StartFrom,
    pub with_filtering: bool,
    /// Only versions written locally (`origin_id == 0`): true for replication streams (loop
    /// prevention); false for changefeeds, which emit rows LDR wrote too.
    pub only_local_origin: bool,
    pub batch_bytes_max: usize,
    pub min_checkpoint_frequency: Duration,
}

impl PartitionOptions {
    pub fn from_request(
        request: &pb::StreamPartitionRequest,
        kv: &KvClient,
    ) -> Result<PartitionOptions> {
        let spans: Vec<Span> = request.spans.iter().cloned().map(Span::from).collect();
        if spans.is_empty() || spans.iter().any(Span::is_empty) {
            return Err(StreamError::InvalidArgument(
                "partition request needs non-empty spans".to_string(),
            ));
        }
        let start = match request.initial_scan_ts {
            Some(ts) => StartFrom::InitialScan { at: ts.into() },
            None => {
                let mut frontier = SpanFrontier::new(spans.clone(), Timestamp::ZERO);
                for r in &request.progress {
                    let r = ResolvedSpan::from(r.clone());
                    frontier.forward(&r.span, r.ts);
                }
                StartFrom::CatchUp {
                    from: frontier.entries(),
                }
            }
        };
        let setting_batch = kv.settings().bytes("logical_replication.stream_batch_size") as usize;
        let batch_bytes_max = match request.batch_bytes_max {
            0 => setting_batch,
            n => n as usize,
        }
        .clamp(1, 256 << 20);
        Ok(PartitionOptions {
            stream_id: request.stream_id,
            spans,
            start,
            with_filtering: request.with_filtering,
            only_local_origin: true,
            batch_bytes_max,
            min_checkpoint_frequency: kv
                .settings()
                .duration("physical_replication.producer.min_checkpoint_frequency")
                .max(Duration::from_millis(10)),
        })
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The outgoing stream of one partition: messages as the batcher hands them out.
struct Emitter {
    tx: mpsc::Sender<std::result::Result<pb::StreamEvent, Status>>,
    batcher: EventBatcher<pb::KvEvent>,
}

impl Emitter {
    fn consumer_waiting(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }

    async fn send(&mut self, seq: u64, event: pb::stream_event::Event) -> bool {
        let message = pb::StreamEvent {
            stream_seq: seq,
            emit_unix_nanos: unix_nanos(),
            event: Some(event),
        };
        self.tx.send(Ok(message)).await.is_ok()
    }

    /// Sends `batch` if there is one; false when the consumer went away.
    async fn send_batch(&mut self, batch: Option<Batch<pb::KvEvent>>) -> bool {
        match batch {
            None => true,
            Some(b) => {
                self.send(
                    b.seq,
                    pb::stream_event::Event::Batch(pb::EventBatch { kvs: b.events }),
                )
                .await
            }
        }
    }

    async fn flush(&mut self) -> bool {
        let batch = self.batcher.flush();
        self.send_batch(batch).await
    }
}

/// Runs one partition until the consumer goes away or the rangefeed fails (the error is
/// sent to the consumer, which re-subscribes from its checkpoint).
pub async fn run_partition(
    kv: KvClient,
    rangefeeds: Arc<RangefeedManager>,
    options: PartitionOptions,
    tx: mpsc::Sender<std::result::Result<pb::StreamEvent, Status>>,
) {
    let stream_id = options.stream_id;
    let mut emitter = Emitter {
        tx,
        batcher: EventBatcher::new(BatcherConfig {
            batch_bytes_max: options.batch_bytes_max,
            // Any pending event goes as soon as the consumer waits: low latency under light
            // load, large batches under heavy load.
            ready_flush_bytes_min: 0,
            min_checkpoint_frequency: options.min_checkpoint_frequency,
        }),
    };
    if let Err(e) = check_ownership(&kv, &options.spans).await {
        let _ = emitter.tx.send(Err(e.into())).await;
        return;
    }
    let initial = match &options.start {
        StartFrom::CatchUp { from } => from.clone(),
        _ => Vec::new(),
    };
    let mut frontier = SpanFrontier::new(options.spans.clone(), Timestamp::ZERO);
    for r in &initial {
        frontier.forward(&r.span, r.ts);
    }
    let total_ranges = options.spans.len() as u32;
    let mut registration = match rangefeeds.register(RegisterRequest {
        spans: options.spans.clone(),
        start: options.start.clone(),
        filter: Filter {
            only_local_origin: options.only_local_origin,
            drop_omitted: options.with_filtering,
        },
        with_diff: true,
        buffer_bytes_max: RANGEFEED_BUFFER_BYTES,
    }) {
        Ok(r) => r,
        Err(e) => {
            let _ = emitter
                .tx
                .send(Err(Status::unavailable(format!(
                    "cannot start rangefeed: {e}"
                ))))
                .await;
            return;
        }
    };
    info!(stream_id, spans = options.spans.len(), start = ?options.start, "partition stream started");

    let mut scanning = !matches!(options.start, StartFrom::Now);
    // Whether a span's resolved timestamp advanced since the last checkpoint.
    let mut progressed = false;
    loop {
        let event = tokio::select! {
            event = registration.next() => event,
            _ = emitter.tx.closed() => {
                debug!(stream_id, "consumer went away");
                return;
            }
        };
        match event {
            Ok(RangefeedEvent::Value(v)) => {
                let bytes = v.key.len()
                    + v.value.as_ref().map_or(0, Vec::len)
                    + v.prev_value.as_ref().map_or(0, Vec::len)
                    + 32;
                let event = pb::KvEvent {
                    key: v.key,
                    ts: Some(v.ts.into()),
                    value: v.value,
                    prev_value: v.prev_value,
                };
                let batch = match emitter.batcher.push(event, bytes) {
                    Some(full) => Some(full),
                    None => {
                        let waiting = emitter.consumer_waiting();
                        emitter.batcher.flush_if_ready(waiting)
                    }
                };
                if !emitter.send_batch(batch).await {
                    return;
                }
            }
            Ok(RangefeedEvent::ScanDone) => {
                scanning = false;
                if !emitter.flush().await {
                    return;
                }
            }
            Ok(RangefeedEvent::Checkpoint { spans, resolved }) => {
                for span in &spans {
                    progressed |= frontier.forward(span, resolved);
                }
                let now = Instant::now();
                if emitter.batcher.checkpoint_due_after(progressed, now) {
                    // Data first: the checkpoint promises everything at or below it was sent.
                    let emit = emitter.batcher.checkpoint(frontier.frontier(), now);
                    progressed = false;
                    if !emitter.send_batch(emit.batch).await {
                        return;
                    }
                    let checkpoint = pb::Checkpoint {
                        resolved_spans: frontier
                            .entries()
                            .into_iter()
                            .map(pb::ResolvedSpan::from)
                            .collect(),
                        range_stats: Some(pb::RangeStats {
                            scanning_ranges: if scanning { total_ranges } else { 0 },
                            catchup_ranges: 0,
                            total_ranges,
                        }),
                    };
                    if !emitter
                        .send(emit.seq, pb::stream_event::Event::Checkpoint(checkpoint))
                        .await
                    {
                        return;
                    }
                } else {
                    let waiting = emitter.consumer_waiting();
                    let batch = emitter.batcher.flush_if_ready(waiting);
                    if !emitter.send_batch(batch).await {
                        return;
                    }
                }
            }
            Err(e) => {
                warn!(stream_id, error = %e, "partition rangefeed ended; the consumer will resume from its checkpoint");
                let _ = emitter.flush().await;
                let _ = emitter
                    .tx
                    .send(Err(Status::unavailable(format!("rangefeed ended: {e}"))))
                    .await;
                return;
            }
        }
    }
}

/// Every span must belong to a range this node owns (otherwise the consumer must replan).
async fn check_ownership(kv: &KvClient, spans: &[Span]) -> Result<()> {
    let me = kv.node_id();
    for span in spans {
        let range = kv.range_for_key(&span.start).await?;
        // A replicated range may stream from any node with a replica of it: followers apply
        // the same writes and resolve at the closed timestamps their leaseholder published.
        let served = if range.is_replicated() {
            kv.local_replica_status(range.range_id).is_some()
        } else {
            range.node_id == me
        };
        if !served || !range.span.contains(span) {
            return Err(StreamError::FailedPrecondition(format!(
                "span {span} is not served by node {me} (range {} is on node {}); replan the stream",
                range.range_id, range.node_id
            )));
        }
    }
    Ok(())
}
