//! One node's job registry: persists job records in the system keyspace (`jobs/<id>`, JSON,
//! id big-endian), serves `PAUSE`/`RESUME`/`CANCEL JOB`, and runs the claim/adopt loop that
//! starts resumers on this node.
//!
//! Every write is a compare-and-put of the whole record against the bytes just read
//! ([`Registry::update_stored`]), retried on conflict, so concurrent updaters (a user's PAUSE,
//! a resumer's progress, another node's claim) never lose each other's writes. Decisions come
//! from the pure state machine in `state.rs`; this file only reads, asks, and writes.
//!
//! A job runs on exactly one node: a node runs it only under a claim (coordinator = this node,
//! claim epoch = the one it wrote). Another node takes the claim only when the claiming node's
//! liveness expired; the loser notices on its next tick and stops its task, whose outcome is
//! then ignored (its epoch is stale). To keep two runs from overlapping, a node also fences
//! itself: it stops its tasks (and claims nothing) once its own liveness, as last read, is
//! within `liveness_margin` of expiring — before any other node may consider it dead. A node
//! cut off from the system range cannot refresh that reading, so it fences itself too.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ldr_kv::KvClient;
use ldr_types::{JobId, NodeId, Timestamp};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::state::{self, Action, Change, Next, Observation, StopReason, StoredJob};
use crate::{JobContext, JobError, JobRecord, JobStatus, JobType, Result, ResumeOutcome, Resumer};

/// The system-keyspace subspace holding job records.
pub const JOBS_SUBSPACE: &str = "jobs";

/// Attempts of one compare-and-put loop before giving up with [`JobError::Contention`].
const CPUT_ATTEMPTS_MAX: u32 = 200;

/// Tunables of the registry loop.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// How often the loop scans the job records (CockroachDB adopts every 30s; ours 500ms).
    pub adopt_interval: Duration,
    /// Stop every local job when this node's liveness (as last read) expires within this
    /// margin. It must cover the maximum clock offset (500ms) plus the time a stop takes; the
    /// liveness TTL (4.5s, heartbeats every 1s) leaves a healthy node 3.5s or more.
    pub liveness_margin: Duration,
    /// `on_fail_or_cancel` attempts before the job finishes anyway.
    pub revert_attempts_max: u32,
    /// Backoff between `on_fail_or_cancel` attempts (doubling up to `revert_backoff_max`).
    pub revert_backoff_initial: Duration,
    pub revert_backoff_max: Duration,
    /// How long to keep retrying a status write after a resumer returned (system range down).
    pub outcome_write_deadline: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            adopt_interval: Duration::from_millis(500),
            liveness_margin: Duration::from_millis(1500),
            revert_attempts_max: 10,
            revert_backoff_initial: Duration::from_millis(500),
            revert_backoff_max: Duration::from_secs(30),
            outcome_write_deadline: Duration::from_secs(10),
        }
    }
}

/// A job task running on this node.
struct LocalJob {
    epoch: u64,
    task_seq: u64,
    stop: watch::Sender<bool>,
    /// The task moved on to `on_fail_or_cancel`: a cancel request (from a record read
    /// earlier) no longer concerns it.
    reverting: bool,
}

/// The registry of one node.
pub struct Registry {
    kv: KvClient,
    me: NodeId,
    options: RegistryOptions,
    this: Weak<Registry>,
    resumers: RwLock<HashMap<JobType, Arc<dyn Resumer>>>,
    local: Mutex<HashMap<JobId, LocalJob>>,
    task_seq: Mutex<u64>,
    wake: Notify,
    /// This node's liveness expiration as last read (self-fencing).
    own_expiration: Mutex<Option<Timestamp>>,
    /// Draining: this node claims no job (see [`Registry::drain`]).
    draining: std::sync::atomic::AtomicBool,
    shutdown: watch::Sender<bool>,
    loop_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn job_key(id: JobId) -> [u8; 8] {
    id.to_be_bytes()
}

fn decode(bytes: &[u8]) -> Result<StoredJob> {
    serde_json::from_slice(bytes).map_err(|e| JobError::Corrupt(e.to_string()))
}

fn encode(job: &StoredJob) -> Vec<u8> {
    serde_json::to_vec(job).expect("a job record always serializes to JSON")
}

impl Registry {
    /// Starts the claim/adopt loop on the current runtime.
    pub fn start(kv: KvClient) -> Arc<Registry> {
        Registry::start_with_options(kv, RegistryOptions::default())
    }

    /// [`Registry::start`] with explicit tunables.
    pub fn start_with_options(kv: KvClient, options: RegistryOptions) -> Arc<Registry> {
        let me = kv.node_id();
        let (shutdown, _) = watch::channel(false);
        let registry = Arc::new_cyclic(|this| Registry {
            kv,
            me,
            options,
            this: this.clone(),
            resumers: RwLock::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            task_seq: Mutex::new(0),
            wake: Notify::new(),
            own_expiration: Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
            shutdown,
            loop_task: Mutex::new(None),
        });
        let handle = tokio::spawn(Registry::run_loop(registry.clone()));
        *registry.loop_task.lock() = Some(handle);
        registry
    }

    /// The node this registry runs on.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    pub fn register_resumer(&self, job_type: JobType, resumer: Arc<dyn Resumer>) {
        self.resumers.write().insert(job_type, resumer);
        self.wake.notify_one();
    }

    /// Persists a new running job and returns its id (CockroachDB-style `unique_id`). The
    /// creating node claims it when it has a resumer for the type, and starts it right away.
    pub async fn create(
        &self,
        job_type: JobType,
        description: String,
        user_name: String,
        payload: serde_json::Value,
        progress: serde_json::Value,
    ) -> Result<JobId> {
        let claim = self
            .resumers
            .read()
            .contains_key(&job_type)
            .then_some(self.me);
        for _ in 0..CPUT_ATTEMPTS_MAX {
            let id = ldr_types::unique_id(self.kv.clock(), self.me);
            let record = JobRecord {
                id,
                job_type,
                description: description.clone(),
                user_name: user_name.clone(),
                status: JobStatus::Running,
                running_status: None,
                created: self.kv.clock().now(),
                finished: None,
                fraction_completed: 0.0,
                error: None,
                coordinator_id: claim,
                payload: payload.clone(),
                progress: progress.clone(),
            };
            let bytes = encode(&StoredJob::new(record));
            if self
                .kv
                .sys_cput(JOBS_SUBSPACE, &job_key(id), Some(&bytes), None)
                .await?
                .is_ok()
            {
                info!(job_id = id, job_type = job_type.as_str(), "created job");
                self.wake.notify_one();
                return Ok(id);
            }
            // An id collision (another node's clock and id bits): pick another id.
        }
        Err(JobError::Contention(0))
    }

    pub async fn get(&self, id: JobId) -> Result<JobRecord> {
        match self.kv.sys_get(JOBS_SUBSPACE, &job_key(id)).await? {
            Some(bytes) => Ok(decode(&bytes)?.record),
            None => Err(JobError::NotFound(id)),
        }
    }

    /// All jobs, newest first.
    pub async fn list(&self) -> Result<Vec<JobRecord>> {
        let mut jobs = self
            .kv
            .sys_scan(JOBS_SUBSPACE)
            .await?
            .into_iter()
            .map(|(_, v)| decode(&v).map(|j| j.record))
            .collect::<Result<Vec<_>>>()?;
        jobs.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        Ok(jobs)
    }

    /// `PAUSE JOB`: the node running the job stops it and marks it paused.
    pub async fn pause(&self, id: JobId, reason: Option<String>) -> Result<()> {
        self.update_stored(id, |job| {
            Ok((state::request_pause(job, reason.clone())?, ()))
        })
        .await?;
        info!(job_id = id, "pause requested");
        self.wake.notify_one();
        Ok(())
    }

    /// `RESUME JOB`: a paused job becomes running (or reverting) and is claimed by a node.
    pub async fn resume(&self, id: JobId) -> Result<()> {
        self.update_stored(id, |job| Ok((state::request_resume(job)?, ())))
            .await?;
        info!(job_id = id, "resumed");
        self.wake.notify_one();
        Ok(())
    }

    /// `CANCEL JOB`: the node running the job stops it, runs `on_fail_or_cancel`, and marks it
    /// canceled.
    pub async fn cancel(&self, id: JobId) -> Result<()> {
        self.update_stored(id, |job| Ok((state::request_cancel(job)?, ())))
            .await?;
        info!(job_id = id, "cancel requested");
        self.wake.notify_one();
        Ok(())
    }

    /// Read-modify-write of a job's progress, fraction and running status. `f` may change only
    /// `progress`, `fraction_completed` (kept within 0..=1), `running_status`, `description`
    /// and `payload`; the lifecycle fields are restored after it runs. Called from a resumer running on this node,
    /// it fails with [`JobError::ClaimLost`] once another node has taken the job over.
    pub async fn update_progress(
        &self,
        id: JobId,
        f: &(dyn Fn(&mut JobRecord) + Send + Sync),
    ) -> Result<JobRecord> {
        let local_epoch = self.local.lock().get(&id).map(|l| l.epoch);
        let me = self.me;
        let (job, ()) = self
            .update_stored(id, |job| {
                // Another node (or a newer claim of ours) holds the job: a resumer still running
                // here must stop. (Paused or finished jobs have no claim to lose.)
                if let Some(epoch) = local_epoch
                    && job.record.coordinator_id.is_some()
                    && !job.claimed_by(me, epoch)
                {
                    return Err(JobError::ClaimLost(id));
                }
                let before = job.record.clone();
                f(&mut job.record);
                let r = &mut job.record;
                r.id = before.id;
                r.job_type = before.job_type;
                r.user_name = before.user_name.clone();
                r.status = before.status;
                r.created = before.created;
                r.finished = before.finished;
                r.error = before.error.clone();
                r.coordinator_id = before.coordinator_id;
                // NaN would serialize as null and make the record unreadable.
                r.fraction_completed = if r.fraction_completed.is_finite() {
                    r.fraction_completed.clamp(0.0, 1.0)
                } else {
                    before.fraction_completed
                };
                let change = if *r == before {
                    Change::Unchanged
                } else {
                    Change::Changed
                };
                Ok((change, ()))
            })
            .await?;
        Ok(job.record)
    }

    /// Ids of the jobs with a task on this node (for tests and the console).
    pub fn running_locally(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self.local.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Stops the loop and every local job task (their records are left as they are: other
    /// nodes adopt the jobs once this node's liveness expires, or this node after a restart).
    /// Waits for the tasks up to `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutdown.send_replace(true);
        self.stop_all_local("shutdown");
        let handle = self.loop_task.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(deadline, handle).await;
        }
        let until = Instant::now() + deadline;
        while !self.local.lock().is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!(node = self.me, "job registry stopped");
    }

    /// Drains this node's jobs (`ldr node drain`, graceful stops): from now on it claims no
    /// job; every local job is stopped and its claim released, so another node adopts it on
    /// its next pass instead of waiting for this node's liveness to expire. Waits for the
    /// local tasks up to `deadline`; returns how many still run here.
    pub async fn drain(&self, deadline: Duration) -> usize {
        if !self
            .draining
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            info!(node = self.me, "job registry draining");
        }
        let claimed: Vec<(JobId, u64)> = self
            .local
            .lock()
            .iter()
            .map(|(id, job)| (*id, job.epoch))
            .collect();
        self.stop_all_local("draining");
        let until = Instant::now() + deadline;
        while !self.local.lock().is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let me = self.me;
        for (id, epoch) in claimed {
            let released = self
                .update_stored(id, |job| {
                    if job.claimed_by(me, epoch) && !job.status().is_terminal() {
                        job.record.coordinator_id = None;
                        Ok((Change::Changed, true))
                    } else {
                        Ok((Change::Unchanged, false))
                    }
                })
                .await;
            match released {
                Ok((_, true)) => info!(job_id = id, "released the job's claim"),
                Ok(_) => {}
                Err(e) => warn!(job_id = id, error = %e, "could not release the job's claim"),
            }
        }
        self.local.lock().len()
    }

    // ------------------------------------------------------------ record updates

    /// Compare-and-put loop: reads the record, lets `f` decide (it may run several times, once
    /// per conflicting write), and writes it back iff it is unchanged since the read.
    pub(crate) async fn update_stored<T>(
        &self,
        id: JobId,
        mut f: impl FnMut(&mut StoredJob) -> Result<(Change, T)>,
    ) -> Result<(StoredJob, T)> {
        let key = job_key(id);
        let mut current = self.kv.sys_get(JOBS_SUBSPACE, &key).await?;
        for attempt in 0..CPUT_ATTEMPTS_MAX {
            let raw = current.ok_or(JobError::NotFound(id))?;
            let mut job = decode(&raw)?;
            let (change, out) = f(&mut job)?;
            if change == Change::Unchanged {
                return Ok((job, out));
            }
            match self
                .kv
                .sys_cput(JOBS_SUBSPACE, &key, Some(&encode(&job)), Some(&raw))
                .await?
            {
                Ok(()) => return Ok((job, out)),
                Err(actual) => {
                    debug!(
                        job_id = id,
                        attempt, "job record changed concurrently; retrying"
                    );
                    current = actual;
                    if attempt >= 3 {
                        tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(50)))).await;
                    }
                }
            }
        }
        Err(JobError::Contention(id))
    }

    // ------------------------------------------------------------ the loop

    async fn run_loop(self: Arc<Registry>) {
        let mut shutdown = self.shutdown.subscribe();
        let fence = tokio::spawn(Registry::fence_loop(self.clone()));
        info!(node = self.me, "job registry started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.tick().await {
                warn!(node = self.me, error = %e, "job registry tick failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.options.adopt_interval) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        fence.abort();
    }

    /// Self-fencing, independent of how long a tick takes: stops every local job once this
    /// node's liveness (as last read) is about to expire.
    async fn fence_loop(self: Arc<Registry>) {
        let period = (self.options.adopt_interval / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(period).await;
            if !self.own_liveness_ok() {
                self.stop_all_local("own liveness about to expire; fencing");
            }
        }
    }

    /// Whether this node's liveness, as last read, stays valid for `liveness_margin`.
    fn own_liveness_ok(&self) -> bool {
        let margin_ns = u64::try_from(self.options.liveness_margin.as_nanos()).unwrap_or(u64::MAX);
        match *self.own_expiration.lock() {
            Some(expiration) => self.kv.clock().now().add_nanos(margin_ns) < expiration,
            None => false,
        }
    }

    fn stop_all_local(&self, why: &str) {
        for (id, job) in self.local.lock().iter() {
            if !*job.stop.borrow() {
                info!(job_id = *id, reason = why, "stopping local job");
                job.stop.send_replace(true);
            }
        }
    }

    fn resumer_for(&self, job_type: JobType) -> Option<Arc<dyn Resumer>> {
        self.resumers.read().get(&job_type).cloned()
    }

    /// One pass over every job record.
    async fn tick(&self) -> Result<()> {
        // Bounded: a KV request may hang for its full timeout (10s) when node 1 is cut off.
        let deadline = (self.options.liveness_margin / 2).max(self.options.adopt_interval);
        let timed_out = || {
            JobError::Kv(ldr_kv::KvError::Rpc(format!(
                "job registry read took longer than {deadline:?}"
            )))
        };
        let statuses = tokio::time::timeout(deadline, self.kv.nodes())
            .await
            .map_err(|_| timed_out())??;
        let liveness: HashMap<NodeId, bool> = statuses
            .iter()
            .map(|s| (s.node.node_id, s.is_live))
            .collect();
        let own = statuses
            .iter()
            .find(|s| s.node.node_id == self.me)
            .map(|s| s.liveness_expiration);
        *self.own_expiration.lock() = own;
        // A draining node takes no claims (it still completes pauses of jobs it holds).
        let self_live =
            self.own_liveness_ok() && !self.draining.load(std::sync::atomic::Ordering::Relaxed);
        let rows = tokio::time::timeout(deadline, self.kv.sys_scan(JOBS_SUBSPACE))
            .await
            .map_err(|_| timed_out())??;
        let mut seen = Vec::with_capacity(rows.len());
        for (_, bytes) in rows {
            let job = match decode(&bytes) {
                Ok(job) => job,
                Err(e) => {
                    warn!(error = %e, "skipping unreadable job record");
                    continue;
                }
            };
            let id = job.record.id;
            seen.push(id);
            let local_epoch = self.local.lock().get(&id).map(|l| l.epoch);
            let coordinator_live = match job.record.coordinator_id {
                Some(c) if state::needs_coordinator_liveness(&job, self.me, local_epoch) => {
                    // A node without a liveness record is not live.
                    Some(liveness.get(&c).copied().unwrap_or(false))
                }
                _ => None,
            };
            let obs = Observation {
                me: self.me,
                has_resumer: self.resumers.read().contains_key(&job.record.job_type),
                local_epoch,
                coordinator_live,
                self_live,
            };
            let action = state::decide(&job, &obs);
            if action != Action::Nothing
                && let Err(e) = self.execute(&job, obs, action).await
            {
                warn!(job_id = id, ?action, error = %e, "job action failed");
            }
        }
        // Local tasks whose record disappeared.
        for (id, job) in self.local.lock().iter() {
            if !seen.contains(id) && !*job.stop.borrow() {
                warn!(job_id = *id, "job record vanished; stopping local job");
                job.stop.send_replace(true);
            }
        }
        Ok(())
    }

    async fn execute(&self, scanned: &StoredJob, obs: Observation, action: Action) -> Result<()> {
        let id = scanned.record.id;
        match action {
            Action::Nothing => Ok(()),
            Action::StopLocal(reason) => {
                if let Some(job) = self.local.lock().get(&id)
                    && !*job.stop.borrow()
                    && !(job.reverting && reason == StopReason::CancelRequested)
                {
                    info!(job_id = id, ?reason, "stopping local job");
                    job.stop.send_replace(true);
                }
                Ok(())
            }
            Action::CompletePause => {
                let (job, done) = self
                    .update_stored(id, |job| {
                        if !same_claim(job, scanned)
                            || state::decide(job, &obs) != Action::CompletePause
                        {
                            return Ok((Change::Unchanged, false));
                        }
                        Ok((state::complete_pause(job), true))
                    })
                    .await?;
                if done {
                    info!(
                        job_id = id,
                        status = job.record.status.as_str(),
                        "job paused"
                    );
                }
                Ok(())
            }
            Action::ClaimAndResume | Action::ClaimAndRevert | Action::ClaimAndBeginRevert => {
                let me = self.me;
                let (job, epoch) = self
                    .update_stored(id, |job| {
                        // The liveness in `obs` is about the coordinator we scanned: if another
                        // node claimed the job meanwhile (a concurrent adoption), back off.
                        if !same_claim(job, scanned) || state::decide(job, &obs) != action {
                            return Ok((Change::Unchanged, None));
                        }
                        Ok((Change::Changed, Some(state::claim(job, me, action))))
                    })
                    .await?;
                let Some(epoch) = epoch else { return Ok(()) };
                info!(job_id = id, epoch, previous = ?scanned.record.coordinator_id, "claimed job");
                self.spawn_task(job, epoch, action != Action::ClaimAndResume);
                Ok(())
            }
        }
    }

    fn spawn_task(&self, job: StoredJob, epoch: u64, revert: bool) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let Some(resumer) = self.resumer_for(job.record.job_type) else {
            return;
        };
        let id = job.record.id;
        let (stop, stop_rx) = watch::channel(false);
        let task_seq = {
            let mut seq = self.task_seq.lock();
            *seq += 1;
            *seq
        };
        {
            let mut local = self.local.lock();
            if let Some(old) = local.get(&id) {
                // Cannot happen: the loop only claims jobs without a local task.
                warn!(
                    job_id = id,
                    old_epoch = old.epoch,
                    "replacing a local job task"
                );
                old.stop.send_replace(true);
            }
            local.insert(
                id,
                LocalJob {
                    epoch,
                    task_seq,
                    stop,
                    reverting: revert,
                },
            );
        }
        tokio::spawn(async move {
            this.run_job(resumer, job.record, epoch, task_seq, stop_rx, revert)
                .await;
            let mut local = this.local.lock();
            if local.get(&id).is_some_and(|l| l.task_seq == task_seq) {
                local.remove(&id);
            }
            drop(local);
            // Let the loop look at the job again right away (e.g. a paused job resumed).
            this.wake.notify_one();
        });
    }

    /// Runs a claimed job's resumer and/or cleanup until the job leaves this node.
    async fn run_job(
        self: &Arc<Registry>,
        resumer: Arc<dyn Resumer>,
        mut record: JobRecord,
        epoch: u64,
        task_seq: u64,
        mut stop: watch::Receiver<bool>,
        mut revert: bool,
    ) {
        let id = record.id;
        let me = self.me;
        loop {
            let ctx = JobContext {
                job_id: id,
                kv: self.kv.clone(),
                registry: self.clone(),
                stop: stop.clone(),
            };
            if !revert {
                info!(job_id = id, epoch, "running job");
                let outcome = {
                    let (r, c, rec) = (resumer.clone(), ctx.clone(), record.clone());
                    match tokio::spawn(async move { r.resume(c, rec).await }).await {
                        Ok(outcome) => outcome,
                        Err(e) => ResumeOutcome::PauseWithError(format!(
                            "resumer panicked: {}",
                            panic_text(e)
                        )),
                    }
                };
                let stopped = *stop.borrow();
                info!(job_id = id, ?outcome, stopped, "resumer returned");
                // The cleanup that may follow gets its own stop signal: the one that just fired
                // for a cancel request must not also abort the cleanup the cancel calls for.
                stop = self.renew_stop(id, task_seq);
                let Some((job, next)) = self
                    .write_outcome(id, |job, now| {
                        state::apply_resume_outcome(job, me, epoch, &outcome, stopped, now)
                    })
                    .await
                else {
                    return;
                };
                match next {
                    Next::Revert => {
                        record = job.record;
                        revert = true;
                    }
                    Next::Exit | Next::RetryRevert(_) => {
                        info!(
                            job_id = id,
                            status = job.record.status.as_str(),
                            "job left this node"
                        );
                        return;
                    }
                }
            } else {
                info!(job_id = id, epoch, "running on_fail_or_cancel");
                let result = {
                    let (r, c, rec) = (resumer.clone(), ctx.clone(), record.clone());
                    match tokio::spawn(async move { r.on_fail_or_cancel(c, rec).await }).await {
                        Ok(result) => result,
                        Err(e) => Err(format!("on_fail_or_cancel panicked: {}", panic_text(e))),
                    }
                };
                let stopped = *stop.borrow();
                let max = self.options.revert_attempts_max;
                let Some((job, next)) = self
                    .write_outcome(id, |job, now| {
                        state::apply_revert_outcome(job, me, epoch, &result, stopped, max, now)
                    })
                    .await
                else {
                    return;
                };
                match next {
                    Next::RetryRevert(attempts) => {
                        let backoff = backoff(
                            self.options.revert_backoff_initial,
                            self.options.revert_backoff_max,
                            attempts.saturating_sub(1),
                        );
                        warn!(
                            job_id = id,
                            attempts,
                            ?result,
                            ?backoff,
                            "on_fail_or_cancel failed; retrying"
                        );
                        let mut stop = stop.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.wait_for(|s| *s) => {}
                        }
                        record = job.record;
                    }
                    Next::Exit | Next::Revert => {
                        info!(
                            job_id = id,
                            status = job.record.status.as_str(),
                            "job left this node"
                        );
                        return;
                    }
                }
            }
        }
    }

    /// A fresh stop signal for the cleanup phase of a local task (already fired when the node
    /// is shutting down or fencing itself).
    fn renew_stop(&self, id: JobId, task_seq: u64) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        if *self.shutdown.borrow() || !self.own_liveness_ok() {
            tx.send_replace(true);
        }
        if let Some(local) = self.local.lock().get_mut(&id)
            && local.task_seq == task_seq
        {
            local.stop = tx;
            local.reverting = true;
        }
        rx
    }

    /// Writes a task's outcome, retrying KV errors until the deadline. `None`: could not write
    /// (the job stays claimed by this node; the loop re-runs it).
    async fn write_outcome(
        &self,
        id: JobId,
        f: impl Fn(&mut StoredJob, Timestamp) -> (Change, Next),
    ) -> Option<(StoredJob, Next)> {
        let until = Instant::now() + self.options.outcome_write_deadline;
        let mut delay = Duration::from_millis(50);
        loop {
            let now = self.kv.clock().now();
            match self.update_stored(id, |job| Ok(f(job, now))).await {
                Ok(done) => return Some(done),
                Err(JobError::NotFound(_)) => return None,
                Err(e) if Instant::now() < until => {
                    warn!(job_id = id, error = %e, "cannot record job outcome yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    warn!(job_id = id, error = %e, "giving up recording job outcome");
                    return None;
                }
            }
        }
    }
}

/// Whether the claim (coordinator and epoch) is still the one the loop decided on.
fn same_claim(current: &StoredJob, scanned: &StoredJob) -> bool {
    current.record.coordinator_id == scanned.record.coordinator_id
        && current.internal.claim_epoch == scanned.internal.claim_epoch
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => {
            let payload = AssertUnwindSafe(payload);
            if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "unknown panic".to_string()
            }
        }
        Err(e) => e.to_string(),
    }
}

/// `initial * 2^attempt`, capped at `max`.
pub(crate) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    initial
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let (i, m) = (Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(backoff(i, m, 0), Duration::from_millis(500));
        assert_eq!(backoff(i, m, 1), Duration::from_secs(1));
        assert_eq!(backoff(i, m, 5), Duration::from_secs(16));
        assert_eq!(backoff(i, m, 6), Duration::from_secs(30));
        assert_eq!(backoff(i, m, 40), Duration::from_secs(30));
    }

    #[test]
    fn keys_sort_like_ids() {
        let ids = [1i64, 255, 256, 1 << 40, i64::MAX];
        for w in ids.windows(2) {
            assert!(job_key(w[0]) < job_key(w[1]));
        }
    }
}
