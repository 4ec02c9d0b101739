//! The `bank` workload: `accounts` rows `bank (id INT8 PRIMARY KEY, balance INT8 NOT NULL)`
//! all starting at `initial_balance`; each operation moves a random amount between two
//! random accounts in one transaction, so the total never changes. [`check`] verifies that
//! (every account present, none extra, the total intact) and reports what broke.
//!
//! A transfer is `BEGIN; UPDATE bank SET balance = balance + $1 WHERE id = $2` for both
//! accounts in id order (a fixed lock order, so workers do not deadlock in PostgreSQL)
//! `; COMMIT`. Serialization failures (40001) and deadlocks (40P01) are retried within the
//! operation, up to 20 times with jittered exponential backoff (1 ms doubling to 100 ms), as a
//! client of an optimistic database should.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use super::ERRORS_BEFORE_BACKOFF;
use super::kv::check_identifier;
use super::{
    CancellationToken, Conn, Driver, LoadOptions, WorkloadSummary, check_reachable, error_kind,
};
use crate::error::{Result, SimError};
use crate::sql;

/// Attempts per transfer when the server asks to retry.
const TRANSFER_ATTEMPTS: u32 = 20;
/// First and largest wait between two attempts of one transfer (jittered).
const RETRY_BACKOFF_FIRST_MS: u64 = 1;
const RETRY_BACKOFF_MAX_MS: u64 = 100;
/// Rows per statement when creating the accounts.
const INIT_BATCH: usize = 100;

/// The bank's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankConfig {
    pub table: String,
    pub accounts: u64,
    pub initial_balance: i64,
    /// Transfers move 1..=max_transfer.
    pub max_transfer: i64,
}

impl Default for BankConfig {
    fn default() -> Self {
        BankConfig {
            table: "bank".into(),
            accounts: 100,
            initial_balance: 1000,
            max_transfer: 100,
        }
    }
}

impl BankConfig {
    pub fn schema_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (id INT8 PRIMARY KEY, balance INT8 NOT NULL)",
            self.table
        )
    }

    fn validate(&self) -> Result<()> {
        check_identifier(&self.table)?;
        if self.accounts < 2 || self.accounts > i64::MAX as u64 {
            return Err(SimError::InvalidArgument(
                "bank needs at least two accounts".into(),
            ));
        }
        if self.max_transfer < 1 {
            return Err(SimError::InvalidArgument(
                "max_transfer must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The sum every check expects.
    pub fn expected_total(&self) -> i128 {
        self.accounts as i128 * self.initial_balance as i128
    }
}

/// Creates the table and (re)sets every account to the initial balance.
pub async fn init(client: &Client, config: &BankConfig) -> Result<()> {
    config.validate()?;
    sql::exec(client, &config.schema_sql()).await?;
    let ids: Vec<i64> = (0..config.accounts as i64).collect();
    for chunk in ids.chunks(INIT_BATCH) {
        let values: Vec<String> = chunk
            .iter()
            .map(|id| format!("({id}, {})", config.initial_balance))
            .collect();
        let statement = format!(
            "INSERT INTO {} (id, balance) VALUES {} ON CONFLICT (id) DO UPDATE SET balance = excluded.balance",
            config.table,
            values.join(", ")
        );
        sql::exec(client, &statement).await?;
    }
    Ok(())
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankCheck {
    pub table: String,
    pub accounts_expected: u64,
    pub accounts_found: u64,
    pub total_expected: i128,
    pub total_found: i128,
    /// Account ids that should exist but do not (at most 20 listed).
    pub missing: Vec<i64>,
    /// Rows outside `0..accounts` (at most 20 listed).
    pub unexpected: Vec<i64>,
}

impl BankCheck {
    pub fn holds(&self) -> bool {
        self.accounts_found == self.accounts_expected
            && self.total_found == self.total_expected
            && self.missing.is_empty()
            && self.unexpected.is_empty()
    }
}

impl fmt::Display for BankCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.holds() {
            return write!(
                f,
                "bank invariant holds on {}: {} accounts, total {}",
                self.table, self.accounts_found, self.total_found
            );
        }
        write!(f, "bank invariant broken on {}:", self.table)?;
        if self.total_found != self.total_expected {
            write!(
                f,
                " total balance is {}, expected {} (difference {:+});",
                self.total_found,
                self.total_expected,
                self.total_found - self.total_expected
            )?;
        }
        if self.accounts_found != self.accounts_expected {
            write!(
                f,
                " {} accounts, expected {};",
                self.accounts_found, self.accounts_expected
            )?;
        }
        if !self.missing.is_empty() {
            write!(f, " missing account ids {:?};", self.missing)?;
        }
        if !self.unexpected.is_empty() {
            write!(f, " unexpected account ids {:?};", self.unexpected)?;
        }
        Ok(())
    }
}

/// Judges `(id, balance)` rows against the config (pure).
pub fn evaluate(config: &BankConfig, rows: &[(i64, i64)]) -> BankCheck {
    const LISTED_MAX: usize = 20;
    let mut present = vec![false; config.accounts as usize];
    let mut unexpected = Vec::new();
    let mut total: i128 = 0;
    for &(id, balance) in rows {
        total += balance as i128;
        match usize::try_from(id).ok().filter(|&i| i < present.len()) {
            Some(i) => present[i] = true,
            None => {
                if unexpected.len() < LISTED_MAX {
                    unexpected.push(id);
                }
            }
        }
    }
    let missing = present
        .iter()
        .enumerate()
        .filter(|(_, p)| !**p)
        .map(|(i, _)| i as i64)
        .take(LISTED_MAX)
        .collect();
    BankCheck {
        table: config.table.clone(),
        accounts_expected: config.accounts,
        accounts_found: rows.len() as u64,
        total_expected: config.expected_total(),
        total_found: total,
        missing,
        unexpected,
    }
}

/// Reads every account and checks the invariant; a broken invariant is
/// [`SimError::Invariant`] with the full report.
pub async fn check(client: &Client, config: &BankConfig) -> Result<BankCheck> {
    config.validate()?;
    let query = format!("SELECT id, balance FROM {} ORDER BY id", config.table);
    let rows = client
        .query(query.as_str(), &[])
        .await
        .map_err(|e| SimError::sql(format!("reading {}", config.table), e))?;
    let mut pairs = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row
            .try_get(0)
            .map_err(|e| SimError::sql("decoding id", e))?;
        let balance: i64 = row
            .try_get(1)
            .map_err(|e| SimError::sql("decoding balance", e))?;
        pairs.push((id, balance));
    }
    let result = evaluate(config, &pairs);
    if result.holds() {
        Ok(result)
    } else {
        Err(SimError::Invariant(result.to_string()))
    }
}

/// Runs transfers until the duration, op count or cancellation ends the run.
pub async fn run(config: &BankConfig, options: &LoadOptions) -> Result<WorkloadSummary> {
    config.validate()?;
    options.validate()?;
    check_reachable(&options.urls).await?;
    let driver = Arc::new(Driver::new("bank", options));
    let done = CancellationToken::new();
    let reporter = driver.spawn_reporter(options.progress.clone(), done.clone());
    let config = Arc::new(config.clone());
    let mut workers = JoinSet::new();
    for id in 0..options.concurrency {
        let url = options.urls[id % options.urls.len()].clone();
        workers.spawn(worker(
            id,
            options.seed,
            driver.clone(),
            config.clone(),
            url,
        ));
    }
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined {
            failure = Some(format!("a bank worker failed: {e}"));
        }
    }
    done.cancel();
    let _ = reporter.await;
    if let Some(message) = failure {
        return Err(SimError::Process(message));
    }
    Ok(driver.summary(options.seed, options.concurrency))
}

enum TransferError {
    Sql(tokio_postgres::Error),
    MissingAccount(i64),
}

async fn transfer(
    client: &mut Client,
    update: &Statement,
    lower: i64,
    higher: i64,
    lower_delta: i64,
) -> std::result::Result<(), TransferError> {
    let txn = client.transaction().await.map_err(TransferError::Sql)?;
    for (id, delta) in [(lower, lower_delta), (higher, -lower_delta)] {
        let changed = txn
            .execute(update, &[&delta, &id])
            .await
            .map_err(TransferError::Sql)?;
        if changed != 1 {
            // Dropping the transaction rolls it back.
            return Err(TransferError::MissingAccount(id));
        }
    }
    txn.commit().await.map_err(TransferError::Sql)
}

async fn worker(id: usize, seed: u64, driver: Arc<Driver>, config: Arc<BankConfig>, url: String) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id as u64);
    let mut conn = Conn::new(url);
    let mut prepared: Option<(u64, Statement)> = None;
    let mut failures = 0u32;
    let update_sql = format!(
        "UPDATE {} SET balance = balance + $1 WHERE id = $2",
        config.table
    );
    while driver.next_op().await.is_some() {
        let from = rng.random_range(0..config.accounts) as i64;
        let mut to = rng.random_range(0..config.accounts - 1) as i64;
        if to >= from {
            to += 1;
        }
        let amount = rng.random_range(1..=config.max_transfer);
        let (lower, higher, lower_delta) = if from < to {
            (from, to, -amount)
        } else {
            (to, from, amount)
        };
        let started = Instant::now();
        let mut outcome = Err("not attempted".to_string());
        let mut broken_connection = false;
        for attempt in 0..TRANSFER_ATTEMPTS {
            if attempt > 0 {
                // Jittered backoff so contending transfers stop colliding.
                let cap = (RETRY_BACKOFF_FIRST_MS << attempt.min(7)).min(RETRY_BACKOFF_MAX_MS);
                let wait = rng.random_range(cap / 2..=cap);
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            }
            let (client, generation) = match conn.client().await {
                Ok(pair) => pair,
                Err(kind) => {
                    outcome = Err(kind);
                    broken_connection = true;
                    break;
                }
            };
            let statement = match &prepared {
                Some((g, s)) if *g == generation => s.clone(),
                _ => match client
                    .prepare_typed(&update_sql, &[Type::INT8, Type::INT8])
                    .await
                {
                    Ok(s) => {
                        prepared = Some((generation, s.clone()));
                        s
                    }
                    Err(e) => {
                        outcome = Err(error_kind(&e));
                        broken_connection = e.code().is_none();
                        break;
                    }
                },
            };
            match transfer(client, &statement, lower, higher, lower_delta).await {
                Ok(()) => {
                    outcome = Ok(());
                    break;
                }
                Err(TransferError::MissingAccount(account)) => {
                    outcome = Err(format!("missing account {account}"));
                    break;
                }
                Err(TransferError::Sql(e)) => {
                    let kind = error_kind(&e);
                    let retry = kind == "40001" || kind == "40P01";
                    broken_connection = e.code().is_none();
                    outcome = Err(kind);
                    if !retry {
                        break;
                    }
                }
            }
        }
        match outcome {
            Ok(()) => {
                driver.stats.record_ok(started.elapsed());
                driver.stats.rows_written.fetch_add(2, Ordering::Relaxed);
                failures = 0;
            }
            Err(kind) => {
                driver.stats.record_error(&kind);
                conn.on_error();
                failures += 1;
                if (broken_connection || failures >= ERRORS_BEFORE_BACKOFF)
                    && !driver.backoff(failures).await
                {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluate_accepts_an_intact_bank() {
        let config = BankConfig {
            accounts: 3,
            initial_balance: 10,
            ..BankConfig::default()
        };
        let check = evaluate(&config, &[(0, 5), (1, 20), (2, 5)]);
        assert!(check.holds(), "{check}");
    }

    #[test]
    fn evaluate_reports_a_changed_total_and_wrong_accounts() {
        let config = BankConfig {
            accounts: 3,
            initial_balance: 10,
            ..BankConfig::default()
        };
        let check = evaluate(&config, &[(0, 10), (1, 17)]);
        assert!(!check.holds());
        assert_eq!(check.missing, vec![2]);
        let text = check.to_string();
        assert!(
            text.contains("total balance is 27, expected 30 (difference -3)"),
            "{text}"
        );
        assert!(text.contains("2 accounts, expected 3"), "{text}");
        let extra = evaluate(&config, &[(0, 10), (1, 10), (2, 10), (7, 0)]);
        assert_eq!(extra.unexpected, vec![7]);
        assert!(!extra.holds());
    }
}
