//! The SQL layer's replication surface: `CREATE LOGICAL REPLICATION STREAM` through a test
//! implementation of the hook, SHOW JOBS / SHOW LOGICAL REPLICATION JOBS over real job
//! records, job control, and the row codec against real KV data.
mod common;

use std::sync::Arc;

use common::*;
use ldr_jobs::JobType;
use ldr_kv::{Condition, ValueHeader};
use ldr_sql::exec::{LdrStreamRequest, LogicalReplicationJobInfo, ReplicationStatements};
use ldr_sql::{Datum, rowcodec};
use parking_lot::Mutex;

/// Creates a job record for every request, as the ingest crate would (without running it).
struct FakeIngest {
    jobs: Arc<ldr_jobs::Registry>,
    seen: Mutex<Vec<LdrStreamRequest>>,
}

/// A job that runs until told to stop.
struct IdleResumer;

#[async_trait::async_trait]
impl ldr_jobs::Resumer for IdleResumer {
    async fn resume(
        &self,
        mut ctx: ldr_jobs::JobContext,
        _record: ldr_jobs::JobRecord,
    ) -> ldr_jobs::ResumeOutcome {
        while !*ctx.stop.borrow() {
            if ctx.stop.changed().await.is_err() {
                break;
            }
        }
        ldr_jobs::ResumeOutcome::Succeeded
    }

    async fn on_fail_or_cancel(
        &self,
        _ctx: ldr_jobs::JobContext,
        _record: ldr_jobs::JobRecord,
    ) -> Result<(), String> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl ReplicationStatements for FakeIngest {
    async fn create_logical_replication_stream(&self, r: LdrStreamRequest) -> ldr_sql::Result<i64> {
        let tables: Vec<String> = r.into.iter().map(|t| t.qualified()).collect();
        let payload = serde_json::json!({
            "tables": tables,
            "replication_start_time": "1700000000000000000.0000000000",
            "conflict_resolution_type": "LWW",
            "command": r.statement.statement,
        });
        let id = self
            .jobs
            .create(
                JobType::LogicalReplication,
                format!(
                    "LOGICAL REPLICATION STREAM into {} from external://{}",
                    tables.join(", "),
                    r.external_connection
                ),
                r.user.clone(),
                payload,
                serde_json::json!({"replicated_time": null}),
            )
            .await?;
        self.seen.lock().push(r);
        Ok(id)
    }

    fn describe_job(&self, job: &ldr_jobs::JobRecord) -> Option<LogicalReplicationJobInfo> {
        let text = |k: &str| -> Option<String> { job.payload.get(k)?.as_str().map(String::from) };
        let ts = |v: Option<&serde_json::Value>| -> Option<ldr_types::Timestamp> {
            v?.as_str()?.parse().ok()
        };
        Some(LogicalReplicationJobInfo {
            tables: serde_json::from_value(job.payload.get("tables")?.clone()).ok()?,
            replicated_time: ts(job.progress.get("replicated_time")),
            replication_start_time: ts(job.payload.get("replication_start_time")),
            conflict_resolution_type: text("conflict_resolution_type")?,
            command: text("command")?,
        })
    }
}

/// Polls `SHOW JOB` until the job reaches one of `want` (the registry loop acts every 500ms).
async fn wait_status(s: &mut ldr_sql::exec::Session, job_id: i64, want: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let st = rows(s, &format!("SHOW JOB {job_id}")).await[0][4].clone();
        if want.contains(&st.as_str()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {job_id} stayed {st}, wanted {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_logical_replication_stream_checks_and_hook() {
    let node = TestNode::start().await;
    let ingest = Arc::new(FakeIngest {
        jobs: node.server.jobs().clone(),
        seen: Mutex::new(vec![]),
    });
    node.server.set_replication_statements(ingest.clone());
    node.server
        .jobs()
        .register_resumer(JobType::LogicalReplication, Arc::new(IdleResumer));
    let mut s = node.session().await;
    exec(&mut s, "CREATE TABLE t (id INT PRIMARY KEY, v STRING)").await;
    exec(&mut s, "CREATE TABLE p (id INT PRIMARY KEY)").await;
    exec(
        &mut s,
        "CREATE TABLE c (id INT PRIMARY KEY, pid INT REFERENCES p (id))",
    )
    .await;

    let e = exec_err(
        &mut s,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE t ON 'postgresql://x@y:1' INTO TABLE t",
    )
    .await;
    assert_eq!(e.message(), "uri must be an external connection");
    let e = exec_err(
        &mut s,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE t ON 'external://nope' INTO TABLE t",
    )
    .await;
    assert_eq!(e.code(), "42704");
    exec(&mut s, "CREATE EXTERNAL CONNECTION source AS 'postgresql://root@127.0.0.1:1/defaultdb?sslmode=disable'").await;
    let e = exec_err(
        &mut s,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLES (t, p) ON 'external://source' INTO TABLE t",
    )
    .await;
    assert_eq!(
        e.message(),
        "the same number of source and destination tables must be specified"
    );
    let e = exec_err(
        &mut s,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE t ON 'external://source' INTO TABLE missing",
    )
    .await;
    assert_eq!(e.code(), "42P01");
    let e = exec_err(
        &mut s,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE c ON 'external://source' INTO TABLE c",
    )
    .await;
    assert_eq!(
        e.message(),
        "foreign keys are only supported with MODE = 'validated'"
    );
    let e = exec_err(&mut s, "CREATE LOGICAL REPLICATION STREAM FROM TABLE t ON 'external://source' INTO TABLE t WITH mode = 'eventual'").await;
    assert_eq!(e.code(), "22023");
    let e = exec_err(
        &mut s,
        "CREATE LOGICAL REPLICATION STREAM FROM DATABASE d ON 'external://source' INTO DATABASE d",
    )
    .await;
    assert_eq!(
        e.message(),
        "unimplemented: logical replication streams on databases are unsupported"
    );

    // Privileges: REPLICATIONDEST (system, or on every destination table).
    exec(&mut s, "CREATE USER repl").await;
    let mut u = node
        .server
        .session("repl", "defaultdb")
        .await
        .expect("session");
    let e = exec_err(
        &mut u,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE t ON 'external://source' INTO TABLE t",
    )
    .await;
    assert_eq!(e.code(), "42501");
    assert_eq!(
        e.message(),
        "failed privilege check: table or system level REPLICATIONDEST privilege required: user repl does not have REPLICATIONDEST privilege on relation t"
    );
    exec(&mut s, "GRANT REPLICATIONDEST ON TABLE t TO repl").await;
    let r = exec(&mut u, "CREATE LOGICAL REPLICATION STREAM FROM TABLE db1.public.t ON 'external://source' INTO TABLE t WITH mode = validated, cursor = '1700000000000000000.0000000001', label = 'l1'").await;
    assert_eq!(r.columns[0].name, "job_id");
    let job_id = match r.rows[0][0] {
        Datum::Int(i) => i,
        ref other => panic!("job id {other:?}"),
    };
    {
        let seen = ingest.seen.lock();
        let req = &seen[0];
        assert_eq!(req.into[0].qualified(), "defaultdb.public.t");
        assert_eq!(
            req.statement.from_tables,
            vec![vec!["db1".to_string(), "public".into(), "t".into()]]
        );
        assert_eq!(
            req.source_uri,
            "postgresql://root@127.0.0.1:1/defaultdb?sslmode=disable"
        );
        assert!(req.validated);
        assert_eq!(
            req.cursor,
            Some(ldr_types::Timestamp::new(1_700_000_000_000_000_000, 1))
        );
        assert_eq!(req.statement.options.label.as_deref(), Some("l1"));
        assert_eq!(req.user, "repl");
        assert!(
            req.statement
                .statement
                .starts_with("CREATE LOGICAL REPLICATION STREAM FROM TABLE db1.public.t")
        );
    }
    exec(&mut s, "GRANT SYSTEM REPLICATIONDEST TO repl").await;
    exec(&mut u, "CREATE LOGICAL REPLICATION STREAM FROM TABLE c ON 'external://source' INTO TABLE c WITH OPTIONS (mode = 'validated')").await;

    // SHOW LOGICAL REPLICATION JOBS reads payload and progress.
    let ldr = rows(&mut s, "SHOW LOGICAL REPLICATION JOBS").await;
    assert_eq!(ldr.len(), 2);
    let mine = ldr
        .iter()
        .find(|r| r[0] == job_id.to_string())
        .expect("the job is listed");
    assert_eq!(
        mine[1..],
        [
            "running".to_string(),
            "{defaultdb.public.t}".into(),
            "NULL".into()
        ]
    );
    let details = exec(&mut s, "SHOW LOGICAL REPLICATION JOBS WITH DETAILS").await;
    let names: Vec<&str> = details.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "job_id",
            "status",
            "tables",
            "replicated_time",
            "replication_start_time",
            "conflict_resolution_type",
            "command"
        ]
    );
    let row = details
        .rows
        .iter()
        .find(|r| r[0] == Datum::Int(job_id))
        .expect("listed");
    assert_eq!(row[4].to_text(0).as_deref(), Some("2023-11-14 22:13:20+00"));
    assert_eq!(row[5], Datum::String("LWW".into()));

    // SHOW JOBS has CockroachDB's columns; job control goes through the registry.
    let jobs = exec(&mut s, "SHOW JOBS").await;
    let names: Vec<&str> = jobs.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "job_id",
            "job_type",
            "description",
            "user_name",
            "status",
            "running_status",
            "created",
            "finished",
            "fraction_completed",
            "error",
            "coordinator_id"
        ]
    );
    let row = jobs
        .rows
        .iter()
        .find(|r| r[0] == Datum::Int(job_id))
        .expect("listed");
    assert_eq!(row[1], Datum::String("LOGICAL REPLICATION".into()));
    assert_eq!(row[3], Datum::String("repl".into()));
    exec(&mut s, &format!("PAUSE JOB {job_id}")).await;
    wait_status(&mut s, job_id, &["paused"]).await;
    exec(&mut s, &format!("RESUME JOB {job_id}")).await;
    exec(&mut s, &format!("CANCEL JOB {job_id}")).await;
    wait_status(&mut s, job_id, &["canceled"]).await;
    let e = exec_err(&mut s, "PAUSE JOB 12345").await;
    assert_eq!(e.message(), "job with ID 12345 does not exist");
    // A user without VIEWJOB sees only their own jobs; CONTROLJOB is needed for others'.
    exec(&mut s, "CREATE USER viewer").await;
    let mut v = node
        .server
        .session("viewer", "defaultdb")
        .await
        .expect("session");
    assert!(rows(&mut v, "SHOW JOBS").await.is_empty());
    assert_eq!(
        exec_err(&mut v, &format!("PAUSE JOB {job_id}"))
            .await
            .code(),
        "42501"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_codec_against_real_kv() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE src (id INT PRIMARY KEY, email STRING UNIQUE, city STRING, INDEX (city))",
    )
    .await;
    exec(
        &mut s,
        "CREATE TABLE dst (id INT PRIMARY KEY, city STRING, email STRING UNIQUE, INDEX (city))",
    )
    .await;
    exec(
        &mut s,
        "INSERT INTO src VALUES (1, 'a@x', 'nyc'), (2, 'b@x', 'sf')",
    )
    .await;
    let src = node
        .server
        .resolve_table("defaultdb", &["src".into()])
        .await
        .expect("src");
    let dst = node
        .server
        .resolve_table("defaultdb", &["dst".into()])
        .await
        .expect("dst");
    let kv = node.server.kv().clone();

    // Read the source's primary index KVs and decode them by name.
    let mut decoded = Vec::new();
    for shard in 0..src.shard_count {
        let span = ldr_types::keys::index_span(src.id, shard, ldr_types::PRIMARY_INDEX_ID);
        for kvv in kv.scan(&span, None, 0).await.expect("scan") {
            let row =
                rowcodec::decode_row(&src, &kvv.key, kvv.version.value.as_deref().expect("live"))
                    .expect("decodes");
            decoded.push(rowcodec::named_row(&src, &row));
        }
    }
    assert_eq!(decoded.len(), 2);

    // Apply them to the destination (other column order) with LWW writes, as the immediate
    // applier does, and read them back through SQL, index lookups included.
    let origin_ts = node.server.kv().clock().now();
    for named in &decoded {
        let row = rowcodec::remap_row(&dst, named).expect("remaps");
        let header = ValueHeader {
            origin_id: 77,
            origin_ts,
            omit_in_rangefeeds: false,
        };
        let w = rowcodec::lww_writes(&dst, Some(&row), None, header, None, kv.origin_id())
            .expect("builds");
        let mut batch = vec![w.row];
        batch.extend(w.unique_puts);
        let out = kv.write(batch, false).await.expect("writes");
        assert!(
            out.iter()
                .all(|(_, o)| matches!(o, ldr_kv::RowOutcome::Written { .. })),
            "{out:?}"
        );
        assert!(matches!(
            rowcodec::lww_writes(&dst, Some(&row), None, header, None, 0)
                .expect("builds")
                .row
                .condition,
            Condition::Lww { .. }
        ));
    }
    assert_eq!(
        rows(&mut s, "SELECT id, city, email FROM dst ORDER BY id").await,
        vec![vec!["1", "nyc", "a@x"], vec!["2", "sf", "b@x"]]
    );
    assert_eq!(
        rows(&mut s, "SELECT id FROM dst WHERE city = 'sf'").await,
        vec![vec!["2"]]
    );
    assert_eq!(
        rows(&mut s, "SELECT id FROM dst WHERE email = 'a@x'").await,
        vec![vec!["1"]]
    );
    let origin = one(
        &mut s,
        "SELECT crdb_internal_origin_timestamp FROM dst WHERE id = 1",
    )
    .await;
    assert_eq!(origin.to_text(0), Some(origin_ts.to_decimal_string()));
    // The replicated unique entries are enforced for local writes too.
    assert_eq!(
        exec_err(&mut s, "INSERT INTO dst VALUES (3, 'x', 'a@x')")
            .await
            .code(),
        "23505"
    );
    // Fingerprints agree between the tables despite different column orders and ids.
    let fs = rows(&mut s, "SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE src").await;
    let fd = rows(&mut s, "SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE dst").await;
    assert_eq!(
        fs.iter().map(|r| &r[1]).collect::<Vec<_>>(),
        fd.iter().map(|r| &r[1]).collect::<Vec<_>>()
    );
    // The DLQ's JSON form.
    let json = rowcodec::row_to_json(
        &src,
        &rowcodec::remap_row(&src, &decoded[0]).expect("remaps"),
    );
    assert!(json.get("email").is_some() && json.get("id").is_some());
    // Schema compatibility between the two (column order differs: rejected like CockroachDB).
    let e = ldr_sql::validation::check_compatibility(&src, &dst, false).expect_err("order differs");
    assert!(
        e.message()
            .contains("does not match source table src column"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_writes_check_constraints_and_lww() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(&mut s, "CREATE TABLE p (id INT PRIMARY KEY)").await;
    exec(
        &mut s,
        "CREATE TABLE c (id INT PRIMARY KEY, pid INT REFERENCES p (id), v INT CHECK (v > 0))",
    )
    .await;
    exec(&mut s, "INSERT INTO p VALUES (1)").await;
    let c = node
        .server
        .resolve_table("defaultdb", &["c".into()])
        .await
        .expect("c");
    let kv = node.server.kv().clone();
    let write =
        |id: i64, pid: i64, v: i64, ts: ldr_types::Timestamp| ldr_sql::exec::ValidatedWrite {
            table: c.clone(),
            pk: vec![Datum::Int(id)],
            new: Some(vec![Datum::Int(id), Datum::Int(pid), Datum::Int(v)]),
            header: ValueHeader {
                origin_id: 5,
                origin_ts: ts,
                omit_in_rangefeeds: false,
            },
            local_origin_id: kv.origin_id(),
        };
    let t1 = kv.clock().now();
    let e = node
        .server
        .apply_validated(write(1, 9, 1, t1))
        .await
        .expect_err("fk");
    assert_eq!(e.code(), "23503");
    let e = node
        .server
        .apply_validated(write(1, 1, -1, t1))
        .await
        .expect_err("check");
    assert_eq!(e.code(), "23514");
    let t2 = kv.clock().now();
    assert!(matches!(
        node.server
            .apply_validated(write(1, 1, 5, t2))
            .await
            .expect("applies"),
        ldr_sql::exec::ValidatedOutcome::Applied(_)
    ));
    // An older version loses.
    assert!(matches!(
        node.server
            .apply_validated(write(1, 1, 7, t1))
            .await
            .expect("lww"),
        ldr_sql::exec::ValidatedOutcome::LwwLost(_)
    ));
    assert_eq!(
        rows(&mut s, "SELECT v FROM c WHERE id = 1").await,
        vec![vec!["5"]]
    );
}
