//! DDL and DML through the executor on a real single-node cluster: every type, every
//! constraint and the SQLSTATE of each error a real statement produces.
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE all_types (
            id INT8 PRIMARY KEY, i4 INT4, i2 INT2, f8 FLOAT8, f4 REAL, dec DECIMAL(10,2), d2 NUMERIC,
            s STRING, vc VARCHAR(5), ch CHAR(3), b BOOL, ts TIMESTAMP, tz TIMESTAMPTZ, dt DATE, iv INTERVAL,
            by BYTES, u UUID, j JSONB)",
    )
    .await;
    exec(
        &mut s,
        "INSERT INTO all_types VALUES (1, 2147483647, -32768, 1.5, 0.25, 12.345, 1.50, 'héllo', 'abc', 'xy', true,
            '2024-10-24 17:50:05.123456', '2024-10-24 17:50:05+02:00', '2024-10-24', '1 day 02:00:00',
            '\\x00ab', '3fa85f64-5717-4562-b3fc-2c963f66afa6', '{\"b\": 2, \"a\": [1, null]}')",
    )
    .await;
    exec(&mut s, "INSERT INTO all_types (id) VALUES (2)").await;
    let got = rows(&mut s, "SELECT * FROM all_types ORDER BY id").await;
    assert_eq!(
        got[0],
        vec![
            "1",
            "2147483647",
            "-32768",
            "1.5",
            "0.25",
            "12.35",
            "1.50",
            "héllo",
            "abc",
            "xy",
            "t",
            "2024-10-24 17:50:05.123456",
            "2024-10-24 15:50:05+00",
            "2024-10-24",
            "1 day 02:00:00",
            "\\x00ab",
            "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "{\"a\": [1, null], \"b\": 2}",
        ]
    );
    assert!(got[1][1..].iter().all(|v| v == "NULL"), "{:?}", got[1]);
    // Range checks and bad input.
    assert_eq!(
        exec_err(
            &mut s,
            "INSERT INTO all_types (id, i4) VALUES (3, 2147483648)"
        )
        .await
        .code(),
        "22003"
    );
    assert_eq!(
        exec_err(&mut s, "INSERT INTO all_types (id, i2) VALUES (3, 40000)")
            .await
            .code(),
        "22003"
    );
    assert_eq!(
        exec_err(
            &mut s,
            "INSERT INTO all_types (id, dec) VALUES (3, 123456789.1)"
        )
        .await
        .code(),
        "22003"
    );
    assert_eq!(
        exec_err(
            &mut s,
            "INSERT INTO all_types (id, vc) VALUES (3, 'toolong')"
        )
        .await
        .code(),
        "22001"
    );
    assert_eq!(
        exec_err(
            &mut s,
            "INSERT INTO all_types (id, u) VALUES (3, 'not-a-uuid')"
        )
        .await
        .code(),
        "22P02"
    );
    assert_eq!(
        exec_err(&mut s, "INSERT INTO all_types (id) VALUES ('x')")
            .await
            .code(),
        "22P02"
    );
    assert_eq!(
        exec_err(&mut s, "INSERT INTO all_types (id, j) VALUES (3, '{bad')")
            .await
            .code(),
        "22P02"
    );
    assert_eq!(
        exec_err(&mut s, "INSERT INTO all_types (id, b) VALUES (3, 5)")
            .await
            .code(),
        "42804"
    );
    // Comparisons across types and typed literals.
    assert_eq!(rows(&mut s, "SELECT id FROM all_types WHERE tz > '2024-01-01' AND f8 = 1.5 AND dec = 12.35 AND i4 > 5").await, vec![vec!["1"]]);
    assert_eq!(
        rows(
            &mut s,
            "SELECT id FROM all_types WHERE u = '3fa85f64-5717-4562-b3fc-2c963f66afa6'"
        )
        .await,
        vec![vec!["1"]]
    );
    assert_eq!(
        rows(
            &mut s,
            "SELECT j->'a'->>0, j->>'b' FROM all_types WHERE id = 1"
        )
        .await,
        vec![vec!["1", "2"]]
    );
    assert_eq!(
        rows(
            &mut s,
            "SELECT tz + interval '1 day' FROM all_types WHERE id = 1"
        )
        .await,
        vec![vec!["2024-10-25 15:50:05+00"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraint_errors_have_their_sqlstate() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(&mut s, "CREATE TABLE parent (id INT PRIMARY KEY, email STRING UNIQUE, n INT NOT NULL DEFAULT 0 CHECK (n >= 0))").await;
    exec(
        &mut s,
        "CREATE TABLE child (id INT PRIMARY KEY, pid INT REFERENCES parent (id))",
    )
    .await;
    exec(
        &mut s,
        "INSERT INTO parent (id, email) VALUES (1, 'a@x'), (2, 'b@x')",
    )
    .await;

    let e = exec_err(&mut s, "INSERT INTO parent (id, email) VALUES (1, 'c@x')").await;
    assert_eq!(e.code(), "23505");
    assert_eq!(
        e.message(),
        "duplicate key value violates unique constraint \"parent_pkey\""
    );
    assert_eq!(e.detail(), Some("Key (id)=(1) already exists."));
    let e = exec_err(&mut s, "INSERT INTO parent (id, email) VALUES (3, 'a@x')").await;
    assert_eq!(e.code(), "23505");
    assert_eq!(
        e.message(),
        "duplicate key value violates unique constraint \"parent_email_key\""
    );
    assert_eq!(e.detail(), Some("Key (email)=('a@x') already exists."));
    let e = exec_err(&mut s, "UPDATE parent SET email = 'b@x' WHERE id = 1").await;
    assert_eq!(e.code(), "23505");
    let e = exec_err(&mut s, "INSERT INTO parent (id, n) VALUES (4, NULL)").await;
    assert_eq!(e.code(), "23502");
    assert_eq!(
        e.message(),
        "null value in column \"n\" violates not-null constraint"
    );
    let e = exec_err(&mut s, "INSERT INTO parent (id, n) VALUES (4, -1)").await;
    assert_eq!(e.code(), "23514");
    assert!(
        e.message()
            .starts_with("failed to satisfy CHECK constraint"),
        "{}",
        e.message()
    );
    let e = exec_err(&mut s, "INSERT INTO child VALUES (1, 99)").await;
    assert_eq!(e.code(), "23503");
    assert_eq!(
        e.message(),
        "insert on table \"child\" violates foreign key constraint \"child_pid_fkey\""
    );
    assert_eq!(
        e.detail(),
        Some("Key (pid)=(99) is not present in table \"parent\".")
    );
    exec(&mut s, "INSERT INTO child VALUES (1, 1), (2, NULL)").await;
    let e = exec_err(&mut s, "DELETE FROM parent WHERE id = 1").await;
    assert_eq!(e.code(), "23503");
    assert_eq!(
        e.message(),
        "delete on table \"parent\" violates foreign key constraint \"child_pid_fkey\" on table \"child\""
    );
    exec(&mut s, "DELETE FROM parent WHERE id = 2").await;
    // The freed unique value can be used again.
    exec(&mut s, "INSERT INTO parent (id, email) VALUES (5, 'b@x')").await;
    assert_eq!(
        rows(&mut s, "SELECT id FROM parent WHERE email = 'b@x'").await,
        vec![vec!["5"]]
    );

    assert_eq!(
        exec_err(&mut s, "SELECT * FROM missing").await.code(),
        "42P01"
    );
    assert_eq!(
        exec_err(&mut s, "SELECT nosuch FROM parent").await.code(),
        "42703"
    );
    assert_eq!(
        exec_err(&mut s, "CREATE TABLE parent (id INT PRIMARY KEY)")
            .await
            .code(),
        "42P07"
    );
    exec(
        &mut s,
        "CREATE TABLE IF NOT EXISTS parent (id INT PRIMARY KEY)",
    )
    .await;
    assert_eq!(
        exec_err(&mut s, "SELECT * FROM nodb.public.t").await.code(),
        "3D000"
    );
    assert_eq!(exec_err(&mut s, "USE nodb").await.code(), "3D000");
    assert_eq!(
        exec_err(&mut s, "SELECT * FROM parent WHERE").await.code(),
        "42601"
    );
    assert_eq!(
        exec_err(&mut s, "CREATE TABLE h (a INT PRIMARY KEY USING HASH)")
            .await
            .code(),
        "0A000"
    );
    assert_eq!(exec_err(&mut s, "SELECT 'a' + 1").await.code(), "22P02");
    assert_eq!(
        exec_err(&mut s, "SELECT email + 1 FROM parent")
            .await
            .code(),
        "42883"
    );
    // The session survives errors.
    assert_eq!(
        rows(&mut s, "SELECT count(*) FROM parent").await,
        vec![vec!["2"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_variants_update_delete_returning() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE kv (k INT PRIMARY KEY, v STRING, n INT DEFAULT 7)",
    )
    .await;
    exec(&mut s, "INSERT INTO kv (k, v) VALUES (1, 'a'), (2, 'b')").await;
    let r = exec(
        &mut s,
        "INSERT INTO kv (k, v) VALUES (1, 'z'), (3, 'c') ON CONFLICT (k) DO NOTHING",
    )
    .await;
    assert_eq!(r.command_tag(), "INSERT 0 1");
    let r = exec(&mut s, "INSERT INTO kv (k, v) VALUES (1, 'new') ON CONFLICT (k) DO UPDATE SET v = excluded.v || '!' RETURNING k, v").await;
    assert_eq!(r.rows.len(), 1);
    assert_eq!(
        rows(&mut s, "SELECT v, n FROM kv WHERE k = 1").await,
        vec![vec!["new!", "7"]]
    );
    exec(&mut s, "UPSERT INTO kv (k, v) VALUES (2, 'B'), (4, 'd')").await;
    assert_eq!(
        rows(&mut s, "SELECT k, v, n FROM kv ORDER BY k").await,
        vec![
            vec!["1", "new!", "7"],
            vec!["2", "B", "7"],
            vec!["3", "c", "7"],
            vec!["4", "d", "7"]
        ]
    );
    assert_eq!(
        exec_err(&mut s, "UPSERT INTO kv (k, v) VALUES (9, 'x'), (9, 'y')")
            .await
            .code(),
        "21000"
    );
    let r = exec(&mut s, "UPDATE kv SET n = n + 1 WHERE k > 2 RETURNING k, n").await;
    assert_eq!(r.command_tag(), "UPDATE 2");
    let r = exec(&mut s, "DELETE FROM kv WHERE v = 'c' RETURNING *").await;
    assert_eq!(r.command_tag(), "DELETE 1");
    assert_eq!(
        rows(&mut s, "SELECT k FROM kv ORDER BY k DESC LIMIT 2 OFFSET 1").await,
        vec![vec!["2"], vec!["1"]]
    );
    exec(&mut s, "CREATE TABLE kv2 (k INT PRIMARY KEY, v STRING)").await;
    let r = exec(&mut s, "INSERT INTO kv2 SELECT k, v FROM kv WHERE k < 4").await;
    assert_eq!(r.command_tag(), "INSERT 0 2");
    // Primary key change moves the row.
    exec(&mut s, "UPDATE kv2 SET k = 10 WHERE k = 1").await;
    assert_eq!(
        rows(&mut s, "SELECT k, v FROM kv2 ORDER BY k").await,
        vec![vec!["2", "B"], vec!["10", "new!"]]
    );
    assert_eq!(
        exec_err(&mut s, "UPDATE kv2 SET k = 2 WHERE k = 10")
            .await
            .code(),
        "23505"
    );
    // Aggregates, grouping, distinct, between, in, like.
    exec(
        &mut s,
        "CREATE TABLE g (id INT PRIMARY KEY, grp STRING, x FLOAT)",
    )
    .await;
    exec(
        &mut s,
        "INSERT INTO g VALUES (1, 'a', 1), (2, 'a', 3), (3, 'b', 5), (4, NULL, 7)",
    )
    .await;
    assert_eq!(
        rows(&mut s, "SELECT grp, count(*), sum(x), avg(x), min(id), max(id) FROM g GROUP BY grp ORDER BY grp").await,
        vec![vec!["NULL", "1", "7", "7", "4", "4"], vec!["a", "2", "4", "2", "1", "2"], vec!["b", "1", "5", "5", "3", "3"]]
    );
    assert_eq!(
        rows(
            &mut s,
            "SELECT DISTINCT grp FROM g WHERE grp IS NOT NULL ORDER BY 1"
        )
        .await,
        vec![vec!["a"], vec!["b"]]
    );
    assert_eq!(rows(&mut s, "SELECT id FROM g WHERE id BETWEEN 2 AND 3 AND grp IN ('a', 'b') AND grp LIKE '_' ORDER BY id").await, vec![vec!["2"], vec!["3"]]);
    assert_eq!(
        rows(&mut s, "SELECT grp FROM g GROUP BY grp HAVING count(*) > 1").await,
        vec![vec!["a"]]
    );
    assert_eq!(
        exec_err(&mut s, "SELECT grp, id FROM g GROUP BY grp")
            .await
            .code(),
        "42803"
    );
    assert_eq!(
        rows(
            &mut s,
            "SELECT upper(grp), length(grp), coalesce(grp, '-') FROM g WHERE id = 4"
        )
        .await,
        vec![vec!["NULL", "NULL", "-"]]
    );
    // A join.
    assert_eq!(
        rows(
            &mut s,
            "SELECT g.id, kv.v FROM g JOIN kv ON kv.k = g.id ORDER BY g.id"
        )
        .await,
        vec![vec!["1", "new!"], vec!["2", "B"], vec!["4", "d"]]
    );
    assert_eq!(
        rows(
            &mut s,
            "SELECT count(*) FROM g LEFT JOIN kv ON kv.k = g.id WHERE kv.k IS NULL"
        )
        .await,
        vec![vec!["1"]]
    );
    // SELECT without FROM.
    assert_eq!(
        rows(
            &mut s,
            "SELECT 1 + 2, 'x' || 'y', current_database(), 7 / 2"
        )
        .await,
        vec![vec!["3", "xy", "defaultdb", "3.5"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_columns_and_returning_timestamps() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(&mut s, "CREATE TABLE t (id INT PRIMARY KEY, v INT)").await;
    let r = exec(
        &mut s,
        "INSERT INTO t VALUES (1, 1) RETURNING crdb_internal_mvcc_timestamp",
    )
    .await;
    let written = r.rows[0][0].to_text(0).expect("a timestamp");
    let read = one(
        &mut s,
        "SELECT crdb_internal_mvcc_timestamp FROM t WHERE id = 1",
    )
    .await
    .to_text(0)
    .expect("a timestamp");
    assert_eq!(written, read);
    assert!(
        written.contains('.') && written.split('.').nth(1).map(|f| f.len()) == Some(10),
        "{written}"
    );
    assert_eq!(
        one(
            &mut s,
            "SELECT crdb_internal_origin_timestamp FROM t WHERE id = 1"
        )
        .await,
        ldr_sql::Datum::Null
    );
    let r = exec(
        &mut s,
        "UPDATE t SET v = 2 WHERE id = 1 RETURNING crdb_internal_mvcc_timestamp",
    )
    .await;
    let updated = r.rows[0][0].to_text(0).expect("a timestamp");
    assert!(updated > written);
    let read = one(
        &mut s,
        "SELECT crdb_internal_mvcc_timestamp FROM t WHERE id = 1",
    )
    .await
    .to_text(0)
    .expect("a timestamp");
    assert_eq!(updated, read);
    // `SELECT *` hides system columns; cluster_logical_timestamp() moves forward.
    assert_eq!(exec(&mut s, "SELECT * FROM t").await.columns.len(), 2);
    let a = one(&mut s, "SELECT cluster_logical_timestamp()").await;
    let b = one(&mut s, "SELECT cluster_logical_timestamp()").await;
    assert!(b.compare(&a) == Some(std::cmp::Ordering::Greater));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_constraint_under_concurrent_inserts() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE users (id INT PRIMARY KEY, email STRING UNIQUE)",
    )
    .await;
    for round in 0..5 {
        let mut handles = Vec::new();
        for i in 0..4 {
            let server = node.server.clone();
            handles.push(tokio::spawn(async move {
                let mut s = server.session("root", "defaultdb").await.expect("session");
                let r = s
                    .execute(&format!(
                        "INSERT INTO users VALUES ({}, 'same{round}@x')",
                        round * 10 + i
                    ))
                    .await;
                r.into_iter().next().expect("one result")
            }));
        }
        let mut wins = 0;
        for h in handles {
            match h.await.expect("task") {
                Ok(_) => wins += 1,
                Err(e) => assert_eq!(e.code(), "23505", "{}", e.message()),
            }
        }
        assert_eq!(wins, 1, "round {round}: exactly one insert wins");
        assert_eq!(
            rows(
                &mut s,
                &format!("SELECT count(*) FROM users WHERE email = 'same{round}@x'")
            )
            .await,
            vec![vec!["1"]]
        );
    }
    // Concurrent inserts of the same primary key: one wins.
    let mut handles = Vec::new();
    for i in 0..4 {
        let server = node.server.clone();
        handles.push(tokio::spawn(async move {
            let mut s = server.session("root", "defaultdb").await.expect("session");
            s.execute(&format!("INSERT INTO users VALUES (1000, 'k{i}@x')"))
                .await
                .into_iter()
                .next()
                .expect("one result")
        }));
    }
    let mut wins = 0;
    for h in handles {
        if h.await.expect("task").is_ok() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    // Losers released their unique claims: their emails are free.
    let free = rows(&mut s, "SELECT email FROM users WHERE id = 1000").await;
    for i in 0..4 {
        let email = format!("k{i}@x");
        if free[0][0] != email {
            exec(
                &mut s,
                &format!("INSERT INTO users VALUES ({}, '{email}')", 2000 + i),
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprints_match_for_equal_data_in_any_order() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(&mut s, "CREATE DATABASE a; CREATE DATABASE b").await;
    exec(
        &mut s,
        "CREATE TABLE a.t (id INT PRIMARY KEY, s STRING, d DECIMAL, INDEX (s))",
    )
    .await;
    // Same columns, created in another order (other column ids), same indexes.
    exec(&mut s, "CREATE TABLE b.t (id INT PRIMARY KEY, d DECIMAL)").await;
    exec(&mut s, "ALTER TABLE b.t ADD COLUMN s STRING").await;
    exec(&mut s, "CREATE INDEX t_s_idx ON b.t (s)").await;
    for i in 0..50 {
        exec(
            &mut s,
            &format!("INSERT INTO a.t VALUES ({i}, 'v{}', {i}.5)", i % 7),
        )
        .await;
    }
    for i in (0..50).rev() {
        exec(
            &mut s,
            &format!(
                "INSERT INTO b.t (id, s, d) VALUES ({i}, 'v{}', {i}.5)",
                i % 7
            ),
        )
        .await;
    }
    let fa = rows(&mut s, "SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE a.t").await;
    let fb = rows(&mut s, "SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE b.t").await;
    assert_eq!(fa.len(), 2);
    assert_eq!(fa, fb);
    exec(&mut s, "UPDATE b.t SET s = 'changed' WHERE id = 3").await;
    let fb = rows(&mut s, "SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE b.t").await;
    assert_ne!(fa[0][1], fb[0][1]);
    assert_ne!(fa[1][1], fb[1][1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_transactions() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    let mut other = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE t (id INT PRIMARY KEY, v STRING UNIQUE)",
    )
    .await;
    exec(&mut s, "INSERT INTO t VALUES (1, 'one')").await;
    exec(&mut s, "BEGIN").await;
    exec(&mut s, "INSERT INTO t VALUES (2, 'two')").await;
    exec(&mut s, "UPDATE t SET v = 'uno' WHERE id = 1").await;
    // Own writes are visible inside, not outside.
    assert_eq!(
        rows(&mut s, "SELECT id, v FROM t ORDER BY id").await,
        vec![vec!["1", "uno"], vec!["2", "two"]]
    );
    assert_eq!(
        rows(&mut other, "SELECT id, v FROM t ORDER BY id").await,
        vec![vec!["1", "one"]]
    );
    assert_eq!(
        exec_err(&mut s, "INSERT INTO t VALUES (2, 'dup')")
            .await
            .code(),
        "23505"
    );
    // After an error, only ROLLBACK is accepted.
    assert_eq!(exec_err(&mut s, "SELECT 1").await.code(), "25P02");
    exec(&mut s, "ROLLBACK").await;
    assert_eq!(
        rows(&mut s, "SELECT id, v FROM t ORDER BY id").await,
        vec![vec!["1", "one"]]
    );
    // Commit applies.
    exec(
        &mut s,
        "BEGIN; INSERT INTO t VALUES (3, 'three'); DELETE FROM t WHERE id = 1; COMMIT",
    )
    .await;
    assert_eq!(
        rows(&mut other, "SELECT id, v FROM t ORDER BY id").await,
        vec![vec!["3", "three"]]
    );
    // Savepoints.
    exec(&mut s, "BEGIN").await;
    exec(&mut s, "INSERT INTO t VALUES (4, 'four')").await;
    exec(&mut s, "SAVEPOINT sp").await;
    exec(&mut s, "INSERT INTO t VALUES (5, 'five')").await;
    exec(&mut s, "ROLLBACK TO SAVEPOINT sp").await;
    exec(&mut s, "COMMIT").await;
    assert_eq!(
        rows(&mut other, "SELECT id FROM t ORDER BY id").await,
        vec![vec!["3"], vec!["4"]]
    );
    // A concurrent change to a row the transaction updated fails the COMMIT with 40001.
    exec(&mut s, "BEGIN").await;
    exec(&mut s, "UPDATE t SET v = 'mine' WHERE id = 3").await;
    exec(&mut other, "UPDATE t SET v = 'theirs' WHERE id = 3").await;
    let e = exec_err(&mut s, "COMMIT").await;
    assert_eq!(e.code(), "40001");
    assert_eq!(
        rows(&mut other, "SELECT v FROM t WHERE id = 3").await,
        vec![vec!["theirs"]]
    );
    assert_eq!(
        exec_err(
            &mut s,
            "COMMIT; CREATE LOGICAL REPLICATION STREAM FROM TABLE t ON 'external://x' INTO TABLE t"
        )
        .await
        .code(),
        "25001"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_and_backfills() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(&mut s, "CREATE TABLE t (id INT PRIMARY KEY, a STRING)").await;
    exec(&mut s, "INSERT INTO t VALUES (1, 'x'), (2, 'y'), (3, 'x')").await;
    exec(&mut s, "ALTER TABLE t ADD COLUMN n INT NOT NULL DEFAULT 5").await;
    exec(&mut s, "ALTER TABLE t ADD COLUMN m STRING").await;
    exec(
        &mut s,
        "INSERT INTO t (id, a, n, m) VALUES (4, 'z', 6, NULL)",
    )
    .await;
    assert_eq!(
        rows(&mut s, "SELECT id, n, m FROM t ORDER BY id").await,
        vec![
            vec!["1", "5", "NULL"],
            vec!["2", "5", "NULL"],
            vec!["3", "5", "NULL"],
            vec!["4", "6", "NULL"]
        ]
    );
    assert_eq!(
        exec_err(&mut s, "ALTER TABLE t ADD COLUMN bad INT NOT NULL")
            .await
            .code(),
        "23502"
    );
    exec(
        &mut s,
        "ALTER TABLE t ADD COLUMN u UUID DEFAULT gen_random_uuid()",
    )
    .await;
    assert_eq!(
        rows(&mut s, "SELECT count(DISTINCT u) FROM t").await,
        vec![vec!["4"]]
    );
    exec(&mut s, "CREATE INDEX ON t (a)").await;
    assert_eq!(
        rows(&mut s, "SELECT id FROM t WHERE a = 'x' ORDER BY id").await,
        vec![vec!["1"], vec!["3"]]
    );
    let e = exec_err(&mut s, "CREATE UNIQUE INDEX t_a_key ON t (a)").await;
    assert_eq!(e.code(), "23505");
    exec(&mut s, "CREATE UNIQUE INDEX ON t (id, a)").await;
    let idx = rows(&mut s, "SHOW INDEXES FROM t").await;
    assert!(idx.iter().any(|r| r[1] == "t_a_idx"));
    assert!(idx.iter().any(|r| r[1] == "t_id_a_key"));
    assert!(!idx.iter().any(|r| r[1] == "t_a_key"));
    exec(&mut s, "DROP INDEX t@t_a_idx").await;
    assert_eq!(
        rows(&mut s, "SELECT id FROM t WHERE a = 'x' ORDER BY id").await,
        vec![vec!["1"], vec!["3"]]
    );
    exec(&mut s, "ALTER TABLE t DROP COLUMN m").await;
    assert_eq!(exec(&mut s, "SELECT * FROM t").await.columns.len(), 4);
    assert_eq!(
        exec_err(&mut s, "ALTER TABLE t DROP COLUMN id")
            .await
            .code(),
        "0A000"
    );
    exec(
        &mut s,
        "ALTER TABLE t SET (ttl_expire_after = '1 day', ttl_disable_changefeed_replication = true)",
    )
    .await;
    let create = rows(&mut s, "SHOW CREATE TABLE t").await;
    assert!(
        create[0][1].contains("ttl_expire_after = '1 day'"),
        "{}",
        create[0][1]
    );
    assert!(
        create[0][1].contains("CONSTRAINT t_pkey PRIMARY KEY (id ASC)"),
        "{}",
        create[0][1]
    );
    exec(&mut s, "ALTER TABLE t RESET (ttl_expire_after)").await;
    assert!(!rows(&mut s, "SHOW CREATE TABLE t").await[0][1].contains("ttl_expire_after"));
    assert_eq!(
        exec_err(&mut s, "ALTER TABLE t SET (nonsense = 1)")
            .await
            .code(),
        "22023"
    );
    // A table without a primary key gets a hidden rowid.
    exec(&mut s, "CREATE TABLE nopk (a INT)").await;
    exec(&mut s, "INSERT INTO nopk VALUES (1), (1)").await;
    assert_eq!(
        rows(&mut s, "SELECT * FROM nopk").await,
        vec![vec!["1"], vec!["1"]]
    );
    assert!(
        rows(&mut s, "SHOW CREATE TABLE nopk").await[0][1]
            .contains("rowid INT8 NOT VISIBLE NOT NULL DEFAULT unique_rowid()")
    );
    exec(&mut s, "DROP TABLE nopk").await;
    assert_eq!(exec_err(&mut s, "SELECT * FROM nopk").await.code(), "42P01");
    exec(&mut s, "CREATE TABLE nopk (a INT)").await;
    assert_eq!(
        rows(&mut s, "SELECT count(*) FROM nopk").await,
        vec![vec!["0"]]
    );
    exec(&mut s, "DROP DATABASE IF EXISTS nodb").await;
    exec(
        &mut s,
        "CREATE DATABASE d2; CREATE TABLE d2.x (id INT PRIMARY KEY); DROP DATABASE d2",
    )
    .await;
    assert_eq!(exec_err(&mut s, "SELECT * FROM d2.x").await.code(), "42P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_lock_blocks_all_but_the_allowlist() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE tab (pk INT PRIMARY KEY, payload STRING, c DECIMAL)",
    )
    .await;
    let desc = node
        .server
        .resolve_table("defaultdb", &["tab".to_string()])
        .await
        .expect("resolves");
    node.server
        .lock_table_schema(desc.id, 42)
        .await
        .expect("locks");
    node.server
        .lock_table_schema(desc.id, 42)
        .await
        .expect("idempotent");
    let blocked = [
        "ALTER TABLE tab ADD COLUMN x INT",
        "ALTER TABLE tab DROP COLUMN c",
        "DROP TABLE tab",
        "CREATE UNIQUE INDEX u ON tab (payload)",
        "ALTER TABLE tab RESET (ttl)",
        "ALTER TABLE tab SET (ttl = 'on', ttl_expire_after = '5m')",
        "ALTER TABLE tab ADD COLUMN y INT, SET (fillfactor = 70)",
    ];
    for sql in blocked {
        let e = exec_err(&mut s, sql).await;
        assert_eq!(
            e.message(),
            "this schema change is disallowed on table tab because it is referenced by one or more logical replication jobs",
            "{sql}"
        );
    }
    for sql in [
        "CREATE INDEX idx ON tab (c)",
        "DROP INDEX idx",
        "ALTER TABLE tab SET (fillfactor = 70)",
        "ALTER TABLE tab SET (ttl_job_cron = '@hourly')",
        "ALTER TABLE tab CONFIGURE ZONE USING gc.ttlseconds = 600",
    ] {
        exec(&mut s, sql).await;
    }
    // DML is unaffected.
    exec(&mut s, "INSERT INTO tab VALUES (1, 'p', 1.5)").await;
    node.server
        .unlock_table_schema(desc.id, 42)
        .await
        .expect("unlocks");
    exec(&mut s, "ALTER TABLE tab ADD COLUMN x INT").await;
    node.server
        .unlock_table_schema(desc.id, 42)
        .await
        .expect("idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_privileges() {
    let node = TestNode::start().await;
    let mut root = node.session().await;
    exec(&mut root, "CREATE TABLE t (id INT PRIMARY KEY)").await;
    exec(&mut root, "INSERT INTO t VALUES (1)").await;
    exec(&mut root, "CREATE USER maxroach WITH PASSWORD 'secret'").await;
    assert_eq!(
        exec_err(&mut root, "CREATE USER maxroach").await.code(),
        "42710"
    );
    exec(&mut root, "CREATE USER IF NOT EXISTS maxroach").await;
    // Why: `node` is the internal user that owns DLQ tables; nobody may create or log in as it.
    let e = exec_err(&mut root, "CREATE USER node").await;
    assert_eq!(e.code(), "42939", "{}", e.message());
    assert!(
        node.server.session("node", "defaultdb").await.is_err(),
        "no login as the internal user"
    );
    let mut u = node
        .server
        .session("maxroach", "defaultdb")
        .await
        .expect("session");
    let e = exec_err(&mut u, "SELECT * FROM t").await;
    assert_eq!(e.code(), "42501");
    assert_eq!(
        e.message(),
        "user maxroach does not have SELECT privilege on relation t"
    );
    assert_eq!(
        exec_err(&mut u, "INSERT INTO t VALUES (2)").await.code(),
        "42501"
    );
    assert_eq!(
        exec_err(&mut u, "CREATE TABLE mine (id INT PRIMARY KEY)")
            .await
            .code(),
        "42501"
    );
    assert_eq!(
        exec_err(&mut u, "SET CLUSTER SETTING kv.rangefeed.enabled = true")
            .await
            .code(),
        "42501"
    );
    assert_eq!(
        exec_err(&mut u, "GRANT SYSTEM REPLICATION TO maxroach")
            .await
            .code(),
        "42501"
    );
    exec(&mut root, "GRANT SELECT, INSERT ON TABLE t TO maxroach").await;
    assert_eq!(
        rows(&mut u, "SELECT count(*) FROM t").await,
        vec![vec!["1"]]
    );
    exec(&mut u, "INSERT INTO t VALUES (2)").await;
    assert_eq!(exec_err(&mut u, "DELETE FROM t").await.code(), "42501");
    exec(&mut root, "REVOKE INSERT ON t FROM maxroach").await;
    assert_eq!(
        exec_err(&mut u, "INSERT INTO t VALUES (3)").await.code(),
        "42501"
    );
    let desc = node
        .server
        .resolve_table("defaultdb", &["t".to_string()])
        .await
        .expect("t");
    assert!(
        node.server
            .has_table_privilege("maxroach", &desc, "SELECT")
            .await
            .expect("check")
    );
    assert!(
        !node
            .server
            .has_table_privilege("maxroach", &desc, "REPLICATIONDEST")
            .await
            .expect("check")
    );
    assert!(
        !node
            .server
            .has_system_privilege("maxroach", "REPLICATIONDEST")
            .await
            .expect("check")
    );
    exec(&mut root, "GRANT SYSTEM REPLICATION TO maxroach").await;
    assert!(
        node.server
            .has_system_privilege("maxroach", "REPLICATIONDEST")
            .await
            .expect("check")
    );
    assert!(
        node.server
            .has_system_privilege("maxroach", "REPLICATIONSOURCE")
            .await
            .expect("check")
    );
    assert!(
        node.server
            .has_system_privilege("root", "ANYTHING")
            .await
            .expect("root")
    );
    exec(&mut root, "GRANT admin TO maxroach").await;
    exec(&mut u, "CREATE TABLE mine (id INT PRIMARY KEY)").await;
    // Logins: the user must exist; in secure mode the password must match.
    node.server
        .authenticate("maxroach", None)
        .await
        .expect("insecure mode");
    assert_eq!(
        node.server
            .authenticate("nobody", None)
            .await
            .expect_err("unknown")
            .code(),
        "28P01"
    );
    exec(&mut root, "ALTER USER maxroach WITH PASSWORD 'other'").await;
    exec(&mut root, "DROP USER maxroach").await;
    assert_eq!(
        node.server
            .authenticate("maxroach", None)
            .await
            .expect_err("dropped")
            .code(),
        "28P01"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_statements_and_settings() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    let dbs: Vec<String> = rows(&mut s, "SHOW DATABASES")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    for db in ["defaultdb", "postgres", "system"] {
        assert!(dbs.contains(&db.to_string()), "{dbs:?}");
    }
    exec(
        &mut s,
        "CREATE TABLE t (id INT PRIMARY KEY, s STRING NOT NULL DEFAULT 'x', INDEX (s))",
    )
    .await;
    let cols = rows(&mut s, "SHOW COLUMNS FROM t").await;
    assert_eq!(cols[0][..3], ["id".to_string(), "INT8".into(), "f".into()]);
    assert_eq!(cols[1][3], "'x'");
    let ranges = rows(&mut s, "SHOW RANGES FROM TABLE t").await;
    assert!(!ranges.is_empty());
    assert!(ranges[0][1].starts_with("/Table/"), "{:?}", ranges[0]);
    assert_eq!(ranges[0][3], "1");
    exec(&mut s, "SET application_name = 'myapp'").await;
    assert_eq!(
        rows(&mut s, "SHOW application_name").await,
        vec![vec!["myapp"]]
    );
    exec(&mut s, "SET TIME ZONE '+02:00'").await;
    assert_eq!(
        rows(&mut s, "SELECT '2024-01-01 00:00:00+00'::TIMESTAMPTZ").await,
        vec![vec!["2024-01-01 02:00:00+02"]]
    );
    exec(&mut s, "RESET timezone").await;
    exec(&mut s, "SET extra_float_digits = 3").await;
    exec(&mut s, "SET DateStyle = 'ISO, MDY'").await;
    assert_eq!(exec_err(&mut s, "SET nosuchvar = 1").await.code(), "42704");
    exec(&mut s, "CREATE DATABASE other").await;
    exec(&mut s, "USE other").await;
    assert_eq!(
        rows(&mut s, "SELECT current_database()").await,
        vec![vec!["other"]]
    );
    exec(&mut s, "SET database = defaultdb").await;
    exec(&mut s, "SET CLUSTER SETTING kv.rangefeed.enabled = true").await;
    assert_eq!(
        rows(&mut s, "SHOW CLUSTER SETTING kv.rangefeed.enabled").await,
        vec![vec!["t"]]
    );
    assert_eq!(
        exec_err(&mut s, "SET CLUSTER SETTING no.such.setting = 1")
            .await
            .code(),
        "42704"
    );
    assert!(
        rows(&mut s, "SHOW CLUSTER SETTINGS")
            .await
            .iter()
            .any(|r| r[0] == "kv.rangefeed.enabled")
    );
    exec(&mut s, "CREATE EXTERNAL CONNECTION src AS 'postgresql://maxroach:secret@127.0.0.1:26257?sslmode=disable'").await;
    assert_eq!(
        exec_err(
            &mut s,
            "CREATE EXTERNAL CONNECTION src AS 'postgresql://x@y:1'"
        )
        .await
        .code(),
        "42710"
    );
    assert_eq!(
        rows(&mut s, "SHOW EXTERNAL CONNECTIONS").await,
        vec![vec![
            "src",
            "postgresql://maxroach:redacted@127.0.0.1:26257?sslmode=disable",
            "POSTGRESQL"
        ]]
    );
    assert_eq!(
        node.server
            .external_connection_uri("src")
            .await
            .expect("lookup")
            .as_deref(),
        Some("postgresql://maxroach:secret@127.0.0.1:26257?sslmode=disable")
    );
    exec(&mut s, "DROP EXTERNAL CONNECTION src").await;
    assert_eq!(
        exec_err(&mut s, "DROP EXTERNAL CONNECTION src")
            .await
            .code(),
        "42704"
    );
    let tables = rows(&mut s, "SHOW TABLES").await;
    assert_eq!(
        tables,
        vec![vec!["public", "t", "table", "root", "0", "NULL"]]
    );
    assert_eq!(
        rows(&mut s, "SHOW SCHEMAS")
            .await
            .iter()
            .filter(|r| r[0] == "public")
            .count(),
        1
    );
}

/// A unique entry whose row does not hold its value (left by a writer from before entries
/// were written in the row's transaction) is taken over by the next writer of the value;
/// one whose row holds the value is a unique violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_entries_without_their_row_are_taken_over() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE u (id INT PRIMARY KEY, email STRING UNIQUE)",
    )
    .await;
    let desc = node
        .server
        .resolve_table("defaultdb", &["u".into()])
        .await
        .expect("u");
    let index = desc
        .indexes
        .iter()
        .find(|i| i.unique)
        .expect("unique index")
        .clone();
    let value = ldr_sql::encoding::encode_key_tuple([&ldr_sql::Datum::String("ghost@x".into())]);
    let dead_pk = ldr_sql::encoding::encode_key_tuple([&ldr_sql::Datum::Int(999)]);
    let claim = ldr_kv::RowWrite {
        key: ldr_sql::rowcodec::unique_key(&desc, &index, &value),
        value: Some(dead_pk),
        condition: ldr_kv::Condition::None,
        header: ldr_kv::ValueHeader::default(),
        dependents: vec![],
    };
    node.server
        .kv()
        .write(vec![claim], true)
        .await
        .expect("claim written");
    exec(&mut s, "INSERT INTO u VALUES (1, 'ghost@x')").await;
    assert_eq!(
        rows(&mut s, "SELECT id FROM u WHERE email = 'ghost@x'").await,
        vec![vec!["1"]]
    );
    assert_eq!(
        exec_err(&mut s, "INSERT INTO u VALUES (2, 'ghost@x')")
            .await
            .code(),
        "23505"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_from_show_sources() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE a (id INT PRIMARY KEY); CREATE TABLE b (id INT PRIMARY KEY)",
    )
    .await;
    assert_eq!(
        rows(
            &mut s,
            "SELECT table_name FROM [SHOW TABLES] WHERE table_name != 'a' ORDER BY 1"
        )
        .await,
        vec![vec!["b"]]
    );
    assert_eq!(
        rows(
            &mut s,
            "SELECT count(*) FROM [SHOW JOBS] WHERE job_type = 'LOGICAL REPLICATION'"
        )
        .await,
        vec![vec!["0"]]
    );
    assert_eq!(
        rows(
            &mut s,
            "SELECT variable FROM [SHOW ALL] WHERE variable = 'timezone'"
        )
        .await,
        vec![vec!["timezone"]]
    );
    assert_eq!(
        rows(&mut s, "SELECT column_name FROM [SHOW COLUMNS FROM a]").await,
        vec![vec!["id"]]
    );
}

/// Drivers and tools find tables and columns through `information_schema` and `pg_catalog`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn information_schema_and_pg_tables() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20) NOT NULL, amount DECIMAL(10,2), \
         at TIMESTAMPTZ DEFAULT now(), doc JSONB); CREATE TABLE hidden_from_u (k INT PRIMARY KEY); \
         CREATE SCHEMA app; CREATE TABLE app.t2 (k STRING PRIMARY KEY)",
    )
    .await;
    assert_eq!(
        rows(
            &mut s,
            "SELECT column_name, ordinal_position, is_nullable, data_type, udt_name, \
             character_maximum_length, numeric_precision, numeric_scale, column_default \
             FROM information_schema.columns WHERE table_name = 't' ORDER BY ordinal_position"
        )
        .await,
        vec![
            vec!["id", "1", "NO", "bigint", "int8", "NULL", "64", "0", "NULL"],
            vec![
                "name",
                "2",
                "NO",
                "character varying",
                "varchar",
                "20",
                "NULL",
                "NULL",
                "NULL"
            ],
            vec![
                "amount", "3", "YES", "numeric", "numeric", "NULL", "10", "2", "NULL"
            ],
            vec![
                "at",
                "4",
                "YES",
                "timestamp with time zone",
                "timestamptz",
                "NULL",
                "NULL",
                "NULL",
                "now()"
            ],
            vec![
                "doc", "5", "YES", "jsonb", "jsonb", "NULL", "NULL", "NULL", "NULL"
            ],
        ]
    );
    assert_eq!(
        rows(
            &mut s,
            "SELECT table_catalog, table_schema, table_name, table_type FROM information_schema.tables \
             ORDER BY table_schema, table_name"
        )
        .await,
        vec![
            vec!["defaultdb", "app", "t2", "BASE TABLE"],
            vec!["defaultdb", "public", "hidden_from_u", "BASE TABLE"],
            vec!["defaultdb", "public", "t", "BASE TABLE"],
        ]
    );
    assert_eq!(
        rows(
            &mut s,
            "SELECT schemaname, tablename, tableowner FROM pg_catalog.pg_tables \
             WHERE schemaname = 'public' ORDER BY tablename"
        )
        .await,
        vec![
            vec!["public", "hidden_from_u", "root"],
            vec!["public", "t", "root"]
        ]
    );
    assert_eq!(
        rows(
            &mut s,
            "SELECT schema_name FROM information_schema.schemata WHERE crdb_is_user_defined = 'YES' \
             ORDER BY 1"
        )
        .await,
        vec![vec!["app"], vec!["public"]]
    );
    // Qualified by database, from another database.
    exec(&mut s, "CREATE DATABASE other; USE other").await;
    assert_eq!(
        rows(
            &mut s,
            "SELECT count(*) FROM defaultdb.information_schema.tables"
        )
        .await,
        vec![vec!["3"]]
    );
    assert_eq!(
        rows(&mut s, "SELECT count(*) FROM information_schema.tables").await,
        vec![vec!["0"]]
    );
    // A user sees only the tables they hold a privilege on.
    exec(
        &mut s,
        "USE defaultdb; CREATE USER u; GRANT SELECT ON TABLE t TO u",
    )
    .await;
    let mut u = node
        .server
        .session("u", "defaultdb")
        .await
        .expect("session");
    assert_eq!(
        rows(&mut u, "SELECT table_name FROM information_schema.tables").await,
        vec![vec!["t"]]
    );
    // Other catalog tables still say they are not implemented.
    let e = exec_err(&mut s, "SELECT * FROM pg_catalog.pg_class").await;
    assert_eq!(e.code(), "0A000", "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_configurations_set_the_replication_factor_of_new_tables() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    // Bad zones, keys and counts are refused with PostgreSQL-style errors.
    let code = |e: ldr_sql::SqlError| e.code().to_string();
    assert_eq!(
        code(
            exec_err(
                &mut s,
                "ALTER RANGE nowhere CONFIGURE ZONE USING num_replicas = 3"
            )
            .await
        ),
        "42704"
    );
    assert_eq!(
        code(
            exec_err(
                &mut s,
                "ALTER RANGE default CONFIGURE ZONE USING no_such_key = 3"
            )
            .await
        ),
        "22023"
    );
    for bad in ["0", "8", "three", "-1"] {
        let sql = format!("ALTER RANGE default CONFIGURE ZONE USING num_replicas = {bad}");
        assert_eq!(code(exec_err(&mut s, &sql).await), "22023", "{sql}");
    }
    // Other keys and named zones are accepted (no effect).
    exec(
        &mut s,
        "ALTER RANGE default CONFIGURE ZONE USING gc.ttlseconds = 600, range_max_bytes = 1048576",
    )
    .await;
    exec(
        &mut s,
        "ALTER RANGE meta CONFIGURE ZONE USING num_replicas = 5",
    )
    .await;

    // num_replicas on the default zone: new tables' ranges are Raft groups (one voter on a
    // one-node cluster), served and shown like any range.
    exec(
        &mut s,
        "ALTER RANGE default CONFIGURE ZONE USING num_replicas = 3",
    )
    .await;
    exec(&mut s, "CREATE TABLE r (k INT PRIMARY KEY, v STRING)").await;
    exec(&mut s, "INSERT INTO r VALUES (1, 'a'), (2, 'b'), (3, 'c')").await;
    exec(&mut s, "UPDATE r SET v = 'bb' WHERE k = 2").await;
    assert_eq!(
        rows(&mut s, "SELECT k, v FROM r ORDER BY k").await,
        vec![vec!["1", "a"], vec!["2", "bb"], vec!["3", "c"]]
    );
    let ranges = rows(&mut s, "SHOW RANGES FROM TABLE r").await;
    assert!(!ranges.is_empty());
    for r in &ranges {
        assert_eq!(r[3], "1", "lease_holder {r:?}");
        assert_eq!(r[4], "{1}", "replicas {r:?}");
        assert_eq!(r[5], "{1}", "voting_replicas {r:?}");
    }
    // The current database's ranges, a named database's, and the whole cluster's (the
    // system range first).
    let in_db = rows(&mut s, "SHOW RANGES").await;
    assert_eq!(
        in_db,
        rows(&mut s, "SHOW RANGES FROM DATABASE defaultdb").await
    );
    assert!(ranges.iter().all(|r| in_db.contains(r)), "{in_db:?}");
    let cluster = rows(&mut s, "SHOW CLUSTER RANGES").await;
    assert_eq!(cluster[0][0], "1", "{cluster:?}");
    assert_eq!(cluster[0][1], "/System/", "{cluster:?}");
    assert_eq!(cluster[0][4], "{1}", "{cluster:?}");
    assert!(ranges.iter().all(|r| cluster.contains(r)), "{cluster:?}");
    assert_eq!(
        code(exec_err(&mut s, "SHOW RANGES FROM DATABASE nowhere").await),
        "3D000"
    );
    // A table-level replication factor is stored for the table; on a one-node cluster its
    // ranges keep their single copy (no other node could hold one), as CockroachDB's do.
    exec(
        &mut s,
        "ALTER TABLE r CONFIGURE ZONE USING num_replicas = 5",
    )
    .await;
    exec(
        &mut s,
        "ALTER TABLE r CONFIGURE ZONE USING num_replicas = 1",
    )
    .await;
    exec(&mut s, "ALTER TABLE r CONFIGURE ZONE DISCARD").await;
    assert_eq!(
        code(
            exec_err(
                &mut s,
                "ALTER TABLE r CONFIGURE ZONE USING num_replicas = 0"
            )
            .await
        ),
        "22023"
    );
    exec(
        &mut s,
        "ALTER TABLE r CONFIGURE ZONE USING gc.ttlseconds = 600",
    )
    .await;
    exec(&mut s, "ALTER RANGE default CONFIGURE ZONE DISCARD").await;
    exec(&mut s, "CREATE TABLE plain (k INT PRIMARY KEY)").await;
    let plain = rows(&mut s, "SHOW RANGES FROM TABLE plain").await;
    assert!(
        plain.iter().all(|r| r[4] == format!("{{{}}}", r[3])),
        "{plain:?}"
    );
    exec(&mut s, "DROP TABLE r").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_consistency_reports_every_range() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(&mut s, "CREATE TABLE c (k INT PRIMARY KEY, v STRING)").await;
    exec(&mut s, "INSERT INTO c VALUES (1, 'v'), (2, 'v'), (3, 'v')").await;
    exec(&mut s, "UPSERT INTO c VALUES (1, 'a'), (4, 'd')").await;
    exec(&mut s, "DELETE FROM c WHERE k = 2").await;
    let result = exec(
        &mut s,
        "SELECT * FROM crdb_internal.check_consistency(true, '', '')",
    )
    .await;
    let names: Vec<&str> = result.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "range_id",
            "start_key",
            "start_key_pretty",
            "status",
            "detail",
            "duration"
        ]
    );
    for stats_only in ["true", "false"] {
        let all = rows(
            &mut s,
            &format!(
                "SELECT range_id, start_key_pretty, status, detail \
                 FROM crdb_internal.check_consistency({stats_only}, '', '')"
            ),
        )
        .await;
        assert_eq!(all[0][0], "1", "the system range first: {all:?}");
        assert!(all.len() >= 2, "{all:?}");
        // The system range is a Raft group (of one voter here); a one-node cluster's tables
        // have single-copy ranges.
        assert!(all[0][3].contains("1 replica(s) agree"), "{all:?}");
        for r in &all {
            assert_eq!(r[2], "RANGE_CONSISTENT", "{r:?}");
            assert!(
                r[3].contains("1 replica(s) agree") || r[3].starts_with("single-owner"),
                "{r:?}"
            );
        }
    }
    assert!(
        rows(
            &mut s,
            "SELECT range_id FROM crdb_internal.check_consistency(false, '', '') AS cc \
             WHERE cc.status <> 'RANGE_CONSISTENT'"
        )
        .await
        .is_empty()
    );
    // Single-owner ranges are consistent trivially, and say so.
    let details = rows(
        &mut s,
        "SELECT detail FROM crdb_internal.check_consistency(false, '', '') \
         WHERE detail LIKE 'single-owner%'",
    )
    .await;
    assert!(!details.is_empty());

    // Bad arguments are PostgreSQL-style errors.
    let code = |e: ldr_sql::SqlError| e.code().to_string();
    for (sql, want) in [
        (
            "SELECT * FROM crdb_internal.check_consistency(true)",
            "42883",
        ),
        (
            "SELECT * FROM crdb_internal.check_consistency(true, '', '', '')",
            "42883",
        ),
        (
            "SELECT * FROM crdb_internal.check_consistency(NULL, '', '')",
            "22023",
        ),
        (
            "SELECT * FROM crdb_internal.check_consistency(false, 'b', 'a')",
            "22023",
        ),
        (
            "SELECT * FROM crdb_internal.check_consistency(false, NULL, '')",
            "22023",
        ),
        (
            "SELECT * FROM crdb_internal.check_consistency(false, '', '', k)",
            "42883",
        ),
        (
            "SELECT * FROM crdb_internal.check_consistency(k, '', '')",
            "42703",
        ),
        (
            "SELECT * FROM crdb_internal.check_consistency($1, '', '')",
            "0A000",
        ),
        ("SELECT * FROM crdb_internal.other_function(1)", "0A000"),
    ] {
        assert_eq!(code(exec_err(&mut s, sql).await), want, "{sql}");
    }
    let e = exec_err(
        &mut s,
        "SELECT * FROM crdb_internal.check_consistency(42, '', '')",
    )
    .await;
    assert!(
        e.code().starts_with("42") || e.code().starts_with("22"),
        "{} {}",
        e.code(),
        e.message()
    );

    // Admin only.
    exec(&mut s, "CREATE USER checker").await;
    let mut u = node
        .server
        .session("checker", "defaultdb")
        .await
        .expect("session");
    assert_eq!(
        code(
            exec_err(
                &mut u,
                "SELECT * FROM crdb_internal.check_consistency(true, '', '')"
            )
            .await
        ),
        "42501"
    );
}
