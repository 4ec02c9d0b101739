//! CockroachDB's `ldr/kv0/workload=both/shutdown_node`, on replicated ranges: two 3-node
//! clusters with bidirectional LDR and writes on both sides. While the loads run, `kill -9` of
//! the node coordinating B's job (which applies A's changes; restarted once the job was
//! adopted), then of a node of the source cluster A, then of a worker node of B (both stay
//! down until the loads are over). Each time the jobs stay `running`
//! and B's replicated time passes the moment of the kill within 30 s (the target is
//! 15 s; CI runs several clusters at once on two cores). At the end both tables converge,
//! every key holds its LWW winner on both clusters, and nothing went to a dead-letter queue.
//! Then, again under writes on both sides, a graceful `ldr node drain` of B's coordinator, of
//! a worker node of B and of a source node of A (each restarted before the next): the job
//! stays `running` and replicated time passes each drain.
//! Set `SEED=` to reproduce the loads.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_pair, column_values, enable_rangefeeds, job_row, ldr_node, now, phase,
    query_any, read_kv, wait_job_status, wait_replicated,
};
use ldr_sim::Cluster;
use ldr_sim::check::convergence::wait_converged;
use ldr_sim::check::lww::LwwOracle;
use ldr_sim::workload::kv::{self, KvConfig, KvRun};
use ldr_sim::workload::{LoadOptions, RecordOptions, seed_from_env};

const TABLE: &str = "kv";
const SCHEMA: &str = "CREATE TABLE kv (k INT8 PRIMARY KEY, v STRING)";
/// How long the loads run; the kills happen inside.
const LOAD: Duration = Duration::from_secs(40);
/// How long the loads of the drain phase run.
const DRAIN_LOAD: Duration = Duration::from_secs(45);
/// How soon replicated time must pass a kill or a drain.
const RECOVERY_MAX: Duration = Duration::from_secs(30);

async fn load(c: &Cluster, origin: &str, seed: u64, duration: Duration) -> Result<KvRun> {
    let config = KvConfig {
        table: TABLE.into(),
        keys: 200,
        batch: 2,
        value_bytes: 16,
        delete_percent: 10,
        record: Some(RecordOptions::new(origin)),
        ..KvConfig::default()
    };
    let options = LoadOptions::new(c.urls())
        .concurrency(3)
        .duration(duration)
        .max_rate(30.0)
        .seed(seed);
    let run = kv::run(&config, &options).await?;
    ensure!(!run.records_truncated, "write records were truncated");
    ensure!(run.summary.ops > 0, "the load on {origin} did nothing");
    Ok(run)
}

/// `crdb_internal.cluster_origin_id()`: the cluster's LWW identity.
async fn origin_id(c: &Cluster) -> Result<u32> {
    let rows = query_any(c, "SELECT crdb_internal.cluster_origin_id()").await?;
    Ok(ldr_e2e::scalar(&rows).context("origin id")?.parse()?)
}

/// The harness index of the node whose ldr node id is `node_id`.
async fn harness_index(c: &Cluster, node_id: i64) -> Result<usize> {
    for index in c.node_ids() {
        let rows = c
            .query_text(index, "SELECT crdb_internal.node_id()")
            .await?;
        if ldr_e2e::scalar(&rows).as_deref() == Some(&node_id.to_string()) {
            return Ok(index);
        }
    }
    anyhow::bail!("no node of cluster {} has id {node_id}", c.name())
}

/// The harness index of the node coordinating `job` on `c`.
async fn coordinator_index(c: &Cluster, job: i64) -> Result<usize> {
    let node_id: i64 = job_row(c, job)
        .await?
        .get("coordinator_id")
        .cloned()
        .flatten()
        .context("coordinator_id")?
        .parse()?;
    harness_index(c, node_id).await
}

/// Drains `index` of `victim` with `ldr node drain` (its leases and job claims move, then it
/// stops), then measures how long B's job `job` takes to replicate past A's clock at the
/// drain's start.
async fn drain_and_time_recovery(
    victim: &Cluster,
    index: usize,
    a: &Cluster,
    b: &Cluster,
    job: i64,
) -> Result<Duration> {
    let started = Instant::now();
    let at = now(a).await?;
    ldr_node(victim, index, &["drain"]).await?;
    wait_replicated(b, job, at, Duration::from_secs(120)).await?;
    Ok(started.elapsed())
}

/// Kills `index` of `victim`, then measures how long B's job `job` (applying A's changes)
/// takes to replicate past A's clock at the kill.
async fn kill_and_time_recovery(
    victim: &Cluster,
    index: usize,
    a: &Cluster,
    b: &Cluster,
    job: i64,
) -> Result<Duration> {
    victim.kill(index)?;
    let killed = Instant::now();
    let at = now(a).await?;
    wait_replicated(b, job, at, Duration::from_secs(120)).await?;
    Ok(killed.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_survive_the_loss_of_their_coordinator_and_of_a_source_node() -> Result<()> {
    let started = Instant::now();
    let seed = seed_from_env();
    eprintln!("ldr_shutdown_node: SEED={seed}");
    let (a, b) = cluster_pair(3, false).await?;
    enable_rangefeeds(&a).await?;
    enable_rangefeeds(&b).await?;
    let (job_on_a, job_on_b) = ldr_sim::ldr::setup_bidirectional(&a, &b, TABLE, SCHEMA).await?;
    wait_replicated(&b, job_on_b, now(&a).await?, CATCH_UP).await?;
    phase(
        started,
        &format!("bidirectional LDR running: job {job_on_a} on A, job {job_on_b} on B"),
    );

    let coordinator = coordinator_index(&b, job_on_b).await?;
    // A source node other than the one B's external connection names (node 1), so the
    // stream's own connection stays; its ranges' leases and partitions move.
    let source = 3;
    let faults = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let d1 = kill_and_time_recovery(&b, coordinator, &a, &b, job_on_b).await?;
        phase(
            started,
            &format!(
                "B's job replicated past the kill of its coordinator (B node {coordinator}) after {d1:?}"
            ),
        );
        wait_job_status(&b, job_on_b, "running", CATCH_UP).await?;
        b.restart(coordinator).await?;
        let d2 = kill_and_time_recovery(&a, source, &a, &b, job_on_b).await?;
        phase(
            started,
            &format!("B's job replicated past the kill of A's node {source} after {d2:?}"),
        );
        // A destination worker: a node of B that is not (now) the job's coordinator; its
        // processors are re-planned on the others.
        let now_coordinator = coordinator_index(&b, job_on_b).await?;
        let worker = b
            .node_ids()
            .find(|i| *i != now_coordinator)
            .context("a worker")?;
        let d3 = kill_and_time_recovery(&b, worker, &a, &b, job_on_b).await?;
        phase(
            started,
            &format!(
                "B's job replicated past the kill of its worker (B node {worker}) after {d3:?}"
            ),
        );
        anyhow::Ok((d1, d2, d3, worker))
    };
    let (run_a, run_b, recovered) = tokio::join!(
        load(&a, "a", seed ^ 0xa, LOAD),
        load(&b, "b", seed ^ 0xb, LOAD),
        faults
    );
    let (d1, d2, d3, worker) = recovered?;
    let (run_a, run_b) = (run_a?, run_b?);
    eprintln!("A: {}\nB: {}", run_a.summary, run_b.summary);
    ensure!(
        d1 < RECOVERY_MAX && d2 < RECOVERY_MAX && d3 < RECOVERY_MAX,
        "replicated time passed the kills only after {d1:?}, {d2:?} and {d3:?}"
    );
    for (c, job) in [(&a, job_on_a), (&b, job_on_b)] {
        wait_job_status(c, job, "running", CATCH_UP).await?;
    }

    // Both killed nodes come back; both directions catch up and converge.
    b.restart(worker).await?;
    a.restart(source).await?;
    let (end_a, end_b) = (now(&a).await?, now(&b).await?);
    wait_replicated(&b, job_on_b, end_a, CATCH_UP).await?;
    wait_replicated(&a, job_on_a, end_b, CATCH_UP).await?;
    let fingerprints =
        wait_converged(&a.url(1)?, &b.url(2)?, TABLE, Duration::from_secs(60)).await?;
    phase(started, &format!("converged: {fingerprints}"));

    // Graceful drains while both sides write: B's coordinator (the node that adopted the
    // job), then a worker node of B, then a source node of A; each comes back before the next.
    let coordinator = coordinator_index(&b, job_on_b).await?;
    let worker = b
        .node_ids()
        .find(|i| *i != coordinator)
        .context("a worker")?;
    let drains = async {
        let mut took = Vec::new();
        for (victim, index, what) in [
            (&b, coordinator, "B's coordinator"),
            (&b, worker, "a worker node of B"),
            (&a, 2, "A's node 2"),
        ] {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let d = drain_and_time_recovery(victim, index, &a, &b, job_on_b).await?;
            phase(
                started,
                &format!("B's job replicated past the drain of {what} after {d:?}"),
            );
            wait_job_status(&b, job_on_b, "running", CATCH_UP).await?;
            victim.restart(index).await?;
            took.push(d);
        }
        anyhow::Ok(took)
    };
    let (run_a2, run_b2, drained) = tokio::join!(
        load(&a, "a", seed ^ 0xa2, DRAIN_LOAD),
        load(&b, "b", seed ^ 0xb2, DRAIN_LOAD),
        drains
    );
    let drained = drained?;
    let (run_a2, run_b2) = (run_a2?, run_b2?);
    ensure!(
        drained.iter().all(|d| *d < RECOVERY_MAX),
        "replicated time passed the drains only after {drained:?}"
    );
    for (c, job) in [(&a, job_on_a), (&b, job_on_b)] {
        wait_job_status(c, job, "running", CATCH_UP).await?;
    }
    let (end_a, end_b) = (now(&a).await?, now(&b).await?);
    wait_replicated(&b, job_on_b, end_a, CATCH_UP).await?;
    wait_replicated(&a, job_on_a, end_b, CATCH_UP).await?;
    let fingerprints =
        wait_converged(&a.url(1)?, &b.url(2)?, TABLE, Duration::from_secs(60)).await?;
    phase(
        started,
        &format!("converged after the drains: {fingerprints}"),
    );

    let mut oracle = LwwOracle::new([
        ("a".to_string(), origin_id(&a).await?),
        ("b".to_string(), origin_id(&b).await?),
    ]);
    for run in [run_a, run_b, run_a2, run_b2] {
        oracle.add(run.writes)?;
    }
    let (table_a, table_b) = (read_kv(&a, TABLE).await?, read_kv(&b, TABLE).await?);
    let report = oracle.verify(&[("A", &table_a), ("B", &table_b)])?;
    phase(
        started,
        &format!(
            "LWW oracle holds: {} keys, {} writes",
            report.keys_checked, report.writes
        ),
    );

    // Nothing was dead-lettered on either side (a DLQ table, if any, is empty).
    for c in [&a, &b] {
        let tables = query_any(c, "SHOW TABLES FROM defaultdb").await?;
        let schemas = column_values(&tables, "schema_name")?;
        let names = column_values(&tables, "table_name")?;
        for (schema, name) in schemas.iter().zip(&names) {
            if schema != "crdb_replication" {
                continue;
            }
            let rows = query_any(
                c,
                &format!("SELECT count(*) FROM defaultdb.crdb_replication.{name}"),
            )
            .await?;
            ensure!(
                ldr_e2e::scalar(&rows).as_deref() == Some("0"),
                "cluster {}: {name} holds {rows:?}",
                c.name()
            );
        }
    }
    Ok(())
}
