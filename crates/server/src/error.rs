//! The error type of the node and its one mapping to gRPC status codes.
//!
//! Each layer returns [`Error`]; the gRPC services convert it with `From<Error> for tonic::Status`,
//! so the status code a client sees is decided in exactly one place. Every status also carries
//! its [`Reason`] in the `rskv-error-reason` metadata: clients decide what to do (follow a
//! redirect, retry, reopen a session) from the code and that reason, never from the message text,
//! which is for people and may change.
//!
//! Failures that come from below (RocksDB, a file, openraft, a listener) keep what caused them as
//! their [`std::error::Error::source`]; the status message and the logs print the whole chain
//! ([`Error::report`]), so nothing is lost between the layer that failed and the person reading.
//! Errors about the request itself carry only their message: they have no cause below.

use rskv_proto::status::describe_leader;
use rskv_proto::status::Reason;
use rskv_proto::status::NOT_LEADER_MESSAGE;
use tonic::Code;
use tonic::Status;

use crate::raft::NodeId;

/// What caused an error, shared (errors are cloned to every waiter of a grouped write).
pub type Source = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

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
    #[error("unavailable: {context}")]
    Unavailable {
        /// What could not be done.
        context: String,
        /// Why, when something below failed.
        #[source]
        source: Option<Source>,
    },

    /// The outcome is unknown: the request may or may not have been applied.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Auth refused the request (etcd's message; `code` is etcd's status code for it).
    #[error("{message}")]
    Denied {
        /// PERMISSION_DENIED, UNAUTHENTICATED (an invalid token) or INVALID_ARGUMENT (no user).
        code: tonic::Code,
        /// etcd's message.
        message: String,
    },

    /// Invalid configuration; the message names the offending key or file.
    #[error("config: {context}")]
    Config {
        /// What is wrong, and where.
        context: String,
        /// The parser's or the file system's error, when there is one.
        #[source]
        source: Option<Source>,
    },

    /// A storage failure (RocksDB or file I/O).
    #[error("storage: {context}")]
    Storage {
        /// What was being done.
        context: String,
        /// The failure below.
        #[source]
        source: Source,
    },

    /// Asked for history that compaction removed (a watch from a compacted revision).
    #[error("compacted: {0}")]
    Compacted(String),

    /// The node is at a limit (connections, in-flight requests, a session's replies).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),

    /// The request is larger than a node accepts (`limits.max_message_bytes`): RESOURCE_EXHAUSTED
    /// as gRPC answers it, but, unlike [`Error::ResourceExhausted`], not worth retrying anywhere.
    #[error("resource exhausted: {0}")]
    TooLarge(String),

    /// A Raft failure that is not one of the above.
    #[error("raft: {context}")]
    Raft {
        /// What was being done.
        context: String,
        /// openraft's error, when it gave one.
        #[source]
        source: Option<Source>,
    },

    /// The client session is expired or unknown; the write was not applied.
    #[error("session expired: {0}")]
    SessionExpired(String),

    /// A session write below the sequence the client has acknowledged: a stray copy, not applied.
    #[error("sequence acknowledged: {0}")]
    SequenceAcknowledged(String),
}

impl Error {
    /// The cluster cannot serve right now, for no deeper cause than `context`.
    pub fn unavailable(context: impl Into<String>) -> Error {
        Error::Unavailable {
            context: context.into(),
            source: None,
        }
    }

    /// The cluster cannot serve right now because `source` failed.
    pub fn unavailable_by(context: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Unavailable {
            context: context.into(),
            source: Some(source.into().into()),
        }
    }

    /// The configuration is wrong: `context` says where and why.
    pub fn config(context: impl Into<String>) -> Error {
        Error::Config {
            context: context.into(),
            source: None,
        }
    }

    /// The configuration could not be read or parsed because `source` failed.
    pub fn config_by(context: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Config {
            context: context.into(),
            source: Some(source.into().into()),
        }
    }

    /// Storage failed with `source` while doing `context`.
    pub fn storage(context: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Storage {
            context: context.into(),
            source: source.into().into(),
        }
    }

    /// Raft failed with `source` while doing `context`.
    pub fn raft(context: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Raft {
            context: context.into(),
            source: Some(source.into().into()),
        }
    }

    /// Raft answered something this node cannot use (`context` says what), with no error below.
    pub fn raft_unexpected(context: impl Into<String>) -> Error {
        Error::Raft {
            context: context.into(),
            source: None,
        }
    }

    /// This error and every cause below it on one line, for status messages and logs. A cause
    /// whose text the line already holds (some errors print their source too) is not repeated.
    pub fn report(&self) -> String {
        rskv_proto::status::with_causes(self.to_string(), std::error::Error::source(self))
    }

    /// The machine-readable kind of this error.
    pub fn reason(&self) -> Reason {
        match self {
            Error::InvalidArgument(_) => Reason::InvalidArgument,
            Error::NotLeader { .. } => Reason::NotLeader,
            Error::FailedPrecondition(_) => Reason::FailedPrecondition,
            Error::NotAdmitted(_) => Reason::NotAdmitted,
            Error::NoQuorum(_) => Reason::NoQuorum,
            Error::Unavailable { .. } => Reason::Unavailable,
            Error::Timeout(_) => Reason::Timeout,
            Error::Config { .. } => Reason::Config,
            Error::Storage { .. } => Reason::Storage,
            Error::Compacted(_) => Reason::Compacted,
            Error::ResourceExhausted(_) => Reason::ResourceExhausted,
            Error::TooLarge(_) => Reason::TooLarge,
            Error::Raft { .. } => Reason::Raft,
            Error::SessionExpired(_) => Reason::SessionExpired,
            Error::SequenceAcknowledged(_) => Reason::SequenceAcknowledged,
            Error::Denied { .. } => Reason::Denied,
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

/// Any error, boxed on its way into a [`Source`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::storage("I/O", e)
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::storage("RocksDB", e)
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
            Error::InvalidArgument(_) | Error::Config { .. } => Code::InvalidArgument,
            Error::FailedPrecondition(_)
            | Error::SessionExpired(_)
            | Error::SequenceAcknowledged(_) => Code::FailedPrecondition,
            Error::Unavailable { .. } | Error::NotAdmitted(_) | Error::NoQuorum(_) => {
                Code::Unavailable
            }
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Compacted(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) | Error::TooLarge(_) => Code::ResourceExhausted,
            Error::Storage { .. } | Error::Raft { .. } => Code::Internal,
            Error::Denied { code, .. } => *code,
        };
        rskv_proto::status::status(code, e.reason(), e.report())
    }
}

/// The per-op error of a Multi: the same code, message and hints the status of a unary call
/// would carry (one mapping, through `From<Error> for Status`).
pub fn op_error(e: Error) -> rskv_proto::kv::OpError {
    rskv_proto::status::op_error(&Status::from(e))
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
            Error::unavailable("x"),
            Error::Timeout("x".into()),
            Error::config("x"),
            Error::storage("x", std::io::Error::other("disk")),
            Error::Compacted("x".into()),
            Error::ResourceExhausted("x".into()),
            Error::TooLarge("x".into()),
            Error::raft_unexpected("x"),
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

    /// The cause below a storage failure reaches the status message, and the error keeps it as
    /// its source for code that looks.
    #[test]
    fn a_failure_from_below_should_reach_the_status_with_its_cause() {
        let disk = std::io::Error::other("No space left on device");
        let e = Error::storage("appending to the raft log", disk);
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("No space left on device"));
        let status = Status::from(e);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            status.message(),
            "storage: appending to the raft log: No space left on device"
        );
    }

    /// A cause whose text the message already holds is not printed twice.
    #[test]
    fn a_report_should_not_repeat_a_cause_already_printed() {
        let inner = std::io::Error::other("closed");
        let e = Error::unavailable_by("raft server: closed", inner);
        assert_eq!(e.report(), "unavailable: raft server: closed");
    }
}
