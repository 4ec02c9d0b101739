//! Wires backups into a node: the `BACKUP` and `RESTORE` job resumers and the statements'
//! hook, over this node's `<store>/extern` (the root of `nodelocal://<this node>/…`).

use std::path::PathBuf;
use std::sync::Arc;

use ldr_backup::{BackupCreator, BackupResumer, RestoreResumer};
use ldr_jobs::{JobType, Registry};
use ldr_kv::KvClient;

use crate::sql::SqlWiring;

pub(crate) fn register(
    kv: &KvClient,
    registry: &Arc<Registry>,
    sql: &SqlWiring,
    extern_dir: PathBuf,
) {
    registry.register_resumer(
        JobType::Backup,
        Arc::new(BackupResumer {
            kv: kv.clone(),
            catalog: sql.catalog.clone(),
            extern_dir: extern_dir.clone(),
        }),
    );
    registry.register_resumer(
        JobType::Restore,
        Arc::new(RestoreResumer {
            kv: kv.clone(),
            catalog: sql.catalog.clone(),
            extern_dir: extern_dir.clone(),
        }),
    );
    sql.server.set_backup_statements(Arc::new(BackupCreator {
        kv: kv.clone(),
        registry: registry.clone(),
        catalog: sql.catalog.clone(),
        extern_dir,
    }));
}
