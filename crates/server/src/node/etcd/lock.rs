//! etcd's `Lock` service (`v3lockpb`): etcd's mutex recipe, run by the member for the client.
//!
//! `Lock(name, lease)` queues the key `name/<lease hex>` (attached to the lease) unless it is
//! queued already, then waits until every key under `name/` created before it is deleted: the
//! oldest key holds the lock. A client that cancels while waiting has its key deleted, as etcd's
//! server does. `Unlock(key)` deletes the key. The steps are [`super::concurrency`]'s.

use bytes::Bytes;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::request_op::Request as Op;
use rskv_proto::etcd::v3lockpb;
use rskv_proto::etcd::v3lockpb::lock_server::Lock;
use rskv_storage::state_machine::auth::Perm;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::concurrency::contender_key;
use super::concurrency::delete_op;
use super::concurrency::oldest_under;
use super::concurrency::prefix_of;
use super::concurrency::range_kv;
use super::concurrency::Recipes;
use crate::node::auth::Grant;

/// What etcd answers (code UNKNOWN) when the waiter's own key was gone by the time the keys
/// before it were: its lease ended while it waited.
const SESSION_EXPIRED: &str = "mutex: session is expired";

/// Implements etcd's `Lock` over the member's [`Recipes`].
pub struct EtcdLock {
    recipes: Recipes,
}

impl EtcdLock {
    /// The service, running its recipe with `recipes`.
    pub fn new(recipes: Recipes) -> EtcdLock {
        EtcdLock { recipes }
    }

    /// The service for one request, checked as `grant`.
    fn as_caller(&self, grant: Grant) -> EtcdLock {
        EtcdLock {
            recipes: self.recipes.acting_as(grant),
        }
    }

    /// etcd's `Mutex.Lock`: queue, wait for the older keys to go, check ours is still there.
    async fn acquire(
        &self,
        request: v3lockpb::LockRequest,
    ) -> Result<v3lockpb::LockResponse, Status> {
        let lease = self.recipes.session_lease(request.lease).await?;
        let prefix = prefix_of(&request.name);
        let key = contender_key(&prefix, lease);
        let holder = etcd::RequestOp {
            request: Some(Op::RequestRange(oldest_under(&prefix))),
        };
        // Until the lock is held, the key is deleted if the wait fails or the client gives up.
        let unlock = etcd::TxnRequest {
            success: vec![delete_op(key.clone())],
            ..Default::default()
        };
        let (queued, undo) = self
            .recipes
            .enqueue(key.clone(), Bytes::new(), lease, vec![holder], |_| unlock)
            .await?;
        let held =
            range_kv(&queued.response, 1).is_none_or(|h| h.create_revision == queued.revision);
        if held {
            undo.disarm();
            return Ok(v3lockpb::LockResponse {
                header: queued.response.header,
                key,
            });
        }
        if let Err(status) = self
            .recipes
            .wait_deletes(&prefix, queued.revision - 1)
            .await
        {
            undo.now().await;
            return Err(status);
        }
        let mine = etcd::RangeRequest {
            key: key.clone(),
            ..Default::default()
        };
        let mine = match self.recipes.range(mine).await {
            Ok(mine) => mine,
            Err(status) => {
                undo.now().await;
                return Err(status);
            }
        };
        undo.disarm();
        if mine.kvs.is_empty() {
            return Err(Status::unknown(SESSION_EXPIRED));
        }
        Ok(v3lockpb::LockResponse {
            header: mine.header,
            key,
        })
    }
}

#[tonic::async_trait]
impl Lock for EtcdLock {
    async fn lock(
        &self,
        request: Request<v3lockpb::LockRequest>,
    ) -> Result<Response<v3lockpb::LockResponse>, Status> {
        super::observe("etcd.lock", async {
            let grant = self.recipes.check_name(
                request.metadata(),
                &request.get_ref().name,
                Perm::Write,
            )?;
            self.as_caller(grant).acquire(request.into_inner()).await
        })
        .await
    }

    async fn unlock(
        &self,
        request: Request<v3lockpb::UnlockRequest>,
    ) -> Result<Response<v3lockpb::UnlockResponse>, Status> {
        super::observe("etcd.unlock", async {
            let grant =
                self.recipes
                    .check_key(request.metadata(), &request.get_ref().key, Perm::Write)?;
            let deleted = self
                .recipes
                .acting_as(grant)
                .delete(request.into_inner().key)
                .await?;
            Ok(v3lockpb::UnlockResponse {
                header: deleted.header,
            })
        })
        .await
    }
}
