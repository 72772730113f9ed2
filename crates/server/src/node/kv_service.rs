//! The client key-value API (`rskv.v1.Kv`).
//!
//! Writes are proposed to Raft and answered after they are committed and applied; the reply
//! carries the log index. Reads are linearizable by default — a ReadIndex barrier through
//! openraft (the leader confirms its leadership with a quorum, then waits until its state machine
//! has applied up to the confirmed commit index) — or `STALE`, served from the local state machine
//! of any node. A follower answers writes and linearizable reads with NOT_LEADER naming the leader.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::broadcast;
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
use rskv_storage::events::Event;
use rskv_storage::events::EventBus;
use rskv_storage::events::EventKind;
use rskv_storage::events::KeyFilter;
use rskv_storage::events::Published;
use rskv_storage::events::Subscription;
use rskv_storage::state_machine::sessions;

/// Scan page size when the request gives no limit.
pub const DEFAULT_SCAN_LIMIT: u32 = 1000;
/// Largest page a scan may ask for.
pub const MAX_SCAN_LIMIT: u32 = 10_000;

/// Implements `rskv.v1.Kv` with the handles it needs, not the whole node: it can propose
/// commands, wait for a read barrier, read the applied state, subscribe to apply events, and
/// count itself against the request limit.
pub struct KvService {
    id: NodeId,
    limits: LimitsConfig,
    sessions: SessionsConfig,
    /// `events.watch_buffer`.
    watch_buffer: usize,
    proposer: Arc<Proposer>,
    reads: Arc<ReadBarrier>,
    view: ReadView,
    events: Arc<EventBus>,
    limiter: Arc<RequestLimiter>,
}

impl KvService {
    /// The client API service of `node`, holding only the handles above.
    pub fn new(node: &Node) -> KvService {
        KvService {
            id: node.id,
            limits: node.config.limits.clone(),
            sessions: node.config.sessions.clone(),
            watch_buffer: node.config.events.watch_buffer,
            proposer: node.proposer.clone(),
            reads: node.reads.clone(),
            view: ReadView::new(node.engine.clone(), &node.raft),
            events: node.events.clone(),
            limiter: node.limiter.clone(),
        }
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

    async fn do_put(&self, req: pb::PutRequest) -> Result<pb::PutResponse> {
        self.check_key(&req.key)?;
        self.check_value(&req.value)?;
        let (index, resp) = self
            .write(
                req.session,
                Command::Put {
                    key: req.key,
                    value: req.value,
                    return_prev: req.return_prev,
                    session: None,
                },
            )
            .await?;
        Ok(pb::PutResponse {
            index,
            prev_value: if req.return_prev { resp.prev } else { None },
            revision: resp.revision,
        })
    }

    async fn do_delete(&self, req: pb::DeleteRequest) -> Result<pb::DeleteResponse> {
        self.check_key(&req.key)?;
        let (index, resp) = self
            .write(
                req.session,
                Command::Delete {
                    key: req.key,
                    session: None,
                },
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
                Command::CompareAndSwap {
                    key: req.key,
                    expected: req.expected,
                    new_value: req.new_value,
                    session: None,
                },
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
    async fn run_op(&self, op: pb::Op) -> pb::OpResult {
        use pb::op::Op;
        use pb::op_result::Result as R;
        let started = std::time::Instant::now();
        let (method, result) = match op.op {
            Some(Op::Get(r)) => ("get", self.do_get(r).await.map(R::Get)),
            Some(Op::Put(r)) => ("put", self.do_put(r).await.map(R::Put)),
            Some(Op::Delete(r)) => ("delete", self.do_delete(r).await.map(R::Delete)),
            Some(Op::CompareAndSwap(r)) => (
                "compare_and_swap",
                self.do_compare_and_swap(r).await.map(R::CompareAndSwap),
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

/// A running watch stream: backlog first, then live batches, ending with a status.
struct WatchState {
    /// Events received but not yet sent: the backlog at first, then live batches as they come.
    queue: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Published>,
    closed: watch::Receiver<bool>,
    filter: KeyFilter,
    /// Live events below this index were already covered (a resumed watch on a lagging node).
    start_index: u64,
    /// Index of the last event seen, to tell a dropped watcher where to resume.
    last_index: u64,
    /// `events.watch_buffer`, named when a lagging watcher is dropped.
    buffer: usize,
    done: bool,
    /// Why the stream ends once `queue` is sent (a snapshot install or lag seen while batching).
    pending_end: Option<PendingEnd>,
    /// Keeps the active-watcher gauge right for as long as the stream exists.
    _guard: WatcherGuard,
}

/// How a stream ends after the events queued before it are sent.
enum PendingEnd {
    /// The node installed a snapshot up to this index.
    Reset(u64),
    /// The watcher missed this many batches.
    Lagged(u64),
}

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

fn reset_status(index: u64) -> Status {
    Status::out_of_range(format!(
        "this node caught up to index {index} by installing a snapshot, so the changes before it \
         cannot be streamed; read the current values, then watch with start_index {}",
        index + 1
    ))
}

/// Most events sent in one `WatchResponse`.
const WATCH_BATCH: usize = 256;

fn to_pb(event: &Event) -> pb::WatchEvent {
    let (kind, value) = match &event.kind {
        EventKind::Put { value } => (pb::watch_event::Kind::Put, value.clone()),
        EventKind::Delete => (pb::watch_event::Kind::Delete, Bytes::new()),
    };
    pb::WatchEvent {
        kind: kind as i32,
        key: event.key.clone(),
        value,
        prev_value: event.prev.clone(),
        index: event.index,
        revision: event.revision,
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

/// A watch served from the store's history from `start` (see `start_revision`).
fn history_watch(
    view: ReadView,
    events: &Arc<EventBus>,
    filter: KeyFilter,
    start: i64,
) -> WatchStream {
    let feed = HistoryFeed::new(view, events, start, true);
    let stream = futures::stream::unfold(Some(feed), move |feed| {
        let filter = filter.clone();
        async move {
            let mut feed = feed?;
            loop {
                match feed.next().await {
                    Ok(Feed::Changes { events, .. }) => {
                        let events: Vec<pb::WatchEvent> = events
                            .into_iter()
                            .filter(|(_, e)| {
                                e.kv.as_ref().is_some_and(|kv| filter.matches(&kv.key))
                            })
                            .map(|(_, e)| history_event(e))
                            .collect();
                        if !events.is_empty() {
                            return Some((Ok(pb::WatchResponse { events }), Some(feed)));
                        }
                    }
                    Ok(Feed::Compacted {
                        compact_revision, ..
                    }) => {
                        let e = Error::Compacted(format!(
                            "revision {start} is compacted (history starts at {compact_revision}); \
                             watch from a later revision"
                        ));
                        return Some((Err(Status::from(e)), None));
                    }
                    Ok(Feed::Closed) => return None,
                    Err(e) => {
                        let e = Error::storage("reading the store's history", e);
                        return Some((Err(Status::from(e)), None));
                    }
                }
            }
        }
    });
    Box::pin(stream)
}

impl WatchState {
    fn new(sub: Subscription, filter: KeyFilter, start_index: u64, buffer: usize) -> WatchState {
        WatchState {
            queue: sub.backlog.into(),
            live: sub.live,
            closed: sub.closed,
            filter,
            start_index,
            last_index: if start_index > 0 {
                start_index - 1
            } else {
                sub.last_index
            },
            buffer,
            done: false,
            pending_end: None,
            _guard: WatcherGuard::new(),
        }
    }

    fn take(&mut self, event: &Arc<Event>, out: &mut Vec<pb::WatchEvent>) {
        if event.index < self.start_index {
            return;
        }
        self.last_index = event.index;
        if self.filter.matches(&event.key) {
            out.push(to_pb(event));
        }
    }

    /// Up to [`WATCH_BATCH`] matching events from the front of the queue.
    fn drain_queue(&mut self) -> Vec<pb::WatchEvent> {
        let mut out = Vec::new();
        while out.len() < WATCH_BATCH {
            let Some(event) = self.queue.pop_front() else {
                break;
            };
            self.take(&event, &mut out);
        }
        out
    }

    /// Where a re-watch should start. Inclusive of the last index seen: the keys of one batch
    /// share an index, and the stream may have stopped between them (so those may repeat).
    fn resume_hint(&self) -> String {
        format!(
            "re-watch with start_index {} (events at that index may repeat)",
            self.last_index.max(1)
        )
    }

    fn end(&mut self, status: Status) -> Option<Result<pb::WatchResponse, Status>> {
        self.done = true;
        Some(Err(status))
    }

    fn lagged(&mut self, missed: u64) -> Option<Result<pb::WatchResponse, Status>> {
        rskv_storage::metrics::watcher_dropped();
        let hint = self.resume_hint();
        let buffer = self.buffer;
        self.end(Status::resource_exhausted(format!(
            "watcher fell more than {buffer} applied batches behind (events.watch_buffer) and \
             missed {missed}; {hint}"
        )))
    }

    async fn next(&mut self) -> Option<Result<pb::WatchResponse, Status>> {
        if self.done {
            return None;
        }
        loop {
            let out = self.drain_queue();
            if !out.is_empty() {
                return Some(Ok(pb::WatchResponse { events: out }));
            }
            match self.pending_end.take() {
                Some(PendingEnd::Reset(index)) => return self.end(reset_status(index)),
                Some(PendingEnd::Lagged(missed)) => return self.lagged(missed),
                None => {}
            }
            let received = tokio::select! {
                r = self.live.recv() => Some(r),
                _ = self.closed.wait_for(|closed| *closed) => None,
            };
            let Some(received) = received else {
                let hint = self.resume_hint();
                return self.end(Status::unavailable(format!(
                    "node shutting down; {hint} on another node"
                )));
            };
            match received {
                Ok(Published::Batch(events)) => {
                    self.queue.extend(events.iter().cloned());
                    // Batch whatever else is already queued, up to a reset or lag: those end
                    // the stream once what came before them is sent.
                    while self.queue.len() < WATCH_BATCH {
                        match self.live.try_recv() {
                            Ok(Published::Batch(events)) => {
                                self.queue.extend(events.iter().cloned())
                            }
                            Ok(Published::Reset(index)) => {
                                self.pending_end = Some(PendingEnd::Reset(index));
                                break;
                            }
                            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                                self.pending_end = Some(PendingEnd::Lagged(missed));
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                Ok(Published::Reset(index)) => return self.end(reset_status(index)),
                Err(broadcast::error::RecvError::Lagged(missed)) => return self.lagged(missed),
                Err(broadcast::error::RecvError::Closed) => {
                    return self.end(Status::unavailable("node shutting down"));
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
        let req = request.into_inner();
        handle("watch", None, async {
            if !req.prefix {
                self.check_key(&req.key)?;
            }
            let filter = if req.prefix {
                KeyFilter::Prefix(req.key)
            } else {
                KeyFilter::Key(req.key)
            };
            if req.start_revision > 0 {
                return Ok(history_watch(
                    self.view.clone(),
                    &self.events,
                    filter,
                    req.start_revision,
                ));
            }
            let sub = self.events.subscribe(req.start_index)?;
            let state = WatchState::new(sub, filter, req.start_index, self.watch_buffer);
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
        let req = request.into_inner();
        handle("get", Some(&self.limiter), self.do_get(req)).await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let req = request.into_inner();
        handle("put", Some(&self.limiter), self.do_put(req)).await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = request.into_inner();
        handle("delete", Some(&self.limiter), self.do_delete(req)).await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let req = request.into_inner();
        handle("scan", Some(&self.limiter), async {
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
        let req = request.into_inner();
        handle("batch_put", Some(&self.limiter), async {
            if req.pairs.is_empty() {
                return Err(Error::InvalidArgument(
                    "batch must contain at least one pair".into(),
                ));
            }
            self.check_op_count(req.pairs.len(), "pairs")?;
            let mut pairs: Vec<(Bytes, Bytes)> = Vec::with_capacity(req.pairs.len());
            for kv in req.pairs {
                self.check_key(&kv.key)?;
                self.check_value(&kv.value)?;
                pairs.push((kv.key, kv.value));
            }
            let command = Command::BatchPut {
                pairs,
                session: None,
            };
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
        let req = request.into_inner();
        handle(
            "compare_and_swap",
            Some(&self.limiter),
            self.do_compare_and_swap(req),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.id))]
    async fn open_session(
        &self,
        _request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        handle("open_session", Some(&self.limiter), async {
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
        let req = request.into_inner();
        handle("close_session", Some(&self.limiter), async {
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
        let req = request.into_inner();
        tracing::Span::current().record("ops", req.ops.len());
        let max = self.limits.max_ops_per_request;
        let count = req.ops.len().min(max).max(1);
        handle_many("multi", Some(&self.limiter), count, async {
            self.check_op_count(req.ops.len(), "ops")?;
            let results = futures::future::join_all(req.ops.into_iter().map(|op| self.run_op(op)));
            Ok(pb::MultiResponse {
                results: results.await,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use rskv_storage::events::EventBus;

    fn put(index: u64, key: String) -> Event {
        Event {
            index,
            revision: index as i64,
            key: Bytes::from(key),
            kind: EventKind::Put {
                value: Bytes::from_static(b"v"),
            },
            prev: None,
        }
    }

    async fn next_events(state: &mut WatchState) -> Vec<pb::WatchEvent> {
        match state.next().await {
            Some(Ok(response)) => response.events,
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_buffer_should_reach_a_caught_up_watcher_whole() {
        let bus = EventBus::new(100, 1 << 20, 4);
        let sub = bus.subscribe(0).expect("subscribe");
        let mut state = WatchState::new(sub, KeyFilter::Prefix(Bytes::new()), 0, 4);
        bus.publish((0..1000).map(|i| put(7, format!("k{i:04}"))).collect());
        let mut keys = Vec::new();
        while keys.len() < 1000 {
            let events = next_events(&mut state).await;
            assert!(
                events.len() <= WATCH_BATCH,
                "{} in one response",
                events.len()
            );
            keys.extend(events.into_iter().map(|e| e.key));
        }
        let expected: Vec<Bytes> = (0..1000).map(|i| Bytes::from(format!("k{i:04}"))).collect();
        assert_eq!(keys, expected, "every key, once, in order");
        // Still open: the next write arrives too.
        bus.publish(vec![put(8, "after".into())]);
        let events = next_events(&mut state).await;
        assert_eq!((events.len(), events[0].index), (1, 8));
    }

    #[tokio::test]
    async fn a_watcher_behind_more_batches_than_the_buffer_should_be_told_where_to_resume() {
        let bus = EventBus::new(100, 1 << 20, 4);
        let sub = bus.subscribe(0).expect("subscribe");
        let mut state = WatchState::new(sub, KeyFilter::Prefix(Bytes::new()), 0, 4);
        bus.publish(vec![put(1, "a".into())]);
        assert_eq!(next_events(&mut state).await.len(), 1);
        for index in 2..=7 {
            bus.publish(vec![put(index, "a".into())]);
        }
        let status = match state.next().await {
            Some(Err(status)) => status,
            other => panic!("expected the watcher dropped, got {other:?}"),
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("events.watch_buffer")
                && status.message().contains("start_index 1"),
            "{status:?}"
        );
        assert!(
            state.next().await.is_none(),
            "the stream ends after the status"
        );
    }
}
