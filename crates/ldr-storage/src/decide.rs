//! The pure decision of one row write's outcome: given the row's condition and the key's
//! latest existing version, write or not (and why not). No I/O, so every case of the LWW rule
//! and its tie-break is unit-tested here.

use std::cmp::Ordering;

use ldr_types::{OriginId, Timestamp};

use crate::{Condition, RowOutcome, RowWrite, Version};

/// Decides `row` against `existing` (the key's newest version, tombstones included).
/// `incoming_mvcc_ts` stands in for the incoming write's logical timestamp when its header has
/// no origin timestamp (the commit timestamp is chosen later and is never below it).
pub(crate) fn decide(
    row: &RowWrite,
    existing: Option<&Version>,
    incoming_mvcc_ts: Timestamp,
) -> RowOutcome {
    match &row.condition {
        Condition::None => RowOutcome::Written {
            prev: existing.cloned(),
        },
        Condition::Expect(expected) => {
            let live = existing.and_then(|v| v.value.as_ref());
            if live == expected.as_ref() {
                RowOutcome::Written {
                    prev: existing.cloned(),
                }
            } else {
                RowOutcome::ConditionFailed {
                    actual: existing.cloned(),
                }
            }
        }
        Condition::Lww {
            expected_prev,
            local_origin_id,
        } => {
            let incoming_ts = if row.header.origin_ts.is_zero() {
                incoming_mvcc_ts
            } else {
                row.header.origin_ts
            };
            if let Some(existing) = existing {
                let incoming = LwwSide {
                    ts: incoming_ts,
                    origin_id: row.header.origin_id,
                    value: row.value.as_deref(),
                };
                let current = LwwSide {
                    ts: existing.logical_ts(),
                    origin_id: existing.header.origin_id,
                    value: existing.value.as_deref(),
                };
                if !incoming_wins(&incoming, &current, *local_origin_id) {
                    return RowOutcome::LwwLost {
                        existing: current.ts,
                    };
                }
            }
            if let Some(expected) = expected_prev {
                let live = existing.and_then(|v| v.value.as_ref());
                if live != expected.as_ref() {
                    return RowOutcome::LwwUnexpected {
                        actual: existing.cloned(),
                    };
                }
            }
            RowOutcome::Written {
                prev: existing.cloned(),
            }
        }
    }
}

/// One side of an LWW comparison.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LwwSide<'a> {
    pub ts: Timestamp,
    /// 0 = local: counts as the local cluster's origin id.
    pub origin_id: OriginId,
    /// `None` = tombstone.
    pub value: Option<&'a [u8]>,
}

/// The LWW order: later logical ts wins; on a tie the larger origin id (0 counting as
/// `local_origin_id`); then the smaller value (a tombstone is smallest). A full tie loses.
pub(crate) fn incoming_wins(
    incoming: &LwwSide<'_>,
    existing: &LwwSide<'_>,
    local_origin_id: OriginId,
) -> bool {
    let effective = |id: OriginId| if id == 0 { local_origin_id } else { id };
    let order = incoming
        .ts
        .cmp(&existing.ts)
        .then_with(|| effective(incoming.origin_id).cmp(&effective(existing.origin_id)))
        // Smaller value wins, so reverse; `None < Some(_)` makes the tombstone the smallest.
        .then_with(|| existing.value.cmp(&incoming.value));
    order == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ValueHeader;

    const LOCAL: OriginId = 5;

    fn ts(w: u64) -> Timestamp {
        Timestamp::new(w, 0)
    }

    fn existing(mvcc: u64, origin_id: OriginId, origin_ts: u64, value: Option<&[u8]>) -> Version {
        Version {
            ts: ts(mvcc),
            header: ValueHeader {
                origin_id,
                origin_ts: ts(origin_ts),
                omit_in_rangefeeds: false,
            },
            value: value.map(|v| v.to_vec()),
        }
    }

    fn lww(
        origin_id: OriginId,
        origin_ts: u64,
        value: Option<&[u8]>,
        expected_prev: Option<Option<&[u8]>>,
    ) -> RowWrite {
        RowWrite {
            key: b"k".to_vec(),
            value: value.map(|v| v.to_vec()),
            condition: Condition::Lww {
                expected_prev: expected_prev.map(|p| p.map(|v| v.to_vec())),
                local_origin_id: LOCAL,
            },
            header: ValueHeader {
                origin_id,
                origin_ts: ts(origin_ts),
                omit_in_rangefeeds: false,
            },
            dependents: vec![],
        }
    }

    fn written(o: &RowOutcome) -> bool {
        matches!(o, RowOutcome::Written { .. })
    }

    #[test]
    fn lww_by_timestamp() {
        let ex = existing(100, 0, 0, Some(b"v"));
        assert_eq!(
            decide(&lww(9, 99, Some(b"a"), None), Some(&ex), ts(1000)),
            RowOutcome::LwwLost { existing: ts(100) }
        );
        assert!(written(&decide(
            &lww(9, 101, Some(b"a"), None),
            Some(&ex),
            ts(1000)
        )));
        // Origin ts of the existing version counts, not its MVCC ts.
        let replicated = existing(100, 3, 50, Some(b"v"));
        assert!(written(&decide(
            &lww(9, 60, Some(b"a"), None),
            Some(&replicated),
            ts(1000)
        )));
        assert_eq!(
            decide(&lww(9, 40, Some(b"a"), None), Some(&replicated), ts(1000)),
            RowOutcome::LwwLost { existing: ts(50) }
        );
        // Absent key: always written.
        assert!(written(&decide(
            &lww(9, 1, Some(b"a"), None),
            None,
            ts(1000)
        )));
    }

    #[test]
    fn lww_ties() {
        // Existing local version (origin 0 counts as LOCAL=5).
        let local = existing(100, 0, 0, Some(b"m"));
        assert!(
            written(&decide(
                &lww(6, 100, Some(b"z"), None),
                Some(&local),
                ts(1000)
            )),
            "larger id wins"
        );
        assert!(
            !written(&decide(
                &lww(4, 100, Some(b"a"), None),
                Some(&local),
                ts(1000)
            )),
            "smaller id loses"
        );
        // Same effective id: smaller value wins, tombstone smallest, equal loses.
        assert!(written(&decide(
            &lww(5, 100, Some(b"a"), None),
            Some(&local),
            ts(1000)
        )));
        assert!(!written(&decide(
            &lww(5, 100, Some(b"z"), None),
            Some(&local),
            ts(1000)
        )));
        assert!(written(&decide(
            &lww(5, 100, None, None),
            Some(&local),
            ts(1000)
        )));
        assert!(!written(&decide(
            &lww(5, 100, Some(b"m"), None),
            Some(&local),
            ts(1000)
        )));
        // Incoming origin 0 also counts as local.
        assert!(!written(&decide(
            &lww(0, 100, Some(b"m"), None),
            Some(&local),
            ts(1000)
        )));
        // Existing replicated version with explicit id.
        let remote = existing(200, 7, 100, None);
        assert!(
            !written(&decide(&lww(7, 100, None, None), Some(&remote), ts(1000))),
            "tombstone tie"
        );
        assert!(
            !written(&decide(
                &lww(7, 100, Some(b""), None),
                Some(&remote),
                ts(1000)
            )),
            "value > tombstone"
        );
        assert!(written(&decide(
            &lww(8, 100, Some(b""), None),
            Some(&remote),
            ts(1000)
        )));
        assert_eq!(
            decide(&lww(6, 100, Some(b""), None), Some(&remote), ts(1000)),
            RowOutcome::LwwLost { existing: ts(100) }
        );
    }

    #[test]
    fn lww_expected_prev() {
        let ex = existing(100, 0, 0, Some(b"v"));
        assert!(written(&decide(
            &lww(9, 200, Some(b"a"), Some(Some(b"v"))),
            Some(&ex),
            ts(1000)
        )));
        assert_eq!(
            decide(
                &lww(9, 200, Some(b"a"), Some(Some(b"x"))),
                Some(&ex),
                ts(1000)
            ),
            RowOutcome::LwwUnexpected {
                actual: Some(ex.clone())
            }
        );
        assert_eq!(
            decide(&lww(9, 200, Some(b"a"), Some(None)), Some(&ex), ts(1000)),
            RowOutcome::LwwUnexpected {
                actual: Some(ex.clone())
            }
        );
        // Over a tombstone the live value is None.
        let tomb = existing(100, 0, 0, None);
        assert!(written(&decide(
            &lww(9, 200, Some(b"a"), Some(None)),
            Some(&tomb),
            ts(1000)
        )));
        assert!(!written(&decide(
            &lww(9, 200, Some(b"a"), Some(Some(b"v"))),
            Some(&tomb),
            ts(1000)
        )));
        // Absent key with an expected value: unexpected.
        assert_eq!(
            decide(&lww(9, 200, Some(b"a"), Some(Some(b"v"))), None, ts(1000)),
            RowOutcome::LwwUnexpected { actual: None }
        );
        // A loss is reported before the expected-prev check.
        assert_eq!(
            decide(
                &lww(9, 50, Some(b"a"), Some(Some(b"x"))),
                Some(&ex),
                ts(1000)
            ),
            RowOutcome::LwwLost { existing: ts(100) }
        );
    }

    #[test]
    fn lww_without_origin_ts_uses_the_commit_ts() {
        let ex = existing(100, 3, 500, Some(b"v"));
        assert!(written(&decide(
            &lww(0, 0, Some(b"a"), None),
            Some(&ex),
            ts(600)
        )));
        assert!(!written(&decide(
            &lww(0, 0, Some(b"a"), None),
            Some(&ex),
            ts(400)
        )));
    }

    #[test]
    fn expect_and_none() {
        let ex = existing(100, 0, 0, Some(b"v"));
        let mut row = lww(0, 0, Some(b"a"), None);
        row.condition = Condition::Expect(Some(b"v".to_vec()));
        assert!(written(&decide(&row, Some(&ex), ts(1))));
        row.condition = Condition::Expect(None);
        assert_eq!(
            decide(&row, Some(&ex), ts(1)),
            RowOutcome::ConditionFailed {
                actual: Some(ex.clone())
            }
        );
        assert!(written(&decide(&row, None, ts(1))));
        let tomb = existing(100, 0, 0, None);
        assert!(written(&decide(&row, Some(&tomb), ts(1))));
        row.condition = Condition::None;
        assert_eq!(
            decide(&row, Some(&tomb), ts(1)),
            RowOutcome::Written {
                prev: Some(tomb.clone())
            }
        );
    }
}
