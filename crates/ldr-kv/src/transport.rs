//! Outgoing KV RPCs: one lazily connected tonic channel per peer address, with connect and
//! request timeouts, and the per-call envelope (sender clock and cluster id out, receiver
//! clock back in). Every failure maps to a [`KvError`]; unreachable peers are
//! [`KvError::NodeUnavailable`] (retryable).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ldr_proto::pb::kv_client::KvClient as PbKvClient;
use ldr_types::{Clock, NodeId};
use parking_lot::{Mutex, RwLock};
use tonic::transport::{Channel, Endpoint};

use crate::wire;
use crate::{KvError, Result};

/// How long dialing a peer may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take end to end.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest KV message (a big scan or write batch) in either direction.
pub(crate) const MESSAGE_BYTES_MAX: usize = 256 << 20;

/// The generated client over a pooled channel.
pub(crate) type PbClient = PbKvClient<Channel>;

/// Channels to peers, by address.
pub(crate) struct Transport {
    clock: Arc<Clock>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Peers this node is cut off from by the testbed's partition knob (`SetPartition`).
    blocked: RwLock<HashSet<String>>,
    any_blocked: AtomicBool,
}

impl Transport {
    pub(crate) fn new(clock: Arc<Clock>) -> Transport {
        Transport {
            clock,
            channels: Mutex::new(HashMap::new()),
            blocked: RwLock::new(HashSet::new()),
            any_blocked: AtomicBool::new(false),
        }
    }

    /// Cuts this node off from the peers at `addresses` (empty: heals).
    pub(crate) fn set_blocked(&self, addresses: HashSet<String>) {
        let mut blocked = self.blocked.write();
        self.any_blocked
            .store(!addresses.is_empty(), Ordering::Relaxed);
        *blocked = addresses;
    }

    /// Whether a partition cuts this node off from the peer at `address`.
    pub(crate) fn is_blocked(&self, address: &str) -> bool {
        self.any_blocked.load(Ordering::Relaxed) && self.blocked.read().contains(address)
    }

    fn channel(&self, node_id: NodeId, address: &str) -> Result<Channel> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| KvError::NodeUnavailable {
                node_id,
                address: address.to_string(),
                detail: format!("invalid address: {e}"),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(false);
        // TLS with the node certificate when this process runs secure.
        let channel = ldr_security::dial::node_channel_lazy(endpoint);
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Calls `node_id` at `address`: stamps the request with our clock (and cluster id when
    /// we have one), runs `f`, and moves our clock to the receiver's. `timeout` shortens the
    /// default request timeout (best-effort notifications).
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        node_id: NodeId,
        address: &str,
        cluster_id: Option<&str>,
        timeout: Option<Duration>,
        request: Req,
        f: F,
    ) -> Result<Resp>
    where
        F: FnOnce(PbClient, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        if self.is_blocked(address) {
            return Err(partitioned(node_id, address));
        }
        let client = PbKvClient::new(self.channel(node_id, address)?)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let mut request = tonic::Request::new(request);
        wire::set_clock(request.metadata_mut(), self.clock.now());
        if let Some(id) = cluster_id {
            wire::set_cluster_id(request.metadata_mut(), id);
        }
        let limit = timeout.unwrap_or(REQUEST_TIMEOUT);
        request.set_timeout(limit);
        let result = match tokio::time::timeout(limit, f(client, request)).await {
            Ok(r) => r,
            Err(_) => {
                return Err(KvError::NodeUnavailable {
                    node_id,
                    address: address.to_string(),
                    detail: format!("no answer within {}ms", limit.as_millis()),
                });
            }
        };
        match result {
            Ok(response) => {
                if let Some(remote) = wire::read_clock(response.metadata())? {
                    self.clock.update(remote)?;
                }
                Ok(response.into_inner())
            }
            Err(status) => {
                // The receiver's clock still counts when it refused the request, unless it
                // is the clock that is wrong.
                if let Ok(Some(remote)) = wire::read_clock(status.metadata()) {
                    let _ = self.clock.update(remote);
                }
                Err(wire::status_to_error(&status, node_id, address))
            }
        }
    }
}

/// The error of a request to a peer the partition knob cut this node off from: what an
/// unreachable peer gives.
pub(crate) fn partitioned(node_id: NodeId, address: &str) -> KvError {
    KvError::NodeUnavailable {
        node_id,
        address: address.to_string(),
        detail: "unreachable: cut off by a network partition (testbed fault)".into(),
    }
}
