//! The `kv` workload: a table `kv (k INT8 PRIMARY KEY, v TEXT|BYTEA)` hit by upserts,
//! deletes and point reads over `keys` keys. Fewer keys means more conflicts between
//! clusters; `batch` rows per statement; values of `value_bytes` random bytes.
//!
//! Statements (prepared with explicit parameter types, accepted by ldr and PostgreSQL):
//! - upsert: `INSERT INTO kv (k, v) VALUES ($1, $2), … ON CONFLICT (k) DO UPDATE SET v = excluded.v`
//! - delete: `DELETE FROM kv WHERE k IN ($1, …)`
//! - read:   `SELECT k, v FROM kv WHERE k IN ($1, …)`
//!
//! With [`RecordOptions`], every written key is recorded ([`WriteRecord`]), with its commit
//! timestamp when `mvcc_timestamp` is on (`RETURNING k, crdb_internal_mvcc_timestamp`, ldr
//! only). Keys within a statement are distinct and sorted (PostgreSQL rejects an upsert that
//! touches a row twice; sorted keys avoid deadlocks between workers).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use rand::distr::{Alphanumeric, Distribution};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use super::ERRORS_BEFORE_BACKOFF;
use super::{
    CancellationToken, Conn, Driver, LoadOptions, RecordOptions, WorkloadSummary, WriteRecord,
    WriteStatus, check_reachable, error_kind, is_ambiguous,
};
use crate::error::{Result, SimError};
use crate::sql::{self, DecimalText};

/// SQL type of the value column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// `TEXT` (ldr: STRING), random alphanumeric.
    #[default]
    Text,
    /// `BYTEA` (ldr: BYTES), random bytes; recorded as lowercase hex.
    Bytes,
}

/// How keys are picked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyDistribution {
    /// Uniformly at random (distinct within a statement).
    #[default]
    Uniform,
    /// Operation `n` writes keys `n*batch .. n*batch+batch` (mod `keys`): loads every key
    /// exactly once in `keys / batch` operations.
    Sequential,
}

/// The `kv` workload's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvConfig {
    pub table: String,
    /// Size of the key space.
    pub keys: u64,
    /// Keys are `key_offset .. key_offset + keys`.
    pub key_offset: i64,
    /// Rows per statement.
    pub batch: usize,
    pub value_bytes: usize,
    pub value_type: ValueType,
    /// Percentage of operations that are reads.
    pub read_percent: u8,
    /// Percentage of writes that are deletes.
    pub delete_percent: u8,
    pub distribution: KeyDistribution,
    /// Record written keys for oracles.
    pub record: Option<RecordOptions>,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            table: "kv".into(),
            keys: 1000,
            key_offset: 0,
            batch: 1,
            value_bytes: 32,
            value_type: ValueType::Text,
            read_percent: 0,
            delete_percent: 0,
            distribution: KeyDistribution::Uniform,
            record: None,
        }
    }
}

impl KvConfig {
    /// `CREATE TABLE IF NOT EXISTS <table> (k INT8 PRIMARY KEY, v TEXT|BYTEA)`.
    pub fn schema_sql(&self) -> String {
        let value = match self.value_type {
            ValueType::Text => "TEXT",
            ValueType::Bytes => "BYTEA",
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {} (k INT8 PRIMARY KEY, v {value})",
            self.table
        )
    }

    fn validate(&self) -> Result<()> {
        check_identifier(&self.table)?;
        let bad = |m: String| Err(SimError::InvalidArgument(m));
        if self.keys == 0 {
            return bad("kv needs at least one key".into());
        }
        if self.batch == 0 || self.batch as u64 > self.keys {
            return bad(format!(
                "batch must be between 1 and keys ({}), got {}",
                self.keys, self.batch
            ));
        }
        if self.read_percent > 100 || self.delete_percent > 100 {
            return bad("percentages must be at most 100".into());
        }
        if self.keys > i64::MAX as u64 || self.key_offset.checked_add(self.keys as i64).is_none() {
            return bad("key range overflows INT8".into());
        }
        Ok(())
    }

    fn value_sql_type(&self) -> Type {
        match self.value_type {
            ValueType::Text => Type::TEXT,
            ValueType::Bytes => Type::BYTEA,
        }
    }

    fn returning(&self) -> &'static str {
        match &self.record {
            Some(r) if r.mvcc_timestamp => " RETURNING k, crdb_internal_mvcc_timestamp",
            Some(_) => " RETURNING k",
            None => "",
        }
    }

    fn upsert_sql(&self) -> String {
        let values: Vec<String> = (0..self.batch)
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        format!(
            "INSERT INTO {} (k, v) VALUES {} ON CONFLICT (k) DO UPDATE SET v = excluded.v{}",
            self.table,
            values.join(", "),
            self.returning()
        )
    }

    fn key_list(&self) -> String {
        (1..=self.batch)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn delete_sql(&self) -> String {
        // Always RETURNING k: the returned keys are the rows actually deleted.
        let returning = match self.returning() {
            "" => " RETURNING k",
            r => r,
        };
        format!(
            "DELETE FROM {} WHERE k IN ({}){returning}",
            self.table,
            self.key_list()
        )
    }

    fn read_sql(&self) -> String {
        format!(
            "SELECT k, v FROM {} WHERE k IN ({})",
            self.table,
            self.key_list()
        )
    }
}

/// Accepts `name` or `schema.name` made of letters, digits and underscores.
pub(crate) fn check_identifier(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !part.starts_with(|c: char| c.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(SimError::InvalidArgument(format!(
            "{name:?} is not a plain table name"
        )))
    }
}

/// Creates the table (if it does not exist).
pub async fn init(client: &Client, config: &KvConfig) -> Result<()> {
    config.validate()?;
    sql::exec(client, &config.schema_sql()).await
}

/// Reads the whole table as `key -> value` (values as recorded: text, or hex for bytes).
pub async fn read_table(client: &Client, config: &KvConfig) -> Result<BTreeMap<i64, String>> {
    check_identifier(&config.table)?;
    let query = format!("SELECT k, v FROM {} ORDER BY k", config.table);
    let rows = client
        .query(query.as_str(), &[])
        .await
        .map_err(|e| SimError::sql(format!("reading {}", config.table), e))?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<_, i64>(0)
                    .map_err(|e| SimError::sql("decoding k", e))?,
                decode_value(row, 1, config.value_type)?,
            ))
        })
        .collect()
}

fn decode_value(row: &Row, index: usize, value_type: ValueType) -> Result<String> {
    match value_type {
        ValueType::Text => row
            .try_get::<_, String>(index)
            .map_err(|e| SimError::sql("decoding v", e)),
        ValueType::Bytes => row
            .try_get::<_, Vec<u8>>(index)
            .map(|b| to_hex(&b))
            .map_err(|e| SimError::sql("decoding v", e)),
    }
}

/// Lowercase hex, the recorded form of BYTES values.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvRun {
    pub summary: WorkloadSummary,
    /// Recorded writes ordered by send time (empty unless recording was on).
    pub writes: Vec<WriteRecord>,
    /// Recording stopped at `max_records`; an oracle must not trust `writes` then.
    pub records_truncated: bool,
}

/// Runs the workload until its duration, op count or cancellation ends it.
pub async fn run(config: &KvConfig, options: &LoadOptions) -> Result<KvRun> {
    config.validate()?;
    options.validate()?;
    check_reachable(&options.urls).await?;
    let driver = Arc::new(Driver::new("kv", options));
    let done = CancellationToken::new();
    let reporter = driver.spawn_reporter(options.progress.clone(), done.clone());
    let shared = Arc::new(Shared {
        config: config.clone(),
        recorded: AtomicUsize::new(0),
        truncated: AtomicBool::new(false),
    });
    let mut workers = JoinSet::new();
    for id in 0..options.concurrency {
        let url = options.urls[id % options.urls.len()].clone();
        workers.spawn(worker(
            id,
            options.seed,
            driver.clone(),
            shared.clone(),
            url,
        ));
    }
    let mut writes = Vec::new();
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(records) => writes.extend(records),
            Err(e) => failure = Some(format!("a kv worker failed: {e}")),
        }
    }
    done.cancel();
    let _ = reporter.await;
    if let Some(message) = failure {
        return Err(SimError::Process(message));
    }
    writes.sort_by_key(|w| (w.sent_ns, w.worker, w.seq));
    Ok(KvRun {
        summary: driver.summary(options.seed, options.concurrency),
        writes,
        records_truncated: shared.truncated.load(Ordering::Relaxed),
    })
}

struct Shared {
    config: KvConfig,
    recorded: AtomicUsize,
    truncated: AtomicBool,
}

impl Shared {
    fn may_record(&self, n: usize) -> bool {
        let Some(options) = &self.config.record else {
            return false;
        };
        if self.recorded.fetch_add(n, Ordering::Relaxed) + n > options.max_records {
            self.truncated.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Upsert,
    Delete,
    Read,
}

#[derive(Default)]
struct Prepared {
    generation: u64,
    upsert: Option<Statement>,
    delete: Option<Statement>,
    read: Option<Statement>,
}

enum Values {
    Text(Vec<String>),
    Bytes(Vec<Vec<u8>>),
}

impl Values {
    fn generate(rng: &mut ChaCha8Rng, config: &KvConfig, n: usize) -> Values {
        match config.value_type {
            ValueType::Text => Values::Text(
                (0..n)
                    .map(|_| {
                        Alphanumeric
                            .sample_iter(&mut *rng)
                            .take(config.value_bytes)
                            .map(char::from)
                            .collect()
                    })
                    .collect(),
            ),
            ValueType::Bytes => Values::Bytes(
                (0..n)
                    .map(|_| {
                        let mut v = vec![0u8; config.value_bytes];
                        rng.fill_bytes(&mut v);
                        v
                    })
                    .collect(),
            ),
        }
    }

    fn recorded(&self, i: usize) -> String {
        match self {
            Values::Text(v) => v[i].clone(),
            Values::Bytes(v) => to_hex(&v[i]),
        }
    }

    fn param(&self, i: usize) -> &(dyn ToSql + Sync) {
        match self {
            Values::Text(v) => &v[i],
            Values::Bytes(v) => &v[i],
        }
    }
}

fn pick_keys(rng: &mut ChaCha8Rng, config: &KvConfig, op: u64) -> Vec<i64> {
    let mut keys: Vec<i64> = match config.distribution {
        KeyDistribution::Sequential => (0..config.batch as u64)
            .map(|j| ((op * config.batch as u64 + j) % config.keys) as i64 + config.key_offset)
            .collect(),
        KeyDistribution::Uniform => {
            rand::seq::index::sample(rng, config.keys as usize, config.batch)
                .into_iter()
                .map(|i| i as i64 + config.key_offset)
                .collect()
        }
    };
    keys.sort_unstable();
    keys.dedup();
    keys
}

async fn prepare(
    client: &Client,
    prepared: &mut Prepared,
    generation: u64,
    kind: OpKind,
    config: &KvConfig,
) -> std::result::Result<Statement, tokio_postgres::Error> {
    if prepared.generation != generation {
        *prepared = Prepared {
            generation,
            ..Prepared::default()
        };
    }
    let slot = match kind {
        OpKind::Upsert => &mut prepared.upsert,
        OpKind::Delete => &mut prepared.delete,
        OpKind::Read => &mut prepared.read,
    };
    if let Some(statement) = slot {
        return Ok(statement.clone());
    }
    let statement = match kind {
        OpKind::Upsert => {
            let types: Vec<Type> = (0..config.batch)
                .flat_map(|_| [Type::INT8, config.value_sql_type()])
                .collect();
            client.prepare_typed(&config.upsert_sql(), &types).await?
        }
        OpKind::Delete => {
            client
                .prepare_typed(&config.delete_sql(), &vec![Type::INT8; config.batch])
                .await?
        }
        OpKind::Read => {
            client
                .prepare_typed(&config.read_sql(), &vec![Type::INT8; config.batch])
                .await?
        }
    };
    *slot = Some(statement.clone());
    Ok(statement)
}

/// `(k, timestamp)` pairs from a `RETURNING k[, crdb_internal_mvcc_timestamp]` result.
fn returned_keys(
    rows: &[Row],
    with_timestamp: bool,
) -> std::result::Result<BTreeMap<i64, Option<ldr_types::Timestamp>>, String> {
    let mut out = BTreeMap::new();
    for row in rows {
        let k: i64 = row
            .try_get(0)
            .map_err(|e| format!("decoding returned k: {e}"))?;
        let ts = if with_timestamp {
            let DecimalText(text) = row
                .try_get(1)
                .map_err(|e| format!("decoding crdb_internal_mvcc_timestamp: {e}"))?;
            Some(text.parse().map_err(|e| format!("{e}"))?)
        } else {
            None
        };
        out.insert(k, ts);
    }
    Ok(out)
}

async fn worker(
    id: usize,
    seed: u64,
    driver: Arc<Driver>,
    shared: Arc<Shared>,
    url: String,
) -> Vec<WriteRecord> {
    let config = &shared.config;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id as u64);
    let mut conn = Conn::new(url);
    let mut prepared = Prepared::default();
    let mut records = Vec::new();
    let mut seq = 0u64;
    let mut failures = 0u32;
    let (origin, with_ts) = match &config.record {
        Some(r) => (r.origin.clone(), r.mvcc_timestamp),
        None => (String::new(), false),
    };
    while let Some(op) = driver.next_op().await {
        let kind = if rng.random_range(0..100u8) < config.read_percent {
            OpKind::Read
        } else if rng.random_range(0..100u8) < config.delete_percent {
            OpKind::Delete
        } else {
            OpKind::Upsert
        };
        let keys = pick_keys(&mut rng, config, op);
        let values = Values::generate(
            &mut rng,
            config,
            if kind == OpKind::Upsert {
                keys.len()
            } else {
                0
            },
        );
        seq += 1;
        let result = {
            let (client, generation) = match conn.client().await {
                Ok(pair) => pair,
                Err(kind) => {
                    driver.stats.record_error(&kind);
                    failures += 1;
                    if !driver.backoff(failures).await {
                        break;
                    }
                    continue;
                }
            };
            let client: &Client = client;
            match prepare(client, &mut prepared, generation, kind, config).await {
                Err(e) => Err((e, false)),
                Ok(statement) => {
                    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(keys.len() * 2);
                    for (i, k) in keys.iter().enumerate() {
                        params.push(k);
                        if kind == OpKind::Upsert {
                            params.push(values.param(i));
                        }
                    }
                    let sent_ns = driver.elapsed_ns();
                    let started = Instant::now();
                    match client.query(&statement, &params).await {
                        Ok(rows) => Ok((rows, sent_ns, started)),
                        Err(e) => Err((e, true)),
                    }
                }
            }
        };
        match result {
            Ok((rows, sent_ns, started)) => {
                driver.stats.record_ok(started.elapsed());
                failures = 0;
                let answered_ns = driver.elapsed_ns();
                match kind {
                    OpKind::Read => {
                        driver
                            .stats
                            .rows_read
                            .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    }
                    OpKind::Upsert | OpKind::Delete => {
                        let counter = if kind == OpKind::Upsert {
                            &driver.stats.rows_written
                        } else {
                            &driver.stats.rows_deleted
                        };
                        // Upserts write every key; deletes return the keys they removed.
                        let affected = if kind == OpKind::Upsert {
                            keys.len()
                        } else {
                            rows.len()
                        };
                        counter.fetch_add(affected as u64, Ordering::Relaxed);
                        if config.record.is_some() {
                            let returned = match returned_keys(&rows, with_ts) {
                                Ok(r) => r,
                                Err(message) => {
                                    tracing::warn!(worker = id, error = %message, "could not read the returned commit timestamps");
                                    driver.stats.record_error("bad returning");
                                    BTreeMap::new()
                                }
                            };
                            if shared.may_record(returned.len()) {
                                for (i, k) in keys.iter().enumerate() {
                                    // A delete of an absent row writes nothing: only returned keys count.
                                    let Some(ts) = returned.get(k) else { continue };
                                    let value = if kind == OpKind::Upsert {
                                        Some(values.recorded(i))
                                    } else {
                                        None
                                    };
                                    records.push(WriteRecord {
                                        origin: origin.clone(),
                                        key: *k,
                                        value,
                                        timestamp: *ts,
                                        status: WriteStatus::Acknowledged,
                                        worker: id,
                                        seq,
                                        sent_ns,
                                        answered_ns,
                                    });
                                }
                            }
                        }
                    }
                }
            }
            Err((e, sent)) => {
                let kind_text = error_kind(&e);
                tracing::debug!(worker = id, error = %crate::error::describe_sql_error(&e), "kv operation failed");
                driver.stats.record_error(&kind_text);
                if sent
                    && kind != OpKind::Read
                    && config.record.is_some()
                    && is_ambiguous(&e)
                    && shared.may_record(keys.len())
                {
                    let now = driver.elapsed_ns();
                    for (i, k) in keys.iter().enumerate() {
                        let value = if kind == OpKind::Upsert {
                            Some(values.recorded(i))
                        } else {
                            None
                        };
                        records.push(WriteRecord {
                            origin: origin.clone(),
                            key: *k,
                            value,
                            timestamp: None,
                            status: WriteStatus::Ambiguous,
                            worker: id,
                            seq,
                            sent_ns: now,
                            answered_ns: now,
                        });
                    }
                }
                conn.on_error();
                failures += 1;
                if (e.code().is_none() || failures >= ERRORS_BEFORE_BACKOFF)
                    && !driver.backoff(failures).await
                {
                    break;
                }
            }
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_have_one_placeholder_per_value() {
        let config = KvConfig {
            batch: 3,
            record: Some(RecordOptions::new("a")),
            ..KvConfig::default()
        };
        assert_eq!(
            config.upsert_sql(),
            "INSERT INTO kv (k, v) VALUES ($1, $2), ($3, $4), ($5, $6) ON CONFLICT (k) DO UPDATE SET v = excluded.v RETURNING k, crdb_internal_mvcc_timestamp"
        );
        assert_eq!(
            config.delete_sql(),
            "DELETE FROM kv WHERE k IN ($1, $2, $3) RETURNING k, crdb_internal_mvcc_timestamp"
        );
        assert_eq!(
            config.read_sql(),
            "SELECT k, v FROM kv WHERE k IN ($1, $2, $3)"
        );
        assert_eq!(
            KvConfig {
                value_type: ValueType::Bytes,
                ..KvConfig::default()
            }
            .schema_sql(),
            "CREATE TABLE IF NOT EXISTS kv (k INT8 PRIMARY KEY, v BYTEA)"
        );
    }

    #[test]
    fn keys_are_distinct_sorted_and_in_range() {
        let config = KvConfig {
            keys: 10,
            key_offset: 100,
            batch: 10,
            ..KvConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for op in 0..50 {
            let keys = pick_keys(&mut rng, &config, op);
            assert_eq!(keys, (100..110).collect::<Vec<_>>());
        }
        let seq = KvConfig {
            keys: 10,
            batch: 4,
            distribution: KeyDistribution::Sequential,
            ..KvConfig::default()
        };
        assert_eq!(pick_keys(&mut rng, &seq, 0), vec![0, 1, 2, 3]);
        assert_eq!(pick_keys(&mut rng, &seq, 2), vec![0, 1, 8, 9]);
    }

    #[test]
    fn validation_rejects_nonsense() {
        assert!(
            KvConfig {
                batch: 0,
                ..KvConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            KvConfig {
                keys: 2,
                batch: 3,
                ..KvConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            KvConfig {
                read_percent: 101,
                ..KvConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            KvConfig {
                table: "kv; DROP TABLE x".into(),
                ..KvConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            KvConfig {
                table: "db.public.kv".into(),
                ..KvConfig::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(to_hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
