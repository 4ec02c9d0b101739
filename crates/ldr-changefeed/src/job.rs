//! The `CHANGEFEED` job: its payload and progress, and the resumer (the coordinator) that
//! runs it on one node.
//!
//! A run plans the watched tables' ranges (where each is served now), opens a `StreamSpans`
//! stream to every serving node (an initial scan at the statement time first, or a catch-up
//! scan from the frontier), encodes each change and hands it to the sink, and folds
//! checkpoints into a span frontier. When the frontier advanced and `min_checkpoint_frequency`
//! (or the `resolved` interval) passed, it flushes the sink; only then is the frontier the
//! changefeed's high-water mark: it emits a resolved message, and checkpoints the mark to the
//! job record and to the job's protected timestamp. Any stream error (a lease moved, a node
//! died, a rangefeed overflowed) or sink error ends the run; the next run replans and catches
//! up from the last flushed frontier, so a change is emitted at least once and never skipped.
//! A new coordinator (after a node loss or a pause) starts from the persisted high-water mark.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ldr_jobs::{JobContext, JobRecord, Registry, ResumeOutcome, Resumer};
use ldr_kv::KvClient;
use ldr_proto::pb;
use ldr_sql::catalog::{Catalog, TableDescriptor};
use ldr_stream::Producer;
use ldr_types::{ResolvedSpan, Span, SpanFrontier, TableId, Timestamp, keys};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::encode::{Encoder, RowChange};
use crate::metrics::ChangefeedMetrics;
use crate::options::{ChangefeedOptions, InitialScan, SinkSpec};
use crate::pacing::{AfterFlush, Pacing};
use crate::sink::{
    ClientSink, CloudStorageSink, LocalFiles, RemoteFiles, Sink, SinkError, WebhookSink,
};

/// The immutable details of a changefeed job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangefeedPayload {
    pub table_ids: Vec<TableId>,
    /// `db.public.t` per table (SHOW CHANGEFEED JOBS `full_table_names`).
    pub full_table_names: Vec<String>,
    /// The topic names, comma-separated.
    pub topics: String,
    /// The sink URI as written (SHOW CHANGEFEED JOBS `sink_uri`).
    pub sink_uri: String,
    pub sink: SinkSpec,
    pub format: String,
    pub options: ChangefeedOptions,
    /// The statement time, decimal.
    pub statement_time: String,
}

/// The protected timestamp record id of a changefeed job.
pub fn pts_id(job_id: i64) -> String {
    format!("changefeed-{job_id}")
}

/// Backoff between runs after a retryable error.
const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(250);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bytes per batch a serving node sends.
const BATCH_BYTES_MAX: u64 = 4 << 20;
/// Events buffered between the partition streams and the coordinator.
const EVENTS_BUFFERED_MAX: usize = 64;

/// Why a run ended.
#[derive(Debug)]
pub(crate) enum RunEnd {
    /// `initial_scan = 'only'` finished.
    Done,
    /// The job was asked to stop here.
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

impl RunError {
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, RunError::Retryable(_))
    }
}

impl From<SinkError> for RunError {
    fn from(e: SinkError) -> Self {
        match e {
            SinkError::Retryable(m) => RunError::Retryable(m),
            SinkError::Permanent(m) => RunError::Permanent(m),
        }
    }
}

/// Who a run works for: a job (checkpoints to its record and protected timestamp) or a
/// sinkless changefeed (rows streamed to the SQL client).
pub(crate) struct RunContext {
    pub(crate) job_id: i64,
    /// The changefeed's entry in the node's metrics: the job id, or a sinkless
    /// changefeed's negative id ([`ChangefeedMetrics::sinkless_started`]).
    pub(crate) metrics_id: i64,
    pub(crate) stop: watch::Receiver<bool>,
    /// `None`: a sinkless changefeed (no job record, no protected timestamp).
    pub(crate) registry: Option<Arc<Registry>>,
    /// Where a sinkless changefeed's rows go: the statement's bounded row channel.
    pub(crate) rows: Option<ldr_sql::exec::RowSender>,
}

/// What a job keeps between runs on this node.
pub(crate) struct RunState {
    /// The high-water mark and when to flush, emit resolved messages and checkpoint.
    pacing: Pacing,
    /// The last flushed frontier, per span (a restart catches up from here).
    durable: Vec<ResolvedSpan>,
}

/// Runs changefeed jobs on this node.
pub struct ChangefeedResumer {
    pub kv: KvClient,
    pub catalog: Arc<Catalog>,
    pub producer: Arc<Producer>,
    /// This node's `<store>/extern`.
    pub extern_dir: PathBuf,
    /// This node's changefeed metrics (`/metrics`).
    pub metrics: Arc<ChangefeedMetrics>,
}

/// Counts what passes through a sink into the node's metrics.
struct CountingSink {
    inner: Box<dyn Sink>,
    metrics: Arc<ChangefeedMetrics>,
}

#[async_trait]
impl Sink for CountingSink {
    async fn emit_row(
        &mut self,
        topic: &str,
        schema_version: u64,
        message: &crate::encode::Message,
        mvcc: Timestamp,
    ) -> Result<(), SinkError> {
        self.inner
            .emit_row(topic, schema_version, message, mvcc)
            .await?;
        let bytes = message.key.len() + message.value.as_ref().map_or(0, String::len);
        self.metrics.emitted(1, bytes as u64);
        Ok(())
    }

    async fn flush(&mut self, frontier: Timestamp) -> Result<(), SinkError> {
        self.inner.flush(frontier).await?;
        self.metrics.flushed();
        Ok(())
    }

    async fn emit_resolved(&mut self, payload: &str, ts: Timestamp) -> Result<(), SinkError> {
        self.inner.emit_resolved(payload, ts).await?;
        self.metrics.emitted(1, payload.len() as u64);
        Ok(())
    }

    fn flush_per_batch(&self) -> bool {
        self.inner.flush_per_batch()
    }
}

/// Takes a changefeed out of the running changefeeds' metrics when its resume (or a
/// sinkless changefeed's statement) ends.
pub(crate) struct Running<'a> {
    pub(crate) metrics: &'a ChangefeedMetrics,
    pub(crate) job_id: i64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.metrics.stopped(self.job_id);
    }
}

fn decimal(ts: &str) -> Timestamp {
    ts.parse::<Timestamp>().unwrap_or(Timestamp::ZERO)
}

#[async_trait]
impl Resumer for ChangefeedResumer {
    async fn resume(&self, ctx: JobContext, record: JobRecord) -> ResumeOutcome {
        let payload: ChangefeedPayload = match serde_json::from_value(record.payload.clone()) {
            Ok(p) => p,
            Err(e) => return ResumeOutcome::Failed(format!("corrupt changefeed payload: {e}")),
        };
        let high_water = record
            .progress
            .get("high_water")
            .and_then(|v| v.as_str())
            .map(decimal)
            .unwrap_or(Timestamp::ZERO);
        let mut state = self.new_state(&payload, high_water);
        info!(job_id = ctx.job_id, %high_water, "changefeed resuming");
        self.metrics.set_high_water(ctx.job_id, high_water);
        let _running = Running {
            metrics: &self.metrics,
            job_id: ctx.job_id,
        };
        let mut backoff = RETRY_BACKOFF_INITIAL;
        let mut stop = ctx.stop.clone();
        loop {
            if *stop.borrow() {
                return ResumeOutcome::Succeeded;
            }
            let started = Instant::now();
            let run = RunContext {
                job_id: ctx.job_id,
                metrics_id: ctx.job_id,
                stop: ctx.stop.clone(),
                registry: Some(ctx.registry.clone()),
                rows: None,
            };
            match self.run_once(&run, &payload, &mut state).await {
                Ok(RunEnd::Stopped) => return ResumeOutcome::Succeeded,
                Ok(RunEnd::Done) => {
                    if let Err(e) = self.kv.release_protection(&pts_id(ctx.job_id)).await {
                        debug!(job_id = ctx.job_id, error = %e, "could not release protected timestamp");
                    }
                    info!(
                        job_id = ctx.job_id,
                        "changefeed done (initial scan only, or end_time reached)"
                    );
                    return ResumeOutcome::Succeeded;
                }
                Err(RunError::Permanent(e)) => return ResumeOutcome::Failed(e),
                Err(RunError::Retryable(e)) => {
                    if *stop.borrow() {
                        return ResumeOutcome::Succeeded;
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = RETRY_BACKOFF_INITIAL;
                    }
                    warn!(job_id = ctx.job_id, error = %e, ?backoff, "changefeed run ended; retrying from the high-water mark");
                    self.metrics.retried();
                    state.pacing.error_shown();
                    let status = format!("retryable error: {e}");
                    let _ = ctx
                        .registry
                        .update_progress(ctx.job_id, &move |r| {
                            r.running_status = Some(status.clone());
                        })
                        .await;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return ResumeOutcome::Succeeded,
                    }
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }

    async fn on_fail_or_cancel(
        &self,
        _ctx: JobContext,
        record: JobRecord,
    ) -> std::result::Result<(), String> {
        let id = pts_id(record.id);
        match self.kv.release_protection(&id).await {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("cannot release protected timestamp {id}: {e}")),
        }
    }
}

/// A watched table as the run decodes it.
struct Watched {
    desc: Arc<TableDescriptor>,
    topic: String,
}

impl ChangefeedResumer {
    /// The state of a new resume from `high_water` (zero: none yet).
    pub(crate) fn new_state(&self, payload: &ChangefeedPayload, high_water: Timestamp) -> RunState {
        RunState {
            pacing: Pacing::new(&payload.options, high_water),
            durable: Vec::new(),
        }
    }

    async fn make_sink(
        &self,
        payload: &ChangefeedPayload,
        start: Timestamp,
        run: &RunContext,
    ) -> Result<Box<dyn Sink>, RunError> {
        let me = self.kv.node_id();
        match &payload.sink {
            SinkSpec::Nodelocal { node, path } => {
                let target = node.unwrap_or(me);
                if target == me {
                    return Ok(Box::new(CloudStorageSink::new(
                        Box::new(LocalFiles {
                            dir: self.extern_dir.join(path),
                        }),
                        me,
                        start,
                    )));
                }
                let nodes = self
                    .kv
                    .nodes()
                    .await
                    .map_err(|e| RunError::Retryable(e.to_string()))?;
                let address = nodes
                    .iter()
                    .find(|n| n.node.node_id == target)
                    .map(|n| n.node.address.clone())
                    .ok_or_else(|| {
                        RunError::Permanent(format!("nodelocal sink: node {target} not found"))
                    })?;
                Ok(Box::new(CloudStorageSink::new(
                    Box::new(RemoteFiles {
                        address,
                        node_id: target,
                        dir: path.clone(),
                    }),
                    me,
                    start,
                )))
            }
            SinkSpec::Webhook {
                url,
                insecure_tls_skip_verify,
                ca_cert,
            } => Ok(Box::new(WebhookSink::new(
                url,
                ca_cert.as_deref(),
                *insecure_tls_skip_verify,
            )?)),
            SinkSpec::Sinkless => match &run.rows {
                Some(rows) => Ok(Box::new(ClientSink { rows: rows.clone() })),
                None => Err(RunError::Permanent(
                    "a sinkless changefeed cannot run as a job".into(),
                )),
            },
        }
    }

    async fn watched(
        &self,
        payload: &ChangefeedPayload,
    ) -> Result<HashMap<TableId, Watched>, RunError> {
        let mut out = HashMap::new();
        for id in &payload.table_ids {
            let desc = self
                .catalog
                .table_by_id(*id)
                .await
                .map_err(|e| RunError::Retryable(e.to_string()))?
                .ok_or_else(|| {
                    RunError::Permanent(format!(
                        "CHANGEFEED cannot target a dropped table (table {id})"
                    ))
                })?;
            let topic = if payload.options.full_table_name {
                desc.qualified_name()
            } else {
                desc.name.clone()
            };
            out.insert(*id, Watched { desc, topic });
        }
        Ok(out)
    }

    pub(crate) async fn run_once(
        &self,
        ctx: &RunContext,
        payload: &ChangefeedPayload,
        state: &mut RunState,
    ) -> Result<RunEnd, RunError> {
        let options = &payload.options;
        let statement_time = decimal(&payload.statement_time);
        let start_ts = options.cursor.unwrap_or(statement_time);
        let tables = self.watched(payload).await?;
        let partitions = self
            .producer
            .partitions(&payload.table_ids)
            .await
            .map_err(|e| RunError::Retryable(format!("cannot plan the changefeed: {e}")))?;
        let spans: Vec<Span> = partitions
            .iter()
            .flat_map(|p| p.spans.iter().cloned().map(Span::from))
            .collect();
        // The initial scan runs until the first flush after it: until then there is no
        // high-water mark and a restart scans again.
        let high_water = state.pacing.high_water();
        let scanning = high_water.is_zero() && options.initial_scan != InitialScan::No;
        let base = if scanning {
            Timestamp::ZERO
        } else if high_water.is_zero() {
            start_ts
        } else {
            high_water
        };
        let mut frontier = SpanFrontier::new(spans.clone(), base);
        if !scanning {
            for r in &state.durable {
                frontier.forward(&r.span, r.ts);
            }
        }
        let initial_at = scanning.then_some(statement_time);
        let only = options.initial_scan == InitialScan::Only;
        let mut sink: Box<dyn Sink> = Box::new(CountingSink {
            inner: self
                .make_sink(payload, if scanning { statement_time } else { base }, ctx)
                .await?,
            metrics: self.metrics.clone(),
        });
        let encoder = Encoder::new(options.clone());
        let with_filtering = options.drops_omitted();
        let progress: Vec<pb::ResolvedSpan> = frontier
            .entries()
            .into_iter()
            .map(pb::ResolvedSpan::from)
            .collect();
        let (tx, mut rx) =
            mpsc::channel::<(u32, Result<pb::StreamEvent, String>)>(EVENTS_BUFFERED_MAX);
        let mut readers = Vec::new();
        for p in &partitions {
            let request = pb::ChangefeedSpansRequest {
                job_id: ctx.job_id,
                spans: p.spans.clone(),
                initial_scan_ts: initial_at.map(Into::into),
                progress: if initial_at.is_some() {
                    vec![]
                } else {
                    progress.clone()
                },
                with_filtering,
                batch_bytes_max: BATCH_BYTES_MAX,
            };
            readers.push(tokio::spawn(read_partition(
                p.node_id,
                p.address.clone(),
                request,
                tx.clone(),
            )));
        }
        drop(tx);
        let _abort = AbortOnDrop(readers);
        debug!(job_id = ctx.job_id, partitions = partitions.len(), scanning, %base, "changefeed run started");

        state.pacing.run_started(Instant::now());
        let mut stop = ctx.stop.clone();
        loop {
            let (node_id, event) = tokio::select! {
                _ = stop.changed() => return Ok(RunEnd::Stopped),
                e = rx.recv() => match e {
                    Some(e) => e,
                    None => return Err(RunError::Retryable("every partition stream ended".into())),
                },
            };
            let event = event.map_err(|e| {
                RunError::Retryable(format!("rangefeed on node {node_id} ended: {e}"))
            })?;
            match event.event {
                Some(pb::stream_event::Event::Batch(batch)) => {
                    for kv in batch.kvs {
                        let ts = ldr_proto::ts_or_zero(kv.ts);
                        if only && initial_at.is_some_and(|at| ts > at) {
                            continue;
                        }
                        if options.end_time.is_some_and(|end| ts > end) {
                            continue;
                        }
                        let updated = match initial_at {
                            Some(at) if ts <= at => at,
                            _ => ts,
                        };
                        let Some((watched, change)) =
                            decode_change(&tables, &kv, updated, ts, options.diff)
                                .map_err(RunError::Retryable)?
                        else {
                            continue;
                        };
                        let message = encoder.encode_row(&change);
                        sink.emit_row(&watched.topic, watched.desc.version, &message, ts)
                            .await?;
                    }
                    if sink.flush_per_batch() {
                        sink.flush(frontier.frontier()).await?;
                    }
                }
                Some(pb::stream_event::Event::Checkpoint(cp)) => {
                    for r in cp.resolved_spans {
                        let r = ResolvedSpan::from(r);
                        frontier.forward(&r.span, r.ts);
                    }
                    let resolved = frontier.frontier();
                    if only {
                        // Every span checkpointed: every partition finished its scan.
                        if !resolved.is_zero() {
                            sink.flush(statement_time).await?;
                            return Ok(RunEnd::Done);
                        }
                        continue;
                    }
                    if let Some(end) = options.end_time
                        && resolved >= end
                    {
                        // Every change up to the end time was emitted.
                        sink.flush(end).await?;
                        return Ok(RunEnd::Done);
                    }
                    if !state.pacing.should_flush(resolved, Instant::now()) {
                        continue;
                    }
                    sink.flush(resolved).await?;
                    state.durable = frontier.entries();
                    let after = state.pacing.flushed(resolved, Instant::now());
                    self.after_flush(ctx, resolved, after, &encoder, sink.as_mut())
                        .await?;
                }
                None => {}
            }
        }
    }

    /// After a flush to `hw`: a resolved message and a checkpoint when due.
    async fn after_flush(
        &self,
        ctx: &RunContext,
        hw: Timestamp,
        after: AfterFlush,
        encoder: &Encoder,
        sink: &mut dyn Sink,
    ) -> Result<(), RunError> {
        if after.emit_resolved {
            sink.emit_resolved(&encoder.encode_resolved(hw), hw).await?;
        }
        self.metrics.set_high_water(ctx.metrics_id, hw);
        if after.checkpoint
            && let Some(registry) = &ctx.registry
        {
            let text = hw.to_decimal_string();
            let r = registry
                .update_progress(ctx.job_id, &move |r| {
                    r.progress = serde_json::json!({ "high_water": text.clone() });
                    r.running_status = Some(format!("running: resolved={}", text.clone()));
                })
                .await;
            match r {
                Ok(_) => {}
                Err(ldr_jobs::JobError::ClaimLost(_)) => {
                    return Err(RunError::Retryable("job claim lost".into()));
                }
                Err(e) => return Err(RunError::Retryable(format!("cannot checkpoint: {e}"))),
            }
            if let Err(e) = self.kv.update_protection(&pts_id(ctx.job_id), hw).await {
                debug!(job_id = ctx.job_id, error = %e, "could not advance protected timestamp");
            }
        }
        Ok(())
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Streams one node's spans into `tx` until it ends or fails.
async fn read_partition(
    node_id: u32,
    address: String,
    request: pb::ChangefeedSpansRequest,
    tx: mpsc::Sender<(u32, Result<pb::StreamEvent, String>)>,
) {
    let result = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = ldr_security::dial::node_channel(endpoint)
            .await
            .map_err(|e| format!("cannot reach node {node_id}: {e}"))?;
        let mut client = pb::changefeed_client::ChangefeedClient::new(channel)
            .max_decoding_message_size(256 << 20);
        let mut stream = client
            .stream_spans(request)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    if tx.send((node_id, Ok(event))).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => return Err("stream ended".to_string()),
                Err(s) => return Err(s.message().to_string()),
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send((node_id, Err(e))).await;
    }
}

/// The row of a decoded value: visible columns (and a hidden `rowid` key) by name.
fn row_object(desc: &TableDescriptor, value: &[u8]) -> Result<Map<String, Value>, String> {
    let row = ldr_sql::rowcodec::decode_row_value(desc, value)
        .map_err(|e| format!("cannot decode a row of {}: {e}", desc.name))?;
    let mut m = Map::new();
    for (c, d) in desc.columns.iter().zip(&row) {
        if c.hidden && c.name != ldr_sql::catalog::ROWID_COLUMN {
            continue;
        }
        m.insert(c.name.clone(), d.to_json());
    }
    Ok(m)
}

/// Decodes one version of a watched table's primary index (`None`: not a watched row).
fn decode_change<'a>(
    tables: &'a HashMap<TableId, Watched>,
    kv: &pb::KvEvent,
    updated: Timestamp,
    mvcc: Timestamp,
    diff: bool,
) -> Result<Option<(&'a Watched, RowChange)>, String> {
    let Some(parts) = keys::decode_table_key(&kv.key) else {
        return Ok(None);
    };
    if parts.index_id != ldr_types::PRIMARY_INDEX_ID {
        return Ok(None);
    }
    let Some(watched) = tables.get(&parts.table_id) else {
        return Ok(None);
    };
    let desc = &watched.desc;
    let key = ldr_sql::rowcodec::decode_pk(desc, &kv.key)
        .map_err(|e| format!("cannot decode a key of {}: {e}", desc.name))?
        .iter()
        .map(|d| d.to_json())
        .collect();
    let after = kv
        .value
        .as_deref()
        .map(|v| row_object(desc, v))
        .transpose()?;
    let before = if diff {
        kv.prev_value
            .as_deref()
            .map(|v| row_object(desc, v))
            .transpose()?
    } else {
        None
    };
    Ok(Some((
        watched,
        RowChange {
            topic: watched.topic.clone(),
            key,
            after,
            before,
            updated,
            mvcc,
        },
    )))
}
