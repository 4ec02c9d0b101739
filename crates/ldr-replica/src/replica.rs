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
use openraft::error::ClientWriteError;
use openraft::{Raft, ServerState};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::state_machine::AppliedState;
use crate::{Command, RaftNodeId, ReplicaError, ReplicaNode, TypeConfig};

/// How far behind (in log entries) a lease transfer's target may be when the leaseholder
/// stops serving; the rest arrives while it waits.
const TRANSFER_LAG_MAX: u64 = 16;

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
    /// A lease transfer in progress: `(target, term, until)`. While set for the current term
    /// and not past `until`, this replica serves nothing and sends no heartbeats, so the
    /// target may win an election at once.
    pub(crate) transfer: Mutex<Option<(RaftNodeId, u64, std::time::Instant)>>,
    /// Commands proposed here and not yet answered. A proposal counts itself while holding
    /// `transfer`'s lock, so a lease transfer that begins afterwards sees it and waits for its
    /// answer before the leadership moves (which would drop it unanswered).
    pub(crate) proposals: watch::Sender<u64>,
    /// Set (under `transfer`'s lock) when the replica stops: it proposes nothing more.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// Whether this replica may campaign (false while its node drains).
    pub(crate) campaigning: std::sync::atomic::AtomicBool,
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
        if let Some(target) = self.transfer_target(m.current_term) {
            return LeaseStatus::NotLeaseholder { hint: Some(target) };
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
    /// (every replica applies it at that index). Only a command that Raft dropped unanswered
    /// (the replica stopped with it in its log) has an ambiguous outcome: a command appended
    /// here is answered when this replica applies it, even after it stepped down, or refused
    /// when a new leader truncates it (then it never committed).
    pub async fn propose(&self, command: Command) -> Result<u64, ReplicaError> {
        // A write that passed the lease check just before a lease transfer began is refused
        // here, unproposed (so not ambiguous): the client retries at the new leaseholder. One
        // that gets past this point is counted, and the transfer waits for its answer.
        let term = self.raft.metrics().borrow().current_term;
        let _proposal = {
            let transfer = self.transfer.lock();
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ReplicaError::NotLeaseholder {
                    range_id: self.range_id,
                    hint: None,
                });
            }
            if let Some(target) = Self::target_of(&transfer, term) {
                return Err(ReplicaError::NotLeaseholder {
                    range_id: self.range_id,
                    hint: Some(target),
                });
            }
            ProposalGuard::new(&self.proposals)
        };
        // Not handed to Raft (its core stopped: the replica was removed): nothing was
        // proposed, so the client may retry elsewhere.
        let answer = match self.raft.client_write_ff(command).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(range_id = self.range_id, error = %e, "not proposed");
                return Err(ReplicaError::NotLeaseholder {
                    range_id: self.range_id,
                    hint: None,
                });
            }
        };
        let result = match answer.await {
            Ok(result) => result,
            // Raft dropped the command unanswered (this leader stepped down or stopped with it
            // in its log): a later leader may still commit it.
            Err(_) => {
                return Err(ReplicaError::Ambiguous {
                    range_id: self.range_id,
                    detail:
                        "raft dropped the command before answering (leader stepped down or stopped)"
                            .into(),
                });
            }
        };
        match result {
            Ok(response) => Ok(response.log_id.index),
            // openraft answers so only for a command it never appended (this replica no longer
            // leads) or one a new leader truncated from its log (so never committed): not
            // ambiguous, the client retries at the leader.
            Err(ClientWriteError::ForwardToLeader(f)) => Err(ReplicaError::NotLeaseholder {
                range_id: self.range_id,
                hint: f.leader_id,
            }),
            Err(e) => Err(ReplicaError::Raft {
                range_id: self.range_id,
                detail: e.to_string(),
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

    /// Builds a snapshot at the applied index and purges the log up to it, waiting at most
    /// `timeout`; returns the purged index. Replicas added afterwards start from a snapshot
    /// of the span's data (taken when it is sent), never by replaying the log from its
    /// start: a group made on data written without Raft has none of that data in its log.
    pub async fn compact_log(&self, timeout: Duration) -> Result<u64, ReplicaError> {
        let raft_error = |e: String| ReplicaError::Raft {
            range_id: self.range_id,
            detail: e,
        };
        let applied = self.applied_index();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut metrics = self.raft.metrics();
        let purged = |m: &openraft::RaftMetrics<RaftNodeId, ReplicaNode>| {
            m.purged.is_some_and(|p| p.index >= applied)
        };
        if purged(&metrics.borrow()) {
            return Ok(applied);
        }
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| raft_error(e.to_string()))?;
        let built = matches!(
            tokio::time::timeout_at(
                deadline,
                metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= applied)),
            )
            .await,
            Ok(Ok(_))
        );
        if !built {
            return Err(raft_error(format!(
                "no snapshot at index {applied} within {timeout:?}"
            )));
        }
        self.raft
            .trigger()
            .purge_log(applied)
            .await
            .map_err(|e| raft_error(e.to_string()))?;
        let done = matches!(
            tokio::time::timeout_at(deadline, metrics.wait_for(purged)).await,
            Ok(Ok(_))
        );
        if !done {
            return Err(raft_error(format!(
                "the log was not purged to index {applied} within {timeout:?}"
            )));
        }
        Ok(applied)
    }

    /// Asks this replica to campaign now (the target of a lease transfer).
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

    /// Whether this replica is the Raft leader (lease or not).
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// The transfer target while a lease transfer of `term` is in progress.
    fn transfer_target(&self, term: u64) -> Option<RaftNodeId> {
        Self::target_of(&self.transfer.lock(), term)
    }

    fn target_of(
        transfer: &Option<(RaftNodeId, u64, std::time::Instant)>,
        term: u64,
    ) -> Option<RaftNodeId> {
        match *transfer {
            Some((target, t, until)) if t == term && std::time::Instant::now() < until => {
                Some(target)
            }
            _ => None,
        }
    }

    /// Whether a lease transfer is in progress (the heartbeat task skips this leader).
    pub(crate) fn transferring(&self) -> bool {
        let term = self.raft.metrics().borrow().current_term;
        self.transfer_target(term).is_some()
    }

    /// Starts giving the lease to `target` (a voter). First, still serving, waits up to
    /// `catch_up` until `target` is at most [`TRANSFER_LAG_MAX`] entries behind (else gives up:
    /// the range never stopped serving). Then stops serving and heartbeating (for at most
    /// `hold`, the safety net should the caller never end the transfer) and waits up to
    /// `catch_up` until `target` has every entry this leader appended, so it may win an
    /// election at once: a leader that stopped heartbeating votes for an up-to-date candidate
    /// (openraft's followers refuse votes while they heard a leader recently; the old
    /// leader's vote is enough for a majority of three). Returns whether the target caught
    /// up; the caller then has the target campaign, and calls
    /// [`Replica::end_lease_transfer`] in every case.
    pub async fn begin_lease_transfer(
        &self,
        target: RaftNodeId,
        catch_up: Duration,
        hold: Duration,
    ) -> Result<bool, ReplicaError> {
        {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            if !(m.state == ServerState::Leader && m.current_leader == Some(self.node_id)) {
                return Err(ReplicaError::NotLeaseholder {
                    range_id: self.range_id,
                    hint: m.current_leader,
                });
            }
            if !m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == target)
            {
                return Err(ReplicaError::Raft {
                    range_id: self.range_id,
                    detail: format!("node {target} is not a voter of the range"),
                });
            }
        }
        if !self.wait_target(target, TRANSFER_LAG_MAX, catch_up).await {
            return Ok(false);
        }
        let term = self.raft.metrics().borrow().current_term;
        *self.transfer.lock() = Some((target, term, std::time::Instant::now() + hold));
        // The old leaseholder must not win the lease back while the target campaigns (in a
        // group of four voters, the target also needs a follower whose openraft lease on the
        // old leader has to expire first).
        self.raft.runtime_config().elect(false);
        // Every command proposed so far is answered (so no write in flight becomes ambiguous
        // when this leader steps down), applied here, and logged on the target.
        let started = std::time::Instant::now();
        let mut proposals = self.proposals.subscribe();
        let answered = tokio::time::timeout(catch_up, proposals.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok());
        if !answered {
            return Ok(false);
        }
        Ok(self
            .wait_target(target, 0, catch_up.saturating_sub(started.elapsed()))
            .await)
    }

    /// Waits until this leader's follower `target` is at most `lag` entries behind.
    async fn wait_target(&self, target: RaftNodeId, lag: u64, timeout: Duration) -> bool {
        let mut rx = self.raft.metrics();
        tokio::time::timeout(timeout, async {
            loop {
                {
                    let m = rx.borrow_and_update();
                    if m.state != ServerState::Leader {
                        return false;
                    }
                    let last = m.last_log_index.unwrap_or(0);
                    // Caught up entirely: also every entry applied here.
                    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&target).cloned().flatten())
                        .map(|l| l.index);
                    if (lag > 0 || applied >= last) && matched.is_some_and(|i| i + lag >= last) {
                        return true;
                    }
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Stops proposing (new proposals are refused, unproposed) and waits up to `timeout` for
    /// the answers to those already proposed; then Raft may stop without leaving any
    /// proposer unsure whether its command committed. Returns whether all were answered.
    pub(crate) async fn stop_proposing(&self, timeout: Duration) -> bool {
        {
            let _transfer = self.transfer.lock();
            self.stopping
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut proposals = self.proposals.subscribe();
        tokio::time::timeout(timeout, proposals.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Ends a lease transfer: a replica still leading serves again.
    pub fn end_lease_transfer(&self) {
        *self.transfer.lock() = None;
        self.raft
            .runtime_config()
            .elect(self.campaigning.load(std::sync::atomic::Ordering::Relaxed));
    }

    /// Stops or resumes campaigning (a draining node takes no leases).
    pub fn set_campaigning(&self, enabled: bool) {
        self.campaigning
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
        self.raft.runtime_config().elect(enabled);
    }
}

/// Counts one proposal in [`Replica::proposals`] until dropped.
struct ProposalGuard<'a>(&'a watch::Sender<u64>);

impl<'a> ProposalGuard<'a> {
    fn new(proposals: &'a watch::Sender<u64>) -> Self {
        proposals.send_modify(|n| *n += 1);
        Self(proposals)
    }
}

impl Drop for ProposalGuard<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
