//! The bookkeeping of batched `INSERT … ON CONFLICT` and `UPSERT`, without I/O.
//!
//! A multi-row statement reads every row it may conflict with at once, then writes every
//! change at once (`dml.rs`, `write.rs`). Reading before writing means a proposed row does
//! not see the rows proposed before it in the same statement, so the rules that depend on
//! them are decided here on the proposed rows themselves, as CockroachDB does:
//! - [`duplicates`]: proposed rows that share a conflict key (the arbiter's values, the
//!   primary key) with an earlier one. `DO UPDATE` and `UPSERT` fail with 21000 on any;
//!   `DO NOTHING` keeps the first and drops the others.
//! - [`Affected`]: which table row each proposed row changes; two proposed rows changing one
//!   table row is 21000. A row whose conditional write lost to a concurrent writer is
//!   re-read and decided again, so it forgets its previous choice first.

use std::collections::HashMap;

use crate::error::{Result, SqlError, sqlstate};

/// The 21000 of a statement that would change one row twice.
pub(crate) fn affect_twice() -> SqlError {
    SqlError::new(
        sqlstate::CARDINALITY_VIOLATION,
        "UPSERT or INSERT...ON CONFLICT command cannot affect row a second time",
    )
    .with_hint(
        "Ensure that no rows proposed for insertion within the same command have duplicate constrained values.",
    )
}

/// For each proposed row (given its conflict keys), the earlier kept row it shares a key
/// with; `None`: the row is kept. Keys of dropped rows do not count.
pub(crate) fn duplicates(keys: &[Vec<Vec<u8>>]) -> Vec<Option<usize>> {
    let mut owner: HashMap<&[u8], usize> = HashMap::new();
    let mut out = Vec::with_capacity(keys.len());
    for (i, row_keys) in keys.iter().enumerate() {
        let earlier = row_keys
            .iter()
            .find_map(|k| owner.get(k.as_slice()).copied());
        if earlier.is_none() {
            for k in row_keys {
                owner.entry(k.as_slice()).or_insert(i);
            }
        }
        out.push(earlier);
    }
    out
}

/// Which table row (primary index key) each proposed row of a statement changes.
#[derive(Debug, Default)]
pub(crate) struct Affected {
    by_key: HashMap<Vec<u8>, usize>,
    by_row: HashMap<usize, Vec<u8>>,
}

impl Affected {
    /// Proposed row `row` changes the table row at `key`: 21000 if another proposed row
    /// already does.
    pub fn claim(&mut self, row: usize, key: &[u8]) -> Result<()> {
        match self.by_key.get(key) {
            Some(&other) if other != row => Err(affect_twice()),
            Some(_) => Ok(()),
            None => {
                self.forget(row);
                self.by_key.insert(key.to_vec(), row);
                self.by_row.insert(row, key.to_vec());
                Ok(())
            }
        }
    }

    /// Proposed row `row` is decided again (its write lost to a concurrent writer).
    pub fn forget(&mut self, row: usize) {
        if let Some(key) = self.by_row.remove(&row) {
            self.by_key.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn duplicates_keep_the_first_row_of_each_key() {
        assert_eq!(duplicates(&[]), Vec::<Option<usize>>::new());
        assert_eq!(
            duplicates(&[vec![k("a")], vec![k("b")], vec![k("a")], vec![k("a")]]),
            vec![None, None, Some(0), Some(0)]
        );
        // Any shared key makes a duplicate (primary key or a unique value).
        assert_eq!(
            duplicates(&[
                vec![k("pk1"), k("u:x")],
                vec![k("pk2"), k("u:x")],
                vec![k("pk1"), k("u:y")],
                vec![k("pk3"), k("u:z")],
            ]),
            vec![None, Some(0), Some(0), None]
        );
        // A dropped row's keys do not drop later rows.
        assert_eq!(
            duplicates(&[
                vec![k("pk1"), k("u:x")],
                vec![k("pk1"), k("u:y")],
                vec![k("pk2"), k("u:y")],
            ]),
            vec![None, Some(0), None]
        );
        // Rows without keys (NULL arbiter values) never collide.
        assert_eq!(duplicates(&[vec![], vec![]]), vec![None, None]);
    }

    #[test]
    fn a_table_row_is_affected_once_until_its_row_is_retried() {
        let mut a = Affected::default();
        a.claim(0, b"k1").expect("first");
        a.claim(1, b"k2").expect("another row");
        a.claim(0, b"k1").expect("the same row again");
        assert_eq!(
            a.claim(2, b"k1").expect_err("twice").code(),
            sqlstate::CARDINALITY_VIOLATION
        );
        // Row 0 is retried and now changes another table row: k1 is free again.
        a.forget(0);
        a.claim(0, b"k3").expect("moved");
        a.claim(2, b"k1").expect("free");
        // Claiming a new key without forgetting first releases the old one too.
        a.claim(1, b"k4").expect("moved");
        a.claim(3, b"k2").expect("k2 released");
        assert!(a.claim(4, b"k4").is_err());
        a.forget(7);
    }
}
