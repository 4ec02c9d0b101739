//! The `WITH …` options of `CREATE CHANGEFEED` and the sink URI, checked as CockroachDB checks
//! them (its option table, its error texts), into a [`ChangefeedOptions`] the job keeps in its
//! payload. Pure: no I/O, unit-tested below.

use std::time::Duration;

use ldr_types::Timestamp;
use serde::{Deserialize, Serialize};

/// Every option CockroachDB's `CREATE CHANGEFEED` knows. The ones this implementation acts on
/// are parsed below; the others are refused with a clear "not supported" error rather than
/// silently ignored.
const KNOWN_OPTIONS: &[&str] = &[
    "avro_schema_prefix",
    "confluent_schema_registry",
    "cursor",
    "key_column",
    "end_time",
    "envelope",
    "format",
    "full_table_name",
    "key_in_value",
    "topic_in_value",
    "resolved",
    "min_checkpoint_frequency",
    "updated",
    "mvcc_timestamp",
    "diff",
    "compression",
    "schema_change_events",
    "schema_change_policy",
    "split_column_families",
    "gc_protect_expires_after",
    "webhook_auth_header",
    "webhook_client_timeout",
    "on_error",
    "metrics_label",
    "unordered",
    "virtual_columns",
    "execution_locality",
    "lagging_ranges_threshold",
    "lagging_ranges_polling_interval",
    "ignore_disable_changefeed_replication",
    "encode_json_value_null_as_object",
    "initial_scan",
    "no_initial_scan",
    "initial_scan_only",
    "kafka_sink_config",
    "pubsub_sink_config",
    "webhook_sink_config",
    "protect_data_from_gc_on_pause",
];

/// Options accepted and honoured, or accepted as no-ops because they change nothing here.
const SUPPORTED_OPTIONS: &[&str] = &[
    "cursor",
    "end_time",
    "envelope",
    "format",
    "full_table_name",
    "key_in_value",
    "topic_in_value",
    "resolved",
    "min_checkpoint_frequency",
    "updated",
    "mvcc_timestamp",
    "diff",
    "ignore_disable_changefeed_replication",
    "initial_scan",
    "no_initial_scan",
    "initial_scan_only",
    "on_error",
    "metrics_label",
    "schema_change_policy",
    "schema_change_events",
    "gc_protect_expires_after",
    "webhook_client_timeout",
    "protect_data_from_gc_on_pause",
];

/// An option or sink error: CockroachDB's text; `feature_not_supported` marks the ones that
/// are CockroachDB features this implementation lacks (SQLSTATE 0A000 rather than 22023).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OptionError {
    pub message: String,
    pub feature_not_supported: bool,
}

fn invalid(message: impl Into<String>) -> OptionError {
    OptionError {
        message: message.into(),
        feature_not_supported: false,
    }
}

fn unsupported(message: impl Into<String>) -> OptionError {
    OptionError {
        message: message.into(),
        feature_not_supported: true,
    }
}

/// The message envelope (`envelope = …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    /// `{"after": {...}, "key": [...], …}`.
    Wrapped,
    /// The row itself with the metadata under `"__crdb__"`.
    Bare,
    /// Only the key.
    KeyOnly,
}

/// `initial_scan = 'yes' | 'no' | 'only'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitialScan {
    Yes,
    No,
    Only,
}

/// The checked options of one changefeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangefeedOptions {
    pub envelope: Envelope,
    pub initial_scan: InitialScan,
    /// `updated`: each row message carries its MVCC timestamp.
    pub updated: bool,
    /// `mvcc_timestamp`: each row message carries `"mvcc_timestamp"`.
    pub mvcc_timestamp: bool,
    /// `diff`: each row message carries the row before the change.
    pub diff: bool,
    /// `resolved[= interval]`: emit resolved messages, at most this often (`None`: no
    /// resolved messages; zero: every time the frontier advances).
    pub resolved_ms: Option<u64>,
    /// `min_checkpoint_frequency` (default 30s): how often the sink is flushed and the
    /// high-water mark checkpointed.
    pub min_checkpoint_frequency_ms: u64,
    /// `cursor = '<decimal>'`: start here instead of at the statement time.
    pub cursor: Option<Timestamp>,
    /// `end_time = '<decimal>'`: emit every change up to this time, then finish.
    #[serde(default)]
    pub end_time: Option<Timestamp>,
    /// `full_table_name`: topics are `db.public.t` instead of `t`.
    pub full_table_name: bool,
    /// `key_in_value` / `topic_in_value` (the webhook sink turns both on).
    pub key_in_value: bool,
    pub topic_in_value: bool,
    /// `ignore_disable_changefeed_replication`: emit versions marked `omit_in_rangefeeds`.
    pub ignore_disable_changefeed_replication: bool,
}

impl Default for ChangefeedOptions {
    fn default() -> Self {
        ChangefeedOptions {
            envelope: Envelope::Wrapped,
            initial_scan: InitialScan::Yes,
            updated: false,
            mvcc_timestamp: false,
            diff: false,
            resolved_ms: None,
            min_checkpoint_frequency_ms: 30_000,
            cursor: None,
            end_time: None,
            full_table_name: false,
            key_in_value: false,
            topic_in_value: false,
            ignore_disable_changefeed_replication: false,
        }
    }
}

impl ChangefeedOptions {
    pub fn min_checkpoint_frequency(&self) -> Duration {
        Duration::from_millis(self.min_checkpoint_frequency_ms)
    }

    pub fn resolved_interval(&self) -> Option<Duration> {
        self.resolved_ms.map(Duration::from_millis)
    }

    /// Whether versions marked `omit_in_rangefeeds` (TTL deletes of tables with
    /// `ttl_disable_changefeed_replication`) are left out: unless
    /// `ignore_disable_changefeed_replication`.
    pub fn drops_omitted(&self) -> bool {
        !self.ignore_disable_changefeed_replication
    }
}

/// The sink a URI names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SinkSpec {
    /// `nodelocal://<node>/<path>`: files below that node's `<store>/extern/<path>`
    /// (`self` or `0`: the node running the changefeed).
    Nodelocal { node: Option<u32>, path: String },
    /// `webhook-https://…` / `webhook-http://…`: JSON POSTs to the URL (as `https://…` /
    /// `http://…`).
    Webhook {
        url: String,
        insecure_tls_skip_verify: bool,
        /// PEM (the `ca_cert` parameter is base64 of it, as CockroachDB's).
        ca_cert: Option<String>,
    },
    /// No `INTO`: rows go to the SQL client.
    Sinkless,
}

/// Parses `WITH …` options (names lowercased; `None` for bare options).
pub fn parse_options(
    options: &[(String, Option<String>)],
) -> Result<ChangefeedOptions, OptionError> {
    let mut o = ChangefeedOptions::default();
    let mut seen: Vec<&str> = Vec::new();
    for (name, _) in options {
        if !KNOWN_OPTIONS.contains(&name.as_str()) {
            return Err(invalid(format!("invalid option \"{name}\"")));
        }
        if seen.contains(&name.as_str()) {
            return Err(invalid(format!(
                "option \"{name}\" specified more than once"
            )));
        }
        seen.push(name);
        if !SUPPORTED_OPTIONS.contains(&name.as_str()) {
            return Err(unsupported(format!(
                "changefeed option {name} is not supported"
            )));
        }
    }
    let get = |n: &str| options.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let flag = |n: &str| -> Result<bool, OptionError> {
        match get(n) {
            None => Ok(false),
            Some(None) => Ok(true),
            Some(Some(v)) if v.is_empty() || v.eq_ignore_ascii_case("true") => Ok(true),
            Some(Some(_)) => Err(invalid(format!("option \"{n}\" does not take a value"))),
        }
    };
    o.updated = flag("updated")?;
    o.mvcc_timestamp = flag("mvcc_timestamp")?;
    o.diff = flag("diff")?;
    o.full_table_name = flag("full_table_name")?;
    o.key_in_value = flag("key_in_value")?;
    o.topic_in_value = flag("topic_in_value")?;
    o.ignore_disable_changefeed_replication = flag("ignore_disable_changefeed_replication")?;
    if let Some(v) = get("format") {
        let v = v.unwrap_or_default().to_ascii_lowercase();
        match v.as_str() {
            "json" => {}
            "avro" | "experimental_avro" => {
                return Err(invalid(
                    "WITH format=avro requires option confluent_schema_registry",
                ));
            }
            "csv" | "parquet" | "protobuf" => {
                return Err(unsupported(format!(
                    "this sink is incompatible with format={v}"
                )));
            }
            other => {
                return Err(invalid(format!(
                    "unknown format: {other}, valid values are: avro, csv, experimental_avro, json, parquet, protobuf"
                )));
            }
        }
    }
    if let Some(v) = get("envelope") {
        let v = v.unwrap_or_default().to_ascii_lowercase();
        o.envelope = match v.as_str() {
            "wrapped" => Envelope::Wrapped,
            "bare" => Envelope::Bare,
            "key_only" => Envelope::KeyOnly,
            "row" | "deprecated_row" | "enriched" => {
                return Err(unsupported(format!("envelope={v} is not supported")));
            }
            other => {
                return Err(invalid(format!(
                    "unknown envelope: {other}, valid values are: bare, deprecated_row, enriched, key_only, row, wrapped"
                )));
            }
        };
    }
    if let Some(v) = get("resolved") {
        let d = match v.as_deref() {
            None | Some("") => Duration::ZERO,
            Some(t) => parse_duration("resolved", t, true)?,
        };
        o.resolved_ms = Some(d.as_millis() as u64);
    }
    if let Some(v) = get("min_checkpoint_frequency") {
        let d = parse_duration(
            "min_checkpoint_frequency",
            v.as_deref().unwrap_or_default(),
            true,
        )?;
        o.min_checkpoint_frequency_ms = d.as_millis() as u64;
    }
    if let Some(v) = get("cursor") {
        let text = v.unwrap_or_default();
        let ts = text.parse::<Timestamp>().map_err(|_| {
            invalid(format!(
                "cursor: could not parse \"{text}\" as a decimal timestamp (such as cluster_logical_timestamp() returns)"
            ))
        })?;
        o.cursor = Some(ts);
    }
    if let Some(v) = get("end_time") {
        let text = v.unwrap_or_default();
        let ts = text.parse::<Timestamp>().map_err(|_| {
            invalid(format!(
                "end_time: could not parse \"{text}\" as a decimal timestamp (such as cluster_logical_timestamp() returns)"
            ))
        })?;
        if let Some(cursor) = o.cursor
            && ts < cursor
        {
            return Err(invalid(format!(
                "specified end time {} cannot be less than statement time {}",
                ts.to_decimal_string(),
                cursor.to_decimal_string()
            )));
        }
        o.end_time = Some(ts);
    }
    let initial = get("initial_scan");
    let none = flag("no_initial_scan")?;
    let only = flag("initial_scan_only")?;
    if initial.is_some() && none {
        return Err(invalid(
            "cannot specify both initial_scan and no_initial_scan",
        ));
    }
    if initial.is_some() && only {
        return Err(invalid(
            "cannot specify both initial_scan and initial_scan_only",
        ));
    }
    if none && only {
        return Err(invalid(
            "cannot specify both initial_scan='only' and no_initial_scan",
        ));
    }
    o.initial_scan = if let Some(v) = initial {
        match v.unwrap_or_default().to_ascii_lowercase().as_str() {
            "" | "yes" => InitialScan::Yes,
            "no" => InitialScan::No,
            "only" => InitialScan::Only,
            other => {
                return Err(invalid(format!(
                    "unknown initial_scan: {other}, valid values are: no, only, yes"
                )));
            }
        }
    } else if only {
        InitialScan::Only
    } else if none || o.cursor.is_some() {
        InitialScan::No
    } else {
        InitialScan::Yes
    };
    if o.initial_scan == InitialScan::Only {
        for bad in ["resolved", "diff", "mvcc_timestamp", "updated", "end_time"] {
            if get(bad).is_some() {
                return Err(invalid(format!(
                    "cannot specify both initial_scan='only' and {bad}"
                )));
            }
        }
    }
    if o.envelope == Envelope::KeyOnly && o.diff {
        return Err(invalid("diff is only usable with envelope=wrapped"));
    }
    Ok(o)
}

/// `'10s'`, `'1m30s'`, `'500ms'`: CockroachDB (Go) durations.
fn parse_duration(option: &str, text: &str, zero_ok: bool) -> Result<Duration, OptionError> {
    let t = text.trim();
    let d = humantime::parse_duration(t).map_err(|e| {
        invalid(format!(
            "problem parsing option {option}: time: invalid duration \"{t}\": {e}"
        ))
    })?;
    if t.starts_with('-') {
        return Err(invalid(format!(
            "negative durations are not accepted: {option}='{t}'"
        )));
    }
    if d.is_zero() && !zero_ok {
        return Err(invalid(format!(
            "option {option} must be a duration greater than 0"
        )));
    }
    Ok(d)
}

/// Parses a sink URI (`None`: sinkless) and checks it against the options.
pub fn parse_sink(
    uri: Option<&str>,
    options: &mut ChangefeedOptions,
) -> Result<SinkSpec, OptionError> {
    let Some(uri) = uri else {
        return Ok(SinkSpec::Sinkless);
    };
    let parsed = url::Url::parse(uri).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => {
            invalid(format!("no scheme found for sink URL \"{uri}\""))
        }
        other => invalid(format!("invalid sink URI \"{uri}\": {other}")),
    })?;
    let scheme = parsed.scheme().to_ascii_lowercase();
    match scheme.as_str() {
        "nodelocal" | "experimental-nodelocal" => {
            if let Some((k, _)) = parsed.query_pairs().next() {
                if k == "file_size" || k == "partition_format" {
                    return Err(unsupported(format!("sink parameter {k} is not supported")));
                }
                return Err(invalid(format!("unknown sink query parameter: {k}")));
            }
            if options.envelope == Envelope::KeyOnly {
                return Err(invalid("this sink is incompatible with envelope=key_only"));
            }
            let node = match parsed.host_str().unwrap_or_default() {
                "" => {
                    return Err(invalid(
                        "host component of nodelocal URI must be a node ID (use 'self' to specify each node should access its own local filesystem)",
                    ));
                }
                "self" => None,
                h => match h.parse::<u32>() {
                    Ok(0) => None,
                    Ok(n) => Some(n),
                    Err(_) => {
                        return Err(invalid(format!(
                            "host component of nodelocal URI must be a node ID: parsing \"{h}\": invalid syntax"
                        )));
                    }
                },
            };
            let path = parsed.path().trim_start_matches('/').to_string();
            // The URL parser folds `..` away; look at the text as written.
            let raw_path = uri.split('?').next().unwrap_or_default();
            if raw_path
                .split('/')
                .any(|p| p == ".." || p == "%2e%2e" || p == "%2E%2E")
            {
                return Err(invalid(format!(
                    "local file access to paths outside of external-io-dir is not allowed: {path}"
                )));
            }
            // Files are self-describing: the key goes in the value (CockroachDB does so for
            // every cloud storage sink but `bare`).
            if options.envelope == Envelope::Wrapped {
                options.key_in_value = true;
            }
            Ok(SinkSpec::Nodelocal { node, path })
        }
        "webhook-https" | "webhook-http" => {
            let mut insecure = false;
            let mut ca_cert = None;
            let mut kept = Vec::new();
            for (k, v) in parsed.query_pairs() {
                match k.as_ref() {
                    "insecure_tls_skip_verify" => {
                        insecure = matches!(v.as_ref(), "true" | "1" | "");
                    }
                    "ca_cert" => {
                        use base64_decode::decode;
                        let pem = decode(&v).ok_or_else(|| {
                            invalid("param ca_cert must be base 64 encoded: illegal base64 data")
                        })?;
                        ca_cert = Some(pem);
                    }
                    "client_cert" | "client_key" => {
                        return Err(unsupported(format!(
                            "webhook sink parameter {k} is not supported"
                        )));
                    }
                    other => kept.push(other.to_string()),
                }
            }
            if let Some(k) = kept.first() {
                return Err(invalid(format!("unknown sink query parameter: {k}")));
            }
            if options.envelope == Envelope::KeyOnly {
                return Err(invalid("this sink is incompatible with envelope=key_only"));
            }
            if scheme == "webhook-http" && ca_cert.is_some() {
                return Err(invalid("ca_cert is only usable with webhook-https"));
            }
            if scheme == "webhook-https" && ca_cert.is_none() && !insecure {
                // No system trust store here: the receiver's CA must be given.
                return Err(unsupported(
                    "webhook-https needs ca_cert=<base64 PEM of the receiver's CA> (ldr has no system trust store) or insecure_tls_skip_verify=true",
                ));
            }
            let mut target = parsed.clone();
            target.set_query(None);
            let plain = if scheme == "webhook-https" {
                "https"
            } else {
                "http"
            };
            let rest = target
                .as_str()
                .split_once("://")
                .map(|(_, r)| r.to_string())
                .unwrap_or_default();
            if options.envelope == Envelope::Wrapped {
                options.key_in_value = true;
                options.topic_in_value = true;
            }
            Ok(SinkSpec::Webhook {
                url: format!("{plain}://{rest}"),
                insecure_tls_skip_verify: insecure,
                ca_cert,
            })
        }
        "" => Err(invalid(format!("no scheme found for sink URL \"{uri}\""))),
        // CockroachDB's other sinks: real schemes this implementation does not have.
        "kafka" | "confluent-cloud" | "azure-event-hub" | "s3" | "gs" | "azure" | "file-http"
        | "file-https" | "gcpubsub" | "pulsar" | "external" | "null" | "experimental-sql"
        | "iceberg" | "http" | "https" => Err(unsupported(format!(
            "sink scheme {scheme} is not supported; use nodelocal:// or webhook-https://"
        ))),
        other => Err(invalid(format!("unsupported sink: {other}"))),
    }
}

/// A tiny standard base64 decoder (the `ca_cert` parameter), so this crate needs no codec.
mod base64_decode {
    pub fn decode(text: &str) -> Option<String> {
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let mut buf = 0u32;
        let mut bits = 0;
        for c in text.bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' | b'-' => 62,
                b'/' | b'_' => 63,
                b'=' | b'\n' | b'\r' | b' ' => continue,
                _ => return None,
            };
            buf = (buf << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
                buf &= (1 << bits) - 1;
            }
        }
        String::from_utf8(out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, Option<&str>)]) -> Result<ChangefeedOptions, OptionError> {
        let v: Vec<(String, Option<String>)> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect();
        parse_options(&v)
    }

    #[test]
    fn defaults_are_cockroachdbs() {
        let o = opts(&[]).expect("no options");
        assert_eq!(o.envelope, Envelope::Wrapped);
        assert_eq!(o.initial_scan, InitialScan::Yes);
        assert_eq!(o.resolved_ms, None);
        assert_eq!(o.min_checkpoint_frequency(), Duration::from_secs(30));
        assert!(!o.updated && !o.diff);
        assert!(
            o.drops_omitted(),
            "TTL deletes marked omitted are left out by default"
        );
        let o = opts(&[("ignore_disable_changefeed_replication", None)]).expect("valid");
        assert!(!o.drops_omitted());
    }

    #[test]
    fn parses_every_supported_option() {
        let o = opts(&[
            ("updated", None),
            ("resolved", Some("10s")),
            ("diff", None),
            ("format", Some("JSON")),
            ("envelope", Some("bare")),
            ("min_checkpoint_frequency", Some("250ms")),
            ("ignore_disable_changefeed_replication", None),
            ("initial_scan", Some("no")),
        ])
        .expect("valid");
        assert!(o.updated && o.diff && o.ignore_disable_changefeed_replication);
        assert_eq!(o.resolved_ms, Some(10_000));
        assert_eq!(o.envelope, Envelope::Bare);
        assert_eq!(o.min_checkpoint_frequency_ms, 250);
        assert_eq!(o.initial_scan, InitialScan::No);
        assert_eq!(
            opts(&[("resolved", None)]).expect("bare").resolved_ms,
            Some(0)
        );
        assert_eq!(
            opts(&[("initial_scan", None)]).expect("bare").initial_scan,
            InitialScan::Yes
        );
        assert_eq!(
            opts(&[("no_initial_scan", None)])
                .expect("bare")
                .initial_scan,
            InitialScan::No
        );
        assert_eq!(
            opts(&[("initial_scan", Some("only"))])
                .expect("only")
                .initial_scan,
            InitialScan::Only
        );
        let o = opts(&[
            ("cursor", Some("1700000000000000000.0000000002")),
            ("end_time", Some("1700000000000000001.0000000000")),
        ])
        .expect("cursor");
        assert_eq!(
            o.end_time,
            Some(Timestamp::new(1_700_000_000_000_000_001, 0))
        );
        let e = opts(&[
            ("cursor", Some("1700000000000000002.0000000000")),
            ("end_time", Some("1700000000000000001.0000000000")),
        ])
        .expect_err("end before cursor");
        assert!(e.message.starts_with("specified end time"), "{e}");
        assert_eq!(o.cursor, Some(Timestamp::new(1_700_000_000_000_000_000, 2)));
        // A cursor means no initial scan unless asked for.
        assert_eq!(o.initial_scan, InitialScan::No);
    }

    #[test]
    fn refuses_bad_options_with_cockroachdbs_text() {
        for (list, want) in [
            (vec![("bogus", None)], "invalid option \"bogus\""),
            (vec![("format", Some("xml"))], "unknown format: xml"),
            (
                vec![("format", Some("avro"))],
                "WITH format=avro requires option confluent_schema_registry",
            ),
            (vec![("envelope", Some("nope"))], "unknown envelope: nope"),
            (
                vec![("initial_scan", Some("maybe"))],
                "unknown initial_scan: maybe",
            ),
            (
                vec![("initial_scan", Some("yes")), ("no_initial_scan", None)],
                "cannot specify both initial_scan and no_initial_scan",
            ),
            (
                vec![("initial_scan", Some("only")), ("resolved", None)],
                "cannot specify both initial_scan='only' and resolved",
            ),
            (
                vec![("resolved", Some("soon"))],
                "problem parsing option resolved",
            ),
            (
                vec![("cursor", Some("yesterday"))],
                "cursor: could not parse",
            ),
            (
                vec![("updated", Some("x"))],
                "option \"updated\" does not take a value",
            ),
        ] {
            let e = opts(&list).expect_err(want);
            assert!(e.message.starts_with(want), "{list:?}: {e}");
        }
        let e = opts(&[("format", Some("parquet"))]).expect_err("parquet");
        assert!(e.feature_not_supported);
    }

    #[test]
    fn parses_sinks() {
        let mut o = ChangefeedOptions::default();
        assert_eq!(
            parse_sink(Some("nodelocal://1/cf/out"), &mut o),
            Ok(SinkSpec::Nodelocal {
                node: Some(1),
                path: "cf/out".into()
            })
        );
        assert!(o.key_in_value, "cloud storage puts the key in the value");
        assert_eq!(
            parse_sink(Some("nodelocal://self/x"), &mut o),
            Ok(SinkSpec::Nodelocal {
                node: None,
                path: "x".into()
            })
        );
        let mut o = ChangefeedOptions::default();
        match parse_sink(
            Some("webhook-https://127.0.0.1:9000/hook?insecure_tls_skip_verify=true"),
            &mut o,
        ) {
            Ok(SinkSpec::Webhook {
                url,
                insecure_tls_skip_verify,
                ca_cert,
            }) => {
                assert_eq!(url, "https://127.0.0.1:9000/hook");
                assert!(insecure_tls_skip_verify);
                assert_eq!(ca_cert, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(o.key_in_value && o.topic_in_value);
        let mut o = ChangefeedOptions::default();
        match parse_sink(Some("webhook-https://h/x?ca_cert=aGVsbG8="), &mut o) {
            Ok(SinkSpec::Webhook { ca_cert, .. }) => assert_eq!(ca_cert.as_deref(), Some("hello")),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_sink(None, &mut o), Ok(SinkSpec::Sinkless));
        for (uri, want) in [
            ("kafka2://h:1", "unsupported sink: kafka2"),
            ("kafka://h:9092", "sink scheme kafka is not supported"),
            ("s4://bucket/x", "unsupported sink: s4"),
            ("just-a-path", "no scheme found for sink URL"),
            (
                "nodelocal://one/x",
                "host component of nodelocal URI must be a node ID",
            ),
            ("nodelocal://1/../etc", "local file access to paths outside"),
            (
                "webhook-https://h/x?topic_prefix=a",
                "unknown sink query parameter: topic_prefix",
            ),
            (
                "webhook-https://h/x?ca_cert=***",
                "param ca_cert must be base 64 encoded",
            ),
            ("webhook-https://h/x", "webhook-https needs ca_cert"),
        ] {
            let e = parse_sink(Some(uri), &mut ChangefeedOptions::default()).expect_err(uri);
            assert!(e.message.starts_with(want), "{uri}: {e}");
        }
    }
}
