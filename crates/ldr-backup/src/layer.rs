//! What one backup layer holds (pure): a full layer every live row at its end time; an
//! incremental layer the rows written after the previous layer's end (their values at its own
//! end) and a tombstone for every row live then and gone now. And how a layer's entries are
//! cut into data files.

use ldr_types::Timestamp;

use crate::manifest::Entry;

/// One live row read at a layer's end time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub key: Vec<u8>,
    /// Its MVCC timestamp.
    pub ts: Timestamp,
    pub value: Vec<u8>,
}

/// The previous layer of an incremental one: its end time and the keys live then, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    pub end: Timestamp,
    pub live_keys: Vec<Vec<u8>>,
}

/// A layer's entries in key order, and how many are tombstones. `at_end`: the live rows at
/// the layer's end time, in key order; `previous`: `None` for a full layer.
pub fn layer_entries(at_end: Vec<Scanned>, previous: Option<&Previous>) -> (Vec<Entry>, u64) {
    let Some(previous) = previous else {
        let entries = at_end
            .into_iter()
            .map(|s| Entry {
                key: s.key,
                value: Some(s.value),
            })
            .collect();
        return (entries, 0);
    };
    debug_assert!(
        previous.live_keys.windows(2).all(|w| w[0] < w[1]),
        "previous keys are sorted and distinct"
    );
    let mut live_now: Vec<&[u8]> = at_end.iter().map(|s| s.key.as_slice()).collect();
    live_now.sort_unstable();
    let mut entries: Vec<Entry> = previous
        .live_keys
        .iter()
        .filter(|k| live_now.binary_search(&k.as_slice()).is_err())
        .map(|k| Entry {
            key: k.clone(),
            value: None,
        })
        .collect();
    let deleted = entries.len() as u64;
    entries.extend(
        at_end
            .into_iter()
            .filter(|s| s.ts > previous.end)
            .map(|s| Entry {
                key: s.key,
                value: Some(s.value),
            }),
    );
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    (entries, deleted)
}

/// The bytes an entry adds to a data file's payload.
pub fn entry_bytes(e: &Entry) -> usize {
    e.key.len() + e.value.as_ref().map_or(0, Vec::len)
}

/// Cuts `entries` into files: a file is closed once its entries reach `bytes_max` bytes (an
/// entry is never split; no file is empty).
pub fn cut_files(entries: Vec<Entry>, bytes_max: usize) -> Vec<Vec<Entry>> {
    let mut files = Vec::new();
    let mut file = Vec::new();
    let mut bytes = 0usize;
    for e in entries {
        bytes += entry_bytes(&e);
        file.push(e);
        if bytes >= bytes_max {
            files.push(std::mem::take(&mut file));
            bytes = 0;
        }
    }
    if !file.is_empty() {
        files.push(file);
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, ts: u64, value: &str) -> Scanned {
        Scanned {
            key: key.as_bytes().to_vec(),
            ts: Timestamp::new(ts, 0),
            value: value.as_bytes().to_vec(),
        }
    }

    fn shown(entries: &[Entry]) -> Vec<(String, Option<String>)> {
        entries
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.key).into_owned(),
                    e.value
                        .as_ref()
                        .map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn a_full_layer_holds_every_live_row() {
        let (entries, deleted) = layer_entries(vec![row("a", 1, "1"), row("b", 9, "2")], None);
        assert_eq!(deleted, 0);
        assert_eq!(
            shown(&entries),
            vec![
                ("a".into(), Some("1".into())),
                ("b".into(), Some("2".into()))
            ]
        );
    }

    #[test]
    fn an_incremental_layer_holds_changes_and_deletes_since_the_previous_end() {
        // At the previous end (10): a, b, c, d live. Since: b updated, c deleted, d deleted
        // and inserted again, e inserted; a untouched.
        let previous = Previous {
            end: Timestamp::new(10, 0),
            live_keys: ["a", "b", "c", "d"]
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
        };
        let at_end = vec![
            row("a", 5, "a0"),
            row("b", 12, "b1"),
            row("d", 15, "d2"),
            row("e", 11, "e1"),
        ];
        let (entries, deleted) = layer_entries(at_end, Some(&previous));
        assert_eq!(deleted, 1);
        assert_eq!(
            shown(&entries),
            vec![
                ("b".into(), Some("b1".into())),
                ("c".into(), None),
                ("d".into(), Some("d2".into())),
                ("e".into(), Some("e1".into())),
            ]
        );
        // A write exactly at the previous end belongs to the previous layer.
        let (entries, _) = layer_entries(vec![row("a", 10, "x")], Some(&previous));
        assert_eq!(
            shown(&entries),
            vec![("b".into(), None), ("c".into(), None), ("d".into(), None)]
        );
    }

    #[test]
    fn files_are_cut_by_bytes_without_splitting_entries() {
        let entries: Vec<Entry> = (0..10u8)
            .map(|i| Entry {
                key: vec![i; 4],
                value: Some(vec![i; 6]),
            })
            .collect();
        let files = cut_files(entries.clone(), 25);
        assert_eq!(
            files.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        assert_eq!(files.concat(), entries);
        assert_eq!(cut_files(entries.clone(), usize::MAX).len(), 1);
        assert!(cut_files(vec![], 10).is_empty());
    }
}
