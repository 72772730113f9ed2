//! etcd's concurrency recipes, run by the member: what its `Lock` ([`super::lock`]) and
//! `Election` ([`super::election`]) services are made of.
//!
//! etcd serves `v3lockpb.Lock` and `v3electionpb.Election` by running its client's recipes
//! (`client/v3/concurrency`: mutex and election) inside the server, against itself. rskv does the
//! same with [`Recipes`]:
//!
//! - every read and write goes through this member's own etcd `KV` service
//!   ([`super::kv::EtcdKv`]), so a follower forwards writes and linearizable reads to the leader
//!   exactly as it does for a client, and errors are the ones a client would get;
//! - a lease of 0 gets a lease of its own, as etcd's session grants one ([`SESSION_TTL`]), through
//!   the member's `Lease` service;
//! - waiting until keys are deleted (etcd's `waitDeletes`) reads this member's history through a
//!   [`HistoryFeed`], as its `Watch` does, so waiting costs no request to the leader;
//! - what a client's cancel must undo (the queued key of a waiting lock or candidate) is an
//!   [`Undo`], run when the request's future is dropped.
//!
//! Both recipes queue a key `name/<lease id in hex>` per contender and order contenders by the
//! revision that created their key: the oldest key holds the lock, or leads.

use std::sync::Arc;

use bytes::Bytes;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::compare::CompareResult;
use rskv_proto::etcd::etcdserverpb::compare::CompareTarget;
use rskv_proto::etcd::etcdserverpb::compare::TargetUnion;
use rskv_proto::etcd::etcdserverpb::kv_server::Kv;
use rskv_proto::etcd::etcdserverpb::lease_server::Lease;
use rskv_proto::etcd::etcdserverpb::range_request::SortOrder;
use rskv_proto::etcd::etcdserverpb::range_request::SortTarget;
use rskv_proto::etcd::etcdserverpb::request_op::Request as Op;
use rskv_proto::etcd::etcdserverpb::response_op::Response as OpResponse;
use rskv_proto::etcd::mvccpb;
use rskv_proto::etcd::mvccpb::event::EventType;
use rskv_storage::events::EventBus;
use tokio_util::task::TaskTracker;
use tonic::Request;
use tonic::Status;

use super::errors::EtcdError;
use super::kv::EtcdKv;
use super::lease::EtcdLease;
use crate::node::auth::Grant;
use crate::node::history_feed::Feed;
use crate::node::history_feed::HistoryFeed;
use crate::node::read_view::ReadView;

/// TTL in seconds of the lease granted for a request that names none (lease 0): etcd's session
/// default, which its server's lock and election services use the same way.
pub const SESSION_TTL: i64 = 60;

/// The keys of lock or election `name` are under `name/`.
pub fn prefix_of(name: &[u8]) -> Bytes {
    let mut prefix = Vec::with_capacity(name.len() + 1);
    prefix.extend_from_slice(name);
    prefix.push(b'/');
    prefix.into()
}

/// A contender's key: the prefix and its lease id in hex, spelled as Go's `%x` spells an
/// `int64` (a sign, then the magnitude), so a key is the one etcd would make.
pub fn contender_key(prefix: &[u8], lease: i64) -> Bytes {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut key = prefix.to_vec();
    key.extend_from_slice(hex.as_bytes());
    key.into()
}

/// The end of the range of every key starting with `prefix` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    // Only 0xff bytes: every key from the prefix on.
    Bytes::from_static(b"\0")
}

/// A comparison that `key` was created at `revision` (0: does not exist).
pub fn created_at(key: Bytes, revision: i64) -> etcd::Compare {
    etcd::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key,
        target_union: Some(TargetUnion::CreateRevision(revision)),
        range_end: Bytes::new(),
    }
}

/// A put of `value` at `key` with `lease`, as a transaction operation.
pub fn put_op(key: Bytes, value: Bytes, lease: i64) -> etcd::RequestOp {
    etcd::RequestOp {
        request: Some(Op::RequestPut(etcd::PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        })),
    }
}

/// A delete of `key`, as a transaction operation.
pub fn delete_op(key: Bytes) -> etcd::RequestOp {
    etcd::RequestOp {
        request: Some(Op::RequestDeleteRange(etcd::DeleteRangeRequest {
            key,
            ..Default::default()
        })),
    }
}

/// The oldest key under `prefix`: the lock's holder, the election's leader (etcd's
/// `WithFirstCreate`).
pub fn oldest_under(prefix: &[u8]) -> etcd::RangeRequest {
    etcd::RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The first key-value of a range reply in a transaction's response `index`.
pub fn range_kv(response: &etcd::TxnResponse, index: usize) -> Option<&mvccpb::KeyValue> {
    match response
        .responses
        .get(index)
        .and_then(|r| r.response.as_ref())
    {
        Some(OpResponse::ResponseRange(range)) => range.kvs.first(),
        _ => None,
    }
}

/// A contender's key, put in the queue by [`Recipes::enqueue`].
pub struct Queued {
    /// The transaction's response: `responses[0]` is the put (or the read of the key that was
    /// there already), then the operations the caller added.
    pub response: etcd::TxnResponse,
    /// The revision that created the key: the contender's place in the queue.
    pub revision: i64,
    /// The key as it was, when it existed already (the same lease queued before).
    pub existing: Option<mvccpb::KeyValue>,
}

/// etcd's recipes over this member's KV, Lease and history (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct Recipes {
    /// The member's etcd `KV`: reads and writes, forwarded to the leader from a follower.
    kv: Arc<EtcdKv>,
    /// The member's etcd `Lease`: grants a session lease for requests that name none.
    lease: Arc<EtcdLease>,
    /// Reads history for the waits.
    view: ReadView,
    /// Wakes the waits when the store moves.
    events: Arc<EventBus>,
    /// The undo tasks of canceled requests and the tasks serving `Observe` streams; the node
    /// waits for them when it shuts down.
    tasks: TaskTracker,
    /// Who the recipe's own requests come as: the client whose request it serves, as checked
    /// ([`Recipes::acting_as`]); nobody with auth disabled.
    caller: Grant,
}

impl Recipes {
    /// Whether the request may use lock or election `name` (`perm` on every key under
    /// `name/`), as etcd's recipes are checked through the KV requests they make.
    ///
    /// # Errors
    /// etcd's auth status.
    pub fn check_name(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        name: &[u8],
        perm: rskv_storage::state_machine::auth::Perm,
    ) -> Result<Grant, Status> {
        let prefix = prefix_of(name);
        let end = prefix_end(&prefix);
        self.kv.ctx().auth().check(metadata, &prefix, &end, perm)
    }

    /// Whether the request may `perm` the single `key`.
    ///
    /// # Errors
    /// etcd's auth status.
    pub fn check_key(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        key: &[u8],
        perm: rskv_storage::state_machine::auth::Perm,
    ) -> Result<Grant, Status> {
        self.kv.ctx().auth().check(metadata, key, b"", perm)
    }

    /// Recipes over these services of the member, whose tasks go to `tasks`.
    pub fn new(
        kv: Arc<EtcdKv>,
        lease: Arc<EtcdLease>,
        view: ReadView,
        events: Arc<EventBus>,
        tasks: TaskTracker,
    ) -> Recipes {
        Recipes {
            kv,
            lease,
            view,
            events,
            tasks,
            caller: Grant::default(),
        }
    }

    /// The recipes serving a request checked as `grant`: their reads and writes (and an undo
    /// after the client is gone, whose token may have lapsed by then) come as its user, through
    /// the same checks as a client's, on this member and on the leader.
    pub fn acting_as(&self, grant: Grant) -> Recipes {
        Recipes {
            caller: grant,
            ..self.clone()
        }
    }

    /// `message` as a request of the recipe's caller.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        self.caller.attach(request.metadata_mut());
        request
    }

    /// Runs `task` (serving a stream) as one of the tasks the node waits for at shutdown.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// `lease`, or for 0 a new lease of [`SESSION_TTL`] seconds, as etcd's session does for a
    /// request that names no lease (no keep-alive: it ends after its TTL).
    ///
    /// # Errors
    /// The grant's.
    pub async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let grant = etcd::LeaseGrantRequest {
            ttl: SESSION_TTL,
            id: 0,
        };
        let granted = self
            .lease
            .lease_grant(self.request(grant))
            .await?
            .into_inner();
        if !granted.error.is_empty() {
            return Err(Status::unknown(granted.error));
        }
        Ok(granted.id)
    }

    /// Runs `txn` as a client's `Txn`.
    ///
    /// # Errors
    /// What `Txn` answers.
    pub async fn txn(&self, txn: etcd::TxnRequest) -> Result<etcd::TxnResponse, Status> {
        Ok(self.kv.txn(self.request(txn)).await?.into_inner())
    }

    /// Runs `range` as a client's (linearizable) `Range`.
    ///
    /// # Errors
    /// What `Range` answers.
    pub async fn range(&self, range: etcd::RangeRequest) -> Result<etcd::RangeResponse, Status> {
        Ok(self.kv.range(self.request(range)).await?.into_inner())
    }

    /// Deletes `key` as a client's `DeleteRange`.
    ///
    /// # Errors
    /// What `DeleteRange` answers.
    pub async fn delete(&self, key: Bytes) -> Result<etcd::DeleteRangeResponse, Status> {
        let delete = etcd::DeleteRangeRequest {
            key,
            ..Default::default()
        };
        Ok(self
            .kv
            .delete_range(self.request(delete))
            .await?
            .into_inner())
    }

    /// Puts `key` with `value` and `lease` unless it exists, in one transaction with `also`
    /// (which runs either way): the contender joins the queue, or finds its place in it from
    /// before (etcd's `tryAcquire` and the first step of `Campaign`). Answers with the [`Undo`]
    /// that takes the contender out again (made by `undo` from where it was queued), armed.
    ///
    /// The transaction runs as a task of its own: a client that cancels while it is on its way
    /// would otherwise leave a key queued that nobody knows of (its client never learned it), so
    /// the task finishes it and, with nobody left to take the answer, undoes it at once.
    ///
    /// # Errors
    /// What `Txn` answers: "etcdserver: requested lease not found" for an unknown lease.
    pub async fn enqueue(
        &self,
        key: Bytes,
        value: Bytes,
        lease: i64,
        also: Vec<etcd::RequestOp>,
        undo: impl FnOnce(&Queued) -> etcd::TxnRequest + Send + 'static,
    ) -> Result<(Queued, Undo), Status> {
        let recipes = self.clone();
        let queueing = self.tasks.spawn(async move {
            let queued = recipes.put_in_queue(key, value, lease, also).await?;
            let undo = recipes.undo(undo(&queued));
            Ok((queued, undo))
        });
        queueing
            .await
            .map_err(|e| Status::internal(format!("queueing a contender: {e}")))?
    }

    /// The transaction of [`Recipes::enqueue`].
    async fn put_in_queue(
        &self,
        key: Bytes,
        value: Bytes,
        lease: i64,
        also: Vec<etcd::RequestOp>,
    ) -> Result<Queued, Status> {
        let read = etcd::RequestOp {
            request: Some(Op::RequestRange(etcd::RangeRequest {
                key: key.clone(),
                ..Default::default()
            })),
        };
        let mut success = vec![put_op(key.clone(), value, lease)];
        success.extend(also.iter().cloned());
        let mut failure = vec![read];
        failure.extend(also);
        let response = self
            .txn(etcd::TxnRequest {
                compare: vec![created_at(key, 0)],
                success,
                failure,
            })
            .await?;
        let header_revision = response.header.map_or(0, |h| h.revision);
        if response.succeeded {
            return Ok(Queued {
                response,
                revision: header_revision,
                existing: None,
            });
        }
        let existing = range_kv(&response, 0).cloned().ok_or_else(|| {
            // The comparison said the key exists, in the same transaction.
            Status::internal("a queued key was missing from its own transaction's read")
        })?;
        Ok(Queued {
            revision: existing.create_revision,
            existing: Some(existing),
            response,
        })
    }

    /// Waits until no key under `prefix` created at `max_create_revision` or before is left
    /// (etcd's `waitDeletes`): reads the youngest such key, waits for its deletion, again until
    /// none is left. Answers the header of the last read.
    ///
    /// # Errors
    /// A read's; "etcdserver: mvcc: required revision has been compacted" when the history to
    /// wait on is gone; "etcdserver: server stopped" when the node shuts down.
    pub async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_revision: i64,
    ) -> Result<etcd::ResponseHeader, Status> {
        loop {
            let youngest = etcd::RangeRequest {
                sort_order: SortOrder::Descend as i32,
                max_create_revision,
                ..oldest_under(prefix)
            };
            let found = self.range(youngest).await?;
            let header = found.header.unwrap_or_default();
            let Some(kv) = found.kvs.first() else {
                return Ok(header);
            };
            self.wait_delete(&kv.key, header.revision).await?;
        }
    }

    /// Waits for a deletion of `key` at `revision` or later.
    async fn wait_delete(&self, key: &[u8], revision: i64) -> Result<(), Status> {
        let mut changes = self.changes(revision);
        loop {
            let (events, _) = changes.next().await?;
            let deleted = events.iter().any(|event| {
                event.r#type == EventType::Delete as i32
                    && event.kv.as_ref().is_some_and(|kv| kv.key == key)
            });
            if deleted {
                return Ok(());
            }
        }
    }

    /// The store's changes from revision `start` on, read from this member's history.
    pub fn changes(&self, start: i64) -> Changes {
        Changes {
            feed: HistoryFeed::new(self.view.clone(), &self.events, start, false),
        }
    }

    /// An [`Undo`] that runs `txn` unless disarmed.
    fn undo(&self, txn: etcd::TxnRequest) -> Undo {
        Undo {
            recipes: Some(self.clone()),
            txn,
        }
    }
}

/// The store's changes from a revision on, as the recipes wait on them.
pub struct Changes {
    feed: HistoryFeed,
}

impl Changes {
    /// The next changes (waiting for some), with the store's revision as of their read.
    ///
    /// # Errors
    /// "etcdserver: mvcc: required revision has been compacted" when the position is compacted
    /// away; "etcdserver: server stopped" when the node shuts down; INTERNAL on a storage
    /// failure.
    pub async fn next(&mut self) -> Result<(Vec<mvccpb::Event>, i64), Status> {
        match self.feed.next().await {
            Ok(Feed::Changes { events, revision }) => {
                Ok((events.into_iter().map(|(_, e)| e).collect(), revision))
            }
            Ok(Feed::Compacted { .. }) => Err(Status::out_of_range(
                "etcdserver: mvcc: required revision has been compacted",
            )),
            Ok(Feed::Closed) => Err(EtcdError::Stopped.into()),
            Err(e) => Err(Status::internal(format!("reading history: {e}"))),
        }
    }
}

/// What a canceled request must undo: a transaction (delete the queued key) run when the
/// `Undo` is dropped armed, which is what happens to a handler's future when its client cancels
/// or its deadline passes. etcd's server does the same on a canceled wait: the lock deletes its
/// key, the candidate resigns (rskv also when the cancel came while the key was being queued).
pub struct Undo {
    /// `None` once disarmed or run.
    recipes: Option<Recipes>,
    txn: etcd::TxnRequest,
}

impl Undo {
    /// The request finished as it should: nothing to undo.
    pub fn disarm(mut self) {
        self.recipes = None;
    }

    /// Undoes now (the request failed; its error goes back to the client after this). The undo
    /// runs as a task of its own, so a client that cancels meanwhile does not cut it short.
    pub async fn now(mut self) {
        if let Some(recipes) = self.recipes.take() {
            let tasks = recipes.tasks.clone();
            let undo = tasks.spawn(run_undo(recipes, std::mem::take(&mut self.txn)));
            if let Err(e) = undo.await {
                tracing::warn!(error = %e, "the undo of a failed lock or campaign did not finish");
            }
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        let Some(recipes) = self.recipes.take() else {
            return;
        };
        let txn = std::mem::take(&mut self.txn);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let tasks = recipes.tasks.clone();
                tasks.spawn_on(run_undo(recipes, txn), &runtime);
            }
            Err(_) => tracing::warn!("no runtime to undo a canceled lock or campaign on"),
        }
    }
}

async fn run_undo(recipes: Recipes, txn: etcd::TxnRequest) {
    if let Err(status) = recipes.txn(txn).await {
        // The key stays until its lease ends, as in etcd when its undo fails.
        tracing::warn!(error = %status.message(), "undoing a canceled lock or campaign failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contender_keys_should_be_spelled_as_etcds() {
        assert_eq!(
            contender_key(b"lk/", 0x694d_8a3b_c1f0),
            &b"lk/694d8a3bc1f0"[..]
        );
        assert_eq!(contender_key(b"lk/", -255), &b"lk/-ff"[..]);
        assert_eq!(
            contender_key(b"lk/", i64::MIN),
            &b"lk/-8000000000000000"[..]
        );
        assert_eq!(prefix_of(b"lk"), &b"lk/"[..]);
    }

    #[test]
    fn prefix_ends_should_be_etcds() {
        assert_eq!(prefix_end(b"lk/"), &b"lk0"[..]);
        assert_eq!(prefix_end(b"a\xff"), &b"b"[..]);
        assert_eq!(prefix_end(b"\xff\xff"), &b"\0"[..]);
    }
}
