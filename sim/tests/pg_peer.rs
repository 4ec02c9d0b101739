//! The workloads and the PostgreSQL peer helpers against real PostgreSQL 15 servers: this
//! proves the workload SQL and bookkeeping without ldr, and that the benchmark's peer
//! (publication/subscription between two local servers) works.

use std::time::Duration;

use ldr_sim::check::convergence::wait_same_rows;
use ldr_sim::pg::{PgConfig, PgInstance, PgPair, set_subscription_enabled, wait_row_count};
use ldr_sim::sql::{DecimalText, exec};
use ldr_sim::workload::kv::{self, KeyDistribution, KvConfig, ValueType};
use ldr_sim::workload::{
    CancellationToken, LoadOptions, Progress, RecordOptions, StopReason, WriteStatus, bank,
};
use ldr_sim::{SimError, workload};

const WAIT: Duration = Duration::from_secs(120);

fn seed() -> u64 {
    let seed = workload::seed_from_env();
    eprintln!("SEED={seed} (set SEED to reproduce)");
    seed
}

#[tokio::test]
async fn kv_workload_against_postgres() {
    let seed = seed();
    let pg = PgInstance::start(PgConfig::new("kv"))
        .await
        .expect("start postgres");
    let client = pg.connect().await.expect("connect");

    // Why: one worker's recorded writes, replayed in order, must equal the table: that
    // proves both the statements and the recording.
    let config = KvConfig {
        keys: 50,
        batch: 5,
        delete_percent: 20,
        read_percent: 20,
        record: Some(RecordOptions {
            mvcc_timestamp: false,
            ..RecordOptions::new("pg")
        }),
        ..KvConfig::default()
    };
    kv::init(&client, &config).await.expect("create kv");
    let options = LoadOptions::new(vec![pg.url()]).max_ops(300).seed(seed);
    let run = kv::run(&config, &options).await.expect("kv run");
    assert_eq!(run.summary.errors, 0, "{}", run.summary);
    assert_eq!(run.summary.ops, 300);
    assert_eq!(run.summary.stopped_by, StopReason::MaxOps);
    assert!(
        run.summary.rows_read > 0 && run.summary.rows_deleted > 0,
        "{}",
        run.summary
    );
    assert!(!run.records_truncated);
    assert!(
        run.writes
            .iter()
            .all(|w| w.status == WriteStatus::Acknowledged
                && w.timestamp.is_none()
                && w.origin == "pg")
    );
    let deletes = run.writes.iter().filter(|w| w.value.is_none()).count() as u64;
    assert_eq!(
        deletes, run.summary.rows_deleted,
        "every deleted row is recorded, and only those"
    );
    let mut expected = std::collections::BTreeMap::new();
    for w in &run.writes {
        match &w.value {
            Some(v) => expected.insert(w.key, v.clone()),
            None => expected.remove(&w.key),
        };
    }
    let actual = kv::read_table(&client, &config).await.expect("read kv");
    assert_eq!(actual, expected, "table differs from the replayed history");
    assert!(actual.values().all(|v| v.len() == 32));

    // Why: concurrent workers with BYTES values run without errors and stop at max_ops.
    let bytes = KvConfig {
        table: "kv_bytes".into(),
        keys: 100,
        batch: 3,
        value_bytes: 16,
        value_type: ValueType::Bytes,
        ..KvConfig::default()
    };
    kv::init(&client, &bytes).await.expect("create kv_bytes");
    let run = kv::run(
        &bytes,
        &LoadOptions::new(vec![pg.url()])
            .concurrency(4)
            .max_ops(200)
            .seed(seed),
    )
    .await
    .expect("bytes run");
    assert_eq!(
        (run.summary.ops, run.summary.errors),
        (200, 0),
        "{}",
        run.summary
    );
    assert_eq!(run.summary.rows_written, 600);
    let table = kv::read_table(&client, &bytes)
        .await
        .expect("read kv_bytes");
    assert!(
        !table.is_empty() && table.values().all(|v| v.len() == 32),
        "hex of 16 bytes"
    );
    let json = serde_json::to_string(&run.summary).expect("summary serializes");
    assert!(json.contains("\"workload\":\"kv\""));

    // Why: the rate limit holds (lower bound only: a loaded machine may be slower).
    let limited = kv::run(
        &config,
        &LoadOptions::new(vec![pg.url()])
            .concurrency(2)
            .max_ops(26)
            .max_rate(50.0)
            .seed(seed),
    )
    .await
    .expect("rate-limited run");
    assert!(
        limited.summary.elapsed_s >= 0.4,
        "26 ops at 50/s took only {}s",
        limited.summary.elapsed_s
    );

    // Why: a duration bounds a run with no op limit; per-second lines are produced.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let timed = kv::run(
        &config,
        &LoadOptions::new(vec![pg.url()])
            .duration(Duration::from_millis(1500))
            .max_rate(200.0)
            .progress(Progress::Channel(tx))
            .seed(seed),
    )
    .await
    .expect("timed run");
    assert_eq!(timed.summary.stopped_by, StopReason::Duration);
    assert!(
        timed.summary.elapsed_s >= 1.5 && timed.summary.elapsed_s < 60.0,
        "{}",
        timed.summary
    );
    let line = rx.try_recv().expect("at least one progress line");
    assert!(line.to_string().contains("ops/s"), "{line}");

    // Why: cancellation (Ctrl-C) stops a run that would otherwise last minutes.
    let token = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let cancel_options = LoadOptions::new(vec![pg.url()])
        .duration(Duration::from_secs(600))
        .max_rate(100.0)
        .progress(Progress::Channel(tx))
        .cancel(token.clone())
        .seed(seed);
    let config_for_task = config.clone();
    let handle = tokio::spawn(async move { kv::run(&config_for_task, &cancel_options).await });
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a progress line in time")
        .expect("channel open");
    token.cancel();
    let cancelled = tokio::time::timeout(WAIT, handle)
        .await
        .expect("stops in time")
        .expect("task")
        .expect("run");
    assert_eq!(cancelled.summary.stopped_by, StopReason::Cancelled);

    // Why: NUMERIC values (how crdb_internal_mvcc_timestamp arrives) decode exactly.
    let row = client
        .query_one(
            "SELECT '1732250000123456789.0000000002'::numeric, '-0.5'::numeric",
            &[],
        )
        .await
        .expect("numeric");
    let DecimalText(ts) = row.get(0);
    assert_eq!(
        ts.parse::<ldr_types::Timestamp>().expect("timestamp"),
        ldr_types::Timestamp::new(1732250000123456789, 2)
    );
    let DecimalText(neg) = row.get(1);
    assert_eq!(neg, "-0.5");

    // Why: a wrong address fails the run at once with a clear error.
    let err = kv::run(
        &config,
        &LoadOptions::new(vec![
            "postgresql://root@127.0.0.1:1/x?sslmode=disable".into(),
        ])
        .max_ops(1),
    )
    .await
    .expect_err("unreachable");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    // Why: server errors are counted by SQLSTATE and back off instead of busy-looping.
    let missing = KvConfig {
        table: "missing".into(),
        ..KvConfig::default()
    };
    let failing = kv::run(
        &missing,
        &LoadOptions::new(vec![pg.url()])
            .duration(Duration::from_secs(1))
            .seed(seed),
    )
    .await
    .expect("run completes");
    assert_eq!(failing.summary.ops, 0);
    assert!(
        failing
            .summary
            .errors_by_kind
            .get("42P01")
            .is_some_and(|n| *n >= 1 && *n < 100),
        "{}",
        failing.summary
    );
    // Why: unbounded runs are refused.
    assert!(matches!(
        kv::run(&config, &LoadOptions::new(vec![pg.url()])).await,
        Err(SimError::InvalidArgument(_))
    ));
    pg.stop().await.expect("stop postgres");
}

#[tokio::test]
async fn bank_workload_and_check_against_postgres() {
    let seed = seed();
    let pg = PgInstance::start(PgConfig::new("bank"))
        .await
        .expect("start postgres");
    let client = pg.connect().await.expect("connect");
    let config = bank::BankConfig {
        accounts: 20,
        initial_balance: 500,
        max_transfer: 50,
        ..bank::BankConfig::default()
    };
    bank::init(&client, &config).await.expect("init bank");
    assert!(
        bank::check(&client, &config)
            .await
            .expect("fresh bank")
            .holds()
    );

    // Why: concurrent transfers on few accounts (contention) keep the total.
    let summary = bank::run(
        &config,
        &LoadOptions::new(vec![pg.url()])
            .concurrency(4)
            .max_ops(400)
            .seed(seed),
    )
    .await
    .expect("bank run");
    assert_eq!(summary.errors, 0, "{summary}");
    assert_eq!(summary.ops, 400);
    let check = bank::check(&client, &config)
        .await
        .expect("the total holds after transfers");
    assert_eq!(check.total_found, 10_000);
    let balances = client
        .query("SELECT count(*) FROM bank WHERE balance <> 500", &[])
        .await
        .expect("query");
    assert!(
        balances[0].get::<_, i64>(0) > 0,
        "transfers must have moved money"
    );

    // Why: the checker must catch a broken write and say exactly what is wrong.
    exec(
        &client,
        "UPDATE bank SET balance = balance + 7 WHERE id = 3",
    )
    .await
    .expect("break the bank");
    let err = bank::check(&client, &config)
        .await
        .expect_err("a broken total must fail the check");
    let text = err.to_string();
    assert!(matches!(err, SimError::Invariant(_)), "{text}");
    assert!(
        text.contains("total balance is 10007, expected 10000 (difference +7)"),
        "{text}"
    );
    exec(&client, "DELETE FROM bank WHERE id = 5")
        .await
        .expect("lose an account");
    let text = bank::check(&client, &config)
        .await
        .expect_err("a missing account must fail")
        .to_string();
    assert!(text.contains("missing account ids [5]"), "{text}");
    pg.stop().await.expect("stop postgres");
}

#[tokio::test]
async fn postgres_logical_replication_pair() {
    let seed = seed();
    let pair = PgPair::start()
        .await
        .expect("start publisher and subscriber");
    let config = KvConfig {
        keys: 1000,
        batch: 10,
        distribution: KeyDistribution::Sequential,
        ..KvConfig::default()
    };
    pair.exec_both(&config.schema_sql())
        .await
        .expect("create kv on both");

    // Why: the subscription must be fully synchronised before load is measured.
    pair.replicate("ldr_sim_pub", "ldr_sim_sub", &["kv"], WAIT)
        .await
        .expect("publish and subscribe");

    // Why: 1,000 rows written on the publisher by the kv workload all reach the subscriber.
    let run = kv::run(
        &config,
        &LoadOptions::new(vec![pair.publisher.url()])
            .concurrency(2)
            .max_ops(100)
            .seed(seed),
    )
    .await
    .expect("load the publisher");
    assert_eq!(
        (
            run.summary.ops,
            run.summary.errors,
            run.summary.rows_written
        ),
        (100, 0, 1000),
        "{}",
        run.summary
    );
    let subscriber = pair
        .subscriber
        .connect()
        .await
        .expect("connect to the subscriber");
    wait_row_count(&subscriber, "kv", 1000, WAIT)
        .await
        .expect("all rows replicated");
    let publisher = pair
        .publisher
        .connect()
        .await
        .expect("connect to the publisher");
    let (published, subscribed) = (
        kv::read_table(&publisher, &config).await.expect("read"),
        kv::read_table(&subscriber, &config).await.expect("read"),
    );
    assert_eq!(published.len(), 1000);
    assert!(
        published == subscribed,
        "subscriber contents differ from the publisher's"
    );

    // Why: the catch-up method of the benchmark: disable, load, enable, wait for the rows.
    set_subscription_enabled(&subscriber, "ldr_sim_sub", false)
        .await
        .expect("disable");
    let more = KvConfig {
        keys: 100,
        key_offset: 1000,
        ..config.clone()
    };
    kv::run(
        &more,
        &LoadOptions::new(vec![pair.publisher.url()])
            .max_ops(10)
            .seed(seed),
    )
    .await
    .expect("load while disabled");
    set_subscription_enabled(&subscriber, "ldr_sim_sub", true)
        .await
        .expect("enable");
    wait_row_count(&subscriber, "kv", 1100, WAIT)
        .await
        .expect("caught up after enable");
    let rows = wait_same_rows(
        &pair.publisher.url(),
        &pair.subscriber.url(),
        "SELECT k, v FROM kv ORDER BY k",
        WAIT,
    )
    .await
    .expect("same rows");
    assert_eq!(rows, 1100);

    // Why: teardown stops both servers and removes their directories.
    let dirs = [
        pair.publisher.data_dir().to_path_buf(),
        pair.subscriber.data_dir().to_path_buf(),
    ];
    pair.stop().await.expect("stop both");
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
