//! The job registry against real in-process `KvNode`s (each with its own store and gRPC server
//! on a 127.0.0.1 ephemeral port): the job lifecycle on one node, concurrent progress updates,
//! and adoption of a job by another node when its node stops, with the job never running on
//! two nodes at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ldr_jobs::{JobContext, JobRecord, JobStatus, JobType, Registry, ResumeOutcome, Resumer};
use ldr_types::{JobId, NodeId};
use parking_lot::Mutex;
use serde_json::json;

/// Generous: the suite runs on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(45);

async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    ldr_testkit::eventually_within(what, DEADLINE, f).await
}

// ---------------------------------------------------------------- the test resumer

/// What the test resumer saw.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Resume {
        node: NodeId,
        job: JobId,
        at: Instant,
    },
    /// The resumer returned (after its stop fired, or on its own).
    Returned {
        node: NodeId,
        job: JobId,
        at: Instant,
        stopped: bool,
    },
    Cleanup {
        node: NodeId,
        job: JobId,
    },
}

/// Behaviour per job, from its payload: `{"mode": "wait"|"succeed"|"fail"|"pause",
/// "error": "...", "cleanup_failures": n}`.
#[derive(Default)]
struct TestResumer {
    calls: Mutex<Vec<Call>>,
}

impl TestResumer {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    fn resumes(&self, job: JobId) -> Vec<NodeId> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Resume { node, job: j, .. } if j == job => Some(node),
                _ => None,
            })
            .collect()
    }

    fn cleanups(&self, job: JobId) -> usize {
        self.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Cleanup { job: j, .. } if *j == job))
            .count()
    }

    /// Each run of `job` as (node, start, end); `end` is `None` while it runs.
    fn runs(&self, job: JobId) -> Vec<(NodeId, Instant, Option<Instant>)> {
        let mut runs: Vec<(NodeId, Instant, Option<Instant>)> = Vec::new();
        for c in self.calls() {
            match c {
                Call::Resume { node, job: j, at } if j == job => runs.push((node, at, None)),
                Call::Returned {
                    node, job: j, at, ..
                } if j == job => {
                    if let Some(run) = runs.iter_mut().rev().find(|r| r.0 == node && r.2.is_none())
                    {
                        run.2 = Some(at);
                    }
                }
                _ => {}
            }
        }
        runs
    }
}

#[async_trait]
impl Resumer for TestResumer {
    async fn resume(&self, mut ctx: JobContext, record: JobRecord) -> ResumeOutcome {
        let node = ctx.registry.node_id();
        self.calls.lock().push(Call::Resume {
            node,
            job: record.id,
            at: Instant::now(),
        });
        let mode = record.payload["mode"]
            .as_str()
            .unwrap_or("wait")
            .to_string();
        let error = record.payload["error"]
            .as_str()
            .unwrap_or("boom")
            .to_string();
        // Report progress like a real resumer.
        let _ = ctx
            .registry
            .update_progress(record.id, &|r| {
                r.fraction_completed = 0.5;
                r.running_status = Some("working".into());
            })
            .await;
        let outcome = match mode.as_str() {
            "succeed" => ResumeOutcome::Succeeded,
            "fail" => ResumeOutcome::Failed(error),
            "pause" => ResumeOutcome::PauseWithError(error),
            _ => {
                let _ = ctx.stop.wait_for(|s| *s).await;
                // What real resumers do when stopped; the registry must not record it.
                ResumeOutcome::Succeeded
            }
        };
        let stopped = *ctx.stop.borrow();
        self.calls.lock().push(Call::Returned {
            node,
            job: record.id,
            at: Instant::now(),
            stopped,
        });
        outcome
    }

    async fn on_fail_or_cancel(&self, ctx: JobContext, record: JobRecord) -> Result<(), String> {
        let node = ctx.registry.node_id();
        let failures = record.payload["cleanup_failures"].as_u64().unwrap_or(0) as usize;
        let before = self.cleanups(record.id);
        self.calls.lock().push(Call::Cleanup {
            node,
            job: record.id,
        });
        if before < failures {
            Err(format!("cleanup attempt {} failed", before + 1))
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- nodes

/// One node, its gRPC server, and its job registry.
struct TestCluster {
    kv: ldr_testkit::TestCluster,
    /// `registries[i]` is node `i + 1`'s.
    registries: Vec<Arc<Registry>>,
    resumer: Arc<TestResumer>,
}

impl TestCluster {
    /// Starts `n` nodes (every node live, the system range replicated), then a registry
    /// with the test resumer (for `ROW LEVEL TTL` jobs) on every node.
    async fn start(n: usize) -> TestCluster {
        let kv = ldr_testkit::TestCluster::start(n).await;
        let resumer = Arc::new(TestResumer::default());
        let registries = kv
            .nodes
            .iter()
            .map(|node| {
                let registry = Registry::start(node.client());
                registry.register_resumer(JobType::RowLevelTtl, resumer.clone());
                registry
            })
            .collect();
        TestCluster {
            kv,
            registries,
            resumer,
        }
    }

    /// Stops node `node_id` abruptly: its registry is not shut down (it must fence itself
    /// once the job records are unreadable); the KV node and its server go away.
    async fn kill(&mut self, node_id: NodeId) {
        self.kv.nodes[node_id as usize - 1].stop().await;
    }

    fn registry(&self, node_id: NodeId) -> Arc<Registry> {
        self.registries[node_id as usize - 1].clone()
    }

    async fn create(&self, on: NodeId, payload: serde_json::Value) -> JobId {
        self.registry(on)
            .create(
                JobType::RowLevelTtl,
                "test job".into(),
                "root".into(),
                payload,
                json!({"count": 0}),
            )
            .await
            .expect("created")
    }

    async fn wait_for(
        &self,
        via: NodeId,
        job: JobId,
        what: &str,
        f: impl Fn(&JobRecord) -> bool,
    ) -> JobRecord {
        let registry = self.registry(via);
        eventually(what, || {
            let registry = registry.clone();
            let ok = &f;
            async move { registry.get(job).await.ok().filter(|r| ok(r)) }
        })
        .await
    }

    async fn wait_status(&self, job: JobId, status: JobStatus) -> JobRecord {
        self.wait_for(
            1,
            job,
            &format!("job {job} to be {}", status.as_str()),
            |r| r.status == status,
        )
        .await
    }

    async fn wait_resumes(&self, job: JobId, n: usize) -> Vec<NodeId> {
        let resumer = self.resumer.clone();
        eventually(&format!("{n} runs of job {job}"), || {
            let resumes = resumer.resumes(job);
            async move { (resumes.len() >= n).then_some(resumes) }
        })
        .await
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_one_node() {
    let cluster = TestCluster::start(1).await;
    let reg = cluster.registry(1);

    // A new job is claimed by the creating node and runs right away.
    let job = cluster.create(1, json!({"mode": "wait"})).await;
    assert_eq!(cluster.wait_resumes(job, 1).await, vec![1]);
    let rec = cluster
        .wait_for(1, job, "progress to be reported", |r| {
            r.fraction_completed == 0.5
        })
        .await;
    assert_eq!(rec.status, JobStatus::Running);
    assert_eq!(rec.coordinator_id, Some(1));
    assert_eq!(rec.running_status.as_deref(), Some("working"));
    assert_eq!(rec.job_type, JobType::RowLevelTtl);
    assert_eq!(rec.user_name, "root");

    // PAUSE stops the resumer; its "Succeeded" on stop is not recorded. Pausing twice is fine.
    reg.pause(job, Some("operator".into()))
        .await
        .expect("pause");
    let rec = cluster.wait_status(job, JobStatus::Paused).await;
    assert_eq!(rec.coordinator_id, None);
    assert_eq!(rec.finished, None);
    reg.pause(job, None)
        .await
        .expect("pausing a paused job is a no-op");
    assert!(
        reg.running_locally().is_empty() || {
            eventually("the task to exit", || {
                let reg = reg.clone();
                async move { reg.running_locally().is_empty().then_some(true) }
            })
            .await
        }
    );

    // RESUME runs it again on a node; resuming a running job is a no-op.
    reg.resume(job).await.expect("resume");
    assert_eq!(cluster.wait_resumes(job, 2).await, vec![1, 1]);
    let rec = cluster.wait_status(job, JobStatus::Running).await;
    assert_eq!(rec.coordinator_id, Some(1));
    reg.resume(job)
        .await
        .expect("resuming a running job is a no-op");

    // CANCEL stops it, runs the cleanup once, and finishes it.
    reg.cancel(job).await.expect("cancel");
    let rec = cluster.wait_status(job, JobStatus::Canceled).await;
    assert!(rec.finished.is_some());
    assert_eq!(rec.error, None);
    assert_eq!(cluster.resumer.cleanups(job), 1);
    reg.cancel(job)
        .await
        .expect("canceling a canceled job is a no-op");

    // Requests that make no sense now fail with CockroachDB's texts.
    let err = reg.pause(job, None).await.expect_err("terminal");
    assert_eq!(
        err.to_string(),
        "job with state canceled cannot be requested to be paused"
    );
    let err = reg.resume(job).await.expect_err("terminal");
    assert_eq!(err.to_string(), "job with state canceled cannot be resumed");
    let err = reg.get(12345).await.expect_err("missing");
    assert_eq!(err.to_string(), "job with ID 12345 does not exist");
    let err = reg.pause(12345, None).await.expect_err("missing");
    assert_eq!(err.to_string(), "job with ID 12345 does not exist");

    // Exactly the calls we expect, in order: run, stop, run, stop, cleanup.
    let calls: Vec<&'static str> = cluster
        .resumer
        .calls()
        .iter()
        .filter(|c| match c {
            Call::Resume { job: j, .. }
            | Call::Returned { job: j, .. }
            | Call::Cleanup { job: j, .. } => *j == job,
        })
        .map(|c| match c {
            Call::Resume { .. } => "resume",
            Call::Returned { stopped: true, .. } => "stopped",
            Call::Returned { .. } => "returned",
            Call::Cleanup { .. } => "cleanup",
        })
        .collect();
    assert_eq!(
        calls,
        vec!["resume", "stopped", "resume", "stopped", "cleanup"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumer_outcomes() {
    let cluster = TestCluster::start(1).await;
    let reg = cluster.registry(1);

    // Succeeded: finished, fraction 1.
    let ok = cluster.create(1, json!({"mode": "succeed"})).await;
    let rec = cluster.wait_status(ok, JobStatus::Succeeded).await;
    assert_eq!(rec.fraction_completed, 1.0);
    assert!(rec.finished.is_some());
    assert_eq!(rec.coordinator_id, None);
    assert_eq!(cluster.resumer.cleanups(ok), 0);

    // Failed: reverting, cleanup (which fails twice first and is retried), then failed with the
    // resumer's error.
    let bad = cluster
        .create(
            1,
            json!({"mode": "fail", "error": "disk on fire", "cleanup_failures": 2}),
        )
        .await;
    let rec = cluster.wait_status(bad, JobStatus::Failed).await;
    assert_eq!(rec.error.as_deref(), Some("disk on fire"));
    assert_eq!(cluster.resumer.cleanups(bad), 3);
    assert_eq!(
        cluster.resumer.resumes(bad).len(),
        1,
        "a failed job is not resumed again"
    );

    // PauseWithError: paused with the error visible; RESUME clears it and runs the job again.
    let flaky = cluster
        .create(1, json!({"mode": "pause", "error": "source unreachable"}))
        .await;
    let rec = cluster.wait_status(flaky, JobStatus::Paused).await;
    assert_eq!(
        rec.error.as_deref(),
        Some("pausing after error: source unreachable")
    );
    assert_eq!(
        rec.running_status.as_deref(),
        Some("pausing after error: source unreachable")
    );
    reg.resume(flaky).await.expect("resume");
    cluster.wait_resumes(flaky, 2).await;
    // It pauses itself again; while it ran, the error was cleared.
    cluster.wait_status(flaky, JobStatus::Paused).await;

    // SHOW JOBS order: newest first.
    let ids: Vec<JobId> = reg
        .list()
        .await
        .expect("list")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![flaky, bad, ok]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_progress_updates_lose_nothing() {
    let cluster = TestCluster::start(1).await;
    let job = cluster.create(1, json!({"mode": "wait"})).await;
    cluster.wait_resumes(job, 1).await;
    // Writers race each other and the registry's own writes (a pause request in the middle).
    let mut tasks = Vec::new();
    for w in 0..8 {
        let reg = cluster.registry(1);
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                reg.update_progress(job, &|r| {
                    let n = r.progress["count"].as_i64().unwrap_or(0);
                    r.progress["count"] = json!(n + 1);
                    r.progress[format!("w{w}")] = json!(true);
                })
                .await
                .expect("progress update");
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    cluster.registry(1).pause(job, None).await.expect("pause");
    for t in tasks {
        t.await.expect("writer");
    }
    let rec = cluster.wait_status(job, JobStatus::Paused).await;
    assert_eq!(
        rec.progress["count"],
        json!(120),
        "every increment survived: {}",
        rec.progress
    );
    for w in 0..8 {
        assert_eq!(rec.progress[format!("w{w}")], json!(true));
    }
    // update_progress cannot change the lifecycle.
    let after = cluster
        .registry(1)
        .update_progress(job, &|r| {
            r.status = JobStatus::Succeeded;
            r.coordinator_id = Some(99);
            r.fraction_completed = 0.75;
        })
        .await
        .expect("update");
    assert_eq!(after.status, JobStatus::Paused);
    assert_eq!(after.coordinator_id, None);
    assert_eq!(after.fraction_completed, 0.75);
    // A NaN fraction (0/0 in a resumer) is ignored rather than corrupting the record.
    let after = cluster
        .registry(1)
        .update_progress(job, &|r| r.fraction_completed = f64::NAN)
        .await
        .expect("update");
    assert_eq!(after.fraction_completed, 0.75);
    assert_eq!(
        cluster
            .registry(1)
            .get(job)
            .await
            .expect("readable")
            .fraction_completed,
        0.75
    );
}

/// A job runs on node 2; node 2 dies; another node adopts the job within the deadline, and
/// the job never ran on two nodes at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_is_adopted_when_its_node_dies() {
    let mut cluster = TestCluster::start(3).await;
    let job = cluster.create(2, json!({"mode": "wait"})).await;
    assert_eq!(cluster.wait_resumes(job, 1).await, vec![2]);
    let rec = cluster.wait_status(job, JobStatus::Running).await;
    assert_eq!(rec.coordinator_id, Some(2));
    // Other nodes see it claimed by a live node and leave it alone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cluster.resumer.resumes(job), vec![2]);

    let killed_at = Instant::now();
    cluster.kill(2).await;

    let rec = cluster
        .wait_for(1, job, "another node to adopt the job", |r| {
            r.status == JobStatus::Running && matches!(r.coordinator_id, Some(1) | Some(3))
        })
        .await;
    let adopter = rec.coordinator_id.expect("claimed");
    let resumes = cluster.wait_resumes(job, 2).await;
    assert_eq!(resumes, vec![2, adopter]);
    eprintln!(
        "adopted by node {adopter} {:?} after the kill",
        killed_at.elapsed()
    );

    // The dead node's registry fenced itself: its run ended before the adopter's began.
    let runs = cluster.resumer.runs(job);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (first_node, _, first_end) = runs[0];
    let (second_node, second_start, _) = runs[1];
    assert_eq!((first_node, second_node), (2, adopter));
    let first_end = first_end.expect("node 2's run ended (self-fencing)");
    assert!(first_end <= second_start, "runs overlapped: {runs:?}");

    // Stays put: no further moves while the adopter is live.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        cluster.resumer.resumes(job).len(),
        2,
        "calls: {:#?}",
        cluster.resumer.calls()
    );

    // The adopter still acts on requests: cancel runs the cleanup there.
    cluster.registry(adopter).cancel(job).await.expect("cancel");
    cluster.wait_status(job, JobStatus::Canceled).await;
    let cleanups: Vec<NodeId> = cluster
        .resumer
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Cleanup { node, job: j } if j == job => Some(node),
            _ => None,
        })
        .collect();
    assert_eq!(cleanups, vec![adopter]);
}

/// Cancelling a paused job: any live node claims it and runs the cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_job_is_canceled_by_any_node() {
    let cluster = TestCluster::start(2).await;
    let job = cluster.create(2, json!({"mode": "wait"})).await;
    cluster.wait_resumes(job, 1).await;
    cluster
        .registry(1)
        .pause(job, None)
        .await
        .expect("pause through another node");
    cluster.wait_status(job, JobStatus::Paused).await;
    cluster.registry(1).cancel(job).await.expect("cancel");
    cluster.wait_status(job, JobStatus::Canceled).await;
    assert_eq!(cluster.resumer.cleanups(job), 1);
    assert_eq!(
        cluster.resumer.resumes(job).len(),
        1,
        "cancel does not resume the job first"
    );
}
