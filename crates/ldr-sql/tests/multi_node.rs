//! Two in-process nodes of one cluster, each with its own SQL server: DDL on one node is seen
//! by the other (catalog generation), rows route to their range owners on either node, and
//! both servers' concurrent bootstraps agree.
mod common;

use std::time::Duration;

use common::{exec, exec_err, rows, start_cluster};

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_catalog_and_data() {
    let (_cluster, servers) = start_cluster(2).await;
    let mut s1 = servers[0]
        .session("root", "defaultdb")
        .await
        .expect("session on node 1");
    let mut s2 = servers[1]
        .session("root", "defaultdb")
        .await
        .expect("session on node 2");
    assert_eq!(
        rows(
            &mut s2,
            "SELECT count(*) FROM [SHOW DATABASES] WHERE database_name = 'defaultdb'"
        )
        .await,
        vec![vec!["1"]]
    );

    exec(
        &mut s1,
        "CREATE TABLE t (id INT PRIMARY KEY, v STRING UNIQUE, INDEX (v))",
    )
    .await;
    let ranges = rows(&mut s1, "SHOW RANGES FROM TABLE t").await;
    let holders: std::collections::BTreeSet<String> = ranges.iter().map(|r| r[3].clone()).collect();
    assert_eq!(holders.len(), 2, "ranges on both nodes: {ranges:?}");

    // Node 2 sees the new table and writes rows that land on both nodes.
    let values: Vec<String> = (0..60).map(|i| format!("({i}, 'v{i}')")).collect();
    exec(
        &mut s2,
        &format!("INSERT INTO t VALUES {}", values.join(", ")),
    )
    .await;
    assert_eq!(
        rows(&mut s1, "SELECT count(*) FROM t").await,
        vec![vec!["60"]]
    );
    assert_eq!(
        rows(&mut s1, "SELECT id FROM t WHERE v = 'v42'").await,
        vec![vec!["42"]]
    );
    assert_eq!(
        exec_err(&mut s1, "INSERT INTO t VALUES (100, 'v7')")
            .await
            .code(),
        "23505"
    );

    // A schema change on node 1 reaches node 2's cache.
    exec(&mut s1, "ALTER TABLE t ADD COLUMN n INT DEFAULT 3").await;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let r = s2
            .execute("SELECT n FROM t WHERE id = 1")
            .await
            .pop()
            .expect("one result");
        match r {
            Ok(r) if r.rows.len() == 1 => {
                assert_eq!(r.rows[0][0], ldr_sql::Datum::Int(3));
                break;
            }
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node 2 never saw the new column"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    exec(&mut s2, "UPDATE t SET n = id WHERE id < 10").await;
    assert_eq!(
        rows(&mut s1, "SELECT sum(n) FROM t WHERE id < 10").await,
        vec![vec!["45"]]
    );
    let f1 = rows(&mut s1, "SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE t").await;
    let f2 = rows(&mut s2, "SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE t").await;
    assert_eq!(f1, f2);
    exec(&mut s2, "DROP TABLE t").await;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let r = s1
            .execute("SELECT * FROM t")
            .await
            .pop()
            .expect("one result");
        if matches!(&r, Err(e) if e.code() == "42P01") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 still sees the dropped table"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
