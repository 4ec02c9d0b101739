//! Parser tests: every statement the seed documents and the product contract use parses to
//! the expected shape; bad SQL is 42601; unsupported statements are 0A000.

use super::*;

fn one(sql: &str) -> Statement {
    parse_one(sql).unwrap_or_else(|e| panic!("{sql}: {} {}", e.code(), e.message()))
}

#[test]
fn seed_statements_parse() {
    let seeds = [
        "SET CLUSTER SETTING kv.rangefeed.enabled = true;",
        "CREATE USER maxroach WITH PASSWORD 'secret';",
        "GRANT SYSTEM REPLICATION TO maxroach;",
        "CREATE EXTERNAL CONNECTION source AS 'postgresql://maxroach:secret@127.0.0.1:26257?options=-ccluster%3Dsystem&sslinline=true&sslmode=verify-full&sslrootcert=-----BEGIN+CERTIFICATE-----abc-----END+CERTIFICATE-----%0A';",
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE movr.public.promo_codes ON 'external://source' INTO TABLE movr.public.promo_codes;",
        "CREATE LOGICAL REPLICATION STREAM FROM TABLES (movr.public.a,movr.public.b)  ON 'external://source' INTO TABLES (movr.public.a,movr.public.b);",
        "SHOW LOGICAL REPLICATION JOBS;",
        "SHOW LOGICAL REPLICATION JOBS WITH DETAILS;",
        "SHOW TABLES;",
        "CANCEL JOB 1012877040439033857;",
        "PAUSE JOB 1012877040439033857;",
        "RESUME JOB 1012877040439033857;",
        "SHOW JOBS;",
        "CREATE TABLE crdb_replication.dlq_113_public_promo_codes (
            id INT8 NOT NULL DEFAULT unique_rowid(),
            ingestion_job_id INT8 NOT NULL,
            table_id INT8 NOT NULL,
            dlq_timestamp TIMESTAMPTZ NOT NULL DEFAULT now():::TIMESTAMPTZ,
            dlq_reason STRING NOT NULL,
            mutation_type STRING NULL,
            key_value_bytes BYTES NOT VISIBLE NOT NULL,
            incoming_row JSONB NULL,
            CONSTRAINT dlq_113_public_promo_codes_pkey PRIMARY KEY (ingestion_job_id ASC, dlq_timestamp ASC, id ASC)
        )",
        "ALTER TABLE t SET (ttl_expire_after = '1 day')",
        "ALTER TABLE t RESET (ttl_expire_after)",
        "ALTER TABLE t SET (ttl_disable_changefeed_replication = true)",
        "CREATE INDEX ON t (b)",
        "DROP INDEX t@t_b_idx",
        "ALTER TABLE t CONFIGURE ZONE USING gc.ttlseconds = 600",
        "SELECT cluster_logical_timestamp()",
    ];
    for s in seeds {
        one(s);
    }
}

#[test]
fn ldr_stream_options() {
    let s = one(
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE db.public.t ON 'external://a' INTO TABLE db.public.u \
         WITH mode = 'validated', cursor = '1732250000123456789.0000000000', default function = 'dlq', \
         discard = 'ttl-deletes', label = 'lbl', skip schema check",
    );
    let Statement::CreateLogicalReplicationStream(s) = s else {
        panic!("not a stream")
    };
    assert_eq!(
        s.from_tables,
        vec![vec!["db".to_string(), "public".into(), "t".into()]]
    );
    assert_eq!(
        s.into_tables,
        vec![vec!["db".to_string(), "public".into(), "u".into()]]
    );
    assert_eq!(s.on, "external://a");
    assert_eq!(s.options.mode.as_deref(), Some("validated"));
    assert_eq!(
        s.options.cursor.as_deref(),
        Some("1732250000123456789.0000000000")
    );
    assert_eq!(s.options.default_function.as_deref(), Some("dlq"));
    assert_eq!(s.options.discard.as_deref(), Some("ttl-deletes"));
    assert_eq!(s.options.label.as_deref(), Some("lbl"));
    assert!(s.options.skip_schema_check);
    assert!(
        s.statement
            .starts_with("CREATE LOGICAL REPLICATION STREAM FROM TABLE db.public.t")
    );

    let Statement::CreateLogicalReplicationStream(s) = one(
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE t ON 'external://a' INTO TABLE t WITH OPTIONS (mode = validated)",
    ) else {
        panic!("not a stream")
    };
    assert_eq!(s.options.mode.as_deref(), Some("validated"));

    let e = parse_one(
        "CREATE LOGICAL REPLICATION STREAM FROM DATABASE d ON 'external://a' INTO DATABASE d",
    )
    .expect_err("databases unsupported");
    assert_eq!(e.code(), "0A000");
    assert!(
        e.message()
            .contains("logical replication streams on databases are unsupported")
    );
}

#[test]
fn statement_list_parses() {
    let all = [
        "UPSERT INTO t (a, b) VALUES (1, 2), (3, 4) RETURNING a",
        "UPSERT INTO t VALUES (1, 'x')",
        "UPSERT INTO t SELECT * FROM u",
        "SHOW DATABASES",
        "SHOW TABLES FROM defaultdb",
        "SHOW CREATE TABLE t",
        "SHOW CREATE t",
        "SHOW COLUMNS FROM db.public.t",
        "SHOW INDEXES FROM t",
        "SHOW INDEX FROM t",
        "SHOW RANGES FROM TABLE t",
        "SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE t",
        "SHOW JOB 12",
        "RESET CLUSTER SETTING kv.rangefeed.enabled",
        "SET CLUSTER SETTING logical_replication.consumer.retry_queue_duration = '1m'",
        "SET CLUSTER SETTING x.y = DEFAULT",
        "SHOW CLUSTER SETTING kv.rangefeed.enabled",
        "SHOW CLUSTER SETTINGS",
        "SHOW ALL CLUSTER SETTINGS",
        "CREATE USER IF NOT EXISTS u",
        "CREATE USER u WITH LOGIN PASSWORD 'p'",
        "CREATE USER u LOGIN PASSWORD NULL",
        "ALTER USER u WITH PASSWORD 'q'",
        "DROP USER u",
        "DROP USER IF EXISTS u, v",
        "GRANT SYSTEM REPLICATIONSOURCE, REPLICATIONDEST TO u",
        "REVOKE SYSTEM VIEWJOB FROM u",
        "GRANT SELECT, INSERT ON TABLE t TO u",
        "GRANT ALL ON t TO u, v",
        "GRANT ALL PRIVILEGES ON TABLE db.public.t TO u",
        "REVOKE DELETE ON t FROM u",
        "GRANT REPLICATIONDEST ON TABLE t TO u",
        "GRANT admin TO u",
        "GRANT CREATE ON DATABASE defaultdb TO u",
        "CREATE EXTERNAL CONNECTION IF NOT EXISTS c AS 'postgresql://root@127.0.0.1:1'",
        "DROP EXTERNAL CONNECTION c",
        "SHOW EXTERNAL CONNECTIONS",
        "BEGIN",
        "BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "START TRANSACTION",
        "COMMIT",
        "END",
        "ROLLBACK",
        "SAVEPOINT cockroach_restart",
        "RELEASE SAVEPOINT cockroach_restart",
        "ROLLBACK TO SAVEPOINT cockroach_restart",
        "SET application_name = 'x'",
        "SET application_name TO x",
        "SET TIME ZONE 'UTC'",
        "SET search_path = public, other",
        "SET extra_float_digits = 3",
        "SET DateStyle = 'ISO, MDY'",
        "SET database = defaultdb",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "RESET application_name",
        "RESET ALL",
        "SHOW application_name",
        "SHOW TIME ZONE",
        "SHOW ALL",
        "SHOW TRANSACTION ISOLATION LEVEL",
        "USE movr",
        "CREATE DATABASE IF NOT EXISTS movr",
        "CREATE DATABASE d ENCODING = 'UTF8'",
        "DROP DATABASE movr CASCADE",
        "CREATE TABLE IF NOT EXISTS db.public.t (id INT PRIMARY KEY, s STRING NOT NULL DEFAULT 'x', INDEX (s))",
        "CREATE TABLE t (a INT8, b VARCHAR(10) UNIQUE, c DECIMAL(10,2) CHECK (c > 0), d DOUBLE PRECISION, \
         e TIMESTAMP WITH TIME ZONE DEFAULT now(), f UUID DEFAULT gen_random_uuid(), g JSONB, h BYTES, i DATE, \
         j INTERVAL, k BOOL, l INT4, m INT2, n FLOAT4, o TIMESTAMP, p TEXT, \
         CONSTRAINT t_pk PRIMARY KEY (a ASC, b DESC), UNIQUE INDEX t_idx (c) STORING (d), \
         CONSTRAINT fk FOREIGN KEY (a) REFERENCES p (id) ON DELETE RESTRICT, CHECK (a > 0), FAMILY f1 (a, b))",
        "CREATE TABLE c (id SERIAL PRIMARY KEY, pid INT REFERENCES p (id), x INT DEFAULT 1 NOT NULL)",
        "CREATE TABLE s (id INT PRIMARY KEY) WITH (ttl_expire_after = '3 days')",
        "CREATE UNIQUE INDEX IF NOT EXISTS idx ON t (a, b DESC) STORING (c)",
        "CREATE INDEX idx ON db.public.t USING btree (a)",
        "DROP INDEX IF EXISTS idx",
        "DROP INDEX db.public.t@idx, t@i2",
        "DROP TABLE IF EXISTS t, u CASCADE",
        "ALTER TABLE t ADD COLUMN x INT DEFAULT 5",
        "ALTER TABLE t ADD x STRING",
        "ALTER TABLE IF EXISTS t DROP COLUMN x",
        "ALTER TABLE t DROP COLUMN IF EXISTS x CASCADE",
        "ALTER TABLE t SET (ttl_expire_after = '1 day', ttl_job_cron = '@hourly')",
        "ALTER TABLE t RESET (ttl)",
        "ALTER TABLE t ALTER COLUMN x SET DEFAULT 3",
        "ALTER TABLE t ALTER x DROP NOT NULL",
        "ALTER TABLE t ADD CONSTRAINT ck CHECK (x > 1)",
        "ALTER TABLE t DROP CONSTRAINT ck",
        "INSERT INTO t VALUES (1, DEFAULT) ON CONFLICT (a) DO UPDATE SET b = excluded.b RETURNING *",
        "INSERT INTO t (a) VALUES (1) ON CONFLICT DO NOTHING",
        "INSERT INTO t (a) SELECT a FROM u WHERE a > 1",
        "INSERT INTO t DEFAULT VALUES",
        "UPDATE t SET a = a + 1, b = 'x' WHERE id = $1 RETURNING crdb_internal_mvcc_timestamp",
        "DELETE FROM t WHERE id IN (1, 2, 3) RETURNING *",
        "SELECT DISTINCT a, count(*) FROM t WHERE b BETWEEN 1 AND 2 GROUP BY a HAVING count(*) > 1 ORDER BY 2 DESC LIMIT 5 OFFSET 1",
        "SELECT now() + interval '1 day', '1'::INT8, 1:::INT8, CAST(1 AS STRING), e'a\\nb', b'ab', x'ff'",
        "SELECT crdb_internal_mvcc_timestamp, crdb_internal_origin_timestamp FROM t",
        "SELECT * FROM t WHERE s LIKE 'a%' OR s ILIKE 'B_' AND NOT (x IS NULL)",
        "TRUNCATE t",
        "select 1; select 2;; select 3",
    ];
    for s in all {
        parse(s).unwrap_or_else(|e| panic!("{s}: {} {}", e.code(), e.message()));
    }
    assert_eq!(
        parse("select 1; select 2;; select 3").expect("three").len(),
        3
    );
    assert_eq!(parse("  ; ; ").expect("empty").len(), 0);
}

#[test]
fn shapes() {
    let Statement::CreateTable(ct) =
        one("CREATE TABLE \"MyTable\" (Id INT PRIMARY KEY, \"Quoted\" STRING)")
    else {
        panic!("not create table")
    };
    assert_eq!(ct.name, vec!["MyTable".to_string()]);
    let TableElement::Column(c) = &ct.elements[0] else {
        panic!("column")
    };
    assert_eq!(c.name, "id");
    assert!(c.primary_key);
    assert_eq!(c.type_name, "INT");
    let TableElement::Column(c) = &ct.elements[1] else {
        panic!("column")
    };
    assert_eq!(c.name, "Quoted");

    let Statement::Insert(ins) = one("UPSERT INTO t (a, b) VALUES (1, 2), (3, 4)") else {
        panic!("insert")
    };
    assert!(ins.upsert);
    assert_eq!(ins.columns, vec!["a".to_string(), "b".into()]);
    let InsertSource::Values(rows) = ins.source else {
        panic!("values")
    };
    assert_eq!(rows.len(), 2);

    let Statement::Insert(ins) =
        one("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET b = excluded.b")
    else {
        panic!("insert")
    };
    assert!(
        matches!(ins.on_conflict, Some(OnConflict::DoUpdate { ref columns, .. }) if columns == &vec!["a".to_string()])
    );

    let Statement::DropIndex { names, .. } = one("DROP INDEX db.public.t@idx") else {
        panic!("drop index")
    };
    assert_eq!(
        names[0].table.as_deref(),
        Some(&["db".to_string(), "public".into(), "t".into()][..])
    );
    assert_eq!(names[0].index, vec!["idx".to_string()]);

    let Statement::SetClusterSetting { name, value } =
        one("SET CLUSTER SETTING kv.rangefeed.enabled = true")
    else {
        panic!("setting")
    };
    assert_eq!(name, "kv.rangefeed.enabled");
    assert!(value.is_some());

    let Statement::GrantSystem { privileges, users } = one("GRANT SYSTEM REPLICATION TO maxroach")
    else {
        panic!("grant")
    };
    assert_eq!(privileges, vec!["REPLICATION".to_string()]);
    assert_eq!(users, vec!["maxroach".to_string()]);

    let Statement::CreateUser(spec) = one("CREATE USER maxroach WITH PASSWORD 'secret'") else {
        panic!("user")
    };
    assert_eq!(spec.password, Some(Some("secret".into())));

    let Statement::SetVar { name, value } = one("SET search_path = public, other") else {
        panic!("set")
    };
    assert_eq!(name, "search_path");
    assert_eq!(value.map(|v| v.len()), Some(2));

    let Statement::ShowTables { from } = one("SHOW TABLES FROM movr") else {
        panic!("show tables")
    };
    assert_eq!(from, Some(vec!["movr".to_string()]));
}

#[test]
fn syntax_errors_are_42601() {
    for bad in [
        "SELEC 1",
        "CREATE TABLE t (",
        "SELECT * FROM",
        "INSERT INTO t VALUES (1",
        "SHOW",
        "GRANT SYSTEM TO u",
        "CREATE TABLE t (a INT,, b INT)",
    ] {
        let e = parse(bad).expect_err(bad);
        assert_eq!(e.code(), "42601", "{bad}: {}", e.message());
        assert!(
            e.message().starts_with("at or near \""),
            "{bad}: {}",
            e.message()
        );
        assert!(
            e.message().ends_with("\": syntax error"),
            "{bad}: {}",
            e.message()
        );
    }
    assert_eq!(
        parse("SELEC 1").expect_err("typo").message(),
        "at or near \"SELEC\": syntax error"
    );
}

#[test]
fn unsupported_statements_are_0a000() {
    for s in [
        "EXPLAIN SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "CREATE TABLE t (a INT PRIMARY KEY USING HASH)",
        "CREATE INDEX ON t (a) WHERE a > 1",
    ] {
        let e = parse(s).expect_err(s);
        assert_eq!(e.code(), "0A000", "{s}: {}", e.message());
    }
}

#[test]
fn typed_annotation_rewrite_keeps_strings() {
    assert_eq!(
        rewrite_typed_annotations("SELECT ':::', 1:::INT8 -- :::"),
        "SELECT ':::', 1::INT8 -- :::"
    );
    assert_eq!(
        rewrite_typed_annotations("SELECT 'é':::STRING"),
        "SELECT 'é'::STRING"
    );
    parse_expr("now():::TIMESTAMPTZ").expect("annotation parses");
}

#[test]
fn show_sources() {
    let Statement::SelectFromShow { query: _, shows } =
        one("SELECT job_id FROM [SHOW JOBS] WHERE job_type = '[SHOW x]'")
    else {
        panic!("not a select from show")
    };
    assert_eq!(shows, vec![Statement::ShowJobs]);
    let (text, found) = extract_show_sources("SELECT * FROM [ SHOW TABLES ] AS t, [SHOW JOB 1]");
    assert_eq!(text, "SELECT * FROM __crdb_show_0 AS t, __crdb_show_1");
    assert_eq!(
        found,
        vec![" SHOW TABLES ".to_string(), "SHOW JOB 1".into()]
    );
    assert_eq!(extract_show_sources("SELECT '[SHOW JOBS]'").1.len(), 0);
}
