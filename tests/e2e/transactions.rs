//! Atomicity of transactions that span several ranges, through real `ldr` processes (three
//! nodes, every range a Raft group on all of them):
//!
//! 1. `multi_range_transactions_are_all_or_nothing`: groups of rows whose primary keys hash
//!    into different ranges (one row per range where possible) are rewritten to one new
//!    generation number per transaction (explicit transactions with one UPDATE per row, with
//!    one UPDATE of the whole group, and autocommit UPDATEs of the whole group), each
//!    explicit transaction also INSERTing a fixed number of rows of its generation into a log
//!    table. Readers read groups in one statement, read the whole table in one statement, and
//!    read a group in two statements of one explicit transaction. Every read must see one
//!    generation across the group (never part of a transaction), the log rows of every
//!    generation it sees must all be there, and no generation of a transaction that failed
//!    with 40001 may ever be seen.
//! 2. `bank_total_survives_kill_restart_loop`: transfers between 20 accounts (rows in several
//!    ranges), each with a ledger row written in the same transaction, through whichever node
//!    is up, while a nemesis kills (-9) and restarts a random node five times. A checker
//!    reads the total all along and it must never change; at the end, with every node back,
//!    the total is exact, every acknowledged transfer is in the ledger, no transfer that
//!    failed with 40001 (or never sent its COMMIT) is, and each account's balance equals its
//!    initial balance plus its ledger deltas.
//!
//! Which range a row lands in: a table has one range per shard (`SHOW RANGES FROM TABLE t`,
//! start key `/Table/<table>/<shard>`), and a row's shard is `fnv1a64(encoded primary key) %
//! shard_count` (`docs/architecture.md`); [`shard_of`] computes it for INT8 keys with the
//! SQL layer's key encoding (`0x02` then the value with its sign bit flipped, big-endian).
//!
//! Both tests collect every violation and fail at the end with counts and the first few
//! examples of each kind. `LDR_TXN_TRACE=1` prints one line per writer transaction attempt of
//! test 1 (statement and COMMIT latency, error).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ldr_e2e::{any_sql, cluster, code_of, column_values, phase, poll};
use ldr_sim::Cluster;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

// ---------------------------------------------------------------------------------------------
// Shared helpers.
// ---------------------------------------------------------------------------------------------

/// The SQL layer's order-preserving key encoding of a non-NULL INT8 (`encoding::encode_key`).
fn encode_int_key(out: &mut Vec<u8>, v: i64) {
    out.push(0x02);
    out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

/// The shard (= range, see the module docs) of a row whose primary key is the INT8 columns
/// `pk`, in a table of `shards` shards.
fn shard_of(pk: &[i64], shards: u16) -> u16 {
    let mut encoded = Vec::new();
    for v in pk {
        encode_int_key(&mut encoded, *v);
    }
    ldr_types::keys::shard_for(&encoded, shards)
}

/// The ranges of `table` as `shard -> (range_id, leaseholder)`; checks that they are exactly
/// shards `0..n` (the premise of [`shard_of`]).
async fn table_ranges(c: &Cluster, table: &str) -> Result<BTreeMap<u16, (String, String)>> {
    let rows = c
        .query_text(1, &format!("SHOW RANGES FROM TABLE {table}"))
        .await?;
    let ids = column_values(&rows, "range_id")?;
    let starts = column_values(&rows, "start_key")?;
    let holders = column_values(&rows, "lease_holder")?;
    let mut out = BTreeMap::new();
    for ((id, start), holder) in ids.into_iter().zip(starts).zip(holders) {
        // "/Table/<table id>/<shard>"
        let shard: u16 = start
            .split('/')
            .nth(3)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("range {id} of {table} starts at {start:?}"))?;
        out.insert(shard, (id, holder));
    }
    let n = out.len();
    ensure!(
        out.keys().copied().eq(0..n as u16),
        "ranges of {table} are not shards 0..{n}: {out:?}"
    );
    Ok(out)
}

/// Whether the error is a server error (the connection is still usable) or the connection
/// broke.
fn connection_broken(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none()
}

/// `code message` of an error, for reports.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => format!("connection: {e}"),
    }
}

/// Keeps the first few samples of some kind of event for the failure report.
#[derive(Default)]
struct Samples {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Samples {
    fn add(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first.lock()
            && first.len() < 8
        {
            first.push(what);
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn report(&self, name: &str) -> String {
        let first = self.first.lock().map(|f| f.clone()).unwrap_or_default();
        let mut s = format!("{name}: {}", self.count());
        for f in first {
            s.push_str("\n    ");
            s.push_str(&f);
        }
        s
    }
}

/// With `LDR_TXN_TRACE` set, prints one line per writer transaction attempt.
fn trace(line: impl FnOnce() -> String) {
    if std::env::var_os("LDR_TXN_TRACE").is_some() {
        eprintln!("trace: {}", line());
    }
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// 1. All or nothing.
// ---------------------------------------------------------------------------------------------

/// Groups of rows rewritten together. Writer `w` mostly rewrites group `w` (its own) and
/// sometimes a random one, so writers conflict now and then (40001) without starving each
/// other; group 3 is rewritten only by the occasional random choice.
const GROUPS: i64 = 4;
/// How often a writer picks a random group instead of its own.
const FOREIGN_GROUP_EVERY: u64 = 4;
/// Pause between two autocommit writes (pacing, so that the explicit transactions, whose
/// COMMIT can take a while, are not starved by 40001s).
const AUTOCOMMIT_PAUSE: Duration = Duration::from_millis(250);
/// Pause between two reads of one reader (pacing: leaves CPU to the writers).
const READ_PAUSE: Duration = Duration::from_millis(10);
/// Rows per group (each in its own range when the table has that many).
const ROWS_PER_GROUP: usize = 8;
/// Log rows each explicit writer transaction inserts for its generation.
const LOG_ROWS: i64 = 6;
/// How long the writers and readers run.
const GEN_LOAD: Duration = Duration::from_secs(25);
/// Upper bounds on operations per task, whatever the speed of the machine.
const MAX_TXNS_PER_WRITER: u64 = 2_000;
const MAX_READS_PER_READER: u64 = 5_000;
/// One operation (a statement or a whole transaction) taking longer than this is a hang.
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts of one writer transaction on 40001.
const WRITE_ATTEMPTS: usize = 30;

/// How a generation was written; the kind is `g % 4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    /// `BEGIN; UPDATE … WHERE k = $k` for every row (shuffled order); log INSERT; `COMMIT`.
    PerRowTxn = 0,
    /// `BEGIN; UPDATE … WHERE k IN (<the group's keys>)`; log INSERT; `COMMIT`. (Primary key
    /// lookups: an UPDATE filtering on `grp` would scan, so read, every row of the table and
    /// conflict with every concurrent write.)
    GroupTxn = 1,
    /// `UPDATE … WHERE k IN (<the group's keys>)` outside an explicit transaction (no log
    /// rows).
    Autocommit = 2,
}

impl WriteKind {
    fn of(g: i64) -> WriteKind {
        match g % 4 {
            1 => WriteKind::GroupTxn,
            2 => WriteKind::Autocommit,
            _ => WriteKind::PerRowTxn,
        }
    }

    fn has_log(self) -> bool {
        self != WriteKind::Autocommit
    }
}

/// How a generation was written, for reports (`0` is the initial load).
fn kind_name(g: i64) -> String {
    if g == 0 {
        "initial".into()
    } else {
        format!("{:?}", WriteKind::of(g))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GenOutcome {
    Committed,
    /// 40001: nothing of it may ever be visible.
    Aborted,
    /// 40003, or an autocommit statement that failed: no claim.
    Ambiguous,
}

struct GenState {
    /// Row keys of each group.
    groups: Vec<Vec<i64>>,
    next_gen: AtomicI64,
    outcomes: Mutex<HashMap<i64, GenOutcome>>,
    /// Every generation a reader saw (in a consistent read).
    observed: Mutex<HashSet<i64>>,
    // Reads by kind.
    group_reads: AtomicU64,
    table_reads: AtomicU64,
    txn_reads: AtomicU64,
    reader_restarts: AtomicU64,
    // Violations.
    /// Torn reads involving a generation written by an explicit transaction.
    torn_statement: Samples,
    /// Torn reads involving only autocommit UPDATEs (and the initial load).
    torn_statement_autocommit: Samples,
    torn_txn: Samples,
    missing_rows: Samples,
    incomplete_log: Samples,
    unexpected: Samples,
    // Writes.
    committed: [AtomicU64; 3],
    retries: AtomicU64,
    ambiguous: AtomicU64,
}

impl GenState {
    fn new_gen(&self, kind: WriteKind) -> i64 {
        self.next_gen.fetch_add(1, Ordering::Relaxed) * 4 + kind as i64
    }

    fn record(&self, g: i64, outcome: GenOutcome) {
        if let Ok(mut o) = self.outcomes.lock() {
            o.insert(g, outcome);
        }
    }

    fn observe(&self, g: i64) {
        if let Ok(mut o) = self.observed.lock() {
            o.insert(g);
        }
    }
}

fn in_list(keys: &[i64]) -> String {
    keys.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Jittered exponential backoff before retrying a writer transaction that got 40001: up to
/// 100 ms doubling to 1.6 s, so that two transactions that keep invalidating each other
/// (a COMMIT can take a second in a debug build) stop doing so.
fn retry_backoff(rng: &mut StdRng, attempt: usize) -> Duration {
    Duration::from_millis(rng.random_range(0..=100u64 << attempt.min(4)))
}

/// Runs `sql` with a deadline; `Err` of the outer result is a hang.
async fn timed(
    client: &Client,
    sql: &str,
) -> Result<std::result::Result<(), tokio_postgres::Error>> {
    tokio::time::timeout(OP_TIMEOUT, client.batch_execute(sql))
        .await
        .with_context(|| format!("`{sql}` did not finish within {OP_TIMEOUT:?}"))
}

async fn timed_query(
    client: &Client,
    sql: &str,
) -> Result<std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>> {
    tokio::time::timeout(OP_TIMEOUT, client.query(sql, &[]))
        .await
        .with_context(|| format!("`{sql}` did not finish within {OP_TIMEOUT:?}"))
}

/// One writer: rewrites random groups to fresh generations of kind `kind` (the per-row
/// writer also does a group transaction every third time) until `until`.
async fn gen_writer(
    state: Arc<GenState>,
    url: String,
    kind: WriteKind,
    own_group: i64,
    seed: u64,
    until: Instant,
) -> Result<()> {
    let client = ldr_sim::sql::connect(&url, Duration::from_secs(10)).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut done = 0u64;
    while Instant::now() < until && done < MAX_TXNS_PER_WRITER {
        let grp = if done % FOREIGN_GROUP_EVERY == FOREIGN_GROUP_EVERY - 1 {
            rng.random_range(0..GROUPS)
        } else {
            own_group
        };
        let kind = if kind == WriteKind::PerRowTxn && done % 3 == 2 {
            WriteKind::GroupTxn
        } else {
            kind
        };
        let mut committed = false;
        for attempt in 0..WRITE_ATTEMPTS {
            let g = state.new_gen(kind);
            if kind == WriteKind::Autocommit {
                let sql = format!(
                    "UPDATE gen_rows SET g = {g} WHERE k IN ({})",
                    in_list(&state.groups[grp as usize])
                );
                match timed(&client, &sql).await? {
                    Ok(()) => {
                        state.record(g, GenOutcome::Committed);
                        committed = true;
                    }
                    Err(e) if code_of(&e) == "40001" => {
                        // An autocommit statement is retried by the server; when it gives
                        // up, make no claim about what it left.
                        state.record(g, GenOutcome::Ambiguous);
                        add(&state.retries);
                    }
                    Err(e) => bail!("autocommit writer: `{sql}`: {}", describe(&e)),
                }
                if committed {
                    break;
                }
                continue;
            }
            let mut statements = vec!["BEGIN".to_string()];
            match kind {
                WriteKind::PerRowTxn => {
                    let mut keys = state.groups[grp as usize].clone();
                    keys.shuffle(&mut rng);
                    for k in keys {
                        statements.push(format!("UPDATE gen_rows SET g = {g} WHERE k = {k}"));
                    }
                }
                _ => statements.push(format!(
                    "UPDATE gen_rows SET g = {g} WHERE k IN ({})",
                    in_list(&state.groups[grp as usize])
                )),
            }
            let log: Vec<String> = (0..LOG_ROWS).map(|i| format!("({g}, {i})")).collect();
            statements.push(format!(
                "INSERT INTO gen_log (g, i) VALUES {}",
                log.join(", ")
            ));
            let mut failed = None;
            let t0 = Instant::now();
            for s in &statements {
                if let Err(e) = timed(&client, s).await? {
                    failed = Some((s.clone(), e));
                    break;
                }
            }
            if let Some((s, e)) = failed {
                trace(|| {
                    format!(
                        "{kind:?} g={g} on group {grp}: `{s}` failed after {:?}: {}",
                        t0.elapsed(),
                        describe(&e)
                    )
                });
                // Nothing was committed: COMMIT was never sent.
                state.record(g, GenOutcome::Aborted);
                timed(&client, "ROLLBACK")
                    .await?
                    .with_context(|| format!("ROLLBACK after `{s}` failed"))?;
                if code_of(&e) == "40001" {
                    add(&state.retries);
                    tokio::time::sleep(retry_backoff(&mut rng, attempt)).await;
                    continue;
                }
                bail!("writer: `{s}` failed: {}", describe(&e));
            }
            let t1 = t0.elapsed();
            let r = timed(&client, "COMMIT").await?;
            trace(|| {
                format!(
                    "{kind:?} g={g} on group {grp}: statements {t1:?}, COMMIT {:?}: {:?}",
                    t0.elapsed() - t1,
                    r.as_ref().err().map(describe)
                )
            });
            match r {
                Ok(()) => {
                    state.record(g, GenOutcome::Committed);
                    committed = true;
                    break;
                }
                Err(e) if code_of(&e) == "40001" => {
                    state.record(g, GenOutcome::Aborted);
                    add(&state.retries);
                    tokio::time::sleep(retry_backoff(&mut rng, attempt)).await;
                }
                Err(e) if code_of(&e) == "40003" => {
                    state.record(g, GenOutcome::Ambiguous);
                    add(&state.ambiguous);
                    state.unexpected.add(format!(
                        "COMMIT of generation {g} ({kind:?}) was ambiguous without any fault: {}",
                        describe(&e)
                    ));
                    break;
                }
                Err(e) => bail!("writer: COMMIT failed: {}", describe(&e)),
            }
        }
        if committed {
            add(&state.committed[kind as usize]);
        }
        done += 1;
        if kind == WriteKind::Autocommit {
            tokio::time::sleep(AUTOCOMMIT_PAUSE).await;
        }
    }
    Ok(())
}

/// Checks that `rows` (`k, g`) hold one generation and exactly `want` keys; returns it.
fn one_generation(state: &GenState, what: &str, rows: &[(i64, i64)], want: &[i64]) -> Option<i64> {
    let keys: BTreeSet<i64> = rows.iter().map(|r| r.0).collect();
    let want_keys: BTreeSet<i64> = want.iter().copied().collect();
    if keys != want_keys {
        state.missing_rows.add(format!(
            "{what}: read keys {keys:?}, expected {want_keys:?}"
        ));
        return None;
    }
    let gens: BTreeSet<i64> = rows.iter().map(|r| r.1).collect();
    if gens.len() != 1 {
        let by_gen: Vec<String> = gens
            .iter()
            .map(|g| {
                let ks: Vec<i64> = rows.iter().filter(|r| r.1 == *g).map(|r| r.0).collect();
                format!("g={g} ({}) on keys {ks:?}", kind_name(*g))
            })
            .collect();
        // Which writer tore it: an explicit transaction if any generation involved is one.
        let explicit = gens
            .iter()
            .any(|g| *g != 0 && WriteKind::of(*g) != WriteKind::Autocommit);
        let samples = if explicit {
            &state.torn_statement
        } else {
            &state.torn_statement_autocommit
        };
        samples.add(format!("{what}: {}", by_gen.join("; ")));
        return None;
    }
    gens.first().copied()
}

/// After a consistent read showed generation `g`: every log row of `g` must be there.
async fn check_log(state: &GenState, client: &Client, what: &str, g: i64) -> Result<bool> {
    if !WriteKind::of(g).has_log() {
        return Ok(true);
    }
    let sql = format!("SELECT count(*) FROM gen_log WHERE g = {g}");
    match timed_query(client, &sql).await? {
        Ok(rows) => {
            let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(-1);
            if n != LOG_ROWS {
                state.incomplete_log.add(format!(
                    "{what}: generation {g} ({:?}) visible but {n} of its {LOG_ROWS} log rows",
                    WriteKind::of(g)
                ));
            }
            Ok(true)
        }
        Err(e) if code_of(&e) == "40001" => Ok(false),
        Err(e) => bail!("`{sql}`: {}", describe(&e)),
    }
}

fn rows_kg(rows: &[tokio_postgres::Row]) -> Vec<(i64, i64)> {
    rows.iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .collect()
}

/// Reader kinds: 0 reads one group in one statement, 1 the whole table in one statement,
/// 2 one group in two statements of an explicit transaction.
async fn gen_reader(
    state: Arc<GenState>,
    url: String,
    reader_kind: usize,
    seed: u64,
    until: Instant,
) -> Result<()> {
    let client = ldr_sim::sql::connect(&url, Duration::from_secs(10)).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut reads = 0u64;
    while Instant::now() < until && reads < MAX_READS_PER_READER {
        if reads > 0 {
            tokio::time::sleep(READ_PAUSE).await;
        }
        reads += 1;
        let grp = rng.random_range(0..GROUPS);
        let keys = &state.groups[grp as usize];
        match reader_kind {
            0 => {
                let sql = format!("SELECT k, g FROM gen_rows WHERE grp = {grp}");
                let rows = match timed_query(&client, &sql).await? {
                    Ok(rows) => rows_kg(&rows),
                    Err(e) if code_of(&e) == "40001" => {
                        add(&state.reader_restarts);
                        continue;
                    }
                    Err(e) => bail!("`{sql}`: {}", describe(&e)),
                };
                add(&state.group_reads);
                let what = format!("group {grp} in one statement");
                if let Some(g) = one_generation(&state, &what, &rows, keys) {
                    state.observe(g);
                    check_log(&state, &client, &what, g).await?;
                }
            }
            1 => {
                let sql = "SELECT grp, k, g FROM gen_rows";
                let rows = match timed_query(&client, sql).await? {
                    Ok(rows) => rows,
                    Err(e) if code_of(&e) == "40001" => {
                        add(&state.reader_restarts);
                        continue;
                    }
                    Err(e) => bail!("`{sql}`: {}", describe(&e)),
                };
                add(&state.table_reads);
                for (grp, keys) in state.groups.iter().enumerate() {
                    let of_group: Vec<(i64, i64)> = rows
                        .iter()
                        .filter(|r| r.get::<_, i64>(0) == grp as i64)
                        .map(|r| (r.get::<_, i64>(1), r.get::<_, i64>(2)))
                        .collect();
                    let what = format!("group {grp} in a whole-table read");
                    if let Some(g) = one_generation(&state, &what, &of_group, keys) {
                        state.observe(g);
                    }
                }
            }
            _ => {
                let (first, second) = keys.split_at(keys.len() / 2);
                timed(&client, "BEGIN").await?.context("BEGIN")?;
                let mut halves = Vec::new();
                let mut restarted = false;
                for half in [first, second] {
                    let sql = format!("SELECT k, g FROM gen_rows WHERE k IN ({})", in_list(half));
                    match timed_query(&client, &sql).await? {
                        Ok(rows) => halves.push(rows_kg(&rows)),
                        Err(e) if code_of(&e) == "40001" => {
                            restarted = true;
                            break;
                        }
                        Err(e) => bail!("`{sql}` in a transaction: {}", describe(&e)),
                    }
                }
                let mut consistent = None;
                if !restarted {
                    let what = format!("group {grp}, first statement of a transaction");
                    let g1 = one_generation(&state, &what, &halves[0], first);
                    let what = format!("group {grp}, second statement of a transaction");
                    let g2 = one_generation(&state, &what, &halves[1], second);
                    if let (Some(g1), Some(g2)) = (g1, g2) {
                        consistent = Some((g1, g2));
                        if g1 == g2 {
                            let what = format!("group {grp} in a transaction");
                            if !check_log(&state, &client, &what, g1).await? {
                                restarted = true;
                            }
                        }
                    }
                }
                if restarted {
                    timed(&client, "ROLLBACK").await?.context("ROLLBACK")?;
                    add(&state.reader_restarts);
                    continue;
                }
                match timed(&client, "COMMIT").await? {
                    Ok(()) => {}
                    Err(e) if code_of(&e) == "40001" => {
                        add(&state.reader_restarts);
                        continue;
                    }
                    Err(e) => bail!("COMMIT of a read-only transaction: {}", describe(&e)),
                }
                add(&state.txn_reads);
                if let Some((g1, g2)) = consistent {
                    if g1 == g2 {
                        state.observe(g1);
                    } else {
                        state.torn_txn.add(format!(
                            "group {grp}: a committed transaction read g={g1} ({}) on keys {first:?} and then g={g2} ({}) on keys {second:?}",
                            kind_name(g1),
                            kind_name(g2)
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_range_transactions_are_all_or_nothing() -> Result<()> {
    let started = Instant::now();
    let c = cluster("txg", 3).await?;
    phase(started, "cluster up");
    c.exec(
        1,
        "CREATE TABLE gen_rows (k INT8 PRIMARY KEY, grp INT8 NOT NULL, g INT8 NOT NULL);
         CREATE TABLE gen_log (g INT8, i INT8, PRIMARY KEY (g, i));",
    )
    .await?;
    let ranges = table_ranges(&c, "gen_rows").await?;
    let shards = ranges.len() as u16;
    ensure!(shards >= 4, "gen_rows has only {shards} ranges: {ranges:?}");
    let log_ranges = table_ranges(&c, "gen_log").await?.len() as u16;

    // Each group: keys in as many different ranges as possible (one per range).
    let mut groups = Vec::new();
    for grp in 0..GROUPS {
        let mut keys = Vec::new();
        let mut used = BTreeSet::new();
        for k in grp * 1000..grp * 1000 + 1000 {
            if keys.len() == ROWS_PER_GROUP {
                break;
            }
            let s = shard_of(&[k], shards);
            if used.len() < shards as usize && !used.insert(s) {
                continue;
            }
            keys.push(k);
        }
        let spans: BTreeSet<u16> = keys.iter().map(|k| shard_of(&[*k], shards)).collect();
        ensure!(
            keys.len() == ROWS_PER_GROUP && spans.len() >= 4,
            "group {grp}: keys {keys:?} span only ranges {spans:?}"
        );
        let range_ids: Vec<&str> = spans.iter().map(|s| ranges[s].0.as_str()).collect();
        eprintln!("group {grp}: keys {keys:?} in ranges {range_ids:?}");
        groups.push(keys);
    }
    // The log rows of one generation span several ranges too (checked for generation 0).
    let log_spans: BTreeSet<u16> = (0..LOG_ROWS)
        .map(|i| shard_of(&[0, i], log_ranges))
        .collect();
    eprintln!(
        "log rows of one generation span {} of {log_ranges} ranges of gen_log",
        log_spans.len()
    );
    let values: Vec<String> = groups
        .iter()
        .enumerate()
        .flat_map(|(grp, keys)| keys.iter().map(move |k| format!("({k}, {grp}, 0)")))
        .collect();
    c.exec(
        1,
        &format!(
            "INSERT INTO gen_rows (k, grp, g) VALUES {}",
            values.join(", ")
        ),
    )
    .await?;
    let log: Vec<String> = (0..LOG_ROWS).map(|i| format!("(0, {i})")).collect();
    c.exec(
        1,
        &format!("INSERT INTO gen_log (g, i) VALUES {}", log.join(", ")),
    )
    .await?;
    let loaded = c.query(2, "SELECT count(*) FROM gen_rows").await?;
    ensure!(
        loaded.first().map(|r| r.get::<_, i64>(0)) == Some(GROUPS * ROWS_PER_GROUP as i64),
        "initial rows not all visible"
    );

    let state = Arc::new(GenState {
        groups,
        next_gen: AtomicI64::new(1),
        outcomes: Mutex::new(HashMap::from([(0, GenOutcome::Committed)])),
        observed: Mutex::new(HashSet::new()),
        group_reads: AtomicU64::new(0),
        table_reads: AtomicU64::new(0),
        txn_reads: AtomicU64::new(0),
        reader_restarts: AtomicU64::new(0),
        torn_statement: Samples::default(),
        torn_statement_autocommit: Samples::default(),
        torn_txn: Samples::default(),
        missing_rows: Samples::default(),
        incomplete_log: Samples::default(),
        unexpected: Samples::default(),
        committed: Default::default(),
        retries: AtomicU64::new(0),
        ambiguous: AtomicU64::new(0),
    });
    phase(started, "load starts");
    let until = Instant::now() + GEN_LOAD;
    let mut tasks = tokio::task::JoinSet::new();
    // Writers and readers spread over the three gateways.
    let writer_kinds = [
        WriteKind::PerRowTxn,
        WriteKind::GroupTxn,
        WriteKind::Autocommit,
    ];
    for (i, kind) in writer_kinds.into_iter().enumerate() {
        let url = c.url(i % 3 + 1)?;
        tasks.spawn(gen_writer(
            state.clone(),
            url,
            kind,
            i as i64,
            100 + i as u64,
            until,
        ));
    }
    for i in 0..3 {
        let url = c.url((i + 1) % 3 + 1)?;
        tasks.spawn(gen_reader(state.clone(), url, i, 200 + i as u64, until));
    }
    let mut task_errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => task_errors.push(format!("{e:#}")),
            Err(e) => task_errors.push(format!("task panicked: {e}")),
        }
    }
    phase(started, "load done");

    // Generations seen by readers that belong to transactions that failed with 40001.
    let dirty: Vec<i64> = {
        let outcomes = state
            .outcomes
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let observed = state
            .observed
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut d: Vec<i64> = observed
            .iter()
            .copied()
            .filter(|g| outcomes.get(g) == Some(&GenOutcome::Aborted))
            .collect();
        d.sort_unstable();
        d
    };
    let observed = state.observed.lock().map(|o| o.len()).unwrap_or(0);
    let reads = get(&state.group_reads) + get(&state.table_reads) + get(&state.txn_reads);
    let committed: Vec<u64> = state.committed.iter().map(get).collect();
    let summary = format!(
        "reads: {reads} ({} group statements, {} whole-table statements, {} two-statement transactions; {} reader restarts on 40001); \
         committed writes: {} per-row transactions, {} group transactions, {} autocommit statements; {} writer retries on 40001, {} ambiguous; \
         {observed} distinct generations observed\n  {}\n  {}\n  {}\n  {}\n  {}\n  {}\n  dirty reads (generations of transactions that failed with 40001 seen by readers): {} {:?}",
        get(&state.group_reads),
        get(&state.table_reads),
        get(&state.txn_reads),
        get(&state.reader_restarts),
        committed[0],
        committed[1],
        committed[2],
        get(&state.retries),
        get(&state.ambiguous),
        state
            .torn_statement
            .report("torn reads within one statement, involving an explicit transaction"),
        state
            .torn_statement_autocommit
            .report("torn reads within one statement, involving only autocommit UPDATEs"),
        state
            .torn_txn
            .report("torn reads across the statements of a committed transaction"),
        state
            .incomplete_log
            .report("generations visible without all their log rows"),
        state.missing_rows.report("reads missing or adding rows"),
        state.unexpected.report("unexpected outcomes"),
        dirty.len(),
        dirty.iter().take(8).collect::<Vec<_>>(),
    );
    eprintln!("{summary}");
    ensure!(
        task_errors.is_empty(),
        "tasks failed: {task_errors:#?}\n{summary}"
    );

    // The verdict: no read ever saw part of a transaction.
    ensure!(
        state.torn_statement.count() == 0
            && state.torn_statement_autocommit.count() == 0
            && state.torn_txn.count() == 0
            && state.incomplete_log.count() == 0
            && state.missing_rows.count() == 0
            && dirty.is_empty()
            && state.unexpected.count() == 0,
        "multi-range transactions were not all-or-nothing:\n{summary}"
    );
    // The run exercised something.
    ensure!(
        get(&state.group_reads) >= 30
            && get(&state.table_reads) >= 30
            && get(&state.txn_reads) >= 30,
        "too few reads:\n{summary}"
    );
    ensure!(
        committed[0] >= 2 && committed[1] >= 2 && committed[2] >= 5,
        "too few committed writes:\n{summary}"
    );
    ensure!(
        observed >= 15,
        "readers saw only {observed} generations:\n{summary}"
    );

    // Quiesced: every group holds one committed generation, through every gateway.
    for node in 1..=3 {
        let rows = c.query(node, "SELECT grp, k, g FROM gen_rows").await?;
        for (grp, keys) in state.groups.iter().enumerate() {
            let of_group: Vec<(i64, i64)> = rows
                .iter()
                .filter(|r| r.get::<_, i64>(0) == grp as i64)
                .map(|r| (r.get::<_, i64>(1), r.get::<_, i64>(2)))
                .collect();
            let g = one_generation(
                &state,
                &format!("final read of group {grp} through node {node}"),
                &of_group,
                keys,
            );
            ensure!(
                g.is_some(),
                "the final state is torn:\n{}\n{}\n{}",
                state.torn_statement.report("torn"),
                state.torn_statement_autocommit.report("torn"),
                state.missing_rows.report("missing")
            );
        }
    }
    phase(started, "done");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Bank under kill -9.
// ---------------------------------------------------------------------------------------------

const ACCOUNTS: i64 = 20;
const INITIAL: i64 = 1000;
const TOTAL: i64 = ACCOUNTS * INITIAL;
const BANK_CLIENTS: usize = 4;
/// Kills (each followed by a restart) of the nemesis.
const KILLS: usize = 5;
/// Upper bounds for the load.
const MAX_TRANSFERS_PER_CLIENT: u64 = 3_000;
const BANK_LOAD_MAX: Duration = Duration::from_secs(100);
/// One statement taking longer than this is given up on (the connection is dropped).
const STMT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one transfer on 40001 (or a broken connection before COMMIT).
const TRANSFER_ATTEMPTS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferOutcome {
    /// COMMIT succeeded.
    Acked,
    /// Failed before COMMIT was sent, or COMMIT failed with 40001: nothing may be applied.
    Failed,
    /// COMMIT was sent and no definite answer came back (40003, another error, a broken
    /// connection or a timeout): it may or may not be applied, but entirely or not at all.
    Ambiguous,
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    from: i64,
    to: i64,
    amount: i64,
    outcome: TransferOutcome,
}

#[derive(Default)]
struct BankState {
    transfers: Mutex<HashMap<i64, Transfer>>,
    acked: AtomicU64,
    failed_40001: AtomicU64,
    failed_other: AtomicU64,
    ambiguous: AtomicU64,
    reconnects: AtomicU64,
    checks: AtomicU64,
    check_errors: AtomicU64,
    wrong_totals: Samples,
    stop: AtomicBool,
}

/// One transfer attempt; the `bool` says whether the connection must be dropped.
async fn transfer(
    client: &Client,
    tid: i64,
    from: i64,
    to: i64,
    amount: i64,
) -> (TransferOutcome, Option<String>, bool) {
    let statements = [
        "BEGIN".to_string(),
        format!("UPDATE accounts SET balance = balance - {amount} WHERE id = {from}"),
        format!("UPDATE accounts SET balance = balance + {amount} WHERE id = {to}"),
        format!(
            "INSERT INTO ledger (tid, src, dst, amount) VALUES ({tid}, {from}, {to}, {amount})"
        ),
    ];
    for s in &statements {
        match tokio::time::timeout(STMT_TIMEOUT, client.batch_execute(s)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let broken = connection_broken(&e)
                    || tokio::time::timeout(STMT_TIMEOUT, client.batch_execute("ROLLBACK"))
                        .await
                        .map_or(true, |r| r.is_err());
                return (
                    TransferOutcome::Failed,
                    Some(code_of(&e)).filter(|c| !c.is_empty()),
                    broken,
                );
            }
            Err(_) => return (TransferOutcome::Failed, None, true),
        }
    }
    match tokio::time::timeout(STMT_TIMEOUT, client.batch_execute("COMMIT")).await {
        Ok(Ok(())) => (TransferOutcome::Acked, None, false),
        Ok(Err(e)) if code_of(&e) == "40001" => {
            (TransferOutcome::Failed, Some("40001".into()), false)
        }
        Ok(Err(e)) => (
            TransferOutcome::Ambiguous,
            Some(describe(&e)),
            connection_broken(&e),
        ),
        Err(_) => (
            TransferOutcome::Ambiguous,
            Some("COMMIT timed out".into()),
            true,
        ),
    }
}

async fn bank_client(
    state: Arc<BankState>,
    c: Arc<Cluster>,
    id: usize,
    deadline: Instant,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(1000 + id as u64);
    let mut client: Option<Client> = None;
    let mut seq = 0i64;
    let mut done = 0u64;
    while !state.stop.load(Ordering::Relaxed)
        && Instant::now() < deadline
        && done < MAX_TRANSFERS_PER_CLIENT
    {
        done += 1;
        let from = rng.random_range(0..ACCOUNTS);
        let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
        let amount = rng.random_range(1..=50);
        for attempt in 0..TRANSFER_ATTEMPTS {
            if state.stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                break;
            }
            let conn = match &client {
                Some(conn) if !conn.is_closed() => conn,
                _ => {
                    client = None;
                    match any_sql(&c, rng.random_range(1..=c.node_count())).await {
                        Ok(conn) => {
                            add(&state.reconnects);
                            client.insert(conn)
                        }
                        Err(_) => {
                            // Every node refused for now (one is down, another restarting):
                            // back off and try again.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    }
                }
            };
            seq += 1;
            let tid = (id as i64 + 1) * 1_000_000 + seq;
            let (outcome, code, broken) = transfer(conn, tid, from, to, amount).await;
            if broken {
                client = None;
            }
            if let Ok(mut t) = state.transfers.lock() {
                t.insert(
                    tid,
                    Transfer {
                        from,
                        to,
                        amount,
                        outcome,
                    },
                );
            }
            match outcome {
                TransferOutcome::Acked => {
                    add(&state.acked);
                    break;
                }
                TransferOutcome::Ambiguous => {
                    add(&state.ambiguous);
                    break;
                }
                TransferOutcome::Failed => {
                    if code.as_deref() == Some("40001") {
                        add(&state.failed_40001);
                    } else {
                        add(&state.failed_other);
                    }
                    let backoff = rng.random_range(1..=(5u64 << attempt.min(5)));
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
    }
    Ok(())
}

/// Parses an integer SQL result given as text (`sum` may come back as a decimal).
fn parse_int(text: &str) -> Option<i64> {
    let t = text.trim();
    let t = match t.split_once('.') {
        Some((i, f)) if f.chars().all(|c| c == '0') => i,
        Some(_) => return None,
        None => t,
    };
    t.parse().ok()
}

async fn total_and_count(client: &Client) -> Result<(i64, i64)> {
    let rows = tokio::time::timeout(
        STMT_TIMEOUT,
        ldr_sim::sql::query_text(client, "SELECT sum(balance), count(*) FROM accounts"),
    )
    .await
    .context("the total did not come back in time")??;
    let row = rows.rows.first().context("no row")?;
    let sum = row.first().cloned().flatten().unwrap_or_default();
    let count = row.get(1).cloned().flatten().unwrap_or_default();
    Ok((
        parse_int(&sum).with_context(|| format!("sum {sum:?}"))?,
        parse_int(&count).with_context(|| format!("count {count:?}"))?,
    ))
}

async fn bank_checker(
    state: Arc<BankState>,
    c: Arc<Cluster>,
    started: Instant,
    deadline: Instant,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(77);
    let mut client: Option<(usize, Client)> = None;
    let mut checks = 0u64;
    while !state.stop.load(Ordering::Relaxed) && Instant::now() < deadline && checks < 20_000 {
        checks += 1;
        // A new connection (to a random live node) every few reads, so the total is read
        // through every gateway.
        if checks.is_multiple_of(10) {
            client = None;
        }
        if client.as_ref().is_none_or(|(_, cl)| cl.is_closed()) {
            let node = rng.random_range(1..=c.node_count());
            client = match any_sql(&c, node).await {
                Ok(cl) => Some((node, cl)),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
        }
        let Some((node, cl)) = &client else { continue };
        match total_and_count(cl).await {
            Ok((sum, count)) => {
                add(&state.checks);
                if sum != TOTAL || count != ACCOUNTS {
                    state.wrong_totals.add(format!(
                        "at {:.1}s through the first live node from index {node}: total {sum}, {count} accounts",
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
            Err(_) => {
                add(&state.check_errors);
                client = None;
            }
        }
        // Pacing (not synchronisation): leave CPU to the transfers.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Polls until node `index` answers a read of `accounts`.
async fn wait_serving(c: &Cluster, index: usize) -> Result<Duration> {
    let since = Instant::now();
    poll(
        &format!("node index {index} to serve reads of accounts"),
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async move {
            let client = c.sql(index).await.map_err(|e| e.to_string())?;
            total_and_count(&client)
                .await
                .map(|_| since.elapsed())
                .map_err(|e| format!("{e:#}"))
        },
    )
    .await
}

/// Kills (-9) a random node and restarts it, `KILLS` times; returns a timeline.
async fn nemesis(c: Arc<Cluster>, started: Instant, deadline: Instant) -> Result<Vec<String>> {
    let mut rng = StdRng::seed_from_u64(4242);
    let mut timeline = Vec::new();
    for kill in 0..KILLS {
        if Instant::now() >= deadline {
            break;
        }
        // Pacing: let the load run a while with every node up.
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3000))).await;
        let victim = rng.random_range(1..=c.node_count());
        c.kill(victim)?;
        let at = started.elapsed().as_secs_f64();
        phase(
            started,
            &format!("kill {} of {KILLS}: killed node index {victim}", kill + 1),
        );
        // Pacing: the load runs on the two survivors for a while.
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2500))).await;
        c.restart(victim)
            .await
            .with_context(|| format!("restarting node index {victim}"))?;
        let serving = wait_serving(&c, victim).await?;
        phase(
            started,
            &format!(
                "restarted node index {victim}; it serves reads ({serving:?} after readiness)"
            ),
        );
        timeline.push(format!(
            "{at:.1}s kill -9 node index {victim}, back at {:.1}s",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(timeline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_total_survives_kill_restart_loop() -> Result<()> {
    let started = Instant::now();
    let c = Arc::new(cluster("txb", 3).await?);
    phase(started, "cluster up");
    c.exec(
        1,
        "CREATE TABLE accounts (id INT8 PRIMARY KEY, balance INT8 NOT NULL);
         CREATE TABLE ledger (tid INT8 PRIMARY KEY, src INT8 NOT NULL, dst INT8 NOT NULL, amount INT8 NOT NULL);",
    )
    .await?;
    let ranges = table_ranges(&c, "accounts").await?;
    let spans: BTreeSet<u16> = (0..ACCOUNTS)
        .map(|a| shard_of(&[a], ranges.len() as u16))
        .collect();
    ensure!(
        spans.len() >= 4,
        "the accounts span only ranges {spans:?} of {ranges:?}"
    );
    eprintln!(
        "{ACCOUNTS} accounts over {} of the {} ranges of accounts",
        spans.len(),
        ranges.len()
    );
    let values: Vec<String> = (0..ACCOUNTS).map(|a| format!("({a}, {INITIAL})")).collect();
    c.exec(
        1,
        &format!(
            "INSERT INTO accounts (id, balance) VALUES {}",
            values.join(", ")
        ),
    )
    .await?;
    let (sum, count) = total_and_count(&c.sql(2).await?).await?;
    ensure!(
        sum == TOTAL && count == ACCOUNTS,
        "initial total {sum} over {count} accounts"
    );

    let state = Arc::new(BankState::default());
    let deadline = Instant::now() + BANK_LOAD_MAX;
    phase(started, "load and nemesis start");
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..BANK_CLIENTS {
        clients.spawn(bank_client(state.clone(), c.clone(), id, deadline));
    }
    let checker = tokio::spawn(bank_checker(state.clone(), c.clone(), started, deadline));
    let nemesis_result = nemesis(c.clone(), started, deadline).await;
    // A little load with every node up after the last restart (pacing), then stop.
    if nemesis_result.is_ok() {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    state.stop.store(true, Ordering::Relaxed);
    let mut task_errors = Vec::new();
    while let Some(joined) = clients.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => task_errors.push(format!("{e:#}")),
            Err(e) => task_errors.push(format!("client panicked: {e}")),
        }
    }
    match checker.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => task_errors.push(format!("checker: {e:#}")),
        Err(e) => task_errors.push(format!("checker panicked: {e}")),
    }
    phase(started, "load stopped");
    let timeline = match nemesis_result {
        Ok(t) => t,
        Err(e) => bail!(
            "{}",
            c.failure_report(&format!("the nemesis failed: {e:#}"))
        ),
    };

    // Every node up and serving.
    for index in c.node_ids() {
        if !c.node_info(index)?.running {
            c.restart(index).await?;
        }
        wait_serving(&c, index).await?;
    }
    phase(started, "every node serves");

    // Final state, read through every node: the same balances everywhere.
    let mut balances: Option<BTreeMap<i64, i64>> = None;
    for index in c.node_ids() {
        let rows = c.query(index, "SELECT id, balance FROM accounts").await?;
        let b: BTreeMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if let Some(first) = &balances {
            ensure!(
                *first == b,
                "node index {index} reads other balances: {b:?} vs {first:?}"
            );
        } else {
            balances = Some(b);
        }
    }
    let balances = balances.context("no node")?;
    let ledger_rows = c
        .query(1, "SELECT tid, src, dst, amount FROM ledger")
        .await?;
    let ledger: BTreeMap<i64, (i64, i64, i64)> = ledger_rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let transfers = state
        .transfers
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();

    let mut problems = Vec::new();
    let final_total: i64 = balances.values().sum();
    if final_total != TOTAL || balances.len() != ACCOUNTS as usize {
        problems.push(format!(
            "final total {final_total} over {} accounts, expected {TOTAL} over {ACCOUNTS}",
            balances.len()
        ));
    }
    // Per account: balance - initial == what the ledger says.
    let mut deltas: BTreeMap<i64, i64> = (0..ACCOUNTS).map(|a| (a, 0)).collect();
    for (src, dst, amount) in ledger.values() {
        *deltas.entry(*src).or_default() -= amount;
        *deltas.entry(*dst).or_default() += amount;
    }
    let mismatched: Vec<String> = deltas
        .iter()
        .filter(|(a, d)| balances.get(a).copied().unwrap_or(0) - INITIAL != **d)
        .map(|(a, d)| {
            format!(
                "account {a}: balance {:?}, ledger says {}",
                balances.get(a),
                INITIAL + d
            )
        })
        .collect();
    if !mismatched.is_empty() {
        problems.push(format!(
            "{} accounts disagree with the ledger: {mismatched:?}",
            mismatched.len()
        ));
    }
    // The ledger against the clients' records.
    let mut lost_acked = Vec::new();
    let mut applied_failed = Vec::new();
    let mut unknown = Vec::new();
    let mut wrong_rows = Vec::new();
    let mut ambiguous_applied = 0;
    for (tid, t) in &transfers {
        match (t.outcome, ledger.get(tid)) {
            (TransferOutcome::Acked, None) => lost_acked.push(*tid),
            (TransferOutcome::Failed, Some(_)) => applied_failed.push(*tid),
            (TransferOutcome::Ambiguous, Some(_)) => ambiguous_applied += 1,
            _ => {}
        }
        if let Some(row) = ledger.get(tid)
            && *row != (t.from, t.to, t.amount)
        {
            wrong_rows.push(*tid);
        }
    }
    for tid in ledger.keys() {
        if !transfers.contains_key(tid) {
            unknown.push(*tid);
        }
    }
    for (what, list) in [
        (
            "acknowledged transfers missing from the ledger",
            &lost_acked,
        ),
        (
            "transfers that failed (40001 or before COMMIT) found in the ledger",
            &applied_failed,
        ),
        ("ledger rows no client wrote", &unknown),
        ("ledger rows that differ from what was written", &wrong_rows),
    ] {
        if !list.is_empty() {
            problems.push(format!(
                "{} {what}: {:?}",
                list.len(),
                list.iter().take(10).collect::<Vec<_>>()
            ));
        }
    }
    if state.wrong_totals.count() > 0 {
        problems.push(state.wrong_totals.report(
            "checker reads of the total (or of the account count) that were wrong during the load",
        ));
    }
    let ambiguous = get(&state.ambiguous);
    let summary = format!(
        "timeline: {timeline:#?}\ntransfers: {} acknowledged, {} failed with 40001, {} failed otherwise (before COMMIT), {ambiguous} ambiguous ({ambiguous_applied} of them applied); \
         {} (re)connections; ledger rows {}; checker: {} reads of the total, {} failed reads; final total {final_total}",
        get(&state.acked),
        get(&state.failed_40001),
        get(&state.failed_other),
        get(&state.reconnects),
        ledger.len(),
        get(&state.checks),
        get(&state.check_errors),
    );
    eprintln!("{summary}");
    for p in &problems {
        eprintln!("PROBLEM: {p}");
    }
    ensure!(
        task_errors.is_empty(),
        "tasks failed: {task_errors:#?}\n{summary}"
    );
    ensure!(
        problems.is_empty(),
        "the bank's invariants broke:\n  {}\n{summary}",
        problems.join("\n  ")
    );
    // The run exercised something.
    ensure!(
        timeline.len() >= 4,
        "only {} kills happened:\n{summary}",
        timeline.len()
    );
    ensure!(
        get(&state.acked) >= 15,
        "too few acknowledged transfers:\n{summary}"
    );
    ensure!(
        get(&state.checks) >= 30,
        "too few reads of the total:\n{summary}"
    );
    phase(started, "done");
    Ok(())
}
