//! Times the DB Console's series endpoint and weighs its pages (docs/benchmarks.md).
//!
//! Fills a fresh store with a day of samples at 10 s (8640 rows of every series a node with
//! one labelled LDR job records), then times `GET /ts/query`'s work for a 1-day, 8-series
//! request (parse, read, align, rate, aggregate; one node, so no peer fetches) and prints the
//! bytes of the Metrics page and its script and styles.
//!
//! Build with the workspace (a lone `-p ldr-server` build resolves RocksDB's features
//! differently and rebuilds it): `cargo build --workspace --all-targets`, then run
//! `$CARGO_TARGET_DIR/debug/examples/ts_bench` (the numbers in docs/benchmarks.md are of that
//! debug build: a release build is faster).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ldr_server::http::{ASSETS, MetricsRenderer};
use ldr_server::timeseries::{Timeseries, now_secs};
use ldr_server::ts_sampler::Sampler;
use ldr_server::ts_store::{TsConfig, TsStore};

const RUNS: usize = 20;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = ldr_storage::Engine::open(
        dir.path(),
        Arc::new(ldr_types::Clock::new(Duration::from_millis(500))),
        ldr_storage::EngineOptions::default(),
    )?;
    let store = TsStore::open(engine, TsConfig::default())?;
    let metrics = Arc::new(ldr_ingest::metrics::Metrics::new());
    metrics.label("east").events_ingested.inc(1);
    let render: MetricsRenderer = {
        let metrics = metrics.clone();
        Arc::new(move || {
            let mut out = String::new();
            metrics.render(&mut out);
            ldr_server::timeseries::render_sql_stats(None, &mut out);
            out
        })
    };
    let now = now_secs();
    let start = now - 86_400;
    let mut sampler = Sampler::default();
    let filled = Instant::now();
    let mut series = 0;
    for i in 0..8640u64 {
        metrics.events_ingested.inc(100);
        metrics.logical_bytes.inc(10_000);
        metrics
            .commit_latency
            .record(1_000_000 + (i % 100) * 10_000);
        metrics.batch_hist_nanos.record(50_000 + (i % 10) * 1000);
        metrics.set_replicated_time(
            7,
            Some("east"),
            ldr_types::Timestamp::new((start + i * 10) * 1_000_000_000, 0),
        );
        let samples = sampler.sample(&render());
        series = samples.len();
        store.record(start + i * 10, &samples)?;
    }
    println!(
        "store: {series} series x 8640 samples written in {:.1}s, {} bytes",
        filled.elapsed().as_secs_f64(),
        store.bytes()
    );
    let ts = Arc::new(Timeseries::new(store, render));
    let names = [
        "logical_replication_events_ingested",
        "logical_replication_events_dlqed",
        "logical_replication_logical_bytes",
        "logical_replication_commit_latency_p50",
        "logical_replication_commit_latency_p99",
        "logical_replication_batch_hist_nanos_p99",
        "logical_replication_retry_queue_events",
        "logical_replication_replicated_time_seconds",
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for (what, extra) in [("values", ""), ("rates", "&rate=1")] {
        let query = format!(
            "names={}&start={start}&end={now}&agg=sum{extra}",
            names.join(",")
        );
        let mut times = Vec::new();
        let mut points = 0;
        for _ in 0..RUNS {
            let t = Instant::now();
            let answer = runtime.block_on(ts.query(None, &query))?;
            times.push(t.elapsed());
            points = answer.series.iter().map(|s| s.points.len()).sum::<usize>();
            let body = serde_json::to_string(&answer)?;
            assert!(!body.is_empty());
        }
        times.sort();
        println!(
            "1-day, 8-series /ts/query ({what}): median {:.1} ms, max {:.1} ms over {RUNS} runs ({points} points answered)",
            times[RUNS / 2].as_secs_f64() * 1e3,
            times[RUNS - 1].as_secs_f64() * 1e3
        );
    }
    let viewer = ldr_server::console::Viewer::insecure_root();
    let page = ldr_server::console::metrics_page(Some("dashboard=ldr"), &viewer);
    let mut total = page.len();
    println!("page weight: Metrics page HTML {} bytes", page.len());
    for (name, _, bytes) in ASSETS {
        if name.ends_with("LICENSE") {
            continue;
        }
        println!("page weight: {name} {} bytes", bytes.len());
        total += bytes.len();
    }
    println!("page weight: total {total} bytes (uncompressed; the assets are cached for an hour)");
    Ok(())
}
