//! The error type of the node and its one mapping to gRPC status codes.
//!
//! Each layer returns [`Error`]; the gRPC services convert it with `From<Error> for tonic::Status`,
//! so the status code a client sees is decided in exactly one place.

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
/// Message prefix of NOT_LEADER statuses, so humans reading logs recognise them.
pub const NOT_LEADER_MESSAGE: &str = "not leader";

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

    /// The cluster cannot serve right now (no leader, quorum lost, shutting down).
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
            Error::NotLeader { .. } | Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) | Error::NotAdmitted(_) => Code::Unavailable,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Compacted(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) | Error::TooLarge(_) => Code::ResourceExhausted,
            Error::Storage(_) | Error::Raft(_) => Code::Internal,
        };
        let mut status = Status::new(code, e.to_string());
        if matches!(e, Error::NotAdmitted(_) | Error::ResourceExhausted(_)) {
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
