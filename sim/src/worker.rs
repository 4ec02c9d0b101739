//! The client side the [`lincheck`](crate::lincheck) and [`elle`](crate::elle) workloads
//! share: seeded clients, each with its own pgwire connection, running a workload's
//! operations against a cluster until the run ends while the nemesis works on the nodes.
//!
//! A workload implements [`Workload`] (the statements it prepares on a connection and one
//! step: plan an operation, run it, record it); this module keeps the rest:
//! - a [`Worker`] per client: its ChaCha8 generator (from the run's seed, the client number
//!   and the workload's salt), its unique values, and its connection, opened to a node the
//!   generator picks and then to the others in turn, dropped by the workload when an answer
//!   leaves its state unknown;
//! - [`answer`]: one statement under the client's deadline, sorted into an answer, a refusal
//!   (a SQLSTATE: the connection still works) or a broken connection;
//! - [`setup_table`]: the workload's table on three-way replicated ranges, every key set;
//! - [`run_workload`]: every client from one origin until the run's end, the nemesis beside
//!   them, and the histories gathered in client order.
//!
//! Every wait here has a deadline: connecting and preparing ([`CONNECT_TIMEOUT`]), each
//! statement (the workload's `op_timeout`), the run itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::cluster::Cluster;
use crate::error::{Result, SimError, describe_sql_error};
use crate::lincheck::Episode;
use crate::lincheck::runner::{SETTLE_TIMEOUT, nemesis};
use crate::sql;

/// Deadline for one connection attempt (a paused node accepts and never answers).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before a client tries the nodes again when none answered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// A workload's part of a client: what it prepares on a connection and one operation.
/// Implemented by the run's configuration.
pub(crate) trait Workload: Send + Sync + Sized + 'static {
    /// The SQL a client prepares on each connection.
    type Statements: Send + Sync + 'static;
    /// What a client keeps between operations besides its generator and connection.
    type State: Default + Send + 'static;
    /// One entry of the history.
    type Record: Send + 'static;
    /// Mixed into every client's seed, so each workload draws its own streams.
    const SEED_SALT: u64;

    fn seed(&self) -> u64;
    fn clients(&self) -> usize;
    fn duration(&self) -> Duration;
    /// Longest pause of a client between two operations (drawn uniformly from 0..=this).
    fn think_max(&self) -> Duration;
    /// The table the statements name.
    fn table(&self) -> &str;

    /// Prepares the workload's statements on a fresh connection.
    fn prepare(
        client: &Client,
        table: &str,
    ) -> impl Future<Output = std::result::Result<Self::Statements, tokio_postgres::Error>> + Send;

    /// Plans one operation with the worker's generator, runs it on the worker's connection
    /// (there is one) and records it, times in nanoseconds since `origin`.
    fn step(
        &self,
        worker: &mut Worker<Self>,
        origin: Instant,
    ) -> impl Future<Output = Self::Record> + Send;
}

/// The knobs of [`Workload`] a configuration keeps in fields of the same names (`seed`,
/// `clients`, `duration`, `think_max`, `table`), for its `impl Workload`.
macro_rules! workload_knobs {
    () => {
        fn seed(&self) -> u64 {
            self.seed
        }

        fn clients(&self) -> usize {
            self.clients
        }

        fn duration(&self) -> std::time::Duration {
            self.duration
        }

        fn think_max(&self) -> std::time::Duration {
            self.think_max
        }

        fn table(&self) -> &str {
            &self.table
        }
    };
}
pub(crate) use workload_knobs;

/// A client's connection to one node, with the workload's statements prepared on it.
pub(crate) struct Connection<S> {
    pub(crate) client: Client,
    pub(crate) node: usize,
    pub(crate) statements: S,
}

/// Connects to `node` and prepares the workload's statements, each under
/// [`CONNECT_TIMEOUT`].
pub(crate) async fn connect<W: Workload>(
    cluster: &Cluster,
    node: usize,
    table: &str,
) -> std::result::Result<Connection<W::Statements>, String> {
    let url = cluster.url(node).map_err(|e| e.to_string())?;
    let client = sql::connect(&url, CONNECT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let statements = match tokio::time::timeout(CONNECT_TIMEOUT, W::prepare(&client, table)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(describe_sql_error(&e)),
        Err(_) => return Err("preparing statements timed out".into()),
    };
    Ok(Connection {
        client,
        node,
        statements,
    })
}

/// One client: its generator, its unique values, its workload state and its connection.
pub(crate) struct Worker<W: Workload> {
    pub(crate) id: usize,
    pub(crate) rng: ChaCha8Rng,
    counter: i64,
    pub(crate) state: W::State,
    pub(crate) connection: Option<Connection<W::Statements>>,
}

impl<W: Workload> Worker<W> {
    pub(crate) fn new(id: usize, seed: u64) -> Worker<W> {
        let stream = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Worker {
            id,
            rng: ChaCha8Rng::seed_from_u64(seed ^ stream ^ W::SEED_SALT),
            counter: 0,
            state: W::State::default(),
            connection: None,
        }
    }

    /// A value no other client of the run writes: the client number in the high bits, a
    /// counter in the low ones.
    pub(crate) fn unique_value(&mut self) -> i64 {
        self.counter += 1;
        ((self.id as i64 + 1) << 40) | self.counter
    }

    /// The node of the current connection (0: none).
    pub(crate) fn node(&self) -> usize {
        self.connection.as_ref().map_or(0, |c| c.node)
    }

    /// A connection to some node: the generator picks where to start, then the nodes in
    /// turn; `false` when none answered (the caller pauses and tries again).
    async fn ensure_connected(&mut self, cluster: &Cluster, table: &str) -> bool {
        if self.connection.is_some() {
            return true;
        }
        let n = cluster.node_count();
        let first = self.rng.random_range(0..n);
        for i in 0..n {
            let node = (first + i) % n + 1;
            if let Ok(c) = connect::<W>(cluster, node, table).await {
                self.connection = Some(c);
                return true;
            }
        }
        false
    }
}

/// How one statement went.
pub(crate) enum Answer<T> {
    Value(T),
    /// A server error with a SQLSTATE: the connection still works.
    Refused(Option<String>, String),
    /// No SQLSTATE (the connection broke) or no answer in time: start over elsewhere.
    Broken(String),
}

/// Runs `request` with the client's deadline and sorts what came back.
pub(crate) async fn answer<T>(
    timeout: Duration,
    request: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Answer<T> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(v)) => Answer::Value(v),
        Ok(Err(e)) => match e.code() {
            Some(code) => Answer::Refused(Some(code.code().to_string()), describe_sql_error(&e)),
            None => Answer::Broken(describe_sql_error(&e)),
        },
        Err(_) => Answer::Broken(format!("no answer within {}ms", timeout.as_millis())),
    }
}

pub(crate) fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs one client until `end`; returns its history.
async fn client_loop<W: Workload>(
    cluster: Arc<Cluster>,
    config: Arc<W>,
    id: usize,
    origin: Instant,
    end: Instant,
) -> Vec<W::Record> {
    let mut worker = Worker::<W>::new(id, config.seed());
    let mut records = Vec::new();
    let think_ms = u64::try_from(config.think_max().as_millis()).unwrap_or(0);
    while Instant::now() < end {
        if !worker.ensure_connected(&cluster, config.table()).await {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        }
        records.push(config.step(&mut worker, origin).await);
        let think = worker.rng.random_range(0..=think_ms);
        if think > 0 {
            tokio::time::sleep(Duration::from_millis(think)).await;
        }
    }
    records
}

/// Makes every range three-way replicated, creates `table (k INT8 PRIMARY KEY, v <column>)`
/// and sets keys `0..keys` to `initial` (SQL), retrying while the new ranges elect
/// leaseholders; `what` names that wait in its error.
pub(crate) async fn setup_table(
    cluster: &Cluster,
    table: &str,
    column: &str,
    initial: &str,
    keys: usize,
    what: &str,
) -> Result<()> {
    cluster
        .exec(
            1,
            &format!(
                "ALTER RANGE default CONFIGURE ZONE USING num_replicas = 3;
                 CREATE TABLE {table} (k INT8 PRIMARY KEY, v {column});"
            ),
        )
        .await?;
    let rows: Vec<String> = (0..keys).map(|k| format!("({k}, {initial})")).collect();
    let upsert = format!("UPSERT INTO {table} (k, v) VALUES {}", rows.join(", "));
    sql::wait_until(what, SETTLE_TIMEOUT, Duration::from_millis(200), || async {
        cluster.exec(1, &upsert).await.map_err(|e| e.to_string())
    })
    .await
}

/// What [`run_workload`] gathered.
pub(crate) struct WorkloadRun<R> {
    /// The clients' histories, client 1 first.
    pub(crate) histories: Vec<Vec<R>>,
    /// The fault steps as executed.
    pub(crate) timeline: Vec<String>,
    /// When the clients started (the clock of every record).
    pub(crate) origin: Instant,
    /// From the start until the last client and the nemesis were done.
    pub(crate) workload_time: Duration,
}

/// Runs `config.clients()` clients for `config.duration()` with the nemesis of `planned`
/// beside them; returns when all of them are done (nodes may still be down).
pub(crate) async fn run_workload<W: Workload>(
    cluster: &Arc<Cluster>,
    config: Arc<W>,
    planned: Vec<Episode>,
) -> Result<WorkloadRun<W::Record>> {
    let origin = Instant::now();
    let end = origin + config.duration();
    let mut clients = JoinSet::new();
    for id in 1..=config.clients() {
        let client = client_loop(cluster.clone(), config.clone(), id, origin, end);
        clients.spawn(async move { (id, client.await) });
    }
    let nemesis_task = tokio::spawn(nemesis(cluster.clone(), planned, origin));
    let mut histories = Vec::new();
    while let Some(done) = clients.join_next().await {
        histories.push(done.map_err(|e| SimError::Process(format!("a client task failed: {e}")))?);
    }
    histories.sort_by_key(|(id, _)| *id);
    let timeline = nemesis_task
        .await
        .map_err(|e| SimError::Process(format!("the nemesis task failed: {e}")))??;
    Ok(WorkloadRun {
        histories: histories.into_iter().map(|(_, h)| h).collect(),
        timeline,
        origin,
        workload_time: origin.elapsed(),
    })
}
