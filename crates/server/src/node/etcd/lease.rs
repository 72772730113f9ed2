//! etcd's `Lease` service, and the leader's lease clock ([`Lessor`]).
//!
//! Leases themselves (id, granted TTL, attached keys) are replicated state in the multi-version
//! store; when each one expires is not. As in etcd, only the leader keeps expiry times: keep-alives
//! reach it (a follower forwards them), it revokes an expired lease through the log (so its keys
//! are deleted on every node at one revision), and a new leader starts every lease's full TTL
//! afresh, so a leader change never expires a lease early.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use futures::Stream;
use futures::StreamExt;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use rskv_proto::etcd::etcdserverpb::lease_server::Lease;
use rskv_storage::state_machine::auth::Perm;
use rskv_storage::types::EtcdReply;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;
use tracing::Instrument;

use super::errors::EtcdError;
use super::forward::Routed;
use super::propose;
use super::unexpected;
use super::EtcdContext;
use crate::node::proposer::Proposer;
use crate::node::read_view::ReadView;
use crate::raft::Command;
use crate::raft::Raft;

/// Shortest TTL granted (etcd's minimum is about 1.5 election timeouts; a shorter one could
/// expire during an election).
const MIN_TTL: i64 = 2;
/// etcd's longest TTL (`MaxLeaseTTL`).
const MAX_TTL: i64 = 9_000_000_000;
/// How often the leader looks for expired leases.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

/// The leader's expiry times of leases; empty on a follower.
pub struct Lessor {
    expiries: Mutex<HashMap<i64, (Instant, i64)>>,
    /// Whether the expiry times are those of this node's current leadership (loaded when it
    /// took office); false on a follower and while a new leader is still loading them.
    loaded: AtomicBool,
}

impl Lessor {
    fn new() -> Lessor {
        Lessor {
            expiries: Mutex::new(HashMap::new()),
            loaded: AtomicBool::new(false),
        }
    }

    /// Whether this node's clock can answer for leases: it leads and has loaded them.
    fn ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (Instant, i64)>> {
        self.expiries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or restarts) lease `id`'s full TTL.
    fn renew(&self, id: i64, ttl: i64) {
        self.lock()
            .insert(id, (Instant::now() + Duration::from_secs(ttl as u64), ttl));
    }

    /// The remaining TTL of `id` in seconds, and its granted TTL.
    fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        self.lock().get(&id).map(|(at, ttl)| {
            let left = at.saturating_duration_since(Instant::now());
            (left.as_secs_f64().ceil() as i64, *ttl)
        })
    }

    fn forget(&self, id: i64) {
        self.lock().remove(&id);
    }

    fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Keeps the expiry times while this node leads: at each leadership it loads every lease with
    /// its full TTL; while leading it revokes expired ones through the log. Ends when the node's
    /// Raft stops.
    async fn run(self: Arc<Self>, raft: Raft, proposer: Arc<Proposer>, view: ReadView) {
        let mut metrics = raft.metrics();
        let mut leading = false;
        let mut tick = tokio::time::interval(EXPIRY_CHECK);
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            let leader_now = metrics.borrow_watched().state == ServerState::Leader;
            if leader_now && !leading {
                // Wait until everything committed before this term is applied, so the leases
                // read are all of them.
                if raft
                    .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex)
                    .await
                    .is_err()
                {
                    continue;
                }
                match view.leases().await {
                    Ok(leases) => {
                        let mut expiries = self.lock();
                        expiries.clear();
                        let now = Instant::now();
                        for (lease, _) in leases {
                            expiries.insert(
                                lease.id,
                                (
                                    now + Duration::from_secs(lease.ttl.max(0) as u64),
                                    lease.ttl,
                                ),
                            );
                        }
                        self.loaded.store(true, Ordering::Release);
                        tracing::info!(leases = expiries.len(), "leading: lease clocks started");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read leases; retrying");
                        continue;
                    }
                }
            } else if !leader_now && leading {
                self.loaded.store(false, Ordering::Release);
                self.lock().clear();
            }
            leading = leader_now;
            if !leading {
                continue;
            }
            for id in self.expired() {
                match proposer.write(Command::LeaseRevoke { id }).await {
                    Ok(_) => {
                        tracing::debug!(lease = id, "lease expired; revoked");
                        self.forget(id);
                    }
                    Err(e) => {
                        tracing::debug!(lease = id, error = %e, "revoking an expired lease failed; will retry")
                    }
                }
            }
        }
    }
}

/// Implements etcd's `Lease`. Cheap to clone (a keep-alive stream takes a clone).
#[derive(Clone)]
pub struct EtcdLease {
    ctx: EtcdContext,
    proposer: Arc<Proposer>,
    view: ReadView,
    lessor: Arc<Lessor>,
}

impl EtcdLease {
    /// The service; starts the lease clock task, which ends when `raft` shuts down.
    pub fn new(ctx: EtcdContext, raft: Raft, proposer: Arc<Proposer>, view: ReadView) -> EtcdLease {
        let lessor = Arc::new(Lessor::new());
        tokio::spawn(
            lessor
                .clone()
                .run(raft, proposer.clone(), view.clone())
                .in_current_span(),
        );
        EtcdLease {
            ctx,
            proposer,
            view,
            lessor,
        }
    }

    /// Renews `id` here (the leader): its granted TTL, or 0 when it is gone.
    ///
    /// # Errors
    /// "etcdserver: leader changed" when this node no longer leads, or leads but has not loaded
    /// the lease clocks yet: its answer would say the lease is gone when it is not. The client
    /// opens its keep-alive stream again, which then reaches the current leader.
    async fn keep_alive_here(&self, id: i64) -> Result<etcd::LeaseKeepAliveResponse, Status> {
        self.check_leading()?;
        let ttl = match self.clock(id).await? {
            Some((_, ttl)) => {
                self.lessor.renew(id, ttl);
                ttl
            }
            None => 0,
        };
        Ok(etcd::LeaseKeepAliveResponse {
            header: Some(self.ctx.header()),
            id,
            ttl,
        })
    }

    /// Refuses with "etcdserver: leader changed" unless this node leads with its lease clocks
    /// loaded ([`Lessor::ready`]).
    fn check_leading(&self) -> Result<(), Status> {
        if self.lessor.ready() && matches!(self.ctx.forwarder().leader_channel(), Ok(None)) {
            Ok(())
        } else {
            Err(EtcdError::LeaderChanged.into())
        }
    }

    /// The remaining and granted TTL of lease `id` on this leader's clock. A lease the clock does
    /// not know (its grant was applied after the clocks were loaded, and answered elsewhere) but
    /// the store holds starts its full TTL now.
    async fn clock(&self, id: i64) -> Result<Option<(i64, i64)>, Status> {
        if let Some(known) = self.lessor.remaining(id) {
            return Ok(Some(known));
        }
        let stored = self
            .view
            .lease(id)
            .await
            .map_err(|e| Status::internal(format!("reading lease {id:x}: {e}")))?;
        Ok(stored.map(|lease| {
            self.lessor.renew(id, lease.ttl);
            (lease.ttl, lease.ttl)
        }))
    }
}

/// A fresh lease id: positive, never 0 (etcd's clients treat 0 as "no lease").
fn new_lease_id() -> i64 {
    loop {
        let id = (rand::random::<u64>() >> 1) as i64;
        if id != 0 {
            return id;
        }
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<etcd::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for EtcdLease {
    async fn lease_grant(
        &self,
        request: Request<etcd::LeaseGrantRequest>,
    ) -> Result<Response<etcd::LeaseGrantResponse>, Status> {
        super::observe("etcd.lease_grant", async {
            self.ctx.auth().require_user(request.metadata())?;
            if request.get_ref().ttl > MAX_TTL {
                return Err(Status::out_of_range("etcdserver: lease TTL is too large"));
            }
            let grant = match self
                .ctx
                .forwarder()
                .to_leader(request, |ch, req| async move {
                    LeaseClient::new(ch).lease_grant(req).await
                })
                .await?
            {
                Routed::Here(grant) => grant,
                Routed::Forwarded(response) => return Ok(response),
            };
            let id = if grant.id != 0 {
                grant.id
            } else {
                new_lease_id()
            };
            let ttl = grant.ttl.max(MIN_TTL);
            let command = Command::LeaseGrant { id, ttl };
            match propose(&self.proposer, command, "a grant").await? {
                (EtcdReply::LeaseGranted { id, ttl }, revision) => {
                    self.lessor.renew(id, ttl);
                    Ok(etcd::LeaseGrantResponse {
                        header: Some(self.ctx.header_at(revision)),
                        id,
                        ttl,
                        error: String::new(),
                    })
                }
                (other, _) => Err(unexpected("a grant", &other)),
            }
        })
        .await
    }

    async fn lease_revoke(
        &self,
        request: Request<etcd::LeaseRevokeRequest>,
    ) -> Result<Response<etcd::LeaseRevokeResponse>, Status> {
        super::observe("etcd.lease_revoke", async {
            // As etcd: revoking deletes the lease's keys, so its user must be able to write
            // every one of them.
            let auth = self.ctx.auth();
            auth.require_user(request.metadata())?;
            if auth.store().enabled() {
                let keys = self
                    .view
                    .leases()
                    .await
                    .map_err(|e| Status::internal(format!("reading leases: {e}")))?
                    .into_iter()
                    .find(|(lease, _)| lease.id == request.get_ref().id)
                    .map(|(_, keys)| keys)
                    .unwrap_or_default();
                for key in keys {
                    auth.check(request.metadata(), &key, b"", Perm::Write)?;
                }
            }
            let revoke = match self
                .ctx
                .forwarder()
                .to_leader(request, |ch, req| async move {
                    LeaseClient::new(ch).lease_revoke(req).await
                })
                .await?
            {
                Routed::Here(revoke) => revoke,
                Routed::Forwarded(response) => return Ok(response),
            };
            let command = Command::LeaseRevoke { id: revoke.id };
            match propose(&self.proposer, command, "a revoke").await? {
                (EtcdReply::Done, revision) => {
                    self.lessor.forget(revoke.id);
                    Ok(etcd::LeaseRevokeResponse {
                        header: Some(self.ctx.header_at(revision)),
                    })
                }
                (other, _) => Err(unexpected("a revoke", &other)),
            }
        })
        .await
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<etcd::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.ctx.auth().require_user(request.metadata())?;
        match self.ctx.forwarder().route(&request)? {
            Some(channel) => {
                // A follower pipes the stream to the leader, whose clock it is.
                let caller = crate::node::auth::Caller::of(request.metadata());
                let inbound = request
                    .into_inner()
                    .filter_map(|r| futures::future::ready(r.ok()));
                let mut outbound = tonic::Request::new(inbound);
                super::forward::mark_forwarded(outbound.metadata_mut(), caller);
                let me = self.ctx.member_id();
                let replies = LeaseClient::new(channel)
                    .lease_keep_alive(outbound)
                    .await?
                    .into_inner()
                    .map(move |reply| {
                        reply.map(|mut reply| {
                            super::forward::Answered::answered_by(&mut reply, me);
                            reply
                        })
                    });
                Ok(Response::new(Box::pin(replies) as KeepAliveStream))
            }
            None => {
                let service = self.clone();
                let service = Arc::new(service);
                let replies = request.into_inner().then(move |r| {
                    let service = service.clone();
                    async move {
                        match r {
                            Ok(keep) => service.keep_alive_here(keep.id).await,
                            Err(status) => Err(status),
                        }
                    }
                });
                Ok(Response::new(Box::pin(replies) as KeepAliveStream))
            }
        }
    }

    async fn lease_time_to_live(
        &self,
        request: Request<etcd::LeaseTimeToLiveRequest>,
    ) -> Result<Response<etcd::LeaseTimeToLiveResponse>, Status> {
        super::observe("etcd.lease_time_to_live", async {
            self.ctx.auth().require_user(request.metadata())?;
            let ask = match self
                .ctx
                .forwarder()
                .to_leader(request, |ch, req| async move {
                    LeaseClient::new(ch).lease_time_to_live(req).await
                })
                .await?
            {
                Routed::Here(ask) => ask,
                Routed::Forwarded(response) => return Ok(response),
            };
            self.check_leading()?;
            let header = Some(self.ctx.header());
            let Some((remaining, granted)) = self.clock(ask.id).await? else {
                return Ok(etcd::LeaseTimeToLiveResponse {
                    header,
                    id: ask.id,
                    ttl: -1,
                    granted_ttl: 0,
                    keys: Vec::new(),
                });
            };
            let keys = if ask.keys {
                self.view
                    .leases()
                    .await
                    .map_err(|e| Status::internal(format!("reading leases: {e}")))?
                    .into_iter()
                    .find(|(lease, _)| lease.id == ask.id)
                    .map(|(_, keys)| keys)
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            Ok(etcd::LeaseTimeToLiveResponse {
                header,
                id: ask.id,
                ttl: remaining,
                granted_ttl: granted,
                keys,
            })
        })
        .await
    }

    async fn lease_leases(
        &self,
        request: Request<etcd::LeaseLeasesRequest>,
    ) -> Result<Response<etcd::LeaseLeasesResponse>, Status> {
        super::observe("etcd.lease_leases", async {
            self.ctx.auth().require_user(request.metadata())?;
            let leases = self
                .view
                .leases()
                .await
                .map_err(|e| Status::internal(format!("reading leases: {e}")))?;
            Ok(etcd::LeaseLeasesResponse {
                header: Some(self.ctx.header()),
                leases: leases
                    .into_iter()
                    .map(|(lease, _)| etcd::LeaseStatus { id: lease.id })
                    .collect(),
            })
        })
        .await
    }
}
