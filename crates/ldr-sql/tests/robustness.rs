//! Odd input never panics and never breaks the session; names fold like PostgreSQL; secure
//! logins check passwords; the DLQ schema appears on demand.
mod common;

use common::*;
use ldr_sql::exec::SqlConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_statements_fail_cleanly() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE t (id INT PRIMARY KEY, s STRING, j JSONB, b BYTES)",
    )
    .await;
    let odd = [
        "",
        ";",
        "SELECT",
        "SELECT (",
        "SELECT 'unterminated",
        "SELECT \"unterminated",
        "INSERT INTO t VALUES",
        "INSERT INTO t VALUES (1, 2, 3, 4, 5)",
        "INSERT INTO t (id, id) VALUES (1, 2)",
        "UPDATE t SET nosuch = 1",
        "UPDATE t SET id = id + 'x'",
        "DELETE FROM t WHERE s",
        "SELECT * FROM t ORDER BY 9",
        "SELECT * FROM t LIMIT -1",
        "SELECT * FROM t GROUP BY 5",
        "SELECT count(count(id)) FROM t",
        "SELECT sum(s) FROM t",
        "SELECT $1",
        "SELECT 1/0",
        "SELECT 9223372036854775807 + 1",
        "SELECT -9223372036854775808 - 1",
        "SELECT '1 fortnight'::INTERVAL",
        "SELECT 'x'::UUID",
        "SELECT j->'a' FROM t",
        "SELECT b || s FROM t",
        "SELECT * FROM t, t",
        "SELECT x.* FROM t",
        "CREATE TABLE \"\" (a INT)",
        "CREATE TABLE w (a INT, a INT)",
        "CREATE TABLE w (a NOSUCHTYPE)",
        "CREATE TABLE w (a INT PRIMARY KEY, b INT PRIMARY KEY)",
        "CREATE TABLE w (a INT REFERENCES t (s))",
        "CREATE TABLE w (a JSONB PRIMARY KEY)",
        "CREATE INDEX ON t (nosuch)",
        "DROP INDEX nosuch",
        "ALTER TABLE t ALTER COLUMN id DROP NOT NULL",
        "ALTER TABLE nosuch ADD COLUMN x INT",
        "SET timezone = 'Mars/Base'",
        "SHOW nosuch",
        "GRANT NOSUCHPRIV ON t TO root",
        "GRANT SELECT ON t TO nosuchuser",
        "PAUSE JOB 'abc'",
        "SHOW JOB 1",
        "BEGIN; BEGIN",
        "ROLLBACK; COMMIT; RELEASE SAVEPOINT x",
        "SELECT repeat('x', 100000000)",
        "SELECT substr('abc', 1, -1)",
        "SELECT date_trunc('fortnight', now())",
        "SELECT '2024-02-30'::DATE",
        "SELECT 'infinity'::DECIMAL",
        "SELECT 1e400::FLOAT8",
        "VALUES (1), (1, 2)",
        "SELECT * FROM (SELECT 1)",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SELECT 1 UNION SELECT 2",
        "COPY t FROM STDIN",
        "SELECT crdb_internal_mvcc_timestamp",
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE t ON 'external://x' INTO TABLE t WITH cursor = 'abc'",
    ];
    for sql in odd {
        let results = s.execute(sql).await;
        for r in results {
            if let Err(e) = r {
                assert!(
                    !e.code().is_empty() && e.code().len() == 5,
                    "{sql}: bad code {}",
                    e.code()
                );
                assert_ne!(e.code(), "XX000", "{sql}: internal error {}", e.message());
            }
        }
        // Leave any transaction an odd statement opened.
        let _ = s.execute("ROLLBACK").await;
        assert_eq!(
            rows(&mut s, "SELECT 1").await,
            vec![vec!["1"]],
            "session unusable after {sql:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_fold_like_postgres() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE MiXeD (Id INT PRIMARY KEY, \"CamelCol\" STRING)",
    )
    .await;
    exec(
        &mut s,
        "INSERT INTO mixed (ID, \"CamelCol\") VALUES (1, 'x')",
    )
    .await;
    assert_eq!(
        rows(&mut s, "SELECT \"CamelCol\" FROM MIXED WHERE id = 1").await,
        vec![vec!["x"]]
    );
    assert_eq!(
        exec_err(&mut s, "SELECT camelcol FROM mixed").await.code(),
        "42703"
    );
    exec(&mut s, "CREATE TABLE \"Quoted Table\" (a INT PRIMARY KEY)").await;
    exec(&mut s, "INSERT INTO \"Quoted Table\" VALUES (1)").await;
    assert_eq!(
        exec_err(&mut s, "SELECT * FROM quoted_table").await.code(),
        "42P01"
    );
    assert_eq!(
        rows(&mut s, "SELECT a FROM defaultdb.public.\"Quoted Table\"").await,
        vec![vec!["1"]]
    );
    assert_eq!(
        rows(&mut s, "SELECT a FROM public.\"Quoted Table\"").await,
        vec![vec!["1"]]
    );
    assert_eq!(
        rows(&mut s, "SELECT a FROM defaultdb.\"Quoted Table\"").await,
        vec![vec!["1"]]
    );
    // DLQ tables go to a schema created on demand.
    exec(&mut s, "CREATE TABLE crdb_replication.dlq_1_public_mixed (id INT8 NOT NULL DEFAULT unique_rowid(), incoming_row JSONB, PRIMARY KEY (id))").await;
    exec(
        &mut s,
        "INSERT INTO crdb_replication.dlq_1_public_mixed (incoming_row) VALUES ('{\"id\": 1}')",
    )
    .await;
    let t = rows(&mut s, "SHOW TABLES").await;
    assert!(
        t.iter()
            .any(|r| r[0] == "crdb_replication" && r[1] == "dlq_1_public_mixed"),
        "{t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_logins_check_passwords() {
    let node = TestNode::start_with(SqlConfig { insecure: false }).await;
    let mut s = node.session().await;
    exec(&mut s, "CREATE USER maxroach WITH PASSWORD 'secret'").await;
    node.server
        .authenticate("maxroach", Some("secret"))
        .await
        .expect("right password");
    assert_eq!(
        node.server
            .authenticate("maxroach", Some("wrong"))
            .await
            .expect_err("wrong")
            .code(),
        "28P01"
    );
    assert_eq!(
        node.server
            .authenticate("maxroach", None)
            .await
            .expect_err("none")
            .code(),
        "28P01"
    );
    exec(&mut s, "CREATE USER nologin WITH NOLOGIN").await;
    assert_eq!(
        node.server
            .authenticate("nologin", None)
            .await
            .expect_err("nologin")
            .code(),
        "28000"
    );
}
