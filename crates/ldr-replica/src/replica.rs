//! One node's replica of one range: its Raft handle, its applied state, and the leader lease.
//!
//! Lease rule: a replica is the leaseholder while it is the Raft leader and a quorum
//! acknowledged its leadership less than the lease duration ago. The lease duration is shorter
//! than the minimum election timeout, so by the time another replica can be elected (its
//! followers must first miss the old leader for a whole election timeout), the old leader's
//! lease has expired and it stops serving.
//!
//! A new leaseholder also waits until it has applied an entry of its own term (so it
//! evaluates against every committed write) and until its physical clock passes the moment it
//! took the lease plus the maximum clock offset: the old leaseholder served reads and closed
//! timestamps only up to its own clock, which was at most that far ahead, so every write of
//! the new leaseholder lands above anything the old one served or closed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ldr_types::{RangeId, Span, Timestamp};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, ServerState};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::state_machine::AppliedState;
use crate::{Command, RaftNodeId, ReplicaError, ReplicaNode, TypeConfig};

/// Whether this replica may serve reads and evaluate writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    Valid,
    /// This replica leads and will serve once its clock passed the previous lease (retry here
    /// shortly).
    Starting,
    /// Another replica leads, or this leader has not heard from a quorum recently enough.
    NotLeaseholder {
        hint: Option<RaftNodeId>,
    },
}

/// A snapshot of a replica's state, for `SHOW RANGES` and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub range_id: RangeId,
    pub span: Span,
    pub leader: Option<RaftNodeId>,
    pub is_leaseholder: bool,
    pub term: u64,
    pub applied_index: u64,
    pub voters: Vec<RaftNodeId>,
    pub learners: Vec<RaftNodeId>,
    pub closed_ts: Timestamp,
    /// The last log index removed from the log (covered by a snapshot).
    pub purged_index: Option<u64>,
}

/// One node's replica of one range.
pub struct Replica {
    pub(crate) range_id: RangeId,
    pub(crate) span: Span,
    pub(crate) node_id: RaftNodeId,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) state: Arc<Mutex<AppliedState>>,
    pub(crate) applied_rx: watch::Receiver<u64>,
    pub(crate) lease: Duration,
    pub(crate) clock: Arc<ldr_types::Clock>,
    /// `(term, wall ns)`: the lease of that term serves from that physical time on.
    pub(crate) lease_floor: Mutex<Option<(u64, u64)>>,
    /// Consistency checksums this replica computed (see `checksum.rs`).
    pub(crate) checksums: Arc<crate::checksum::Checksums>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("range_id", &self.range_id)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Replica {
    pub fn range_id(&self) -> RangeId {
        self.range_id
    }

    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Whether this replica holds a valid lease now.
    pub fn lease_status(&self) -> LeaseStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let lease_ms = self.lease.as_millis() as u64;
        let leads = m.state == ServerState::Leader
            && m.current_leader == Some(self.node_id)
            // A single-voter group acknowledges itself.
            && m.millis_since_quorum_ack.is_some_and(|ms| ms < lease_ms);
        if !leads {
            return LeaseStatus::NotLeaseholder {
                hint: m.current_leader.filter(|l| *l != self.node_id),
            };
        }
        let applied_own_term = m
            .last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term);
        if !applied_own_term {
            return LeaseStatus::Starting;
        }
        let now_ns = self.clock.physical_now_ns();
        let mut floor = self.lease_floor.lock();
        let floor_ns = match *floor {
            Some((term, ns)) if term == m.current_term => ns,
            _ => {
                let ns = now_ns.saturating_add(self.clock.max_offset().as_nanos() as u64);
                *floor = Some((m.current_term, ns));
                ns
            }
        };
        if now_ns >= floor_ns {
            LeaseStatus::Valid
        } else {
            LeaseStatus::Starting
        }
    }

    /// [`Replica::lease_status`] as a result.
    pub fn check_lease(&self) -> Result<(), ReplicaError> {
        match self.lease_status() {
            LeaseStatus::Valid => Ok(()),
            LeaseStatus::NotLeaseholder { hint } => Err(ReplicaError::NotLeaseholder {
                range_id: self.range_id,
                hint,
            }),
            LeaseStatus::Starting => Err(ReplicaError::NotLeaseholder {
                range_id: self.range_id,
                hint: Some(self.node_id),
            }),
        }
    }

    /// Proposes an evaluated command and returns the index it was applied at on this replica
    /// (every replica applies it at that index). A leadership change while the command is in
    /// flight makes the outcome ambiguous: the new leader may still commit it.
    pub async fn propose(&self, command: Command) -> Result<u64, ReplicaError> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.log_id.index),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ReplicaError::Ambiguous {
                    range_id: self.range_id,
                    detail: format!(
                        "leadership moved to {:?} while the command was in flight",
                        f.leader_id
                    ),
                })
            }
            Err(RaftError::APIError(e)) => Err(ReplicaError::Raft {
                range_id: self.range_id,
                detail: e.to_string(),
            }),
            Err(RaftError::Fatal(e)) => Err(ReplicaError::Ambiguous {
                range_id: self.range_id,
                detail: format!("raft stopped: {e}"),
            }),
        }
    }

    /// The applied state's closed timestamp.
    pub fn closed_ts(&self) -> Timestamp {
        self.state.lock().closed_ts
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied_rx.borrow()
    }

    /// Waits until this replica has applied `index`; false on timeout.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.applied_rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn status(&self) -> ReplicaStatus {
        let is_leaseholder = self.lease_status() == LeaseStatus::Valid;
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: Vec<RaftNodeId> = membership.voter_ids().collect();
        let learners: Vec<RaftNodeId> = membership.learner_ids().collect();
        ReplicaStatus {
            range_id: self.range_id,
            span: self.span.clone(),
            leader: m.current_leader,
            is_leaseholder,
            term: m.current_term,
            applied_index: self.applied_index(),
            voters,
            learners,
            closed_ts: self.closed_ts(),
            purged_index: m.purged.map(|p| p.index),
        }
    }

    /// The voters of the group's current membership, as this replica knows it.
    pub fn voters(&self) -> Vec<RaftNodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    /// Voters and learners of the group's current membership, as this replica knows it.
    pub fn members(&self) -> Vec<RaftNodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    /// Adds `node` as a learner (it receives the log or a snapshot) and waits until it caught
    /// up, then makes the voters exactly `voters` (joint consensus). Leader only.
    pub async fn change_voters(
        &self,
        new_nodes: BTreeMap<RaftNodeId, ReplicaNode>,
        voters: std::collections::BTreeSet<RaftNodeId>,
    ) -> Result<(), ReplicaError> {
        let raft_error = |e: String| ReplicaError::Raft {
            range_id: self.range_id,
            detail: e,
        };
        for (id, node) in new_nodes {
            self.raft
                .add_learner(id, node, true)
                .await
                .map_err(|e| raft_error(e.to_string()))?;
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| raft_error(e.to_string()))?;
        Ok(())
    }

    /// Asks this replica to campaign now (a lease transfer target after a drain).
    pub async fn campaign(&self) -> Result<(), ReplicaError> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| ReplicaError::Raft {
                range_id: self.range_id,
                detail: e.to_string(),
            })
    }
}
