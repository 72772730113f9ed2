//! etcd's `Election` service (`v3electionpb`): etcd's election recipe, run by the member for
//! the client.
//!
//! A candidate's key is `name/<lease hex>` (attached to its lease) and holds its value; the oldest
//! key under `name/` leads. `Campaign` queues the key and waits to lead, as
//! [`super::lock`] waits for a lock (a canceled campaign resigns). A [`v3electionpb::LeaderKey`]
//! names one leadership by key and creation revision, so `Proclaim` and `Resign` act only while
//! that key is the one created then. `Leader` reads the oldest key; `Observe` streams it each time
//! it changes, waiting on this member's history. The steps are [`super::concurrency`]'s.

use bytes::Bytes;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::mvccpb;
use rskv_proto::etcd::mvccpb::event::EventType;
use rskv_proto::etcd::v3electionpb;
use rskv_proto::etcd::v3electionpb::election_server::Election;
use rskv_storage::log_throttle::LogThrottle;
use rskv_storage::state_machine::auth::Perm;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::concurrency::contender_key;
use super::concurrency::created_at;
use super::concurrency::delete_op;
use super::concurrency::oldest_under;
use super::concurrency::prefix_of;
use super::concurrency::put_op;
use super::concurrency::Recipes;
use super::EtcdContext;
use crate::node::auth::Grant;

/// Leader responses an `Observe` stream may hold unsent before its task waits.
const OBSERVE_BUFFER: usize = 16;

/// etcd's errors of the election service: plain errors in etcd's server, so gRPC code UNKNOWN
/// with these messages, which clients match on.
fn no_leader() -> Status {
    Status::unknown("election: no leader")
}

fn not_leader() -> Status {
    Status::unknown("election: not leader")
}

fn missing_leader_key() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

/// The transaction that gives up a leadership: delete its `key` if it is still the one created
/// at `revision` (etcd's `Resign`).
fn resignation(key: &Bytes, revision: i64) -> etcd::TxnRequest {
    etcd::TxnRequest {
        compare: vec![created_at(key.clone(), revision)],
        success: vec![delete_op(key.clone())],
        failure: Vec::new(),
    }
}

/// Implements etcd's `Election` over the member's [`Recipes`].
pub struct EtcdElection {
    ctx: EtcdContext,
    recipes: Recipes,
}

impl EtcdElection {
    /// The service, answering headers with `ctx` and running its recipe with `recipes`.
    pub fn new(ctx: EtcdContext, recipes: Recipes) -> EtcdElection {
        EtcdElection { ctx, recipes }
    }

    /// The service for one request, checked as `grant`.
    fn as_caller(&self, grant: Grant) -> EtcdElection {
        EtcdElection {
            ctx: self.ctx.clone(),
            recipes: self.recipes.acting_as(grant),
        }
    }

    /// etcd's `Election.Campaign`: queue (or find the key queued before, proclaiming the new
    /// value), then wait for the older candidates to go.
    async fn run_campaign(
        &self,
        request: v3electionpb::CampaignRequest,
    ) -> Result<v3electionpb::CampaignResponse, Status> {
        let lease = self.recipes.session_lease(request.lease).await?;
        let prefix = prefix_of(&request.name);
        let key = contender_key(&prefix, lease);
        // A client that gives up while this waits resigns (etcd resigns on a canceled context).
        let resign_key = key.clone();
        let (queued, resign) = self
            .recipes
            .enqueue(
                key.clone(),
                request.value.clone(),
                lease,
                Vec::new(),
                move |queued| resignation(&resign_key, queued.revision),
            )
            .await?;
        let leader = v3electionpb::LeaderKey {
            name: request.name,
            key,
            rev: queued.revision,
            lease,
        };
        if let Some(existing) = &queued.existing {
            if existing.value != request.value {
                if let Err(status) = self.proclaim_as(&leader, request.value).await {
                    resign.now().await;
                    return Err(status);
                }
            }
        }
        let waited = self.recipes.wait_deletes(&prefix, leader.rev - 1).await;
        // Another failure than a cancel leaves the key, as in etcd: the client may campaign again.
        resign.disarm();
        waited?;
        Ok(v3electionpb::CampaignResponse {
            header: queued.response.header,
            leader: Some(leader),
        })
    }

    /// Puts `value` at the leader key if it is still `leader`'s.
    async fn proclaim_as(
        &self,
        leader: &v3electionpb::LeaderKey,
        value: Bytes,
    ) -> Result<etcd::TxnResponse, Status> {
        let txn = etcd::TxnRequest {
            compare: vec![created_at(leader.key.clone(), leader.rev)],
            success: vec![put_op(leader.key.clone(), value, leader.lease)],
            failure: Vec::new(),
        };
        let response = self.recipes.txn(txn).await?;
        if !response.succeeded {
            return Err(not_leader());
        }
        Ok(response)
    }
}

/// Serves one `Observe` stream: the leader's key-value under `prefix` now, then each change of it
/// (a new value, or a new leader once its key is deleted), as etcd's `Election.Observe` does.
/// Ends when the client is gone, or with the error of a read that failed (which the stream's
/// task logs and, as etcd's server does, does not send).
async fn observe_leader(
    ctx: EtcdContext,
    recipes: Recipes,
    prefix: Bytes,
    out: mpsc::Sender<Result<v3electionpb::LeaderResponse, Status>>,
) -> Result<(), Status> {
    let send = |header: etcd::ResponseHeader, kv: mvccpb::KeyValue| {
        let out = out.clone();
        async move {
            let response = v3electionpb::LeaderResponse {
                header: Some(header),
                kv: Some(kv),
            };
            out.send(Ok(response)).await.is_ok()
        }
    };
    loop {
        let found = recipes.range(oldest_under(&prefix)).await?;
        let header = found.header.unwrap_or_default();
        let (header, kv) = match found.kvs.into_iter().next() {
            Some(kv) => (header, kv),
            None => {
                // No leader: the first key put under the prefix from then on leads.
                let kv = first_put(&recipes, &prefix, header.revision).await?;
                (ctx.header_at(kv.mod_revision), kv)
            }
        };
        let key = kv.key.clone();
        let mut changes = recipes.changes(header.revision + 1);
        if !send(header, kv).await {
            return Ok(());
        }
        // The leader's new values, until its key is deleted.
        'leading: loop {
            let (events, revision) = changes.next().await?;
            for event in events {
                let Some(kv) = event.kv.filter(|kv| kv.key == key) else {
                    continue;
                };
                if event.r#type == EventType::Delete as i32 {
                    break 'leading;
                }
                if !send(ctx.header_at(revision), kv).await {
                    return Ok(());
                }
            }
        }
    }
}

/// The first key put under `prefix` at revision `from` or later.
async fn first_put(
    recipes: &Recipes,
    prefix: &[u8],
    from: i64,
) -> Result<mvccpb::KeyValue, Status> {
    let mut changes = recipes.changes(from);
    loop {
        let (events, _) = changes.next().await?;
        let put = events.into_iter().find_map(|event| {
            let kv = event.kv?;
            (event.r#type == EventType::Put as i32 && kv.key.starts_with(prefix)).then_some(kv)
        });
        if let Some(kv) = put {
            return Ok(kv);
        }
    }
}

#[tonic::async_trait]
impl Election for EtcdElection {
    async fn campaign(
        &self,
        request: Request<v3electionpb::CampaignRequest>,
    ) -> Result<Response<v3electionpb::CampaignResponse>, Status> {
        super::observe("etcd.campaign", async {
            let grant = self.recipes.check_name(
                request.metadata(),
                &request.get_ref().name,
                Perm::Write,
            )?;
            self.as_caller(grant)
                .run_campaign(request.into_inner())
                .await
        })
        .await
    }

    async fn proclaim(
        &self,
        request: Request<v3electionpb::ProclaimRequest>,
    ) -> Result<Response<v3electionpb::ProclaimResponse>, Status> {
        super::observe("etcd.proclaim", async {
            let leader = request.get_ref().leader.as_ref();
            let leader_key = &leader.ok_or_else(missing_leader_key)?.key;
            let grant = self
                .recipes
                .check_key(request.metadata(), leader_key, Perm::Write)?;
            let service = self.as_caller(grant);
            let request = request.into_inner();
            let mut leader = request.leader.ok_or_else(missing_leader_key)?;
            leader.lease = service.recipes.session_lease(leader.lease).await?;
            let response = service.proclaim_as(&leader, request.value).await?;
            Ok(v3electionpb::ProclaimResponse {
                header: response.header,
            })
        })
        .await
    }

    async fn leader(
        &self,
        request: Request<v3electionpb::LeaderRequest>,
    ) -> Result<Response<v3electionpb::LeaderResponse>, Status> {
        super::observe("etcd.leader", async {
            let grant =
                self.recipes
                    .check_name(request.metadata(), &request.get_ref().name, Perm::Read)?;
            let prefix = prefix_of(&request.into_inner().name);
            let found = self
                .recipes
                .acting_as(grant)
                .range(oldest_under(&prefix))
                .await?;
            let kv = found.kvs.into_iter().next().ok_or_else(no_leader)?;
            Ok(v3electionpb::LeaderResponse {
                header: found.header,
                kv: Some(kv),
            })
        })
        .await
    }

    type ObserveStream = ReceiverStream<Result<v3electionpb::LeaderResponse, Status>>;

    async fn observe(
        &self,
        request: Request<v3electionpb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        super::observe("etcd.observe", async {
            let grant =
                self.recipes
                    .check_name(request.metadata(), &request.get_ref().name, Perm::Read)?;
            let prefix = prefix_of(&request.into_inner().name);
            let (out, rx) = mpsc::channel(OBSERVE_BUFFER);
            let (ctx, recipes) = (self.ctx.clone(), self.recipes.acting_as(grant));
            self.recipes.spawn(async move {
                let closed = out.clone();
                tokio::select! {
                    result = observe_leader(ctx, recipes, prefix, out.clone()) => {
                        // etcd's server ends the stream without an error when its observer's
                        // read or watch fails (the client observes again); so does rskv, saying
                        // why in its log.
                        if let Err(status) = result {
                            static ENDED: LogThrottle = LogThrottle::every_interval();
                            rskv_storage::warn_throttled!(ENDED, 0, %status, "election Observe ended by a failed read");
                        }
                    }
                    () = closed.closed() => {}
                }
            });
            Ok(ReceiverStream::new(rx))
        })
        .await
    }

    async fn resign(
        &self,
        request: Request<v3electionpb::ResignRequest>,
    ) -> Result<Response<v3electionpb::ResignResponse>, Status> {
        super::observe("etcd.resign", async {
            let leader = request.get_ref().leader.as_ref();
            let leader_key = &leader.ok_or_else(missing_leader_key)?.key;
            let grant = self
                .recipes
                .check_key(request.metadata(), leader_key, Perm::Write)?;
            let leader = request.into_inner().leader.ok_or_else(missing_leader_key)?;
            let response = self
                .recipes
                .acting_as(grant)
                .txn(resignation(&leader.key, leader.rev))
                .await?;
            Ok(v3electionpb::ResignResponse {
                header: response.header,
            })
        })
        .await
    }
}
