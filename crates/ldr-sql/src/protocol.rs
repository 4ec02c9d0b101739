//! The PostgreSQL wire protocol front end (pgwire): startup (on an insecure node an
//! SSLRequest is answered 'N', so `sslmode=prefer`/`disable` work and `require` fails
//! clearly; on a secure node it is answered 'S' and TLS follows, and a plain-text startup is
//! refused), login (insecure: the user must exist; secure: a client certificate whose CN is
//! the user, or SCRAM-SHA-256 against the user's stored verifier), the simple query protocol
//! (several statements per string) and the extended protocol (Parse/Bind/Describe/Execute
//! with parameters in text or binary, results in the formats the client asks for).
//!
//! ```no_run
//! # async fn run(server: std::sync::Arc<ldr_sql::exec::SqlServer>) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:26257").await?;
//! loop {
//!     let (socket, _) = listener.accept().await?;
//!     let server = server.clone();
//!     tokio::spawn(async move { ldr_sql::protocol::serve_connection(socket, server).await });
//! }
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use futures::{Sink, SinkExt, stream};
use pgwire::api::auth::sasl::scram::{
    ScramSecret, ScramServerAuth, ScramServerAuthWaitingForClientFinal,
};
use pgwire::api::auth::{
    ServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::copy::{
    CopyHandler, send_copy_both_response, send_copy_in_response, send_copy_out_response,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{
    ExtendedQueryHandler, SimpleQueryHandler, send_execution_response, send_query_response,
    send_ready_for_query,
};
use pgwire::api::results::{
    CopyResponse, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, DEFAULT_NAME, ErrorHandler, METADATA_DATABASE, METADATA_USER,
    PgWireConnectionState, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::DecodeContext;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::{DataRow, RowDescription};
use pgwire::messages::extendedquery::{Describe, Execute, Parse, ParseComplete, Sync as PgSync};
use pgwire::messages::response::{EmptyQueryResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{Authentication, PasswordMessageFamily, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{process_error, process_message};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::{Duration, Instant};
use tracing::debug;

use crate::copy::CopySpec;
use crate::datum::Datum;
use crate::error::{PgError, SqlError, sqlstate};
use crate::exec::{
    ColumnInfo, Prepared, QueryResult, RowStream, Session, SqlServer, TxnEffect, TxnStatus,
};
use crate::frontend_frame::{self, FrameKind, FrameReader};
use crate::types::SqlType;
use crate::wire;

/// The `server_version` reported to clients (CockroachDB reports a PostgreSQL 13 version).
pub const SERVER_VERSION: &str = "13.0.0";

/// How long a client has to finish SSL negotiation, startup and login (pgwire's limit).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one client connection until it closes.
///
/// pgwire's `process_socket` loop, except that every frame is read whole and checked by
/// [`crate::frontend_frame`] before pgwire decodes it: a malformed frame gets a FATAL
/// `08P01` and the connection closes, where pgwire's decoder would panic or misread.
pub async fn serve_connection(socket: TcpStream, server: Arc<SqlServer>) -> std::io::Result<()> {
    serve_connection_tls(socket, server, None).await
}

/// [`serve_connection`] on a node that serves TLS: an SSLRequest is answered 'S' and the
/// TLS handshake (with `tls`, which may ask for a client certificate) follows.
pub async fn serve_connection_tls(
    socket: TcpStream,
    server: Arc<SqlServer>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let handlers = Handlers::new(server);
    let startup_deadline = Instant::now() + STARTUP_TIMEOUT;
    // A second handle on the same socket notices a client that goes away while a statement
    // runs (the connection itself is read only between statements).
    let (socket, hangup) = hangup_watcher(socket)?;
    // SSLRequest and GSSENCRequest are answered by pgwire ('N' without a TLS acceptor); its
    // decoder reads nothing there but the fixed 8-byte requests. A failed TLS handshake
    // (garbage after SSLRequest, a truncated ClientHello, an untrusted client certificate)
    // is an error of this connection only.
    let acceptor = tls.map(pgwire::tokio::TlsAcceptor::from);
    let negotiated = tokio::time::timeout_at(
        startup_deadline,
        pgwire::tokio::server::negotiate_tls(socket, acceptor),
    )
    .await;
    let mut socket = match negotiated {
        Ok(Ok(Some(socket))) => socket,
        Ok(Err(e)) => return Err(e),
        // Out of time, or a direct TLS handshake (no acceptor): nothing to serve.
        Err(_) | Ok(Ok(None)) => return Ok(()),
    };
    let mut frames = FrameReader::new(std::mem::take(socket.read_buffer_mut()));

    let startup_handler = handlers.startup_handler();
    let simple_query_handler = handlers.simple_query_handler();
    let extended_query_handler = handlers.extended_query_handler();
    let copy_handler = handlers.copy_handler();
    let cancel_handler = handlers.cancel_handler();
    let error_handler = handlers.error_handler();
    loop {
        let state = socket.state();
        let starting = matches!(
            state,
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let kind = if matches!(state, PgWireConnectionState::AwaitingStartup) {
            FrameKind::Startup
        } else {
            FrameKind::Typed
        };
        let read = frames.next(socket.get_mut(), kind);
        let frame = if starting {
            match tokio::time::timeout_at(startup_deadline, read).await {
                Ok(frame) => frame?,
                Err(_) => {
                    debug!("sql client did not finish startup in time");
                    return Ok(());
                }
            }
        } else {
            read.await?
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        let frame = match frame {
            // Text that is not UTF-8 fails this message only, as in PostgreSQL (an
            // extended-protocol one until the next Sync, as after any error there). After an
            // earlier error pgwire skips extended messages until Sync: no second error. Not
            // before authentication is done: a session-level error there would put the
            // connection in ReadyForQuery without a login; the frame checks refuse it.
            Ok(f)
                if !starting && !matches!(socket.state(), PgWireConnectionState::AwaitingSync) =>
            {
                match frontend_frame::check_message(&f, false)
                    .and_then(|()| frontend_frame::check_text(&f))
                {
                    Err(e) if e.code() == sqlstate::CHARACTER_NOT_IN_REPERTOIRE => {
                        debug!(error = %e.message(), "refusing a frontend message that is not UTF-8");
                        let extended = f.first() != Some(&b'Q');
                        process_error(&mut socket, user_error(&e), extended).await?;
                        continue;
                    }
                    _ => Ok(f),
                }
            }
            other => other,
        };
        let message = match frame.and_then(|f| decode_checked(f, kind, &socket)) {
            Ok(message) => message,
            Err(e) => {
                frontend_frame::count_violation();
                debug!(code = e.code(), error = %e.message(), "refusing a malformed frontend message");
                let info = error_info(&e, "FATAL");
                socket
                    .send(PgWireBackendMessage::ErrorResponse(info.into()))
                    .await?;
                return socket.close().await;
            }
        };
        // Terminate: the client is leaving; close (some clients wait for the close).
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        let is_extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(is_extended_query) => is_extended_query,
            _ => message.is_extended_query(),
        };
        // `process_message` closes a CancelRequest's dedicated connection.
        let is_cancel_request = matches!(message, PgWireFrontendMessage::CancelRequest(_));
        let work = process_message(
            message,
            &mut socket,
            startup_handler.clone(),
            simple_query_handler.clone(),
            extended_query_handler.clone(),
            copy_handler.clone(),
            cancel_handler.clone(),
        );
        let result = match (&hangup, handlers.canceler()) {
            (Some(hangup), Some(canceler)) => {
                // A client that disconnects mid-statement cancels it (as a cancel request
                // would: a read stops at once, a write at its next check). The watch is its
                // own task: a statement busy computing does not let this one run.
                let hangup = hangup.clone();
                let watch = tokio::spawn(async move {
                    if client_gone(&hangup).await {
                        debug!("sql client disconnected during a statement; canceling it");
                        canceler.cancel();
                    }
                });
                // Let the watch register with the I/O driver before the statement runs: a
                // task spawned here sits in this worker's LIFO slot, which other workers do
                // not steal from, so a statement that computes without yielding would keep
                // it from ever starting (the disconnect then went unnoticed until the
                // statement ended). Once registered, its wake-up runs on another worker.
                tokio::task::yield_now().await;
                let r = work.await;
                watch.abort();
                r
            }
            _ => work.await,
        };
        if let Err(mut e) = result {
            error_handler.on_error(&socket, &mut e);
            // A FATAL error ends the session, as in PostgreSQL.
            let is_fatal = e.is_fatal();
            process_error(&mut socket, e, is_extended_query).await?;
            if is_fatal {
                return Ok(());
            }
        }
        if is_cancel_request {
            return Ok(());
        }
    }
}

/// The socket, and a second handle on it (a duplicated descriptor) that only peeks, for
/// [`client_gone`]. `None` if the descriptor cannot be duplicated (the connection is served
/// without the watch).
fn hangup_watcher(socket: TcpStream) -> std::io::Result<(TcpStream, Option<Arc<TcpStream>>)> {
    let std_socket = socket.into_std()?;
    let watcher = std_socket
        .try_clone()
        .ok()
        .and_then(|w| TcpStream::from_std(w).ok())
        .map(Arc::new);
    Ok((TcpStream::from_std(std_socket)?, watcher))
}

/// Resolves `true` once the client has closed its end (end of stream or a reset). Bytes the
/// client sent meanwhile (a pipelined next message, such as the Sync a driver sends right
/// after Execute) are left for the connection to read: a peek shows them, not the end of
/// stream behind them, which the socket's read-closed readiness shows instead; the watch
/// looks again a moment later.
async fn client_gone(watcher: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match watcher.peek(&mut byte).await {
            Ok(0) => return true,
            Ok(_) => {
                match watcher.ready(tokio::io::Interest::READABLE).await {
                    Ok(ready) if ready.is_read_closed() => return true,
                    Ok(_) => {}
                    Err(_) => return true,
                }
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Checks one whole frame, then lets pgwire decode exactly that frame (a copy holding
/// nothing else), and checks that it read all of it.
fn decode_checked<C: ClientInfo>(
    mut frame: BytesMut,
    kind: FrameKind,
    client: &C,
) -> Result<PgWireFrontendMessage, SqlError> {
    let mut context = DecodeContext::new(client.protocol_version());
    match kind {
        FrameKind::Startup => {
            frontend_frame::check_startup(&frame)?;
            context.awaiting_frontend_ssl = false;
        }
        FrameKind::Typed => {
            let authenticating = matches!(
                client.state(),
                PgWireConnectionState::AuthenticationInProgress
            );
            frontend_frame::check_message(&frame, authenticating)?;
            context.awaiting_frontend_ssl = false;
            context.awaiting_frontend_startup = false;
        }
    }
    let invalid = || SqlError::new(sqlstate::PROTOCOL_VIOLATION, "invalid message format");
    match PgWireFrontendMessage::decode(&mut frame, &context) {
        Ok(Some(message)) if frame.is_empty() => Ok(message),
        Ok(_) => Err(invalid()),
        Err(e) => Err(SqlError::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!("invalid message format: {e}"),
        )),
    }
}

struct Conn {
    server: Arc<SqlServer>,
    session: Mutex<Option<Session>>,
    /// (user, database) waiting for a password.
    pending: Mutex<Option<(String, String)>>,
    /// A SCRAM exchange after the client's first message: the server's state, and whether
    /// the user has a verifier (if not, the exchange runs on a random one and fails).
    scram: Mutex<Option<(ScramServerAuthWaitingForClientFinal, bool)>>,
    /// Names of the statements prepared with the extended protocol's Parse, so that
    /// `DEALLOCATE ALL` can forget them (the portal store cannot list them).
    prepared_names: std::sync::Mutex<BTreeSet<String>>,
    /// The `COPY … FROM STDIN` in progress, collecting the client's data.
    copy_in: std::sync::Mutex<Option<CopyIn>>,
    /// This connection's entry in [`CANCELS`] (from login to the end of the connection).
    cancel_key: std::sync::Mutex<Option<CancelRegistration>>,
    /// The session's cancel flag, once logged in.
    canceler: std::sync::Mutex<Option<Arc<crate::budget::Canceler>>>,
}

/// A `COPY … FROM STDIN` between its statement and the client's CopyDone.
struct CopyIn {
    spec: CopySpec,
    /// The target columns (the listed ones, or every visible column).
    columns: Vec<String>,
    data: Vec<u8>,
    /// Set when the data outgrew [`COPY_MAX_BYTES`]: reported at CopyDone, like PostgreSQL,
    /// which reports errors only once the client has finished sending.
    failed: Option<SqlError>,
}

/// The most COPY data one statement takes (it is held in memory until CopyDone).
const COPY_MAX_BYTES: usize = 1 << 30;
/// Rows per INSERT when applying COPY data.
const COPY_BATCH_ROWS: usize = 1000;

/// The handlers of one connection (pgwire asks a factory per connection).
pub struct Handlers {
    handler: Arc<ConnHandler>,
}

impl Handlers {
    pub fn new(server: Arc<SqlServer>) -> Handlers {
        let conn = Arc::new(Conn {
            server,
            session: Mutex::new(None),
            pending: Mutex::new(None),
            scram: Mutex::new(None),
            prepared_names: std::sync::Mutex::new(BTreeSet::new()),
            copy_in: std::sync::Mutex::new(None),
            cancel_key: std::sync::Mutex::new(None),
            canceler: std::sync::Mutex::new(None),
        });
        Handlers {
            handler: Arc::new(ConnHandler {
                parser: Arc::new(ConnParser { conn: conn.clone() }),
                conn,
            }),
        }
    }
}

/// Logged-in connections by (process id, secret key) as BackendKeyData gave them, for
/// CancelRequests (psql's Ctrl-C opens a new connection and sends one).
static CANCELS: std::sync::LazyLock<
    std::sync::Mutex<HashMap<(i32, i32), std::sync::Weak<crate::budget::Canceler>>>,
> = std::sync::LazyLock::new(Default::default);

/// A connection's entry in [`CANCELS`], removed when the connection ends.
struct CancelRegistration {
    key: (i32, i32),
}

impl CancelRegistration {
    /// Registers `canceler` under a fresh (process id, secret key).
    fn new(canceler: &Arc<crate::budget::Canceler>) -> CancelRegistration {
        let mut map = CANCELS.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let key = (
                (std::process::id() as i32 ^ rand::random::<i32>()).abs(),
                rand::random::<i32>(),
            );
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(key) {
                e.insert(Arc::downgrade(canceler));
                return CancelRegistration { key };
            }
        }
    }
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        CANCELS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Answers CancelRequests: the statement running on the connection with that process id and
/// secret key stops with 57014 `query execution canceled` (a read wherever it waits, a write
/// at its next check). Unknown keys are ignored, as PostgreSQL ignores them.
struct CancelRequests;

#[async_trait]
impl pgwire::api::cancel::CancelHandler for CancelRequests {
    async fn on_cancel_request(&self, request: pgwire::messages::cancel::CancelRequest) {
        // The key arrives as the 4 bytes BackendKeyData sent (decoded as bytes or as an
        // integer, depending on what pgwire knows of the cancel connection's protocol).
        let Ok(bytes) = <[u8; 4]>::try_from(request.secret_key.to_bytes().as_ref()) else {
            return;
        };
        let secret = i32::from_be_bytes(bytes);
        let canceler = CANCELS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(request.pid, secret))
            .and_then(std::sync::Weak::upgrade);
        if let Some(c) = canceler {
            debug!(pid = request.pid, "cancel request");
            c.cancel();
        }
    }
}

impl Handlers {
    /// The logged-in session's cancel flag (`None` before login).
    fn canceler(&self) -> Option<Arc<crate::budget::Canceler>> {
        self.handler.canceler()
    }
}

impl PgWireServerHandlers for Handlers {
    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(CancelRequests)
    }

    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.handler.clone()
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.handler.clone()
    }
}

struct ConnHandler {
    conn: Arc<Conn>,
    parser: Arc<ConnParser>,
}

/// The only SASL mechanism offered (no channel binding: SCRAM-SHA-256-PLUS is not offered).
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// An error that ends the connection during startup.
fn fatal(e: &SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e, "FATAL")))
}

/// A random verifier for users without one: the exchange proceeds as for a real user (so
/// the client cannot tell) and fails.
fn decoy_secret() -> ScramSecret {
    ScramSecret::Verifier {
        salt: rand::random::<[u8; 16]>().to_vec(),
        iterations: crate::catalog::SCRAM_ITERATIONS,
        stored_key: rand::random::<[u8; 32]>().to_vec(),
        server_key: rand::random::<[u8; 32]>().to_vec(),
    }
}

fn user_error(e: &SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e, "ERROR")))
}

/// A statement's error as a response (the connection goes on).
fn error_response(e: &SqlError) -> Response {
    Response::Error(Box::new(error_info(e, "ERROR")))
}

fn error_info(e: &SqlError, severity: &str) -> ErrorInfo {
    let mut info = ErrorInfo::new(severity.to_string(), e.code().to_string(), e.message());
    info.detail = e.detail().map(String::from);
    info.hint = e.hint().map(String::from);
    info
}

struct Params {
    user: String,
    application_name: Option<String>,
    is_superuser: bool,
}

impl ServerParameterProvider for Params {
    fn server_parameters<C>(&self, _client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let mut p = HashMap::new();
        p.insert("server_version".into(), SERVER_VERSION.into());
        p.insert("server_encoding".into(), "UTF8".into());
        p.insert("client_encoding".into(), "UTF8".into());
        p.insert("DateStyle".into(), "ISO, MDY".into());
        p.insert("IntervalStyle".into(), "postgres".into());
        p.insert("integer_datetimes".into(), "on".into());
        p.insert("standard_conforming_strings".into(), "on".into());
        p.insert("TimeZone".into(), "UTC".into());
        p.insert(
            "application_name".into(),
            self.application_name.clone().unwrap_or_default(),
        );
        p.insert(
            "is_superuser".into(),
            if self.is_superuser { "on" } else { "off" }.into(),
        );
        p.insert("session_authorization".into(), self.user.clone());
        p.insert("crdb_version".into(), crate::expr::SERVER_VERSION.into());
        Some(p)
    }
}

impl ConnHandler {
    async fn finish_login<C>(
        &self,
        client: &mut C,
        user: String,
        database: String,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self
            .conn
            .server
            .session(&user, &database)
            .await
            .map_err(|e| PgWireError::UserError(Box::new(error_info(&e, "FATAL"))))?;
        let is_superuser = session
            .vars
            .get("is_superuser")
            .map(|v| v == "on")
            .unwrap_or(false);
        let application_name = client.metadata().get("application_name").cloned();
        let mut session = session;
        if let Some(app) = &application_name {
            let _ = session.vars.set("application_name", app);
        }
        let canceler = Arc::new(crate::budget::Canceler::default());
        session.set_canceler(canceler.clone());
        let registration = CancelRegistration::new(&canceler);
        client.set_pid_and_secret_key(registration.key.0, SecretKey::I32(registration.key.1));
        *self
            .conn
            .cancel_key
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(registration);
        *self.conn.canceler.lock().unwrap_or_else(|p| p.into_inner()) = Some(canceler);
        *self.conn.session.lock().await = Some(session);
        finish_authentication(
            client,
            &Params {
                user,
                application_name,
                is_superuser,
            },
        )
        .await
    }
}

impl ConnHandler {
    /// A login on a secure node: TLS is required; a client certificate for the user logs in
    /// at once, anyone else gets a SCRAM-SHA-256 challenge.
    async fn start_secure_login<C>(
        &self,
        client: &mut C,
        user: String,
        database: String,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !client.is_secure() {
            debug!(%user, "refusing a plain-text login on a secure node");
            return Err(fatal(
                &SqlError::new(
                    sqlstate::INVALID_AUTHORIZATION,
                    format!(
                        "no pg_hba.conf entry for host \"{}\", user \"{user}\", database \"{database}\", no encryption",
                        client.socket_addr().ip()
                    ),
                )
                .with_hint("This node runs in secure mode: connect with sslmode=verify-full (or require)."),
            ));
        }
        let certificate_user = client
            .client_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| ldr_security::certs::common_name(cert.as_ref()));
        if certificate_user.as_deref() == Some(user.as_str()) {
            self.conn
                .server
                .login_record(&user)
                .await
                .map_err(|e| fatal(&e))?;
            return self.finish_login(client, user, database).await;
        }
        *self.conn.pending.lock().await = Some((user, database));
        client.set_state(PgWireConnectionState::AuthenticationInProgress);
        client
            .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                vec![SCRAM_SHA_256.to_string()],
            )))
            .await?;
        Ok(())
    }

    /// The client's first SCRAM message: answer with the salt, iterations and nonce.
    async fn scram_first<C>(
        &self,
        client: &mut C,
        user: &str,
        message: PasswordMessageFamily,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let initial = message.into_sasl_initial_response()?;
        if initial.auth_method != SCRAM_SHA_256 {
            return Err(fatal(&SqlError::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "unsupported SASL mechanism {:?}: only {SCRAM_SHA_256} is offered",
                    initial.auth_method
                ),
            )));
        }
        let Some(data) = initial.data else {
            return Err(fatal(&SqlError::new(
                sqlstate::PROTOCOL_VIOLATION,
                "malformed SCRAM message: empty client-first message",
            )));
        };
        let record = self
            .conn
            .server
            .catalog()
            .user(user)
            .await
            .map_err(|e| fatal(&e))?;
        let (secret, known) = match record.as_ref().and_then(|r| r.scram_secret()) {
            Some(v) => (
                ScramSecret::Verifier {
                    salt: v.salt,
                    iterations: v.iterations,
                    stored_key: v.stored_key,
                    server_key: v.server_key,
                },
                true,
            ),
            None => (decoy_secret(), false),
        };
        let (server_first, waiting) = ScramServerAuth::new()
            .on_client_first_message_with_secret(&data, secret)
            .map_err(|e| {
                fatal(&SqlError::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("malformed SCRAM message: {e}"),
                ))
            })?;
        *self.conn.scram.lock().await = Some((waiting, known));
        client
            .send(PgWireBackendMessage::Authentication(
                Authentication::SASLContinue(server_first.into()),
            ))
            .await?;
        Ok(())
    }
}

#[async_trait]
impl StartupHandler for ConnHandler {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_else(|| "root".into())
                    .to_lowercase();
                let database = client
                    .metadata()
                    .get(METADATA_DATABASE)
                    .cloned()
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "defaultdb".into());
                if self.conn.server.requires_password() {
                    return self.start_secure_login(client, user, database).await;
                }
                self.conn
                    .server
                    .authenticate(&user, None)
                    .await
                    .map_err(|e| fatal(&e))?;
                self.finish_login(client, user, database).await
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let Some((user, database)) = self.conn.pending.lock().await.clone() else {
                    return Err(PgWireError::NoAuthenticationInProgress);
                };
                let waiting = self.conn.scram.lock().await.take();
                match waiting {
                    None => self.scram_first(client, &user, message).await,
                    Some((waiting, known)) => {
                        self.conn.pending.lock().await.take();
                        let response = message.into_sasl_response()?;
                        let server_final = match waiting.on_client_final_message(&response.data) {
                            Ok(server_final) if known => server_final,
                            Ok(_) | Err(PgWireError::InvalidPassword(_)) => {
                                debug!(%user, "password authentication failed");
                                return Err(fatal(&crate::exec::password_failed(&user)));
                            }
                            Err(e) => {
                                return Err(fatal(&SqlError::new(
                                    sqlstate::PROTOCOL_VIOLATION,
                                    format!("malformed SCRAM message: {e}"),
                                )));
                            }
                        };
                        self.conn
                            .server
                            .login_record(&user)
                            .await
                            .map_err(|e| fatal(&e))?;
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLFinal(server_final.into()),
                            ))
                            .await?;
                        self.finish_login(client, user, database).await
                    }
                }
            }
            _ => Ok(()),
        }
    }
}

fn pg_type(ty: &SqlType) -> Type {
    Type::from_oid(ty.oid()).unwrap_or(Type::TEXT)
}

fn field_infos(columns: &[ColumnInfo], format: Option<&Format>) -> Vec<FieldInfo> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let fmt = match format {
                Some(f) => f.format_for(i),
                None => FieldFormat::Text,
            };
            FieldInfo::new(c.name.clone(), None, None, pg_type(&c.ty), fmt)
                .with_type_size(c.ty.type_size())
                .with_type_modifier(c.ty.type_modifier())
        })
        .collect()
}

fn encode_rows(
    result: &QueryResult,
    fields: &[FieldInfo],
    tz: i32,
) -> PgWireResult<Vec<PgWireResult<DataRow>>> {
    let mut out = Vec::with_capacity(result.rows.len());
    for row in &result.rows {
        let data = encode_row(row, &result.columns, fields, tz).map_err(|e| user_error(&e))?;
        out.push(Ok(data));
    }
    Ok(out)
}

/// One row in the formats `fields` ask for.
fn encode_row(
    row: &[Datum],
    columns: &[ColumnInfo],
    fields: &[FieldInfo],
    tz: i32,
) -> Result<DataRow, SqlError> {
    let mut buf = BytesMut::with_capacity(64);
    for (i, d) in row.iter().enumerate() {
        let ty = columns.get(i).map(|c| &c.ty).unwrap_or(&SqlType::String);
        let binary = fields
            .get(i)
            .is_some_and(|f| f.format() == FieldFormat::Binary);
        match wire::encode(d, ty, binary, tz)? {
            None => buf.put_i32(-1),
            Some(bytes) => {
                buf.put_i32(bytes.len() as i32);
                buf.put_slice(&bytes);
            }
        }
    }
    Ok(DataRow::new(buf, row.len() as i16))
}

fn tag_of(result: &QueryResult) -> Tag {
    let t = Tag::new(&result.tag);
    match (result.tag.as_str(), result.rows_affected) {
        ("INSERT", Some(n)) => t.with_oid(0).with_rows(n),
        (_, Some(n)) => t.with_rows(n),
        _ => t,
    }
}

/// Turns a statement result into pgwire's response. A streamed result becomes a response
/// whose rows pgwire sends as they come but flushes only with the statement's end: the
/// connection's own paths take the stream first ([`Streamed::take`]) and send it with
/// [`send_streamed`], which flushes every row.
fn to_response(
    mut result: QueryResult,
    format: Option<&Format>,
    tz: i32,
) -> PgWireResult<Response> {
    if let Some(streamed) = Streamed::take(&mut result, format, tz) {
        return Ok(Response::Query(streamed.into_response()));
    }
    if result.returns_rows {
        let fields = Arc::new(field_infos(&result.columns, format));
        let rows = encode_rows(&result, &fields, tz)?;
        let mut qr = QueryResponse::new(fields, stream::iter(rows));
        if result.tag == "INSERT" {
            qr.set_command_tag("INSERT 0");
        } else if result.tag != "SELECT" {
            qr.set_command_tag(&result.tag);
        }
        return Ok(Response::Query(qr));
    }
    let tag = tag_of(&result);
    Ok(match result.txn {
        TxnEffect::Began => Response::TransactionStart(tag),
        TxnEffect::Ended => Response::TransactionEnd(tag),
        TxnEffect::None => Response::Execution(tag),
    })
}

async fn with_session<T>(conn: &Conn, f: impl AsyncFnOnce(&mut Session) -> T) -> PgWireResult<T> {
    let mut guard = conn.session.lock().await;
    let session = guard.as_mut().ok_or_else(|| {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "FATAL".into(),
            "08P01".into(),
            "no session: the startup did not complete".into(),
        )))
    })?;
    Ok(f(session).await)
}

/// One statement's answer in a simple query: the warnings to send before it, then it.
struct Answer {
    notices: Vec<PgError>,
    response: Response,
    /// Rows still to come (a sinkless changefeed): sent after `response`'s place, which is
    /// then unused.
    streamed: Option<Streamed>,
}

impl Answer {
    fn plain(response: Response) -> Answer {
        Answer {
            notices: vec![],
            response,
            streamed: None,
        }
    }
}

/// A streamed result ready to send: its rows, their columns and wire formats.
struct Streamed {
    rows: RowStream,
    columns: Vec<ColumnInfo>,
    fields: Arc<Vec<FieldInfo>>,
    tz: i32,
}

impl Streamed {
    /// The stream of a result that has one, with the formats the client asked for.
    fn take(result: &mut QueryResult, format: Option<&Format>, tz: i32) -> Option<Streamed> {
        let rows = result.stream.take()?;
        Some(Streamed {
            rows,
            fields: Arc::new(field_infos(&result.columns, format)),
            columns: std::mem::take(&mut result.columns),
            tz,
        })
    }

    /// As pgwire's response (rows sent as they come, flushed at the end): only for callers
    /// outside the connection's own paths (see [`to_response`]).
    fn into_response(self) -> QueryResponse {
        let Streamed {
            rows,
            columns,
            fields,
            tz,
        } = self;
        let row_fields = fields.clone();
        let data = stream::unfold(rows, move |mut rows| {
            let columns = columns.clone();
            let fields = row_fields.clone();
            async move {
                let row = rows.next().await?;
                let data = row
                    .and_then(|row| encode_row(&row, &columns, &fields, tz))
                    .map_err(|e| user_error(&e));
                Some((data, rows))
            }
        });
        QueryResponse::new(fields, data)
    }
}

/// Sends a streamed result: the rows as they arrive, each flushed to the client as soon as
/// no further row is waiting (a live changefeed's rows must not sit in a buffer), then
/// CommandComplete with the count. It stops early when the connection's statement is
/// canceled (a CancelRequest, or the client disconnecting: 57014) or its `statement_timeout`
/// passes; the stream is dropped before anything else is sent, which stops its producer.
/// Returns the error that ended the rows, for the caller to report after them (an
/// ErrorResponse in place of CommandComplete). A slow client makes `feed` wait, and with it
/// the producer (its channel is bounded): nothing is buffered beyond that.
async fn send_streamed<C>(
    client: &mut C,
    streamed: Streamed,
    send_describe: bool,
    canceler: Option<Arc<crate::budget::Canceler>>,
) -> PgWireResult<Option<SqlError>>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let Streamed {
        mut rows,
        columns,
        fields,
        tz,
    } = streamed;
    if send_describe {
        let description = RowDescription::new(fields.iter().map(Into::into).collect());
        client
            .feed(PgWireBackendMessage::RowDescription(description))
            .await?;
    }
    let deadline = rows.deadline();
    let canceled = async move {
        match canceler {
            Some(c) => c.canceled().await,
            None => std::future::pending().await,
        }
    };
    let timeout = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(canceled);
    tokio::pin!(timeout);
    let mut sent = 0usize;
    let ended: Option<SqlError> = loop {
        let next = match rows.try_next() {
            Ok(Some(row)) => Some(row),
            Err(()) => None,
            Ok(None) => {
                // Nothing waiting: what was fed reaches the client before we wait.
                tokio::select! {
                    r = client.flush() => r?,
                    _ = &mut canceled => break Some(crate::budget::query_canceled()),
                    _ = &mut timeout => break Some(crate::budget::statement_timeout()),
                }
                tokio::select! {
                    row = rows.next() => row,
                    _ = &mut canceled => break Some(crate::budget::query_canceled()),
                    _ = &mut timeout => break Some(crate::budget::statement_timeout()),
                }
            }
        };
        let row = match next {
            None => break None,
            Some(Err(e)) => break Some(e),
            Some(Ok(row)) => row,
        };
        let data = match encode_row(&row, &columns, &fields, tz) {
            Ok(data) => data,
            Err(e) => break Some(e),
        };
        tokio::select! {
            r = client.feed(PgWireBackendMessage::DataRow(data)) => r?,
            _ = &mut canceled => break Some(crate::budget::query_canceled()),
            _ = &mut timeout => break Some(crate::budget::statement_timeout()),
        }
        sent += 1;
    };
    drop(rows);
    if ended.is_none() {
        let tag = Tag::new("SELECT").with_rows(sent);
        client
            .feed(PgWireBackendMessage::CommandComplete(tag.into()))
            .await?;
    }
    Ok(ended)
}

/// A query string of only semicolons and whitespace is empty (PostgreSQL answers it with
/// EmptyQueryResponse without running anything).
fn is_empty_query(query: &str) -> bool {
    query.chars().all(|c| c == ';' || c.is_whitespace())
}

/// The ReadyForQuery status of a session's transaction block.
fn wire_status(status: TxnStatus) -> TransactionStatus {
    match status {
        TxnStatus::Idle => TransactionStatus::Idle,
        TxnStatus::InTransaction => TransactionStatus::Transaction,
        TxnStatus::Failed => TransactionStatus::Error,
    }
}

/// PostgreSQL's NoticeResponse for a warning.
fn notice(n: &PgError) -> PgWireBackendMessage {
    let mut info = ErrorInfo::new("WARNING".into(), n.code.into(), n.message.clone());
    info.detail = n.detail.clone();
    info.hint = n.hint.clone();
    PgWireBackendMessage::NoticeResponse(info.into())
}

/// The transaction status every ReadyForQuery reports comes from the session, never from
/// pgwire's own bookkeeping (which infers it from the responses and gets a failed COMMIT
/// wrong: it would report `E` for a block that is over). Any error reported to the client
/// aborts an open block first, as in PostgreSQL, also one that never reached the executor.
impl ConnHandler {
    /// The logged-in session's cancel flag (`None` before login).
    fn canceler(&self) -> Option<Arc<crate::budget::Canceler>> {
        self.conn
            .canceler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The session's transaction status as ReadyForQuery reports it.
    async fn txn_status(&self) -> TransactionStatus {
        let guard = self.conn.session.lock().await;
        wire_status(guard.as_ref().map_or(TxnStatus::Idle, Session::txn_status))
    }

    /// An error went to the client: an open transaction block is aborted.
    async fn abort_txn(&self) {
        if let Some(s) = self.conn.session.lock().await.as_mut() {
            s.abort_txn();
        }
    }

    /// Records the session's status as the client's, for the ReadyForQuery pgwire sends
    /// itself (after COPY, or after an error it reports).
    async fn sync_status<C: ClientInfo>(&self, client: &mut C) {
        client.set_transaction_status(self.txn_status().await);
    }

    /// Runs a simple query string: one answer per statement run, stopping at the first error.
    async fn simple_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Answer>>
    where
        C: ClientPortalStore,
        C::PortalStore: PortalStore,
    {
        if let Some(spec) = crate::copy::parse_copy(query) {
            return Ok(vec![Answer::plain(self.start_copy(spec).await?)]);
        }
        if let Some(target) = parse_deallocate(query) {
            return Ok(vec![Answer::plain(
                self.deallocate(client.portal_store(), target),
            )]);
        }
        let (results, tz) = with_session(&self.conn, async |s: &mut Session| {
            // Boxed: the executor's future is deep, and nesting it inline in this one and in
            // `on_query`'s overflows the compiler's layout depth limit.
            let r = Box::pin(s.execute(query)).await;
            (r, s.vars.tz_offset_secs)
        })
        .await?;
        if results.is_empty() {
            // Only comments: PostgreSQL answers with an empty query response.
            return Ok(vec![Answer::plain(Response::EmptyQuery)]);
        }
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(mut result) => {
                    let notices = std::mem::take(&mut result.notices);
                    if let Some(streamed) = Streamed::take(&mut result, None, tz) {
                        out.push(Answer {
                            notices,
                            response: Response::EmptyQuery,
                            streamed: Some(streamed),
                        });
                        continue;
                    }
                    out.push(Answer {
                        notices,
                        response: to_response(result, None, tz)?,
                        streamed: None,
                    });
                }
                Err(e) => {
                    debug!(code = e.code(), error = %e.message(), "statement failed");
                    out.push(Answer::plain(error_response(&e)));
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Sends a simple query's answers as pgwire's default `on_query` does, each statement's
    /// warnings before its CommandComplete.
    async fn send_answers<C>(&self, client: &mut C, answers: Vec<Answer>) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        for answer in answers {
            for n in &answer.notices {
                client.feed(notice(n)).await?;
            }
            if let Some(streamed) = answer.streamed {
                if let Some(e) = send_streamed(client, streamed, true, self.canceler()).await? {
                    debug!(code = e.code(), error = %e.message(), "streamed statement ended with an error");
                    client
                        .feed(PgWireBackendMessage::ErrorResponse(
                            error_info(&e, "ERROR").into(),
                        ))
                        .await?;
                    self.abort_txn().await;
                    break;
                }
                continue;
            }
            match answer.response {
                Response::EmptyQuery => {
                    client
                        .feed(PgWireBackendMessage::EmptyQueryResponse(
                            EmptyQueryResponse::new(),
                        ))
                        .await?;
                }
                Response::Query(results) => send_query_response(client, results, true).await?,
                Response::Execution(tag)
                | Response::TransactionStart(tag)
                | Response::TransactionEnd(tag) => send_execution_response(client, tag).await?,
                Response::Error(e) => {
                    client
                        .feed(PgWireBackendMessage::ErrorResponse((*e).into()))
                        .await?;
                    self.abort_txn().await;
                }
                Response::CopyIn(result) => {
                    send_copy_in_response(client, result).await?;
                    client.set_state(PgWireConnectionState::CopyInProgress(false));
                }
                Response::CopyOut(result) => send_copy_out_response(client, result).await?,
                Response::CopyBoth(result) => {
                    send_copy_both_response(client, result).await?;
                    client.set_state(PgWireConnectionState::CopyInProgress(false));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl SimpleQueryHandler for ConnHandler {
    /// pgwire's default `on_query`, except that ReadyForQuery reports the session's
    /// transaction status and that warnings (NoticeResponse) precede their statement's
    /// CommandComplete.
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        if is_empty_query(&query.query) {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
        } else {
            // A cancel request stops the running statement inside the session (57014).
            let answers = match self.simple_query(client, &query.query).await {
                Ok(answers) => answers,
                Err(e) => {
                    // pgwire reports it (and a ReadyForQuery from the client's status).
                    self.abort_txn().await;
                    self.sync_status(client).await;
                    return Err(e);
                }
            };
            self.send_answers(client, answers).await?;
        }
        self.sync_status(client).await;
        if !matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
            // During COPY FROM STDIN, `on_copy_done` / `on_copy_fail` end the query.
            client.set_state(PgWireConnectionState::ReadyForQuery);
            let status = client.transaction_status();
            send_ready_for_query(client, status).await?;
        }
        Ok(())
    }

    /// Not called by pgwire (`on_query` above runs the query); the answers without their
    /// warnings.
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let answers = self.simple_query(client, query).await?;
        Ok(answers
            .into_iter()
            .map(|a| match a.streamed {
                Some(streamed) => Response::Query(streamed.into_response()),
                None => a.response,
            })
            .collect())
    }
}

/// The target of `DEALLOCATE [PREPARE] { name | ALL }`.
#[derive(Debug, PartialEq)]
enum Deallocate {
    All,
    Named(String),
}

/// Recognizes a lone `DEALLOCATE` statement. Drivers (psycopg among them) send it as a simple
/// query to free statements they prepared with the extended protocol, which live in the
/// connection's portal store rather than in the SQL session.
fn parse_deallocate(query: &str) -> Option<Deallocate> {
    let text = query.trim().trim_end_matches(';').trim();
    let mut words = text.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("DEALLOCATE") {
        return None;
    }
    let mut target = words.next()?;
    if target.eq_ignore_ascii_case("PREPARE") {
        target = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    if target.eq_ignore_ascii_case("ALL") {
        return Some(Deallocate::All);
    }
    let name = match target.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => target.to_lowercase(),
    };
    Some(Deallocate::Named(name))
}

impl ConnHandler {
    fn deallocate(&self, store: &impl PortalStore, target: Deallocate) -> Response {
        let mut names = self
            .conn
            .prepared_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match target {
            Deallocate::All => {
                for name in std::mem::take(&mut *names) {
                    store.rm_statement(&name);
                }
                Response::Execution(Tag::new("DEALLOCATE ALL"))
            }
            Deallocate::Named(name) => {
                if !names.remove(&name) && store.get_statement(&name).is_none() {
                    let e = SqlError::new(
                        "26000",
                        format!("prepared statement \"{name}\" does not exist"),
                    );
                    return error_response(&e);
                }
                store.rm_statement(&name);
                Response::Execution(Tag::new("DEALLOCATE"))
            }
        }
    }
}

fn lock_copy(conn: &Conn) -> std::sync::MutexGuard<'_, Option<CopyIn>> {
    conn.copy_in
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ConnHandler {
    /// Checks the COPY target and switches the client to copy-in mode.
    async fn start_copy(&self, spec: crate::Result<CopySpec>) -> PgWireResult<Response> {
        let spec = match spec {
            Ok(spec) => spec,
            Err(e) => return Ok(error_response(&e)),
        };
        if let Some(query) = spec.to_query.clone() {
            return self.copy_out(&spec, &query).await;
        }
        let columns = if spec.columns.is_empty() {
            "*".to_string()
        } else {
            spec.columns.join(", ")
        };
        let probe = format!("SELECT {columns} FROM {} LIMIT 0", spec.table);
        let prepared = with_session(&self.conn, async |s: &mut Session| {
            s.prepare(&probe, &[]).await
        })
        .await?;
        let columns: Vec<String> = match prepared {
            Ok(p) => p.columns.into_iter().map(|c| c.name).collect(),
            Err(e) => return Ok(error_response(&e)),
        };
        let count = columns.len();
        *lock_copy(&self.conn) = Some(CopyIn {
            spec,
            columns,
            data: Vec::new(),
            failed: None,
        });
        Ok(Response::CopyIn(CopyResponse::new(
            0,
            count,
            stream::empty::<PgWireResult<CopyData>>(),
        )))
    }

    /// `COPY … TO STDOUT`: runs the query and sends one CopyData message per row.
    async fn copy_out(&self, spec: &CopySpec, query: &str) -> PgWireResult<Response> {
        let (results, tz) = with_session(&self.conn, async |s: &mut Session| {
            let r = s.execute(query).await;
            (r, s.vars.tz_offset_secs)
        })
        .await?;
        let result = match results.into_iter().next() {
            Some(Ok(result)) => result,
            Some(Err(e)) => return Ok(error_response(&e)),
            None => {
                let e = SqlError::new("42601", "COPY needs a query");
                return Ok(error_response(&e));
            }
        };
        let mut header = Vec::new();
        if spec.header {
            let names: Vec<Option<String>> = result
                .columns
                .iter()
                .map(|c| Some(c.name.clone()))
                .collect();
            crate::copy::format_row(spec, &names, &mut header);
        }
        let mut messages = Vec::with_capacity(result.rows.len() + 1);
        for (i, row) in result.rows.iter().enumerate() {
            let mut fields = Vec::with_capacity(row.len());
            for (c, datum) in row.iter().enumerate() {
                let ty = result
                    .columns
                    .get(c)
                    .map(|col| &col.ty)
                    .unwrap_or(&SqlType::String);
                let text = wire::encode(datum, ty, false, tz).map_err(|e| user_error(&e))?;
                fields.push(text.map(|b| String::from_utf8_lossy(&b).into_owned()));
            }
            let mut buf = if i == 0 {
                std::mem::take(&mut header)
            } else {
                Vec::new()
            };
            crate::copy::format_row(spec, &fields, &mut buf);
            messages.push(Ok(CopyData::new(buf.into())));
        }
        if !header.is_empty() {
            messages.push(Ok(CopyData::new(header.into())));
        }
        Ok(Response::CopyOut(CopyResponse::new(
            0,
            result.columns.len(),
            stream::iter(messages),
        )))
    }

    /// Parses the collected COPY data and inserts it, [`COPY_BATCH_ROWS`] rows per statement
    /// (each its own transaction unless the COPY runs inside an explicit one).
    async fn finish_copy(&self, copy: CopyIn) -> crate::Result<usize> {
        if let Some(e) = copy.failed {
            return Err(e);
        }
        let ncols = copy.columns.len();
        let rows = crate::copy::parse_rows(&copy.spec, &copy.data, ncols)?;
        let column_list: Vec<String> = copy
            .columns
            .iter()
            .map(|c| crate::datum::quote_ident(c))
            .collect();
        let column_list = column_list.join(", ");
        let first_line = 1 + usize::from(copy.spec.header);
        let mut inserted = 0;
        for (batch_index, batch) in rows.chunks(COPY_BATCH_ROWS).enumerate() {
            let tuples: Vec<String> = (0..batch.len())
                .map(|r| {
                    let params: Vec<String> =
                        (1..=ncols).map(|c| format!("${}", r * ncols + c)).collect();
                    format!("({})", params.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO {} ({column_list}) VALUES {}",
                copy.spec.table,
                tuples.join(", ")
            );
            let table = &copy.spec.table;
            let result = with_session(&self.conn, async |s: &mut Session| {
                let prepared = s.prepare(&sql, &[]).await?;
                let mut params = Vec::with_capacity(batch.len() * ncols);
                for (r, row) in batch.iter().enumerate() {
                    let line = first_line + batch_index * COPY_BATCH_ROWS + r;
                    for (c, field) in row.iter().enumerate() {
                        params.push(match field {
                            None => Datum::Null,
                            Some(text) => {
                                Datum::parse_text(text, &prepared.param_types[r * ncols + c])
                                    .map_err(|e| {
                                        e.with_detail(format!(
                                            "COPY {table}, line {line}, column {}",
                                            copy.columns[c]
                                        ))
                                    })?
                            }
                        });
                    }
                }
                s.execute_prepared(&prepared, params).await
            })
            .await
            .map_err(|e| SqlError::internal(e.to_string()))??;
            inserted += result.rows_affected.unwrap_or(batch.len());
        }
        Ok(inserted)
    }
}

#[async_trait]
impl CopyHandler for ConnHandler {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = lock_copy(&self.conn);
        let Some(copy) = guard.as_mut() else {
            return Err(user_error(&SqlError::new(
                "08P01",
                "CopyData without a COPY in progress",
            )));
        };
        if copy.failed.is_none() {
            if copy.data.len() + copy_data.data.len() > COPY_MAX_BYTES {
                copy.failed = Some(SqlError::new(
                    "54000",
                    format!(
                        "COPY data exceeds {} MiB; split it into several COPY statements",
                        COPY_MAX_BYTES >> 20
                    ),
                ));
                copy.data = Vec::new();
            } else {
                copy.data.extend_from_slice(&copy_data.data);
            }
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let copy = lock_copy(&self.conn).take().ok_or_else(|| {
            user_error(&SqlError::new(
                "08P01",
                "CopyDone without a COPY in progress",
            ))
        })?;
        let inserted = match self.finish_copy(copy).await {
            Ok(n) => n,
            Err(e) => {
                self.abort_txn().await;
                self.sync_status(client).await;
                return Err(user_error(&e));
            }
        };
        // pgwire sends the ReadyForQuery of a simple-protocol COPY with this status.
        self.sync_status(client).await;
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(inserted).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        lock_copy(&self.conn).take();
        self.abort_txn().await;
        self.sync_status(client).await;
        user_error(&SqlError::new(
            "57014",
            format!("COPY from stdin failed: {}", fail.message),
        ))
    }
}

/// Parses and describes statements for the extended protocol.
struct ConnParser {
    conn: Arc<Conn>,
}

#[async_trait]
impl QueryParser for ConnParser {
    type Statement = Arc<Prepared>;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if parse_deallocate(sql).is_some() || crate::copy::parse_copy(sql).is_some() {
            // Executed by the connection when the portal runs (see `do_query`): DEALLOCATE
            // against the portal store, COPY through copy mode.
            return Ok(Some(Arc::new(Prepared {
                sql: sql.to_string(),
                statement: None,
                param_types: Vec::new(),
                columns: Vec::new(),
            })));
        }
        let declared: Vec<Option<SqlType>> = types
            .iter()
            .map(|t| t.as_ref().and_then(|t| SqlType::from_oid(t.oid())))
            .collect();
        let prepared = with_session(&self.conn, async |s: &mut Session| {
            s.prepare(sql, &declared).await
        })
        .await?
        .map_err(|e| user_error(&e))?;
        if prepared.statement.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(prepared)))
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types.iter().map(pg_type).collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(field_infos(&stmt.columns, column_format))
    }
}

#[async_trait]
impl ExtendedQueryHandler for ConnHandler {
    type Statement = Arc<Prepared>;
    type QueryParser = ConnParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// As pgwire's default, and remembers the statement's name for `DEALLOCATE ALL`.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let parsed = match StoredStatement::parse(client, &message, self.query_parser()).await {
            Ok(parsed) => parsed,
            Err(e) => {
                self.abort_txn().await;
                self.sync_status(client).await;
                return Err(e);
            }
        };
        match parsed {
            Some(stmt) => client.portal_store().put_statement(Arc::new(stmt)),
            None => client.portal_store().put_empty_statement(&name),
        }
        if name != DEFAULT_NAME {
            self.conn
                .prepared_names
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(name);
        }
        client
            .send(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    /// pgwire's default; then the client's status is the session's (an error aborts an open
    /// block first). pgwire's own status bookkeeping would get a failed COMMIT wrong.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let r = match streaming_portal(client, &message) {
            Some(portal) => self.execute_streaming(client, &portal).await,
            None => self._on_execute(client, message).await,
        };
        if r.is_err() {
            self.abort_txn().await;
        }
        self.sync_status(client).await;
        r
    }

    /// pgwire's default; an error aborts an open block.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let r = self._on_describe(client, message).await;
        if r.is_err() {
            self.abort_txn().await;
            self.sync_status(client).await;
        }
        r
    }

    /// ReadyForQuery with the session's transaction status. Every handler above leaves the
    /// client's status equal to the session's; one that says `E` while the session's block
    /// is open means pgwire reported an error of its own (an unknown statement or portal in
    /// Bind, say), which aborts the block as in PostgreSQL.
    async fn on_sync<C>(&self, client: &mut C, _message: PgSync) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if client.transaction_status() == TransactionStatus::Error {
            self.abort_txn().await;
        }
        self.sync_status(client).await;
        client.portal_store().rm_portal(DEFAULT_NAME);
        let status = client.transaction_status();
        client
            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                status,
            )))
            .await?;
        client.flush().await?;
        Ok(())
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &target.statement;
        let params = stmt.param_types.iter().map(pg_type).collect();
        Ok(DescribeStatementResponse::new(
            params,
            field_infos(&stmt.columns, None),
        ))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(DescribePortalResponse::new(field_infos(
            &portal.statement.statement.columns,
            Some(&portal.result_column_format),
        )))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = portal.statement.statement.clone();
        let special = if prepared.statement.is_some() {
            None
        } else if let Some(target) = parse_deallocate(&prepared.sql) {
            Some(self.deallocate(client.portal_store(), target))
        } else if let Some(spec) = crate::copy::parse_copy(&prepared.sql) {
            Some(self.start_copy(spec).await?)
        } else {
            None
        };
        if let Some(response) = special {
            if matches!(response, Response::Error(_)) {
                self.abort_txn().await;
            }
            return Ok(response);
        }
        let params = portal_params(portal)?;
        let (result, tz) = with_session(&self.conn, async |s: &mut Session| {
            let r = s.execute_prepared(&prepared, params).await;
            (r, s.vars.tz_offset_secs)
        })
        .await?;
        match result {
            Ok(mut r) => {
                for n in std::mem::take(&mut r.notices) {
                    client.feed(notice(&n)).await?;
                }
                to_response(r, Some(&portal.result_column_format), tz)
            }
            Err(e) => Err(user_error(&e)),
        }
    }
}

/// A portal's parameters, decoded as its statement's parameter types.
fn portal_params(portal: &Portal<Arc<Prepared>>) -> PgWireResult<Vec<Datum>> {
    let prepared = &portal.statement.statement;
    let mut params = Vec::with_capacity(portal.parameters.len());
    for (i, p) in portal.parameters.iter().enumerate() {
        let ty = prepared
            .param_types
            .get(i)
            .cloned()
            .unwrap_or(SqlType::String);
        match p {
            None => params.push(Datum::Null),
            Some(bytes) => {
                let binary = portal.parameter_format.is_binary(i);
                params.push(wire::decode_param(bytes, &ty, binary).map_err(|e| user_error(&e))?);
            }
        }
    }
    Ok(params)
}

/// The portal an Execute names, if its statement streams its rows (a sinkless changefeed):
/// such a portal runs in [`ConnHandler::execute_streaming`], not in pgwire's `_on_execute`,
/// whose loop would hold the rows in the connection's buffer until the statement ends.
fn streaming_portal<C>(client: &C, message: &Execute) -> Option<Arc<Portal<Arc<Prepared>>>>
where
    C: ClientPortalStore,
    C::PortalStore: PortalStore<Statement = Arc<Prepared>>,
{
    let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
    match client.portal_store().get_portal(name)? {
        Entry::Value(portal) => {
            let streams = matches!(
                &portal.statement.statement.statement,
                Some(crate::parser::Statement::CreateChangefeed(c)) if c.sink.is_none()
            );
            streams.then_some(portal)
        }
        Entry::Empty => None,
    }
}

impl ConnHandler {
    /// Executes a portal whose rows stream ([`streaming_portal`]): runs the statement, then
    /// sends its rows as they arrive. `max_rows` is not honoured: the rows go on until the
    /// statement ends (no PortalSuspended), as drivers that stream rows expect (they ask for
    /// all rows; a changefeed runs outside transaction blocks, where JDBC does not fetch in
    /// batches). An error after rows is reported after them; the caller aborts the block
    /// and pgwire then waits for Sync.
    async fn execute_streaming<C>(
        &self,
        client: &mut C,
        portal: &Portal<Arc<Prepared>>,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let prepared = portal.statement.statement.clone();
        let params = portal_params(portal)?;
        let (result, tz) = with_session(&self.conn, async |s: &mut Session| {
            let r = s.execute_prepared(&prepared, params).await;
            (r, s.vars.tz_offset_secs)
        })
        .await?;
        let mut result = result.map_err(|e| user_error(&e))?;
        for n in std::mem::take(&mut result.notices) {
            client.feed(notice(&n)).await?;
        }
        match Streamed::take(&mut result, Some(&portal.result_column_format), tz) {
            Some(streamed) => {
                if let Some(e) = send_streamed(client, streamed, false, self.canceler()).await? {
                    debug!(code = e.code(), error = %e.message(), "streamed statement ended with an error");
                    return Err(user_error(&e));
                }
            }
            None => match to_response(result, Some(&portal.result_column_format), tz)? {
                Response::Query(rows) => send_query_response(client, rows, false).await?,
                Response::Execution(tag)
                | Response::TransactionStart(tag)
                | Response::TransactionEnd(tag) => send_execution_response(client, tag).await?,
                _ => {}
            },
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }
}

#[cfg(test)]
mod deallocate_tests {
    use super::{Deallocate, parse_deallocate};

    #[test]
    fn parses_deallocate_forms() {
        assert_eq!(parse_deallocate("DEALLOCATE ALL"), Some(Deallocate::All));
        assert_eq!(
            parse_deallocate(" deallocate prepare all ; "),
            Some(Deallocate::All)
        );
        assert_eq!(
            parse_deallocate("DEALLOCATE _pg3_0"),
            Some(Deallocate::Named("_pg3_0".into()))
        );
        assert_eq!(
            parse_deallocate("DEALLOCATE PREPARE \"My\"\"Stmt\""),
            Some(Deallocate::Named("My\"Stmt".into()))
        );
        assert_eq!(
            parse_deallocate("DEALLOCATE Foo"),
            Some(Deallocate::Named("foo".into()))
        );
        assert_eq!(parse_deallocate("DEALLOCATE"), None);
        assert_eq!(parse_deallocate("DEALLOCATE a b"), None);
        assert_eq!(parse_deallocate("SELECT 1"), None);
        assert_eq!(parse_deallocate("DEALLOCATE a; SELECT 1"), None);
    }
}
