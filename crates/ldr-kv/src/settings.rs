//! Cluster settings: the static registry of every setting ldr knows (type, default,
//! description, validation) and [`Settings`], one node's cache of the current values.
//!
//! Values are persisted as canonical SQL text in the `settings` subspace of the system
//! keyspace (absent = default); each node refreshes its cache on a change notification and
//! every second. Reading a setting never does I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use crate::setting_values::{
    format_byte_size, format_duration, parse_bool, parse_byte_size, parse_duration, parse_int,
};
use crate::{KvError, Result, SettingValue};

/// The kind of a setting, with its validation bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SettingKind {
    Bool,
    Int { min: i64, max: i64 },
    Duration { min: Duration },
    ByteSize { min: u64 },
    String,
}

impl SettingKind {
    /// CockroachDB's one-letter type code in `SHOW ALL CLUSTER SETTINGS`.
    fn type_code(&self) -> &'static str {
        match self {
            SettingKind::Bool => "b",
            SettingKind::Int { .. } => "i",
            SettingKind::Duration { .. } => "d",
            SettingKind::ByteSize { .. } => "z",
            SettingKind::String => "s",
        }
    }
}

/// One known setting.
#[derive(Debug)]
pub(crate) struct SettingDef {
    pub(crate) name: &'static str,
    pub(crate) kind: SettingKind,
    /// The default as SQL text (parsed by the same rules as user input).
    pub(crate) default: &'static str,
    pub(crate) description: &'static str,
    /// Only its current value may be "set" (e.g. `version`).
    pub(crate) read_only: bool,
}

const NO_MAX: i64 = i64::MAX;

/// Every setting ldr knows, sorted by name.
pub(crate) static REGISTRY: &[SettingDef] = &[
    SettingDef {
        name: "cluster.organization",
        kind: SettingKind::String,
        default: "",
        description: "organization name",
        read_only: false,
    },
    SettingDef {
        name: "gc.ttlseconds",
        kind: SettingKind::Int {
            min: 0,
            max: NO_MAX,
        },
        default: "14400",
        description: "the number of seconds of MVCC history kept for reads in the past and for catch-up scans",
        read_only: false,
    },
    SettingDef {
        name: "kv.closed_timestamp.target_duration",
        kind: SettingKind::Duration {
            min: Duration::from_millis(1),
        },
        default: "200ms",
        description: "if nonzero, attempt to provide closed timestamp notifications for timestamps trailing cluster time by approximately this duration",
        read_only: false,
    },
    SettingDef {
        name: "kv.raft_log.disable_synchronization_unsafe",
        kind: SettingKind::Bool,
        default: "false",
        description: "disables fsync of the Raft log before a write is acknowledged (benchmarks only: an OS crash may lose acknowledged writes)",
        read_only: false,
    },
    SettingDef {
        name: "kv.rangefeed.enabled",
        kind: SettingKind::Bool,
        default: "false",
        description: "if set, rangefeed registration is enabled",
        read_only: false,
    },
    SettingDef {
        name: "logical_replication.consumer.batch_size",
        kind: SettingKind::Int {
            min: 1,
            max: NO_MAX,
        },
        default: "32",
        description: "the number of rows to attempt to apply in a single transaction",
        read_only: false,
    },
    SettingDef {
        name: "logical_replication.consumer.flush_worker_per_proc",
        kind: SettingKind::Int { min: 1, max: 1024 },
        default: "32",
        description: "the maximum number of workers per processor with which to concurrently flush",
        read_only: false,
    },
    SettingDef {
        name: "logical_replication.consumer.heartbeat_frequency",
        kind: SettingKind::Duration {
            min: Duration::from_millis(1),
        },
        default: "5s",
        description: "controls frequency the stream replication destination cluster sends heartbeat to the source cluster to keep the stream alive",
        read_only: false,
    },
    SettingDef {
        name: "logical_replication.consumer.job_checkpoint_frequency",
        kind: SettingKind::Duration {
            min: Duration::from_millis(1),
        },
        default: "1s",
        description: "controls the frequency with which the job updates their progress; if 0, disabled",
        read_only: false,
    },
    SettingDef {
        name: "logical_replication.consumer.retry_queue_backoff",
        kind: SettingKind::Duration {
            min: Duration::ZERO,
        },
        default: "3s",
        description: "minimum delay between retries of items in the retry queue",
        read_only: false,
    },
    SettingDef {
        name: "logical_replication.consumer.retry_queue_duration",
        kind: SettingKind::Duration {
            min: Duration::ZERO,
        },
        default: "1m",
        description: "minimum amount of time an event will remain in the retry queue before being sent to the dead letter queue",
        read_only: false,
    },
    SettingDef {
        name: "logical_replication.consumer.retry_queue_partition_size_limit",
        kind: SettingKind::ByteSize { min: 1 },
        default: "16MiB",
        description: "maximum size of the retry queue for a single partition",
        read_only: false,
    },
    SettingDef {
        name: "logical_replication.stream_batch_size",
        kind: SettingKind::ByteSize { min: 1 },
        default: "16MiB",
        description: "target batch size for logical replication stream",
        read_only: false,
    },
    SettingDef {
        name: "physical_replication.producer.min_checkpoint_frequency",
        kind: SettingKind::Duration {
            min: Duration::ZERO,
        },
        default: "200ms",
        description: "controls minimum frequency the stream replication source cluster sends checkpoints to the destination cluster",
        read_only: false,
    },
    SettingDef {
        name: "server.time_until_store_dead",
        kind: SettingKind::Duration {
            min: Duration::from_secs(10),
        },
        default: "5m0s",
        description: "the time after which if there is no new gossiped information about a store, it is considered dead",
        read_only: false,
    },
    SettingDef {
        name: "sql.distsql.temp_storage.workmem",
        kind: SettingKind::ByteSize { min: 1 },
        default: "64MiB",
        description: "maximum amount of memory in bytes a statement may hold for its rows (scans, joins, sorts, aggregations) before it fails with 53200",
        read_only: false,
    },
    SettingDef {
        name: "sql.ttl.changefeed_replication.disabled",
        kind: SettingKind::Bool,
        default: "false",
        description: "if true, deletes issued by TTL will not be replicated via changefeeds (this setting will be ignored by changefeeds that have the ignore_disable_changefeed_replication option; such changefeeds will continue to replicate all TTL deletes)",
        read_only: false,
    },
    SettingDef {
        name: "stream_replication.stream_liveness_track_frequency",
        kind: SettingKind::Duration {
            min: Duration::from_millis(1),
        },
        default: "5s",
        description: "controls how frequent we check for the liveness of a replication stream producer job",
        read_only: false,
    },
    SettingDef {
        name: "version",
        kind: SettingKind::String,
        default: "25.2",
        description: "set the active cluster version in the format '<major>.<minor>'",
        read_only: true,
    },
];

/// The registry entry of `name`.
pub(crate) fn find(name: &str) -> Option<&'static SettingDef> {
    REGISTRY.iter().find(|d| d.name == name)
}

/// The registry entry of `name`, or [`KvError::UnknownSetting`].
pub(crate) fn lookup(name: &str) -> Result<&'static SettingDef> {
    find(name).ok_or_else(|| KvError::UnknownSetting(name.to_string()))
}

impl SettingDef {
    /// Parses and validates user text for this setting.
    pub(crate) fn parse(&self, text: &str) -> Result<SettingValue> {
        let invalid = |detail: String| KvError::InvalidSetting {
            name: self.name.to_string(),
            value: text.to_string(),
            detail,
        };
        let value = match self.kind {
            SettingKind::Bool => SettingValue::Bool(parse_bool(text).map_err(invalid)?),
            SettingKind::Int { min, max } => {
                let v = parse_int(text).map_err(invalid)?;
                if v < min || v > max {
                    return Err(invalid(bounds_message(v, min, max)));
                }
                SettingValue::Int(v)
            }
            SettingKind::Duration { min } => {
                let v = parse_duration(text).map_err(invalid)?;
                if v < min {
                    return Err(invalid(format!(
                        "cannot be set to a value less than {}",
                        format_duration(min)
                    )));
                }
                SettingValue::Duration(v)
            }
            SettingKind::ByteSize { min } => {
                let v = parse_byte_size(text).map_err(invalid)?;
                if v < min {
                    return Err(invalid(format!(
                        "cannot be set to a value less than {}",
                        format_byte_size(min)
                    )));
                }
                SettingValue::Bytes(v)
            }
            SettingKind::String => SettingValue::String(text.to_string()),
        };
        if self.read_only && value != self.default_value() {
            return Err(invalid(format!(
                "setting {} is read-only and cannot be changed",
                self.name
            )));
        }
        Ok(value)
    }

    pub(crate) fn default_value(&self) -> SettingValue {
        // The defaults are literals in this file; the registry test parses every one.
        match self.kind {
            SettingKind::String => SettingValue::String(self.default.to_string()),
            _ => {
                let def = SettingDef {
                    read_only: false,
                    ..*self
                };
                def.parse(self.default)
                    .expect("registry defaults are valid (see the registry test)")
            }
        }
    }
}

fn bounds_message(v: i64, min: i64, max: i64) -> String {
    if v < min {
        format!("cannot be set to a value less than {min}")
    } else {
        format!("cannot be set to a value greater than {max}")
    }
}

impl fmt::Display for SettingValue {
    /// The canonical SQL text: what `SHOW CLUSTER SETTING` prints and the system keyspace
    /// stores; it parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingValue::Bool(b) => write!(f, "{b}"),
            SettingValue::Int(i) => write!(f, "{i}"),
            SettingValue::Float(v) => write!(f, "{v}"),
            SettingValue::Duration(d) => f.write_str(&format_duration(*d)),
            SettingValue::Bytes(b) => f.write_str(&format_byte_size(*b)),
            SettingValue::String(s) => f.write_str(s),
        }
    }
}

/// The cluster settings as last seen by this node (refreshed on change and periodically).
///
/// `Settings::default()` holds every default (useful in tests of the layers above).
#[derive(Debug, Default)]
pub struct Settings {
    /// Values that differ from the default, by name.
    overrides: RwLock<BTreeMap<String, SettingValue>>,
    /// Counts this node's own changes ([`Settings::set_cached`]), so that a refresh that read
    /// the system keyspace before such a change does not undo it.
    local_changes: AtomicU64,
}

impl Settings {
    /// The current value of a setting.
    pub fn get(&self, name: &str) -> Result<SettingValue> {
        let def = lookup(name)?;
        Ok(self
            .overrides
            .read()
            .get(name)
            .cloned()
            .unwrap_or_else(|| def.default_value()))
    }

    /// The current value as SQL text (`SHOW CLUSTER SETTING`).
    pub fn get_text(&self, name: &str) -> Result<String> {
        Ok(self.get(name)?.to_string())
    }

    /// A bool setting. Asking for an unknown name or the wrong type is a programming error:
    /// it logs, panics in debug builds, and returns `false` otherwise.
    pub fn bool(&self, name: &str) -> bool {
        match self.get(name) {
            Ok(SettingValue::Bool(b)) => b,
            other => misuse(name, "bool", &other, false),
        }
    }

    /// An int setting (byte sizes and durations-in-seconds are not converted).
    pub fn int(&self, name: &str) -> i64 {
        match self.get(name) {
            Ok(SettingValue::Int(i)) => i,
            Ok(SettingValue::Bytes(b)) => i64::try_from(b).unwrap_or(i64::MAX),
            other => misuse(name, "int", &other, 0),
        }
    }

    pub fn duration(&self, name: &str) -> Duration {
        match self.get(name) {
            Ok(SettingValue::Duration(d)) => d,
            other => misuse(name, "duration", &other, Duration::ZERO),
        }
    }

    pub fn bytes(&self, name: &str) -> u64 {
        match self.get(name) {
            Ok(SettingValue::Bytes(b)) => b,
            Ok(SettingValue::Int(i)) if i >= 0 => i as u64,
            other => misuse(name, "byte size", &other, 0),
        }
    }

    /// A string setting.
    pub fn string(&self, name: &str) -> String {
        match self.get(name) {
            Ok(SettingValue::String(s)) => s,
            other => misuse(name, "string", &other, String::new()),
        }
    }

    /// `(name, value as SQL text, type, description)` of every setting, sorted by name. The
    /// type is CockroachDB's code: `b` bool, `i` int, `d` duration, `z` byte size,
    /// `s` string.
    pub fn all(&self) -> Vec<(String, String, String, String)> {
        let overrides = self.overrides.read();
        REGISTRY
            .iter()
            .map(|def| {
                let value = overrides
                    .get(def.name)
                    .cloned()
                    .unwrap_or_else(|| def.default_value());
                (
                    def.name.to_string(),
                    value.to_string(),
                    def.kind.type_code().to_string(),
                    def.description.to_string(),
                )
            })
            .collect()
    }

    /// The count of local changes, to pass to [`Settings::replace_from_persisted`] when
    /// reading the persisted values starts.
    pub(crate) fn local_changes(&self) -> u64 {
        self.local_changes.load(Ordering::Acquire)
    }

    /// Replaces every override with the persisted values (`name -> SQL text`); unknown names
    /// and invalid values are skipped with a warning. Returns the names whose value changed,
    /// or `None` (and changes nothing) if this node changed a setting since `local_changes`
    /// was read: the persisted values may predate that change.
    pub(crate) fn replace_from_persisted(
        &self,
        persisted: &BTreeMap<String, String>,
        local_changes: u64,
    ) -> Option<Vec<&'static str>> {
        let mut next = BTreeMap::new();
        for (name, text) in persisted {
            let Some(def) = find(name) else {
                tracing::debug!(setting = %name, "ignoring persisted value of an unknown setting");
                continue;
            };
            match def.parse(text) {
                Ok(v) if v != def.default_value() => {
                    next.insert(name.clone(), v);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(setting = %name, error = %e, "ignoring invalid persisted setting value")
                }
            }
        }
        let mut overrides = self.overrides.write();
        if self.local_changes.load(Ordering::Acquire) != local_changes {
            return None;
        }
        let changed = REGISTRY
            .iter()
            .filter(|def| overrides.get(def.name) != next.get(def.name))
            .map(|def| def.name)
            .collect();
        *overrides = next;
        Some(changed)
    }

    /// Sets one value in this node's cache (after it was persisted).
    pub(crate) fn set_cached(&self, def: &'static SettingDef, value: SettingValue) -> bool {
        let mut overrides = self.overrides.write();
        self.local_changes.fetch_add(1, Ordering::AcqRel);
        let before = overrides.get(def.name).cloned();
        if value == def.default_value() {
            overrides.remove(def.name);
        } else {
            overrides.insert(def.name.to_string(), value.clone());
        }
        before.unwrap_or_else(|| def.default_value()) != value
    }
}

fn misuse<T>(name: &str, wanted: &str, got: &Result<SettingValue>, fallback: T) -> T {
    tracing::error!(setting = name, wanted, got = ?got, "cluster setting read with the wrong name or type");
    debug_assert!(
        false,
        "cluster setting {name:?} read as {wanted}, but it is {got:?}"
    );
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_sorted_unique_and_defaults_are_valid() {
        for pair in REGISTRY.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} must sort before {}",
                pair[0].name,
                pair[1].name
            );
        }
        for def in REGISTRY {
            let v = def.default_value();
            assert_eq!(
                def.parse(&v.to_string()).expect("default round-trips"),
                v,
                "{}",
                def.name
            );
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let s = Settings::default();
        assert!(!s.bool("kv.rangefeed.enabled"));
        assert_eq!(s.int("gc.ttlseconds"), 14400);
        assert_eq!(
            s.duration("kv.closed_timestamp.target_duration"),
            Duration::from_millis(200)
        );
        assert_eq!(
            s.duration("physical_replication.producer.min_checkpoint_frequency"),
            Duration::from_millis(200)
        );
        assert_eq!(
            s.duration("stream_replication.stream_liveness_track_frequency"),
            Duration::from_secs(5)
        );
        assert_eq!(
            s.duration("logical_replication.consumer.retry_queue_duration"),
            Duration::from_secs(60)
        );
        assert_eq!(
            s.duration("logical_replication.consumer.retry_queue_backoff"),
            Duration::from_secs(3)
        );
        assert_eq!(
            s.bytes("logical_replication.consumer.retry_queue_partition_size_limit"),
            16 << 20
        );
        assert_eq!(
            s.duration("logical_replication.consumer.job_checkpoint_frequency"),
            Duration::from_secs(1)
        );
        assert_eq!(
            s.duration("logical_replication.consumer.heartbeat_frequency"),
            Duration::from_secs(5)
        );
        assert_eq!(
            s.int("logical_replication.consumer.flush_worker_per_proc"),
            32
        );
        assert_eq!(s.int("logical_replication.consumer.batch_size"), 32);
        assert_eq!(s.bytes("logical_replication.stream_batch_size"), 16 << 20);
        assert!(!s.bool("sql.ttl.changefeed_replication.disabled"));
        assert_eq!(s.string("cluster.organization"), "");
        assert_eq!(s.get_text("version").expect("known"), "25.2");
    }

    #[test]
    fn unknown_names_and_invalid_values_are_refused() {
        let s = Settings::default();
        assert!(
            matches!(s.get("no.such.setting"), Err(KvError::UnknownSetting(n)) if n == "no.such.setting")
        );
        let cases = [
            ("kv.rangefeed.enabled", "maybe"),
            ("gc.ttlseconds", "-1"),
            ("gc.ttlseconds", "1h"),
            ("logical_replication.consumer.batch_size", "0"),
            ("kv.closed_timestamp.target_duration", "0s"),
            ("kv.closed_timestamp.target_duration", "fast"),
            ("logical_replication.stream_batch_size", "0"),
            ("logical_replication.stream_batch_size", "lots"),
            ("version", "26.1"),
        ];
        for (name, text) in cases {
            let err = lookup(name).expect("known").parse(text).expect_err(text);
            assert!(
                matches!(err, KvError::InvalidSetting { .. }),
                "{name}={text}: {err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
        assert_eq!(
            lookup("version")
                .expect("known")
                .parse("25.2")
                .expect("same value"),
            SettingValue::String("25.2".into())
        );
    }

    #[test]
    fn values_parse_from_sql_text() {
        let p = |name: &str, text: &str| lookup(name).expect("known").parse(text).expect(text);
        assert_eq!(p("kv.rangefeed.enabled", "true"), SettingValue::Bool(true));
        assert_eq!(p("gc.ttlseconds", "600"), SettingValue::Int(600));
        assert_eq!(
            p("kv.closed_timestamp.target_duration", "50ms"),
            SettingValue::Duration(Duration::from_millis(50))
        );
        assert_eq!(
            p("logical_replication.consumer.retry_queue_duration", "1h30m"),
            SettingValue::Duration(Duration::from_secs(5400))
        );
        assert_eq!(
            p("logical_replication.consumer.retry_queue_backoff", "10"),
            SettingValue::Duration(Duration::from_secs(10))
        );
        assert_eq!(
            p("logical_replication.stream_batch_size", "1MiB"),
            SettingValue::Bytes(1 << 20)
        );
        assert_eq!(
            p("cluster.organization", "Acme Corp"),
            SettingValue::String("Acme Corp".into())
        );
    }

    #[test]
    fn replacing_from_persisted_reports_changes_and_skips_garbage() {
        let s = Settings::default();
        let mut persisted = BTreeMap::new();
        persisted.insert("gc.ttlseconds".to_string(), "600".to_string());
        persisted.insert("kv.rangefeed.enabled".to_string(), "false".to_string()); // = default
        persisted.insert("no.such.setting".to_string(), "1".to_string());
        persisted.insert(
            "logical_replication.consumer.batch_size".to_string(),
            "zero".to_string(),
        );
        let epoch = s.local_changes();
        assert_eq!(
            s.replace_from_persisted(&persisted, epoch),
            Some(vec!["gc.ttlseconds"])
        );
        assert_eq!(s.int("gc.ttlseconds"), 600);
        assert_eq!(s.int("logical_replication.consumer.batch_size"), 32);
        assert_eq!(
            s.replace_from_persisted(&persisted, epoch),
            Some(vec![]),
            "no change the second time"
        );
        assert_eq!(
            s.replace_from_persisted(&BTreeMap::new(), epoch),
            Some(vec!["gc.ttlseconds"])
        );
        assert_eq!(s.int("gc.ttlseconds"), 14400);
    }

    #[test]
    fn a_refresh_older_than_a_local_change_does_not_undo_it() {
        let s = Settings::default();
        let epoch = s.local_changes();
        // This node sets a value while a refresh is reading the (older) persisted values.
        assert!(s.set_cached(
            lookup("gc.ttlseconds").expect("known"),
            SettingValue::Int(5)
        ));
        assert_eq!(s.replace_from_persisted(&BTreeMap::new(), epoch), None);
        assert_eq!(s.int("gc.ttlseconds"), 5);
        let mut persisted = BTreeMap::new();
        persisted.insert("gc.ttlseconds".to_string(), "5".to_string());
        assert_eq!(
            s.replace_from_persisted(&persisted, s.local_changes()),
            Some(vec![])
        );
    }

    #[test]
    fn all_lists_every_setting_with_text_and_type() {
        let s = Settings::default();
        let def = lookup("kv.closed_timestamp.target_duration").expect("known");
        assert!(s.set_cached(def, SettingValue::Duration(Duration::from_secs(60))));
        let all = s.all();
        assert_eq!(all.len(), REGISTRY.len());
        let row = all
            .iter()
            .find(|r| r.0 == "kv.closed_timestamp.target_duration")
            .expect("listed");
        assert_eq!((row.1.as_str(), row.2.as_str()), ("1m0s", "d"));
        let row = all
            .iter()
            .find(|r| r.0 == "logical_replication.stream_batch_size")
            .expect("listed");
        assert_eq!((row.1.as_str(), row.2.as_str()), ("16 MiB", "z"));
        assert!(
            !s.set_cached(def, SettingValue::Duration(Duration::from_secs(60))),
            "unchanged"
        );
    }
}
