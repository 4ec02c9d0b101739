//! The per-node [`RangefeedManager`]: the engine's commit observer, the registration table,
//! the scan tasks and the resolver task that publishes checkpoints.
//!
//! Hand-over without gaps: a scanning registration is switched live inside
//! [`Engine::snapshot_after`], which takes the RocksDB snapshot while no commit sits between
//! its write and its observer call. Every commit is therefore either in the snapshot (and
//! delivered by the scan) or observed after the switch (and buffered live), never both and
//! never neither, and per key the live events all follow the scanned ones.
//!
//! Ownership: the engine holds only [`Inner`] (through [`ObserverHook`]); the manager holds
//! the engine; the resolver task holds weak references to both, so dropping the manager ends
//! the resolver and fails the remaining registrations with [`RangefeedError::Shutdown`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use ldr_storage::{CommitEvent, CommitObserver, Engine};
use ldr_types::{Span, SpanFrontier, Timestamp};
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::registration::{Registration, Shared};
use crate::{
    ClosedTimestampSource, ManagerOptions, RangefeedError, RangefeedEvent, RegisterRequest,
    StartFrom, ValueEvent,
};

/// Events per batch sent from a scan task.
const SCAN_BATCH_EVENTS: usize = 256;
/// Batches in flight between a scan task and its consumer (the scan's own backpressure).
const SCAN_CHANNEL_BATCHES: usize = 8;

/// The registration table, shared with the engine's commit hook.
pub(crate) struct Inner {
    registrations: RwLock<BTreeMap<u64, Arc<Shared>>>,
    next_id: AtomicU64,
    shutdown: AtomicBool,
    closed_source: RwLock<Option<Arc<dyn ClosedTimestampSource>>>,
}

impl Inner {
    pub(crate) fn remove(&self, id: u64) {
        self.registrations.write().remove(&id);
    }

    fn on_commit(&self, events: &[CommitEvent]) {
        if events.is_empty() || self.shutdown.load(Ordering::Relaxed) {
            return;
        }
        for reg in self.registrations.read().values() {
            reg.on_commit(events);
        }
    }
}

/// What the engine calls: a thin hook that does not keep the manager (or the engine) alive.
struct ObserverHook(Arc<Inner>);

impl CommitObserver for ObserverHook {
    fn on_commit(&self, events: &[CommitEvent]) {
        self.0.on_commit(events);
    }
}

/// All registrations of one node.
pub struct RangefeedManager {
    engine: Arc<Engine>,
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RangefeedManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangefeedManager")
            .field("registrations", &self.registration_count())
            .finish()
    }
}

impl CommitObserver for RangefeedManager {
    fn on_commit(&self, events: &[CommitEvent]) {
        self.inner.on_commit(events);
    }
}

impl RangefeedManager {
    /// Creates the manager, installs it as `engine`'s commit observer and starts its resolver
    /// task on the current tokio runtime.
    ///
    /// # Panics
    /// When called outside a tokio runtime (as `tokio::spawn` does).
    pub fn start(engine: Arc<Engine>, options: ManagerOptions) -> Arc<RangefeedManager> {
        let runtime = tokio::runtime::Handle::current();
        let inner = Arc::new(Inner {
            registrations: RwLock::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
            closed_source: RwLock::new(None),
        });
        engine.set_observer(Arc::new(ObserverHook(inner.clone())));
        let manager = Arc::new(RangefeedManager {
            engine: engine.clone(),
            inner: inner.clone(),
            runtime,
        });
        let interval = options
            .resolve_interval
            .max(std::time::Duration::from_millis(1));
        manager.runtime.spawn(resolver(
            Arc::downgrade(&engine),
            Arc::downgrade(&inner),
            interval,
        ));
        manager
    }

    pub fn register(&self, request: RegisterRequest) -> Result<Registration, RangefeedError> {
        if self.inner.shutdown.load(Ordering::Relaxed) {
            return Err(RangefeedError::Shutdown);
        }
        let spans: Vec<Span> = match (&request.start, request.spans.is_empty()) {
            (StartFrom::CatchUp { from }, true) => from.iter().map(|r| r.span.clone()).collect(),
            _ => request.spans.clone(),
        };
        let spans: Vec<Span> = spans.into_iter().filter(|s| !s.is_empty()).collect();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let scanning = !matches!(request.start, StartFrom::Now);
        let shared = Arc::new(Shared::new(
            id,
            spans.clone(),
            request.filter,
            request.with_diff,
            request.buffer_bytes_max,
            !scanning,
        ));
        self.inner.registrations.write().insert(id, shared.clone());
        let mut registration = Registration {
            shared: shared.clone(),
            inner: self.inner.clone(),
            scan_rx: None,
            pending: VecDeque::new(),
            ended: false,
        };
        if !scanning {
            shared.live.store(true, Ordering::Release);
            debug!(
                registration = id,
                spans = spans.len(),
                "rangefeed registered (live only)"
            );
            return Ok(registration);
        }
        let plan = match &request.start {
            StartFrom::InitialScan { at } => ScanPlan::Initial { at: *at },
            StartFrom::CatchUp { from } => {
                let mut frontier = SpanFrontier::new(spans.iter().cloned(), Timestamp::ZERO);
                for r in from {
                    frontier.forward(&r.span, r.ts);
                }
                ScanPlan::CatchUp {
                    pieces: frontier
                        .entries()
                        .into_iter()
                        .map(|r| (r.span, r.ts))
                        .collect(),
                }
            }
            StartFrom::Now => unreachable!("handled above"),
        };
        let (tx, rx) = mpsc::channel(SCAN_CHANNEL_BATCHES);
        registration.scan_rx = Some(rx);
        let engine = self.engine.clone();
        debug!(
            registration = id,
            spans = spans.len(),
            ?plan,
            "rangefeed registered with scan"
        );
        self.runtime
            .spawn_blocking(move || run_scan(engine, shared, plan, tx));
        Ok(registration)
    }

    /// Number of live registrations (for metrics and tests); failed ones are not counted.
    /// Lets `source` lower the closed timestamp published to registrations (see
    /// [`ClosedTimestampSource`]).
    pub fn set_closed_timestamp_source(&self, source: Arc<dyn ClosedTimestampSource>) {
        *self.inner.closed_source.write() = Some(source);
    }

    pub fn registration_count(&self) -> usize {
        self.inner
            .registrations
            .read()
            .values()
            .filter(|r| !r.is_failed())
            .count()
    }

    /// Fails every registration with [`RangefeedError::Shutdown`] and refuses new ones.
    pub fn shutdown(&self) {
        self.inner.shutdown.store(true, Ordering::Relaxed);
        let regs: Vec<Arc<Shared>> = self.inner.registrations.write().values().cloned().collect();
        for reg in regs {
            reg.fail(RangefeedError::Shutdown);
        }
    }
}

impl Drop for RangefeedManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Debug)]
enum ScanPlan {
    /// Every live row as of `at` with its MVCC timestamp, then every version above `at`.
    Initial { at: Timestamp },
    /// Every version above each piece's timestamp.
    CatchUp { pieces: Vec<(Span, Timestamp)> },
}

/// Batches scan events into the bounded channel; `false` when the scan should stop.
struct ScanSink<'a> {
    shared: &'a Shared,
    tx: &'a mpsc::Sender<Vec<RangefeedEvent>>,
    batch: Vec<RangefeedEvent>,
    stopped: bool,
}

impl ScanSink<'_> {
    fn push(&mut self, event: ValueEvent) -> bool {
        if self.stopped {
            return false;
        }
        if !self.shared.passes(&event.header) {
            return true;
        }
        self.batch.push(RangefeedEvent::Value(event));
        if self.batch.len() >= SCAN_BATCH_EVENTS {
            return self.flush();
        }
        true
    }

    fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return !self.stopped;
        }
        if self.shared.is_finished()
            || self
                .tx
                .blocking_send(std::mem::take(&mut self.batch))
                .is_err()
        {
            self.stopped = true;
        }
        !self.stopped
    }
}

fn run_scan(
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    plan: ScanPlan,
    tx: mpsc::Sender<Vec<RangefeedEvent>>,
) {
    if shared.is_finished() {
        return;
    }
    let (snapshot, ()) = engine.snapshot_after(|| shared.live.store(true, Ordering::Release));
    let with_diff = shared.with_diff;
    let mut sink = ScanSink {
        shared: &shared,
        tx: &tx,
        batch: Vec::with_capacity(SCAN_BATCH_EVENTS),
        stopped: false,
    };
    let history = |after: Timestamp, span: &Span, sink: &mut ScanSink<'_>| {
        snapshot.scan_history(span, after, Timestamp::MAX, &mut |e| {
            sink.push(ValueEvent {
                key: e.key,
                ts: e.version.ts,
                header: e.version.header,
                value: e.version.value,
                prev_value: if with_diff { e.prev_value } else { None },
            })
        })
    };
    let result = match &plan {
        ScanPlan::Initial { at } => shared.spans.iter().try_for_each(|span| {
            snapshot.scan_each(span, *at, &mut |kv| {
                sink.push(ValueEvent {
                    key: kv.key,
                    ts: kv.version.ts,
                    header: kv.version.header,
                    value: kv.version.value,
                    prev_value: None,
                })
            })?;
            history(*at, span, &mut sink)
        }),
        ScanPlan::CatchUp { pieces } => pieces
            .iter()
            .try_for_each(|(span, from)| history(*from, span, &mut sink)),
    };
    drop(snapshot);
    if let Err(e) = result {
        warn!(registration = shared.id, error = %e, "rangefeed scan failed");
        shared.fail(RangefeedError::ScanFailed(e.to_string()));
        return;
    }
    if !sink.flush() {
        return;
    }
    sink.batch.push(RangefeedEvent::ScanDone);
    if !sink.flush() {
        return;
    }
    // The consumer reads the live buffer only after the channel closes (this task's `tx`
    // drops on return), so checkpoints queued from now on come after every scanned event.
    shared.mark_scan_done();
    debug!(registration = shared.id, "rangefeed scan done");
}

/// Publishes the engine's closed timestamp to every registration each `interval`.
async fn resolver(engine: Weak<Engine>, inner: Weak<Inner>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Some(engine), Some(inner)) = (engine.upgrade(), inner.upgrade()) else {
            return;
        };
        if inner.shutdown.load(Ordering::Relaxed) {
            return;
        }
        let closed = engine.closed_timestamp();
        let regs: Vec<Arc<Shared>> = inner.registrations.read().values().cloned().collect();
        let source = inner.closed_source.read().clone();
        for reg in regs {
            match &source {
                Some(source) => {
                    reg.checkpoint(source.closed_timestamp(&reg.spans, closed).min(closed))
                }
                None => reg.checkpoint(closed),
            }
        }
    }
}
