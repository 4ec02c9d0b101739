//! A backup collection's files on this node: `nodelocal://<node>/<path>` is
//! `<store>/extern/<path>`. Writes go to a temporary file renamed into place, so a reader
//! never sees half a file (a crash leaves at most a stray `.tmp`).

use std::path::{Path, PathBuf};

use crate::error::BackupError;
use crate::layout;

/// One collection's directory.
#[derive(Debug, Clone)]
pub struct CollectionDir {
    root: PathBuf,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io(format!("cannot {what} {}: {e}", path.display()))
}

impl CollectionDir {
    /// The collection `path` (already checked by [`layout::parse_collection`]) below
    /// `extern_dir`.
    pub fn new(extern_dir: &Path, path: &str) -> CollectionDir {
        CollectionDir {
            root: extern_dir.join(path),
        }
    }

    fn full(&self, rel: &str) -> Result<PathBuf, BackupError> {
        let rel = layout::check_relative(rel)?;
        Ok(self.root.join(rel))
    }

    /// The bytes of `rel`, `None` when it does not exist.
    pub async fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let path = self.full(rel)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path, e)),
        }
    }

    /// Writes `rel` whole (parents created), replacing any file there.
    pub async fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), BackupError> {
        let path = self.full(rel)?;
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

    /// Whether `rel` exists (file or directory).
    pub async fn exists(&self, rel: &str) -> Result<bool, BackupError> {
        let path = self.full(rel)?;
        tokio::fs::try_exists(&path)
            .await
            .map_err(|e| io("inspect", &path, e))
    }

    /// Every directory below `rel` (relative to `rel`, `/`-separated, sorted) holding a file
    /// named `marker`, at most `depth` levels down.
    pub async fn dirs_with(
        &self,
        rel: &str,
        marker: &str,
        depth: usize,
    ) -> Result<Vec<String>, BackupError> {
        let base = self.full(rel)?;
        let marker = marker.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&base, &base, &marker, depth, &mut out)?;
            out.sort();
            Ok(out)
        })
        .await
        .map_err(|e| BackupError::Io(format!("directory walk failed: {e}")))?
    }
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
    }
}
