//! One registration: its shared state (live buffer, failure flag, checkpoint progress) and the
//! consumer handle [`Registration`].
//!
//! Events reach the consumer from two places, in this order: the scan channel (bounded; the
//! scan task blocks on it, writers never do) and then the live buffer (filled by the commit
//! observer while the scan runs and after; bounded in bytes, overflow fails the registration).
//! A failure is a flag checked before anything else in [`Registration::next`], so an
//! overflowing consumer learns about it at once even with events still queued.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ldr_storage::CommitEvent;
use ldr_types::{Span, Timestamp};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::manager::Inner;
use crate::{Filter, RangefeedError, RangefeedEvent, ValueEvent};

/// Fixed per-event overhead counted against `buffer_bytes_max`.
const EVENT_OVERHEAD_BYTES: usize = 64;

pub(crate) fn event_bytes(event: &RangefeedEvent) -> usize {
    EVENT_OVERHEAD_BYTES
        + match event {
            RangefeedEvent::Value(v) => {
                v.key.len()
                    + v.value.as_ref().map_or(0, Vec::len)
                    + v.prev_value.as_ref().map_or(0, Vec::len)
            }
            RangefeedEvent::Checkpoint { spans, .. } => {
                spans.iter().map(|s| s.start.len() + s.end.len()).sum()
            }
            RangefeedEvent::ScanDone => 0,
        }
}

/// State shared by the consumer, the commit observer, the scan task and the resolver.
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) spans: Vec<Span>,
    pub(crate) filter: Filter,
    pub(crate) with_diff: bool,
    pub(crate) buffer_bytes_max: usize,
    /// Set (under the engine's commit gate) when the commit observer starts feeding it.
    pub(crate) live: AtomicBool,
    /// The consumer dropped its handle.
    pub(crate) cancelled: AtomicBool,
    state: Mutex<LiveState>,
    notify: Notify,
}

struct LiveState {
    queue: VecDeque<RangefeedEvent>,
    bytes: usize,
    failed: Option<RangefeedError>,
    /// Checkpoints may be published (the scan, if any, has been fully handed over).
    scan_done: bool,
    last_checkpoint: Timestamp,
}

impl Shared {
    pub(crate) fn new(
        id: u64,
        spans: Vec<Span>,
        filter: Filter,
        with_diff: bool,
        buffer_bytes_max: usize,
        scan_done: bool,
    ) -> Shared {
        Shared {
            id,
            spans,
            filter,
            with_diff,
            buffer_bytes_max,
            live: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            state: Mutex::new(LiveState {
                queue: VecDeque::new(),
                bytes: 0,
                failed: None,
                scan_done,
                last_checkpoint: Timestamp::ZERO,
            }),
            notify: Notify::new(),
        }
    }

    pub(crate) fn covers(&self, key: &[u8]) -> bool {
        self.spans.iter().any(|s| s.contains_key(key))
    }

    pub(crate) fn passes(&self, header: &ldr_storage::ValueHeader) -> bool {
        let foreign = self.filter.only_local_origin && header.origin_id != 0;
        let omitted = self.filter.drop_omitted && header.omit_in_rangefeeds;
        !foreign && !omitted
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.state.lock().failed.is_some()
    }

    /// Whether the scan task should stop.
    pub(crate) fn is_finished(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.is_failed()
    }

    /// Fails the registration (first failure wins) and wakes the consumer.
    pub(crate) fn fail(&self, err: RangefeedError) {
        let mut st = self.state.lock();
        if st.failed.is_none() {
            st.failed = Some(err);
            st.queue.clear();
            st.bytes = 0;
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Called by the commit observer: buffers the matching events. Never blocks beyond a
    /// short mutex; overflows fail the registration.
    pub(crate) fn on_commit(&self, events: &[CommitEvent]) {
        if !self.live.load(Ordering::Acquire) || self.cancelled.load(Ordering::Relaxed) {
            return;
        }
        let mut pushed = false;
        let mut st = self.state.lock();
        if st.failed.is_some() {
            return;
        }
        for e in events {
            if !self.covers(&e.key) || !self.passes(&e.version.header) {
                continue;
            }
            let event = RangefeedEvent::Value(ValueEvent {
                key: e.key.clone(),
                ts: e.version.ts,
                header: e.version.header,
                value: e.version.value.clone(),
                prev_value: if self.with_diff {
                    e.prev_value.clone()
                } else {
                    None
                },
            });
            st.bytes += event_bytes(&event);
            if st.bytes > self.buffer_bytes_max {
                st.failed = Some(RangefeedError::Overflow {
                    limit_bytes: self.buffer_bytes_max,
                });
                st.queue.clear();
                st.bytes = 0;
                tracing::warn!(
                    registration = self.id,
                    limit_bytes = self.buffer_bytes_max,
                    "rangefeed consumer overflowed"
                );
                pushed = true;
                break;
            }
            st.queue.push_back(event);
            pushed = true;
        }
        drop(st);
        if pushed {
            self.notify.notify_one();
        }
    }

    /// The scan has been handed to the consumer; checkpoints may follow.
    pub(crate) fn mark_scan_done(&self) {
        self.state.lock().scan_done = true;
    }

    /// Publishes a checkpoint at `closed` if the scan is done and it moves forward.
    /// Consecutive undelivered checkpoints are merged, so they never grow the buffer.
    pub(crate) fn checkpoint(&self, closed: Timestamp) {
        let mut st = self.state.lock();
        if st.failed.is_some() || !st.scan_done || closed <= st.last_checkpoint {
            return;
        }
        st.last_checkpoint = closed;
        if let Some(RangefeedEvent::Checkpoint { resolved, .. }) = st.queue.back_mut() {
            assert!(*resolved < closed, "checkpoints never move backwards");
            *resolved = closed;
        } else {
            let event = RangefeedEvent::Checkpoint {
                spans: self.spans.clone(),
                resolved: closed,
            };
            st.bytes += event_bytes(&event);
            st.queue.push_back(event);
        }
        drop(st);
        self.notify.notify_one();
    }

    fn failure(&self) -> Option<RangefeedError> {
        self.state.lock().failed.clone()
    }

    fn pop_live(&self) -> Option<RangefeedEvent> {
        let mut st = self.state.lock();
        let event = st.queue.pop_front()?;
        st.bytes = st.bytes.saturating_sub(event_bytes(&event));
        Some(event)
    }
}

/// A live registration; dropping it unregisters.
pub struct Registration {
    pub(crate) shared: Arc<Shared>,
    pub(crate) inner: Arc<Inner>,
    /// Batches from the scan task; `None` once the scan has been fully received (or for
    /// [`crate::StartFrom::Now`]).
    pub(crate) scan_rx: Option<mpsc::Receiver<Vec<RangefeedEvent>>>,
    pub(crate) pending: VecDeque<RangefeedEvent>,
    pub(crate) ended: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.shared.id)
            .field("spans", &self.shared.spans)
            .finish()
    }
}

impl Registration {
    /// The next event; `Err` ends the registration (overflow, scan failure, shutdown). After
    /// an error every later call returns the same error. Cancel-safe: an event is taken off a
    /// queue only in the poll that returns it, so `next()` can sit in a `tokio::select!`.
    pub async fn next(&mut self) -> Result<RangefeedEvent, RangefeedError> {
        loop {
            if let Some(err) = self.shared.failure() {
                self.ended = true;
                self.pending.clear();
                self.scan_rx = None;
                return Err(err);
            }
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if let Some(rx) = self.scan_rx.as_mut() {
                tokio::select! {
                    biased;
                    batch = rx.recv() => match batch {
                        Some(batch) => self.pending.extend(batch),
                        None => self.scan_rx = None,
                    },
                    // Woken by a failure (or a live push: harmless, the loop re-checks).
                    _ = self.shared.notify.notified() => {}
                }
                continue;
            }
            // Live phase. `notify_one` stores a permit when nobody waits, so a push between
            // the pop below and the await is not lost.
            if let Some(event) = self.shared.pop_live() {
                return Ok(event);
            }
            if self.shared.failure().is_none() {
                self.shared.notify.notified().await;
            }
        }
    }

    /// Whether the registration has ended with an error.
    pub fn is_failed(&self) -> bool {
        self.ended || self.shared.is_failed()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.cancelled.store(true, Ordering::Relaxed);
        self.inner.remove(self.shared.id);
    }
}
