//! The `Kv` gRPC service: decodes a request, checks the envelope (the sender's clock, and for
//! cluster RPCs its cluster id), runs the node's handler and stamps the answer with this
//! node's clock. The service holds the node weakly: once the node is stopped or dropped,
//! every call answers "unavailable".

use std::sync::{Arc, Weak};

use ldr_proto::pb;
use ldr_proto::pb::kv_server::{Kv, KvServer};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::node::NodeInner;
use crate::transport::MESSAGE_BYTES_MAX;
use crate::wire;
use crate::{KvError, Result};

/// The tonic server type [`crate::KvNode::grpc_service`] returns.
pub type KvGrpcServer = KvServer<KvService>;

/// The `Kv` service of one node (see [`crate::KvNode::grpc_service`]).
pub struct KvService {
    node: Weak<NodeInner>,
}

/// What a request must prove.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Envelope {
    /// Only the clock (if sent) is checked: `ldr init`, joiners, test knobs.
    Open,
    /// Sent by a node of this cluster: the cluster id must match.
    Cluster,
}

/// A stopping node's answer: it served nothing, so a write sent to it is not ambiguous.
fn stopping() -> Status {
    wire::error_to_status(&KvError::NodeUnavailable {
        node_id: 0,
        address: String::new(),
        detail: "node is shutting down: the request was not served".into(),
    })
}

impl KvService {
    pub(crate) fn server(node: Weak<NodeInner>) -> KvGrpcServer {
        KvServer::new(KvService { node })
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// The node, after checking the request's envelope.
    fn enter<T>(&self, request: &Request<T>, envelope: Envelope) -> Result<Arc<NodeInner>, Status> {
        let Some(node) = self.node.upgrade().filter(|n| !n.is_stopped()) else {
            return Err(stopping());
        };
        let check = || -> Result<()> {
            if let Some(remote) = wire::read_clock(request.metadata())? {
                node.clock.update(remote)?;
            }
            if envelope == Envelope::Cluster {
                let ours = &node.require_identity()?.cluster_id;
                match wire::read_cluster_id(request.metadata()) {
                    Some(theirs) if &theirs == ours => {}
                    theirs => {
                        return Err(KvError::WrongCluster {
                            expected: ours.clone(),
                            got: theirs.unwrap_or_else(|| "<none>".to_string()),
                        });
                    }
                }
            }
            Ok(())
        };
        match check() {
            Ok(()) => Ok(node),
            Err(e) => Err(stamp_status(&node, wire::error_to_status(&e))),
        }
    }
}

fn stamp_status(node: &NodeInner, mut status: Status) -> Status {
    wire::set_clock(status.metadata_mut(), node.clock.now());
    status
}

/// The answer to a handled request, stamped with this node's clock.
fn reply<T>(node: &NodeInner, result: Result<T>) -> Result<Response<T>, Status> {
    match result {
        Ok(message) => {
            let mut response = Response::new(message);
            wire::set_clock(response.metadata_mut(), node.clock.now());
            Ok(response)
        }
        Err(e) => Err(stamp_status(node, wire::error_to_status(&e))),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn echo(&self, request: Request<pb::Ping>) -> Result<Response<pb::Ping>, Status> {
        let node = self.enter(&request, Envelope::Open)?;
        reply(&node, Ok(request.into_inner()))
    }

    async fn get(
        &self,
        request: Request<pb::KvGetRequest>,
    ) -> Result<Response<pb::KvGetResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        let result = node
            .serve_get(r.range_id, r.key, r.read_ts.map(Into::into))
            .await
            .map(|v| pb::KvGetResponse {
                version: v.map(wire::version_to_pb),
            });
        reply(&node, result)
    }

    async fn get_many(
        &self,
        request: Request<pb::KvGetManyRequest>,
    ) -> Result<Response<pb::KvGetManyResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        let result = node
            .serve_get_many(
                r.ranges.into_iter().map(|g| (g.range_id, g.keys)).collect(),
                r.read_ts.map(Into::into),
            )
            .await
            .map(|versions| pb::KvGetManyResponse {
                versions: versions
                    .into_iter()
                    .map(|v| pb::KvMaybeVersion {
                        version: v.map(wire::version_to_pb),
                    })
                    .collect(),
            });
        reply(&node, result)
    }

    async fn scan(
        &self,
        request: Request<pb::KvScanRequest>,
    ) -> Result<Response<pb::KvScanResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        let span = r.span.map(Into::into).unwrap_or_default();
        let limit = usize::try_from(r.limit).unwrap_or(usize::MAX);
        let result = node
            .serve_scan(r.range_id, span, r.read_ts.map(Into::into), limit)
            .await
            .map(|rows| pb::KvScanResponse {
                rows: rows.into_iter().map(wire::key_version_to_pb).collect(),
            });
        reply(&node, result)
    }

    async fn write(
        &self,
        request: Request<pb::KvWriteRequest>,
    ) -> Result<Response<pb::KvWriteResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        let result = async {
            let rows = r
                .rows
                .into_iter()
                .map(wire::row_from_pb)
                .collect::<Result<Vec<_>>>()?;
            let txn = r.txn.map(wire::txn_from_pb).transpose()?;
            let applied = node.serve_write(r.range_id, rows, r.atomic, txn).await?;
            Ok(pb::KvWriteResponse {
                ts: Some(applied.ts.into()),
                outcomes: applied
                    .outcomes
                    .into_iter()
                    .map(wire::outcome_to_pb)
                    .collect(),
            })
        }
        .await;
        reply(&node, result)
    }

    async fn resolve_intents(
        &self,
        request: Request<pb::KvResolveIntentsRequest>,
    ) -> Result<Response<pb::KvResolveIntentsResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        let result = async {
            let txn_id = wire::txn_id_from_pb(&r.txn_id)?;
            let resolution = match (r.commit_ts, r.push) {
                (Some(ts), true) => ldr_storage::Resolution::Push(ts.into()),
                (Some(ts), false) => ldr_storage::Resolution::Commit(ts.into()),
                (None, true) => {
                    return Err(KvError::InvalidRequest(
                        "a push of intents needs a timestamp".into(),
                    ));
                }
                (None, false) => ldr_storage::Resolution::Abort,
            };
            let resolved = node
                .serve_resolve(r.range_id, txn_id, r.keys, resolution)
                .await?;
            Ok(pb::KvResolveIntentsResponse { resolved })
        }
        .await;
        reply(&node, result)
    }

    async fn increment(
        &self,
        request: Request<pb::KvIncrementRequest>,
    ) -> Result<Response<pb::KvIncrementResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        let result = node
            .client()
            .sys_increment(&r.counter, r.by)
            .await
            .map(|value| pb::KvIncrementResponse { value });
        reply(&node, result)
    }

    async fn clear_range(
        &self,
        request: Request<pb::KvClearRangeRequest>,
    ) -> Result<Response<pb::KvClearRangeResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        let span = r.span.map(Into::into).unwrap_or_default();
        let result = node
            .serve_clear_range(r.range_id, span)
            .await
            .map(|keys_cleared| pb::KvClearRangeResponse { keys_cleared });
        reply(&node, result)
    }

    async fn create_replica(
        &self,
        request: Request<pb::KvCreateReplicaRequest>,
    ) -> Result<Response<pb::KvCreateReplicaResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        let result = async {
            let range: crate::RangeDescriptor =
                crate::system::decode_json("range descriptor", &r.range_descriptor)?;
            node.serve_create_replica(range, crate::replication::ReplicaCreation::from_request(&r))
                .await
        }
        .await
        .map(|()| pb::KvCreateReplicaResponse {});
        reply(&node, result)
    }

    async fn close_timestamps(
        &self,
        request: Request<pb::KvCloseTimestampsRequest>,
    ) -> Result<Response<pb::KvCloseTimestampsResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        for r in request.into_inner().ranges {
            node.side_closed
                .record(r.range_id, ldr_proto::ts_or_zero(r.closed), r.applied_index);
        }
        reply(&node, Ok(pb::KvCloseTimestampsResponse {}))
    }

    async fn campaign(
        &self,
        request: Request<pb::KvCampaignRequest>,
    ) -> Result<Response<pb::KvCampaignResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let range_id = request.into_inner().range_id;
        let result = node
            .serve_campaign(range_id)
            .await
            .map(|leader| pb::KvCampaignResponse { leader });
        reply(&node, result)
    }

    async fn drain(
        &self,
        request: Request<pb::KvDrainRequest>,
    ) -> Result<Response<pb::KvDrainResponse>, Status> {
        let node = self.enter(&request, Envelope::Open)?;
        let shutdown = request.into_inner().shutdown;
        let result = node.serve_drain(shutdown).await;
        reply(&node, result)
    }

    async fn set_membership(
        &self,
        request: Request<pb::KvSetMembershipRequest>,
    ) -> Result<Response<pb::KvSetMembershipResponse>, Status> {
        let node = self.enter(&request, Envelope::Open)?;
        let r = request.into_inner();
        let result = async {
            let membership = crate::Membership::parse(&r.membership).ok_or_else(|| {
                KvError::InvalidRequest(format!("unknown node membership {:?}", r.membership))
            })?;
            node.client()
                .change_membership(&r.node_ids, membership)
                .await
                .map(|()| pb::KvSetMembershipResponse {})
        }
        .await;
        reply(&node, result)
    }

    async fn join(
        &self,
        request: Request<pb::KvJoinRequest>,
    ) -> Result<Response<pb::KvJoinResponse>, Status> {
        let node = self.enter(&request, Envelope::Open)?;
        let r = request.into_inner();
        let result = async {
            let joiner = r
                .node
                .map(wire::node_from_pb)
                .ok_or_else(|| KvError::Rpc("join without a descriptor".into()))?;
            let (cluster_id, node_id, node1_address) =
                node.serve_join(joiner, &r.cluster_name).await?;
            let node1 = node1_address.map(|address| crate::NodeDescriptor {
                node_id: crate::system::SYSTEM_NODE_ID,
                sql_address: address.clone(),
                address,
                http_address: String::new(),
                started_at: ldr_types::Timestamp::ZERO,
            });
            Ok(pb::KvJoinResponse {
                cluster_id,
                node_id,
                node1: node1.as_ref().map(wire::node_to_pb),
                responder: Some(wire::node_to_pb(&node.self_descriptor())),
            })
        }
        .await;
        reply(&node, result)
    }

    async fn bootstrap(
        &self,
        request: Request<pb::KvBootstrapRequest>,
    ) -> Result<Response<pb::KvBootstrapResponse>, Status> {
        let node = self.enter(&request, Envelope::Open)?;
        info!("bootstrap requested over rpc");
        let result = node
            .bootstrap()
            .await
            .map(|cluster_id| pb::KvBootstrapResponse {
                cluster_id,
                node_id: crate::system::SYSTEM_NODE_ID,
            });
        reply(&node, result)
    }

    async fn node_info(
        &self,
        request: Request<pb::KvNodeInfoRequest>,
    ) -> Result<Response<pb::KvNodeInfoResponse>, Status> {
        let node = self.enter(&request, Envelope::Open)?;
        let identity = node.identity().cloned();
        let node1 = match &identity {
            Some(_) => node
                .known_address(crate::system::SYSTEM_NODE_ID)
                .map(|address| pb::KvNodeDescriptor {
                    node_id: crate::system::SYSTEM_NODE_ID,
                    sql_address: address.clone(),
                    address,
                    http_address: String::new(),
                    started_at: None,
                }),
            None => None,
        };
        let response = pb::KvNodeInfoResponse {
            initialized: identity.is_some(),
            cluster_id: identity
                .as_ref()
                .map(|i| i.cluster_id.clone())
                .unwrap_or_default(),
            node_id: identity.as_ref().map(|i| i.node_id).unwrap_or(0),
            node: Some(wire::node_to_pb(&node.self_descriptor())),
            node1,
            cluster_name: node.config.cluster_name.clone().unwrap_or_default(),
        };
        reply(&node, Ok(response))
    }

    async fn announce(
        &self,
        request: Request<pb::KvAnnounceRequest>,
    ) -> Result<Response<pb::KvAnnounceResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let result = match request.into_inner().node {
            Some(n) => node
                .learn_address(&wire::node_from_pb(n))
                .map(|()| pb::KvAnnounceResponse {}),
            None => Err(KvError::Rpc("announce without a descriptor".into())),
        };
        reply(&node, result)
    }

    async fn notify(
        &self,
        request: Request<pb::KvNotifyRequest>,
    ) -> Result<Response<pb::KvNotifyResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        if r.catalog_generation > 0 {
            node.observe_catalog_generation(r.catalog_generation);
        }
        if r.settings_changed {
            node.settings_changed();
        }
        reply(&node, Ok(pb::KvNotifyResponse {}))
    }

    async fn set_partition(
        &self,
        request: Request<pb::KvSetPartitionRequest>,
    ) -> Result<Response<pb::KvSetPartitionResponse>, Status> {
        // A test knob, like the clock offset: it exists to break the network.
        let Some(node) = self.node.upgrade().filter(|n| !n.is_stopped()) else {
            return Err(stopping());
        };
        let blocked: std::collections::HashSet<String> =
            request.into_inner().blocked_addresses.into_iter().collect();
        if blocked.is_empty() {
            info!("network partition healed by test knob");
        } else {
            info!(?blocked, "network partition set by test knob");
        }
        node.transport.set_blocked(blocked);
        reply(&node, Ok(pb::KvSetPartitionResponse {}))
    }

    async fn set_clock_offset(
        &self,
        request: Request<pb::KvSetClockOffsetRequest>,
    ) -> Result<Response<pb::KvSetClockOffsetResponse>, Status> {
        // The test knob skips the clock check: it exists to break clocks.
        let Some(node) = self.node.upgrade().filter(|n| !n.is_stopped()) else {
            return Err(stopping());
        };
        let offset_ns = request.into_inner().offset_ns;
        info!(offset_ns, "physical clock offset set by test knob");
        node.clock.set_physical_offset_ns(offset_ns);
        reply(
            &node,
            Ok(pb::KvSetClockOffsetResponse {
                now: Some(node.clock.now().into()),
            }),
        )
    }

    async fn check_consistency(
        &self,
        request: Request<pb::KvCheckConsistencyRequest>,
    ) -> Result<Response<pb::KvCheckConsistencyResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        let result = node.serve_check_consistency(r.range_id, r.stats_only).await;
        reply(&node, result)
    }

    async fn collect_checksum(
        &self,
        request: Request<pb::KvCollectChecksumRequest>,
    ) -> Result<Response<pb::KvCollectChecksumResponse>, Status> {
        let node = self.enter(&request, Envelope::Cluster)?;
        let r = request.into_inner();
        let wait = std::time::Duration::from_millis(r.wait_ms);
        let result = node
            .serve_collect_checksum(r.range_id, &r.checksum_id, wait)
            .await;
        reply(&node, result)
    }
}
