//! A secure 3-node cluster of real `ldr` processes, set up as a user following the secure
//! tutorial would: certificates from `ldr cert`, nodes started with `--certs-dir`, `ldr init`
//! and `ldr sql` with the root client certificate, psql with `sslmode=verify-full`, client
//! certificate and SCRAM password logins (right and wrong), plain text refused, another CA
//! refused, hostile handshakes survived, `ldr encode-uri`'s URI used to connect, and an
//! `--insecure` node refused by the secure cluster.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ldr_e2e::ldr_command;
use ldr_sim::{find_ldr_binary, free_loopback_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// How long a node or cluster may take to become ready (CI runs tests side by side).
const READY: Duration = Duration::from_secs(120);

/// A node process, killed when the test ends (pass or fail).
struct NodeProcess {
    child: Child,
    log: PathBuf,
}

impl NodeProcess {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start_node(dir: &Path, name: &str, args: &[String]) -> Result<NodeProcess> {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    let child = Command::new(find_ldr_binary()?)
        .arg("start")
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting node {name}"))?;
    Ok(NodeProcess { child, log })
}

fn ok(out: &Output, what: &str) -> Result<String> {
    ensure!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn psql(conninfo: &str, sql: &str, password: Option<&str>) -> Result<Output> {
    let mut command = std::process::Command::new("psql");
    command
        .arg(conninfo)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "20");
    if let Some(p) = password {
        command.env("PGPASSWORD", p);
    }
    command.output().context("running psql (postgresql-client)")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `f` until it succeeds or `limit` passes; the last error explains a timeout.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                bail!("{what}: not true after {limit:?}; last error: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A tokio-postgres connection with verified TLS, for SQLSTATEs of failed logins.
async fn connect_tls(
    url: &str,
) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
    let parsed = url::Url::parse(url).expect("test url");
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let params = ldr_security::uri::TlsParams::from_query(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ldr_security::uri::SslMode::Disable,
    )
    .expect("tls params");
    let config = params
        .client_config(&[])
        .expect("client config")
        .expect("tls requested");
    let mut plain = parsed.clone();
    plain.set_query(Some("sslmode=require"));
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*config).clone());
    let (client, connection) = tokio_postgres::connect(plain.as_str(), tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    ldr_e2e::code_of(e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secure_cluster_tls_certificates_and_passwords() -> Result<()> {
    let work = tempfile_dir("secure")?;
    let certs = work.join("certs");
    let ca_key = work.join("my-safe-directory/ca.key");
    let certs_arg = format!("--certs-dir={}", certs.display());
    let ca_key_arg = format!("--ca-key={}", ca_key.display());

    // Certificates, as the tutorial creates them: a CA, the nodes' certificate for the names
    // clients use, and root's client certificate.
    ok(
        &ldr_command(&["cert", "create-ca", &certs_arg, &ca_key_arg])?,
        "cert create-ca",
    )?;
    ok(
        &ldr_command(&[
            "cert",
            "create-node",
            "localhost",
            "127.0.0.1",
            &certs_arg,
            &ca_key_arg,
        ])?,
        "cert create-node",
    )?;
    ok(
        &ldr_command(&["cert", "create-client", "root", &certs_arg, &ca_key_arg])?,
        "cert create-client",
    )?;
    let listed = ok(&ldr_command(&["cert", "list", &certs_arg])?, "cert list")?;
    for expected in ["CN=ldr CA", "CN=node", "CN=root", "client.root.key"] {
        ensure!(
            listed.contains(expected),
            "cert list lacks {expected}:\n{listed}"
        );
    }
    let ca = certs.join("ca.crt");
    let root_crt = certs.join("client.root.crt");
    let root_key = certs.join("client.root.key");

    // A node needs --insecure or --certs-dir.
    let bare = ldr_command(&["start", &format!("--store={}", work.join("bare").display())])?;
    ensure!(
        !bare.status.success(),
        "a node without --insecure or --certs-dir started"
    );
    ensure!(
        stderr_of(&bare).contains("neither --insecure nor --certs-dir"),
        "unclear refusal: {}",
        stderr_of(&bare)
    );

    // Three secure nodes.
    let listen: Vec<String> = (0..3)
        .map(|_| free_loopback_addr().map(|a| a.to_string()))
        .collect::<std::result::Result<_, _>>()?;
    let join = format!("--join={}", listen.join(","));
    let mut nodes = Vec::new();
    for (i, addr) in listen.iter().enumerate() {
        let http = free_loopback_addr()?.to_string();
        nodes.push(start_node(
            &work,
            &format!("n{}", i + 1),
            &[
                certs_arg.clone(),
                format!("--store={}", work.join(format!("n{}", i + 1)).display()),
                format!("--listen-addr={addr}"),
                format!("--http-addr={http}"),
                join.clone(),
            ],
        )?);
    }
    let host1 = format!("--host={}", listen[0]);
    wait_for("node 1 listens", READY, || async {
        tokio::net::TcpStream::connect(&listen[0]).await?;
        Ok(())
    })
    .await?;

    // `ldr init` over TLS with root's certificate; an --insecure init is refused clearly.
    let insecure_init = ldr_command(&["init", "--insecure", &host1])?;
    ensure!(!insecure_init.status.success(), "plaintext init succeeded");
    ensure!(
        stderr_of(&insecure_init).contains("secure mode"),
        "plaintext init said: {}",
        stderr_of(&insecure_init)
    );
    ok(
        &ldr_command(&["init", &certs_arg, &host1])?,
        "ldr init --certs-dir",
    )?;

    // `ldr sql --certs-dir` logs in as root with the client certificate.
    wait_for("SQL through node 1", READY, || async {
        ok(
            &ldr_command(&["sql", &certs_arg, &host1, "-e", "SELECT 1"])?,
            "ldr sql",
        )
        .map(|_| ())
    })
    .await?;
    ok(
        &ldr_command(&[
            "sql",
            &certs_arg,
            &host1,
            "-e",
            "CREATE TABLE t (id INT PRIMARY KEY, v STRING)",
            "-e",
            "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
            "-e",
            "CREATE USER alice WITH PASSWORD 'correct horse'",
            "-e",
            "GRANT SELECT ON TABLE t TO alice",
        ])?,
        "setup statements",
    )?;
    // The other two nodes join over TLS with their node certificates.
    wait_for("three live nodes", READY, || async {
        let status = ok(
            &ldr_command(&["node", "status", &certs_arg, &host1, "--format=csv"])?,
            "node status",
        )?;
        ensure!(
            status
                .lines()
                .skip(1)
                .filter(|l| l.ends_with(",true,true"))
                .count()
                == 3,
            "expected 3 live nodes:\n{status}"
        );
        Ok(())
    })
    .await?;

    // psql, verify-full, root's client certificate, through node 2 (replicated over TLS).
    let port = |i: usize| {
        listen[i]
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default()
    };
    let cert_login = format!(
        "host=127.0.0.1 port={} user=root dbname=defaultdb sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        port(1),
        ca.display(),
        root_crt.display(),
        root_key.display()
    );
    let out = wait_for("psql reads t through node 2", READY, || async {
        let out = psql(&cert_login, "SELECT count(*) FROM t", None)?;
        ok(&out, "psql client certificate login")
    })
    .await?;
    ensure!(out.trim() == "3", "count through node 2: {out}");

    // Password login (SCRAM-SHA-256) by name: `localhost` is in the node certificate.
    let alice = |p: usize| {
        format!(
            "postgresql://alice@localhost:{}/defaultdb?sslmode=verify-full&sslrootcert={}",
            port(p),
            ca.display()
        )
    };
    let out = ok(
        &psql(
            &alice(2),
            "SELECT v FROM t ORDER BY id",
            Some("correct horse"),
        )?,
        "psql password login",
    )?;
    ensure!(
        out.split_whitespace().collect::<Vec<_>>() == ["a", "b", "c"],
        "alice read {out}"
    );

    // Wrong password, unknown user, root without a password: 28P01 with PostgreSQL's text.
    let wrong = psql(&alice(0), "SELECT 1", Some("battery staple"))?;
    ensure!(!wrong.status.success(), "wrong password accepted");
    ensure!(
        stderr_of(&wrong).contains("password authentication failed for user \"alice\""),
        "wrong password said: {}",
        stderr_of(&wrong)
    );
    let password_url = |user: &str, password: &str| {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/defaultdb?sslmode=verify-full&sslrootcert={}",
            port(0),
            ca.display()
        )
    };
    for (user, password) in [("alice", "wrong"), ("mallory", "x"), ("root", "guess")] {
        let e = connect_tls(&password_url(user, password))
            .await
            .err()
            .with_context(|| format!("{user} logged in with password {password:?}"))?;
        ensure!(sqlstate(&e) == "28P01", "{user}: expected 28P01, got {e:?}");
    }
    let client = connect_tls(&password_url("alice", "correct%20horse")).await?;
    let rows = client.query("SELECT count(*) FROM t", &[]).await?;
    ensure!(rows[0].get::<_, i64>(0) == 3, "alice's count");

    // Plain text to a secure node is refused with PostgreSQL's message.
    let plain = psql(
        &format!(
            "host=127.0.0.1 port={} user=root dbname=defaultdb sslmode=disable",
            port(0)
        ),
        "SELECT 1",
        None,
    )?;
    ensure!(!plain.status.success(), "plaintext login accepted");
    ensure!(
        stderr_of(&plain).contains("no pg_hba.conf entry")
            && stderr_of(&plain).contains("no encryption"),
        "plaintext refusal said: {}",
        stderr_of(&plain)
    );

    // A certificate of another CA does not verify.
    let other = work.join("other");
    ok(
        &ldr_command(&[
            "cert",
            "create-ca",
            &format!("--certs-dir={}", other.display()),
            &format!("--ca-key={}", other.join("ca.key").display()),
        ])?,
        "other CA",
    )?;
    let wrong_ca = psql(
        &format!(
            "host=127.0.0.1 port={} user=root dbname=defaultdb sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            port(0),
            other.join("ca.crt").display(),
            root_crt.display(),
            root_key.display()
        ),
        "SELECT 1",
        None,
    )?;
    ensure!(
        !wrong_ca.status.success(),
        "a server of another CA was trusted"
    );
    ensure!(
        stderr_of(&wrong_ca).contains("certificate verify failed"),
        "wrong CA said: {}",
        stderr_of(&wrong_ca)
    );

    // Hostile handshakes: garbage after an SSLRequest, a truncated ClientHello, a ClientHello
    // of garbage. Each ends its connection only.
    for bytes in [
        [
            &[0u8, 0, 0, 8, 4, 210, 22, 47][..],
            b"\x00garbage\xff\xff\xff\xff",
        ]
        .concat(),
        vec![0x16, 3, 1, 0, 200, 1, 0],
        [&[0x16u8, 3, 3, 0, 8][..], &[0xff; 8]].concat(),
    ] {
        let mut s = tokio::net::TcpStream::connect(&listen[0]).await?;
        s.write_all(&bytes).await?;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut sink)).await;
    }
    ok(
        &psql(&alice(0), "SELECT 1", Some("correct horse"))?,
        "psql after hostile handshakes",
    )?;

    // `ldr encode-uri` prints the seed's form, and the URI (CA inline) connects.
    let uri = ok(
        &ldr_command(&[
            "encode-uri",
            &format!("alice:correct horse@localhost:{}", port(2)),
            "--ca-cert",
            &ca.display().to_string(),
            "--inline",
        ])?,
        "encode-uri",
    )?;
    let uri = uri.trim();
    let prefix = format!(
        "postgresql://alice:correct%20horse@localhost:{}/?options=-ccluster%3Dsystem&sslinline=true&sslmode=verify-full&sslrootcert=-----BEGIN+CERTIFICATE-----",
        port(2)
    );
    ensure!(uri.starts_with(&prefix), "encode-uri printed {uri}");
    ensure!(
        uri.ends_with("-----END+CERTIFICATE-----%0A"),
        "encode-uri printed {uri}"
    );
    let out = ok(
        &ldr_command(&[
            "sql",
            &format!("--url={uri}"),
            "-e",
            "SELECT count(*) FROM t",
            "--format=csv",
        ])?,
        "ldr sql --url <encode-uri output>",
    )?;
    ensure!(
        out.lines().nth(1) == Some("3"),
        "count through the encoded URI: {out}"
    );

    // LDR between two secure clusters: B (its own CA) pulls from A through an external
    // connection whose URI carries A's CA inline, verifying A's nodes over TLS.
    let certs_b = work.join("certs-b");
    let ca_key_b = work.join("my-safe-directory/ca-b.key");
    let certs_b_arg = format!("--certs-dir={}", certs_b.display());
    let ca_key_b_arg = format!("--ca-key={}", ca_key_b.display());
    for args in [
        vec!["cert", "create-ca", &certs_b_arg, &ca_key_b_arg],
        vec![
            "cert",
            "create-node",
            "localhost",
            "127.0.0.1",
            &certs_b_arg,
            &ca_key_b_arg,
        ],
        vec!["cert", "create-client", "root", &certs_b_arg, &ca_key_b_arg],
    ] {
        ok(&ldr_command(&args)?, "cluster B certificates")?;
    }
    let listen_b = free_loopback_addr()?.to_string();
    let node_b = start_node(
        &work,
        "b1",
        &[
            certs_b_arg.clone(),
            format!("--store={}", work.join("b1").display()),
            format!("--listen-addr={listen_b}"),
            format!("--http-addr={}", free_loopback_addr()?),
            format!("--join={listen_b}"),
        ],
    )?;
    let host_b = format!("--host={listen_b}");
    wait_for("node b1 listens", READY, || async {
        tokio::net::TcpStream::connect(&listen_b).await?;
        Ok(())
    })
    .await?;
    ok(&ldr_command(&["init", &certs_b_arg, &host_b])?, "init B")?;
    let sql_b = |statements: &[&str]| -> Result<String> {
        let mut args = vec!["sql", &certs_b_arg, &host_b, "--format=csv"];
        for s in statements {
            args.push("-e");
            args.push(s);
        }
        ok(&ldr_command(&args)?, &format!("on B: {statements:?}"))
    };
    wait_for("SQL on B", READY, || async {
        sql_b(&["SELECT 1"]).map(|_| ())
    })
    .await?;
    ok(
        &ldr_command(&[
            "sql",
            &certs_arg,
            &host1,
            "-e",
            "SET CLUSTER SETTING kv.rangefeed.enabled = true",
            "-e",
            "CREATE USER repl WITH PASSWORD 'repl pw'",
            "-e",
            "GRANT SYSTEM REPLICATION TO repl",
        ])?,
        "replication user on A",
    )?;
    let source_uri = ok(
        &ldr_command(&[
            "encode-uri",
            &format!("repl:repl pw@127.0.0.1:{}", port(0)),
            "--ca-cert",
            &ca.display().to_string(),
            "--inline",
        ])?,
        "encode-uri for A",
    )?;
    let wrong_ca_uri = ok(
        &ldr_command(&[
            "encode-uri",
            &format!("repl:repl pw@127.0.0.1:{}", port(0)),
            "--ca-cert",
            &certs_b.join("ca.crt").display().to_string(),
            "--inline",
        ])?,
        "encode-uri with B's CA",
    )?;
    sql_b(&[
        "CREATE TABLE t (id INT PRIMARY KEY, v STRING)",
        &format!("CREATE EXTERNAL CONNECTION a AS '{}'", source_uri.trim()),
        &format!(
            "CREATE EXTERNAL CONNECTION a_wrong_ca AS '{}'",
            wrong_ca_uri.trim()
        ),
    ])?;
    // A source certificate that does not chain to the URI's CA is refused, clearly.
    let refused = ldr_command(&[
        "sql",
        &certs_b_arg,
        &host_b,
        "-e",
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE defaultdb.public.t ON 'external://a_wrong_ca' INTO TABLE defaultdb.public.t",
    ])?;
    ensure!(
        !refused.status.success(),
        "a source of another CA was trusted"
    );
    ensure!(
        stderr_of(&refused).to_lowercase().contains("certificate"),
        "wrong source CA said: {}",
        stderr_of(&refused)
    );
    sql_b(&[
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE defaultdb.public.t ON 'external://a' INTO TABLE defaultdb.public.t",
    ])?;
    wait_for("B has A's rows", READY, || async {
        let out = sql_b(&["SELECT count(*) FROM t"])?;
        ensure!(out.lines().nth(1) == Some("3"), "B's count: {out}");
        Ok(())
    })
    .await?;
    // A's later writes arrive too (live changes over TLS).
    ok(
        &ldr_command(&[
            "sql",
            &certs_arg,
            &host1,
            "-e",
            "INSERT INTO t VALUES (4, 'd')",
        ])?,
        "write on A",
    )?;
    wait_for("B has A's live write", READY, || async {
        let out = sql_b(&["SELECT v FROM t WHERE id = 4"])?;
        ensure!(out.lines().nth(1) == Some("d"), "B's row 4: {out}");
        Ok(())
    })
    .await?;
    let jobs = sql_b(&["SHOW LOGICAL REPLICATION JOBS WITH DETAILS", "SHOW JOBS"])?;
    ensure!(
        !jobs.contains("repl pw") && !jobs.contains("repl%20pw"),
        "a password shows:\n{jobs}"
    );
    drop(node_b);

    // An --insecure node cannot join the secure cluster: it is told why, and the cluster
    // stays at three nodes.
    let intruder_http = free_loopback_addr()?.to_string();
    let intruder = start_node(
        &work,
        "intruder",
        &[
            "--insecure".into(),
            format!("--store={}", work.join("intruder").display()),
            format!("--listen-addr={}", free_loopback_addr()?),
            format!("--http-addr={intruder_http}"),
            join.clone(),
        ],
    )?;
    wait_for("the insecure node is refused", READY, || async {
        let log = intruder.log_text();
        ensure!(log.contains("secure mode"), "intruder log so far:\n{log}");
        Ok(())
    })
    .await?;
    let status = ok(
        &ldr_command(&["node", "status", &certs_arg, &host1, "--format=csv"])?,
        "node status after the intruder",
    )?;
    ensure!(
        status.lines().skip(1).count() == 3,
        "the insecure node joined:\n{status}"
    );
    drop(intruder);

    // Every node survived all of it.
    for (i, node) in nodes.iter_mut().enumerate() {
        ensure!(
            node.child.try_wait()?.is_none(),
            "node {} exited; log:\n{}",
            i + 1,
            node.log_text()
        );
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A fresh directory for the run (kept on failure for the logs).
fn tempfile_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ldr-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The row `k` of `t` on cluster `c` node 1, if present.
async fn value_of(c: &ldr_sim::Cluster, k: i64) -> std::result::Result<String, String> {
    let rows = c
        .query_text(1, &format!("SELECT v FROM t WHERE k = {k}"))
        .await
        .map_err(|e| e.to_string())?;
    rows.rows
        .first()
        .and_then(|r| r[0].clone())
        .ok_or_else(|| format!("row {k} not there yet"))
}

/// A running stream whose source starts presenting a certificate of another CA: the job stays
/// running, says why it cannot replicate (the certificate error, in `SHOW JOBS`'
/// `running_status`) and retries; once the source has its own certificate back, replication
/// resumes and nothing written meanwhile is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_reports_an_untrusted_source_certificate_and_recovers() -> Result<()> {
    use ldr_sim::{Cluster, ClusterSpec};
    let started = Instant::now();
    let a = Cluster::start(ClusterSpec::new("cert-a", 1)?.secure(true)).await?;
    let b = Cluster::start(ClusterSpec::new("cert-b", 1)?.secure(true)).await?;
    for c in [&a, &b] {
        c.exec(
            1,
            "SET CLUSTER SETTING kv.rangefeed.enabled = true;
             CREATE TABLE t (k INT8 PRIMARY KEY, v STRING)",
        )
        .await?;
    }
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    let job = ldr_sim::ldr::create_stream(&b, "a", &["t"], &["t"], None).await?;
    a.exec(1, "INSERT INTO t VALUES (1, 'before')").await?;
    ldr_e2e::poll("row 1 on b", READY, Duration::from_millis(200), || {
        value_of(&b, 1)
    })
    .await?;
    ldr_e2e::phase(started, "stream a -> b replicating over verify-full TLS");

    // A's identity replaced by one of another CA (its CA certificate too, so that it starts).
    let certs = a.certs_dir();
    let saved = tempfile::tempdir()?;
    let rogue = tempfile::tempdir()?;
    let rogue_certs = rogue.path().join("certs");
    let rogue_key = rogue.path().join("ca.key");
    ldr_security::certs::create_ca(&rogue_certs, &rogue_key, false)?;
    ldr_security::certs::create_node(
        &rogue_certs,
        &rogue_key,
        &["127.0.0.1".to_string(), "localhost".to_string()],
        false,
    )?;
    let identity = ["ca.crt", "node.crt", "node.key"];
    for f in identity {
        std::fs::copy(certs.join(f), saved.path().join(f))?;
    }
    a.stop(1).await?;
    for f in identity {
        std::fs::copy(rogue_certs.join(f), certs.join(f))?;
    }
    a.start_node(1)?;
    let status = ldr_e2e::poll(
        "b's job to report the untrusted certificate",
        READY,
        Duration::from_millis(250),
        || async {
            let row = ldr_e2e::job_row(&b, job).await.map_err(|e| e.to_string())?;
            let status = row.get("status").cloned().flatten().unwrap_or_default();
            let running = row
                .get("running_status")
                .cloned()
                .flatten()
                .unwrap_or_default();
            if status != "running" {
                return Err(format!("job is {status}: {row:?}"));
            }
            if running.to_lowercase().contains("certificate") {
                Ok(running)
            } else {
                Err(format!("running_status {running:?}"))
            }
        },
    )
    .await?;
    ldr_e2e::phase(started, &format!("job running, reports: {status}"));

    // A's own certificates back: the job catches up, the row written before included.
    a.stop(1).await?;
    for f in identity {
        std::fs::copy(saved.path().join(f), certs.join(f))?;
    }
    a.restart(1).await?;
    a.exec(1, "INSERT INTO t VALUES (2, 'after')").await?;
    let v = ldr_e2e::poll("row 2 on b", READY, Duration::from_millis(200), || {
        value_of(&b, 2)
    })
    .await?;
    ensure!(v == "after", "row 2 on b is {v}");
    let row = ldr_e2e::job_row(&b, job).await?;
    ensure!(
        row.get("status").cloned().flatten().as_deref() == Some("running"),
        "{row:?}"
    );
    ldr_e2e::phase(started, "source trusted again: the job caught up");
    Ok(())
}

/// Password guessing does not stall anyone else: 200 wrong-password logins (SCRAM over TLS,
/// 8 at a time) while another session keeps querying; every guess gets 28P01, every query
/// answers, the right password still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_guessing_does_not_stall_other_sessions() -> Result<()> {
    use ldr_sim::{Cluster, ClusterSpec};
    let c = Cluster::start(ClusterSpec::new("guess", 1)?.secure(true)).await?;
    c.exec(1, "CREATE USER alice WITH PASSWORD 'right-password'")
        .await?;
    let root = c.url(1)?;
    let ca = c.certs_dir().join("ca.crt");
    let addr = c.node_info(1)?.listen_addr;
    let as_alice = |password: &str| {
        format!(
            "postgresql://alice:{password}@{addr}/defaultdb?sslmode=verify-full&sslrootcert={}",
            ca.display()
        )
    };
    let wrong = as_alice("guess");
    let attack = tokio::spawn(async move {
        let mut refused = 0;
        let mut other = Vec::new();
        for _ in 0..25 {
            let tries = (0..8).map(|_| connect_tls(&wrong));
            for r in futures::future::join_all(tries).await {
                match r {
                    Err(e) if sqlstate(&e) == "28P01" => refused += 1,
                    Err(e) => other.push(e.to_string()),
                    Ok(_) => other.push("a wrong password was accepted".into()),
                }
            }
        }
        (refused, other)
    });
    let client = ldr_sim::sql::connect(&root, ldr_sim::sql::CONNECT_TIMEOUT).await?;
    let mut answered = 0;
    while !attack.is_finished() && answered < 10_000 {
        tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1"))
            .await
            .context("a query stalled for 10 s during the password guessing")??;
        answered += 1;
    }
    let (refused, other) = attack.await?;
    ensure!(other.is_empty(), "unexpected outcomes: {other:?}");
    ensure!(refused == 200, "{refused} of 200 guesses refused");
    ensure!(answered > 0, "no query answered during the guessing");
    let alice = connect_tls(&as_alice("right-password")).await?;
    alice.simple_query("SELECT 1").await?;
    eprintln!(
        "200 wrong passwords refused (28P01) while another session answered {answered} queries"
    );
    Ok(())
}
