//! Raft messages over the node's one port (tonic), batched per peer: every range's messages
//! to one node queue on one sender task, which ships whatever has queued as one `Deliver` RPC
//! over the peer's single HTTP/2 connection, with a few batches in flight. Idle ranges cost
//! one heartbeat each per interval inside a shared batch, not an RPC each: the store sends the
//! heartbeats of all its ranges at once, and a batch that starts with a heartbeat waits
//! [`HEARTBEAT_LINGER`] for the rest of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ldr_proto::pb;
use ldr_proto::pb::raft_transport_client::RaftTransportClient;
use ldr_proto::pb::raft_transport_server::{RaftTransport as PbRaftTransport, RaftTransportServer};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tracing::debug;

use crate::network::{Envelope, RaftTransport, TransportError};
use crate::{RaftNodeId, ReplicaStore};

/// Messages in one batch at most.
const BATCH_MESSAGES_MAX: usize = 512;
/// Batches to one peer in flight at once.
const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Messages queued for one peer at most (a sender waits beyond it).
const QUEUE_MESSAGES_MAX: usize = 4096;
/// How long a batch that starts with a heartbeat waits for more messages: the store
/// heartbeats all the ranges it leads at once, and their messages reach the queue over a few
/// task hops, not at one instant. Anything else (entries, votes) ends the wait.
const HEARTBEAT_LINGER: Duration = Duration::from_millis(2);
/// A message at least this large (a Raft entry carrying a big value, a snapshot) travels in
/// a batch of its own: the messages of other ranges, heartbeats above all, must not wait
/// while it is sent, persisted and answered.
pub(crate) const LARGE_MESSAGE_BYTES: usize = 256 << 10;
/// Largest batch in either direction.
const BATCH_BYTES_MAX: usize = 512 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

type Reply = oneshot::Sender<Result<Vec<u8>, TransportError>>;

struct Peer {
    queue: mpsc::Sender<(Envelope, Reply)>,
}

/// What a transport has shipped: `Deliver` RPCs and the messages in them.
#[derive(Debug, Default)]
pub struct TransportStats {
    batches: AtomicU64,
    messages: AtomicU64,
}

impl TransportStats {
    /// `(batches, messages)` sent so far, to every peer.
    pub fn sent(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.messages.load(Ordering::Relaxed),
        )
    }
}

/// The outgoing side: one batching sender per peer.
pub struct GrpcTransport {
    from: RaftNodeId,
    cluster_id: String,
    peers: Mutex<HashMap<RaftNodeId, (String, Peer)>>,
    stats: Arc<TransportStats>,
}

impl GrpcTransport {
    pub fn new(from: RaftNodeId, cluster_id: impl Into<String>) -> Arc<GrpcTransport> {
        Arc::new(GrpcTransport {
            from,
            cluster_id: cluster_id.into(),
            peers: Mutex::new(HashMap::new()),
            stats: Arc::new(TransportStats::default()),
        })
    }

    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    fn peer(
        &self,
        to: RaftNodeId,
        address: &str,
    ) -> Result<mpsc::Sender<(Envelope, Reply)>, TransportError> {
        let mut peers = self.peers.lock();
        if let Some((addr, peer)) = peers.get(&to)
            && addr == address
            && !peer.queue.is_closed()
        {
            return Ok(peer.queue.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| TransportError::Unreachable {
                node: to,
                detail: format!("invalid address {address:?}: {e}"),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        // TLS with the node certificate when this process runs secure.
        let client = RaftTransportClient::new(ldr_security::dial::node_channel_lazy(endpoint))
            .max_decoding_message_size(BATCH_BYTES_MAX)
            .max_encoding_message_size(BATCH_BYTES_MAX);
        let (tx, rx) = mpsc::channel(QUEUE_MESSAGES_MAX);
        tokio::spawn(run_peer(
            client,
            rx,
            self.cluster_id.clone(),
            (self.from, to),
            self.stats.clone(),
        ));
        peers.insert(to, (address.to_string(), Peer { queue: tx.clone() }));
        Ok(tx)
    }
}

/// Ships queued messages to one peer as batches until every sender is gone.
async fn run_peer(
    client: RaftTransportClient<Channel>,
    mut rx: mpsc::Receiver<(Envelope, Reply)>,
    cluster_id: String,
    (from, to): (RaftNodeId, RaftNodeId),
    stats: Arc<TransportStats>,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    // A large message taken from the queue while a batch of small ones was being filled; it
    // starts the next batch, alone.
    let mut held: Option<(Envelope, Reply)> = None;
    loop {
        let first = match held.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => break,
            },
        };
        let alone = first.0.payload.len() >= LARGE_MESSAGE_BYTES;
        let mut linger = first.0.heartbeat;
        let mut batch = vec![first];
        let linger_until = tokio::time::Instant::now() + HEARTBEAT_LINGER;
        while !alone && batch.len() < BATCH_MESSAGES_MAX {
            let next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(_) if linger => tokio::time::timeout_at(linger_until, rx.recv())
                    .await
                    .ok()
                    .flatten(),
                Err(_) => None,
            };
            let Some(m) = next else { break };
            if m.0.payload.len() >= LARGE_MESSAGE_BYTES {
                held = Some(m);
                break;
            }
            linger &= m.0.heartbeat;
            batch.push(m);
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .messages
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut client = client.clone();
        let cluster_id = cluster_id.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (envelopes, replies): (Vec<Envelope>, Vec<Reply>) = batch.into_iter().unzip();
            let request = pb::RaftBatch {
                cluster_id,
                from_node: from,
                to_node: to,
                messages: envelopes
                    .into_iter()
                    .map(|e| pb::RaftEnvelope {
                        range_id: e.range_id,
                        payload: e.payload,
                    })
                    .collect(),
            };
            match client.deliver(request).await {
                Ok(response) => {
                    let answers = response.into_inner().replies;
                    if answers.len() != replies.len() {
                        for reply in replies {
                            let _ = reply.send(Err(TransportError::Refused {
                                node: to,
                                detail: format!(
                                    "{} replies to a batch of another size",
                                    answers.len()
                                ),
                            }));
                        }
                        return;
                    }
                    for (answer, reply) in answers.into_iter().zip(replies) {
                        let result = if answer.error.is_empty() {
                            Ok(answer.payload)
                        } else {
                            Err(TransportError::Refused {
                                node: to,
                                detail: answer.error,
                            })
                        };
                        let _ = reply.send(result);
                    }
                }
                Err(status) => {
                    debug!(to, code = ?status.code(), "raft batch failed");
                    let error = if status.code() == tonic::Code::PermissionDenied {
                        TransportError::Refused {
                            node: to,
                            detail: status.message().to_string(),
                        }
                    } else {
                        TransportError::Unreachable {
                            node: to,
                            detail: status.message().to_string(),
                        }
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

#[async_trait::async_trait]
impl RaftTransport for GrpcTransport {
    async fn send(
        &self,
        to: RaftNodeId,
        address: &str,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let queue = self.peer(to, address)?;
        let (reply, rx) = oneshot::channel();
        let unreachable = |detail: &str| TransportError::Unreachable {
            node: to,
            detail: detail.to_string(),
        };
        let work = async {
            queue
                .send((envelope, reply))
                .await
                .map_err(|_| unreachable("the peer's sender stopped"))?;
            rx.await.map_err(|_| unreachable("the batch was dropped"))?
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(unreachable(&format!(
                "no answer within {}ms",
                timeout.as_millis()
            ))),
        }
    }
}

/// Where incoming messages go once the node's replica store is open (its store and cluster
/// id); until then the service answers `unavailable` and senders back off.
pub type ServiceSlot = Arc<std::sync::OnceLock<(Arc<ReplicaStore>, String)>>;

/// The incoming side: hands each message of a batch to its replica.
pub struct RaftService {
    slot: ServiceSlot,
}

impl RaftService {
    pub fn new(slot: ServiceSlot) -> RaftTransportServer<RaftService> {
        RaftTransportServer::new(RaftService { slot })
            .max_decoding_message_size(BATCH_BYTES_MAX)
            .max_encoding_message_size(BATCH_BYTES_MAX)
    }
}

#[tonic::async_trait]
impl PbRaftTransport for RaftService {
    async fn deliver(
        &self,
        request: tonic::Request<pb::RaftBatch>,
    ) -> Result<tonic::Response<pb::RaftBatchReply>, tonic::Status> {
        let batch = request.into_inner();
        let Some((store, cluster_id)) = self.slot.get() else {
            return Err(tonic::Status::unavailable(
                "this node's replicas are not open yet",
            ));
        };
        if batch.cluster_id != *cluster_id {
            return Err(tonic::Status::permission_denied(format!(
                "raft messages from cluster {:?} refused by a node of cluster {:?}",
                batch.cluster_id, cluster_id
            )));
        }
        if batch.to_node != store.node_id() {
            return Err(tonic::Status::permission_denied(format!(
                "raft messages for node {} delivered to node {}",
                batch.to_node,
                store.node_id()
            )));
        }
        let from = batch.from_node;
        let replies = futures::future::join_all(batch.messages.into_iter().map(|m| {
            let store = store.clone();
            async move {
                match store
                    .handle(Envelope {
                        range_id: m.range_id,
                        from,
                        payload: m.payload,
                        heartbeat: false,
                    })
                    .await
                {
                    Ok(payload) => pb::RaftEnvelopeReply {
                        payload,
                        error: String::new(),
                    },
                    Err(e) => pb::RaftEnvelopeReply {
                        payload: Vec::new(),
                        error: e.to_string(),
                    },
                }
            }
        }))
        .await;
        Ok(tonic::Response::new(pb::RaftBatchReply { replies }))
    }
}
