//! A backup collection's files: `nodelocal://<node>/<path>` is `<store>/extern/<path>` of
//! that node, read and written directly on this node and through the node's `Changefeed`
//! service on another (the service calls [`read_local`] and [`list_local`]). Writes go to a temporary file renamed into place, so a reader
//! never sees half a file (a crash leaves at most a stray `.tmp`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ldr_kv::KvClient;
use ldr_proto::pb;
use ldr_proto::pb::changefeed_client::ChangefeedClient;
use ldr_types::NodeId;

use crate::error::BackupError;
use crate::layout;

/// One collection's directory: on this node, or on another node through its `Changefeed`
/// service (`ReadNodelocal`, `WriteNodelocal`, `ListNodelocal`).
#[derive(Debug, Clone)]
pub enum CollectionDir {
    Local {
        root: PathBuf,
    },
    Remote {
        node_id: NodeId,
        /// The node's address (`host:port`).
        address: String,
        /// The collection's path below that node's extern directory.
        prefix: String,
    },
}

fn io(what: &str, path: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// How long one file RPC to another node may take.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest file a remote read returns (data files are cut well below it).
const REMOTE_MESSAGE_BYTES_MAX: usize = 256 << 20;

impl CollectionDir {
    /// The collection `path` (already checked by [`crate::layout::parse_collection`]) below
    /// this node's `extern_dir`.
    pub fn new(extern_dir: &Path, path: &str) -> CollectionDir {
        CollectionDir::Local {
            root: extern_dir.join(path),
        }
    }

    /// The collection `path` on node `node` (`None`: this node), as `kv` knows the nodes.
    pub async fn on_node(
        kv: &KvClient,
        extern_dir: &Path,
        node: Option<NodeId>,
        path: &str,
    ) -> Result<CollectionDir, BackupError> {
        let me = kv.node_id();
        let target = node.unwrap_or(me);
        if target == me {
            return Ok(CollectionDir::new(extern_dir, path));
        }
        let nodes = kv.nodes().await?;
        let address = nodes
            .iter()
            .find(|n| n.node.node_id == target)
            .map(|n| n.node.address.clone())
            .ok_or_else(|| {
                BackupError::InvalidUri(format!(
                    "nodelocal://{target}: node {target} is not a member of this cluster"
                ))
            })?;
        Ok(CollectionDir::Remote {
            node_id: target,
            address,
            prefix: path.trim_matches('/').to_string(),
        })
    }

    fn full(root: &Path, rel: &str) -> Result<PathBuf, BackupError> {
        let rel = layout::check_relative(rel)?;
        Ok(root.join(rel))
    }

    fn remote_path(prefix: &str, rel: &str) -> Result<String, BackupError> {
        let rel = layout::check_relative(rel)?;
        Ok(match (prefix.is_empty(), rel.is_empty()) {
            (true, _) => rel,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}/{rel}"),
        })
    }

    async fn client(
        node_id: NodeId,
        address: &str,
    ) -> Result<ChangefeedClient<tonic::transport::Channel>, BackupError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            BackupError::Io(format!("cannot reach node {node_id} at {address}: {e}"))
        };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| unavailable(&e))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(REMOTE_TIMEOUT);
        let channel = ldr_security::dial::node_channel(endpoint)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(ChangefeedClient::new(channel)
            .max_encoding_message_size(REMOTE_MESSAGE_BYTES_MAX)
            .max_decoding_message_size(REMOTE_MESSAGE_BYTES_MAX))
    }

    fn remote_error(node_id: NodeId, what: &str, s: tonic::Status) -> BackupError {
        let message = format!("cannot {what} on node {node_id}: {}", s.message());
        if s.code() == tonic::Code::InvalidArgument {
            BackupError::InvalidUri(message)
        } else {
            BackupError::Io(message)
        }
    }

    /// The bytes of `rel`, `None` when it does not exist.
    pub async fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, BackupError> {
        match self {
            CollectionDir::Local { root } => read_local(root, rel).await,
            CollectionDir::Remote {
                node_id,
                address,
                prefix,
            } => {
                let path = Self::remote_path(prefix, rel)?;
                let r = Self::client(*node_id, address)
                    .await?
                    .read_nodelocal(pb::NodelocalReadRequest { path: path.clone() })
                    .await
                    .map_err(|s| Self::remote_error(*node_id, &format!("read {path}"), s))?
                    .into_inner();
                Ok(r.found.then_some(r.contents))
            }
        }
    }

    /// Writes `rel` whole (parents created), replacing any file there.
    pub async fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), BackupError> {
        match self {
            CollectionDir::Local { root } => {
                let path = Self::full(root, rel)?;
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|e| io("create directory", parent, e))?;
                }
                let tmp = path.with_extension("tmp");
                tokio::fs::write(&tmp, bytes)
                    .await
                    .map_err(|e| io("write", &tmp, e))?;
                tokio::fs::rename(&tmp, &path)
                    .await
                    .map_err(|e| io("rename", &path, e))
            }
            CollectionDir::Remote {
                node_id,
                address,
                prefix,
            } => {
                let path = Self::remote_path(prefix, rel)?;
                Self::client(*node_id, address)
                    .await?
                    .write_nodelocal(pb::NodelocalWriteRequest {
                        path: path.clone(),
                        contents: bytes.to_vec(),
                    })
                    .await
                    .map_err(|s| Self::remote_error(*node_id, &format!("write {path}"), s))?;
                Ok(())
            }
        }
    }

    /// Every directory below `rel` (relative to `rel`, `/`-separated, sorted) holding a file
    /// named `marker`, at most `depth` levels down.
    pub async fn dirs_with(
        &self,
        rel: &str,
        marker: &str,
        depth: usize,
    ) -> Result<Vec<String>, BackupError> {
        match self {
            CollectionDir::Local { root } => {
                let base = Self::full(root, rel)?;
                list_local(base, marker.to_string(), depth).await
            }
            CollectionDir::Remote {
                node_id,
                address,
                prefix,
            } => {
                let path = Self::remote_path(prefix, rel)?;
                let r = Self::client(*node_id, address)
                    .await?
                    .list_nodelocal(pb::NodelocalListRequest {
                        path: path.clone(),
                        marker: marker.to_string(),
                        depth: u32::try_from(depth).unwrap_or(u32::MAX),
                    })
                    .await
                    .map_err(|s| Self::remote_error(*node_id, &format!("list {path}"), s))?
                    .into_inner();
                Ok(r.dirs)
            }
        }
    }
}

/// The bytes of `rel` below `root` (`None`: absent); what `ReadNodelocal` serves.
pub async fn read_local(root: &Path, rel: &str) -> Result<Option<Vec<u8>>, BackupError> {
    let path = CollectionDir::full(root, rel)?;
    match tokio::fs::read(&path).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path, e)),
    }
}

/// The directories below `base` holding `marker`, at most `depth` levels down (relative,
/// `/`-separated, sorted); what `ListNodelocal` serves.
pub async fn list_local(
    base: PathBuf,
    marker: String,
    depth: usize,
) -> Result<Vec<String>, BackupError> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        walk(&base, &base, &marker, depth.min(8), &mut out)?;
        out.sort();
        Ok(out)
    })
    .await
    .map_err(|e| BackupError::Io(format!("directory walk failed: {e}")))?
}

fn walk(
    base: &Path,
    dir: &Path,
    marker: &str,
    depth: usize,
    out: &mut Vec<String>,
) -> Result<(), BackupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io("list", dir, e))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.join(marker).is_file()
            && let Ok(rel) = path.strip_prefix(base)
        {
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
        if depth > 1 {
            walk(base, &path, marker, depth - 1, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_reads_and_finds_marked_dirs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = CollectionDir::new(tmp.path(), "coll");
        assert_eq!(c.read("LATEST").await.expect("read"), None);
        c.write("2026/12/07-120000.00/BACKUP_MANIFEST", b"m")
            .await
            .expect("write");
        c.write("2026/12/08-120000.00/data/0.ldrbak", b"d")
            .await
            .expect("write");
        c.write("LATEST", b"/2026/12/07-120000.00")
            .await
            .expect("latest");
        assert_eq!(
            c.read("LATEST").await.expect("read").as_deref(),
            Some(&b"/2026/12/07-120000.00"[..])
        );
        assert_eq!(
            c.dirs_with("", "BACKUP_MANIFEST", 3).await.expect("walk"),
            vec!["2026/12/07-120000.00".to_string()]
        );
        assert!(c.read("../escape").await.is_err());
        assert_eq!(
            CollectionDir::remote_path("coll", "/2026/x").expect("path"),
            "coll/2026/x"
        );
        assert_eq!(
            CollectionDir::remote_path("coll", "").expect("root"),
            "coll"
        );
        assert!(CollectionDir::remote_path("coll", "a/../../b").is_err());
    }
}
