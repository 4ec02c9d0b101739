//! A statement's limits: row memory against `sql.distsql.temp_storage.workmem` (53200 past it,
//! the session and the node go on), `statement_timeout` (57014), and `LIMIT` without order
//! stopping scans and joins early instead of materialising them.
mod common;

use std::time::{Duration, Instant};

use common::*;

async fn table_of(s: &mut ldr_sql::exec::Session, name: &str, n: usize) {
    exec(
        s,
        &format!("CREATE TABLE {name} (k INT PRIMARY KEY, v STRING)"),
    )
    .await;
    let values: Vec<String> = (0..n).map(|i| format!("({i}, 'value-{i}')")).collect();
    for chunk in values.chunks(500) {
        exec(
            s,
            &format!("INSERT INTO {name} VALUES {}", chunk.join(", ")),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_its_memory_budget_fails_and_the_session_goes_on() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    table_of(&mut s, "t", 200).await;
    table_of(&mut s, "big", 10_000).await;
    exec(
        &mut s,
        "SET CLUSTER SETTING sql.distsql.temp_storage.workmem = '1MiB'",
    )
    .await;
    // Scanned rows pass through (the node's budget holds them, not the statement's): a scan of
    // more than 1 MiB of rows is fine, as in CockroachDB.
    assert_eq!(
        rows(&mut s, "SELECT count(*) FROM big").await,
        vec![vec!["10000".to_string()]]
    );
    assert_eq!(rows(&mut s, "SELECT * FROM big").await.len(), 10_000);
    // 40,000 joined rows of ~150 bytes: over 1 MiB.
    let e = exec_err(&mut s, "SELECT count(*) FROM t a, t b").await;
    assert_eq!(e.code(), "53200", "{e}");
    assert!(e.to_string().contains("memory budget exceeded"), "{e}");
    let e = exec_err(&mut s, "SELECT * FROM t a, t b ORDER BY a.v").await;
    assert_eq!(e.code(), "53200", "{e}");
    // The session, and the same statement within the budget, still work.
    assert_eq!(
        rows(&mut s, "SELECT count(*) FROM t a, t b WHERE a.k = b.k").await,
        vec![vec!["200".to_string()]]
    );
    exec(
        &mut s,
        "SET CLUSTER SETTING sql.distsql.temp_storage.workmem = '64MiB'",
    )
    .await;
    assert_eq!(
        rows(&mut s, "SELECT count(*) FROM t a, t b").await,
        vec![vec!["40000".to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_sql_memory_bounds_every_statement() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    table_of(&mut s, "t", 200).await;
    // `ldr start --max-sql-memory=1MiB`: below the statement budget, so the node's refuses.
    node.server.set_max_sql_memory(1 << 20);
    let e = exec_err(&mut s, "SELECT count(*) FROM t a, t b").await;
    assert_eq!(e.code(), "53200", "{e}");
    assert!(
        e.to_string().starts_with("root: memory budget exceeded"),
        "{e}"
    );
    // Memory comes back when the statement ends.
    assert_eq!(
        rows(&mut s, "SELECT count(*) FROM t").await,
        vec![vec!["200".to_string()]]
    );
    node.server.set_max_sql_memory(1 << 30);
    assert_eq!(
        rows(&mut s, "SELECT count(*) FROM t a, t b").await,
        vec![vec!["40000".to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_without_order_stops_scans_and_joins_early() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    table_of(&mut s, "t", 1000).await;
    exec(
        &mut s,
        "SET CLUSTER SETTING sql.distsql.temp_storage.workmem = '1MiB'",
    )
    .await;
    // A four-way cross join of 10^12 rows: the first row is the answer.
    let started = Instant::now();
    let got = rows(
        &mut s,
        "SELECT a.k, b.k, c.k, d.k FROM t a, t b, t c, t d LIMIT 1",
    )
    .await;
    assert_eq!(got.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "LIMIT 1 over a cross join took {:?}",
        started.elapsed()
    );
    // With a filter: the first rows that pass it, within the budget.
    let got = rows(
        &mut s,
        "SELECT a.k, b.k FROM t a, t b WHERE a.k = b.k + 1 LIMIT 3",
    )
    .await;
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|r| r[0].parse::<i64>().expect("int") == r[1].parse::<i64>().expect("int") + 1)
    );
    // One table: LIMIT and OFFSET read only what they need, and still answer right.
    let got = rows(&mut s, "SELECT k FROM t LIMIT 10 OFFSET 5").await;
    assert_eq!(got.len(), 10);
    let mut keys: Vec<i64> = got.iter().map(|r| r[0].parse().expect("int")).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 10, "duplicate rows: {got:?}");
    assert_eq!(rows(&mut s, "SELECT k FROM t LIMIT 5000").await.len(), 1000);
    // Inside a transaction the limit sees the transaction's own writes.
    exec(&mut s, "BEGIN").await;
    exec(&mut s, "DELETE FROM t WHERE k >= 0").await;
    assert!(rows(&mut s, "SELECT k FROM t LIMIT 1").await.is_empty());
    exec(&mut s, "ROLLBACK").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_cancels_a_long_statement() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    table_of(&mut s, "t", 100).await;
    exec(&mut s, "SET statement_timeout = '100ms'").await;
    assert_eq!(
        rows(&mut s, "SHOW statement_timeout").await,
        vec![vec!["100ms".to_string()]]
    );
    // 10^6 joined rows, none kept: CPU only, stopped by the deadline.
    let started = Instant::now();
    let e = exec_err(
        &mut s,
        "SELECT count(*) FROM t a, t b, t c WHERE a.k + b.k + c.k < 0",
    )
    .await;
    assert_eq!(e.code(), "57014", "{e}");
    assert_eq!(
        e.to_string(),
        "query execution canceled due to statement timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(rows(&mut s, "SELECT 1").await, vec![vec!["1".to_string()]]);
    exec(&mut s, "SET statement_timeout = 0").await;
    for bad in ["-1", "soon", "5 parsecs"] {
        let e = exec_err(&mut s, &format!("SET statement_timeout = '{bad}'")).await;
        assert_eq!(e.code(), "22023", "{bad}: {e}");
    }
}

#[test]
fn statement_timeout_values_read_like_postgres() {
    use ldr_sql::exec::session::parse_statement_timeout;
    let ms = |n| Some(Duration::from_millis(n));
    assert_eq!(parse_statement_timeout("0").expect("valid"), None);
    assert_eq!(parse_statement_timeout("250").expect("valid"), ms(250));
    assert_eq!(parse_statement_timeout("250ms").expect("valid"), ms(250));
    assert_eq!(parse_statement_timeout("2s").expect("valid"), ms(2000));
    assert_eq!(
        parse_statement_timeout("'1min'").expect("valid"),
        ms(60_000)
    );
    assert_eq!(
        parse_statement_timeout("1 minute").expect("valid"),
        ms(60_000)
    );
    assert!(parse_statement_timeout("-5").is_err());
    assert!(parse_statement_timeout("x").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_the_running_statement() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    table_of(&mut s, "t", 100).await;
    let port = listen(node.server.clone()).await;
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=root dbname=defaultdb"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connects");
    tokio::spawn(connection);
    let token = client.cancel_token();
    // 10^8 joined rows: minutes of CPU unless canceled. A cancel request only stops the
    // statement running when it arrives, so it is sent until the statement answers.
    let started = Instant::now();
    let query = client
        .simple_query("SELECT count(*) FROM t a, t b, t c, t d WHERE a.k + b.k + c.k + d.k < 0");
    let cancel = async {
        loop {
            token
                .cancel_query(tokio_postgres::NoTls)
                .await
                .expect("cancel request sent");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let result = tokio::select! {
        r = query => r,
        _ = cancel => unreachable!("the cancel loop never ends"),
    };
    let e = result.expect_err("canceled");
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "57014", "{db}");
    assert_eq!(db.message(), "query execution canceled");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The connection goes on; a cancel request with a wrong key is ignored.
    let rows = client.simple_query("SELECT 1").await.expect("next query");
    assert!(!rows.is_empty());
    let (other, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=root dbname=defaultdb"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connects");
    tokio::spawn(connection);
    other
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel of an idle connection");
    drop(other);
    let rows = client
        .simple_query("SELECT count(*) FROM t a, t b WHERE a.k < b.k")
        .await
        .expect("not canceled by another connection's key");
    assert!(!rows.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_stops_its_running_statement() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    table_of(&mut s, "t", 100).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("bound").port();
    let server = node.server.clone();
    // The server side of exactly one connection: it ends when its statement has stopped.
    let served = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        ldr_sql::protocol::serve_connection(socket, server).await
    });
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=root dbname=defaultdb"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connects");
    let driver = tokio::spawn(connection);
    // 10^8 joined rows: minutes of CPU if nobody stops it.
    let query = tokio::spawn(async move {
        let _ = client
            .simple_query("SELECT count(*) FROM t a, t b, t c, t d WHERE a.k + b.k + c.k + d.k < 0")
            .await;
    });
    // Once the statement runs (it holds the joined tables' rows) ...
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.server.sql_memory_used() == 0 {
        assert!(Instant::now() < deadline, "the statement never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... the client goes away (its process dies: the socket closes).
    driver.abort();
    query.abort();
    tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("the statement of a disconnected client stopped (its connection ended)")
        .expect("served")
        .expect("no I/O error");
    assert_eq!(
        node.server.sql_memory_used(),
        0,
        "the statement's memory released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_as_of_system_time_statement_stopped_by_its_timeout_leaves_no_timestamp_behind() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    table_of(&mut s, "t", 100).await;
    let before = rows(&mut s, "SELECT cluster_logical_timestamp()").await[0][0].clone();
    exec(&mut s, "INSERT INTO t VALUES (1000, 'new')").await;
    // Read in the past: the row inserted since is not there.
    let past = format!("SELECT v FROM t AS OF SYSTEM TIME '{before}' WHERE k = 1000");
    assert!(rows(&mut s, &past).await.is_empty());
    exec(&mut s, "SET statement_timeout = '100ms'").await;
    let e = exec_err(
        &mut s,
        &format!(
            "SELECT count(*) FROM t a, t b, t c AS OF SYSTEM TIME '{before}' WHERE a.k + b.k + c.k < 0"
        ),
    )
    .await;
    assert_eq!(e.code(), "57014", "{e}");
    exec(&mut s, "SET statement_timeout = 0").await;
    // The next statement reads now again.
    assert_eq!(
        rows(&mut s, "SELECT v FROM t WHERE k = 1000").await,
        vec![vec!["new".to_string()]]
    );
}
