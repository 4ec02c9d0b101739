//! The LWW oracle on real recorded writes, with PostgreSQL standing in for a cluster that
//! returns commit timestamps: a trigger stamps every written row with a `wall.logical`
//! decimal in a column named `crdb_internal_mvcc_timestamp`, so the kv workload's
//! `RETURNING k, crdb_internal_mvcc_timestamp` path and the decoding of NUMERIC timestamps run
//! for real. Row locks order the writes to a key, so the greatest stamp is the last write,
//! exactly the LWW rule the oracle checks.

use std::collections::BTreeMap;
use std::time::Duration;

use ldr_sim::SimError;
use ldr_sim::check::convergence::wait_same_rows;
use ldr_sim::check::lww::LwwOracle;
use ldr_sim::pg::{PgConfig, PgInstance};
use ldr_sim::sql::exec;
use ldr_sim::workload::kv::{self, KvConfig};
use ldr_sim::workload::{LoadOptions, RecordOptions, seed_from_env};

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

#[tokio::test]
async fn lww_oracle_accepts_real_history_and_pinpoints_a_corrupted_key() {
    let seed = seed_from_env();
    eprintln!("SEED={seed} (set SEED to reproduce)");
    let pg = PgInstance::start(PgConfig::new("oracle"))
        .await
        .expect("start postgres");
    let client = pg.connect().await.expect("connect");
    exec(&client, STAMPED_KV)
        .await
        .expect("create the stamped kv table");

    // Why: two "origins" write the same 30 keys concurrently (many conflicts), recording
    // every acknowledged write with its returned commit timestamp.
    let run = |origin: &'static str, seed: u64| {
        let url = pg.url();
        async move {
            let config = KvConfig {
                keys: 30,
                batch: 3,
                record: Some(RecordOptions::new(origin)),
                ..KvConfig::default()
            };
            kv::run(
                &config,
                &LoadOptions::new(vec![url])
                    .concurrency(3)
                    .max_ops(150)
                    .seed(seed),
            )
            .await
        }
    };
    let (a, b) = tokio::join!(run("a", seed), run("b", seed.wrapping_add(1)));
    let (a, b) = (a.expect("origin a"), b.expect("origin b"));
    assert_eq!(
        (a.summary.errors, b.summary.errors),
        (0, 0),
        "{} / {}",
        a.summary,
        b.summary
    );
    assert_eq!(
        a.writes.len() + b.writes.len(),
        2 * 150 * 3,
        "every written key is recorded"
    );
    assert!(
        a.writes
            .iter()
            .chain(&b.writes)
            .all(|w| w.timestamp.is_some()),
        "timestamps decoded from NUMERIC"
    );

    let mut oracle = LwwOracle::new([("a".to_string(), 1), ("b".to_string(), 2)]);
    oracle
        .add(a.writes.into_iter().chain(b.writes))
        .expect("records are complete");
    let config = KvConfig::default();
    let actual: BTreeMap<i64, String> = kv::read_table(&client, &config).await.expect("read kv");
    let report = oracle
        .verify(&[("pg", &actual)])
        .expect("the final state is the last write per key");
    assert_eq!(report.keys_checked, 30);

    // Why: a write that bypassed the history must be reported with that key's history.
    exec(&client, "UPDATE kv SET v = 'intruder' WHERE k = 7")
        .await
        .expect("corrupt key 7");
    let corrupted: BTreeMap<i64, String> = kv::read_table(&client, &config).await.expect("read kv");
    let err = oracle
        .verify(&[("pg", &corrupted)])
        .expect_err("key 7 is wrong");
    let text = err.to_string();
    assert!(matches!(err, SimError::Invariant(_)));
    assert!(
        text.contains("1 of 30 keys are wrong")
            && text.contains("key 7: expected")
            && text.contains("BAD pg: \"intruder\""),
        "{text}"
    );
    assert!(
        text.contains("history (by timestamp)") && text.contains("origin a (id 1)"),
        "{text}"
    );
    pg.stop().await.expect("stop");
}

#[tokio::test]
async fn row_convergence_checker_reports_both_sides() {
    let pg_a = PgInstance::start(PgConfig::new("conv-a"))
        .await
        .expect("start a");
    let pg_b = PgInstance::start(PgConfig::new("conv-b"))
        .await
        .expect("start b");
    for pg in [&pg_a, &pg_b] {
        exec(
            &pg.connect().await.expect("connect"),
            "CREATE TABLE t (k INT8 PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x'), (2, 'y')",
        )
        .await
        .expect("seed");
    }
    let query = "SELECT k, v FROM t ORDER BY k";
    // Why: identical contents converge at once.
    assert_eq!(
        wait_same_rows(&pg_a.url(), &pg_b.url(), query, Duration::from_secs(60))
            .await
            .expect("converged"),
        2
    );
    // Why: differing contents fail with both sides shown (short deadline: they never agree).
    exec(
        &pg_b.connect().await.expect("connect"),
        "UPDATE t SET v = 'z' WHERE k = 2",
    )
    .await
    .expect("diverge");
    let text = wait_same_rows(&pg_a.url(), &pg_b.url(), query, Duration::from_millis(600))
        .await
        .expect_err("diverged")
        .to_string();
    assert!(
        text.contains(
            "row 1: A Some([Some(\"2\"), Some(\"y\")]) vs B Some([Some(\"2\"), Some(\"z\")])"
        ),
        "{text}"
    );
}
