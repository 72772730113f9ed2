//! Forwarding etcd requests from a follower to the leader.
//!
//! rskv's own API answers NOT_LEADER naming the leader and its client follows the hint; etcd's
//! clients follow no redirect, so every member must answer. A service that needs the leader asks
//! [`Forwarder::route`] where a request goes: `None` means serve it here (this node leads),
//! `Some(channel)` is a channel to the leader's peer address (its `NodeInfo.peer_addr` in the
//! membership), dialled as the Raft transport dials (peer TLS, `peer_source_ip`), cached and
//! re-created when the leader changes. The leader serves the etcd services a follower forwards
//! on its peer port as well as on its client port: only members reach the peer port (peer
//! mutual TLS), so the leader can take the caller a follower names ([`Caller`]: the client's
//! token, or the user its certificate named) as the follower established it. [`Forwarder::forward`] then
//! makes the call with a deadline, marked as forwarded, so a request that lands on a node that
//! lost leadership meanwhile is answered "leader changed" (the client retries) rather than
//! bouncing between nodes. The leader's answer goes back with this member's id in its header
//! ([`Answered`]): in etcd a header names the member that answered the client, whichever member
//! did the work.
//!
//! A forwarded answer also carries the leader's applied index ([`StampApplied`]), and the
//! forwarding member waits until it has applied that far before it answers: as in etcd, where
//! the member a client calls waits for its own apply, a client that wrote (or authenticated)
//! through a member then reads from that member sees its write (or its token).

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use tonic::transport::Channel;
use tonic::Request;
use tonic::Status;

use super::errors::EtcdError;
use crate::node::auth::Caller;
use crate::raft::network::PeerLiveness;
use crate::raft::NodeId;
use crate::raft::Raft;
use rskv_client::transport::Dial;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_storage::events::EventBus;

/// An etcd response with a header naming the member that answered.
pub trait Answered {
    /// Makes the header (and those of nested responses) name member `id`.
    fn answered_by(&mut self, id: NodeId);
}

macro_rules! answered {
    ($($response:ty),* $(,)?) => {
        $(impl Answered for $response {
            fn answered_by(&mut self, id: NodeId) {
                if let Some(header) = self.header.as_mut() {
                    header.member_id = id;
                }
            }
        })*
    };
}

answered!(
    etcd::AuthEnableResponse,
    etcd::AuthDisableResponse,
    etcd::AuthenticateResponse,
    etcd::AuthStatusResponse,
    etcd::AlarmResponse,
    etcd::AuthUserGetResponse,
    etcd::AuthUserListResponse,
    etcd::AuthRoleGetResponse,
    etcd::AuthRoleListResponse,
    etcd::AuthUserAddResponse,
    etcd::AuthUserDeleteResponse,
    etcd::AuthUserChangePasswordResponse,
    etcd::AuthUserGrantRoleResponse,
    etcd::AuthUserRevokeRoleResponse,
    etcd::AuthRoleAddResponse,
    etcd::AuthRoleDeleteResponse,
    etcd::AuthRoleGrantPermissionResponse,
    etcd::AuthRoleRevokePermissionResponse,
    etcd::RangeResponse,
    etcd::PutResponse,
    etcd::DeleteRangeResponse,
    etcd::CompactionResponse,
    etcd::LeaseGrantResponse,
    etcd::LeaseRevokeResponse,
    etcd::LeaseKeepAliveResponse,
    etcd::LeaseTimeToLiveResponse,
    etcd::MemberListResponse,
    etcd::MemberAddResponse,
    etcd::MemberRemoveResponse,
    etcd::MemberPromoteResponse,
);

impl Answered for etcd::TxnResponse {
    fn answered_by(&mut self, id: NodeId) {
        use etcd::response_op::Response;
        if let Some(header) = self.header.as_mut() {
            header.member_id = id;
        }
        for op in &mut self.responses {
            match &mut op.response {
                Some(Response::ResponseRange(r)) => r.answered_by(id),
                Some(Response::ResponsePut(r)) => r.answered_by(id),
                Some(Response::ResponseDeleteRange(r)) => r.answered_by(id),
                Some(Response::ResponseTxn(r)) => r.answered_by(id),
                None => {}
            }
        }
    }
}

/// gRPC metadata key set on a request one member forwarded to the leader.
pub const FORWARDED_HEADER: &str = "rskv-etcd-forwarded";

/// gRPC metadata key of the leader's applied index on its answer to a forwarded request.
pub const APPLIED_HEADER: &str = "rskv-applied-index";

/// The channel to the leader, cached while that node leads at that address.
struct Cached {
    leader: NodeId,
    addr: String,
    channel: Channel,
}

/// Finds the leader for etcd services and forwards requests to it; one per node, shared by
/// every etcd service (cheap to share: one cached channel).
pub struct Forwarder {
    /// This node.
    id: NodeId,
    /// Who leads, and at which address (metrics and membership).
    raft: Raft,
    /// Deadline of a forwarded call (`limits.request_timeout_ms`).
    timeout: Duration,
    /// The current leader's channel; replaced when the leader or its address changes.
    cached: Mutex<Option<Cached>>,
    /// How the leader's peer port is dialled: as the Raft transport does.
    dial: Dial,
    /// When a connection to the leader counts as dead (the Raft transport's timeouts).
    liveness: PeerLiveness,
    /// This member's applied index, to catch up to the leader's before answering.
    events: Arc<EventBus>,
}

impl Forwarder {
    /// A forwarder for node `id`, whose forwarded calls end after `timeout`, dialling the
    /// leader's peer port as `dial` says with `liveness`, and answering once `events` shows the
    /// leader's applied index applied here.
    pub fn new(
        id: NodeId,
        raft: Raft,
        timeout: Duration,
        (dial, liveness): (Dial, PeerLiveness),
        events: Arc<EventBus>,
    ) -> Forwarder {
        Forwarder {
            id,
            raft,
            timeout,
            cached: Mutex::new(None),
            dial,
            liveness,
            events,
        }
    }

    /// The deadline of a forwarded call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Where a request for the leader goes: `None` when this node leads (serve it here), else a
    /// channel to the leader.
    ///
    /// # Errors
    /// "etcdserver: no leader" (UNAVAILABLE) when no leader is known.
    pub fn leader_channel(&self) -> Result<Option<Channel>, Status> {
        let (state, leader, addr) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            let addr = m.current_leader.and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.peer_addr.clone())
            });
            (m.state, m.current_leader, addr)
        };
        if state == ServerState::Leader {
            return Ok(None);
        }
        let (Some(leader), Some(addr)) = (leader, addr) else {
            return Err(EtcdError::NoLeader.into());
        };
        if leader == self.id {
            // It was leading a moment ago and is no longer: an election is on.
            return Err(EtcdError::NoLeader.into());
        }
        self.channel_to(leader, &addr).map(Some)
    }

    /// [`Forwarder::leader_channel`] for `request`, which must not be forwarded twice: a
    /// forwarded request that reached a node that no longer leads is answered "etcdserver:
    /// leader changed" (UNAVAILABLE, which etcd clients retry).
    ///
    /// # Errors
    /// As [`Forwarder::leader_channel`], and the refusal above.
    pub fn route<T>(&self, request: &Request<T>) -> Result<Option<Channel>, Status> {
        let channel = self.leader_channel()?;
        if channel.is_some() && is_forwarded(request) {
            return Err(EtcdError::LeaderChanged.into());
        }
        Ok(channel)
    }

    /// Calls the leader over `channel` with `message`: `call` makes the RPC (e.g.
    /// `|ch, req| async move { ClusterClient::new(ch).member_list(req).await }`). The request
    /// carries the deadline, the forwarded mark and the `caller` (the leader checks it again);
    /// the leader's answer is returned with this member's id in its header.
    ///
    /// # Errors
    /// The leader's status; "etcdserver: request timed out" when no answer came in time.
    pub async fn forward<Req, Resp, F, Fut>(
        &self,
        channel: Channel,
        message: Req,
        caller: Caller,
        call: F,
    ) -> Result<Resp, Status>
    where
        F: FnOnce(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
        Resp: Answered,
    {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        mark_forwarded(request.metadata_mut(), caller);
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.timeout, call(channel, request)).await {
            Ok(Ok(response)) => {
                if let Some(index) = applied_index(response.metadata()) {
                    self.catch_up(index, started).await;
                }
                let mut response = response.into_inner();
                response.answered_by(self.id);
                Ok(response)
            }
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unavailable {
                    // Perhaps the leader is gone: dial afresh next time.
                    self.forget();
                }
                Err(status)
            }
            Err(_) => {
                tracing::debug!(timeout = ?self.timeout, "forwarded etcd request timed out");
                Err(EtcdError::Timeout.into())
            }
        }
    }

    /// Waits, within the forwarded call's deadline (counted from `started`), until this member
    /// has applied `index`, the leader's applied index when it answered. Past the deadline the
    /// answer goes back anyway: the leader did the work; only read-your-writes here is late.
    async fn catch_up(&self, index: u64, started: tokio::time::Instant) {
        let left = self.timeout.saturating_sub(started.elapsed());
        if tokio::time::timeout(left, self.events.wait_applied(index))
            .await
            .is_err()
        {
            tracing::debug!(index, "answering before applying the leader's index");
        }
    }

    /// Serves `request` here when this node leads ([`Routed::Here`] hands the message back),
    /// else forwards it to the leader with `call` ([`Forwarder::forward`]) and hands back the
    /// leader's answer: the one call an etcd service makes before doing what only a leader can.
    ///
    /// # Errors
    /// As [`Forwarder::route`] and [`Forwarder::forward`].
    pub async fn to_leader<Req, Resp, F, Fut>(
        &self,
        request: Request<Req>,
        call: F,
    ) -> Result<Routed<Req, Resp>, Status>
    where
        F: FnOnce(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
        Resp: Answered,
    {
        match self.route(&request)? {
            None => Ok(Routed::Here(request.into_inner())),
            Some(channel) => {
                let caller = Caller::of(request.metadata());
                // Boxed: a client call's future is large, and held inline it would make every
                // handler's future, which tonic moves into a box per request, as large.
                Box::pin(self.forward(channel, request.into_inner(), caller, call))
                    .await
                    .map(Routed::Forwarded)
            }
        }
    }

    /// The cached channel to `leader` at `addr`, or a new one replacing it.
    fn channel_to(&self, leader: NodeId, addr: &str) -> Result<Channel, Status> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref() {
            if c.leader == leader && c.addr == addr {
                return Ok(c.channel.clone());
            }
        }
        let channel = self
            .liveness
            .channel(addr, self.dial.clone())
            .map_err(|why| {
                tracing::warn!(leader, addr, %why, "cannot dial the leader's peer address");
                Status::from(EtcdError::NoLeader)
            })?;
        tracing::debug!(leader, addr, "etcd forwarding: new channel to the leader");
        *cached = Some(Cached {
            leader,
            addr: addr.to_string(),
            channel: channel.clone(),
        });
        Ok(channel)
    }

    fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Where [`Forwarder::to_leader`] sent a request.
#[derive(Debug)]
pub enum Routed<Req, Resp> {
    /// This node leads: serve the message here.
    Here(Req),
    /// The leader answered this.
    Forwarded(Resp),
}

/// The leader's applied index on a forwarded answer.
fn applied_index(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    metadata.get(APPLIED_HEADER)?.to_str().ok()?.parse().ok()
}

/// A layer of the peer server (where followers send what they forward) that stamps its answer
/// to a forwarded request with this member's applied index ([`APPLIED_HEADER`]), read when the answer is ready, so after the
/// request's own apply. Requests no member forwarded pass untouched.
#[derive(Clone)]
pub struct StampApplied {
    events: Arc<EventBus>,
}

impl StampApplied {
    /// Stamps with the applied index `events` records.
    pub fn new(events: Arc<EventBus>) -> StampApplied {
        StampApplied { events }
    }
}

impl<S> tower::Layer<S> for StampApplied {
    type Service = Stamped<S>;

    fn layer(&self, inner: S) -> Stamped<S> {
        Stamped {
            inner,
            events: self.events.clone(),
        }
    }
}

/// The service [`StampApplied`] wraps.
#[derive(Clone)]
pub struct Stamped<S> {
    inner: S,
    events: Arc<EventBus>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Stamped<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::BoxFuture<'static, Result<S::Response, S::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures::FutureExt;
        let forwarded = request.headers().contains_key(FORWARDED_HEADER);
        let answer = self.inner.call(request);
        if !forwarded {
            return futures::future::Either::Left(answer);
        }
        let events = self.events.clone();
        async move {
            let mut response = answer.await?;
            let applied = events.applied_index();
            response
                .headers_mut()
                .insert(APPLIED_HEADER, http::HeaderValue::from(applied));
            Ok(response)
        }
        .boxed()
        .right_future()
    }
}

/// Marks `metadata` as that of a request forwarded to the leader on behalf of `caller`.
pub fn mark_forwarded(metadata: &mut tonic::metadata::MetadataMap, caller: Caller) {
    metadata.insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    caller.attach(metadata);
}

/// Whether another member forwarded `request` here.
pub fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}
