//! The client key-value API (`rskv.v1.Kv`).
//!
//! Writes are proposed to Raft and answered after they are committed and applied; the reply
//! carries the log index. Reads are linearizable by default — a ReadIndex barrier through
//! openraft (the leader confirms its leadership with a quorum, then waits until its state machine
//! has applied up to the confirmed commit index) — or `STALE`, served from the local state machine
//! of any node. A follower answers writes and linearizable reads with NOT_LEADER naming the leader.
//!
//! `Watch` is served on any node from the store's history through a [`HistoryFeed`], from a
//! revision (`start_revision`) or, live, from the revision after the current one: the same path
//! either way, so a watcher resumes after a restart, a snapshot install or a move to another node
//! by asking again from the revision after the last one it received, and sees no gap and no
//! duplicate. (`start_index`, the in-memory event retention's log index, is refused.)

use rskv_storage::state_machine::auth::Perm;
use rskv_storage::types::EtcdReply;
use rskv_storage::types::MvccError;
use tonic::metadata::MetadataMap;

use super::auth::auth_status;
use super::auth::denied;
use super::auth::Authorizer;
use super::auth::Grant;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::handle;
use super::handle_many;
use super::history_feed::Feed;
use super::history_feed::HistoryFeed;
use super::limits::RequestLimiter;
use super::proposer::Proposer;
use super::read_barrier::ReadBarrier;
use super::read_view::ReadView;
use super::Node;
use crate::config::LimitsConfig;
use crate::config::SessionsConfig;
use crate::error::Error;
use crate::error::Result;
use crate::metrics;
use crate::raft::Command;
use crate::raft::CommandResponse;
use crate::raft::NodeId;
use crate::raft::SessionOutcome;
use crate::raft::SessionRefusal;
use crate::raft::SessionStamp;
use rskv_proto::etcd::mvccpb;
use rskv_proto::kv as pb;
use rskv_proto::kv::kv_server::Kv;
use rskv_storage::events::EventBus;
use rskv_storage::events::KeyFilter;
use rskv_storage::state_machine::sessions;

/// Scan page size when the request gives no limit.
pub const DEFAULT_SCAN_LIMIT: u32 = 1000;
/// Largest page a scan may ask for.
pub const MAX_SCAN_LIMIT: u32 = 10_000;

/// Implements `rskv.v1.Kv` with the handles it needs, not the whole node: it can propose
/// commands, wait for a read barrier, read the applied state and its history, wait for the
/// store's revision to move, and count itself against the request limit.
pub struct KvService {
    id: NodeId,
    limits: LimitsConfig,
    sessions: SessionsConfig,
    proposer: Arc<Proposer>,
    reads: Arc<ReadBarrier>,
    view: ReadView,
    events: Arc<EventBus>,
    limiter: Arc<RequestLimiter>,
    /// etcd's auth, applied to rskv's API too: the same users, roles and tokens.
    auth: Authorizer,
}

impl KvService {
    /// The client API service of `node`, holding only the handles above.
    pub fn new(node: &Node) -> KvService {
        KvService {
            id: node.id,
            limits: node.config.limits.clone(),
            sessions: node.config.sessions.clone(),
            proposer: node.proposer.clone(),
            reads: node.reads.clone(),
            view: ReadView::new(
                node.engine.clone(),
                node.state_machine.sweeper(),
                &node.raft,
            ),
            events: node.events.clone(),
            limiter: node.limiter.clone(),
            auth: node.auth.clone(),
        }
    }

    /// Whether the request's user may do `perm` on `key`..`range_end` (etcd's conventions);
    /// the grant a write carries into the log.
    fn allow(&self, md: &MetadataMap, key: &[u8], range_end: &[u8], perm: Perm) -> Result<Grant> {
        self.auth.check(md, key, range_end, perm).map_err(denied)
    }

    /// What one operation needs of the request's user.
    fn allow_op(&self, md: &MetadataMap, op: &pb::op::Op) -> Result<Grant> {
        use pb::op::Op;
        match op {
            Op::Get(r) => self.allow(md, &r.key, b"", Perm::Read),
            Op::Put(r) => self.allow_put(md, r),
            Op::Delete(r) => self.allow(md, &r.key, b"", Perm::Write),
            Op::CompareAndSwap(r) => self.allow_cas(md, r),
        }
    }

    /// A put writes its key, and reads it when it returns the previous value.
    fn allow_put(&self, md: &MetadataMap, r: &pb::PutRequest) -> Result<Grant> {
        let grant = self.allow(md, &r.key, b"", Perm::Write)?;
        if r.return_prev {
            self.allow(md, &r.key, b"", Perm::Read)?;
        }
        Ok(grant)
    }

    /// A compare-and-swap reads and writes its key. (The first check's grant: its auth
    /// revision is the oldest, so apply checks again if either check is out of date.)
    fn allow_cas(&self, md: &MetadataMap, r: &pb::CompareAndSwapRequest) -> Result<Grant> {
        let grant = self.allow(md, &r.key, b"", Perm::Read)?;
        self.allow(md, &r.key, b"", Perm::Write)?;
        Ok(grant)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.limits.request_timeout_ms)
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        let max = self.limits.max_key_size;
        if key.is_empty() {
            return Err(Error::InvalidArgument("key must not be empty".into()));
        }
        if key.len() > max {
            return Err(Error::InvalidArgument(format!(
                "key is {} bytes; the limit is {max}",
                key.len()
            )));
        }
        Ok(())
    }

    /// Refuses a BatchPut or Multi carrying more than `limits.max_ops_per_request` items.
    fn check_op_count(&self, count: usize, what: &str) -> Result<()> {
        let max = self.limits.max_ops_per_request;
        if count > max {
            return Err(Error::InvalidArgument(format!(
                "{count} {what} in one request; the limit is {max} (limits.max_ops_per_request)"
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        let max = self.limits.max_value_size;
        if value.len() > max {
            return Err(Error::InvalidArgument(format!(
                "value is {} bytes; the limit is {max}",
                value.len()
            )));
        }
        Ok(())
    }

    /// Proposes `command` (within its client session, when the request names one) and waits
    /// until it is committed and applied; answers with the index it was applied at, which for a
    /// retried session write is the index of its first application.
    async fn write(
        &self,
        session: Option<pb::SessionRef>,
        command: Command,
    ) -> Result<(u64, CommandResponse)> {
        let command = in_session(session, command)?;
        let (index, resp) = self.proposer.write(command).await?;
        match &resp.etcd {
            // Permissions changed between the check and the apply.
            Some(EtcdReply::AuthRefused(e)) => return Err(denied(auth_status(*e))),
            // etcd's NOSPACE alarm is raised: nothing that grows the store is applied.
            Some(EtcdReply::Refused(e @ MvccError::NoSpace)) => {
                return Err(Error::FailedPrecondition(format!(
                    "{e}: an etcd NOSPACE alarm is raised (etcdctl alarm list; disarm it once \
                     space is freed)"
                )))
            }
            // No other refusal comes from rskv's own writes (they name no lease or revision).
            Some(EtcdReply::Refused(e)) => return Err(Error::FailedPrecondition(e.to_string())),
            _ => {}
        }
        match &resp.session {
            SessionOutcome::Applied | SessionOutcome::Opened { .. } => Ok((index, resp)),
            SessionOutcome::Replayed { index } => {
                metrics::session_replayed();
                Ok((*index, resp))
            }
            SessionOutcome::Refused(why) => {
                let e = refusal_error(why);
                metrics::session_refused(e.reason().as_str());
                Err(e)
            }
        }
    }

    /// Waits until this node may serve a read at the requested consistency.
    async fn read_barrier(&self, consistency: i32) -> Result<()> {
        let consistency = pb::Consistency::try_from(consistency).map_err(|_| {
            Error::InvalidArgument(format!("unknown consistency level {consistency}"))
        })?;
        if consistency == pb::Consistency::Stale {
            return Ok(());
        }
        tokio::time::timeout(self.timeout(), self.reads.wait())
            .await
            .map_err(|_| Error::Timeout("linearizable read barrier timed out".into()))?
    }

    async fn do_get(&self, req: pb::GetRequest) -> Result<pb::GetResponse> {
        self.check_key(&req.key)?;
        self.read_barrier(req.consistency).await?;
        let applied_index = self.view.applied_index();
        let key = req.key;
        let value = self.view.get(key).await?;
        Ok(pb::GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
            applied_index,
        })
    }

    async fn do_put(&self, req: pb::PutRequest, grant: Grant) -> Result<pb::PutResponse> {
        self.check_key(&req.key)?;
        self.check_value(&req.value)?;
        let (index, resp) = self
            .write(
                req.session,
                grant.wrap(Command::Put {
                    key: req.key,
                    value: req.value,
                    return_prev: req.return_prev,
                    session: None,
                }),
            )
            .await?;
        Ok(pb::PutResponse {
            index,
            prev_value: if req.return_prev { resp.prev } else { None },
            revision: resp.revision,
        })
    }

    async fn do_delete(&self, req: pb::DeleteRequest, grant: Grant) -> Result<pb::DeleteResponse> {
        self.check_key(&req.key)?;
        let (index, resp) = self
            .write(
                req.session,
                grant.wrap(Command::Delete {
                    key: req.key,
                    session: None,
                }),
            )
            .await?;
        Ok(pb::DeleteResponse {
            index,
            existed: resp.prev.is_some(),
            revision: resp.revision,
        })
    }

    async fn do_compare_and_swap(
        &self,
        req: pb::CompareAndSwapRequest,
        grant: Grant,
    ) -> Result<pb::CompareAndSwapResponse> {
        self.check_key(&req.key)?;
        self.check_value(&req.new_value)?;
        if let Some(expected) = &req.expected {
            self.check_value(expected)?;
        }
        let new_value = req.new_value.clone();
        let (index, resp) = self
            .write(
                req.session,
                grant.wrap(Command::CompareAndSwap {
                    key: req.key,
                    expected: req.expected,
                    new_value: req.new_value,
                    session: None,
                }),
            )
            .await?;
        Ok(pb::CompareAndSwapResponse {
            success: resp.success,
            index,
            current: if resp.success {
                Some(new_value)
            } else {
                resp.prev
            },
            revision: resp.revision,
        })
    }

    /// One op of a Multi, answered (and counted in the metrics) as if it had come alone.
    async fn run_op(&self, md: &MetadataMap, op: pb::Op) -> pb::OpResult {
        use pb::op::Op;
        use pb::op_result::Result as R;
        let started = std::time::Instant::now();
        let grant = match op.op.as_ref().map(|o| self.allow_op(md, o)) {
            Some(Err(e)) => {
                return pb::OpResult {
                    result: Some(R::Error(crate::error::op_error(e))),
                }
            }
            Some(Ok(grant)) => grant,
            None => Grant::default(),
        };
        let (method, result) = match op.op {
            Some(Op::Get(r)) => ("get", self.do_get(r).await.map(R::Get)),
            Some(Op::Put(r)) => ("put", self.do_put(r, grant).await.map(R::Put)),
            Some(Op::Delete(r)) => ("delete", self.do_delete(r, grant).await.map(R::Delete)),
            Some(Op::CompareAndSwap(r)) => (
                "compare_and_swap",
                self.do_compare_and_swap(r, grant)
                    .await
                    .map(R::CompareAndSwap),
            ),
            None => (
                "multi",
                Err(Error::InvalidArgument("multi op carries no request".into())),
            ),
        };
        let result = result.unwrap_or_else(|e| R::Error(crate::error::op_error(e)));
        let code = match &result {
            R::Error(e) => tonic::Code::from(e.code),
            _ => tonic::Code::Ok,
        };
        metrics::request_done(method, code, started.elapsed());
        pb::OpResult {
            result: Some(result),
        }
    }
}

/// The leader's wall-clock time, Unix milliseconds: the time a session command carries into the
/// log (the state machine never reads a clock of its own).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `command` as a write of the client session `session` names, or as it is without one.
fn in_session(session: Option<pb::SessionRef>, command: Command) -> Result<Command> {
    let Some(s) = session else {
        return Ok(command);
    };
    if s.id == 0 || s.seq == 0 {
        return Err(Error::InvalidArgument(
            "session id and seq must be at least 1 (open a session with OpenSession)".into(),
        ));
    }
    if s.first_unacked > s.seq {
        return Err(Error::InvalidArgument(format!(
            "session first_unacked {} is above this write's seq {}",
            s.first_unacked, s.seq
        )));
    }
    Ok(command.in_session(SessionStamp {
        id: s.id,
        seq: s.seq,
        first_unacked: s.first_unacked.max(1),
        now_ms: now_ms(),
    }))
}

/// The error a client sees for a session write the state machine refused.
fn refusal_error(why: &SessionRefusal) -> Error {
    match why {
        SessionRefusal::Expired { id } => Error::SessionExpired(format!(
            "session {id} is unknown or expired (idle past its time-to-live, or closed); this \
             write was not applied; open a new session"
        )),
        SessionRefusal::Acknowledged { seq, first_unacked } => {
            Error::SequenceAcknowledged(format!(
                "seq {seq} is below the session's first unacknowledged seq {first_unacked}: the \
                 client already has its reply; not applied again"
            ))
        }
        SessionRefusal::Backlog { replies, bytes } => Error::ResourceExhausted(format!(
            "the session holds {replies} unacknowledged replies ({bytes} bytes; the limits are \
             {} replies and {} bytes): acknowledge some (first_unacked) before sending more \
             writes",
            sessions::MAX_PENDING_REPLIES,
            sessions::MAX_PENDING_BYTES
        )),
        SessionRefusal::TableFull { bytes } => Error::ResourceExhausted(format!(
            "client sessions together hold {bytes} bytes of unacknowledged replies (the limit \
             is {}); retry once clients acknowledge replies or idle sessions expire",
            sessions::MAX_TABLE_BYTES
        )),
    }
}

/// Keeps the active-watcher gauge right for as long as a watch stream exists.
struct WatcherGuard;

impl WatcherGuard {
    fn new() -> WatcherGuard {
        metrics::watcher_opened();
        WatcherGuard
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        metrics::watcher_closed();
    }
}

/// rskv's watch event for etcd's event of a change read from history.
fn history_event(event: mvccpb::Event) -> pb::WatchEvent {
    let kv = event.kv.unwrap_or_default();
    let delete = event.r#type == mvccpb::event::EventType::Delete as i32;
    pb::WatchEvent {
        kind: if delete {
            pb::watch_event::Kind::Delete
        } else {
            pb::watch_event::Kind::Put
        } as i32,
        key: kv.key,
        value: kv.value,
        prev_value: event.prev_kv.map(|p| p.value),
        index: 0,
        revision: kv.mod_revision,
    }
}

/// The first revision a watch reports: `start_revision`, or the revision after the store's
/// `current` one for a live watch (both starts 0).
///
/// # Errors
/// INVALID_ARGUMENT for a `start_index` (no longer served: events are no longer kept in memory
/// by log index) or a negative `start_revision`.
fn watch_start(req: &pb::WatchRequest, current: i64) -> Result<i64> {
    if req.start_index > 0 {
        return Err(Error::InvalidArgument(format!(
            "start_index {} is no longer served: watches read the store's history, which is kept \
             by revision, not by log index; watch with start_revision instead (the revision \
             after the last one you received; 0 for changes from now on)",
            req.start_index
        )));
    }
    match req.start_revision {
        0 => Ok(current + 1),
        start if start > 0 => Ok(start),
        start => Err(Error::InvalidArgument(format!(
            "start_revision {start} is negative; revisions start at 1 (0: changes from now on)"
        ))),
    }
}

/// A running watch stream, read from the store's history (see [`HistoryFeed`]): every change of
/// a key the filter passes, from its start revision on, whole revisions per response, until the
/// client goes away or the stream ends with a status saying where to resume.
struct HistoryWatch {
    feed: HistoryFeed,
    filter: KeyFilter,
    /// Becomes `true` when the node shuts down: the feed would otherwise wait for changes
    /// forever and hold up the drain.
    closed: watch::Receiver<bool>,
    /// The first revision not sent yet (every change before it was, or was filtered out): where
    /// a client re-watches after this stream ends.
    next_revision: i64,
    done: bool,
    _guard: WatcherGuard,
}

impl HistoryWatch {
    fn new(view: ReadView, events: &Arc<EventBus>, filter: KeyFilter, start: i64) -> HistoryWatch {
        HistoryWatch {
            feed: HistoryFeed::new(view, events, start, true),
            filter,
            closed: events.watch_closed(),
            next_revision: start,
            done: false,
            _guard: WatcherGuard::new(),
        }
    }

    fn end(&mut self, status: Status) -> Option<std::result::Result<pb::WatchResponse, Status>> {
        self.done = true;
        Some(Err(status))
    }

    fn shutting_down(&mut self) -> Option<std::result::Result<pb::WatchResponse, Status>> {
        let next = self.next_revision;
        self.end(Status::unavailable(format!(
            "node shutting down; re-watch from start_revision {next} on another node (nothing \
             before it is missed, nothing repeats)"
        )))
    }

    /// The next response, or the status the stream ends with (then `None`).
    async fn next(&mut self) -> Option<std::result::Result<pb::WatchResponse, Status>> {
        if self.done {
            return None;
        }
        loop {
            // The feed is cancel-safe: losing this race to shutdown loses nothing it would have
            // sent.
            let read = tokio::select! {
                read = self.feed.next() => Some(read),
                _ = self.closed.wait_for(|closed| *closed) => None,
            };
            let Some(read) = read else {
                return self.shutting_down();
            };
            match read {
                Ok(Feed::Changes { events, .. }) => {
                    if let Some((last, _)) = events.last() {
                        self.next_revision = last.main + 1;
                    }
                    let events: Vec<pb::WatchEvent> = events
                        .into_iter()
                        .filter(|(_, e)| {
                            e.kv.as_ref().is_some_and(|kv| self.filter.matches(&kv.key))
                        })
                        .map(|(_, e)| history_event(e))
                        .collect();
                    if !events.is_empty() {
                        return Some(Ok(pb::WatchResponse { events }));
                    }
                }
                Ok(Feed::Compacted {
                    compact_revision, ..
                }) => {
                    let e = Error::Compacted(format!(
                        "revision {} is compacted (history starts at {compact_revision}); read \
                         the current values, then watch from a later revision",
                        self.next_revision
                    ));
                    return self.end(Status::from(e));
                }
                Ok(Feed::Closed) => return self.shutting_down(),
                Err(e) => {
                    let e = Error::storage("reading the store's history", e);
                    return self.end(Status::from(e));
                }
            }
        }
    }
}

/// Stream type of the `Watch` RPC.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Kv for KvService {
    type WatchStream = WatchStream;

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (md, _, req) = request.into_parts();
        handle("watch", None, async {
            if !req.prefix {
                self.check_key(&req.key)?;
                self.allow(&md, &req.key, b"", Perm::Read)?;
            } else {
                let end = super::etcd::concurrency::prefix_end(&req.key);
                let end = if end.is_empty() { &b"\0"[..] } else { &end[..] };
                self.allow(&md, &req.key, end, Perm::Read)?;
            }
            let start = watch_start(&req, self.events.revision())?;
            let filter = if req.prefix {
                KeyFilter::Prefix(req.key)
            } else {
                KeyFilter::Key(req.key)
            };
            let state = HistoryWatch::new(self.view.clone(), &self.events, filter, start);
            let stream = futures::stream::unfold(state, |mut state| async move {
                state.next().await.map(|item| (item, state))
            });
            Ok(Box::pin(stream) as WatchStream)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let (md, _, req) = request.into_parts();
        handle("get", Some(&self.limiter), async {
            self.allow(&md, &req.key, b"", Perm::Read)?;
            self.do_get(req).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let (md, _, req) = request.into_parts();
        handle("put", Some(&self.limiter), async {
            let grant = self.allow_put(&md, &req)?;
            self.do_put(req, grant).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (md, _, req) = request.into_parts();
        handle("delete", Some(&self.limiter), async {
            let grant = self.allow(&md, &req.key, b"", Perm::Write)?;
            self.do_delete(req, grant).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let (md, _, req) = request.into_parts();
        handle("scan", Some(&self.limiter), async {
            let end = if req.end.is_empty() {
                &b"\0"[..]
            } else {
                &req.end[..]
            };
            self.allow(&md, &req.start, end, Perm::Read)?;
            if !req.end.is_empty() && req.start > req.end {
                return Err(Error::InvalidArgument(format!(
                    "scan start {:?} is after end {:?}",
                    String::from_utf8_lossy(&req.start),
                    String::from_utf8_lossy(&req.end)
                )));
            }
            if req.limit > MAX_SCAN_LIMIT {
                return Err(Error::InvalidArgument(format!(
                    "scan limit {} exceeds the maximum {MAX_SCAN_LIMIT}",
                    req.limit
                )));
            }
            let limit = if req.limit == 0 {
                DEFAULT_SCAN_LIMIT
            } else {
                req.limit
            } as usize;
            self.read_barrier(req.consistency).await?;
            let applied_index = self.view.applied_index();
            let end = if req.end.is_empty() {
                None
            } else {
                Some(req.end)
            };
            // Fetch one extra pair to learn whether another page exists.
            let mut pairs = self.view.scan(req.start, end, limit + 1).await?;
            let next_start = if pairs.len() > limit {
                pairs.pop().map(|(k, _)| k)
            } else {
                None
            };
            Ok(pb::ScanResponse {
                pairs: pairs
                    .into_iter()
                    .map(|(key, value)| pb::KeyValue { key, value })
                    .collect(),
                next_start,
                applied_index,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn batch_put(
        &self,
        request: Request<pb::BatchPutRequest>,
    ) -> Result<Response<pb::BatchPutResponse>, Status> {
        let (md, _, req) = request.into_parts();
        handle("batch_put", Some(&self.limiter), async {
            if req.pairs.is_empty() {
                return Err(Error::InvalidArgument(
                    "batch must contain at least one pair".into(),
                ));
            }
            self.check_op_count(req.pairs.len(), "pairs")?;
            let mut pairs: Vec<(Bytes, Bytes)> = Vec::with_capacity(req.pairs.len());
            // The first check's grant, whose auth revision is the oldest (see allow_cas).
            let mut grant = None;
            for kv in req.pairs {
                self.check_key(&kv.key)?;
                let allowed = self.allow(&md, &kv.key, b"", Perm::Write)?;
                grant.get_or_insert(allowed);
                self.check_value(&kv.value)?;
                pairs.push((kv.key, kv.value));
            }
            let command = grant.unwrap_or_default().wrap(Command::BatchPut {
                pairs,
                session: None,
            });
            let (index, resp) = self.write(req.session, command).await?;
            Ok(pb::BatchPutResponse {
                index,
                revision: resp.revision,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn compare_and_swap(
        &self,
        request: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        let (md, _, req) = request.into_parts();
        handle("compare_and_swap", Some(&self.limiter), async {
            let grant = self.allow_cas(&md, &req)?;
            self.do_compare_and_swap(req, grant).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let md = request.metadata().clone();
        handle("open_session", Some(&self.limiter), async {
            self.auth.require_user(&md).map_err(denied)?;
            let sessions = &self.sessions;
            let (index, resp) = self
                .write(
                    None,
                    Command::OpenSession {
                        now_ms: now_ms(),
                        ttl_ms: sessions.ttl_ms,
                        max_sessions: sessions.max_sessions,
                    },
                )
                .await?;
            match resp.session {
                SessionOutcome::Opened { id } => Ok(pb::OpenSessionResponse {
                    id,
                    ttl_ms: sessions.ttl_ms,
                    index,
                }),
                other => Err(Error::raft_unexpected(format!(
                    "opening a session answered {other:?}"
                ))),
            }
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let (md, _, req) = request.into_parts();
        handle("close_session", Some(&self.limiter), async {
            self.auth.require_user(&md).map_err(denied)?;
            let (index, _) = self
                .write(None, Command::CloseSession { id: req.id })
                .await?;
            Ok(pb::CloseSessionResponse { index })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id, ops))]
    async fn multi(
        &self,
        request: Request<pb::MultiRequest>,
    ) -> Result<Response<pb::MultiResponse>, Status> {
        let (md, _, req) = request.into_parts();
        tracing::Span::current().record("ops", req.ops.len());
        let max = self.limits.max_ops_per_request;
        let count = req.ops.len().min(max).max(1);
        handle_many("multi", Some(&self.limiter), count, async {
            self.check_op_count(req.ops.len(), "ops")?;
            let md = &md;
            let results =
                futures::future::join_all(req.ops.into_iter().map(|op| self.run_op(md, op)));
            Ok(pb::MultiResponse {
                results: results.await,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(start_index: u64, start_revision: i64) -> pb::WatchRequest {
        pb::WatchRequest {
            key: Bytes::from_static(b"k"),
            prefix: false,
            start_index,
            start_revision,
        }
    }

    #[test]
    fn a_live_watch_should_start_after_the_current_revision() {
        assert_eq!(watch_start(&request(0, 0), 41).expect("live"), 42);
        assert_eq!(watch_start(&request(0, 0), 0).expect("empty store"), 1);
    }

    #[test]
    fn a_watch_from_a_revision_should_start_there() {
        assert_eq!(watch_start(&request(0, 7), 41).expect("past"), 7);
        assert_eq!(watch_start(&request(0, 99), 41).expect("future"), 99);
    }

    #[test]
    fn a_start_index_should_be_refused_naming_start_revision() {
        // Also beside a start_revision: an index is never quietly ignored.
        for req in [request(5, 0), request(5, 7)] {
            let status = Status::from(watch_start(&req, 41).expect_err("refused"));
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(
                status
                    .message()
                    .contains("start_index 5 is no longer served")
                    && status.message().contains("start_revision"),
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_negative_start_revision_should_be_refused() {
        let status = Status::from(watch_start(&request(0, -3), 41).expect_err("refused"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("-3"), "{status:?}");
    }
}
