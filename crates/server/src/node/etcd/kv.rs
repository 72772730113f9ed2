//! etcd's `KV` service (Range, Put, DeleteRange, Txn, Compact) over the multi-version store.
//!
//! Writes are replicated as the store's commands (a Put or DeleteRange as a one-operation
//! transaction) and answered once applied, with the revision they got. Linearizable ranges wait
//! on the read barrier; serializable ones read this node's state as it is. A follower sends writes
//! and linearizable ranges to the leader ([`super::Forwarder`]), since etcd's clients follow no
//! redirect.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::kv_client::KvClient;
use rskv_proto::etcd::etcdserverpb::kv_server::Kv;
use rskv_proto::etcd::etcdserverpb::request_op::Request as Op;
use rskv_proto::etcd::etcdserverpb::response_op::Response as OpResponse;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::errors::status_of;
use super::forward::Routed;
use super::propose;
use super::unexpected;
use super::EtcdContext;
use crate::node::auth::Grant;
use crate::node::compactor;
use crate::node::proposer::Proposer;
use crate::node::read_barrier::ReadBarrier;
use crate::node::read_view::ReadView;
use crate::raft::Command;
use rskv_storage::state_machine::auth::Perm;
use rskv_storage::types::EtcdReply;
use rskv_storage::types::MvccError;

/// etcd's default `--max-request-bytes`: larger requests are refused.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// Largest Range reply: beyond it the reply is cut and marked `more` (clients page on).
pub const MAX_RANGE_REPLY_BYTES: usize = 32 * 1024 * 1024;

/// etcd's status for a refusal of the multi-version store.
pub fn mvcc_status(e: &MvccError) -> Status {
    match e {
        MvccError::Compacted { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
        }
        MvccError::FutureRevision { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
        }
        MvccError::LeaseNotFound(_) => Status::not_found("etcdserver: requested lease not found"),
        MvccError::LeaseExists(_) => {
            Status::failed_precondition("etcdserver: lease already exists")
        }
        MvccError::KeyNotFound => Status::invalid_argument("etcdserver: key not found"),
        MvccError::NoSpace => {
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded")
        }
    }
}

/// etcd's status for a request whose key is empty.
fn no_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

/// Refuses a request larger than etcd's default limit.
pub fn check_size(message: &impl Message) -> Result<(), Status> {
    if message.encoded_len() > MAX_REQUEST_BYTES {
        return Err(Status::invalid_argument("etcdserver: request is too large"));
    }
    Ok(())
}

/// etcd's checks of a put: a key, and no value or lease given where it is to be kept.
fn check_put(put: &etcd::PutRequest) -> Result<(), Status> {
    if put.key.is_empty() {
        return Err(no_key());
    }
    if put.ignore_value && !put.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if put.ignore_lease && put.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    Ok(())
}

/// etcd's checks of a transaction: its size, every operation's own checks, and no key written
/// twice by one branch (a put and a delete-range covering it, or two puts).
fn check_txn(txn: &etcd::TxnRequest, max_ops: usize) -> Result<(), Status> {
    if txn.success.len() > max_ops || txn.failure.len() > max_ops {
        return Err(Status::invalid_argument(
            "etcdserver: too many operations in txn request",
        ));
    }
    for compare in &txn.compare {
        if compare.key.is_empty() {
            return Err(no_key());
        }
    }
    for branch in [&txn.success, &txn.failure] {
        let mut puts: HashSet<&[u8]> = HashSet::new();
        let mut deletes: Vec<(&[u8], &[u8])> = Vec::new();
        for op in branch.iter() {
            match &op.request {
                Some(Op::RequestPut(put)) => {
                    check_put(put)?;
                    if !puts.insert(&put.key) {
                        return Err(duplicate_key());
                    }
                }
                Some(Op::RequestDeleteRange(d)) => {
                    if d.key.is_empty() {
                        return Err(no_key());
                    }
                    deletes.push((&d.key, &d.range_end));
                }
                Some(Op::RequestRange(r)) if r.key.is_empty() => return Err(no_key()),
                Some(Op::RequestTxn(nested)) => check_txn(nested, max_ops)?,
                _ => {}
            }
        }
        for key in &puts {
            if deletes
                .iter()
                .any(|(start, end)| rskv_storage::mvcc::read::in_range(key, start, end))
            {
                return Err(duplicate_key());
            }
        }
    }
    Ok(())
}

fn duplicate_key() -> Status {
    Status::invalid_argument("etcdserver: duplicate key given in txn request")
}

/// A transaction of one operation and no comparison: how Put and DeleteRange are replicated.
fn single(op: Op) -> etcd::TxnRequest {
    etcd::TxnRequest {
        compare: Vec::new(),
        success: vec![etcd::RequestOp { request: Some(op) }],
        failure: Vec::new(),
    }
}

/// Implements etcd's `KV` with the handles it needs.
pub struct EtcdKv {
    ctx: EtcdContext,
    proposer: Arc<Proposer>,
    reads: Arc<ReadBarrier>,
    view: ReadView,
}

impl EtcdKv {
    /// The member's shared etcd context (its auth checks, for the recipes built on this).
    pub fn ctx(&self) -> &EtcdContext {
        &self.ctx
    }

    /// The service, proposing through `proposer` and reading through `view`.
    pub fn new(
        ctx: EtcdContext,
        proposer: Arc<Proposer>,
        reads: Arc<ReadBarrier>,
        view: ReadView,
    ) -> EtcdKv {
        EtcdKv {
            ctx,
            proposer,
            reads,
            view,
        }
    }

    /// Replicates `txn` and answers with its response and the revision after it.
    async fn apply_txn(
        &self,
        txn: etcd::TxnRequest,
        grant: Grant,
    ) -> Result<(etcd::TxnResponse, i64), Status> {
        let command = grant.wrap(Command::Txn(Box::new(txn)));
        match propose(&self.proposer, command, "a transaction").await? {
            (EtcdReply::Txn(reply), revision) => Ok((*reply, revision)),
            (other, _) => Err(unexpected("a transaction", &other)),
        }
    }

    /// Serves a range here, after the read barrier unless it is serializable.
    async fn range_here(&self, request: etcd::RangeRequest) -> Result<etcd::RangeResponse, Status> {
        if !request.serializable {
            self.reads.wait().await.map_err(status_of)?;
        }
        let mut response = self
            .view
            .range(request)
            .await
            .map_err(|e| Status::internal(format!("reading the store: {e}")))?
            .map_err(|e| mvcc_status(&e))?;
        cap_reply(&mut response);
        // The revision the store read at: a client watching from the next one (etcd's
        // recipes do) gets exactly the changes after what it read.
        let revision = response.header.map_or(0, |h| h.revision);
        response.header = Some(self.ctx.header_at(revision));
        Ok(response)
    }
}

/// Cuts a range reply to [`MAX_RANGE_REPLY_BYTES`], marking it `more`.
fn cap_reply(response: &mut etcd::RangeResponse) {
    let mut bytes = 0;
    let keep = response
        .kvs
        .iter()
        .take_while(|kv| {
            bytes += kv.encoded_len() + 8;
            bytes <= MAX_RANGE_REPLY_BYTES
        })
        .count();
    if keep < response.kvs.len() {
        response.kvs.truncate(keep.max(1));
        response.more = true;
    }
}

#[tonic::async_trait]
impl Kv for EtcdKv {
    async fn range(
        &self,
        request: Request<etcd::RangeRequest>,
    ) -> Result<Response<etcd::RangeResponse>, Status> {
        super::observe("etcd.range", async {
            check_size(request.get_ref())?;
            if request.get_ref().key.is_empty() {
                return Err(no_key());
            }
            let r = request.get_ref();
            self.ctx
                .auth()
                .check(request.metadata(), &r.key, &r.range_end, Perm::Read)?;
            if request.get_ref().serializable {
                return self.range_here(request.into_inner()).await;
            }
            match self
                .ctx
                .forwarder()
                .to_leader(request, |ch, req| async move {
                    KvClient::new(ch).range(req).await
                })
                .await?
            {
                Routed::Here(request) => self.range_here(request).await,
                Routed::Forwarded(response) => Ok(response),
            }
        })
        .await
    }

    async fn put(
        &self,
        request: Request<etcd::PutRequest>,
    ) -> Result<Response<etcd::PutResponse>, Status> {
        super::observe("etcd.put", async {
            check_size(request.get_ref())?;
            check_put(request.get_ref())?;
            let (auth, p) = (self.ctx.auth(), request.get_ref());
            let grant = auth.check(request.metadata(), &p.key, b"", Perm::Write)?;
            if p.prev_kv {
                auth.check(request.metadata(), &p.key, b"", Perm::Read)?;
            }
            let put = match self
                .ctx
                .forwarder()
                .to_leader(request, |ch, req| async move {
                    KvClient::new(ch).put(req).await
                })
                .await?
            {
                Routed::Here(put) => put,
                Routed::Forwarded(response) => return Ok(response),
            };
            let (mut txn, revision) = self.apply_txn(single(Op::RequestPut(put)), grant).await?;
            match txn.responses.pop().and_then(|r| r.response) {
                Some(OpResponse::ResponsePut(mut put)) => {
                    put.header = Some(self.ctx.header_at(revision));
                    Ok(put)
                }
                _ => Err(Status::internal("a put was answered without its response")),
            }
        })
        .await
    }

    async fn delete_range(
        &self,
        request: Request<etcd::DeleteRangeRequest>,
    ) -> Result<Response<etcd::DeleteRangeResponse>, Status> {
        super::observe("etcd.delete_range", async {
            check_size(request.get_ref())?;
            if request.get_ref().key.is_empty() {
                return Err(no_key());
            }
            let (auth, d) = (self.ctx.auth(), request.get_ref());
            let grant = auth.check(request.metadata(), &d.key, &d.range_end, Perm::Write)?;
            if d.prev_kv {
                auth.check(request.metadata(), &d.key, &d.range_end, Perm::Read)?;
            }
            let delete = match self
                .ctx
                .forwarder()
                .to_leader(request, |ch, req| async move {
                    KvClient::new(ch).delete_range(req).await
                })
                .await?
            {
                Routed::Here(delete) => delete,
                Routed::Forwarded(response) => return Ok(response),
            };
            let (mut txn, revision) = self
                .apply_txn(single(Op::RequestDeleteRange(delete)), grant)
                .await?;
            match txn.responses.pop().and_then(|r| r.response) {
                Some(OpResponse::ResponseDeleteRange(mut delete)) => {
                    delete.header = Some(self.ctx.header_at(revision));
                    Ok(delete)
                }
                _ => Err(Status::internal(
                    "a delete-range was answered without its response",
                )),
            }
        })
        .await
    }

    async fn txn(
        &self,
        request: Request<etcd::TxnRequest>,
    ) -> Result<Response<etcd::TxnResponse>, Status> {
        super::observe("etcd.txn", async {
            check_size(request.get_ref())?;
            check_txn(request.get_ref(), MAX_TXN_OPS)?;
            let grant = self
                .ctx
                .auth()
                .check_txn(request.metadata(), request.get_ref())?;
            let txn = match self
                .ctx
                .forwarder()
                .to_leader(request, |ch, req| async move {
                    KvClient::new(ch).txn(req).await
                })
                .await?
            {
                Routed::Here(txn) => txn,
                Routed::Forwarded(response) => return Ok(response),
            };
            let (mut response, revision) = self.apply_txn(txn, grant).await?;
            let header = self.ctx.header_at(revision);
            fill_headers(&mut response, &header);
            Ok(response)
        })
        .await
    }

    async fn compact(
        &self,
        request: Request<etcd::CompactionRequest>,
    ) -> Result<Response<etcd::CompactionResponse>, Status> {
        super::observe("etcd.compact", async {
            self.ctx.auth().require_root(request.metadata())?;
            // etcd's `physical`: answer once this node's engine no longer holds what the
            // compaction removes (its sweep runs beside apply, see mvcc::sweep).
            let physical = request
                .get_ref()
                .physical
                .then_some(request.get_ref().revision);
            let compact = match self
                .ctx
                .forwarder()
                .to_leader(request, |ch, req| async move {
                    KvClient::new(ch).compact(req).await
                })
                .await?
            {
                Routed::Here(compact) => compact,
                Routed::Forwarded(response) => {
                    if let Some(revision) = physical {
                        self.view.swept_to(revision).await;
                    }
                    return Ok(response);
                }
            };
            // A long history in steps (see compactor::MAX_STEP); the reply is the last step's,
            // the compaction at the revision asked.
            let compacted = self.view.compacted().await.map_err(|e| {
                Status::internal(format!("reading the compacted revision failed: {e}"))
            })?;
            let (_, response) = compactor::compact_to(
                &self.proposer,
                compacted,
                self.ctx.revision(),
                compact.revision,
            )
            .await
            .map_err(status_of)?;
            match super::etcd_reply(response, "a compaction")? {
                (EtcdReply::Done, revision) => {
                    if let Some(compacted) = physical {
                        self.view.swept_to(compacted).await;
                    }
                    Ok(etcd::CompactionResponse {
                        header: Some(self.ctx.header_at(revision)),
                    })
                }
                (other, _) => Err(unexpected("a compaction", &other)),
            }
        })
        .await
    }
}

/// Sets the header of every response inside a transaction's, as etcd does.
fn fill_headers(txn: &mut etcd::TxnResponse, header: &etcd::ResponseHeader) {
    txn.header = Some(*header);
    for op in &mut txn.responses {
        match &mut op.response {
            Some(OpResponse::ResponseRange(r)) => r.header = Some(*header),
            Some(OpResponse::ResponsePut(r)) => r.header = Some(*header),
            Some(OpResponse::ResponseDeleteRange(r)) => r.header = Some(*header),
            Some(OpResponse::ResponseTxn(r)) => fill_headers(r, header),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> etcd::RequestOp {
        etcd::RequestOp {
            request: Some(Op::RequestPut(etcd::PutRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn transactions_should_be_checked_as_etcd_does() {
        let twice = etcd::TxnRequest {
            success: vec![put("a"), put("a")],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&twice, 8).map_err(|s| s.message().to_string()),
            Err("etcdserver: duplicate key given in txn request".into())
        );
        let covered = etcd::TxnRequest {
            failure: vec![
                put("b"),
                etcd::RequestOp {
                    request: Some(Op::RequestDeleteRange(etcd::DeleteRangeRequest {
                        key: "a".into(),
                        range_end: "c".into(),
                        prev_kv: false,
                    })),
                },
            ],
            ..Default::default()
        };
        assert!(check_txn(&covered, 8).is_err());
        let many = etcd::TxnRequest {
            success: (0..9).map(|i| put(&i.to_string())).collect(),
            ..Default::default()
        };
        assert_eq!(
            check_txn(&many, 8).map_err(|s| s.message().to_string()),
            Err("etcdserver: too many operations in txn request".into())
        );
        let fine = etcd::TxnRequest {
            success: vec![put("a"), put("b")],
            failure: vec![put("a")],
            ..Default::default()
        };
        assert!(check_txn(&fine, 8).is_ok());
    }
}
