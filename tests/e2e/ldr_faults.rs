//! Faults during a load: nothing acknowledged on the source is lost on the destination.
//!
//! Two proxied 3-node clusters, a stream A → B, and a recorded kv load (upserts and deletes) on
//! A through all of A's nodes. Three phases, each a load with a fault in the middle, each ending
//! with convergence (equal fingerprints) and the LWW oracle over every write so far on both
//! clusters (every acknowledged write's final state is on B):
//! 1. SIGKILL of a source node (its partition stops), restart;
//! 2. SIGKILL of the destination node coordinating the job, restart;
//! 3. a cut of all traffic between the clusters (both directions, every node) for 20 seconds.
//!
//! Throughout, a watcher samples the job's replicated time: it never goes backwards. Set
//! `SEED=` to reproduce the load.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_pair, enable_rangefeeds, job_row, now, phase, read_kv, wait_job_status,
    wait_replicated,
};
use ldr_sim::check::convergence::wait_converged;
use ldr_sim::check::lww::LwwOracle;
use ldr_sim::check::replicated_time::ReplicatedTimeWatcher;
use ldr_sim::workload::kv::{self, KvConfig, KvRun};
use ldr_sim::workload::{LoadOptions, RecordOptions, seed_from_env};
use ldr_sim::{Cluster, Fault};

const TABLE: &str = "kv";
/// Length of each phase's load; the fault happens inside it.
const LOAD: Duration = Duration::from_secs(20);

/// A kv load on every node of `a` for `duration`, recording every write.
async fn load(a: &Cluster, seed: u64, duration: Duration) -> Result<KvRun> {
    let config = KvConfig {
        table: TABLE.into(),
        keys: 400,
        batch: 2,
        value_bytes: 16,
        delete_percent: 15,
        record: Some(RecordOptions::new("a")),
        ..KvConfig::default()
    };
    let options = LoadOptions::new(a.urls())
        .concurrency(4)
        .duration(duration)
        .max_rate(40.0)
        .seed(seed);
    let run = kv::run(&config, &options).await?;
    ensure!(!run.records_truncated, "write records were truncated");
    ensure!(run.summary.ops > 0, "the load did nothing: {}", run.summary);
    Ok(run)
}

/// After a phase: B catches up with everything A acknowledged, the tables are identical, and
/// every key holds its last acknowledged write (or an ambiguous one) on both clusters.
async fn check_phase(
    a: &Cluster,
    b: &Cluster,
    job: i64,
    oracle: &LwwOracle,
    what: &str,
    started: Instant,
) -> Result<()> {
    let end = now(a).await?;
    wait_replicated(b, job, end, CATCH_UP)
        .await
        .with_context(|| format!("after {what}"))?;
    let fingerprints = wait_converged(&a.url(1)?, &b.url(3)?, TABLE, Duration::from_secs(60))
        .await
        .with_context(|| format!("after {what}"))?;
    let (table_a, table_b) = (read_kv(a, TABLE).await?, read_kv(b, TABLE).await?);
    let report = oracle
        .verify(&[("A", &table_a), ("B", &table_b)])
        .with_context(|| format!("after {what}"))?;
    phase(
        started,
        &format!(
            "{what}: converged {fingerprints}; oracle holds over {} keys, {} writes",
            report.keys_checked, report.writes
        ),
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kills_and_a_network_cut_lose_nothing() -> Result<()> {
    let started = Instant::now();
    let seed = seed_from_env();
    eprintln!("ldr_faults: SEED={seed}");
    let (a, b) = cluster_pair(3, true).await?;
    for c in [&a, &b] {
        c.exec(1, "CREATE TABLE kv (k INT8 PRIMARY KEY, v STRING)")
            .await?;
    }
    enable_rangefeeds(&a).await?;
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    let job = ldr_sim::ldr::create_stream(&b, "a", &[TABLE], &[TABLE], None).await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    let watcher = ReplicatedTimeWatcher::spawn(b.urls(), Duration::from_millis(250));
    let origin = a
        .sql(1)
        .await?
        .query_one("SELECT crdb_internal.cluster_origin_id()", &[])
        .await?
        .get::<_, i64>(0);
    let mut oracle = LwwOracle::new([("a".to_string(), u32::try_from(origin)?)]);
    phase(started, &format!("stream A -> B running (job {job})"));

    // Phase 1: SIGKILL of source node 2 (a third of A's ranges and its partition), restart.
    let fault = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.kill(2)?;
        phase(started, "killed A's node 2");
        tokio::time::sleep(Duration::from_secs(6)).await;
        a.restart(2).await?;
        phase(started, "restarted A's node 2");
        anyhow::Ok(())
    };
    let (run, faulted) = tokio::join!(load(&a, seed, LOAD), fault);
    faulted?;
    let run = run?;
    eprintln!("phase 1 load: {}", run.summary);
    oracle.add(run.writes)?;
    check_phase(&a, &b, job, &oracle, "source node SIGKILL", started).await?;

    // Phase 2: SIGKILL of the destination node that coordinates the job, restart.
    let coordinator: usize = job_row(&b, job)
        .await?
        .get("coordinator_id")
        .cloned()
        .flatten()
        .context("coordinator_id")?
        .parse()?;
    let fault = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        b.kill(coordinator)?;
        phase(
            started,
            &format!("killed B's node {coordinator} (the job's coordinator)"),
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        b.restart(coordinator).await?;
        phase(started, &format!("restarted B's node {coordinator}"));
        anyhow::Ok(())
    };
    let (run, faulted) = tokio::join!(load(&a, seed ^ 2, LOAD), fault);
    faulted?;
    let run = run?;
    eprintln!("phase 2 load: {}", run.summary);
    oracle.add(run.writes)?;
    wait_job_status(&b, job, "running", CATCH_UP).await?;
    check_phase(
        &a,
        &b,
        job,
        &oracle,
        "destination coordinator SIGKILL",
        started,
    )
    .await?;

    // Phase 3: no traffic at all between the clusters for 20 seconds (new connections are
    // refused, existing ones reset), then healed.
    let fault = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        a.set_fault(Fault::Cut)?;
        b.set_fault(Fault::Cut)?;
        phase(started, "cut all traffic between A and B");
        tokio::time::sleep(Duration::from_secs(20)).await;
        a.set_fault(Fault::Pass)?;
        b.set_fault(Fault::Pass)?;
        phase(started, "healed the cut");
        anyhow::Ok(())
    };
    let (run, faulted) = tokio::join!(load(&a, seed ^ 3, LOAD + Duration::from_secs(6)), fault);
    faulted?;
    let run = run?;
    eprintln!("phase 3 load: {}", run.summary);
    oracle.add(run.writes)?;
    check_phase(&a, &b, job, &oracle, "20 s network cut", started).await?;

    let report = watcher.finish().await?;
    ensure!(
        report.samples > 20,
        "the replicated time watcher took only {} samples",
        report.samples
    );
    phase(
        started,
        &format!(
            "replicated time monotonic over {} samples ({} failed while nodes were down) (SEED={seed})",
            report.samples, report.failed_samples
        ),
    );
    Ok(())
}
