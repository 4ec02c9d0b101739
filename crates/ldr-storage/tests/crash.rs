//! Crash durability: a child process (this test binary re-executed with `LDR_CRASH_CHILD_DIR`
//! set) applies batches and reports each acknowledged one over its stdout pipe; the parent
//! SIGKILLs it mid-stream, reopens the store and checks that every acknowledged batch is
//! present and intact and that no batch is partially visible. Repeated over several kills of
//! the same store. `SEED=` reproduces the kill points.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldr_storage::{Condition, Engine, EngineOptions, RowWrite, ValueHeader};
use ldr_types::{Clock, Span, Timestamp};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "LDR_CRASH_CHILD_DIR";
const FIRST_BATCH_ENV: &str = "LDR_CRASH_FIRST_BATCH";
const ROWS_PER_BATCH: u64 = 8;
const CHILD_BATCHES_MAX: u64 = 200_000;
const CHILD_SECONDS_MAX: u64 = 60;

fn row_key(batch: u64, row: u64) -> Vec<u8> {
    format!("b{batch:08}/r{row}").into_bytes()
}

fn dep_key(batch: u64, row: u64) -> Vec<u8> {
    format!("i{batch:08}/r{row}").into_bytes()
}

fn row_value(batch: u64, row: u64) -> Vec<u8> {
    let mut v = format!("value-{batch}-{row}-").into_bytes();
    v.extend(std::iter::repeat_n((batch % 251) as u8, 64));
    v
}

/// Child mode: write batches until killed (bounded in count and time).
fn child(dir: &str) {
    let first: u64 = std::env::var(FIRST_BATCH_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let engine = Engine::open(
        dir.as_ref(),
        Arc::new(Clock::default()),
        EngineOptions::default(),
    )
    .expect("child open");
    let stdout = std::io::stdout();
    let begin = Instant::now();
    for batch in first..first + CHILD_BATCHES_MAX {
        if begin.elapsed() > Duration::from_secs(CHILD_SECONDS_MAX) {
            break;
        }
        let rows: Vec<RowWrite> = (0..ROWS_PER_BATCH)
            .map(|row| RowWrite {
                key: row_key(batch, row),
                value: Some(row_value(batch, row)),
                condition: Condition::Expect(None),
                header: ValueHeader::default(),
                dependents: vec![(dep_key(batch, row), Some(row_key(batch, row)))],
            })
            .collect();
        let res = engine.apply(&rows, true, None).expect("child apply");
        assert!(
            res.outcomes
                .iter()
                .all(|o| matches!(o, ldr_storage::RowOutcome::Written { .. })),
            "batch {batch} not written: {:?}",
            res.outcomes
        );
        let mut out = stdout.lock();
        writeln!(out, "ack {batch} {}", res.ts.to_decimal_string()).expect("write ack");
        out.flush().expect("flush ack");
    }
}

fn present_rows(engine: &Engine, batch: u64) -> u64 {
    (0..ROWS_PER_BATCH)
        .filter(|row| {
            let v = engine
                .get(&row_key(batch, *row), Timestamp::MAX)
                .expect("read after crash");
            let d = engine
                .get(&dep_key(batch, *row), Timestamp::MAX)
                .expect("read after crash");
            match (v, d) {
                (None, None) => false,
                (Some(v), Some(d)) => {
                    assert_eq!(
                        v.value,
                        Some(row_value(batch, *row)),
                        "batch {batch} row {row} value"
                    );
                    assert_eq!(
                        d.value,
                        Some(row_key(batch, *row)),
                        "batch {batch} row {row} dependent"
                    );
                    assert_eq!(v.ts, d.ts, "a row and its dependent commit together");
                    true
                }
                (v, d) => panic!("batch {batch} row {row}: row {v:?} without its dependent {d:?}"),
            }
        })
        .count() as u64
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("acknowledged_writes_survive_sigkill: SEED={seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary path");
    let mut next_batch = 0u64;
    let mut acked: Vec<(u64, Timestamp)> = Vec::new();
    for round in 0..3 {
        let kill_after = rng.random_range(50..1500);
        let mut child = Command::new(&exe)
            .args([
                "acknowledged_writes_survive_sigkill",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(FIRST_BATCH_ENV, next_batch.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = BufReader::new(stdout).lines();
        let mut round_acks = 0;
        let mut killed = false;
        for line in lines {
            let line = line.expect("read child output");
            let Some(rest) = line.strip_prefix("ack ") else {
                continue;
            };
            let (batch, ts) = rest.split_once(' ').expect("ack line has a batch and a ts");
            acked.push((
                batch.parse().expect("batch number"),
                ts.parse().expect("timestamp"),
            ));
            round_acks += 1;
            if round_acks == kill_after && !killed {
                // SIGKILL mid-stream; acks already in the pipe are still read below.
                child.kill().expect("SIGKILL the child");
                killed = true;
            }
        }
        let status = child.wait().expect("wait for child");
        assert!(
            killed,
            "round {round}: the child exited on its own ({status:?}) after {round_acks} acks"
        );
        println!("round {round}: killed after {round_acks} acknowledged batches");

        // Reopen and verify: every acknowledged batch complete; later ones all-or-nothing.
        let engine = Engine::open(
            dir.path(),
            Arc::new(Clock::default()),
            EngineOptions::default(),
        )
        .expect("reopen");
        for (batch, ts) in &acked {
            assert_eq!(
                present_rows(&engine, *batch),
                ROWS_PER_BATCH,
                "acknowledged batch {batch} lost (SEED={seed})"
            );
            let v = engine
                .get(&row_key(*batch, 0), Timestamp::MAX)
                .expect("get")
                .expect("present");
            assert_eq!(v.ts, *ts, "batch {batch} commit timestamp");
        }
        let last_acked = acked.last().map(|(b, _)| *b).expect("some acks");
        let mut batch = last_acked + 1;
        loop {
            let n = present_rows(&engine, batch);
            assert!(
                n == 0 || n == ROWS_PER_BATCH,
                "batch {batch} partially visible: {n} rows (SEED={seed})"
            );
            if n == 0 {
                break;
            }
            batch += 1;
        }
        // Nothing beyond the batches the child could have written exists.
        let beyond = engine
            .scan(
                &Span::new(row_key(batch + 1, 0), b"c".to_vec()),
                Timestamp::MAX,
                1,
            )
            .expect("scan");
        assert!(
            beyond.is_empty(),
            "unexpected rows after batch {batch}: {beyond:?}"
        );
        next_batch = batch;
    }
}
