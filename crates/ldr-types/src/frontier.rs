//! A span frontier: the resolved timestamp of every part of a fixed set of spans.
//!
//! The frontier tracks a set of spans chosen at construction. `forward(span, ts)` raises the
//! resolved timestamp of the tracked keys inside `span` to `ts` (never lowers it); parts of
//! `span` outside the tracked set are ignored. `frontier()` is the minimum over every tracked
//! key: everything at or below it has been seen everywhere. This is the replicated time of an
//! LDR job and the resolved timestamp of a producer stream.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::span::Span;
use crate::timestamp::Timestamp;

/// One resolved span: every key in `span` is resolved up to `ts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedSpan {
    pub span: Span,
    pub ts: Timestamp,
}

/// Resolved timestamps over a fixed set of spans.
#[derive(Debug, Clone, Default)]
pub struct SpanFrontier {
    /// start key -> (end key, resolved ts); entries are disjoint and cover the tracked spans.
    entries: BTreeMap<Vec<u8>, (Vec<u8>, Timestamp)>,
}

impl SpanFrontier {
    /// Tracks `spans` (overlaps are merged), all starting at `initial`.
    pub fn new(spans: impl IntoIterator<Item = Span>, initial: Timestamp) -> SpanFrontier {
        let mut sorted: Vec<Span> = spans.into_iter().filter(|s| !s.is_empty()).collect();
        sorted.sort();
        let mut merged: Vec<Span> = Vec::new();
        for s in sorted {
            match merged.last_mut() {
                Some(last) if s.start <= last.end => {
                    if s.end > last.end {
                        last.end = s.end;
                    }
                }
                _ => merged.push(s),
            }
        }
        let entries = merged
            .into_iter()
            .map(|s| (s.start, (s.end, initial)))
            .collect();
        SpanFrontier { entries }
    }

    /// Whether no span is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The minimum resolved timestamp over all tracked keys (`Timestamp::MAX` when empty).
    pub fn frontier(&self) -> Timestamp {
        self.entries
            .values()
            .map(|(_, ts)| *ts)
            .min()
            .unwrap_or(Timestamp::MAX)
    }

    /// Raises the tracked keys inside `span` to at least `ts`. Returns whether the overall
    /// frontier moved forward.
    pub fn forward(&mut self, span: &Span, ts: Timestamp) -> bool {
        if span.is_empty() {
            return false;
        }
        let before = self.frontier();
        // Collect the entries overlapping `span`.
        let overlapping: Vec<(Vec<u8>, Vec<u8>, Timestamp)> = self
            .entries
            .range(..span.end.clone())
            .filter(|(start, (end, _))| {
                start.as_slice() < span.end.as_slice() && end.as_slice() > span.start.as_slice()
            })
            .map(|(start, (end, t))| (start.clone(), end.clone(), *t))
            .collect();
        for (start, end, old) in overlapping {
            if old >= ts {
                continue;
            }
            self.entries.remove(&start);
            // Left remainder keeps the old timestamp.
            if start < span.start {
                self.entries
                    .insert(start.clone(), (span.start.clone(), old));
            }
            // Right remainder keeps the old timestamp.
            if end > span.end {
                self.entries.insert(span.end.clone(), (end.clone(), old));
            }
            let mid_start = std::cmp::max(start, span.start.clone());
            let mid_end = std::cmp::min(end, span.end.clone());
            self.entries.insert(mid_start, (mid_end, ts));
        }
        self.coalesce();
        let after = self.frontier();
        debug_assert!(
            after >= before,
            "a frontier never moves backwards: {before:?} -> {after:?}"
        );
        after > before
    }

    /// Every tracked piece with its resolved timestamp, in key order.
    pub fn entries(&self) -> Vec<ResolvedSpan> {
        self.entries
            .iter()
            .map(|(start, (end, ts))| ResolvedSpan {
                span: Span::new(start.clone(), end.clone()),
                ts: *ts,
            })
            .collect()
    }

    /// The tracked spans (merged), regardless of timestamps.
    pub fn spans(&self) -> Vec<Span> {
        let mut out: Vec<Span> = Vec::new();
        for (start, (end, _)) in &self.entries {
            match out.last_mut() {
                Some(last) if last.end == *start => last.end = end.clone(),
                _ => out.push(Span::new(start.clone(), end.clone())),
            }
        }
        out
    }

    /// Merges adjacent entries with equal timestamps so the map stays small.
    fn coalesce(&mut self) {
        let mut merged: BTreeMap<Vec<u8>, (Vec<u8>, Timestamp)> = BTreeMap::new();
        let mut current: Option<(Vec<u8>, Vec<u8>, Timestamp)> = None;
        for (start, (end, ts)) in std::mem::take(&mut self.entries) {
            current = match current {
                Some((cs, ce, cts)) if ce == start && cts == ts => Some((cs, end, cts)),
                Some((cs, ce, cts)) => {
                    merged.insert(cs, (ce, cts));
                    Some((start, end, ts))
                }
                None => Some((start, end, ts)),
            };
        }
        if let Some((cs, ce, cts)) = current {
            merged.insert(cs, (ce, cts));
        }
        self.entries = merged;
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn sp(a: &str, b: &str) -> Span {
        Span::new(a.as_bytes().to_vec(), b.as_bytes().to_vec())
    }
    fn ts(n: u64) -> Timestamp {
        Timestamp::new(n, 0)
    }

    #[test]
    fn frontier_is_the_minimum_and_only_moves_forward() {
        let mut f = SpanFrontier::new([sp("a", "c"), sp("e", "g")], ts(1));
        assert_eq!(f.frontier(), ts(1));
        assert!(
            !f.forward(&sp("a", "c"), ts(5)),
            "the other span still holds the frontier"
        );
        assert!(f.forward(&sp("e", "g"), ts(3)));
        assert_eq!(f.frontier(), ts(3));
        assert!(
            !f.forward(&sp("e", "g"), ts(2)),
            "lower timestamps are ignored"
        );
        assert_eq!(f.frontier(), ts(3));
    }

    #[test]
    fn partial_forwards_split_entries() {
        let mut f = SpanFrontier::new([sp("a", "z")], ts(1));
        f.forward(&sp("c", "f"), ts(4));
        assert_eq!(f.frontier(), ts(1));
        let e = f.entries();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[1],
            ResolvedSpan {
                span: sp("c", "f"),
                ts: ts(4)
            }
        );
        f.forward(&sp("a", "c"), ts(4));
        f.forward(&sp("f", "z"), ts(4));
        assert_eq!(f.frontier(), ts(4));
        assert_eq!(f.entries().len(), 1, "equal neighbours coalesce");
    }

    #[test]
    fn untracked_keys_are_ignored() {
        let mut f = SpanFrontier::new([sp("b", "d")], ts(1));
        f.forward(&sp("a", "z"), ts(7));
        assert_eq!(
            f.entries(),
            vec![ResolvedSpan {
                span: sp("b", "d"),
                ts: ts(7)
            }]
        );
        assert!(!f.forward(&sp("x", "y"), ts(9)));
        assert_eq!(f.spans(), vec![sp("b", "d")]);
    }

    #[test]
    fn randomized_against_a_per_key_model() {
        // Keys are single letters; the model holds one timestamp per letter.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
        let mut next = || rng.random::<u32>() as u64;
        for _ in 0..200 {
            let mut f = SpanFrontier::new([sp("a", "m"), sp("p", "t")], ts(0));
            let mut model = std::collections::BTreeMap::new();
            for c in (b'a'..b'm').chain(b'p'..b't') {
                model.insert(c, ts(0));
            }
            for _ in 0..30 {
                let x = (next() % 26) as u8 + b'a';
                let y = (next() % 26) as u8 + b'a';
                let (lo, hi) = if x <= y { (x, y + 1) } else { (y, x + 1) };
                let t = ts(next() % 50);
                f.forward(&Span::new(vec![lo], vec![hi]), t);
                for (k, v) in model.iter_mut() {
                    if *k >= lo && *k < hi && *v < t {
                        *v = t;
                    }
                }
                assert_eq!(f.frontier(), *model.values().min().expect("non-empty"));
                for e in f.entries() {
                    for k in e.span.start[0]..e.span.end[0] {
                        if let Some(v) = model.get(&k) {
                            assert_eq!(*v, e.ts, "key {}", k as char);
                        }
                    }
                }
            }
        }
    }
}
