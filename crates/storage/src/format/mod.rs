//! # Where openraft's types meet bytes
//!
//! rskv writes its own protobuf schema (`proto/storage.proto`, and the Raft messages of
//! `proto/raft.proto` built of it), never an encoding of openraft's types. This module is the one
//! place that maps between the two: every log entry, vote, log id, membership, snapshot header
//! and applied state rskv stores, and every Raft RPC it sends or receives, goes through a
//! [`Wire`] implementation here. openraft is an alpha pinned exactly; if its next version changes
//! one of these types, this module stops compiling (the mappings name every field and variant),
//! instead of a node failing at runtime to decode its own log.
//!
//! Decoding never panics and never guesses: bytes that are not the message, a required message
//! that is missing, a `oneof` with nothing set (a variant a newer rskv wrote) or an invalid
//! membership are a [`FormatError`] naming what was being read and what is wrong.
//!
//! The format version of each store, and how a store of another version is refused, is
//! [`version`]'s.

pub mod version;

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendError;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderError;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::type_config::alias::LeaderIdOf;
use openraft::EntryPayload;
use prost::Message;
use rskv_proto::raft as rpc;
use rskv_proto::storage as pb;

use crate::state_machine::AppliedState;
use crate::types::Command;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::Membership;
use crate::types::NodeId;
use crate::types::NodeInfo;
use crate::types::SessionStamp;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Why bytes could not be read as what they should hold. Each variant names the thing being
/// read, so an operator (or a test) sees which record is damaged and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes are not a protobuf encoding of the expected message (truncated, corrupt, or
    /// something else entirely).
    #[error("cannot decode {what}: {reason}")]
    Undecodable {
        /// What was being read.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// A message that must be present is not.
    #[error("cannot decode {what}: {field} is missing")]
    Missing {
        /// What was being read.
        what: &'static str,
        /// The absent field.
        field: &'static str,
    },
    /// A `oneof` has no known variant set: damaged, or written by a newer rskv with a variant
    /// this one does not know.
    #[error(
        "cannot decode {what}: no known {field} variant (damaged, or written by a newer rskv)"
    )]
    UnknownVariant {
        /// What was being read.
        what: &'static str,
        /// The `oneof`.
        field: &'static str,
    },
    /// The message decoded but its content is not valid (a membership whose voter has no node
    /// record).
    #[error("cannot decode {what}: {reason}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A value rskv stores or sends, and the protobuf message it is written as.
///
/// Implemented here for each openraft (and rskv) type that leaves the process; [`encode`] and
/// [`decode`] are the only ways to turn one into bytes and back.
pub trait Wire: Sized {
    /// The message of rskv's schema the value is written as.
    type Message: Message + Default;
    /// What the value is called in an error message.
    const WHAT: &'static str;
    /// The value as its message.
    fn to_message(&self) -> Self::Message;
    /// The value a message holds.
    ///
    /// # Errors
    /// When the message lacks something required or holds something invalid.
    fn from_message(message: Self::Message) -> Result<Self, FormatError>;
}

/// `value` in rskv's format.
pub fn encode<T: Wire>(value: &T) -> Vec<u8> {
    value.to_message().encode_to_vec()
}

/// The value `bytes` hold.
///
/// # Errors
/// When they are not a valid encoding of a `T` (see [`FormatError`]).
pub fn decode<T: Wire>(bytes: &[u8]) -> Result<T, FormatError> {
    let message = T::Message::decode(bytes).map_err(|e| FormatError::Undecodable {
        what: T::WHAT,
        reason: e.to_string(),
    })?;
    T::from_message(message)
}

/// A message field that must be set.
fn required<M>(field: Option<M>, what: &'static str, name: &'static str) -> Result<M, FormatError> {
    field.ok_or(FormatError::Missing { what, field: name })
}

// ---- storage.proto: log ids, votes, memberships ----

fn log_id_to(log_id: &LogId) -> pb::LogId {
    pb::LogId {
        term: log_id.leader_id.term,
        leader_node_id: log_id.leader_id.node_id,
        index: log_id.index,
    }
}

fn log_id_from(m: pb::LogId) -> LogId {
    LogId {
        leader_id: LeaderIdOf::<TypeConfig> {
            term: m.term,
            node_id: m.leader_node_id,
        },
        index: m.index,
    }
}

fn opt_log_id_to(log_id: Option<&LogId>) -> Option<pb::LogId> {
    log_id.map(log_id_to)
}

fn opt_log_id_from(m: Option<pb::LogId>) -> Option<LogId> {
    m.map(log_id_from)
}

fn vote_to(vote: &Vote) -> pb::Vote {
    pb::Vote {
        term: vote.leader_id.term,
        node_id: vote.leader_id.node_id,
        committed: vote.committed,
    }
}

fn vote_from(m: pb::Vote) -> Vote {
    Vote {
        leader_id: LeaderIdOf::<TypeConfig> {
            term: m.term,
            node_id: m.node_id,
        },
        committed: m.committed,
    }
}

/// A vote that must be present in `what`.
fn required_vote(
    m: Option<pb::Vote>,
    what: &'static str,
    name: &'static str,
) -> Result<Vote, FormatError> {
    required(m, what, name).map(vote_from)
}

fn membership_to(membership: &Membership) -> pb::Membership {
    pb::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|voters| pb::VoterSet {
                voter_ids: voters.iter().copied().collect(),
            })
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| {
                (
                    *id,
                    pb::NodeInfo {
                        addr: node.addr.clone(),
                        peer_addr: node.peer_addr.clone(),
                    },
                )
            })
            .collect(),
    }
}

fn membership_from(m: pb::Membership, what: &'static str) -> Result<Membership, FormatError> {
    let configs: Vec<BTreeSet<NodeId>> = m
        .configs
        .into_iter()
        .map(|set| set.voter_ids.into_iter().collect())
        .collect();
    let nodes: BTreeMap<NodeId, NodeInfo> = m
        .nodes
        .into_iter()
        .map(|(id, n)| (id, NodeInfo::new(n.addr, n.peer_addr)))
        .collect();
    Membership::new(configs, nodes).map_err(|e| FormatError::Invalid {
        what,
        reason: format!("invalid membership: {e}"),
    })
}

fn stored_membership_to(stored: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to(stored.log_id().as_ref()),
        membership: Some(membership_to(stored.membership())),
    }
}

fn stored_membership_from(
    m: pb::StoredMembership,
    what: &'static str,
) -> Result<StoredMembership, FormatError> {
    let membership = membership_from(m.membership.unwrap_or_default(), what)?;
    Ok(StoredMembership::new(opt_log_id_from(m.log_id), membership))
}

impl Wire for LogId {
    type Message = pb::LogId;
    const WHAT: &'static str = "log id";

    fn to_message(&self) -> pb::LogId {
        log_id_to(self)
    }

    fn from_message(m: pb::LogId) -> Result<LogId, FormatError> {
        Ok(log_id_from(m))
    }
}

/// The committed marker of the log store: `None` is a marker with no log id.
impl Wire for Option<LogId> {
    type Message = pb::Committed;
    const WHAT: &'static str = "committed log id";

    fn to_message(&self) -> pb::Committed {
        pb::Committed {
            log_id: opt_log_id_to(self.as_ref()),
        }
    }

    fn from_message(m: pb::Committed) -> Result<Option<LogId>, FormatError> {
        Ok(opt_log_id_from(m.log_id))
    }
}

impl Wire for Vote {
    type Message = pb::Vote;
    const WHAT: &'static str = "vote";

    fn to_message(&self) -> pb::Vote {
        vote_to(self)
    }

    fn from_message(m: pb::Vote) -> Result<Vote, FormatError> {
        Ok(vote_from(m))
    }
}

impl Wire for StoredMembership {
    type Message = pb::StoredMembership;
    const WHAT: &'static str = "stored membership";

    fn to_message(&self) -> pb::StoredMembership {
        stored_membership_to(self)
    }

    fn from_message(m: pb::StoredMembership) -> Result<StoredMembership, FormatError> {
        stored_membership_from(m, Self::WHAT)
    }
}

// ---- storage.proto: commands and entries ----

fn stamp_to(stamp: Option<&SessionStamp>) -> Option<pb::SessionStamp> {
    stamp.map(|s| pb::SessionStamp {
        id: s.id,
        seq: s.seq,
        first_unacked: s.first_unacked,
        now_ms: s.now_ms,
    })
}

fn stamp_from(m: Option<pb::SessionStamp>) -> Option<SessionStamp> {
    m.map(|s| SessionStamp {
        id: s.id,
        seq: s.seq,
        first_unacked: s.first_unacked,
        now_ms: s.now_ms,
    })
}

fn command_to(command: &Command) -> pb::Command {
    use pb::command::Command as C;
    let variant = match command {
        Command::Put {
            key,
            value,
            return_prev,
            session,
        } => C::Put(pb::Put {
            key: key.clone(),
            value: value.clone(),
            return_prev: *return_prev,
            session: stamp_to(session.as_ref()),
        }),
        Command::Delete { key, session } => C::Delete(pb::Delete {
            key: key.clone(),
            session: stamp_to(session.as_ref()),
        }),
        Command::BatchPut { pairs, session } => C::BatchPut(pb::BatchPut {
            pairs: pairs
                .iter()
                .map(|(key, value)| pb::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            session: stamp_to(session.as_ref()),
        }),
        Command::CompareAndSwap {
            key,
            expected,
            new_value,
            session,
        } => C::CompareAndSwap(pb::CompareAndSwap {
            key: key.clone(),
            expected: expected.clone(),
            new_value: new_value.clone(),
            session: stamp_to(session.as_ref()),
        }),
        Command::Group { commands } => C::Group(pb::Group {
            commands: commands.iter().map(command_to).collect(),
        }),
        Command::OpenSession {
            now_ms,
            ttl_ms,
            max_sessions,
        } => C::OpenSession(pb::OpenSession {
            now_ms: *now_ms,
            ttl_ms: *ttl_ms,
            max_sessions: *max_sessions,
        }),
        Command::CloseSession { id } => C::CloseSession(pb::CloseSession { id: *id }),
    };
    pb::Command {
        command: Some(variant),
    }
}

fn command_from(m: pb::Command) -> Result<Command, FormatError> {
    use pb::command::Command as C;
    let variant = m.command.ok_or(FormatError::UnknownVariant {
        what: "command",
        field: "command",
    })?;
    Ok(match variant {
        C::Put(p) => Command::Put {
            key: p.key,
            value: p.value,
            return_prev: p.return_prev,
            session: stamp_from(p.session),
        },
        C::Delete(d) => Command::Delete {
            key: d.key,
            session: stamp_from(d.session),
        },
        C::BatchPut(b) => Command::BatchPut {
            pairs: b.pairs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            session: stamp_from(b.session),
        },
        C::CompareAndSwap(c) => Command::CompareAndSwap {
            key: c.key,
            expected: c.expected,
            new_value: c.new_value,
            session: stamp_from(c.session),
        },
        C::Group(g) => Command::Group {
            commands: g
                .commands
                .into_iter()
                .map(command_from)
                .collect::<Result<_, _>>()?,
        },
        C::OpenSession(o) => Command::OpenSession {
            now_ms: o.now_ms,
            ttl_ms: o.ttl_ms,
            max_sessions: o.max_sessions,
        },
        C::CloseSession(c) => Command::CloseSession { id: c.id },
    })
}

impl Wire for Command {
    type Message = pb::Command;
    const WHAT: &'static str = "command";

    fn to_message(&self) -> pb::Command {
        command_to(self)
    }

    fn from_message(m: pb::Command) -> Result<Command, FormatError> {
        command_from(m)
    }
}

fn entry_to(entry: &Entry) -> pb::Entry {
    use pb::entry::Payload as P;
    let payload = match &entry.payload {
        EntryPayload::Blank => P::Blank(pb::Blank {}),
        EntryPayload::Normal(command) => P::Normal(command_to(command)),
        EntryPayload::Membership(membership) => P::Membership(membership_to(membership)),
    };
    pb::Entry {
        log_id: Some(log_id_to(&entry.log_id)),
        payload: Some(payload),
    }
}

fn entry_from(m: pb::Entry) -> Result<Entry, FormatError> {
    use pb::entry::Payload as P;
    const WHAT: &str = "log entry";
    let log_id = log_id_from(required(m.log_id, WHAT, "log_id")?);
    let payload = match m.payload {
        Some(P::Blank(pb::Blank {})) => EntryPayload::Blank,
        Some(P::Normal(command)) => EntryPayload::Normal(command_from(command)?),
        Some(P::Membership(membership)) => {
            EntryPayload::Membership(membership_from(membership, WHAT)?)
        }
        None => {
            return Err(FormatError::UnknownVariant {
                what: WHAT,
                field: "payload",
            })
        }
    };
    Ok(Entry { log_id, payload })
}

impl Wire for Entry {
    type Message = pb::Entry;
    const WHAT: &'static str = "log entry";

    fn to_message(&self) -> pb::Entry {
        entry_to(self)
    }

    fn from_message(m: pb::Entry) -> Result<Entry, FormatError> {
        entry_from(m)
    }
}

// ---- storage.proto: snapshot header, applied state ----

fn snapshot_meta_to(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to(meta.last_log_id.as_ref()),
        last_membership: Some(stored_membership_to(&meta.last_membership)),
    }
}

fn snapshot_meta_from(m: pb::SnapshotMeta) -> Result<SnapshotMeta, FormatError> {
    const WHAT: &str = "snapshot metadata";
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from(m.last_log_id),
        last_membership: stored_membership_from(
            required(m.last_membership, WHAT, "last_membership")?,
            WHAT,
        )?,
    })
}

impl Wire for SnapshotMeta {
    type Message = pb::SnapshotMeta;
    const WHAT: &'static str = "snapshot metadata";

    fn to_message(&self) -> pb::SnapshotMeta {
        snapshot_meta_to(self)
    }

    fn from_message(m: pb::SnapshotMeta) -> Result<SnapshotMeta, FormatError> {
        snapshot_meta_from(m)
    }
}

impl Wire for AppliedState {
    type Message = pb::AppliedState;
    const WHAT: &'static str = "applied state";

    fn to_message(&self) -> pb::AppliedState {
        pb::AppliedState {
            last_applied: opt_log_id_to(self.last_applied.as_ref()),
            membership: Some(stored_membership_to(&self.membership)),
        }
    }

    fn from_message(m: pb::AppliedState) -> Result<AppliedState, FormatError> {
        Ok(AppliedState {
            last_applied: opt_log_id_from(m.last_applied),
            membership: stored_membership_from(
                required(m.membership, Self::WHAT, "membership")?,
                Self::WHAT,
            )?,
        })
    }
}

// ---- raft.proto: the Raft RPCs ----

impl Wire for AppendEntriesRequest<TypeConfig> {
    type Message = rpc::AppendEntriesRequest;
    const WHAT: &'static str = "AppendEntries request";

    fn to_message(&self) -> rpc::AppendEntriesRequest {
        rpc::AppendEntriesRequest {
            vote: Some(vote_to(&self.vote)),
            prev_log_id: opt_log_id_to(self.prev_log_id.as_ref()),
            entries: self.entries.iter().map(entry_to).collect(),
            leader_commit: opt_log_id_to(self.leader_commit.as_ref()),
        }
    }

    /// Keys and values are copied out of the message: decoded from a gRPC request they are
    /// slices of its receive buffer, and the entries live on in the follower's recent-entries
    /// cache, each of which would otherwise keep a whole buffer alive (see
    /// [`Command::detached`]).
    fn from_message(m: rpc::AppendEntriesRequest) -> Result<Self, FormatError> {
        let entries = m
            .entries
            .into_iter()
            .map(|e| {
                let mut entry = entry_from(e)?;
                if let EntryPayload::Normal(command) = entry.payload {
                    entry.payload = EntryPayload::Normal(command.detached());
                }
                Ok(entry)
            })
            .collect::<Result<_, FormatError>>()?;
        Ok(AppendEntriesRequest {
            vote: required_vote(m.vote, Self::WHAT, "vote")?,
            prev_log_id: opt_log_id_from(m.prev_log_id),
            entries,
            leader_commit: opt_log_id_from(m.leader_commit),
        })
    }
}

impl Wire for AppendEntriesResponse<TypeConfig> {
    type Message = rpc::AppendEntriesResponse;
    const WHAT: &'static str = "AppendEntries response";

    fn to_message(&self) -> rpc::AppendEntriesResponse {
        use rpc::append_entries_response as r;
        let result = match self {
            AppendEntriesResponse::Success => r::Result::Success(r::Success {}),
            AppendEntriesResponse::PartialSuccess(matching) => {
                r::Result::PartialSuccess(r::PartialSuccess {
                    matching: opt_log_id_to(matching.as_ref()),
                })
            }
            AppendEntriesResponse::Conflict => r::Result::Conflict(r::Conflict {}),
            AppendEntriesResponse::HigherVote(vote) => r::Result::HigherVote(vote_to(vote)),
        };
        rpc::AppendEntriesResponse {
            result: Some(result),
        }
    }

    fn from_message(m: rpc::AppendEntriesResponse) -> Result<Self, FormatError> {
        use rpc::append_entries_response as r;
        Ok(match m.result {
            Some(r::Result::Success(r::Success {})) => AppendEntriesResponse::Success,
            Some(r::Result::PartialSuccess(p)) => {
                AppendEntriesResponse::PartialSuccess(opt_log_id_from(p.matching))
            }
            Some(r::Result::Conflict(r::Conflict {})) => AppendEntriesResponse::Conflict,
            Some(r::Result::HigherVote(vote)) => AppendEntriesResponse::HigherVote(vote_from(vote)),
            None => {
                return Err(FormatError::UnknownVariant {
                    what: Self::WHAT,
                    field: "result",
                })
            }
        })
    }
}

impl Wire for StreamAppendResult<TypeConfig> {
    type Message = rpc::AppendStreamResponse;
    const WHAT: &'static str = "AppendStream response";

    fn to_message(&self) -> rpc::AppendStreamResponse {
        use rpc::append_stream_response as r;
        let result = match self {
            Ok(matched) => r::Result::Matched(r::Matched {
                log_id: opt_log_id_to(matched.as_ref()),
            }),
            Err(StreamAppendError::Conflict(log_id)) => r::Result::Conflict(log_id_to(log_id)),
            Err(StreamAppendError::HigherVote(vote)) => r::Result::HigherVote(vote_to(vote)),
        };
        rpc::AppendStreamResponse {
            result: Some(result),
        }
    }

    fn from_message(m: rpc::AppendStreamResponse) -> Result<Self, FormatError> {
        use rpc::append_stream_response as r;
        Ok(match m.result {
            Some(r::Result::Matched(matched)) => Ok(opt_log_id_from(matched.log_id)),
            Some(r::Result::Conflict(log_id)) => {
                Err(StreamAppendError::Conflict(log_id_from(log_id)))
            }
            Some(r::Result::HigherVote(vote)) => {
                Err(StreamAppendError::HigherVote(vote_from(vote)))
            }
            None => {
                return Err(FormatError::UnknownVariant {
                    what: Self::WHAT,
                    field: "result",
                })
            }
        })
    }
}

impl Wire for VoteRequest<TypeConfig> {
    type Message = rpc::VoteRequest;
    const WHAT: &'static str = "vote request";

    fn to_message(&self) -> rpc::VoteRequest {
        rpc::VoteRequest {
            vote: Some(vote_to(&self.vote)),
            last_log_id: opt_log_id_to(self.last_log_id.as_ref()),
            leadership_transfer: self.leadership_transfer,
        }
    }

    fn from_message(m: rpc::VoteRequest) -> Result<Self, FormatError> {
        Ok(VoteRequest {
            vote: required_vote(m.vote, Self::WHAT, "vote")?,
            last_log_id: opt_log_id_from(m.last_log_id),
            leadership_transfer: m.leadership_transfer,
        })
    }
}

impl Wire for VoteResponse<TypeConfig> {
    type Message = rpc::VoteResponse;
    const WHAT: &'static str = "vote response";

    fn to_message(&self) -> rpc::VoteResponse {
        rpc::VoteResponse {
            vote: Some(vote_to(&self.vote)),
            vote_granted: self.vote_granted,
            last_log_id: opt_log_id_to(self.last_log_id.as_ref()),
        }
    }

    fn from_message(m: rpc::VoteResponse) -> Result<Self, FormatError> {
        Ok(VoteResponse {
            vote: required_vote(m.vote, Self::WHAT, "vote")?,
            vote_granted: m.vote_granted,
            last_log_id: opt_log_id_from(m.last_log_id),
        })
    }
}

impl Wire for TransferLeaderRequest<TypeConfig> {
    type Message = rpc::TransferLeaderRequest;
    const WHAT: &'static str = "transfer-leader request";

    fn to_message(&self) -> rpc::TransferLeaderRequest {
        rpc::TransferLeaderRequest {
            from_leader: Some(vote_to(self.from_leader())),
            to_node_id: *self.to_node_id(),
            last_log_id: opt_log_id_to(self.last_log_id()),
        }
    }

    fn from_message(m: rpc::TransferLeaderRequest) -> Result<Self, FormatError> {
        Ok(TransferLeaderRequest::new(
            required_vote(m.from_leader, Self::WHAT, "from_leader")?,
            m.to_node_id,
            opt_log_id_from(m.last_log_id),
        ))
    }
}

impl Wire for TransferLeaderResponse<TypeConfig> {
    type Message = rpc::TransferLeaderResponse;
    const WHAT: &'static str = "transfer-leader response";

    fn to_message(&self) -> rpc::TransferLeaderResponse {
        use rpc::transfer_leader_response as r;
        let result = match self {
            Ok(()) => r::Result::Accepted(r::Accepted {}),
            Err(TransferLeaderError::VoteChanged { expected, actual }) => {
                r::Result::VoteChanged(r::VoteChanged {
                    expected: Some(vote_to(expected)),
                    actual: Some(vote_to(actual)),
                })
            }
            Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
                r::Result::LogNotFlushed(r::LogNotFlushed {
                    expected: opt_log_id_to(expected.as_ref()),
                    actual: opt_log_id_to(actual.as_ref()),
                })
            }
        };
        rpc::TransferLeaderResponse {
            result: Some(result),
        }
    }

    fn from_message(m: rpc::TransferLeaderResponse) -> Result<Self, FormatError> {
        use rpc::transfer_leader_response as r;
        Ok(match m.result {
            Some(r::Result::Accepted(r::Accepted {})) => Ok(()),
            Some(r::Result::VoteChanged(v)) => Err(TransferLeaderError::VoteChanged {
                expected: required_vote(v.expected, Self::WHAT, "vote_changed.expected")?,
                actual: required_vote(v.actual, Self::WHAT, "vote_changed.actual")?,
            }),
            Some(r::Result::LogNotFlushed(l)) => Err(TransferLeaderError::LogNotFlushed {
                expected: opt_log_id_from(l.expected),
                actual: opt_log_id_from(l.actual),
            }),
            None => {
                return Err(FormatError::UnknownVariant {
                    what: Self::WHAT,
                    field: "result",
                })
            }
        })
    }
}

impl Wire for SnapshotResponse<TypeConfig> {
    type Message = rpc::SnapshotResponse;
    const WHAT: &'static str = "snapshot response";

    fn to_message(&self) -> rpc::SnapshotResponse {
        rpc::SnapshotResponse {
            vote: Some(vote_to(&self.vote)),
        }
    }

    fn from_message(m: rpc::SnapshotResponse) -> Result<Self, FormatError> {
        Ok(SnapshotResponse::new(required_vote(
            m.vote,
            Self::WHAT,
            "vote",
        )?))
    }
}

/// The header of a snapshot transfer: the leader's vote and the snapshot's metadata.
impl Wire for (Vote, SnapshotMeta) {
    type Message = rpc::SnapshotHeader;
    const WHAT: &'static str = "snapshot header";

    fn to_message(&self) -> rpc::SnapshotHeader {
        rpc::SnapshotHeader {
            vote: Some(vote_to(&self.0)),
            meta: Some(snapshot_meta_to(&self.1)),
        }
    }

    fn from_message(m: rpc::SnapshotHeader) -> Result<Self, FormatError> {
        Ok((
            required_vote(m.vote, Self::WHAT, "vote")?,
            snapshot_meta_from(required(m.meta, Self::WHAT, "meta")?)?,
        ))
    }
}
