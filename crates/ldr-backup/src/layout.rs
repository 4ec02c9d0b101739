//! Where a backup's files go, as CockroachDB lays out a backup collection (pure).
//!
//! ```text
//! <collection>/LATEST                                  the latest full backup's subdirectory
//! <collection>/2026/12/07-123456.78/BACKUP_MANIFEST    a full backup (named by its end time)
//! <collection>/2026/12/07-123456.78/BACKUP_MANIFEST-CHECKSUM
//! <collection>/2026/12/07-123456.78/data/<n>.ldrbak    its data files
//! <collection>/incrementals/2026/12/07-123456.78/20261207/124500.00-20261207-123456.78/…
//!                                                       an incremental layer on that full backup
//! ```
//!
//! A collection URI is `nodelocal://<node>/<path>`: `<path>` below that node's
//! `<store>/extern` directory (never outside it).

use chrono::{DateTime, Datelike, Timelike, Utc};
use ldr_types::{NodeId, Timestamp};

use crate::error::BackupError;

pub const LATEST_FILE: &str = "LATEST";
pub const MANIFEST_FILE: &str = "BACKUP_MANIFEST";
pub const MANIFEST_CHECKSUM_FILE: &str = "BACKUP_MANIFEST-CHECKSUM";
pub const INCREMENTALS_DIR: &str = "incrementals";
pub const DATA_DIR: &str = "data";

/// A parsed `nodelocal://` collection URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// `None`: `nodelocal://self/…` (the node running the statement).
    pub node: Option<NodeId>,
    /// Below the node's extern directory, without leading or trailing `/`.
    pub path: String,
}

/// Parses a collection URI, refusing paths that leave the extern directory.
pub fn parse_collection(uri: &str) -> Result<Collection, BackupError> {
    let parsed = url::Url::parse(uri).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => {
            BackupError::InvalidUri(format!("no scheme found for backup URI \"{uri}\""))
        }
        other => BackupError::InvalidUri(format!("invalid backup URI \"{uri}\": {other}")),
    })?;
    let scheme = parsed.scheme().to_ascii_lowercase();
    if scheme != "nodelocal" {
        return Err(BackupError::Unsupported(format!(
            "backup storage scheme \"{scheme}\" is not supported; use nodelocal://<node>/<path>"
        )));
    }
    let node = match parsed.host_str().unwrap_or_default() {
        "" => {
            return Err(BackupError::InvalidUri(
                "host component of nodelocal URI must be a node ID (use 'self' to specify each node should access its own local filesystem)".into(),
            ));
        }
        "self" => None,
        h => match h.parse::<NodeId>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                return Err(BackupError::InvalidUri(format!(
                    "host component of nodelocal URI must be a node ID: parsing \"{h}\": invalid syntax"
                )));
            }
        },
    };
    // The URL parser folds `..` away; look at the text as written.
    let raw_path = uri.split(['?', '#']).next().unwrap_or_default();
    let path = parsed.path().trim_matches('/').to_string();
    if raw_path
        .split('/')
        .any(|p| p == ".." || p.eq_ignore_ascii_case("%2e%2e"))
    {
        return Err(BackupError::OutsideExternDir(
            raw_path
                .split_once("://")
                .map(|(_, rest)| rest.split_once('/').map(|(_, p)| p).unwrap_or(""))
                .unwrap_or(raw_path)
                .to_string(),
        ));
    }
    Ok(Collection { node, path })
}

/// Checks a relative path inside a collection (a subdirectory a user named).
pub fn check_relative(path: &str) -> Result<String, BackupError> {
    let trimmed = path.trim_matches('/');
    if trimmed.split('/').any(|p| p == ".." || p == ".") || trimmed.contains('\\') {
        return Err(BackupError::OutsideExternDir(path.to_string()));
    }
    Ok(trimmed.to_string())
}

fn utc(ts: Timestamp) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_nanos(i64::try_from(ts.wall_time_ns).unwrap_or(i64::MAX))
}

/// The subdirectory of a full backup ending at `end`: `/2026/12/07-123456.78`.
pub fn full_subdir(end: Timestamp) -> String {
    let t = utc(end);
    format!(
        "/{:04}/{:02}/{:02}-{:02}{:02}{:02}.{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 10_000_000
    )
}

fn compact(ts: Timestamp) -> (String, String) {
    let t = utc(ts);
    (
        format!("{:04}{:02}{:02}", t.year(), t.month(), t.day()),
        format!(
            "{:02}{:02}{:02}.{:02}",
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond() / 10_000_000
        ),
    )
}

/// The directory of an incremental layer on the full backup `full` (its subdirectory), from
/// `start` to `end`: `incrementals/2026/12/07-123456.78/20261207/124500.00-20261207-123456.78`.
pub fn incremental_dir(full: &str, start: Timestamp, end: Timestamp) -> String {
    let (end_day, end_time) = compact(end);
    let (start_day, start_time) = compact(start);
    format!(
        "{INCREMENTALS_DIR}/{}/{end_day}/{end_time}-{start_day}-{start_time}",
        full.trim_matches('/')
    )
}

/// Whether `rel` (relative to the collection, no leading `/`) names a full backup
/// subdirectory: `YYYY/MM/DD-HHMMSS.ss` (with an optional `.n` suffix on a name collision).
pub fn is_full_subdir(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    let [year, month, rest] = parts.as_slice() else {
        return false;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let Some((day, time)) = rest.split_once('-') else {
        return false;
    };
    let time = time.split('.').collect::<Vec<_>>();
    digits(year, 4)
        && digits(month, 2)
        && digits(day, 2)
        && time.len() >= 2
        && digits(time[0], 6)
        && digits(time[1], 2)
        && time[2..]
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

/// The name of data file `n` of a layer.
pub fn data_file(n: usize) -> String {
    format!("{DATA_DIR}/{n}.ldrbak")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn collection_uris() {
        assert_eq!(
            parse_collection("nodelocal://1/backups/a").expect("valid"),
            Collection {
                node: Some(1),
                path: "backups/a".into()
            }
        );
        assert_eq!(
            parse_collection("nodelocal://self/b/").expect("self"),
            Collection {
                node: None,
                path: "b".into()
            }
        );
        for (uri, want) in [
            ("nodelocal://1/../etc", "outside of external-io-dir"),
            ("nodelocal://1/a/%2e%2e/x", "outside of external-io-dir"),
            ("nodelocal://one/x", "must be a node ID"),
            ("s3://bucket/x", "not supported"),
            ("just/a/path", "no scheme found"),
        ] {
            let e = parse_collection(uri).expect_err(uri);
            assert!(e.to_string().contains(want), "{uri}: {e}");
        }
        assert!(check_relative("/2026/12/07-123456.78").is_ok());
        assert!(check_relative("/../x").is_err());
    }

    #[test]
    fn names_follow_cockroachdb() {
        // 2026-12-07 12:34:56.789 UTC
        let end = Timestamp::new(1_796_646_896 * SEC + 789_000_000, 4);
        assert_eq!(full_subdir(end), "/2026/12/07-123456.78");
        assert!(is_full_subdir("2026/12/07-123456.78"));
        assert!(is_full_subdir("2026/12/07-123456.78.1"));
        assert!(!is_full_subdir("incrementals/2026/12/07-123456.78"));
        assert!(!is_full_subdir("2026/12/07"));
        let later = Timestamp::new(end.wall_time_ns + 3600 * SEC, 0);
        assert_eq!(
            incremental_dir("/2026/12/07-123456.78", end, later),
            "incrementals/2026/12/07-123456.78/20261207/133456.78-20261207-123456.78"
        );
        assert_eq!(data_file(3), "data/3.ldrbak");
    }
}
