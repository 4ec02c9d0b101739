//! Local PostgreSQL 15 servers: the peer the benchmark compares ldr with, and a plain
//! PostgreSQL-wire target for testing the workloads without ldr.
//!
//! [`PgInstance::start`] runs `initdb` and `postgres` from `/usr/lib/postgresql/15/bin`
//! (override with `LDR_PG_BIN_DIR`) in a temp directory, listening on a free loopback port with
//! `wal_level = logical`, `max_wal_senders` / `max_replication_slots` = 16 and trust auth on
//! 127.0.0.1. PostgreSQL refuses to run as root, so when we are root the directory is chowned
//! to the `postgres` OS user and both programs run as that user (set by the spawn, no `su`).
//! The server is our direct child, guarded like every harness process (see
//! [`crate::process`]): SIGQUIT when the harness dies; on drop an immediate shutdown, then
//! SIGKILL, and the directory is removed.
//!
//! [`PgPair`] is a publisher and a subscriber with helpers for `CREATE PUBLICATION` /
//! `CREATE SUBSCRIPTION` and waiting until every table is synchronised
//! (`pg_subscription_rel.srsubstate = 'r'`), following `reference/pg-peer-notes.md`.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::cluster::tail_lines;
use crate::error::{Result, SimError, describe_sql_error};
use crate::ports::{free_loopback_addr, mentions_address_in_use};
use crate::process::{self, ManagedProcess, SIGINT, SIGQUIT, SpawnOptions};
use crate::sql::{self, CONNECT_TIMEOUT, wait_until};

/// Where Debian installs PostgreSQL 15's programs.
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// How to start one server.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Used in the temp dir name and logs.
    pub name: String,
    pub bin_dir: PathBuf,
    /// `fsync = off` makes tests faster; the benchmark decides for itself.
    pub fsync: bool,
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// Deadline for initdb plus start until a connection succeeds.
    pub start_timeout: Duration,
}

impl PgConfig {
    pub fn new(name: impl Into<String>) -> PgConfig {
        let bin_dir = std::env::var_os("LDR_PG_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN_DIR));
        PgConfig {
            name: name.into(),
            bin_dir,
            fsync: false,
            extra_conf: Vec::new(),
            start_timeout: Duration::from_secs(120),
        }
    }
}

/// Whether PostgreSQL's programs are installed where [`PgConfig::new`] looks.
pub fn postgres_available() -> bool {
    let config = PgConfig::new("probe");
    config.bin_dir.join("initdb").is_file() && config.bin_dir.join("postgres").is_file()
}

/// The uid/gid of the `postgres` OS user, read from /etc/passwd.
fn postgres_user() -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| SimError::io("reading /etc/passwd", e))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.first() == Some(&"postgres") && fields.len() > 3 { Some((fields[2].parse().ok()?, fields[3].parse().ok()?)) } else { None }
        })
        .ok_or_else(|| SimError::Process("we run as root and PostgreSQL refuses root, but there is no `postgres` OS user to run it as".into()))
}

/// A running PostgreSQL server in a temp directory.
pub struct PgInstance {
    name: String,
    addr: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    process: Option<ManagedProcess>,
    dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for PgInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgInstance")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl PgInstance {
    /// initdb + start + wait until a connection succeeds.
    pub async fn start(config: PgConfig) -> Result<PgInstance> {
        let run_as = if process::effective_uid() == 0 {
            Some(postgres_user()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("ldr-sim-pg-{}-", config.name))
            .tempdir()
            .map_err(|e| SimError::io("creating the PostgreSQL temp dir", e))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
                SimError::io(format!("chown {} to postgres", dir.path().display()), e)
            })?;
        }
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("postgres.log");
        let deadline = Instant::now() + config.start_timeout;
        run_initdb(&config, &data_dir, dir.path(), run_as, deadline).await?;
        write_hba(&data_dir)?;
        let mut last_error = None;
        for _attempt in 0..3 {
            let addr = free_loopback_addr()?;
            write_conf(&config, &data_dir, dir.path(), addr)?;
            let mut instance = PgInstance {
                name: config.name.clone(),
                addr,
                data_dir: data_dir.clone(),
                log_path: log_path.clone(),
                process: None,
                dir: None,
            };
            instance.spawn(&config, run_as)?;
            match instance.wait_accepting(deadline).await {
                Ok(()) => {
                    instance.dir = Some(dir);
                    tracing::info!(name = %instance.name, addr = %instance.addr, "postgres ready");
                    return Ok(instance);
                }
                Err(e) => {
                    let log = tail_lines(&log_path, 20);
                    drop(instance);
                    if mentions_address_in_use(&log) {
                        last_error = Some(e);
                        continue;
                    }
                    return Err(SimError::Process(format!(
                        "postgres {} did not start: {e}\nlog {}:\n{log}",
                        config.name,
                        log_path.display()
                    )));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| SimError::Process("postgres did not start".into())))
    }

    fn spawn(&mut self, config: &PgConfig, run_as: Option<(u32, u32)>) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| SimError::io("opening the postgres log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| SimError::io("duplicating the postgres log handle", e))?;
        let mut command = Command::new(config.bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data_dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if let Some((uid, gid)) = run_as {
            command.uid(uid).gid(gid);
        }
        // Immediate shutdown if we die: the postmaster then stops its backends itself.
        let options = SpawnOptions {
            death_signal: SIGQUIT,
            new_process_group: true,
        };
        self.process = Some(ManagedProcess::spawn(
            format!("postgres/{}", self.name),
            command,
            options,
        )?);
        Ok(())
    }

    async fn wait_accepting(&mut self, deadline: Instant) -> Result<()> {
        let url = self.url();
        let start = Instant::now();
        loop {
            if let Some(process) = self.process.as_mut()
                && let Some(status) = process.try_wait()?
            {
                return Err(SimError::Process(format!("postgres exited with {status}")));
            }
            let last = match sql::connect(&url, Duration::from_secs(5)).await {
                Ok(client) => match client.simple_query("SELECT 1").await {
                    Ok(_) => return Ok(()),
                    Err(e) => describe_sql_error(&e),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(SimError::Timeout {
                    what: format!("postgres {} to accept connections", self.name),
                    waited_ms: start.elapsed().as_millis(),
                    details: format!("; last: {last}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// URL of the `postgres` database as superuser `postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres@{}/postgres?sslmode=disable",
            self.addr
        )
    }

    /// libpq key/value connection string (for `CREATE SUBSCRIPTION ... CONNECTION`).
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.addr.ip(),
            self.addr.port()
        )
    }

    pub async fn connect(&self) -> Result<Client> {
        sql::connect(&self.url(), CONNECT_TIMEOUT).await
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail_lines(&self.log_path, lines)
    }

    /// Fast shutdown (SIGINT), SIGKILL after 30 s; the directory is removed.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.terminate(SIGINT, Duration::from_secs(30)).await?;
        }
        Ok(())
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            // Immediate shutdown lets the postmaster release its shared memory; SIGKILL
            // (by the process drop) only if it does not exit in time.
            if process.signal(SIGQUIT).is_ok() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while process.is_running() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

async fn run_initdb(
    config: &PgConfig,
    data_dir: &Path,
    dir: &Path,
    run_as: Option<(u32, u32)>,
    deadline: Instant,
) -> Result<()> {
    let log_path = dir.join("initdb.log");
    let log = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&log_path)
        .map_err(|e| SimError::io("opening initdb.log", e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| SimError::io("duplicating the initdb log handle", e))?;
    let mut command = Command::new(config.bin_dir.join("initdb"));
    command
        .arg("-D")
        .arg(data_dir)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    if let Some((uid, gid)) = run_as {
        command.uid(uid).gid(gid);
    }
    let mut process = ManagedProcess::spawn(
        format!("initdb/{}", config.name),
        command,
        SpawnOptions::default(),
    )?;
    let status = process
        .wait_exit(deadline.saturating_duration_since(Instant::now()))
        .await?;
    match status {
        Some(s) if s.success() => Ok(()),
        other => Err(SimError::Process(format!(
            "initdb for {} failed ({other:?}):\n{}",
            config.name,
            tail_lines(&log_path, 20)
        ))),
    }
}

fn write_hba(data_dir: &Path) -> Result<()> {
    let hba = "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n";
    std::fs::write(data_dir.join("pg_hba.conf"), hba)
        .map_err(|e| SimError::io("writing pg_hba.conf", e))
}

fn write_conf(
    config: &PgConfig,
    data_dir: &Path,
    socket_dir: &Path,
    addr: SocketAddr,
) -> Result<()> {
    let mut conf = format!(
        "listen_addresses = '{}'\nport = {}\nunix_socket_directories = '{}'\nwal_level = logical\nmax_wal_senders = 16\nmax_replication_slots = 16\n\
         max_connections = 100\nfsync = {}\nlogging_collector = off\nlog_min_messages = warning\n",
        addr.ip(),
        addr.port(),
        socket_dir.display(),
        if config.fsync { "on" } else { "off" },
    );
    for line in &config.extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    // postgresql.auto.conf overrides postgresql.conf and is ours alone: rewriting it on a port
    // retry replaces the previous attempt's settings.
    std::fs::write(data_dir.join("postgresql.auto.conf"), conf)
        .map_err(|e| SimError::io("writing postgresql.auto.conf", e))
}

/// A publisher and a subscriber.
#[derive(Debug)]
pub struct PgPair {
    pub publisher: PgInstance,
    pub subscriber: PgInstance,
}

impl PgPair {
    /// Starts both servers (concurrently).
    pub async fn start() -> Result<PgPair> {
        let (publisher, subscriber) = tokio::try_join!(
            PgInstance::start(PgConfig::new("publisher")),
            PgInstance::start(PgConfig::new("subscriber"))
        )?;
        Ok(PgPair {
            publisher,
            subscriber,
        })
    }

    /// Runs `ddl` on both servers (tables must exist on both sides before subscribing).
    pub async fn exec_both(&self, ddl: &str) -> Result<()> {
        sql::exec(&self.publisher.connect().await?, ddl).await?;
        sql::exec(&self.subscriber.connect().await?, ddl).await
    }

    /// `CREATE PUBLICATION` for `tables` on the publisher and `CREATE SUBSCRIPTION` on the
    /// subscriber, then waits until every table is synchronised.
    pub async fn replicate(
        &self,
        publication: &str,
        subscription: &str,
        tables: &[&str],
        timeout: Duration,
    ) -> Result<()> {
        let publisher = self.publisher.connect().await?;
        sql::exec(
            &publisher,
            &format!(
                "CREATE PUBLICATION {publication} FOR TABLE {}",
                tables.join(", ")
            ),
        )
        .await?;
        let subscriber = self.subscriber.connect().await?;
        sql::exec(
            &subscriber,
            &format!(
                "CREATE SUBSCRIPTION {subscription} CONNECTION '{}' PUBLICATION {publication}",
                self.publisher.conninfo()
            ),
        )
        .await?;
        wait_subscription_ready(&subscriber, subscription, tables.len(), timeout).await
    }

    /// Stops both servers (fast shutdown) and removes their directories.
    pub async fn stop(self) -> Result<()> {
        let PgPair {
            publisher,
            subscriber,
        } = self;
        let (a, b) = tokio::join!(subscriber.stop(), publisher.stop());
        a.and(b)
    }
}

/// `ALTER SUBSCRIPTION name ENABLE|DISABLE` (catch-up measurements disable, load, enable;
/// see `reference/pg-peer-notes.md` for the 5 s worker restart pitfall).
pub async fn set_subscription_enabled(
    subscriber: &Client,
    name: &str,
    enabled: bool,
) -> Result<()> {
    crate::workload::kv::check_identifier(name)?;
    sql::exec(
        subscriber,
        &format!(
            "ALTER SUBSCRIPTION {name} {}",
            if enabled { "ENABLE" } else { "DISABLE" }
        ),
    )
    .await
}

/// Waits until subscription `name` has `tables` tables, all in state `r` (ready).
pub async fn wait_subscription_ready(
    subscriber: &Client,
    name: &str,
    tables: usize,
    timeout: Duration,
) -> Result<()> {
    let query = "SELECT r.srrelid::regclass::text, r.srsubstate::text FROM pg_subscription_rel r \
                 JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1 ORDER BY 1";
    wait_until(
        &format!("subscription {name} to be ready"),
        timeout,
        Duration::from_millis(100),
        || async {
            let rows = subscriber
                .query(query, &[&name])
                .await
                .map_err(|e| describe_sql_error(&e))?;
            let states: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            if states.len() >= tables && states.iter().all(|(_, s)| s == "r") {
                Ok(())
            } else {
                Err(format!("table states {states:?}"))
            }
        },
    )
    .await
}

/// Waits until `SELECT count(*) FROM table` reaches `expected`.
pub async fn wait_row_count(
    client: &Client,
    table: &str,
    expected: i64,
    timeout: Duration,
) -> Result<()> {
    let query = format!("SELECT count(*) FROM {table}");
    wait_until(
        &format!("{table} to have {expected} rows"),
        timeout,
        Duration::from_millis(50),
        || async {
            let row = client
                .query_one(&query, &[])
                .await
                .map_err(|e| describe_sql_error(&e))?;
            let count: i64 = row.get(0);
            if count == expected {
                Ok(())
            } else {
                Err(format!("{count} rows"))
            }
        },
    )
    .await
}
