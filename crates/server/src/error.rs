//! The error type of the node and its one mapping to gRPC status codes.
//!
//! Each layer returns [`Error`]; the gRPC services convert it with `From<Error> for tonic::Status`,
//! so the status code a client sees is decided in exactly one place. Every status also carries
//! its [`Reason`] in the `rskv-error-reason` metadata: clients decide what to do (follow a
//! redirect, retry, reopen a session) from the code and that reason, never from the message text,
//! which is for people and may change.

use rskv_proto::status::describe_leader;
use rskv_proto::status::Reason;
use rskv_proto::status::NOT_LEADER_MESSAGE;
use tonic::Code;
use tonic::Status;

use crate::raft::NodeId;

/// Everything that can go wrong inside a node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (empty key, oversize value, bad range); nothing was changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// This node is not the leader; `leader` names it when known. Nothing was changed.
    #[error("{NOT_LEADER_MESSAGE}; leader is {}", describe_leader(.leader.as_ref().map(|(id, a)| (*id, a.as_str()))))]
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
            Error::NotLeader { leader } => {
                return rskv_proto::status::not_leader(
                    leader.as_ref().map(|(id, addr)| (*id, addr.as_str())),
                )
            }
            Error::InvalidArgument(_) | Error::Config(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_)
            | Error::SessionExpired(_)
            | Error::SequenceAcknowledged(_) => Code::FailedPrecondition,
            Error::Unavailable(_) | Error::NotAdmitted(_) | Error::NoQuorum(_) => Code::Unavailable,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Compacted(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) | Error::TooLarge(_) => Code::ResourceExhausted,
            Error::Storage(_) | Error::Raft(_) => Code::Internal,
        };
        rskv_proto::status::status(code, e.reason(), e.to_string())
    }
}

/// The per-op error of a Multi: the same code, message and hints the status of a unary call
/// would carry (one mapping, through `From<Error> for Status`).
pub fn op_error(e: Error) -> rskv_proto::kv::OpError {
    rskv_proto::status::op_error(&Status::from(e))
}

impl From<rskv_storage::error::SubscribeError> for Error {
    fn from(e: rskv_storage::error::SubscribeError) -> Error {
        use rskv_storage::error::SubscribeError;
        match e {
            SubscribeError::Compacted { .. } => Error::Compacted(e.to_string()),
            SubscribeError::Poisoned => Error::Storage(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use rskv_proto::status::op_error_status;
    use rskv_proto::status::LEADER_ADDR_HEADER;
    use rskv_proto::status::LEADER_ID_HEADER;
    use rskv_proto::status::NOT_ADMITTED_HEADER;

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
    }
}
