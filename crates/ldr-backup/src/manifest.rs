//! A backup layer's manifest: what it holds (tables with their descriptors, data files with
//! their SHA-256), from when to when; and the data files' format (pure).
//!
//! The manifest is JSON in `BACKUP_MANIFEST`; `BACKUP_MANIFEST-CHECKSUM` holds the hex SHA-256
//! of its bytes, verified before the manifest is believed. A data file is a sequence of
//! entries (`key`, and a value or a tombstone), its SHA-256 in the manifest, verified before
//! any entry is decoded:
//!
//! ```text
//! "LDRBACKUP1\n" then per entry: u32 key length (BE), key, u8 kind (0 tombstone, 1 value),
//!                                u32 value length (BE), value
//! ```
//!
//! ```
//! use ldr_backup::manifest::{decode_data, encode_data, Entry};
//! let entries = vec![Entry { key: b"k".to_vec(), value: Some(b"v".to_vec()) }];
//! let (bytes, sha) = encode_data(&entries);
//! assert_eq!(decode_data(&bytes, &sha, "data/0.ldrbak").unwrap(), entries);
//! ```

use ldr_sql::catalog::TableDescriptor;
use ldr_types::{TableId, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::BackupError;

const DATA_MAGIC: &[u8] = b"LDRBACKUP1\n";
/// The manifest format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Entries larger than this are refused on decode (a corrupt length, not a real value).
const ENTRY_BYTES_MAX: usize = 256 << 20;

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    Full,
    Incremental,
}

impl BackupType {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Incremental => "incremental",
        }
    }
}

/// One table in a layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestTable {
    /// The descriptor at the layer's end time (schema locks cleared).
    pub descriptor: TableDescriptor,
    /// Live rows written to this layer (for an incremental: changed rows).
    pub rows: u64,
    /// Deleted rows (tombstones) in this layer.
    #[serde(default)]
    pub deleted: u64,
    /// Bytes of this table's entries.
    pub bytes: u64,
}

/// One data file of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the layer's directory (`data/0.ldrbak`).
    pub path: String,
    pub table_id: TableId,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub size_bytes: u64,
    pub entries: u64,
}

/// A backup layer's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub backup_type: BackupType,
    /// Decimal; zero for a full backup: changes after it and up to `end_time` are in it.
    pub start_time: String,
    /// Decimal: the layer holds the state as of this timestamp.
    pub end_time: String,
    pub cluster_id: String,
    pub job_id: i64,
    /// `BACKUP DATABASE`: the databases named (restorable with RESTORE DATABASE).
    pub databases: Vec<String>,
    pub tables: Vec<ManifestTable>,
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    pub fn start(&self) -> Timestamp {
        self.start_time.parse().unwrap_or(Timestamp::ZERO)
    }

    pub fn end(&self) -> Timestamp {
        self.end_time.parse().unwrap_or(Timestamp::ZERO)
    }

    pub fn table(&self, id: TableId) -> Option<&ManifestTable> {
        self.tables.iter().find(|t| t.descriptor.id == id)
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The manifest's bytes and its checksum file's contents.
pub fn encode_manifest(m: &Manifest) -> (Vec<u8>, String) {
    let bytes = serde_json::to_vec_pretty(m).expect("a manifest always serializes");
    let sum = sha256_hex(&bytes);
    (bytes, sum)
}

/// Verifies a manifest against its checksum file, then decodes it. `where_` names it in
/// errors.
pub fn decode_manifest(
    bytes: &[u8],
    checksum: &str,
    where_: &str,
) -> Result<Manifest, BackupError> {
    let actual = sha256_hex(bytes);
    if actual != checksum.trim() {
        return Err(BackupError::Corrupt(format!(
            "backup manifest {where_} is corrupt: checksum mismatch (expected {}, computed {actual})",
            checksum.trim()
        )));
    }
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
        BackupError::Corrupt(format!("backup manifest {where_} cannot be decoded: {e}"))
    })?;
    if m.format_version != FORMAT_VERSION {
        return Err(BackupError::Unsupported(format!(
            "backup manifest {where_} has format version {}, this node reads version {FORMAT_VERSION}",
            m.format_version
        )));
    }
    Ok(m)
}

/// One key of a data file: a value, or a tombstone (deleted since the previous layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// The bytes of a data file holding `entries`, and their hex SHA-256.
pub fn encode_data(entries: &[Entry]) -> (Vec<u8>, String) {
    let size: usize = entries
        .iter()
        .map(|e| 9 + e.key.len() + e.value.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(DATA_MAGIC.len() + size);
    out.extend_from_slice(DATA_MAGIC);
    for e in entries {
        let key_len = u32::try_from(e.key.len()).expect("keys are far below 4 GiB");
        out.extend_from_slice(&key_len.to_be_bytes());
        out.extend_from_slice(&e.key);
        match &e.value {
            Some(v) => {
                out.push(1);
                let len = u32::try_from(v.len()).expect("values are far below 4 GiB");
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(v);
            }
            None => {
                out.push(0);
                out.extend_from_slice(&0u32.to_be_bytes());
            }
        }
    }
    let sum = sha256_hex(&out);
    (out, sum)
}

fn corrupt(path: &str, what: &str) -> BackupError {
    BackupError::Corrupt(format!("backup data file {path} is corrupt: {what}"))
}

/// Verifies a data file against its checksum, then decodes its entries.
pub fn decode_data(bytes: &[u8], sha256: &str, path: &str) -> Result<Vec<Entry>, BackupError> {
    let actual = sha256_hex(bytes);
    if actual != sha256 {
        return Err(corrupt(
            path,
            &format!("checksum mismatch (expected {sha256}, computed {actual})"),
        ));
    }
    let Some(mut rest) = bytes.strip_prefix(DATA_MAGIC) else {
        return Err(corrupt(path, "bad header"));
    };
    let mut out = Vec::new();
    let take = |rest: &mut &[u8], n: usize| -> Result<Vec<u8>, BackupError> {
        if n > ENTRY_BYTES_MAX || rest.len() < n {
            return Err(corrupt(path, "truncated entry"));
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head.to_vec())
    };
    let len = |rest: &mut &[u8]| -> Result<usize, BackupError> {
        let b = take(rest, 4)?;
        let arr: [u8; 4] = b
            .try_into()
            .map_err(|_| corrupt(path, "truncated length"))?;
        Ok(u32::from_be_bytes(arr) as usize)
    };
    while !rest.is_empty() {
        let key_len = len(&mut rest)?;
        let key = take(&mut rest, key_len)?;
        let kind = take(&mut rest, 1)?[0];
        let value_len = len(&mut rest)?;
        let value = take(&mut rest, value_len)?;
        let value = match kind {
            1 => Some(value),
            0 if value.is_empty() => None,
            _ => return Err(corrupt(path, "bad entry kind")),
        };
        out.push(Entry { key, value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let desc: TableDescriptor = serde_json::from_value(serde_json::json!({
            "id": 52, "version": 1, "database_id": 50, "database": "db", "schema": "public",
            "name": "t", "columns": [], "next_column_id": 1,
            "primary_index": {"id": 1, "name": "t_pkey", "unique": true, "columns": [],
                              "directions": [], "storing": []},
            "next_index_id": 2, "shard_count": 1, "owner": "root"
        }))
        .expect("descriptor");
        Manifest {
            format_version: FORMAT_VERSION,
            backup_type: BackupType::Full,
            start_time: Timestamp::ZERO.to_decimal_string(),
            end_time: Timestamp::new(10, 2).to_decimal_string(),
            cluster_id: "c".into(),
            job_id: 7,
            databases: vec![],
            tables: vec![ManifestTable {
                descriptor: desc,
                rows: 2,
                deleted: 0,
                bytes: 40,
            }],
            files: vec![ManifestFile {
                path: "data/0.ldrbak".into(),
                table_id: 52,
                sha256: "00".into(),
                size_bytes: 40,
                entries: 2,
            }],
        }
    }

    #[test]
    fn manifests_round_trip_and_detect_corruption() {
        let m = manifest();
        let (bytes, sum) = encode_manifest(&m);
        let back = decode_manifest(&bytes, &sum, "x").expect("round trip");
        assert_eq!(back, m);
        assert_eq!(back.end(), Timestamp::new(10, 2));
        assert_eq!(back.table(52).map(|t| t.rows), Some(2));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        let e = decode_manifest(&flipped, &sum, "/2026/12/07-1").expect_err("corrupt");
        assert_eq!(e.code(), crate::error::DATA_CORRUPTED);
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        // A checksum that matches garbage: the decode fails, not a panic.
        let garbage = b"{not json".to_vec();
        let e = decode_manifest(&garbage, &sha256_hex(&garbage), "x").expect_err("garbage");
        assert!(e.to_string().contains("cannot be decoded"), "{e}");
    }

    #[test]
    fn data_files_round_trip_and_detect_corruption() {
        let entries = vec![
            Entry {
                key: b"a".to_vec(),
                value: Some(b"1".to_vec()),
            },
            Entry {
                key: b"b".to_vec(),
                value: None,
            },
            Entry {
                key: vec![0xff; 300],
                value: Some(vec![]),
            },
        ];
        let (bytes, sum) = encode_data(&entries);
        assert_eq!(decode_data(&bytes, &sum, "d").expect("round trip"), entries);
        assert_eq!(
            decode_data(DATA_MAGIC, &sha256_hex(DATA_MAGIC), "d").expect("empty"),
            vec![]
        );
        for i in [0, DATA_MAGIC.len(), bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let e = decode_data(&bad, &sum, "data/0.ldrbak").expect_err("flipped");
            assert_eq!(
                e.to_string(),
                format!(
                    "backup data file data/0.ldrbak is corrupt: checksum mismatch (expected {sum}, computed {})",
                    sha256_hex(&bad)
                )
            );
        }
        // Truncated files whose checksum was recomputed still fail cleanly.
        for cut in 1..bytes.len() - DATA_MAGIC.len() {
            let short = &bytes[..bytes.len() - cut];
            let r = decode_data(short, &sha256_hex(short), "d");
            if let Ok(v) = r {
                assert!(v.len() < entries.len(), "cut {cut}");
            }
        }
    }
}
