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
    limit: u64,
    used: AtomicU64,
}

impl NodeMemory {
    pub fn new(limit: u64) -> Arc<NodeMemory> {
        Arc::new(NodeMemory {
            limit,
            used: AtomicU64::new(0),
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
        loop {
            let next = current.saturating_add(bytes);
            if next > self.limit {
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
        }
    }

    /// Charges `bytes` more; `53200` over the statement's or the node's budget.
    pub fn grow(&self, bytes: u64) -> Result<()> {
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(bytes) > self.limit {
            return Err(budget_exceeded("sql", bytes, used, self.limit));
        }
        if let Err(node_used) = self.node.reserve(bytes) {
            return Err(budget_exceeded("root", bytes, node_used, self.node.limit));
        }
        self.used.fetch_add(bytes, Ordering::Relaxed);
        self.tick()
    }

    /// Charges a row (see [`row_bytes`]).
    pub fn grow_row(&self, row: &[Datum]) -> Result<()> {
        self.grow(row_bytes(row))
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

    /// `57014` once the statement is past its `statement_timeout`.
    pub fn check_deadline(&self) -> Result<()> {
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
        self.node.release(self.used.load(Ordering::Relaxed));
    }
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
    fn rows_count_their_text() {
        let small = row_bytes(&[Datum::Int(1)]);
        let big = row_bytes(&[Datum::String("x".repeat(1000))]);
        assert_eq!(big - small, 1000);
    }
}
