//! `ldr sql`: a small SQL shell over the PostgreSQL wire protocol.
//!
//! Runs each `-e` statement (or, without `-e`, statements read from stdin, one per `;`) with
//! the simple query protocol and prints results as an aligned table (like `cockroach sql`),
//! CSV or TSV. Works against any PostgreSQL-compatible server.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Tsv,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL tokio-postgres connects with: certificate parameters removed (they are in
    /// `tls`), `sslmode=require` when TLS is used (the verification is `tls`'s).
    pub url: String,
    /// Verified TLS (`sslmode=verify-full` and a CA, from `--url` or `--certs-dir`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// How `ldr sql` and friends reach a node.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// `--insecure`: plain text; TLS parameters of a URL are dropped (with a note).
    pub insecure: bool,
    /// `--certs-dir`: trust its `ca.crt`, log in with its `client.<user>.crt` if present.
    pub certs_dir: Option<PathBuf>,
}

impl Target {
    /// Builds the connection from `--url` or `--host` (+ `--database`, `--user`).
    pub fn new(
        url: Option<String>,
        host: Option<String>,
        database: Option<String>,
        user: &str,
        security: &Security,
    ) -> Result<Target> {
        let mut parsed = match (url, host) {
            (Some(url), _) => {
                let mut parsed =
                    url::Url::parse(&url).with_context(|| format!("invalid --url {url:?}"))?;
                if let Some(db) = database {
                    parsed.set_path(&format!("/{db}"));
                }
                parsed
            }
            (None, Some(host)) => {
                let db = database.unwrap_or_else(|| "defaultdb".to_string());
                let text = format!("postgresql://{user}@{host}/{db}");
                url::Url::parse(&text).with_context(|| format!("invalid --host {host:?}"))?
            }
            (None, None) => bail!("one of --host or --url is required"),
        };
        if security.insecure {
            without_tls(&mut parsed);
            return Ok(Target {
                url: parsed.to_string(),
                tls: None,
            });
        }
        let mut pairs = ldr_security::uri::query_params(&parsed);
        let has = |pairs: &[(String, String)], key: &str| pairs.iter().any(|(k, _)| k == key);
        if let Some(dir) = &security.certs_dir {
            let login = if parsed.username().is_empty() {
                user.to_string()
            } else {
                parsed.username().to_string()
            };
            if !has(&pairs, "sslmode") {
                pairs.push(("sslmode".into(), "verify-full".into()));
            }
            if !has(&pairs, "sslrootcert") {
                let ca = dir.join(ldr_security::certs::CA_CERT);
                pairs.push(("sslrootcert".into(), ca.display().to_string()));
            }
            let cert = dir.join(ldr_security::certs::client_cert_file(&login));
            if !has(&pairs, "sslcert") && cert.exists() {
                let key = dir.join(ldr_security::certs::client_key_file(&login));
                pairs.push(("sslcert".into(), cert.display().to_string()));
                pairs.push(("sslkey".into(), key.display().to_string()));
            }
        }
        let tls_requested = pairs
            .iter()
            .any(|(k, _)| ldr_security::uri::TLS_PARAMS.contains(&k.as_str()));
        if !tls_requested {
            // No TLS asked for: plain text, as before (an insecure node).
            pairs.push(("sslmode".into(), "disable".into()));
        }
        let params = ldr_security::uri::TlsParams::from_query(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            ldr_security::uri::SslMode::Disable,
        )?;
        let tls = params.client_config(&[])?;
        let mode = if tls.is_some() {
            "require"
        } else {
            params.mode.as_str()
        };
        let parsed = ldr_security::uri::plain_url(&parsed, &pairs, mode);
        Ok(Target {
            url: parsed.to_string(),
            tls,
        })
    }

    /// The URL without its password, for messages.
    pub fn shown(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("redacted"));
                u.to_string()
            }
            _ => self.url.clone(),
        }
    }

    /// Connects (TLS as configured) and spawns the connection's task.
    pub async fn connect(&self) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
        let shown = self.shown();
        let (client, task) = match &self.tls {
            None => {
                let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
                    .await
                    .with_context(|| format!("cannot connect to {shown}"))?;
                (client, tokio::spawn(report_connection_end(connection)))
            }
            Some(config) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**config).clone());
                let (client, connection) = tokio_postgres::connect(&self.url, tls)
                    .await
                    .with_context(|| format!("cannot connect to {shown}"))?;
                (client, tokio::spawn(report_connection_end(connection)))
            }
        };
        Ok((client, task))
    }
}

async fn report_connection_end<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        eprintln!("connection error: {e}");
    }
}

/// `--insecure` with a CockroachDB-style URL: the TLS parameters (`sslmode=verify-full`,
/// `sslrootcert`, …) are dropped and `sslmode=disable` is used, with a note on stderr, so the
/// URLs of CockroachDB's tutorials work against insecure nodes.
fn without_tls(url: &mut url::Url) {
    use ldr_security::uri::TLS_PARAMS;
    let pairs = ldr_security::uri::query_params(url);
    let tls_requested = pairs.iter().any(|(k, v)| {
        (k == "sslmode" && !matches!(v.as_str(), "disable" | "allow" | "prefer"))
            || (k != "sslmode" && TLS_PARAMS.contains(&k.as_str()))
    });
    if tls_requested {
        eprintln!("# note: --insecure: connecting without TLS (sslmode=disable)");
    }
    *url = ldr_security::uri::plain_url(url, &pairs, "disable");
}

/// The result of one statement, ready to print.
#[derive(Debug, Default, PartialEq)]
pub struct StatementResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows affected for statements without a result set.
    pub affected: Option<u64>,
}

/// Runs the shell: `-e` statements if any, else stdin.
pub async fn run(target: &Target, statements: &[String], format: Format) -> Result<()> {
    let (client, conn_task) = target.connect().await?;
    let mut stdout = std::io::stdout().lock();
    let mut failed = false;
    if !statements.is_empty() {
        for stmt in statements {
            if !execute_and_print(&client, stmt, format, &mut stdout).await? {
                failed = true;
                break;
            }
        }
    } else {
        let interactive = std::io::stdin().is_terminal();
        let mut buffer = String::new();
        let stdin = std::io::stdin();
        if interactive {
            eprintln!(
                "# connected to {}; end statements with ';', \\q to quit",
                target.shown()
            );
            eprint!("> ");
        }
        for line in stdin.lock().lines() {
            let line = line?;
            if interactive
                && (line.trim() == "\\q" || line.trim() == "quit" || line.trim() == "exit")
            {
                break;
            }
            buffer.push_str(&line);
            buffer.push('\n');
            if line.trim_end().ends_with(';') {
                let stmt = std::mem::take(&mut buffer);
                if !execute_and_print(&client, &stmt, format, &mut stdout).await? && !interactive {
                    failed = true;
                    break;
                }
            }
            if interactive {
                eprint!("{}", if buffer.is_empty() { "> " } else { "-> " });
            }
        }
        if !failed && !buffer.trim().is_empty() {
            failed = !execute_and_print(&client, &buffer, format, &mut stdout).await?;
        }
    }
    drop(client);
    let _ = conn_task.await;
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Executes one query string and prints its results; returns false if the server reported an
/// error (printed to stderr).
async fn execute_and_print(
    client: &tokio_postgres::Client,
    sql: &str,
    format: Format,
    out: &mut impl Write,
) -> Result<bool> {
    match client.simple_query(sql).await {
        Ok(messages) => {
            for result in collect_results(messages) {
                print_result(&result, format, out)?;
            }
            Ok(true)
        }
        Err(e) => {
            match e.as_db_error() {
                Some(db) => {
                    eprintln!("ERROR: {}", db.message());
                    eprintln!("SQLSTATE: {}", db.code().code());
                    if let Some(detail) = db.detail() {
                        eprintln!("DETAIL: {detail}");
                    }
                    if let Some(hint) = db.hint() {
                        eprintln!("HINT: {hint}");
                    }
                }
                None => eprintln!("ERROR: {e}"),
            }
            Ok(false)
        }
    }
}

/// Groups simple-query messages into one result per statement.
pub fn collect_results(messages: Vec<SimpleQueryMessage>) -> Vec<StatementResult> {
    let mut results = Vec::new();
    let mut current = StatementResult::default();
    let mut has_columns = false;
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                current.columns = columns.iter().map(|c| c.name().to_string()).collect();
                has_columns = true;
            }
            SimpleQueryMessage::Row(row) => {
                if !has_columns {
                    current.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                    has_columns = true;
                }
                current.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                );
            }
            SimpleQueryMessage::CommandComplete(n) => {
                if !has_columns {
                    current.affected = Some(n);
                }
                results.push(std::mem::take(&mut current));
                has_columns = false;
            }
            _ => {}
        }
    }
    results
}

/// Prints one statement result.
pub fn print_result(result: &StatementResult, format: Format, out: &mut impl Write) -> Result<()> {
    if result.columns.is_empty() {
        if format == Format::Table {
            match result.affected {
                Some(n) if n > 0 => {
                    writeln!(out, "OK, {n} {}", if n == 1 { "row" } else { "rows" })?
                }
                _ => writeln!(out, "OK")?,
            }
        }
        return Ok(());
    }
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".to_string());
    match format {
        Format::Table => {
            let mut widths: Vec<usize> = result.columns.iter().map(|c| c.chars().count()).collect();
            for row in &result.rows {
                for (i, v) in row.iter().enumerate() {
                    widths[i] = widths[i].max(cell(v).chars().count());
                }
            }
            let header: Vec<String> = result
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!(" {:^w$} ", c, w = widths[i]))
                .collect();
            writeln!(out, "{}", header.join("|").trim_end())?;
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
            writeln!(out, "{}", rule.join("+"))?;
            for row in &result.rows {
                let cells: Vec<String> = row
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!(" {:<w$} ", cell(v), w = widths[i]))
                    .collect();
                writeln!(out, "{}", cells.join("|").trim_end())?;
            }
            let n = result.rows.len();
            writeln!(out, "({n} {})", if n == 1 { "row" } else { "rows" })?;
        }
        Format::Csv => {
            writeln!(
                out,
                "{}",
                result
                    .columns
                    .iter()
                    .map(|c| csv_field(c))
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
            for row in &result.rows {
                writeln!(
                    out,
                    "{}",
                    row.iter()
                        .map(|v| csv_field(&cell(v)))
                        .collect::<Vec<_>>()
                        .join(",")
                )?;
            }
        }
        Format::Tsv => {
            writeln!(out, "{}", result.columns.join("\t"))?;
            for row in &result.rows {
                writeln!(
                    out,
                    "{}",
                    row.iter().map(cell).collect::<Vec<_>>().join("\t")
                )?;
            }
        }
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatementResult {
        StatementResult {
            columns: vec!["id".into(), "name".into()],
            rows: vec![
                vec![Some("1".into()), Some("a,b".into())],
                vec![Some("22".into()), None],
            ],
            affected: None,
        }
    }

    fn render(r: &StatementResult, f: Format) -> String {
        let mut out = Vec::new();
        print_result(r, f, &mut out).expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn table_format_aligns_and_counts() {
        let text = render(&sample(), Format::Table);
        assert_eq!(
            text,
            " id | name\n----+------\n 1  | a,b\n 22 | NULL\n(2 rows)\n"
        );
    }

    #[test]
    fn csv_quotes_and_tsv_tabs() {
        assert_eq!(
            render(&sample(), Format::Csv),
            "id,name\n1,\"a,b\"\n22,NULL\n"
        );
        assert_eq!(
            render(&sample(), Format::Tsv),
            "id\tname\n1\ta,b\n22\tNULL\n"
        );
    }

    #[test]
    fn commands_print_ok() {
        let r = StatementResult {
            affected: Some(3),
            ..Default::default()
        };
        assert_eq!(render(&r, Format::Table), "OK, 3 rows\n");
        assert_eq!(render(&r, Format::Csv), "");
    }

    #[test]
    fn target_from_host_or_url() {
        let plain = Security::default();
        let t =
            Target::new(None, Some("127.0.0.1:26257".into()), None, "root", &plain).expect("valid");
        assert_eq!(
            t.url,
            "postgresql://root@127.0.0.1:26257/defaultdb?sslmode=disable"
        );
        assert!(t.tls.is_none());
        let t = Target::new(
            Some("postgresql://u@h:1/x?sslmode=disable".into()),
            None,
            Some("y".into()),
            "root",
            &plain,
        )
        .expect("valid");
        assert_eq!(t.url, "postgresql://u@h:1/y?sslmode=disable");
        // --insecure drops a URL's TLS parameters (insecure nodes, CockroachDB's tutorials).
        let insecure = Security {
            insecure: true,
            certs_dir: None,
        };
        let t = Target::new(
            Some("postgresql://root@h:26257?sslmode=verify-full&sslrootcert=certs/ca.crt&application_name=x".into()),
            None,
            None,
            "root",
            &insecure,
        )
        .expect("TLS parameters are dropped");
        assert_eq!(
            t.url,
            "postgresql://root@h:26257?application_name=x&sslmode=disable"
        );
        assert!(Target::new(None, None, None, "root", &plain).is_err());
    }

    #[test]
    fn secure_targets_verify_with_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let ca_key = dir.path().join("ca.key");
        ldr_security::certs::create_ca(&certs, &ca_key, false).expect("ca");
        ldr_security::certs::create_client(&certs, &ca_key, "root", false).expect("client");
        let secure = Security {
            insecure: false,
            certs_dir: Some(certs.clone()),
        };
        let t = Target::new(None, Some("127.0.0.1:26257".into()), None, "root", &secure)
            .expect("valid");
        assert!(t.tls.is_some());
        assert_eq!(
            t.url,
            "postgresql://root@127.0.0.1:26257/defaultdb?sslmode=require"
        );
        // A URL with verify-full and a CA file needs no --certs-dir.
        let url = format!(
            "postgresql://alice:pw@localhost:26257/defaultdb?sslmode=verify-full&sslrootcert={}",
            certs.join("ca.crt").display()
        );
        let t = Target::new(Some(url), None, None, "root", &Security::default()).expect("valid");
        assert!(t.tls.is_some());
        assert_eq!(
            t.url,
            "postgresql://alice:pw@localhost:26257/defaultdb?sslmode=require"
        );
        assert_eq!(
            t.shown(),
            "postgresql://alice:redacted@localhost:26257/defaultdb?sslmode=require"
        );
        // verify-full without a CA is refused before connecting.
        let e = Target::new(
            Some("postgresql://root@h:1/?sslmode=verify-full".into()),
            None,
            None,
            "root",
            &Security::default(),
        )
        .expect_err("no CA");
        assert!(e.to_string().contains("sslrootcert"), "{e}");
    }
}
