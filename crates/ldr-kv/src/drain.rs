//! Lease transfers and draining.
//!
//! A lease transfer (openraft 0.9 has no leadership transfer of its own): the leaseholder
//! stops serving the range and stops heartbeating it ([`Replica::begin_lease_transfer`]),
//! waits until the target has every entry it appended, then asks the target to campaign
//! (`Kv.Campaign`). The old leader, having sent no heartbeat to itself, votes for the
//! up-to-date candidate, which wins with that vote; the old leader steps down when it sees
//! the new term. The range serves nothing from the moment the old leaseholder stops until the
//! new one's lease starts (one election round trip plus the new lease's clock-offset wait),
//! and nothing the old leaseholder served can be overwritten below it (see `ldr-replica`'s
//! lease rule). If the transfer fails, the old leaseholder serves again.
//!
//! Draining (`ldr node drain`, and every graceful stop): the node's replicas stop
//! campaigning, every lease it holds is transferred to another live voter, its job claims are
//! released (the server's [`DrainHook`]) so another node adopts them at once, and its
//! liveness record says `draining`, so no other node moves a lease to it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use ldr_replica::Replica;
use ldr_types::{NodeId, RangeId};
use tracing::{debug, info};

use ldr_proto::pb;

use crate::node::NodeInner;
use crate::replication::kv_error;
use crate::{KvError, Result};

/// How long a lease transfer waits for its target to catch up, once while still serving and
/// once more after it stopped.
const TRANSFER_CATCH_UP: Duration = Duration::from_millis(500);
/// The most a leaseholder stops serving for one transfer (a safety net: the transfer ends
/// sooner, won or not).
const TRANSFER_HOLD: Duration = Duration::from_secs(3);
/// The target's whole campaign, RPC included.
const CAMPAIGN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a campaign target waits to see itself elected.
const CAMPAIGN_WAIT: Duration = Duration::from_millis(1500);
/// Lease transfers a draining node runs at once.
const DRAIN_CONCURRENCY: usize = 8;

/// What the server does when its node drains: release the job claims this node holds and
/// stop their local tasks. Returns how many jobs still run here.
#[async_trait::async_trait]
pub trait DrainHook: Send + Sync {
    async fn drain(&self) -> usize;
}

/// What is left on a draining node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainProgress {
    pub remaining_leases: u32,
    pub remaining_jobs: u32,
}

impl DrainProgress {
    pub fn done(&self) -> bool {
        self.remaining_leases == 0 && self.remaining_jobs == 0
    }
}

impl NodeInner {
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Moves the lease of `replica` (which this node leads) to `target`. Returns whether the
    /// lease left this node.
    pub(crate) async fn transfer_lease(
        self: &Arc<Self>,
        replica: &Arc<Replica>,
        target: NodeId,
    ) -> Result<bool> {
        let me = self.node_id();
        let range_id = replica.range_id();
        let caught_up = replica
            .begin_lease_transfer(u64::from(target), TRANSFER_CATCH_UP, TRANSFER_HOLD)
            .await
            .map_err(|e| kv_error(e, me));
        let result = async {
            if !caught_up? {
                return Err(KvError::Internal(format!(
                    "node {target} did not catch up with range {range_id} in time"
                )));
            }
            let won = tokio::time::timeout(
                CAMPAIGN_TIMEOUT,
                self.client().campaign_on(target, range_id),
            )
            .await
            .unwrap_or(Ok(false))?;
            // The target may still win after answering (its campaign goes on); the old
            // leader steps down once it sees the new term.
            let deadline = tokio::time::Instant::now() + CAMPAIGN_WAIT;
            while replica.is_leader() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(won)
        }
        .await;
        replica.end_lease_transfer();
        match &result {
            Ok(true) => {
                self.leaseholders.write().insert(range_id, target);
                debug!(range_id, target, "lease transferred");
            }
            Ok(false) => debug!(range_id, target, "lease transfer lost the election"),
            Err(e) => debug!(range_id, target, error = %e, "lease transfer failed"),
        }
        result
    }

    /// `Kv.Campaign`: this node's replica of `range_id` campaigns; answers whether it leads.
    pub(crate) async fn serve_campaign(&self, range_id: RangeId) -> Result<bool> {
        if self.is_draining() {
            return Ok(false);
        }
        let me = self.node_id();
        let replica = self
            .replicas()?
            .replica(range_id)
            .ok_or(KvError::RangeNotFound { range_id })?;
        if !replica.is_leader() {
            replica.campaign().await.map_err(|e| kv_error(e, me))?;
        }
        let deadline = tokio::time::Instant::now() + CAMPAIGN_WAIT;
        while !replica.is_leader() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(replica.is_leader())
    }

    /// One drain pass: stop taking leases, transfer every lease this node holds, release its
    /// jobs. Returns what is left (the caller repeats until nothing is).
    pub(crate) async fn drain_once(self: &Arc<Self>) -> Result<DrainProgress> {
        if !self.draining.swap(true, Ordering::Relaxed) {
            info!(node_id = self.node_id(), "draining");
            // Tell the cluster at once, so no node moves a lease here meanwhile.
            if let Err(e) = self.heartbeat_liveness().await {
                debug!(error = %e, "could not publish the draining state");
            }
        }
        let store = self.replicas()?.clone();
        store.set_draining(true);
        let me = self.node_id();
        let placement = crate::routing::Placement::of_nodes(
            &self.client().nodes().await.unwrap_or_default(),
            self.clock.now(),
            self.settings
                .duration(crate::replication::TIME_UNTIL_STORE_DEAD),
        );
        let leading: Vec<Arc<Replica>> = store
            .replicas()
            .into_iter()
            .filter(|r| r.is_leader())
            .collect();
        futures::stream::iter(leading)
            .for_each_concurrent(DRAIN_CONCURRENCY, |replica| {
                let placement = &placement;
                async move {
                    let voters: Vec<NodeId> = replica
                        .voters()
                        .into_iter()
                        .filter_map(|v| NodeId::try_from(v).ok())
                        .collect();
                    if let Some(target) = placement.lease_target(&voters, me) {
                        let _ = self.transfer_lease(&replica, target).await;
                    }
                }
            })
            .await;
        let remaining_leases = store.replicas().iter().filter(|r| r.is_leader()).count() as u32;
        let hook = self.drain_hook.read().clone();
        let remaining_jobs = match hook {
            Some(hook) => hook.drain().await as u32,
            None => 0,
        };
        Ok(DrainProgress {
            remaining_leases,
            remaining_jobs,
        })
    }

    /// Drains until nothing is left, `deadline` passes, or three passes in a row moved
    /// nothing (every other node is draining or down too, as when a whole cluster stops);
    /// returns what is left.
    pub(crate) async fn drain(self: &Arc<Self>, deadline: Duration) -> Result<DrainProgress> {
        let until = tokio::time::Instant::now() + deadline;
        let mut stuck = 0;
        let mut last: Option<DrainProgress> = None;
        loop {
            let progress = self.drain_once().await?;
            if last == Some(progress) {
                stuck += 1;
            } else {
                stuck = 0;
            }
            last = Some(progress);
            if progress.done() || stuck >= 2 || tokio::time::Instant::now() >= until {
                return Ok(progress);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `Kv.Drain`: one drain pass; with `shutdown`, asks the process to stop once drained.
    pub(crate) async fn serve_drain(
        self: &Arc<Self>,
        shutdown: bool,
    ) -> Result<pb::KvDrainResponse> {
        let progress = self.drain_once().await?;
        if shutdown && progress.done() {
            info!(node_id = self.node_id(), "drained; stopping as asked");
            // After this answer is on its way.
            let inner = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                inner.shutdown_requested.send_replace(true);
            });
        }
        Ok(pb::KvDrainResponse {
            remaining_leases: progress.remaining_leases,
            remaining_jobs: progress.remaining_jobs,
        })
    }
}
