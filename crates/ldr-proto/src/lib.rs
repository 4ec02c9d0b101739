//! Generated gRPC/protobuf code (`proto/*.proto`) and conversions to `ldr-types`.
//!
//! Wire types stay here; every other crate converts at its edge with the `From` impls below.

/// The generated code, package `ldr.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ldr.v1");
}

use ldr_types::{ResolvedSpan, Span, Timestamp};

impl From<Timestamp> for pb::Timestamp {
    fn from(t: Timestamp) -> Self {
        pb::Timestamp {
            wall_time_ns: t.wall_time_ns,
            logical: t.logical,
        }
    }
}

impl From<pb::Timestamp> for Timestamp {
    fn from(t: pb::Timestamp) -> Self {
        Timestamp::new(t.wall_time_ns, t.logical)
    }
}

/// A missing timestamp field decodes as `Timestamp::ZERO`.
pub fn ts_or_zero(t: Option<pb::Timestamp>) -> Timestamp {
    t.map(Timestamp::from).unwrap_or(Timestamp::ZERO)
}

impl From<Span> for pb::Span {
    fn from(s: Span) -> Self {
        pb::Span {
            start: s.start,
            end: s.end,
        }
    }
}

impl From<&Span> for pb::Span {
    fn from(s: &Span) -> Self {
        pb::Span {
            start: s.start.clone(),
            end: s.end.clone(),
        }
    }
}

impl From<pb::Span> for Span {
    fn from(s: pb::Span) -> Self {
        Span::new(s.start, s.end)
    }
}

impl From<ResolvedSpan> for pb::ResolvedSpan {
    fn from(r: ResolvedSpan) -> Self {
        pb::ResolvedSpan {
            span: Some(r.span.into()),
            ts: Some(r.ts.into()),
        }
    }
}

impl From<pb::ResolvedSpan> for ResolvedSpan {
    fn from(r: pb::ResolvedSpan) -> Self {
        ResolvedSpan {
            span: r.span.map(Span::from).unwrap_or_default(),
            ts: ts_or_zero(r.ts),
        }
    }
}

/// gRPC metadata keys shared by every service.
pub mod metadata {
    /// The sender's HLC reading, `wall.logical`.
    pub const CLOCK: &str = "ldr-clock";
    /// The SQL user a replication stream authenticates as.
    pub const USER: &str = "ldr-user";
    pub const PASSWORD: &str = "ldr-password";
    /// The sender's cluster id (KV RPCs refuse other clusters).
    pub const CLUSTER_ID: &str = "ldr-cluster-id";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let t = Timestamp::new(42, 7);
        assert_eq!(Timestamp::from(pb::Timestamp::from(t)), t);
        let r = ResolvedSpan {
            span: Span::new(b"a".to_vec(), b"b".to_vec()),
            ts: t,
        };
        assert_eq!(ResolvedSpan::from(pb::ResolvedSpan::from(r.clone())), r);
        assert_eq!(ts_or_zero(None), Timestamp::ZERO);
    }
}
