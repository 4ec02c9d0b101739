//! Wires changefeeds into a node: the `Changefeed` gRPC service (spans and nodelocal files of
//! this node), the `CHANGEFEED` job resumer, and the `CREATE CHANGEFEED` hook.

use std::path::PathBuf;
use std::sync::Arc;

use ldr_changefeed::metrics::ChangefeedMetrics;
use ldr_changefeed::{ChangefeedCreator, ChangefeedResumer, ChangefeedService, NodeChangefeeds};
use ldr_jobs::{JobType, Registry};
use ldr_kv::{KvClient, KvNode};
use ldr_stream::Producer;

use crate::sql::SqlWiring;

pub(crate) fn register(
    service: &ChangefeedService,
    kv: &KvClient,
    kv_node: &KvNode,
    registry: &Arc<Registry>,
    sql: &SqlWiring,
    producer: Arc<Producer>,
    extern_dir: PathBuf,
    metrics: Arc<ChangefeedMetrics>,
) {
    service.set(Arc::new(NodeChangefeeds {
        kv: kv.clone(),
        rangefeeds: kv_node.rangefeeds().clone(),
        extern_dir: extern_dir.clone(),
    }));
    let runner = Arc::new(ChangefeedResumer {
        kv: kv.clone(),
        catalog: sql.catalog.clone(),
        producer,
        extern_dir,
        metrics,
    });
    registry.register_resumer(JobType::Changefeed, runner.clone());
    sql.server
        .set_changefeed_statements(Arc::new(ChangefeedCreator {
            kv: kv.clone(),
            registry: registry.clone(),
            runner,
        }));
}
