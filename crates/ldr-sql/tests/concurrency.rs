//! Concurrency correctness of the SQL write path on real in-process clusters:
//! - explicit transactions are optimistic: a row the transaction read (and then wrote, or
//!   only read) that another writer changed before the COMMIT fails it with 40001 and nothing
//!   of it is applied, also when it wrote several ranges;
//! - a bank of accounts keeps its total under many concurrent transfers (clients retry
//!   40001), on one node and on two nodes, for `balance = balance + x` updates and for
//!   SELECT-then-UPDATE read-modify-write;
//! - a row inserted into a range a transaction scanned (a phantom) fails its COMMIT;
//! - implicit single statements that read and write (`n = n + 1`) lose no increment;
//! - concurrent `INSERT … ON CONFLICT DO UPDATE` on the same keys never fails with 21000.
//!
//! Randomized tests print their seed; `SEED=n` reproduces the choice of accounts and amounts
//! (the interleaving is up to the scheduler).
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestNode, exec, exec_err, one, rows, start_cluster};
use ldr_sql::exec::{Session, SqlServer};
use ldr_sql::{Datum, SqlError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long one worker may take for all its operations (a loaded 2-core machine).
const WORKER_DEADLINE: Duration = Duration::from_secs(120);
/// Attempts per operation before a worker gives up.
const ATTEMPTS: usize = 500;

fn seed() -> u64 {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("SEED={seed}");
    seed
}

fn int(d: &Datum) -> i64 {
    match d {
        Datum::Int(v) => *v,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// Runs one statement; the error if it failed.
async fn run(s: &mut Session, sql: &str) -> Result<Vec<Vec<Datum>>, SqlError> {
    let mut out = s.execute(sql).await;
    match out.pop().expect("one statement") {
        Ok(r) => Ok(r.rows),
        Err(e) => Err(e),
    }
}

/// Runs statements as one explicit transaction. On error the transaction is rolled back and
/// the error returned.
async fn transaction(s: &mut Session, statements: &[String]) -> Result<(), SqlError> {
    run(s, "BEGIN").await?;
    for sql in statements {
        if let Err(e) = run(s, sql).await {
            run(s, "ROLLBACK").await.expect("rollback");
            return Err(e);
        }
    }
    // A failed COMMIT ends the transaction.
    run(s, "COMMIT").await.map(|_| ())
}

#[derive(Debug, Clone, Copy)]
enum Style {
    /// `UPDATE bank SET balance = balance ± x WHERE id = …` twice.
    Increment,
    /// SELECT both balances, then UPDATE each to a literal computed by the client.
    ReadThenWrite,
}

/// One transfer attempt.
async fn transfer_once(
    s: &mut Session,
    from: i64,
    to: i64,
    amount: i64,
    style: Style,
) -> Result<(), SqlError> {
    match style {
        Style::Increment => {
            let (lo, hi, lo_delta) = if from < to {
                (from, to, -amount)
            } else {
                (to, from, amount)
            };
            transaction(
                s,
                &[
                    format!("UPDATE bank SET balance = balance + {lo_delta} WHERE id = {lo}"),
                    format!(
                        "UPDATE bank SET balance = balance + {} WHERE id = {hi}",
                        -lo_delta
                    ),
                ],
            )
            .await
        }
        Style::ReadThenWrite => {
            run(s, "BEGIN").await?;
            let r = async {
                let a = run(s, &format!("SELECT balance FROM bank WHERE id = {from}")).await?;
                let b = run(s, &format!("SELECT balance FROM bank WHERE id = {to}")).await?;
                let (a, b) = (int(&a[0][0]), int(&b[0][0]));
                run(
                    s,
                    &format!("UPDATE bank SET balance = {} WHERE id = {from}", a - amount),
                )
                .await?;
                run(
                    s,
                    &format!("UPDATE bank SET balance = {} WHERE id = {to}", b + amount),
                )
                .await?;
                Ok::<(), SqlError>(())
            }
            .await;
            if let Err(e) = r {
                run(s, "ROLLBACK").await.expect("rollback");
                return Err(e);
            }
            run(s, "COMMIT").await.map(|_| ())
        }
    }
}

/// An operation a worker retries.
enum Op {
    Transfer {
        from: i64,
        to: i64,
        amount: i64,
        style: Style,
    },
    Transaction(Vec<String>),
}

/// Retries an operation on 40001 (with a short random backoff) until it succeeds; any other
/// error fails the test. Returns how many 40001 it saw.
async fn retrying(rng: &mut StdRng, started: Instant, s: &mut Session, op: &Op) -> usize {
    let mut retries = 0;
    for _ in 0..ATTEMPTS {
        let r = match op {
            Op::Transfer {
                from,
                to,
                amount,
                style,
            } => transfer_once(s, *from, *to, *amount, *style).await,
            Op::Transaction(statements) => transaction(s, statements).await,
        };
        match r {
            Ok(()) => return retries,
            Err(e) if e.code() == "40001" => {
                retries += 1;
                assert!(
                    started.elapsed() < WORKER_DEADLINE,
                    "worker out of time after {retries} retries"
                );
                let backoff = rng.random_range(0..=retries.min(20) as u64);
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
            Err(e) => panic!("unexpected error {}: {}", e.code(), e.message()),
        }
    }
    panic!("operation still failing after {ATTEMPTS} attempts");
}

async fn create_bank(s: &mut Session, accounts: i64, balance: i64) {
    exec(
        s,
        "CREATE TABLE bank (id INT8 PRIMARY KEY, balance INT8 NOT NULL)",
    )
    .await;
    let values: Vec<String> = (0..accounts).map(|i| format!("({i}, {balance})")).collect();
    exec(s, &format!("INSERT INTO bank VALUES {}", values.join(", "))).await;
}

async fn bank_total(s: &mut Session) -> (i64, i64) {
    let r = rows(s, "SELECT count(*), sum(balance) FROM bank").await;
    (
        r[0][0].parse().expect("count"),
        r[0][1].parse().expect("sum"),
    )
}

/// Runs `workers` concurrent workers, each doing `transfers` transfers through the server
/// `servers[worker % len]`. Returns the number of 40001 retries seen.
async fn run_bank(
    servers: &[Arc<SqlServer>],
    accounts: i64,
    workers: usize,
    transfers: usize,
    style: Style,
    seed: u64,
) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let server = servers[w % servers.len()].clone();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            let mut s = server.session("root", "defaultdb").await.expect("session");
            let started = Instant::now();
            let mut retries = 0;
            for _ in 0..transfers {
                let from = rng.random_range(0..accounts);
                let mut to = rng.random_range(0..accounts - 1);
                if to >= from {
                    to += 1;
                }
                let amount = rng.random_range(1..=100);
                let mut backoff_rng = StdRng::seed_from_u64(rng.random());
                let op = Op::Transfer {
                    from,
                    to,
                    amount,
                    style,
                };
                retries += retrying(&mut backoff_rng, started, &mut s, &op).await;
            }
            retries
        });
    }
    let mut retries = 0;
    while let Some(r) = tasks.join_next().await {
        retries += r.expect("worker finished");
    }
    retries
}

// ---- deterministic interleavings ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_then_write_that_lost_a_race_is_a_serialization_failure() {
    let node = TestNode::start().await;
    let mut a = node.session().await;
    let mut b = node.session().await;
    create_bank(&mut a, 2, 100).await;

    // A reads 100 and means to write 100 - 10; B adds 50 meanwhile. Before A's write lands
    // B's +50 must not be lost: A fails with 40001 (at its UPDATE or at COMMIT).
    exec(&mut a, "BEGIN").await;
    assert_eq!(
        int(&one(&mut a, "SELECT balance FROM bank WHERE id = 0").await),
        100
    );
    exec(
        &mut b,
        "UPDATE bank SET balance = balance + 50 WHERE id = 0",
    )
    .await;
    let failed = match run(&mut a, "UPDATE bank SET balance = 90 WHERE id = 0").await {
        Err(e) => e,
        Ok(_) => exec_err(&mut a, "COMMIT").await,
    };
    assert_eq!(failed.code(), "40001", "{}", failed.message());
    assert!(
        failed.message().starts_with("restart transaction: "),
        "{}",
        failed.message()
    );
    run(&mut a, "ROLLBACK").await.expect("rollback");
    assert_eq!(
        int(&one(&mut a, "SELECT balance FROM bank WHERE id = 0").await),
        150
    );

    // The same with the stale read only noticed at COMMIT: A reads row 0, B changes it, A
    // writes row 1 computed from it (write skew).
    exec(&mut a, "BEGIN").await;
    let seen = int(&one(&mut a, "SELECT balance FROM bank WHERE id = 0").await);
    exec(
        &mut b,
        "UPDATE bank SET balance = balance - 150 WHERE id = 0",
    )
    .await;
    exec(
        &mut a,
        &format!("UPDATE bank SET balance = {seen} WHERE id = 1"),
    )
    .await;
    let e = exec_err(&mut a, "COMMIT").await;
    assert_eq!(e.code(), "40001", "{}", e.message());
    assert_eq!(
        rows(&mut b, "SELECT id, balance FROM bank ORDER BY id").await,
        vec![vec!["0", "0"], vec!["1", "100"]]
    );

    // Reads that stayed valid commit; a read-only transaction is not validated.
    exec(&mut a, "BEGIN").await;
    let seen = int(&one(&mut a, "SELECT balance FROM bank WHERE id = 1").await);
    exec(
        &mut a,
        &format!("UPDATE bank SET balance = {} WHERE id = 0", seen + 1),
    )
    .await;
    exec(&mut a, "COMMIT").await;
    exec(&mut a, "BEGIN").await;
    one(&mut a, "SELECT balance FROM bank WHERE id = 1").await;
    exec(&mut b, "UPDATE bank SET balance = balance + 1 WHERE id = 1").await;
    exec(&mut a, "COMMIT").await;
    assert_eq!(
        rows(&mut b, "SELECT id, balance FROM bank ORDER BY id").await,
        vec![vec!["0", "101"], vec!["1", "101"]]
    );

    // A row the transaction found absent and another session inserted: 23505 or 40001,
    // never a silent overwrite.
    exec(&mut a, "BEGIN").await;
    assert!(
        rows(&mut a, "SELECT balance FROM bank WHERE id = 7")
            .await
            .is_empty()
    );
    exec(&mut b, "INSERT INTO bank VALUES (7, 1)").await;
    let e = match run(&mut a, "UPSERT INTO bank VALUES (7, 2)").await {
        Err(e) => e,
        Ok(_) => exec_err(&mut a, "COMMIT").await,
    };
    assert_eq!(e.code(), "40001", "{}", e.message());
    run(&mut a, "ROLLBACK").await.expect("rollback");
    assert_eq!(
        int(&one(&mut a, "SELECT balance FROM bank WHERE id = 7").await),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_inserted_into_a_scanned_range_fails_the_commit() {
    let node = TestNode::start().await;
    let mut a = node.session().await;
    let mut b = node.session().await;
    exec(
        &mut a,
        "CREATE TABLE oncall (id INT PRIMARY KEY, shift INT NOT NULL, INDEX (shift))",
    )
    .await;

    // Write skew through a phantom: each transaction checks that nobody is on shift 1 (a
    // scan), then puts itself on it. Serially only one could; the second COMMIT must fail.
    for (filter, shift) in [
        ("shift = 1", 1),              // through the secondary index
        ("id >= 200 AND id < 300", 2), // a primary-key range
        ("shift + 0 = 3", 3),          // a whole-table scan
    ] {
        let count = format!("SELECT count(*) FROM oncall WHERE {filter}");
        exec(&mut a, "BEGIN").await;
        exec(&mut b, "BEGIN").await;
        assert_eq!(int(&one(&mut a, &count).await), 0);
        assert_eq!(int(&one(&mut b, &count).await), 0);
        exec(
            &mut a,
            &format!("INSERT INTO oncall VALUES ({}, {shift})", shift * 100),
        )
        .await;
        exec(
            &mut b,
            &format!("INSERT INTO oncall VALUES ({}, {shift})", shift * 100 + 1),
        )
        .await;
        exec(&mut a, "COMMIT").await;
        let e = exec_err(&mut b, "COMMIT").await;
        assert_eq!(e.code(), "40001", "{filter}: {}", e.message());
        assert!(
            e.message().contains("failed preemptive refresh"),
            "{filter}: {}",
            e.message()
        );
        assert_eq!(int(&one(&mut a, &count).await), 1, "{filter}");
    }

    // A scan whose range nobody else wrote commits, with its own inserts into that range.
    exec(&mut a, "BEGIN").await;
    assert_eq!(
        int(&one(&mut a, "SELECT count(*) FROM oncall WHERE shift = 9").await),
        0
    );
    exec(&mut a, "INSERT INTO oncall VALUES (900, 9), (901, 9)").await;
    exec(&mut b, "INSERT INTO oncall VALUES (50, 4)").await; // outside the scanned span
    exec(&mut a, "COMMIT").await;
    assert_eq!(
        int(&one(&mut b, "SELECT count(*) FROM oncall WHERE shift = 9").await),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_over_several_ranges_applies_nothing() {
    let node = TestNode::start().await;
    let mut a = node.session().await;
    let mut b = node.session().await;
    const ACCOUNTS: i64 = 12;
    create_bank(&mut a, ACCOUNTS, 1000).await;
    let ranges = rows(&mut a, "SHOW RANGES FROM TABLE bank").await;
    assert!(ranges.len() >= 2, "several ranges: {ranges:?}");
    // Every row is in some range; whichever row the concurrent writer changes, the rows of
    // the other ranges must not be written by the failed COMMIT.
    for victim in 0..ACCOUNTS {
        exec(&mut a, "BEGIN").await;
        exec(&mut a, "UPDATE bank SET balance = balance + 1").await;
        exec(
            &mut b,
            &format!("UPDATE bank SET balance = balance + 1000 WHERE id = {victim}"),
        )
        .await;
        let e = exec_err(&mut a, "COMMIT").await;
        assert_eq!(e.code(), "40001", "victim {victim}: {}", e.message());
        let got = rows(&mut b, "SELECT id, balance FROM bank ORDER BY id").await;
        for r in &got {
            let id: i64 = r[0].parse().expect("id");
            let expected = if id == victim { "2000" } else { "1000" };
            assert_eq!(r[1], expected, "victim {victim}: {got:?}");
        }
        exec(
            &mut b,
            &format!("UPDATE bank SET balance = 1000 WHERE id = {victim}"),
        )
        .await;
    }
    // Without interference the same transaction commits everywhere.
    exec(&mut a, "BEGIN").await;
    exec(&mut a, "UPDATE bank SET balance = balance + 1").await;
    exec(&mut a, "COMMIT").await;
    assert_eq!(bank_total(&mut b).await, (ACCOUNTS, ACCOUNTS * 1001));
}

// ---- many concurrent clients ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_total_holds_under_concurrent_transfers_on_one_node() {
    let seed = seed();
    let node = TestNode::start().await;
    let mut s = node.session().await;
    const ACCOUNTS: i64 = 5;
    create_bank(&mut s, ACCOUNTS, 1000).await;
    let servers = [node.server.clone()];
    let r1 = run_bank(&servers, ACCOUNTS, 4, 25, Style::Increment, seed).await;
    assert_eq!(bank_total(&mut s).await, (ACCOUNTS, ACCOUNTS * 1000));
    let r2 = run_bank(&servers, ACCOUNTS, 4, 25, Style::ReadThenWrite, seed).await;
    assert_eq!(bank_total(&mut s).await, (ACCOUNTS, ACCOUNTS * 1000));
    println!("retries: increment {r1}, read-then-write {r2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_total_holds_under_concurrent_transfers_on_two_nodes() {
    let seed = seed();
    let (_cluster, servers) = start_cluster(2).await;
    let mut s = servers[0]
        .session("root", "defaultdb")
        .await
        .expect("session");
    const ACCOUNTS: i64 = 6;
    create_bank(&mut s, ACCOUNTS, 1000).await;
    let holders: std::collections::BTreeSet<String> = rows(&mut s, "SHOW RANGES FROM TABLE bank")
        .await
        .into_iter()
        .map(|r| r[3].clone())
        .collect();
    assert_eq!(holders.len(), 2, "ranges on both nodes");
    let r1 = run_bank(&servers, ACCOUNTS, 4, 20, Style::Increment, seed).await;
    assert_eq!(bank_total(&mut s).await, (ACCOUNTS, ACCOUNTS * 1000));
    let r2 = run_bank(&servers, ACCOUNTS, 4, 20, Style::ReadThenWrite, seed).await;
    assert_eq!(bank_total(&mut s).await, (ACCOUNTS, ACCOUNTS * 1000));
    println!("retries: increment {r1}, read-then-write {r2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_implicit_increments_lose_nothing() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE counters (id INT PRIMARY KEY, n INT NOT NULL); \
         INSERT INTO counters VALUES (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0)",
    )
    .await;
    const WORKERS: usize = 4;
    const ROUNDS: usize = 20;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let server = node.server.clone();
        tasks.spawn(async move {
            let mut s = server.session("root", "defaultdb").await.expect("session");
            for _ in 0..ROUNDS {
                // One row, then every row (several ranges, each atomic and retried).
                exec(&mut s, "UPDATE counters SET n = n + 1 WHERE id = 1").await;
                exec(&mut s, "UPDATE counters SET n = n + 1").await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("worker finished");
    }
    let total = (WORKERS * ROUNDS) as i64;
    let got = rows(&mut s, "SELECT id, n FROM counters ORDER BY id").await;
    let want: Vec<Vec<String>> = (1..=6)
        .map(|i| {
            let n = if i == 1 { 2 * total } else { total };
            vec![i.to_string(), n.to_string()]
        })
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_on_conflict_do_update_never_reports_affecting_a_row_twice() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE oc (k INT PRIMARY KEY, n INT NOT NULL, u STRING UNIQUE)",
    )
    .await;
    const WORKERS: usize = 4;
    const ROUNDS: usize = 25;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let server = node.server.clone();
        tasks.spawn(async move {
            let mut s = server.session("root", "defaultdb").await.expect("session");
            let mut rng = StdRng::seed_from_u64(w as u64);
            let started = Instant::now();
            let mut committed_in_txn = 0i64;
            for round in 0..ROUNDS {
                let sql = "INSERT INTO oc VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 1, 'c') \
                           ON CONFLICT (k) DO UPDATE SET n = oc.n + 1";
                if round % 5 == 4 {
                    // Inside an explicit transaction: 40001 is the client's to retry.
                    let op = Op::Transaction(vec![sql.to_string()]);
                    retrying(&mut rng, started, &mut s, &op).await;
                    committed_in_txn += 1;
                } else if let Err(e) = run(&mut s, sql).await {
                    panic!("worker {w} round {round}: {} {}", e.code(), e.message());
                }
                // The unique arbiter too.
                let by_unique = "INSERT INTO oc VALUES (10, 1, 'z') \
                                 ON CONFLICT (u) DO UPDATE SET n = oc.n + 1";
                if let Err(e) = run(&mut s, by_unique).await {
                    panic!("worker {w} round {round}: {} {}", e.code(), e.message());
                }
            }
            committed_in_txn
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("worker finished");
    }
    let total = (WORKERS * ROUNDS) as i64;
    assert_eq!(
        rows(&mut s, "SELECT k, n FROM oc ORDER BY k").await,
        vec![
            vec!["1".to_string(), total.to_string()],
            vec!["2".to_string(), total.to_string()],
            vec!["3".to_string(), total.to_string()],
            vec!["10".to_string(), total.to_string()],
        ]
    );
}

// ---- waits, deadlocks and pushes between transactions ----

/// The KV write of bank row `(id, balance)`, unconditional.
fn bank_row(desc: &ldr_sql::catalog::TableDescriptor, id: i64, balance: i64) -> ldr_kv::RowWrite {
    let row = [Datum::Int(id), Datum::Int(balance)];
    ldr_kv::RowWrite {
        key: ldr_sql::rowcodec::primary_key(desc, &row),
        value: Some(ldr_sql::rowcodec::encode_row(desc, &row)),
        condition: ldr_kv::Condition::None,
        header: ldr_kv::ValueHeader::default(),
        dependents: vec![],
    }
}

/// Two accounts of `bank` whose rows are in different ranges.
async fn accounts_in_two_ranges(
    server: &SqlServer,
    desc: &ldr_sql::catalog::TableDescriptor,
    accounts: i64,
) -> (i64, i64) {
    let kv = server.kv();
    let range_of = |id: i64| {
        let key = bank_row(desc, id, 0).key;
        async move { kv.range_for_key(&key).await.expect("range").range_id }
    };
    let first = range_of(0).await;
    for id in 1..accounts {
        if range_of(id).await != first {
            return (0, id);
        }
    }
    panic!("all {accounts} accounts are in range {first}");
}

/// `wall.logical` of an HLC timestamp as SQL shows it (`cluster_logical_timestamp()`,
/// `crdb_internal_mvcc_timestamp`).
fn hlc(text: &str) -> (u64, u32) {
    let (wall, logical) = text.split_once('.').unwrap_or((text, "0"));
    (
        wall.parse().expect("wall time"),
        logical.parse().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_locking_rows_in_opposite_order_are_a_deadlock_broken_at_once() {
    let (_cluster, servers) = start_cluster(2).await;
    let mut s = servers[0]
        .session("root", "defaultdb")
        .await
        .expect("session");
    const ACCOUNTS: i64 = 6;
    create_bank(&mut s, ACCOUNTS, 100).await;
    let desc = servers[0]
        .resolve_table("defaultdb", &["bank".to_string()])
        .await
        .expect("table");
    let (x, y) = accounts_in_two_ranges(&servers[0], &desc, ACCOUNTS).await;

    // T1 (older, coordinated by node 1) locks x; T2 (younger, node 2) locks y.
    let (kv1, kv2) = (servers[0].kv(), servers[1].kv());
    let t1 = kv1
        .begin_txn(&bank_row(&desc, x, 0).key)
        .await
        .expect("begin t1");
    let t2 = kv2
        .begin_txn(&bank_row(&desc, y, 0).key)
        .await
        .expect("begin t2");
    assert!(t1.start_ts() < t2.start_ts(), "t1 is the older one");
    t1.client()
        .write(vec![bank_row(&desc, x, 1)], true)
        .await
        .expect("t1 locks x");
    t2.client()
        .write(vec![bank_row(&desc, y, 2)], true)
        .await
        .expect("t2 locks y");

    // Each now writes the other's row: T1 waits for T2 and T2 for T1. The cycle is found
    // through the records and its youngest member, T2, is aborted, well before a wait would
    // time out (10 s).
    let started = Instant::now();
    let w1 = {
        let c = t1.client().clone();
        let row = bank_row(&desc, y, 1);
        tokio::spawn(async move { c.write(vec![row], true).await })
    };
    let w2 = {
        let c = t2.client().clone();
        let row = bank_row(&desc, x, 2);
        tokio::spawn(async move { c.write(vec![row], true).await })
    };
    let (r1, r2) = tokio::time::timeout(Duration::from_secs(30), async {
        (w1.await.expect("t1 task"), w2.await.expect("t2 task"))
    })
    .await
    .expect("the deadlock is broken");
    let took = started.elapsed();
    let e = r2.expect_err("t2, the younger, is the deadlock's victim");
    match &e {
        ldr_kv::KvError::TxnAborted {
            reason,
            conflicting,
            ..
        } => {
            assert_eq!(reason, "ABORT_REASON_PUSHER_ABORTED", "{e}");
            assert_eq!(conflicting.as_deref(), Some(t1.id().as_str()), "{e}");
        }
        other => panic!("expected TxnAborted, got {other}"),
    }
    let sql = SqlError::from(e);
    assert_eq!(sql.code(), "40001");
    assert!(
        sql.message().starts_with(
            "restart transaction: TransactionRetryWithProtoRefreshError: TransactionAbortedError(ABORT_REASON_PUSHER_ABORTED)"
        ),
        "{}",
        sql.message()
    );
    r1.expect("t1, the older, goes on");
    assert!(
        took < Duration::from_secs(8),
        "the deadlock took {took:?} to break (a wait timeout is 10 s)"
    );
    t2.rollback().await;
    t1.commit().await.expect("t1 commits");
    assert_eq!(
        rows(
            &mut s,
            &format!("SELECT id, balance FROM bank WHERE id IN ({x}, {y}) ORDER BY id")
        )
        .await,
        vec![
            vec![x.to_string(), "1".to_string()],
            vec![y.to_string(), "1".to_string()]
        ],
        "all of t1, none of t2"
    );

    // The same through SQL: two transactions on two gateways update the two rows in
    // opposite order and commit at once. Whether their intents deadlock or one commits
    // first (the other's reads are then stale), exactly one gets 40001, within seconds.
    for round in 0..3 {
        let mut a = servers[0].session("root", "defaultdb").await.expect("a");
        let mut b = servers[1].session("root", "defaultdb").await.expect("b");
        exec(&mut a, "BEGIN").await;
        exec(&mut b, "BEGIN").await;
        exec(
            &mut a,
            &format!("UPDATE bank SET balance = balance + 1 WHERE id = {x}"),
        )
        .await;
        exec(
            &mut b,
            &format!("UPDATE bank SET balance = balance + 1 WHERE id = {y}"),
        )
        .await;
        exec(
            &mut a,
            &format!("UPDATE bank SET balance = balance + 1 WHERE id = {y}"),
        )
        .await;
        exec(
            &mut b,
            &format!("UPDATE bank SET balance = balance + 1 WHERE id = {x}"),
        )
        .await;
        let started = Instant::now();
        let ca = tokio::spawn(async move { run(&mut a, "COMMIT").await.map(|_| ()) });
        let cb = tokio::spawn(async move { run(&mut b, "COMMIT").await.map(|_| ()) });
        let (ra, rb) = (ca.await.expect("a"), cb.await.expect("b"));
        let took = started.elapsed();
        let failed: Vec<&SqlError> = [&ra, &rb]
            .into_iter()
            .filter_map(|r| r.as_ref().err())
            .collect();
        assert_eq!(failed.len(), 1, "round {round}: {ra:?} {rb:?}");
        assert_eq!(
            failed[0].code(),
            "40001",
            "round {round}: {}",
            failed[0].message()
        );
        assert!(took < Duration::from_secs(8), "round {round} took {took:?}");
    }
    let total = rows(&mut s, "SELECT sum(balance) FROM bank").await;
    assert_eq!(total[0][0], (ACCOUNTS * 100 - 200 + 2 + 6).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_pushes_a_pending_writer_and_returns_the_old_value_at_once() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    create_bank(&mut s, 4, 100).await;
    let desc = node
        .server
        .resolve_table("defaultdb", &["bank".to_string()])
        .await
        .expect("table");
    let kv = node.server.kv();

    // A transaction writes account 1 and stays open: its intent is there, uncommitted.
    let txn = kv
        .begin_txn(&bank_row(&desc, 1, 0).key)
        .await
        .expect("begin");
    txn.client()
        .write(vec![bank_row(&desc, 1, 555)], true)
        .await
        .expect("intent");

    // A reader does not wait for it: it pushes the transaction above its read (which is at
    // or above `before`) and returns the committed value.
    let write_ts = txn.max_write_ts();
    let before = kv.clock().now();
    assert!(write_ts < before, "the intent is below the read");
    let started = Instant::now();
    let r = rows(&mut s, "SELECT balance FROM bank WHERE id = 1").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the reader waited {:?}",
        started.elapsed()
    );
    assert_eq!(r[0][0], "100", "the value before the pending write");
    // So does a scan over it.
    assert_eq!(bank_total(&mut s).await, (4, 400));

    // The writer commits above the read (not at its write timestamp), and its value is
    // there at that timestamp.
    let commit_ts = txn.commit().await.expect("commits");
    assert!(
        commit_ts > before,
        "commit {commit_ts} not above the read (at or after {before}; written at {write_ts})"
    );
    let r = rows(
        &mut s,
        "SELECT balance, crdb_internal_mvcc_timestamp FROM bank WHERE id = 1",
    )
    .await;
    assert_eq!(r[0][0], "555");
    assert_eq!(
        hlc(&r[0][1]),
        (commit_ts.wall_time_ns, commit_ts.logical),
        "the row's MVCC timestamp is the pushed commit timestamp"
    );

    // A transaction that read something must refresh it when pushed: its commit reports
    // the push (to a timestamp above the read) and stays open.
    let txn = kv
        .begin_txn(&bank_row(&desc, 2, 0).key)
        .await
        .expect("begin");
    txn.client()
        .write(vec![bank_row(&desc, 2, 7)], true)
        .await
        .expect("intent");
    let validated_at = txn.max_write_ts();
    let before = kv.clock().now();
    let r = rows(&mut s, "SELECT balance FROM bank WHERE id = 2").await;
    assert_eq!(r[0][0], "100");
    match txn.try_commit(validated_at).await.expect("try commit") {
        ldr_kv::CommitAttempt::Pushed(ts) => assert!(ts > before, "{ts} vs {before}"),
        other => panic!("expected a push, got {other:?}"),
    }
    txn.rollback().await;
    assert_eq!(
        rows(&mut s, "SELECT balance FROM bank WHERE id = 2").await,
        vec![vec!["100".to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_transactions_lists_the_open_transactions_of_other_sessions() {
    let node = TestNode::start().await;
    let mut a = node.session().await;
    let mut b = node.session().await;
    create_bank(&mut a, 2, 100).await;
    assert!(
        rows(&mut b, "SHOW TRANSACTIONS").await.is_empty(),
        "none open"
    );

    // A opens a transaction and runs two statements in it.
    exec(&mut a, "SET application_name = 'teller'").await;
    exec(&mut a, "BEGIN").await;
    exec(&mut a, "SELECT balance FROM bank WHERE id = 0").await;
    exec(&mut a, "UPDATE bank SET balance = 1 WHERE id = 1").await;

    // B sees it, with CockroachDB's columns.
    let shown = exec(&mut b, "SHOW TRANSACTIONS").await;
    let names: Vec<&str> = shown.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "node_id",
            "id",
            "application_name",
            "num_stmts",
            "num_retries",
            "num_auto_retries",
            "last_auto_retry_reason",
            "isolation_level",
            "priority",
            "quality_of_service"
        ]
    );
    let r = rows(
        &mut b,
        "SELECT node_id, application_name, num_stmts, num_retries, isolation_level \
         FROM [SHOW TRANSACTIONS]",
    )
    .await;
    assert_eq!(
        r,
        vec![vec!["1", "teller", "3", "0", "SERIALIZABLE"]],
        "BEGIN and two statements"
    );
    let r = rows(
        &mut b,
        "SELECT node_id, session_id, txn_string, application_name, num_stmts \
         FROM crdb_internal.node_transactions",
    )
    .await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0][1].len(), 32, "a session id: {r:?}");
    assert!(
        r[0][2].starts_with("\"sql txn\" meta={id=") && r[0][2].contains("stat=PENDING"),
        "{r:?}"
    );
    assert_eq!((r[0][3].as_str(), r[0][4].as_str()), ("teller", "3"));
    // SHOW LOCAL TRANSACTIONS is the same list; the cluster-wide one is not served.
    assert_eq!(rows(&mut b, "SHOW LOCAL TRANSACTIONS").await.len(), 1);
    let e = exec_err(&mut b, "SHOW CLUSTER TRANSACTIONS").await;
    assert_eq!(e.code(), "0A000", "{}", e.message());

    // A user without admin sees only its own transactions.
    exec(&mut b, "CREATE USER viewer").await;
    let mut v = node
        .server
        .session("viewer", "defaultdb")
        .await
        .expect("viewer session");
    assert!(rows(&mut v, "SHOW TRANSACTIONS").await.is_empty());

    // Once A commits, it is gone.
    exec(&mut a, "COMMIT").await;
    assert!(rows(&mut b, "SHOW TRANSACTIONS").await.is_empty());
    // A failed block is listed until it ends; a session that goes away takes it along.
    exec(&mut a, "BEGIN").await;
    assert!(run(&mut a, "SELECT 1/0").await.is_err());
    assert_eq!(rows(&mut b, "SHOW TRANSACTIONS").await.len(), 1);
    drop(a);
    assert!(rows(&mut b, "SHOW TRANSACTIONS").await.is_empty());
}
