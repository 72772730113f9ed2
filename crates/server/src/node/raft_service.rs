//! The receiving side of the Raft transport (`rskv.raft.v2.Raft`): decodes rskv's Raft messages
//! into openraft's and hands them to the local Raft instance. Incoming snapshots are streamed into
//! the storage's [`SnapshotInbox`], then installed from the file it returns; the service never
//! touches the snapshot directory.

use std::pin::Pin;
use std::sync::Arc;

use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::StreamAppendError;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use super::lease_hold::LeaseHold;
use super::LeaderContact;
use super::Node;
use crate::raft::NodeId;
use crate::raft::Raft as RaftHandle;
use crate::raft::Snapshot;
use crate::raft::SnapshotMeta;
use crate::raft::TypeConfig;
use crate::raft::Vote;
use rskv_proto::raft as pb;
use rskv_proto::raft::raft_server::Raft;
use rskv_proto::raft::SnapshotChunk;
use rskv_storage::format::Wire;
use rskv_storage::SnapshotData;
use rskv_storage::SnapshotInbox;

/// Implements `rskv.raft.v1.Raft` with the handles it needs, not the whole node: the Raft
/// instance, the snapshot inbox, the lease hold that may refuse votes, and the record of leader
/// contact it keeps.
pub struct RaftService {
    id: NodeId,
    raft: RaftHandle,
    inbox: Arc<SnapshotInbox>,
    lease_hold: Arc<LeaseHold>,
    leader_contact: Arc<LeaderContact>,
    /// Cancelled when the node stops serving peers: ends the long-lived append streams, which
    /// would otherwise hold the peer server's graceful shutdown open.
    stop: CancellationToken,
}

impl RaftService {
    /// The peer service of `node`, answering until `stop` is cancelled.
    pub fn new(node: &Node, stop: CancellationToken) -> RaftService {
        RaftService {
            id: node.id,
            raft: node.raft.clone(),
            inbox: node.snapshot_inbox.clone(),
            lease_hold: node.lease_hold.clone(),
            leader_contact: node.leader_contact.clone(),
            stop,
        }
    }
}

impl RaftService {
    /// While the node's lease hold lasts ([`super::lease_hold`]), the answer to a vote or pre-vote
    /// request: not granted, with this node's vote and last log id, as openraft answers while a
    /// leader's lease runs. `None` when openraft should answer.
    async fn held_back(
        &self,
        rpc: &VoteRequest<TypeConfig>,
        what: &'static str,
    ) -> Option<Result<Response<pb::VoteResponse>, Status>> {
        let left = self.lease_hold.refuses(rpc.leadership_transfer)?;
        // At most one per candidate and election round while the hold lasts: a few lines.
        tracing::info!(candidate = %rpc.vote, ?left, "{what} refused: restarted within a lease");
        let refusal = self
            .raft
            .with_raft_state(|state| {
                VoteResponse::<TypeConfig>::new(
                    state.vote_ref(),
                    state.log_ids.last().cloned(),
                    false,
                )
            })
            .await
            .map_err(|e| Status::unavailable(format!("raft stopped: {e}")));
        Some(refusal.and_then(|response| payload(&response)))
    }
}

/// The answers of an append stream, one per request, in order.
type AppendAnswers =
    Pin<Box<dyn Stream<Item = Result<pb::AppendStreamResponse, Status>> + Send + 'static>>;

/// A Raft message as its wire message ([`rskv_storage::format`]); shared with the transport's
/// test stub.
pub(crate) fn raft_payload<T: Wire>(value: &T) -> Result<T::Message, Status> {
    Ok(value.to_message())
}

/// [`raft_payload`] as a unary answer.
pub(crate) fn payload<T: Wire>(value: &T) -> Result<Response<T::Message>, Status> {
    raft_payload(value).map(Response::new)
}

/// The openraft message a unary Raft request carries; one that cannot be mapped (a required
/// field missing, an unknown variant) is the sender's error.
pub(crate) fn parse<T: Wire>(request: Request<T::Message>) -> Result<T, Status> {
    T::from_message(request.into_inner())
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

#[tonic::async_trait]
impl Raft for RaftService {
    type AppendStreamStream = AppendAnswers;

    async fn append_stream(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        // Requests end at the first transport or decode error; openraft answers those before it,
        // then the stream ends and the leader starts a new one.
        let requests = futures::stream::unfold(request.into_inner(), |mut incoming| async move {
            let message = match incoming.next().await? {
                Ok(message) => message,
                Err(status) => {
                    tracing::debug!(%status, "append stream ended by the leader's side");
                    return None;
                }
            };
            match AppendEntriesRequest::<TypeConfig>::from_message(message) {
                Ok(rpc) => Some((rpc, incoming)),
                Err(e) => {
                    // A leader of another version retries with a new stream every time.
                    static UNDECODABLE: rskv_storage::log_throttle::LogThrottle =
                        rskv_storage::log_throttle::LogThrottle::every_interval();
                    rskv_storage::warn_throttled!(UNDECODABLE, 0, error = %e, "undecodable append in stream; ending it");
                    None
                }
            }
        });
        let contact = self.leader_contact.clone();
        let answers = self
            .raft
            .stream_append(Box::pin(requests))
            .map(move |answer| match answer {
                Ok(result) => {
                    // A leader of this node's term or later: an older one is told of the newer
                    // vote and is no contact with a leader.
                    if !matches!(result, Err(StreamAppendError::HigherVote(_))) {
                        contact.touch();
                    }
                    raft_payload(&result)
                }
                Err(fatal) => Err(Status::unavailable(format!("raft stopped: {fatal}"))),
            });
        let answers = futures::StreamExt::take_until(answers, self.stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(answers)))
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = parse(request)?;
        let resp = self
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.leader_contact.touch();
        }
        payload(&resp)
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc: VoteRequest<TypeConfig> = parse(request)?;
        if let Some(refusal) = self.held_back(&rpc, "vote").await {
            return refusal;
        }
        let resp = self
            .raft
            .vote(rpc)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        payload(&resp)
    }

    async fn pre_vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc: VoteRequest<TypeConfig> = parse(request)?;
        if let Some(refusal) = self.held_back(&rpc, "pre-vote").await {
            return refusal;
        }
        let resp = self
            .raft
            .pre_vote(rpc)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        payload(&resp)
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = parse(request)?;
        let resp = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        payload(&resp)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let header = first
            .header
            .ok_or_else(|| Status::invalid_argument("snapshot stream without a header"))?;
        let (vote, meta) = <(Vote, SnapshotMeta)>::from_message(header)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot header: {e}")))?;
        tracing::info!(node_id = self.id, last_log_id = ?meta.last_log_id, "receiving snapshot");
        let mut incoming = self
            .inbox
            .receive(first.data)
            .await
            .map_err(|e| Status::internal(format!("write snapshot: {e}")))?;
        while let Some(chunk) = stream.next().await {
            incoming
                .write(chunk?.data)
                .await
                .map_err(|e| Status::internal(format!("write snapshot: {e}")))?;
        }
        tracing::info!(
            node_id = self.id,
            bytes = incoming.received(),
            "snapshot received; installing"
        );
        let (snapshot_file, leftover) = incoming
            .finish()
            .await
            .map_err(|e| Status::internal(format!("open snapshot: {e}")))?;
        let resp = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: SnapshotData::File(snapshot_file),
                },
            )
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        leftover.remove().await;
        payload(&resp)
    }
}
