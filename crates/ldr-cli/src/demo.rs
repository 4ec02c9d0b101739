//! `ldr demo`: two local clusters with bidirectional logical replication and a light write
//! load on both sides. Prints the SQL URLs of both clusters and a line per second with each
//! side's replicated time, lag and rows applied; Ctrl-C stops everything and removes the
//! temporary directories. With `--secure` each cluster gets its own CA and certificates, SQL
//! runs over TLS and the streams dial the other cluster with verify-full TLS and a password.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ldr_sim::workload::kv::{self, KvConfig};
use ldr_sim::workload::{LoadOptions, Progress};
use ldr_sim::{Cluster, ClusterSpec};
use tokio_util::sync::CancellationToken;

/// Flags of `ldr demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Nodes per cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Write operations per second on each cluster (0: no load).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Size of the shared key space (smaller: more conflicts).
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Stop by itself after this long.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Secure clusters: each with its own CA and certificates (in its directory), SQL over
    /// TLS, and the streams dialing the other cluster with verify-full TLS and a password.
    #[arg(long)]
    pub secure: bool,
}

const USER: &str = "ldr_user";
const PASSWORD: &str = "ldr_password";

/// The statements that prepare one side: the tutorial's steps 1 and 2 (the replication
/// user, the table, and the external connection to the other cluster: with the other
/// cluster's CA inline and verify-full TLS when secure, as `ldr encode-uri --inline` prints).
fn user_sql() -> String {
    format!(
        "SET CLUSTER SETTING kv.rangefeed.enabled = true;
         CREATE USER IF NOT EXISTS {USER} WITH PASSWORD '{PASSWORD}';
         GRANT SYSTEM REPLICATION TO {USER};
         CREATE TABLE IF NOT EXISTS defaultdb.public.kv (k INT8 PRIMARY KEY, v STRING);"
    )
}

fn connection_sql(other: &Cluster, other_name: &str) -> Result<String> {
    let url = other.external_url_as(1, USER, PASSWORD)?;
    Ok(format!(
        "CREATE EXTERNAL CONNECTION IF NOT EXISTS {other_name} AS '{url}';"
    ))
}

const CREATE_STREAM: &str = "CREATE LOGICAL REPLICATION STREAM FROM TABLE defaultdb.public.kv ON 'external://{SOURCE}' INTO TABLE defaultdb.public.kv";

pub async fn run(args: DemoArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the ldr binary")?;
    println!(
        "starting two {}-node {} clusters (a and b) on 127.0.0.1 ...",
        args.nodes,
        if args.secure { "secure" } else { "insecure" }
    );
    let (a, b) = tokio::try_join!(
        Cluster::start(ClusterSpec::with_binary("a", args.nodes, &exe).secure(args.secure)),
        Cluster::start(ClusterSpec::with_binary("b", args.nodes, &exe).secure(args.secure)),
    )
    .context("cannot start the demo clusters")?;

    a.exec(1, &user_sql())
        .await
        .context("preparing cluster a")?;
    b.exec(1, &user_sql())
        .await
        .context("preparing cluster b")?;
    a.exec(1, &connection_sql(&b, "cluster_b")?)
        .await
        .context("preparing cluster a")?;
    b.exec(1, &connection_sql(&a, "cluster_a")?)
        .await
        .context("preparing cluster b")?;
    b.exec(1, &CREATE_STREAM.replace("{SOURCE}", "cluster_a"))
        .await
        .context("starting LDR a -> b")?;
    a.exec(1, &CREATE_STREAM.replace("{SOURCE}", "cluster_b"))
        .await
        .context("starting LDR b -> a")?;

    println!();
    println!("bidirectional LDR is running on defaultdb.public.kv (k INT8 PRIMARY KEY, v STRING)");
    for (name, cluster) in [("a", &a), ("b", &b)] {
        println!("cluster {name}:");
        for info in cluster.nodes() {
            println!(
                "  psql \"{}\"    (console http://{})",
                cluster.url_of(info.listen_addr),
                info.http_addr
            );
        }
    }
    println!();
    println!(
        "try: SHOW LOGICAL REPLICATION JOBS WITH DETAILS;  SELECT count(*) FROM kv;  UPSERT INTO kv VALUES (1, 'hello');"
    );
    println!("Ctrl-C stops the demo and removes its data.");
    println!();

    let cancel = CancellationToken::new();
    let mut loads = Vec::new();
    if args.rate > 0.0 {
        for (i, cluster) in [&a, &b].into_iter().enumerate() {
            let config = KvConfig {
                keys: args.keys,
                ..KvConfig::default()
            };
            let options = LoadOptions::new(cluster.urls())
                .concurrency(2)
                .max_rate(args.rate)
                .duration(args.duration)
                .seed(i as u64 + 1)
                .progress(Progress::Silent)
                .cancel(cancel.clone());
            loads.push(tokio::spawn(
                async move { kv::run(&config, &options).await },
            ));
        }
    }

    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {
                if started.elapsed() >= args.duration {
                    break;
                }
                let line_a = status_line(&a).await;
                let line_b = status_line(&b).await;
                println!("[{:>5}s] a: {line_a} | b: {line_b}", started.elapsed().as_secs());
            }
        }
    }
    println!("stopping ...");
    cancel.cancel();
    for load in loads {
        let _ = load.await;
    }
    drop(a);
    drop(b);
    println!("demo clusters stopped and removed");
    Ok(())
}

/// `replicated <time> (lag <s>), applied <rows>` for the LDR job running on `cluster`.
async fn status_line(cluster: &Cluster) -> String {
    let lag = match cluster.query_text(1, "SHOW LOGICAL REPLICATION JOBS").await {
        Ok(result) => {
            let column = result.columns.iter().position(|c| c == "replicated_time");
            match (result.rows.first(), column) {
                (Some(row), Some(i)) => match row.get(i).cloned().flatten() {
                    Some(text) => match lag_of(&text) {
                        Some(lag) => format!("replicated {text} (lag {:.1}s)", lag.as_secs_f64()),
                        None => format!("replicated {text}"),
                    },
                    None => "initial scan".to_string(),
                },
                _ => "no job".to_string(),
            }
        }
        Err(e) => format!("({e})"),
    };
    let mut applied = 0.0;
    for i in cluster.node_ids() {
        if let Ok(m) = cluster.metrics(i).await {
            applied += m.sum("logical_replication_events_ingested").unwrap_or(0.0);
        }
    }
    format!("{lag}, applied {applied:.0} rows")
}

/// Now minus a TIMESTAMPTZ text (`2026-11-22 03:18:19.123456+00`).
fn lag_of(text: &str) -> Option<Duration> {
    let parsed =
        chrono::DateTime::parse_from_str(&format!("{text}00"), "%Y-%m-%d %H:%M:%S%.f%z").ok()?;
    let now = chrono::Utc::now();
    (now - parsed.with_timezone(&chrono::Utc)).to_std().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lag_parses_timestamptz_text() {
        let now = chrono::Utc::now() - chrono::Duration::seconds(3);
        let text = now.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
        let lag = super::lag_of(&text).expect("parses");
        assert!(
            lag.as_secs_f64() >= 2.9 && lag.as_secs_f64() < 60.0,
            "{lag:?}"
        );
        assert_eq!(super::lag_of("garbage"), None);
    }
}
