//! The cloud storage sink over `nodelocal://`: newline-delimited JSON files with CockroachDB's
//! names, in daily folders, and `<ts>.RESOLVED` files.
//!
//! A data file is `<YYYY-MM-DD>/<ts>-<session>-<node>-<sink>-<file %08x>-<topic>-<schema %x>.ndjson`
//! where `<ts>` (`YYYYMMDDHHMMSSNNNNNNNNNLLLLLLLLLL`) is the changefeed's resolved timestamp at
//! the previous flush: an inclusive lower bound of the timestamps in the file, so listing the
//! files in name order and stopping at a `.RESOLVED` file reads everything up to it. Rows of
//! one file share a table and schema version. A file appears whole (written to a temporary
//! name, then renamed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use ldr_types::Timestamp;

use super::{Sink, SinkError};
use crate::encode::Message;

/// A file is flushed early once it holds this many bytes (CockroachDB's `file_size` default).
const FILE_BYTES_MAX: usize = 16 << 20;

/// Numbers the sinks of this process (CockroachDB's `<sink_id>`).
static SINK_IDS: AtomicU64 = AtomicU64::new(0);

fn wall(ts: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ts.wall_time_ns.min(i64::MAX as u64) as i64)
}

/// `YYYYMMDDHHMMSSNNNNNNNNNLLLLLLLLLL`: CockroachDB's file-name timestamp.
pub fn format_time(ts: Timestamp) -> String {
    let t = wall(ts);
    format!(
        "{}{:09}{:010}",
        t.format("%Y%m%d%H%M%S"),
        t.timestamp_subsec_nanos(),
        ts.logical
    )
}

/// The daily folder of a timestamp (`2026-12-07`).
pub fn partition_dir(ts: Timestamp) -> String {
    wall(ts).format("%Y-%m-%d").to_string()
}

/// A data file's name (without its folder).
pub fn file_name(
    ts: Timestamp,
    session: &str,
    node_id: u32,
    sink_id: u64,
    file_id: u64,
    topic: &str,
    schema_version: u64,
) -> String {
    format!(
        "{}-{session}-{node_id}-{sink_id}-{file_id:08x}-{topic}-{schema_version:x}.ndjson",
        format_time(ts)
    )
}

/// Writes whole files below one node's external I/O directory.
#[async_trait::async_trait]
pub trait FileWriter: Send + Sync {
    /// Writes `contents` at `path` (relative to the sink's directory), replacing it.
    async fn write(&self, path: &str, contents: Vec<u8>) -> Result<(), SinkError>;
}

/// Writes into a directory of this node (`<store>/extern/<path>`).
pub struct LocalFiles {
    pub dir: PathBuf,
}

/// Writes `contents` to `dir/rel` through a temporary file and a rename.
pub fn write_file(dir: &Path, rel: &str, contents: &[u8]) -> std::io::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp-ldr");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, &path)
}

#[async_trait::async_trait]
impl FileWriter for LocalFiles {
    async fn write(&self, path: &str, contents: Vec<u8>) -> Result<(), SinkError> {
        let dir = self.dir.clone();
        let rel = path.to_string();
        tokio::task::spawn_blocking(move || write_file(&dir, &rel, &contents))
            .await
            .map_err(|e| SinkError::Retryable(format!("file write task failed: {e}")))?
            .map_err(|e| SinkError::Retryable(format!("cannot write nodelocal file {path}: {e}")))
    }
}

/// Writes into the external I/O directory of another node, through its `Changefeed` service.
pub struct RemoteFiles {
    /// The node's address (`host:port`).
    pub address: String,
    pub node_id: u32,
    /// The sink's directory below that node's `extern/`.
    pub dir: String,
}

#[async_trait::async_trait]
impl FileWriter for RemoteFiles {
    async fn write(&self, path: &str, contents: Vec<u8>) -> Result<(), SinkError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            SinkError::Retryable(format!(
                "cannot write nodelocal file on node {}: {e}",
                self.node_id
            ))
        };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(|e| unavailable(&e))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30));
        let channel = ldr_security::dial::node_channel(endpoint)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut client = ldr_proto::pb::changefeed_client::ChangefeedClient::new(channel)
            .max_encoding_message_size(256 << 20);
        let full = if self.dir.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.dir.trim_end_matches('/'))
        };
        client
            .write_nodelocal(ldr_proto::pb::NodelocalWriteRequest {
                path: full,
                contents,
            })
            .await
            .map_err(|s| unavailable(&s.message()))?;
        Ok(())
    }
}

/// The nodelocal sink of one changefeed run.
pub struct CloudStorageSink {
    writer: Box<dyn FileWriter>,
    session: String,
    node_id: u32,
    sink_id: u64,
    next_file_id: u64,
    /// The lower bound naming files until the next flush.
    data_ts: Timestamp,
    /// Buffered files by (topic, schema version).
    files: BTreeMap<(String, u64), Vec<u8>>,
    /// The last data file name (names only grow within a session).
    previous_name: String,
}

impl CloudStorageSink {
    /// `start`: the timestamp the run starts from (its first files' lower bound).
    pub fn new(writer: Box<dyn FileWriter>, node_id: u32, start: Timestamp) -> CloudStorageSink {
        let session: [u8; 8] = rand::random();
        CloudStorageSink {
            writer,
            session: hex::encode(session),
            node_id,
            sink_id: SINK_IDS.fetch_add(1, Ordering::Relaxed) + 1,
            next_file_id: 0,
            data_ts: start,
            files: BTreeMap::new(),
            previous_name: String::new(),
        }
    }

    async fn flush_file(&mut self, key: (String, u64), contents: Vec<u8>) -> Result<(), SinkError> {
        if contents.is_empty() {
            return Ok(());
        }
        let name = file_name(
            self.data_ts,
            &self.session,
            self.node_id,
            self.sink_id,
            self.next_file_id,
            &key.0,
            key.1,
        );
        self.next_file_id += 1;
        if name < self.previous_name {
            return Err(SinkError::Permanent(format!(
                "detected a filename {name} that lexically precedes a file emitted before: {}",
                self.previous_name
            )));
        }
        self.previous_name = name.clone();
        let path = format!("{}/{name}", partition_dir(self.data_ts));
        self.writer.write(&path, contents).await
    }
}

#[async_trait::async_trait]
impl Sink for CloudStorageSink {
    async fn emit_row(
        &mut self,
        topic: &str,
        schema_version: u64,
        message: &Message,
        _mvcc: Timestamp,
    ) -> Result<(), SinkError> {
        let key = (topic.to_string(), schema_version);
        let buf = self.files.entry(key.clone()).or_default();
        buf.extend_from_slice(message.value.as_deref().unwrap_or("").as_bytes());
        buf.push(b'\n');
        if buf.len() > FILE_BYTES_MAX {
            let contents = self.files.remove(&key).unwrap_or_default();
            self.flush_file(key, contents).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, frontier: Timestamp) -> Result<(), SinkError> {
        let files = std::mem::take(&mut self.files);
        for (key, contents) in files {
            self.flush_file(key, contents).await?;
        }
        // Strictly above the frontier: a data file never sorts before the RESOLVED file of
        // a timestamp its rows are above.
        let successor = Timestamp::new(frontier.wall_time_ns, frontier.logical.saturating_add(1));
        if successor > self.data_ts {
            self.data_ts = successor;
        }
        Ok(())
    }

    async fn emit_resolved(&mut self, payload: &str, ts: Timestamp) -> Result<(), SinkError> {
        let path = format!("{}/{}.RESOLVED", partition_dir(ts), format_time(ts));
        self.writer.write(&path, payload.as_bytes().to_vec()).await
    }

    fn flush_per_batch(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    #[test]
    fn names_as_cockroachdb() {
        // 2023-11-14 22:13:20.000000123 UTC, logical 7.
        let ts = Timestamp::new(1_700_000_000_000_000_123, 7);
        assert_eq!(
            format_time(ts),
            "20231114221320000000123000000000".to_string() + "7"
        );
        assert_eq!(partition_dir(ts), "2023-11-14");
        assert_eq!(
            file_name(ts, "0123456789abcdef", 2, 1, 10, "t", 3),
            "202311142213200000001230000000007-0123456789abcdef-2-1-0000000a-t-3.ndjson"
        );
        // A data file sorts before the RESOLVED file of the same timestamp ('-' < '.').
        assert!(file_name(ts, "s", 1, 1, 0, "t", 1) < format!("{}.RESOLVED", format_time(ts)));
    }

    #[derive(Clone, Default)]
    struct Memory(Arc<Mutex<Vec<(String, String)>>>);

    #[async_trait::async_trait]
    impl FileWriter for Memory {
        async fn write(&self, path: &str, contents: Vec<u8>) -> Result<(), SinkError> {
            self.0
                .lock()
                .push((path.to_string(), String::from_utf8_lossy(&contents).into()));
            Ok(())
        }
    }

    #[tokio::test]
    async fn files_per_topic_named_by_the_previous_frontier() {
        let mem = Memory::default();
        let start = Timestamp::new(1_700_000_000_000_000_000, 0);
        let mut sink = CloudStorageSink::new(Box::new(mem.clone()), 1, start);
        let m = |v: &str| Message {
            key: "[1]".into(),
            value: Some(v.into()),
        };
        sink.emit_row("t", 1, &m("a"), start).await.expect("emit");
        sink.emit_row("u", 1, &m("b"), start).await.expect("emit");
        sink.emit_row("t", 1, &m("c"), start).await.expect("emit");
        let next = Timestamp::new(1_700_000_001_000_000_000, 0);
        sink.flush(next).await.expect("flush");
        sink.emit_resolved("{\"resolved\":\"x\"}", next)
            .await
            .expect("resolved");
        sink.emit_row("t", 1, &m("d"), next).await.expect("emit");
        sink.flush(next).await.expect("flush");
        let files = mem.0.lock().clone();
        assert_eq!(files.len(), 4, "{files:?}");
        assert!(files[0].0.starts_with("2023-11-14/20231114221320000000000"));
        assert!(files[0].0.ends_with("-00000000-t-1.ndjson"));
        assert_eq!(files[0].1, "a\nc\n");
        assert!(files[1].0.ends_with("-00000001-u-1.ndjson"));
        assert_eq!(
            files[2].0,
            format!("2023-11-14/{}.RESOLVED", format_time(next))
        );
        let after = Timestamp::new(next.wall_time_ns, 1);
        assert!(files[3].0.contains(&format_time(after)), "{}", files[3].0);
        // Names grow: everything after the RESOLVED file sorts after it.
        let mut names: Vec<&String> = files.iter().map(|f| &f.0).collect();
        let emitted = names.clone();
        names.sort();
        assert_eq!(names, emitted);
    }

    #[test]
    fn writes_whole_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_file(dir.path(), "a/b/c.ndjson", b"x\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/b/c.ndjson")).expect("read"),
            "x\n"
        );
    }
}
