//! Workloads over the PostgreSQL wire protocol, written in SQL that both ldr and PostgreSQL
//! accept, so the same code loads an ldr cluster and the PostgreSQL peer:
//! - [`kv`]: upserts (`INSERT … ON CONFLICT (k) DO UPDATE SET v = excluded.v`), deletes and
//!   reads over a key space whose size sets the conflict rate;
//! - [`bank`]: transfers between accounts that keep the total, and a checker for it.
//!
//! Every run is bounded by a duration and/or an operation count and stops early on its
//! cancellation token (Ctrl-C in the CLI). It prints (or logs, or sends) one [`ProgressLine`]
//! per second and returns a [`WorkloadSummary`]. A seed makes the operation stream
//! reproducible per worker.

pub mod bank;
mod history;
pub mod kv;
mod rate;
mod stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use history::{RecordOptions, WriteRecord, WriteStatus};
pub use rate::RateLimiter;
pub use stats::{LatencySummary, ProgressLine, StopReason, WorkloadSummary};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
pub use tokio_util::sync::CancellationToken;

use crate::error::{Result, SimError};
use crate::sql;
pub(crate) use stats::Stats;

/// Where per-second progress lines go.
#[derive(Debug, Clone, Default)]
pub enum Progress {
    #[default]
    Silent,
    /// `println!` (the CLI).
    Stdout,
    /// `tracing::info!` (tests, long runs).
    Log,
    /// A bounded channel; lines are dropped when it is full.
    Channel(mpsc::Sender<ProgressLine>),
}

/// How hard, how long and against what a workload runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// SQL URLs; worker `i` uses `urls[i % urls.len()]`.
    pub urls: Vec<String>,
    /// Concurrent workers, each with its own connection.
    pub concurrency: usize,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many operations were started (failed ones included).
    pub max_ops: Option<u64>,
    /// Operations per second over all workers.
    pub max_rate: Option<f64>,
    pub seed: u64,
    pub progress: Progress,
    pub cancel: CancellationToken,
}

impl LoadOptions {
    /// One worker, no limits yet (set `duration` or `max_ops`), seed from `SEED` or random.
    pub fn new(urls: Vec<String>) -> LoadOptions {
        LoadOptions {
            urls,
            concurrency: 1,
            duration: None,
            max_ops: None,
            max_rate: None,
            seed: seed_from_env(),
            progress: Progress::Silent,
            cancel: CancellationToken::new(),
        }
    }

    pub fn concurrency(mut self, workers: usize) -> LoadOptions {
        self.concurrency = workers;
        self
    }

    pub fn duration(mut self, duration: Duration) -> LoadOptions {
        self.duration = Some(duration);
        self
    }

    pub fn max_ops(mut self, ops: u64) -> LoadOptions {
        self.max_ops = Some(ops);
        self
    }

    pub fn max_rate(mut self, ops_per_s: f64) -> LoadOptions {
        self.max_rate = Some(ops_per_s);
        self
    }

    pub fn seed(mut self, seed: u64) -> LoadOptions {
        self.seed = seed;
        self
    }

    pub fn progress(mut self, progress: Progress) -> LoadOptions {
        self.progress = progress;
        self
    }

    pub fn cancel(mut self, token: CancellationToken) -> LoadOptions {
        self.cancel = token;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.urls.is_empty() {
            return Err(SimError::InvalidArgument(
                "a workload needs at least one SQL URL".into(),
            ));
        }
        if self.concurrency == 0 {
            return Err(SimError::InvalidArgument(
                "concurrency must be at least 1".into(),
            ));
        }
        if self.duration.is_none() && self.max_ops.is_none() {
            return Err(SimError::InvalidArgument(
                "a workload needs a duration or a max op count (runs are always bounded)".into(),
            ));
        }
        if let Some(rate) = self.max_rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(SimError::InvalidArgument(format!(
                "max rate must be positive, got {rate}"
            )));
        }
        Ok(())
    }
}

/// `SEED` from the environment if set (to reproduce a run), else a fresh random seed.
pub fn seed_from_env() -> u64 {
    match std::env::var("SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(seed) => seed,
        None => rand::random(),
    }
}

/// Consecutive server-side errors after which a worker backs off too (a missing table must
/// not turn a worker into a busy loop).
pub(crate) const ERRORS_BEFORE_BACKOFF: u32 = 3;

/// Start/stop bookkeeping shared by a run's workers.
pub(crate) struct Driver {
    pub(crate) stats: Arc<Stats>,
    cancel: CancellationToken,
    start: Instant,
    deadline: Option<Instant>,
    max_ops: Option<u64>,
    issued: AtomicU64,
    limiter: Option<Mutex<RateLimiter>>,
    stop_reason: Mutex<Option<StopReason>>,
}

impl Driver {
    fn new(name: &str, options: &LoadOptions) -> Driver {
        let start = Instant::now();
        Driver {
            stats: Arc::new(Stats::new(name)),
            cancel: options.cancel.clone(),
            start,
            deadline: options.duration.map(|d| start + d),
            max_ops: options.max_ops,
            issued: AtomicU64::new(0),
            // A burst of one second's worth at most, at least one per worker.
            limiter: options.max_rate.map(|r| {
                Mutex::new(RateLimiter::new(
                    r,
                    (r as u32).min(10_000).max(options.concurrency as u32),
                ))
            }),
            stop_reason: Mutex::new(None),
        }
    }

    fn stop(&self, reason: StopReason) {
        let mut slot = self.stop_reason.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(reason);
    }

    /// The next operation's number, or `None` when the run must end. Waits for the rate
    /// limiter.
    pub(crate) async fn next_op(&self) -> Option<u64> {
        if self.cancel.is_cancelled() {
            self.stop(StopReason::Cancelled);
            return None;
        }
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            self.stop(StopReason::Duration);
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.max_ops.is_some_and(|max| n >= max) {
            self.stop(StopReason::MaxOps);
            return None;
        }
        if let Some(limiter) = &self.limiter {
            let go = limiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reserve(now);
            if go > now && !self.pause_until(go).await {
                return None;
            }
        }
        Some(n)
    }

    /// Sleeps until `until` unless the run ends first; false if it ended.
    async fn pause_until(&self, until: Instant) -> bool {
        if let Some(deadline) = self.deadline
            && until >= deadline
        {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => self.stop(StopReason::Duration),
                _ = self.cancel.cancelled() => self.stop(StopReason::Cancelled),
            }
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => true,
            _ = self.cancel.cancelled() => {
                self.stop(StopReason::Cancelled);
                false
            }
        }
    }

    /// Back-off after an error (interruptible by the end of the run).
    pub(crate) async fn backoff(&self, attempt: u32) -> bool {
        let delay = Duration::from_millis(50u64.saturating_mul(1 << attempt.min(5)))
            .min(Duration::from_secs(1));
        self.pause_until(Instant::now() + delay).await
    }

    pub(crate) fn elapsed_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn spawn_reporter(
        self: &Arc<Self>,
        progress: Progress,
        done: CancellationToken,
    ) -> JoinHandle<()> {
        let driver = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            let mut last = Instant::now();
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = done.cancelled() => return,
                }
                let now = Instant::now();
                let line = driver.stats.take_interval(now - driver.start, now - last);
                last = now;
                match &progress {
                    Progress::Silent => {}
                    Progress::Stdout => println!("{line}"),
                    Progress::Log => {
                        tracing::info!(workload = %line.workload, ops_per_s = line.ops_per_s, p99_ms = line.latency.p99_ms, errors = line.errors, "{line}")
                    }
                    Progress::Channel(tx) => {
                        let _ = tx.try_send(line);
                    }
                }
            }
        })
    }

    fn summary(&self, seed: u64, concurrency: usize) -> WorkloadSummary {
        let reason = self
            .stop_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(StopReason::MaxOps);
        self.stats
            .summary(seed, concurrency, self.start.elapsed(), reason)
    }
}

/// Checks every distinct URL once so a wrong address fails the run at once, clearly.
async fn check_reachable(urls: &[String]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for url in urls {
        if seen.insert(url.clone()) {
            let client = sql::connect(url, sql::CONNECT_TIMEOUT).await?;
            sql::exec(&client, "SELECT 1").await?;
        }
    }
    Ok(())
}

/// A worker's connection, reopened after it breaks.
pub(crate) struct Conn {
    url: String,
    client: Option<Client>,
    /// Bumped on every (re)connect, so cached prepared statements know to re-prepare.
    pub(crate) generation: u64,
}

impl Conn {
    pub(crate) fn new(url: String) -> Conn {
        Conn {
            url,
            client: None,
            generation: 0,
        }
    }

    /// The open client, connecting first if needed; `Err` carries an error kind for stats.
    pub(crate) async fn client(&mut self) -> std::result::Result<(&mut Client, u64), String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let client = match sql::connect(&self.url, Duration::from_secs(5)).await {
                Ok(client) => client,
                Err(SimError::Timeout { .. }) => return Err("connect timeout".into()),
                Err(e) => {
                    tracing::debug!(url = %self.url, error = %e, "workload connect failed");
                    return Err("connect".into());
                }
            };
            self.client = Some(client);
            self.generation += 1;
        }
        Ok((
            self.client.as_mut().expect("set just above"),
            self.generation,
        ))
    }

    /// Forgets a broken connection.
    pub(crate) fn on_error(&mut self) {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
    }
}

/// A short error kind for the summary: the SQLSTATE, or what broke.
pub(crate) fn error_kind(error: &tokio_postgres::Error) -> String {
    match error.code() {
        Some(code) => code.code().to_string(),
        None if error.is_closed() => "connection closed".to_string(),
        None => "connection".to_string(),
    }
}

/// Whether a failed write may still have committed: no answer from the server (connection
/// errors, class 08), `statement_completion_unknown` (40003: ldr's answer when a range owner
/// stopped answering after the write was sent), or an internal error (class XX, which says
/// nothing about what happened). Everything else, 58C00 "node … is unavailable" included
/// (the write never reached the owner), certainly did not apply.
pub(crate) fn is_ambiguous(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || code.starts_with("XX") || code == "40003"
        }
    }
}
