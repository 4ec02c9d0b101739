//! The fuzz runner end to end on real processes, with `fake-ldr` nodes in front of one
//! PostgreSQL server standing in for two replicating clusters (they share storage, so they
//! trivially converge): this exercises scheduling, every fault kind on live processes,
//! writes through nodes with deadlines, recording with commit timestamps (a trigger stamps
//! rows the way ldr's `crdb_internal_mvcc_timestamp` does), the LWW oracle, and failure
//! reports — everything but ldr itself.

use std::path::PathBuf;
use std::time::Duration;

use ldr_sim::fuzz::{ConvergenceCheck, GenConfig, Op, Runner, RunnerConfig, Scenario, Side, Step};
use ldr_sim::pg::{PgConfig, PgInstance};
use ldr_sim::sql::{connect, exec};
use ldr_sim::workload::seed_from_env;
use ldr_sim::{Cluster, ClusterSpec};

const STAMPED_KV: &str = "
CREATE SEQUENCE kv_logical;
CREATE TABLE kv (k INT8 PRIMARY KEY, v TEXT, crdb_internal_mvcc_timestamp NUMERIC(30, 10));
CREATE FUNCTION stamp() RETURNS trigger AS $$
BEGIN
  NEW.crdb_internal_mvcc_timestamp :=
    (extract(epoch FROM clock_timestamp()) * 1000000000)::numeric(30, 0)
    + (nextval('kv_logical') % 1000000000)::numeric / 10000000000;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON kv FOR EACH ROW EXECUTE FUNCTION stamp();
";

async fn backend() -> PgInstance {
    let pg = PgInstance::start(PgConfig::new("fuzz-backend"))
        .await
        .expect("start postgres");
    let admin = pg.connect().await.expect("connect");
    exec(&admin, "CREATE ROLE root SUPERUSER LOGIN")
        .await
        .expect("create root");
    exec(&admin, "CREATE DATABASE defaultdb")
        .await
        .expect("create defaultdb");
    let url = format!(
        "postgresql://postgres@{}/defaultdb?sslmode=disable",
        pg.addr()
    );
    exec(
        &connect(&url, Duration::from_secs(10))
            .await
            .expect("connect defaultdb"),
        STAMPED_KV,
    )
    .await
    .expect("create stamped kv");
    pg
}

async fn fake_clusters(pg: &PgInstance, nodes: usize) -> (Cluster, Cluster) {
    let spec = |name: &str| {
        ClusterSpec::with_binary(name, nodes, PathBuf::from(env!("CARGO_BIN_EXE_fake-ldr")))
            .proxied(true)
            .env("FAKE_LDR_BACKEND", pg.addr().to_string())
            .ready_timeout(Duration::from_secs(60))
    };
    tokio::try_join!(Cluster::start(spec("a")), Cluster::start(spec("b")))
        .expect("start fake clusters")
}

fn runner_config() -> RunnerConfig {
    RunnerConfig {
        convergence: ConvergenceCheck::Rows,
        watch_replicated_time: false,
        write_timeout: Duration::from_secs(3),
        converge_timeout: Duration::from_secs(60),
        ..RunnerConfig::default()
    }
}

#[tokio::test]
async fn generated_scenario_runs_with_every_fault_kind() {
    let seed = seed_from_env();
    eprintln!("SEED={seed} (set SEED to reproduce)");
    let pg = backend().await;
    let (a, b) = fake_clusters(&pg, 2).await;
    // Deletes are left out: the trigger cannot stamp a delete the way ldr does.
    let config = GenConfig {
        nodes_per_cluster: 2,
        keys: 8,
        writes: 60,
        duration_ms: 5000,
        faults: 5,
        delete_percent: 0,
        max_clock_skew_ms: 50,
        ..GenConfig::default()
    };
    let scenario = Scenario::generate(seed, &config).expect("generate");
    eprintln!("fault timeline:\n{}", scenario.fault_timeline().join("\n"));

    // Why: the run executes every step, heals, and the oracle accepts the recorded history.
    let report = Runner::new(&a, &b, runner_config())
        .run(&scenario)
        .await
        .unwrap_or_else(|e| panic!("SEED={seed}: {e}"));
    assert_eq!(report.seed, seed);
    assert_eq!(
        report.timeline.len(),
        scenario.fault_timeline().len(),
        "every fault step ran"
    );
    assert_eq!(
        report.writes_acknowledged + report.writes_ambiguous + report.writes_failed,
        60,
        "every write accounted for"
    );
    assert!(report.writes_acknowledged > 0, "{report:?}");
    let last_ms = scenario.steps.last().expect("steps").at_ms;
    assert!(
        report.elapsed_s * 1000.0 >= last_ms as f64,
        "steps must not run early: last step at {last_ms}ms, {report:?}"
    );
    // Why: after a run every node is up again.
    for cluster in [&a, &b] {
        assert!(
            cluster
                .nodes()
                .iter()
                .all(|n| n.running && !n.paused && n.clock_offset_ns == 0),
            "{:?}",
            cluster.nodes()
        );
    }
}

#[tokio::test]
async fn a_failing_run_reports_seed_and_timeline_and_heals() {
    let pg = backend().await;
    let (a, b) = fake_clusters(&pg, 1).await;
    let scenario = Scenario {
        version: ldr_sim::fuzz::SCENARIO_VERSION,
        seed: 4242,
        config: GenConfig::default(),
        steps: vec![
            Step {
                at_ms: 0,
                op: Op::Kill {
                    cluster: Side::A,
                    node: 1,
                },
            },
            Step {
                at_ms: 10,
                op: Op::Pause {
                    cluster: Side::B,
                    node: 1,
                },
            },
            // Node 9 does not exist: the run must fail here.
            Step {
                at_ms: 20,
                op: Op::Restart {
                    cluster: Side::A,
                    node: 9,
                },
            },
        ],
    };
    let text = Runner::new(&a, &b, runner_config())
        .run(&scenario)
        .await
        .expect_err("node 9 does not exist")
        .to_string();
    assert!(
        text.contains("seed 4242") && text.contains("SEED=4242"),
        "{text}"
    );
    assert!(
        text.contains("kill a/1") && text.contains("pause b/1") && text.contains("restart a/9"),
        "{text}"
    );
    // Why: a failed run still leaves the clusters healed for the next one.
    assert!(a.node_info(1).expect("info").running);
    assert!(!b.node_info(1).expect("info").paused);
}
