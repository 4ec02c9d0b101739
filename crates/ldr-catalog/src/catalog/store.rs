//! The catalog store: descriptors, users and external connections in the system keyspace,
//! with a node-local cache of descriptors that is dropped whenever the cluster's catalog
//! generation moves (every DDL bumps it and tells the other nodes).
//!
//! Layout (system subspaces):
//! - `sql_databases`: database name → [`DatabaseDescriptor`] JSON
//! - `sql_descriptors`: table id (u32 BE) → [`TableDescriptor`] JSON
//! - `sql_namespace`: `<database id>/<schema>/<table>` → table id (decimal text)
//! - `sql_users`: user name → [`UserRecord`] JSON
//! - `sql_external_connections`: name → [`ExternalConnection`] JSON
//! - counter `sql_descriptor_id`: ids of databases and tables (user objects start at 100)
//!
//! Names are claimed with a compare-and-put before the object is written, so concurrent
//! creators of one name see exactly one winner.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ldr_kv::KvClient;
use ldr_types::TableId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::descriptor::{DatabaseDescriptor, DatabaseId, TableDescriptor};
use crate::error::{Result, SqlError, sqlstate};

pub const DATABASES: &str = "sql_databases";
pub const DESCRIPTORS: &str = "sql_descriptors";
pub const NAMESPACE: &str = "sql_namespace";
pub const USERS: &str = "sql_users";
pub const EXTERNAL_CONNECTIONS: &str = "sql_external_connections";
const DESCRIPTOR_ID_COUNTER: &str = "sql_descriptor_id";
/// Ids below this are reserved (CockroachDB's user descriptors start above 100 too).
const FIRST_USER_ID: i64 = 100;

/// A SQL user (or role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// `sha256(salt ++ password)` as hex, with its salt; `None`: no password.
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub password_salt: Option<String>,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64), PostgreSQL's
    /// format; `None`: no password.
    #[serde(default)]
    pub scram_verifier: Option<String>,
    #[serde(default = "default_true")]
    pub login: bool,
    /// System privileges (`REPLICATION`, `VIEWJOB`, …), upper-case.
    #[serde(default)]
    pub system_privileges: BTreeSet<String>,
    /// Roles this user is a member of (`admin`).
    #[serde(default)]
    pub roles: BTreeSet<String>,
}

fn default_true() -> bool {
    true
}

impl UserRecord {
    pub fn new(name: &str) -> UserRecord {
        UserRecord {
            name: name.to_string(),
            password_hash: None,
            password_salt: None,
            scram_verifier: None,
            login: true,
            system_privileges: BTreeSet::new(),
            roles: BTreeSet::new(),
        }
    }

    /// Sets or clears the password. Only a salted SCRAM-SHA-256 verifier is kept (as
    /// PostgreSQL stores it), never the password.
    pub fn set_password(&mut self, password: Option<&str>) {
        self.password_hash = None;
        self.password_salt = None;
        self.scram_verifier = password.map(scram_verifier);
    }

    /// Whether the user has a password.
    pub fn has_password(&self) -> bool {
        self.scram_verifier.is_some() || self.password_hash.is_some()
    }

    /// Checks a cleartext password (replication streams send one over TLS).
    pub fn check_password(&self, password: &str) -> bool {
        if let Some(v) = self.scram_secret() {
            return verifier_matches(&v, password);
        }
        match (&self.password_hash, &self.password_salt) {
            (Some(h), Some(s)) => hash_password(s, password) == *h,
            _ => false,
        }
    }

    /// The SCRAM secret of the user's password, for a SCRAM-SHA-256 login.
    pub fn scram_secret(&self) -> Option<ScramVerifier> {
        self.scram_verifier
            .as_deref()
            .and_then(parse_scram_verifier)
    }

    pub fn is_admin(&self) -> bool {
        self.name == "root" || self.name == "admin" || self.roles.contains("admin")
    }
}

/// PBKDF2 iterations of new verifiers (PostgreSQL's `scram_iterations` default).
pub const SCRAM_ITERATIONS: usize = 4096;
const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// A parsed SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: usize,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn derive_verifier(password: &str, salt: Vec<u8>, iterations: usize) -> ScramVerifier {
    use pgwire::api::auth::sasl::scram::{ScramSecret, gen_salted_password};
    let salted = gen_salted_password(password, &salt, iterations);
    match ScramSecret::verifier_from_salted_password(salt, salted, iterations) {
        ScramSecret::Verifier {
            salt,
            iterations,
            stored_key,
            server_key,
        } => ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        },
        ScramSecret::SaltedPassword { .. } => {
            unreachable!("verifier_from_salted_password returns a verifier")
        }
    }
}

/// A new verifier of `password` with a random 16-byte salt.
pub fn scram_verifier(password: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let v = derive_verifier(
        password,
        rand::random::<[u8; 16]>().to_vec(),
        SCRAM_ITERATIONS,
    );
    format!(
        "{SCRAM_PREFIX}{}:{}${}:{}",
        v.iterations,
        b64.encode(&v.salt),
        b64.encode(&v.stored_key),
        b64.encode(&v.server_key)
    )
}

/// Parses PostgreSQL's verifier text; `None` if it is not one.
pub fn parse_scram_verifier(text: &str) -> Option<ScramVerifier> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let rest = text.strip_prefix(SCRAM_PREFIX)?;
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    let v = ScramVerifier {
        iterations: iterations
            .parse()
            .ok()
            .filter(|i| *i > 0 && *i <= 1 << 20)?,
        salt: b64.decode(salt).ok()?,
        stored_key: b64.decode(stored).ok()?,
        server_key: b64.decode(server).ok()?,
    };
    (v.stored_key.len() == 32 && v.server_key.len() == 32).then_some(v)
}

/// Whether `password` derives `verifier` (constant-time comparison of the stored key).
fn verifier_matches(verifier: &ScramVerifier, password: &str) -> bool {
    let derived = derive_verifier(password, verifier.salt.clone(), verifier.iterations);
    derived.stored_key.len() == verifier.stored_key.len()
        && derived
            .stored_key
            .iter()
            .zip(&verifier.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The pre-SCRAM format (still read for records written before it).
fn hash_password(salt: &str, password: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(salt.as_bytes());
    h.update(password.as_bytes());
    hex::encode(h.finalize())
}

/// `CREATE EXTERNAL CONNECTION name AS 'uri'`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalConnection {
    pub name: String,
    pub uri: String,
    pub owner: String,
    /// `postgresql` / `postgres` / other scheme.
    pub connection_type: String,
}

#[derive(Default)]
struct Cache {
    generation: u64,
    tables: HashMap<TableId, Arc<TableDescriptor>>,
    names: HashMap<(DatabaseId, String, String), Option<TableId>>,
    databases: HashMap<String, Option<Arc<DatabaseDescriptor>>>,
}

/// Access to the catalog of one cluster, cached per node.
pub struct Catalog {
    kv: KvClient,
    cache: Mutex<Cache>,
}

fn table_key(id: TableId) -> [u8; 4] {
    id.to_be_bytes()
}

fn namespace_key(db: DatabaseId, schema: &str, name: &str) -> Vec<u8> {
    format!("{db}/{schema}/{name}").into_bytes()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> SqlError {
    SqlError::internal(format!("corrupt {what}: {e}"))
}

impl Catalog {
    pub fn new(kv: KvClient) -> Catalog {
        Catalog {
            kv,
            cache: Mutex::new(Cache::default()),
        }
    }

    pub fn kv(&self) -> &KvClient {
        &self.kv
    }

    /// Drops the cache if the cluster's catalog generation moved.
    fn check_generation(&self) {
        let current = self.kv.catalog_generation();
        let mut c = self.cache.lock();
        if c.generation != current {
            *c = Cache {
                generation: current,
                ..Cache::default()
            };
        }
    }

    /// After a local change: bump the cluster-wide generation (other nodes drop their caches)
    /// and drop ours.
    pub async fn changed(&self) -> Result<()> {
        let generation = self.kv.bump_catalog_generation().await?;
        let mut c = self.cache.lock();
        *c = Cache {
            generation,
            ..Cache::default()
        };
        Ok(())
    }

    pub async fn allocate_id(&self) -> Result<u32> {
        let v = self.kv.sys_increment(DESCRIPTOR_ID_COUNTER, 1).await?;
        u32::try_from(v + FIRST_USER_ID).map_err(|_| SqlError::internal("descriptor ids exhausted"))
    }

    // ---- databases ----

    pub async fn database(&self, name: &str) -> Result<Option<Arc<DatabaseDescriptor>>> {
        self.check_generation();
        if let Some(hit) = self.cache.lock().databases.get(name) {
            return Ok(hit.clone());
        }
        let found = match self.kv.sys_get(DATABASES, name.as_bytes()).await? {
            Some(bytes) => Some(Arc::new(
                serde_json::from_slice::<DatabaseDescriptor>(&bytes)
                    .map_err(|e| corrupt("database descriptor", e))?,
            )),
            None => None,
        };
        self.cache
            .lock()
            .databases
            .insert(name.to_string(), found.clone());
        Ok(found)
    }

    pub async fn require_database(&self, name: &str) -> Result<Arc<DatabaseDescriptor>> {
        self.database(name)
            .await?
            .ok_or_else(|| SqlError::undefined_database(name))
    }

    pub async fn databases(&self) -> Result<Vec<DatabaseDescriptor>> {
        self.kv
            .sys_scan(DATABASES)
            .await?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| corrupt("database descriptor", e)))
            .collect()
    }

    /// Creates a database; `Ok(false)` if the name exists.
    pub async fn create_database(&self, name: &str, owner: &str) -> Result<bool> {
        let id = self.allocate_id().await?;
        let desc = DatabaseDescriptor {
            id,
            name: name.to_string(),
            owner: owner.to_string(),
            schemas: vec![],
            privileges: Default::default(),
        };
        let bytes = serde_json::to_vec(&desc).map_err(SqlError::internal)?;
        match self
            .kv
            .sys_cput(DATABASES, name.as_bytes(), Some(&bytes), None)
            .await?
        {
            Ok(()) => {
                self.changed().await?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Read-modify-write of a database descriptor.
    pub async fn update_database(
        &self,
        name: &str,
        f: &(dyn Fn(&mut DatabaseDescriptor) -> Result<()> + Send + Sync),
    ) -> Result<()> {
        for _ in 0..50 {
            let current = self
                .kv
                .sys_get(DATABASES, name.as_bytes())
                .await?
                .ok_or_else(|| SqlError::undefined_database(name))?;
            let mut desc: DatabaseDescriptor =
                serde_json::from_slice(&current).map_err(|e| corrupt("database descriptor", e))?;
            f(&mut desc)?;
            let bytes = serde_json::to_vec(&desc).map_err(SqlError::internal)?;
            if self
                .kv
                .sys_cput(DATABASES, name.as_bytes(), Some(&bytes), Some(&current))
                .await?
                .is_ok()
            {
                self.changed().await?;
                return Ok(());
            }
        }
        Err(SqlError::new(
            sqlstate::SERIALIZATION_FAILURE,
            "restart transaction: concurrent change to database descriptor",
        ))
    }

    pub async fn drop_database_record(&self, name: &str) -> Result<()> {
        self.kv.sys_delete(DATABASES, name.as_bytes()).await?;
        self.changed().await
    }

    // ---- tables ----

    pub async fn table_by_id(&self, id: TableId) -> Result<Option<Arc<TableDescriptor>>> {
        self.check_generation();
        if let Some(t) = self.cache.lock().tables.get(&id) {
            return Ok(Some(t.clone()));
        }
        let Some(bytes) = self.kv.sys_get(DESCRIPTORS, &table_key(id)).await? else {
            return Ok(None);
        };
        let desc = TableDescriptor::decode(&bytes)?;
        let desc = Arc::new(desc);
        self.cache.lock().tables.insert(id, desc.clone());
        Ok(Some(desc))
    }

    /// Resolves `db.schema.name` to a table.
    pub async fn table(
        &self,
        db: DatabaseId,
        schema: &str,
        name: &str,
    ) -> Result<Option<Arc<TableDescriptor>>> {
        self.check_generation();
        let cache_key = (db, schema.to_string(), name.to_string());
        let cached = self.cache.lock().names.get(&cache_key).cloned();
        let id = match cached {
            Some(id) => id,
            None => {
                let id = match self
                    .kv
                    .sys_get(NAMESPACE, &namespace_key(db, schema, name))
                    .await?
                {
                    Some(v) => Some(
                        std::str::from_utf8(&v)
                            .ok()
                            .and_then(|s| s.parse::<TableId>().ok())
                            .ok_or_else(|| corrupt("namespace entry", name))?,
                    ),
                    None => None,
                };
                self.cache.lock().names.insert(cache_key, id);
                id
            }
        };
        match id {
            Some(id) => self.table_by_id(id).await,
            None => Ok(None),
        }
    }

    /// Every table of a database (all schemas), by name.
    pub async fn tables_in(&self, db: DatabaseId) -> Result<Vec<Arc<TableDescriptor>>> {
        let entries = self
            .kv
            .sys_scan_prefix(NAMESPACE, format!("{db}/").as_bytes())
            .await?;
        let mut out = Vec::new();
        for (_, v) in entries {
            let id: TableId = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("namespace entry", "id"))?;
            if let Some(t) = self.table_by_id(id).await? {
                out.push(t);
            }
        }
        out.sort_by(|a, b| {
            (a.schema.as_str(), a.name.as_str()).cmp(&(b.schema.as_str(), b.name.as_str()))
        });
        Ok(out)
    }

    /// Every table descriptor of the cluster.
    pub async fn all_tables(&self) -> Result<Vec<TableDescriptor>> {
        self.kv
            .sys_scan(DESCRIPTORS)
            .await?
            .into_iter()
            .map(|(_, v)| TableDescriptor::decode(&v))
            .collect()
    }

    /// Creates a table: claims its name, writes the descriptor, creates its ranges.
    /// `Ok(None)` if the name is taken (the caller decides between 42P07 and IF NOT EXISTS).
    pub async fn create_table(
        &self,
        mut desc: TableDescriptor,
    ) -> Result<Option<Arc<TableDescriptor>>> {
        desc.validate()?;
        let ns = namespace_key(desc.database_id, &desc.schema, &desc.name);
        let id_text = desc.id.to_string();
        if self
            .kv
            .sys_cput(NAMESPACE, &ns, Some(id_text.as_bytes()), None)
            .await?
            .is_err()
        {
            return Ok(None);
        }
        let result = async {
            let ranges = self.kv.create_table_ranges(desc.id, None).await?;
            desc.shard_count =
                u16::try_from(ranges.len()).map_err(|_| SqlError::internal("too many ranges"))?;
            let bytes = serde_json::to_vec(&desc).map_err(SqlError::internal)?;
            self.kv
                .sys_put(DESCRIPTORS, &table_key(desc.id), &bytes)
                .await?;
            Ok::<_, SqlError>(())
        }
        .await;
        if let Err(e) = result {
            let _ = self.kv.sys_delete(NAMESPACE, &ns).await;
            return Err(e);
        }
        self.changed().await?;
        Ok(Some(Arc::new(desc)))
    }

    /// Read-modify-write of a table descriptor (compare-and-put, retried on concurrent
    /// changes); bumps its version and the catalog generation.
    pub async fn update_table(
        &self,
        id: TableId,
        f: &(dyn Fn(&mut TableDescriptor) -> Result<()> + Send + Sync),
    ) -> Result<Arc<TableDescriptor>> {
        for _ in 0..50 {
            let current = self
                .kv
                .sys_get(DESCRIPTORS, &table_key(id))
                .await?
                .ok_or_else(|| SqlError::undefined_table(format!("[{id}]")))?;
            let mut desc = TableDescriptor::decode(&current)?;
            f(&mut desc)?;
            desc.version += 1;
            desc.validate()?;
            let bytes = serde_json::to_vec(&desc).map_err(SqlError::internal)?;
            if self
                .kv
                .sys_cput(DESCRIPTORS, &table_key(id), Some(&bytes), Some(&current))
                .await?
                .is_ok()
            {
                self.changed().await?;
                return Ok(Arc::new(desc));
            }
        }
        Err(SqlError::new(
            sqlstate::SERIALIZATION_FAILURE,
            "restart transaction: concurrent change to table descriptor",
        ))
    }

    /// Removes a table: its name, descriptor and data.
    pub async fn drop_table(&self, desc: &TableDescriptor) -> Result<()> {
        self.kv
            .sys_delete(
                NAMESPACE,
                &namespace_key(desc.database_id, &desc.schema, &desc.name),
            )
            .await?;
        self.kv.sys_delete(DESCRIPTORS, &table_key(desc.id)).await?;
        self.changed().await?;
        self.kv.drop_table_ranges(desc.id).await?;
        Ok(())
    }

    // ---- users ----

    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        match self.kv.sys_get(USERS, name.as_bytes()).await? {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(|e| corrupt("user record", e))?,
            )),
            None => Ok(None),
        }
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        self.kv
            .sys_scan(USERS)
            .await?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| corrupt("user record", e)))
            .collect()
    }

    /// Creates a user; `Ok(false)` if it exists.
    pub async fn create_user(&self, user: &UserRecord) -> Result<bool> {
        let bytes = serde_json::to_vec(user).map_err(SqlError::internal)?;
        Ok(self
            .kv
            .sys_cput(USERS, user.name.as_bytes(), Some(&bytes), None)
            .await?
            .is_ok())
    }

    pub async fn update_user(
        &self,
        name: &str,
        f: &(dyn Fn(&mut UserRecord) -> Result<()> + Send + Sync),
    ) -> Result<()> {
        for _ in 0..50 {
            let current = self
                .kv
                .sys_get(USERS, name.as_bytes())
                .await?
                .ok_or_else(|| user_missing(name))?;
            let mut u: UserRecord =
                serde_json::from_slice(&current).map_err(|e| corrupt("user record", e))?;
            f(&mut u)?;
            let bytes = serde_json::to_vec(&u).map_err(SqlError::internal)?;
            if self
                .kv
                .sys_cput(USERS, name.as_bytes(), Some(&bytes), Some(&current))
                .await?
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(SqlError::new(
            sqlstate::SERIALIZATION_FAILURE,
            "restart transaction: concurrent change to user",
        ))
    }

    pub async fn delete_user(&self, name: &str) -> Result<bool> {
        if self.user(name).await?.is_none() {
            return Ok(false);
        }
        self.kv.sys_delete(USERS, name.as_bytes()).await?;
        Ok(true)
    }

    // ---- external connections ----

    pub async fn external_connection(&self, name: &str) -> Result<Option<ExternalConnection>> {
        match self
            .kv
            .sys_get(EXTERNAL_CONNECTIONS, name.as_bytes())
            .await?
        {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(|e| corrupt("external connection", e))?,
            )),
            None => Ok(None),
        }
    }

    pub async fn external_connections(&self) -> Result<Vec<ExternalConnection>> {
        self.kv
            .sys_scan(EXTERNAL_CONNECTIONS)
            .await?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(|e| corrupt("external connection", e)))
            .collect()
    }

    pub async fn create_external_connection(&self, c: &ExternalConnection) -> Result<bool> {
        let bytes = serde_json::to_vec(c).map_err(SqlError::internal)?;
        Ok(self
            .kv
            .sys_cput(EXTERNAL_CONNECTIONS, c.name.as_bytes(), Some(&bytes), None)
            .await?
            .is_ok())
    }

    pub async fn drop_external_connection(&self, name: &str) -> Result<bool> {
        if self.external_connection(name).await?.is_none() {
            return Ok(false);
        }
        self.kv
            .sys_delete(EXTERNAL_CONNECTIONS, name.as_bytes())
            .await?;
        Ok(true)
    }
}

pub fn user_missing(name: &str) -> SqlError {
    SqlError::new(
        sqlstate::UNDEFINED_OBJECT,
        format!("role/user \"{name}\" does not exist"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_salted_hashes() {
        let mut u = UserRecord::new("maxroach");
        u.set_password(Some("secret"));
        assert!(u.check_password("secret"));
        assert!(!u.check_password("Secret"));
        let stored = u.scram_verifier.clone().expect("verifier");
        assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
        assert!(!stored.contains("secret"), "{stored}");
        assert_eq!(u.password_hash, None);
        let mut v = UserRecord::new("other");
        v.set_password(Some("secret"));
        assert_ne!(u.scram_verifier, v.scram_verifier, "salts differ");
        u.set_password(None);
        assert!(!u.check_password("secret"));
        assert!(UserRecord::new("root").is_admin());
        assert!(!UserRecord::new("bob").is_admin());
    }
}
