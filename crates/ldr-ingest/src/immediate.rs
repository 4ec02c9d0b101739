//! The immediate-mode applier: writes replicated rows with the KV-level LWW conditional write.
//!
//! Each source primary-index KV is decoded with the source descriptor, matched to the
//! destination's columns by name, and written as one [`RowWrite`] with `Condition::Lww`
//! stamped with the source's origin id and the source MVCC timestamp as origin timestamp.
//! Non-unique secondary index entries are dependents of the row (same batch, same node).
//!
//! - A delete without a previous row (a phantom delete) still writes a tombstone carrying its
//!   origin timestamp, so an older insert that arrives later loses.
//! - Tables with secondary indexes expect the row's previous value (to delete the right index
//!   entries); when the destination holds something else and the incoming row is newer, the
//!   write is refreshed with the actual value and retried (at most 10 times), as CockroachDB's
//!   KV writer does. Tables without secondary indexes write without that check.
//! - Unique secondary indexes are global entries (in the shard of the indexed values): a row
//!   of a table with unique indexes is written in one KV transaction with its entries (the
//!   row's LWW write first, then each new entry conditional on being free, then the release
//!   of each old one), so a row and its entries are visible together or not at all. A value
//!   held by another live row is a unique violation (23505), which the processor retries and
//!   eventually dead-letters. Like every writer, the applier waits for (or pushes) the
//!   intents of transactions in its way.

use std::sync::Arc;

use async_trait::async_trait;
use ldr_catalog::catalog::{Catalog, IndexDescriptor, TableDescriptor};
use ldr_catalog::{Datum, rowcodec, sqlstate};
use ldr_kv::{Condition, KvClient, RowOutcome, RowWrite, ValueHeader};
use ldr_proto::pb;

use crate::applier::{Applier, ApplyError, EventOutcome, SourceEvent};
use crate::dlq::InternalSql;
use crate::error::Result;
use crate::flow::ApplierFactory;
use crate::mapping::{TableMapping, Tables, decode_error, kv_error};
use crate::metrics::Metrics;

/// CockroachDB's `maxRefreshCount`.
const MAX_REFRESHES: usize = 10;

/// Builds [`ImmediateApplier`]s for processors.
pub struct ImmediateApplierFactory {
    pub kv: KvClient,
    pub catalog: Arc<Catalog>,
    pub sql: Arc<dyn InternalSql>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl ApplierFactory for ImmediateApplierFactory {
    async fn applier(&self, spec: &pb::ProcessorSpec) -> Result<Arc<dyn Applier>> {
        let tables = Tables::load(&self.catalog, spec).await?;
        Ok(Arc::new(ImmediateApplier {
            kv: self.kv.clone(),
            sql: self.sql.clone(),
            metrics: self.metrics.clone(),
            job_id: spec.job_id,
            header: ValueHeader {
                origin_id: spec.source_origin_id.max(1),
                origin_ts: Default::default(),
                omit_in_rangefeeds: false,
            },
            tables,
        }))
    }
}

/// Applies replicated rows with LWW writes.
pub struct ImmediateApplier {
    kv: KvClient,
    sql: Arc<dyn InternalSql>,
    metrics: Arc<Metrics>,
    job_id: i64,
    header: ValueHeader,
    tables: Tables,
}

/// An event decoded for its destination table.
struct Prepared<'a> {
    table: &'a TableMapping,
    pk: Vec<u8>,
    new: Option<Vec<Datum>>,
    /// The destination row the write replaces, as far as we know.
    prev: Option<Vec<Datum>>,
    /// The exact bytes the LWW condition expects (`None`: don't check).
    expected: Option<Option<Vec<u8>>>,
    header: ValueHeader,
}

impl ImmediateApplier {
    fn prepare<'a>(&'a self, event: &SourceEvent) -> std::result::Result<Prepared<'a>, ApplyError> {
        let table = self.tables.mapping(&event.key)?;
        let new = event
            .value
            .as_deref()
            .map(|v| table.to_destination(&event.key, v))
            .transpose()?;
        let prev = event
            .prev_value
            .as_deref()
            .map(|v| table.to_destination(&event.key, v))
            .transpose()?;
        let pk = match &new {
            Some(row) => rowcodec::pk_bytes(&table.destination, row),
            None => {
                ldr_catalog::encoding::encode_key_tuple(table.destination_pk(&event.key)?.iter())
            }
        };
        let expected = (table.has_secondary || !table.unique_indexes.is_empty()).then(|| {
            prev.as_ref()
                .map(|r| rowcodec::encode_row(&table.destination, r))
        });
        let header = ValueHeader {
            origin_ts: event.ts,
            ..self.header
        };
        Ok(Prepared {
            table,
            pk,
            new,
            prev,
            expected,
            header,
        })
    }

    fn row_write(&self, p: &Prepared<'_>) -> RowWrite {
        let d = &p.table.destination;
        RowWrite {
            key: rowcodec::primary_key_from_pk(d, &p.pk),
            value: p.new.as_ref().map(|r| rowcodec::encode_row(d, r)),
            condition: Condition::Lww {
                expected_prev: p.expected.clone(),
                local_origin_id: self.kv.origin_id(),
            },
            header: p.header,
            dependents: if p.table.has_secondary {
                rowcodec::secondary_dependents(d, p.new.as_deref(), p.prev.as_deref(), &p.pk)
            } else {
                Vec::new()
            },
        }
    }

    /// The refresh after "newer but unexpected value": the actual destination row becomes
    /// the previous row.
    fn refresh(
        &self,
        p: &mut Prepared<'_>,
        actual: Option<ldr_kv::Version>,
    ) -> std::result::Result<(), ApplyError> {
        let value = actual.and_then(|v| v.value);
        p.prev = value
            .as_deref()
            .map(|v| rowcodec::decode_row_value(&p.table.destination, v))
            .transpose()
            .map_err(decode_error)?;
        p.expected = Some(value);
        Ok(())
    }

    /// Writes rows without unique indexes in batches, refreshing unexpected ones.
    async fn apply_batch(
        &self,
        mut prepared: Vec<(usize, Prepared<'_>)>,
        out: &mut [EventOutcome],
    ) {
        for _round in 0..=MAX_REFRESHES {
            if prepared.is_empty() {
                return;
            }
            let writes: Vec<RowWrite> = prepared.iter().map(|(_, p)| self.row_write(p)).collect();
            let outcomes = match self.kv.write(writes, false).await {
                Ok(o) => o,
                Err(e) => {
                    let err = kv_error(e);
                    for (i, _) in &prepared {
                        out[*i] = EventOutcome::Failed(err.clone());
                    }
                    return;
                }
            };
            let mut again = Vec::new();
            for ((i, mut p), (_, outcome)) in prepared.into_iter().zip(outcomes) {
                out[i] = match outcome {
                    RowOutcome::Written { .. } => EventOutcome::Applied,
                    RowOutcome::LwwLost { .. } => EventOutcome::LwwLost,
                    RowOutcome::LwwUnexpected { actual } => {
                        self.metrics.kv_value_refreshes.inc(1);
                        match self.refresh(&mut p, actual) {
                            Ok(()) => {
                                again.push((i, p));
                                continue;
                            }
                            Err(e) => EventOutcome::Failed(e),
                        }
                    }
                    RowOutcome::ConditionFailed { .. } | RowOutcome::NotAttempted => {
                        EventOutcome::Failed(ApplyError::new(
                            "unexpected condition failure of an LWW write",
                            Some(sqlstate::INTERNAL_ERROR),
                        ))
                    }
                };
            }
            prepared = again;
        }
        for (i, _) in prepared {
            out[i] = EventOutcome::Failed(ApplyError::new(
                format!("max refresh count ({MAX_REFRESHES}) reached"),
                Some(sqlstate::SERIALIZATION_FAILURE),
            ));
        }
    }

    /// Takes the unique entry of `values` for `pk` inside `txn` (whose client writes
    /// intents); `Err` with 23505 if another row holds the value. An entry whose row no
    /// longer holds the value (left by a writer from before entries were transactional) is
    /// taken over.
    async fn claim(
        &self,
        txn: &KvClient,
        table: &TableDescriptor,
        index: &IndexDescriptor,
        values: &[u8],
        pk: &[u8],
        header: ValueHeader,
    ) -> std::result::Result<(), ApplyError> {
        let key = rowcodec::unique_key(table, index, values);
        let mut expected: Option<Vec<u8>> = None;
        for _ in 0..MAX_REFRESHES {
            let write = RowWrite {
                key: key.clone(),
                value: Some(pk.to_vec()),
                condition: Condition::Expect(expected.clone()),
                header,
                dependents: vec![],
            };
            match txn.write(vec![write], true).await.map_err(kv_error)?.pop() {
                Some((_, RowOutcome::Written { .. })) => return Ok(()),
                Some((_, RowOutcome::ConditionFailed { actual })) => {
                    let owner = actual.and_then(|v| v.value);
                    match owner {
                        None => expected = None,
                        Some(owner) if owner.as_slice() == pk => return Ok(()),
                        Some(owner) => {
                            if self.holds_value(table, index, &owner, values).await? {
                                return Err(ApplyError::new(
                                    format!(
                                        "duplicate key value violates unique constraint \"{}\"",
                                        index.name
                                    ),
                                    Some(sqlstate::UNIQUE_VIOLATION),
                                ));
                            }
                            expected = Some(owner);
                        }
                    }
                }
                other => {
                    return Err(ApplyError::new(
                        format!("unexpected outcome of a unique entry write: {other:?}"),
                        Some(sqlstate::INTERNAL_ERROR),
                    ));
                }
            }
        }
        Err(ApplyError::new(
            format!("contention claiming unique constraint \"{}\"", index.name),
            Some(sqlstate::SERIALIZATION_FAILURE),
        ))
    }

    /// Whether the destination row `owner_pk` currently holds `values` in `index`.
    async fn holds_value(
        &self,
        table: &TableDescriptor,
        index: &IndexDescriptor,
        owner_pk: &[u8],
        values: &[u8],
    ) -> std::result::Result<bool, ApplyError> {
        let key = rowcodec::primary_key_from_pk(table, owner_pk);
        let Some(version) = self.kv.get(&key, None).await.map_err(kv_error)? else {
            return Ok(false);
        };
        let Some(value) = version.value else {
            return Ok(false);
        };
        let row = rowcodec::decode_row_value(table, &value).map_err(decode_error)?;
        Ok(rowcodec::unique_values(table, index, &row).as_deref() == Some(values))
    }

    /// The row and its unique entries in one transaction: `Ok(Some(outcome))` when decided,
    /// `Ok(None)` after a refresh (try again), `Err` for a failure.
    async fn apply_unique_once(
        &self,
        p: &mut Prepared<'_>,
    ) -> std::result::Result<Option<EventOutcome>, ApplyError> {
        let d = p.table.destination.clone();
        let row = self.row_write(p);
        let txn = self.kv.begin_txn(&row.key).await.map_err(kv_error)?;
        let tkv = txn.client().clone();
        let result = async {
            let outcome = tkv.write(vec![row], false).await.map_err(kv_error)?.pop();
            match outcome {
                Some((_, RowOutcome::Written { .. })) => {}
                Some((_, RowOutcome::LwwLost { .. })) => return Ok(Some(EventOutcome::LwwLost)),
                Some((_, RowOutcome::LwwUnexpected { actual })) => {
                    self.metrics.kv_value_refreshes.inc(1);
                    self.refresh(p, actual)?;
                    return Ok(None);
                }
                _ => {
                    return Err(ApplyError::new(
                        "unexpected condition failure of an LWW write",
                        Some(sqlstate::INTERNAL_ERROR),
                    ));
                }
            }
            for index in &p.table.unique_indexes {
                let (new_vals, old_vals) = unique_change(&d, index, p);
                if let Some(v) = new_vals.as_ref().filter(|v| Some(*v) != old_vals.as_ref()) {
                    self.claim(&tkv, &d, index, v, &p.pk, p.header).await?;
                }
                if let Some(v) = old_vals.filter(|v| Some(v) != new_vals.as_ref()) {
                    // Released only if it still points at this row.
                    let release = RowWrite {
                        key: rowcodec::unique_key(&d, index, &v),
                        value: None,
                        condition: Condition::Expect(Some(p.pk.clone())),
                        header: p.header,
                        dependents: vec![],
                    };
                    tkv.write(vec![release], true).await.map_err(kv_error)?;
                }
            }
            Ok(Some(EventOutcome::Applied))
        }
        .await;
        match result {
            Ok(Some(EventOutcome::Applied)) => match txn.commit().await {
                Ok(_) => Ok(Some(EventOutcome::Applied)),
                // Aborted by a pusher: nothing was applied; try again.
                Err(ldr_kv::KvError::TxnAborted { .. }) => Ok(None),
                Err(e) => Err(kv_error(e)),
            },
            other => {
                txn.rollback().await;
                other
            }
        }
    }

    /// Rows of tables with unique indexes: the row and its entries in one transaction.
    async fn apply_with_unique(&self, mut p: Prepared<'_>) -> EventOutcome {
        for _ in 0..=MAX_REFRESHES {
            match self.apply_unique_once(&mut p).await {
                Ok(Some(outcome)) => return outcome,
                Ok(None) => continue,
                Err(e) => return EventOutcome::Failed(e),
            }
        }
        EventOutcome::Failed(ApplyError::new(
            format!("max refresh count ({MAX_REFRESHES}) reached"),
            Some(sqlstate::SERIALIZATION_FAILURE),
        ))
    }
}

/// The encoded values of a unique index in the incoming row and in the row it replaces.
fn unique_change(
    d: &TableDescriptor,
    index: &IndexDescriptor,
    p: &Prepared<'_>,
) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let values = |row: &Option<Vec<Datum>>| {
        row.as_ref()
            .and_then(|r| rowcodec::unique_values(d, index, r))
    };
    (values(&p.new), values(&p.prev))
}

#[async_trait]
impl Applier for ImmediateApplier {
    async fn apply(&self, events: &[SourceEvent]) -> Vec<EventOutcome> {
        let mut out = vec![EventOutcome::Applied; events.len()];
        let mut batch = Vec::new();
        let mut with_unique = Vec::new();
        for (i, event) in events.iter().enumerate() {
            match self.prepare(event) {
                Ok(p) if p.table.unique_indexes.is_empty() => batch.push((i, p)),
                Ok(p) => with_unique.push((i, p)),
                Err(e) => out[i] = EventOutcome::Failed(e),
            }
        }
        self.apply_batch(batch, &mut out).await;
        for (i, p) in with_unique {
            out[i] = self.apply_with_unique(p).await;
        }
        out
    }

    async fn dead_letter(
        &self,
        event: &SourceEvent,
        reason: &str,
    ) -> std::result::Result<(), ApplyError> {
        self.tables
            .dead_letter(self.sql.as_ref(), self.job_id, event, reason)
            .await
    }
}
