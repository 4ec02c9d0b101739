//! Keys and half-open key spans `[start, end)`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::keys::pretty_key;

/// A half-open key range `[start, end)`. `end` is exclusive and must be greater than `start`
/// for a non-empty span.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Span {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

impl Span {
    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Span {
        Span {
            start: start.into(),
            end: end.into(),
        }
    }

    /// The span holding exactly the keys that start with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Span {
        Span {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && key < self.end.as_slice()
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains(&self, other: &Span) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    pub fn overlaps(&self, other: &Span) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The overlap of two spans, if any.
    pub fn intersect(&self, other: &Span) -> Option<Span> {
        let start = std::cmp::max(&self.start, &other.start).clone();
        let end = std::cmp::min(&self.end, &other.end).clone();
        (start < end).then_some(Span { start, end })
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {})",
            pretty_key(&self.start),
            pretty_key(&self.end)
        )
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The smallest key greater than every key starting with `prefix` (empty prefix: `[0xff]*`
/// is not representable, so the empty prefix maps to `[0xff; 8]`, above all real keys).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0xff; 8]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_spans() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        let s = Span::prefix(b"ab");
        assert!(s.contains_key(b"ab"));
        assert!(s.contains_key(b"ab\xff\xff"));
        assert!(!s.contains_key(b"ac"));
    }

    #[test]
    fn intersect_and_overlap() {
        let a = Span::new(b"a".to_vec(), b"m".to_vec());
        let b = Span::new(b"k".to_vec(), b"z".to_vec());
        assert!(a.overlaps(&b));
        assert_eq!(
            a.intersect(&b),
            Some(Span::new(b"k".to_vec(), b"m".to_vec()))
        );
        let c = Span::new(b"m".to_vec(), b"n".to_vec());
        assert!(!a.overlaps(&c));
        assert_eq!(a.intersect(&c), None);
        assert!(a.contains(&Span::new(b"b".to_vec(), b"c".to_vec())));
    }
}
