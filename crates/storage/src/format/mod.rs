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
                        learner_until_promoted: node.learner_until_promoted,
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
        .map(|(id, n)| {
            let info = NodeInfo {
                addr: n.addr,
                peer_addr: n.peer_addr,
                learner_until_promoted: n.learner_until_promoted,
            };
            (id, info)
        })
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
        Command::Txn(txn) => C::Txn((**txn).clone()),
        Command::Compact { revision } => C::Compact(pb::Compact {
            revision: *revision,
        }),
        Command::LeaseGrant { id, ttl } => C::LeaseGrant(pb::LeaseGrant { id: *id, ttl: *ttl }),
        Command::LeaseRevoke { id } => C::LeaseRevoke(pb::LeaseRevoke { id: *id }),
        Command::Auth(change) => C::Auth(change.clone()),
        Command::Alarm {
            member,
            alarm,
            activate,
        } => C::Alarm(pb::AlarmChange {
            member: *member,
            alarm: *alarm,
            activate: *activate,
        }),
        Command::Authorized {
            user,
            revision,
            command,
        } => C::Authorized(Box::new(pb::Authorized {
            user: user.clone(),
            auth_revision: *revision,
            command: Some(Box::new(command_to(command))),
        })),
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
        C::Txn(txn) => Command::Txn(Box::new(txn)),
        C::Compact(c) => Command::Compact {
            revision: c.revision,
        },
        C::LeaseGrant(g) => Command::LeaseGrant {
            id: g.id,
            ttl: g.ttl,
        },
        C::LeaseRevoke(r) => Command::LeaseRevoke { id: r.id },
        C::Auth(change) => Command::Auth(change),
        C::Alarm(a) => Command::Alarm {
            member: a.member,
            alarm: a.alarm,
            activate: a.activate,
        },
        C::Authorized(a) => Command::Authorized {
            user: a.user,
            revision: a.auth_revision,
            command: Box::new(command_from(*a.command.ok_or(FormatError::Missing {
                what: "authorized command",
                field: "command",
            })?)?),
        },
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

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use bytes::Bytes;
    use openraft::entry::RaftEntry;

    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        openraft::testing::log_id::<TypeConfig>(term, node, index)
    }

    fn stamp() -> SessionStamp {
        SessionStamp {
            id: 3,
            seq: 41,
            first_unacked: 40,
            now_ms: 1_765_000_000_000,
        }
    }

    /// A joint membership with a learner: every part of the mapping has something to carry.
    fn membership() -> Membership {
        let nodes: BTreeMap<NodeId, NodeInfo> = (1..=4)
            .map(|id| {
                let mut info =
                    NodeInfo::new(format!("10.0.0.{id}:7411"), format!("10.0.0.{id}:7421"));
                // Node 4 is the learner; added as one by request, it stays one.
                info.learner_until_promoted = id == 4;
                (id, info)
            })
            .collect();
        Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([1, 2, 3])],
            nodes,
        )
        .expect("valid membership")
    }

    /// Every variant of [`Command`], with and without sessions, empty and absent values apart.
    fn commands() -> Vec<Command> {
        let put = Command::Put {
            key: b("k"),
            value: b("v"),
            return_prev: true,
            session: None,
        };
        vec![
            put.clone(),
            put.clone().in_session(stamp()),
            Command::Put {
                key: b(""),
                value: b(""),
                return_prev: false,
                session: None,
            },
            Command::Delete {
                key: b("gone"),
                session: None,
            },
            Command::Delete {
                key: b("gone"),
                session: Some(stamp()),
            },
            Command::BatchPut {
                pairs: vec![(b("a"), b("1")), (b("a"), b("2")), (b("b"), b(""))],
                session: Some(stamp()),
            },
            Command::CompareAndSwap {
                key: b("c"),
                expected: None,
                new_value: b("x"),
                session: None,
            },
            Command::CompareAndSwap {
                key: b("c"),
                expected: Some(b("")),
                new_value: b("y"),
                session: Some(stamp()),
            },
            Command::Group {
                commands: vec![
                    put.clone(),
                    Command::Group { commands: vec![] },
                    Command::CloseSession { id: 9 },
                ],
            },
            Command::OpenSession {
                now_ms: 1_765_000_000_001,
                ttl_ms: 60_000,
                max_sessions: 10_000,
            },
            Command::CloseSession { id: u64::MAX },
            Command::Txn(Box::new(crate::mvcc::tests::sample_txn())),
            Command::Compact { revision: 42 },
            Command::LeaseGrant {
                id: 0x1234,
                ttl: 60,
            },
            Command::LeaseRevoke { id: 0x1234 },
            Command::Auth(rskv_proto::storage::AuthChange {
                op: rskv_proto::storage::auth_change::Op::UserAdd as i32,
                user: "alice".into(),
                password_hash: "$2b$04$x".into(),
                ..Default::default()
            }),
        ]
    }

    fn round_trip<T: Wire + PartialEq + Debug>(value: &T) {
        let bytes = encode(value);
        let back: T = decode(&bytes).unwrap_or_else(|e| panic!("{value:?}: {e}"));
        assert_eq!(&back, value);
        // The same value, the same bytes (maps are ordered): a store written twice is identical.
        assert_eq!(encode(&back), bytes);
    }

    #[test]
    fn every_stored_type_should_round_trip() {
        for l in [log_id(0, 0, 0), log_id(7, 3, u64::MAX)] {
            round_trip(&l);
            round_trip(&Some(l));
        }
        round_trip(&None::<LogId>);
        for v in [Vote::new(5, 2), Vote::new_committed(6, 3), Vote::new(0, 0)] {
            round_trip(&v);
        }
        for c in commands() {
            round_trip(&c);
        }
        let entries = [
            Entry::new_blank(log_id(1, 1, 1)),
            Entry::new_membership(log_id(1, 1, 2), membership()),
            Entry::new_membership(log_id(1, 1, 3), Membership::default()),
        ]
        .into_iter()
        .chain(
            commands()
                .into_iter()
                .enumerate()
                .map(|(i, c)| Entry::new_normal(log_id(2, 3, 10 + i as u64), c)),
        );
        for e in entries {
            round_trip(&e);
        }
        for stored in [
            StoredMembership::default(),
            StoredMembership::new(Some(log_id(1, 1, 2)), membership()),
        ] {
            round_trip(&stored);
            round_trip(&SnapshotMeta {
                last_log_id: Some(log_id(4, 2, 99)),
                last_membership: stored.clone(),
            });
            round_trip(&AppliedState {
                last_applied: Some(log_id(4, 2, 99)),
                membership: stored,
            });
        }
        round_trip(&SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
        });
        round_trip(&AppliedState::default());
    }

    #[test]
    fn every_raft_message_should_round_trip() {
        let entries = vec![
            Entry::new_blank(log_id(3, 1, 5)),
            Entry::new_membership(log_id(3, 1, 6), membership()),
            Entry::new_normal(log_id(3, 1, 7), commands().remove(1)),
        ];
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 2, 4)),
            entries,
            leader_commit: Some(log_id(2, 2, 3)),
        };
        let back: AppendEntriesRequest<TypeConfig> = decode(&encode(&append)).expect("decode");
        assert_eq!(
            (
                back.vote,
                back.prev_log_id,
                back.leader_commit,
                back.entries
            ),
            (
                append.vote,
                append.prev_log_id,
                append.leader_commit,
                append.entries
            )
        );
        let heartbeat = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let back: AppendEntriesRequest<TypeConfig> = decode(&encode(&heartbeat)).expect("decode");
        assert!(
            back.prev_log_id.is_none() && back.leader_commit.is_none() && back.entries.is_empty()
        );

        for r in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::PartialSuccess(Some(log_id(1, 1, 1))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(9, 2)),
        ] {
            round_trip(&r);
        }
        let results: [StreamAppendResult<TypeConfig>; 4] = [
            Ok(None),
            Ok(Some(log_id(1, 1, 8))),
            Err(StreamAppendError::Conflict(log_id(1, 1, 7))),
            Err(StreamAppendError::HigherVote(Vote::new_committed(9, 2))),
        ];
        for r in results {
            round_trip(&r);
        }
        for leadership_transfer in [false, true] {
            round_trip(&VoteRequest::<TypeConfig> {
                vote: Vote::new(4, 3),
                last_log_id: Some(log_id(3, 1, 7)),
                leadership_transfer,
            });
        }
        round_trip(&VoteRequest::<TypeConfig>::new(Vote::new(1, 1), None));
        round_trip(&VoteResponse::<TypeConfig>::new(
            Vote::new(4, 3),
            Some(log_id(3, 1, 7)),
            true,
        ));
        round_trip(&VoteResponse::<TypeConfig>::new(
            Vote::new(4, 2),
            None,
            false,
        ));
        round_trip(&TransferLeaderRequest::<TypeConfig>::new(
            Vote::new_committed(5, 1),
            2,
            Some(log_id(5, 1, 40)),
        ));
        round_trip(&TransferLeaderRequest::<TypeConfig>::new(
            Vote::new_committed(5, 1),
            3,
            None,
        ));
        let answers: [TransferLeaderResponse<TypeConfig>; 4] = [
            Ok(()),
            Err(TransferLeaderError::VoteChanged {
                expected: Vote::new_committed(5, 1),
                actual: Vote::new(6, 2),
            }),
            Err(TransferLeaderError::LogNotFlushed {
                expected: Some(log_id(5, 1, 40)),
                actual: None,
            }),
            Err(TransferLeaderError::LogNotFlushed {
                expected: None,
                actual: Some(log_id(5, 1, 39)),
            }),
        ];
        for a in answers {
            round_trip(&a);
        }
        round_trip(&SnapshotResponse::<TypeConfig>::new(Vote::new_committed(
            5, 1,
        )));
        round_trip(&(
            Vote::new_committed(5, 1),
            SnapshotMeta {
                last_log_id: Some(log_id(5, 1, 40)),
                last_membership: StoredMembership::new(Some(log_id(1, 1, 2)), membership()),
            },
        ));
    }

    /// Keys and values a follower receives are its own, not slices of the request's buffer.
    #[test]
    fn received_entries_should_not_share_the_request_buffer() {
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: None,
            entries: vec![Entry::new_normal(log_id(3, 1, 1), commands().remove(0))],
            leader_commit: None,
        };
        let buffer = Bytes::from(encode(&append));
        let message = rpc::AppendEntriesRequest::decode(buffer.clone()).expect("decode");
        let inside = |b: &Bytes| {
            let start = buffer.as_ptr() as usize;
            (start..start + buffer.len()).contains(&(b.as_ptr() as usize))
        };
        let Some(pb::entry::Payload::Normal(pb::Command {
            command: Some(pb::command::Command::Put(put)),
        })) = &message.entries[0].payload
        else {
            panic!("a put");
        };
        assert!(inside(&put.key), "prost decodes slices of the buffer");
        let back = AppendEntriesRequest::<TypeConfig>::from_message(message).expect("map");
        let EntryPayload::Normal(Command::Put { key, value, .. }) = &back.entries[0].payload else {
            panic!("a put");
        };
        assert!(
            !inside(key) && !inside(value),
            "the mapping copies them out"
        );
    }

    #[test]
    fn damaged_bytes_should_be_an_error_naming_what_was_read() {
        let entry = encode(&Entry::new_normal(log_id(1, 1, 1), commands().remove(1)));
        // Every truncation of an entry is refused or reads as something else, never a panic.
        for cut in 0..entry.len() {
            let _ = decode::<Entry>(&entry[..cut]);
        }
        let err = decode::<Entry>(&entry[..entry.len() - 3]).expect_err("truncated");
        assert!(
            matches!(
                err,
                FormatError::Undecodable {
                    what: "log entry",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("cannot decode log entry"),
            "{err}"
        );
        let err = decode::<Vote>(&[0xff, 0xff, 0xff]).expect_err("garbage");
        assert!(err.to_string().contains("cannot decode vote"), "{err}");
        // MessagePack of an entry, as rskv wrote before: not a protobuf entry.
        let msgpack = [
            0x92, 0x93, 0x01, 0x01, 0x01, 0xa5, b'B', b'l', b'a', b'n', b'k',
        ];
        assert!(decode::<Entry>(&msgpack).is_err());
    }

    #[test]
    fn missing_required_fields_and_unknown_variants_should_be_refused() {
        // An entry without a log id, or without a payload (a newer rskv's payload kind).
        let no_log_id = pb::Entry {
            log_id: None,
            payload: Some(pb::entry::Payload::Blank(pb::Blank {})),
        };
        let err = decode::<Entry>(&no_log_id.encode_to_vec()).expect_err("no log id");
        assert_eq!(
            err,
            FormatError::Missing {
                what: "log entry",
                field: "log_id"
            }
        );
        let no_payload = pb::Entry {
            log_id: Some(log_id_to(&log_id(1, 1, 1))),
            payload: None,
        };
        let err = decode::<Entry>(&no_payload.encode_to_vec()).expect_err("no payload");
        assert!(err.to_string().contains("newer rskv"), "{err}");
        // A command with no variant, nested in a group.
        let group = pb::Command {
            command: Some(pb::command::Command::Group(pb::Group {
                commands: vec![pb::Command { command: None }],
            })),
        };
        let err = decode::<Command>(&group.encode_to_vec()).expect_err("unknown command");
        assert!(matches!(err, FormatError::UnknownVariant { .. }), "{err}");
        // RPCs without their vote.
        let err = decode::<VoteRequest<TypeConfig>>(&rpc::VoteRequest::default().encode_to_vec())
            .expect_err("no vote");
        assert_eq!(
            err.to_string(),
            "cannot decode vote request: vote is missing"
        );
        let err = decode::<(Vote, SnapshotMeta)>(
            &rpc::SnapshotHeader {
                vote: Some(vote_to(&Vote::new(1, 1))),
                meta: None,
            }
            .encode_to_vec(),
        )
        .expect_err("no meta");
        assert!(err.to_string().contains("meta is missing"), "{err}");
        let err = decode::<AppendEntriesResponse<TypeConfig>>(&[]).expect_err("empty answer");
        assert!(matches!(err, FormatError::UnknownVariant { .. }), "{err}");
        let err = decode::<AppliedState>(&[]).expect_err("no membership");
        assert!(err.to_string().contains("membership is missing"), "{err}");
    }

    #[test]
    fn a_membership_whose_voter_has_no_record_should_be_refused() {
        let mut m = membership_to(&membership());
        m.nodes.remove(&3);
        let entry = pb::Entry {
            log_id: Some(log_id_to(&log_id(1, 1, 2))),
            payload: Some(pb::entry::Payload::Membership(m)),
        };
        let err = decode::<Entry>(&entry.encode_to_vec()).expect_err("voter without record");
        assert!(
            matches!(
                err,
                FormatError::Invalid {
                    what: "log entry",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("invalid membership"), "{err}");
    }

    /// A member record's bytes are in every membership entry of every log and snapshot: the
    /// learner-until-promoted mark is field 3, and a record written before it (fields 1 and 2
    /// only) reads as a learner that promotes itself once caught up, as all did then.
    #[test]
    fn a_member_record_should_keep_its_encoding() {
        let mut learner = NodeInfo::new("h:1", "h:2");
        learner.learner_until_promoted = true;
        let m = Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, NodeInfo::new("a:1", "a:2")), (2, learner)]),
        )
        .expect("valid membership");
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let bytes = membership_to(&m).encode_to_vec();
        assert_eq!(
            hex(&bytes),
            "0a030a0101\
             120e0801120a0a03613a311203613a32\
             12100802120c0a03683a311203683a321801"
        );
        let back = membership_from(
            pb::Membership::decode(bytes.as_slice()).expect("decode"),
            "m",
        )
        .expect("valid");
        assert_eq!(back, m);
        let old =
            pb::NodeInfo::decode(&[0x0a, 0x03, b'h', b':', b'1', 0x12, 0x03, b'h', b':', b'2'][..])
                .expect("a record without field 3");
        assert!(!old.learner_until_promoted);
    }
}
