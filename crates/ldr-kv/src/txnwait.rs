//! Deadlock detection over the waits-for graph of transactions (CockroachDB's `txnwait`
//! queue, smaller), as a pure decision without I/O.
//!
//! A transaction that waits for another one's intent writes the edge "I wait for X" into its
//! own record ([`crate::txn::TxnRecord::waiting_for`]). While it waits, it periodically reads
//! the records reachable from the transaction it waits for (the graph's nodes, at most
//! [`WALK_RECORDS_MAX`]) and asks [`find_deadlock`] whether it is part of a cycle. Waiting
//! transactions hold their intents, so a cycle never resolves by itself: one member must be
//! aborted. The victim is the youngest member of the cycle (the largest `(start_ts, txn_id)`),
//! so the oldest transaction of any cycle is never the one aborted, and the oldest transaction
//! in the system always makes progress (no livelock). Every member that finds the cycle
//! picks the same victim from the same records, so one cycle costs one abort.
//!
//! Example: A (older) holds row 1 and waits for B's intent on row 2; B holds row 2 and waits
//! for A's intent on row 1. A and B each find the cycle {A, B}; both pick B; B's record
//! becomes ABORTED (`ABORT_REASON_PUSHER_ABORTED`), its intents are removed, A goes on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ldr_storage::TxnId;
use ldr_types::Timestamp;

/// Records a waiter reads per look for a cycle, at most (longer chains go undetected and end
/// with the push wait's timeout).
pub const WALK_RECORDS_MAX: usize = 32;
/// Edges one record holds at most (a transaction waiting on more intents at once records
/// only the first ones; detection may then miss a cycle, which the wait timeout ends).
pub const WAITING_FOR_MAX: usize = 8;

/// One pending transaction as its record shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitNode {
    /// Its priority: older transactions (smaller) win.
    pub start_ts: Timestamp,
    /// The transactions it waits for.
    pub waiting_for: Vec<TxnId>,
}

/// A cycle of waits and the member to abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlock {
    /// The youngest member: the one to abort.
    pub victim: TxnId,
    /// Every member of the cycle (its strongly connected component), in id order.
    pub members: Vec<TxnId>,
}

/// The priority order: `a` loses to `b` when it is younger (later start, then larger id).
fn younger(a: (&Timestamp, &TxnId), b: (&Timestamp, &TxnId)) -> bool {
    a > b
}

/// Whether `me` is part of a cycle of waits in `graph` (pending transactions by id; a
/// transaction missing from it, finished or unknown, waits for nobody), and if so which
/// member to abort: the youngest of `me`'s strongly connected component, that is of every
/// transaction `me` waits for, directly or not, that also waits for `me`.
pub fn find_deadlock(me: &TxnId, graph: &BTreeMap<TxnId, WaitNode>) -> Option<Deadlock> {
    let edges = |id: &TxnId| -> &[TxnId] {
        graph
            .get(id)
            .map(|n| n.waiting_for.as_slice())
            .unwrap_or(&[])
    };
    // Forward: everyone `me` waits for, transitively.
    let mut forward: BTreeSet<TxnId> = BTreeSet::new();
    let mut queue: VecDeque<TxnId> = edges(me).iter().copied().collect();
    while let Some(id) = queue.pop_front() {
        if forward.insert(id) {
            queue.extend(edges(&id).iter().copied());
        }
    }
    if !forward.contains(me) {
        return None;
    }
    // Backward within the forward set: those of them that wait for `me`, transitively.
    let mut members: BTreeSet<TxnId> = BTreeSet::from([*me]);
    let mut changed = true;
    while changed {
        changed = false;
        for id in &forward {
            if !members.contains(id) && edges(id).iter().any(|to| members.contains(to)) {
                members.insert(*id);
                changed = true;
            }
        }
    }
    let start = |id: &TxnId| graph.get(id).map(|n| n.start_ts).unwrap_or(Timestamp::MAX);
    let victim = *members
        .iter()
        .reduce(|best, id| {
            if younger((&start(id), id), (&start(best), best)) {
                id
            } else {
                best
            }
        })
        .expect("members holds me");
    Some(Deadlock {
        victim,
        members: members.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> TxnId {
        [n; 16]
    }

    /// A graph of `(txn, start, waits for)`.
    fn graph(nodes: &[(u8, u64, &[u8])]) -> BTreeMap<TxnId, WaitNode> {
        nodes
            .iter()
            .map(|(t, start, waits)| {
                (
                    id(*t),
                    WaitNode {
                        start_ts: Timestamp::new(*start, 0),
                        waiting_for: waits.iter().map(|w| id(*w)).collect(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn no_cycle_no_deadlock() {
        // A chain: 1 → 2 → 3; nobody waits for 1.
        let g = graph(&[(1, 10, &[2]), (2, 20, &[3]), (3, 30, &[])]);
        for me in [1, 2, 3] {
            assert_eq!(find_deadlock(&id(me), &g), None, "txn {me}");
        }
        // A waiter whose holder's record is gone (finished) is not in a cycle.
        let g = graph(&[(1, 10, &[2])]);
        assert_eq!(find_deadlock(&id(1), &g), None);
    }

    #[test]
    fn two_transactions_waiting_for_each_other_abort_the_younger() {
        let g = graph(&[(1, 10, &[2]), (2, 20, &[1])]);
        let want = Deadlock {
            victim: id(2),
            members: vec![id(1), id(2)],
        };
        assert_eq!(find_deadlock(&id(1), &g), Some(want.clone()));
        assert_eq!(
            find_deadlock(&id(2), &g),
            Some(want),
            "both members pick the same victim"
        );
    }

    #[test]
    fn equal_starts_are_ordered_by_id() {
        let g = graph(&[(1, 10, &[2]), (2, 10, &[1])]);
        assert_eq!(find_deadlock(&id(1), &g).map(|d| d.victim), Some(id(2)));
        assert_eq!(find_deadlock(&id(2), &g).map(|d| d.victim), Some(id(2)));
    }

    #[test]
    fn a_long_cycle_aborts_its_youngest_member_only() {
        // 1 → 4 → 2 → 3 → 1, with 5 waiting on 1 from outside the cycle (5 is younger than
        // everyone but is not part of the cycle, so it must not be picked).
        let g = graph(&[
            (1, 10, &[4]),
            (4, 15, &[2]),
            (2, 40, &[3]),
            (3, 30, &[1]),
            (5, 99, &[1]),
        ]);
        for me in [1, 2, 3, 4] {
            let d = find_deadlock(&id(me), &g).expect("in the cycle");
            assert_eq!(d.victim, id(2), "txn {me}");
            assert_eq!(d.members, vec![id(1), id(2), id(3), id(4)]);
        }
        assert_eq!(find_deadlock(&id(5), &g), None, "5 only waits");
    }

    #[test]
    fn the_oldest_transaction_is_never_the_victim() {
        // Every graph over 4 transactions where each waits for at most 2 others: whenever a
        // cycle is found, the victim is not the oldest member, and all members agree.
        let starts = [10u64, 20, 30, 40];
        let pairs: Vec<(u8, u8)> = (0..4u8)
            .flat_map(|a| (0..4u8).filter(move |b| *b != a).map(move |b| (a, b)))
            .collect();
        for mask in 0u32..(1 << pairs.len()) {
            let mut waits: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
            for (i, (a, b)) in pairs.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    waits.entry(*a).or_default().push(*b);
                }
            }
            if waits.values().any(|w| w.len() > 2) {
                continue;
            }
            let g: BTreeMap<TxnId, WaitNode> = (0..4u8)
                .map(|t| {
                    (
                        id(t),
                        WaitNode {
                            start_ts: Timestamp::new(starts[t as usize], 0),
                            waiting_for: waits
                                .get(&t)
                                .map(|w| w.iter().map(|x| id(*x)).collect())
                                .unwrap_or_default(),
                        },
                    )
                })
                .collect();
            for me in 0..4u8 {
                if let Some(d) = find_deadlock(&id(me), &g) {
                    let oldest = d.members.iter().min_by_key(|m| starts[m[0] as usize]);
                    assert_ne!(Some(&d.victim), oldest, "mask {mask:b}");
                    assert!(d.members.contains(&id(me)));
                    for other in &d.members {
                        assert_eq!(
                            find_deadlock(other, &g),
                            Some(d.clone()),
                            "mask {mask:b}: members disagree"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_self_loop_is_a_cycle_of_one() {
        // Cannot happen (a transaction never waits for itself), but must not loop forever.
        let g = graph(&[(1, 10, &[1])]);
        assert_eq!(find_deadlock(&id(1), &g).map(|d| d.victim), Some(id(1)));
    }
}
