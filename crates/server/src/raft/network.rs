//! The Raft transport: openraft's outgoing RPCs over tonic, one cached channel per peer address.
//!
//! openraft's request/response types travel as rskv's own protobuf messages (`proto/raft.proto`),
//! mapped in one place, [`rskv_storage::format`]; this module and [`crate::node::raft_service`]
//! only call that mapping. Snapshots are streamed from their file (or a durable engine's export)
//! in `snapshot_chunk_bytes` pieces, with at most a few chunks in memory at a time.

use std::future::Future;
use std::io::Read;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use futures::Stream;
use futures::StreamExt;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::RaftNetworkV2;
use tonic::transport::Channel;

use crate::raft::NodeId;
use crate::raft::NodeInfo;
use crate::raft::Snapshot;
use crate::raft::TypeConfig;
use crate::raft::Vote;
use rskv_client::transport::channel;
use rskv_client::transport::Dial;
use rskv_proto::raft::raft_client::RaftClient;
use rskv_proto::raft::SnapshotChunk;
use rskv_storage::format::Wire;
use rskv_storage::SnapshotData;

/// How quickly the Raft transport gives up on a peer connection and dials afresh.
///
/// A TCP connection across a cut link keeps its unacknowledged bytes and retransmits them with
/// exponential back-off, so after the link heals it may stay silent for seconds (6.5 s RTO, 17.7 s
/// without a byte were seen after repeated partitions), and everything multiplexed over it waits:
/// pre-votes to a reachable node timed out for 8.6 s and a majority had no leader for 11.6 s. So
/// a peer connection is PINGed whenever nothing was read from it for a heartbeat interval, and
/// dropped when the PING is not answered within an election timeout: a peer that cannot answer in
/// that time cannot keep or elect a leader over this connection anyway. The next RPC dials a new
/// connection, whose first packets are not held back by the old one's back-off. A dial gives up
/// after half an election timeout (a SYN to a cut peer is dropped, and the kernel would resend it
/// only after a second), so a connection attempt pending when a link heals is soon replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLiveness {
    /// PING a connection once nothing has been read from it for this long (idle ones too).
    pub ping_after: Duration,
    /// Drop the connection when a PING is not answered within this.
    pub ping_timeout: Duration,
    /// Give up dialling a peer after this (the next RPC dials again).
    pub connect_timeout: Duration,
}

impl PeerLiveness {
    /// Derived from the Raft timers (see the type's documentation).
    pub fn new(heartbeat_interval: Duration, election_timeout_min: Duration) -> PeerLiveness {
        PeerLiveness {
            ping_after: heartbeat_interval,
            ping_timeout: election_timeout_min,
            connect_timeout: election_timeout_min / 2,
        }
    }

    /// A lazily-connecting channel to peer `addr`, as [`lazy_channel`] but with these timeouts.
    pub fn channel(&self, addr: &str, dial: Dial) -> Result<Channel, String> {
        channel(
            addr,
            self.connect_timeout,
            (self.ping_after, self.ping_timeout),
            dial,
        )
    }
}

/// Creates connections to peers for openraft, sharing one HTTP/2 channel per address.
#[derive(Clone)]
pub struct NetworkFactory {
    /// Channels by peer address; tonic multiplexes concurrent RPCs over each, and a channel
    /// whose connection died dials a new one for the next RPC.
    channels: Arc<DashMap<String, Channel>>,
    /// Size of the data chunks a snapshot is streamed in.
    snapshot_chunk_bytes: usize,
    /// Source IP (`peer_source_ip` in the config) and TLS of outgoing connections.
    dial: Dial,
    /// When a peer connection counts as dead.
    liveness: PeerLiveness,
}

impl NetworkFactory {
    /// A factory streaming snapshots in chunks of `snapshot_chunk_bytes`, connecting as `dial`
    /// says, dropping connections that fail `liveness`.
    pub fn new(snapshot_chunk_bytes: usize, dial: Dial, liveness: PeerLiveness) -> NetworkFactory {
        NetworkFactory {
            channels: Arc::new(DashMap::new()),
            snapshot_chunk_bytes,
            dial,
            liveness,
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        if let Some(c) = self.channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = self
            .liveness
            .channel(addr, self.dial.clone())
            .map_err(|e| format!("bad address {addr}: {e}"))?;
        self.channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.peer_addr.clone(),
            client: self.channel(&node.peer_addr).map(RaftClient::new),
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
        }
    }
}

/// What a follower answered one request of an append stream.
type AppendAnswer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// Requests of an append stream sent so far, for telling an idle stream from a stalled one.
#[derive(Default)]
struct Owed {
    sent: AtomicU64,
    /// Signalled after each request is handed to the stream (and when it is cut short).
    more: tokio::sync::Notify,
    /// Why the requests were cut short, if they were: the answers end with this error.
    broken: std::sync::Mutex<Option<String>>,
}

/// Why an AppendEntries must not be sent: its entries do not start right after `prev_log_id`.
///
/// openraft (0.10.0-alpha.37) can build such a request: a replication stream resumes from the
/// follower's position after the leader has purged past it (seen when a follower came back from a
/// crash, and when it finished installing a snapshot while the leader snapshotted and purged
/// again), and the log read for it starts at the first entry that is left (a purge may remove the
/// start of a range being read). A debug build of openraft asserts on it; a release build sends
/// it, and the follower appends the entries after a hole, then applies past it. Seen in release
/// builds with snapshots every 2,000 writes and a follower killed under load (entries from 13256
/// after prev_log_id 13112, right after the follower installed a snapshot at 13112). Refusing it
/// fails the stream, and openraft plans the follower's replication again: here, the next snapshot.
fn gap_in(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<String> {
    let first = rpc.entries.first()?.log_id.index;
    let expected = rpc.prev_log_id.map_or(0, |p| p.index + 1);
    (first != expected).then(|| {
        format!("AppendEntries entries start at {first}, not at {expected} right after prev_log_id (log purged under replication)")
    })
}

/// openraft's handle for sending RPCs to one peer.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    /// The gRPC client, or why none could be made (an invalid address).
    client: Result<RaftClient<Channel>, String>,
    snapshot_chunk_bytes: usize,
}

fn unreachable(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

fn network(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(msg))
}

/// Transport failures mean "unreachable" (openraft backs off); anything else is a network error.
fn status_to_rpc(status: &tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            unreachable(status.message())
        }
        _ => network(format!("{}: {}", status.code(), status.message())),
    }
}

impl PeerConnection {
    fn client(&self) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().map_err(unreachable)
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Wire,
        Resp: Wire,
        F: FnOnce(RaftClient<Channel>, tonic::Request<Req::Message>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp::Message>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(req.to_message());
        request.set_timeout(option.hard_ttl());
        let reply = call(self.client()?, request)
            .await
            .map_err(|s| status_to_rpc(&s))?;
        Resp::from_message(reply.into_inner()).map_err(network)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    /// Pipelined replication over one bidirectional gRPC stream: openraft's replication task
    /// produces a request whenever new entries are submitted, and each goes out at once instead
    /// of after the previous one's answer (the default sends one AppendEntries at a time, so a
    /// second Raft entry waited a whole follower round trip, fsync included, behind the first).
    /// The stream fails when an answer is owed and none comes within `option.soft_ttl()`.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, AppendAnswer>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let mut client = self.client()?;
            // The first request is taken before connecting: openraft applies its backoff (after
            // failures) while producing a request, so a stream to an unreachable peer must not
            // fail before asking for one (it retried in a busy loop).
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, AppendAnswer>);
            };
            let input = futures::stream::once(std::future::ready(first)).chain(input);
            let owed = Arc::new(Owed::default());
            let counted = owed.clone();
            let target = self.target;
            // Ends at the first request that must not be sent.
            let requests = input.scan((), move |(), rpc| {
                if let Some(gap) = gap_in(&rpc) {
                    tracing::error!(target, "{gap}; ending the stream");
                    if let Ok(mut broken) = counted.broken.lock() {
                        *broken = Some(gap);
                    }
                    counted.more.notify_one();
                    return std::future::ready(None);
                }
                let message = rpc.to_message();
                counted.sent.fetch_add(1, Ordering::AcqRel);
                counted.more.notify_one();
                std::future::ready(Some(message))
            });
            let ttl = option.soft_ttl();
            let answers = match tokio::time::timeout(ttl, client.append_stream(requests)).await {
                Err(_) => {
                    return Err(network(format!(
                        "append stream to {target}: no answer within {ttl:?}"
                    )))
                }
                Ok(Err(status)) => return Err(status_to_rpc(&status)),
                Ok(Ok(response)) => response.into_inner(),
            };
            let answers =
                futures::stream::unfold(Some((answers, owed, 0u64)), move |state| async move {
                    let (mut answers, owed, received) = state?;
                    // The requests were cut short: the answers end with why.
                    let refused = |owed: &Owed| {
                        let gap = owed.broken.lock().ok().and_then(|b| b.clone())?;
                        Some((
                            Err(network(format!("append stream to {target}: {gap}"))),
                            None,
                        ))
                    };
                    let next = loop {
                        if let Some(end) = refused(&owed) {
                            return Some(end);
                        }
                        if owed.sent.load(Ordering::Acquire) > received {
                            break tokio::time::timeout(ttl, answers.message())
                                .await
                                .unwrap_or_else(|_| {
                                    Err(tonic::Status::deadline_exceeded(format!(
                                        "no append answer from {target} within {ttl:?}"
                                    )))
                                });
                        }
                        // Nothing owed: an idle stream is fine until the next request goes out.
                        tokio::select! {
                            next = answers.message() => break next,
                            () = owed.more.notified() => {}
                        }
                    };
                    match next {
                        Ok(Some(message)) => {
                            let answer = StreamAppendResult::from_message(message).map_err(network);
                            let go_on = answer.is_ok().then_some((answers, owed, received + 1));
                            Some((answer, go_on))
                        }
                        Ok(None) => refused(&owed),
                        Err(status) => Some((Err(status_to_rpc(&status)), None)),
                    }
                });
            Ok(Box::pin(answers) as BoxStream<'s, AppendAnswer>)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&req, &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = (vote, snapshot.meta);
        let first = SnapshotChunk {
            header: Some(header.to_message()),
            data: Bytes::new(),
        };
        let (_, meta) = header;
        let mut client = self
            .client
            .clone()
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let reader = snapshot
            .snapshot
            .into_reader()
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        let chunk = self.snapshot_chunk_bytes.max(1024);
        // Reads the file (or export stream) in a blocking thread; stops as soon as the RPC side
        // goes away.
        let producer = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut reader = reader;
            let mut sent = 0u64;
            if tx.blocking_send(first).is_err() {
                return Ok(sent);
            }
            loop {
                let mut buf = vec![0u8; chunk];
                let mut filled = 0;
                while filled < chunk {
                    let n = reader.read(&mut buf[filled..])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(sent);
                }
                buf.truncate(filled);
                sent += filled as u64;
                let msg = SnapshotChunk {
                    header: None,
                    data: Bytes::from(buf),
                };
                if tx.blocking_send(msg).is_err() {
                    return Ok(sent);
                }
            }
        });
        let target = self.target;
        let addr = self.addr.clone();
        tracing::info!(target, %addr, last_log_id = ?meta.last_log_id, "sending snapshot");
        let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let reply = tokio::select! {
            reply = call => reply,
            closed = cancel => {
                producer.abort();
                return Err(StreamingError::Closed(closed));
            }
        };
        match producer.await {
            Ok(Ok(bytes)) => tracing::info!(target, bytes, "snapshot sent"),
            Ok(Err(e)) => {
                return Err(StreamingError::Network(NetworkError::from_string(format!(
                    "reading snapshot: {e}"
                ))))
            }
            Err(e) => {
                return Err(StreamingError::Network(NetworkError::from_string(e)));
            }
        }
        let reply = reply.map_err(|s| match status_to_rpc(&s) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            _ => StreamingError::Network(NetworkError::from_string(s.message())),
        })?;
        SnapshotResponse::from_message(reply.into_inner())
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::pin::Pin;

    use openraft::RaftNetworkFactory;
    use tokio::net::TcpStream;
    use tonic::Request;
    use tonic::Response;
    use tonic::Status;
    use tonic::Streaming;

    use super::*;
    use crate::node::raft_service::parse;
    use crate::node::raft_service::payload;
    use crate::node::raft_service::raft_payload;
    use crate::raft::LogId;
    use rskv_proto::raft as pb;
    use rskv_proto::raft::raft_server::Raft;
    use rskv_proto::raft::raft_server::RaftServer;

    type Answers = Pin<Box<dyn Stream<Item = Result<pb::AppendStreamResponse, Status>> + Send>>;

    /// A follower stand-in: answers the first `answer` requests of an append stream with
    /// `Ok(Some(prev_log_id))`, then keeps the stream open without answering; a unary
    /// AppendEntries is answered with success.
    struct Stub {
        answer: usize,
    }

    #[tonic::async_trait]
    impl Raft for Stub {
        type AppendStreamStream = Answers;

        async fn append_stream(
            &self,
            request: Request<Streaming<pb::AppendEntriesRequest>>,
        ) -> Result<Response<Answers>, Status> {
            let answers = request
                .into_inner()
                .take(self.answer)
                .map(|payload| {
                    let rpc: AppendEntriesRequest<TypeConfig> = parse(Request::new(payload?))?;
                    let result: StreamAppendResult<TypeConfig> = Ok(rpc.prev_log_id);
                    raft_payload(&result)
                })
                .chain(futures::stream::pending());
            Ok(Response::new(Box::pin(answers)))
        }

        async fn append_entries(
            &self,
            request: Request<pb::AppendEntriesRequest>,
        ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
            let _: AppendEntriesRequest<TypeConfig> = parse(request)?;
            payload(&AppendEntriesResponse::<TypeConfig>::Success)
        }

        async fn vote(
            &self,
            _: Request<pb::VoteRequest>,
        ) -> Result<Response<pb::VoteResponse>, Status> {
            Err(Status::unimplemented("stub"))
        }

        async fn pre_vote(
            &self,
            _: Request<pb::VoteRequest>,
        ) -> Result<Response<pb::VoteResponse>, Status> {
            Err(Status::unimplemented("stub"))
        }

        async fn transfer_leader(
            &self,
            _: Request<pb::TransferLeaderRequest>,
        ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
            Err(Status::unimplemented("stub"))
        }

        async fn install_snapshot(
            &self,
            _: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<pb::SnapshotResponse>, Status> {
            Err(Status::unimplemented("stub"))
        }
    }

    /// The tests' Raft timers: 50 ms heartbeats, 300 ms minimum election timeout.
    fn liveness() -> PeerLiveness {
        PeerLiveness::new(Duration::from_millis(50), Duration::from_millis(300))
    }

    /// A stub follower served as the node serves its peer port, on a loopback port.
    async fn stub_server(answer: usize) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            crate::node::peer_server(liveness())
                .add_service(RaftServer::new(Stub { answer }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// The transport's connection to the peer at `addr`.
    async fn peer_at(addr: SocketAddr) -> PeerConnection {
        let addr = addr.to_string();
        NetworkFactory::new(1024, Dial::default(), liveness())
            .new_client(2, &NodeInfo::new(addr.clone(), addr))
            .await
    }

    /// A connection to a stub follower on a loopback port.
    async fn stub_peer(answer: usize) -> PeerConnection {
        peer_at(stub_server(answer).await).await
    }

    fn append(prev_index: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(prev_index)),
            leader_commit: None,
            entries: Vec::new(),
        }
    }

    fn log_id(index: u64) -> LogId {
        openraft::testing::log_id::<TypeConfig>(1, 1, index)
    }

    /// Requests 1..=n, then an input that stays open.
    fn requests(n: u64) -> impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin {
        futures::stream::iter((1..=n).map(append)).chain(futures::stream::pending())
    }

    /// Waits for answers to requests 1..=n, in order, each acknowledging its request.
    async fn expect_answers(answers: &mut BoxStream<'_, AppendAnswer>, n: u64) {
        for index in 1..=n {
            let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
                .await
                .expect("answered in time")
                .expect("an answer per request")
                .expect("no transport error");
            assert_eq!(answer, Ok(Some(log_id(index))));
        }
    }

    #[tokio::test]
    async fn append_stream_should_answer_in_order_and_stay_open_while_nothing_is_owed() {
        let mut peer = stub_peer(3).await;
        let option = RPCOption::new(Duration::from_millis(200));
        let mut answers = peer
            .stream_append(requests(3), option.clone())
            .await
            .expect("stream opens");
        expect_answers(&mut answers, 3).await;
        // Nothing is owed: an idle stream must not fail, however long past the TTL.
        let idle = tokio::time::timeout(option.soft_ttl() * 4, answers.next()).await;
        assert!(idle.is_err(), "idle stream yielded {:?}", idle.ok());
    }

    #[tokio::test]
    async fn append_stream_should_fail_when_an_owed_answer_does_not_come() {
        // The stub answers the first request only; the second is owed forever.
        let mut peer = stub_peer(1).await;
        let option = RPCOption::new(Duration::from_millis(200));
        let mut answers = peer
            .stream_append(requests(2), option.clone())
            .await
            .expect("stream opens");
        let first = answers.next().await.expect("an answer");
        assert!(first.is_ok(), "{first:?}");
        let second = tokio::time::timeout(Duration::from_secs(5), answers.next())
            .await
            .expect("the stall is reported well before 5 s")
            .expect("an item, not the end of the stream");
        assert!(
            matches!(second, Err(RPCError::Network(_))),
            "expected a network error, got {second:?}"
        );
        assert!(
            answers.next().await.is_none(),
            "the stream ends after its error"
        );
    }

    #[tokio::test]
    async fn append_stream_should_refuse_entries_that_do_not_follow_prev_log_id() {
        use openraft::entry::RaftEntry;
        let mut peer = stub_peer(8).await;
        let contiguous = AppendEntriesRequest {
            entries: vec![crate::raft::Entry::new_blank(log_id(2))],
            ..append(1)
        };
        assert_eq!(gap_in(&contiguous), None);
        assert_eq!(
            gap_in(&append(5)),
            None,
            "a heartbeat has no entries to check"
        );
        // What openraft built after a purge under a retrying stream: prev 979, entries from 1129.
        let gapped = AppendEntriesRequest {
            entries: vec![crate::raft::Entry::new_blank(log_id(1129))],
            ..append(979)
        };
        assert!(gap_in(&gapped).is_some());
        let input = futures::stream::iter([contiguous, gapped]).chain(futures::stream::pending());
        let option = RPCOption::new(Duration::from_millis(200));
        let mut answers = peer
            .stream_append(input, option)
            .await
            .expect("stream opens");
        let failed = loop {
            let item = tokio::time::timeout(Duration::from_secs(5), answers.next())
                .await
                .expect("the refusal is reported in time")
                .expect("an error before the stream ends");
            if let Err(e) = item {
                break e;
            }
        };
        assert!(
            matches!(&failed, RPCError::Network(_)) && failed.to_string().contains("1129"),
            "{failed}"
        );
        assert!(
            answers.next().await.is_none(),
            "the stream ends after its error"
        );
    }

    /// A relay to `target` whose first connection stops forwarding, but stays open, once `stall`
    /// is notified (as a TCP connection backing off its retransmissions across a healed link);
    /// later connections are relayed normally. Returns its address and the connections accepted.
    async fn stalling_relay(
        target: SocketAddr,
        stall: Arc<tokio::sync::Notify>,
    ) -> (SocketAddr, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let first = counted.fetch_add(1, Ordering::AcqRel) == 0;
                let stall = stall.clone();
                tokio::spawn(async move {
                    let mut outbound = TcpStream::connect(target).await.expect("relay target");
                    let relay = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    if !first {
                        let _ = relay.await;
                        return;
                    }
                    tokio::select! {
                        _ = relay => return,
                        () = stall.notified() => {}
                    }
                    // Both sockets stay open (owned by this task) and nothing moves.
                    std::future::pending::<()>().await;
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_stalled_peer_connection_should_be_dropped_and_the_peer_dialled_afresh() {
        let stall = Arc::new(tokio::sync::Notify::new());
        let (relay, accepted) = stalling_relay(stub_server(0).await, stall.clone()).await;
        let mut peer = peer_at(relay).await;
        let option = RPCOption::new(Duration::from_millis(200));
        peer.append_entries(append(1), option.clone())
            .await
            .expect("answered over the first connection");
        stall.notify_one();
        // Requests time out on the stalled connection until its PINGs go unanswered for
        // `ping_timeout`; then the channel drops it and the next request dials a new one. (With
        // the client's 10 s + 20 s keep-alive this waited half a minute.)
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let answered = loop {
            if peer.append_entries(append(1), option.clone()).await.is_ok() {
                break true;
            }
            if tokio::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            answered,
            "no answer within 10 s of the stall: the stalled connection was kept"
        );
        assert_eq!(accepted.load(Ordering::Acquire), 2, "one new connection");
    }

    #[tokio::test]
    async fn a_burst_of_cancelled_requests_should_not_close_a_peer_connection() {
        let addr = stub_server(0).await;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut h2, connection) = h2::client::handshake(tcp).await.expect("handshake");
        let request = || {
            http::Request::post(format!("http://{addr}/rskv.raft.v2.Raft/Vote"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request")
        };
        // What a stalled connection delivers when it resumes: streams opened and cancelled
        // (heartbeats that timed out), all in one write, before the server could accept them.
        for _ in 0..100 {
            let (response, stream) = h2.send_request(request(), false).expect("queue a request");
            drop((response, stream));
        }
        let connection = tokio::spawn(connection);
        // The connection still serves requests (the stub answers Vote with UNIMPLEMENTED).
        let mut h2 = h2.ready().await.expect("connection still open");
        let (response, mut body) = h2.send_request(request(), false).expect("send");
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .expect("empty message");
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("answered in time")
            .expect("answered, not reset by a GOAWAY");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"12"[..]),
            "the stub's UNIMPLEMENTED"
        );
        assert!(!connection.is_finished(), "the connection stays open");
    }
}
