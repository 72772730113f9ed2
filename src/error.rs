//! The error type of the node and its one mapping to gRPC status codes.
//!
//! Each layer returns [`Error`]; the gRPC services convert it with `From<Error> for tonic::Status`,
//! so the status code a client sees is decided in exactly one place. Every status also carries
//! its [`Reason`] in the `rskv-error-reason` metadata: clients decide what to do (follow a
//! redirect, retry, reopen a session) from the code and that reason, never from the message text,
//! which is for people and may change.

use tonic::Code;
use tonic::Status;

use crate::raft::NodeId;

/// gRPC metadata key carrying the leader's node id on a NOT_LEADER status.
pub const LEADER_ID_HEADER: &str = "rskv-leader-id";
/// gRPC metadata key carrying the leader's client address on a NOT_LEADER status.
pub const LEADER_ADDR_HEADER: &str = "rskv-leader-addr";
/// gRPC metadata key set on refusals that happened before a request was admitted (draining,
/// the in-flight limit): the request certainly did nothing, so even a compare-and-swap may be
/// retried elsewhere.
pub const NOT_ADMITTED_HEADER: &str = "rskv-not-admitted";
/// gRPC metadata key carrying the [`Reason`] of every error status rskv sends.
pub const REASON_HEADER: &str = "rskv-error-reason";
/// Message prefix of NOT_LEADER statuses, so humans reading logs recognise them.
pub const NOT_LEADER_MESSAGE: &str = "not leader";

/// The machine-readable kind of an error, sent with its status (see [`REASON_HEADER`]): what a
/// client may do next depends on it, and on the status code, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The request is malformed; nothing was changed.
    InvalidArgument,
    /// This node does not lead; nothing was changed. The leader, when known, is in the
    /// `rskv-leader-id` and `rskv-leader-addr` metadata.
    NotLeader,
    /// The cluster is not in a state to do it; nothing was changed.
    FailedPrecondition,
    /// Refused before it was admitted (draining, a limit); nothing was done, retry elsewhere.
    NotAdmitted,
    /// This node leads but has not heard from a quorum within the election timeout; nothing was
    /// proposed or served. Retry (the partition may heal, or another node may lead).
    NoQuorum,
    /// The cluster could not serve it; a write may or may not have been applied.
    Unavailable,
    /// Not finished in time; a write may or may not have been applied.
    Timeout,
    /// The node's configuration is invalid.
    Config,
    /// A storage failure.
    Storage,
    /// The history asked for is no longer retained.
    Compacted,
    /// A limit was reached before the request was admitted; nothing was done.
    ResourceExhausted,
    /// The request is larger than the node accepts (`limits.max_message_bytes`); nothing was
    /// done, and sending it again will not help.
    TooLarge,
    /// Another Raft failure.
    Raft,
    /// The client session expired or is unknown; the write was not applied. Open a new session.
    SessionExpired,
    /// A session write whose reply the client had already acknowledged; not applied again.
    SequenceAcknowledged,
}

impl Reason {
    /// Every reason, for parsing.
    const ALL: [Reason; 15] = [
        Reason::InvalidArgument,
        Reason::NotLeader,
        Reason::FailedPrecondition,
        Reason::NotAdmitted,
        Reason::NoQuorum,
        Reason::Unavailable,
        Reason::Timeout,
        Reason::Config,
        Reason::Storage,
        Reason::Compacted,
        Reason::ResourceExhausted,
        Reason::TooLarge,
        Reason::Raft,
        Reason::SessionExpired,
        Reason::SequenceAcknowledged,
    ];

    /// The name sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidArgument => "INVALID_ARGUMENT",
            Reason::NotLeader => "NOT_LEADER",
            Reason::FailedPrecondition => "FAILED_PRECONDITION",
            Reason::NotAdmitted => "NOT_ADMITTED",
            Reason::NoQuorum => "NO_QUORUM",
            Reason::Unavailable => "UNAVAILABLE",
            Reason::Timeout => "TIMEOUT",
            Reason::Config => "CONFIG",
            Reason::Storage => "STORAGE",
            Reason::Compacted => "COMPACTED",
            Reason::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Reason::TooLarge => "TOO_LARGE",
            Reason::Raft => "RAFT",
            Reason::SessionExpired => "SESSION_EXPIRED",
            Reason::SequenceAcknowledged => "SEQUENCE_ACKNOWLEDGED",
        }
    }

    /// The reason named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The reason a status carries in its metadata, if any.
    pub fn of(status: &Status) -> Option<Reason> {
        status
            .metadata()
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Reason::parse)
    }

    /// Whether the request certainly did nothing, so that even a write may be retried.
    pub fn not_admitted(self) -> bool {
        matches!(
            self,
            Reason::NotAdmitted | Reason::ResourceExhausted | Reason::NoQuorum
        )
    }
}

/// Everything that can go wrong inside a node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (empty key, oversize value, bad range); nothing was changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// This node is not the leader; `leader` names it when known. Nothing was changed.
    #[error("{NOT_LEADER_MESSAGE}; leader is {}", describe_leader(.leader))]
    NotLeader {
        /// The leader's id and address, when this node knows them.
        leader: Option<(NodeId, String)>,
    },

    /// The request is valid but the cluster is not in a state to perform it (e.g. promoting a
    /// learner that has not caught up); nothing was changed.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),

    /// The node refused the request before admitting it (draining for shutdown); nothing was done.
    #[error("unavailable: {0}")]
    NotAdmitted(String),

    /// This node leads but cannot reach a quorum: the request was refused before anything was
    /// proposed or served (the message says what this node knows of its peers).
    #[error("no quorum: {0}")]
    NoQuorum(String),

    /// The cluster cannot serve right now (no leader, shutting down); a write may or may not
    /// have been applied.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// The outcome is unknown: the request may or may not have been applied.
    #[error("timed out: {0}")]
    Timeout(String),

    /// Invalid configuration; the message names the offending key.
    #[error("config: {0}")]
    Config(String),

    /// A storage failure (RocksDB or file I/O).
    #[error("storage: {0}")]
    Storage(String),

    /// Asked for history that is no longer retained (a watch from a compacted index).
    #[error("compacted: {0}")]
    Compacted(String),

    /// The node is at a limit (connections, in-flight requests, a lagging watcher).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),

    /// The request is larger than a node accepts (`limits.max_message_bytes`): RESOURCE_EXHAUSTED
    /// as gRPC answers it, but, unlike [`Error::ResourceExhausted`], not worth retrying anywhere.
    #[error("resource exhausted: {0}")]
    TooLarge(String),

    /// A Raft failure that is not one of the above.
    #[error("raft: {0}")]
    Raft(String),

    /// The client session is expired or unknown; the write was not applied.
    #[error("session expired: {0}")]
    SessionExpired(String),

    /// A session write below the sequence the client has acknowledged: a stray copy, not applied.
    #[error("sequence acknowledged: {0}")]
    SequenceAcknowledged(String),
}

impl Error {
    /// The machine-readable kind of this error.
    pub fn reason(&self) -> Reason {
        match self {
            Error::InvalidArgument(_) => Reason::InvalidArgument,
            Error::NotLeader { .. } => Reason::NotLeader,
            Error::FailedPrecondition(_) => Reason::FailedPrecondition,
            Error::NotAdmitted(_) => Reason::NotAdmitted,
            Error::NoQuorum(_) => Reason::NoQuorum,
            Error::Unavailable(_) => Reason::Unavailable,
            Error::Timeout(_) => Reason::Timeout,
            Error::Config(_) => Reason::Config,
            Error::Storage(_) => Reason::Storage,
            Error::Compacted(_) => Reason::Compacted,
            Error::ResourceExhausted(_) => Reason::ResourceExhausted,
            Error::TooLarge(_) => Reason::TooLarge,
            Error::Raft(_) => Reason::Raft,
            Error::SessionExpired(_) => Reason::SessionExpired,
            Error::SequenceAcknowledged(_) => Reason::SequenceAcknowledged,
        }
    }
}

fn describe_leader(leader: &Option<(NodeId, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("node {id} at {addr}"),
        None => "unknown".to_string(),
    }
}

impl From<openraft::error::ForwardToLeader<crate::raft::TypeConfig>> for Error {
    fn from(f: openraft::error::ForwardToLeader<crate::raft::TypeConfig>) -> Self {
        Error::NotLeader {
            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
        }
    }
}

/// Result alias used throughout the node.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument(_) | Error::Config(_) => Code::InvalidArgument,
            Error::NotLeader { .. }
            | Error::FailedPrecondition(_)
            | Error::SessionExpired(_)
            | Error::SequenceAcknowledged(_) => Code::FailedPrecondition,
            Error::Unavailable(_) | Error::NotAdmitted(_) | Error::NoQuorum(_) => Code::Unavailable,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Compacted(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) | Error::TooLarge(_) => Code::ResourceExhausted,
            Error::Storage(_) | Error::Raft(_) => Code::Internal,
        };
        let reason = e.reason();
        let mut status = Status::new(code, e.to_string());
        status.metadata_mut().insert(
            REASON_HEADER,
            tonic::metadata::MetadataValue::from_static(reason.as_str()),
        );
        if reason.not_admitted() {
            status.metadata_mut().insert(
                NOT_ADMITTED_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        if let Error::NotLeader {
            leader: Some((id, addr)),
        } = &e
        {
            let md = status.metadata_mut();
            if let Ok(v) = id.to_string().parse() {
                md.insert(LEADER_ID_HEADER, v);
            }
            if let Ok(v) = addr.parse() {
                md.insert(LEADER_ADDR_HEADER, v);
            }
        }
        status
    }
}

/// The per-op error of a Multi: the same code, message and hints the status of a unary call
/// would carry (one mapping, through `From<Error> for Status`).
pub fn op_error(e: Error) -> crate::pb::kv::OpError {
    let status = Status::from(e);
    let header = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    crate::pb::kv::OpError {
        code: status.code() as i32,
        message: status.message().to_string(),
        leader_id: header(LEADER_ID_HEADER).and_then(|id| id.parse().ok()),
        leader_addr: header(LEADER_ADDR_HEADER).unwrap_or_default(),
        not_admitted: status.metadata().contains_key(NOT_ADMITTED_HEADER),
        reason: header(REASON_HEADER).unwrap_or_default(),
    }
}

/// Rebuilds, on the client, the status a Multi op's error stands for, hints in metadata, so it is
/// handled exactly like the status of a unary call.
pub fn op_error_status(e: &crate::pb::kv::OpError) -> Status {
    let mut status = Status::new(Code::from(e.code), e.message.clone());
    let md = status.metadata_mut();
    if e.not_admitted {
        md.insert(
            NOT_ADMITTED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    if let Some(reason) = Reason::parse(&e.reason) {
        md.insert(
            REASON_HEADER,
            tonic::metadata::MetadataValue::from_static(reason.as_str()),
        );
    }
    if let Some(id) = e.leader_id {
        if let Ok(v) = id.to_string().parse() {
            md.insert(LEADER_ID_HEADER, v);
        }
    }
    if let Ok(v) = e.leader_addr.parse() {
        if !e.leader_addr.is_empty() {
            md.insert(LEADER_ADDR_HEADER, v);
        }
    }
    status
}

/// Converts an I/O-ish failure into the `io::Error` openraft's storage traits require.
pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error reaches a client with a reason it can parse, and a multi op's error carries
    /// the same code, reason and hints as the unary status.
    #[test]
    fn every_error_should_carry_its_reason_through_status_and_op_error() {
        let errors = [
            Error::InvalidArgument("x".into()),
            Error::NotLeader {
                leader: Some((2, "127.0.0.1:7400".into())),
            },
            Error::NotLeader { leader: None },
            Error::FailedPrecondition("x".into()),
            Error::NotAdmitted("x".into()),
            Error::NoQuorum("x".into()),
            Error::Unavailable("x".into()),
            Error::Timeout("x".into()),
            Error::Config("x".into()),
            Error::Storage("x".into()),
            Error::Compacted("x".into()),
            Error::ResourceExhausted("x".into()),
            Error::TooLarge("x".into()),
            Error::Raft("x".into()),
            Error::SessionExpired("x".into()),
            Error::SequenceAcknowledged("x".into()),
        ];
        for e in errors {
            let reason = e.reason();
            let status = Status::from(e.clone());
            assert_eq!(Reason::of(&status), Some(reason), "{e}");
            assert_eq!(
                status.metadata().contains_key(NOT_ADMITTED_HEADER),
                reason.not_admitted(),
                "{e}"
            );
            let rebuilt = op_error_status(&op_error(e.clone()));
            assert_eq!(rebuilt.code(), status.code(), "{e}");
            assert_eq!(Reason::of(&rebuilt), Some(reason), "{e}");
            for key in [LEADER_ID_HEADER, LEADER_ADDR_HEADER, NOT_ADMITTED_HEADER] {
                assert_eq!(
                    rebuilt.metadata().get(key),
                    status.metadata().get(key),
                    "{e}: {key}"
                );
            }
        }
        assert_eq!(Reason::parse("NO_SUCH_REASON"), None);
    }
}
