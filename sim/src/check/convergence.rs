//! Convergence: after quiescing, a table is identical on two clusters.
//!
//! On ldr the comparison uses `SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE t` (one fingerprint
//! per index over the live rows, as in CockroachDB); [`wait_same_rows`] compares the rows of
//! any query instead (works on PostgreSQL too). Both poll until equal or the deadline, and on
//! failure report both sides.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{Result, SimError};
use crate::sql::{self, CONNECT_TIMEOUT, TextRows};

/// `(index_name, fingerprint)` pairs, sorted by index name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprints(pub Vec<(String, String)>);

impl std::fmt::Display for Fingerprints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(index, fp)| format!("{index}={fp}"))
            .collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

/// Parses the result of `SHOW EXPERIMENTAL_FINGERPRINTS` (pure).
pub fn parse_fingerprints(rows: &TextRows) -> Result<Fingerprints> {
    let index = rows
        .column("index_name")
        .ok_or_else(|| SimError::Protocol(format!("no index_name column in {:?}", rows.columns)))?;
    let fingerprint = rows.column("fingerprint").ok_or_else(|| {
        SimError::Protocol(format!("no fingerprint column in {:?}", rows.columns))
    })?;
    let mut pairs: Vec<(String, String)> = rows
        .rows
        .iter()
        .map(|r| {
            (
                r[index].clone().unwrap_or_default(),
                r[fingerprint].clone().unwrap_or_else(|| "NULL".into()),
            )
        })
        .collect();
    pairs.sort();
    Ok(Fingerprints(pairs))
}

/// Fingerprints of `table` as seen through `client`.
pub async fn fingerprints(client: &Client, table: &str) -> Result<Fingerprints> {
    let rows = sql::query_text(
        client,
        &format!("SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE {table}"),
    )
    .await?;
    parse_fingerprints(&rows)
}

async fn side(url: &str, probe: impl AsyncFnOnce(&Client) -> Result<String>) -> String {
    match sql::connect(url, CONNECT_TIMEOUT).await {
        Ok(client) => match probe(&client).await {
            Ok(text) => text,
            Err(e) => format!("error: {e}"),
        },
        Err(e) => format!("error: {e}"),
    }
}

async fn row_count(client: &Client, table: &str) -> Result<String> {
    let rows = sql::query_text(client, &format!("SELECT count(*) FROM {table}")).await?;
    Ok(rows
        .rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default())
}

/// Waits until `table` has equal fingerprints on the clusters behind `url_a` and `url_b`;
/// returns them. On timeout the error shows both sides' fingerprints and row counts.
pub async fn wait_converged(
    url_a: &str,
    url_b: &str,
    table: &str,
    timeout: Duration,
) -> Result<Fingerprints> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut polls = 0u64;
    loop {
        polls += 1;
        let a = side(url_a, async |c: &Client| {
            fingerprints(c, table)
                .await
                .map(|f| serde_json::to_string(&f).unwrap_or_default())
        })
        .await;
        let b = side(url_b, async |c: &Client| {
            fingerprints(c, table)
                .await
                .map(|f| serde_json::to_string(&f).unwrap_or_default())
        })
        .await;
        if !a.starts_with("error") && a == b {
            let parsed: Fingerprints = serde_json::from_str(&a)?;
            tracing::info!(table, polls, waited_ms = start.elapsed().as_millis() as u64, fingerprints = %parsed, "clusters converged");
            return Ok(parsed);
        }
        if Instant::now() >= deadline {
            let count_a = side(url_a, async |c: &Client| row_count(c, table).await).await;
            let count_b = side(url_b, async |c: &Client| row_count(c, table).await).await;
            return Err(SimError::Invariant(format!(
                "table {table} did not converge within {:?} ({polls} polls)\n  cluster A ({url_a}): fingerprints {a}, {count_a} rows\n  cluster B ({url_b}): fingerprints {b}, {count_b} rows",
                timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `query` returns the same rows (as text) on both sides. Use an `ORDER BY`.
pub async fn wait_same_rows(
    url_a: &str,
    url_b: &str,
    query: &str,
    timeout: Duration,
) -> Result<usize> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let (a, b) = (
            fetch_rows(url_a, query).await,
            fetch_rows(url_b, query).await,
        );
        if let (Ok(a), Ok(b)) = (&a, &b)
            && a.rows == b.rows
        {
            return Ok(a.rows.len());
        }
        if Instant::now() >= deadline {
            return Err(SimError::Invariant(format!(
                "{query:?} did not return the same rows within {timeout:?}\n{}",
                describe_row_difference(&a, &b)
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn fetch_rows(url: &str, query: &str) -> Result<TextRows> {
    let client = sql::connect(url, CONNECT_TIMEOUT).await?;
    sql::query_text(&client, query).await
}

fn describe_row_difference(a: &Result<TextRows>, b: &Result<TextRows>) -> String {
    match (a, b) {
        (Err(e), _) => format!("  side A failed: {e}"),
        (_, Err(e)) => format!("  side B failed: {e}"),
        (Ok(a), Ok(b)) => {
            let mut out = format!(
                "  side A has {} rows, side B has {} rows\n",
                a.rows.len(),
                b.rows.len()
            );
            let mut shown = 0;
            for i in 0..a.rows.len().max(b.rows.len()) {
                let (ra, rb) = (a.rows.get(i), b.rows.get(i));
                if ra != rb {
                    out.push_str(&format!("  row {i}: A {ra:?} vs B {rb:?}\n"));
                    shown += 1;
                    if shown == 10 {
                        out.push_str("  …\n");
                        break;
                    }
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_sorted_by_index() {
        let rows = TextRows {
            columns: vec!["index_name".into(), "fingerprint".into()],
            rows: vec![
                vec![Some("kv_v_idx".into()), Some("-12".into())],
                vec![Some("kv_pkey".into()), Some("99".into())],
            ],
        };
        let fp = parse_fingerprints(&rows).expect("parse");
        assert_eq!(
            fp,
            Fingerprints(vec![
                ("kv_pkey".into(), "99".into()),
                ("kv_v_idx".into(), "-12".into())
            ])
        );
        assert_eq!(fp.to_string(), "[kv_pkey=99, kv_v_idx=-12]");
        assert!(
            parse_fingerprints(&TextRows {
                columns: vec!["x".into()],
                rows: vec![]
            })
            .is_err()
        );
    }

    #[test]
    fn row_difference_lists_differing_rows() {
        let a = Ok(TextRows {
            columns: vec!["k".into()],
            rows: vec![vec![Some("1".into())], vec![Some("2".into())]],
        });
        let b = Ok(TextRows {
            columns: vec!["k".into()],
            rows: vec![vec![Some("1".into())]],
        });
        let text = describe_row_difference(&a, &b);
        assert!(
            text.contains("side A has 2 rows, side B has 1 rows"),
            "{text}"
        );
        assert!(
            text.contains("row 1: A Some([Some(\"2\")]) vs B None"),
            "{text}"
        );
    }
}
