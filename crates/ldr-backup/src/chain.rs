//! Reading a backup chain: a full backup and the incremental layers on it, oldest first, each
//! manifest verified against its checksum.

use crate::error::BackupError;
use crate::layout::{self, INCREMENTALS_DIR, LATEST_FILE, MANIFEST_CHECKSUM_FILE, MANIFEST_FILE};
use crate::manifest::{Manifest, decode_manifest};
use crate::storage::CollectionDir;

/// One layer: where it is (relative to the collection) and its manifest.
#[derive(Debug, Clone)]
pub struct Layer {
    pub dir: String,
    pub manifest: Manifest,
}

/// The full backup subdirectory `subdir` names: `LATEST` reads the `LATEST` file.
pub async fn resolve_subdir(
    c: &CollectionDir,
    subdir: &str,
    collection_uri: &str,
) -> Result<String, BackupError> {
    if !subdir.eq_ignore_ascii_case("LATEST") {
        let rel = layout::check_relative(subdir)?;
        return Ok(format!("/{rel}"));
    }
    match c.read(LATEST_FILE).await? {
        None => Err(BackupError::NotFound(format!(
            "path does not contain a completed latest backup: {collection_uri}"
        ))),
        Some(b) if b.is_empty() => Err(BackupError::Corrupt("malformed LATEST file".into())),
        Some(b) => {
            let text = String::from_utf8(b)
                .map_err(|_| BackupError::Corrupt("malformed LATEST file".into()))?;
            let rel = layout::check_relative(text.trim())?;
            Ok(format!("/{rel}"))
        }
    }
}

/// Reads and verifies the manifest of the layer in `dir`; `None` if it has none.
pub async fn read_manifest(c: &CollectionDir, dir: &str) -> Result<Option<Manifest>, BackupError> {
    let dir = dir.trim_matches('/');
    let Some(bytes) = c.read(&format!("{dir}/{MANIFEST_FILE}")).await? else {
        return Ok(None);
    };
    let checksum = c
        .read(&format!("{dir}/{MANIFEST_CHECKSUM_FILE}"))
        .await?
        .ok_or_else(|| {
            BackupError::Corrupt(format!(
                "backup manifest /{dir}/{MANIFEST_FILE} has no {MANIFEST_CHECKSUM_FILE} file"
            ))
        })?;
    let checksum = String::from_utf8_lossy(&checksum).into_owned();
    decode_manifest(&bytes, &checksum, &format!("/{dir}/{MANIFEST_FILE}")).map(Some)
}

/// The chain of the full backup in `full_subdir` (`/2026/12/07-…`): the full layer first,
/// then its incremental layers by end time.
pub async fn load_chain(
    c: &CollectionDir,
    full_subdir: &str,
    collection_uri: &str,
) -> Result<Vec<Layer>, BackupError> {
    let full_dir = full_subdir.trim_matches('/').to_string();
    let Some(full) = read_manifest(c, &full_dir).await? else {
        return Err(BackupError::NotFound(format!(
            "no backup found in {}/{full_dir}: {MANIFEST_FILE} does not exist",
            collection_uri.trim_end_matches('/')
        )));
    };
    let mut layers = vec![Layer {
        dir: full_dir.clone(),
        manifest: full,
    }];
    let incrementals = format!("{INCREMENTALS_DIR}/{full_dir}");
    let mut found = Vec::new();
    for rel in c.dirs_with(&incrementals, MANIFEST_FILE, 2).await? {
        let dir = format!("{incrementals}/{rel}");
        if let Some(m) = read_manifest(c, &dir).await? {
            found.push(Layer { dir, manifest: m });
        }
    }
    found.sort_by_key(|l| l.manifest.end());
    layers.extend(found);
    Ok(layers)
}
