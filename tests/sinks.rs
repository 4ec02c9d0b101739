//! Reading what changefeeds wrote to nodelocal sinks (CockroachDB's file layout: data files of
//! newline-delimited JSON messages and `.RESOLVED` files), for the e2e tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use ldr_sim::Cluster;
use ldr_types::Timestamp;
use serde_json::Value;

use crate::poll;

/// Every file below `dir` (recursively), sorted by name within each daily folder.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with(".tmp-ldr") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The sink directory of `nodelocal://<node>/<path>` on `c`.
pub fn nodelocal(c: &Cluster, node: usize, path: &str) -> Result<PathBuf> {
    Ok(c.node_info(node)?.store_dir.join("extern").join(path))
}

/// The data messages and the resolved timestamps written to a nodelocal sink.
#[derive(Debug, Default)]
pub struct SinkContents {
    pub messages: Vec<Value>,
    pub resolved: Vec<Timestamp>,
    pub data_files: Vec<String>,
}

pub fn read_sink(dir: &Path) -> Result<SinkContents> {
    let mut out = SinkContents::default();
    for f in files_below(dir) {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&f).with_context(|| format!("{}", f.display()))?;
        if name.ends_with(".RESOLVED") {
            let v: Value = serde_json::from_str(&text).with_context(|| text.clone())?;
            let ts = v["resolved"]
                .as_str()
                .context("resolved")?
                .parse::<Timestamp>()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            out.resolved.push(ts);
        } else {
            for line in text.lines().filter(|l| !l.is_empty()) {
                out.messages
                    .push(serde_json::from_str(line).with_context(|| line.to_string())?);
            }
            out.data_files.push(name);
        }
    }
    Ok(out)
}

pub fn ts_of(v: &Value) -> Result<Timestamp> {
    v.as_str()
        .with_context(|| format!("not a timestamp: {v}"))?
        .parse::<Timestamp>()
        .map_err(|e| anyhow::anyhow!("{v}: {e}"))
}

/// Waits until the sink in `dir` has a resolved timestamp at or above `at`.
pub async fn wait_resolved(dir: &Path, at: Timestamp, timeout: Duration) -> Result<SinkContents> {
    poll(
        &format!("a RESOLVED file at or above {at} in {}", dir.display()),
        timeout,
        Duration::from_millis(200),
        || async {
            let s = read_sink(dir).map_err(|e| e.to_string())?;
            if s.resolved.iter().any(|r| *r >= at) {
                Ok(s)
            } else {
                Err(format!("resolved so far: {:?}", s.resolved.last()))
            }
        },
    )
    .await
}

/// The keys whose latest message (by `updated`) is an upsert with `after.v`, per key.
pub fn latest_values(messages: &[Value]) -> Result<BTreeMap<i64, Option<String>>> {
    let mut latest: BTreeMap<i64, (Timestamp, Option<String>)> = BTreeMap::new();
    for m in messages {
        let key = m["key"][0].as_i64().with_context(|| format!("{m}"))?;
        // Without `updated` (an initial scan only) every message is as of one time.
        let ts = match m.get("updated") {
            Some(u) => ts_of(u)?,
            None => Timestamp::ZERO,
        };
        let v = m["after"]["v"].as_str().map(str::to_string);
        match latest.get(&key) {
            Some((t, _)) if *t > ts => {}
            _ => {
                latest.insert(key, (ts, v));
            }
        }
    }
    Ok(latest.into_iter().map(|(k, (_, v))| (k, v)).collect())
}
