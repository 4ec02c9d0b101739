//! What one statement may hold and for how long: its row memory, counted against a
//! per-statement budget (`sql.distsql.temp_storage.workmem`, 64 MiB by default) and the
//! node's SQL memory (a quarter of the machine's RAM, as CockroachDB's `--max-sql-memory`
//! default), and its deadline (`statement_timeout`).
//!
//! The executor materialises rows (scans, nested-loop joins, sorts, groups); every place that
//! keeps rows charges their approximate size with [`StmtLimits::grow`], and loops that can run
//! long without awaiting call [`StmtLimits::tick`], so a runaway statement fails with `53200` or
//! `57014` while the node stays healthy, instead of growing until the kernel kills it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};

/// The SQL memory of one node, shared by its statements.
#[derive(Debug)]
pub struct NodeMemory {
    limit: AtomicU64,
    used: AtomicU64,
}

impl NodeMemory {
    pub fn new(limit: u64) -> Arc<NodeMemory> {
        Arc::new(NodeMemory {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        })
    }

    /// Sets the limit (`ldr start --max-sql-memory`).
    pub fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// The machine's memory in bytes, if it can be read.
    pub fn machine_memory() -> Option<u64> {
        std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .map(|kib| kib * 1024)
        })
    }

    /// A quarter of the machine's memory (4 GiB if it cannot be read).
    pub fn default_limit() -> u64 {
        let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        });
        total_kib.map_or(4 << 30, |kib| kib * 1024 / 4)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: u64) -> std::result::Result<(), u64> {
        let mut current = self.used.load(Ordering::Relaxed);
        let limit = self.limit();
        loop {
            let next = current.saturating_add(bytes);
            if next > limit {
                return Err(current);
            }
            match self.used.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One statement's budget and deadline. Dropping it returns its memory to the node.
#[derive(Debug)]
pub struct StmtLimits {
    node: Arc<NodeMemory>,
    limit: u64,
    used: AtomicU64,
    deadline: Option<Instant>,
    ticks: AtomicU64,
    /// Bytes charged to the node's memory only ([`StmtLimits::grow_row_streamed`]).
    streamed: AtomicU64,
    /// The connection's cancel flag (a pgwire CancelRequest, psql's Ctrl-C).
    cancel: Option<Arc<Canceler>>,
}

/// A connection's cancel flag: set by a CancelRequest carrying the connection's process id
/// and secret key, cleared when a statement starts; statements check it where they check
/// their deadline, and reads also stop wherever they wait.
#[derive(Debug, Default)]
pub struct Canceler {
    canceled: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Canceler {
    /// Cancels the running statement (if any).
    pub fn cancel(&self) {
        self.canceled.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// A new statement starts: earlier cancel requests are forgotten (as in PostgreSQL, a
    /// cancel request only affects the statement running when it arrives).
    pub fn reset(&self) {
        self.canceled.store(false, Ordering::SeqCst);
    }

    pub fn is_canceled(&self) -> bool {
        self.canceled.load(Ordering::SeqCst)
    }

    /// Resolves once the running statement is canceled.
    pub async fn canceled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_canceled() {
                return;
            }
            notified.await;
        }
    }
}

/// Rows between two deadline checks in a tight loop.
const TICK_EVERY: u64 = 1024;

impl StmtLimits {
    pub fn new(node: Arc<NodeMemory>, limit: u64, deadline: Option<Instant>) -> StmtLimits {
        StmtLimits {
            node,
            limit,
            used: AtomicU64::new(0),
            deadline,
            ticks: AtomicU64::new(0),
            streamed: AtomicU64::new(0),
            cancel: None,
        }
    }

    /// These limits also stop the statement when `cancel` fires.
    pub fn with_cancel(mut self, cancel: Option<Arc<Canceler>>) -> StmtLimits {
        self.cancel = cancel;
        self
    }

    /// Charges `bytes` more; `53200` over the statement's or the node's budget.
    pub fn grow(&self, bytes: u64) -> Result<()> {
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(bytes) > self.limit {
            return Err(budget_exceeded("sql", bytes, used, self.limit));
        }
        if let Err(node_used) = self.node.reserve(bytes) {
            return Err(budget_exceeded("root", bytes, node_used, self.node.limit()));
        }
        self.used.fetch_add(bytes, Ordering::Relaxed);
        self.tick()
    }

    /// Charges a row (see [`row_bytes`]).
    pub fn grow_row(&self, row: &[Datum]) -> Result<()> {
        self.grow(row_bytes(row))
    }

    /// Charges a row a scan passes through to the node's SQL memory only: as in CockroachDB,
    /// `sql.distsql.temp_storage.workmem` bounds what a statement buffers (join results,
    /// sorts, groups), not the rows it scans, so `SELECT count(*)` of a big table fits; the
    /// node's budget still bounds everything held.
    pub fn grow_row_streamed(&self, row: &[Datum]) -> Result<()> {
        let bytes = row_bytes(row);
        if let Err(node_used) = self.node.reserve(bytes) {
            return Err(budget_exceeded("root", bytes, node_used, self.node.limit()));
        }
        self.streamed.fetch_add(bytes, Ordering::Relaxed);
        self.tick()
    }

    /// Counts one unit of work; every [`TICK_EVERY`] checks the deadline (`57014` past it).
    pub fn tick(&self) -> Result<()> {
        if self
            .ticks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(TICK_EVERY)
        {
            self.check_deadline()?;
        }
        Ok(())
    }

    /// `57014` once the statement is past its `statement_timeout`, or canceled.
    pub fn check_deadline(&self) -> Result<()> {
        if self.cancel.as_ref().is_some_and(|c| c.is_canceled()) {
            return Err(query_canceled());
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(statement_timeout()),
            _ => Ok(()),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

impl Drop for StmtLimits {
    fn drop(&mut self) {
        self.node
            .release(self.used.load(Ordering::Relaxed) + self.streamed.load(Ordering::Relaxed));
    }
}

/// `--max-sql-memory` as CockroachDB takes it: a percentage (`25%`) or fraction (`.25`) of the
/// machine's memory (`total`), or a byte size (`4GiB`, `512MB`, `1000000`).
pub fn parse_memory_size(text: &str, total: u64) -> Result<u64, String> {
    let t = text.trim();
    let invalid = || format!("invalid memory size \"{text}\"");
    let fraction = if let Some(p) = t.strip_suffix('%') {
        Some(p.trim().parse::<f64>().map_err(|_| invalid())? / 100.0)
    } else if t.contains('.') && t.parse::<f64>().is_ok() {
        t.parse::<f64>().ok()
    } else {
        None
    };
    if let Some(f) = fraction {
        if !(f > 0.0 && f <= 1.0) {
            return Err(format!(
                "{} (a share of memory must be in (0, 100%])",
                invalid()
            ));
        }
        return Ok((total as f64 * f) as u64);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1 << 10,
        "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "tb" => 1000u64.pow(4),
        "tib" => 1 << 40,
        _ => return Err(invalid()),
    };
    let bytes = n.checked_mul(scale).ok_or_else(invalid)?;
    if bytes == 0 {
        return Err(format!("{} (must be positive)", invalid()));
    }
    Ok(bytes)
}

/// A statement stopped by a cancel request (CockroachDB's wording).
pub fn query_canceled() -> SqlError {
    SqlError::new(sqlstate::QUERY_CANCELED, "query execution canceled")
}

/// PostgreSQL's text for a statement stopped by `statement_timeout` (CockroachDB's wording).
pub fn statement_timeout() -> SqlError {
    SqlError::new(
        sqlstate::QUERY_CANCELED,
        "query execution canceled due to statement timeout",
    )
}

fn budget_exceeded(monitor: &str, requested: u64, used: u64, limit: u64) -> SqlError {
    SqlError::new(
        sqlstate::OUT_OF_MEMORY,
        format!(
            "{monitor}: memory budget exceeded: {requested} bytes requested, {used} currently allocated, {limit} bytes in budget"
        ),
    )
}

/// The approximate bytes a row holds in memory.
pub fn row_bytes(row: &[Datum]) -> u64 {
    const DATUM: u64 = std::mem::size_of::<Datum>() as u64;
    let heap: u64 = row
        .iter()
        .map(|d| match d {
            Datum::String(s) => s.len() as u64,
            Datum::Bytes(b) => b.len() as u64,
            Datum::Json(j) => json_bytes(j),
            _ => 0,
        })
        .sum();
    24 + DATUM * row.len() as u64 + heap
}

fn json_bytes(v: &serde_json::Value) -> u64 {
    use serde_json::Value;
    match v {
        Value::String(s) => 24 + s.len() as u64,
        Value::Array(a) => 24 + a.iter().map(json_bytes).sum::<u64>(),
        Value::Object(o) => {
            24 + o
                .iter()
                .map(|(k, v)| 24 + k.len() as u64 + json_bytes(v))
                .sum::<u64>()
        }
        _ => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_share_the_node_budget_and_give_it_back() {
        let node = NodeMemory::new(1000);
        let a = StmtLimits::new(node.clone(), 800, None);
        let b = StmtLimits::new(node.clone(), 800, None);
        a.grow(600).expect("a fits");
        let e = a.grow(300).expect_err("a's own budget");
        assert_eq!(e.code(), "53200");
        assert!(e.to_string().starts_with("sql: memory budget exceeded: 300 bytes requested, 600 currently allocated, 800 bytes in budget"), "{e}");
        let e = b.grow(500).expect_err("the node's budget");
        assert!(
            e.to_string().starts_with("root: memory budget exceeded"),
            "{e}"
        );
        b.grow(400).expect("b fits");
        assert_eq!(node.used(), 1000);
        drop(a);
        assert_eq!(node.used(), 400);
        drop(b);
        assert_eq!(node.used(), 0);
    }

    #[test]
    fn a_past_deadline_cancels() {
        let node = NodeMemory::new(u64::MAX);
        let l = StmtLimits::new(node, u64::MAX, Some(Instant::now()));
        assert_eq!(l.tick().expect_err("past").code(), "57014");
        let l = StmtLimits::new(NodeMemory::new(u64::MAX), u64::MAX, None);
        for _ in 0..5000 {
            l.tick().expect("no deadline");
        }
    }

    #[test]
    fn memory_sizes_read_like_cockroach() {
        let gib = 1u64 << 30;
        assert_eq!(parse_memory_size("25%", 8 * gib), Ok(2 * gib));
        assert_eq!(parse_memory_size(".5", 8 * gib), Ok(4 * gib));
        assert_eq!(parse_memory_size("4GiB", 0), Ok(4 * gib));
        assert_eq!(parse_memory_size("512MB", 0), Ok(512_000_000));
        assert_eq!(parse_memory_size("1000000", 0), Ok(1_000_000));
        for bad in ["", "0", "150%", "-1GiB", "lots", "4 parsecs", "0.0"] {
            assert!(parse_memory_size(bad, gib).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rows_count_their_text() {
        let small = row_bytes(&[Datum::Int(1)]);
        let big = row_bytes(&[Datum::String("x".repeat(1000))]);
        assert_eq!(big - small, 1000);
    }
}
