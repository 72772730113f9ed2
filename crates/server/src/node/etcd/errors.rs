//! etcd's error statuses, with etcd's codes and exact messages.
//!
//! etcd's client libraries turn a status into a typed error by its message text (etcd's
//! `rpctypes.Error` looks the message up in a table), and retry or give up by its code, so the
//! strings here are etcd's to the byte (`api/v3rpc/rpctypes/error.go`). What went wrong in rskv's
//! terms is logged where the error is made, not put in the message.

use tonic::Code;
use tonic::Status;

use crate::error::Error;

/// An etcd server error, as etcd's clients know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdError {
    /// No leader is known (an election is running, or this node is cut off).
    NoLeader,
    /// The request must reach the leader and this node does not lead (MoveLeader).
    NotLeader,
    /// The leader changed while the request was on its way; retry.
    LeaderChanged,
    /// The request did not finish in time; a change may or may not have happened.
    Timeout,
    /// The node is shutting down.
    Stopped,
    /// No member has this id.
    MemberNotFound,
    /// A member has this id already.
    MemberExist,
    /// A member uses this peer URL already.
    PeerUrlExist,
    /// The change would leave too few started members (removing the last voter).
    MemberNotEnoughStarted,
    /// The member URLs cannot be used.
    MemberBadUrls,
    /// Only a learner can be promoted.
    MemberNotLearner,
    /// The learner has not caught up with the leader yet.
    LearnerNotReady,
    /// The leadership target is not a voting member.
    BadLeaderTransferee,
}

impl EtcdError {
    /// The gRPC code etcd answers.
    pub fn code(self) -> Code {
        match self {
            EtcdError::NoLeader
            | EtcdError::LeaderChanged
            | EtcdError::Timeout
            | EtcdError::Stopped => Code::Unavailable,
            EtcdError::NotLeader
            | EtcdError::MemberExist
            | EtcdError::PeerUrlExist
            | EtcdError::MemberNotEnoughStarted
            | EtcdError::MemberNotLearner
            | EtcdError::LearnerNotReady
            | EtcdError::BadLeaderTransferee => Code::FailedPrecondition,
            EtcdError::MemberNotFound => Code::NotFound,
            EtcdError::MemberBadUrls => Code::InvalidArgument,
        }
    }

    /// etcd's message, exactly.
    pub fn message(self) -> &'static str {
        match self {
            EtcdError::NoLeader => "etcdserver: no leader",
            EtcdError::NotLeader => "etcdserver: not leader",
            EtcdError::LeaderChanged => "etcdserver: leader changed",
            EtcdError::Timeout => "etcdserver: request timed out",
            EtcdError::Stopped => "etcdserver: server stopped",
            EtcdError::MemberNotFound => "etcdserver: member not found",
            EtcdError::MemberExist => "etcdserver: member ID already exist",
            EtcdError::PeerUrlExist => "etcdserver: Peer URLs already exists",
            EtcdError::MemberNotEnoughStarted => {
                "etcdserver: re-configuration failed due to not enough started members"
            }
            EtcdError::MemberBadUrls => "etcdserver: given member URLs are invalid",
            EtcdError::MemberNotLearner => "etcdserver: can only promote a learner member",
            EtcdError::LearnerNotReady => {
                "etcdserver: can only promote a learner member which is in sync with leader"
            }
            EtcdError::BadLeaderTransferee => "etcdserver: bad leader transferee",
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.message())
    }
}

/// The etcd status for a node error: the etcd error a client knows how to handle where there is
/// one (no leader, leader changed, timed out, stopped), rskv's own status (with its reason
/// metadata and message) otherwise. A leader that no quorum has acknowledged lately refuses
/// before proposing anything: to an etcd client that is "no leader" (etcd's leader steps down
/// when it loses its quorum), not a message it does not know.
pub fn status_of(e: Error) -> Status {
    let etcd = match &e {
        Error::NotLeader { leader: None } | Error::NoQuorum(_) => Some(EtcdError::NoLeader),
        Error::NotLeader { leader: Some(_) } => Some(EtcdError::LeaderChanged),
        Error::Timeout(_) => Some(EtcdError::Timeout),
        _ => None,
    };
    match etcd {
        Some(etcd) => {
            tracing::debug!(error = %e.report(), answer = etcd.message(), "etcd request failed");
            etcd.into()
        }
        None => Status::from(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_should_carry_etcds_code_and_message() {
        let s = Status::from(EtcdError::MemberNotFound);
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "etcdserver: member not found");
        let s = Status::from(EtcdError::NoLeader);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "etcdserver: no leader");
    }

    #[test]
    fn node_errors_should_become_the_etcd_errors_clients_retry() {
        assert_eq!(
            status_of(Error::NotLeader { leader: None }).message(),
            "etcdserver: no leader"
        );
        assert_eq!(
            status_of(Error::Timeout("x".into())).message(),
            "etcdserver: request timed out"
        );
        let no_quorum = status_of(Error::NoQuorum("2 of 3 voters silent".into()));
        assert_eq!(
            (no_quorum.code(), no_quorum.message()),
            (Code::Unavailable, "etcdserver: no leader")
        );
        let other = status_of(Error::InvalidArgument("bad".into()));
        assert_eq!(other.code(), Code::InvalidArgument);
    }
}
