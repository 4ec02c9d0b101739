//! `ldr start`: run a node in the foreground, or (`--background`) start it detached and return
//! once it accepts connections.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Flags of `ldr start`, with CockroachDB's names.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// Run without TLS and without password checks (anyone can connect as root).
    #[arg(long, conflicts_with = "certs_dir")]
    pub insecure: bool,
    /// Secure mode: the directory with `ca.crt`, `node.crt` and `node.key` (see `ldr cert`).
    #[arg(long, value_name = "DIR")]
    pub certs_dir: Option<PathBuf>,
    /// The store directory (`DIR` or CockroachDB's `path=DIR`).
    #[arg(long)]
    pub store: String,
    /// HOST:PORT serving SQL (pgwire) and node-to-node gRPC.
    #[arg(long, default_value = "127.0.0.1:26257")]
    pub listen_addr: String,
    /// HOST:PORT serving /health, /metrics and the console.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Addresses of nodes to join (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Address other nodes of this cluster dial (default: --listen-addr).
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Address other clusters dial for SQL and replication streams (default: the advertise address).
    #[arg(long)]
    pub advertise_sql_addr: Option<String>,
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// Maximum tolerated clock offset between nodes.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub max_offset: Duration,
    /// Memory for SQL statements' rows, shared by the node's statements: a percentage or
    /// fraction of the machine's memory (`25%`, `.25`) or a size (`4GiB`) [default: 25%].
    #[arg(long)]
    pub max_sql_memory: Option<String>,
    /// Start detached and return once the node accepts connections.
    #[arg(long)]
    pub background: bool,
}

impl StartArgs {
    /// The node's TLS set-up: `None` with `--insecure`, loaded from `--certs-dir` otherwise;
    /// a node started with neither refuses to start, as CockroachDB's does.
    pub fn security(&self) -> Result<Option<ldr_security::NodeTls>> {
        match (&self.certs_dir, self.insecure) {
            (_, true) => Ok(None),
            (Some(dir), false) => ldr_security::NodeTls::load(dir)
                .map(Some)
                .with_context(|| format!("cannot load the certificates of {}", dir.display())),
            (None, false) => bail!(
                "neither --insecure nor --certs-dir was given: start a secure node with \
                 --certs-dir=DIR (create it with `ldr cert create-ca` and `ldr cert create-node`), \
                 or an insecure one (no TLS, no passwords) with --insecure"
            ),
        }
    }

    /// `--max-sql-memory` in bytes (`None`: the default, a quarter of the machine's memory).
    pub fn max_sql_memory(&self) -> Result<Option<u64>> {
        let Some(text) = &self.max_sql_memory else {
            return Ok(None);
        };
        let total = ldr_sql::budget::NodeMemory::machine_memory().unwrap_or(16 << 30);
        ldr_sql::budget::parse_memory_size(text, total)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--max-sql-memory: {e}"))
    }

    pub fn store_dir(&self) -> PathBuf {
        let store = self.store.strip_prefix("path=").unwrap_or(&self.store);
        // `path=DIR,size=...`: only the path matters here.
        PathBuf::from(store.split(',').next().unwrap_or(store))
    }

    pub fn config(&self) -> ldr_server::ServerConfig {
        ldr_server::ServerConfig {
            store_dir: self.store_dir(),
            listen_addr: self.listen_addr.clone(),
            advertise_addr: self.advertise_addr.clone(),
            advertise_sql_addr: self.advertise_sql_addr.clone(),
            http_addr: self.http_addr.clone(),
            join: self
                .join
                .iter()
                .filter(|j| !j.is_empty())
                .cloned()
                .collect(),
            cluster_name: self.cluster_name.clone(),
            max_clock_offset: self.max_offset,
        }
    }
}

/// Re-executes this binary without `--background`, detached, logging to `<store>/logs/ldr.log`,
/// and waits until the node's listen port accepts connections (or the child exits).
pub fn start_background(args: &StartArgs) -> Result<()> {
    let log_dir = args.store_dir().join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let log_path = log_dir.join("ldr.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the ldr binary")?;
    let child_args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--background")
        .collect();
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(exe)
            .args(&child_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start the node process")?
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "node exited during startup ({status}); see {}",
                log_path.display()
            );
        }
        if std::net::TcpStream::connect_timeout(
            &resolve(&args.listen_addr)?,
            Duration::from_millis(200),
        )
        .is_ok()
        {
            println!(
                "node starting in the background (pid {}); logs: {}",
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node did not accept connections within 60s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn resolve(addr: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let mut addrs = addr
        .to_socket_addrs()
        .with_context(|| format!("invalid address {addr:?}"))?;
    let first = addrs
        .next()
        .with_context(|| format!("address {addr:?} resolves to nothing"))?;
    // Listening on 0.0.0.0 / [::] is reachable through loopback.
    Ok(if first.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), first.port())
    } else {
        first
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_accepts_cockroach_forms() {
        let mk = |s: &str| StartArgs {
            insecure: true,
            certs_dir: None,
            store: s.to_string(),
            listen_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
            join: vec![],
            advertise_addr: None,
            advertise_sql_addr: None,
            cluster_name: None,
            max_offset: Duration::from_millis(500),
            max_sql_memory: None,
            background: false,
        };
        assert_eq!(mk("/tmp/n1").store_dir(), PathBuf::from("/tmp/n1"));
        assert_eq!(mk("path=/tmp/n1").store_dir(), PathBuf::from("/tmp/n1"));
        assert_eq!(
            mk("path=/tmp/n1,size=10GiB").store_dir(),
            PathBuf::from("/tmp/n1")
        );
    }

    #[test]
    fn a_node_needs_insecure_or_certificates() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: StartArgs,
        }
        let parse = |extra: &[&str]| {
            Cli::try_parse_from(["ldr", "--store=/tmp/x"].iter().chain(extra)).map(|c| c.args)
        };
        let neither = parse(&[]).expect("parses").security().expect_err("refused");
        assert!(
            neither
                .to_string()
                .contains("neither --insecure nor --certs-dir"),
            "{neither}"
        );
        assert!(
            parse(&["--insecure"])
                .expect("parses")
                .security()
                .expect("ok")
                .is_none()
        );
        assert!(
            parse(&["--insecure", "--certs-dir=/tmp/c"]).is_err(),
            "conflicting flags"
        );
        let missing = parse(&["--certs-dir=/nonexistent-ldr-certs"])
            .expect("parses")
            .security()
            .expect_err("no certificates");
        assert!(format!("{missing:#}").contains("ca.crt"), "{missing:#}");
    }

    #[test]
    fn unspecified_listen_addresses_are_dialed_on_loopback() {
        let a = resolve("0.0.0.0:26257").expect("valid");
        assert_eq!(a.to_string(), "127.0.0.1:26257");
    }
}
