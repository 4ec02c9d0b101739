//! The benchmark harness end to end at tiny sizes: it must run every phase, write a JSON
//! report with the contract's keys and a plot, and judge convergence. Speed is not checked
//! (the machine is shared and loaded); shapes and invariants are.
//!
//! - `bench_postgres_and_rocksdb`: the PostgreSQL peer (with `fsync = on`, as
//!   `--raft-log-sync=on` runs it) and the storage limit, without ldr;
//! - `bench_ldr_with_postgres` (nodes=1, sync off, immediate mode: the defaults) /
//!   `bench_ldr_without_postgres_two_nodes` (sync on, validated mode): the whole run against
//!   real `ldr` processes, with and without the PostgreSQL peer; the conflict phase must
//!   converge, and the report must say which durability, replication factor and LDR apply
//!   mode ran (the mode as the destination's job shows it).

use std::time::Duration;

use ldr_sim::bench::{self, ApplyMode, BenchOptions};
use ldr_sim::workload;

fn options(out: &std::path::Path) -> BenchOptions {
    let seed = workload::seed_from_env();
    eprintln!("SEED={seed} (set SEED to reproduce)");
    BenchOptions {
        rows: 2000,
        duration: Duration::from_secs(3),
        steady_rates: vec![200],
        out_dir: out.to_path_buf(),
        rocksdb_keys: Some(20_000),
        heartbeat_interval: Duration::from_millis(50),
        conflict_keys: 20,
        conflict_rate: 100,
        concurrency: 2,
        seed,
        quiet: true,
        command: "test".into(),
        ..BenchOptions::default()
    }
}

/// Runs the benchmark with an overall deadline (a hang must fail the test, not block CI).
async fn run(options: BenchOptions) -> bench::BenchOutcome {
    tokio::time::timeout(Duration::from_secs(900), Box::pin(bench::run(options)))
        .await
        .expect("the tiny benchmark finishes within 15 minutes")
        .expect("bench runs")
}

/// Reads the written JSON back and checks every contract key exists.
fn check_contract(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("report written");
    let json: serde_json::Value = serde_json::from_str(&text).expect("report is JSON");
    for key in [
        "/catchup/ldr_rows_per_s",
        "/catchup/postgres_rows_per_s",
        "/steady/commit_latency_ms/p50",
        "/steady/commit_latency_ms/p99",
        "/steady/commit_latency_ms/max",
        "/steady/lag_ms/p50",
        "/steady/lag_ms/p99",
        "/steady/lag_ms/max",
        "/steady/postgres_lag_ms/p50",
        "/steady/postgres_lag_ms/p99",
        "/steady/postgres_lag_ms/max",
        "/rocksdb/put_per_s",
        "/rocksdb/read_check_write_per_s",
        "/machine/cores",
        "/machine/memory",
    ] {
        assert!(json.pointer(key).is_some(), "report lacks {key}: {text}");
    }
    assert!(
        json.pointer("/conflicts/converged")
            .is_some_and(|v| v.is_boolean()),
        "{text}"
    );
    json
}

/// The report says which durability ran (read back from the servers) and, with ldr, the
/// replication factor it measured and what replication cost per row.
fn check_durability(json: &serde_json::Value, sync: bool, postgres: bool, factor: Option<u64>) {
    let on_off = if sync { "on" } else { "off" };
    assert_eq!(json["config"]["raft_log_sync"], sync, "{json}");
    assert_eq!(json["durability"]["raft_log_sync"], on_off, "{json}");
    assert!(
        json["durability"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("sync {on_off}:"))),
        "{json}"
    );
    if postgres {
        assert_eq!(json["durability"]["postgres_fsync"], on_off, "{json}");
        assert_eq!(json["durability"]["postgres_synchronous_commit"], "on");
    } else {
        assert!(json["durability"]["postgres_fsync"].is_null(), "{json}");
    }
    match factor {
        Some(f) => {
            assert_eq!(
                json["durability"]["disable_synchronization_unsafe"], !sync,
                "{json}"
            );
            assert_eq!(json["replication"]["factor"], f, "{json}");
            assert_eq!(json["replication"]["factor_max"], f, "{json}");
            positive(json, "/replication/kv_ranges");
            positive(json, "/replication/cpu_us_per_row_catchup");
            positive(json, "/replication/cpu_us_per_row_steady");
            positive(json, "/replication/commit_latency_ms/p99");
            positive(json, "/replication/write_latency_ms/p99");
            positive(json, "/steady/ldr_write_latency_ms/p50");
            positive(json, "/replication/idle_cpu_cores");
            assert!(
                json["replication"]["cpu_us_per_row_steady_above_idle"]
                    .as_f64()
                    .is_some_and(|v| v >= 0.0
                        && v <= json["replication"]["cpu_us_per_row_steady"]
                            .as_f64()
                            .unwrap_or(0.0)),
                "{json}"
            );
        }
        None => {
            assert!(json["replication"]["factor"].is_null(), "{json}");
            assert!(json["durability"]["disable_synchronization_unsafe"].is_null());
        }
    }
}

fn positive(json: &serde_json::Value, key: &str) -> f64 {
    let v = json
        .pointer(key)
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| panic!("{key} is not a number in {json}"));
    assert!(v > 0.0 && v.is_finite(), "{key} = {v}");
    v
}

#[tokio::test]
async fn bench_postgres_and_rocksdb() {
    let out = tempfile::tempdir().expect("tempdir");
    let outcome = run(BenchOptions {
        skip_ldr: true,
        raft_log_sync: true,
        ..options(out.path())
    })
    .await;
    let report = &outcome.report;
    eprintln!("{}", bench::render_table(report));
    assert!(
        report.ok(),
        "{:?}\n{}",
        report.failures,
        bench::render_table(report)
    );
    let json = check_contract(&outcome.json_path);
    positive(&json, "/catchup/postgres_rows_per_s");
    positive(&json, "/rocksdb/put_per_s");
    positive(&json, "/rocksdb/read_check_write_per_s");
    positive(&json, "/steady/postgres_lag_ms/p99");
    positive(&json, "/steady/postgres_write_latency_ms/p99");
    check_durability(&json, true, true, None);
    assert!(json["catchup"]["ldr_rows_per_s"].is_null());
    assert!(json["steady"]["commit_latency_ms"]["p99"].is_null());
    // Every acknowledged heartbeat of the 3 s phase was measured (one every 50 ms; ticks
    // may be skipped when the machine stalls; a write whose acknowledgement was lost counts
    // too).
    let steady = &report.steady.first;
    assert!(steady.postgres_lag_ms.count >= 20, "{steady:?}");
    assert!(steady.postgres_lag_ms.count >= steady.postgres_heartbeats_sent);
    // The load was verified and the catch-up series ends at every row.
    assert_eq!(
        report.series.catchup_postgres_applied.last().map(|p| p.1),
        Some(2000.0)
    );
    let svg = std::fs::read_to_string(&outcome.svg_path).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("postgres"));
    assert!(!report.conflicts.ran && !report.conflicts.converged);
}

/// Checks the ldr figures of a finished run of one apply `mode`.
fn check_ldr(outcome: &bench::BenchOutcome, json: &serde_json::Value, mode: ApplyMode) {
    let report = &outcome.report;
    // The mode is recorded per LDR side, with the command the destination's job shows.
    assert_eq!(
        json["config"]["ldr_modes"],
        serde_json::json!([mode.as_str()])
    );
    let modes = &report.ldr_modes;
    assert_eq!(modes.len(), 1, "{modes:?}");
    assert_eq!(modes[0].mode, mode.as_str());
    let command = modes[0].job_command.as_deref().expect("the job's command");
    assert_eq!(
        command.contains("mode = 'validated'"),
        mode == ApplyMode::Validated,
        "{command}"
    );
    assert_eq!(modes[0].catchup_rows_per_s, report.catchup.ldr_rows_per_s);
    assert_eq!(modes[0].dlq_rows, Some(0), "{modes:?}");
    assert!(
        modes[0].rows_applied >= Some(report.config.rows),
        "{modes:?}"
    );
    positive(json, "/catchup/ldr_rows_per_s");
    positive(json, "/steady/commit_latency_ms/p99");
    positive(json, "/steady/lag_ms/p99");
    assert_eq!(
        report.catchup.ldr_end_method.as_deref(),
        Some("newest destination commit timestamp (exact)"),
        "{:?}",
        report.notes
    );
    // Every heartbeat that was written was found at the destination and measured.
    let steady = &report.steady.first;
    assert!(steady.commit_latency_ms.count >= 20, "{steady:?}");
    assert!(steady.commit_latency_ms.count >= steady.ldr_heartbeats_sent);
    assert!(
        steady.commit_latency_ms.p50 >= Some(0.0),
        "a row cannot be visible before it committed: {steady:?}"
    );
    // Sampled every 100 ms over 3 s.
    assert!(steady.lag_ms.count >= 10, "{steady:?}");
    // The conflict phase ran, wrote on both sides, and converged.
    let conflicts = &report.conflicts;
    assert!(conflicts.ran && conflicts.converged, "{conflicts:?}");
    assert!(conflicts.rows_written_a > 0 && conflicts.rows_written_b > 0);
    assert!(conflicts.fingerprints.is_some());
    assert_eq!(conflicts.dlq_rows, 0, "{conflicts:?}");
    assert_eq!(
        report.series.catchup_ldr_applied.last().map(|p| p.1),
        Some(report.config.rows as f64)
    );
}

#[tokio::test]
async fn bench_ldr_with_postgres() {
    let out = tempfile::tempdir().expect("tempdir");
    let outcome = run(options(out.path())).await;
    let report = &outcome.report;
    eprintln!("{}", bench::render_table(report));
    assert!(report.ok(), "{:?}", report.failures);
    let json = check_contract(&outcome.json_path);
    check_ldr(&outcome, &json, ApplyMode::Immediate);
    positive(&json, "/catchup/postgres_rows_per_s");
    positive(&json, "/catchup/ratio_vs_postgres");
    positive(&json, "/steady/postgres_lag_ms/p99");
    // A backup of the destination's kv and its restore, beside the RocksDB scan rate.
    positive(&json, "/rocksdb/scan_per_s");
    positive(&json, "/backup/backup_rows_per_s");
    positive(&json, "/backup/restore_rows_per_s");
    positive(&json, "/backup/backup_fraction_of_rocksdb_scan");
    // Changefeeds on the destination's kv: an initial scan and live changes under a load.
    positive(&json, "/changefeed/initial_scan_messages_per_s");
    positive(&json, "/changefeed/initial_scan_mb_per_s");
    positive(&json, "/changefeed/initial_scan_fraction_of_rocksdb_scan");
    positive(&json, "/changefeed/live_messages_per_s");
    positive(&json, "/changefeed/live_fraction_of_rocksdb_scan");
    assert!(
        json.pointer("/backup/rows")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            > 0,
        "the backup wrote the rows LDR applied"
    );
    // The default: no sync on either side, single-copy ranges on one node.
    check_durability(&json, false, true, Some(1));
    let table = bench::render_table(report);
    assert!(
        table.contains("durability: raft log sync off")
            && table.contains("PostgreSQL fsync = off")
            && table.contains("replication factor 1"),
        "{table}"
    );
    let svg = std::fs::read_to_string(&outcome.svg_path).expect("plot written");
    assert!(svg.contains("ldr (") && svg.contains("postgres ("));
}

#[tokio::test]
async fn bench_ldr_without_postgres_two_nodes() {
    let out = tempfile::tempdir().expect("tempdir");
    let outcome = run(BenchOptions {
        nodes: 2,
        skip_postgres: true,
        raft_log_sync: true,
        ..options(out.path())
    })
    .await;
    let report = &outcome.report;
    eprintln!("{}", bench::render_table(report));
    assert!(report.ok(), "{:?}", report.failures);
    let json = check_contract(&outcome.json_path);
    check_ldr(&outcome, &json, ApplyMode::Immediate);
    assert!(json["catchup"]["postgres_rows_per_s"].is_null());
    assert!(json["steady"]["postgres_lag_ms"]["p99"].is_null());
    assert_eq!(json["config"]["nodes"], 2);
    // Two nodes: every range has two voters, and their Raft logs were synced.
    check_durability(&json, true, false, Some(2));
    let table = bench::render_table(report);
    assert!(
        table.contains("raft log sync on") && table.contains("ldr per row (RF 2, sync on)"),
        "{table}"
    );
}

/// Validated mode through every phase, as small as the checks allow (each row is its own
/// SQL transaction at the destination, slow in a debug build): the streams are created
/// `WITH mode = 'validated'` (the job's command says so), and every phase converges without
/// a DLQ row. (`--mode=both` runs these phases once per mode; how its report is put
/// together is unit-tested in `report.rs`.)
#[tokio::test]
async fn bench_ldr_validated_mode() {
    let out = tempfile::tempdir().expect("tempdir");
    let outcome = run(BenchOptions {
        skip_postgres: true,
        modes: vec![ApplyMode::Validated],
        rows: 200,
        duration: Duration::from_secs(2),
        steady_rates: vec![20],
        conflict_keys: 10,
        conflict_rate: 20,
        ..options(out.path())
    })
    .await;
    let report = &outcome.report;
    eprintln!("{}", bench::render_table(report));
    assert!(report.ok(), "{:?}", report.failures);
    let json = check_contract(&outcome.json_path);
    check_ldr(&outcome, &json, ApplyMode::Validated);
    assert_eq!(json["ldr_modes"][0]["mode"], "validated", "{json}");
    // Why: the mode is named in the table, with its own block.
    let table = bench::render_table(report);
    assert!(
        table.contains("ldr apply mode: validated") && table.contains("ldr apply modes"),
        "{table}"
    );
}

/// `--secure=both`: every phase once on insecure clusters, then once on secure ones
/// (certificates, TLS for SQL and between nodes, the stream over verify-full TLS with a
/// password); the report has `immediate` and `immediate+tls` with the TLS run's ratio to the
/// insecure one (the cost of TLS), and both converge without a DLQ row.
#[tokio::test]
async fn bench_ldr_secure_against_insecure() {
    let out = tempfile::tempdir().expect("tempdir");
    let outcome = run(BenchOptions {
        skip_postgres: true,
        security: vec![false, true],
        rows: 500,
        duration: Duration::from_secs(2),
        steady_rates: vec![50],
        conflict_keys: 10,
        conflict_rate: 20,
        ..options(out.path())
    })
    .await;
    let report = &outcome.report;
    let table = bench::render_table(report);
    eprintln!("{table}");
    assert!(report.ok(), "{:?}", report.failures);
    let json = check_contract(&outcome.json_path);
    assert_eq!(
        json["config"]["ldr_modes"],
        serde_json::json!(["immediate", "immediate+tls"]),
        "{json}"
    );
    let modes = &report.ldr_modes;
    assert_eq!(modes.len(), 2, "{modes:?}");
    assert_eq!(modes[1].mode, "immediate+tls");
    for m in modes {
        assert!(m.catchup_rows_per_s > Some(0.0), "{m:?}");
        assert_eq!(m.dlq_rows, Some(0), "{m:?}");
        assert!(m.rows_applied >= Some(report.config.rows), "{m:?}");
    }
    assert!(modes[1].catchup_ratio_vs_immediate > Some(0.0), "{modes:?}");
    assert!(table.contains("immediate+tls"), "{table}");
}

#[tokio::test]
async fn bench_rejects_sync_on_single_copy_ranges() {
    let out = tempfile::tempdir().expect("tempdir");
    for (nodes, replicas) in [(1, None), (3, Some(1))] {
        let error = bench::run(BenchOptions {
            nodes,
            replicas,
            raft_log_sync: true,
            ..options(out.path())
        })
        .await
        .expect_err("sync on without replicated ranges is refused");
        assert!(
            error
                .to_string()
                .contains("--raft-log-sync=on needs replicated ranges"),
            "{error}"
        );
    }
    let error = bench::run(BenchOptions {
        nodes: 2,
        replicas: Some(3),
        ..options(out.path())
    })
    .await
    .expect_err("more replicas than nodes is refused");
    assert!(error.to_string().contains("--replicas"), "{error}");
}
