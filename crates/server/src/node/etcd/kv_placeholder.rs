//! A placeholder for etcd's `KV` service until the multi-version store provides the real one:
//! `Range` only, over an etcd keyspace that is empty.
//!
//! It exists so that `etcdctl endpoint health` works now: that command reads a key and calls a
//! member healthy when a linearizable read succeeds (it goes through the leader and a quorum).
//! Nothing can be written through etcd's API yet (`Put`, `DeleteRange`, `Txn` and `Compact` answer
//! UNIMPLEMENTED), so etcd's keyspace really is empty and "no keys" is the true answer to every
//! range. rskv's own keys (`rskv.v1.Kv`) are a different keyspace and are not shown.
//!
//! A linearizable `Range` on a follower is forwarded to the leader ([`super::Forwarder`]); the
//! leader passes the node's read barrier. A `serializable` one is answered by the member itself.
//! The multi-version store's `KV` service replaces this one (both cannot be registered: they
//! serve the same gRPC service).

use std::sync::Arc;
use std::time::Duration;

use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::errors::status_of;
use super::errors::EtcdError;
use super::forward::Routed;
use super::observe;
use super::EtcdContext;
use crate::error::Error;
use crate::node::read_barrier::ReadBarrier;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::kv_client::KvClient as Client;
use rskv_proto::etcd::etcdserverpb::kv_server::Kv;

/// etcd's `KV` with `Range` over the (still empty) etcd keyspace; see the module documentation.
pub struct EtcdKvPlaceholder {
    ctx: EtcdContext,
    /// Linearizable reads wait here on the leader.
    reads: Arc<ReadBarrier>,
    /// Longest a read waits for the barrier.
    timeout: Duration,
}

impl EtcdKvPlaceholder {
    /// The placeholder of one node.
    pub fn new(ctx: EtcdContext, reads: Arc<ReadBarrier>, timeout: Duration) -> EtcdKvPlaceholder {
        EtcdKvPlaceholder {
            ctx,
            reads,
            timeout,
        }
    }

    async fn range_now(
        &self,
        request: Request<etcd::RangeRequest>,
    ) -> Result<etcd::RangeResponse, Status> {
        if request.get_ref().key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        if !request.get_ref().serializable {
            let call = |ch, r| async move { Client::new(ch).range(r).await };
            if let Routed::Forwarded(resp) = self.ctx.forwarder().to_leader(request, call).await? {
                return Ok(resp);
            }
            tokio::time::timeout(self.timeout, self.reads.wait())
                .await
                .map_err(|_| Status::from(EtcdError::Timeout))?
                .map_err(|e: Error| status_of(e))?;
        }
        Ok(etcd::RangeResponse {
            header: Some(self.ctx.header()),
            kvs: Vec::new(),
            more: false,
            count: 0,
        })
    }
}

/// What the writes answer until the multi-version store lands.
fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not implemented by rskv yet: etcd's keyspace comes with the multi-version store"
    ))
}

#[tonic::async_trait]
impl Kv for EtcdKvPlaceholder {
    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn range(
        &self,
        request: Request<etcd::RangeRequest>,
    ) -> Result<Response<etcd::RangeResponse>, Status> {
        observe("etcd_range", self.range_now(request)).await
    }

    async fn put(
        &self,
        _request: Request<etcd::PutRequest>,
    ) -> Result<Response<etcd::PutResponse>, Status> {
        observe("etcd_put", async { Err(not_yet("Put")) }).await
    }

    async fn delete_range(
        &self,
        _request: Request<etcd::DeleteRangeRequest>,
    ) -> Result<Response<etcd::DeleteRangeResponse>, Status> {
        observe("etcd_delete_range", async { Err(not_yet("DeleteRange")) }).await
    }

    async fn txn(
        &self,
        _request: Request<etcd::TxnRequest>,
    ) -> Result<Response<etcd::TxnResponse>, Status> {
        observe("etcd_txn", async { Err(not_yet("Txn")) }).await
    }

    async fn compact(
        &self,
        _request: Request<etcd::CompactionRequest>,
    ) -> Result<Response<etcd::CompactionResponse>, Status> {
        observe("etcd_compact", async { Err(not_yet("Compact")) }).await
    }
}
