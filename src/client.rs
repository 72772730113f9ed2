//! The library client, with leader redirect; `kv_client`, the tests and tools all use it.
//!
//! Give it any nodes' addresses. Writes and linearizable reads must reach the leader: a node that
//! is not the leader answers NOT_LEADER with the leader's address in metadata, and the client
//! follows it at once. When a node is unreachable or knows no leader, the client tries the next
//! endpoint, with exponential backoff, until the operation's deadline; then it fails with
//! [`ClientError::Unavailable`] describing the last failure.
//!
//! Retries never turn an ambiguous outcome into a wrong one: a write whose request may have reached
//! a leader (a timeout, a connection lost after sending, a failure after proposing) is not retried
//! but reported as [`ClientError::Ambiguous`] — re-applying even a plain put could overwrite a
//! newer write by someone else. Writes are retried only when they certainly did nothing: NOT_LEADER,
//! a refused connection, or a node that refused before admitting them (draining, overloaded).
//! Reads are retried freely.

use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use tonic::transport::Channel;
use tonic::Code;
use tonic::Status;

use crate::batch::Batcher;
use crate::batch::Limits;
use crate::error::op_error_status;
use crate::error::LEADER_ADDR_HEADER;
use crate::pb::kv as pb;
use crate::pb::kv::cluster_client::ClusterClient;
use crate::pb::kv::kv_client::KvClient;
use crate::raft::network::lazy_channel;

pub use crate::pb::kv::Consistency;

/// Largest message the client accepts (a full scan page of large values).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Errors the client reports after its retries.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server rejected the request as malformed; retrying cannot help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No node could serve the request before the deadline.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The request may or may not have been applied (timeout or connection lost after sending).
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// Any other status from the server.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
    /// The client was built with no endpoints or an unusable address.
    #[error("client configuration: {0}")]
    Config(String),
}

/// Result alias for client calls.
pub type ClientResult<T> = Result<T, ClientError>;

/// Retry and timeout settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Total time one operation may take, retries included.
    pub deadline: Duration,
    /// Time one attempt may take.
    pub attempt_timeout: Duration,
    /// TCP connect timeout per node.
    pub connect_timeout: Duration,
    /// First backoff between attempts; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest backoff between attempts.
    pub max_backoff: Duration,
    /// Gets, puts, deletes and compare-and-swaps to one node travel in Multi RPCs when several
    /// are waiting: at most this many RPCs run at once per node, and requests that arrive while
    /// they do go together in the next one (as TiKV's client batches commands). A lone request
    /// goes at once as a plain unary call. 0 sends every request as its own unary call.
    pub batch_inflight: usize,
    /// HTTP/2 connections per node, taken in turn by requests and batches (at least 1). A node
    /// reads each connection in one task, so one client shared by many tasks can spread its load
    /// over several; coalescing still spans all of them (like TiKV's `grpc-connection-count`).
    pub connections: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            deadline: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_millis(500),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            batch_inflight: 4,
            connections: 1,
        }
    }
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the swap happened.
    pub success: bool,
    /// Log index at which the CAS was applied (also when it failed: it was still ordered).
    pub index: u64,
    /// The key's value after the operation.
    pub current: Option<Bytes>,
}

/// How an operation may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Must reach the leader; safe to retry after ambiguous failures (reads, idempotent admin).
    LeaderIdempotent,
    /// Must reach the leader; ambiguous failures are reported, not retried.
    LeaderOnce,
    /// Any node may answer.
    AnyNode,
}

/// A cluster client with leader redirect; cheap to share behind an `Arc`.
pub struct Client {
    endpoints: Vec<String>,
    options: ClientOptions,
    /// The connections to each address; tonic multiplexes requests over each.
    channels: DashMap<String, Arc<Rotation>>,
    /// The last known leader address, tried first for leader operations.
    leader: Mutex<Option<String>>,
    /// Request coalescing, per node address (see [`ClientOptions::batch_inflight`]).
    batchers: DashMap<String, Arc<OpBatcher>>,
}

/// What one op of a Multi answered: its result, or the status it would have failed with alone.
type OpOutcome = Result<pb::op_result::Result, Status>;
type OpBatcher = Batcher<pb::op::Op, OpOutcome>;

/// The connections to one node ([`ClientOptions::connections`]), taken in turn.
struct Rotation {
    channels: Arc<[Channel]>,
    next: AtomicUsize,
}

impl Rotation {
    fn pick(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    /// The same connections with a turn of their own, so that the batches of a batcher go round
    /// all of them whatever else picks a connection meanwhile.
    fn fresh(&self) -> Rotation {
        Rotation {
            channels: self.channels.clone(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Client {
    /// A client for the given node addresses (`host:port`) with default options.
    ///
    /// # Errors
    /// As [`Client::with_options`].
    pub fn new<I, S>(endpoints: I) -> ClientResult<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_options(endpoints, ClientOptions::default())
    }

    /// A client with explicit retry settings.
    ///
    /// # Errors
    /// [`ClientError::Config`] when no endpoint is given, or one is not `host:port` (or an
    /// `http://` URI; TLS is not supported).
    pub fn with_options<I, S>(endpoints: I, options: ClientOptions) -> ClientResult<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(Into::into)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints given".into()));
        }
        for addr in &endpoints {
            crate::raft::network::endpoint_uri(addr)
                .map_err(|e| ClientError::Config(format!("bad endpoint {addr}: {e}")))?;
        }
        Ok(Client {
            endpoints,
            options,
            channels: DashMap::new(),
            leader: Mutex::new(None),
            batchers: DashMap::new(),
        })
    }

    /// The configured endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn node(&self, addr: &str) -> ClientResult<Arc<Rotation>> {
        if let Some(n) = self.channels.get(addr) {
            return Ok(n.clone());
        }
        let channels = (0..self.options.connections.max(1))
            .map(|_| lazy_channel(addr, self.options.connect_timeout, None))
            .collect::<Result<Arc<[Channel]>, _>>()
            .map_err(|e| ClientError::Config(format!("bad endpoint {addr}: {e}")))?;
        let node = Arc::new(Rotation {
            channels,
            next: AtomicUsize::new(0),
        });
        Ok(self
            .channels
            .entry(addr.to_string())
            .or_insert(node)
            .clone())
    }

    fn channel(&self, addr: &str) -> ClientResult<Channel> {
        Ok(self.node(addr)?.pick())
    }

    fn batcher(&self, target: &str) -> ClientResult<Arc<OpBatcher>> {
        if let Some(b) = self.batchers.get(target) {
            return Ok(b.clone());
        }
        let node = self.node(target)?.fresh();
        let b = Arc::new(Batcher::new(
            Limits {
                max_inflight: self.options.batch_inflight,
                max_items: crate::config::DEFAULT_MAX_OPS_PER_REQUEST,
                max_weight: MAX_MULTI_BYTES,
            },
            op_weight,
            move |ops: Vec<pb::op::Op>| send_ops(node.pick(), ops),
        ));
        Ok(self.batchers.entry(target.to_string()).or_insert(b).clone())
    }

    /// Sends `op` to `target`: in a Multi with others when batching is on and requests are
    /// waiting, else as a unary call on `channel`.
    fn dispatch(
        &self,
        target: &str,
        channel: Channel,
        op: pb::op::Op,
    ) -> impl Future<Output = OpOutcome> + Send + 'static {
        let batcher = if self.options.batch_inflight > 0 {
            self.batcher(target).ok()
        } else {
            None
        };
        async move {
            match batcher {
                Some(b) => b.submit(op).await.unwrap_or_else(|| {
                    Err(Status::cancelled("request dropped by the client's batcher"))
                }),
                None => send_one(channel, op).await,
            }
        }
    }

    /// Runs one batchable op through [`Client::call`]; `pick` takes the expected kind of result
    /// out (handing back anything else, a server bug).
    async fn run_op<T>(
        &self,
        route: Route,
        op: pb::op::Op,
        pick: fn(pb::op_result::Result) -> Result<T, pb::op_result::Result>,
    ) -> ClientResult<T> {
        self.call(route, |target, ch| {
            let result = self.dispatch(target, ch, op.clone());
            async move { pick(result.await?).map_err(|other| mismatched(&other)) }
        })
        .await
    }

    fn leader_hint(&self) -> Option<String> {
        self.leader.lock().ok().and_then(|g| g.clone())
    }

    fn set_leader_hint(&self, addr: Option<String>) {
        if let Ok(mut g) = self.leader.lock() {
            *g = addr;
        }
    }

    /// Runs `op` against nodes until it succeeds, fails for good, or the deadline passes.
    async fn call<T, F, Fut>(&self, route: Route, mut op: F) -> ClientResult<T>
    where
        F: FnMut(&str, Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.options.deadline;
        let mut backoff = self.options.initial_backoff;
        let mut rotation = 0usize;
        let mut redirect: Option<String> = None;
        let mut last_error = String::new();
        let mut attempts = 0u32;
        loop {
            let target = match route {
                Route::AnyNode => self.endpoints[rotation % self.endpoints.len()].clone(),
                _ => redirect
                    .take()
                    .or_else(|| self.leader_hint())
                    .unwrap_or_else(|| self.endpoints[rotation % self.endpoints.len()].clone()),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if attempts > 0 && remaining.is_zero() {
                return Err(self.give_up(attempts, started, &last_error));
            }
            attempts += 1;
            let attempt_timeout = self.options.attempt_timeout.min(remaining);
            let outcome =
                match tokio::time::timeout(attempt_timeout, op(&target, self.channel(&target)?))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "no answer from {target} within {attempt_timeout:?}"
                    ))),
                };
            let status = match outcome {
                Ok(value) => {
                    if route != Route::AnyNode {
                        self.set_leader_hint(Some(target));
                    }
                    return Ok(value);
                }
                Err(status) => status,
            };
            let chain = error_chain(&status);
            last_error = format!("{target}: {chain}");
            tracing::debug!(attempt = attempts, error = %last_error, "attempt failed");
            match status.code() {
                Code::FailedPrecondition if !is_not_leader(&status) => {
                    return Err(ClientError::Status(status));
                }
                Code::FailedPrecondition => {
                    // NOT_LEADER: follow the hint at once if there is one.
                    let hint = status
                        .metadata()
                        .get(LEADER_ADDR_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    self.set_leader_hint(None);
                    if let Some(addr) = hint.filter(|a| *a != target) {
                        tracing::debug!(from = %target, to = %addr, "following leader redirect");
                        redirect = Some(addr);
                        if Instant::now() < deadline {
                            continue;
                        }
                    } else {
                        rotation += 1;
                    }
                }
                Code::ResourceExhausted if was_not_admitted(&status) => {
                    // The node is at its in-flight limit: back off and try again.
                }
                Code::Unavailable => {
                    // A refused connection or an explicit "not admitted" proves a write was
                    // never proposed; anything else may have been.
                    if route == Route::LeaderOnce
                        && !never_sent(&chain)
                        && !was_not_admitted(&status)
                    {
                        return Err(ClientError::Ambiguous(last_error));
                    }
                    self.set_leader_hint(None);
                    rotation += 1;
                }
                Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Internal => {
                    // tonic reports a request hyper dropped undispatched as CANCELLED.
                    if route == Route::LeaderOnce && !never_sent(&chain) {
                        return Err(ClientError::Ambiguous(last_error));
                    }
                    self.set_leader_hint(None);
                    rotation += 1;
                }
                Code::InvalidArgument => {
                    return Err(ClientError::InvalidArgument(status.message().to_string()))
                }
                _ => return Err(ClientError::Status(status)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.give_up(attempts, started, &last_error));
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    fn give_up(&self, attempts: u32, started: Instant, last_error: &str) -> ClientError {
        ClientError::Unavailable(format!(
            "gave up after {attempts} attempts in {:.1}s over [{}]; last error: {last_error}",
            started.elapsed().as_secs_f64(),
            self.endpoints.join(", ")
        ))
    }

    fn kv(channel: Channel) -> KvClient<Channel> {
        KvClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Reads `key` linearizably.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn get(&self, key: impl Into<Bytes>) -> ClientResult<Option<Bytes>> {
        let resp = self.get_with(key, Consistency::Linearizable).await?;
        Ok(resp.found.then_some(resp.value))
    }

    /// Reads `key` at the given consistency; the response says which index was applied.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn get_with(
        &self,
        key: impl Into<Bytes>,
        consistency: Consistency,
    ) -> ClientResult<pb::GetResponse> {
        let req = pb::GetRequest {
            key: key.into(),
            consistency: consistency as i32,
        };
        let route = read_route(consistency);
        self.run_op(route, pb::op::Op::Get(req), |r| match r {
            pb::op_result::Result::Get(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    /// Writes `key = value`; returns the log index it was applied at.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> ClientResult<u64> {
        Ok(self.put_with(key, value, false).await?.index)
    }

    /// Writes `key = value`, optionally returning the previous value.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn put_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        return_prev: bool,
    ) -> ClientResult<pb::PutResponse> {
        let req = pb::PutRequest {
            key: key.into(),
            value: value.into(),
            return_prev,
        };
        self.run_op(Route::LeaderOnce, pb::op::Op::Put(req), |r| match r {
            pb::op_result::Result::Put(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    /// Deletes `key`; returns the index and whether the key existed.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn delete(&self, key: impl Into<Bytes>) -> ClientResult<pb::DeleteResponse> {
        let req = pb::DeleteRequest { key: key.into() };
        self.run_op(Route::LeaderOnce, pb::op::Op::Delete(req), |r| match r {
            pb::op_result::Result::Delete(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    /// Writes several pairs atomically.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn batch_put(&self, pairs: Vec<(Bytes, Bytes)>) -> ClientResult<u64> {
        let req = pb::BatchPutRequest {
            pairs: pairs
                .into_iter()
                .map(|(key, value)| pb::KeyValue { key, value })
                .collect(),
        };
        self.call(Route::LeaderOnce, |_, ch| {
            let req = req.clone();
            async move { Ok(Self::kv(ch).batch_put(req).await?.into_inner().index) }
        })
        .await
    }

    /// Sets `key` to `new_value` if it holds `expected` (`None`: if it is absent).
    ///
    /// # Errors
    /// [`ClientError::Ambiguous`] when the outcome is unknown; otherwise see [`ClientError`].
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new_value: impl Into<Bytes>,
    ) -> ClientResult<CasOutcome> {
        let req = pb::CompareAndSwapRequest {
            key: key.into(),
            expected,
            new_value: new_value.into(),
        };
        let resp = self
            .run_op(
                Route::LeaderOnce,
                pb::op::Op::CompareAndSwap(req),
                |r| match r {
                    pb::op_result::Result::CompareAndSwap(r) => Ok(r),
                    other => Err(other),
                },
            )
            .await?;
        Ok(CasOutcome {
            success: resp.success,
            index: resp.index,
            current: resp.current,
        })
    }

    /// One page of the ordered range `[start, end)` (empty `end`: unbounded).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn scan(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        limit: u32,
        consistency: Consistency,
    ) -> ClientResult<pb::ScanResponse> {
        let req = pb::ScanRequest {
            start: start.into(),
            end: end.into(),
            limit,
            consistency: consistency as i32,
        };
        self.call(read_route(consistency), |_, ch| {
            let req = req.clone();
            async move { Ok(Self::kv(ch).scan(req).await?.into_inner()) }
        })
        .await
    }

    /// Every pair in `[start, end)`, following continuations page by page. Each page is its own
    /// read, so under concurrent writes the result is not one point-in-time view.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn scan_all(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        consistency: Consistency,
    ) -> ClientResult<Vec<(Bytes, Bytes)>> {
        let end: Bytes = end.into();
        let mut start: Bytes = start.into();
        let mut out = Vec::new();
        loop {
            let page = self.scan(start, end.clone(), 0, consistency).await?;
            out.extend(page.pairs.into_iter().map(|kv| (kv.key, kv.value)));
            match page.next_start {
                Some(next) => start = next,
                None => return Ok(out),
            }
        }
    }

    /// Opens a watch on `key` (or on every key starting with it, when `prefix`), from
    /// `start_index` (0: live events only). Any node can serve a watch; the first reachable
    /// endpoint is used. The stream ends with a status when the node shuts down or the watcher
    /// falls too far behind; resume from the last index received (writes sharing an index may have
    /// been cut, so events at that index may repeat).
    ///
    /// # Errors
    /// See [`ClientError`]; `OUT_OF_RANGE` (as [`ClientError::Status`]) when `start_index` is no
    /// longer retained.
    pub async fn watch(
        &self,
        key: impl Into<Bytes>,
        prefix: bool,
        start_index: u64,
    ) -> ClientResult<tonic::Streaming<pb::WatchResponse>> {
        let req = pb::WatchRequest {
            key: key.into(),
            prefix,
            start_index,
        };
        self.call(Route::AnyNode, |_, ch| {
            let req = req.clone();
            async move { Ok(Self::kv(ch).watch(req).await?.into_inner()) }
        })
        .await
    }

    fn cluster(channel: Channel) -> ClusterClient<Channel> {
        ClusterClient::new(channel)
    }

    /// Adds node `id` as a learner (a no-op if it is already a member with these addresses).
    /// An empty `peer_addr` means the client port + 1.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for an address in use or an id already taken.
    pub async fn add_learner(
        &self,
        id: u64,
        addr: &str,
        peer_addr: &str,
    ) -> ClientResult<pb::MembershipResponse> {
        let req = pb::AddLearnerRequest {
            id,
            addr: addr.to_string(),
            peer_addr: peer_addr.to_string(),
        };
        self.call(Route::LeaderIdempotent, |_, ch| {
            let req = req.clone();
            async move { Ok(Self::cluster(ch).add_learner(req).await?.into_inner()) }
        })
        .await
    }

    /// Promotes learner `id` to voter.
    ///
    /// # Errors
    /// [`ClientError::Status`] with FAILED_PRECONDITION while the learner is still catching up.
    pub async fn promote(&self, id: u64) -> ClientResult<pb::MembershipResponse> {
        let req = pb::PromoteRequest { id };
        self.call(Route::LeaderIdempotent, |_, ch| async move {
            Ok(Self::cluster(ch).promote(req).await?.into_inner())
        })
        .await
    }

    /// Removes node `id` (voter or learner) from the cluster.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for an unknown id or the last voter.
    pub async fn remove_member(&self, id: u64) -> ClientResult<pb::MembershipResponse> {
        let req = pb::RemoveMemberRequest { id };
        self.call(Route::LeaderOnce, |_, ch| async move {
            Ok(Self::cluster(ch).remove_member(req).await?.into_inner())
        })
        .await
    }

    /// Moves leadership to voter `to`, or to the most caught-up voter.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a learner or unknown id.
    pub async fn transfer_leader(
        &self,
        to: Option<u64>,
    ) -> ClientResult<pb::TransferLeaderResponse> {
        let req = pb::TransferLeaderRequest { to };
        self.call(Route::LeaderIdempotent, |_, ch| async move {
            Ok(Self::cluster(ch).transfer_leader(req).await?.into_inner())
        })
        .await
    }

    /// The leader's status (found through redirects), which includes every member's match index.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when no leader can be reached.
    pub async fn leader_status(&self) -> ClientResult<pb::StatusResponse> {
        self.call(Route::LeaderIdempotent, |_, ch| async move {
            let status = Self::cluster(ch)
                .status(pb::StatusRequest {})
                .await?
                .into_inner();
            if status.role == "leader" {
                return Ok(status);
            }
            // Not the leader: send the caller there like any NOT_LEADER answer.
            Err(crate::error::Error::NotLeader {
                leader: status
                    .leader_id
                    .map(|id| (id, status.leader_addr.clone()))
                    .filter(|(_, addr)| !addr.is_empty()),
            }
            .into())
        })
        .await
    }

    /// The status of one specific node (no redirect).
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the node does not answer in time.
    pub async fn status_of(&self, addr: &str) -> ClientResult<pb::StatusResponse> {
        let channel = self.channel(addr)?;
        let call = async move {
            Self::cluster(channel)
                .status(pb::StatusRequest {})
                .await
                .map(|r| r.into_inner())
        };
        match tokio::time::timeout(self.options.attempt_timeout, call).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(status)) => Err(ClientError::Unavailable(format!(
                "{addr}: {}",
                status.message()
            ))),
            Err(_) => Err(ClientError::Unavailable(format!("{addr}: no answer"))),
        }
    }
}

/// Largest Multi the client builds, in encoded op bytes (a single larger op still goes alone):
/// well under the servers' default `limits.max_message_bytes` (8 MiB), so batching never makes a
/// request too large that would have fitted alone.
const MAX_MULTI_BYTES: usize = 1024 * 1024;

fn op_weight(op: &pb::op::Op) -> usize {
    use prost::Message;
    pb::Op {
        op: Some(op.clone()),
    }
    .encoded_len()
}

fn mismatched(result: &pb::op_result::Result) -> Status {
    Status::internal(format!(
        "server answered a different kind of op: {result:?}"
    ))
}

/// Sends one op as its own unary call.
async fn send_one(channel: Channel, op: pb::op::Op) -> OpOutcome {
    use pb::op::Op;
    use pb::op_result::Result as R;
    let mut kv = Client::kv(channel);
    Ok(match op {
        Op::Get(r) => R::Get(kv.get(r).await?.into_inner()),
        Op::Put(r) => R::Put(kv.put(r).await?.into_inner()),
        Op::Delete(r) => R::Delete(kv.delete(r).await?.into_inner()),
        Op::CompareAndSwap(r) => R::CompareAndSwap(kv.compare_and_swap(r).await?.into_inner()),
    })
}

/// Sends a batch: a lone op as a unary call, several in one Multi. A failure of the Multi itself
/// is every op's failure (and as ambiguous for each as it would have been alone).
async fn send_ops(channel: Channel, mut ops: Vec<pb::op::Op>) -> Vec<OpOutcome> {
    if ops.len() == 1 {
        if let Some(op) = ops.pop() {
            return vec![send_one(channel, op).await];
        }
    }
    let n = ops.len();
    let req = pb::MultiRequest {
        ops: ops.into_iter().map(|op| pb::Op { op: Some(op) }).collect(),
    };
    match Client::kv(channel).multi(req).await {
        Ok(resp) => {
            let results = resp.into_inner().results;
            if results.len() != n {
                let status = Status::internal(format!(
                    "multi of {n} ops answered {} results",
                    results.len()
                ));
                return vec![Err(status); n];
            }
            results
                .into_iter()
                .map(|r| match r.result {
                    Some(pb::op_result::Result::Error(e)) => Err(op_error_status(&e)),
                    Some(result) => Ok(result),
                    None => Err(Status::internal("multi op answered with no result")),
                })
                .collect()
        }
        Err(status) => vec![Err(status); n],
    }
}

fn read_route(consistency: Consistency) -> Route {
    match consistency {
        Consistency::Stale => Route::AnyNode,
        Consistency::Linearizable => Route::LeaderIdempotent,
    }
}

/// Whether a FAILED_PRECONDITION status is rskv's NOT_LEADER (as opposed to, say, promoting a
/// learner that has not caught up).
fn is_not_leader(status: &Status) -> bool {
    status
        .message()
        .starts_with(crate::error::NOT_LEADER_MESSAGE)
        || status.metadata().get(LEADER_ADDR_HEADER).is_some()
}

/// Whether the node refused the request before admitting it.
fn was_not_admitted(status: &Status) -> bool {
    status
        .metadata()
        .get(crate::error::NOT_ADMITTED_HEADER)
        .is_some()
}

/// The status message followed by its chain of sources (tonic's "transport error" alone says
/// nothing about what happened on the connection).
fn error_chain(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Whether a transport failure (its [`error_chain`]) proves the request never reached the server: the connection
/// could not be made, or hyper dropped the request before dispatching it because the connection
/// was closing (hyper's `Canceled` kind, "operation was canceled", as when a draining node
/// closes its connections), or the server's graceful GOAWAY refused its stream. A draining node
/// sends GOAWAY (NO_ERROR) with the last stream it accepted; streams above it were not processed
/// (RFC 9113 §6.8), and h2 fails exactly those, and any opened after, with the remote GOAWAY's
/// error ("connection error received: not a result of an error"). Streams the node did accept
/// finish, or fail with a broken pipe if the connection drops: still ambiguous.
fn never_sent(error_chain: &str) -> bool {
    let text = error_chain.to_lowercase();
    text.contains("tcp connect error")
        || text.contains("connection refused")
        || text.contains("error trying to connect")
        || text.contains("operation was canceled")
        || text.contains("connection error received: not a result of an error")
}

#[cfg(test)]
mod tests {
    use super::never_sent;

    #[test]
    fn only_failures_before_the_server_took_the_request_should_count_as_never_sent() {
        // Seen from draining nodes: a stream the GOAWAY refused, a request hyper dropped.
        assert!(never_sent(
            "h2 protocol error: http2 error: transport error: connection error received: not a result of an error"
        ));
        assert!(never_sent("transport error: operation was canceled"));
        assert!(never_sent(
            "transport error: tcp connect error: Connection refused (os error 111)"
        ));
        // The request may have been taken: a stream cut by a dropped connection, a reset, a
        // GOAWAY that reports an error.
        assert!(!never_sent(
            "h2 protocol error: http2 error: stream closed because of a broken pipe"
        ));
        assert!(!never_sent(
            "transport error: connection error: connection reset"
        ));
        assert!(!never_sent(
            "h2 protocol error: http2 error: connection error received: unspecific protocol error detected"
        ));
    }
}
