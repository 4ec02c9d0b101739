//! An explicit transaction's state between statements: its buffered writes (with
//! savepoints), the snapshot it reads and its read set (see `txn.rs` for how COMMIT uses them).

use std::collections::{BTreeMap, HashMap};

use ldr_types::{Span, TableId, Timestamp};

use super::rows::Change;
use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};

/// Keys a transaction's read set holds at most.
pub(crate) const READ_SET_MAX: usize = 100_000;
/// Scanned spans a transaction remembers one by one; beyond, whole tables.
const READ_SPANS_MAX: usize = 1024;
/// The 40001 a transaction gets when a row it read changed under it.
pub(crate) fn read_conflict() -> SqlError {
    SqlError::new(
        sqlstate::SERIALIZATION_FAILURE,
        "restart transaction: TransactionRetryWithProtoRefreshError: a row this transaction read was changed by a concurrent write",
    )
    .with_hint("retry the transaction")
}

/// Buffered changes keyed by table and primary key.
type Changes = BTreeMap<(TableId, Vec<u8>), Change>;

/// Writes buffered by an explicit transaction, keyed by table and primary key, and what it
/// read (see `txn.rs`).
#[derive(Debug, Default)]
pub(crate) struct TxnBuffer {
    changes: Changes,
    savepoints: Vec<(String, Changes)>,
    /// Behind a mutex because reads record into it through a shared reference. Rolling back
    /// to a savepoint keeps it: those reads happened.
    reads: parking_lot::Mutex<ReadSet>,
    /// The transaction's read timestamp: every statement reads this snapshot (set by the
    /// first statement that reads; a restart gets a new buffer and so a new snapshot).
    read_ts: Option<Timestamp>,
}

impl TxnBuffer {
    /// The snapshot the transaction reads, once it has read.
    pub fn snapshot_ts(&self) -> Option<Timestamp> {
        self.read_ts
    }

    /// The snapshot the transaction reads, fixed at the first call.
    pub fn read_ts(&mut self, now: Timestamp) -> Timestamp {
        *self.read_ts.get_or_insert(now)
    }

    /// Records a value read from the KV layer (`None`: absent); 40001 if the transaction saw
    /// another value for this key before.
    pub fn observe(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        self.reads.lock().observe(key, value)
    }

    /// Records a span scanned from the KV layer (refreshed at COMMIT: phantoms are conflicts).
    pub fn observe_span(&self, span: &ldr_types::Span) {
        self.reads.lock().observe_span(span.clone());
    }

    pub fn get(&self, table: TableId, key: &[u8]) -> Option<&Change> {
        self.changes.get(&(table, key.to_vec()))
    }

    /// The rows of a table this transaction changed: key and new value (`None`: deleted).
    pub fn table_changes(&self, table: TableId) -> Vec<(&Vec<u8>, Option<&Vec<Datum>>)> {
        self.changes
            .range((table, Vec::new())..)
            .take_while(|((t, _), _)| *t == table)
            .map(|((_, k), c)| (k, c.new.as_ref()))
            .collect()
    }

    /// Adds a change, merging with an earlier change of the same row (the first `old` is what
    /// the COMMIT expects).
    pub fn add(&mut self, change: Change) {
        let k = (change.table.id, change.key.clone());
        match self.changes.get_mut(&k) {
            Some(existing) => {
                existing.new = change.new;
                existing.table = change.table;
            }
            None => {
                self.changes.insert(k, change);
            }
        }
    }

    /// Whether the transaction has done nothing yet: no write, no read, no savepoint.
    pub fn is_untouched(&self) -> bool {
        self.changes.is_empty() && self.savepoints.is_empty() && self.reads.lock().len() == 0
    }

    /// Whether any savepoint is established.
    pub fn has_savepoints(&self) -> bool {
        !self.savepoints.is_empty()
    }

    /// Whether the oldest savepoint is `name`.
    pub fn first_savepoint_is(&self, name: &str) -> bool {
        self.savepoints.first().is_some_and(|(n, _)| n == name)
    }

    pub fn savepoint(&mut self, name: &str) {
        self.savepoints
            .push((name.to_string(), self.changes.clone()));
    }

    pub fn release(&mut self, name: &str) -> Result<()> {
        let pos = self
            .savepoints
            .iter()
            .rposition(|(n, _)| n == name)
            .ok_or_else(|| no_savepoint(name))?;
        self.savepoints.truncate(pos);
        Ok(())
    }

    pub fn rollback_to(&mut self, name: &str) -> Result<()> {
        let pos = self
            .savepoints
            .iter()
            .rposition(|(n, _)| n == name)
            .ok_or_else(|| no_savepoint(name))?;
        self.changes = self.savepoints[pos].1.clone();
        self.savepoints.truncate(pos + 1);
        Ok(())
    }

    /// The changes to apply (in key order), the read set and the snapshot read (`None`:
    /// nothing read).
    pub fn into_parts(self) -> (Vec<Change>, ReadSet, Option<Timestamp>) {
        (
            self.changes.into_values().collect(),
            self.reads.into_inner(),
            self.read_ts,
        )
    }
}

fn no_savepoint(name: &str) -> SqlError {
    SqlError::new(
        sqlstate::INVALID_SAVEPOINT_SPECIFICATION,
        format!("savepoint \"{name}\" does not exist"),
    )
}

/// Each key read and the value first seen (`None`: absent).
pub(crate) type ReadRows = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// The first value a transaction saw for each key it read, and the spans it scanned.
#[derive(Debug, Default)]
pub(crate) struct ReadSet {
    rows: HashMap<Vec<u8>, Option<Vec<u8>>>,
    overflowed: bool,
    /// Spans scanned (refreshed at COMMIT, see `txn::refresh_spans`); past [`READ_SPANS_MAX`]
    /// they are condensed to the whole tables they touch (coarser, still correct).
    spans: Vec<Span>,
}

impl ReadSet {
    /// Records that the transaction read `value` at `key` (`None`: absent). A key read before
    /// with another value is a conflict (40001).
    pub fn observe(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        match self.rows.get(key) {
            Some(seen) if seen.as_deref() == value => Ok(()),
            Some(_) => Err(read_conflict()),
            None if self.rows.len() >= READ_SET_MAX => {
                if !self.overflowed {
                    tracing::debug!(
                        max = READ_SET_MAX,
                        "transaction read set is full; further reads are refreshed as spans"
                    );
                    self.overflowed = true;
                }
                // Validated by the refresh of read spans instead (any newer version of the
                // key, tombstones included, is a conflict).
                let mut end = key.to_vec();
                end.push(0);
                self.observe_span(Span::new(key.to_vec(), end));
                Ok(())
            }
            None => {
                self.rows.insert(key.to_vec(), value.map(<[u8]>::to_vec));
                Ok(())
            }
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Records that the transaction scanned `span`: a row written into it after the
    /// transaction's snapshot fails the COMMIT.
    pub fn observe_span(&mut self, span: Span) {
        if self.spans.contains(&span) {
            return;
        }
        self.spans.push(span);
        if self.spans.len() > READ_SPANS_MAX {
            self.spans = condense(std::mem::take(&mut self.spans));
        }
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The keys read with their values, and the spans scanned.
    pub fn into_parts(self) -> (ReadRows, Vec<Span>) {
        (self.rows, self.spans)
    }
}

/// Spans widened to the whole tables they touch, without duplicates (a span outside every
/// table is kept as it is).
fn condense(spans: Vec<Span>) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    for s in spans {
        let wide = match ldr_types::keys::decode_table_key(&s.start) {
            Some(k) => ldr_types::keys::table_span(k.table_id),
            None => s,
        };
        if !out.contains(&wide) {
            out.push(wide);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_set_keeps_the_first_value_and_flags_a_different_one() {
        let mut r = ReadSet::default();
        r.observe(b"a", Some(b"1")).expect("first read");
        r.observe(b"b", None).expect("absent");
        r.observe(b"a", Some(b"1")).expect("same value again");
        r.observe(b"b", None).expect("still absent");
        assert_eq!(
            r.observe(b"a", Some(b"2")).expect_err("changed").code(),
            "40001"
        );
        assert_eq!(r.observe(b"a", None).expect_err("deleted").code(), "40001");
        assert_eq!(
            r.observe(b"b", Some(b"x")).expect_err("inserted").code(),
            "40001"
        );
        assert_eq!(r.len(), 2);
        assert!(!r.overflowed());
    }

    #[test]
    fn a_full_read_set_records_further_reads_as_spans() {
        let mut r = ReadSet::default();
        for i in 0..READ_SET_MAX {
            r.observe(&(i as u64).to_be_bytes(), None).expect("fits");
        }
        assert!(!r.overflowed());
        r.observe(b"one more", Some(b"v")).expect("not an error");
        assert!(r.overflowed());
        assert_eq!(r.len(), READ_SET_MAX);
        // ... but the key is refreshed as a span at COMMIT.
        let (_, spans) = r.into_parts();
        assert_eq!(
            spans,
            vec![Span::new(b"one more".to_vec(), b"one more\0".to_vec())]
        );
        let mut r = ReadSet::default();
        for i in 0..READ_SET_MAX {
            r.observe(&(i as u64).to_be_bytes(), None).expect("fits");
        }
        // Keys already recorded are still checked.
        assert!(r.observe(&0u64.to_be_bytes(), Some(b"v")).is_err());
    }

    #[test]
    fn many_scanned_spans_condense_to_their_tables() {
        let mut r = ReadSet::default();
        for i in 0..=READ_SPANS_MAX as u64 {
            let table = 100 + (i % 2) as u32;
            let mut start = ldr_types::keys::index_prefix(table, 0, 1);
            start.extend_from_slice(&i.to_be_bytes());
            let mut end = start.clone();
            end.push(0);
            r.observe_span(Span::new(start, end));
        }
        let (_, spans) = r.into_parts();
        assert_eq!(
            spans,
            vec![
                ldr_types::keys::table_span(100),
                ldr_types::keys::table_span(101)
            ]
        );
    }
}
