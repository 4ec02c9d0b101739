//! The wire protocol against real clients: tokio-postgres (extended protocol, binary
//! results and parameters) and psql (simple protocol), over an ephemeral loopback listener.
mod common;

use common::{TestNode, listen};
use tokio_postgres::NoTls;
use tokio_postgres::types::{FromSql, Type};

async fn connect(port: u16, user: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} dbname=defaultdb"),
        NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Any value's raw binary bytes (to check encodings of types without a native Rust mapping).
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a db error: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_extended_protocol() {
    let node = TestNode::start().await;
    let port = listen(node.server.clone()).await;
    let client = connect(port, "root").await.expect("connects");

    client
        .batch_execute(
            "CREATE TABLE t (id INT8 PRIMARY KEY, small INT2, mid INT4, f FLOAT8, r REAL, b BOOL, s STRING, v VARCHAR(5), \
             by BYTES, d DECIMAL(10,2), ts TIMESTAMPTZ, dt DATE, u UUID, j JSONB, iv INTERVAL); \
             CREATE TABLE u (k STRING PRIMARY KEY)",
        )
        .await
        .expect("ddl");

    // Prepared insert with parameters of several types (binary), types inferred from columns.
    let insert = client
        .prepare("INSERT INTO t (id, small, mid, f, r, b, s, v, by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .await
        .expect("prepares");
    assert_eq!(
        insert.params(),
        &[
            Type::INT8,
            Type::INT2,
            Type::INT4,
            Type::FLOAT8,
            Type::FLOAT4,
            Type::BOOL,
            Type::TEXT,
            Type::VARCHAR,
            Type::BYTEA
        ]
    );
    let n = client
        .execute(
            &insert,
            &[
                &1i64,
                &2i16,
                &3i32,
                &1.5f64,
                &0.25f32,
                &true,
                &"hello",
                &"abc",
                &vec![0u8, 1, 255],
            ],
        )
        .await
        .expect("insert 1");
    assert_eq!(n, 1);
    client
        .execute(
            &insert,
            &[
                &2i64,
                &None::<i16>,
                &None::<i32>,
                &None::<f64>,
                &None::<f32>,
                &None::<bool>,
                &None::<&str>,
                &None::<&str>,
                &None::<Vec<u8>>,
            ],
        )
        .await
        .expect("insert 2 with NULLs");
    client
        .execute(
            "UPDATE t SET d = 12.5, ts = '2024-10-24 17:50:05.5+00', dt = '2024-10-24', u = '3fa85f64-5717-4562-b3fc-2c963f66afa6', \
             j = '{\"a\": [1, 2]}', iv = '1 day 02:00:00' WHERE id = $1",
            &[&1i64],
        )
        .await
        .expect("update with text literals");

    // Binary results decode with the right types.
    let row = client
        .query_one(
            "SELECT id, small, mid, f, r, b, s, v, by FROM t WHERE id = $1",
            &[&1i64],
        )
        .await
        .expect("select");
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, i16>(1), 2);
    assert_eq!(row.get::<_, i32>(2), 3);
    assert_eq!(row.get::<_, f64>(3), 1.5);
    assert_eq!(row.get::<_, f32>(4), 0.25);
    assert!(row.get::<_, bool>(5));
    assert_eq!(row.get::<_, String>(6), "hello");
    assert_eq!(row.get::<_, String>(7), "abc");
    assert_eq!(row.get::<_, Vec<u8>>(8), vec![0u8, 1, 255]);
    let nulls = client
        .query_one("SELECT small, s FROM t WHERE id = 2", &[])
        .await
        .expect("nulls");
    assert_eq!(nulls.get::<_, Option<i16>>(0), None);
    assert_eq!(nulls.get::<_, Option<String>>(1), None);

    let row = client
        .query_one("SELECT d, ts, dt, u, j, iv FROM t WHERE id = 1", &[])
        .await
        .expect("binary of other types");
    let d: Raw = row.get(0);
    assert_eq!(
        d.0,
        vec![0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 19, 136],
        "numeric 12.50 in binary"
    );
    let ts: Raw = row.get(1);
    let micros = i64::from_be_bytes(ts.0.try_into().expect("8 bytes"));
    assert_eq!(micros, 783_107_405_500_000, "microseconds since 2000-01-01");
    let dt: Raw = row.get(2);
    assert_eq!(i32::from_be_bytes(dt.0.try_into().expect("4 bytes")), 9063);
    let u: Raw = row.get(3);
    assert_eq!(u.0.len(), 16);
    let j: Raw = row.get(4);
    assert_eq!(j.0[0], 1, "jsonb version byte");
    assert_eq!(
        std::str::from_utf8(&j.0[1..]).expect("utf8"),
        "{\"a\":[1,2]}"
    );
    let iv: Raw = row.get(5);
    assert_eq!(iv.0.len(), 16);

    // Aggregates, text parameters typed by context, RETURNING through the extended protocol.
    let row = client
        .query_one("SELECT count(*), sum(id) FROM t WHERE id >= $1", &[&1i64])
        .await
        .expect("aggregate");
    assert_eq!(row.get::<_, i64>(0), 2);
    let rows = client
        .query("INSERT INTO u VALUES ($1), ($2) RETURNING k", &[&"x", &"y"])
        .await
        .expect("returning");
    assert_eq!(rows.len(), 2);

    // Errors carry SQLSTATE, and the connection keeps working after them.
    let e = client
        .execute("INSERT INTO u VALUES ('x')", &[])
        .await
        .expect_err("duplicate");
    assert_eq!(code(&e), "23505");
    let db = e.as_db_error().expect("db error");
    assert_eq!(
        db.message(),
        "duplicate key value violates unique constraint \"u_pkey\""
    );
    assert_eq!(db.detail(), Some("Key (k)=('x') already exists."));
    let e = client.query("SELEC 1", &[]).await.expect_err("syntax");
    assert_eq!(code(&e), "42601");
    let e = client
        .query("SELECT * FROM nope", &[])
        .await
        .expect_err("missing table");
    assert_eq!(code(&e), "42P01");
    let e = client
        .query("EXPLAIN SELECT 1", &[])
        .await
        .expect_err("unsupported");
    assert_eq!(code(&e), "0A000");
    assert_eq!(
        client
            .query_one("SELECT 1 + 1", &[])
            .await
            .expect("still usable")
            .get::<_, i64>(0),
        2
    );

    // Transactions through the extended protocol.
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .execute("INSERT INTO u VALUES ($1)", &[&"in-txn"])
        .await
        .expect("txn insert");
    let seen: i64 = client
        .query_one("SELECT count(*) FROM u", &[])
        .await
        .expect("read own write")
        .get(0);
    assert_eq!(seen, 3);
    client.batch_execute("ROLLBACK").await.expect("rollback");
    let after: i64 = client
        .query_one("SELECT count(*) FROM u", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(after, 2);

    // Parameters of utility statements.
    client
        .execute(
            "CREATE EXTERNAL CONNECTION c1 AS $1",
            &[&"postgresql://root@127.0.0.1:1"],
        )
        .await
        .expect("uri parameter");
    let e = client
        .execute("PAUSE JOB $1", &[&12345i64])
        .await
        .expect_err("no such job");
    assert_eq!(
        e.as_db_error().map(|d| d.message().to_string()),
        Some("job with ID 12345 does not exist".to_string())
    );

    // Unknown user at login.
    let e = connect(port, "nobody").await.expect_err("unknown user");
    assert_eq!(code(&e), "28P01");
}

fn psql(port: u16, args: &[&str]) -> std::process::Output {
    std::process::Command::new("psql")
        .env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "root",
            "-d",
            "defaultdb",
            "-X",
        ])
        .args(args)
        .output()
        .expect("psql runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_simple_protocol() {
    let node = TestNode::start().await;
    let port = listen(node.server.clone()).await;
    let out = tokio::task::spawn_blocking(move || {
        psql(port, &["-c", "CREATE TABLE p (id INT PRIMARY KEY, name STRING); INSERT INTO p VALUES (1, 'one'), (2, 'two');"])
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("INSERT 0 2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = tokio::task::spawn_blocking(move || {
        psql(port, &["-At", "-c", "SELECT id, name FROM p ORDER BY id"])
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1|one\n2|two\n");

    let out = tokio::task::spawn_blocking(move || psql(port, &["-c", "SELECT * FROM nope"]))
        .await
        .expect("join");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("relation \"nope\" does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = tokio::task::spawn_blocking(move || psql(port, &["-At", "-c", "SHOW TABLES"]))
        .await
        .expect("join");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("public|p|table|root|2|"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // sslmode=require fails with a clear message (no TLS).
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("psql")
            .arg(format!(
                "postgresql://root@127.0.0.1:{port}/defaultdb?sslmode=require"
            ))
            .args(["-c", "SELECT 1"])
            .output()
            .expect("psql runs")
    })
    .await
    .expect("join");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SSL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drivers free statements they prepared with Parse by sending `DEALLOCATE` (psycopg sends
/// `DEALLOCATE ALL` after every rollback); the statements must really be gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_frees_prepared_statements() {
    let node = TestNode::start().await;
    let port = listen(node.server.clone()).await;
    let client = connect(port, "root").await.expect("connects");
    // tokio-postgres names its statements s0, s1, ...
    let first = client.prepare("SELECT 1").await.expect("prepares s0");
    let second = client.prepare("SELECT 2").await.expect("prepares s1");
    let third = client.prepare("SELECT 3").await.expect("prepares s2");

    client
        .simple_query("DEALLOCATE s0")
        .await
        .expect("deallocates s0");
    let e = client.query(&first, &[]).await.expect_err("s0 is gone");
    assert_eq!(code(&e), "26000", "{e}");
    let row = client
        .query_one(&second, &[])
        .await
        .expect("s1 still works");
    assert_eq!(row.get::<_, i64>(0), 2);

    let e = client
        .simple_query("DEALLOCATE s0")
        .await
        .expect_err("s0 was already freed");
    assert_eq!(code(&e), "26000", "{e}");
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message() == "prepared statement \"s0\" does not exist"),
        "{e}"
    );

    client
        .simple_query("deallocate prepare S1;")
        .await
        .expect("names fold to lower case");
    let e = client.query(&second, &[]).await.expect_err("s1 is gone");
    assert_eq!(code(&e), "26000", "{e}");

    // Over the extended protocol too (psycopg's pipeline mode sends it that way).
    let fourth = client.prepare("SELECT 5").await.expect("prepares s3");
    client
        .execute("DEALLOCATE s3", &[])
        .await
        .expect("extended-protocol DEALLOCATE");
    let e = client.query(&fourth, &[]).await.expect_err("s3 is gone");
    assert_eq!(code(&e), "26000", "{e}");

    client
        .simple_query("DEALLOCATE ALL")
        .await
        .expect("deallocates all");
    let e = client.query(&third, &[]).await.expect_err("s2 is gone");
    assert_eq!(code(&e), "26000", "{e}");
    // The connection is still usable.
    let row = client
        .query_one("SELECT 4", &[])
        .await
        .expect("new statements prepare");
    assert_eq!(row.get::<_, i64>(0), 4);
}

/// `COPY … FROM STDIN` and `COPY … TO STDOUT` through psql (text and CSV), with NULLs, escapes, errors that name
/// the line, and a connection that stays usable afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_and_to_stdout_through_psql() {
    let node = TestNode::start().await;
    let port = listen(node.server.clone()).await;
    let out = tokio::task::spawn_blocking(move || {
        let setup = psql(port, &["-c", "CREATE TABLE c (id INT PRIMARY KEY, name STRING, amount DECIMAL(10,2), at DATE)"]);
        assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("rows.tsv");
        std::fs::write(&text, "1\tone\t1.50\t2026-12-04\n2\t\\N\t\\N\t\\N\n3\ttab\\there\t3\t2026-01-01\n").expect("write");
        let csv = dir.path().join("rows.csv");
        std::fs::write(&csv, "id,name,amount,at\n4,\"four, quoted \"\"x\"\"\",4.25,\n5,,5,2026-02-02\n").expect("write");
        let bad = dir.path().join("bad.tsv");
        std::fs::write(&bad, "6\tsix\t6\t2026-01-01\n7\tseven\tnot-a-number\t2026-01-01\n").expect("write");
        let copy_text = format!("\\copy c FROM '{}'", text.display());
        let copy_csv = format!("\\copy c (id, name, amount, at) FROM '{}' WITH CSV HEADER", csv.display());
        let copy_bad = format!("\\copy c FROM '{}'", bad.display());
        let ok = psql(port, &["-c", &copy_text, "-c", &copy_csv]);
        let failed = psql(port, &["-c", &copy_bad]);
        let after = psql(port, &["-A", "-t", "-c", "SELECT id, coalesce(name, 'NULL'), coalesce(amount::STRING, 'NULL'), coalesce(at::STRING, 'NULL') FROM c ORDER BY id"]);
        // COPY … TO: a table to a file and back into a copy of the table, and a query as CSV.
        let dump = dir.path().join("dump.tsv");
        let out = psql(port, &[
            "-c", &format!("\\copy c TO '{}'", dump.display()),
            "-c", "CREATE TABLE c2 (id INT PRIMARY KEY, name STRING, amount DECIMAL(10,2), at DATE)",
            "-c", &format!("\\copy c2 FROM '{}'", dump.display()),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let fingerprints = psql(port, &["-A", "-t", "-c", "SELECT fingerprint FROM [SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE c]", "-c", "SELECT fingerprint FROM [SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE c2]"]);
        let csv_out = psql(port, &["-c", "COPY (SELECT id, name FROM c WHERE id IN (3, 4) ORDER BY id) TO STDOUT WITH CSV HEADER"]);
        (ok, failed, after, fingerprints, csv_out)
    })
    .await
    .expect("psql ran");
    let (ok, failed, after, fingerprints, csv_out) = out;
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains("COPY 3") && stdout.contains("COPY 2"),
        "{stdout}"
    );
    // Why: a bad value fails the COPY with the type error and names the line; its batch
    // (row 6 too) is not applied.
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "bad data must fail");
    assert!(
        stderr.contains("not-a-number") && stderr.contains("line 2"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&after.stdout).trim(),
        "1|one|1.50|2026-12-04\n2|NULL|NULL|NULL\n3|tab\there|3.00|2026-01-01\n\
         4|four, quoted \"x\"|4.25|NULL\n5|NULL|5.00|2026-02-02"
    );
    // Why: what COPY TO writes, COPY FROM reads back to the same rows.
    let fingerprints = String::from_utf8_lossy(&fingerprints.stdout).to_string();
    let lines: Vec<&str> = fingerprints.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() == 2 && lines[0] == lines[1], "{fingerprints}");
    assert_eq!(
        String::from_utf8_lossy(&csv_out.stdout),
        "id,name\n3,tab\there\n4,\"four, quoted \"\"x\"\"\"\n"
    );
}

/// COPY over the extended protocol, as tokio-postgres sends it (Parse/Bind/Execute, then
/// CopyData, CopyDone and Sync), in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_over_the_extended_protocol() {
    use futures::{SinkExt, TryStreamExt};
    let node = TestNode::start().await;
    let port = listen(node.server.clone()).await;
    let client = connect(port, "root").await.expect("connects");
    client
        .batch_execute("CREATE TABLE e (id INT PRIMARY KEY, name STRING)")
        .await
        .expect("ddl");
    let sink = client
        .copy_in("COPY e (id, name) FROM STDIN WITH CSV")
        .await
        .expect("copy in starts");
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from_static(b"1,one\n2,\n3,\"th,ree\"\n"))
        .await
        .expect("data");
    let rows = sink.finish().await.expect("copy in finishes");
    assert_eq!(rows, 3);
    let out: Vec<bytes::Bytes> = client
        .copy_out("COPY (SELECT id, name FROM e ORDER BY id) TO STDOUT")
        .await
        .expect("copy out starts")
        .try_collect()
        .await
        .expect("copy out data");
    assert_eq!(out.concat(), b"1\tone\n2\t\\N\n3\tth,ree\n".to_vec());
    // A bad row fails the COPY with a clear error; the connection stays usable.
    let sink = client
        .copy_in("COPY e FROM STDIN")
        .await
        .expect("copy in starts");
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from_static(b"x\tbad\n"))
        .await
        .expect("data");
    let e = sink.finish().await.expect_err("not an integer");
    assert_eq!(code(&e), "22P02", "{e}");
    let row = client
        .query_one("SELECT count(*) FROM e", &[])
        .await
        .expect("usable");
    assert_eq!(row.get::<_, i64>(0), 3);
}
