//! Cluster-wide time series queries (`GET /ts/query`): validates a request, reads each node's
//! points (this node from its store, the other live nodes through their `GET /ts/local`),
//! aligns them on a common step, turns counters into per-second rates when asked, and
//! aggregates across nodes (`sum`, `max`, `avg`, or `per_node`).
//!
//! Limits (never a stall, never an unbounded answer): at most [`NAMES_MAX`] names, a range of
//! at most [`RANGE_SECS_MAX`] (a longer one is refused with 400), and at most [`POINTS_MAX`]
//! points per series (the step grows to fit). A node that does not answer within
//! [`PEER_TIMEOUT`] is skipped and named in the answer's `skipped` list.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::ts_store::{Points, TsError, TsStore};

/// Names per request.
pub const NAMES_MAX: usize = 32;
/// Points per series in an answer; the step grows to fit.
pub const POINTS_MAX: u64 = 1000;
/// The longest range a request may ask for (31 days).
pub const RANGE_SECS_MAX: u64 = 31 * 24 * 3600;
/// How long the serving node waits for another node's points.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// Series families that exist only once a job has a label (not always in `/metrics`).
pub const LABEL_FAMILIES: [&str; 5] = [
    "logical_replication_replicated_time_by_label",
    "logical_replication_events_ingested_by_label",
    "logical_replication_events_dlqed_by_label",
    "logical_replication_scanning_ranges_by_label",
    "logical_replication_catchup_ranges_by_label",
];

/// How points of several nodes combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Agg {
    Sum,
    Max,
    Avg,
    PerNode,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct TsRequest {
    pub names: Vec<String>,
    pub start: u64,
    pub end: u64,
    pub step: u64,
    pub agg: Agg,
    /// Per-second rate of each node's series (for counters).
    pub rate: bool,
}

fn bad(msg: impl Into<String>) -> TsError {
    TsError::BadRequest(msg.into())
}

/// The base name of a series (`a{x="1"}` → `a`).
pub fn base_name(series: &str) -> &str {
    series.split_once('{').map_or(series, |(b, _)| b)
}

/// Whether stored series `series` answers the requested `name` (`a` matches `a` and every
/// `a{...}`; a name with labels matches exactly).
pub fn matches(name: &str, series: &str) -> bool {
    series == name
        || (!name.contains('{') && base_name(series) == name && series.len() > name.len())
}

/// Parses `names=a,b&start=..&end=..&step=..&agg=..&rate=1` (seconds since the epoch).
/// `known` decides which base names exist; `now` fills a missing `end` (and `start` = 10
/// minutes before it). `interval_secs` is the finest step.
pub fn parse_request(
    query: &str,
    known: &dyn Fn(&str) -> bool,
    now: u64,
    interval_secs: u64,
) -> Result<TsRequest, TsError> {
    let mut names = Vec::new();
    let (mut start, mut end, mut step, mut agg, mut rate) = (None, None, None, Agg::Sum, false);
    let num = |k: &str, v: &str| {
        v.parse::<u64>().map_err(|_| {
            bad(format!(
                "{k} must be a number of seconds since the epoch, got {v:?}"
            ))
        })
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let (k, v) = (k.as_ref(), v.as_ref());
        match k {
            "names" | "name" => names.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            ),
            "start" => start = Some(num(k, &v)?),
            "end" => end = Some(num(k, &v)?),
            "step" => {
                step = Some(
                    num(k, &v)
                        .map_err(|_| bad(format!("step must be a number of seconds, got {v:?}")))?,
                )
            }
            "agg" => {
                agg = match v {
                    "sum" => Agg::Sum,
                    "max" => Agg::Max,
                    "avg" => Agg::Avg,
                    "per_node" => Agg::PerNode,
                    other => {
                        return Err(bad(format!(
                            "unknown agg {other:?}: use sum, max, avg or per_node"
                        )));
                    }
                }
            }
            "rate" => rate = matches!(v, "1" | "true"),
            other => return Err(bad(format!("unknown parameter {other:?}"))),
        }
    }
    if names.is_empty() {
        return Err(bad(
            "names is required: a comma-separated list of series names",
        ));
    }
    if names.len() > NAMES_MAX {
        return Err(bad(format!(
            "too many names: {} (at most {NAMES_MAX} per request)",
            names.len()
        )));
    }
    for n in &names {
        if !known(base_name(n)) {
            return Err(bad(format!(
                "unknown series {n:?}: the names are those of GET /metrics (histograms as <name>_p50, <name>_p99)"
            )));
        }
    }
    let end = end.unwrap_or(now);
    let start = start.unwrap_or(end.saturating_sub(600));
    if end <= start {
        return Err(bad(format!("end ({end}) must be after start ({start})")));
    }
    if end - start > RANGE_SECS_MAX {
        return Err(bad(format!(
            "range of {} s is longer than the {RANGE_SECS_MAX} s kept at most",
            end - start
        )));
    }
    let finest = interval_secs.max(1);
    let fit = (end - start).div_ceil(POINTS_MAX);
    let step = step.unwrap_or(finest).max(finest).max(fit);
    Ok(TsRequest {
        names,
        start,
        end,
        step,
        agg,
        rate,
    })
}

/// This node's points for a request: every stored series matching a requested name, aligned
/// on `step` (the last value in each step), as rates if asked.
pub fn local_points(store: &TsStore, req: &TsRequest) -> Result<BTreeMap<String, Points>, TsError> {
    let series: Vec<String> = store
        .names()
        .into_iter()
        .filter(|s| req.names.iter().any(|n| matches(n, s)))
        .collect();
    // One step earlier, so the first rate point has a predecessor.
    let from = req.start.saturating_sub(req.step) / req.step * req.step;
    let raw = store.read(&series, from, req.end)?;
    Ok(raw
        .into_iter()
        .map(|(name, points)| {
            let aligned = align(&points, req.step);
            let points = if req.rate { rate(&aligned) } else { aligned };
            let points = points
                .into_iter()
                .filter(|(ts, _)| *ts >= req.start / req.step * req.step)
                .collect();
            (name, points)
        })
        .collect())
}

/// The last value of each `step`-aligned bucket.
pub fn align(points: &[(u64, f64)], step: u64) -> Points {
    let step = step.max(1);
    let mut out: Points = Vec::new();
    for &(ts, v) in points {
        let bucket = ts / step * step;
        match out.last_mut() {
            Some(last) if last.0 == bucket => last.1 = v,
            _ => out.push((bucket, v)),
        }
    }
    out
}

/// Per-second rates between successive points; a decrease (a counter reset) yields no point.
pub fn rate(points: &[(u64, f64)]) -> Points {
    points
        .windows(2)
        .filter_map(|w| {
            let ((t0, v0), (t1, v1)) = (w[0], w[1]);
            (t1 > t0 && v1 >= v0).then(|| (t1, (v1 - v0) / (t1 - t0) as f64))
        })
        .collect()
}

/// One series of an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesOut {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u32>,
    pub points: Points,
}

/// Combines the nodes' aligned points (`node id → series → points`).
pub fn aggregate(per_node: &BTreeMap<u32, BTreeMap<String, Points>>, agg: Agg) -> Vec<SeriesOut> {
    if agg == Agg::PerNode {
        return per_node
            .iter()
            .flat_map(|(node, series)| {
                series.iter().map(|(name, points)| SeriesOut {
                    name: name.clone(),
                    node_id: Some(*node),
                    points: points.clone(),
                })
            })
            .collect();
    }
    let names: BTreeSet<&String> = per_node.values().flat_map(|s| s.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let mut by_ts: BTreeMap<u64, (f64, f64, u32)> = BTreeMap::new();
            for series in per_node.values() {
                for (ts, v) in series.get(name).into_iter().flatten() {
                    let e = by_ts.entry(*ts).or_insert((0.0, f64::NEG_INFINITY, 0));
                    e.0 += v;
                    e.1 = e.1.max(*v);
                    e.2 += 1;
                }
            }
            SeriesOut {
                name: name.clone(),
                node_id: None,
                points: by_ts
                    .into_iter()
                    .map(|(ts, (sum, max, n))| {
                        let v = match agg {
                            Agg::Sum => sum,
                            Agg::Max => max,
                            _ => sum / f64::from(n),
                        };
                        (ts, v)
                    })
                    .collect(),
            }
        })
        .collect()
}

/// A node left out of an answer, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub node_id: u32,
    pub error: String,
}

/// The answer of `GET /ts/query`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TsAnswer {
    pub start: u64,
    pub end: u64,
    pub step: u64,
    pub agg: Agg,
    pub rate: bool,
    pub points_max: u64,
    pub nodes: Vec<u32>,
    pub skipped: Vec<Skipped>,
    pub series: Vec<SeriesOut>,
}

/// The request as the query string of another node's `GET /ts/local`.
pub fn local_query_string(req: &TsRequest) -> String {
    let names: Vec<String> = req.names.iter().map(|n| percent_encode(n)).collect();
    format!(
        "names={}&start={}&end={}&step={}&rate={}",
        names.join(","),
        req.start,
        req.end,
        req.step,
        u8::from(req.rate)
    )
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Upper bound on another node's answer.
const PEER_ANSWER_BYTES_MAX: usize = 32 << 20;

/// `GET http://addr{path}` (HTTP/1.1, connection closed after the answer), within
/// [`PEER_TIMEOUT`]: the body of a 200 answer.
pub async fn peer_get(addr: &str, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
        let mut raw = Vec::new();
        (&mut s)
            .take(PEER_ANSWER_BYTES_MAX as u64 + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("cannot read from {addr}: {e}"))?;
        if raw.len() > PEER_ANSWER_BYTES_MAX {
            return Err(format!(
                "answer from {addr} is larger than {PEER_ANSWER_BYTES_MAX} bytes"
            ));
        }
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("malformed answer from {addr}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "{addr} answered {}",
                head.lines().next().unwrap_or_default()
            ));
        }
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Err(format!("unexpected chunked answer from {addr}"));
        }
        Ok(body.to_string())
    };
    match tokio::time::timeout(PEER_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("{addr} did not answer within {PEER_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(n: &str) -> bool {
        matches!(n, "a" | "b" | "h_p99")
    }

    #[test]
    fn requests_parse_with_defaults_and_caps() {
        let r = parse_request("names=a,b&agg=max&rate=1", &known, 10_000, 10).expect("parse");
        assert_eq!(r.names, ["a", "b"]);
        assert_eq!(
            (r.start, r.end, r.step, r.agg, r.rate),
            (9_400, 10_000, 10, Agg::Max, true)
        );
        // A day at 10 s would be 8640 points: the step grows to keep 1000 per series.
        let r = parse_request("names=a&start=0&end=86400", &known, 0, 10).expect("parse");
        assert_eq!(r.step, 87);
        assert!((r.end - r.start) / r.step <= POINTS_MAX);
        let r = parse_request(
            "names=a%7Bx%3D%221%22%7D&start=1&end=2&step=1",
            &known,
            0,
            10,
        )
        .expect("parse");
        assert_eq!(r.names, ["a{x=\"1\"}"]);
        assert_eq!(r.step, 10);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let err = |q: &str| match parse_request(q, &known, 10_000, 10) {
            Err(TsError::BadRequest(m)) => m,
            other => panic!("{q}: expected a bad request, got {other:?}"),
        };
        assert!(err("").contains("names is required"));
        assert!(err("names=nope").contains("unknown series \"nope\""));
        assert!(err("names=a&start=x").contains("start must be a number"));
        assert!(err("names=a&start=10&end=5").contains("must be after start"));
        assert!(err("names=a&start=0&end=99999999").contains("longer than"));
        assert!(err("names=a&agg=median").contains("unknown agg"));
        assert!(err("names=a&bogus=1").contains("unknown parameter"));
        let many = (0..40).map(|_| "a").collect::<Vec<_>>().join(",");
        assert!(err(&format!("names={many}")).contains("too many names"));
        assert!(err("names=a&step=-1").contains("step must be"));
    }

    #[test]
    fn alignment_rates_and_aggregation() {
        assert_eq!(
            align(&[(10, 1.0), (15, 2.0), (20, 3.0)], 10),
            vec![(10, 2.0), (20, 3.0)]
        );
        assert_eq!(
            rate(&[(10, 0.0), (20, 50.0), (30, 10.0), (40, 20.0)]),
            vec![(20, 5.0), (40, 1.0)]
        );
        let mut per_node = BTreeMap::new();
        per_node.insert(
            1,
            BTreeMap::from([("a".to_string(), vec![(10, 1.0), (20, 2.0)])]),
        );
        per_node.insert(2, BTreeMap::from([("a".to_string(), vec![(10, 3.0)])]));
        let sum = aggregate(&per_node, Agg::Sum);
        assert_eq!(sum[0].points, vec![(10, 4.0), (20, 2.0)]);
        assert_eq!(
            aggregate(&per_node, Agg::Max)[0].points,
            vec![(10, 3.0), (20, 2.0)]
        );
        assert_eq!(
            aggregate(&per_node, Agg::Avg)[0].points,
            vec![(10, 2.0), (20, 2.0)]
        );
        let nodes = aggregate(&per_node, Agg::PerNode);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].node_id, Some(2));
    }

    #[test]
    fn names_match_series_with_labels() {
        assert!(matches("a", "a"));
        assert!(matches("a", "a{job_id=\"1\"}"));
        assert!(!matches("a", "ab"));
        assert!(!matches("a{x=\"1\"}", "a{x=\"2\"}"));
        assert_eq!(base_name("a{x=\"1\"}"), "a");
    }

    #[test]
    fn local_points_read_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TsStore::open(
            crate::ts_store::tests::engine(dir.path()),
            crate::ts_store::TsConfig::default(),
        )
        .expect("open");
        for i in 0..6u64 {
            store
                .record(
                    100 + 10 * i,
                    &[("a".into(), 10.0 * i as f64), ("a{l=\"x\"}".into(), 1.0)],
                )
                .expect("record");
        }
        let req = parse_request("names=a&start=110&end=160&rate=1", &known, 0, 10).expect("parse");
        let got = local_points(&store, &req).expect("read");
        assert_eq!(
            got["a"],
            vec![(110, 1.0), (120, 1.0), (130, 1.0), (140, 1.0), (150, 1.0)]
        );
        assert_eq!(got["a{l=\"x\"}"].len(), 5);
    }
}
