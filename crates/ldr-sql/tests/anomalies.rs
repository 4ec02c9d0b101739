//! An Elle-style list-append check of explicit transactions on a real in-process cluster,
//! analysed by `ldr_sim::elle`, the checker `ldr sim elle` and e2e `txn_anomalies` use.
//!
//! Every key holds a list (a comma-separated string); transactions read keys and append
//! unique values to them, concurrently, from sessions on several nodes. A last transaction
//! reads every key's final list. From the history the checker infers write-write, write-read
//! and read-write dependencies and reports G0, G1a/b/c, G-single, G2, duplicate or unknown
//! elements and incompatible orders; a committed append missing from the final lists is a
//! lost append.
//!
//! The choice of operations is seeded (`SEED=n` reproduces it; the interleaving is up to the
//! scheduler).
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{exec, start_cluster};
use ldr_sim::elle::{self, CheckOptions, Element, Key, MicroOp, Txn, TxnOutcome};
use ldr_sql::exec::Session;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: Key = 6;
const WORKERS: usize = 4;
const TXNS_PER_WORKER: usize = 25;
const DEADLINE: Duration = Duration::from_secs(150);

fn parse_list(s: &str) -> Vec<Element> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().expect("list element"))
        .collect()
}

fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `ops` as one explicit transaction; fills in the reads. `true`: committed; `false`:
/// failed with a retryable error (nothing applied).
async fn run_txn(s: &mut Session, ops: &mut [MicroOp]) -> bool {
    let mut statements = vec!["BEGIN".to_string()];
    for op in ops.iter() {
        statements.push(match op {
            MicroOp::Read { key, .. } => format!("SELECT vals FROM la WHERE k = {key}"),
            MicroOp::Append { key, element } => {
                format!("UPDATE la SET vals = vals || ',{element}' WHERE k = {key}")
            }
        });
    }
    statements.push("COMMIT".to_string());
    let results = s.execute(&statements.join("; ")).await;
    let mut ok = true;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(q) => {
                if i >= 1
                    && i <= ops.len()
                    && let MicroOp::Read { elements, .. } = &mut ops[i - 1]
                {
                    let text = q
                        .rows
                        .first()
                        .and_then(|row| row[0].to_text(0))
                        .unwrap_or_default();
                    *elements = Some(parse_list(&text));
                }
            }
            Err(e) => {
                assert!(
                    e.code() == "40001" || e.code() == "25P02",
                    "statement {i} of {statements:?}: unexpected {} {}",
                    e.code(),
                    e.message()
                );
                ok = false;
            }
        }
    }
    if !ok {
        // The block may still be open (an error before COMMIT).
        let _ = s.execute("ROLLBACK").await;
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_append_histories_have_no_anomalies() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("SEED={seed}");
    let (_cluster, servers) = start_cluster(2).await;
    let mut admin = servers[0]
        .session("root", "defaultdb")
        .await
        .expect("session");
    let values: Vec<String> = (0..KEYS).map(|k| format!("({k}, '')")).collect();
    exec(
        &mut admin,
        &format!(
            "CREATE TABLE la (k INT8 PRIMARY KEY, vals STRING NOT NULL); INSERT INTO la VALUES {}",
            values.join(", ")
        ),
    )
    .await;

    // Workers: seeded transactions of reads and unique appends, each session on a node.
    let origin = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let node = w % servers.len();
        let server = servers[node].clone();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            let mut s = server.session("root", "defaultdb").await.expect("session");
            let mut done = Vec::new();
            for n in 0..TXNS_PER_WORKER {
                if origin.elapsed() > DEADLINE {
                    break;
                }
                let count = rng.random_range(1..=4);
                let mut ops: Vec<MicroOp> = (0..count)
                    .map(|i| {
                        let key = rng.random_range(0..KEYS);
                        if rng.random_bool(0.5) {
                            MicroOp::Read {
                                key,
                                elements: None,
                            }
                        } else {
                            MicroOp::Append {
                                key,
                                element: (w * 100_000 + n * 10 + i + 1) as Element,
                            }
                        }
                    })
                    .collect();
                // One append per key per transaction.
                let mut appended = HashSet::new();
                ops.retain(|op| match op {
                    MicroOp::Append { key, .. } => appended.insert(*key),
                    MicroOp::Read { .. } => true,
                });
                let invoke_ns = nanos_since(origin);
                let committed = run_txn(&mut s, &mut ops).await;
                done.push(Txn {
                    client: w + 1,
                    ops,
                    // The whole block ran in one request: a refused COMMIT applied nothing.
                    outcome: if committed {
                        TxnOutcome::Ok
                    } else {
                        TxnOutcome::Failed
                    },
                    invoke_ns,
                    complete_ns: nanos_since(origin),
                    node: node + 1,
                    detail: String::new(),
                });
            }
            done
        });
    }
    let mut history = Vec::new();
    while let Some(r) = tasks.join_next().await {
        history.extend(r.expect("worker"));
    }

    // The final lists: one read of every key after every worker is done.
    let mut finals: Vec<MicroOp> = (0..KEYS)
        .map(|key| MicroOp::Read {
            key,
            elements: None,
        })
        .collect();
    let invoke_ns = nanos_since(origin);
    assert!(
        run_txn(&mut admin, &mut finals).await,
        "the final read did not commit"
    );
    history.push(Txn {
        client: WORKERS + 1,
        ops: finals,
        outcome: TxnOutcome::Ok,
        invoke_ns,
        complete_ns: nanos_since(origin),
        node: 1,
        detail: String::new(),
    });

    // The check: enough commits to judge, no anomaly, no lost append.
    let committed = history
        .iter()
        .filter(|t| t.outcome == TxnOutcome::Ok)
        .count()
        - 1;
    let appends: usize = history
        .last()
        .map_or(0, |t| t.reads().map(|(_, list)| list.len()).sum());
    println!(
        "{} transactions, {committed} committed, {appends} values appended",
        history.len() - 1
    );
    assert!(committed >= 10, "too few commits to judge: {committed}");
    let report = elle::check(&history, &CheckOptions::default()).expect("a well-formed history");
    let lost = elle::lost_appends(&history, &[history.len() - 1]);
    assert!(
        report.is_valid() && lost.is_empty(),
        "anomalies (SEED={seed}):\n{report}lost appends: {lost:?}"
    );
}
