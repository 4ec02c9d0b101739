//! One 3-node cluster of real `ldr` processes, driven like a user would: `ldr init`,
//! `ldr node status`, `ldr sql`, psql-compatible clients; every column type, ranges spread over
//! all nodes, cluster-wide uniqueness, SQLSTATEs of real statements, a garbage client, and a
//! SIGKILL that loses nothing acknowledged.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ldr_e2e::{cluster, code_of, ldr_command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROWS: i64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_node_cluster_behaves_like_a_database() -> Result<()> {
    let c = cluster("c", 3).await?;

    // `ldr init` runs once per cluster: a second one says so.
    let out = ldr_command(&[
        "init",
        "--insecure",
        &format!("--host={}", c.node_info(2)?.listen_addr),
    ])?;
    ensure!(!out.status.success(), "second init must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("cluster has already been initialized"),
        "second init said: {stderr}"
    );

    // `ldr node status` lists all three nodes as live.
    let out = ldr_command(&[
        "node",
        "status",
        "--insecure",
        &format!("--host={}", c.node_info(1)?.listen_addr),
        "--format=csv",
    ])?;
    ensure!(
        out.status.success(),
        "node status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let live: Vec<&str> = text
        .lines()
        .skip(1)
        .filter(|l| l.ends_with(",true,true"))
        .collect();
    ensure!(live.len() == 3, "expected 3 live nodes, got:\n{text}");

    // Every column type, constraint and default; written through node 1, read through node 2.
    c.exec(
        1,
        "CREATE TABLE every_type (
            id INT8 PRIMARY KEY,
            i4 INT4 NOT NULL DEFAULT 7,
            s STRING,
            vc VARCHAR(10),
            b BOOL,
            f FLOAT8,
            r REAL,
            d DECIMAL(10, 2),
            ts TIMESTAMP,
            tz TIMESTAMPTZ DEFAULT now(),
            dt DATE,
            by BYTES,
            u UUID DEFAULT gen_random_uuid(),
            j JSONB,
            rid INT8 DEFAULT unique_rowid(),
            UNIQUE (s),
            CHECK (i4 >= 0)
        );
        CREATE INDEX every_type_b_idx ON every_type (b);
        INSERT INTO every_type (id, s, vc, b, f, r, d, ts, dt, by, j)
            VALUES (1, 'one', 'short', true, 1.5, 2.5, 12.34, '2026-01-02 03:04:05', '2026-01-02', '\\x0102', '{\"a\": [1, 2]}');",
    )
    .await?;
    let rows = c
        .query_text(2, "SELECT id, i4, s, vc, b, f, r, d, ts, dt, by, j, u IS NOT NULL, tz IS NOT NULL, rid > 0 FROM every_type")
        .await?;
    let row: Vec<String> = rows.rows[0]
        .iter()
        .map(|v| v.clone().unwrap_or_default())
        .collect();
    ensure!(
        row == [
            "1",
            "7",
            "one",
            "short",
            "t",
            "1.5",
            "2.5",
            "12.34",
            "2026-01-02 03:04:05",
            "2026-01-02",
            "\\x0102",
            "{\"a\": [1, 2]}",
            "t",
            "t",
            "t"
        ],
        "row read through node 2: {row:?}"
    );

    // 10,000 rows through node 1 are all readable through node 3; their ranges are on all nodes.
    c.exec(1, "CREATE TABLE kv (k INT8 PRIMARY KEY, v STRING NOT NULL)")
        .await?;
    let client = c.sql(1).await?;
    for start in (0..ROWS).step_by(500) {
        let values: Vec<String> = (start..start + 500)
            .map(|k| format!("({k}, 'v{k}')"))
            .collect();
        client
            .batch_execute(&format!("INSERT INTO kv VALUES {}", values.join(", ")))
            .await?;
    }
    let count: i64 = c
        .sql(3)
        .await?
        .query_one("SELECT count(*) FROM kv", &[])
        .await?
        .get(0);
    ensure!(count == ROWS, "node 3 counts {count} rows");
    let ranges = c.query_text(3, "SHOW RANGES FROM TABLE kv").await?;
    let holder = ranges
        .column("lease_holder")
        .context("SHOW RANGES has a lease_holder column")?;
    let nodes: BTreeSet<String> = ranges
        .rows
        .iter()
        .filter_map(|r| r[holder].clone())
        .collect();
    ensure!(nodes.len() == 3, "ranges of kv live on nodes {nodes:?}");

    // Concurrent inserts of one unique value through different gateways: exactly one wins.
    let mut attempts = Vec::new();
    for node in 1..=3 {
        let client = c.sql(node).await?;
        attempts.push(tokio::spawn(async move {
            client
                .execute(
                    "INSERT INTO every_type (id, s) VALUES ($1, 'same')",
                    &[&(100 + node as i64)],
                )
                .await
        }));
    }
    let mut won = 0;
    for a in attempts {
        match a.await? {
            Ok(_) => won += 1,
            Err(e) => ensure!(code_of(&e) == "23505", "loser failed with {e:?}"),
        }
    }
    ensure!(
        won == 1,
        "{won} concurrent inserts of one unique value succeeded"
    );
    let same: i64 = c
        .sql(2)
        .await?
        .query_one("SELECT count(*) FROM every_type WHERE s = 'same'", &[])
        .await?
        .get(0);
    ensure!(same == 1, "{same} rows hold the unique value");

    // Prepared statements with typed parameters and binary results (tokio-postgres).
    let client = c.sql(2).await?;
    let stmt = client
        .prepare("SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k")
        .await?;
    let rows = client.query(&stmt, &[&10i64, &13i64]).await?;
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    ensure!(
        got == [
            (10, "v10".to_string()),
            (11, "v11".to_string()),
            (12, "v12".to_string())
        ],
        "prepared: {got:?}"
    );
    let n = client
        .execute("UPDATE kv SET v = $1 WHERE k = $2", &[&"changed", &5i64])
        .await?;
    ensure!(n == 1, "update touched {n} rows");

    // Each SQLSTATE from a real statement; the session stays usable after each.
    c.exec(1, "CREATE TABLE parent (id INT8 PRIMARY KEY); CREATE TABLE child (id INT8 PRIMARY KEY, p INT8 REFERENCES parent (id))").await?;
    c.exec(1, "CREATE USER nobody").await?;
    let cases: [(&str, &str); 9] = [
        ("SELEC 1", "42601"),
        ("SELECT * FROM no_such_table", "42P01"),
        ("INSERT INTO kv VALUES (1, 'dup')", "23505"),
        ("INSERT INTO child VALUES (1, 999)", "23503"),
        ("INSERT INTO every_type (id, i4) VALUES (500, -1)", "23514"),
        ("INSERT INTO kv (k) VALUES (20000)", "23502"),
        ("SELECT 'abc'::INT8", "22P02"),
        (
            "CREATE LOGICALLY REPLICATED TABLE x FROM TABLE y ON 'external://z' WITH UNIDIRECTIONAL",
            "0A000",
        ),
        ("CREATE SEQUENCE s", "0A000"),
    ];
    let client = c.sql(1).await?;
    for (statement, expected) in cases {
        match client.batch_execute(statement).await {
            Ok(()) => bail!("{statement:?} succeeded, expected SQLSTATE {expected}"),
            Err(e) => ensure!(
                code_of(&e) == expected,
                "{statement:?}: expected {expected}, got {e:?}"
            ),
        }
        client
            .batch_execute("SELECT 1")
            .await
            .with_context(|| format!("session unusable after {statement:?}"))?;
    }
    let nobody = tokio_postgres::connect(
        &c.url(1)?.replace("root@", "nobody@"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(nobody.1);
    let e = nobody
        .0
        .batch_execute("SELECT * FROM kv")
        .await
        .expect_err("nobody may not read kv");
    ensure!(code_of(&e) == "42501", "privilege error: {e:?}");

    // A client sending garbage gets an error or a closed connection; the node keeps serving.
    let mut garbage = tokio::net::TcpStream::connect(c.node_info(1)?.listen_addr).await?;
    garbage
        .write_all(b"\x00\x00\x00\x10garbage-garbage!")
        .await?;
    let mut buf = vec![0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(10), garbage.read(&mut buf)).await;
    c.exec(1, "SELECT 1")
        .await
        .context("node 1 after a garbage client")?;

    // SIGKILL of node 2 and a restart lose nothing that was acknowledged.
    c.kill(2)?;
    c.restart(2).await?;
    let count: i64 = c
        .sql(2)
        .await?
        .query_one("SELECT count(*) FROM kv", &[])
        .await?
        .get(0);
    ensure!(
        count == ROWS,
        "after SIGKILL and restart node 2 counts {count} rows"
    );
    let v: String = c
        .sql(3)
        .await?
        .query_one("SELECT v FROM kv WHERE k = 5", &[])
        .await?
        .get(0);
    ensure!(v == "changed", "k=5 reads {v:?}");

    // `ldr sql -e` prints a table.
    let out = ldr_command(&[
        "sql",
        "--insecure",
        &format!("--host={}", c.node_info(3)?.listen_addr),
        "-e",
        "SELECT k, v FROM kv WHERE k = 7",
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains(" 7 | v7") && text.contains("(1 row)"),
        "ldr sql printed:\n{text}"
    );
    Ok(())
}

/// A node whose store belongs to one cluster, restarted with `--join` addresses of another
/// cluster, refuses to start and says why (as CockroachDB's does); with its own cluster's
/// address it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_of_another_cluster_refuses_to_join() -> Result<()> {
    let (a, b) = tokio::try_join!(cluster("wca", 1), cluster("wcb", 1))?;
    let store = a.node_info(1)?.store_dir;
    let own_join = a.node_info(1)?.listen_addr.to_string();
    a.kill(1)?;
    let other = b.node_info(1)?.listen_addr.to_string();
    let listen = "127.0.0.1:0";
    let run = |join: String| {
        let store = store.clone();
        async move {
            let bin = ldr_sim::find_ldr_binary()?;
            let mut child = tokio::process::Command::new(bin)
                .args([
                    "start",
                    "--insecure",
                    &format!("--store={}", store.display()),
                    &format!("--listen-addr={listen}"),
                    "--http-addr=127.0.0.1:0",
                    &format!("--join={join}"),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), e.read_to_string(&mut err)).await;
            }
            anyhow::Ok((status.ok().transpose()?, err))
        }
    };
    let (status, err) = run(other.clone()).await?;
    let status = status.context("the node kept running with another cluster's --join")?;
    ensure!(!status.success(), "it exited successfully: {err}");
    ensure!(
        err.contains("belongs to cluster") && err.contains(&other),
        "the refusal does not say why: {err}"
    );
    // Its own cluster's address: it runs (still running after a few seconds).
    let (status, err) = tokio::time::timeout(Duration::from_secs(8), run(own_join))
        .await
        .unwrap_or(Ok((None, String::new())))?;
    ensure!(
        status.is_none(),
        "it did not start with its own cluster's address: {status:?} {err}"
    );
    Ok(())
}
