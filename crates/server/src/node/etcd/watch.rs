//! etcd's `Watch` service, served from the multi-version store's history on any member.
//!
//! Each watcher reads history through a [`HistoryFeed`] from its start revision on and sends the
//! changes in its key range. Because every event comes from history, a watch
//! can start at any revision not compacted, resume after a restart of the node serving it (the
//! client asks again from the revision after the last one it saw), and never has a gap or a
//! duplicate, whoever leads.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use rskv_proto::etcd::etcdserverpb::watch_server::Watch;
use rskv_proto::etcd::mvccpb;
use rskv_storage::events::EventBus;
use rskv_storage::mvcc::read::in_range;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use super::kv::MAX_REQUEST_BYTES;
use super::EtcdContext;
use crate::node::history_feed::Feed;
use crate::node::history_feed::HistoryFeed;
use crate::node::read_view::ReadView;

/// How often a watcher that asked for progress notifications gets one when idle (etcd's
/// default).
const PROGRESS_EVERY: Duration = Duration::from_secs(600);
/// Responses a stream may hold unsent before its watchers wait.
const STREAM_BUFFER: usize = 64;

type Outbound = mpsc::Sender<Result<etcd::WatchResponse, Status>>;

/// Implements etcd's `Watch` over the store's history.
pub struct EtcdWatch {
    ctx: EtcdContext,
    view: ReadView,
    events: Arc<EventBus>,
}

impl EtcdWatch {
    /// The service, reading history through `view` and woken by `events`.
    pub fn new(ctx: EtcdContext, view: ReadView, events: Arc<EventBus>) -> EtcdWatch {
        EtcdWatch { ctx, view, events }
    }
}

/// One watch stream: its watchers, by id.
struct StreamState {
    ctx: EtcdContext,
    view: ReadView,
    events: Arc<EventBus>,
    out: Outbound,
    watchers: HashMap<i64, JoinHandle<()>>,
    next_id: i64,
    /// The stream's metadata (its auth token): each watch created is checked against it.
    metadata: tonic::metadata::MetadataMap,
}

impl StreamState {
    async fn handle(&mut self, request: etcd::WatchRequest) -> bool {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                // etcd answers a cancel of an unknown watch with nothing.
                if let Some(watcher) = self.watchers.remove(&cancel.watch_id) {
                    watcher.abort();
                    let response = etcd::WatchResponse {
                        header: Some(self.ctx.header_at(self.events.revision())),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    return self.out.send(Ok(response)).await.is_ok();
                }
                true
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let response = etcd::WatchResponse {
                    header: Some(self.ctx.header_at(self.events.revision())),
                    watch_id: -1,
                    ..Default::default()
                };
                self.out.send(Ok(response)).await.is_ok()
            }
            None => true,
        }
    }

    async fn create(&mut self, mut create: etcd::WatchCreateRequest) -> bool {
        // As etcd: an empty key is the smallest key, "\0".
        if create.key.is_empty() {
            create.key = bytes::Bytes::from_static(b"\0");
        }
        self.watchers.retain(|_, w| !w.is_finished());
        let refuse = |reason: &str| etcd::WatchResponse {
            header: Some(self.ctx.header_at(self.events.revision())),
            watch_id: create.watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        // As etcd: a watch its user may not read is created canceled, saying why.
        if let Err(status) = self.ctx.auth().check(
            &self.metadata,
            &create.key,
            &create.range_end,
            rskv_storage::state_machine::auth::Perm::Read,
        ) {
            let response = refuse(status.message());
            return self.out.send(Ok(response)).await.is_ok();
        }
        let id = if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                let response = refuse("etcdserver: duplicate watch ID");
                return self.out.send(Ok(response)).await.is_ok();
            }
            create.watch_id
        } else {
            // As etcd: ids handed out go up, so a canceled watcher's id is not handed out again
            // while a response of it may still be on its way to the client.
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let current = self.events.revision();
        let created = etcd::WatchResponse {
            header: Some(self.ctx.header_at(current)),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if self.out.send(Ok(created)).await.is_err() {
            return false;
        }
        let watcher = Watcher {
            id,
            start: if create.start_revision > 0 {
                create.start_revision
            } else {
                current + 1
            },
            create,
            ctx: self.ctx.clone(),
            view: self.view.clone(),
            events: self.events.clone(),
            out: self.out.clone(),
        };
        self.watchers.insert(id, tokio::spawn(watcher.run()));
        true
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        for watcher in self.watchers.values() {
            watcher.abort();
        }
    }
}

/// One watcher: a key range, filters, and its cursor in history.
struct Watcher {
    id: i64,
    create: etcd::WatchCreateRequest,
    /// The first revision it reports.
    start: i64,
    ctx: EtcdContext,
    view: ReadView,
    events: Arc<EventBus>,
    out: Outbound,
}

impl Watcher {
    fn wants(&self, event: &mvccpb::Event) -> bool {
        let Some(kv) = &event.kv else {
            return false;
        };
        if !in_range(&kv.key, &self.create.key, &self.create.range_end) {
            return false;
        }
        let filtered =
            |f: etcd::watch_create_request::FilterType| self.create.filters.contains(&(f as i32));
        if event.r#type == mvccpb::event::EventType::Put as i32 {
            !filtered(etcd::watch_create_request::FilterType::Noput)
        } else {
            !filtered(etcd::watch_create_request::FilterType::Nodelete)
        }
    }

    async fn run(mut self) {
        if let Err(status) = self.serve().await {
            let _ = self.out.send(Err(status)).await;
        }
    }

    async fn serve(&mut self) -> Result<(), Status> {
        let mut feed = HistoryFeed::new(
            self.view.clone(),
            &self.events,
            self.start,
            self.create.prev_kv,
        );
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.tick().await;
        loop {
            let next = tokio::select! {
                next = feed.next() => next.map_err(|e| Status::internal(format!("reading history: {e}")))?,
                _ = progress.tick(), if self.create.progress_notify => {
                    let response = etcd::WatchResponse {
                        header: Some(self.ctx.header_at(self.events.revision())),
                        watch_id: self.id,
                        ..Default::default()
                    };
                    self.out.send(Ok(response)).await.map_err(|_| Status::cancelled("stream closed"))?;
                    continue;
                }
            };
            match next {
                Feed::Changes { events, revision } => {
                    let wanted: Vec<mvccpb::Event> = events
                        .into_iter()
                        .map(|(_, event)| event)
                        .filter(|event| self.wants(event))
                        .collect();
                    if !wanted.is_empty() {
                        self.send(wanted, revision).await?;
                    }
                }
                Feed::Compacted {
                    compact_revision,
                    revision,
                } => {
                    let response = etcd::WatchResponse {
                        header: Some(self.ctx.header_at(revision)),
                        watch_id: self.id,
                        canceled: true,
                        compact_revision,
                        cancel_reason: "etcdserver: mvcc: required revision has been compacted"
                            .into(),
                        ..Default::default()
                    };
                    let _ = self.out.send(Ok(response)).await;
                    return Ok(());
                }
                Feed::Closed => return Ok(()),
            }
        }
    }

    /// Sends `events`, split into fragments of at most the request size limit when the watch
    /// asked for fragments (etcd's `fragment`), else whole.
    async fn send(&self, events: Vec<mvccpb::Event>, revision: i64) -> Result<(), Status> {
        let header = self.ctx.header_at(revision);
        let mut pieces: Vec<Vec<mvccpb::Event>> = vec![Vec::new()];
        let mut bytes = 0;
        for event in events {
            let size = event.encoded_len() + 8;
            let last = pieces.last().map_or(0, Vec::len);
            if self.create.fragment && last > 0 && bytes + size > MAX_REQUEST_BYTES {
                pieces.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(piece) = pieces.last_mut() {
                piece.push(event);
            }
        }
        let count = pieces.len();
        for (i, events) in pieces.into_iter().enumerate() {
            let response = etcd::WatchResponse {
                header: Some(header),
                watch_id: self.id,
                fragment: i + 1 < count,
                events,
                ..Default::default()
            };
            self.out
                .send(Ok(response))
                .await
                .map_err(|_| Status::cancelled("stream closed"))?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Watch for EtcdWatch {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<etcd::WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<etcd::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let (out, rx) = mpsc::channel(STREAM_BUFFER);
        let mut state = StreamState {
            ctx: self.ctx.clone(),
            view: self.view.clone(),
            events: self.events.clone(),
            out,
            watchers: HashMap::new(),
            next_id: 0,
            metadata,
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(request)) => {
                            if !state.handle(request).await {
                                break;
                            }
                        }
                        Ok(None) | Err(_) => break,
                    },
                    _ = state.out.closed() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
