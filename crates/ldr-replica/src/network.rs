//! Raft messages between replicas: what travels ([`RaftMessage`], [`RaftReply`]), the
//! transport a node provides ([`RaftTransport`], batched per peer by [`crate::grpc`]), and
//! openraft's per-range network built on it.

use std::sync::Arc;
use std::time::Duration;

use ldr_types::RangeId;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::command::{decode, encode};
use crate::{RaftNodeId, ReplicaNode, TypeConfig};

/// One Raft message for one range, as the transport carries it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub range_id: RangeId,
    pub from: RaftNodeId,
    /// A checksummed [`RaftMessage`].
    pub payload: Vec<u8>,
    /// An append without entries (a heartbeat or a probe): the transport may hold it for a
    /// moment so that the heartbeats of many ranges share one batch.
    pub heartbeat: bool,
}

/// Why a message got no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached or did not answer in time.
    #[error("node {node} unreachable: {detail}")]
    Unreachable { node: RaftNodeId, detail: String },
    /// The peer refused the message (unknown range, another cluster, malformed bytes).
    #[error("node {node} refused the message: {detail}")]
    Refused { node: RaftNodeId, detail: String },
}

/// Sends one range's Raft message to a peer and returns the peer's checksummed reply.
/// Implementations batch messages per peer.
#[async_trait::async_trait]
pub trait RaftTransport: Send + Sync + 'static {
    async fn send(
        &self,
        to: RaftNodeId,
        address: &str,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError>;
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftMessage {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<RaftNodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftReply {
    Append(Result<AppendEntriesResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    Vote(Result<VoteResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    Snapshot(
        Result<InstallSnapshotResponse<RaftNodeId>, RaftError<RaftNodeId, InstallSnapshotError>>,
    ),
}

/// Creates the per-peer networks of one range.
pub(crate) struct RangeNetworkFactory {
    pub(crate) range_id: RangeId,
    pub(crate) from: RaftNodeId,
    pub(crate) transport: Arc<dyn RaftTransport>,
}

impl RaftNetworkFactory<TypeConfig> for RangeNetworkFactory {
    type Network = RangeNetwork;

    async fn new_client(&mut self, target: RaftNodeId, node: &ReplicaNode) -> Self::Network {
        RangeNetwork {
            range_id: self.range_id,
            from: self.from,
            target,
            address: node.address.clone(),
            transport: self.transport.clone(),
        }
    }
}

pub(crate) struct RangeNetwork {
    range_id: RangeId,
    from: RaftNodeId,
    target: RaftNodeId,
    address: String,
    transport: Arc<dyn RaftTransport>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<RaftNodeId, ReplicaNode, RaftError<RaftNodeId, E>>>;

impl RangeNetwork {
    async fn call<E: std::error::Error>(
        &self,
        message: RaftMessage,
        option: &RPCOption,
    ) -> Result<RaftReply, RPCError<RaftNodeId, ReplicaNode, RaftError<RaftNodeId, E>>> {
        let heartbeat = matches!(&message, RaftMessage::Append(r) if r.entries.is_empty());
        let payload = encode("raft message", &message)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let envelope = Envelope {
            range_id: self.range_id,
            from: self.from,
            payload,
            heartbeat,
        };
        let raw = self
            .transport
            .send(self.target, &self.address, envelope, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        decode::<RaftReply>("raft reply", &raw)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    fn remote<T, E: std::error::Error>(
        &self,
        result: Result<T, RaftError<RaftNodeId, E>>,
    ) -> Result<T, RPCError<RaftNodeId, ReplicaNode, RaftError<RaftNodeId, E>>> {
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn unexpected<E: std::error::Error>(
    what: &str,
) -> RPCError<RaftNodeId, ReplicaNode, RaftError<RaftNodeId, E>> {
    let e = TransportError::Refused {
        node: 0,
        detail: format!("unexpected reply kind to {what}"),
    };
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for RangeNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<RaftNodeId>> {
        match self.call(RaftMessage::Append(rpc), &option).await? {
            RaftReply::Append(r) => self.remote(r),
            _ => Err(unexpected("append entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<RaftNodeId>, InstallSnapshotError> {
        match self.call(RaftMessage::Snapshot(rpc), &option).await? {
            RaftReply::Snapshot(r) => self.remote(r),
            _ => Err(unexpected("install snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<RaftNodeId>> {
        match self.call(RaftMessage::Vote(rpc), &option).await? {
            RaftReply::Vote(r) => self.remote(r),
            _ => Err(unexpected("vote")),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

/// Encodes a reply (the receiving side).
pub(crate) fn encode_reply(reply: &RaftReply) -> Result<Vec<u8>, crate::ReplicaError> {
    encode("raft reply", reply)
}

/// Decodes a message (the receiving side).
pub(crate) fn decode_message(raw: &[u8]) -> Result<RaftMessage, crate::ReplicaError> {
    decode("raft message", raw)
}
