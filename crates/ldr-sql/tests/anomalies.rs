//! An Elle-style list-append check of explicit transactions on a real in-process cluster.
//!
//! Every key holds a list (a comma-separated string); transactions read keys and append
//! unique values to them, concurrently, from sessions on several nodes. Each key's final list
//! is its version order. From the histories the checker derives:
//! - aborted and intermediate reads (G1a/G1b): a committed read that shows a value no
//!   committed transaction appended, or not as a prefix of the key's final list;
//! - lost or duplicated updates: every committed append appears exactly once in its key's
//!   final list, no aborted append appears at all;
//! - dependency cycles (G0, G1c, G-single, G2): the graph of write-write, write-read and
//!   read-write (anti-) dependencies between committed transactions must be acyclic.
//!
//! The choice of operations is seeded (`SEED=n` reproduces it; the interleaving is up to the
//! scheduler).
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{exec, rows, start_cluster};
use ldr_sql::exec::Session;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: i64 = 6;
const WORKERS: usize = 4;
const TXNS_PER_WORKER: usize = 25;
const DEADLINE: Duration = Duration::from_secs(150);

#[derive(Debug, Clone)]
enum Op {
    Read { key: i64, seen: Option<Vec<u64>> },
    Append { key: i64, value: u64 },
}

#[derive(Debug, Clone)]
struct Txn {
    id: usize,
    ops: Vec<Op>,
    committed: bool,
}

fn parse_list(s: &str) -> Vec<u64> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().expect("list element"))
        .collect()
}

/// Runs `ops` as one explicit transaction; fills in the reads. `Ok(true)` committed,
/// `Ok(false)` failed with a retryable error (nothing applied).
async fn run_txn(s: &mut Session, ops: &mut [Op]) -> bool {
    let mut statements = vec!["BEGIN".to_string()];
    for op in ops.iter() {
        statements.push(match op {
            Op::Read { key, .. } => format!("SELECT vals FROM la WHERE k = {key}"),
            Op::Append { key, value } => {
                format!("UPDATE la SET vals = vals || ',{value}' WHERE k = {key}")
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
                    && let Op::Read { seen, .. } = &mut ops[i - 1]
                {
                    let text = q
                        .rows
                        .first()
                        .and_then(|row| row[0].to_text(0))
                        .unwrap_or_default();
                    *seen = Some(parse_list(&text));
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

/// Finds a cycle in `edges` (adjacency by node), if any.
fn find_cycle(
    n: usize,
    edges: &[Vec<(usize, &'static str)>],
) -> Option<Vec<(usize, &'static str)>> {
    // Iterative DFS with colors; reconstructs the cycle from the stack.
    let mut color = vec![0u8; n];
    for start in 0..n {
        if color[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize, &'static str)> = vec![(start, 0, "")];
        color[start] = 1;
        while let Some(&mut (node, ref mut next, _)) = stack.last_mut() {
            if *next < edges[node].len() {
                let (to, kind) = edges[node][*next];
                *next += 1;
                match color[to] {
                    0 => {
                        color[to] = 1;
                        stack.push((to, 0, kind));
                    }
                    1 => {
                        let pos = stack
                            .iter()
                            .position(|(x, _, _)| *x == to)
                            .expect("on stack");
                        let mut cycle: Vec<(usize, &'static str)> =
                            stack[pos + 1..].iter().map(|(x, _, k)| (*x, *k)).collect();
                        cycle.insert(0, (to, ""));
                        cycle.push((to, kind));
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                color[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

/// Checks a list-append history against the final lists; returns the anomalies found.
fn check(history: &[Txn], finals: &BTreeMap<i64, Vec<u64>>) -> Vec<String> {
    let mut problems = Vec::new();
    // Who appended what.
    let mut writer: HashMap<u64, (usize, bool)> = HashMap::new();
    for t in history {
        for op in &t.ops {
            if let Op::Append { value, .. } = op {
                writer.insert(*value, (t.id, t.committed));
            }
        }
    }
    // Final lists: known, committed, unique values; every committed append present.
    let mut present: HashSet<u64> = HashSet::new();
    for (key, list) in finals {
        for v in list {
            if !present.insert(*v) {
                problems.push(format!("duplicate append {v} in key {key}"));
            }
            match writer.get(v) {
                None => problems.push(format!("key {key} holds {v}, which nobody appended")),
                Some((t, false)) => problems.push(format!(
                    "key {key} holds {v} of aborted transaction {t} (G1a)"
                )),
                Some(_) => {}
            }
        }
    }
    for t in history.iter().filter(|t| t.committed) {
        for op in &t.ops {
            if let Op::Append { key, value } = op
                && !present.contains(value)
            {
                problems.push(format!(
                    "lost update: committed append {value} of transaction {} to key {key}",
                    t.id
                ));
            }
        }
    }
    // Reads: prefixes of the final lists (with the transaction's own appends at the end).
    let mut edges: Vec<Vec<(usize, &'static str)>> = vec![Vec::new(); history.len()];
    let position: HashMap<(i64, u64), usize> = finals
        .iter()
        .flat_map(|(k, list)| list.iter().enumerate().map(move |(i, v)| ((*k, *v), i)))
        .collect();
    for (key, list) in finals {
        for pair in list.windows(2) {
            let (a, b) = (writer[&pair[0]].0, writer[&pair[1]].0);
            if a != b {
                edges[a].push((b, "ww"));
            }
        }
        let _ = key;
    }
    for t in history.iter().filter(|t| t.committed) {
        for op in &t.ops {
            let Op::Read {
                key,
                seen: Some(seen),
            } = op
            else {
                continue;
            };
            let list = finals.get(key).cloned().unwrap_or_default();
            if seen.len() > list.len() || list[..seen.len()] != seen[..] {
                problems.push(format!(
                    "transaction {} read key {key} as {seen:?}, not a prefix of its final {list:?}",
                    t.id
                ));
                continue;
            }
            // Its own appends are read back; the others' define the dependencies.
            let others: Vec<u64> = seen
                .iter()
                .copied()
                .filter(|v| writer.get(v).map(|w| w.0) != Some(t.id))
                .collect();
            if let Some(last) = others.last() {
                let w = writer[last].0;
                edges[w].push((t.id, "wr"));
            }
            let next = others.last().map_or(0, |v| position[&(*key, *v)] + 1);
            if let Some(v) = list.get(next) {
                let w = writer[v].0;
                if w != t.id {
                    edges[t.id].push((w, "rw"));
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(history.len(), &edges) {
        let text: Vec<String> = cycle
            .iter()
            .map(|(t, k)| {
                if k.is_empty() {
                    format!("T{t}")
                } else {
                    format!("-{k}-> T{t}")
                }
            })
            .collect();
        problems.push(format!("dependency cycle: {}", text.join(" ")));
    }
    problems
}

#[test]
fn the_checker_finds_planted_anomalies() {
    let txn = |id, ops, committed| Txn { id, ops, committed };
    let app = |key, value| Op::Append { key, value };
    let read = |key, seen: &[u64]| Op::Read {
        key,
        seen: Some(seen.to_vec()),
    };
    // A clean serial history.
    let h = vec![
        txn(0, vec![app(1, 10)], true),
        txn(1, vec![read(1, &[10]), app(1, 11)], true),
        txn(2, vec![read(1, &[10, 11])], true),
    ];
    let finals: BTreeMap<i64, Vec<u64>> = [(1, vec![10, 11])].into();
    assert!(check(&h, &finals).is_empty(), "{:?}", check(&h, &finals));
    // Lost update and an aborted read.
    let h = vec![
        txn(0, vec![app(1, 10)], true),
        txn(1, vec![app(1, 11)], true),
        txn(2, vec![app(1, 12)], false),
        txn(3, vec![read(1, &[10, 12])], true),
    ];
    let finals: BTreeMap<i64, Vec<u64>> = [(1, vec![10, 12])].into();
    let p = check(&h, &finals);
    assert!(p.iter().any(|x| x.contains("lost update")), "{p:?}");
    assert!(p.iter().any(|x| x.contains("G1a")), "{p:?}");
    // Write skew (G2): each reads the other's key empty, then appends to its own.
    let h = vec![
        txn(0, vec![read(2, &[]), app(1, 10)], true),
        txn(1, vec![read(1, &[]), app(2, 20)], true),
    ];
    let finals: BTreeMap<i64, Vec<u64>> = [(1, vec![10]), (2, vec![20])].into();
    let p = check(&h, &finals);
    assert!(p.iter().any(|x| x.contains("cycle")), "{p:?}");
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
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let server = servers[w % servers.len()].clone();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            let mut s = server.session("root", "defaultdb").await.expect("session");
            let mut done = Vec::new();
            for n in 0..TXNS_PER_WORKER {
                if started.elapsed() > DEADLINE {
                    break;
                }
                let count = rng.random_range(1..=4);
                let mut ops: Vec<Op> = (0..count)
                    .map(|i| {
                        let key = rng.random_range(0..KEYS);
                        if rng.random_bool(0.5) {
                            Op::Read { key, seen: None }
                        } else {
                            Op::Append {
                                key,
                                value: (w * 100_000 + n * 10 + i + 1) as u64,
                            }
                        }
                    })
                    .collect();
                // One append per key per transaction (the checker's assumption).
                let mut appended = HashSet::new();
                ops.retain(|op| match op {
                    Op::Append { key, .. } => appended.insert(*key),
                    Op::Read { .. } => true,
                });
                let committed = run_txn(&mut s, &mut ops).await;
                done.push((ops, committed));
            }
            done
        });
    }
    let mut history = Vec::new();
    while let Some(r) = tasks.join_next().await {
        for (ops, committed) in r.expect("worker") {
            let id = history.len();
            history.push(Txn { id, ops, committed });
        }
    }
    let finals: BTreeMap<i64, Vec<u64>> = rows(&mut admin, "SELECT k, vals FROM la ORDER BY k")
        .await
        .into_iter()
        .map(|r| (r[0].parse().expect("k"), parse_list(&r[1])))
        .collect();
    let committed = history.iter().filter(|t| t.committed).count();
    let appends: usize = finals.values().map(Vec::len).sum();
    println!(
        "{} transactions, {committed} committed, {appends} values appended",
        history.len()
    );
    assert!(committed >= 10, "too few commits to judge: {committed}");
    let problems = check(&history, &finals);
    assert!(
        problems.is_empty(),
        "anomalies (SEED={seed}): {problems:#?}"
    );
}
