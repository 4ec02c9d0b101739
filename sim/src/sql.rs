//! SQL plumbing shared by the harness, workloads and checkers: connecting with a deadline,
//! text-mode queries, a decimal decoder, and "wait until a condition holds" polling.
//!
//! Everything here speaks plain PostgreSQL wire protocol through tokio-postgres, so it works
//! against ldr and PostgreSQL alike.

use std::error::Error as StdError;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::error::{Result, SimError};

/// Default deadline for opening one SQL connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection to `url` (a `postgresql://` URL or a key=value string), failing after
/// `timeout`. The connection's driver task runs on the current tokio runtime and ends when the
/// returned client is dropped.
///
/// A URL whose `sslmode` asks for TLS (`require`, `verify-ca`, `verify-full`) connects over
/// TLS, verifying the server with `sslrootcert` and presenting `sslcert`/`sslkey` if given
/// (file paths, or PEM with `sslinline=true`), as psql would.
pub async fn connect(url: &str, timeout: Duration) -> Result<Client> {
    let tls = tls_of(url)?;
    let attempt = async {
        match tls {
            Some((plain, config)) => {
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*config).clone());
                tokio_postgres::connect(&plain, connector)
                    .await
                    .map(|(c, conn)| (c, Box::pin(conn) as ConnectionFuture))
            }
            None => tokio_postgres::connect(url, NoTls)
                .await
                .map(|(c, conn)| (c, Box::pin(conn) as ConnectionFuture)),
        }
    };
    let (client, connection) = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(SimError::sql(format!("connecting to {url}"), e)),
        Err(_) => {
            return Err(SimError::Timeout {
                what: format!("a SQL connection to {url}"),
                waited_ms: timeout.as_millis(),
                details: String::new(),
            });
        }
    };
    let url_for_log = url.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(url = %url_for_log, error = %e, "sql connection ended with an error");
        }
    });
    Ok(client)
}

/// The driver task of a connection, plain or TLS.
type ConnectionFuture =
    std::pin::Pin<Box<dyn Future<Output = std::result::Result<(), tokio_postgres::Error>> + Send>>;

/// For a `postgresql://` URL asking for TLS: the URL without its TLS parameters (tokio-postgres
/// does not know them) and the client configuration they describe.
fn tls_of(
    url: &str,
) -> Result<Option<(String, std::sync::Arc<ldr_security::rustls::ClientConfig>)>> {
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Ok(None);
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| SimError::InvalidArgument(format!("invalid SQL URL {url}: {e}")))?;
    let pairs = ldr_security::uri::query_params(&parsed);
    let params = ldr_security::uri::TlsParams::from_query(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ldr_security::uri::SslMode::Disable,
    )
    .map_err(|e| SimError::InvalidArgument(format!("TLS parameters of {url}: {e}")))?;
    let Some(config) = params
        .client_config(&[])
        .map_err(|e| SimError::InvalidArgument(format!("TLS parameters of {url}: {e}")))?
    else {
        return Ok(None);
    };
    let plain = ldr_security::uri::plain_url(&parsed, &pairs, "require");
    Ok(Some((plain.to_string(), config)))
}

/// A text-mode result: column names and rows of optional strings (NULL = `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl TextRows {
    /// Index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

/// Runs `sql` with the simple query protocol (every value as text) and returns the rows of
/// the last statement that returned any. Works for types the caller has no Rust type for.
pub async fn query_text(client: &Client, sql: &str) -> Result<TextRows> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| SimError::sql(format!("running {sql:?}"), e))?;
    let mut out = TextRows::default();
    let mut current = TextRows::default();
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                current = TextRows {
                    columns: columns.iter().map(|c| c.name().to_string()).collect(),
                    rows: Vec::new(),
                };
            }
            SimpleQueryMessage::Row(row) => {
                if current.columns.is_empty() {
                    current.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                }
                current.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                );
            }
            SimpleQueryMessage::CommandComplete(_) if !current.columns.is_empty() => {
                out = std::mem::take(&mut current);
            }
            _ => {}
        }
    }
    if !current.columns.is_empty() {
        out = current;
    }
    Ok(out)
}

/// Runs one or more statements, ignoring results.
pub async fn exec(client: &Client, sql: &str) -> Result<()> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| SimError::sql(format!("running {sql:?}"), e))
}

/// A decimal value as its canonical text, decodable from PostgreSQL's binary NUMERIC format
/// or from any text type. This is how `crdb_internal_mvcc_timestamp` (DECIMAL `wall.logical`)
/// and `sum(...)` results are read without a decimal library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalText(pub String);

impl<'a> FromSql<'a> for DecimalText {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn StdError + Sync + Send>> {
        if *ty == Type::NUMERIC {
            return Ok(DecimalText(numeric_binary_to_string(raw)?));
        }
        Ok(DecimalText(std::str::from_utf8(raw)?.to_string()))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::NUMERIC | Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::UNKNOWN | Type::NAME
        )
    }
}

/// Renders PostgreSQL's binary NUMERIC (`ndigits, weight, sign, dscale, digits[]` in base
/// 10000) as decimal text with exactly `dscale` fraction digits.
pub fn numeric_binary_to_string(raw: &[u8]) -> std::result::Result<String, String> {
    let word = |i: usize| -> std::result::Result<u16, String> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("numeric value truncated at word {i}"))
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i32;
    let sign = word(2)?;
    let dscale = word(3)? as usize;
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let d = word(4 + i)?;
        if d >= 10_000 {
            return Err(format!("numeric digit {d} out of range"));
        }
        digits.push(d);
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        other => return Err(format!("unknown numeric sign {other:#x}")),
    }
    let digit_at = |i: i32| -> u16 {
        if i >= 0 {
            digits.get(i as usize).copied().unwrap_or(0)
        } else {
            0
        }
    };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight >= 0 {
        for i in 0..=weight {
            if i == 0 {
                text.push_str(&digit_at(i).to_string());
            } else {
                text.push_str(&format!("{:04}", digit_at(i)));
            }
        }
    } else {
        text.push('0');
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let groups = dscale.div_ceil(4) as i32;
        for k in 1..=groups {
            fraction.push_str(&format!("{:04}", digit_at(weight + k)));
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

/// Polls `check` until it returns `Ok`, at most until `timeout`. `Err(observation)` means
/// "not yet"; the last observation is reported if the deadline passes.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    poll_interval: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    // The last check that finished: a check cut off by the deadline says nothing about the
    // state, so the observation before it is kept for the report.
    let mut observed: Option<String> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let cut_off =
            match tokio::time::timeout(remaining.max(Duration::from_millis(1)), check()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(observation)) => {
                    observed = Some(observation);
                    false
                }
                Err(_) => true,
            };
        if Instant::now() >= deadline {
            let details = match (&observed, cut_off) {
                (Some(last), false) => format!("; last observation: {last}"),
                (Some(last), true) => format!(
                    "; last observation: {last} (a later check did not finish before the deadline)"
                ),
                (None, _) => "; no check finished before the deadline".to_string(),
            };
            return Err(SimError::Timeout {
                what: what.to_string(),
                waited_ms: start.elapsed().as_millis(),
                details,
            });
        }
        tokio::time::sleep(poll_interval.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }

    #[test]
    fn decodes_binary_numeric() {
        // weight 4: the first group is the 10000^4 digit; groups 5.. are the fraction.
        let raw = encode(8, 4, 0, 10, &[1, 7322, 5000, 123, 4567, 8900, 0, 200]);
        assert_eq!(
            numeric_binary_to_string(&raw).expect("decode"),
            "17322500001234567.8900000002"
        );
        assert_eq!(
            numeric_binary_to_string(&encode(0, 0, 0, 0, &[])).expect("zero"),
            "0"
        );
        assert_eq!(
            numeric_binary_to_string(&encode(1, 0, 0x4000, 2, &[42])).expect("neg"),
            "-42.00"
        );
        assert_eq!(
            numeric_binary_to_string(&encode(1, -2, 0, 8, &[12])).expect("small"),
            "0.00000012"
        );
        assert_eq!(
            numeric_binary_to_string(&encode(1, 2, 0, 0, &[5])).expect("trailing zero groups"),
            "500000000"
        );
        assert_eq!(
            numeric_binary_to_string(&encode(0, 0, 0xC000, 0, &[])).expect("nan"),
            "NaN"
        );
        assert!(numeric_binary_to_string(&[0, 1]).is_err());
        assert!(numeric_binary_to_string(&encode(1, 0, 0, 0, &[10_000])).is_err());
    }

    #[tokio::test]
    async fn wait_until_reports_the_last_observation() {
        let mut calls = 0;
        let ok = wait_until(
            "three calls",
            Duration::from_secs(30),
            Duration::from_millis(1),
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n >= 3 {
                        Ok(n)
                    } else {
                        Err(format!("only {n} calls"))
                    }
                }
            },
        )
        .await
        .expect("condition holds on the third call");
        assert_eq!(ok, 3);
        let err = wait_until::<(), _, _>(
            "never",
            Duration::from_millis(50),
            Duration::from_millis(5),
            || async { Err("still no".to_string()) },
        )
        .await
        .expect_err("must time out");
        let text = err.to_string();
        assert!(
            text.contains("never") && text.contains("still no"),
            "{text}"
        );
        // Why: a check cut off by the deadline must not hide what the previous one saw.
        let mut calls = 0;
        let err = wait_until::<(), _, _>(
            "a hanging check",
            Duration::from_millis(300),
            Duration::from_millis(1),
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n == 1 {
                        Err("job 7 paused".to_string())
                    } else {
                        std::future::pending().await
                    }
                }
            },
        )
        .await
        .expect_err("must time out");
        let text = err.to_string();
        assert!(
            text.contains("last observation: job 7 paused")
                && text.contains("a later check did not finish"),
            "{text}"
        );
    }
}
