//! # rskv-client: the client library
//!
//! [`Client`] is how programs talk to an rskv cluster (`kv_client`, the benchmark, the fault suite
//! and the tests all use it). It depends on the wire crate ([`rskv_proto`]) and nothing of the
//! server: embedding it builds neither RocksDB nor openraft.
//!
//! ## Layout
//! - this module: [`Client`], its options, errors and retry decisions;
//! - [`transport`]: addresses, channels and the TCP connector;
//! - [`batch`]: request coalescing (the client's Multi RPCs, the server's group commit);
//! - [`gathered`]: socket writes gathered per HTTP/2 flush.
//!
//! ## Behaviour
//!
//! Give it any nodes' addresses. Writes and linearizable reads must reach the leader: a node that
//! is not the leader answers NOT_LEADER with the leader's address in metadata, and the client
//! follows it at once. When a node is unreachable or knows no leader, the client tries the next
//! endpoint, with exponential backoff, until the operation's deadline; then it fails with
//! [`ClientError::Unavailable`] describing the last failure.
//!
//! **Exactly-once writes.** The client opens a session at its first write (one replicated command)
//! and numbers its writes; each carries (session, sequence) and the lowest sequence whose reply
//! the client has not received yet. A write whose outcome is unknown — a timeout, a connection
//! lost after sending, a leader change in flight — is retried with the same number, at whichever
//! node leads, until it is answered or the deadline passes: the state machine applies each number
//! once and answers a retry with the first application's reply (see the server's
//! `storage::state_machine::sessions`). Only two things still end in
//! [`ClientError::Ambiguous`]: the deadline passing after an attempt whose outcome is unknown, and
//! the session expiring between such an attempt and its retry. A session that expired before a
//! write's first attempt is replaced by a new one and the write retried: the refusal proves it
//! was not applied.
//!
//! With sessions off ([`ClientOptions::sessions`]), a write whose request may have reached a
//! leader is not retried but reported as [`ClientError::Ambiguous`]: re-applying even a plain put
//! could overwrite a newer write by someone else. Every write is retried when it certainly did
//! nothing: NOT_LEADER, a connection that was never made, a stream the server refused unprocessed,
//! or a node that refused before admitting it (draining, overloaded, no quorum). Reads are retried
//! freely.
//!
//! Every one of those decisions is made from types: the status code, the `rskv-error-reason`
//! metadata the server attaches ([`Reason`]), and the error's source chain (our connector's
//! [`ConnectError`], hyper's "canceled before dispatch", h2's GOAWAY and REFUSED_STREAM), never
//! from message text.

// Library code never unwraps: a panic on a server path is a bug report, not an error message.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use crate::auth::Channel;
use bytes::Bytes;
use dashmap::DashMap;
use tonic::Code;
use tonic::Status;

pub mod auth;
pub mod batch;
pub mod gathered;
pub mod tls;
pub mod transport;

use rskv_proto::kv as pb;
use rskv_proto::kv::cluster_client::ClusterClient;
use rskv_proto::kv::kv_client::KvClient;
use rskv_proto::status::leader_addr;
use rskv_proto::status::op_error_status;
use rskv_proto::status::Reason;
use rskv_proto::status::LEADER_ADDR_HEADER;
use rskv_proto::status::NOT_ADMITTED_HEADER;

use crate::batch::Batcher;
use crate::batch::Limits;
use crate::transport::lazy_channel;
use crate::transport::ConnectError;

pub use rskv_proto::kv::Consistency;

/// The address a single-node dev cluster (`kv_server` without a config) listens on, and the
/// address `kv_client` talks to by default.
pub const DEV_ADDR: &str = "127.0.0.1:7379";

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
    Unavailable(#[source] Cause),
    /// The request may or may not have been applied (timeout or connection lost after sending,
    /// and, with sessions, no answer settled it before the deadline).
    #[error("outcome unknown: {0}")]
    Ambiguous(#[source] Cause),
    /// The write may or may not have been applied: its session expired between an attempt
    /// whose outcome is unknown and its retry, so the cluster no longer knows. The only unknown
    /// outcome a session write can end in before its deadline.
    #[error("outcome unknown (session expired): {0}")]
    SessionExpired(#[source] Cause),
    /// Any other status from the server.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
    /// The client was built with no endpoints or an unusable address.
    #[error("client configuration: {0}")]
    Config(String),
}

/// Result alias for client calls.
pub type ClientResult<T> = Result<T, ClientError>;

/// Why a call failed after its retries: a message for people (which node, what it said, what was
/// tried), and the last status a node or the transport answered, kept as the error's source so
/// code can look at its code and metadata instead of parsing text.
#[derive(Debug, Clone, Default)]
pub struct Cause {
    message: String,
    last: Option<Status>,
}

impl Cause {
    /// A failure described by `message` alone (nothing answered).
    pub fn new(message: impl Into<String>) -> Cause {
        Cause {
            message: message.into(),
            last: None,
        }
    }

    /// `target` answered `status`: both go into the message, and the status is kept.
    fn answered(target: &str, status: Status) -> Cause {
        Cause {
            message: format!("{target}: {}", error_chain(&status)),
            last: Some(status),
        }
    }

    /// The same failure with `more` after its message.
    fn then(mut self, more: impl std::fmt::Display) -> Cause {
        self.message = format!("{}{more}", self.message);
        self
    }

    /// What people read.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The last status a node or the transport answered, if any did.
    pub fn last_status(&self) -> Option<&Status> {
        self.last.as_ref()
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.last
            .as_ref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Cause {
        Cause::new(message)
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Cause {
        Cause::new(message)
    }
}

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
    /// Writes go through a client session, so an ambiguous one is retried and applied exactly
    /// once (see the module doc). Off, an ambiguous write is reported as such, never retried.
    pub sessions: bool,
    /// TLS to every node (the CA that signs their certificates, and for mutual TLS this
    /// client's own certificate); `None`: plaintext.
    pub tls: Option<crate::tls::TlsDialer>,
    /// The user to authenticate as, where the cluster has etcd's auth enabled.
    pub credentials: Option<crate::auth::Credentials>,
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
            sessions: true,
            tls: None,
            credentials: None,
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
    /// The store revision of the swap, when it happened (where a watch sees it; a failed swap
    /// changed nothing and has the store's revision as of it).
    pub revision: i64,
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
    /// A write of the client's session: ambiguous failures are retried with the same sequence
    /// number until the deadline (the state machine applies it once).
    LeaderSession,
    /// Any node may answer.
    AnyNode,
}

/// How [`Client::call_until`] ends when it does not succeed.
enum CallError {
    /// A final error.
    Failed(ClientError),
    /// The session is expired or unknown: the attempt that said so was not applied. `ambiguous`:
    /// an earlier attempt may have been.
    SessionExpired { ambiguous: bool, last_error: Cause },
}

/// The client's session: its id and the numbering of its writes.
struct Session {
    id: u64,
    /// The numbers handed out, under one lock: a number is pending from the moment it exists,
    /// so no write ever carries a `first_unacked` above a number another write holds.
    numbering: Mutex<Numbering>,
}

#[derive(Default)]
struct Numbering {
    /// The last sequence number handed out.
    last: u64,
    /// Writes whose outcome the client has not settled; the smallest is the `first_unacked`
    /// every write carries, so the server keeps only the replies that may still be asked for.
    pending: BTreeSet<u64>,
}

impl Session {
    fn new(id: u64) -> Session {
        Session {
            id,
            numbering: Mutex::new(Numbering::default()),
        }
    }
}

/// One write's sequence number in a session; dropping it settles the write (its reply is no
/// longer needed, and copies of it still in flight are refused from then on).
struct Ticket {
    session: Arc<Session>,
    seq: u64,
}

impl Ticket {
    fn new(session: Arc<Session>) -> Ticket {
        let mut numbering = session
            .numbering
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        numbering.last += 1;
        let seq = numbering.last;
        numbering.pending.insert(seq);
        drop(numbering);
        Ticket { session, seq }
    }

    /// The session reference an attempt carries, with the current lowest unsettled sequence.
    fn reference(&self) -> pb::SessionRef {
        // Every change to the numbering is one statement, so it is consistent even if a holder
        // panicked.
        let first = self
            .session
            .numbering
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pending
            .first()
            .copied()
            .unwrap_or(self.seq);
        pb::SessionRef {
            id: self.session.id,
            seq: self.seq,
            first_unacked: first.min(self.seq),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.session
            .numbering
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pending
            .remove(&self.seq);
    }
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
    /// The open session, opened at the first write; replaced when it expires.
    session: Mutex<Option<Arc<Session>>>,
    /// Held while a session is being opened, so concurrent first writes open one, not many.
    opening: tokio::sync::Mutex<()>,
    /// The cluster answered OpenSession UNIMPLEMENTED (a version before sessions): writes go
    /// without one, as they did then.
    sessionless: std::sync::atomic::AtomicBool,
    /// The auth token every request carries ([`ClientOptions::credentials`]).
    token: crate::auth::TokenInterceptor,
    /// Held by the one caller authenticating for all.
    authenticating: tokio::sync::Mutex<()>,
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
    /// `http://` or `https://` URI agreeing with [`ClientOptions::tls`]).
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
            crate::transport::endpoint_uri(addr)
                .and_then(|_| crate::transport::check_scheme(addr, options.tls.is_some()))
                .map_err(|e| ClientError::Config(format!("bad endpoint {addr}: {e}")))?;
        }
        Ok(Client {
            endpoints,
            options,
            channels: DashMap::new(),
            leader: Mutex::new(None),
            batchers: DashMap::new(),
            session: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            sessionless: std::sync::atomic::AtomicBool::new(false),
            token: crate::auth::TokenInterceptor::default(),
            authenticating: tokio::sync::Mutex::new(()),
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
            .map(|_| {
                lazy_channel(addr, self.options.connect_timeout, self.options.tls.clone())
                    .map(|ch| Channel::new(ch, self.token.clone()))
            })
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

    /// Forgets the connections to `addr`, so the next request dials afresh. A request that got
    /// no answer in time may sit on a connection that is silently dead (a peer that vanished, a
    /// path that dropped packets and now retransmits with back-off); HTTP/2 keep-alive would
    /// notice only after tens of seconds. Requests already on the old connections finish there.
    fn forget_connections(&self, addr: &str) {
        self.channels.remove(addr);
        self.batchers.remove(addr);
    }

    fn batcher(&self, target: &str) -> ClientResult<Arc<OpBatcher>> {
        if let Some(b) = self.batchers.get(target) {
            return Ok(b.clone());
        }
        let node = self.node(target)?.fresh();
        let b = Arc::new(Batcher::new(
            Limits {
                max_inflight: self.options.batch_inflight,
                max_items: rskv_proto::DEFAULT_MAX_OPS_PER_REQUEST,
                max_weight: MAX_MULTI_BYTES,
                // Not measured on the client side: the next Multi goes at once.
                passes_between: 0,
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

    /// Runs a batchable write, built by `build` around the session reference each attempt
    /// carries (see [`Client::write`]).
    async fn write_op<T>(
        &self,
        build: impl Fn(Option<pb::SessionRef>) -> pb::op::Op,
        pick: fn(pb::op_result::Result) -> Result<T, pb::op_result::Result>,
    ) -> ClientResult<T> {
        self.write(|target, ch, session| {
            let result = self.dispatch(target, ch, build(session));
            async move { pick(result.await?).map_err(|other| mismatched(&other)) }
        })
        .await
    }

    /// Runs a write: within the client's session when sessions are on (ambiguous attempts are
    /// retried with the same sequence number until the deadline), as one attempt that is not
    /// retried after an ambiguous failure otherwise. `attempt` sends it to a node with the
    /// session reference to carry.
    async fn write<T, F, Fut>(&self, mut attempt: F) -> ClientResult<T>
    where
        F: FnMut(&str, Channel, Option<pb::SessionRef>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.options.deadline;
        loop {
            let session = if self.options.sessions {
                self.session(deadline).await?
            } else {
                None
            };
            let Some(session) = session else {
                return self
                    .call_until(deadline, Route::LeaderOnce, |target, ch| {
                        attempt(target, ch, None)
                    })
                    .await
                    .map_err(CallError::into_client_error);
            };
            let ticket = Ticket::new(session);
            let result = self
                .call_until(deadline, Route::LeaderSession, |target, ch| {
                    attempt(target, ch, Some(ticket.reference()))
                })
                .await;
            match result {
                Ok(value) => return Ok(value),
                Err(CallError::Failed(e)) => return Err(e),
                Err(CallError::SessionExpired {
                    ambiguous: true,
                    last_error,
                }) => {
                    self.forget_session(ticket.session.id);
                    return Err(ClientError::SessionExpired(
                        last_error.then("; an earlier attempt's outcome is unknown"),
                    ));
                }
                Err(CallError::SessionExpired {
                    ambiguous: false,
                    last_error,
                }) => {
                    // Not applied: a new session, a new number, and the write goes again.
                    tracing::debug!(session = ticket.session.id, error = %last_error, "session expired; opening a new one");
                    self.forget_session(ticket.session.id);
                    if Instant::now() >= deadline {
                        return Err(ClientError::Unavailable(
                            last_error.then("; no time left to retry in a new session"),
                        ));
                    }
                }
            }
        }
    }

    /// The open session, opening one first if there is none; `None` when the cluster has no
    /// sessions (it answered OpenSession UNIMPLEMENTED).
    async fn session(&self, deadline: Instant) -> ClientResult<Option<Arc<Session>>> {
        if self.sessionless.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if let Some(session) = self.current_session() {
            return Ok(Some(session));
        }
        let _opening = tokio::time::timeout_at(deadline.into(), self.opening.lock())
            .await
            .map_err(|_| {
                ClientError::Unavailable("no client session opened before the deadline".into())
            })?;
        // Another write may have opened one while this one waited.
        if let Some(session) = self.current_session() {
            return Ok(Some(session));
        }
        let opened = self
            .call_until(deadline, Route::LeaderIdempotent, |_, ch| async move {
                Ok(Self::kv(ch)
                    .open_session(pb::OpenSessionRequest {})
                    .await?
                    .into_inner())
            })
            .await
            .map_err(CallError::into_client_error);
        let opened = match opened {
            Ok(opened) => opened,
            Err(ClientError::Status(s)) if s.code() == Code::Unimplemented => {
                tracing::warn!(
                    "the cluster has no client sessions (an earlier version): writes are sent \
                     without one, and an ambiguous one is reported, not retried"
                );
                self.sessionless.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        tracing::debug!(
            session = opened.id,
            ttl_ms = opened.ttl_ms,
            "client session opened"
        );
        let session = Arc::new(Session::new(opened.id));
        *self.lock_session() = Some(session.clone());
        Ok(Some(session))
    }

    fn lock_session(&self) -> std::sync::MutexGuard<'_, Option<Arc<Session>>> {
        // Every update is one assignment: consistent even if a holder panicked.
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current_session(&self) -> Option<Arc<Session>> {
        self.lock_session().clone()
    }

    /// Drops session `id` if it is still the open one (the next write opens a new one).
    fn forget_session(&self, id: u64) {
        let mut current = self.lock_session();
        if current.as_ref().is_some_and(|s| s.id == id) {
            *current = None;
        }
    }

    /// The id of the open session, if one is open.
    pub fn session_id(&self) -> Option<u64> {
        self.current_session().map(|s| s.id)
    }

    /// Closes the client's session, if one is open, freeing the replies the cluster keeps for it
    /// (it would otherwise expire after its time-to-live). Best effort: a failure is ignored.
    pub async fn close(&self) {
        let taken = self.lock_session().take();
        let Some(session) = taken else {
            return;
        };
        let req = pb::CloseSessionRequest { id: session.id };
        let closed = self
            .call(Route::LeaderIdempotent, |_, ch| async move {
                Ok(Self::kv(ch).close_session(req).await?.into_inner())
            })
            .await;
        if let Err(e) = closed {
            tracing::debug!(session = session.id, error = %e, "closing the session failed");
        }
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
    async fn call<T, F, Fut>(&self, route: Route, op: F) -> ClientResult<T>
    where
        F: FnMut(&str, Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_until(Instant::now() + self.options.deadline, route, op)
            .await
            .map_err(CallError::into_client_error)
    }

    /// [`Client::call`] with an explicit deadline.
    async fn call_until<T, F, Fut>(
        &self,
        deadline: Instant,
        route: Route,
        mut op: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(&str, Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut backoff = self.options.initial_backoff;
        let mut rotation = 0usize;
        let mut redirect: Option<String> = None;
        let mut last_error = Cause::default();
        let mut attempts = 0u32;
        // Whether an attempt so far may have been applied.
        let mut ambiguous = false;
        // Nodes that gave no answer in time or could not be reached during this call. Their
        // peers keep naming a paused or cut-off leader until they elect another, so a redirect to
        // one of them is not followed: the next node is asked instead, after a backoff.
        let mut silent: Vec<String> = Vec::new();
        let mut reauthenticated = false;
        loop {
            let next_endpoint = |rotation: usize| {
                let n = self.endpoints.len();
                (0..n)
                    .map(|i| &self.endpoints[(rotation + i) % n])
                    .find(|e| !silent.contains(e))
                    .unwrap_or(&self.endpoints[rotation % n])
                    .clone()
            };
            let target = match route {
                Route::AnyNode => next_endpoint(rotation),
                _ => redirect
                    .take()
                    .or_else(|| self.leader_hint())
                    .unwrap_or_else(|| next_endpoint(rotation)),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.give_up(route, ambiguous, attempts, started, &last_error));
            }
            attempts += 1;
            let attempt_timeout = self.options.attempt_timeout.min(remaining);
            let channel = self.channel(&target).map_err(CallError::Failed)?;
            if let Some(credentials) = &self.options.credentials {
                match self
                    .ensure_token(channel.clone(), credentials, attempt_timeout)
                    .await
                {
                    Ok(()) => {}
                    // A wrong password or auth disabled: final, whoever answers.
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::InvalidArgument | Code::FailedPrecondition
                        ) =>
                    {
                        return Err(CallError::Failed(ClientError::Status(status)));
                    }
                    // No token: the request is not sent; try again after a backoff.
                    Err(status) => {
                        last_error = Cause::answered(&target, status);
                        let now = Instant::now();
                        if now >= deadline {
                            return Err(self.give_up(
                                route,
                                ambiguous,
                                attempts,
                                started,
                                &last_error,
                            ));
                        }
                        tokio::time::sleep(backoff.min(deadline - now)).await;
                        backoff = (backoff * 2).min(self.options.max_backoff);
                        rotation += 1;
                        continue;
                    }
                }
            }
            let outcome = match tokio::time::timeout(attempt_timeout, op(&target, channel)).await {
                Ok(result) => result,
                Err(_) => {
                    self.forget_connections(&target);
                    silent.push(target.clone());
                    Err(Status::deadline_exceeded(format!(
                        "no answer from {target} within {attempt_timeout:?}"
                    )))
                }
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
            last_error = Cause::answered(&target, status.clone());
            tracing::debug!(attempt = attempts, error = %last_error, "attempt failed");
            // A token that lapsed (or a node restarted and forgot it): authenticate again.
            if status.code() == Code::Unauthenticated
                && self.options.credentials.is_some()
                && !reauthenticated
            {
                reauthenticated = true;
                self.token.clear();
                continue;
            }
            if never_sent(&status) {
                silent.push(target.clone());
            }
            match classify(&status) {
                Failure::NotLeader(hint) => {
                    self.set_leader_hint(None);
                    if let Some(addr) = hint.filter(|a| *a != target && !silent.contains(a)) {
                        tracing::debug!(from = %target, to = %addr, "following leader redirect");
                        redirect = Some(addr);
                        if Instant::now() < deadline {
                            continue;
                        }
                    } else {
                        rotation += 1;
                    }
                }
                // At its in-flight limit: back off and try the same node again.
                Failure::NotApplied { elsewhere: false } => {}
                Failure::NotApplied { elsewhere: true } => {
                    self.set_leader_hint(None);
                    rotation += 1;
                }
                Failure::Ambiguous => {
                    if route == Route::LeaderOnce {
                        return Err(CallError::Failed(ClientError::Ambiguous(last_error)));
                    }
                    ambiguous = true;
                    self.set_leader_hint(None);
                    rotation += 1;
                }
                Failure::SessionExpired if route == Route::LeaderSession => {
                    return Err(CallError::SessionExpired {
                        ambiguous,
                        last_error,
                    });
                }
                // A final answer to a retry says nothing of the attempt before it, which may
                // have been applied.
                Failure::SessionExpired | Failure::Final if ambiguous => {
                    return Err(CallError::Failed(ClientError::Ambiguous(
                        last_error.then("; an earlier attempt's outcome is unknown"),
                    )));
                }
                Failure::SessionExpired | Failure::Final => {
                    return Err(CallError::Failed(match status.code() {
                        Code::InvalidArgument => {
                            ClientError::InvalidArgument(status.message().to_string())
                        }
                        _ => ClientError::Status(status),
                    }))
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.give_up(route, ambiguous, attempts, started, &last_error));
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    /// Authenticates once for every caller waiting (bcrypt makes each `Authenticate` cost the
    /// server tens of milliseconds of CPU: a client's concurrent first calls must not each ask).
    async fn ensure_token(
        &self,
        channel: Channel,
        credentials: &crate::auth::Credentials,
        timeout: Duration,
    ) -> Result<(), Status> {
        if self.token.has_token() {
            return Ok(());
        }
        let _one = self.authenticating.lock().await;
        if self.token.has_token() {
            return Ok(());
        }
        match tokio::time::timeout(timeout, self.token.authenticate(channel, credentials)).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "Authenticate got no answer within {timeout:?}"
            ))),
        }
    }

    fn give_up(
        &self,
        route: Route,
        ambiguous: bool,
        attempts: u32,
        started: Instant,
        last_error: &Cause,
    ) -> CallError {
        let tried = Cause {
            message: format!(
                "gave up after {attempts} attempts in {:.1}s over [{}]; last error: {last_error}",
                started.elapsed().as_secs_f64(),
                self.endpoints.join(", ")
            ),
            last: last_error.last.clone(),
        };
        CallError::Failed(if route == Route::LeaderSession && ambiguous {
            ClientError::Ambiguous(tried)
        } else {
            ClientError::Unavailable(tried)
        })
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
        let (key, value) = (key.into(), value.into());
        let build = |session| {
            pb::op::Op::Put(pb::PutRequest {
                key: key.clone(),
                value: value.clone(),
                return_prev,
                session,
            })
        };
        self.write_op(build, |r| match r {
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
        let key = key.into();
        let build = |session| {
            pb::op::Op::Delete(pb::DeleteRequest {
                key: key.clone(),
                session,
            })
        };
        self.write_op(build, |r| match r {
            pb::op_result::Result::Delete(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    /// Writes several pairs atomically.
    ///
    /// # Errors
    /// [`ClientError::Ambiguous`] when the outcome is unknown; otherwise see [`ClientError`].
    pub async fn batch_put(&self, pairs: Vec<(Bytes, Bytes)>) -> ClientResult<u64> {
        let pairs: Vec<pb::KeyValue> = pairs
            .into_iter()
            .map(|(key, value)| pb::KeyValue { key, value })
            .collect();
        self.write(|_, ch, session| {
            let req = pb::BatchPutRequest {
                pairs: pairs.clone(),
                session,
            };
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
        let (key, new_value) = (key.into(), new_value.into());
        let build = |session| {
            pb::op::Op::CompareAndSwap(pb::CompareAndSwapRequest {
                key: key.clone(),
                expected: expected.clone(),
                new_value: new_value.clone(),
                session,
            })
        };
        let resp = self
            .write_op(build, |r| match r {
                pb::op_result::Result::CompareAndSwap(r) => Ok(r),
                other => Err(other),
            })
            .await?;
        Ok(CasOutcome {
            success: resp.success,
            index: resp.index,
            revision: resp.revision,
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

    /// Opens a watch on `key` (or on every key starting with it, when `prefix`): every change
    /// from store revision `start_revision` on (0: changes made from now on), then live ones.
    /// Any node can serve a watch, from the store's history; the first reachable endpoint is
    /// used. Each response holds whole revisions. The stream ends with a status when the node
    /// shuts down; to go on, watch again (on any node) from the revision after the last one
    /// received: nothing is missed and nothing repeats, across restarts and leader changes.
    ///
    /// # Errors
    /// See [`ClientError`]; `OUT_OF_RANGE` (as [`ClientError::Status`]) when `start_revision` is
    /// compacted away.
    pub async fn watch(
        &self,
        key: impl Into<Bytes>,
        prefix: bool,
        start_revision: i64,
    ) -> ClientResult<tonic::Streaming<pb::WatchResponse>> {
        let req = pb::WatchRequest {
            key: key.into(),
            prefix,
            start_index: 0,
            start_revision,
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
            let leader = status
                .leader_id
                .filter(|_| !status.leader_addr.is_empty())
                .map(|id| (id, status.leader_addr.as_str()));
            Err(rskv_proto::status::not_leader(leader))
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
            Ok(Err(status)) => Err(ClientError::Unavailable(Cause::answered(addr, status))),
            Err(_) => Err(ClientError::Unavailable(
                format!("{addr}: no answer").into(),
            )),
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

impl CallError {
    fn into_client_error(self) -> ClientError {
        match self {
            CallError::Failed(e) => e,
            CallError::SessionExpired { last_error, .. } => ClientError::Status(
                last_error
                    .last
                    .unwrap_or_else(|| Status::failed_precondition(last_error.message)),
            ),
        }
    }
}

/// What a failed attempt says about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// Not the leader: go to the hinted leader, if any, else the next node.
    NotLeader(Option<String>),
    /// Certainly did nothing: try again, at the next node when `elsewhere`.
    NotApplied { elsewhere: bool },
    /// May or may not have been applied.
    Ambiguous,
    /// The session is expired or unknown; this attempt was not applied.
    SessionExpired,
    /// A final answer.
    Final,
}

/// Classifies a failed attempt by its code, the server's [`Reason`] and the error's source chain.
fn classify(status: &Status) -> Failure {
    let reason = Reason::of(status);
    let not_admitted = status.metadata().contains_key(NOT_ADMITTED_HEADER)
        || reason.is_some_and(Reason::not_admitted);
    match status.code() {
        Code::FailedPrecondition => match reason {
            Some(Reason::NotLeader) => Failure::NotLeader(leader_addr(status)),
            Some(Reason::SessionExpired) => Failure::SessionExpired,
            // A server from before reasons existed names the leader in metadata.
            None if status.metadata().contains_key(LEADER_ADDR_HEADER) => {
                Failure::NotLeader(leader_addr(status))
            }
            _ => Failure::Final,
        },
        Code::ResourceExhausted if not_admitted => Failure::NotApplied { elsewhere: false },
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal => {
            if not_admitted || never_sent(status) {
                Failure::NotApplied { elsewhere: true }
            } else {
                Failure::Ambiguous
            }
        }
        _ => Failure::Final,
    }
}

/// The errors of `status`'s source chain, looking inside `io::Error`s (whose `source()` skips the
/// error they wrap).
fn sources(status: &Status) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        out.push(e);
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            out.push(inner);
        }
        next = e.source();
    }
    out
}

/// Whether a transport failure proves the request never reached the server's handler:
/// - our connector could not connect ([`ConnectError`]);
/// - hyper dropped the request before dispatching it (its "canceled" kind: the connection was
///   closing or not ready, as when a draining node closes its connections);
/// - the server's graceful GOAWAY (NO_ERROR) refused the stream: streams above the GOAWAY's
///   last stream id were not processed (RFC 9113 §6.8), and h2 fails exactly those, and any opened
///   after, with the remote GOAWAY; streams the server did accept finish, or fail otherwise;
/// - the server reset the stream with REFUSED_STREAM, which promises it was not processed
///   (RFC 9113 §8.7).
///
/// Anything else (a reset connection, a broken pipe, a GOAWAY that reports an error) may have
/// reached the server.
fn never_sent(status: &Status) -> bool {
    sources(status).into_iter().any(|e| {
        if e.is::<ConnectError>() {
            return true;
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_canceled();
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let refused_by_goaway =
                h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
            let refused_stream = h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            return refused_by_goaway || refused_stream;
        }
        false
    })
}

/// The status message followed by its chain of sources (tonic's "transport error" alone says
/// nothing about what happened on the connection).
fn error_chain(status: &Status) -> String {
    rskv_proto::status::with_causes(
        status.message().to_string(),
        std::error::Error::source(status),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    fn put() -> pb::PutRequest {
        pb::PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            return_prev: false,
            session: None,
        }
    }

    /// What a put to `addr` fails with, through the same channel the client uses.
    async fn put_status(addr: &str) -> Status {
        let channel = lazy_channel(addr, Duration::from_secs(2), None).expect("channel");
        let mut kv = Client::kv(Channel::new(
            channel,
            crate::auth::TokenInterceptor::default(),
        ));
        let call = kv.put(put());
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(_)) => panic!("the put to {addr} should fail"),
            Ok(Err(status)) => status,
            Err(_) => panic!("the put to {addr} did not fail in 10 s"),
        }
    }

    /// An HTTP/2 frame: 24-bit length, type, flags, stream id.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    /// A raw HTTP/2 server for one connection: it reads the client's preface and frames until
    /// the request's HEADERS (stream 1) arrive, then writes `reply` and, when `close`, drops the
    /// connection.
    async fn raw_server(reply: Vec<u8>, close: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut preface = [0u8; 24];
            if conn.read_exact(&mut preface).await.is_err() {
                return;
            }
            // Our (empty) SETTINGS: the server's connection preface.
            let _ = conn.write_all(&frame(4, 0, 0, &[])).await;
            loop {
                let mut header = [0u8; 9];
                if conn.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let mut payload = vec![0u8; len];
                if conn.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
                if header[3] == 1 && stream == 1 {
                    break;
                }
            }
            let _ = conn.write_all(&reply).await;
            if close {
                drop(conn);
            } else {
                // Keep the connection open until the client goes away.
                let mut sink = Vec::new();
                let _ = conn.read_to_end(&mut sink).await;
            }
        });
        addr
    }

    fn goaway(last_stream: u32, code: u32) -> Vec<u8> {
        let mut payload = last_stream.to_be_bytes().to_vec();
        payload.extend(code.to_be_bytes());
        frame(7, 0, 0, &payload)
    }

    #[tokio::test]
    async fn a_refused_connection_should_count_as_never_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let status = put_status(&addr).await;
        assert!(never_sent(&status), "{}", error_chain(&status));
        assert_eq!(classify(&status), Failure::NotApplied { elsewhere: true });
    }

    #[tokio::test]
    async fn a_stream_refused_by_a_graceful_goaway_should_count_as_never_sent() {
        // GOAWAY(last stream 0, NO_ERROR): stream 1 was not processed.
        let addr = raw_server(goaway(0, 0), false).await;
        let status = put_status(&addr).await;
        assert!(never_sent(&status), "{}", error_chain(&status));
        assert_eq!(classify(&status), Failure::NotApplied { elsewhere: true });
    }

    #[tokio::test]
    async fn a_refused_stream_reset_should_count_as_never_sent() {
        // RST_STREAM(REFUSED_STREAM = 7) on stream 1.
        let addr = raw_server(frame(3, 0, 1, &7u32.to_be_bytes()), false).await;
        let status = put_status(&addr).await;
        assert!(never_sent(&status), "{}", error_chain(&status));
    }

    #[tokio::test]
    async fn a_connection_lost_after_the_request_was_sent_should_be_ambiguous() {
        let addr = raw_server(Vec::new(), true).await;
        let status = put_status(&addr).await;
        assert!(!never_sent(&status), "{}", error_chain(&status));
        assert_eq!(classify(&status), Failure::Ambiguous);
        // A GOAWAY reporting an error (here PROTOCOL_ERROR) says nothing certain either.
        let addr = raw_server(goaway(0, 1), false).await;
        let status = put_status(&addr).await;
        assert!(!never_sent(&status), "{}", error_chain(&status));
        // And neither does a reset other than REFUSED_STREAM (CANCEL = 8).
        let addr = raw_server(frame(3, 0, 1, &8u32.to_be_bytes()), false).await;
        let status = put_status(&addr).await;
        assert!(!never_sent(&status), "{}", error_chain(&status));
    }

    /// The server's statuses are classified by code and reason, whatever their message says.
    /// (Each is built as the server builds it: `rskv-server`'s error tests check that mapping.)
    #[test]
    fn server_statuses_should_be_classified_by_code_and_reason_not_text() {
        use rskv_proto::status::not_leader;
        use rskv_proto::status::status;
        let with = |code: Code, reason: Reason| classify(&status(code, reason, "anything"));
        assert_eq!(
            classify(&not_leader(Some((2, "127.0.0.1:7400")))),
            Failure::NotLeader(Some("127.0.0.1:7400".into()))
        );
        assert_eq!(classify(&not_leader(None)), Failure::NotLeader(None));
        assert_eq!(
            with(Code::Unavailable, Reason::NoQuorum),
            Failure::NotApplied { elsewhere: true }
        );
        assert_eq!(
            with(Code::Unavailable, Reason::NotAdmitted),
            Failure::NotApplied { elsewhere: true }
        );
        assert_eq!(
            with(Code::ResourceExhausted, Reason::ResourceExhausted),
            Failure::NotApplied { elsewhere: false }
        );
        assert_eq!(
            with(Code::FailedPrecondition, Reason::SessionExpired),
            Failure::SessionExpired
        );
        for (code, reason) in [
            (Code::DeadlineExceeded, Reason::Timeout),
            (Code::Unavailable, Reason::Unavailable),
            (Code::Internal, Reason::Raft),
        ] {
            assert_eq!(with(code, reason), Failure::Ambiguous, "{reason:?}");
        }
        for (code, reason) in [
            (Code::FailedPrecondition, Reason::FailedPrecondition),
            (Code::InvalidArgument, Reason::InvalidArgument),
            (Code::FailedPrecondition, Reason::SequenceAcknowledged),
            (Code::OutOfRange, Reason::Compacted),
            (Code::ResourceExhausted, Reason::TooLarge),
        ] {
            assert_eq!(with(code, reason), Failure::Final, "{reason:?}");
        }
        // The text alone decides nothing: a NOT_LEADER message with no reason is final.
        assert_eq!(
            classify(&Status::failed_precondition(
                "not leader; leader is unknown"
            )),
            Failure::Final
        );
        // A multi op's error is classified as its unary status would be.
        let op = rskv_proto::status::op_error(&not_leader(Some((3, "127.0.0.1:7500"))));
        assert_eq!(
            classify(&op_error_status(&op)),
            Failure::NotLeader(Some("127.0.0.1:7500".into()))
        );
    }

    #[test]
    fn a_ticket_should_carry_the_lowest_unsettled_sequence() {
        let session = Arc::new(Session::new(9));
        let first = Ticket::new(session.clone());
        let second = Ticket::new(session.clone());
        assert_eq!(
            (second.seq, second.reference().first_unacked),
            (2, 1),
            "the first write is still unsettled"
        );
        drop(first);
        assert_eq!(second.reference().first_unacked, 2);
        let third = Ticket::new(session);
        assert_eq!(
            third.reference(),
            pb::SessionRef {
                id: 9,
                seq: 3,
                first_unacked: 2
            }
        );
    }
}
