//! `crdb_internal.check_consistency` through real `ldr` processes: after a write load on a
//! three-node cluster with `num_replicas = 3` (and while writes go on), every range, the
//! system range included, is `RANGE_CONSISTENT`: its three replicas computed the same
//! checksum at the same applied index.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use ldr_e2e::{cluster, column_values, poll};

const KEYS: i64 = 300;

fn upsert_all(round: usize) -> String {
    let values: Vec<String> = (0..KEYS)
        .map(|k| format!("({k}, 'v{round}-{k}')"))
        .collect();
    format!("UPSERT INTO kv (k, v) VALUES {}", values.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_range_of_a_written_cluster_is_consistent() -> Result<()> {
    let c = cluster("cc", 3).await?;
    c.exec(
        1,
        "ALTER RANGE default CONFIGURE ZONE USING num_replicas = 3;
         CREATE TABLE kv (k INT8 PRIMARY KEY, v STRING NOT NULL);",
    )
    .await?;
    // A write load through every node: several versions per key, and deletes.
    for round in 0..3 {
        c.exec(1 + round % 3, &upsert_all(round)).await?;
    }
    c.exec(2, "DELETE FROM kv WHERE k % 7 = 0").await?;
    let ranges = c.query_text(1, "SHOW CLUSTER RANGES").await?;
    let range_ids = column_values(&ranges, "range_id")?;

    // Writes continue while the check runs: replicas compare checksums taken at one index.
    let writer = {
        let client = c.sql(3).await?;
        tokio::spawn(async move {
            for round in 3.. {
                if client.batch_execute(&upsert_all(round)).await.is_err() {
                    return;
                }
            }
        })
    };
    // A replica still being added (a learner caught up by a snapshot) may not answer:
    // RANGE_INDETERMINATE is retried, RANGE_INCONSISTENT fails at once.
    let checked = poll(
        "every range to be checked consistent",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let c = &c;
            async move {
                let rows = c
                    .query_text(
                        2,
                        "SELECT range_id, status, detail \
                         FROM crdb_internal.check_consistency(false, '', '')",
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let statuses = column_values(&rows, "status").map_err(|e| e.to_string())?;
                let details = column_values(&rows, "detail").map_err(|e| e.to_string())?;
                if statuses.iter().all(|s| s == "RANGE_CONSISTENT") {
                    Ok(Ok(rows))
                } else if statuses.iter().any(|s| s == "RANGE_INCONSISTENT") {
                    Ok(Err(format!("inconsistent: {statuses:?} {details:?}")))
                } else {
                    Err(format!("not yet: {statuses:?} {details:?}"))
                }
            }
        },
    )
    .await?;
    writer.abort();
    let rows = match checked {
        Ok(rows) => rows,
        Err(e) => bail!("{e}"),
    };
    let checked_ids = column_values(&rows, "range_id")?;
    ensure!(checked_ids.contains(&"1".to_string()), "{checked_ids:?}");
    for id in &range_ids {
        ensure!(
            checked_ids.contains(id),
            "range {id} not checked: {checked_ids:?}"
        );
    }
    for d in column_values(&rows, "detail")? {
        ensure!(d.contains("3 replica(s) agree"), "{d}");
    }
    // The stats-only form CockroachDB's docs show.
    let stats = c
        .query_text(
            1,
            "SELECT status FROM crdb_internal.check_consistency(true, '', '') \
             WHERE status <> 'RANGE_CONSISTENT'",
        )
        .await?;
    ensure!(
        stats
            .rows
            .iter()
            .all(|r| r[0].as_deref() == Some("RANGE_INDETERMINATE")),
        "{stats:?}"
    );
    Ok(())
}
