//! The error contract of the wire: every error status rskv sends carries its [`Reason`] in the
//! `rskv-error-reason` metadata (and a Multi op's error in `OpError.reason`), NOT_LEADER names the
//! leader in metadata, and `rskv-not-admitted` marks a request that certainly did nothing.
//! Clients decide what to do (follow a redirect, retry, reopen a session) from the code and the
//! reason, never from the message text, which is for people and may change. The server builds
//! statuses here ([`status`], [`not_leader`]); the client reads them here ([`Reason::of`],
//! [`leader_addr`]).

use tonic::Code;
use tonic::Status;

use crate::kv::OpError;

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
    /// The history asked for was compacted away.
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
    /// Auth refused it (no token, a token no member issued, or a user whose roles do not
    /// allow it: the status code and etcd's message say which); nothing was done.
    Denied,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 16] = [
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
        Reason::Denied,
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
            Reason::Denied => "DENIED",
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

/// An error status with its reason (and the not-admitted mark when the reason means nothing was
/// done).
pub fn status(code: Code, reason: Reason, message: impl Into<String>) -> Status {
    let mut status = Status::new(code, message);
    let md = status.metadata_mut();
    md.insert(
        REASON_HEADER,
        tonic::metadata::MetadataValue::from_static(reason.as_str()),
    );
    if reason.not_admitted() {
        md.insert(
            NOT_ADMITTED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    status
}

/// `head` followed by every cause from `cause` down, on one line joined by ": ", for people
/// reading a status message or a log. A cause whose text the line already holds (many errors
/// print their source too) is not repeated. The client and the node both describe failures
/// this way, so a message reads the same whichever side wrote it.
pub fn with_causes(head: String, cause: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut line = head;
    let mut next = cause;
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

/// What a NOT_LEADER message says of the leader.
pub fn describe_leader(leader: Option<(u64, &str)>) -> String {
    match leader {
        Some((id, addr)) => format!("node {id} at {addr}"),
        None => "unknown".to_string(),
    }
}

/// NOT_LEADER (FAILED_PRECONDITION), naming the leader in metadata when it is known.
pub fn not_leader(leader: Option<(u64, &str)>) -> Status {
    let message = format!(
        "{NOT_LEADER_MESSAGE}; leader is {}",
        describe_leader(leader)
    );
    let mut status = status(Code::FailedPrecondition, Reason::NotLeader, message);
    if let Some((id, addr)) = leader {
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

/// The leader address a NOT_LEADER status names.
pub fn leader_addr(status: &Status) -> Option<String> {
    header(status, LEADER_ADDR_HEADER)
}

fn header(status: &Status, key: &str) -> Option<String> {
    status
        .metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A Multi op's error: the code, message, reason and hints of the status it would have had alone.
pub fn op_error(status: &Status) -> OpError {
    OpError {
        code: status.code() as i32,
        message: status.message().to_string(),
        leader_id: header(status, LEADER_ID_HEADER).and_then(|id| id.parse().ok()),
        leader_addr: header(status, LEADER_ADDR_HEADER).unwrap_or_default(),
        not_admitted: status.metadata().contains_key(NOT_ADMITTED_HEADER),
        reason: header(status, REASON_HEADER).unwrap_or_default(),
    }
}

/// Rebuilds the status a Multi op's error stands for, hints in metadata, so it is handled exactly
/// like the status of a unary call.
pub fn op_error_status(e: &OpError) -> Status {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_should_parse_back_and_travel_through_an_op_error() {
        let reasons = Reason::ALL;
        for reason in reasons {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            let unary = status(Code::Unavailable, reason, "x");
            assert_eq!(Reason::of(&unary), Some(reason));
            assert_eq!(
                unary.metadata().contains_key(NOT_ADMITTED_HEADER),
                reason.not_admitted()
            );
            let rebuilt = op_error_status(&op_error(&unary));
            assert_eq!(rebuilt.code(), unary.code());
            assert_eq!(Reason::of(&rebuilt), Some(reason));
        }
        assert_eq!(Reason::parse("NO_SUCH_REASON"), None);
        let redirect = not_leader(Some((2, "127.0.0.1:7400")));
        assert_eq!(leader_addr(&redirect).as_deref(), Some("127.0.0.1:7400"));
        let rebuilt = op_error_status(&op_error(&redirect));
        for key in [LEADER_ID_HEADER, LEADER_ADDR_HEADER, REASON_HEADER] {
            assert_eq!(rebuilt.metadata().get(key), redirect.metadata().get(key));
        }
        assert_eq!(leader_addr(&not_leader(None)), None);
    }
}
