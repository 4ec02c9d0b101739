//! Range placement and routing decisions, without I/O: which range a key belongs to, which
//! ranges a span crosses, how a write's rows group by range, how a new table's shards are
//! placed on live nodes, and the per-node cache of range descriptors.
//!
//! Ranges never move (there is no rebalancing), so a cached descriptor stays right until its
//! table is dropped; an owner that no longer has a range answers `RangeNotFound` and the
//! gateway drops its cached entry.

use std::collections::HashMap;
use std::sync::Arc;

use ldr_storage::{KeyVersion, RowWrite};
use ldr_types::{NodeId, RangeId, Span, TableId, keys};

use crate::{KvError, RangeDescriptor, Result};

/// Where a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRoute {
    System,
    Table { table_id: TableId, shard: u16 },
}

/// The range family of `key`.
pub(crate) fn route_key(key: &[u8]) -> Result<KeyRoute> {
    match key.first() {
        Some(&keys::SYSTEM_PREFIX) => Ok(KeyRoute::System),
        Some(&keys::TABLE_PREFIX) if key.len() >= 7 => {
            let table_id = TableId::from_be_bytes(key[1..5].try_into().expect("four bytes"));
            let shard = u16::from_be_bytes(key[5..7].try_into().expect("two bytes"));
            Ok(KeyRoute::Table { table_id, shard })
        }
        _ => Err(KvError::Internal(format!(
            "key {} is outside the system and table keyspaces",
            keys::pretty_key(key)
        ))),
    }
}

/// Which ranges a span can cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanTarget {
    Empty,
    System,
    Table(TableId),
    /// Crosses tables (or the system keyspace and tables): needs every descriptor.
    Many,
}

pub(crate) fn span_target(span: &Span) -> SpanTarget {
    if span.is_empty() {
        return SpanTarget::Empty;
    }
    if keys::system_span().contains(span) {
        return SpanTarget::System;
    }
    if span.start.len() >= 5 && span.start[0] == keys::TABLE_PREFIX {
        let table_id = TableId::from_be_bytes(span.start[1..5].try_into().expect("four bytes"));
        if keys::table_span(table_id).contains(span) {
            return SpanTarget::Table(table_id);
        }
    }
    SpanTarget::Many
}

/// The pieces of `span` inside each of `ranges` (sorted by span start), in key order.
pub(crate) fn split_span(span: &Span, ranges: &[RangeDescriptor]) -> Vec<(RangeDescriptor, Span)> {
    let mut sorted: Vec<&RangeDescriptor> = ranges.iter().collect();
    sorted.sort_by(|a, b| a.span.start.cmp(&b.span.start));
    sorted
        .into_iter()
        .filter_map(|r| r.span.intersect(span).map(|piece| (r.clone(), piece)))
        .collect()
}

/// Concatenates per-range scan results (already in range order) and applies the limit.
pub(crate) fn merge_scans(parts: Vec<Vec<KeyVersion>>, limit: usize) -> Vec<KeyVersion> {
    let mut out: Vec<KeyVersion> = Vec::new();
    for part in parts {
        debug_assert!(
            out.last()
                .zip(part.first())
                .is_none_or(|(a, b)| a.key < b.key),
            "range scans must come back in key order"
        );
        out.extend(part);
        if limit > 0 && out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    out
}

/// Groups rows by the range of their key, in order of first appearance; each group lists row
/// indexes in input order. A dependent key outside its row's range is refused: the row could
/// not be written atomically.
pub(crate) fn group_rows(
    rows: &[RowWrite],
    locate: impl Fn(&[u8]) -> Result<RangeDescriptor>,
) -> Result<Vec<(RangeDescriptor, Vec<usize>)>> {
    let mut groups: Vec<(RangeDescriptor, Vec<usize>)> = Vec::new();
    let mut by_range: HashMap<RangeId, usize> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        let range = locate(&row.key)?;
        if let Some((dep_key, _)) = row
            .dependents
            .iter()
            .find(|(k, _)| !range.span.contains_key(k))
        {
            return Err(KvError::Internal(format!(
                "dependent key {} of row {} is outside the row's range {} {}",
                keys::pretty_key(dep_key),
                keys::pretty_key(&row.key),
                range.range_id,
                range.span
            )));
        }
        match by_range.get(&range.range_id) {
            Some(&g) => groups[g].1.push(i),
            None => {
                by_range.insert(range.range_id, groups.len());
                groups.push((range, vec![i]));
            }
        }
    }
    Ok(groups)
}

/// Groups keys by their range, in order of first appearance; each group lists key indexes in
/// input order.
pub(crate) fn group_keys(
    keys: &[Vec<u8>],
    locate: impl Fn(&[u8]) -> Result<RangeDescriptor>,
) -> Result<Vec<(RangeDescriptor, Vec<usize>)>> {
    let mut groups: Vec<(RangeDescriptor, Vec<usize>)> = Vec::new();
    let mut by_range: HashMap<RangeId, usize> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        let range = locate(key)?;
        match by_range.get(&range.range_id) {
            Some(&g) => groups[g].1.push(i),
            None => {
                by_range.insert(range.range_id, groups.len());
                groups.push((range, vec![i]));
            }
        }
    }
    Ok(groups)
}

/// The default number of shards of a new table: three per live node.
pub(crate) fn default_shard_count(live_nodes: usize) -> u16 {
    u16::try_from(live_nodes.max(1).saturating_mul(3)).unwrap_or(u16::MAX)
}

/// Places `shard_count` shards of a table round-robin on `live_nodes` (deduplicated and
/// sorted here), starting at an offset derived from the table id so that small tables do not
/// all start on the same node. Range ids are `first_range_id..first_range_id + shard_count`.
/// With `num_replicas > 1`, each shard is a Raft group on its first node and the next
/// `num_replicas - 1` nodes (fewer when there are fewer live nodes), so leases and replicas
/// spread evenly.
pub(crate) fn assign_shards(
    table_id: TableId,
    shard_count: u16,
    live_nodes: &[NodeId],
    first_range_id: RangeId,
    num_replicas: usize,
) -> Vec<RangeDescriptor> {
    let mut nodes = live_nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    assert!(!nodes.is_empty(), "shards are placed on at least one node");
    let offset = table_id as usize % nodes.len();
    (0..shard_count)
        .map(|shard| RangeDescriptor {
            range_id: first_range_id + RangeId::from(shard),
            table_id: Some(table_id),
            shard,
            span: keys::shard_span(table_id, shard),
            node_id: nodes[(offset + shard as usize) % nodes.len()],
            replicas: replica_nodes(&nodes, offset + shard as usize, num_replicas),
            generation: 0,
        })
        .collect()
}

/// One step towards a range's wanted replicas (see [`plan_replica_change`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicaChange {
    Add(NodeId),
    Remove(NodeId),
    /// The leaseholder gives its lease to this voter.
    TransferLease(NodeId),
}

/// What a range's nodes look like to its leaseholder.
#[derive(Debug, Clone, Default)]
pub(crate) struct Placement {
    /// Nodes that may receive replicas (not dead, not decommissioning), sorted.
    pub(crate) eligible: Vec<NodeId>,
    /// Nodes whose replicas must be replaced: dead longer than `server.time_until_store_dead`,
    /// or decommissioning.
    pub(crate) replace: Vec<NodeId>,
    /// Replicas per node, to place new ones on the least loaded.
    pub(crate) load: HashMap<NodeId, usize>,
    /// Leases per node (as each reported at its last liveness heartbeat).
    pub(crate) leases: HashMap<NodeId, usize>,
    /// Nodes that may not take a lease: draining, not live, or not active.
    pub(crate) no_leases: Vec<NodeId>,
    /// Draining nodes: a leaseholder there hands its leases over.
    pub(crate) draining: Vec<NodeId>,
}

impl Placement {
    /// The placement view of the cluster's nodes at `now`: nodes dead longer than
    /// `dead_after` or leaving are replaced; not-live, draining and leaving nodes take no
    /// leases. (Replica counts come from the range descriptors: see `load`.)
    pub(crate) fn of_nodes(
        statuses: &[crate::NodeStatus],
        now: ldr_types::Timestamp,
        dead_after: std::time::Duration,
    ) -> Placement {
        let mut placement = Placement::default();
        for status in statuses {
            let id = status.node.node_id;
            let dead = status
                .liveness_expiration
                .add_nanos(dead_after.as_nanos() as u64)
                < now;
            let leaving = status.membership != crate::Membership::Active;
            if dead || leaving {
                placement.replace.push(id);
            } else {
                placement.eligible.push(id);
            }
            if !status.is_live || status.is_draining || leaving {
                placement.no_leases.push(id);
            }
            if status.is_draining {
                placement.draining.push(id);
            }
            placement.leases.insert(id, status.leases as usize);
        }
        placement
    }

    fn load(&self, node: NodeId) -> usize {
        self.load.get(&node).copied().unwrap_or(0)
    }

    fn leases(&self, node: NodeId) -> usize {
        self.leases.get(&node).copied().unwrap_or(0)
    }

    /// The voter (not `leaseholder`) that should take a lease: one that may hold leases,
    /// with the fewest.
    pub(crate) fn lease_target(&self, voters: &[NodeId], leaseholder: NodeId) -> Option<NodeId> {
        voters
            .iter()
            .copied()
            .filter(|v| *v != leaseholder && !self.no_leases.contains(v))
            .filter(|v| !self.replace.contains(v))
            .min_by_key(|v| (self.leases(*v), *v))
    }

    /// Records a planned change, so later plans of the same pass see it.
    pub(crate) fn record(&mut self, change: ReplicaChange, leaseholder: NodeId) {
        match change {
            ReplicaChange::Add(n) => *self.load.entry(n).or_default() += 1,
            ReplicaChange::Remove(n) => {
                let load = self.load.entry(n).or_default();
                *load = load.saturating_sub(1);
            }
            ReplicaChange::TransferLease(n) => {
                *self.leases.entry(n).or_default() += 1;
                let old = self.leases.entry(leaseholder).or_default();
                *old = old.saturating_sub(1);
            }
        }
    }
}

/// Whether this node (`me`), owner of the single-copy range `range`, should make it a Raft
/// group so the replicate queue can add replicas: its zone wants more than one copy, and a
/// live node other than this one could take a replica. (A table created while the cluster
/// had one node gets single-copy ranges; CockroachDB up-replicates them once nodes join.)
pub(crate) fn should_up_replicate(
    range: &RangeDescriptor,
    me: NodeId,
    num_replicas: usize,
    placement: &Placement,
) -> bool {
    range.table_id.is_some()
        && !range.is_replicated()
        && range.node_id == me
        && num_replicas > 1
        && !placement.draining.contains(&me)
        && placement
            .eligible
            .iter()
            .any(|n| *n != me && !placement.no_leases.contains(n))
}

/// The next membership change of a range with `voters` (one at a time, as CockroachDB's
/// replicate queue): add a replica while fewer than `num_replicas` (capped by the eligible
/// nodes) are on nodes that stay, on the least loaded eligible node; remove one while there
/// are more voters than wanted, a replaced node's first, never the leaseholder. A voter on a
/// dead node is only removed once its replacement was added, or when the range has more
/// voters than `num_replicas` (a lowered zone config).
pub(crate) fn plan_replica_change(
    voters: &[NodeId],
    leaseholder: NodeId,
    num_replicas: usize,
    placement: &Placement,
) -> Option<ReplicaChange> {
    let target = num_replicas.min(placement.eligible.len()).max(1);
    let staying: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|v| !placement.replace.contains(v))
        .collect();
    // A leaseholder on a node that is leaving (decommissioning) or may not hold leases
    // (draining) first hands its lease to a voter that stays (quickest while the group has
    // its usual voters: the old leaseholder's vote and the target's make a majority of
    // three); the new leaseholder then adds the replacement and removes it.
    if (placement.replace.contains(&leaseholder) || placement.draining.contains(&leaseholder))
        && let Some(node) = placement.lease_target(voters, leaseholder)
    {
        return Some(ReplicaChange::TransferLease(node));
    }
    if staying.len() < target {
        let load = |n: &NodeId| placement.load.get(n).copied().unwrap_or(0);
        if let Some(node) = placement
            .eligible
            .iter()
            .filter(|n| !voters.contains(n))
            .min_by_key(|n| (load(n), **n))
        {
            return Some(ReplicaChange::Add(*node));
        }
    }
    // More voters than wanted (a dead voter stays until it has a replacement, as it counts
    // towards `num_replicas` until then).
    if voters.len() > num_replicas.max(1) {
        if let Some(node) = voters
            .iter()
            .find(|v| placement.replace.contains(v) && **v != leaseholder)
        {
            return Some(ReplicaChange::Remove(*node));
        }
        if staying.len() > target {
            let load = |n: &NodeId| placement.load.get(n).copied().unwrap_or(0);
            if let Some(node) = staying
                .iter()
                .filter(|v| **v != leaseholder)
                .max_by_key(|n| (load(n), **n))
            {
                return Some(ReplicaChange::Remove(*node));
            }
        }
    }
    None
}

/// A rebalancing step for a range that needs no repair (see [`plan_replica_change`]): a node
/// that joined later receives replicas and leases until the counts even out, as CockroachDB's
/// replicate queue and store rebalancer do. Replicas: add one on the least loaded eligible
/// node that is not a voter when it holds at least two fewer replicas than the most loaded
/// voter that could be removed (not the leaseholder); the surplus voter is removed by the
/// next pass ([`plan_replica_change`] removes the most loaded). Leases: give the lease to a
/// voter holding at least two fewer leases, when this leaseholder holds more than the mean.
/// The margins keep counts that differ by one from moving back and forth.
pub(crate) fn plan_rebalance(
    voters: &[NodeId],
    leaseholder: NodeId,
    num_replicas: usize,
    placement: &Placement,
) -> Option<ReplicaChange> {
    if voters.len() != num_replicas || !placement.replace.is_empty() {
        // Repairs first; and never rebalance while some node's replicas must be replaced.
        return None;
    }
    let add = placement
        .eligible
        .iter()
        .copied()
        .filter(|n| !voters.contains(n))
        .min_by_key(|n| (placement.load(*n), *n));
    let remove = voters
        .iter()
        .copied()
        .filter(|v| *v != leaseholder)
        .max_by_key(|v| (placement.load(*v), *v));
    if let (Some(add), Some(remove)) = (add, remove)
        && placement.load(add) + 2 <= placement.load(remove)
    {
        return Some(ReplicaChange::Add(add));
    }
    let holders: Vec<NodeId> = placement
        .eligible
        .iter()
        .copied()
        .filter(|n| !placement.no_leases.contains(n))
        .collect();
    if holders.is_empty() {
        return None;
    }
    let total: usize = holders.iter().map(|n| placement.leases(*n)).sum();
    let mine = placement.leases(leaseholder);
    if mine * holders.len() <= total {
        return None; // at or below the mean
    }
    placement
        .lease_target(voters, leaseholder)
        .filter(|t| placement.leases(*t) + 2 <= mine)
        .map(ReplicaChange::TransferLease)
}

/// `num_replicas` distinct nodes of `nodes` starting at index `first` (wrapping), or none
/// when the range gets one copy (`num_replicas <= 1`, or a one-node cluster): a single-owner
/// range, written without Raft.
pub(crate) fn replica_nodes(nodes: &[NodeId], first: usize, num_replicas: usize) -> Vec<NodeId> {
    let count = num_replicas.min(nodes.len());
    if count <= 1 {
        return Vec::new();
    }
    (0..count)
        .map(|i| nodes[(first + i) % nodes.len()])
        .collect()
}

/// The replica after `current` in `range`'s replica list (wrapping; the first one when
/// `current` is not a replica).
pub(crate) fn next_replica(range: &RangeDescriptor, current: NodeId) -> NodeId {
    match range.replicas.iter().position(|n| *n == current) {
        Some(i) => range.replicas[(i + 1) % range.replicas.len()],
        None => range.replicas.first().copied().unwrap_or(range.node_id),
    }
}

/// The shard descriptor of a table's (shard-sorted) ranges.
pub(crate) fn find_shard(ranges: &[RangeDescriptor], shard: u16) -> Option<&RangeDescriptor> {
    ranges
        .binary_search_by_key(&shard, |r| r.shard)
        .ok()
        .map(|i| &ranges[i])
}

/// Each node's cache of table range descriptors (the system range is a constant).
#[derive(Debug, Default)]
pub(crate) struct RangeCache {
    tables: HashMap<TableId, Arc<[RangeDescriptor]>>,
}

impl RangeCache {
    pub(crate) fn get(&self, table_id: TableId) -> Option<Arc<[RangeDescriptor]>> {
        self.tables.get(&table_id).cloned()
    }

    /// Caches a table's descriptors (sorted by shard); an empty list is not cached.
    pub(crate) fn insert(
        &mut self,
        table_id: TableId,
        mut ranges: Vec<RangeDescriptor>,
    ) -> Arc<[RangeDescriptor]> {
        ranges.sort_by_key(|r| r.shard);
        let ranges: Arc<[RangeDescriptor]> = ranges.into();
        if !ranges.is_empty() {
            self.tables.insert(table_id, ranges.clone());
        }
        ranges
    }

    pub(crate) fn remove(&mut self, table_id: TableId) {
        self.tables.remove(&table_id);
    }
}

#[cfg(test)]
mod tests {
    use ldr_storage::{Condition, ValueHeader, Version};
    use ldr_types::Timestamp;

    use super::*;

    fn row_key(table_id: TableId, shard: u16, pk: &[u8]) -> Vec<u8> {
        let mut k = keys::index_prefix(table_id, shard, 1);
        k.extend_from_slice(pk);
        k
    }

    fn row(key: Vec<u8>, dependents: Vec<Vec<u8>>) -> RowWrite {
        RowWrite {
            key,
            value: Some(b"v".to_vec()),
            condition: Condition::None,
            header: ValueHeader::default(),
            dependents: dependents
                .into_iter()
                .map(|k| (k, Some(Vec::new())))
                .collect(),
        }
    }

    fn kv(key: &[u8]) -> KeyVersion {
        KeyVersion {
            key: key.to_vec(),
            version: Version {
                ts: Timestamp::new(1, 0),
                header: ValueHeader::default(),
                value: Some(Vec::new()),
            },
        }
    }

    #[test]
    fn keys_route_to_system_or_their_shard() {
        assert_eq!(
            route_key(&keys::system_key("jobs", b"1")).expect("system"),
            KeyRoute::System
        );
        assert_eq!(
            route_key(&row_key(104, 7, b"x")).expect("table"),
            KeyRoute::Table {
                table_id: 104,
                shard: 7
            }
        );
        assert_eq!(
            route_key(&keys::shard_prefix(104, 7)).expect("prefix"),
            KeyRoute::Table {
                table_id: 104,
                shard: 7
            }
        );
        for bad in [&b""[..], b"\x00abc", b"\x02\x00\x00", b"\x03"] {
            assert!(route_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn span_targets() {
        assert_eq!(
            span_target(&keys::system_subspace_span("jobs")),
            SpanTarget::System
        );
        assert_eq!(span_target(&keys::table_span(9)), SpanTarget::Table(9));
        assert_eq!(
            span_target(&keys::index_span(9, 2, 1)),
            SpanTarget::Table(9)
        );
        assert_eq!(
            span_target(&Span::new(
                keys::shard_prefix(9, 0),
                keys::shard_prefix(10, 0)
            )),
            SpanTarget::Many
        );
        assert_eq!(span_target(&Span::new(vec![1], vec![3])), SpanTarget::Many);
        assert_eq!(
            span_target(&Span::new(b"b".to_vec(), b"a".to_vec())),
            SpanTarget::Empty
        );
    }

    #[test]
    fn spans_split_over_ranges_in_key_order() {
        let mut ranges = assign_shards(5, 4, &[1, 2], 10, 1);
        ranges.reverse();
        let whole = split_span(&keys::table_span(5), &ranges);
        assert_eq!(
            whole.iter().map(|(r, _)| r.shard).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert!(whole.iter().all(|(r, piece)| r.span == *piece));
        let one_index = split_span(&keys::index_span(5, 2, 1), &ranges);
        assert_eq!(one_index.len(), 1);
        assert_eq!(one_index[0].0.shard, 2);
        assert_eq!(one_index[0].1, keys::index_span(5, 2, 1));
        let across = Span::new(row_key(5, 1, b"m"), row_key(5, 2, b"c"));
        let pieces = split_span(&across, &ranges);
        assert_eq!(pieces.len(), 2);
        assert_eq!(
            pieces[0].1,
            Span::new(row_key(5, 1, b"m"), keys::shard_prefix(5, 2))
        );
        assert_eq!(
            pieces[1].1,
            Span::new(keys::shard_prefix(5, 2), row_key(5, 2, b"c"))
        );
    }

    #[test]
    fn merged_scans_honour_the_limit() {
        let parts = vec![vec![kv(b"a"), kv(b"b")], vec![], vec![kv(b"c"), kv(b"d")]];
        let keys_of = |v: Vec<KeyVersion>| v.into_iter().map(|k| k.key).collect::<Vec<_>>();
        assert_eq!(keys_of(merge_scans(parts.clone(), 0)).len(), 4);
        assert_eq!(
            keys_of(merge_scans(parts.clone(), 3)),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(keys_of(merge_scans(parts, 1)), vec![b"a".to_vec()]);
    }

    #[test]
    fn rows_group_by_range_in_input_order() {
        let ranges = assign_shards(5, 3, &[1, 2, 3], 10, 1);
        let locate = |k: &[u8]| match route_key(k)? {
            KeyRoute::Table { shard, .. } => find_shard(&ranges, shard)
                .cloned()
                .ok_or(KvError::NoRanges { table_id: 5 }),
            KeyRoute::System => Err(KvError::Internal("no".into())),
        };
        let rows = vec![
            row(row_key(5, 2, b"a"), vec![]),
            row(row_key(5, 0, b"b"), vec![keys::index_prefix(5, 0, 2)]),
            row(row_key(5, 2, b"c"), vec![]),
            row(row_key(5, 1, b"d"), vec![]),
        ];
        let groups = group_rows(&rows, locate).expect("valid rows");
        let view: Vec<(u16, Vec<usize>)> = groups
            .iter()
            .map(|(r, idx)| (r.shard, idx.clone()))
            .collect();
        assert_eq!(view, vec![(2, vec![0, 2]), (0, vec![1]), (1, vec![3])]);

        let bad = vec![row(row_key(5, 0, b"b"), vec![keys::index_prefix(5, 1, 2)])];
        let err = group_rows(&bad, locate).expect_err("dependent in another shard");
        assert!(err.to_string().contains("outside the row's range"), "{err}");
        assert!(
            group_rows(&[row(row_key(6, 9, b"z"), vec![])], locate).is_err(),
            "unknown shard"
        );
    }

    #[test]
    fn shards_spread_round_robin_over_live_nodes() {
        assert_eq!(default_shard_count(3), 9);
        assert_eq!(default_shard_count(0), 3);
        let ranges = assign_shards(7, 9, &[3, 1, 2, 2], 100, 1);
        assert_eq!(ranges.len(), 9);
        for node in 1..=3 {
            assert_eq!(
                ranges.iter().filter(|r| r.node_id == node).count(),
                3,
                "node {node}"
            );
        }
        assert_eq!(
            ranges.iter().map(|r| r.range_id).collect::<Vec<_>>(),
            (100..109).collect::<Vec<_>>()
        );
        for (i, r) in ranges.iter().enumerate() {
            assert_eq!(r.shard as usize, i);
            assert_eq!(r.span, keys::shard_span(7, r.shard));
            assert_eq!(r.table_id, Some(7));
        }
        assert!(
            ranges.iter().all(|r| r.replicas.is_empty()),
            "RF 1: single owners"
        );
        // Consecutive tables start on different nodes.
        let a = assign_shards(7, 1, &[1, 2, 3], 1, 1)[0].node_id;
        let b = assign_shards(8, 1, &[1, 2, 3], 1, 1)[0].node_id;
        assert_ne!(a, b);
    }

    #[test]
    fn replicas_are_distinct_consecutive_nodes_led_by_the_owner() {
        let ranges = assign_shards(7, 9, &[1, 2, 3], 100, 3);
        for r in &ranges {
            assert_eq!(r.replicas.len(), 3);
            assert_eq!(r.replicas[0], r.node_id, "the owner bootstraps and leads");
            let mut distinct = r.replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct, vec![1, 2, 3]);
        }
        // Fewer nodes than replicas: one replica per node.
        let small = assign_shards(7, 2, &[4, 5], 1, 3);
        assert!(small.iter().all(|r| r.replicas.len() == 2));
        assert_eq!(replica_nodes(&[1, 2, 3, 4], 3, 3), vec![4, 1, 2]);
        let r = &ranges[0];
        let next = next_replica(r, r.replicas[2]);
        assert_eq!(next, r.replicas[0], "wraps around");
        assert_eq!(next_replica(r, 99), r.replicas[0]);
        assert!(replica_nodes(&[1, 2, 3], 0, 1).is_empty());
        assert!(replica_nodes(&[4], 0, 3).is_empty(), "one node: one owner");
    }

    #[test]
    fn the_cache_finds_shards_and_forgets_dropped_tables() {
        let mut cache = RangeCache::default();
        let mut ranges = assign_shards(4, 5, &[1], 2, 1);
        ranges.reverse();
        let cached = cache.insert(4, ranges);
        assert_eq!(find_shard(&cached, 3).map(|r| r.range_id), Some(5));
        assert!(find_shard(&cached, 5).is_none());
        assert!(cache.get(4).is_some());
        cache.remove(4);
        assert!(cache.get(4).is_none());
        cache.insert(9, Vec::new());
        assert!(cache.get(9).is_none(), "empty lists are not cached");
    }

    fn placement(eligible: &[NodeId], replace: &[NodeId], load: &[(NodeId, usize)]) -> Placement {
        Placement {
            eligible: eligible.to_vec(),
            replace: replace.to_vec(),
            load: load.iter().copied().collect(),
            ..Placement::default()
        }
    }

    #[test]
    fn single_copy_ranges_up_replicate_once_another_live_node_can_hold_a_copy() {
        let single = RangeDescriptor {
            range_id: 7,
            table_id: Some(100),
            shard: 0,
            span: keys::table_span(100),
            node_id: 1,
            replicas: Vec::new(),
            generation: 0,
        };
        let three = placement(&[1, 2, 3], &[], &[]);
        assert!(should_up_replicate(&single, 1, 3, &three));
        // Only its owner does it, only for a zone that wants copies.
        assert!(!should_up_replicate(&single, 2, 3, &three));
        assert!(!should_up_replicate(&single, 1, 1, &three));
        // A one-node cluster, or one whose other nodes are down or leaving: nowhere to go.
        assert!(!should_up_replicate(
            &single,
            1,
            3,
            &placement(&[1], &[], &[])
        ));
        let mut others_down = placement(&[1, 2], &[3], &[]);
        others_down.no_leases = vec![2];
        assert!(!should_up_replicate(&single, 1, 3, &others_down));
        // A draining owner hands nothing new out.
        let mut draining = three.clone();
        draining.draining = vec![1];
        assert!(!should_up_replicate(&single, 1, 3, &draining));
        // A range that is a Raft group already, and the system range, are the queue's.
        let group = RangeDescriptor {
            replicas: vec![1],
            generation: 1,
            ..single.clone()
        };
        assert!(!should_up_replicate(&group, 1, 3, &three));
        let system = RangeDescriptor {
            table_id: None,
            ..single
        };
        assert!(!should_up_replicate(&system, 1, 3, &three));
    }

    #[test]
    fn ranges_grow_to_their_replication_factor_on_the_least_loaded_nodes() {
        use ReplicaChange::*;
        let nodes = placement(&[1, 2, 3, 4], &[], &[(2, 9), (3, 1), (4, 1)]);
        assert_eq!(plan_replica_change(&[1], 1, 3, &nodes), Some(Add(3)));
        assert_eq!(plan_replica_change(&[1, 3], 1, 3, &nodes), Some(Add(4)));
        assert_eq!(plan_replica_change(&[1, 3, 4], 1, 3, &nodes), None);
        // Fewer nodes than the factor: one replica per node, then nothing to do.
        let two = placement(&[1, 2], &[], &[]);
        assert_eq!(plan_replica_change(&[1], 1, 3, &two), Some(Add(2)));
        assert_eq!(plan_replica_change(&[1, 2], 1, 3, &two), None);
    }

    #[test]
    fn dead_voters_are_replaced_before_they_are_removed() {
        use ReplicaChange::*;
        // Node 3 is dead past time_until_store_dead, node 4 can take its place.
        let nodes = placement(&[1, 2, 4], &[3], &[]);
        assert_eq!(plan_replica_change(&[1, 2, 3], 2, 3, &nodes), Some(Add(4)));
        assert_eq!(
            plan_replica_change(&[1, 2, 3, 4], 2, 3, &nodes),
            Some(Remove(3))
        );
        assert_eq!(plan_replica_change(&[1, 2, 4], 2, 3, &nodes), None);
        // Nowhere to go: the dead voter stays (the range is under-replicated, as in
        // CockroachDB), so it is back as soon as the node is.
        let three = placement(&[1, 2], &[3], &[]);
        assert_eq!(plan_replica_change(&[1, 2, 3], 1, 3, &three), None);
    }

    #[test]
    fn a_lowered_factor_removes_voters_but_never_the_leaseholder() {
        use ReplicaChange::*;
        let nodes = placement(&[1, 2, 3], &[], &[(1, 5), (2, 7), (3, 6)]);
        assert_eq!(
            plan_replica_change(&[1, 2, 3], 2, 1, &nodes),
            Some(Remove(3))
        );
        assert_eq!(plan_replica_change(&[1, 2], 2, 1, &nodes), Some(Remove(1)));
        assert_eq!(plan_replica_change(&[2], 2, 1, &nodes), None);
    }

    #[test]
    fn a_leaving_leaseholder_hands_its_lease_over_once_it_has_a_replacement() {
        use ReplicaChange::*;
        // Node 3 is decommissioning and holds the lease.
        let mut nodes = placement(&[1, 2, 4], &[3], &[]);
        nodes.leases = HashMap::from([(1, 5), (2, 1), (4, 0)]);
        nodes.no_leases = vec![4];
        // First the lease goes to the staying voter with the fewest leases that may hold
        // one (4 is draining), then the new leaseholder adds a replacement and removes 3.
        assert_eq!(
            plan_replica_change(&[1, 2, 3], 3, 3, &nodes),
            Some(TransferLease(2))
        );
        assert_eq!(plan_replica_change(&[1, 2, 3], 2, 3, &nodes), Some(Add(4)));
        assert_eq!(
            plan_replica_change(&[1, 2, 3, 4], 2, 3, &nodes),
            Some(Remove(3))
        );
        // A draining leaseholder that stays a voter just hands the lease over.
        let mut drain = placement(&[1, 2, 3], &[], &[]);
        drain.no_leases = vec![3];
        drain.draining = vec![3];
        assert_eq!(
            plan_replica_change(&[1, 2, 3], 3, 3, &drain),
            Some(TransferLease(1))
        );
        // With nowhere to hand it, it keeps it.
        drain.no_leases = vec![1, 2, 3];
        assert_eq!(plan_replica_change(&[1, 2, 3], 3, 3, &drain), None);
        // A leaseholder whose own liveness record looks expired (a slow heartbeat) is not
        // leaving: it keeps its lease and goes on with the plan.
        let mut slow = placement(&[1, 2, 3, 4], &[], &[(1, 1), (2, 1), (3, 1), (4, 1)]);
        slow.no_leases = vec![3];
        assert_eq!(
            plan_replica_change(&[1, 2, 3, 4], 3, 3, &slow),
            Some(Remove(4))
        );
    }

    #[test]
    fn a_joined_node_receives_replicas_and_leases_until_the_counts_even_out() {
        use ReplicaChange::*;
        // Node 4 joined a cluster with 10 ranges on nodes 1-3.
        let mut nodes = placement(&[1, 2, 3, 4], &[], &[(1, 10), (2, 10), (3, 10)]);
        nodes.leases = HashMap::from([(1, 4), (2, 3), (3, 3)]);
        assert_eq!(plan_rebalance(&[1, 2, 3], 1, 3, &nodes), Some(Add(4)));
        // The next pass removes the most loaded voter that is not the leaseholder.
        nodes.record(Add(4), 1);
        assert_eq!(
            plan_replica_change(&[1, 2, 3, 4], 1, 3, &nodes),
            Some(Remove(3))
        );
        // Even (within one): nothing moves.
        let even = placement(&[1, 2, 3, 4], &[], &[(1, 8), (2, 7), (3, 8), (4, 7)]);
        assert_eq!(plan_rebalance(&[1, 2, 3], 1, 3, &even), None);
        // Leases: node 1 holds 6 of 10 with 4 holders; node 4 (a voter) holds none.
        let mut leases = even.clone();
        leases.leases = HashMap::from([(1, 6), (2, 2), (3, 2), (4, 0)]);
        assert_eq!(
            plan_rebalance(&[1, 3, 4], 1, 3, &leases),
            Some(TransferLease(4))
        );
        // At or below the mean, or no voter two below: keep it.
        assert_eq!(plan_rebalance(&[1, 3, 4], 2, 3, &leases), None);
        leases.leases = HashMap::from([(1, 3), (2, 3), (3, 2), (4, 2)]);
        assert_eq!(plan_rebalance(&[1, 3, 4], 1, 3, &leases), None);
        // Never while a node's replicas are being replaced, never under- or over-replicated.
        let mut repairing = nodes.clone();
        repairing.replace = vec![2];
        assert_eq!(plan_rebalance(&[1, 3, 4], 1, 3, &repairing), None);
        assert_eq!(plan_rebalance(&[1, 2], 1, 3, &nodes), None);
    }
}
