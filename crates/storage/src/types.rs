//! The replicated vocabulary: the openraft type configuration, the command that travels through
//! the log ([`Command`]) and what applying it answers ([`CommandResponse`]).
//!
//! It lives at the bottom, with storage, because the log stores it and the state machine applies
//! it; the Raft layer above (`rskv_server::raft`) re-exports it and adds the transport.
//!
//! None of these types has an encoding of its own: what is stored or sent is rskv's protobuf
//! schema, mapped to and from these types in [`crate::format`].

use std::fmt;

use bytes::Bytes;
use prost::Message;
pub use rskv_proto::etcd::etcdserverpb::TxnRequest;
pub use rskv_proto::etcd::etcdserverpb::TxnResponse;

openraft::declare_raft_types!(
    /// The openraft type configuration of rskv: u64 node ids, [`NodeInfo`] (client and peer
    /// addresses) as the membership record, and rskv's own command and response.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        Node = NodeInfo,
);

/// What the membership records about a node: where clients reach it (for NOT_LEADER hints) and
/// where peers send Raft traffic. Two ports, as in etcd, so client load and client connection
/// limits can never starve replication and elections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Client API address (`host:port`).
    pub addr: String,
    /// Raft transport address (`host:port`).
    pub peer_addr: String,
    /// Set for a learner an operator added as one (etcd's `MemberAdd` with `isLearner`), which
    /// etcd's tools then promote themselves: joining, the node does not have itself promoted
    /// when it has caught up, as every other joining node does.
    pub learner_until_promoted: bool,
}

impl NodeInfo {
    /// A record with both addresses.
    pub fn new(addr: impl Into<String>, peer_addr: impl Into<String>) -> NodeInfo {
        NodeInfo {
            addr: addr.into(),
            peer_addr: peer_addr.into(),
            learner_until_promoted: false,
        }
    }
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (peer {})", self.addr, self.peer_addr)
    }
}

/// Node identifier; stable across restarts and unique within a cluster.
pub type NodeId = u64;
/// A log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A log id (term + index) as rskv uses it.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote record.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A cluster membership: voter sets (two during a joint change) and every member's record.
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
/// Membership together with the log id that introduced it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot: its metadata and its data (a file, or a durable engine's export stream).
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, crate::SnapshotData>;

/// A state-machine command: the only way data changes in rskv.
///
/// Every variant is deterministic given the state it is applied to, so every replica that
/// applies the same log reaches the same state.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        /// The key to set.
        key: Bytes,
        /// Its new value.
        value: Bytes,
        /// Read the previous value (for the reply and the watch event). Off by default: the
        /// lookup is a read before every write on every node (7% of the leader's CPU under load).
        return_prev: bool,
        /// Set when the write belongs to a client session: it is then applied at most once
        /// however often it is retried.
        session: Option<SessionStamp>,
    },
    /// Remove `key` (a no-op if absent).
    Delete {
        /// The key to remove.
        key: Bytes,
        /// Set when the write belongs to a client session: it is then applied at most once
        /// however often it is retried.
        session: Option<SessionStamp>,
    },
    /// Set several keys atomically, in order (a later pair wins over an earlier one).
    BatchPut {
        /// Key-value pairs, applied in order.
        pairs: Vec<(Bytes, Bytes)>,
        /// Set when the write belongs to a client session: it is then applied at most once
        /// however often it is retried.
        session: Option<SessionStamp>,
    },
    /// Set `key` to `new_value` only if it currently holds `expected` (`None`: is absent).
    CompareAndSwap {
        /// The key to test and set.
        key: Bytes,
        /// The value required for the swap; `None` requires the key to be absent.
        expected: Option<Bytes>,
        /// The value written when the comparison holds.
        new_value: Bytes,
        /// Set when the write belongs to a client session: it is then applied at most once
        /// however often it is retried.
        session: Option<SessionStamp>,
    },
    /// Independent commands from different requests, carried by one log entry (the server groups
    /// writes that arrive while earlier ones are being replicated). Each is applied in order, as
    /// if it had its own entry at the same index, and answered with its own response.
    Group {
        /// The commands, in apply order.
        commands: Vec<Command>,
    },
    /// Opens a client session (see [`crate::state_machine::sessions`]); answered with
    /// its id.
    OpenSession {
        /// The leader's wall-clock time at proposal, Unix milliseconds: the log's clock.
        now_ms: u64,
        /// Idle time after which the session expires (the leader's `sessions.ttl_ms`), fixed
        /// here so every node expires it alike.
        ttl_ms: u64,
        /// Open sessions the table may hold (the leader's `sessions.max_sessions`).
        max_sessions: u64,
    },
    /// Closes a client session (a client that is done with it).
    CloseSession {
        /// The session to close.
        id: u64,
    },
    /// An etcd transaction: comparisons, then the success or the failure operations, all at one
    /// revision (see [`crate::mvcc`]). etcd's Put and DeleteRange travel as a transaction of one
    /// operation and no comparison. Carried as the request etcd's clients send.
    Txn(Box<TxnRequest>),
    /// Removes the history before `revision` (etcd's compaction).
    Compact {
        /// The new compacted revision.
        revision: i64,
    },
    /// Creates a lease.
    LeaseGrant {
        /// The lease id, chosen by the proposer (never 0).
        id: i64,
        /// Time-to-live in seconds.
        ttl: i64,
    },
    /// Ends a lease, deleting the keys attached to it at one revision (a client's revoke, or an
    /// expiry the leader decided).
    LeaseRevoke {
        /// The lease id.
        id: i64,
    },
    /// A change of the auth store (etcd's Auth API, see [`crate::state_machine::auth`]).
    Auth(rskv_proto::storage::AuthChange),
    /// Raises (`activate`) or clears etcd alarm `alarm` for `member` (see
    /// [`crate::state_machine::alarms`]).
    Alarm {
        /// The member the alarm is about.
        member: u64,
        /// etcd's `AlarmType` value.
        alarm: i32,
        /// Raise, or clear.
        activate: bool,
    },
    /// A client's write with who sent it (auth enabled): `user`'s permissions as of auth
    /// `revision` allowed `command` when it was proposed. Applied under a later auth revision
    /// it is checked again, so a permission revoked in between refuses it, on every member
    /// alike (etcd checks at apply too).
    Authorized {
        /// The user the write came as.
        user: String,
        /// The auth revision its check saw.
        revision: u64,
        /// The write.
        command: Box<Command>,
    },
}

/// What makes a write part of a client session (see
/// [`crate::state_machine::sessions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStamp {
    /// The session, from [`Command::OpenSession`].
    pub id: u64,
    /// The write's number within the session.
    pub seq: u64,
    /// The lowest sequence whose reply the client has not received.
    pub first_unacked: u64,
    /// The leader's wall-clock time at proposal, Unix milliseconds: the log's clock.
    pub now_ms: u64,
}

impl Command {
    /// The write as part of a client session (commands that are not writes are returned as
    /// they are).
    pub fn in_session(mut self, stamp: SessionStamp) -> Command {
        if let Some(slot) = self.session_slot() {
            *slot = Some(stamp);
        }
        self
    }

    /// Takes the write's session stamp, if it has one, leaving the write without it.
    pub fn take_session(&mut self) -> Option<SessionStamp> {
        self.session_slot().and_then(Option::take)
    }

    fn session_slot(&mut self) -> Option<&mut Option<SessionStamp>> {
        match self {
            Command::Put { session, .. }
            | Command::Delete { session, .. }
            | Command::BatchPut { session, .. }
            | Command::CompareAndSwap { session, .. } => Some(session),
            Command::Authorized { command, .. } => command.session_slot(),
            _ => None,
        }
    }

    /// The write itself, without who sent it ([`Command::Authorized`]).
    pub fn unwrapped(&self) -> &Command {
        match self {
            Command::Authorized { command, .. } => command.unwrapped(),
            other => other,
        }
    }

    /// Client writes the command carries: each command of a group, else one.
    pub fn writes(&self) -> usize {
        match self {
            Command::Group { commands } => commands.len(),
            _ => 1,
        }
    }

    /// The command with its keys and values copied into buffers of their own.
    ///
    /// Keys and values decoded from a client request are slices of the request's receive buffer
    /// (8 KiB or more per RPC), and a proposed command lives on in the leader's recent-log cache
    /// and its watch history: every retained write kept a whole buffer alive (a leader under
    /// 64-client puts held 320-620 MB, 130-210 MB with copies), and the churn of those buffers
    /// had the allocator zero fresh pages (15% of the leader's CPU). Copying a few hundred bytes
    /// is cheaper.
    pub fn detached(self) -> Command {
        let own = |b: Bytes| Bytes::copy_from_slice(&b);
        match self {
            Command::Put {
                key,
                value,
                return_prev,
                session,
            } => Command::Put {
                key: own(key),
                value: own(value),
                return_prev,
                session,
            },
            Command::Delete { key, session } => Command::Delete {
                key: own(key),
                session,
            },
            Command::BatchPut { pairs, session } => Command::BatchPut {
                pairs: pairs.into_iter().map(|(k, v)| (own(k), own(v))).collect(),
                session,
            },
            Command::CompareAndSwap {
                key,
                expected,
                new_value,
                session,
            } => Command::CompareAndSwap {
                key: own(key),
                expected: expected.map(own),
                new_value: own(new_value),
                session,
            },
            Command::Group { commands } => Command::Group {
                commands: commands.into_iter().map(Command::detached).collect(),
            },
            Command::Authorized {
                user,
                revision,
                command,
            } => Command::Authorized {
                user,
                revision,
                command: Box::new(command.detached()),
            },
            Command::Txn(txn) => {
                // Re-decoded from a buffer of its own, sized to the transaction.
                let own = Bytes::from(txn.encode_to_vec());
                Command::Txn(Box::new(TxnRequest::decode(own).unwrap_or(*txn)))
            }
            c @ (Command::OpenSession { .. }
            | Command::CloseSession { .. }
            | Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::Alarm { .. }
            | Command::Auth(_)) => c,
        }
    }

    /// Approximate memory held by the command (keys and values plus a fixed overhead), for
    /// bounding caches.
    pub fn approx_bytes(&self) -> usize {
        64 + match self {
            Command::Put { key, value, .. } => key.len() + value.len(),
            Command::Delete { key, .. } => key.len(),
            Command::BatchPut { pairs, .. } => {
                pairs.iter().map(|(k, v)| k.len() + v.len() + 16).sum()
            }
            Command::CompareAndSwap {
                key,
                expected,
                new_value,
                ..
            } => key.len() + new_value.len() + expected.as_ref().map_or(0, |e| e.len()),
            Command::Group { commands } => commands.iter().map(Command::approx_bytes).sum(),
            Command::Txn(txn) => txn.encoded_len(),
            Command::Auth(change) => change.encoded_len(),
            Command::Authorized { user, command, .. } => user.len() + command.approx_bytes(),
            Command::OpenSession { .. }
            | Command::CloseSession { .. }
            | Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::Alarm { .. } => 0,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value, .. } => {
                write!(f, "put({:?}, {} bytes)", key, value.len())
            }
            Command::Delete { key, .. } => write!(f, "delete({key:?})"),
            Command::BatchPut { pairs, .. } => write!(f, "batch_put({} pairs)", pairs.len()),
            Command::CompareAndSwap { key, .. } => write!(f, "cas({key:?})"),
            Command::Group { commands } => write!(f, "group({} commands)", commands.len()),
            Command::OpenSession { .. } => write!(f, "open_session"),
            Command::CloseSession { id } => write!(f, "close_session({id})"),
            Command::Txn(txn) => write!(
                f,
                "txn({} compares, {}/{} ops)",
                txn.compare.len(),
                txn.success.len(),
                txn.failure.len()
            ),
            Command::Compact { revision } => write!(f, "compact({revision})"),
            Command::LeaseGrant { id, ttl } => write!(f, "lease_grant({id:x}, {ttl}s)"),
            Command::LeaseRevoke { id } => write!(f, "lease_revoke({id:x})"),
            Command::Authorized { user, command, .. } => write!(f, "{command} as {user:?}"),
            Command::Alarm {
                member,
                alarm,
                activate,
            } => write!(f, "alarm({member:x}, {alarm}, {activate})"),
            // Never the hash or the token.
            Command::Auth(change) => write!(
                f,
                "auth({:?} {:?} {:?})",
                change.op(),
                change.user,
                change.role
            ),
        }
    }
}

/// What applying a [`Command`] produced; sent back to the client that proposed it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandResponse {
    /// The value the key held before (put, delete, CAS); `None` for batch puts and absent keys.
    pub prev: Option<Bytes>,
    /// For CAS: whether the swap happened. Always `true` for other commands.
    pub success: bool,
    /// For a [`Command::Group`]: each command's response, in order.
    pub group: Vec<CommandResponse>,
    /// What the session table made of a session command.
    pub session: SessionOutcome,
    /// The store's revision after the command: the revision its changes got, or the current
    /// one when it changed nothing (etcd's header revision). Not kept for a replayed session
    /// write (0 then).
    pub revision: i64,
    /// What an etcd command answered; `None` for rskv's own commands.
    pub etcd: Option<EtcdReply>,
}

/// What applying an etcd command answered.
#[derive(Debug, Clone, PartialEq)]
pub enum EtcdReply {
    /// A transaction's response (its header is left for the service to fill).
    Txn(Box<TxnResponse>),
    /// The command took effect (a compaction, a lease revoke).
    Done,
    /// A lease was granted.
    LeaseGranted {
        /// Its id.
        id: i64,
        /// Its time-to-live in seconds.
        ttl: i64,
    },
    /// The command was refused; nothing changed.
    Refused(MvccError),
    /// The auth store refused the change; nothing changed.
    AuthRefused(crate::state_machine::auth::AuthError),
}

/// Why the multi-version store refused an etcd command (the services turn each into etcd's own
/// status code and message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// A read at a revision that compaction removed.
    #[error("required revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The compacted revision.
        compacted: i64,
    },
    /// A read at (or a compaction of) a revision not written yet.
    #[error("required revision {requested} is a future revision (current {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: i64,
        /// The current revision.
        current: i64,
    },
    /// A put naming a lease, or a revoke of one, that does not exist.
    #[error("requested lease {0:x} not found")]
    LeaseNotFound(i64),
    /// A grant of an id that is taken.
    #[error("lease {0:x} already exists")]
    LeaseExists(i64),
    /// A put with `ignore_value` or `ignore_lease` of a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A write that would grow the store while a `NOSPACE` alarm is active.
    #[error("database space exceeded")]
    NoSpace,
}

impl CommandResponse {
    /// The response of a command that took effect, with the value it replaced.
    pub fn done(prev: Option<Bytes>) -> CommandResponse {
        CommandResponse {
            prev,
            success: true,
            ..CommandResponse::default()
        }
    }

    /// The response of a session command that was refused (nothing changed).
    pub fn refused(why: SessionRefusal) -> CommandResponse {
        CommandResponse {
            session: SessionOutcome::Refused(why),
            ..CommandResponse::default()
        }
    }
}

/// How the session table answered a command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Applied now (every command that is not a session's lands here too).
    #[default]
    Applied,
    /// A session was opened.
    Opened {
        /// Its id.
        id: u64,
    },
    /// A session write that had been applied before: answered with the reply stored then;
    /// nothing changed now.
    Replayed {
        /// The log index it was applied at.
        index: u64,
    },
    /// A session command that was refused; nothing changed.
    Refused(SessionRefusal),
}

/// Why a session command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The session expired (idle past its time-to-live, or closed to make room) or never existed.
    Expired {
        /// The session asked for.
        id: u64,
    },
    /// The sequence is below what the client has acknowledged: a stray copy of a write whose
    /// reply the client already received.
    Acknowledged {
        /// The sequence sent.
        seq: u64,
        /// The session's lowest unacknowledged sequence.
        first_unacked: u64,
    },
    /// The session holds too many unacknowledged replies, or too many bytes of them.
    Backlog {
        /// Replies it holds.
        replies: u64,
        /// Bytes they take.
        bytes: u64,
    },
    /// All sessions together hold too many bytes of unacknowledged replies.
    TableFull {
        /// Bytes they take.
        bytes: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_command_should_hold_equal_bytes_outside_the_request_buffer() {
        let buffer = Bytes::from(vec![7u8; 8192]);
        let inside = |b: &Bytes| {
            let start = buffer.as_ptr() as usize;
            (start..start + buffer.len()).contains(&(b.as_ptr() as usize))
        };
        let put = Command::Put {
            key: buffer.slice(0..8),
            value: buffer.slice(8..264),
            return_prev: true,
            session: None,
        };
        let cas = Command::CompareAndSwap {
            key: buffer.slice(300..308),
            expected: Some(buffer.slice(308..310)),
            new_value: buffer.slice(310..400),
            session: None,
        };
        let group = Command::Group {
            commands: vec![put.clone(), cas.clone()],
        };
        let detached = group.clone().detached();
        assert_eq!(detached, group);
        let Command::Group { commands } = detached else {
            panic!("a group detaches into a group");
        };
        let mut held = Vec::new();
        for c in &commands {
            match c {
                Command::Put { key, value, .. } => held.extend([key, value]),
                Command::CompareAndSwap {
                    key,
                    expected,
                    new_value,
                    ..
                } => held.extend([key, new_value].into_iter().chain(expected)),
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(held.len(), 5);
        assert!(
            held.iter().all(|b| !inside(b)),
            "a detached field still points into the buffer"
        );
        assert!(
            matches!(&put, Command::Put { key, .. } if inside(key)),
            "the original shares it"
        );
    }
}
